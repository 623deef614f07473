//! The cache key of SPEC §7: (library, space, confirm key, effective user, effective
//! traffic_limit, upstream credential), hashed with keyed BLAKE3, one key per level.
//!
//! The key decides who may be handed whose upload credentials, so a wrong one is
//! cache poisoning. Every field goes in, length-prefixed so that no two different
//! tuples encode alike (`("ab", "c")` vs `("a", "bc")`, an absent user vs an empty
//! one). Only digests are kept: no token, user or confirm key sits in plain in
//! memory keys or in Redis.
//!
//! The key has two levels. [`UploadId`] hashes what names the upload (library, space,
//! confirm key); [`KeyHash`] hashes the same fields with everything that names the
//! caller's variant of the answer. Invalidating an upload drops every variant under
//! its [`UploadId`] at once.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::LazyLock;

use crate::secret::Secret;

/// Domain separation: each level hashes with its own key, derived once from its
/// context string (`blake3::derive_key`), so a change of layout (a new context)
/// changes every digest. v1 was SHA-256 of the same fields; v2 BLAKE3 in
/// derive-key mode, which hashed the context string again on every call and moved
/// a 1.9 KiB hasher around. v3 encodes the fields into one buffer and runs keyed
/// BLAKE3 over it: the same collision resistance (a collision would hand one caller
/// another's upload credentials), about 2,000 fewer instructions per cache hit.
/// v4 hashes the credential on its own first ([`CredentialDigest`], 32 bytes into
/// the variant): a caller's token digest is kept with its verified principal, so
/// a hit no longer hashes the whole token (five BLAKE3 blocks) again. The upload
/// level is unchanged, so invalidation reaches v3 entries too. v5: the variant
/// names the upload by its length-prefixed fields instead of its upload id, so a
/// memory-store hit computes one digest fewer ([`RenewKey`]).
const UPLOAD_DOMAIN: &str = "smh-gateway 2026-12 renew upload v3";
const VARIANT_DOMAIN: &str = "smh-gateway 2026-12 renew variant v5";
const PARAMS_DOMAIN: &str = "smh-gateway 2026-12 renew params v5";
const CREDENTIAL_DOMAIN: &str = "smh-gateway 2026-12 renew credential v4";

static UPLOAD_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key(UPLOAD_DOMAIN, b""));
static VARIANT_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key(VARIANT_DOMAIN, b""));
static PARAMS_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key(PARAMS_DOMAIN, b""));
static CREDENTIAL_KEY: LazyLock<[u8; 32]> =
    LazyLock::new(|| blake3::derive_key(CREDENTIAL_DOMAIN, b""));

/// One level's input, encoded field by field, then hashed at once.
struct Encoder(Vec<u8>);

impl Encoder {
    fn with_capacity(n: usize) -> Encoder {
        Encoder(Vec::with_capacity(n))
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Length-prefixed bytes.
    fn field(&mut self, bytes: &[u8]) {
        self.raw(&(bytes.len() as u64).to_be_bytes());
        self.raw(bytes);
    }

    fn digest(&self, key: &LazyLock<[u8; 32]>) -> [u8; 32] {
        *blake3::keyed_hash(key, &self.0).as_bytes()
    }
}

/// The upstream credential's part of a key: keyed BLAKE3 of its bytes, so that a
/// digest computed once (when a token is verified) serves every later key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CredentialDigest(pub [u8; 32]);

impl CredentialDigest {
    pub fn of(credential: &Secret<'_>) -> CredentialDigest {
        CredentialDigest(
            *blake3::keyed_hash(&CREDENTIAL_KEY, credential.expose().as_bytes()).as_bytes(),
        )
    }
}

impl fmt::Debug for CredentialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialDigest({}…)", &hex(&self.0[..4]))
    }
}

/// The digest of (library, space, confirm key): one upload task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UploadId(pub [u8; 32]);

/// The digest of (library, space, confirm key, user, traffic_limit, credential):
/// one cache entry.
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
        let mut e = Encoder::with_capacity(24 + library.len() + space.len() + confirm_key.len());
        e.field(library.as_bytes());
        e.field(space.as_bytes());
        e.field(confirm_key.as_bytes());
        UploadId(e.digest(&UPLOAD_KEY))
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
    /// `traffic_limit` the value after clamping, `credential` the digest of the
    /// access_token sent upstream (not necessarily the caller's: see
    /// `upstream.credential`).
    pub fn new(
        library: &str,
        space: &str,
        confirm_key: &str,
        user: Option<&str>,
        traffic_limit: Option<u64>,
        credential: &CredentialDigest,
    ) -> CacheKey {
        RenewKey::new(library, space, confirm_key, user, traffic_limit, credential).complete()
    }
}

/// A renew's key as a request makes it: the variant's digest at once, the upload
/// id only when asked ([`RenewKey::complete`]). A hit in the memory store needs
/// the digest alone, so it does not pay for the upload id's BLAKE3 (a miss, a
/// store and the Redis backend do).
#[derive(Clone, Copy)]
pub struct RenewKey<'a> {
    pub hash: KeyHash,
    upload: Upload<'a>,
}

#[derive(Clone, Copy)]
enum Upload<'a> {
    Known(UploadId),
    Named {
        library: &'a str,
        space: &'a str,
        confirm_key: &'a str,
    },
}

