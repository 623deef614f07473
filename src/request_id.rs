//! Request ids for requests that arrive without a sane `X-Request-Id`: a random
//! per-process prefix (so replicas do not collide) and a counter (so ids are cheap
//! and ordered within a process).

use std::sync::atomic::{AtomicU64, Ordering};

pub struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let mut seed = [0u8; 6];
        // A failing OS RNG leaves a fixed prefix: ids stay unique per process.
        let _ = getrandom::fill(&mut seed);
        let prefix = seed.iter().map(|b| format!("{b:02x}")).collect();
        RequestIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// `<prefix>-<counter in hex, at least 8 digits>`; written by hand, not with
    /// `format!`: it runs for nearly every request.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(8) as usize;
        // All sixteen nibbles into bytes, then the last `digits` of them appended.
        let mut hex = [0u8; 16];
        for (i, b) in hex.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((n >> ((15 - i) * 4)) & 0xf) as usize];
        }
        let mut id = String::with_capacity(self.prefix.len() + 1 + 16);
        id.push_str(&self.prefix);
        id.push('-');
        // Hex digits are ASCII.
        id.push_str(std::str::from_utf8(&hex[16 - digits..]).unwrap_or_default());
        id
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::is_sane_request_id;

    #[test]
    fn ids_are_unique_and_sane() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(is_sane_request_id(a.as_bytes()), "{a}");
        assert_ne!(RequestIds::new().next(), RequestIds::new().next());
    }

    #[test]
    fn the_counter_is_lowercase_hex_of_at_least_eight_digits() {
        let ids = RequestIds::new();
        for (n, expected) in [
            (0u64, "00000000"),
            (0xab, "000000ab"),
            (0xffff_ffff, "ffffffff"),
            (0x1_0000_0000, "100000000"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            ids.counter.store(n, Ordering::Relaxed);
            let id = ids.next();
            assert_eq!(id, format!("{}-{expected}", ids.prefix));
            assert_eq!(id, format!("{}-{n:08x}", ids.prefix));
        }
    }
}
