//! Configuration: one TOML file, read into the raw serde mirror (`raw.rs`), then
//! validated into the typed [`Config`] below. Every error names the file and the
//! dotted key (`upstream.timeout`, `libraries[0].traffic_limit.min`), because
//! `smh-gateway check` prints it and an operator has to find the line.
//!
//! Reading secrets (env vars, key files) is not done here but in
//! `proxy::auth::Verifier::from_config` and `proxy::rewrite::Credential`: the file can
//! be validated on a machine that does not hold the secrets, and `check` then runs
//! both steps.

mod raw;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;

use crate::template::Template;
use raw::{RawConfig, RawTrafficLimit};

/// A configuration problem: the file, the dotted key when there is one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, key: Option<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.file.display(), key, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole validated configuration. Cloneable so that a reload can build a new
/// one beside the running one and swap it in atomically.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from: key and secret file paths are reported against it.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub traffic_limit: TrafficLimitBounds,
    pub libraries: Vec<LibraryConfig>,
    pub cache: CacheConfig,
    pub routes: RoutesConfig,
    pub rate_limits: RateLimitsConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_in_flight: usize,
    /// The main listener's listen queue; fixed for the process.
    pub listen_backlog: u32,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL; the request path is appended to its own path.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// Upstream exchanges at once, coalesced flights included; past it a request
    /// is refused with 503 (an extension beyond SPEC §10).
    pub max_in_flight: usize,
    pub ca_file: Option<PathBuf>,
    pub credential: CredentialMode,
    /// `upstream.token_period`: the `period` asked of SMH for managed tokens.
    pub token_period: Duration,
    /// The client certificate presented to an https upstream (mTLS).
    pub client_auth: Option<ClientAuthFiles>,
}

/// `upstream.client_cert` / `upstream.client_key`: PEM paths, read when the
/// upstream client is built (at start and on every reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which access_token the gateway sends upstream (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialMode {
    /// The caller's own token.
    Passthrough,
    /// The value of this claim of the verified token.
    Claim(String),
    /// The SMH token in this environment variable.
    Static { env: String },
    /// SMH tokens the gateway obtains itself with each library's secret (SPEC §12).
    LibrarySecret,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub leeway: Duration,
    pub max_token_bytes: usize,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub jwks_file: Option<PathBuf>,
    pub keys: Vec<KeyConfig>,
    pub claims: ClaimNames,
    /// `[[auth.jwks_urls]]`: key sets fetched from identity providers (SPEC §14).
    pub jwks_urls: Vec<JwksUrlConfig>,
    /// Unknown kids refetch a key set at most once per this.
    pub jwks_refetch_cooldown: Duration,
    /// A key set whose refreshes fail serves this long after its last success.
    pub jwks_max_stale: Duration,
}

/// One `[[auth.jwks_urls]]` entry. Two entries are the same key set when they are
/// equal, which is what lets a reload keep a fetched set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrlConfig {
    /// https, or http to a loopback host.
    pub url: Uri,
    /// Its keys serve only tokens whose `iss` is this.
    pub issuer: Option<String>,
    /// How often it is fetched when the answer carries no `Cache-Control: max-age`.
    pub refresh: Duration,
    /// CA certificates (PEM) for its TLS, instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub kid: String,
    pub alg: Algorithm,
    pub issuer: Option<String>,
    pub source: KeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    SecretEnv(String),
    SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub permissions: String,
    pub library: String,
    pub space: String,
    pub user: String,
}

/// A traffic_limit range in bytes/s, and the value sent when the caller sends none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficLimitBounds {
    pub min: u64,
    pub max: u64,
    pub default: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LibraryConfig {
    pub id: String,
    pub multi_tenant: bool,
    /// The library's own bounds, already merged with the global ones.
    pub traffic_limit: TrafficLimitBounds,
    /// The library's own limits; `None` of a kind falls back to the global one.
    pub rate_limits: LibraryRateLimits,
    /// Where its SMH library secret is (read by `proxy::credentials`, not here).
    pub secret: Option<SecretSource>,
}

/// Where a library secret is read from: an env var or a file (one trailing `\n` or
/// `\r\n` dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// `[rate_limits]` (SPEC §13); a limit left out is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitsConfig {
    pub backend: RateLimitBackend,
    pub library: Option<Limit>,
    pub user: Option<Limit>,
    pub auth_failures: Option<Limit>,
}

