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
pub mod headers;
pub mod policy;
pub mod rewrite;
pub mod route;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::access_log::{AccessLog, AccessRecord};
use crate::cache::{Answer, CacheKey, RenewCache, Reply, Source};
use crate::config::{Config, ConfigError, Unmatched};
use crate::error::GatewayError;
use crate::metrics::{Metrics, library_label};
use crate::request_id::RequestIds;
use auth::Verifier;
use rewrite::{Clamp, CredentialSource};
use route::{Operation, RenewRequest, RouteName};
use upstream::{Upstream, UpstreamRequest};

/// `HIT`, `MISS` or `COALESCED` on renew answers while the cache is enabled.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the gateway answers with: a buffered body (its own errors, renew answers)
/// or the upstream's body streamed through (forwarded routes).
pub type ResponseBody = Either<Full<Bytes>, upstream::StreamedBody>;

/// Everything derived from one config file, swapped as a whole on reload so that a
/// request sees one consistent version from start to end.
pub struct Settings {
    pub config: Config,
    pub verifier: Verifier,
    pub credential: CredentialSource,
}

impl Settings {
    /// Loads the secrets the config names. Fails (exit 2 at start) when a key file
    /// is unreadable or an env var is missing.
    pub fn from_config(config: Config) -> Result<Settings, ConfigError> {
        Ok(Settings {
            verifier: Verifier::from_config(&config)?,
            credential: CredentialSource::from_config(&config)?,
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

/// What a request did, filled in by the phases as they run; the access log (and
/// later the metrics) record it once, at the end.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub route: RouteName,
    pub upstream_status: Option<u16>,
    pub clamp: Clamp,
    /// The library of a renew that passed policy.
    pub library: Option<String>,
    /// The traffic_limit sent upstream.
    pub traffic_limit: Option<u64>,
    /// Where a renew answer came from, when the cache was asked.
    pub cache: Option<Source>,
}

impl Outcome {
    /// Before any phase has run.
    const EMPTY: Outcome = Outcome {
        route: RouteName::Unmatched,
        upstream_status: None,
        clamp: Clamp::Unchanged,
        library: None,
        traffic_limit: None,
        cache: None,
    };
}

/// A request being handled. If its future is dropped before the answer (the client
/// went away), this still records it, as 499 (SMH's ClientDisconnected status) in the
/// access log and metrics, and puts the in-flight gauge back.
struct Unanswered<'a> {
    gateway: &'a Gateway,
    started: Instant,
    request_id: String,
    method: http::Method,
    client: ClientInfo,
    outcome: Outcome,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let gateway = self.gateway;
        gateway.metrics.in_flight().dec();
        if self.answered {
            return;
        }
        const CLIENT_CLOSED: u16 = 499;
        let elapsed = self.started.elapsed();
        gateway
            .metrics
            .request(self.outcome.route, CLIENT_CLOSED, elapsed);
        gateway.access_log.record(AccessRecord {
            request_id: std::mem::take(&mut self.request_id),
            method: self.method.clone(),
            route: self.outcome.route,
            status: CLIENT_CLOSED,
            duration: elapsed,
            upstream_status: self.outcome.upstream_status,
            cache: self.outcome.cache.map(Source::log),
            client: self.client.addr,
            reason: Some("client_closed"),
        });
    }
}

/// The shared state of the running gateway.
pub struct Gateway {
    settings: ArcSwap<Settings>,
    upstream: Arc<Upstream>,
    /// `None` while `cache.enabled = false`.
    cache: Option<RenewCache>,
    in_flight: Semaphore,
    request_ids: RequestIds,
    access_log: AccessLog,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        upstream: Upstream,
        access_log: AccessLog,
        cache: Option<RenewCache>,
    ) -> Gateway {
        let libraries: Vec<String> = settings
            .config
            .libraries
            .iter()
            .map(|l| l.id.clone())
            .collect();
        let max_in_flight = settings
            .config
            .server
            .max_in_flight
            .min(Semaphore::MAX_PERMITS);
        Gateway {
            settings: ArcSwap::from_pointee(settings),
            upstream: Arc::new(upstream),
            cache,
            in_flight: Semaphore::new(max_in_flight),
            request_ids: RequestIds::new(),
            access_log,
            metrics: Arc::new(Metrics::new(&libraries)),
        }
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
        self.metrics.render()
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Swaps in new settings; requests already running keep the old ones.
    pub fn replace_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
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
        let request_id =
            headers::incoming_request_id(req.headers()).unwrap_or_else(|| self.request_ids.next());
        let method = req.method().clone();
        let settings = self.settings.load_full();
        self.metrics.in_flight().inc();
        let mut flight = Unanswered {
            gateway: self,
            started,
            request_id,
            method,
            client,
            outcome: Outcome::EMPTY,
            answered: false,
        };
        let result = self
            .dispatch(
                &settings,
                req,
                client,
                &flight.request_id,
                &mut flight.outcome,
            )
            .await;
        flight.answered = true;
        let request_id = std::mem::take(&mut flight.request_id);
        let method = flight.method.clone();
        let outcome = std::mem::replace(&mut flight.outcome, Outcome::EMPTY);
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
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics.request(outcome.route, status, elapsed);
        if outcome.route == RouteName::Renew && (200..300).contains(&status) {
            let library = outcome.library.as_deref().unwrap_or_default();
            self.metrics.renewal(
                library_label(&settings.config.libraries, library),
                outcome.traffic_limit,
            );
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), v);
        }
        self.access_log.record(AccessRecord {
            request_id,
            method,
            route: outcome.route,
            status,
            duration: elapsed,
            upstream_status: outcome.upstream_status,
            cache: outcome.cache.map(Source::log),
            client: client.addr,
            reason,
        });
        resp
    }

    async fn dispatch(
        &self,
        settings: &Settings,
        req: Request<Incoming>,
        client: ClientInfo,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        check_limits(&settings.config, &req)?;
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| GatewayError::ServerOverloaded)?;
        // route::parse fails only on renew-shaped requests: label those `renew`.
        let op = route::parse(req.method(), req.uri(), req.headers())
            .inspect_err(|_| outcome.route = RouteName::Renew)?;
        outcome.route = op.route();
        match op {
            Operation::Renew(renew) => {
                self.renew(settings, renew, req, client, request_id, outcome)
                    .await
            }
            Operation::Unmatched => match settings.config.routes.unmatched {
                Unmatched::Deny => Err(GatewayError::RouteNotFound),
                Unmatched::Forward => {
                    self.forward(settings, req, client, request_id, outcome)
                        .await
                }
            },
        }
    }

    async fn renew(
        &self,
        settings: &Settings,
        renew: RenewRequest,
        req: Request<Incoming>,
        client: ClientInfo,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let config = &settings.config;
        let (parts, body) = req.into_parts();
        // SDKs send an empty form body; whatever comes is read (bounded) and dropped.
        read_request_body(body, &config.server).await?;

        let token = renew.token.as_ref().ok_or(GatewayError::EmptyAccessToken)?;
        let principal = settings
            .verifier
            .verify_cached(token)
            .map_err(GatewayError::InvalidAccessToken)?;
        policy::authorize(
            &config.libraries,
            &principal,
            &renew.scope,
            RouteName::Renew.permissions(),
            renew.user_id.as_deref(),
        )?;
        outcome.library = Some(renew.scope.library.clone());

        let bounds = config.traffic_limit_for(&renew.scope.library);
        let (traffic_limit, clamp) = rewrite::clamp_traffic_limit(renew.traffic_limit, bounds);
        outcome.clamp = clamp;
        outcome.traffic_limit = traffic_limit;
        self.metrics.clamp(clamp);
        let (credential, user_id) =
            settings
                .credential
                .choose(token, &principal, renew.user_id.as_deref())?;
        // Built only on a miss: a hit never pays for the upstream request.
        let fetch = || {
            let path_and_query = format!(
                "{}?{}",
                rewrite::renew_path(self.upstream.base_path(), &renew),
                rewrite::renew_query(credential, user_id, traffic_limit)
            );
            let mut headers = headers::upstream_request_headers(
                parts.headers,
                client.addr,
                client.proto,
                request_id,
            );
            headers.remove(header::CONTENT_LENGTH);
            // The answer is parsed (expiration) and shared by coalesced callers who
            // may not accept a compressed body: ask for it uncompressed.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            self.fetch_renew(path_and_query, headers)
        };

        let Some(cache) = &self.cache else {
            let answer = fetch().await?;
            outcome.upstream_status = Some(answer.status.as_u16());
            return Ok(answer_response(
                answer.status,
                answer.headers,
                answer.body,
                None,
            ));
        };
        let key = CacheKey::new(
            &renew.scope.library,
            &renew.scope.space,
            &renew.confirm_key,
            user_id,
            traffic_limit,
            credential,
        );
        let lookup = cache.lookup(key, fetch).await;
        outcome.cache = Some(lookup.source);
        self.metrics.cache(lookup.metric);
        let x_cache = Some(HeaderValue::from_static(lookup.source.header()));
        Ok(match lookup.reply? {
            Reply::Cached(entry) => {
                let mut headers = HeaderMap::with_capacity(4);
                if let Some(ct) = entry.content_type {
                    headers.insert(header::CONTENT_TYPE, ct);
                }
                answer_response(http::StatusCode::OK, headers, entry.body, x_cache)
            }
            Reply::Fetched(answer) => {
                outcome.upstream_status = Some(answer.status.as_u16());
                answer_response(
                    answer.status,
                    answer.headers.clone(),
                    answer.body.clone(),
                    x_cache,
                )
            }
        })
    }

    /// The upstream exchange of a renew, as a future that owns everything it needs:
    /// the cache runs it in a task of its own, so that it finishes for the other
    /// waiters even when the client that started it goes away.
    fn fetch_renew(
        &self,
        path_and_query: String,
        headers: HeaderMap,
    ) -> impl Future<Output = Result<Answer, GatewayError>> + Send + 'static {
        let upstream = self.upstream.clone();
        let metrics = self.metrics.clone();
        async move {
            let started = Instant::now();
            let sent = upstream
                .send(UpstreamRequest {
                    method: Method::POST,
                    path_and_query,
                    headers,
                    body: Bytes::new(),
                })
                .await;
            let (resp, deadline) = sent.inspect_err(|_| {
                metrics.upstream(RouteName::Renew, started.elapsed());
            })?;
            let (mut parts, body) = resp.into_parts();
            let body = upstream::read_body(body, deadline).await;
            metrics.upstream(RouteName::Renew, started.elapsed());
            let body = body?;
            headers::strip_hop_by_hop(&mut parts.headers);
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
    }

    /// `routes.unmatched = "forward"`: passed through unchecked, for operators who
    /// guard renew alone. Hop-by-hop and credential headers are still dropped.
    async fn forward(
        &self,
        settings: &Settings,
        req: Request<Incoming>,
        client: ClientInfo,
        request_id: &str,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (parts, body) = req.into_parts();
        let body = read_request_body(body, &settings.config.server).await?;
        let target = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let path_and_query = format!(
            "{}{}",
            self.upstream.base_path().trim_end_matches('/'),
            target
        );
        let mut headers =
            headers::upstream_request_headers(parts.headers, client.addr, client.proto, request_id);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::EXPECT);
        let upstream_started = Instant::now();
        let sent = self
            .upstream
            .send(UpstreamRequest {
                method: parts.method,
                path_and_query,
                headers,
                body,
            })
            .await;
        // Until the response head: the body streams through afterwards.
        self.metrics
            .upstream(RouteName::Unmatched, upstream_started.elapsed());
        let (resp, _) = sent?;
        outcome.upstream_status = Some(resp.status().as_u16());
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let body = upstream::StreamedBody::new(body, self.upstream.timeout());
        Ok(Response::from_parts(parts, Either::Right(body)))
    }
}

