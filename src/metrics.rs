//! Every Prometheus metric the gateway exports (SPEC §8), registered in one owned
//! registry (no globals), with label values from bounded sets only: route names,
//! numeric statuses, reasons from enums, configured library ids or `other`. No label
//! ever holds a token, a user or a confirm key.
//!
//! Histogram buckets are chosen for what they measure: the whole request spans the
//! gateway's own sub-millisecond work up to a slow upstream (100 µs – 10 s); the
//! upstream alone runs 5 ms – 10 s; traffic_limit is bytes/s from 100 KiB/s to
//! 100 MiB/s in doublings.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{AuthFailure, Counted, GatewayError, LimitKind};

const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const TRAFFIC_LIMIT_BUCKETS: &[f64] = &[
    102_400.0,
    204_800.0,
    409_600.0,
    819_200.0,
    1_638_400.0,
    3_276_800.0,
    6_553_600.0,
    13_107_200.0,
    26_214_400.0,
    52_428_800.0,
    104_857_600.0,
];

/// The label value for libraries that are not configured.
pub const OTHER_LIBRARY: &str = "other";

/// Why policy refused a request: the label of `smh_gateway_policy_refusals_total`.
pub const POLICY_REASONS: [&str; 7] = [
    "library_not_found",
    "library_mismatch",
    "not_multi_space_library",
    "empty_space_id",
    "space_mismatch",
    "no_permission",
    "user_id_not_allowed",
];

/// How a reload ended: the `result` label of `smh_gateway_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// Applied.
    Success,
    /// The new file (or a key, certificate or secret it names) is not usable.
    Failure,
    /// It changes a key that needs a restart (SPEC §15).
    Refused,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Success,
        ReloadResult::Failure,
        ReloadResult::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
            ReloadResult::Refused => "refused",
        }
    }
}

/// Cache results, the label of `smh_gateway_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Coalesced,
    Error,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Coalesced,
        CacheResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    auth_failures: IntCounterVec,
    policy_refusals: IntCounterVec,
    upstream_errors: IntCounterVec,
    cache_entries: IntGauge,
    upstream_token_fetches: IntCounterVec,
    upstream_token_refused: IntCounter,
    upstream_tokens: IntGauge,
    renewals: IntCounterVec,
    traffic_limit_granted: HistogramVec,
    config_reloads: IntCounterVec,
    in_flight: IntGauge,
    connections: IntGauge,
    parked: IntGauge,
    parks: IntCounter,
    access_log_dropped: IntCounter,
    upstream_refused: IntCounter,
    connection_errors: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    cache_by_result: [IntCounter; CacheResult::ALL.len()],
    clamped_up: IntCounter,
    clamped_down: IntCounter,
    rate_limited: [IntCounter; LimitKind::ALL.len()],
    rate_limit_backend_errors: IntCounter,
    token_verifications: IntCounter,
    /// foldhash: looked up on every renew, keyed by the operator's library ids.
    by_library:
        std::collections::HashMap<String, (IntCounter, Histogram), foldhash::fast::RandomState>,
    jwks: JwksMetrics,
}

/// SPEC §14: the JWKS URL sets, brought up to date from the key store at scrape.
struct JwksMetrics {
    success: IntCounter,
    failure: IntCounter,
    keys: IntGauge,
    age: IntGauge,
}

/// One route's children, resolved once per route (the route table keeps them): the
/// hot path then skips the label lookup, which hashes the values and takes a lock.
#[derive(Debug, Clone)]
pub struct RouteMetrics(std::sync::Arc<RouteChildren>);

#[derive(Debug)]
struct RouteChildren {
    name: String,
    by_status: Vec<(u16, IntCounter)>,
    requests: IntCounterVec,
    duration: Histogram,
    upstream: Histogram,
}