/// A library's overrides of `rate_limits.library` and `rate_limits.user`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LibraryRateLimits {
    pub library: Option<Limit>,
    pub user: Option<Limit>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateLimitBackend {
    #[default]
    Memory,
    /// Shared by every replica, at `cache.redis_url`.
    Redis,
}

/// `rate` requests per `per`, in bursts of up to `burst` (a GCRA: see `ratelimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
}

/// Bounds that keep a limit's arithmetic exact (microseconds in a u64 and in a Lua
/// double): one request per microsecond at most, a window of a day at most.
pub const MAX_LIMIT_BURST: i64 = 1_000_000;
pub const MAX_LIMIT_PER: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub backend: CacheBackend,
    pub redis_url: String,
    pub max_entries: usize,
    pub min_remaining: Duration,
    pub max_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    Memory,
    Redis,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    pub unmatched: Unmatched,
    pub rules: Vec<RouteRule>,
}

/// An operator's `[[routes.rules]]` entry (SPEC §11): a new row, or the fields it
/// gives replacing a built-in row's (same name). Whether the name is built in is
/// the route table's to say (`proxy::route::Router::new`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub name: String,
    pub method: Option<String>,
    pub path: Option<Template>,
    pub flag: Option<String>,
    pub permissions: Option<Vec<String>>,
    /// `Some(true)` for `"clamp"`, `Some(false)` for `"drop"`.
    pub traffic_limit: Option<bool>,
    pub params: Option<Vec<String>>,
}

/// What happens to a request that is not a known operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    Forward,
}

/// The algorithms SPEC §2 lists; anything else in `alg` is a config error.
pub const SUPPORTED_ALGS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

pub fn parse_alg(name: &str) -> Option<Algorithm> {
    if !SUPPORTED_ALGS.contains(&name) {
        return None;
    }
    name.parse().ok()
}

/// Clock skew tolerated at most; more would make `exp` meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The largest `server.listen_backlog` accepted (Linux caps it further at
/// `net.core.somaxconn`).
pub const MAX_LISTEN_BACKLOG: u32 = 65_535;

/// The settings fixed for the life of the process (SPEC §15): the sockets bound at
/// start and the cache backend connected at start. A reload whose file changes one
/// of them is refused as a whole; everything else in [`Config`] is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    pub listen: SocketAddr,
    pub listen_backlog: u32,
    pub admin_listen: SocketAddr,
    pub cache_enabled: bool,
    pub cache_backend: CacheBackend,
    pub cache_redis_url: String,
}

impl Fixed {
    /// The dotted keys whose values differ between `self` (running) and `new`.
    pub fn changes(&self, new: &Fixed) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |changed: bool, key| {
            if changed {
                keys.push(key);
            }
        };
        check(self.listen != new.listen, "server.listen");
        check(
            self.listen_backlog != new.listen_backlog,
            "server.listen_backlog",
        );
        check(self.admin_listen != new.admin_listen, "admin.listen");
        check(self.cache_enabled != new.cache_enabled, "cache.enabled");
        check(self.cache_backend != new.cache_backend, "cache.backend");
        check(
            self.cache_redis_url != new.cache_redis_url,
            "cache.redis_url",
        );
        keys
    }
}

/// Global traffic_limit defaults (SPEC §4): 100 KiB/s to 100 MiB/s.
pub const TRAFFIC_LIMIT_MIN: u64 = 102_400;
pub const TRAFFIC_LIMIT_MAX: u64 = 104_857_600;

impl Config {
    /// Read and validate a file. Does not touch secrets or the network.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, None, format!("cannot read file: {e}")))?;
        Config::parse(path, &text)
    }

    /// Validate TOML text; `path` is only used in messages and to resolve nothing.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = parse_raw(path, text)?;
        Validator { file: path }.config(raw)
    }

    /// The traffic_limit bounds that apply to a library.
    pub fn traffic_limit_for(&self, library: &str) -> &TrafficLimitBounds {
        self.library(library)
            .map(|l| &l.traffic_limit)
            .unwrap_or(&self.traffic_limit)
    }

    /// The part of this config that a reload cannot change.
    pub fn fixed(&self) -> Fixed {
        Fixed {
            listen: self.server.listen,
            listen_backlog: self.server.listen_backlog,
            admin_listen: self.admin.listen,
            cache_enabled: self.cache.enabled,
            cache_backend: self.cache.backend,
            cache_redis_url: self.cache.redis_url.clone(),
        }
    }

    /// The library and user limits that apply to a library: its own, else the
    /// global ones.
    pub fn rate_limits_for(&self, library: &str) -> LibraryRateLimits {
        let own = self
            .library(library)
            .map(|l| l.rate_limits)
            .unwrap_or_default();
        LibraryRateLimits {
            library: own.library.or(self.rate_limits.library),
            user: own.user.or(self.rate_limits.user),
        }
    }

    pub fn library(&self, id: &str) -> Option<&LibraryConfig> {
        self.libraries.iter().find(|l| l.id == id)
    }
}

fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new(path, None, format!("TOML syntax: {}", one_line(&e))))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // The path already ends with an unknown field's name; a missing field is
        // reported at its table, so name the field itself.
        // The root path prints as "." too, as does a key named "." (found by the
        // config fuzz target): tell them apart by counting segments.
        let at_root = e.path().iter().next().is_none();
        let mut key = (!at_root).then(|| e.path().to_string());
        let message = e.into_inner().message().to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            key = Some(match key {
                None => field.to_string(),
                Some(table) => format!("{table}.{field}"),
            });
        }
        ConfigError::new(path, key, one_line(&message))
    })
}

fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Turns the raw mirror into the typed config, naming the key of each problem.
struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, Some(key.to_string()), message)
    }

    fn duration(&self, key: &str, value: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value).map_err(|e| {
            self.err(
                key,
                format!("invalid duration {value:?} ({e}); use e.g. \"250ms\", \"10s\", \"5m\""),
            )
        })
    }

    fn positive_duration(&self, key: &str, value: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(key, value)?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                format!("invalid address {value:?}; use IP:PORT, e.g. \"127.0.0.1:8080\""),
            )
        })
    }

    fn count(&self, key: &str, value: u64, min: u64) -> Result<usize, ConfigError> {
        if value < min {
            return Err(self.err(key, format!("must be at least {min}, got {value}")));
        }
        usize::try_from(value).map_err(|_| self.err(key, "too large"))
    }

    fn path(&self, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
        if value.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(PathBuf::from(value))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let traffic_limit = self.global_traffic_limit(&raw.traffic_limit)?;
        let libraries = self.libraries(&raw.libraries, &traffic_limit)?;
        let upstream = self.upstream(&raw.upstream)?;
        if upstream.credential == CredentialMode::LibrarySecret {
            self.managed_libraries(&libraries)?;
        }
        Ok(Config {
            source: self.file.to_path_buf(),
            server: self.server(&raw.server)?,
            admin: AdminConfig {
                listen: self.addr("admin.listen", &raw.admin.listen)?,
            },
            upstream,
            auth: self.auth(&raw.auth)?,
            traffic_limit,
            libraries,
            cache: self.cache(&raw.cache)?,
            rate_limits: self.rate_limits(&raw.rate_limits)?,
            routes: RoutesConfig {
                rules: self.rules(&raw.routes.rules)?,
                unmatched: match raw.routes.unmatched.as_str() {
                    "deny" => Unmatched::Deny,
                    "forward" => Unmatched::Forward,
                    other => {
                        return Err(self.err(
                            "routes.unmatched",
                            format!("must be \"deny\" or \"forward\", got {other:?}"),
                        ));
                    }
                },
            },
        })
    }

    fn server(&self, s: &raw::RawServer) -> Result<ServerConfig, ConfigError> {
        let tls = match (&s.tls_cert, &s.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: self.path("server.tls_cert", cert)?,
                key: self.path("server.tls_key", key)?,
            }),
            (Some(_), None) => {
                return Err(self.err("server.tls_key", "required when server.tls_cert is set"));
            }
            (None, Some(_)) => {
                return Err(self.err("server.tls_cert", "required when server.tls_key is set"));
            }
        };
        Ok(ServerConfig {
            listen: self.addr("server.listen", &s.listen)?,
            tls,
            shutdown_grace: self.duration("server.shutdown_grace", &s.shutdown_grace)?,
            header_read_timeout: self
                .positive_duration("server.header_read_timeout", &s.header_read_timeout)?,
            idle_timeout: self.positive_duration("server.idle_timeout", &s.idle_timeout)?,
            max_header_bytes: self.count("server.max_header_bytes", s.max_header_bytes, 1024)?,
            max_uri_bytes: self.count("server.max_uri_bytes", s.max_uri_bytes, 256)?,
            max_body_bytes: self.count("server.max_body_bytes", s.max_body_bytes, 0)?,
            max_connections: self.count("server.max_connections", s.max_connections, 1)?,
            max_in_flight: self.count("server.max_in_flight", s.max_in_flight, 1)?,
            listen_backlog: u32::try_from(s.listen_backlog)
                .ok()
                .filter(|b| (1..=MAX_LISTEN_BACKLOG).contains(b))
                .ok_or_else(|| {
                    self.err(
                        "server.listen_backlog",
                        format!("must be 1..={MAX_LISTEN_BACKLOG}, got {}", s.listen_backlog),
                    )
                })?,
        })
    }

    fn upstream(&self, u: &raw::RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let Some(url) = &u.url else {
            return Err(self.err(
                "upstream.url",
                "required (the SMH base URL, e.g. \"https://api.tencentsmh.cn\")",
            ));
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| self.err("upstream.url", format!("invalid URL {url:?}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(self.err(
                    "upstream.url",
                    format!("must start with http:// or https://, got {url:?}"),
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.err("upstream.url", format!("has no host: {url:?}")));
        }
        if uri.query().is_some() {
            return Err(self.err("upstream.url", "must not carry a query"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(self.err("upstream.url", "must not carry user info"));
        }
        let credential = match u.credential.as_str() {
            "passthrough" => CredentialMode::Passthrough,
            "claim" => {
                if u.credential_claim.is_empty() {
                    return Err(self.err("upstream.credential_claim", "must not be empty"));
                }
                CredentialMode::Claim(u.credential_claim.clone())
            }
            "static" => {
                if u.credential_env.is_empty() {
                    return Err(self.err("upstream.credential_env", "must not be empty"));
                }
                CredentialMode::Static {
                    env: u.credential_env.clone(),
                }
            }
            "library_secret" => CredentialMode::LibrarySecret,
            other => {
                return Err(self.err(
                    "upstream.credential",
                    format!(
                        "must be \"passthrough\", \"claim\", \"static\" or \"library_secret\", got {other:?}"
                    ),
                ));
            }
        };
        let token_period = self.positive_duration("upstream.token_period", &u.token_period)?;
        if token_period.subsec_nanos() != 0 {
            return Err(self.err(
                "upstream.token_period",
                "must be whole seconds (SMH's period is in seconds)",
            ));
        }
        Ok(UpstreamConfig {
            url: uri,
            connect_timeout: self
                .positive_duration("upstream.connect_timeout", &u.connect_timeout)?,
            timeout: self.positive_duration("upstream.timeout", &u.timeout)?,
            retries: u32::try_from(u.retries)
                .ok()
                .filter(|r| *r <= 10)
                .ok_or_else(|| {
                    self.err(
                        "upstream.retries",
                        format!("must be 0..=10, got {}", u.retries),
                    )
                })?,
            max_in_flight: self.count("upstream.max_in_flight", u.max_in_flight, 1)?,
            ca_file: u
                .ca_file
                .as_deref()
                .map(|p| self.path("upstream.ca_file", p))
                .transpose()?,
            credential,
            token_period,
            client_auth: match (&u.client_cert, &u.client_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(ClientAuthFiles {
                    cert: self.path("upstream.client_cert", cert)?,
                    key: self.path("upstream.client_key", key)?,
                }),
                (Some(_), None) => {
                    return Err(self.err(
                        "upstream.client_key",
                        "required when upstream.client_cert is set",
                    ));
                }
                (None, Some(_)) => {
                    return Err(self.err(
                        "upstream.client_cert",
                        "required when upstream.client_key is set",
                    ));
                }
            },
        })
    }

    /// `upstream.credential = "library_secret"`: at least one library, each with
    /// its secret (SPEC §12).
    fn managed_libraries(&self, libraries: &[LibraryConfig]) -> Result<(), ConfigError> {
        if libraries.is_empty() {
            return Err(self.err(
                "libraries",
                "upstream.credential = \"library_secret\" needs at least one [[libraries]] entry with its secret",
            ));
        }
        if let Some(i) = libraries.iter().position(|l| l.secret.is_none()) {
            return Err(self.err(
                &format!("libraries[{i}].secret_env"),
                "upstream.credential = \"library_secret\": give secret_env or secret_file",
            ));
        }
        Ok(())
    }

    fn auth(&self, a: &raw::RawAuth) -> Result<AuthConfig, ConfigError> {
        let mut keys = Vec::with_capacity(a.keys.len());
        let mut seen = HashSet::new();
        for (i, k) in a.keys.iter().enumerate() {
            let at = |field: &str| format!("auth.keys[{i}].{field}");
            if k.kid.is_empty() {
                return Err(self.err(&at("kid"), "must not be empty"));
            }
            if !seen.insert((k.issuer.clone(), k.kid.clone())) {
                return Err(self.err(
                    &at("kid"),
                    format!("duplicate kid {:?} for this issuer", k.kid),
                ));
            }
            let alg = parse_alg(&k.alg).ok_or_else(|| {
                self.err(
                    &at("alg"),
                    format!(
                        "unsupported algorithm {:?}; one of {}",
                        k.alg,
                        SUPPORTED_ALGS.join(", ")
                    ),
                )
            })?;
            let is_hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
            let source = match (&k.secret_env, &k.secret_file, &k.public_key_file) {
                (Some(env), None, None) if is_hmac => {
                    if env.is_empty() {
                        return Err(self.err(&at("secret_env"), "must not be empty"));
                    }
                    KeySource::SecretEnv(env.clone())
                }
                (None, Some(file), None) if is_hmac => {
                    KeySource::SecretFile(self.path(&at("secret_file"), file)?)
                }
                (None, None, Some(file)) if !is_hmac => {
                    KeySource::PublicKeyFile(self.path(&at("public_key_file"), file)?)
                }
                (None, None, None) => {
                    let want = if is_hmac {
                        "secret_env or secret_file"
                    } else {
                        "public_key_file"
                    };
                    return Err(self.err(&at("kid"), format!("key {:?} needs {want}", k.kid)));
                }
                (_, _, Some(_)) if is_hmac => {
                    return Err(self.err(
                        &at("public_key_file"),
                        format!(
                            "{} is an HMAC algorithm: use secret_env or secret_file",
                            k.alg
                        ),
                    ));
                }
                (Some(_), _, _) | (_, Some(_), _) if !is_hmac => {
                    let field = if k.secret_env.is_some() {
                        "secret_env"
                    } else {
                        "secret_file"
                    };
                    return Err(self.err(
                        &at(field),
                        format!("{} is a public-key algorithm: use public_key_file", k.alg),
                    ));
                }
                _ => {
                    return Err(self.err(
                        &at("kid"),
                        "give exactly one of secret_env, secret_file, public_key_file",
                    ));
                }
            };
            if k.issuer.as_deref() == Some("") {
                return Err(self.err(&at("issuer"), "must not be empty (leave it out instead)"));
            }
            keys.push(KeyConfig {
                kid: k.kid.clone(),
                alg,
                issuer: k.issuer.clone(),
                source,
            });
        }
        let jwks_file = a
            .jwks_file
            .as_deref()
            .map(|p| self.path("auth.jwks_file", p))
            .transpose()?;
        let jwks_urls = self.jwks_urls(&a.jwks_urls)?;
        if keys.is_empty() && jwks_file.is_none() && jwks_urls.is_empty() {
            return Err(self.err(
                "auth.keys",
                "at least one key is required (in auth.keys, auth.jwks_file or auth.jwks_urls)",
            ));
        }
        let list =
            |key: &str, v: &Option<Vec<String>>| -> Result<Option<Vec<String>>, ConfigError> {
                match v {
                    Some(items) if items.is_empty() => {
                        Err(self.err(key, "must not be empty (leave it out to skip the check)"))
                    }
                    Some(items) if items.iter().any(String::is_empty) => {
                        Err(self.err(key, "must not hold an empty string"))
                    }
                    other => Ok(other.clone()),
                }
            };
        let claim = |field: &str, v: &str| -> Result<String, ConfigError> {
            if v.is_empty() {
                return Err(self.err(&format!("auth.claims.{field}"), "must not be empty"));
            }
            Ok(v.to_string())
        };
        Ok(AuthConfig {
            leeway: {
                let leeway = self.duration("auth.leeway", &a.leeway)?;
                if leeway > MAX_LEEWAY {
                    return Err(self.err(
                        "auth.leeway",
                        "must be at most 1h: a larger leeway accepts long-expired tokens",
                    ));
                }
                leeway
            },
            max_token_bytes: self.count("auth.max_token_bytes", a.max_token_bytes, 64)?,
            issuers: list("auth.issuers", &a.issuers)?,
            audiences: list("auth.audiences", &a.audiences)?,
            jwks_file,
            keys,
            jwks_urls,
            jwks_refetch_cooldown: self
                .positive_duration("auth.jwks_refetch_cooldown", &a.jwks_refetch_cooldown)?,
            jwks_max_stale: self.positive_duration("auth.jwks_max_stale", &a.jwks_max_stale)?,
            claims: ClaimNames {
                permissions: claim("permissions", &a.claims.permissions)?,
                library: claim("library", &a.claims.library)?,
                space: claim("space", &a.claims.space)?,
                user: claim("user", &a.claims.user)?,
            },
        })
    }

    /// `[[auth.jwks_urls]]`: checked here, fetched only by `serve` (SPEC §14).
    fn jwks_urls(&self, urls: &[raw::RawJwksUrl]) -> Result<Vec<JwksUrlConfig>, ConfigError> {
        let mut out: Vec<JwksUrlConfig> = Vec::with_capacity(urls.len());
        for (i, u) in urls.iter().enumerate() {
            let at = |field: &str| format!("auth.jwks_urls[{i}].{field}");
            let uri: Uri = u
                .url
                .parse()
                .map_err(|_| self.err(&at("url"), format!("invalid URL {:?}", u.url)))?;
            let host = uri.host().unwrap_or_default();
            if host.is_empty() || uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(self.err(&at("url"), "needs a host and no user info"));
            }
            match uri.scheme_str() {
                Some("https") => {}
                Some("http") if is_loopback_host(host) => {}
                Some("http") => {
                    return Err(self.err(
                        &at("url"),
                        "http is allowed only to a loopback host (127.0.0.1, ::1, localhost); use https",
                    ));
                }
                _ => return Err(self.err(&at("url"), "must start with https://")),
            }
            if u.issuer.as_deref() == Some("") {
                return Err(self.err(&at("issuer"), "must not be empty (leave it out instead)"));
            }
            let entry = JwksUrlConfig {
                url: uri,
                issuer: u.issuer.clone(),
                refresh: self.positive_duration(&at("refresh"), &u.refresh)?,
                ca_file: u
                    .ca_file
                    .as_deref()
                    .map(|p| self.path(&at("ca_file"), p))
                    .transpose()?,
            };
            if out
                .iter()
                .any(|o| o.url == entry.url && o.issuer == entry.issuer)
            {
                return Err(self.err(&at("url"), "listed twice for the same issuer"));
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn global_traffic_limit(&self, t: &RawTrafficLimit) -> Result<TrafficLimitBounds, ConfigError> {
        let bounds = TrafficLimitBounds {
            min: t.min.unwrap_or(TRAFFIC_LIMIT_MIN),
            max: t.max.unwrap_or(TRAFFIC_LIMIT_MAX),
            default: t.default,
        };
        self.check_bounds("traffic_limit", &bounds)?;
        Ok(bounds)
    }

    fn check_bounds(&self, key: &str, b: &TrafficLimitBounds) -> Result<(), ConfigError> {
        if b.min == 0 {
            return Err(self.err(&format!("{key}.min"), "must be greater than zero"));
        }
        if b.min > b.max {
            return Err(self.err(
                &format!("{key}.min"),
                format!("{} is above max {}", b.min, b.max),
            ));
        }
        if let Some(d) = b.default
            && !(b.min..=b.max).contains(&d)
        {
            return Err(self.err(
                &format!("{key}.default"),
                format!("{d} is outside [{}, {}]", b.min, b.max),
            ));
        }
        Ok(())
    }

    fn libraries(
        &self,
        libs: &[raw::RawLibrary],
        global: &TrafficLimitBounds,
    ) -> Result<Vec<LibraryConfig>, ConfigError> {
        let mut out = Vec::with_capacity(libs.len());
        let mut seen = HashSet::new();
        for (i, l) in libs.iter().enumerate() {
            let at = format!("libraries[{i}]");
            if !crate::smh::is_valid_id(&l.id) {
                return Err(self.err(
                    &format!("{at}.id"),
                    format!("invalid library id {:?}", l.id),
                ));
            }
            if !seen.insert(l.id.clone()) {
                return Err(self.err(
                    &format!("{at}.id"),
                    format!("duplicate library id {:?}", l.id),
                ));
            }
            let traffic_limit = match &l.traffic_limit {
                None => *global,
                Some(t) => {
                    let key = format!("{at}.traffic_limit");
                    let b = TrafficLimitBounds {
                        min: t.min.unwrap_or(global.min),
                        max: t.max.unwrap_or(global.max),
                        // SPEC §4: the library's default, else the global one, which
                        // must still respect the library's narrower range.
                        default: t.default.or(global.default.map(|d| {
                            d.max(t.min.unwrap_or(global.min))
                                .min(t.max.unwrap_or(global.max))
                        })),
                    };
                    self.check_bounds(&key, &b)?;
                    if b.min < global.min || b.max > global.max {
                        return Err(self.err(
                            &key,
                            format!(
                                "[{}, {}] is outside the global range [{}, {}]",
                                b.min, b.max, global.min, global.max
                            ),
                        ));
                    }
                    b
                }
            };
            let secret = match (&l.secret_env, &l.secret_file) {
                (None, None) => None,
                (Some(env), None) => {
                    if env.is_empty() {
                        return Err(self.err(&format!("{at}.secret_env"), "must not be empty"));
                    }
                    Some(SecretSource::Env(env.clone()))
                }
                (None, Some(file)) => Some(SecretSource::File(
                    self.path(&format!("{at}.secret_file"), file)?,
                )),
                (Some(_), Some(_)) => {
                    return Err(self.err(
                        &format!("{at}.secret_file"),
                        "give secret_env or secret_file, not both",
                    ));
                }
            };
            let rate_limits = match &l.rate_limits {
                None => LibraryRateLimits::default(),
                Some(r) => {
                    let key = |kind: &str| format!("{at}.rate_limits.{kind}");
                    LibraryRateLimits {
                        library: self.limit(&key("library"), r.library.as_ref())?,
                        user: self.limit(&key("user"), r.user.as_ref())?,
                    }
                }
            };
            out.push(LibraryConfig {
                id: l.id.clone(),
                multi_tenant: l.multi_tenant,
                traffic_limit,
                secret,
                rate_limits,
            });
        }
        Ok(out)
    }

    fn rules(&self, rules: &[raw::RawRule]) -> Result<Vec<RouteRule>, ConfigError> {
        let mut out: Vec<RouteRule> = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let at = |field: &str| format!("routes.rules[{i}].{field}");
            let name_ok = !r.name.is_empty()
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok || r.name == "unmatched" {
                return Err(self.err(
                    &at("name"),
                    format!(
                        "{:?} is not a route name: snake_case (a-z 0-9 _), not \"unmatched\"",
                        r.name
                    ),
                ));
            }
            if out.iter().any(|o| o.name == r.name) {
                return Err(self.err(&at("name"), format!("duplicate rule {:?}", r.name)));
            }
            if let Some(m) = &r.method
                && !["GET", "HEAD", "POST", "PUT", "DELETE"].contains(&m.as_str())
            {
                return Err(self.err(
                    &at("method"),
                    format!("{m:?} is not one of GET, HEAD, POST, PUT, DELETE"),
                ));
            }
            let path = r
                .path
                .as_deref()
                .map(|p| {
                    Template::parse(p).map_err(|e| self.err(&at("path"), format!("{p:?}: {e}")))
                })
                .transpose()?;
            let token_like = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            };
            if let Some(f) = &r.flag
                && !token_like(f)
            {
                return Err(self.err(&at("flag"), format!("{f:?} is not a query key")));
            }
            if let Some(perms) = &r.permissions {
                if perms.is_empty() {
                    return Err(self.err(
                        &at("permissions"),
                        "must name at least one permission (a read for any token is not a rule)",
                    ));
                }
                if let Some(bad) = perms.iter().find(|p| !crate::smh::is_grant(p)) {
                    return Err(self.err(
                        &at("permissions"),
                        format!(
                            "unknown permission {bad:?}; one of {}",
                            crate::smh::GRANTS.join(", ")
                        ),
                    ));
                }
            }
            let traffic_limit = match r.traffic_limit.as_deref() {
                None => None,
                Some("clamp") => Some(true),
                Some("drop") => Some(false),
                Some(other) => {
                    return Err(self.err(
                        &at("traffic_limit"),
                        format!("must be \"clamp\" or \"drop\", got {other:?}"),
                    ));
                }
            };
            if let Some(params) = &r.params {
                const RESERVED: [&str; 4] =
                    ["access_token", "user_id", "traffic_limit", "library_secret"];
                if let Some(bad) = params
                    .iter()
                    .find(|p| !token_like(p) || RESERVED.contains(&p.as_str()))
                {
                    return Err(self.err(
                        &at("params"),
                        format!("{bad:?} cannot be a forwarded parameter"),
                    ));
                }
            }
            out.push(RouteRule {
                name: r.name.clone(),
                method: r.method.clone(),
                path,
                flag: r.flag.clone(),
                permissions: r.permissions.clone(),
                traffic_limit,
                params: r.params.clone(),
            });
        }
        Ok(out)
    }

    fn rate_limits(&self, r: &raw::RawRateLimits) -> Result<RateLimitsConfig, ConfigError> {
        let backend = match r.backend.as_str() {
            "memory" => RateLimitBackend::Memory,
            "redis" => RateLimitBackend::Redis,
            other => {
                return Err(self.err(
                    "rate_limits.backend",
                    format!("must be \"memory\" or \"redis\", got {other:?}"),
                ));
            }
        };
        Ok(RateLimitsConfig {
            backend,
            library: self.limit("rate_limits.library", r.library.as_ref())?,
            user: self.limit("rate_limits.user", r.user.as_ref())?,
            auth_failures: self.limit("rate_limits.auth_failures", r.auth_failures.as_ref())?,
        })
    }

    fn limit(&self, key: &str, raw: Option<&raw::RawLimit>) -> Result<Option<Limit>, ConfigError> {
        let Some(l) = raw else {
            return Ok(None);
        };
        let at = |field: &str| format!("{key}.{field}");
        let per = self.positive_duration(&at("per"), &l.per)?;
        if per > MAX_LIMIT_PER {
            return Err(self.err(&at("per"), "must be at most 24h"));
        }
        if l.rate < 1 {
            return Err(self.err(&at("rate"), format!("must be at least 1, got {}", l.rate)));
        }
        if l.burst < 1 {
            return Err(self.err(&at("burst"), format!("must be at least 1, got {}", l.burst)));
        }
        if l.burst > MAX_LIMIT_BURST {
            return Err(self.err(&at("burst"), format!("must be at most {MAX_LIMIT_BURST}")));
        }
        // One request per microsecond is the finest interval the limiter keeps.
        let rate = u32::try_from(l.rate)
            .ok()
            .filter(|&rate| per.as_micros() / u128::from(rate) >= 1)
            .ok_or_else(|| {
                self.err(
                    &at("rate"),
                    format!(
                        "{} per {:?} is more than one request per microsecond",
                        l.rate, per
                    ),
                )
            })?;
        Ok(Some(Limit {
            rate,
            per,
            burst: l.burst as u32,
        }))
    }

    fn cache(&self, c: &raw::RawCache) -> Result<CacheConfig, ConfigError> {
        let backend = match c.backend.as_str() {
            "memory" => CacheBackend::Memory,
            "redis" => CacheBackend::Redis,
            other => {
                return Err(self.err(
                    "cache.backend",
                    format!("must be \"memory\" or \"redis\", got {other:?}"),
                ));
            }
        };
        if !(c.redis_url.starts_with("redis://")
            || c.redis_url.starts_with("rediss://")
            || c.redis_url.starts_with("unix://"))
        {
            return Err(self.err(
                "cache.redis_url",
                // The URL may carry a password: never echo it.
                "must be a redis://, rediss:// or unix:// URL",
            ));
        }
        Ok(CacheConfig {
            enabled: c.enabled,
            backend,
            redis_url: c.redis_url.clone(),
            max_entries: self.count("cache.max_entries", c.max_entries, 1)?,
            min_remaining: self.duration("cache.min_remaining", &c.min_remaining)?,
            max_ttl: self.positive_duration("cache.max_ttl", &c.max_ttl)?,
        })
    }
}

/// `localhost` or a loopback IP: the only hosts a JWKS may be fetched from over
/// plain http (a key set fetched in clear from elsewhere could be swapped in transit).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
