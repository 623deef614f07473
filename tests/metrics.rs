//! SPEC §8 end to end: what `/metrics` counts after real traffic, line by line, then
//! through `promtool` and through a real Prometheus that scrapes the admin port; the
//! alert rules and the Grafana dashboard in `deploy/`, proven against that
//! Prometheus; and no token, user id or confirm key in `/metrics` or the logs.
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package, which
//! `.ci/run` installs. A test that needs them fails when they are missing: it never
//! skips, so a green run always means they ran.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{Value, json};
use smh_gateway::mock_upstream::{Behaviour, MockUpstream};

const LIB1: &str = "[[libraries]]\nid = \"lib1\"\n";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// The traffic every counting test sends, and what it must count.

#[track_caller]
fn expect_status(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
}

/// Nine requests, each a different outcome. Confirm keys differ so that no
/// answer can come from the renew cache.
async fn send_mix(gw: &TestGateway) {
    let tok = token();
    let renew = |ck: &str, q: &str| format!("/api/v1/file/lib1/-/{ck}?renew&{q}");
    let r = gw
        .post(&renew(
            "m1",
            &format!("access_token={tok}&traffic_limit=500000"),
        ))
        .await;
    expect_status(&r, 200, "allowed renew");
    let r = gw
        .post(&renew(
            "m2",
            &format!("access_token={tok}&traffic_limit=50000"),
        ))
        .await;
    expect_status(&r, 200, "renew clamped up");
    let r = gw
        .post(&renew(
            "m3",
            &format!("access_token={tok}&traffic_limit=999999999999"),
        ))
        .await;
    expect_status(&r, 200, "renew clamped down");
    let expired = token_with(json!({ "exp": now() - 3600 }));
    let r = gw
        .post(&renew("m4", &format!("access_token={expired}")))
        .await;
    r.assert_error(403, "InvalidAccessToken");
    let viewer = token_with(json!({ "permissions": ["view"] }));
    let r = gw
        .post(&renew("m5", &format!("access_token={viewer}")))
        .await;
    r.assert_error(403, "NoPermission");
    gw.post(&renew("m6", "traffic_limit=500000"))
        .await
        .assert_error(400, "EmptyAccessToken");
    // The upstream's own 502 passes through; a hangup is the gateway's 502.
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 502,
        body: r#"{"code":"BadGateway","message":"mock","requestId":"m"}"#.into(),
    });
    let r = gw.post(&renew("m7", &format!("access_token={tok}"))).await;
    expect_status(&r, 502, "upstream 502");
    gw.mock.set_behaviour(Behaviour::Hangup);
    let r = gw.post(&renew("m8", &format!("access_token={tok}"))).await;
    r.assert_error(502, "UpstreamUnavailable");
    gw.mock.set_behaviour(Behaviour::Smh);
    gw.request(Method::GET, "/api/v1/directory/lib1/-/", &[], b"")
        .await
        .assert_error(404, "RouteNotFound");
}

