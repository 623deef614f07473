//! The renew cache (SPEC §7), against the mock upstream and, for the Redis backend,
//! a real `redis-server` each test starts on a free loopback port: hits and misses,
//! coalescing (in one process and across two sharing a Redis), the key's safety
//! rule, what is never cached, Redis failing and coming back, invalidation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use smh_gateway::mock_upstream::{Behaviour, MockUpstream};

fn memory() -> Setup {
    Setup::default()
}

fn redis(server: &RedisServer) -> Setup {
    redis_at(&server.url())
}

fn redis_at(url: &str) -> Setup {
    Setup {
        rest: format!("[cache]\nbackend = \"redis\"\nredis_url = \"{url}\"\n"),
        ..Setup::default()
    }
}

/// The `X-Cache` header of a response ("" when absent).
fn x_cache(r: &Resp) -> &str {
    r.headers.get("x-cache").map_or("", |v| v.to_str().unwrap())
}

/// One token for the whole file: `token()` mints a new one each second (its `iat`
/// changes), and a new credential is, rightly, a new cache entry.
fn caller() -> &'static str {
    static TOKEN: std::sync::LazyLock<String> = std::sync::LazyLock::new(token);
    &TOKEN
}

fn renew_target(token: &str) -> String {
    format!("/api/v1/file/lib1/-/ck1?renew&access_token={token}")
}

fn count_by_x_cache(responses: &[Resp]) -> (usize, usize, usize) {
    let n = |v: &str| responses.iter().filter(|r| x_cache(r) == v).count();
    (n("MISS"), n("COALESCED"), n("HIT"))
}

/// An upstream timeout no held test comes near: the mock holds its answer until
/// the test releases it, and a slow machine must not turn that into a 504.
const PATIENT_UPSTREAM: &str = "timeout = \"120s\"";

/// `n` copies of one request, spread round-robin over the gateways, while the
/// mock holds its answers: returns once all `n` are provably waiting on flights
/// (the caches say so) and an upstream call is held, so whatever the machine's
/// speed, they all share what the held calls answer. The caller releases the
/// mock and joins the handles.
async fn held_burst(
    gateways: &[&TestGateway],
    n: usize,
    target: &str,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    let mock = &gateways[0].mock;
    mock.hold();
    let tasks = (0..n)
        .map(|i| {
            let url = gateways[i % gateways.len()].url(target);
            tokio::spawn(
                async move { send(http::Method::POST, &url, &[], bytes::Bytes::new()).await },
            )
        })
        .collect();
    let waiting = || {
        gateways
            .iter()
            .map(|g| g.gateway.cache().expect("cache enabled").waiting())
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while waiting() != n || mock.active() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} renews waiting, {} upstream calls held",
            waiting(),
            mock.active()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tasks
}

/// Each Redis call is bounded by `CALL_TIMEOUT` (50 ms), and one slow call opens
/// the breaker for every request of the next `RETRY_EVERY`. On a loaded machine a
/// burst of fifty can take longer than that, and a replica then rightly fails open
/// and calls the upstream itself, counting `result="error"`. So the Redis sharing
/// tests check what holds on any machine in every run (every answer right, one
/// upstream call per replica at most, a second only when Redis failed, a MISS for
/// each), and pin the exact split on a run in which Redis always answered: up to
/// this many runs, each with a fresh confirm key.
const REDIS_ATTEMPTS: usize = 5;

/// What a run without a clean Redis says (the invariants held; sharing was not
/// pinned on this machine).
fn redis_too_slow() {
    eprintln!(
        "note: Redis missed its call timeout in each of {REDIS_ATTEMPTS} runs (a loaded \
         machine): the invariants held, the exact split was not pinned"
    );
}

fn renew_of(ck: &str) -> String {
    format!("/api/v1/file/lib1/-/{ck}?renew&access_token={}", caller())
}

