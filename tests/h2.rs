//! HTTP/2 on both kinds of listener: h2c with prior knowledge on plain HTTP (SPEC
//! §15), h2 by ALPN on TLS, and SIGTERM in the middle of HTTP/2 streams: the
//! gateway stops accepting, sends GOAWAY, and lets the open stream finish.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use smh_gateway::mock_upstream::{Behaviour, Gate, MockUpstream};

/// An HTTP/2-only client: prior knowledge on `http://`, ALPN h2 on `https://`.
fn h2_client() -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls())
        .https_or_http()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

async fn post(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
) -> (u16, Version, String) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered within 20 s")
        .expect("HTTP/2 request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.version,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn plain_listener_speaks_h2c_with_prior_knowledge_and_http1() {
    let gw = start().await;
    let url = gw.url(&format!(
        "/api/v1/file/lib1/-/ck1?renew&access_token={}",
        token()
    ));
    let (status, version, body) = post(&h2_client(), &url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(gw.mock.last().unwrap().headers["x-forwarded-proto"], "http");
    // The same port still speaks HTTP/1.1.
    let r = send(Method::POST, &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
}

/// An HTTP/2 stream is open (its answer held upstream) when SIGTERM comes: the
/// listener closes, and the stream still completes with 200.
async fn sigterm_lets_an_open_http2_stream_finish(tls: bool) {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gate = Gate::new();
    mock.set_behaviour(Behaviour::Hold(gate.clone()));
    let dir = temp_dir("h2-drain");
    let server = if tls {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            fixture("tls/server.pem").display(),
            fixture("tls/server.key").display()
        )
    } else {
        String::new()
    };
    let setup = Setup {
        server,
        ..Setup::default()
    };
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, &mock.url(), &setup)).unwrap();
    let mut gw = BinGateway::spawn(&path, &[]);
    let url = format!(
        "{}://localhost:{}/api/v1/file/lib1/-/ck1?renew&access_token={}",
        if tls { "https" } else { "http" },
        gw.addr.port(),
        token()
    );
    let client = h2_client();
    let open = tokio::spawn(async move { post(&client, &url).await });
    for _ in 0..500 {
        if mock.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.count(), 1, "the stream did not reach the upstream");

    gw.signal("TERM");
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after SIGTERM");

    gate.open();
    let (status, version, body) = open.await.unwrap();
    assert_eq!(status, 200, "the open stream was cut: {body}");
    assert_eq!(version, Version::HTTP_2);
    let code = tokio::task::block_in_place(|| gw.wait(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{}", gw.stderr_text());
    assert!(
        gw.stderr_text()
            .contains("drained: all connections finished"),
        "{}",
        gw.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_open_h2c_stream_finish() {
    sigterm_lets_an_open_http2_stream_finish(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_open_tls_http2_stream_finish() {
    sigterm_lets_an_open_http2_stream_finish(true).await;
}
