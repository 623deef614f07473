//! Small text helpers for the hot path: what every request writes (client
//! addresses in the access log and in `X-Forwarded-For`) without going through
//! `core::fmt`, which costs about a thousand instructions per address, and byte
//! classes scanned over whole tokens (twice per request: once as the query is
//! read, once as it is rebuilt).

use std::io::Write;
use std::net::IpAddr;

/// Appends `ip` as text: dotted quad for IPv4 (by hand, from a table of the 256
/// octets), RFC 5952 for IPv6 (by `fmt`, rarer and longer).
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // At most 15 bytes, put together on the stack and appended once.
            let mut text = [0u8; 18];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let (digits, n) = OCTETS[usize::from(octet)];
                text[len..len + 3].copy_from_slice(&digits);
                len += usize::from(n);
            }
            out.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each octet's decimal digits (left-aligned in three bytes) and how many there are.
static OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u], 3)
        } else if i >= 10 {
            ([b'0' + d, b'0' + u, 0], 2)
        } else {
            ([b'0' + u, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// A set of bytes: `byte_class!(|c| c.is_ascii_digit())` in a `static`.
///
/// Kept twice: as a 256-entry table (the scalar check), and, for a set of ASCII
/// bytes, as a 16-entry table of low nibbles whose bit `h` says that byte
/// `h << 4 | low` is a member. With SSSE3 two shuffles look up sixteen bytes at
/// once (the nibble-table scan simdjson and Hyperscan use for byte sets).
pub struct ByteClass {
    table: [bool; 256],
    /// `low[n]` bit `h`: byte `h << 4 | n` is in the class (`h` < 8).
    low: [u8; 16],
    /// No member is 0x80 or above: `low` says everything.
    ascii: bool,
}

/// A [`ByteClass`] from a `const` test of one byte.
#[macro_export]
macro_rules! byte_class {
    (|$c:ident| $member:expr) => {{
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let $c = b as u8;
            t[b] = $member;
            b += 1;
        }
        $crate::text::ByteClass::from_table(t)
    }};
}

impl ByteClass {
    /// The class whose members are the bytes `table` marks.
    pub const fn from_table(table: [bool; 256]) -> ByteClass {
        let mut low = [0u8; 16];
        let mut ascii = true;
        let mut b = 0;
        while b < 256 {
            if table[b] {
                if b < 0x80 {
                    low[b & 0x0f] |= 1 << (b >> 4);
                } else {
                    ascii = false;
                }
            }
            b += 1;
        }
        ByteClass { table, low, ascii }
    }

    /// Whether every byte of `bytes` is in the class: sixteen at a time with
    /// SSSE3 (about 40 instructions on a 250-byte token, where a table lookup
    /// per byte takes some 750), sixteen at a time without a branch per byte
    /// otherwise.
    pub fn all(&self, bytes: &[u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.ascii && bytes.len() >= 16 && std::arch::is_x86_feature_detected!("ssse3") {
            // SAFETY: SSSE3 is present (checked just above).
            return unsafe { all_ssse3(&self.low, bytes) };
        }
        self.all_scalar(bytes)
    }

    fn all_scalar(&self, bytes: &[u8]) -> bool {
        let mut chunks = bytes.chunks_exact(16);
        for chunk in &mut chunks {
            if !chunk
                .iter()
                .fold(true, |ok, &b| ok & self.table[usize::from(b)])
            {
                return false;
            }
        }
        chunks
            .remainder()
            .iter()
            .all(|&b| self.table[usize::from(b)])
    }
}

/// [`ByteClass::all`] for an ASCII class over at least 16 bytes: the last
/// block overlaps the one before it rather than falling back to bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
fn all_ssse3(low: &[u8; 16], bytes: &[u8]) -> bool {
    use std::arch::x86_64::*;
    debug_assert!(bytes.len() >= 16);
    // SAFETY: `low` is 16 bytes; unaligned loads.
    let low = unsafe { _mm_loadu_si128(low.as_ptr().cast()) };
    // Bit h for high nibble h < 8; nothing for 8..16 (bytes >= 0x80).
    let high = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
    let nibble = _mm_set1_epi8(0x0f);
    let block = |at: usize| {
        // SAFETY: `at + 16 <= bytes.len()` at every call below.
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().add(at).cast()) };
        let lo = _mm_and_si128(v, nibble);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nibble);
        let member = _mm_and_si128(_mm_shuffle_epi8(low, lo), _mm_shuffle_epi8(high, hi));
        _mm_movemask_epi8(_mm_cmpeq_epi8(member, _mm_setzero_si128())) == 0
    };
    let mut at = 0;
    while at + 16 <= bytes.len() {
        if !block(at) {
            return false;
        }
        at += 16;
    }
    at == bytes.len() || block(bytes.len() - 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ASCII class agrees with its table, whichever way `all` goes.
    #[test]
    fn the_nibble_scan_agrees_with_the_table() {
        static CLASSES: [ByteClass; 4] = [
            crate::byte_class!(|c| c.is_ascii_graphic() && c != b'+' && c != b'%'),
            crate::byte_class!(
                |c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
            ),
            crate::byte_class!(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f),
            crate::byte_class!(|b| b == 0 || b == 0x7f || b == b'A'),
        ];
        for class in &CLASSES {
            assert!(class.ascii);
            for len in [16, 17, 31, 32, 33, 47, 250] {
                let member = (0..=255u8).find(|&b| class.table[usize::from(b)]).unwrap();
                let good = vec![member; len];
                assert!(class.all(&good));
                for at in [0, 1, 15, len / 2, len - 1] {
                    for b in 0..=255u8 {
                        let mut bytes = good.clone();
                        bytes[at] = b;
                        assert_eq!(
                            class.all(&bytes),
                            class.table[usize::from(b)],
                            "{len} {at} {b}"
                        );
                        assert_eq!(class.all(&bytes), class.all_scalar(&bytes));
                    }
                }
            }
        }
    }

    #[test]
    fn a_class_with_high_bytes_is_scanned_by_table() {
        static HIGH: ByteClass = crate::byte_class!(|b| b >= 0x80);
        assert!(!HIGH.ascii);
        assert!(HIGH.all(&[0xff; 40]));
        assert!(!HIGH.all(&[0x7f; 40]));
    }

    #[test]
    fn a_byte_class_accepts_exactly_its_members_at_every_position() {
        static DIGITS: ByteClass = crate::byte_class!(|b| b.is_ascii_digit());
        for len in 0..40 {
            let good = "7".repeat(len);
            assert!(DIGITS.all(good.as_bytes()), "{len}");
            for at in 0..len {
                let mut bad = good.clone().into_bytes();
                bad[at] = b'x';
                assert!(!DIGITS.all(&bad), "{len} {at}");
            }
        }
    }

    #[test]
    fn every_octet_at_every_place_reads_as_display_writes_it() {
        for o in 0..=255u8 {
            for ip in [[o, 0, 0, 0], [1, o, 2, 3], [255, 255, o, 9], [10, 0, 0, o]] {
                let ip = IpAddr::from(ip);
                let mut out = b"x".to_vec();
                write_ip(&mut out, ip);
                assert_eq!(out, format!("x{ip}").into_bytes());
            }
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.255",
            "10.20.30.4",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }
}
