//! JWKS documents (RFC 7517), from `auth.jwks_file` or an `auth.jwks_urls` answer:
//! one parser for both, keeping the JWKs a token may be verified with and saying
//! why each other one was skipped. Also the `Cache-Control` of a JWKS answer, which
//! sets when it is fetched next.
//!
//! A JWK is kept only when it names its `alg` (guessing one is how confusion
//! attacks start), that `alg` is one SPEC §2 lists, its key type fits the `alg`
//! (`RSA` for RS*/PS*, `EC` P-256/P-384 for ES256/ES384, `OKP` Ed25519 for EdDSA,
//! `oct` for HS*), and it is not marked for encryption only (`use`, `key_ops`).
//! A URL's set never contributes `oct` keys: a published JWKS holds public keys
//! only (OpenID Connect Discovery), and a shared secret fetched from a URL is one
//! anybody on that path has read.

use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_alg;

/// Where a JWKS comes from: what it may hold differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    Url,
}

/// A usable JWK.
pub struct ParsedKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// As published, to tell whether a refetched set changed.
    pub jwk: Jwk,
}

/// Why a JWK was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NoAlg,
    UnsupportedAlg(String),
    /// `use` other than `sig`, or `key_ops` without `verify`.
    NotForSignatures,
    /// A `kty` (or curve) this gateway does not verify with.
    UnsupportedKeyType(String),
    /// The `kty` or curve does not fit the `alg`.
    KeyTypeMismatch,
    /// An `oct` key in a URL's set.
    SecretFromUrl,
    /// The JWK is not well-formed, or its key material does not load.
    BadKey(String),
    /// An HMAC secret shorter than SPEC §2 allows.
    ShortSecret(usize),
}

impl Skip {
    /// A broken key in a file is the operator's to fix: the file is refused. The
    /// other skips leave a JWK out with a warning.
    pub fn is_error_in_file(&self) -> bool {
        matches!(self, Skip::BadKey(_) | Skip::ShortSecret(_))
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NoAlg => f.write_str("has no \"alg\""),
            Skip::UnsupportedAlg(a) => write!(f, "has unsupported alg {a}"),
            Skip::NotForSignatures => f.write_str("is not for signatures (use/key_ops)"),
            Skip::UnsupportedKeyType(k) => write!(f, "has unsupported key type {k}"),
            Skip::KeyTypeMismatch => {
                f.write_str("has a key type or curve that does not fit its alg")
            }
            Skip::SecretFromUrl => f.write_str("is a shared secret (oct), refused from a URL"),
            Skip::BadKey(e) => write!(f, "does not load: {e}"),
            Skip::ShortSecret(n) => write!(
                f,
                "HMAC secret is {n} bytes; at least {} are required",
                super::MIN_HMAC_SECRET_BYTES
            ),
        }
    }
}

/// A parsed JWKS: the keys kept, and each skipped JWK's label (its kid, or `#index`).
#[derive(Default)]
pub struct Parsed {
    pub keys: Vec<ParsedKey>,
    pub skipped: Vec<(String, Skip)>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Value>,
}

/// Parses a JWKS document. Only a document that is not `{"keys": [...]}` is an
/// error; each JWK in it is kept or skipped on its own.
pub fn parse(text: &[u8], origin: Origin) -> Result<Parsed, String> {
    let doc: Document = serde_json::from_slice(text)
        .map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let mut out = Parsed::default();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let label = value
            .get("kid")
            .and_then(Value::as_str)
            .map_or_else(|| format!("#{i}"), str::to_string);
        match key(value, origin) {
            Ok(k) => out.keys.push(k),
            Err(skip) => out.skipped.push((label, skip)),
        }
    }
    Ok(out)
}

fn key(value: Value, origin: Origin) -> Result<ParsedKey, Skip> {
    if value.get("use").is_some_and(|u| u != "sig") {
        return Err(Skip::NotForSignatures);
    }
    if let Some(ops) = value.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op == "verify")
    {
        return Err(Skip::NotForSignatures);
    }
    let alg_name = match value.get("alg") {
        None => return Err(Skip::NoAlg),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(Skip::UnsupportedAlg(other.to_string())),
    };
    let alg = parse_alg(&alg_name).ok_or(Skip::UnsupportedAlg(alg_name))?;
    let kty = value
        .get("kty")
        .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_string))
        .unwrap_or_else(|| "(none)".into());
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| Skip::BadKey(e.to_string()))?;
    use Algorithm as A;
    let fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            )
        }
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, A::ES256) | (EllipticCurve::P384, A::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            matches!((&p.curve, alg), (EllipticCurve::Ed25519, A::EdDSA))
        }
        AlgorithmParameters::OctetKey(_) => {
            if origin == Origin::Url {
                return Err(Skip::SecretFromUrl);
            }
            matches!(alg, A::HS256 | A::HS384 | A::HS512)
        }
        // `Other`: a kty we know whose members are missing or not strings (the
        // parameters are untagged), or a kty we do not verify with; and whatever
        // jsonwebtoken may add (non_exhaustive).
        _ if matches!(kty.as_str(), "RSA" | "EC" | "OKP" | "oct") => {
            return Err(Skip::BadKey(format!("malformed {kty} key parameters")));
        }
        _ => return Err(Skip::UnsupportedKeyType(kty)),
    };
    if !fits {
        return Err(Skip::KeyTypeMismatch);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| Skip::BadKey(e.to_string()))?;
    if let Ok(secret) = key.try_get_as_bytes()
        && matches!(alg, A::HS256 | A::HS384 | A::HS512)
        && secret.len() < super::MIN_HMAC_SECRET_BYTES
    {
        return Err(Skip::ShortSecret(secret.len()));
    }
    Ok(ParsedKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
        jwk,
    })
}

/// The shortest and longest a `Cache-Control: max-age` may set the refresh to: an
/// IdP asking for less must not make every replica poll it; one asking for more
/// must not delay a rotation by a day.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(3600);

/// The `max-age` of a `Cache-Control` value, in seconds; `no-cache` and `no-store`
/// count as 0. `None` when it says neither (or is not text).
pub fn max_age(cache_control: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(cache_control).ok()?;
    let mut age = None;
    for directive in text.split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Some(v) = value
            && !v.is_empty()
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            // Huge values saturate; the clamp below caps them anyway.
            age = Some(v.parse().unwrap_or(u64::MAX));
        }
    }
    age
}

/// When a set is fetched next after a success: its `max-age`, clamped into
/// [`MIN_MAX_AGE`, `MAX_MAX_AGE`], else the entry's `refresh`.
pub fn refresh_after(configured: Duration, max_age: Option<u64>) -> Duration {
    match max_age {
        Some(secs) => Duration::from_secs(secs).clamp(MIN_MAX_AGE, MAX_MAX_AGE),
        None => configured,
    }
}

/// When a failed fetch is tried again: 1 s, 2 s, 4 s … after consecutive failures,
/// at most the set's refresh interval and at most a minute.
pub fn retry_after(failures: u32, interval: Duration) -> Duration {
    let backoff = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6));
    backoff.min(interval).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests;
