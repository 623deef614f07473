//! `/metrics` scraped and parsed (the parser is common's), and the label names
//! each smh_gateway family must carry.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::common::{Resp, metrics_page, parse_exposition};
pub use crate::common::{Sample, series_key};

pub async fn scrape(admin: SocketAddr) -> (Resp, Vec<Sample>) {
    let r = metrics_page(admin).await;
    let samples = parse_exposition(&r.text());
    (r, samples)
}

pub fn counters_above_zero(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name.starts_with("smh_gateway_") && s.name.ends_with("_total"))
        .filter(|s| !s.name.starts_with("smh_gateway_cache_") && s.value > 0.0)
        .map(|s| (s.key(), s.value))
        .collect()
}

#[track_caller]
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = series_key(name, &labels);
    samples
        .iter()
        .find(|s| s.key() == key)
        .unwrap_or_else(|| panic!("no series {key}"))
        .value
}

/// Each smh_gateway family and its label names (histograms add `le` to buckets).
/// A new metric has to be added here, with its labels, deliberately.
pub const FAMILIES: &[(&str, &[&str])] = &[
    ("smh_gateway_requests_total", &["route", "status"]),
    ("smh_gateway_request_duration_seconds", &["route"]),
    ("smh_gateway_upstream_duration_seconds", &["route"]),
    ("smh_gateway_auth_failures_total", &["reason"]),
    ("smh_gateway_policy_refusals_total", &["reason"]),
    ("smh_gateway_traffic_limit_clamped_total", &["direction"]),
    ("smh_gateway_upstream_errors_total", &["kind"]),
    ("smh_gateway_cache_requests_total", &["result"]),
    ("smh_gateway_cache_entries", &[]),
    ("smh_gateway_renewals_total", &["library"]),
    ("smh_gateway_traffic_limit_granted_bytes", &["library"]),
    ("smh_gateway_config_reloads_total", &["result"]),
    ("smh_gateway_build_info", &["version"]),
    ("smh_gateway_in_flight_requests", &[]),
    ("smh_gateway_open_connections", &[]),
    ("smh_gateway_parked_connections", &[]),
    ("smh_gateway_connection_parks_total", &[]),
    ("smh_gateway_access_log_dropped_total", &[]),
    ("smh_gateway_upstream_refused_total", &[]),
    ("smh_gateway_connection_errors_total", &["kind"]),
    ("smh_gateway_upstream_token_fetches_total", &["result"]),
    ("smh_gateway_upstream_token_refused_total", &[]),
    ("smh_gateway_upstream_tokens", &[]),
    ("smh_gateway_jwks_refresh_total", &["result"]),
    ("smh_gateway_jwks_keys", &[]),
    ("smh_gateway_jwks_age_seconds", &[]),
    ("smh_gateway_rate_limited_total", &["limit"]),
    ("smh_gateway_rate_limit_backend_errors_total", &[]),
    ("smh_gateway_token_verifications_total", &[]),
];

/// The family a sample belongs to, and whether it is a histogram bucket.
pub fn family(name: &str) -> Option<(&'static str, bool)> {
    let bucket = name.ends_with("_bucket");
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| FAMILIES.iter().any(|(f, _)| f == b))
        .unwrap_or(name);
    FAMILIES
        .iter()
        .find(|(f, _)| *f == base)
        .map(|(f, _)| (*f, bucket))
}
