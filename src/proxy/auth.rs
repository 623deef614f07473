//! Phase 2, auth: an access token becomes a verified [`Principal`] (SPEC §2).
//!
//! The steps, each with its own refusal reason:
//! size cap → exactly three segments (so JWE and garbage are refused) → header
//! parses (so `alg: none`, which jsonwebtoken has no variant for, is refused) →
//! key found by (`iss`, `kid`) → header `alg` equals the key's pinned `alg` (so a
//! token cannot pick HS256 against an RSA public key) → signature → `exp` (required),
//! `nbf`, `iss`, `aud` with `auth.leeway`. Header fields `jku`, `x5u`, `jwk`, `x5c`
//! are never read: keys come from the config only.

mod cache;

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ClaimNames, Config, ConfigError, CredentialMode, KeySource, parse_alg};
use crate::error::AuthFailure;
use crate::secret::Secret;
use cache::VerifiedCache;

/// Minimum HMAC secret length (SPEC §2): shorter secrets are brute-forceable.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Who is calling, as the verified token says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub library: Option<String>,
    /// Empty when the token has no space claim.
    pub spaces: Vec<String>,
    /// `None` when the user claim is absent or empty.
    pub user: Option<String>,
    pub permissions: Vec<String>,
    /// The upstream credential claim's value, when `upstream.credential = "claim"`.
    pub credential: Option<Secret>,
}