/// `cache_requests_total{result="error"}` summed over the gateways.
async fn redis_errors(gateways: &[&TestGateway]) -> f64 {
    let mut n = 0.0;
    for g in gateways {
        n += g
            .metric("smh_gateway_cache_requests_total{result=\"error\"}")
            .await;
    }
    n
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Resp>>) -> Vec<Resp> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn hit_after_miss(gw: &TestGateway) {
    let first = gw.post(&renew_target(caller())).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(x_cache(&first), "MISS");
    let second = gw.post(&renew_target(caller())).await;
    assert_eq!(second.status, 200);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(
        second.body, first.body,
        "the upstream's body, byte for byte"
    );
    assert_eq!(second.headers["content-type"], "application/json");
    assert_eq!(gw.mock.count(), 1, "a hit never reaches the upstream");
    assert_ne!(
        second.headers["x-request-id"], first.headers["x-request-id"],
        "a hit still gets its own request id"
    );

    let lines = gw.log_lines();
    let caches: Vec<_> = lines.iter().map(|l| l["cache"].clone()).collect();
    assert_eq!(caches, [json!("miss"), json!("hit")]);
    assert_eq!(lines[1]["upstream_status"], json!(null));
    assert_eq!(lines[1]["status"], 200);
    let hits = "smh_gateway_cache_requests_total{result=\"hit\"}";
    let misses = "smh_gateway_cache_requests_total{result=\"miss\"}";
    assert_eq!(gw.metric(hits).await, 1.0);
    assert_eq!(gw.metric(misses).await, 1.0);
    let renewals = "smh_gateway_renewals_total{library=\"other\"}";
    assert_eq!(gw.metric(renewals).await, 2.0, "hits are renewals too");
}

#[tokio::test]
async fn memory_renew_is_a_hit_after_a_miss() {
    let gw = start_with(memory()).await;
    hit_after_miss(&gw).await;
    assert_eq!(gw.metric("smh_gateway_cache_entries").await, 1.0);
}

#[tokio::test]
async fn redis_renew_is_a_hit_after_a_miss() {
    let server = RedisServer::start();
    let gw = start_with(redis(&server)).await;
    hit_after_miss(&gw).await;
}

#[tokio::test]
async fn fifty_concurrent_identical_renews_make_one_upstream_call() {
    let gw = start_with(Setup {
        upstream: PATIENT_UPSTREAM.into(),
        ..memory()
    })
    .await;
    let tasks = held_burst(&[&gw], 50, &renew_target(caller())).await;
    gw.mock.release();
    let responses = join(tasks).await;
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(responses.iter().all(|r| r.body == responses[0].body));
    assert_eq!(gw.mock.count(), 1);
    assert_eq!(count_by_x_cache(&responses), (1, 49, 0));
    let coalesced = "smh_gateway_cache_requests_total{result=\"coalesced\"}";
    assert_eq!(gw.metric(coalesced).await, 49.0);
}

#[tokio::test]
async fn fifty_concurrent_renews_over_two_gateways_sharing_redis_make_one_upstream_call() {
    let server = RedisServer::start();
    let setup = Setup {
        upstream: PATIENT_UPSTREAM.into(),
        ..redis(&server)
    };
    let a = start_with(setup.clone()).await;
    let b = start_against(a.mock.clone(), setup).await;
    for attempt in 0..REDIS_ATTEMPTS {
        let target = renew_of(&format!("ck-burst-{attempt}"));
        let (errors, calls) = (redis_errors(&[&a, &b]).await, a.mock.count());
        let tasks = held_burst(&[&a, &b], 50, &target).await;
        a.mock.release();
        let responses = join(tasks).await;
        for r in &responses {
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let calls = a.mock.count() - calls;
        assert_eq!(
            count_by_x_cache(&responses).0,
            calls,
            "a MISS per upstream call"
        );
        assert!((1..=2).contains(&calls), "{calls} calls from two replicas");
        if redis_errors(&[&a, &b]).await > errors {
            continue;
        }
        assert_eq!(calls, 1, "one upstream call for both replicas");
        assert!(responses.iter().all(|r| r.body == responses[0].body));
        // All 50 waited on the one call: the other replica's through Redis.
        assert_eq!(count_by_x_cache(&responses), (1, 49, 0));
        // And the entry is shared afterwards.
        let r = b.post(&target).await;
        assert_eq!(x_cache(&r), "HIT");
        return;
    }
    redis_too_slow();
}

#[tokio::test]
async fn a_failed_flight_gives_every_waiter_the_same_answer_and_the_next_request_tries_again() {
    let gw = start_with(Setup {
        upstream: format!("{PATIENT_UPSTREAM}\nretries = 0"),
        ..memory()
    })
    .await;
    let tasks = held_burst(&[&gw], 20, &renew_target(caller())).await;
    // The held call fails: the mock hangs up on it.
    gw.mock.set_behaviour(Behaviour::Hangup);
    gw.mock.release();
    for r in join(tasks).await {
        r.assert_error(502, "UpstreamUnavailable");
        assert_eq!(x_cache(&r), "", "the gateway's own errors carry no X-Cache");
    }
    assert_eq!(gw.mock.count(), 1);

    gw.mock.set_behaviour(Behaviour::Smh);
    let r = gw.post(&renew_target(caller())).await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&r), "MISS", "failures are not cached");
    assert_eq!(gw.mock.count(), 2);
}