/// The smh_gateway counters above zero after [`send_mix`] (the cache's counters
/// aside: whether a lookup happens is the cache's business, not this mix's).
fn mix_counters() -> BTreeMap<String, f64> {
    [
        (
            r#"smh_gateway_requests_total{route="renew",status="200"}"#,
            3.0,
        ),
        (
            r#"smh_gateway_requests_total{route="renew",status="400"}"#,
            1.0,
        ),
        (
            r#"smh_gateway_requests_total{route="renew",status="403"}"#,
            2.0,
        ),
        (
            r#"smh_gateway_requests_total{route="renew",status="502"}"#,
            2.0,
        ),
        (
            r#"smh_gateway_requests_total{route="unmatched",status="404"}"#,
            1.0,
        ),
        (r#"smh_gateway_auth_failures_total{reason="expired"}"#, 1.0),
        (r#"smh_gateway_auth_failures_total{reason="missing"}"#, 1.0),
        (
            r#"smh_gateway_policy_refusals_total{reason="no_permission"}"#,
            1.0,
        ),
        (
            r#"smh_gateway_traffic_limit_clamped_total{direction="down"}"#,
            1.0,
        ),
        (
            r#"smh_gateway_traffic_limit_clamped_total{direction="up"}"#,
            1.0,
        ),
        (r#"smh_gateway_renewals_total{library="lib1"}"#, 3.0),
        (r#"smh_gateway_upstream_errors_total{kind="invalid"}"#, 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

// ---------------------------------------------------------------------------
// The text exposition format, parsed just enough to compare exact label sets.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    /// `name{a="1",b="2"}` with labels sorted: one spelling per series.
    fn key(&self) -> String {
        series_key(&self.name, &self.labels)
    }
}

fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

fn parse_exposition(text: &str) -> Vec<Sample> {
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

async fn scrape(admin: SocketAddr) -> (Resp, Vec<Sample>) {
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

fn counters_above_zero(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name.starts_with("smh_gateway_") && s.name.ends_with("_total"))
        .filter(|s| !s.name.starts_with("smh_gateway_cache_") && s.value > 0.0)
        .map(|s| (s.key(), s.value))
        .collect()
}

#[track_caller]
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
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
const FAMILIES: &[(&str, &[&str])] = &[
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
];

/// The family a sample belongs to, and whether it is a histogram bucket.
fn family(name: &str) -> Option<(&'static str, bool)> {
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

// ---------------------------------------------------------------------------
// /metrics itself.

#[tokio::test]
async fn metrics_count_a_mix_of_traffic_with_exact_labels_and_values() {
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    send_mix(&gw).await;
    let (resp, samples) = scrape(gw.admin).await;
    assert_eq!(
        resp.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    assert_eq!(counters_above_zero(&samples), mix_counters());
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let renew = [("route", "renew")];
    let unmatched = [("route", "unmatched")];
    assert_eq!(v("smh_gateway_request_duration_seconds_count", &renew), 8.0);
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
    // Granted traffic_limit, after clamping: 500000, 102400 (up), 104857600 (down).
    let lib1 = [("library", "lib1")];
    let granted = "smh_gateway_traffic_limit_granted_bytes";
    assert_eq!(v(&format!("{granted}_count"), &lib1), 3.0);
    assert_eq!(v(&format!("{granted}_sum"), &lib1), 105_460_000.0);
    let bucket = |le| {
        v(
            &format!("{granted}_bucket"),
            &[("library", "lib1"), ("le", le)],
        )
    };
    assert_eq!(bucket("102400"), 1.0);
    assert_eq!(bucket("409600"), 1.0);
    assert_eq!(bucket("819200"), 2.0);
    assert_eq!(bucket("52428800"), 2.0);
    assert_eq!(bucket("104857600"), 3.0);
    assert_eq!(bucket("+Inf"), 3.0);
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
    // set is known here.
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
                ["renew", "unmatched"].contains(&route.as_str()),
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

/// `smh-gateway serve` as a child process whose stdout (the access log) and stderr
/// (operational messages) are kept whole, so a test can search all it wrote.
struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Served {
    fn start(config: &Path) -> Served {
        use std::io::BufRead;
        let mut child = bin()
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        // "127.0.0.1:PORT (admin 127.0.0.1:PORT)\"..."
        let rest = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway printed its addresses");
        let mut addrs = rest
            .split([' ', '(', ')', '"'])
            .filter_map(|w| w.parse::<SocketAddr>().ok());
        let (addr, admin) = (addrs.next().unwrap(), addrs.next().unwrap());
        Served {
            child,
            addr,
            admin,
            stdout,
            stderr,
        }
    }

    /// SIGTERM, wait for the drain, and return (stdout, stderr).
    fn stop(mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit after SIGTERM: {status}");
        let stdout = self.stdout.join().unwrap();
        let stderr = self.stderr.join().unwrap();
        (stdout, stderr)
    }
}

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
    let gw = Served::start(&config);

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

/// The path of a tool from Debian's `prometheus` package; a missing one fails the
/// test with the fix.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. These tests need Debian's `prometheus` package, which \
                 ships both `prometheus` and `promtool`: `apt-get install prometheus` \
                 (`.ci/run` installs it)."
            )
        })
}

/// Runs promtool with `stdin`, asserting success; returns its output.
fn promtool(args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo("."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let gw = start_with(Setup {
        rest: LIB1.into(),
        ..Setup::default()
    })
    .await;
    send_mix(&gw).await;
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

/// A GET that reports a refused connection instead of panicking (Prometheus is
/// still starting).
async fn try_get(url: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer in 5s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A free loopback port: bound to :0, then released for Prometheus to take.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `prometheus` as a child process with its own config and TSDB in a temp dir,
/// scraping one target every second and evaluating `deploy/prometheus/alerts.yml`
/// every second. Killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        let rules = repo("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: smh-gateway\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = try_get(&format!("{}/-/ready", self.url)).await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 20s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>`; the `data` of a successful answer.
    async fn api(&self, path: &str) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let (status, body) = try_get(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{url}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query: each series' labels (`__name__` included) and value. A
    /// scalar answer is one series without labels.
    async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("query?query={}", encode(q))).await;
        let num = |v: &Value| v[1].as_str().unwrap().parse::<f64>().unwrap();
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s["metric"].clone()).unwrap();
                    (labels, num(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), num(&data["result"]))],
            other => panic!("{q}: unexpected result type {other:?}"),
        }
    }

    /// Polls `q` until `done` holds for its answer (up to 15 s); returns it.
    async fn query_until(
        &self,
        q: &str,
        done: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.query(q).await;
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
        send_mix(&gw).await;
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
    assert_eq!(granted[0].1, 6.0);

    // The alert rules load and evaluate against the real series: two in nine
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

/// Every `expr` in a list of Grafana panels (rows nest theirs), with its panel title.
fn panel_queries(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        panel_queries(&panel["panels"], out);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.is_empty(),
                "a target without expr in {}",
                panel["title"]
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}: use the datasource variable",
                panel["title"]
            );
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                expr.to_string(),
            ));
        }
    }
}

