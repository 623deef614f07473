//! The Prometheus text exposition format, parsed just enough to compare series by
//! their exact label sets, and the label names each smh_gateway family must carry.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;

use crate::common::{Resp, send};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// `name{a="1",b="2"}` with labels sorted: one spelling per series.
    pub fn key(&self) -> String {
        series_key(&self.name, &self.labels)
    }
}

pub fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                // Our label values hold no `",` sequence, so this split is exact here.
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

pub async fn scrape(admin: SocketAddr) -> (Resp, Vec<Sample>) {
    let r = send(
        Method::GET,
        &format!("http://{admin}/metrics"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
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
    ("smh_gateway_access_log_dropped_total", &[]),
    ("smh_gateway_connection_errors_total", &["kind"]),
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