#[tokio::test]
async fn a_failed_flight_answers_the_waiters_of_another_replica_too() {
    let server = RedisServer::start();
    let setup = Setup {
        upstream: format!("{PATIENT_UPSTREAM}\nretries = 0"),
        ..redis(&server)
    };
    let a = start_with(setup.clone()).await;
    let b = start_against(a.mock.clone(), setup).await;
    for attempt in 0..REDIS_ATTEMPTS {
        let target = renew_of(&format!("ck-fail-{attempt}"));
        let (errors, calls) = (redis_errors(&[&a, &b]).await, a.mock.count());
        let tasks = held_burst(&[&a, &b], 20, &target).await;
        a.mock.set_behaviour(Behaviour::Hangup);
        a.mock.release();
        for r in join(tasks).await {
            r.assert_error(502, "UpstreamUnavailable");
        }
        a.mock.set_behaviour(Behaviour::Smh);
        let calls = a.mock.count() - calls;
        assert!((1..=2).contains(&calls), "{calls} calls from two replicas");
        if redis_errors(&[&a, &b]).await > errors {
            continue;
        }
        assert_eq!(calls, 1, "the other replica waited for the answer");
        let r = b.post(&target).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
        return;
    }
    redis_too_slow();
}

#[tokio::test]
async fn an_upstream_error_reaches_every_waiter_unchanged_and_is_not_cached() {
    let gw = start_with(memory()).await;
    let body = r#"{"code":"InvalidAccessToken","message":"expired","requestId":"m"}"#;
    for status in [400u16, 403, 404, 500, 503] {
        gw.mock.clear();
        gw.mock.set_behaviour(Behaviour::Fixed {
            status,
            body: body.into(),
        });
        for _ in 0..2 {
            let r = gw.post(&renew_target(caller())).await;
            assert_eq!(r.status, status);
            assert_eq!(r.text(), body, "passed through unchanged");
            assert_eq!(x_cache(&r), "MISS", "an upstream answer, not cached");
        }
        assert_eq!(gw.mock.count(), 2, "{status} was cached");
    }
}

#[tokio::test]
async fn a_200_without_a_usable_expiration_is_not_cached() {
    let gw = start_with(memory()).await;
    for body in [
        r#"{"domain":"d"}"#,
        r#"{"expiration":"soon"}"#,
        r#"{"expiration":"2001-01-01T00:00:00.000Z"}"#,
        "not json",
    ] {
        gw.mock.clear();
        gw.mock.set_behaviour(Behaviour::Fixed {
            status: 200,
            body: body.into(),
        });
        for _ in 0..2 {
            let r = gw.post(&renew_target(caller())).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), body);
        }
        assert_eq!(gw.mock.count(), 2, "{body} was cached");
    }
}

