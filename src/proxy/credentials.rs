//! Managed upstream credentials, `upstream.credential = "library_secret"` (SPEC §12):
//! the gateway holds each library's SMH secret and obtains least-privilege SMH
//! tokens itself, so that no client ever sees an SMH token or secret.
//!
//! ```text
//! authorised request ─> TokenIdentity (library, space, user, grants) ─> TokenManager::get
//!   held, fresh ─────────────────────────────────────────────> that token
//!   held, past its refresh point ─> that token now; one refresh in the background
//!   none (or past its use) ─> one flight per identity, shared by every waiter:
//!        Redis (another replica's token) ─or─ SMH's create-token call ─> held (and Redis)
//! SMH answers 403 InvalidAccessToken ─> the token is dropped, a fresh one obtained,
//!   the request sent once more; a second refusal or a failed token call is 502
//! ```
//!
//! A token is used until `expiresIn` minus a margin (10 % of it, at least 30 s) and
//! refreshed from halfway there on, while requests keep using the current one: in
//! steady state no request waits for SMH's token call. The store in memory is
//! bounded ([`MAX_HELD`]); Redis holds tokens under a digest of their identity and
//! library secret, never in plain keys. Secrets and tokens are [`Secret`]s: no log
//! line, metric or error carries one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::ResponseBody;
use super::policy::Permissions;
use arc_swap::ArcSwap;

use super::upstream::{ReadBody, Upstream, UpstreamRequest, read_body};
use crate::cache::now_ms;
use crate::cache::redis::RedisStore;
use crate::config::{Config, ConfigError, SecretSource};
use crate::error::{GatewayError, UpstreamFailure};
use crate::metrics::Metrics;
use crate::proxy::auth::Principal;
use crate::secret::Secret;
use crate::smh::NO_SPACE;

/// Tokens held in memory at most (one per library, space, user and grant set in
/// use). Past it, expired ones go first, then the least recently used.
pub const MAX_HELD: usize = 10_000;

/// The largest 403 body read to see whether SMH refused the token.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

const REDIS_PREFIX: &str = "smhgw:v1:tok:";

/// The one error every managed-credential failure is: 502 UpstreamUnavailable.
const FAILED: GatewayError = GatewayError::UpstreamUnavailable(UpstreamFailure::Credential);

/// Each served library's SMH secret, read when the config is loaded (and again on
/// SIGHUP).
#[derive(Debug, Default)]
pub struct LibrarySecrets {
    by_library: HashMap<String, Secret<'static>>,
}

impl LibrarySecrets {
    /// Reads every `libraries[].secret_env` / `secret_file`. Messages name the key
    /// and the env var or file, never the value.
    pub fn load(config: &Config) -> Result<LibrarySecrets, ConfigError> {
        let mut by_library = HashMap::new();
        for (i, lib) in config.libraries.iter().enumerate() {
            let Some(source) = &lib.secret else {
                continue;
            };
            let err = |field: &str, msg: String| {
                ConfigError::new(&config.source, Some(format!("libraries[{i}].{field}")), msg)
            };
            let value = match source {
                SecretSource::Env(var) => std::env::var(var)
                    .map_err(|_| {
                        err(
                            "secret_env",
                            format!("environment variable {var} is not set (or not UTF-8)"),
                        )
                    })
                    .and_then(|v| {
                        non_empty(v).ok_or_else(|| {
                            err("secret_env", format!("environment variable {var} is empty"))
                        })
                    })?,
                SecretSource::File(path) => {
                    let bytes =
                        super::auth::read_secret_file(path).map_err(|m| err("secret_file", m))?;
                    String::from_utf8(bytes)
                        .ok()
                        .and_then(non_empty)
                        .ok_or_else(|| {
                            err(
                                "secret_file",
                                format!("{}: empty or not UTF-8", path.display()),
                            )
                        })?
                }
            };
            by_library.insert(lib.id.clone(), Secret::new(value));
        }
        Ok(LibrarySecrets { by_library })
    }

