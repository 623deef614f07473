//! The request pipeline. Every request runs these phases in order; each phase is
//! its own module and returns `Result<_, GatewayError>`, so the first failure
//! answers (SPEC §3's check order falls out of the order of the `?`s below):
//!
//! ```text
//! client ─> limits ─> route ─> auth ─> policy ─> rewrite ─> cache ─hit──────────> response
//!           414/431/  404/400  400/403 404/403/   (clamp,     └miss─> upstream ─/
//!           413/503                    400        credential,         502/504
//!                                                 canonical query)
//!   any Err(GatewayError) ─> error.rs ─> SMH JSON error
//!   every request ─> one access-log line (access_log.rs)
//! ```
//!
//! [`Gateway::handle`] is the outer handler: it owns the request id, turns errors
//! into responses and logs. The inner `dispatch` uses `?` and never builds an error
//! response itself.

pub mod auth;
pub mod body;
pub mod credentials;
pub mod headers;
pub mod json;
pub mod policy;
pub mod rewrite;
pub mod route;
pub mod routes;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{AccessLog, AccessRecord, method_label};
use crate::cache::entry::Rest;
use crate::cache::{Answer, CredentialDigest, RenewCache, RenewKey, Reply, Source};
use crate::config::{Config, ConfigError, Unmatched};
use crate::error::GatewayError;
use crate::limit::Limit;
use crate::metrics::{Metrics, RouteMetrics, library_label};
use crate::ratelimit::{self, RateLimiter};
use crate::request_id::RequestIds;
use crate::secret::Secret;
use crate::tasks::Tasks;
use auth::{KeyStore, Verifier};
use credentials::{Checked, TokenIdentity, TokenManager, TokenRequest};
use rewrite::{Clamp, CredentialSource};
use route::{Operation, Route, Router, Selected, Target};
use routes::{AuthPolicy, BodyPolicy, CacheRole};
use upstream::{Upstream, UpstreamRequest};

/// `HIT`, `MISS` or `COALESCED` on renew answers while the cache is enabled.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the gateway answers with: a buffered body (its own errors, renew answers)
/// or the upstream's body streamed through (forwarded routes).
pub type ResponseBody = Either<Full<Bytes>, upstream::StreamedBody>;

/// The `route` label of requests that match no row.
pub const UNMATCHED: &str = "unmatched";

/// The routes whose request series exist from the first scrape: SMH's upload and
/// download flow (SMH-ROUTES Q1), and `unmatched`.
pub const COMMON_ROUTES: &[&str] = &[
    "renew",
    "multipart_upload_file",
    "simple_upload_file",
    "complete_file_upload",
    "abort_file_upload",
    "get_file_upload",
    "info_file",
    "download_file",
    "create_directory",
    UNMATCHED,
];

/// Everything derived from one config file, swapped as a whole on reload so that a
/// request sees one consistent version from start to end. The upstream client is
/// part of it: a reload builds a new one (new URL, timeouts, CA, client
/// certificate), and requests already running finish on the old one.
pub struct Settings {
    pub config: Config,
    pub verifier: Verifier,
    pub credential: CredentialSource,
    pub router: Router,
    pub upstream: Arc<Upstream>,
    pub rate_limits: ratelimit::Rules,
}

impl Settings {
    /// Loads the secrets the config names and builds the route table. Fails (exit 2
    /// at start) when a key file is unreadable, an env var is missing or a route
    /// rule does not fit the table.
    pub fn from_config(config: Config) -> Result<Settings, ConfigError> {
        let router = Router::new(&config.routes.rules).map_err(|(i, field, message)| {
            ConfigError::new(
                &config.source,
                Some(format!("routes.rules[{i}].{field}")),
                message,
            )
        })?;
        Ok(Settings {
            upstream: Arc::new(Upstream::new(&config.upstream, &config.source)?),
            verifier: Verifier::from_config(&config)?,
            credential: CredentialSource::from_config(&config)?,
            router,
            rate_limits: ratelimit::Rules::from_config(&config),
            config,
        })
    }
}

/// How the client reached us, for `X-Forwarded-*` and the log.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
}

