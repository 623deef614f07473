//! Rate limits (SPEC §13) through the real server: each limit's 429 and headers,
//! overrides, recovery, counting of refused and policy-refused requests, the
//! auth-failure limit stopping signature checks, reload, and the Redis backend
//! shared by two gateway processes and failing open.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use http::Method;
use serde_json::json;
use smh_gateway::config::Config;
use smh_gateway::proxy::Settings;

fn limits(table: &str) -> Setup {
    Setup {
        rest: format!("[rate_limits]\n{table}\n"),
        ..Setup::default()
    }
}

fn renew_as(user: &str) -> String {
    let tok = token_with(json!({ "sub": user }));
    format!("/api/v1/file/lib1/-/ck1?renew&access_token={tok}")
}

const LIMITED: &str = "smh_gateway_rate_limited_total";

fn series(limit: &str) -> String {
    format!("{LIMITED}{{limit=\"{limit}\"}}")
}

/// Sends `target` until an answer is 429 (at most `max` tries); returns the number
/// of 200s before it and the 429.
async fn until_limited(gw: &TestGateway, target: &str, max: usize) -> (usize, Resp) {
    for ok in 0..max {
        let r = gw.post(target).await;
        if r.status == 429 {
            return (ok, r);
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    panic!("no 429 after {max} requests");
}

#[tokio::test]
async fn the_user_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let gw = start_with(limits("user = { rate = 1, per = \"1h\", burst = 3 }")).await;
    let alice = renew_as("alice");
    let first = gw.post(&alice).await;
    assert_eq!(first.status, 200);
    // Successful answers carry the state too.
    assert_eq!(first.headers["ratelimit-policy"], "\"user\";q=3;w=10800");
    assert_eq!(first.headers["ratelimit"], "\"user\";r=2;t=3600");
    let (ok, r) = until_limited(&gw, &alice, 10).await;
    assert_eq!(ok, 2, "a burst of 3 in all");
    r.assert_error(429, "RateLimitExceeded");
    assert_eq!(r.headers["retry-after"], "3600");
    assert_eq!(r.headers["ratelimit-policy"], "\"user\";q=3;w=10800");
    assert_eq!(r.headers["ratelimit"], "\"user\";r=0;t=3600");
    // Not forwarded; another user is not limited.
    let upstream = gw.mock.count();
    assert_eq!(gw.post(&alice).await.status, 429);
    assert_eq!(gw.mock.count(), upstream);
    assert_eq!(gw.post(&renew_as("bob")).await.status, 200);
    assert_eq!(gw.metric(&series("user")).await, 2.0);
    assert_eq!(gw.metric(&series("library")).await, 0.0);
    let lines = gw.wait_log_lines().await;
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 429 && l["reason"] == "rate_limited_user"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_limited_caller_is_let_through_again_once_the_bucket_refills() {
    let gw = start_with(limits("user = { rate = 1, per = \"300ms\", burst = 2 }")).await;
    let target = renew_as("carol");
    let (_, r) = until_limited(&gw, &target, 50).await;
    assert_eq!(r.headers["retry-after"], "1", "whole seconds, at least 1");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = gw.post(&target).await;
        if r.status == 200 {
            break;
        }
        r.assert_error(429, "RateLimitExceeded");
        assert!(Instant::now() < deadline, "still limited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_library_limit_is_shared_by_its_users_and_cache_hits_count() {
    let gw = start_with(limits("library = { rate = 1, per = \"1h\", burst = 4 }")).await;
    for user in ["a", "b"] {
        for _ in 0..2 {
            assert_eq!(gw.post(&renew_as(user)).await.status, 200);
        }
    }
    // The renews after the first of each user were cache hits: they counted.
    assert!(gw.mock.count() <= 2, "{}", gw.mock.count());
    let r = gw.post(&renew_as("c")).await;
    r.assert_error(429, "RateLimitExceeded");
    assert_eq!(r.headers["ratelimit"], "\"library\";r=0;t=3600");
    assert_eq!(gw.metric(&series("library")).await, 1.0);
}

#[tokio::test]
async fn requests_refused_by_policy_count_too() {
    let gw = start_with(limits("user = { rate = 1, per = \"1h\", burst = 2 }")).await;
    let reader = token_with(json!({ "sub": "dave", "permissions": ["download_file"] }));
    for _ in 0..2 {
        gw.post(&format!(
            "/api/v1/file/lib1/-/ck1?renew&access_token={reader}"
        ))
        .await
        .assert_error(403, "NoPermission");
    }
    let allowed = token_with(json!({ "sub": "dave" }));
    gw.post(&format!(
        "/api/v1/file/lib1/-/ck1?renew&access_token={allowed}"
    ))
    .await
    .assert_error(429, "RateLimitExceeded");
}

#[tokio::test]
async fn library_overrides_replace_the_global_limit() {
    let gw = start_with(Setup {
        rest: "[rate_limits]\nuser = { rate = 1, per = \"1h\", burst = 3 }\n\
               [[libraries]]\nid = \"lib1\"\nrate_limits = { user = { rate = 1, per = \"1h\", burst = 1 } }\n\
               [[libraries]]\nid = \"lib2\"\n"
            .into(),
        ..Setup::default()
    })
    .await;
    let (ok, r) = until_limited(&gw, &renew_as("erin"), 10).await;
    assert_eq!(ok, 1, "lib1's own limit");
    assert_eq!(r.headers["ratelimit-policy"], "\"user\";q=1;w=3600");
    let tok = token_with(json!({ "sub": "erin", "library_id": "lib2" }));
    let (ok, _) = until_limited(
        &gw,
        &format!("/api/v1/file/lib2/-/ck1?renew&access_token={tok}"),
        10,
    )
    .await;
    assert_eq!(ok, 3, "the global limit");
}

/// A well-formed ES256 token whose signature is random: verifying it costs a
/// real ECDSA check.
fn garbage_es256(i: usize) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = b64(br#"{"alg":"ES256","kid":"e1","typ":"JWT"}"#);
    let claims = b64(json!({ "library_id": "lib1", "exp": now() + 60, "n": i })
        .to_string()
        .as_bytes());
    let sig: Vec<u8> = (0..64).map(|j| (i * 31 + j * 7) as u8).collect();
    format!("{header}.{claims}.{}", b64(&sig))
}

fn es256_key() -> String {
    format!(
        "[[auth.keys]]\nkid = \"e1\"\nalg = \"ES256\"\npublic_key_file = \"{}\"\n",
        fixture("keys/ec256.pub.pem").display()
    )
}

const VERIFICATIONS: &str = "smh_gateway_token_verifications_total";

#[tokio::test]
async fn a_flood_of_garbage_tokens_stops_costing_signature_checks_after_the_burst() {
    let gw = start_with(Setup {
        rest: format!(
            "{}[rate_limits]\nauth_failures = {{ rate = 1, per = \"1h\", burst = 5 }}\n",
            es256_key()
        ),
        ..Setup::default()
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = gw
            .post(&format!(
                "/api/v1/file/lib1/-/ck1?renew&access_token={}",
                garbage_es256(i)
            ))
            .await;
        statuses.push(r.status.as_u16());
        if r.status == 429 {
            assert_eq!(r.headers["ratelimit"], "\"auth_failures\";r=0;t=3600");
            r.assert_error(429, "RateLimitExceeded");
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 403).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 35);
    assert_eq!(
        gw.metric(VERIFICATIONS).await,
        5.0,
        "no signature checked after the burst"
    );
    assert_eq!(gw.metric(&series("auth_failures")).await, 35.0);
    // The 429s were not failures.
    let bad_sig = "smh_gateway_auth_failures_total{reason=\"bad_signature\"}";
    assert_eq!(gw.metric(bad_sig).await, 5.0);
    // While exhausted, even a good token from this address waits (it is not verified).
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(429, "RateLimitExceeded");
    assert_eq!(gw.metric(VERIFICATIONS).await, 5.0);
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn missing_tokens_count_as_auth_failures() {
    let gw = start_with(limits(
        "auth_failures = { rate = 1, per = \"1h\", burst = 2 }",
    ))
    .await;
    for _ in 0..2 {
        gw.post("/api/v1/file/lib1/-/ck1?renew")
            .await
            .assert_error(400, "EmptyAccessToken");
    }
    gw.post("/api/v1/file/lib1/-/ck1?renew")
        .await
        .assert_error(429, "RateLimitExceeded");
}

#[tokio::test]
async fn limits_follow_a_reload_and_keep_their_counts() {
    let gw = start().await;
    let path = gw.dir.join("gateway.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    let reload = |table: &str| {
        let text = format!("{base}\n[rate_limits]\n{table}\n");
        std::fs::write(&path, text).unwrap();
        let settings = Config::load(&path).and_then(Settings::from_config).unwrap();
        gw.gateway.replace_settings(settings);
    };
    let target = renew_as("frank");
    for _ in 0..5 {
        let r = gw.post(&target).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("ratelimit").is_none(), "no limit, no headers");
    }
    reload("user = { rate = 1, per = \"1h\", burst = 2 }");
    let (ok, _) = until_limited(&gw, &target, 10).await;
    assert_eq!(ok, 2);
    // A larger burst: the two already used still count.
    reload("user = { rate = 1, per = \"1h\", burst = 4 }");
    let (ok, _) = until_limited(&gw, &target, 10).await;
    assert_eq!(ok, 2, "counts survived the reload");
    // Limits removed: through again.
    reload("");
    assert_eq!(gw.post(&target).await.status, 200);
}

async fn bin_metric(gw: &BinGateway, series: &str) -> f64 {
    let r = send(
        Method::GET,
        &format!("http://{}/metrics", gw.admin),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    metric_value(&r.text(), series)
}

async fn bin_post(gw: &BinGateway, target: &str) -> Resp {
    send(
        Method::POST,
        &format!("http://{}{target}", gw.addr),
        &[],
        bytes::Bytes::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_processes_share_user_counts_in_redis_and_let_requests_through_when_it_dies() {
    let mut redis = RedisServer::start();
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("rl-two-procs");
    let path = dir.join("gateway.toml");
    let setup = Setup {
        rest: format!(
            "[cache]\nenabled = false\nredis_url = \"{}\"\n\
             [rate_limits]\nbackend = \"redis\"\n\
             user = {{ rate = 1, per = \"1h\", burst = 4 }}\n",
            redis.url()
        ),
        ..Setup::default()
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &setup)).unwrap();
    let (a, b) = (BinGateway::spawn(&path, &[]), BinGateway::spawn(&path, &[]));

    // User limit: four in all, whichever replica answers.
    let target = renew_as("gina");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(bin_post(gw, &target).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429]);

    assert_eq!(
        bin_metric(&a, "smh_gateway_rate_limit_backend_errors_total").await,
        0.0
    );

    // Redis gone: the limited user is let through, and each such check is counted.
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut passed = 0;
    while passed < 3 {
        let r = bin_post(&a, &target).await;
        if r.status == 200 {
            passed += 1;
        } else {
            r.assert_error(429, "RateLimitExceeded");
        }
        assert!(
            Instant::now() < deadline,
            "never let through with Redis down"
        );
    }
    assert!(bin_metric(&a, "smh_gateway_rate_limit_backend_errors_total").await >= 3.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_processes_share_auth_failure_counts_in_redis() {
    let redis = RedisServer::start();
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("rl-two-procs-auth");
    let path = dir.join("gateway.toml");
    let setup = Setup {
        rest: format!(
            "{}[cache]\nenabled = false\nredis_url = \"{}\"\n\
             [rate_limits]\nbackend = \"redis\"\n\
             auth_failures = {{ rate = 1, per = \"1h\", burst = 3 }}\n",
            es256_key(),
            redis.url()
        ),
        ..Setup::default()
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &setup)).unwrap();
    let (a, b) = (BinGateway::spawn(&path, &[]), BinGateway::spawn(&path, &[]));
    // Auth failures: A spends the address's burst; B verifies one more and then
    // refuses before verifying.
    let garbage = |i| {
        format!(
            "/api/v1/file/lib1/-/ck1?renew&access_token={}",
            garbage_es256(i)
        )
    };
    for i in 0..3 {
        assert_eq!(bin_post(&a, &garbage(i)).await.status, 403);
    }
    assert_eq!(bin_post(&a, &garbage(3)).await.status, 429);
    assert_eq!(bin_post(&b, &garbage(4)).await.status, 403);
    for i in 5..10 {
        assert_eq!(bin_post(&b, &garbage(i)).await.status, 429);
    }
    // B verified one garbage token, then refused the address before verifying.
    assert_eq!(bin_metric(&b, VERIFICATIONS).await, 1.0);
    assert_eq!(bin_metric(&a, VERIFICATIONS).await, 3.0);
    assert_eq!(
        bin_metric(&a, "smh_gateway_rate_limit_backend_errors_total").await,
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