/// A buffered answer, with `X-Cache` when the cache was asked.
fn answer_response(
    status: http::StatusCode,
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
fn check_limits(config: &Config, req: &Request<Incoming>) -> Result<(), GatewayError> {
    let server = &config.server;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    // Counted as on the wire: "name: value\r\n".
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > server.max_header_bytes {
        return Err(GatewayError::HeaderFieldsTooLarge);
    }
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > server.max_body_bytes as u64) {
        return Err(GatewayError::RequestEntityTooLarge);
    }
    Ok(())
}

/// Reads a request body, refusing one over `max` bytes (chunked ones included).
/// Reads a request body, refusing one over `server.max_body_bytes` (chunked ones
/// included) and one that does not arrive within `server.header_read_timeout`: a
/// client trickling a body must not hold a request slot forever.
async fn read_request_body(
    body: Incoming,
    server: &crate::config::ServerConfig,
) -> Result<Bytes, GatewayError> {
    use hyper::body::Body as _;
    // The common case (SDKs send no body): no timer, no collecting.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let read = Limited::new(body, server.max_body_bytes).collect();
    match tokio::time::timeout(server.header_read_timeout, read).await {
        Err(_) => Err(GatewayError::ReadRequestTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::RequestEntityTooLarge)
        }
        Ok(Err(_)) => Err(GatewayError::ParamInvalid("request body could not be read")),
    }
}
