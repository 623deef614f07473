//! The cache key of SPEC §7: (library, space, confirm key, effective user, effective
//! traffic_limit, upstream credential), hashed with BLAKE3 (in key-derivation mode,
//! one context string per level).
//!
//! The key decides who may be handed whose upload credentials, so a wrong one is
//! cache poisoning. Every field goes in, length-prefixed so that no two different
//! tuples encode alike (`("ab", "c")` vs `("a", "bc")`, an absent user vs an empty
//! one). Only digests are kept: no token, user or confirm key sits in plain in
//! memory keys or in Redis.
//!
//! The key has two levels. [`UploadId`] hashes what names the upload (library, space,
//! confirm key); [`KeyHash`] hashes the upload id with everything that names the
//! caller's variant of the answer. Invalidating an upload drops every variant under
//! its [`UploadId`] at once.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::secret::Secret;

/// Domain separation (BLAKE3 derive-key contexts): a change of layout changes every
/// digest. v1 was SHA-256 of the same fields; BLAKE3 computes a renew's two digests
/// in about a fifth of the instructions (24,000 per cache hit were SHA-256's, under
/// callgrind), and the keys stay collision-resistant: a collision would hand one
/// caller another's upload credentials.
const UPLOAD_DOMAIN: &str = "smh-gateway 2026-12 renew upload v2";
const VARIANT_DOMAIN: &str = "smh-gateway 2026-12 renew variant v2";
const PARAMS_DOMAIN: &str = "smh-gateway 2026-12 renew params v2";

/// A BLAKE3 hasher for one key level; `update` takes anything byte-like.
struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    fn new(domain: &str) -> KeyHasher {
        KeyHasher(blake3::Hasher::new_derive_key(domain))
    }

    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        self.0.update(bytes.as_ref());
    }

    fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The digest of (library, space, confirm key): one upload task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UploadId(pub [u8; 32]);

/// The digest of (upload, user, traffic_limit, credential): one cache entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

/// Everything the cache needs to know about a renew: which upload and which variant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheKey {
    pub upload: UploadId,
    pub hash: KeyHash,
}

impl UploadId {
    pub fn new(library: &str, space: &str, confirm_key: &str) -> UploadId {
        let mut h = KeyHasher::new(UPLOAD_DOMAIN);
        field(&mut h, library.as_bytes());
        field(&mut h, space.as_bytes());
        field(&mut h, confirm_key.as_bytes());
        UploadId(h.finalize())
    }

    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl KeyHash {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl CacheKey {
    /// The key of a renew as it goes upstream: `user` is the user_id sent upstream,
    /// `traffic_limit` the value after clamping, `credential` the access_token sent
    /// upstream (not necessarily the caller's: see `upstream.credential`).
    pub fn new(
        library: &str,
        space: &str,
        confirm_key: &str,
        user: Option<&str>,
        traffic_limit: Option<u64>,
        credential: &Secret,
    ) -> CacheKey {
        let upload = UploadId::new(library, space, confirm_key);
        let mut h = KeyHasher::new(VARIANT_DOMAIN);
        h.update(upload.0);
        match user {
            None => h.update([0u8]),
            Some(u) => {
                h.update([1u8]);
                field(&mut h, u.as_bytes());
            }
        }
        match traffic_limit {
            None => h.update([0u8]),
            Some(tl) => {
                h.update([1u8]);
                h.update(tl.to_be_bytes());
            }
        }
        field(&mut h, credential.expose().as_bytes());
        CacheKey {
            upload,
            hash: KeyHash(h.finalize()),
        }
    }
}

impl CacheKey {
    /// The key varied by the renew's other forwarded parameters (their canonical
    /// query text, e.g. `internal_domain=1`): they change SMH's answer, so callers
    /// that differ in them never share an entry. No parameters: the key unchanged.
    pub fn varied_by(self, params: &str) -> CacheKey {
        if params.is_empty() {
            return self;
        }
        let mut h = KeyHasher::new(PARAMS_DOMAIN);
        h.update(self.hash.0);
        field(&mut h, params.as_bytes());
        CacheKey {
            upload: self.upload,
            hash: KeyHash(h.finalize()),
        }
    }
}

fn field(h: &mut KeyHasher, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

// Digests print as a short prefix: enough to tell entries apart in a debug line.
impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({}…)", &hex(&self.0[..4]))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &hex(&self.0[..4]))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({:?}, {:?})", self.upload, self.hash)
    }
}

// A digest is already uniformly distributed: hash maps take eight of its bytes
// instead of running SipHash over all 32 (see [`DigestHasher`]).
impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(first_u64(&self.0));
    }
}

impl Hash for UploadId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(first_u64(&self.0));
    }
}

