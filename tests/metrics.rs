//! SPEC §8 end to end: what `/metrics` counts after real traffic, line by line, then
//! through `promtool` and through a real Prometheus that scrapes the admin port; the
//! alert rules and the Grafana dashboard in `deploy/`, proven against that
//! Prometheus; and no token, user id or confirm key in `/metrics` or the logs.
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package, which
//! `.ci/run` installs. A test that needs them fails when they are missing: it never
//! skips, so a green run always means they ran.

mod common;
#[path = "metrics/dashboard.rs"]
mod dashboard;
#[path = "metrics/exposition.rs"]
mod exposition;
#[path = "metrics/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{Value, json};
use smh_gateway::mock_upstream::{Behaviour, MockUpstream};

use dashboard::dashboard_queries_return_data;
use exposition::{FAMILIES, counters_above_zero, family, scrape, series_key, value};
use prometheus::{Prometheus, promtool};

const LIB1: &str = "[[libraries]]\nid = \"lib1\"\n";

/// A path in the repository (the deploy/ files under test).
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// The traffic every counting test sends, and what it must count.

#[track_caller]
fn expect_status(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
}

/// Ten requests: nine different outcomes with different confirm keys, so that none
/// comes from the renew cache, then the first renew again, answered by the cache.
/// `round` goes into every token (`jti`): a mix sent again within the same second
/// would otherwise reuse the same tokens, found in the verified-token cache, and
/// verify fewer than [`mix_counters`] says.
async fn send_mix(gw: &TestGateway, round: u32) {
    let jti = format!("mix-round-{round}");
    let tok = token_with(json!({ "jti": jti }));
    let expired = token_with(json!({ "exp": now() - 3600, "jti": jti }));
    let viewer = token_with(json!({ "permissions": ["view"], "jti": jti }));
    let tl = |v: &str| format!("access_token={tok}&traffic_limit={v}");
    let q = |t: &str| format!("access_token={t}");
    let no_token = "traffic_limit=500000".to_string();
    // (confirm key, query, status, SMH code of a gateway error)
    let renews = [
        ("m1", tl("500000"), 200, None),
        ("m2", tl("50000"), 200, None),        // clamped up to 102400
        ("m3", tl("999999999999"), 200, None), // clamped down to 104857600
        ("m4", q(&expired), 403, Some("InvalidAccessToken")),
        ("m5", q(&viewer), 403, Some("NoPermission")),
        ("m6", no_token, 400, Some("EmptyAccessToken")),
    ];
    for (ck, query, status, code) in renews {
        let r = gw
            .post(&format!("/api/v1/file/lib1/-/{ck}?renew&{query}"))
            .await;
        match code {
            Some(code) => r.assert_error(status, code),
            None => expect_status(&r, status, ck),
        }
    }
    // The upstream's own 502 passes through; a hangup is the gateway's 502.
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 502,
        body: r#"{"code":"BadGateway","message":"mock","requestId":"m"}"#.into(),
    });
    let r = gw
        .post(&format!("/api/v1/file/lib1/-/m7?renew&access_token={tok}"))
        .await;
    expect_status(&r, 502, "upstream 502");
    gw.mock.set_behaviour(Behaviour::Hangup);
    let r = gw
        .post(&format!("/api/v1/file/lib1/-/m8?renew&access_token={tok}"))
        .await;
    r.assert_error(502, "UpstreamUnavailable");
    gw.mock.set_behaviour(Behaviour::Smh);
    gw.request(Method::GET, "/api/v1/directory/lib1/-/", &[], b"")
        .await
        .assert_error(404, "RouteNotFound");
    // A cache hit is a renewal too (SPEC §8), granted the same traffic_limit.
    let r = gw
        .post(&format!("/api/v1/file/lib1/-/m1?renew&{}", tl("500000")))
        .await;
    expect_status(&r, 200, "cache hit");
    assert_eq!(r.headers["x-cache"], "HIT");
}