impl Principal {
    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// A verification key with its pinned algorithm and prepared validation rules.
struct VerifyKey {
    kid: Option<String>,
    issuer: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens against the configured keys. Built once per config (and again on
/// reload); cheap to share.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    /// When no key names an issuer, the payload need not be peeked before verifying.
    lookup_by_issuer: bool,
    claims: ClaimNames,
    max_token_bytes: usize,
    credential_claim: Option<String>,
    leeway_secs: u64,
    cache: VerifiedCache,
    /// Full verifications (cache misses): `smh_gateway_token_verifications_total`
    /// once the gateway hands in its counter.
    verifications: prometheus::IntCounter,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct IssuerPeek {
    iss: Option<Value>,
}

impl Verifier {
    /// Loads every key (env vars, files, JWKS) named by the config.
    pub fn from_config(config: &Config) -> Result<Verifier, ConfigError> {
        let auth = &config.auth;
        let file = config.source.as_path();
        let mut keys = Vec::new();
        for (i, k) in auth.keys.iter().enumerate() {
            let key = load_key(file, i, &k.source, k.alg)?;
            keys.push(VerifyKey {
                kid: Some(k.kid.clone()),
                issuer: k.issuer.clone(),
                alg: k.alg,
                key,
                validation: validation(config, k.alg),
            });
        }
        if let Some(path) = &auth.jwks_file {
            for (kid, alg, key) in load_jwks(file, path)? {
                keys.push(VerifyKey {
                    kid,
                    issuer: None,
                    alg,
                    key,
                    validation: validation(config, alg),
                });
            }
        }
        if keys.is_empty() {
            return Err(ConfigError::new(
                file,
                Some("auth.jwks_file".into()),
                "holds no usable key, and auth.keys is empty",
            ));
        }
        Ok(Verifier {
            lookup_by_issuer: keys.iter().any(|k| k.issuer.is_some()),
            keys,
            claims: auth.claims.clone(),
            max_token_bytes: auth.max_token_bytes,
            leeway_secs: leeway_secs(auth.leeway),
            cache: VerifiedCache::new(),
            verifications: prometheus::IntCounter::new("unregistered", "-").expect("valid metric"),
            credential_claim: match &config.upstream.credential {
                CredentialMode::Claim(name) => Some(name.clone()),
                _ => None,
            },
        })
    }

    /// Verifies a token, answering from the cache of recently verified tokens when
    /// it can (only the expiry is re-checked then: everything else about a token is
    /// fixed by its bytes and this config). This is what the pipeline calls.
    pub fn verify_cached(&self, token: &Secret) -> Result<Arc<Principal>, AuthFailure> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self.cache.get(token.expose(), now, self.leeway_secs) {
            return hit;
        }
        let (principal, exp) = self.verify_full(token)?;
        let principal = Arc::new(principal);
        self.cache
            .insert(token.expose(), principal.clone(), exp, now);
        Ok(principal)
    }

    /// Counts full verifications into `counter` (the gateway's registered one).
    pub fn count_verifications_into(&mut self, counter: prometheus::IntCounter) {
        self.verifications = counter;
    }

    /// Verifies a token from scratch.
    pub fn verify(&self, token: &Secret) -> Result<Principal, AuthFailure> {
        self.verify_full(token).map(|(principal, _)| principal)
    }

    /// Verifies a token; returns the principal and the token's `exp`.
    fn verify_full(&self, token: &Secret) -> Result<(Principal, u64), AuthFailure> {
        self.verifications.inc();
        let token = token.expose();
        if token.len() > self.max_token_bytes {
            return Err(AuthFailure::TooLarge);
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthFailure::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        // RFC 7515 §4.1.11: critical extensions we do not understand (we understand
        // none) must be refused; `enc` marks a JWE.
        if header.crit.is_some() || header.enc.is_some() {
            return Err(AuthFailure::Malformed);
        }
        let issuer = if self.lookup_by_issuer {
            let peek: IssuerPeek = jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|_| AuthFailure::Malformed)?;
            match peek.iss {
                None => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err(AuthFailure::Issuer),
            }
        } else {
            None
        };
        let key = self.find_key(issuer.as_deref(), header.kid.as_deref())?;
        if header.alg != key.alg {
            return Err(AuthFailure::AlgMismatch);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                    ErrorKind::ExpiredSignature => AuthFailure::Expired,
                    ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthFailure::Issuer,
                    ErrorKind::InvalidAudience => AuthFailure::Audience,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthFailure::Issuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthFailure::Audience,
                    ErrorKind::InvalidAlgorithm => AuthFailure::AlgMismatch,
                    // Missing or non-numeric exp, bad base64 or JSON, and whatever else
                    // jsonwebtoken may add (its ErrorKind is non_exhaustive).
                    _ => AuthFailure::Malformed,
                }
            })?;
        // A repeated member in the header or the claims: jsonwebtoken keeps the last,
        // another verifier in the operator's stack may read the first
        // (`{"library_id":"lib2","library_id":"lib1"}`). Checked after the signature,
        // so garbage costs no more than before.
        for part in token.split('.').take(2) {
            use base64::Engine as _;
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| AuthFailure::Malformed)?;
            crate::proxy::json::parse_strict(&json).map_err(|_| AuthFailure::Malformed)?;
        }
        // RFC 7519: `iss` is one StringOrURI. jsonwebtoken also accepts an array and
        // passes it when any element is listed; an array could smuggle an issuer in.
        if data.claims.get("iss").is_some_and(|iss| !iss.is_string()) {
            return Err(AuthFailure::Issuer);
        }
        // Present and numeric: jsonwebtoken validated it.
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |e| e as u64);
        Ok((self.principal(&data.claims)?, exp))
    }

    /// SPEC §2: a key is found by (`iss`, `kid`); a token without `kid` may use only
    /// the sole key for its issuer. A key without `issuer` serves any issuer, after
    /// the keys that name the token's issuer.
    fn find_key(&self, issuer: Option<&str>, kid: Option<&str>) -> Result<&VerifyKey, AuthFailure> {
        let keys = &self.keys;
        let found = match kid {
            Some(kid) => keys_for_issuer(keys, issuer)
                .find(|k| k.kid.as_deref() == Some(kid))
                .or_else(|| keys_for_issuer(keys, None).find(|k| k.kid.as_deref() == Some(kid))),
            None => match sole_key(keys, issuer) {
                Sole::One(k) => Some(k),
                Sole::Several => None,
                Sole::None if issuer.is_some() => match sole_key(keys, None) {
                    Sole::One(k) => Some(k),
                    Sole::Several | Sole::None => None,
                },
                Sole::None => None,
            },
        };
        found.ok_or(AuthFailure::UnknownKey)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthFailure> {
        let credential = match &self.credential_claim {
            None => None,
            Some(name) => match claims.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s.clone())),
                _ => return Err(AuthFailure::MissingCredentialClaim),
            },
        };
        // A library or user claim that is there but not a string (or number) is not
        // "absent": `"sub": false` must not count as an admin without a user.
        for name in [&self.claims.library, &self.claims.user] {
            if claims
                .get(name)
                .is_some_and(|v| !v.is_null() && scalar_string(v).is_none())
            {
                return Err(AuthFailure::Malformed);
            }
        }
        Ok(Principal {
            library: claims.get(&self.claims.library).and_then(scalar_string),
            spaces: claims
                .get(&self.claims.space)
                .map(string_list)
                .unwrap_or_default(),
            user: claims
                .get(&self.claims.user)
                .and_then(scalar_string)
                .filter(|u| !u.is_empty()),
            permissions: claims
                .get(&self.claims.permissions)
                .map(string_list)
                .unwrap_or_default(),
            credential,
        })
    }
}

fn keys_for_issuer<'k, 'i>(
    keys: &'k [VerifyKey],
    issuer: Option<&'i str>,
) -> impl Iterator<Item = &'k VerifyKey> + use<'k, 'i> {
    keys.iter().filter(move |k| k.issuer.as_deref() == issuer)
}

