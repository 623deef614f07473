//! The real binary: `check` and its exit codes, `serve` refusing a bad config
//! before binding, `token`, SIGTERM draining in-flight requests, SIGHUP reload, and
//! `upstream.credential = "static"` (which reads an env var at start).

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use smh_gateway::mock_upstream::MockUpstream;

/// POST to a gateway by address (for the binary, which the harness does not wrap).
async fn post(addr: std::net::SocketAddr, target: &str) -> Resp {
    send(
        Method::POST,
        &format!("http://{addr}{target}"),
        &[],
        bytes::Bytes::new(),
    )
    .await
}

/// GET from a gateway's address (the admin listener, here).
async fn get(addr: std::net::SocketAddr, target: &str) -> Resp {
    send(
        Method::GET,
        &format!("http://{addr}{target}"),
        &[],
        bytes::Bytes::new(),
    )
    .await
}

const ENV_SECRET: &str = "an-env-secret-that-is-32-bytes-or-more";

fn write_config(dir: &std::path::Path, upstream: &str, setup: &Setup) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(dir, upstream, setup)).unwrap();
    path
}

fn run_check(path: &std::path::Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = bin();
    cmd.arg("check").arg("--config").arg(path);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_example() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let (code, err) = run_check(&path, &[("SMH_GATEWAY_JWT_SECRET", ENV_SECRET)]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_exits_2_naming_the_key() {
    let dir = temp_dir("check");
    for (toml_extra, key) in [
        (Setup { upstream: "timeout = \"soon\"".into(), ..Setup::default() }, "upstream.timeout"),
        (Setup { server: "lisen = \"x\"".into(), ..Setup::default() }, "server.lisen"),
        (
            Setup { rest: "[[libraries]]\nid = \"a\"\ntraffic_limit = { min = 1, max = 2 }\n".into(), ..Setup::default() },
            "libraries[0].traffic_limit",
        ),
        (
            Setup { rest: "[[auth.keys]]\nkid = \"e\"\nalg = \"HS256\"\nsecret_env = \"SMH_TEST_SURELY_UNSET_VAR\"\n".into(), ..Setup::default() },
            "auth.keys[1].secret_env",
        ),
    ] {
        let path = write_config(&dir, "http://127.0.0.1:9", &toml_extra);
        let (code, err) = run_check(&path, &[]);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(err.contains(key), "{key} not named in: {err}");
        assert!(err.contains("gateway.toml"), "file not named in: {err}");
    }
    let (code, err) = run_check(&dir.join("missing.toml"), &[]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn serve_refuses_a_missing_env_var_before_binding() {
    let dir = temp_dir("serve-env");
    // A fixed port would be bound if validation came after binding; take a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = Setup {
        upstream: "credential = \"static\"\ncredential_env = \"SMH_TEST_SURELY_UNSET_TOKEN\""
            .into(),
        ..Setup::default()
    };
    let text = config_text(&dir, "http://127.0.0.1:9", &setup).replace(
        "listen = \"127.0.0.1:0\"\nshutdown",
        &format!("listen = \"127.0.0.1:{port}\"\nshutdown"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = bin()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("upstream.credential_env"), "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_command_mints_a_token_the_gateway_accepts() {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("token");
    let path = write_config(&dir, &mock.url(), &Setup::default());
    let out = bin()
        .args(["token", "--config"])
        .arg(&path)
        .args([
            "--kid",
            "k1",
            "--library",
            "lib1",
            "--space",
            "s1",
            "--space",
            "s2",
            "--permissions",
            "upload_file,view",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(tok.split('.').count(), 3);

    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = tok.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["space_id"], serde_json::json!(["s1", "s2"]));
    assert_eq!(
        claims["permissions"],
        serde_json::json!(["upload_file", "view"])
    );
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 600);

    let gw = BinGateway::spawn(&path, &[]);
    let r = post(
        gw.addr,
        &format!("/api/v1/file/lib1/s2/ck?renew&access_token={tok}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The upstream holds its answer until the drain has been checked: the request
    // is provably in flight throughout, however slow the machine.
    mock.hold();
    let dir = temp_dir("drain");
    let path = write_config(&dir, &mock.url(), &Setup::default());
    let mut gw = BinGateway::spawn(&path, &[]);
    let ready = get(gw.admin, "/readyz").await;
    assert_eq!(ready.status, 200);

    let url = format!(
        "http://{}/api/v1/file/lib1/-/ck?renew&access_token={}",
        gw.addr,
        token()
    );
    let in_flight =
        tokio::spawn(async move { send(Method::POST, &url, &[], bytes::Bytes::new()).await });
    until("the request reached the upstream", || mock.active() == 1).await;
    gw.signal("TERM");

    // Draining: not ready, and no new connections on the main port.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get(gw.admin, "/readyz").await.status != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still 200 {PATIENCE:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "main listener still accepts {PATIENCE:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the held request was answered early"
    );

    mock.release();
    let resp = in_flight.await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "in-flight request was cut: {}",
        resp.text()
    );
    let code = tokio::task::block_in_place(|| gw.wait(Duration::from_secs(10)));
    assert_eq!(code, Some(0), "{}", gw.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("reload");
    let path = write_config(&dir, &mock.url(), &Setup::default());
    let gw = BinGateway::spawn(&path, &[]);
    let url = format!(
        "http://{}/api/v1/file/lib1/-/ck?renew&access_token={}",
        gw.addr,
        token()
    );
    assert_eq!(
        send(Method::POST, &url, &[], bytes::Bytes::new())
            .await
            .status,
        200
    );

    // Now only lib2 is served.
    let only_lib2 = Setup {
        rest: "[[libraries]]\nid = \"lib2\"\n".into(),
        ..Setup::default()
    };
    write_config(&dir, &mock.url(), &only_lib2);
    gw.signal("HUP");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = send(Method::POST, &url, &[], bytes::Bytes::new())
            .await
            .status
            .as_u16();
        if status == 404 {
            break;
        }
        assert_eq!(
            status, 200,
            "before the reload takes effect, the old config"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken file is refused; the running config stays.
    std::fs::write(&path, "this is not toml [").unwrap();
    gw.signal("HUP");
    until("the bad reload was reported", || {
        gw.stderr_text().contains("reload failed")
    })
    .await;
    assert_eq!(
        send(Method::POST, &url, &[], bytes::Bytes::new())
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn static_credential_replaces_the_token_and_sends_the_callers_user() {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("static");
    let setup = Setup {
        upstream: "credential = \"static\"\ncredential_env = \"SMH_TEST_STATIC_TOKEN\"".into(),
        ..Setup::default()
    };
    let path = write_config(&dir, &mock.url(), &setup);
    let gw = BinGateway::spawn(&path, &[("SMH_TEST_STATIC_TOKEN", "smh-admin-token")]);

    let alice = token_with(serde_json::json!({ "sub": "alice" }));
    let r = post(
        gw.addr,
        &format!("/api/v1/file/lib1/-/ck?renew&access_token={alice}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.last().unwrap().query.as_deref(),
        Some("renew&access_token=smh-admin-token&user_id=alice")
    );

    let anonymous = token();
    let r = post(
        gw.addr,
        &format!("/api/v1/file/lib1/-/ck?renew&access_token={anonymous}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.last().unwrap().query.as_deref(),
        Some("renew&access_token=smh-admin-token")
    );
}

#[tokio::test]
async fn claim_credential_sends_the_claim_and_refuses_tokens_without_it() {
    let gw = start_with(Setup {
        upstream: "credential = \"claim\"\ncredential_claim = \"smh\"".into(),
        ..Setup::default()
    })
    .await;
    let with = token_with(serde_json::json!({ "smh": "real-smh-token" }));
    assert_eq!(gw.renew(&format!("access_token={with}")).await.status, 200);
    assert_eq!(last_query(&gw), "renew&access_token=real-smh-token");
    gw.renew(&format!("access_token={}", token()))
        .await
        .assert_error(403, "InvalidAccessToken");
    assert_eq!(gw.mock.count(), 1);
}

#[test]
fn demo_prints_curl_commands_that_work() {
    demo_commands_work(&[]);
}

/// The production credential mode: the same commands, with SMH tokens the gateway
/// mints and the mock checks (grants included).
#[test]
fn demo_with_library_secrets_prints_curl_commands_that_work() {
    demo_commands_work(&["--credential", "library_secret"]);
}

fn demo_commands_work(args: &[&str]) {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .arg("demo")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut curls = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("curl ") {
            curls.push(line.clone());
        }
        if line.starts_with("Access log") {
            break;
        }
    }
    assert!(curls.len() >= 5, "{curls:?}");
    let run = |cmd: &str| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // In order, as a newcomer pastes them: a whole multipart upload, then a simple
    // upload, then the refusals.
    let expect: &[(&str, &str)] = &[
        ("\"path\"", "create directory"),
        ("\"uploadId\"", "multipart begin"),
        ("\"uploadId\"", "renew"),
        ("\"name\"", "confirm"),
        ("\"cosUrl\"", "info"),
        ("302", "download"),
        ("\"confirmKey\"", "simple begin"),
        ("\"name\"", "simple confirm"),
        ("\"x-cos-traffic-limit\":102400", "clamped"),
        ("\"x-cos-traffic-limit\":1048576", "tier"),
        ("NoPermission", "refused"),
        ("InvalidAccessToken", "forged"),
        ("EmptyAccessToken", "no token"),
        ("ParamInvalid", "look-alike"),
    ];
    assert_eq!(curls.len(), expect.len(), "{curls:?}");
    for (cmd, (want, what)) in curls.iter().zip(expect) {
        let out = run(cmd);
        assert!(out.contains(want), "{what}: {cmd}\n{out}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