    pub fn get(&self, library: &str) -> Option<&Secret<'static>> {
        self.by_library.get(library)
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// What an SMH token is for: SPEC §12's (library, space, user, grants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub library: String,
    /// `None` for `-` (and rows whose path names no space).
    pub space: Option<String>,
    pub user: Option<String>,
    /// SMH's `grant`: comma-joined; empty asks for a read-only token.
    pub grants: String,
}

impl TokenIdentity {
    /// The identity for an authorised request: its space, the caller's user (else
    /// the `user_id` policy let an admin pass), and the row's permissions that the
    /// caller holds, in the row's order.
    pub fn for_request(
        library: &str,
        space: Option<&str>,
        principal: &Principal,
        user_id: Option<&str>,
        permissions: &Permissions,
    ) -> TokenIdentity {
        let grants: Vec<&str> = permissions
            .grants()
            .into_iter()
            .filter(|g| principal.has(g))
            .collect();
        TokenIdentity {
            library: library.to_string(),
            space: space
                .filter(|s| !s.is_empty() && *s != NO_SPACE)
                .map(str::to_string),
            user: principal
                .user
                .as_deref()
                .filter(|u| !u.is_empty())
                .or(user_id.filter(|u| !u.is_empty()))
                .map(str::to_string),
            grants: grants.join(","),
        }
    }

    /// The renew cache key's credential in this mode: the identity, not the token,
    /// so that a refreshed token does not empty the cache. Tagged and
    /// length-prefixed, so it never equals a passthrough token.
    pub fn cache_credential(&self) -> Secret<'static> {
        let mut s = String::from("\0managed");
        for field in [
            Some(self.library.as_str()),
            self.space.as_deref(),
            self.user.as_deref(),
            Some(self.grants.as_str()),
        ] {
            match field {
                None => s.push_str("\0-"),
                Some(v) => {
                    s.push_str(&format!("\0{}:", v.len()));
                    s.push_str(v);
                }
            }
        }
        Secret::new(s)
    }
}

/// One identity's token, as asked of SMH: the identity, its library's secret and
/// the period. Its key digests all three, so a rotated secret or a new period
/// gets new tokens.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub identity: TokenIdentity,
    secret: Secret<'static>,
    period_secs: u64,
    key: [u8; 32],
}

impl TokenRequest {
    /// `Err` (502) only for a library without a secret, which config validation
    /// rules out for every library policy lets through.
    pub fn new(
        identity: TokenIdentity,
        secrets: &LibrarySecrets,
        period: Duration,
    ) -> Result<TokenRequest, GatewayError> {
        let secret = secrets.get(&identity.library).ok_or(FAILED)?.clone();
        let period_secs = period.as_secs().max(1);
        let mut h = Sha256::new();
        h.update(b"smh-gateway managed token v1\0");
        for field in [
            Some(identity.library.as_str()),
            identity.space.as_deref(),
            identity.user.as_deref(),
            Some(identity.grants.as_str()),
            Some(secret.expose()),
        ] {
            match field {
                None => h.update([0u8]),
                Some(v) => {
                    h.update([1u8]);
                    h.update((v.len() as u64).to_be_bytes());
                    h.update(v.as_bytes());
                }
            }
        }
        h.update(period_secs.to_be_bytes());
        Ok(TokenRequest {
            identity,
            secret,
            period_secs,
            key: h.finalize().into(),
        })
    }

    fn redis_key(&self) -> String {
        let mut k = String::from(REDIS_PREFIX);
        for b in self.key {
            k.push_str(&format!("{b:02x}"));
        }
        k
    }