/// What a request learned on its way through the phases; the logging phase at the
/// end writes its metrics and its access-log line from this, once.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The row, once routing found one (`None`: `unmatched`).
    pub route: Option<Arc<Route>>,
    pub upstream_status: Option<u16>,
    /// The library of a request that passed policy.
    pub library: Option<String>,
    /// The traffic_limit sent upstream.
    pub traffic_limit: Option<u64>,
    /// Where a renew answer came from, when the cache was asked.
    pub cache: Option<Source>,
    /// `RateLimit-Policy` and `RateLimit`, when a limit was checked.
    pub rate_limit: Option<ratelimit::Headers>,
}

/// A request being handled. If its future is dropped before the answer (the client
/// went away), this still records it, as 499 (SMH's ClientDisconnected status) in the
/// access log and metrics, and puts the in-flight gauge back.
struct Unanswered<'a> {
    gateway: &'a Gateway,
    settings: Arc<Settings>,
    started: Instant,
    request_id: String,
    method: &'static str,
    client: ClientInfo,
    ctx: Context,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.gateway.metrics.in_flight().dec();
        if self.answered {
            return;
        }
        let ctx = std::mem::take(&mut self.ctx);
        self.gateway.log(
            &self.settings,
            &ctx,
            Finished {
                request_id: std::mem::take(&mut self.request_id),
                method: self.method,
                client: self.client,
                status: 499,
                reason: Some(GatewayError::ClientClosed.reason()),
                elapsed: self.started.elapsed(),
            },
        );
    }
}

/// The end of a request, for the logging phase.
struct Finished {
    request_id: String,
    method: &'static str,
    client: ClientInfo,
    status: u16,
    reason: Option<&'static str>,
    elapsed: std::time::Duration,
}

/// The shared state of the running gateway.
pub struct Gateway {
    settings: ArcSwap<Settings>,
    /// The keys tokens are verified with; outlives reloads (JWKS sets stay fetched).
    keys: Arc<KeyStore>,
    /// `None` while `cache.enabled = false`.
    cache: Option<RenewCache>,
    /// `server.max_in_flight`, its capacity following reload.
    in_flight: Limit,
    request_ids: RequestIds,
    access_log: AccessLog,
    /// Where background tasks are spawned, so that shutdown stops them.
    tasks: Tasks,
    metrics: Arc<Metrics>,
    unmatched: RouteMetrics,
    /// SMH tokens obtained with library secrets (`upstream.credential =
    /// "library_secret"`); empty in the other modes.
    tokens: Arc<TokenManager>,
    rate_limits: RateLimiter,
}

impl Gateway {
    pub fn new(
        mut settings: Settings,
        access_log: AccessLog,
        cache: Option<RenewCache>,
        tasks: Tasks,
    ) -> Gateway {
        let libraries: Vec<String> = settings
            .config
            .libraries
            .iter()
            .map(|l| l.id.clone())
            .collect();
        let max_in_flight = settings.config.server.max_in_flight;
        let metrics = Arc::new(Metrics::new(&libraries, COMMON_ROUTES));
        settings
            .verifier
            .count_verifications_into(metrics.token_verifications().clone());
        let rate_limits = RateLimiter::new(
            metrics.clone(),
            cache.as_ref().and_then(RenewCache::redis_link),
        );
        let tokens = Arc::new(TokenManager::new(
            settings.upstream.clone(),
            cache.as_ref().and_then(RenewCache::redis),
            metrics.clone(),
        ));
        Gateway {
            keys: Arc::new(KeyStore::new(settings.verifier.key_sources())),
            rate_limits,
            settings: ArcSwap::from_pointee(settings),
            tokens,
            cache,
            in_flight: Limit::new(max_in_flight),
            request_ids: RequestIds::new(),
            access_log,
            tasks,
            unmatched: metrics.route(UNMATCHED),
            metrics,
        }
    }

    /// The background-task registry ([`crate::tasks`]).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The renew cache, when enabled (confirm and cancel invalidate through it).
    pub fn cache(&self) -> Option<&RenewCache> {
        self.cache.as_ref()
    }

