//! `upstream.credential = "library_secret"` (SPEC §12): the gateway mints SMH tokens
//! itself with the library secret, against the mock SMH, which in this mode issues
//! tokens and checks every business request's token and grants like SMH. Minting
//! once and reusing, one shared fetch for a burst, one token per user, grants as the
//! intersection, a revoked token replaced and the request resent, failures as 502,
//! refresh ahead of expiry, sharing through Redis, and no secret or SMH token in any
//! output of the real binary.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::json;
use smh_gateway::mock_upstream::MockUpstream;

const LIB_SECRET: &str = "lib1-smh-library-secret-0123456789";

/// The gateway config's extra tables for this mode; the secret sits in a file.
fn managed_setup(dir: &Path, more: &str) -> Setup {
    let secret = dir.join("lib1.secret");
    std::fs::write(&secret, format!("{LIB_SECRET}\n")).unwrap();
    Setup {
        upstream: "credential = \"library_secret\"\ntoken_period = \"10m\"\n".into(),
        rest: format!(
            "[[libraries]]\nid = \"lib1\"\nsecret_file = \"{}\"\n\n{more}",
            secret.display()
        ),
        ..Setup::default()
    }
}

async fn mock() -> MockUpstream {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    mock.set_library_secret("lib1", LIB_SECRET);
    mock
}

async fn gateway_against(mock: MockUpstream, more: &str) -> (TestGateway, std::path::PathBuf) {
    let dir = temp_dir("cred");
    let gw = start_against(mock, managed_setup(&dir, more)).await;
    (gw, dir)
}

async fn gateway() -> TestGateway {
    gateway_against(mock().await, "").await.0
}

/// A caller token for lib1 with these permissions and user (`sub`).
fn caller(permissions: &[&str], user: Option<&str>) -> String {
    token_with(json!({ "permissions": permissions, "sub": user }))
}

async fn renew(gw: &TestGateway, key: &str, token: &str) -> Resp {
    gw.post(&format!(
        "/api/v1/file/lib1/-/{key}?renew&access_token={token}"
    ))
    .await
}