    /// SMH's create-token call (SMH-ROUTES §T), under `upstream.url`'s path.
    fn path_and_query(&self, base_path: &str) -> String {
        let id = &self.identity;
        let mut q = String::with_capacity(128);
        q.push_str(base_path.trim_end_matches('/'));
        q.push_str("/api/v1/token?library_id=");
        super::rewrite::push_encoded(&mut q, &id.library);
        q.push_str("&library_secret=");
        super::rewrite::push_encoded(&mut q, self.secret.expose());
        if let Some(space) = &id.space {
            q.push_str("&space_id=");
            super::rewrite::push_encoded(&mut q, space);
        }
        if let Some(user) = &id.user {
            q.push_str("&user_id=");
            super::rewrite::push_encoded(&mut q, user);
        }
        if !id.grants.is_empty() {
            q.push_str("&grant=");
            super::rewrite::push_encoded(&mut q, &id.grants);
        }
        q.push_str("&period=");
        q.push_str(itoa::Buffer::new().format(self.period_secs));
        q
    }
}

/// A token held, with the two moments that matter (ms since the epoch).
#[derive(Debug, Clone)]
struct Held {
    token: Secret<'static>,
    /// From here on a request starts a background refresh.
    refresh_at: u64,
    /// From here on the token is not used.
    use_until: u64,
    refreshing: bool,
    last_used: u64,
}

impl Held {
    /// `expiresIn` seconds from `now`: used until the margin (10 %, at least 30 s)
    /// before it, refreshed from halfway there. A lifetime under a minute (not
    /// SMH's: its minimum period is 300 s) is used for half of it.
    fn new(token: Secret<'static>, expires_in_secs: u64, now: u64) -> Held {
        let life = expires_in_secs.saturating_mul(1000);
        let margin = if expires_in_secs >= 60 {
            (life / 10).max(30_000)
        } else {
            life / 2
        };
        let usable = life - margin;
        Held {
            token,
            refresh_at: now + usable / 2,
            use_until: now + usable,
            refreshing: false,
            last_used: now,
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}",
            self.use_until,
            self.refresh_at,
            self.token.expose()
        )
        .into_bytes()
    }

    fn decode(value: &[u8]) -> Option<Held> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, '\n');
        let use_until = parts.next()?.parse().ok()?;
        let refresh_at = parts.next()?.parse().ok()?;
        let token = parts.next().filter(|t| !t.is_empty())?;
        Some(Held {
            token: Secret::new(token),
            refresh_at,
            use_until,
            refreshing: false,
            last_used: now_ms(),
        })
    }
}

/// Why a flight runs: the `result` label of its success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A request needs a token and waits for it.
    Mint,
    /// Ahead of time, in the background.
    Refresh,
}

type Outcome = Option<Result<Secret<'static>, GatewayError>>;

#[derive(Default)]
struct State {
    held: HashMap<[u8; 32], Held>,
    flights: HashMap<[u8; 32], watch::Receiver<Outcome>>,
}

/// The gateway's SMH tokens: held in memory (and Redis), obtained once per
/// identity however many requests ask at once.
pub struct TokenManager {
    /// The upstream of the settings in force: a reload that rebuilds the client
    /// swaps it here too ([`TokenManager::use_upstream`]).
    upstream: ArcSwap<Upstream>,
    redis: Option<Arc<RedisStore>>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    max_held: usize,
}

impl TokenManager {
    pub fn new(
        upstream: Arc<Upstream>,
        redis: Option<Arc<RedisStore>>,
        metrics: Arc<Metrics>,
    ) -> TokenManager {
        TokenManager {
            upstream: ArcSwap::new(upstream),
            redis,
            metrics,
            state: Mutex::new(State::default()),
            max_held: MAX_HELD,
        }
    }

