//! Minting tokens with a configured HMAC key (`smh-gateway token`, and the demo).
//! The token carries exactly what the gateway checks: `kid`, `iat`, `exp`,
//! permissions as an array, the library, the space(s) and the user under the
//! configured claim names, plus `iss`/`aud` when the key or config asks for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::config::{Config, ConfigError};
use crate::proxy::auth::hmac_secret;
use crate::secret::Secret;

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub kid: String,
    pub library: String,
    pub spaces: Vec<String>,
    pub user: Option<String>,
    pub permissions: Vec<String>,
    pub ttl: Duration,
}

/// Mints a token with the HMAC key `spec.kid` of the config.
pub fn mint(config: &Config, spec: &TokenSpec) -> Result<Secret<'static>, ConfigError> {
    let file = config.source.as_path();
    let (index, key) = config
        .auth
        .keys
        .iter()
        .enumerate()
        .find(|(_, k)| k.kid == spec.kid)
        .ok_or_else(|| {
            ConfigError::new(
                file,
                Some("auth.keys".into()),
                format!("no key with kid {:?}", spec.kid),
            )
        })?;
    let secret = hmac_secret(file, index, &key.source)?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let names = &config.auth.claims;
    let mut claims = Map::new();
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + spec.ttl.as_secs()));
    claims.insert(names.library.clone(), json!(spec.library));
    claims.insert(names.permissions.clone(), json!(spec.permissions));
    match spec.spaces.as_slice() {
        [] => {}
        [one] => {
            claims.insert(names.space.clone(), json!(one));
        }
        many => {
            claims.insert(names.space.clone(), json!(many));
        }
    }
    if let Some(user) = &spec.user {
        claims.insert(names.user.clone(), json!(user));
    }
    if let Some(iss) = &key.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = config.auth.audiences.as_ref().and_then(|a| a.first()) {
        claims.insert("aud".into(), json!(aud));
    }

    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        &Value::Object(claims),
        &EncodingKey::from_secret(&secret),
    )
    .map(Secret::new)
    .map_err(|e| {
        ConfigError::new(
            file,
            Some(format!("auth.keys[{index}]")),
            format!("cannot sign: {e}"),
        )
    })
}

/// Parses `--permissions p1,p2`.
pub fn parse_permissions(list: &str) -> Vec<String> {
    list.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}