/// The access_token and user_id the upstream received on its last business call.
fn last_upstream_credential(gw: &TestGateway) -> (String, Option<String>) {
    let q = last_query(gw);
    let get = |k: &str| {
        q.split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    (get("access_token").unwrap_or_default(), get("user_id"))
}

async fn metric_fetches(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(&format!(
        "smh_gateway_upstream_token_fetches_total{{result=\"{result}\"}}"
    ))
    .await
}

#[tokio::test]
async fn the_first_request_mints_a_token_and_later_ones_reuse_it() {
    let gw = gateway().await;
    let jwt = caller(&["upload_file"], Some("alice"));
    for key in ["ck1", "ck2", "ck3"] {
        let r = renew(&gw, key, &jwt).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(gw.mock.token_calls(), 1);
    let issued = gw.mock.issued_tokens();
    assert_eq!(issued.len(), 1);
    let (sent, user_id) = last_upstream_credential(&gw);
    assert_eq!(
        sent, issued[0].token,
        "the SMH token goes upstream, not the JWT"
    );
    assert_eq!(user_id, None, "the token carries the user: no user_id");
    assert_eq!(issued[0].user.as_deref(), Some("alice"));
    assert_eq!(issued[0].period, Some(600), "token_period in whole seconds");
    assert_eq!(metric_fetches(&gw, "minted").await, 1.0);
    assert_eq!(gw.metric("smh_gateway_upstream_tokens").await, 1.0);
}

#[tokio::test]
async fn twenty_concurrent_first_requests_mint_one_token() {
    let gw = gateway().await;
    let jwt = caller(&["upload_file"], Some("alice"));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = gw.url(&format!(
                "/api/v1/file/lib1/-/ck{i}?renew&access_token={jwt}"
            ));
            tokio::spawn(async move { send(Method::POST, &url, &[], Bytes::new()).await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(gw.mock.token_calls(), 1);
    assert_eq!(metric_fetches(&gw, "minted").await, 1.0);
}

#[tokio::test]
async fn two_users_get_two_tokens() {
    let gw = gateway().await;
    let alice = caller(&["upload_file"], Some("alice"));
    let bob = caller(&["upload_file"], Some("bob"));
    assert_eq!(renew(&gw, "ck1", &alice).await.status, 200);
    let (for_alice, _) = last_upstream_credential(&gw);
    assert_eq!(renew(&gw, "ck1", &bob).await.status, 200);
    let (for_bob, _) = last_upstream_credential(&gw);
    assert_ne!(for_alice, for_bob);
    let mut users: Vec<_> = gw
        .mock
        .issued_tokens()
        .into_iter()
        .map(|t| t.user)
        .collect();
    users.sort();
    assert_eq!(users, [Some("alice".to_string()), Some("bob".to_string())]);
}

#[tokio::test]
async fn an_admin_passing_user_id_gets_a_token_for_that_user() {
    let gw = gateway().await;
    let admin = caller(&["admin"], None);
    let r = gw
        .post(&format!(
            "/api/v1/file/lib1/-/ck1?renew&access_token={admin}&user_id=carol"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let issued = gw.mock.issued_tokens();
    assert_eq!(issued[0].user.as_deref(), Some("carol"));
    assert_eq!(issued[0].grants, ["admin"]);
    assert_eq!(last_upstream_credential(&gw).1, None);
}

#[tokio::test]
async fn grants_are_the_rows_permissions_the_caller_holds() {
    let gw = gateway().await;
    // delete_file is held but renew does not need it; renew lists upload_file
    // before begin_upload.
    let jwt = caller(&["begin_upload", "delete_file", "upload_file"], Some("u"));
    assert_eq!(renew(&gw, "ck1", &jwt).await.status, 200);
    assert_eq!(
        gw.mock.issued_tokens()[0].grants,
        ["upload_file", "begin_upload"]
    );
    // A read needs no grant: its token is read-only (and a new identity).
    let list = gw
        .request(
            Method::GET,
            &format!("/api/v1/directory/lib1/-/?by-marker=1&access_token={jwt}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let issued = gw.mock.issued_tokens();
    assert_eq!(issued.len(), 2);
    assert!(issued[1].grants.is_empty(), "{:?}", issued[1]);
    // Delete with that caller: a token with delete_file only; the mock (like SMH)
    // would refuse the renew token for it.
    let del = gw
        .request(
            Method::DELETE,
            &format!("/api/v1/file/lib1/-/nothing.txt?access_token={jwt}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(
        (del.status.as_u16(), del.code()),
        (404, "FileNotFound".into())
    );
    assert_eq!(gw.mock.issued_tokens()[2].grants, ["delete_file"]);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_request_sent_again() {
    let gw = gateway().await;
    let jwt = caller(&["upload_file", "create_directory"], Some("alice"));
    assert_eq!(renew(&gw, "ck1", &jwt).await.status, 200);
    assert_eq!(gw.mock.revoke_tokens(), 1);
    let r = renew(&gw, "ck2", &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.mock.token_calls(), 2);
    assert_eq!(
        gw.metric("smh_gateway_upstream_token_refused_total").await,
        1.0
    );

    // A streamed row with a body: the same, and the body is sent again whole.
    let mkdir = |name: &str| format!("/api/v1/directory/lib1/-/{name}?access_token={jwt}");
    let first = gw.request(Method::PUT, &mkdir("a"), &[], b"{}").await;
    assert_eq!(first.status, 201, "{}", first.text());
    gw.mock.revoke_tokens();
    let before = gw.mock.count();
    let second = gw.request(Method::PUT, &mkdir("b"), &[], b"{}").await;
    assert_eq!(second.status, 201, "{}", second.text());
    let sent: Vec<_> = gw.mock.received()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/directory/"))
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(sent, [Bytes::from_static(b"{}"), Bytes::from_static(b"{}")]);
}

#[tokio::test]
async fn a_second_refusal_is_502_never_invalid_access_token() {
    let gw = gateway().await;
    gw.mock.set_refuse_all_tokens(true);
    let jwt = caller(&["upload_file", "create_directory"], None);
    renew(&gw, "ck1", &jwt)
        .await
        .assert_error(502, "UpstreamUnavailable");
    gw.request(
        Method::PUT,
        &format!("/api/v1/directory/lib1/-/d?access_token={jwt}"),
        &[],
        b"{}",
    )
    .await
    .assert_error(502, "UpstreamUnavailable");
    assert_eq!(
        gw.metric("smh_gateway_upstream_errors_total{kind=\"credential\"}")
            .await,
        2.0
    );
    // Refused, each time: once the first token, once the fresh one.
    assert_eq!(
        gw.metric("smh_gateway_upstream_token_refused_total").await,
        4.0
    );
    // An SMH 403 of another kind passes through as SMH sent it.
    gw.mock.set_refuse_all_tokens(false);
    let other = caller(&["upload_file"], None);
    let r = gw
        .request(
            Method::PUT,
            &format!("/api/v1/directory/lib1/-/d?access_token={other}"),
            &[],
            b"{}",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.code(), "NoPermission");
}

#[tokio::test]
async fn the_token_api_down_is_502_and_the_next_request_tries_again() {
    let gw = gateway().await;
    gw.mock.set_token_api_down(true);
    let jwt = caller(&["upload_file"], None);
    renew(&gw, "ck1", &jwt)
        .await
        .assert_error(502, "UpstreamUnavailable");
    assert_eq!(metric_fetches(&gw, "failure").await, 1.0);
    assert_eq!(
        gw.mock.count(),
        gw.mock.token_calls(),
        "nothing but token calls"
    );
    gw.mock.set_token_api_down(false);
    assert_eq!(renew(&gw, "ck1", &jwt).await.status, 200);
    assert_eq!(metric_fetches(&gw, "minted").await, 1.0);
}

#[tokio::test]
async fn a_wrong_library_secret_is_502() {
    let mock = mock().await;
    mock.set_library_secret("lib1", "another-secret");
    let (gw, _dir) = gateway_against(mock, "").await;
    renew(&gw, "ck1", &caller(&["upload_file"], None))
        .await
        .assert_error(502, "UpstreamUnavailable");
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_while_requests_keep_the_current_one() {
    let mock = mock().await;
    // 20 s: used for 10 s, refreshed from 5 s on.
    mock.set_token_expires_in(Some(20));
    let (gw, _dir) = gateway_against(mock, "").await;
    let jwt = caller(&["upload_file"], None);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while metric_fetches(&gw, "refreshed").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh within 60 s"
        );
        let r = renew(&gw, &format!("ck{n}"), &jwt).await;
        assert_eq!(r.status, 200, "{}", r.text());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_fetches(&gw, "minted").await,
        1.0,
        "no request waited after the first"
    );
    // The next requests use the refreshed token.
    let fresh = gw.mock.issued_tokens().last().unwrap().token.clone();
    let mut used_fresh = false;
    for i in 0..100 {
        renew(&gw, &format!("after{i}"), &jwt).await;
        if last_upstream_credential(&gw).0 == fresh {
            used_fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(used_fresh);
}

#[tokio::test]
async fn a_secret_rotated_and_reloaded_gets_new_tokens() {
    let (gw, dir) = gateway_against(mock().await, "").await;
    let jwt = caller(&["upload_file"], None);
    assert_eq!(renew(&gw, "ck1", &jwt).await.status, 200);
    let rotated = "lib1-rotated-secret-9876543210";
    std::fs::write(dir.join("lib1.secret"), rotated).unwrap();
    gw.mock.set_library_secret("lib1", rotated);
    // What SIGHUP does: the config and its secrets read again, swapped in.
    let config = smh_gateway::config::Config::load(&gw.dir.join("gateway.toml")).unwrap();
    gw.gateway
        .replace_settings(smh_gateway::proxy::Settings::from_config(config).unwrap());
    assert_eq!(renew(&gw, "ck2", &jwt).await.status, 200);
    assert_eq!(gw.mock.token_calls(), 2, "a new secret, a new token");
    let last_call = gw
        .mock
        .received()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/token")
        .unwrap();
    assert!(last_call.query.unwrap().contains(rotated));
}

#[tokio::test]
async fn the_renew_cache_survives_a_new_token() {
    let gw = gateway().await;
    let jwt = caller(&["upload_file"], None);
    assert_eq!(renew(&gw, "ck1", &jwt).await.headers["x-cache"], "MISS");
    gw.mock.revoke_tokens();
    // A new token for another upload...
    assert_eq!(renew(&gw, "ck2", &jwt).await.status, 200);
    assert_eq!(gw.mock.token_calls(), 2);
    // ...and the first upload's entry is still there.
    assert_eq!(renew(&gw, "ck1", &jwt).await.headers["x-cache"], "HIT");
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_their_tokens() {
    let redis = RedisServer::start();
    let more = format!(
        "[cache]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let mock = mock().await;
    let (a, _da) = gateway_against(mock.clone(), &more).await;
    let (b, _db) = gateway_against(mock.clone(), &more).await;
    let jwt = caller(&["upload_file"], Some("alice"));
    assert_eq!(renew(&a, "ck1", &jwt).await.status, 200);
    assert_eq!(renew(&b, "ck2", &jwt).await.status, 200);
    assert_eq!(mock.token_calls(), 1, "b took a's token from Redis");
    assert_eq!(metric_fetches(&b, "shared").await, 1.0);
    // A refused token is dropped for both.
    mock.revoke_tokens();
    assert_eq!(renew(&a, "ck3", &jwt).await.status, 200);
    assert_eq!(mock.token_calls(), 2);
    assert_eq!(renew(&b, "ck4", &jwt).await.status, 200);
    assert_eq!(mock.token_calls(), 2, "b took a's new token from Redis");
}

/// The real binary, stdout (access log) and stderr captured in files.
struct Captured {
    child: std::process::Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Captured {
    fn text(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{out}\n{err}")
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_library_secret_and_smh_tokens_never_appear_in_any_output() {
    let mock = mock().await;
    let dir = temp_dir("cred-bin");
    let setup = managed_setup(&dir, "");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(&dir, &mock.url(), &setup)).unwrap();

    let check = bin()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check_text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let run = Captured {
        child,
        stdout,
        stderr,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (addr, admin) = loop {
        let text = std::fs::read_to_string(&run.stderr).unwrap_or_default();
        if let Some(rest) = text.split("listening on ").nth(1) {
            let mut words = rest.split([' ', '(', ')', '"']).filter(|w| w.contains(':'));
            let addr: std::net::SocketAddr = words.next().unwrap().parse().unwrap();
            let admin: std::net::SocketAddr =
                words.find_map(|w| w.parse().ok()).expect("admin address");
            break (addr, admin);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not start: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let jwt = caller(&["upload_file"], Some("alice"));
    let base = format!("http://{addr}/api/v1/file/lib1/-");
    let mut bodies = String::new();
    let mut call = async |target: String| {
        let r = send(Method::POST, &target, &[], Bytes::new()).await;
        bodies.push_str(&r.text());
        r.status
    };
    assert_eq!(
        call(format!("{base}/ck1?renew&access_token={jwt}")).await,
        200
    );
    mock.revoke_tokens();
    assert_eq!(
        call(format!("{base}/ck2?renew&access_token={jwt}")).await,
        200
    );
    mock.set_refuse_all_tokens(true);
    assert_eq!(
        call(format!("{base}/ck3?renew&access_token={jwt}")).await,
        502
    );
    mock.set_refuse_all_tokens(false);
    mock.set_token_api_down(true);
    mock.revoke_tokens();
    assert_eq!(
        call(format!("{base}/ck4?renew&access_token={jwt}")).await,
        502
    );
    // A caller trying to pass a library secret itself is refused without echo.
    assert_eq!(
        call(format!(
            "{base}/ck5?renew&access_token={jwt}&library_secret={LIB_SECRET}"
        ))
        .await,
        400
    );
    let metrics = common::metrics_page(admin).await.text();
    assert!(metrics.contains("smh_gateway_upstream_token_fetches_total{result=\"failure\"} 1"));

    // Every access-log line is written once the request is answered; wait for all 5.
    until("five access-log lines", || {
        std::fs::read_to_string(&run.stdout)
            .unwrap_or_default()
            .lines()
            .count()
            >= 5
    })
    .await;
    let outputs = format!("{}\n{check_text}\n{metrics}\n{bodies}", run.text());
    let tokens = mock.issued_tokens();
    assert!(tokens.len() >= 3, "{tokens:?}");
    assert!(!outputs.contains(LIB_SECRET), "the library secret leaked");
    for t in tokens {
        assert!(!outputs.contains(&t.token), "an SMH token leaked");
    }
    assert!(outputs.contains("upstream_credential"), "{outputs}");
}

#[tokio::test]
async fn check_names_the_library_without_a_secret() {
    let dir = temp_dir("cred-check");
    let text = config_text(
        &dir,
        "http://127.0.0.1:9",
        &Setup {
            upstream: "credential = \"library_secret\"\n".into(),
            rest: "[[libraries]]\nid = \"lib1\"\nsecret_env = \"SMH_GW_TEST_UNSET_SECRET\"\n\n[[libraries]]\nid = \"lib2\"\n".into(),
            ..Setup::default()
        },
    );
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("libraries[1].secret_env"), "{err}");

    let text = config_text(
        &dir,
        "http://127.0.0.1:9",
        &Setup {
            upstream: "credential = \"library_secret\"\n".into(),
            rest: "[[libraries]]\nid = \"lib1\"\nsecret_env = \"SMH_GW_TEST_UNSET_SECRET\"\n"
                .into(),
            ..Setup::default()
        },
    );
    std::fs::write(&config, text).unwrap();
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env_remove("SMH_GW_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("libraries[0].secret_env") && err.contains("SMH_GW_TEST_UNSET_SECRET"),
        "{err}"
    );
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env("SMH_GW_TEST_UNSET_SECRET", LIB_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(LIB_SECRET));
}