/// Statuses whose series exist from the start for the common routes: a series'
/// first sample is Prometheus's baseline for rate(), so the first 502 after a
/// restart is not lost.
const COMMON_STATUSES: [u16; 10] = [200, 400, 403, 404, 413, 414, 431, 502, 503, 504];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// All metrics, with the label sets that are known up front pre-created at zero,
    /// so that dashboards and `rate()` see every series from the first scrape.
    /// `common_routes` get their request series created at zero now (the upload
    /// flow's); any other route's appear on its first request.
    pub fn new(libraries: &[String], common_routes: &[&str]) -> Metrics {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "smh_gateway_requests_total",
            "Requests answered, by route and HTTP status.",
            &["route", "status"],
        );
        let request_duration = histogram(
            &registry,
            "smh_gateway_request_duration_seconds",
            "Time from request head to response head, by route.",
            &["route"],
            REQUEST_BUCKETS,
        );
        let upstream_duration = histogram(
            &registry,
            "smh_gateway_upstream_duration_seconds",
            "Time spent waiting for the upstream, by route.",
            &["route"],
            UPSTREAM_BUCKETS,
        );
        let auth_failures = counter(
            &registry,
            "smh_gateway_auth_failures_total",
            "Requests refused for their token, by reason.",
            &["reason"],
        );
        let policy_refusals = counter(
            &registry,
            "smh_gateway_policy_refusals_total",
            "Requests with a valid token refused by policy, by reason.",
            &["reason"],
        );
        let clamped = counter(
            &registry,
            "smh_gateway_traffic_limit_clamped_total",
            "traffic_limit values raised to the minimum (up) or lowered to the maximum (down).",
            &["direction"],
        );
        let upstream_errors = counter(
            &registry,
            "smh_gateway_upstream_errors_total",
            "Upstream exchanges that failed at the transport level, by kind.",
            &["kind"],
        );
        let cache_requests = counter(
            &registry,
            "smh_gateway_cache_requests_total",
            "Renew cache lookups, by result.",
            &["result"],
        );
        let cache_entries = gauge(
            &registry,
            "smh_gateway_cache_entries",
            "Entries in the renew cache.",
        );
        let upstream_token_fetches = counter(
            &registry,
            "smh_gateway_upstream_token_fetches_total",
            "Managed SMH tokens obtained (upstream.credential = library_secret), by result: minted (a request waited for SMH's token call), refreshed (ahead of time, in the background), shared (another replica's, from Redis), failure (the token call failed).",
            &["result"],
        );
        for r in ["minted", "refreshed", "shared", "failure"] {
            upstream_token_fetches.with_label_values(&[r]);
        }
        let upstream_token_refused = IntCounter::new(
            "smh_gateway_upstream_token_refused_total",
            "Managed SMH tokens SMH refused (403 InvalidAccessToken): dropped, and the request sent once more with a fresh one.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_token_refused.clone()))
            .expect("metric registered once");
        let upstream_tokens = gauge(
            &registry,
            "smh_gateway_upstream_tokens",
            "Managed SMH tokens held in memory.",
        );
        let renewals = counter(
            &registry,
            "smh_gateway_renewals_total",
            "Renew requests answered 2xx (cache hits included), by library.",
            &["library"],
        );
        let traffic_limit_granted = histogram(
            &registry,
            "smh_gateway_traffic_limit_granted_bytes",
            "The traffic_limit (bytes/s) sent upstream on renew, after clamping, by library.",
            &["library"],
            TRAFFIC_LIMIT_BUCKETS,
        );
        let config_reloads = counter(
            &registry,
            "smh_gateway_config_reloads_total",
            "SIGHUP reloads, by result.",
            &["result"],
        );
        let in_flight = gauge(
            &registry,
            "smh_gateway_in_flight_requests",
            "Requests being handled now.",
        );
        let connections = gauge(
            &registry,
            "smh_gateway_open_connections",
            "Client connections open now.",
        );
        let parked = gauge(
            &registry,
            "smh_gateway_parked_connections",
            "Open HTTP/1.1 client connections parked while idle: the socket alone, no HTTP buffers held (a subset of smh_gateway_open_connections).",
        );
        let parks = plain_counter(
            &registry,
            "smh_gateway_connection_parks_total",
            "Times an idle plain HTTP/1.1 client connection was parked (its HTTP state and buffers released, the socket kept).",
        );
        let connection_errors = counter(
            &registry,
            "smh_gateway_connection_errors_total",
            "Client connections that ended in an error, by kind: parse (a request hyper refused to parse: smuggling attempts), too_large (a head over the buffer), timeout (no head in time), other.",
            &["kind"],
        );
        for k in ["parse", "too_large", "timeout", "other"] {
            connection_errors.with_label_values(&[k]);
        }
        let rate_limited_vec = counter(
            &registry,
            "smh_gateway_rate_limited_total",
            "Requests answered 429 RateLimitExceeded, by the limit they hit (library, user, auth_failures).",
            &["limit"],
        );
        let rate_limited =
            LimitKind::ALL.map(|l| rate_limited_vec.with_label_values(&[l.as_str()]));
        let rate_limit_backend_errors = plain_counter(
            &registry,
            "smh_gateway_rate_limit_backend_errors_total",
            "Rate-limit checks that Redis failed or was too slow for: the request was let through unchecked.",
        );
        let token_verifications = plain_counter(
            &registry,
            "smh_gateway_token_verifications_total",
            "Tokens checked in full (decoded, key looked up, signature verified), i.e. not answered from the verified-token cache nor refused by the auth-failure limit first.",
        );
        let access_log_dropped = IntCounter::new(
            "smh_gateway_access_log_dropped_total",
            "Access-log lines dropped because stdout could not keep up.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(access_log_dropped.clone()))
            .expect("metric registered once");
        let upstream_refused = IntCounter::new(
            "smh_gateway_upstream_refused_total",
            "Upstream exchanges not started because upstream.max_in_flight were already running (the request got 503 ServerOverloaded).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_refused.clone()))
            .expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "smh_gateway_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }

        for reason in AuthFailure::ALL
            .map(AuthFailure::as_str)
            .into_iter()
            .chain(["missing"])
        {
            auth_failures.with_label_values(&[reason]);
        }
        for r in POLICY_REASONS {
            policy_refusals.with_label_values(&[r]);
        }
        for d in ["up", "down"] {
            clamped.with_label_values(&[d]);
        }
        for k in ["connect", "timeout", "invalid", "credential"] {
            upstream_errors.with_label_values(&[k]);
        }
        for r in CacheResult::ALL {
            cache_requests.with_label_values(&[r.as_str()]);
        }
        for r in ReloadResult::ALL {
            config_reloads.with_label_values(&[r.as_str()]);
        }
        let by_library = libraries
            .iter()
            .map(String::as_str)
            .chain([OTHER_LIBRARY])
            .map(|lib| {
                let children = (
                    renewals.with_label_values(&[lib]),
                    traffic_limit_granted.with_label_values(&[lib]),
                );
                (lib.to_string(), children)
            })
            .collect();
        let cache_by_result =
            CacheResult::ALL.map(|r| cache_requests.with_label_values(&[r.as_str()]));
        let jwks_refresh = counter(
            &registry,
            "smh_gateway_jwks_refresh_total",
            "Fetches of auth.jwks_urls key sets (scheduled and for unknown kids), by result.",
            &["result"],
        );
        let jwks = JwksMetrics {
            success: jwks_refresh.with_label_values(&["success"]),
            failure: jwks_refresh.with_label_values(&["failure"]),
            keys: gauge(
                &registry,
                "smh_gateway_jwks_keys",
                "Verification keys loaded from auth.jwks_urls.",
            ),
            age: gauge(
                &registry,
                "smh_gateway_jwks_age_seconds",
                "Seconds since the oldest auth.jwks_urls key set last fetched successfully (0 without JWKS URLs).",
            ),
        };
        let clamped_up = clamped.with_label_values(&["up"]);
        let clamped_down = clamped.with_label_values(&["down"]);
        let metrics = Metrics {
            jwks,
            cache_by_result,
            clamped_up,
            clamped_down,
            rate_limited,
            rate_limit_backend_errors,
            token_verifications,
            by_library,
            request_duration,
            upstream_duration,
            registry,
            requests,
            auth_failures,
            policy_refusals,
            upstream_errors,
            cache_entries,
            upstream_token_fetches,
            upstream_token_refused,
            upstream_tokens,
            renewals,
            traffic_limit_granted,
            config_reloads,
            in_flight,
            connections,
            parked,
            parks,
            access_log_dropped,
            upstream_refused,
            connection_errors,
        };
        for route in common_routes {
            metrics.route(route);
        }
        metrics
    }

    /// The children of one route (its series are created now, at zero). The
    /// route table resolves each row's once.
    pub fn route(&self, name: &str) -> RouteMetrics {
        let by_status = COMMON_STATUSES
            .iter()
            .map(|&status| {
                let digits = itoa_status(status);
                let label = std::str::from_utf8(&digits).unwrap_or("0");
                (status, self.requests.with_label_values(&[name, label]))
            })
            .collect();
        RouteMetrics(std::sync::Arc::new(RouteChildren {
            name: name.to_string(),
            by_status,
            requests: self.requests.clone(),
            duration: self.request_duration.with_label_values(&[name]),
            upstream: self.upstream_duration.with_label_values(&[name]),
        }))
    }

    /// One request, answered.
    pub fn request(&self, route: &RouteMetrics, status: u16, elapsed: Duration) {
        let route = &route.0;
        match route.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.inc(),
            None => {
                let buf = itoa_status(status);
                let label = std::str::from_utf8(&buf).unwrap_or("0");
                route
                    .requests
                    .with_label_values(&[&route.name, label])
                    .inc();
            }
        }
        route.duration.observe(elapsed.as_secs_f64());
    }

    pub fn upstream(&self, route: &RouteMetrics, elapsed: Duration) {
        route.0.upstream.observe(elapsed.as_secs_f64());
    }

    /// A refusal or failure the gateway answered itself: counted as `error.rs`
    /// classifies it.
    pub fn error(&self, error: &GatewayError) {
        match error.class().counted {
            Counted::Auth(reason) => self.auth_failures.with_label_values(&[reason]).inc(),
            Counted::Policy(reason) => self.policy_refusals.with_label_values(&[reason]).inc(),
            Counted::Upstream(kind) => self.upstream_errors.with_label_values(&[kind]).inc(),
            Counted::RateLimited(limit) => self.rate_limited[limit as usize].inc(),
            Counted::Request => {}
        }
    }

    /// A client connection that ended in an error of this kind.
    pub fn connection_error(&self, kind: &str) {
        self.connection_errors.with_label_values(&[kind]).inc();
    }

    /// A traffic_limit raised to the minimum (`up`) or lowered to the maximum.
    pub fn clamped(&self, up: bool) {
        if up {
            self.clamped_up.inc();
        } else {
            self.clamped_down.inc();
        }
    }

    /// A renew answered 2xx, and the traffic_limit it was granted (if any).
    pub fn renewal(&self, library: &str, traffic_limit: Option<u64>) {
        // Libraries added by a reload are not pre-resolved: label lookup then.
        let resolved;
        let (renewals, granted) = match self.by_library.get(library) {
            Some((r, g)) => (r, g),
            None => {
                resolved = (
                    self.renewals.with_label_values(&[library]),
                    self.traffic_limit_granted.with_label_values(&[library]),
                );
                (&resolved.0, &resolved.1)
            }
        };
        renewals.inc();
        if let Some(tl) = traffic_limit {
            granted.observe(tl as f64);
        }
    }

    /// A rate-limit check Redis could not answer (the request went through).
    pub fn rate_limit_backend_error(&self) {
        self.rate_limit_backend_errors.inc();
    }

    /// The counter the token verifier adds one to per full verification (it is
    /// handed a clone: a reload's new verifier keeps counting into the same series).
    pub fn token_verifications(&self) -> &IntCounter {
        &self.token_verifications
    }

    pub fn cache(&self, result: CacheResult) {
        self.cache_by_result[result as usize].inc();
    }

    /// A managed SMH token obtained, or a failed attempt (`minted`, `refreshed`,
    /// `shared`, `failure`).
    pub fn upstream_token_fetch(&self, result: &'static str) {
        self.upstream_token_fetches
            .with_label_values(&[result])
            .inc();
    }

    pub fn upstream_token_refused(&self) {
        self.upstream_token_refused.inc();
    }

    pub fn set_upstream_tokens(&self, n: usize) {
        self.upstream_tokens
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_cache_entries(&self, n: usize) {
        self.cache_entries.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn reload(&self, result: ReloadResult) {
        self.config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    pub fn connections(&self) -> &IntGauge {
        &self.connections
    }

    /// Client connections parked now (see `server::park`).
    pub fn parked(&self) -> &IntGauge {
        &self.parked
    }

    /// A connection parked.
    pub fn parks(&self) -> &IntCounter {
        &self.parks
    }

    /// An upstream exchange refused at `upstream.max_in_flight`.
    pub fn upstream_refused(&self) {
        self.upstream_refused.inc();
    }

    pub fn set_access_log_dropped(&self, total: u64) {
        let now = self.access_log_dropped.get();
        if total > now {
            self.access_log_dropped.inc_by(total - now);
        }
    }

    /// The key store's JWKS numbers (its counters only grow).
    pub fn set_jwks(&self, stats: crate::proxy::auth::JwksStats) {
        for (counter, total) in [
            (&self.jwks.success, stats.refresh_success),
            (&self.jwks.failure, stats.refresh_failure),
        ] {
            let now = counter.get();
            if total > now {
                counter.inc_by(total - now);
            }
        }
        self.jwks
            .keys
            .set(i64::try_from(stats.keys).unwrap_or(i64::MAX));
        self.jwks
            .age
            .set(i64::try_from(stats.age_secs).unwrap_or(i64::MAX));
    }

    /// The text exposition format 0.0.4.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The label value a library id gets: itself when configured, else `other`.
pub fn library_label<'a>(configured: &[crate::config::LibraryConfig], library: &'a str) -> &'a str {
    if configured.iter().any(|l| l.id == library) {
        library
    } else {
        OTHER_LIBRARY
    }
}

/// A status code as three ASCII digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn spec_metrics_are_all_exported() {
        let m = Metrics::new(&["lib1".to_string()], &["renew"]);
        let renew = m.route("renew");
        m.request(&renew, 200, Duration::from_millis(3));
        m.upstream(&renew, Duration::from_millis(2));
        m.set_cache_entries(5);
        let t = text(&m);
        for name in [
            "smh_gateway_requests_total{route=\"renew\",status=\"200\"} 1",
            "smh_gateway_request_duration_seconds_bucket{route=\"renew\",le=\"0.005\"} 1",
            "smh_gateway_upstream_duration_seconds_count{route=\"renew\"} 1",
            "smh_gateway_auth_failures_total{reason=\"expired\"} 0",
            "smh_gateway_traffic_limit_clamped_total{direction=\"up\"} 0",
            "smh_gateway_cache_requests_total{result=\"coalesced\"} 0",
            "smh_gateway_cache_entries 5",
            "smh_gateway_renewals_total{library=\"lib1\"} 0",
            "smh_gateway_renewals_total{library=\"other\"} 0",
            "smh_gateway_config_reloads_total{result=\"failure\"} 0",
            "smh_gateway_jwks_refresh_total{result=\"success\"} 0",
            "smh_gateway_jwks_refresh_total{result=\"failure\"} 0",
            "smh_gateway_jwks_keys 0",
            "smh_gateway_jwks_age_seconds 0",
            "smh_gateway_upstream_refused_total 0",
            "smh_gateway_rate_limited_total{limit=\"library\"} 0",
            "smh_gateway_rate_limited_total{limit=\"user\"} 0",
            "smh_gateway_rate_limited_total{limit=\"auth_failures\"} 0",
            "smh_gateway_rate_limit_backend_errors_total 0",
            "smh_gateway_token_verifications_total 0",
            "smh_gateway_build_info{version=\"",
        ] {
            assert!(t.contains(name), "missing {name}\n{t}");
        }
    }

    #[test]
    fn errors_are_counted_by_reason() {
        let m = Metrics::new(&[], &[]);
        m.error(&GatewayError::InvalidAccessToken(AuthFailure::BadSignature));
        m.error(&GatewayError::EmptyAccessToken);
        m.error(&GatewayError::AccessTokenNotMatchSpace);
        m.error(&GatewayError::UpstreamTimeout);
        m.error(&GatewayError::RateLimitExceeded {
            limit: LimitKind::AuthFailures,
            retry_after_secs: 3,
        });
        let t = text(&m);
        assert!(
            t.contains("smh_gateway_rate_limited_total{limit=\"auth_failures\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("smh_gateway_auth_failures_total{reason=\"bad_signature\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("smh_gateway_auth_failures_total{reason=\"missing\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("smh_gateway_policy_refusals_total{reason=\"space_mismatch\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("smh_gateway_upstream_errors_total{kind=\"timeout\"} 1"),
            "{t}"
        );
    }

    #[test]
    fn jwks_numbers_follow_the_key_store() {
        let m = Metrics::new(&[], &[]);
        let stats = |success, failure, keys, age_secs| crate::proxy::auth::JwksStats {
            refresh_success: success,
            refresh_failure: failure,
            keys,
            age_secs,
        };
        m.set_jwks(stats(3, 1, 4, 20));
        m.set_jwks(stats(5, 1, 2, 7));
        let t = text(&m);
        for line in [
            "smh_gateway_jwks_refresh_total{result=\"success\"} 5",
            "smh_gateway_jwks_refresh_total{result=\"failure\"} 1",
            "smh_gateway_jwks_keys 2",
            "smh_gateway_jwks_age_seconds 7",
        ] {
            assert!(t.contains(line), "missing {line}\n{t}");
        }
    }

    #[test]
    fn unconfigured_libraries_are_other() {
        let libs = [crate::config::LibraryConfig {
            id: "lib1".into(),
            secret: None,
            multi_tenant: false,
            traffic_limit: crate::config::TrafficLimitBounds {
                min: 1,
                max: 2,
                default: None,
            },
            rate_limits: Default::default(),
        }];
        assert_eq!(library_label(&libs, "lib1"), "lib1");
        assert_eq!(library_label(&libs, "attacker-chosen"), OTHER_LIBRARY);
        assert_eq!(library_label(&[], "lib1"), OTHER_LIBRARY);
    }

    #[test]
    fn status_digits() {
        assert_eq!(&itoa_status(200), b"200");
        assert_eq!(&itoa_status(504), b"504");
        assert_eq!(&itoa_status(99), b"099");
    }
}