/// The smh_gateway counters above zero after [`send_mix`] (the cache's counters
/// aside: whether a lookup happens is the cache's business, not this mix's).
fn mix_counters() -> BTreeMap<String, f64> {
    [
        ("requests_total", r#"route="renew",status="200""#, 4.0),
        ("requests_total", r#"route="renew",status="400""#, 1.0),
        ("requests_total", r#"route="renew",status="403""#, 2.0),
        ("requests_total", r#"route="renew",status="502""#, 2.0),
        ("requests_total", r#"route="unmatched",status="404""#, 1.0),
        ("auth_failures_total", r#"reason="expired""#, 1.0),
        ("auth_failures_total", r#"reason="missing""#, 1.0),
        ("policy_refusals_total", r#"reason="no_permission""#, 1.0),
        ("traffic_limit_clamped_total", r#"direction="down""#, 1.0),
        ("traffic_limit_clamped_total", r#"direction="up""#, 1.0),
        ("renewals_total", r#"library="lib1""#, 4.0),
        ("upstream_errors_total", r#"kind="invalid""#, 1.0),
        // Three distinct tokens checked in full; repeats came from the verified-token cache.
        ("token_verifications_total", "", 3.0),
    ]
    .into_iter()
    .map(|(name, labels, v)| match labels {
        "" => (format!("smh_gateway_{name}"), v),
        _ => (format!("smh_gateway_{name}{{{labels}}}"), v),
    })
    .collect()
}

// ---------------------------------------------------------------------------
// /metrics itself.

#[tokio::test]
async fn metrics_count_a_mix_of_traffic_with_exact_labels_and_values() {
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    send_mix(&gw, 1).await;
    let (resp, samples) = scrape(gw.admin).await;
    assert_eq!(
        resp.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    assert_eq!(counters_above_zero(&samples), mix_counters());
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let renew = [("route", "renew")];
    let unmatched = [("route", "unmatched")];
    assert_eq!(v("smh_gateway_request_duration_seconds_count", &renew), 9.0);
    assert_eq!(
        v("smh_gateway_request_duration_seconds_count", &unmatched),
        1.0
    );
    assert!(v("smh_gateway_request_duration_seconds_sum", &renew) > 0.0);
    // Five renews reached the upstream (three 200s, its 502, the hangup).
    assert_eq!(
        v("smh_gateway_upstream_duration_seconds_count", &renew),
        5.0
    );
    assert_eq!(
        v("smh_gateway_upstream_duration_seconds_count", &unmatched),
        0.0
    );
    let hit = [("result", "hit")];
    assert_eq!(v("smh_gateway_cache_requests_total", &hit), 1.0);
    // Granted traffic_limit, after clamping: 500000 (twice: the cache hit),
    // 102400 (up), 104857600 (down).
    let lib1 = [("library", "lib1")];
    let granted = "smh_gateway_traffic_limit_granted_bytes";
    assert_eq!(v(&format!("{granted}_count"), &lib1), 4.0);
    assert_eq!(v(&format!("{granted}_sum"), &lib1), 105_960_000.0);
    let bucket = |le| {
        v(
            &format!("{granted}_bucket"),
            &[("library", "lib1"), ("le", le)],
        )
    };
    assert_eq!(bucket("102400"), 1.0);
    assert_eq!(bucket("409600"), 1.0);
    assert_eq!(bucket("819200"), 3.0);
    assert_eq!(bucket("52428800"), 3.0);
    assert_eq!(bucket("104857600"), 4.0);
    assert_eq!(bucket("+Inf"), 4.0);
    assert_eq!(
        v("smh_gateway_renewals_total", &[("library", "other")]),
        0.0
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(v("smh_gateway_build_info", &version), 1.0);

    // Every reason an operator can act on has its series (at zero or above).
    for reason in [
        "missing",
        "malformed",
        "bad_signature",
        "alg_mismatch",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "too_large",
    ] {
        v("smh_gateway_auth_failures_total", &[("reason", reason)]);
    }
    for reason in [
        "no_permission",
        "library_mismatch",
        "space_mismatch",
        "user_id_not_allowed",
    ] {
        v("smh_gateway_policy_refusals_total", &[("reason", reason)]);
    }

    // Exact label names on every smh_gateway series; bounded values where the
    // set is known here: route names are the table's.
    let route_names: Vec<String> = smh_gateway::proxy::route::Router::new(&[])
        .unwrap()
        .routes()
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    for s in samples
        .iter()
        .filter(|s| s.name.starts_with("smh_gateway_"))
    {
        let (fam, bucket) = family(&s.name)
            .unwrap_or_else(|| panic!("{} is not in FAMILIES: add it with its labels", s.name));
        let want = FAMILIES.iter().find(|(f, _)| *f == fam).unwrap().1;
        let mut want: BTreeSet<&str> = want.iter().copied().collect();
        if bucket {
            want.insert("le");
        }
        let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(got, want, "labels of {}", s.key());
        if let Some(route) = s.labels.get("route") {
            assert!(
                route == "unmatched" || route_names.contains(route),
                "{}",
                s.key()
            );
        }
        if let Some(status) = s.labels.get("status") {
            assert!(
                status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()),
                "{}",
                s.key()
            );
        }
        if let Some(library) = s.labels.get("library") {
            assert!(["lib1", "other"].contains(&library.as_str()), "{}", s.key());
        }
    }
}

#[tokio::test]
async fn renewals_of_unlisted_libraries_count_as_other() {
    // No libraries listed: every library is served, and each counts as `other`.
    let gw = start().await;
    for library in ["lib1", "attacker-chosen-library"] {
        let tok = token_with(json!({ "library_id": library }));
        let r = gw
            .post(&format!(
                "/api/v1/file/{library}/-/ck1?renew&access_token={tok}&traffic_limit=500000"
            ))
            .await;
        expect_status(&r, 200, library);
    }
    let (resp, samples) = scrape(gw.admin).await;
    let other = [("library", "other")];
    assert_eq!(value(&samples, "smh_gateway_renewals_total", &other), 2.0);
    assert_eq!(
        value(
            &samples,
            "smh_gateway_traffic_limit_granted_bytes_count",
            &other
        ),
        2.0
    );
    let libraries: BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s.labels.get("library").map(String::as_str))
        .collect();
    assert_eq!(libraries, BTreeSet::from(["other"]));
    assert!(!resp.text().contains("attacker"));

    // Libraries listed: an unlisted one is refused, and never becomes a label.
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    let tok = token_with(json!({ "library_id": "lib9" }));
    gw.post(&format!("/api/v1/file/lib9/-/ck1?renew&access_token={tok}"))
        .await
        .assert_error(404, "LibraryNotFound");
    let (resp, samples) = scrape(gw.admin).await;
    let refused = [("reason", "library_not_found")];
    assert_eq!(
        value(&samples, "smh_gateway_policy_refusals_total", &refused),
        1.0
    );
    assert_eq!(value(&samples, "smh_gateway_renewals_total", &other), 0.0);
    assert!(!resp.text().contains("lib9"));
}

#[tokio::test]
async fn readyz_and_healthz_are_200_while_serving() {
    let gw = start().await;
    let r = gw.renew(&format!("access_token={}", token())).await;
    expect_status(&r, 200, "renew");
    for (path, status, body) in [
        ("/readyz", 200, "ready\n"),
        ("/healthz", 200, "ok\n"),
        ("/nope", 404, "not found\n"),
    ] {
        let url = format!("http://{}{path}", gw.admin);
        let r = send(Method::GET, &url, &[], Bytes::new()).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.text(), body, "{path}");
    }
}

// ---------------------------------------------------------------------------
// Secrets stay out of /metrics and the logs.

#[tokio::test]
async fn no_token_user_id_or_confirm_key_reaches_metrics_or_logs() {
    // Every user id, confirm key, library and path below holds this marker.
    const MARK: &str = "5ecret";
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("secrets");
    let setup = Setup {
        rest: "[routes]\nunmatched = \"forward\"\n".into(),
        ..Setup::default()
    };
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&dir, &mock.url(), &setup)).unwrap();
    let mut gw = BinGateway::spawn(&config, &[]);

    let lib = format!("lib-{MARK}");
    let user = format!("user-{MARK}");
    let ck = format!("ck-{MARK}");
    let claims = |extra: Value| {
        let mut c = json!({
            "library_id": lib,
            "permissions": ["upload_file"],
            "iat": now(),
            "exp": now() + 3600,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let admin = sign(&claims(json!({ "permissions": ["admin"] })));
    let uploader = sign(&claims(json!({ "sub": format!("sub-{MARK}") })));
    let expired = sign(&claims(json!({ "exp": now() - 3600 })));
    let forged = sign_with(
        &claims(json!({})),
        jsonwebtoken::Algorithm::HS256,
        Some("k1"),
        b"another-secret-of-at-least-32-bytes!!",
    );
    let long = format!("eyJ{}", format!("{MARK}A").repeat(1500));
    let garbage = format!("not.a.jwt-{MARK}");
    let tokens = [&admin, &uploader, &expired, &forged, &long, &garbage];

    let renew = |suffix: &str, q: &str| format!("/api/v1/file/{lib}/-/{ck}{suffix}?renew&{q}");
    let q = |t: &str| format!("access_token={t}");
    let qu = |t: &str| format!("access_token={t}&user_id={user}");
    let long_ck = format!("-{}", "x".repeat(3000));
    let unicode = "%E7%A7%98%E5%AF%86";
    let other_route = format!("/api/v1/directory/{lib}/-/{ck}?{}", qu(&admin));
    let unknown = format!("/{MARK}?confirm_key={ck}&{}", qu(&uploader));
    // (status, method, target, bearer token)
    let requests = [
        (200, Method::POST, renew("1", &qu(&admin)), None),
        (200, Method::POST, renew("2", ""), Some(&uploader)),
        (403, Method::POST, renew("3", &qu(&uploader)), None),
        (403, Method::POST, renew("4", &q(&expired)), None),
        (403, Method::POST, renew("5", ""), Some(&forged)),
        (403, Method::POST, renew("6", &q(&long)), None),
        (403, Method::POST, renew("7", ""), Some(&long)),
        (403, Method::POST, renew("8", &q(&garbage)), None),
        (200, Method::POST, renew(unicode, &q(&admin)), None),
        (200, Method::POST, renew("%20x", &q(&admin)), None),
        (400, Method::POST, renew("%0A", &q(&admin)), None),
        (200, Method::POST, renew(&long_ck, &qu(&admin)), None),
        // routes.unmatched = "forward": passed through, and still not logged.
        (404, Method::GET, other_route, Some(&admin)),
        (404, Method::POST, unknown, None),
    ];
    let url = |target: &str| format!("http://{}{target}", gw.addr);
    for (status, method, target, bearer) in &requests {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = send(method.clone(), &url(target), &headers, Bytes::new()).await;
        let shown = &target[..target.len().min(80)];
        assert_eq!(r.status, *status, "{method} {shown}: {}", r.text());
    }
    // The error path of an upstream failure must not leak either.
    mock.set_behaviour(Behaviour::Hangup);
    let target = renew("9", &qu(&admin));
    let r = send(Method::POST, &url(&target), &[], Bytes::new()).await;
    assert_eq!(r.status, 502, "{}", r.text());

    let metrics = send(
        Method::GET,
        &format!("http://{}/metrics", gw.admin),
        &[],
        Bytes::new(),
    )
    .await
    .text();
    let (stdout, stderr) = gw.stop();
    // The log holds one line per request: there was something to search.
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), requests.len() + 1, "{stdout}");
    assert!(
        lines
            .iter()
            .all(|l| l["route"].is_string() && l["status"].is_u64())
    );
    assert!(metrics.contains("smh_gateway_requests_total"), "{metrics}");

    let mut needles: Vec<String> = vec![MARK.into(), "%E7%A7%98".into(), "秘密".into()];
    for t in tokens {
        needles.push(t.clone());
        // The signature alone, or the payload alone, would be a leak too.
        needles.extend(t.split('.').filter(|p| p.len() >= 16).map(str::to_string));
    }
    for (what, text) in [
        ("/metrics", &metrics),
        ("access log", &stdout),
        ("stderr", &stderr),
    ] {
        let lower = text.to_lowercase();
        for needle in &needles {
            assert!(
                !lower.contains(&needle.to_lowercase()),
                "{what} holds {}…:\n{text}",
                &needle[..needle.len().min(40)]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// promtool.

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    send_mix(&gw, 1).await;
    let (resp, _) = scrape(gw.admin).await;
    // Exit 0 means no format error and no lint problem (those exit 3).
    let out = promtool(&["check", "metrics"], &resp.body);
    assert!(out.trim().is_empty(), "promtool check metrics: {out}");
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests() {
    let out = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"], b"");
    assert!(out.contains("SUCCESS"), "{out}");
    promtool(&["test", "rules", "deploy/prometheus/alerts.test.yml"], b"");
    // The example scrape config, and the rules it loads.
    promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        b"",
    );
}

// ---------------------------------------------------------------------------
// A real Prometheus scraping the gateway's admin port.

/// The counters above zero as Prometheus has them, keyed like [`mix_counters`];
/// every one carries the scrape's job and instance.
fn prometheus_counters(
    got: &[(BTreeMap<String, String>, f64)],
    instance: &str,
) -> BTreeMap<String, f64> {
    got.iter()
        .map(|(labels, v)| {
            let mut labels = labels.clone();
            assert_eq!(labels.remove("job").as_deref(), Some("smh-gateway"));
            assert_eq!(labels.remove("instance").as_deref(), Some(instance));
            let name = labels.remove("__name__").unwrap();
            (series_key(&name, &labels), *v)
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_gateway_and_every_dashboard_query_returns_data() {
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    let instance = gw.admin.to_string();
    let mut prom = Prometheus::start(gw.admin);
    prom.wait_ready().await;
    // One scrape before the traffic, so that rate() sees it arrive.
    let up = prom
        .query_until(r#"up{job="smh-gateway"}"#, |r| {
            r.len() == 1 && r[0].1 == 1.0
        })
        .await;
    assert!(
        up.len() == 1 && up[0].1 == 1.0,
        "up: {up:?}\n{}",
        prom.log()
    );

    // Twice, with a scrape between: a series' first sample is its starting point
    // for rate(), so series that the first mix creates only show a rate from the
    // second on. That is how Prometheus treats any new series.
    let counters = r#"{__name__=~"smh_gateway_.+_total", __name__!~"smh_gateway_cache_.+"} > 0"#;
    for round in [1.0, 2.0] {
        send_mix(&gw, round as u32).await;
        let want: BTreeMap<String, f64> = mix_counters()
            .into_iter()
            .map(|(k, v)| (k, v * round))
            .collect();
        let got = prom
            .query_until(counters, |r| prometheus_counters(r, &instance) == want)
            .await;
        assert_eq!(prometheus_counters(&got, &instance), want, "round {round}");
    }
    let build = prom.query("smh_gateway_build_info").await;
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build[0].1, 1.0);
    let granted = prom
        .query(r#"smh_gateway_traffic_limit_granted_bytes_count{library="lib1"}"#)
        .await;
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].1, 8.0);

    // The alert rules load and evaluate against the real series: two in ten
    // answers are 502, well over the 5% that starts the 5xx alert's `for:`.
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let alert_count = rules.matches("- alert:").count();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let data = prom.api("rules?type=alert").await;
        let health: Vec<String> = data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .map(|r| format!("{}={}", r["name"], r["health"]))
            .collect();
        if health.len() == alert_count && health.iter().all(|h| h.ends_with("=\"ok\"")) {
            break;
        }
        assert!(Instant::now() < deadline, "rule health: {health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pending = prom
        .query_until(r#"ALERTS{alertname="SmhGatewayUpstreamErrorRatio"}"#, |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].0["alertstate"], "pending");
    assert_eq!(pending[0].0["instance"], instance);
    assert_eq!(pending[0].0["severity"], "critical");

    dashboard_queries_return_data(&prom, &instance).await;
}