/// `setup.rest` ends inside the `[cache]` table.
async fn expiration_inside_min_remaining_is_never_a_hit(setup: Setup) {
    // The mock's expiration is an hour ahead: inside a 2h margin.
    let gw = start_with(Setup {
        rest: format!("{}min_remaining = \"2h\"\n", setup.rest),
        ..setup
    })
    .await;
    for _ in 0..3 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
    }
    assert_eq!(gw.mock.count(), 3);
}

#[tokio::test]
async fn memory_an_expiration_closer_than_min_remaining_is_not_served_from_the_cache() {
    expiration_inside_min_remaining_is_never_a_hit(Setup {
        rest: "[cache]\n".into(),
        ..Setup::default()
    })
    .await;
}

#[tokio::test]
async fn redis_an_expiration_closer_than_min_remaining_is_not_served_from_the_cache() {
    let server = RedisServer::start();
    expiration_inside_min_remaining_is_never_a_hit(redis(&server)).await;
}

/// Asserts that `a` then `b` each reach the upstream: they share no entry.
async fn assert_not_shared(gw: &TestGateway, a: &str, b: &str, what: &str) {
    gw.mock.clear();
    for target in [a, b] {
        let r = gw.post(target).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            x_cache(&r),
            "MISS",
            "{what}: {target} was answered from another's entry"
        );
    }
    assert_eq!(gw.mock.count(), 2, "{what}");
    // Each now hits its own entry.
    for target in [a, b] {
        assert_eq!(x_cache(&gw.post(target).await), "HIT", "{what}");
    }
}

async fn callers_never_share(setup: Setup) {
    let gw = start_with(Setup {
        rest: format!(
            "{}\n[[libraries]]\nid = \"lib1\"\nmulti_tenant = true\n",
            setup.rest
        ),
        ..setup
    })
    .await;
    let spaces = json!({"space_id": ["s1", "s2"]});
    let t = token_with(spaces.clone());
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck1?renew&access_token={t}"),
        &format!("/api/v1/file/lib1/s2/ck1?renew&access_token={t}"),
        "space",
    )
    .await;
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck2?renew&access_token={t}"),
        &format!("/api/v1/file/lib1/s1/ck3?renew&access_token={t}"),
        "confirm key",
    )
    .await;
    let other = token_with(json!({"space_id": ["s1", "s2"], "jti": "another"}));
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck4?renew&access_token={t}"),
        &format!("/api/v1/file/lib1/s1/ck4?renew&access_token={other}"),
        "credential",
    )
    .await;
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck5?renew&access_token={t}&traffic_limit=200000"),
        &format!("/api/v1/file/lib1/s1/ck5?renew&access_token={t}&traffic_limit=300000"),
        "traffic_limit",
    )
    .await;
    let admin = token_with(json!({"permissions": ["admin"]}));
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck6?renew&access_token={admin}&user_id=alice"),
        &format!("/api/v1/file/lib1/s1/ck6?renew&access_token={admin}&user_id=bob"),
        "user",
    )
    .await;
    assert_not_shared(
        &gw,
        &format!("/api/v1/file/lib1/s1/ck7?renew&access_token={admin}"),
        &format!("/api/v1/file/lib1/s1/ck7?renew&access_token={admin}&user_id=alice"),
        "user absent vs present",
    )
    .await;

    // The key holds the traffic_limit sent upstream: values clamped alike share.
    gw.mock.clear();
    let low = |v: u32| format!("/api/v1/file/lib1/s1/ck8?renew&access_token={t}&traffic_limit={v}");
    assert_eq!(x_cache(&gw.post(&low(1000)).await), "MISS");
    let r = gw.post(&low(2000)).await;
    assert_eq!(x_cache(&r), "HIT", "both clamp to 102400");
    assert_eq!(r.json()["headers"]["x-cos-traffic-limit"], 102_400);
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn memory_callers_differing_in_space_user_traffic_limit_or_credential_never_share() {
    callers_never_share(memory()).await;
}

#[tokio::test]
async fn redis_callers_differing_in_space_user_traffic_limit_or_credential_never_share() {
    let server = RedisServer::start();
    callers_never_share(redis(&server)).await;
}