fn first_u64(bytes: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// A hasher for maps keyed by [`KeyHash`] or [`UploadId`]: passes their
/// `write_u64` through. Only for those keys; anything else is folded in FNV-style
/// so that it still works, slowly.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

pub type BuildDigestHasher = BuildHasherDefault<DigestHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        library: &str,
        space: &str,
        confirm_key: &str,
        user: Option<&str>,
        traffic_limit: Option<u64>,
        credential: &str,
    ) -> CacheKey {
        CacheKey::new(
            library,
            space,
            confirm_key,
            user,
            traffic_limit,
            &Secret::new(credential),
        )
    }

    #[test]
    fn same_inputs_same_key() {
        let a = key("lib1", "-", "ck", Some("u"), Some(102_400), "tok");
        let b = key("lib1", "-", "ck", Some("u"), Some(102_400), "tok");
        assert!(a == b);
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = key("lib1", "s1", "ck", Some("u"), Some(102_400), "tok");
        let variants = [
            (
                "library",
                key("lib2", "s1", "ck", Some("u"), Some(102_400), "tok"),
            ),
            (
                "space",
                key("lib1", "s2", "ck", Some("u"), Some(102_400), "tok"),
            ),
            (
                "confirm key",
                key("lib1", "s1", "ck2", Some("u"), Some(102_400), "tok"),
            ),
            (
                "user",
                key("lib1", "s1", "ck", Some("v"), Some(102_400), "tok"),
            ),
            (
                "user absent",
                key("lib1", "s1", "ck", None, Some(102_400), "tok"),
            ),
            (
                "user empty",
                key("lib1", "s1", "ck", Some(""), Some(102_400), "tok"),
            ),
            (
                "traffic_limit",
                key("lib1", "s1", "ck", Some("u"), Some(102_401), "tok"),
            ),
            (
                "traffic_limit absent",
                key("lib1", "s1", "ck", Some("u"), None, "tok"),
            ),
            (
                "credential",
                key("lib1", "s1", "ck", Some("u"), Some(102_400), "tok2"),
            ),
        ];
        for (what, v) in &variants {
            assert!(v.hash != base.hash, "{what} must change the key");
        }
        for (i, (a, va)) in variants.iter().enumerate() {
            for (b, vb) in &variants[i + 1..] {
                assert!(va.hash != vb.hash, "{a} and {b} collide");
            }
        }
    }

    #[test]
    fn the_upload_id_covers_library_space_and_confirm_key_only() {
        let base = key("lib1", "s1", "ck", Some("u"), Some(1), "tok");
        let other_caller = key("lib1", "s1", "ck", None, None, "other");
        assert!(base.upload == other_caller.upload);
        assert!(base.upload != key("lib2", "s1", "ck", Some("u"), Some(1), "tok").upload);
        assert!(base.upload != key("lib1", "s2", "ck", Some("u"), Some(1), "tok").upload);
        assert!(base.upload != key("lib1", "s1", "ck2", Some("u"), Some(1), "tok").upload);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        assert!(UploadId::new("ab", "c", "d") != UploadId::new("a", "bc", "d"));
        assert!(UploadId::new("a", "", "bc") != UploadId::new("a", "b", "c"));
        let a = key("l", "s", "c", Some("ab"), None, "c");
        let b = key("l", "s", "c", Some("a"), None, "bc");
        assert!(a.hash != b.hash);
    }

    #[test]
    fn digests_hide_their_inputs() {
        let k = key(
            "lib1",
            "-",
            "confirm-secret",
            Some("alice"),
            None,
            "token-secret",
        );
        let shown = format!("{k:?} {} {}", k.upload.hex(), k.hash.hex());
        for secret in ["confirm-secret", "alice", "token-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(k.hash.hex().len(), 64);
        assert!(k.hash.hex().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

#[cfg(test)]
mod known_answers {
    use super::*;

    /// Replicas sharing one Redis must compute the same digests: a change of the
    /// layout or the hash must be deliberate (a new domain), never a side effect.
    #[test]
    fn digests_are_pinned() {
        let k = CacheKey::new(
            "lib1",
            "-",
            "ck",
            Some("u"),
            Some(102_400),
            &Secret::new("tok"),
        );
        assert_eq!(
            k.upload.hex(),
            "757bc2be0c438012bb47a840781129cfa4345aa78bc44f5b2a9dd527cdffc66b"
        );
        assert_eq!(
            k.hash.hex(),
            "269156b92710a538e5f066b4cc56762f10468c5a319434faafb7a0a62f345ffe"
        );
        assert_eq!(
            k.varied_by("internal_domain=1").hash.hex(),
            "5abb6337eea69b3d3fe3774ed1a1065363e8b9bb992c03e5b022c9f0a07111a7"
        );
    }
}