    /// The `/metrics` text, with counters kept outside the registry brought up to date.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics
            .set_access_log_dropped(self.access_log.dropped());
        if let Some(cache) = &self.cache {
            self.metrics.set_cache_entries(cache.entries());
        }
        self.metrics.set_upstream_tokens(self.tokens.len());
        self.metrics.set_jwks(self.keys.stats());
        self.metrics.render()
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Swaps in new settings; requests already running keep the old ones. The key
    /// store takes the new file keys and JWKS URLs first (unchanged URLs keep
    /// their fetched sets).
    pub fn replace_settings(&self, mut settings: Settings) {
        // Exchanges running on the old upstream keep their upstream.max_in_flight
        // permits, counted against the new capacity; its idle connections stay
        // pooled if they were opened the same way.
        match Arc::get_mut(&mut settings.upstream) {
            Some(upstream) => upstream.carry_over_from(&self.settings.load().upstream),
            None => debug_assert!(false, "new settings' upstream is shared before use"),
        }
        self.keys.reconfigure(settings.verifier.key_sources());
        self.tokens.use_upstream(settings.upstream.clone());
        self.in_flight
            .set_capacity(settings.config.server.max_in_flight);
        settings
            .verifier
            .count_verifications_into(self.metrics.token_verifications().clone());
        self.settings.store(Arc::new(settings));
    }

    /// The key store (its readiness for `/readyz`, its refresher).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Writes out buffered access-log lines (at exit).
    pub fn flush_logs(&self) {
        self.access_log.flush();
    }

