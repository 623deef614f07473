//! TLS on both sides: the gateway terminating HTTPS (`server.tls_cert`/`tls_key`,
//! HTTP/1.1 and HTTP/2 by ALPN), and an `https://` upstream trusted through
//! `upstream.ca_file`. The https upstream is a second gateway with TLS on, in
//! front of the mock, so the whole chain is real.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn tls_server() -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        fixture("tls/server.pem").display(),
        fixture("tls/server.key").display()
    )
}

async fn https_get(url: &str, http2: bool) -> (u16, Version, Bytes) {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls())
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector);
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("https request");
    let (parts, body) = resp.into_parts();
    (
        parts.status.as_u16(),
        parts.version,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn gateway_serves_https_over_http1_and_http2() {
    let gw = start_with(Setup {
        server: tls_server(),
        ..Setup::default()
    })
    .await;
    let url = format!(
        "https://localhost:{}/api/v1/file/lib1/-/ck1?renew&access_token={}",
        gw.addr.port(),
        token()
    );
    for http2 in [false, true] {
        let (status, version, body) = https_get(&url, http2).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            version,
            if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            }
        );
    }
    assert_eq!(
        gw.mock.last().unwrap().headers["x-forwarded-proto"],
        "https"
    );
}

#[tokio::test]
async fn plain_http_to_a_tls_port_gets_no_http_answer() {
    // A request that a plain-HTTP gateway answers 200: the control shows that
    // these bytes do get an HTTP answer when TLS is off.
    let request = format!(
        "POST /api/v1/file/lib1/-/ck1?renew&access_token={} HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        token()
    );
    let plain = start().await;
    let out = raw(plain.addr, request.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert_eq!(plain.mock.count(), 1);

    // With TLS on, the same bytes are a failed handshake: no HTTP at all comes
    // back (at most a TLS alert record), and nothing reaches the upstream.
    let gw = start_with(Setup {
        server: tls_server(),
        ..Setup::default()
    })
    .await;
    let out = raw(gw.addr, request.as_bytes()).await;
    assert!(
        !out.contains("HTTP/"),
        "an HTTP answer on a TLS port: {out:?}"
    );
    assert!(
        out.is_empty() || out.as_bytes()[0] == 0x15,
        "neither nothing nor a TLS alert: {out:?}"
    );
    assert_eq!(gw.mock.count(), 0);
    // The port still speaks TLS afterwards.
    let url = format!(
        "https://localhost:{}/api/v1/file/lib1/-/ck1?renew&access_token={}",
        gw.addr.port(),
        token()
    );
    assert_eq!(https_get(&url, false).await.0, 200);
    assert_eq!(
        gw.mock.last().unwrap().headers["x-forwarded-proto"],
        "https"
    );
}

#[tokio::test]
async fn https_upstream_is_verified_with_ca_file() {
    // Inner gateway: TLS on, in front of the mock.
    let inner = start_with(Setup {
        server: tls_server(),
        ..Setup::default()
    })
    .await;
    let ca = fixture("tls/ca.pem");
    let outer = start_against(
        inner.mock.clone(),
        Setup {
            upstream_url: Some(format!("https://localhost:{}", inner.addr.port())),
            upstream: format!("ca_file = \"{}\"", ca.display()),
            ..Setup::default()
        },
    )
    .await;
    let tok = token();
    let r = outer
        .renew(&format!("access_token={tok}&traffic_limit=1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Through both gateways, the mock sees the clamped, canonical query.
    assert_eq!(
        last_query(&inner),
        format!("renew&access_token={tok}&traffic_limit=102400")
    );
    assert_eq!(
        inner.mock.last().unwrap().headers["host"],
        inner.mock.addr().to_string()
    );
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_502() {
    let inner = start_with(Setup {
        server: tls_server(),
        ..Setup::default()
    })
    .await;
    // Default webpki roots do not trust the test CA.
    let outer = start_against(
        inner.mock.clone(),
        Setup {
            upstream_url: Some(format!("https://localhost:{}", inner.addr.port())),
            ..Setup::default()
        },
    )
    .await;
    outer
        .renew(&format!("access_token={}", token()))
        .await
        .assert_error(502, "UpstreamUnavailable");
    assert_eq!(inner.mock.count(), 0);
}