impl<'a> RenewKey<'a> {
    /// As [`CacheKey::new`]. The variant names the upload by its fields, not by
    /// the upload id, so that it can be computed without one.
    pub fn new(
        library: &'a str,
        space: &'a str,
        confirm_key: &'a str,
        user: Option<&str>,
        traffic_limit: Option<u64>,
        credential: &CredentialDigest,
    ) -> RenewKey<'a> {
        let user_len = user.map_or(0, str::len);
        let named = 24 + library.len() + space.len() + confirm_key.len();
        let mut e = Encoder::with_capacity(named + 1 + 8 + user_len + 1 + 8 + 32);
        e.field(library.as_bytes());
        e.field(space.as_bytes());
        e.field(confirm_key.as_bytes());
        match user {
            None => e.raw(&[0]),
            Some(u) => {
                e.raw(&[1]);
                e.field(u.as_bytes());
            }
        }
        match traffic_limit {
            None => e.raw(&[0]),
            Some(tl) => {
                e.raw(&[1]);
                e.raw(&tl.to_be_bytes());
            }
        }
        e.raw(&credential.0);
        RenewKey {
            hash: KeyHash(e.digest(&VARIANT_KEY)),
            upload: Upload::Named {
                library,
                space,
                confirm_key,
            },
        }
    }

    /// The key with its upload id.
    pub fn complete(&self) -> CacheKey {
        let upload = match self.upload {
            Upload::Known(id) => id,
            Upload::Named {
                library,
                space,
                confirm_key,
            } => UploadId::new(library, space, confirm_key),
        };
        CacheKey {
            upload,
            hash: self.hash,
        }
    }

    /// As [`CacheKey::varied_by`].
    pub fn varied_by(self, params: &str) -> RenewKey<'a> {
        RenewKey {
            hash: vary(self.hash, params),
            upload: self.upload,
        }
    }
}

impl From<CacheKey> for RenewKey<'static> {
    fn from(key: CacheKey) -> Self {
        RenewKey {
            hash: key.hash,
            upload: Upload::Known(key.upload),
        }
    }
}

fn vary(hash: KeyHash, params: &str) -> KeyHash {
    if params.is_empty() {
        return hash;
    }
    let mut e = Encoder::with_capacity(32 + 8 + params.len());
    e.raw(&hash.0);
    e.field(params.as_bytes());
    KeyHash(e.digest(&PARAMS_KEY))
}

impl CacheKey {
    /// The key varied by the renew's other forwarded parameters (their canonical
    /// query text, e.g. `internal_domain=1`): they change SMH's answer, so callers
    /// that differ in them never share an entry. No parameters: the key unchanged.
    pub fn varied_by(self, params: &str) -> CacheKey {
        CacheKey {
            upload: self.upload,
            hash: vary(self.hash, params),
        }
    }
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
            &CredentialDigest::of(&Secret::new(credential)),
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
mod renew_key {
    use super::*;

    #[test]
    fn a_renew_key_completes_to_the_cache_key_of_the_same_fields() {
        let cred = CredentialDigest::of(&Secret::new("tok"));
        let lazy = RenewKey::new("lib1", "s1", "ck", Some("u"), Some(1), &cred);
        let full = CacheKey::new("lib1", "s1", "ck", Some("u"), Some(1), &cred);
        assert!(lazy.hash == full.hash);
        assert!(lazy.complete() == full);
        assert!(lazy.complete().upload == UploadId::new("lib1", "s1", "ck"));
        let varied = lazy.varied_by("internal_domain=1");
        assert!(varied.complete() == full.varied_by("internal_domain=1"));
        assert!(varied.hash != lazy.hash);
        let known = RenewKey::from(full);
        assert!(known.complete() == full);
    }
}

#[cfg(test)]
mod known_answers {
    use super::*;

    /// Replicas sharing one Redis must compute the same digests: a change of the
    /// layout or the hash must be deliberate (a new domain), never a side effect.
    /// The values were computed apart from this code, with Python's `blake3`
    /// package: `blake3(encoding, key=blake3(b"", derive_key_context=DOMAIN).digest())`
    /// over the length-prefixed (u64 big-endian) layout described above: the
    /// variant is the three upload fields, the user and traffic_limit tags, then
    /// the credential's own digest (`blake3(b"tok", key=...credential v4...)`) as
    /// 32 raw bytes.
    #[test]
    fn digests_are_pinned() {
        let k = CacheKey::new(
            "lib1",
            "-",
            "ck",
            Some("u"),
            Some(102_400),
            &CredentialDigest::of(&Secret::new("tok")),
        );
        assert_eq!(
            k.upload.hex(),
            "9d5bc8156cfc90c110e23bbda9b17bde50f80d30769bc03ed83019bb572ec2fb"
        );
        assert_eq!(
            k.hash.hex(),
            "d354efd91e0c9ea02bc5ed02b3c30efc8c99e481e800d9480a47a61bbb087e7b"
        );
        assert_eq!(
            hex(&CredentialDigest::of(&Secret::new("tok")).0),
            "a638b384dc9eb93130b3fcc8e219b02ff3364401734ec2bcf3f0b6e63bb449c5"
        );
        assert_eq!(
            k.varied_by("internal_domain=1").hash.hex(),
            "e1394bdde753b0c1cc98ae7069429370154ea17d1d6060bd9cf5917cd31634d9"
        );
    }
}
