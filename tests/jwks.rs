//! Keys from identity providers (SPEC §14): a gateway whose keys come from JWKS
//! URLs served by a tiny identity provider of the test's own (on 127.0.0.1:0), which
//! counts its fetches and can be switched to other keys or to failing. Every wait
//! polls for a count or a status, with a generous deadline.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use common::{Setup, TestGateway, claims, fixture, send};

// ---- the identity provider ----

/// What the provider answers: a JWKS, or 500.
#[derive(Default)]
struct IdpState {
    jwks: Option<String>,
    fetches: usize,
}

#[derive(Clone)]
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    /// Starts answering 500 until [`Idp::serve`] is called.
    async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(IdpState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let mut s = state.lock().unwrap();
                        s.fetches += 1;
                        let resp = match &s.jwks {
                            Some(body) => Response::new(Full::new(Bytes::from(body.clone()))),
                            None => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                r
                            }
                        };
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Serves these JWKs from now on; returns the fetch count at the switch.
    fn serve(&self, keys: &[Value]) -> usize {
        let mut s = self.state.lock().unwrap();
        s.jwks = Some(json!({ "keys": keys }).to_string());
        s.fetches
    }

    /// Answers 500 from now on; returns the fetch count at the switch.
    fn fail(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.jwks = None;
        s.fetches
    }

    fn fetches(&self) -> usize {
        self.state.lock().unwrap().fetches
    }

    /// Waits until more than `n` fetches were made.
    async fn wait_fetches_over(&self, n: usize) {
        poll(&format!("more than {n} fetches"), || async {
            self.fetches() > n
        })
        .await;
    }

    /// Waits until a fetch that started after a switch (made at `count`) has been
    /// applied: the refresher fetches one set at a time, so once a second fetch has
    /// begun, the first one's answer is in force.
    async fn wait_applied_since(&self, count: usize) {
        self.wait_fetches_over(count + 1).await;
    }
}

// ---- keys and tokens ----

/// A test signing key: the fixture pair for `alg`, under `kid`.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    fn rsa(kid: &str) -> TestKey {
        let pem = std::fs::read(fixture("keys/rsa.key")).unwrap();
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn ec(kid: &str) -> TestKey {
        let pem = std::fs::read(fixture("keys/ec256.key")).unwrap();
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(&pem).unwrap(),
        }
    }

    /// Its public JWK, as an identity provider publishes it.
    fn jwk(&self) -> Value {
        let mut v = serde_json::to_value(Jwk::from_encoding_key(&self.encoding, self.alg).unwrap())
            .unwrap();
        v["kid"] = json!(self.kid);
        v["use"] = json!("sig");
        v
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// A valid upload token for lib1, with this `iss` (or none); each one distinct,
    /// so that a new token is never a verified-token cache hit.
    fn token(&self, iss: Option<&str>) -> String {
        static NONCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut c = claims();
        c["jti"] = json!(NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        self.sign(&c)
    }

    /// The same key under another kid.
    fn as_kid(&self, kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_string(),
            alg: self.alg,
            encoding: self.encoding.clone(),
        }
    }
}

// ---- the gateway ----

/// `[auth]` lines and `[[auth.jwks_urls]]` tables for the test config.
fn setup(auth: &str, urls: &[String]) -> Setup {
    Setup {
        auth: auth.to_string(),
        rest: urls.concat(),
        ..Setup::default()
    }
}

fn jwks_url(url: &str, extra: &str) -> String {
    format!("[[auth.jwks_urls]]\nurl = \"{url}\"\n{extra}\n")
}

async fn status_of(gw: &TestGateway, token: &str) -> u16 {
    gw.renew(&format!("access_token={token}"))
        .await
        .status
        .as_u16()
}

async fn readyz(gw: &TestGateway) -> u16 {
    send(
        Method::GET,
        &format!("http://{}/readyz", gw.admin),
        &[],
        Bytes::new(),
    )
    .await
    .status
    .as_u16()
}

async fn poll<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(gw: &TestGateway, want: u16) {
    poll(&format!("/readyz {want}"), || async {
        readyz(gw).await == want
    })
    .await;
}

// ---- the tests ----