    /// Token calls from now on go through `upstream` (a reloaded config's client).
    pub fn use_upstream(&self, upstream: Arc<Upstream>) {
        self.upstream.store(upstream);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tokens held in memory now (the gauge).
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A token for `req`: the one held, or one shared flight's. A held token past
    /// its refresh point is returned at once and refreshed in the background.
    pub async fn get(
        self: &Arc<Self>,
        req: &TokenRequest,
    ) -> Result<Secret<'static>, GatewayError> {
        let now = now_ms();
        let found = {
            let mut state = self.lock();
            match state.held.get_mut(&req.key) {
                Some(h) if h.use_until > now => {
                    h.last_used = now;
                    let ahead = h.refresh_at <= now && !h.refreshing;
                    if ahead {
                        h.refreshing = true;
                    }
                    Some((h.token.clone(), ahead))
                }
                _ => None,
            }
        };
        match found {
            Some((token, ahead)) => {
                if ahead {
                    // Nobody waits for it; its outcome lands in the store.
                    drop(self.flight(req, Why::Refresh));
                }
                Ok(token)
            }
            None => {
                let mut rx = self.flight(req, Why::Mint);
                let outcome = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|o| o.clone());
                // A flight that vanished without an outcome panicked.
                outcome.unwrap_or(Err(FAILED))
            }
        }
    }

    /// SMH refused `token` (403 InvalidAccessToken): it is dropped here and in
    /// Redis, unless already replaced, and a fresh one is obtained. Concurrent
    /// refusals of the same token share one new token.
    pub async fn replace(
        self: &Arc<Self>,
        req: &TokenRequest,
        token: &Secret<'_>,
    ) -> Result<Secret<'static>, GatewayError> {
        self.refused(req, token).await;
        self.get(req).await
    }

    /// Drops a token SMH refused (when it is still the one held).
    pub async fn refused(&self, req: &TokenRequest, token: &Secret<'_>) {
        self.metrics.upstream_token_refused();
        {
            let mut state = self.lock();
            if state.held.get(&req.key).is_some_and(|h| h.token == *token) {
                state.held.remove(&req.key);
            }
        }
        if let Some(redis) = &self.redis {
            let mut suffix = b"\n".to_vec();
            suffix.extend_from_slice(token.expose().as_bytes());
            let _ = redis.delete_if_ends_with(&req.redis_key(), &suffix).await;
        }
    }

    /// The running flight for `req`, or a new one in a task of its own (a client
    /// that goes away cancels nothing).
    fn flight(self: &Arc<Self>, req: &TokenRequest, why: Why) -> watch::Receiver<Outcome> {
        let mut state = self.lock();
        if let Some(rx) = state.flights.get(&req.key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        state.flights.insert(req.key, rx.clone());
        drop(state);
        let leaving = Leaving {
            manager: self.clone(),
            key: req.key,
        };
        let req = req.clone();
        tokio::spawn(async move {
            let result = leaving.manager.obtain(&req, why).await;
            {
                let mut state = leaving.manager.lock();
                match &result {
                    Ok(held) => leaving.manager.insert(&mut state, req.key, held.clone()),
                    Err(_) => {
                        // The old token (if any) serves on; the next request past
                        // its refresh point tries again.
                        if let Some(h) = state.held.get_mut(&req.key) {
                            h.refreshing = false;
                        }
                    }
                }
            }
            drop(leaving);
            let _ = tx.send(Some(result.map(|h| h.token)));
        });
        rx
    }

    fn insert(&self, state: &mut State, key: [u8; 32], held: Held) {
        if state.held.len() >= self.max_held && !state.held.contains_key(&key) {
            let now = now_ms();
            state.held.retain(|_, h| h.use_until > now);
            if state.held.len() >= self.max_held
                && let Some(oldest) = state
                    .held
                    .iter()
                    .min_by_key(|(_, h)| h.last_used)
                    .map(|(k, _)| *k)
            {
                state.held.remove(&oldest);
            }
        }
        state.held.insert(key, held);
    }

    /// Another replica's token from Redis, else SMH's create-token call.
    async fn obtain(&self, req: &TokenRequest, why: Why) -> Result<Held, GatewayError> {
        let redis_key = req.redis_key();
        if let Some(redis) = &self.redis
            && let Ok(Some(value)) = redis.get_value(&redis_key).await
            && let Some(held) = Held::decode(&value)
        {
            let now = now_ms();
            // For a refresh, only a token fresher than the one held will do.
            let usable = match why {
                Why::Mint => held.use_until > now,
                Why::Refresh => held.refresh_at > now,
            };
            if usable {
                self.metrics.upstream_token_fetch("shared");
                return Ok(held);
            }
        }
        match self.create_token(req).await {
            Ok(held) => {
                self.metrics.upstream_token_fetch(match why {
                    Why::Mint => "minted",
                    Why::Refresh => "refreshed",
                });
                if let Some(redis) = &self.redis {
                    let ttl = Duration::from_millis(held.use_until.saturating_sub(now_ms()));
                    if !ttl.is_zero() {
                        let _ = redis.set_value(&redis_key, &held.encode(), ttl).await;
                    }
                }
                Ok(held)
            }
            Err(e) => {
                self.metrics.upstream_token_fetch("failure");
                Err(e)
            }
        }
    }

    /// `GET /api/v1/token?library_id=…&library_secret=…`: `{accessToken, expiresIn}`.
    async fn create_token(&self, req: &TokenRequest) -> Result<Held, GatewayError> {
        let library = &req.identity.library;
        let fail = |why: &str| {
            // The library id is configuration, not a secret; the query is never logged.
            crate::log::warn(&format!(
                "managed credentials: SMH's token call for library {library} failed: {why}"
            ));
            FAILED
        };
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let upstream = self.upstream.load_full();
        // A token call is upstream work like any other: it takes a slot of
        // `upstream.max_in_flight` (its flight runs on after a caller hangs up).
        let _permit = upstream
            .permit(&self.metrics)
            .map_err(|_| fail("upstream.max_in_flight reached"))?;
        let sent = upstream
            .send(UpstreamRequest {
                method: Method::GET,
                path_and_query: req.path_and_query(upstream.base_path()),
                headers,
                body: Bytes::new(),
            })
            .await;
        let (resp, deadline) = sent.map_err(|e| fail(e.reason()))?;
        let status = resp.status();
        let body = match read_body(resp.into_body(), deadline).await {
            Ok(ReadBody::Whole(body)) => body,
            Ok(ReadBody::TooLarge(..)) => return Err(fail("answer too large")),
            Err(e) => return Err(fail(e.reason())),
        };
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != StatusCode::OK {
            // SMH's code is a fixed word of its own (never the secret): worth a log.
            let code = answer["code"]
                .as_str()
                .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("-");
            return Err(fail(&format!("status {}, code {code}", status.as_u16())));
        }
        let token = answer["accessToken"].as_str().filter(|t| !t.is_empty());
        let expires_in = answer["expiresIn"].as_u64().filter(|s| *s > 0);
        match (token, expires_in) {
            (Some(token), Some(expires_in)) => {
                Ok(Held::new(Secret::new(token), expires_in, now_ms()))
            }
            _ => Err(fail("answer lacks accessToken or expiresIn")),
        }
    }
}