enum Sole<'k> {
    None,
    One(&'k VerifyKey),
    Several,
}

fn sole_key<'k>(keys: &'k [VerifyKey], issuer: Option<&str>) -> Sole<'k> {
    let mut it = keys_for_issuer(keys, issuer);
    match (it.next(), it.next()) {
        (None, _) => Sole::None,
        (Some(k), None) => Sole::One(k),
        (Some(_), Some(_)) => Sole::Several,
    }
}

/// A string claim; a number is accepted as its decimal form (ids are often numeric).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON array of strings, or one string separated by spaces or commas.
fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(scalar_string)
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Number(n) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

/// jsonwebtoken counts whole seconds: round up, so "500ms" still tolerates skew.
fn leeway_secs(leeway: std::time::Duration) -> u64 {
    leeway.as_secs() + u64::from(leeway.subsec_nanos() > 0)
}

fn validation(config: &Config, alg: Algorithm) -> Validation {
    let auth = &config.auth;
    let mut v = Validation::new(alg);
    v.leeway = leeway_secs(auth.leeway);
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuers) = &auth.issuers {
        v.set_issuer(issuers);
        required.push("iss");
    }
    match &auth.audiences {
        Some(audiences) => {
            v.set_audience(audiences);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn load_key(
    file: &Path,
    index: usize,
    source: &KeySource,
    alg: Algorithm,
) -> Result<DecodingKey, ConfigError> {
    let KeySource::PublicKeyFile(path) = source else {
        return hmac_secret(file, index, source).map(|secret| DecodingKey::from_secret(&secret));
    };
    let err = |msg: String| {
        ConfigError::new(
            file,
            Some(format!("auth.keys[{index}].public_key_file")),
            msg,
        )
    };
    let pem =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        // HMAC algorithms are refused by config validation before this point; the
        // catch-all also covers algorithms jsonwebtoken may add (non_exhaustive).
        _ => return Err(err(format!("{alg:?} cannot be used with public_key_file"))),
    };
    key.map_err(|e| {
        err(format!(
            "{} is not a {alg:?} public key in PEM: {e}",
            path.display()
        ))
    })
}

/// The raw bytes of the HMAC secret of `auth.keys[index]`, checked for length.
/// Used to verify (here) and to mint (`smh-gateway token`).
pub fn hmac_secret(file: &Path, index: usize, source: &KeySource) -> Result<Vec<u8>, ConfigError> {
    let err = |field: &str, msg: String| {
        ConfigError::new(file, Some(format!("auth.keys[{index}].{field}")), msg)
    };
    match source {
        KeySource::SecretEnv(var) => {
            let value = std::env::var_os(var).ok_or_else(|| {
                err(
                    "secret_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            let bytes = value.into_encoded_bytes();
            check_hmac_len(&bytes).map_err(|m| err("secret_env", format!("{var}: {m}")))?;
            Ok(bytes)
        }
        KeySource::SecretFile(path) => {
            let bytes = read_secret_file(path).map_err(|m| err("secret_file", m))?;
            check_hmac_len(&bytes)
                .map_err(|m| err("secret_file", format!("{}: {m}", path.display())))?;
            Ok(bytes)
        }
        KeySource::PublicKeyFile(_) => Err(err(
            "public_key_file",
            "not an HMAC key: it cannot mint tokens".into(),
        )),
    }
}

/// An HMAC secret file: its raw bytes, less one trailing `\n` or `\r\n`.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    Ok(bytes)
}

fn check_hmac_len(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "HMAC secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
            bytes.len()
        ));
    }
    Ok(())
}

/// Keys from a JWKS file. A JWK without `alg`, or with one SPEC §2 does not list, is
/// skipped with a warning: guessing an algorithm is how confusion attacks start.
fn load_jwks(
    file: &Path,
    path: &Path,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, ConfigError> {
    let err = |msg: String| ConfigError::new(file, Some("auth.jwks_file".into()), msg);
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| err(format!("{} is not a JWKS: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
        let Some(alg_name) = jwk.common.key_algorithm.map(|a| a.to_string()) else {
            crate::log::warn(&format!(
                "{}: JWK {label} has no \"alg\"; skipped",
                path.display()
            ));
            continue;
        };
        let Some(alg) = parse_alg(&alg_name) else {
            crate::log::warn(&format!(
                "{}: JWK {label} has unsupported alg {alg_name}; skipped",
                path.display()
            ));
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("JWK {label}: {e}")))?;
        if let Ok(secret) = key.try_get_as_bytes() {
            check_hmac_len(secret).map_err(|m| err(format!("JWK {label}: {m}")))?;
        }
        out.push((kid, alg, key));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
