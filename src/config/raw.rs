//! The raw serde mirror of the TOML file: every key of SPEC §10, with its default,
//! and `deny_unknown_fields` everywhere so that a typo is an error naming the key.
//! Values stay close to their TOML form (durations and addresses as strings); the
//! typed, validated `Config` is built from this in `config/mod.rs`.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub admin: RawAdmin,
    pub upstream: RawUpstream,
    pub auth: RawAuth,
    pub traffic_limit: RawTrafficLimit,
    pub libraries: Vec<RawLibrary>,
    pub cache: RawCache,
    pub routes: RawRoutes,
    pub rate_limits: RawRateLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub shutdown_grace: String,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_header_bytes: u64,
    pub max_uri_bytes: u64,
    pub max_body_bytes: u64,
    pub max_connections: u64,
    pub max_in_flight: u64,
    pub listen_backlog: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "0.0.0.0:8080".into(),
            tls_cert: None,
            tls_key: None,
            shutdown_grace: "30s".into(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_header_bytes: 32768,
            max_uri_bytes: 16384,
            max_body_bytes: 1048576,
            max_connections: 10000,
            max_in_flight: 4096,
            listen_backlog: 4096,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: String,
    pub timeout: String,
    pub retries: u64,
    pub max_in_flight: u64,
    pub ca_file: Option<String>,
    pub credential: String,
    pub credential_claim: String,
    pub credential_env: String,
    pub token_period: String,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: None,
            connect_timeout: "2s".into(),
            timeout: "10s".into(),
            retries: 1,
            max_in_flight: 1024,
            ca_file: None,
            credential: "passthrough".into(),
            credential_claim: "smh_token".into(),
            credential_env: "SMH_ACCESS_TOKEN".into(),
            token_period: "1h".into(),
            client_cert: None,
            client_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub leeway: String,
    pub max_token_bytes: u64,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub jwks_file: Option<String>,
    pub keys: Vec<RawKey>,
    pub claims: RawClaims,
    pub jwks_urls: Vec<RawJwksUrl>,
    pub jwks_refetch_cooldown: String,
    pub jwks_max_stale: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            leeway: "30s".into(),
            max_token_bytes: 8192,
            issuers: None,
            audiences: None,
            jwks_file: None,
            keys: Vec::new(),
            claims: RawClaims::default(),
            jwks_urls: Vec::new(),
            jwks_refetch_cooldown: "30s".into(),
            jwks_max_stale: "24h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub kid: String,
    pub alg: String,
    pub issuer: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub public_key_file: Option<String>,
}

/// `[[auth.jwks_urls]]` (SPEC §14).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwksUrl {
    pub url: String,
    pub issuer: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub refresh: String,
    pub ca_file: Option<String>,
}

fn default_jwks_refresh() -> String {
    "5m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClaims {
    pub permissions: String,
    pub library: String,
    pub space: String,
    pub user: String,
}

impl Default for RawClaims {
    fn default() -> Self {
        RawClaims {
            permissions: "permissions".into(),
            library: "library_id".into(),
            space: "space_id".into(),
            user: "sub".into(),
        }
    }
}

/// Used for `[traffic_limit]` and for a library's `traffic_limit = {..}`; a key left
/// out inherits (the global defaults, or the global bounds for a library).
#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTrafficLimit {
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub default: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLibrary {
    pub id: String,
    #[serde(default)]
    pub multi_tenant: bool,
    pub traffic_limit: Option<RawTrafficLimit>,
    /// The SMH library secret (`upstream.credential = "library_secret"`).
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub rate_limits: Option<RawLibraryRateLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub enabled: bool,
    pub backend: String,
    pub redis_url: String,
    pub max_entries: u64,
    pub min_remaining: String,
    pub max_ttl: String,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: true,
            backend: "memory".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            max_entries: 100_000,
            min_remaining: "5m".into(),
            max_ttl: "30m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoutes {
    pub unmatched: String,
    pub rules: Vec<RawRule>,
}

impl Default for RawRoutes {
    fn default() -> Self {
        RawRoutes {
            unmatched: "deny".into(),
            rules: Vec::new(),
        }
    }
}

/// `[[routes.rules]]`: only `name` is required here; whether the rest may be left
/// out depends on whether the name is a built-in route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub method: Option<String>,
    pub path: Option<String>,
    pub flag: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub traffic_limit: Option<String>,
    pub params: Option<Vec<String>>,
}

/// `[rate_limits]` (SPEC §13): each limit is off when left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimits {
    pub backend: String,
    pub library: Option<RawLimit>,
    pub user: Option<RawLimit>,
    pub auth_failures: Option<RawLimit>,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            backend: "memory".into(),
            library: None,
            user: None,
            auth_failures: None,
        }
    }
}

/// A library's `rate_limits = { library = {..}, user = {..} }`: each replaces the
/// global limit of that kind for this library.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLibraryRateLimits {
    pub library: Option<RawLimit>,
    pub user: Option<RawLimit>,
}

/// `{ rate = N, per = "1s", burst = M }`; `rate` and `burst` are required, `per`
/// defaults to one second. Signed, so that a negative value is reported by the
/// validator with the key rather than as a serde type error.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub rate: i64,
    #[serde(default = "one_second")]
    pub per: String,
    pub burst: i64,
}

fn one_second() -> String {
    "1s".into()
}