#[tokio::test]
async fn with_a_credential_claim_the_upstream_credential_is_the_key_not_the_caller_token() {
    let gw = start_with(Setup {
        upstream: "credential = \"claim\"\ncredential_claim = \"smh\"".into(),
        ..memory()
    })
    .await;
    let t1 = token_with(json!({"smh": "upstream-A", "jti": "1"}));
    let t2 = token_with(json!({"smh": "upstream-A", "jti": "2"}));
    let t3 = token_with(json!({"smh": "upstream-B", "jti": "3"}));
    assert_eq!(x_cache(&gw.post(&renew_target(&t1)).await), "MISS");
    assert_eq!(
        x_cache(&gw.post(&renew_target(&t2)).await),
        "HIT",
        "the same request goes upstream: the same entry"
    );
    assert_eq!(x_cache(&gw.post(&renew_target(&t3)).await), "MISS");
    assert_eq!(gw.mock.count(), 2);
}

#[tokio::test]
async fn with_the_cache_disabled_every_renew_goes_upstream_without_x_cache() {
    let gw = start_with(Setup {
        rest: "[cache]\nenabled = false\n".into(),
        ..Setup::default()
    })
    .await;
    for _ in 0..2 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("x-cache").is_none());
    }
    assert_eq!(gw.mock.count(), 2);
    let lines = gw.log_lines();
    assert!(lines.iter().all(|l| l["cache"].is_null()), "{lines:?}");
}

#[tokio::test]
async fn refusals_and_gateway_errors_carry_no_x_cache() {
    let gw = start_with(memory()).await;
    let r = gw
        .post("/api/v1/file/lib1/-/ck1?renew&access_token=bad")
        .await;
    r.assert_error(403, "InvalidAccessToken");
    assert!(r.headers.get("x-cache").is_none());
    gw.mock.set_behaviour(Behaviour::Hangup);
    let r = gw.post(&renew_target(caller())).await;
    r.assert_error(502, "UpstreamUnavailable");
    assert!(r.headers.get("x-cache").is_none());
    gw.mock.set_behaviour(Behaviour::Smh);
    let r = gw.post(&renew_target(caller())).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
}

#[tokio::test]
async fn a_waiter_whose_client_goes_away_does_not_cancel_the_flight() {
    let gw = start_with(Setup {
        upstream: PATIENT_UPSTREAM.into(),
        ..memory()
    })
    .await;
    let cache = gw.gateway.cache().expect("cache enabled");
    gw.mock.hold();
    let target = gw.url(&renew_target(caller()));
    let leader = {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            renew_target(caller())
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s
    };
    until("the leader's upstream call", || gw.mock.active() == 1).await;
    let follower =
        tokio::spawn(
            async move { send(http::Method::POST, &target, &[], bytes::Bytes::new()).await },
        );
    until("leader and follower waiting", || cache.waiting() == 2).await;
    // The leader's client goes away; the gateway sees it (its request is logged
    // as 499) while the upstream call is still held.
    drop(leader);
    let closed = "smh_gateway_requests_total{route=\"renew\",status=\"499\"}";
    until_metric(gw.admin, closed, |v| v == 1.0).await;
    assert_eq!(cache.waiting(), 1, "only the follower still waits");
    assert_eq!(gw.mock.active(), 1, "the flight's call is still running");

    gw.mock.release();
    let follower = follower.await.unwrap();
    assert_eq!(follower.status, 200);
    assert_eq!(x_cache(&follower), "COALESCED");
    assert_eq!(gw.mock.count(), 1);
    let again = gw.post(&renew_target(caller())).await;
    assert_eq!(x_cache(&again), "HIT", "the flight stored its answer");
}

