//! Phase 2, auth: an access token becomes a verified [`Principal`] (SPEC §2).
//!
//! The steps, each with its own refusal reason:
//! size cap → exactly three segments (so JWE and garbage are refused) → header
//! parses (so `alg: none`, which jsonwebtoken has no variant for, is refused) →
//! key found by (`iss`, `kid`) → header `alg` equals the key's pinned `alg` (so a
//! token cannot pick HS256 against an RSA public key) → signature → `exp` (required),
//! `nbf`, `iss`, `aud` with `auth.leeway`. Header fields `jku`, `x5u`, `jwk`, `x5c`
//! are never read: keys come from the config and its JWKS URLs only.
//!
//! The checks here are pure: they take the [`KeySet`] in force as an argument.
//! Where keys come from is the submodules' concern:
//! - `keys`: the [`KeySet`] value and the [`KeyStore`] that swaps it atomically;
//! - `files`: `auth.keys` and `auth.jwks_file`, read at start and on reload;
//! - `jwks`: the JWKS parser (files and URLs), `Cache-Control`;
//! - `source`: one `auth.jwks_urls` set (fetch, cooldown, stale) and the refresher;
//! - `cache`: recently verified tokens, tied to the key set's generation.
//!
//! [`Verifier::authenticate`] is what the pipeline calls: a token whose `kid` no key
//! has asks the store for one refetch of its issuer's JWKS URLs (cooldown-bound),
//! then is verified once more.

mod cache;
mod files;
pub mod jwks;
pub mod keys;
pub mod source;

use std::sync::{Arc, OnceLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cache::CredentialDigest;
use crate::config::{ClaimNames, Config, ConfigError, CredentialMode, SUPPORTED_ALGS, parse_alg};
use crate::error::AuthFailure;
use crate::secret::Secret;
use cache::VerifiedCache;
pub use files::{hmac_secret, read_secret_file};
pub use keys::{JwksStats, KeySet, KeySources, KeyStore, Readiness};
pub use source::refresh_loop;

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
    pub credential: Option<Secret<'static>>,
    /// The renew cache's digest of the token this principal was verified from,
    /// computed on the first cache lookup and kept with the verified token (see
    /// [`Principal::token_digest`]).
    pub token_digest: OnceLock<CredentialDigest>,
}

impl Principal {
    /// The cache-key digest of `token`, which must be the token this principal was
    /// verified from (the verified-token cache hands a principal back only for the
    /// token it was verified from): hashed once per token, not once per request.
    pub fn token_digest(&self, token: &Secret<'_>) -> CredentialDigest {
        *self
            .token_digest
            .get_or_init(|| CredentialDigest::of(token))
    }

    pub fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

/// Verifies tokens: the config's rules (claims, leeway, issuers, audiences, size),
/// its file keys and JWKS URLs to hand to the [`KeyStore`], and the cache of
/// verified tokens. Built once per config (and again on reload); cheap to share.
pub struct Verifier {
    /// The validation rules of each algorithm SPEC §2 lists.
    validations: Vec<(Algorithm, Validation)>,
    sources: KeySources,
    /// The file keys alone, for [`Verifier::verify`].
    file_set: KeySet,
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
            .field("file_keys", &self.file_set.len())
            .finish_non_exhaustive()
    }
}

/// A token that verified, and what its cache entry needs.
struct Verified {
    principal: Principal,
    exp: u64,
    key: Arc<keys::VerifyKey>,
}

#[derive(Deserialize)]
struct IssuerPeek {
    iss: Option<Value>,
}

impl Verifier {
    /// Reads every key file the config names and prepares its JWKS URLs (nothing
    /// is fetched here).
    pub fn from_config(config: &Config) -> Result<Verifier, ConfigError> {
        let auth = &config.auth;
        let sources = KeySources::from_config(config)?;
        Ok(Verifier {
            validations: SUPPORTED_ALGS
                .iter()
                .filter_map(|name| parse_alg(name))
                .map(|alg| (alg, validation(config, alg)))
                .collect(),
            file_set: sources.file_set(),
            sources,
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

    /// The file keys and JWKS URLs of this config, for the [`KeyStore`].
    pub fn key_sources(&self) -> &KeySources {
        &self.sources
    }

    /// What the pipeline calls: verifies against the store's current keys (from the
    /// cache when it can); an unknown `kid` refetches its issuer's JWKS URLs once,
    /// as the cooldown allows, and the token is tried again if the keys changed.
    pub async fn authenticate(
        &self,
        store: &KeyStore,
        token: &Secret<'_>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let keys = store.current();
        match self.verify_cached(&keys, token) {
            Err(AuthFailure::UnknownKey) if store.has_sources() => {
                store.refetch(token_issuer(token.expose()).as_deref()).await;
                let now = store.current();
                if now.generation() == keys.generation() {
                    return Err(AuthFailure::UnknownKey);
                }
                self.verify_cached(&now, token)
            }
            other => other,
        }
    }

    /// Verifies a token against `keys`, answering from the cache of recently
    /// verified tokens when it can: only the expiry, the key set's generation and
    /// the freshness of the token's JWKS set are re-checked then (everything else
    /// about a token is fixed by its bytes, this config and those keys).
    pub fn verify_cached(
        &self,
        keys: &KeySet,
        token: &Secret<'_>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self.cache.get(token.expose(), now, self.leeway_secs, keys) {
            return hit;
        }
        let verified = self.verify_full(keys, token)?;
        let principal = Arc::new(verified.principal);
        self.cache.insert(
            token.expose(),
            principal.clone(),
            verified.exp,
            now,
            keys.generation(),
            verified.key.fetched.clone(),
        );
        Ok(principal)
    }

    /// Counts full verifications into `counter` (the gateway's registered one).
    pub fn count_verifications_into(&mut self, counter: prometheus::IntCounter) {
        self.verifications = counter;
    }

    /// The keys of `auth.keys` and `auth.jwks_file` (tests, tools, fuzzing).
    pub fn file_set(&self) -> &KeySet {
        &self.file_set
    }

    /// Verifies a token from scratch against the file keys alone (tests, tools).
    pub fn verify(&self, token: &Secret<'_>) -> Result<Principal, AuthFailure> {
        self.verify_full(&self.file_set, token)
            .map(|verified| verified.principal)
    }

    fn validation(&self, alg: Algorithm) -> Result<&Validation, AuthFailure> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthFailure::AlgMismatch)
    }

    /// Verifies a token against `keys`.
    fn verify_full(&self, keys: &KeySet, token: &Secret<'_>) -> Result<Verified, AuthFailure> {
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
        let issuer = if keys.lookup_by_issuer() {
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
        let key = keys.find(issuer.as_deref(), header.kid.as_deref())?;
        if header.alg != key.alg {
            return Err(AuthFailure::AlgMismatch);
        }
        if !keys.may_serve(key.fetched.as_deref(), keys::now_ms()) {
            return Err(AuthFailure::KeysStale);
        }
        let validation = self.validation(key.alg)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
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
        Ok(Verified {
            principal: self.principal(&data.claims)?,
            exp,
            key: key.clone(),
        })
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
            token_digest: OnceLock::new(),
        })
    }
}

/// The token's `iss`, read without verifying (which set to refetch for an unknown
/// kid; the token is verified in full afterwards).
fn token_issuer(token: &str) -> Option<String> {
    jsonwebtoken::dangerous::insecure_decode_claims::<IssuerPeek>(token)
        .ok()
        .and_then(|peek| match peek.iss {
            Some(Value::String(s)) => Some(s),
            _ => None,
        })
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

#[cfg(test)]
mod tests;