    /// The outer handler: never fails, always logs once.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        // Parts and body go down apart: a request handed whole to an `async fn`
        // stays in its future as an argument after it is taken apart, and the
        // future is moved through every layer.
        let (parts, body) = req.into_parts();
        let request_id =
            headers::incoming_request_id(&parts.headers).unwrap_or_else(|| self.request_ids.next());
        let settings = self.settings.load_full();
        self.metrics.in_flight().inc();
        let mut flight = Unanswered {
            gateway: self,
            settings: settings.clone(),
            started,
            request_id,
            method: method_label(&parts.method),
            client,
            ctx: Context::default(),
            answered: false,
        };
        let result = self
            .dispatch(
                &settings,
                parts,
                body,
                client,
                &flight.request_id,
                &mut flight.ctx,
            )
            .await;
        flight.answered = true;
        let request_id = std::mem::take(&mut flight.request_id);
        let method = flight.method;
        let ctx = std::mem::take(&mut flight.ctx);
        drop(flight);
        let (mut resp, reason) = match result {
            Ok(resp) => (resp, None),
            Err(e) => {
                self.metrics.error(&e);
                let resp = e
                    .to_response(&request_id)
                    .map(|b| Either::Left(Full::new(b)));
                (resp, Some(e.reason()))
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), v);
        }
        if let Some(limit) = ctx.rate_limit.clone() {
            let h = resp.headers_mut();
            h.insert(ratelimit::RATELIMIT_POLICY.clone(), limit.policy);
            h.insert(ratelimit::RATELIMIT.clone(), limit.state);
        }
        let status = resp.status().as_u16();
        self.log(
            &settings,
            &ctx,
            Finished {
                request_id,
                method,
                client,
                status,
                reason,
                elapsed: started.elapsed(),
            },
        );
        resp
    }

    /// A connection hyper ended with an error. Requests it refused while parsing
    /// never reached [`Gateway::handle`]: they are counted here, and parse refusals
    /// (smuggling attempts among them) get an access-log line of their own, with
    /// route `connection`.
    pub fn connection_error(&self, client: ClientInfo, kind: crate::error::ConnectionError) {
        use crate::error::ConnectionError as K;
        self.metrics.connection_error(kind.as_str());
        let status = match kind {
            K::Parse => 400,
            K::TooLarge => 431,
            K::Timeout | K::Other => return,
        };
        self.access_log.record(AccessRecord {
            request_id: self.request_ids.next(),
            method: "-",
            route: Arc::from("connection"),
            status,
            duration: std::time::Duration::ZERO,
            upstream_status: None,
            cache: None,
            client: client.addr,
            reason: Some(match kind {
                K::Parse => "unparsable_request",
                _ => "request_head_too_large",
            }),
        });
    }

    /// The logging phase: the request's metrics and its access-log line, once.
    fn log(&self, settings: &Settings, ctx: &Context, done: Finished) {
        let route_metrics = match &ctx.route {
            Some(route) => route.metrics(&self.metrics),
            None => &self.unmatched,
        };
        self.metrics
            .request(route_metrics, done.status, done.elapsed);
        let is_renew = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.cache == CacheRole::Renew);
        if is_renew && (200..300).contains(&done.status) {
            let library = ctx.library.as_deref().unwrap_or_default();
            self.metrics.renewal(
                library_label(&settings.config.libraries, library),
                ctx.traffic_limit,
            );
        }
        self.access_log.record(AccessRecord {
            request_id: done.request_id,
            method: done.method,
            route: match &ctx.route {
                Some(r) => r.name.clone(),
                None => Arc::from(UNMATCHED),
            },
            status: done.status,
            duration: done.elapsed,
            upstream_status: ctx.upstream_status,
            cache: ctx.cache.map(Source::log),
            client: done.client.addr,
            reason: done.reason,
        });
    }

    /// route → (body) → auth → policy → rewrite → cache/upstream. Returns at the
    /// first failing phase; never builds an error response itself.
    async fn dispatch(
        &self,
        settings: &Settings,
        parts: http::request::Parts,
        body: Incoming,
        client: ClientInfo,
        request_id: &str,
        ctx: &mut Context,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let config = &settings.config;
        check_limits(config, &parts)?;
        let _permit = self
            .in_flight
            .try_take()
            .ok_or(GatewayError::ServerOverloaded)?;

        // Phase 1: route (and the request syntax of path, query and body).
        let target = Target::new(&parts.uri);
        let (route, dispatch) = match settings.router.select(&parts.method, &target)? {
            Selected::Row { route, dispatch } => (route, dispatch),
            Selected::Unmatched => {
                return match config.routes.unmatched {
                    Unmatched::Deny => Err(GatewayError::RouteNotFound),
                    Unmatched::Forward => {
                        drop(target);
                        // Boxed, as the rarer paths below are: inline, the largest
                        // of them sets the size of every request's future.
                        Box::pin(
                            self.forward_unchecked(settings, parts, body, client, request_id, ctx),
                        )
                        .await
                    }
                };
            }
        };
        ctx.route = Some(route.clone());
        let body = body::read(body, &config.server).await?;
        let inspected = body::inspect(route, &dispatch, &body)?;
        ctx.route = Some(inspected.route.clone());
        let mut op = Operation::parse(inspected.route, &target, &parts.headers)?;
        drop(target);
        op.named_spaces.extend(inspected.named_spaces);
        let body = match op.route.body {
            BodyPolicy::None => Bytes::new(),
            BodyPolicy::Json | BodyPolicy::JsonArray => body,
        };
        let has_body = !body.is_empty();

        // Phases 2-3: auth and policy, as the row asks.
        let caller_token = op.token.take();
        let principal = match op.route.auth {
            AuthPolicy::Public => None,
            // SMH's own share token: SMH verifies it; the gateway grants nothing.
            AuthPolicy::ShareToken => {
                caller_token
                    .as_ref()
                    .ok_or(GatewayError::EmptyAccessToken)?;
                None
            }
            AuthPolicy::Token => {
                // Before any signature check: an address whose tokens keep being
                // refused gets 429 here (SPEC §13), and refusals are counted.
                let limits = &settings.rate_limits;
                self.rate_limits
                    .check_auth_failures(limits, client.addr, &mut ctx.rate_limit)?;
                let verified = match caller_token.as_ref() {
                    None => Err(GatewayError::EmptyAccessToken),
                    Some(token) => settings
                        .verifier
                        .authenticate(&self.keys, token)
                        .await
                        .map_err(GatewayError::InvalidAccessToken),
                };
                let principal = self
                    .rate_limits
                    .after_auth(limits, client.addr, verified)
                    .await?;
                let library = match &op.values.library {
                    Some(l) => l.to_string(),
                    // Rows whose path names no library (shares by code) act in the
                    // token's own.
                    None => principal.library.clone().unwrap_or_default(),
                };
                let mut named = std::mem::take(&mut op.named_spaces);
                named.extend(op.values.spaces.iter().map(|s| policy::NamedSpace {
                    space: s.to_string(),
                    target: false,
                }));
                let authorized = policy::authorize(
                    &config.libraries,
                    &principal,
                    &policy::Request {
                        scope: policy::Scope {
                            library: &library,
                            space: op.values.space.as_deref(),
                        },
                        named_spaces: &named,
                        permissions: op.route.required(op.permanent),
                        user_id: op.user_id.as_deref(),
                    },
                );
                // Every verified request counts, whatever policy says (SPEC §13).
                let limited = (self.rate_limits)
                    .check(
                        limits,
                        &library,
                        principal.user.as_deref(),
                        &mut ctx.rate_limit,
                    )
                    .await;
                authorized?;
                limited?;
                ctx.library = Some(library);
                Some(principal)
            }
        };
        // A managed SMH token for what this request may do (credentials.rs).
        let managed = match (&settings.credential, &principal) {
            (CredentialSource::LibrarySecret(secrets), Some(principal)) => {
                let identity = TokenIdentity::for_request(
                    ctx.library.as_deref().unwrap_or_default(),
                    op.values.space.as_deref(),
                    principal,
                    op.user_id.as_deref(),
                    op.route.required(op.permanent),
                );
                let request = TokenRequest::new(identity, secrets, config.upstream.token_period)?;
                let token = self.tokens.get(&request).await?;
                Some((request, token))
            }
            _ => None,
        };
        let managed_token = managed.as_ref().map(|(_, t)| t.clone());
        let (credential, user_id) = match (&principal, &caller_token) {
            // The token carries the user: no user_id goes with it.
            (Some(_), _) if managed_token.is_some() => (managed_token.as_ref(), None),
            (Some(principal), Some(token)) => {
                let (credential, user_id) =
                    settings
                        .credential
                        .choose(token, principal, op.user_id.as_deref())?;
                (Some(credential), user_id.filter(|_| op.route.user_id))
            }
            (None, token) if op.route.auth == AuthPolicy::ShareToken => (token.as_ref(), None),
            _ => (None, None),
        };

        // Phase 4: rewrite.
        let traffic_limit = if op.route.traffic_limit {
            let library = ctx.library.as_deref().unwrap_or_default();
            let bounds = config.traffic_limit_for(library);
            let (value, clamp) = rewrite::clamp_traffic_limit(op.traffic_limit, bounds);
            match clamp {
                Clamp::Up => self.metrics.clamped(true),
                Clamp::Down => self.metrics.clamped(false),
                Clamp::Unchanged => {}
            }
            value
        } else {
            None
        };
        ctx.traffic_limit = traffic_limit;
        let route_metrics = op.route.metrics(&self.metrics).clone();
        // The upstream request, built only when it is sent: a cache hit never pays
        // for it.
        let build = |headers: HeaderMap| {
            let mut target = rewrite::upstream_path(
                settings.upstream.base_path(),
                &op.route.template,
                &op.values,
            );
            target.push('?');
            target.push_str(&rewrite::upstream_query(
                &op,
                credential,
                user_id,
                traffic_limit,
            ));
            let mut headers =
                headers::upstream_request_headers(headers, client.addr, client.proto, request_id);
            // What SMH parses the body as is what the gateway checked it as.
            match op.route.body {
                BodyPolicy::None => {
                    headers.remove(header::CONTENT_TYPE);
                }
                BodyPolicy::Json | BodyPolicy::JsonArray => {
                    if has_body {
                        headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    } else {
                        headers.remove(header::CONTENT_TYPE);
                    }
                }
            }
            (target, headers)
        };

        // Phase 5: cache and upstream.
        if let (CacheRole::Renew, Some(cache)) = (op.route.cache, &self.cache) {
            let credential = match (&managed, credential, &principal, &caller_token) {
                // Managed: the token's identity, so a refreshed token keeps the entries.
                (Some((r, _)), _, _, _) => CredentialDigest::of(&r.identity.cache_credential()),
                // The caller's own token: its digest is kept with its verified
                // principal, so a hit does not hash the whole token again.
                (None, Some(c), Some(principal), Some(token)) if std::ptr::eq(c, token) => {
                    principal.token_digest(token)
                }
                (None, Some(c), _, _) => CredentialDigest::of(c),
                (None, None, _, _) => *NO_CREDENTIAL,
            };
            let key = RenewKey::new(
                op.values.library.as_deref().unwrap_or_default(),
                op.values.space.as_deref().unwrap_or_default(),
                op.values.key.as_deref().unwrap_or_default(),
                user_id,
                traffic_limit,
                &credential,
            )
            .varied_by(&rewrite::params_query(&op));
            let headers = parts.headers;
            return self
                .renew(
                    &settings.upstream,
                    cache,
                    key,
                    parts.method,
                    || build(headers),
                    route_metrics,
                    managed,
                    ctx,
                )
                .await;
        }
        let (path_and_query, headers) = build(parts.headers);
        let req = UpstreamRequest {
            method: parts.method,
            path_and_query,
            headers,
            body,
        };
        let resp = match managed {
            None => {
                self.send(&settings.upstream, req, &route_metrics, ctx)
                    .await?
            }
            Some((request, token)) => {
                Box::pin(self.send_managed(
                    &settings.upstream,
                    req,
                    &request,
                    token,
                    &route_metrics,
                    ctx,
                ))
                .await?
            }
        };
        if op.route.cache == CacheRole::Invalidate
            && let Some(cache) = &self.cache
        {
            let (library, space, key) = (&op.values.library, &op.values.space, &op.values.key);
            // A Redis that cannot be reached leaves the entries to their TTL.
            let _ = cache
                .invalidate_upload(
                    library.as_deref().unwrap_or_default(),
                    space.as_deref().unwrap_or_default(),
                    key.as_deref().unwrap_or_default(),
                )
                .await;
        }
        Ok(resp)
    }

    /// A renew through the cache: the answer is buffered (it is shared by coalesced
    /// callers and stored), and carries `X-Cache`. `managed`: the SMH token the
    /// flight sends, and what to ask for a fresh one should SMH refuse it.
    // The upstream comes with the request's settings (a reload swaps it), so it
    // is one more argument than clippy's default.
    #[allow(clippy::too_many_arguments)]
    async fn renew(
        &self,
        upstream: &Arc<Upstream>,
        cache: &RenewCache,
        key: RenewKey<'_>,
        method: http::Method,
        build: impl FnOnce() -> (String, HeaderMap) + Send,
        route_metrics: RouteMetrics,
        managed: Option<(TokenRequest, Secret<'static>)>,
        ctx: &mut Context,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        // Built only on a miss: a hit never pays for the upstream request.
        let fetch = || {
            let (path_and_query, mut headers) = build();
            headers.remove(header::CONTENT_LENGTH);
            // The answer is parsed (expiration) and shared by coalesced callers who
            // may not accept a compressed body: ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            let (upstream, metrics) = (upstream.clone(), self.metrics.clone());
            let tokens = self.tokens.clone();
            async move {
                let Some((request, token)) = managed else {
                    return fetch_buffered(
                        upstream,
                        metrics,
                        method,
                        path_and_query,
                        headers,
                        route_metrics,
                    )
                    .await;
                };
                // Managed: SMH refusing the token gets one resend with a fresh one.
                let answer = fetch_buffered(
                    upstream.clone(),
                    metrics.clone(),
                    method.clone(),
                    path_and_query.clone(),
                    headers.clone(),
                    route_metrics.clone(),
                )
                .await?;
                if !credentials::refuses_token(answer.status, &answer.body) {
                    return Ok(answer);
                }
                let fresh = tokens.replace(&request, &token).await?;
                let again = rewrite::replace_access_token(&path_and_query, &token, &fresh);
                let answer =
                    fetch_buffered(upstream, metrics, method, again, headers, route_metrics)
                        .await?;
                if credentials::refuses_token(answer.status, &answer.body) {
                    tokens.refused(&request, &fresh).await;
                    return Err(GatewayError::UpstreamUnavailable(
                        crate::error::UpstreamFailure::Credential,
                    ));
                }
                Ok(answer)
            }
        };
        let lookup = cache.lookup(key, fetch).await;
        ctx.cache = Some(lookup.source);
        self.metrics.cache(lookup.metric);
        let x_cache = Some(HeaderValue::from_static(lookup.source.header()));
        Ok(match lookup.reply? {
            Reply::Cached(entry) => {
                let mut headers = HeaderMap::with_capacity(4);
                if let Some(ct) = entry.content_type {
                    headers.insert(header::CONTENT_TYPE, ct);
                }
                answer_response(StatusCode::OK, headers, entry.body, x_cache)
            }
            Reply::Fetched(answer) if answer.rest.is_some() => {
                // Too large to buffer: streamed on, uncached, to the one caller that
                // takes the rest; a coalesced caller that finds it taken gets 502.
                let rest = answer.rest.as_ref().and_then(Rest::take).ok_or(
                    GatewayError::UpstreamUnavailable(crate::error::UpstreamFailure::Invalid),
                )?;
                ctx.upstream_status = Some(answer.status.as_u16());
                let body = upstream::StreamedBody::after(
                    Some(answer.body.clone()),
                    rest,
                    upstream.timeout(),
                );
                let mut resp = Response::new(Either::Right(body));
                *resp.status_mut() = answer.status;
                *resp.headers_mut() = answer.headers.clone();
                if let Some(v) = x_cache {
                    resp.headers_mut().insert(X_CACHE.clone(), v);
                }
                resp
            }
            Reply::Fetched(answer) => {
                ctx.upstream_status = Some(answer.status.as_u16());
                answer_response(
                    answer.status,
                    answer.headers.clone(),
                    answer.body.clone(),
                    x_cache,
                )
            }
        })
    }

    /// Sends with a managed SMH token; if SMH refuses it (403 InvalidAccessToken),
    /// once more with a fresh one. A second refusal is 502, never the 403: the
    /// caller's SDK would discard its own, valid token. The body is buffered
    /// (`Bytes`), so it can be sent twice; only a 403's answer is read here.
    async fn send_managed(
        &self,
        upstream: &Arc<Upstream>,
        req: UpstreamRequest,
        request: &TokenRequest,
        token: Secret<'static>,
        route_metrics: &RouteMetrics,
        ctx: &mut Context,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let mut again = UpstreamRequest {
            method: req.method.clone(),
            path_and_query: String::new(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        };
        let first = req.path_and_query.clone();
        let resp = self.send(upstream, req, route_metrics, ctx).await?;
        if let Checked::Pass(resp) = credentials::check_refusal(resp).await? {
            return Ok(resp);
        }
        let fresh = self.tokens.replace(request, &token).await?;
        again.path_and_query = rewrite::replace_access_token(&first, &token, &fresh);
        let resp = self.send(upstream, again, route_metrics, ctx).await?;
        match credentials::check_refusal(resp).await? {
            Checked::Pass(resp) => Ok(resp),
            Checked::Refused => {
                self.tokens.refused(request, &fresh).await;
                Err(GatewayError::UpstreamUnavailable(
                    crate::error::UpstreamFailure::Credential,
                ))
            }
        }
    }

    /// Sends a request upstream and streams the answer back.
    async fn send(
        &self,
        upstream: &Upstream,
        req: UpstreamRequest,
        route_metrics: &RouteMetrics,
        ctx: &mut Context,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let permit = upstream.permit(&self.metrics)?;
        let started = Instant::now();
        let sent = upstream.send(req).await;
        // Until the response head: the body streams through afterwards.
        self.metrics.upstream(route_metrics, started.elapsed());
        let (resp, _) = sent?;
        check_response(&resp)?;
        ctx.upstream_status = Some(resp.status().as_u16());
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let body = upstream::StreamedBody::new(body, upstream.timeout()).holding(permit);
        Ok(Response::from_parts(parts, Either::Right(body)))
    }

    /// `routes.unmatched = "forward"`: a request that is no row (and no look-alike)
    /// passes through unchecked, for operators who guard SMH's API partly elsewhere.
    /// Hop-by-hop and credential headers are still dropped.
    async fn forward_unchecked(
        &self,
        settings: &Settings,
        parts: http::request::Parts,
        body: Incoming,
        client: ClientInfo,
        request_id: &str,
        ctx: &mut Context,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let body = body::read(body, &settings.config.server).await?;
        // A library secret in a form body (or behind `;` in the query) would reach
        // SMH unchecked: refused like one in the query.
        if route::mentions_library_secret(parts.uri.query().unwrap_or("").as_bytes())
            || route::mentions_library_secret(&body)
        {
            return Err(route::LIBRARY_SECRET);
        }
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let path_and_query = format!(
            "{}{}",
            settings.upstream.base_path().trim_end_matches('/'),
            target
        );
        let headers =
            headers::upstream_request_headers(parts.headers, client.addr, client.proto, request_id);
        let unmatched = self.unmatched.clone();
        self.send(
            &settings.upstream,
            UpstreamRequest {
                method: parts.method,
                path_and_query,
                headers,
                body,
            },
            &unmatched,
            ctx,
        )
        .await
    }
}

/// An upstream exchange whose answer is read whole; its future owns everything it
/// needs (it is `Send + 'static`): the cache runs it in a task of its own, so that it
/// finishes for the other waiters even when the client that started it goes away.
async fn fetch_buffered(
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    method: http::Method,
    path_and_query: String,
    headers: HeaderMap,
    route_metrics: RouteMetrics,
) -> Result<Answer, GatewayError> {
    // Taken here, in the flight's task: held until the body is read.
    let _permit = upstream.permit(&metrics)?;
    let started = Instant::now();
    let sent = upstream
        .send(UpstreamRequest {
            method,
            path_and_query,
            headers,
            body: Bytes::new(),
        })
        .await;
    let (resp, deadline) = sent.inspect_err(|_| {
        metrics.upstream(&route_metrics, started.elapsed());
    })?;
    check_response(&resp)?;
    let (mut parts, body) = resp.into_parts();
    let body = upstream::read_body(body, deadline).await;
    metrics.upstream(&route_metrics, started.elapsed());
    headers::strip_hop_by_hop(&mut parts.headers);
    let (body, rest) = match body? {
        upstream::ReadBody::Whole(body) => {
            // The body is sent with the length of what was read, never the
            // upstream's framing.
            parts.headers.remove(header::CONTENT_LENGTH);
            (body, None)
        }
        upstream::ReadBody::TooLarge(prefix, rest) => (prefix, Some(Rest::new(rest))),
    };
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        rest,
    })
}