async fn invalidation_drops_every_entry_of_the_upload(gw: &TestGateway) {
    let admin = token_with(json!({"permissions": ["admin"]}));
    let of = |ck: &str, user: &str| {
        format!("/api/v1/file/lib1/-/{ck}?renew&access_token={admin}&user_id={user}")
    };
    for target in [of("ck1", "alice"), of("ck1", "bob"), of("ck2", "alice")] {
        assert_eq!(x_cache(&gw.post(&target).await), "MISS");
        assert_eq!(x_cache(&gw.post(&target).await), "HIT");
    }
    let cache = gw.gateway.cache().expect("cache enabled");
    assert_eq!(cache.invalidate_upload("lib1", "-", "ck1").await, Ok(2));
    assert_eq!(
        x_cache(&gw.post(&of("ck2", "alice")).await),
        "HIT",
        "another upload"
    );
    // A renew of the invalidated upload goes upstream; the answer is not stored
    // while the upload is marked gone (it was confirmed or cancelled).
    for _ in 0..2 {
        assert_eq!(x_cache(&gw.post(&of("ck1", "alice")).await), "MISS");
    }
    assert_eq!(cache.invalidate_upload("lib1", "-", "nothing").await, Ok(0));
}

#[tokio::test]
async fn memory_invalidate_upload_drops_every_entry_of_that_upload() {
    let gw = start_with(memory()).await;
    invalidation_drops_every_entry_of_the_upload(&gw).await;
}

#[tokio::test]
async fn redis_invalidate_upload_drops_every_entry_of_that_upload() {
    let server = RedisServer::start();
    let gw = start_with(redis(&server)).await;
    invalidation_drops_every_entry_of_the_upload(&gw).await;
}