async fn dashboard_queries_return_data(prom: &Prometheus, instance: &str) {
    let path = repo("deploy/grafana/smh-gateway.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus datasource variable"
    );

    // Grafana's built-ins as it would fill them in, and each variable as "All".
    let mut subst: Vec<(String, String)> = [
        ("$__rate_interval", "30s"),
        ("$__interval", "30s"),
        ("$__range", "1m"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().unwrap();
        let all = var["allValue"]
            .as_str()
            .expect("query variables have allValue");
        subst.push((format!("${{{name}}}"), all.to_string()));
        subst.push((format!("${name}"), all.to_string()));
    }
    let fill = |expr: &str| {
        let q = subst
            .iter()
            .fold(expr.to_string(), |q, (k, v)| q.replace(k, v));
        assert!(!q.contains('$'), "unsubstituted variable in {expr}");
        q
    };

    // The variables' own queries: label_values(selector, label).
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let def = var["definition"].as_str().unwrap();
        let args = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{def}: expected label_values(selector, label)"));
        let (selector, label) = args.rsplit_once(',').unwrap();
        let data = prom
            .api(&format!(
                "label/{}/values?match[]={}",
                label.trim(),
                encode(&fill(selector.trim()))
            ))
            .await;
        let values: Vec<&str> = data
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want = if label.trim() == "instance" {
            instance
        } else {
            "smh-gateway"
        };
        assert_eq!(values, [want], "variable {def}");
    }

    let mut queries = Vec::new();
    panel_queries(&dash["panels"], &mut queries);
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "Requests by status",
        "Latency percentiles (request)",
        "Cache hit ratio",
        "Auth failures by reason",
        "Policy refusals by reason",
        "traffic_limit clamps",
        "Upstream errors",
        "Renewals per library",
        "Granted traffic_limit per library",
    ] {
        assert!(titles.contains(want), "no panel {want:?} in {titles:?}");
    }

    // Only metrics the gateway exports: `or vector(0)` would hide a misspelt one.
    let (_, samples) = scrape(instance.parse().unwrap()).await;
    let exported: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for (title, expr) in &queries {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("smh_gateway_") || word.starts_with("process_") {
                assert!(exported.contains(word), "{title}: {word} is not exported");
            }
        }
    }

    // Each query answers with data. Polled: a rate() needs two scrapes in range.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let q = fill(expr);
        let got = loop {
            let got = prom.query(&q).await;
            if !got.is_empty() || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if got.is_empty() {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}
