//! Reload (SPEC §15) and the settings around it: SIGHUP swaps the server
//! certificate for new handshakes, a change to a key fixed for the process is
//! refused (counted, logged, the old config serving), server limits and the
//! upstream client follow a reload (including the mTLS client certificate of
//! `upstream.client_cert`), `server.listen_backlog` is validated and used, and the
//! background tasks stop with the gateway.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use smh_gateway::config::Config;
use smh_gateway::mock_upstream::{Behaviour, Gate};
use smh_gateway::server::ReloadError;
use tokio::net::{TcpListener, TcpStream};

fn tls_server(cert: &str, key: &str) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        fixture(cert).display(),
        fixture(key).display()
    )
}

fn certs(rel: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(fixture(rel))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts both test CAs, so either server certificate verifies.
fn client_trusting_both() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("tls/ca.pem").into_iter().chain(certs("tls/ca2.pem")) {
        roots.add(cert).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS connection to the gateway, and the certificate it was served.
async fn tls_connect(
    addr: SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_trusting_both()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, cert)
}

fn renew_target() -> String {
    format!("/api/v1/file/lib1/-/ck1?renew&access_token={}", token())
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    send(
        Method::GET,
        &format!("http://{addr}{path}"),
        &[],
        Bytes::new(),
    )
    .await
    .text()
}

/// Polls `cond` every 20 ms for up to [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_or(what, String::new, cond).await
}

/// As [`eventually`]; a failure also prints `context()` (a gateway's stderr, say).
async fn eventually_or<F, Fut>(what: &str, context: impl Fn() -> String, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {PATIENCE:?}: {what}\n{}", context());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_certificate_for_new_handshakes_and_open_connections_keep_theirs() {
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("reload-cert");
    let path = dir.join("gateway.toml");
    let first = Setup {
        server: tls_server("tls/server.pem", "tls/server.key"),
        ..Setup::default()
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &first)).unwrap();
    let gw = BinGateway::spawn(&path, &[]);

    let (open, served) = tls_connect(gw.addr).await;
    assert_eq!(served, certs("tls/server.pem")[0]);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(open))
            .await
            .unwrap();
    tokio::spawn(conn);

    let second = Setup {
        server: tls_server("tls/server2.pem", "tls/server2.key"),
        ..Setup::default()
    };
    std::fs::write(&path, config_text(&dir, &mock.url(), &second)).unwrap();
    gw.signal("HUP");
    let new_cert = certs("tls/server2.pem")[0].clone();
    eventually_or(
        "a new handshake is served server2.pem",
        || gw.stderr_text(),
        || {
            let new_cert = new_cert.clone();
            async move { tls_connect(gw.addr).await.1 == new_cert }
        },
    )
    .await;
    assert_eq!(
        metric_value(
            &get_text(gw.admin, "/metrics").await,
            "smh_gateway_config_reloads_total{result=\"success\"}"
        ),
        1.0
    );

    // The connection opened before the reload still serves, on its old session.
    let req = Request::post(renew_target())
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("old connection");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_a_fixed_key_is_refused_and_the_old_config_keeps_serving() {
    let mock = smh_gateway::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("reload-refused");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, &mock.url(), &Setup::default())).unwrap();
    let gw = BinGateway::spawn(&path, &[]);
    let url = format!("http://{}{}", gw.addr, renew_target());
    let renew = || send(Method::POST, &url, &[], Bytes::new());
    assert_eq!(renew().await.status, 200);

    // Another port, and (in the same file) lib1 no longer served: the whole file
    // is refused, so lib1 still is.
    let only_lib2 = Setup {
        rest: "[[libraries]]\nid = \"lib2\"\n".into(),
        ..Setup::default()
    };
    let text = config_text(&dir, &mock.url(), &only_lib2).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
        1,
    );
    std::fs::write(&path, text).unwrap();
    gw.signal("HUP");
    let refused = "smh_gateway_config_reloads_total{result=\"refused\"}";
    eventually("the refusal is counted", || async {
        metric_value(&get_text(gw.admin, "/metrics").await, refused) == 1.0
    })
    .await;
    let metrics = get_text(gw.admin, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "smh_gateway_config_reloads_total{result=\"success\"}"
        ),
        0.0
    );
    let log = gw.stderr_text();
    assert!(
        log.contains("reload refused") && log.contains("server.listen changed"),
        "{log}"
    );
    assert_eq!(renew().await.status, 200, "the old config stopped serving");

    // Back to the start's listen: the rest of the file now applies.
    std::fs::write(&path, config_text(&dir, &mock.url(), &only_lib2)).unwrap();
    gw.signal("HUP");
    eventually("the valid reload applies", || async {
        renew().await.status == 404
    })
    .await;
}