/// Polls renews until one is a HIT (or `limit` passes); each must be a 200.
async fn until_hit(gw: &TestGateway, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if x_cache(&r) == "HIT" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn redis_stopped_mid_run_serves_from_the_upstream_and_caching_resumes_when_it_is_back() {
    let mut server = RedisServer::start();
    let gw = start_with(redis(&server)).await;
    assert_eq!(x_cache(&gw.post(&renew_target(caller())).await), "MISS");
    assert_eq!(x_cache(&gw.post(&renew_target(caller())).await), "HIT");

    let errors = "smh_gateway_cache_requests_total{result=\"error\"}";
    // (A loaded machine may have made Redis miss its call timeout already.)
    let errors_before = gw.metric(errors).await;
    server.stop();
    let before = gw.mock.count();
    for _ in 0..5 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!(r.status, 200, "never a 5xx because of Redis: {}", r.text());
        assert_eq!(x_cache(&r), "MISS");
    }
    assert_eq!(gw.mock.count(), before + 5);
    assert_eq!(gw.metric(errors).await - errors_before, 5.0);
    let ready = send(
        http::Method::GET,
        &format!("http://{}/readyz", gw.admin),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(ready.status, 200, "still ready");

    server.restart();
    assert!(
        until_hit(&gw, Duration::from_secs(10)).await,
        "caching resumed once Redis was back"
    );
}

#[tokio::test]
async fn redis_down_at_start_the_gateway_starts_and_caches_once_redis_is_up() {
    let port = free_port();
    let gw = start_with(redis_at(&format!("redis://127.0.0.1:{port}"))).await;
    for _ in 0..3 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
    }
    assert_eq!(gw.mock.count(), 3);
    let errors = "smh_gateway_cache_requests_total{result=\"error\"}";
    assert_eq!(gw.metric(errors).await, 3.0);

    let _server = RedisServer::start_on(port);
    assert!(until_hit(&gw, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_redis_that_stops_answering_costs_little_and_caching_resumes_when_it_answers() {
    let server = RedisServer::start();
    let gw = start_with(redis(&server)).await;
    assert_eq!(x_cache(&gw.post(&renew_target(caller())).await), "MISS");

    let errors = "smh_gateway_cache_requests_total{result=\"error\"}";
    let errors_before = gw.metric(errors).await;
    let before = server.commands_processed();
    server.pause();
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
    }
    let elapsed = started.elapsed();
    assert_eq!(gw.metric(errors).await - errors_before, 10.0);
    server.resume();
    // What the gateway sent while Redis was stopped waited in its sockets and is
    // processed now. After a failure the breaker skips Redis for RETRY_EVERY, then
    // lets one call probe: however long the ten requests took, at most one call per
    // RETRY_EVERY (and the entries counter's occasional one) was sent, where ten
    // requests without the breaker send at least two calls each.
    let sent = server.commands_processed() - before;
    let windows = elapsed.as_millis() / smh_gateway::cache::redis::RETRY_EVERY.as_millis();
    let allowed = 3 + 2 * windows as u64;
    assert!(
        sent <= allowed,
        "{sent} Redis commands in {elapsed:?} while Redis was stopped (allowed {allowed})"
    );
    server.resume();
    assert!(until_hit(&gw, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_renews_over_two_gateway_processes_sharing_redis_make_one_upstream_call() {
    let server = RedisServer::start();
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("two-procs");
    let path = dir.join("gateway.toml");
    let setup = Setup {
        upstream: PATIENT_UPSTREAM.into(),
        ..redis(&server)
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &setup)).unwrap();
    let (a, b) = (BinGateway::spawn(&path, &[]), BinGateway::spawn(&path, &[]));
    let metric = async |series: &str| {
        until_metric(a.admin, series, |_| true).await
            + until_metric(b.admin, series, |_| true).await
    };
    let errors = "smh_gateway_cache_requests_total{result=\"error\"}";
    for attempt in 0..REDIS_ATTEMPTS {
        let target = renew_of(&format!("ck-procs-{attempt}"));
        let (errors_before, calls) = (metric(errors).await, mock.count());
        mock.hold();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let url = format!(
                    "http://{}{target}",
                    if i % 2 == 0 { a.addr } else { b.addr }
                );
                tokio::spawn(async move {
                    send(http::Method::POST, &url, &[], bytes::Bytes::new()).await
                })
            })
            .collect();
        // All 50 inside the two processes while an upstream call is held. (Whether
        // each has reached its cache lookup yet is not visible from outside: one
        // still before it when the answer lands is a HIT, so the split is not
        // pinned here; the in-process test above pins it.)
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let n = metric("smh_gateway_in_flight_requests").await;
            if n == 50.0 && mock.active() > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} of 50 in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        mock.release();
        let responses = join(tasks).await;
        for r in &responses {
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let calls = mock.count() - calls;
        let (miss, coalesced, hit) = count_by_x_cache(&responses);
        assert_eq!((miss, coalesced + hit), (calls, 50 - calls));
        assert!((1..=2).contains(&calls), "{calls} calls from two processes");
        if metric(errors).await > errors_before {
            continue;
        }
        assert_eq!(calls, 1, "one upstream call for two processes");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    redis_too_slow();
}

#[tokio::test]
async fn a_rediss_url_whose_tls_handshake_fails_serves_from_the_upstream() {
    // A plaintext redis-server behind a rediss:// URL: the TLS client is built (no
    // crypto provider panic), the handshake fails, the gateway fails open.
    let server = RedisServer::start();
    let gw = start_with(redis_at(&format!("rediss://127.0.0.1:{}", server.port))).await;
    for _ in 0..2 {
        let r = gw.post(&renew_target(caller())).await;
        assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
    }
    let errors = "smh_gateway_cache_requests_total{result=\"error\"}";
    assert_eq!(gw.metric(errors).await, 2.0);
}

#[tokio::test]
async fn a_confirm_through_one_replica_drops_the_renew_entry_on_every_replica() {
    let server = RedisServer::start();
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = start_against(mock.clone(), redis(&server)).await;
    let b = start_against(mock.clone(), redis(&server)).await;
    let tok = token();
    let renew = format!("/api/v1/file/lib1/-/ck-shared?renew&access_token={tok}");
    assert_eq!(a.post(&renew).await.headers["x-cache"], "MISS");
    assert_eq!(b.post(&renew).await.headers["x-cache"], "HIT");
    // Confirm reaches SMH through replica A...
    let confirm = a
        .post(&format!(
            "/api/v1/file/lib1/-/ck-shared?confirm&access_token={tok}"
        ))
        .await;
    assert!(confirm.headers.get("x-cache").is_none());
    // ...and replica B no longer answers the upload's renew from the cache.
    assert_eq!(b.post(&renew).await.headers["x-cache"], "MISS");
}