/// Removes a flight from the table when its task ends, panics included.
struct Leaving {
    manager: Arc<TokenManager>,
    key: [u8; 32],
}

impl Drop for Leaving {
    fn drop(&mut self) {
        self.manager.lock().flights.remove(&self.key);
    }
}

/// Whether SMH's answer refuses the token it was sent: 403 InvalidAccessToken.
pub fn refuses_token(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::FORBIDDEN
        && serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|v| v["code"] == "InvalidAccessToken")
}

/// A streamed upstream answer, looked at for a token refusal: only a 403's body is
/// read (it is small), and passed on buffered when it is not a refusal.
// Made once per managed send and matched at once: boxing the response buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    Pass(Response<ResponseBody>),
    Refused,
}

pub async fn check_refusal(resp: Response<ResponseBody>) -> Result<Checked, GatewayError> {
    if resp.status() != StatusCode::FORBIDDEN {
        return Ok(Checked::Pass(resp));
    }
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_REFUSAL_BODY)
        .collect()
        .await
        .map_err(|_| GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid))?
        .to_bytes();
    if refuses_token(parts.status, &body) {
        return Ok(Checked::Refused);
    }
    let mut parts = parts;
    // Sent with the length of what was read.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Checked::Pass(Response::from_parts(
        parts,
        Either::Left(Full::new(body)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(perms: &[&str], user: Option<&str>) -> Principal {
        Principal {
            library: Some("lib1".into()),
            spaces: vec!["s1".into()],
            user: user.map(str::to_string),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            credential: None,
            ..Principal::default()
        }
    }

    #[test]
    fn grants_are_the_row_permissions_the_caller_holds() {
        let row = Permissions::parse("admin | space_admin | upload_file | begin_upload").unwrap();
        let p = principal(&["begin_upload", "delete_file", "admin"], Some("alice"));
        let id = TokenIdentity::for_request("lib1", Some("s1"), &p, None, &row);
        assert_eq!(id.grants, "admin,begin_upload");
        assert_eq!(id.space.as_deref(), Some("s1"));
        assert_eq!(id.user.as_deref(), Some("alice"));
        let read = TokenIdentity::for_request("lib1", Some("-"), &p, None, &Permissions::default());
        assert_eq!((read.grants.as_str(), read.space), ("", None));
    }

    #[test]
    fn user_is_the_claim_else_the_admin_user_id() {
        let row = Permissions::parse("admin").unwrap();
        let admin = principal(&["admin"], None);
        let id = TokenIdentity::for_request("lib1", None, &admin, Some("bob"), &row);
        assert_eq!(id.user.as_deref(), Some("bob"));
        let id = TokenIdentity::for_request("lib1", None, &admin, None, &row);
        assert_eq!(id.user, None);
        let empty = principal(&["admin"], Some(""));
        let id = TokenIdentity::for_request("lib1", None, &empty, Some(""), &row);
        assert_eq!(id.user, None);
    }

    #[test]
    fn cache_credential_separates_identities_and_never_equals_a_token() {
        let base = TokenIdentity {
            library: "lib1".into(),
            space: None,
            user: Some("a".into()),
            grants: "upload_file".into(),
        };
        let other_user = TokenIdentity {
            user: Some("b".into()),
            ..base.clone()
        };
        let no_user = TokenIdentity {
            user: None,
            ..base.clone()
        };
        let shifted = TokenIdentity {
            user: Some("a,upload_file".into()),
            grants: String::new(),
            ..base.clone()
        };
        let creds: Vec<String> = [&base, &other_user, &no_user, &shifted]
            .iter()
            .map(|i| i.cache_credential().expose().to_string())
            .collect();
        for (i, a) in creds.iter().enumerate() {
            assert!(a.starts_with("\0managed"));
            for b in &creds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn margin_is_ten_percent_and_at_least_thirty_seconds() {
        let t = Secret::new("t");
        let h = Held::new(t.clone(), 3600, 0);
        assert_eq!(h.use_until, 3_240_000);
        assert_eq!(h.refresh_at, 1_620_000);
        let h = Held::new(t.clone(), 120, 0);
        assert_eq!(h.use_until, 90_000, "30 s, more than 10 %");
        let h = Held::new(t, 6, 1_000);
        assert_eq!((h.refresh_at, h.use_until), (2_500, 4_000));
    }

    #[test]
    fn redis_value_round_trips_and_keys_hold_digests_only() {
        let h = Held::new(Secret::new("tok-1"), 3600, 5);
        let back = Held::decode(&h.encode()).unwrap();
        assert_eq!(back.token.expose(), "tok-1");
        assert_eq!(
            (back.use_until, back.refresh_at),
            (h.use_until, h.refresh_at)
        );
        assert!(Held::decode(b"1\n2\n").is_none());
        let mut secrets = LibrarySecrets::default();
        secrets
            .by_library
            .insert("lib1".into(), Secret::new("s3cr3t"));
        let id = TokenIdentity {
            library: "lib1".into(),
            space: Some("space9".into()),
            user: Some("alice".into()),
            grants: "admin".into(),
        };
        let req = TokenRequest::new(id.clone(), &secrets, Duration::from_secs(3600)).unwrap();
        let key = req.redis_key();
        for plain in ["lib1", "space9", "alice", "admin", "s3cr3t"] {
            assert!(!key.contains(plain), "{key}");
        }
        secrets
            .by_library
            .insert("lib1".into(), Secret::new("rotated"));
        let rotated = TokenRequest::new(id, &secrets, Duration::from_secs(3600)).unwrap();
        assert_ne!(rotated.key, req.key, "a rotated secret gets new tokens");
        assert!(format!("{req:?}").contains("[redacted]"));
        assert!(!format!("{req:?}").contains("s3cr3t"));
    }

    #[test]
    fn create_token_call_carries_the_identity() {
        let mut secrets = LibrarySecrets::default();
        secrets
            .by_library
            .insert("lib1".into(), Secret::new("a b&c"));
        let id = TokenIdentity {
            library: "lib1".into(),
            space: Some("s1".into()),
            user: Some("u 1".into()),
            grants: "admin,upload_file".into(),
        };
        let req = TokenRequest::new(id, &secrets, Duration::from_secs(600)).unwrap();
        assert_eq!(
            req.path_and_query("/base/"),
            "/base/api/v1/token?library_id=lib1&library_secret=a%20b%26c&space_id=s1&user_id=u%201&grant=admin%2Cupload_file&period=600"
        );
        let bare = TokenIdentity {
            library: "lib1".into(),
            space: None,
            user: None,
            grants: String::new(),
        };
        let req = TokenRequest::new(bare, &secrets, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            req.path_and_query(""),
            "/api/v1/token?library_id=lib1&library_secret=a%20b%26c&period=3600"
        );
        let missing = TokenIdentity {
            library: "nope".into(),
            ..req.identity.clone()
        };
        assert_eq!(
            TokenRequest::new(missing, &secrets, Duration::from_secs(1)).unwrap_err(),
            FAILED
        );
    }

    fn manager(max_held: usize) -> TokenManager {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "upstream.url = \"http://127.0.0.1:9\"\nauth.keys = [{ kid = \"k\", alg = \"HS256\", secret_env = \"S\" }]\n",
        )
        .unwrap();
        let upstream = Upstream::new(&config.upstream, &config.source).unwrap();
        TokenManager {
            max_held,
            ..TokenManager::new(Arc::new(upstream), None, Arc::new(Metrics::new(&[], &[])))
        }
    }

    #[tokio::test]
    async fn the_store_is_bounded_expired_first_then_least_recently_used() {
        let m = manager(2);
        let now = now_ms();
        let held = |token: &str, used: u64, live: bool| Held {
            token: Secret::new(token),
            refresh_at: now + 1000,
            use_until: if live { now + 10_000 } else { now - 1 },
            refreshing: false,
            last_used: used,
        };
        let mut state = m.lock();
        m.insert(&mut state, [1; 32], held("old", 1, true));
        m.insert(&mut state, [2; 32], held("expired", 5, false));
        m.insert(&mut state, [3; 32], held("new", 9, true));
        assert_eq!(state.held.len(), 2);
        assert!(
            !state.held.contains_key(&[2; 32]),
            "the expired one went first"
        );
        m.insert(&mut state, [4; 32], held("newest", 10, true));
        assert_eq!(state.held.len(), 2);
        assert!(
            !state.held.contains_key(&[1; 32]),
            "then the least recently used"
        );
        // Replacing a held identity evicts nothing.
        m.insert(&mut state, [4; 32], held("replaced", 11, true));
        assert_eq!(state.held.len(), 2);
        assert_eq!(state.held[&[4; 32]].token.expose(), "replaced");
    }

    #[test]
    fn only_403_invalid_access_token_is_a_refusal() {
        let refusal = br#"{"code":"InvalidAccessToken","message":"x"}"#;
        assert!(refuses_token(StatusCode::FORBIDDEN, refusal));
        assert!(!refuses_token(StatusCode::OK, refusal));
        assert!(!refuses_token(
            StatusCode::FORBIDDEN,
            br#"{"code":"NoPermission"}"#
        ));
        assert!(!refuses_token(StatusCode::FORBIDDEN, b"not json"));
    }
}