#[tokio::test]
async fn listen_backlog_and_cache_backend_changes_are_refused_in_process() {
    let gw = start().await;
    for (server, rest, key) in [
        ("listen_backlog = 16", "", "server.listen_backlog"),
        ("", "[cache]\nbackend = \"redis\"\n", "cache.backend"),
        (
            "",
            "[cache]\nredis_url = \"redis://10.0.0.1:6379\"\n",
            "cache.redis_url",
        ),
    ] {
        let setup = Setup {
            server: server.into(),
            rest: rest.into(),
            ..Setup::default()
        };
        match gw.reload(&setup) {
            Err(ReloadError::Refused(keys)) => assert_eq!(keys, vec![key]),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(
        gw.metric("smh_gateway_config_reloads_total{result=\"refused\"}")
            .await,
        3.0
    );
    // An invalid file is a failure, not a refusal.
    let bad = Setup {
        server: "max_in_flight = 0".into(),
        ..Setup::default()
    };
    assert!(matches!(gw.reload(&bad), Err(ReloadError::Invalid(_))));
    assert_eq!(
        gw.metric("smh_gateway_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.renew(&format!("access_token={}", token())).await.status,
        200
    );
}

#[tokio::test]
async fn a_larger_max_header_bytes_applies_to_connections_after_the_reload() {
    let small = Setup {
        server: "max_header_bytes = 1024\nmax_uri_bytes = 256".into(),
        ..Setup::default()
    };
    let gw = start_with(small).await;
    // Larger than hyper's buffer at the start's limits (1024 + 256 + 8192).
    let big = "a".repeat(20_000);
    let target = renew_target();
    let before = gw
        .request(Method::POST, &target, &[("x-big", big.as_str())], b"")
        .await;
    assert_eq!(before.status, 431);

    gw.reload(&Setup {
        server: "max_header_bytes = 32768\nmax_uri_bytes = 256".into(),
        ..Setup::default()
    })
    .unwrap();
    let after = gw
        .request(Method::POST, &target, &[("x-big", big.as_str())], b"")
        .await;
    assert_eq!(after.status, 200, "{}", after.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_larger_max_in_flight_applies_at_once() {
    let gw = start_with(Setup {
        server: "max_in_flight = 1".into(),
        ..Setup::default()
    })
    .await;
    let gate = Gate::new();
    gw.mock.set_behaviour(Behaviour::Hold(gate.clone()));
    let url = gw.url(&renew_target());
    let held = |url: String| {
        tokio::spawn(async move { send(Method::POST, &url, &[], Bytes::new()).await })
    };
    let first = held(url.clone());
    eventually("the first request is upstream", || async {
        gw.mock.count() == 1
    })
    .await;
    // Twice: a refusal must not give back a slot it never held.
    for _ in 0..2 {
        let refused = gw.request(Method::POST, &renew_target(), &[], b"").await;
        refused.assert_error(503, "ServerOverloaded");
    }

    gw.reload(&Setup {
        server: "max_in_flight = 2".into(),
        ..Setup::default()
    })
    .unwrap();
    // A different upload: not coalesced with the first.
    let second = held(gw.url(&format!(
        "/api/v1/file/lib1/-/ck2?renew&access_token={}",
        token()
    )));
    eventually("the second request is upstream", || async {
        gw.mock.count() == 2
    })
    .await;
    // Two in flight now: the new capacity is reached.
    gw.request(Method::POST, &renew_target(), &[], b"")
        .await
        .assert_error(503, "ServerOverloaded");
    gate.open();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
}

/// An https upstream that requires a client certificate signed by the second test
/// CA; counts the requests it answered.
async fn mtls_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let mut client_roots = rustls::RootCertStore::empty();
    for cert in certs("tls/ca2.pem") {
        client_roots.add(cert).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider(),
    )
    .build()
    .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("tls/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("tls/server.pem"), key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"domain\":\"smh\"}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, answered)
}

#[tokio::test]
async fn the_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let (upstream, answered) = mtls_upstream().await;
    let ca = format!("ca_file = \"{}\"", fixture("tls/ca.pem").display());
    let without = Setup {
        upstream_url: Some(format!("https://localhost:{}", upstream.port())),
        upstream: ca.clone(),
        ..Setup::default()
    };
    let gw = start_with(without.clone()).await;
    let query = format!("access_token={}", token());
    gw.renew(&query)
        .await
        .assert_error(502, "UpstreamUnavailable");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A reload builds a new upstream client, now with the certificate.
    let with = Setup {
        upstream: format!(
            "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            fixture("tls/client.pem").display(),
            fixture("tls/client.key").display()
        ),
        ..without
    };
    gw.reload(&with).unwrap();
    let r = gw.renew(&query).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn check_names_the_client_certificate_keys() {
    let dir = temp_dir("client-cert-check");
    let path = dir.join("gateway.toml");
    let cases = [
        // A key that is not the certificate's.
        (
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                fixture("tls/client.pem").display(),
                fixture("tls/server2.key").display()
            ),
            "upstream.client_key",
        ),
        (
            format!("client_cert = \"{}\"", fixture("tls/client.pem").display()),
            "upstream.client_key",
        ),
        (
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                dir.join("missing.pem").display(),
                fixture("tls/client.key").display()
            ),
            "upstream.client_cert",
        ),
    ];
    for (upstream, key) in cases {
        let setup = Setup {
            upstream,
            ..Setup::default()
        };
        std::fs::write(&path, config_text(&dir, "https://localhost:1", &setup)).unwrap();
        let out = bin()
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

#[test]
fn listen_backlog_is_validated() {
    let dir = temp_dir("backlog");
    let parse = |value: &str| {
        let setup = Setup {
            server: format!("listen_backlog = {value}"),
            ..Setup::default()
        };
        Config::parse(
            &dir.join("gateway.toml"),
            &config_text(&dir, "http://127.0.0.1:1", &setup),
        )
    };
    assert_eq!(parse("100").unwrap().server.listen_backlog, 100);
    for bad in ["0", "65536", "-1"] {
        let e = parse(bad).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("server.listen_backlog"),
            "{bad}: {e}"
        );
    }
    let default = Config::parse(
        &dir.join("gateway.toml"),
        &config_text(&dir, "http://127.0.0.1:1", &Setup::default()),
    )
    .unwrap();
    assert_eq!(default.server.listen_backlog, 4096);
}

/// Linux shows a listening socket's backlog as its Send-Q in `ss -ltn`.
#[tokio::test]
async fn the_listener_is_bound_with_listen_backlog() {
    let gw = start_with(Setup {
        server: "listen_backlog = 37".into(),
        ..Setup::default()
    })
    .await;
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", gw.addr.port())])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, vec!["37"], "{text}");
}

#[tokio::test]
async fn stopping_the_gateway_stops_its_background_tasks() {
    let gw = start().await;
    let gateway = gw.gateway.clone();
    assert!(
        gateway.tasks().running() >= 1,
        "the cache sweeper runs as a registered task"
    );
    gw.stop().await;
    assert_eq!(gateway.tasks().running(), 0);
    assert!(gateway.tasks().is_stopping());
}

/// A reload that leaves alone how upstream connections are opened (URL, connect
/// timeout, no TLS files) keeps the pooled ones: SMH sees no new connection. One
/// that changes it opens new ones.
#[tokio::test]
async fn a_reload_keeps_pooled_upstream_connections_unless_how_they_are_opened_changed() {
    let gw = start_with(Setup::default()).await;
    let renew = |ck: &str| format!("/api/v1/file/lib1/-/{ck}?renew&access_token={}", token());
    gw.post(&renew("ck-a")).await;
    assert_eq!(gw.mock.count(), 1);
    assert_eq!(gw.mock.connections(), 1);

    gw.reload(&Setup {
        server: "max_in_flight = 100".into(),
        ..Setup::default()
    })
    .unwrap();
    gw.post(&renew("ck-b")).await;
    assert_eq!(gw.mock.count(), 2);
    assert_eq!(gw.mock.connections(), 1, "the pooled connection was kept");

    gw.reload(&Setup {
        upstream: "connect_timeout = \"7s\"".into(),
        ..Setup::default()
    })
    .unwrap();
    gw.post(&renew("ck-c")).await;
    assert_eq!(gw.mock.count(), 3);
    assert_eq!(
        gw.mock.connections(),
        2,
        "a new connection for the new settings"
    );
}
