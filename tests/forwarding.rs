//! SPEC §5 and §6 end to end: what exactly reaches the upstream, what comes back,
//! request syntax attacks, limits, and upstream failures.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use smh_gateway::mock_upstream::Behaviour;

#[tokio::test]
async fn query_is_rebuilt_canonically_and_unknown_parameters_dropped() {
    let gw = start().await;
    let admin = token_with(serde_json::json!({ "permissions": ["admin"] }));
    let r = gw
        .post(&format!(
            "/api/v1/file/lib1/-/ck1?traffic_limit=500000&evil=1&user_id=a%20b%2Bc&renew=1&access_token={admin}&x"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_query(&gw),
        format!("renew&access_token={admin}&user_id=a%20b%2Bc&traffic_limit=500000")
    );
}

#[tokio::test]
async fn sdk_shaped_request_passes_unchanged() {
    // SMH SDKs: renew=1, an empty form body, token only in the query.
    let gw = start().await;
    let tok = token();
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew=1&access_token={tok}&traffic_limit=1048576"),
            &[("content-type", "application/x-www-form-urlencoded")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["confirmKey"], "ck1");
    assert!(v["expiration"].as_str().unwrap().ends_with('Z'));
    let got = gw.mock.last().unwrap();
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.path, "/api/v1/file/lib1/-/ck1");
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn a_body_is_read_but_not_forwarded() {
    let gw = start().await;
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew&access_token={}", token()),
            &[],
            b"a=1&b=2",
        )
        .await;
    assert_eq!(r.status, 200);
    let got = gw.mock.last().unwrap();
    assert!(got.body.is_empty());
    assert_eq!(got.headers["content-length"], "0");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let gw = start_with(Setup {
        server: "max_body_bytes = 16".into(),
        ..Setup::default()
    })
    .await;
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew&access_token={}", token()),
            &[],
            b"0123456789abcdefXYZ",
        )
        .await;
    r.assert_error(413, "RequestEntityTooLarge");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn repeated_parameters_are_refused() {
    let gw = start().await;
    let tok = token();
    for q in [
        format!("access_token={tok}&access_token={tok}"),
        format!("access_token={tok}&traffic_limit=1&traffic_limit=2"),
        format!("access_token={tok}&user_id=a&user_id=b"),
        format!("access_token={tok}&renew"),
        format!("access_token={tok}&%72enew=1"),
    ] {
        gw.renew(&q).await.assert_error(400, "ParamInvalid");
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn bad_path_segments_are_refused() {
    let gw = start().await;
    let tok = token();
    for path in [
        "lib1/-/ck%2Fx",
        "lib1/-/%2e%2e",
        "lib1/-/..",
        "lib1/%2E/ck",
        "lib1/a%2fb/ck",
        "lib1/-/ck%00",
        "lib1/-/ck%7F",
        "lib1/-/ck%zz",
        "lib1//ck",
    ] {
        gw.post(&format!("/api/v1/file/{path}?renew&access_token={tok}"))
            .await
            .assert_error(400, "ParamInvalid");
    }
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn raw_control_characters_never_reach_the_upstream() {
    let gw = start().await;
    let tok = token();
    let req = format!(
        "POST /api/v1/file/lib1/-/ck\x01?renew&access_token={tok} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let req = format!(
        "POST /api/v1/file/lib1/-/ck?renew&user_id=a%0d%0aX-Evil:1&access_token={tok} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn headers_sent_upstream() {
    let gw = start().await;
    let tok = token();
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew&access_token={tok}"),
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-request-id", "client-id-1"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("te", "trailers"),
                ("user-agent", "smh-sdk/1.0"),
                ("authorization", &format!("Bearer {tok}")),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-request-id"], "client-id-1");
    let h = gw.mock.last().unwrap().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], "client-id-1");
    assert_eq!(h["host"], gw.mock.addr().to_string());
    assert_eq!(h["user-agent"], "smh-sdk/1.0");
    for gone in ["x-hop", "proxy-authorization", "te", "authorization"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded");
    }
}

#[tokio::test]
async fn insane_request_ids_are_replaced() {
    let gw = start().await;
    let long = "a".repeat(129);
    // A confirm key each, so that the renew cache answers none of them.
    for (i, bad) in ["has space", "quote\"", long.as_str()]
        .into_iter()
        .enumerate()
    {
        let r = gw
            .request(
                Method::POST,
                &format!("/api/v1/file/lib1/-/ck{i}?renew&access_token={}", token()),
                &[("x-request-id", bad)],
                b"",
            )
            .await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, bad);
        assert_eq!(gw.mock.last().unwrap().headers["x-request-id"], id.as_str());
    }
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("{}/smh-prefix/", mock.url());
    let gw = start_against(
        mock,
        Setup {
            upstream_url: Some(url),
            ..Setup::default()
        },
    )
    .await;
    // The mock answers 404 for the unknown prefix; what matters is the path it saw.
    let _ = gw.renew(&format!("access_token={}", token())).await;
    assert_eq!(
        gw.mock.last().unwrap().path,
        "/smh-prefix/api/v1/file/lib1/-/ck1"
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let gw = start().await;
    let body = r#"{"code":"ConfirmKeyNotFound","message":"no such upload","requestId":"smh-1"}"#;
    for status in [404u16, 403, 409, 500, 503] {
        gw.mock.set_behaviour(Behaviour::Fixed {
            status,
            body: body.into(),
        });
        let r = gw.renew(&format!("access_token={}", token())).await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.text(), body);
        assert_eq!(gw.log_lines().last().unwrap()["upstream_status"], status);
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind then drop a listener: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = start_with(Setup {
        upstream_url: Some(format!("http://127.0.0.1:{port}")),
        ..Setup::default()
    })
    .await;
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(502, "UpstreamUnavailable");
}

#[tokio::test]
async fn upstream_hangup_is_502() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Hangup);
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(502, "UpstreamUnavailable");
    // Sent once: the request may have reached SMH, so it is not retried.
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let gw = start_with(Setup {
        upstream: "timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    gw.mock
        .set_behaviour(Behaviour::Delay(Duration::from_secs(3)));
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(504, "UpstreamTimeout");
    assert_eq!(gw.mock.count(), 1);
}

#[tokio::test]
async fn unmatched_routes_are_denied_by_default() {
    let gw = start().await;
    // SMH's token API is not a row: it takes library secrets.
    gw.request(Method::GET, "/api/v1/token?library_id=lib1", &[], b"")
        .await
        .assert_error(404, "RouteNotFound");
    gw.post("/api/v1/token/lib1/some-token")
        .await
        .assert_error(404, "RouteNotFound");
    gw.request(Method::GET, "/api/v1/directory/lib1/-/d", &[], b"")
        .await
        .assert_error(404, "RouteNotFound");
    gw.request(Method::GET, "/", &[], b"")
        .await
        .assert_error(404, "RouteNotFound");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn unmatched_routes_can_be_forwarded_unchanged() {
    let gw = start_with(Setup {
        rest: "[routes]\nunmatched = \"forward\"\n".into(),
        ..Setup::default()
    })
    .await;
    let r = gw
        .request(
            Method::PUT,
            "/api/v1/vendor/lib1/-/dir%2Fa.jpg?access_token=whatever&x=1&x=2",
            &[
                ("authorization", "Bearer zzz"),
                ("content-type", "application/json"),
            ],
            b"{\"a\":1}",
        )
        .await;
    // The mock's answer is passed on whatever it is.
    assert!(r.status == 200 || r.status == 404, "{}", r.status);
    let got = gw.mock.last().unwrap();
    assert_eq!(got.method, Method::PUT);
    assert_eq!(got.path, "/api/v1/vendor/lib1/-/dir%2Fa.jpg");
    assert_eq!(got.query.as_deref(), Some("access_token=whatever&x=1&x=2"));
    assert_eq!(got.body.as_ref(), b"{\"a\":1}");
    assert!(got.headers.get("authorization").is_none());
    // Rows are still checked in forward mode.
    gw.renew("access_token=forged")
        .await
        .assert_error(403, "InvalidAccessToken");
    gw.request(
        Method::GET,
        "/api/v1/file/lib1/-/a.jpg?info&access_token=forged",
        &[],
        b"",
    )
    .await
    .assert_error(403, "InvalidAccessToken");
    // library_secret never passes, not even unmatched.
    let before = gw.mock.count();
    gw.request(
        Method::GET,
        "/api/v1/token?library_id=lib1&library_secret=s3cr3t",
        &[],
        b"",
    )
    .await
    .assert_error(400, "ParamInvalid");
    assert_eq!(gw.mock.count(), before);
}

#[tokio::test]
async fn long_uri_is_414_and_large_headers_431() {
    let gw = start_with(Setup {
        server: "max_uri_bytes = 512\nmax_header_bytes = 2048".into(),
        ..Setup::default()
    })
    .await;
    let long = format!(
        "/api/v1/file/lib1/-/ck1?renew&access_token={}&pad={}",
        token(),
        "x".repeat(600)
    );
    gw.post(&long).await.assert_error(414, "URITooLong");
    let big = "y".repeat(3000);
    gw.request(
        Method::POST,
        "/api/v1/file/lib1/-/ck1?renew",
        &[("x-big", &big)],
        b"",
    )
    .await
    .assert_error(431, "HeaderFieldsTooLarge");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn in_flight_limit_answers_503() {
    let gw = start_with(Setup {
        server: "max_in_flight = 1".into(),
        ..Setup::default()
    })
    .await;
    gw.mock
        .set_behaviour(Behaviour::Delay(Duration::from_millis(800)));
    let url = gw.url(&format!(
        "/api/v1/file/lib1/-/ck1?renew&access_token={}",
        token()
    ));
    let slow = tokio::spawn(send(Method::POST, url.leak(), &[], bytes::Bytes::new()));
    // Wait until the first request is at the upstream, then send a second.
    for _ in 0..100 {
        if gw.mock.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(503, "ServerOverloaded");
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn access_log_records_each_request_without_secrets() {
    let gw = start().await;
    let tok = token();
    let _ = gw
        .post(&format!(
            "/api/v1/file/lib1/-/secret-confirm-key?renew&access_token={tok}&traffic_limit=1"
        ))
        .await;
    let _ = gw
        .post("/api/v1/file/lib1/-/secret-confirm-key?renew&user_id=secret-user")
        .await;
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["route"], "renew");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["upstream_status"], 200);
    assert_eq!(lines[1]["status"], 400);
    assert_eq!(lines[1]["reason"], "missing");
    for line in lines {
        let s = line.to_string();
        for secret in [tok.as_str(), "secret-confirm-key", "secret-user"] {
            assert!(!s.contains(secret), "{s}");
        }
    }
}

#[tokio::test]
async fn connections_over_the_limit_get_503() {
    let gw = start_with(Setup {
        server: "max_connections = 1".into(),
        ..Setup::default()
    })
    .await;
    // Hold the only connection slot open.
    let _held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = raw(
        gw.addr,
        b"GET /api/v1/file/lib1/-/a?info HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("ServerOverloaded"), "{out}");
}

/// Sends half a request head (no blank line) on a new connection to `gw`, and
/// reads until the gateway closes it or `patience` passes. `None`: still open.
async fn half_a_head(gw: &TestGateway, patience: Duration) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/v1/file/lib1/-/ck1?renew HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(patience, s.read_to_end(&mut buf)).await;
    read.is_ok().then_some(buf)
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_header_read_timeout() {
    let gw = start_with(Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let read = half_a_head(&gw, Duration::from_secs(5)).await;
    assert!(read.is_some(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(gw.mock.count(), 0);
}

/// A head that stalls past the point where an idle connection is parked (2 s)
/// is still held to header_read_timeout: a connection with a head on its way is
/// not parked (hyper would wait for the rest of it), and its clock runs on.
#[tokio::test]
async fn a_head_stalled_past_the_park_point_is_cut_off_by_header_read_timeout() {
    let gw = start_with(Setup {
        server: "header_read_timeout = \"3s\"\nidle_timeout = \"120s\"".into(),
        ..Setup::default()
    })
    .await;
    let buf = half_a_head(&gw, Duration::from_secs(30))
        .await
        .expect("a stalled head still open after 30 s");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(gw.mock.count(), 0);
}

/// Between requests, the wait for the next head is the idle connection's
/// (`idle_timeout`, parked), not the head's: no bytes, no head clock.
#[tokio::test]
async fn a_keep_alive_connection_outlives_header_read_timeout_while_it_sends_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_with(Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "POST /api/v1/file/lib1/-/ck1?renew&access_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        token()
    );
    for round in 0..2 {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        // Quiet for several header_read_timeouts, past the park point.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_with(Setup {
        server: "idle_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "POST /api/v1/file/lib1/-/ck1?renew&access_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        token()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // The response arrives, then the idle connection is closed by the gateway.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "idle connection still open after 5 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    use tokio::io::AsyncWriteExt;
    let gw = start_with(Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/file/lib1/-/ck1?renew&access_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("answered within 5 s")
    .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("ReadRequestTimeout"), "{text}");
    assert_eq!(gw.mock.count(), 0);
}

#[tokio::test]
async fn renew_asks_the_upstream_for_an_uncompressed_answer() {
    let gw = start().await;
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/ck1?renew&access_token={}", token()),
            &[("accept-encoding", "gzip, br")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.mock.last().unwrap().headers["accept-encoding"],
        "identity"
    );
}

#[tokio::test]
async fn renew_look_alikes_are_not_forwarded_unchecked() {
    let gw = start_with(Setup {
        rest: "[routes]\nunmatched = \"forward\"\n".into(),
        ..Setup::default()
    })
    .await;
    for target in [
        "/api/v1/file/lib1/-/ck1/?renew&access_token=forged&traffic_limit=999999999999",
        "/api/v1//file/lib1/-/ck1?renew&access_token=forged",
        "/API/v1/file/lib1/-/ck1?renew&access_token=forged",
        "/api/v1/file/lib1/-/a/b?renew&access_token=forged",
        "/api/v1/%66ile/lib1/-/ck1?renew&access_token=forged",
        "/api%2Fv1%2Ffile/lib1/-/ck1?renew&access_token=forged",
        "/api/v1/file;x/lib1/-/ck1?renew&access_token=forged",
        "/api/v1/file/lib1/-/x%252F..%252Fck1?renew&access_token=forged",
    ] {
        let r = gw.post(target).await;
        r.assert_error(400, "ParamInvalid");
    }
    let r = gw
        .request(
            Method::from_bytes(b"post").unwrap(),
            "/api/v1/file/lib1/-/ck1?renew&access_token=forged",
            &[],
            b"",
        )
        .await;
    r.assert_error(400, "ParamInvalid");
    assert_eq!(gw.mock.count(), 0);
    // Logged with a bounded label (the row's, or `unmatched`).
    assert!(
        gw.wait_log_lines()
            .await
            .iter()
            .all(|l| l["route"] == "renew" || l["route"] == "unmatched")
    );
}

#[tokio::test]
async fn a_client_that_goes_away_is_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    let gw = start().await;
    gw.mock
        .set_behaviour(Behaviour::Delay(Duration::from_millis(600)));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "POST /api/v1/file/lib1/-/ck-gone?renew&access_token={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        token()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    for _ in 0..100 {
        if gw.mock.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    let lines = gw.wait_log_lines().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 499);
    assert_eq!(lines[0]["reason"], "client_closed");
}

#[tokio::test]
async fn more_than_a_hundred_small_headers_are_fine() {
    let gw = start().await;
    let names: Vec<String> = (0..150).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    // An unknown route: the gateway answers itself, so it must have read them all
    // (hyper's default would have answered a bare 431 after 100).
    let r = gw.request(Method::GET, "/nowhere", &headers, b"").await;
    r.assert_error(404, "RouteNotFound");
}

#[tokio::test]
async fn a_forwarded_body_that_stalls_is_cut_after_upstream_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends its head and 3 of 100 body bytes, then goes quiet.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", stalling.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = stalling.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let gw = start_with(Setup {
        upstream_url: Some(upstream_url),
        upstream: "timeout = \"300ms\"".into(),
        rest: "[routes]\nunmatched = \"forward\"\n".into(),
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let out = raw(
        gw.addr,
        b"GET /api/v1/vendor/a.jpg HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("abc"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stalled body was not cut"
    );
}

#[tokio::test]
async fn requests_hyper_refuses_to_parse_are_counted_and_logged() {
    let gw = start().await;
    let tok = token();
    // Content-Length and Transfer-Encoding together: hyper reads the body as
    // chunked, drops the Content-Length, answers and closes the connection
    // (RFC 9112 §6.3), so the smuggled second request is never read; the gateway
    // forwards with framing of its own.
    let out = raw(
        gw.addr,
        format!(
            "POST /api/v1/file/lib1/-/ck?renew&access_token={tok} HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/file/lib1/-/x?info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    let got = gw.mock.last().unwrap();
    assert!(got.headers.get("transfer-encoding").is_none());
    assert!(got.body.is_empty());
    gw.mock.clear();
    let _ = gw.wait_log_lines().await;
    for smuggle in [
        // Two different Content-Lengths.
        format!(
            "POST /api/v1/file/lib1/-/ck?renew&access_token={tok} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        ),
        // obs-fold.
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".to_string(),
    ] {
        let out = raw(gw.addr, smuggle.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
    assert_eq!(gw.mock.count(), 0);
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines.extend(gw.wait_log_lines().await);
        if lines.len() >= 2 {
            break;
        }
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["route"], "connection");
        assert_eq!(l["status"], 400);
        assert_eq!(l["reason"], "unparsable_request");
        assert!(!l.to_string().contains(&tok));
    }
    assert_eq!(
        gw.metric("smh_gateway_connection_errors_total{kind=\"parse\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn methods_are_bounded_in_the_log_and_lower_case_is_refused() {
    let gw = start().await;
    let long = "X".repeat(3000);
    let out = raw(
        gw.addr,
        format!("{long} /api/v1/file/lib1/-/ck?renew HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let out = raw(
        gw.addr,
        b"post /api/v1/file/lib1/-/ck?renew HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let lines = gw.wait_log_lines().await;
    assert!(lines.iter().all(|l| l["method"] == "OTHER"), "{lines:?}");
    assert_eq!(gw.mock.count(), 0);
}

/// An upstream that answers every request with these raw bytes, then closes.
async fn raw_upstream(answer: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn upstream_answers_with_conflicting_framing_or_a_protocol_switch_are_502() {
    for answer in [
        // Content-Length and chunked: relaying the de-chunked body under the stale
        // length would split the client's next response.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"a\":\"0123456\"}\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
    ] {
        for cache in ["true", "false"] {
            let gw = start_with(Setup {
                upstream_url: Some(raw_upstream(answer).await),
                rest: format!("[cache]\nenabled = {cache}\n"),
                ..Setup::default()
            })
            .await;
            let r = gw.renew(&format!("access_token={}", token())).await;
            r.assert_error(502, "UpstreamUnavailable");
            assert!(r.headers.get("x-cache").is_none() || cache == "true");
            let info = gw
                .request(
                    Method::GET,
                    &format!("/api/v1/file/lib1/-/a.txt?info&access_token={}", token()),
                    &[],
                    b"",
                )
                .await;
            info.assert_error(502, "UpstreamUnavailable");
        }
    }
}

#[tokio::test]
async fn a_buffered_answer_carries_the_length_of_what_was_read() {
    // Chunked from the upstream, buffered by the renew cache: the client gets one
    // Content-Length, computed, and no Transfer-Encoding.
    let gw = start_with(Setup {
        upstream_url: Some(
            raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
                .await,
        ),
        ..Setup::default()
    })
    .await;
    let r = gw.renew(&format!("access_token={}", token())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"{}");
    assert_eq!(r.headers["content-length"], "2");
    assert!(r.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn a_renew_answer_too_large_to_buffer_passes_through_uncached() {
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3 << 20));
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    for cache in ["true", "false"] {
        let gw = start_with(Setup {
            upstream_url: Some(raw_upstream(answer).await),
            rest: format!("[cache]\nenabled = {cache}\n"),
            ..Setup::default()
        })
        .await;
        for _ in 0..2 {
            let r = gw.renew(&format!("access_token={}", token())).await;
            assert_eq!(r.status, 200, "cache {cache}");
            assert_eq!(r.body.len(), body.len(), "cache {cache}");
            assert!(r.body.as_ref() == body.as_bytes());
            if cache == "true" {
                // Never stored: every call is a miss.
                assert_eq!(r.headers["x-cache"], "MISS");
            } else {
                assert!(r.headers.get("x-cache").is_none());
            }
        }
    }
}

#[tokio::test]
async fn a_dropped_body_leaves_no_length_and_json_rows_are_sent_as_json() {
    let gw = start().await;
    gw.mock.set_behaviour(Behaviour::Fixed {
        status: 200,
        body: "{}".into(),
    });
    let tok = token_with(serde_json::json!({ "permissions": ["admin"] }));
    // A GET row takes no body: the caller's 40 bytes and its Content-Length must not
    // reach SMH (a stale length would swallow the next request on the connection).
    let out = raw(
        gw.addr,
        format!(
            "GET /api/v1/file/lib1/-/a.txt?info&access_token={tok} HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{}",
            "G".repeat(40)
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = gw.mock.last().unwrap();
    assert!(
        got.headers.get("content-length").is_none(),
        "{:?}",
        got.headers
    );
    assert!(got.headers.get("content-type").is_none());
    assert!(got.body.is_empty());
    // A POST row without a body: its length is the gateway's 0, not the caller's.
    let out = raw(
        gw.addr,
        format!(
            "POST /api/v1/file/lib1/-/ck?renew&access_token={tok} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = gw.mock.last().unwrap();
    assert_eq!(got.headers["content-length"], "0");
    assert_ne!(got.headers["host"], "x");
    assert!(got.body.is_empty());
    // A JSON row's body goes as JSON, whatever the caller called it, with its own length.
    let r = gw
        .request(
            Method::POST,
            &format!("/api/v1/file/lib1/-/b.bin?multipart&access_token={tok}"),
            &[("content-type", "application/x-www-form-urlencoded")],
            br#"{"a":"&access_token=OTHER&"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let got = gw.mock.last().unwrap();
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(got.headers["content-length"], "28");
}

#[tokio::test]
async fn forward_mode_refuses_library_secret_in_any_spelling_and_head_on_get_rows() {
    let gw = start_with(Setup {
        rest: "[routes]\nunmatched = \"forward\"\n".into(),
        ..Setup::default()
    })
    .await;
    for (target, body) in [
        ("/api/v1/token?x=1;library_secret=S", &b""[..]),
        ("/api/v1/token?x=1&Library_Secret=S", b""),
        ("/api/v1/token?x=1&library%5Fsecret=S", b""),
        ("/api/v1/token", b"library_secret=S&library_id=lib1"),
    ] {
        gw.request(Method::POST, target, &[], body)
            .await
            .assert_error(400, "ParamInvalid");
    }
    // HEAD where only GET rows are: a server answering HEAD with GET would run them.
    let r = gw
        .request(Method::HEAD, "/api/v1/usage/lib1", &[], b"")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(gw.mock.count(), 0);
}