#[tokio::test]
async fn readyz_is_503_until_every_jwks_url_has_answered_then_200() {
    let (a, b) = (Idp::start().await, Idp::start().await);
    let key = TestKey::rsa("a1");
    a.serve(&[key.jwk()]);
    // b answers 500 until switched.
    let gw = common::start_with(setup(
        "",
        &[
            jwks_url(&a.url(), "refresh = \"200ms\""),
            jwks_url(&b.url(), "refresh = \"200ms\""),
        ],
    ))
    .await;
    b.wait_fetches_over(0).await;
    assert_eq!(readyz(&gw).await, 503, "b has not answered yet");
    // a's keys serve already.
    assert_eq!(status_of(&gw, &key.token(None)).await, 200);

    b.serve(&[TestKey::ec("b1").jwk()]);
    wait_ready(&gw, 200).await;
    assert_eq!(status_of(&gw, &TestKey::ec("b1").token(None)).await, 200);
    assert_eq!(gw.metric("smh_gateway_jwks_keys").await, 2.0);
    assert!(
        gw.metric("smh_gateway_jwks_refresh_total{result=\"failure\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.metric("smh_gateway_jwks_refresh_total{result=\"success\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn check_validates_jwks_urls_but_fetches_nothing() {
    let idp = Idp::start().await;
    idp.serve(&[TestKey::rsa("a1").jwk()]);
    let dir = common::temp_dir("jwks-check");
    let path = dir.join("gateway.toml");
    let text = common::config_text(
        &dir,
        "http://127.0.0.1:9",
        &setup("", &[jwks_url(&idp.url(), "")]),
    );
    std::fs::write(&path, &text).unwrap();
    let out = common::bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Over plain http to another host: refused, naming the key.
    let bad = text.replace(&idp.url(), "http://idp.example/jwks");
    std::fs::write(&path, bad).unwrap();
    let out = common::bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.jwks_urls[0].url"), "{stderr}");
    assert_eq!(idp.fetches(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_new_kid_verifies_after_the_refetch_it_asks_for_without_a_restart() {
    let idp = Idp::start().await;
    let old = TestKey::rsa("2026-old");
    let new = TestKey::ec("2026-new");
    idp.serve(&[old.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"10ms\"",
        &[jwks_url(&idp.url(), "refresh = \"1h\"")],
    ))
    .await;
    wait_ready(&gw, 200).await;
    assert_eq!(status_of(&gw, &old.token(None)).await, 200);
    let before = idp.serve(&[old.jwk(), new.jwk()]);
    // The refresh is an hour away: the unknown kid itself fetches the new set.
    assert_eq!(status_of(&gw, &new.token(None)).await, 200);
    assert_eq!(idp.fetches(), before + 1);
    assert_eq!(status_of(&gw, &old.token(None)).await, 200);
}

#[tokio::test]
async fn a_storm_of_random_kids_makes_at_most_one_fetch_per_cooldown() {
    let idp = Idp::start().await;
    let key = TestKey::rsa("real");
    idp.serve(&[key.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"1h\"",
        &[jwks_url(&idp.url(), "refresh = \"1h\"")],
    ))
    .await;
    wait_ready(&gw, 200).await;
    let start = idp.fetches();
    assert_eq!(start, 1);
    for wave in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let token = key.as_kid(&format!("random-{wave}-{i}")).token(None);
            let url = gw.url(&format!(
                "/api/v1/file/lib1/-/ck1?renew&access_token={token}"
            ));
            tasks.push(tokio::spawn(async move {
                send(Method::POST, &url, &[], Bytes::new()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().assert_error(403, "InvalidAccessToken");
        }
        assert_eq!(idp.fetches(), start + 1, "wave {wave}");
    }
    assert_eq!(status_of(&gw, &key.token(None)).await, 200);
}

#[tokio::test]
async fn a_key_removed_from_the_set_refuses_its_cached_tokens_at_once() {
    let idp = Idp::start().await;
    let leaving = TestKey::rsa("leaving");
    let staying = TestKey::ec("staying");
    idp.serve(&[leaving.jwk(), staying.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"1h\"",
        &[jwks_url(&idp.url(), "refresh = \"200ms\"")],
    ))
    .await;
    wait_ready(&gw, 200).await;
    let token = leaving.token(None);
    // Verified, then answered from the verified-token cache.
    assert_eq!(status_of(&gw, &token).await, 200);
    assert_eq!(status_of(&gw, &token).await, 200);

    let at = idp.serve(&[staying.jwk()]);
    idp.wait_applied_since(at).await;
    gw.renew(&format!("access_token={token}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(status_of(&gw, &staying.token(None)).await, 200);
    assert!(
        gw.metric("smh_gateway_auth_failures_total{reason=\"unknown_key\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_failing_url_serves_its_last_set_until_max_stale_then_refuses_until_it_answers() {
    let idp = Idp::start().await;
    let key = TestKey::rsa("k");
    idp.serve(&[key.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"1h\"\njwks_max_stale = \"5s\"",
        &[jwks_url(&idp.url(), "refresh = \"200ms\"")],
    ))
    .await;
    wait_ready(&gw, 200).await;
    let token = key.token(None);
    assert_eq!(status_of(&gw, &token).await, 200);

    // Refreshes fail: the last good set keeps serving (stale-if-error) ...
    let at = idp.fail();
    idp.wait_applied_since(at).await;
    assert_eq!(status_of(&gw, &token).await, 200, "within max_stale");
    assert_eq!(readyz(&gw).await, 200);
    // ... until max_stale after its last success: then its tokens are refused,
    // cached ones too, and the gateway is not ready.
    wait_ready(&gw, 503).await;
    gw.renew(&format!("access_token={token}"))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(status_of(&gw, &key.token(None)).await, 403, "uncached too");
    assert!(
        gw.metric("smh_gateway_auth_failures_total{reason=\"stale_keys\"}")
            .await
            >= 2.0
    );
    assert!(gw.metric("smh_gateway_jwks_age_seconds").await >= 5.0);

    // A fetch that succeeds again serves again.
    idp.serve(&[key.jwk()]);
    wait_ready(&gw, 200).await;
    assert_eq!(status_of(&gw, &token).await, 200);
}

#[tokio::test]
async fn a_key_from_an_issuer_bound_url_verifies_only_that_issuers_tokens() {
    let (x, y) = (Idp::start().await, Idp::start().await);
    let from_x = TestKey::rsa("x1");
    let from_y = TestKey::ec("y1");
    x.serve(&[from_x.jwk()]);
    y.serve(&[from_y.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"1h\"",
        &[
            jwks_url(&x.url(), "issuer = \"https://x.example/\""),
            jwks_url(&y.url(), "issuer = \"https://y.example/\""),
        ],
    ))
    .await;
    wait_ready(&gw, 200).await;
    assert_eq!(
        status_of(&gw, &from_x.token(Some("https://x.example/"))).await,
        200
    );
    assert_eq!(
        status_of(&gw, &from_y.token(Some("https://y.example/"))).await,
        200
    );
    // X's key, Y's issuer (or none): not a key for that token.
    for iss in [Some("https://y.example/"), None, Some("https://z.example/")] {
        gw.renew(&format!("access_token={}", from_x.token(iss)))
            .await
            .assert_error(403, "InvalidAccessToken");
    }
}

#[tokio::test]
async fn a_reload_that_keeps_the_jwks_urls_keeps_their_sets_and_readiness() {
    let idp = Idp::start().await;
    let key = TestKey::rsa("k");
    idp.serve(&[key.jwk()]);
    let gw = common::start_with(setup(
        "jwks_refetch_cooldown = \"1h\"",
        &[jwks_url(&idp.url(), "refresh = \"1h\"")],
    ))
    .await;
    wait_ready(&gw, 200).await;
    let fetches = idp.fetches();
    let path = gw.dir.join("gateway.toml");
    let config = smh_gateway::config::Config::load(&path).unwrap();
    let settings = smh_gateway::proxy::Settings::from_config(config).unwrap();
    gw.gateway.replace_settings(settings);
    assert_eq!(readyz(&gw).await, 200, "no flap");
    assert_eq!(status_of(&gw, &key.token(None)).await, 200);
    assert_eq!(idp.fetches(), fetches, "nothing refetched");
}