/// The cache key's credential for a row sent without one (none is today), hashed
/// once.
static NO_CREDENTIAL: std::sync::LazyLock<CredentialDigest> =
    std::sync::LazyLock::new(|| CredentialDigest::of(&Secret::new("")));

/// An upstream answer the gateway will not relay: a protocol switch it did not ask
/// for, or framing that disagrees with itself (a response-splitting attempt).
fn check_response(resp: &Response<upstream::Body>) -> Result<(), GatewayError> {
    if resp.status().is_informational() || !headers::response_framing_is_sane(resp.headers()) {
        return Err(GatewayError::UpstreamUnavailable(
            crate::error::UpstreamFailure::Invalid,
        ));
    }
    Ok(())
}

/// A buffered answer, with `X-Cache` when the cache was asked.
fn answer_response(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    x_cache: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let Some(v) = x_cache {
        resp.headers_mut().insert(X_CACHE.clone(), v);
    }
    resp
}

/// 414, 431 and an announced 413, before anything else is looked at.
fn check_limits(config: &Config, req: &http::request::Parts) -> Result<(), GatewayError> {
    let server = &config.server;
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    // Counted as on the wire: "name: value\r\n".
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > server.max_header_bytes {
        return Err(GatewayError::HeaderFieldsTooLarge);
    }
    let announced = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > server.max_body_bytes as u64) {
        return Err(GatewayError::RequestEntityTooLarge);
    }
    Ok(())
}
