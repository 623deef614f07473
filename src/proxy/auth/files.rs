//! The keys a config's files name: `[[auth.keys]]` (an HMAC secret from an env var
//! or a file, or a public key PEM) and `auth.jwks_file`. Read at start and on every
//! reload; any problem is a config error naming the key.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::MIN_HMAC_SECRET_BYTES;
use super::jwks::{self, Origin};
use super::keys::VerifyKey;
use crate::config::{Config, ConfigError, KeySource};

/// Every key of `auth.keys` and `auth.jwks_file`, in that order.
pub fn load(config: &Config) -> Result<Vec<Arc<VerifyKey>>, ConfigError> {
    let auth = &config.auth;
    let file = config.source.as_path();
    let mut keys = Vec::new();
    for (i, k) in auth.keys.iter().enumerate() {
        keys.push(Arc::new(VerifyKey {
            kid: Some(k.kid.clone()),
            issuer: k.issuer.clone(),
            alg: k.alg,
            key: load_key(file, i, &k.source, k.alg)?,
            fetched: None,
        }));
    }
    if let Some(path) = &auth.jwks_file {
        for (kid, alg, key) in load_jwks(file, path)? {
            keys.push(Arc::new(VerifyKey {
                kid,
                issuer: None,
                alg,
                key,
                fetched: None,
            }));
        }
    }
    Ok(keys)
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

/// Keys from a JWKS file (the parser is the one URL sets use). A JWK that cannot
/// be used is skipped with a warning; one whose key is broken refuses the file.
fn load_jwks(
    file: &Path,
    path: &Path,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, ConfigError> {
    let err = |msg: String| ConfigError::new(file, Some("auth.jwks_file".into()), msg);
    let text =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let parsed =
        jwks::parse(&text, Origin::File).map_err(|e| err(format!("{}: {e}", path.display())))?;
    for (label, skip) in &parsed.skipped {
        if skip.is_error_in_file() {
            return Err(err(format!("JWK {label} {skip}")));
        }
        crate::log::warn(&format!("{}: JWK {label} {skip}; skipped", path.display()));
    }
    Ok(parsed
        .keys
        .into_iter()
        .map(|k| (k.kid, k.alg, k.key))
        .collect())
}
