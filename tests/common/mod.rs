//! Test harness: a mock SMH upstream and a real gateway on 127.0.0.1:0, tokens
//! minted with the test secret, and a small HTTP client. Each test gets its own
//! servers and temp directory; nothing listens on a fixed port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use smh_gateway::access_log::AccessLog;
use smh_gateway::config::Config;
use smh_gateway::mock_upstream::MockUpstream;
use smh_gateway::server::Server;

/// The HS256 secret every test gateway trusts under kid "k1".
pub const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes-long!!";

/// Extra TOML for each table of the test config.
#[derive(Default, Clone)]
pub struct Setup {
    pub server: String,
    pub upstream: String,
    pub auth: String,
    /// Whole tables appended at the end (`[[libraries]]`, `[routes]`, more keys).
    pub rest: String,
    /// Replaces the mock's URL as `upstream.url`.
    pub upstream_url: Option<String>,
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The running gateway, for calls no HTTP route reaches yet (cache invalidation).
    pub gateway: std::sync::Arc<smh_gateway::proxy::Gateway>,
    /// Applies a new config to the running gateway, as SIGHUP does.
    pub reloader: smh_gateway::server::Reloader,
    pub mock: MockUpstream,
    pub dir: PathBuf,
    logs: Receiver<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh private directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("smh-gw-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The config text a test gateway runs with.
pub fn config_text(dir: &Path, upstream_url: &str, setup: &Setup) -> String {
    let secret = dir.join("k1.secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_grace = "30s"
{server}

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "{upstream_url}"
{upstream}

[auth]
{auth}

[[auth.keys]]
kid = "k1"
alg = "HS256"
secret_file = "{secret}"

{rest}
"#,
        server = setup.server,
        upstream = setup.upstream,
        auth = setup.auth,
        rest = setup.rest,
        secret = secret.display(),
    )
}

pub async fn start() -> TestGateway {
    start_with(Setup::default()).await
}

pub async fn start_with(setup: Setup) -> TestGateway {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    start_against(mock, setup).await
}

/// A gateway in front of an existing mock.
pub async fn start_against(mock: MockUpstream, setup: Setup) -> TestGateway {
    let dir = temp_dir("gw");
    let url = setup.upstream_url.clone().unwrap_or_else(|| mock.url());
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(&dir, &url, &setup)).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"));
    let (log, logs) = AccessLog::channel();
    let server = Server::bind(config, log)
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let (addr, admin) = (server.local_addr(), server.admin_addr());
    let gateway = server.gateway();
    let reloader = server.reloader();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestGateway {
        addr,
        admin,
        gateway,
        reloader,
        mock,
        dir,
        logs,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestGateway {
    pub fn url(&self, target: &str) -> String {
        format!("http://{}{}", self.addr, target)
    }

    /// Rewrites the config file with `setup` (same upstream unless it names one)
    /// and applies it, as SIGHUP does.
    pub fn reload(&self, setup: &Setup) -> Result<(), smh_gateway::server::ReloadError> {
        let url = setup
            .upstream_url
            .clone()
            .unwrap_or_else(|| self.mock.url());
        let path = self.dir.join("gateway.toml");
        std::fs::write(&path, config_text(&self.dir, &url, setup)).unwrap();
        self.reloader.reload_file(&path)
    }

    /// POST a renew for `lib1/-/ck1` with this query after `renew&`.
    pub async fn renew(&self, query: &str) -> Resp {
        self.post(&format!("/api/v1/file/lib1/-/ck1?renew&{query}"))
            .await
    }

    pub async fn post(&self, target: &str) -> Resp {
        send(Method::POST, &self.url(target), &[], Bytes::new()).await
    }

    pub async fn request(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Resp {
        send(method, &self.url(target), headers, Bytes::from_static(body)).await
    }

    /// The value of one series on `/metrics` (`name{labels}` exactly as exposed),
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let r = send(
            Method::GET,
            &format!("http://{}/metrics", self.admin),
            &[],
            Bytes::new(),
        )
        .await;
        metric_value(&r.text(), series)
    }

    /// Access-log lines written so far (waits briefly for the first).
    pub fn log_lines(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if let Ok(line) = self.logs.recv_timeout(Duration::from_secs(2)) {
            out.push(serde_json::from_str(&line).unwrap());
        }
        while let Ok(line) = self.logs.try_recv() {
            out.push(serde_json::from_str(&line).unwrap());
        }
        out
    }

    /// Waits (without blocking the runtime the gateway runs on) until at least one
    /// access-log line is there, up to 5 s, then returns every line written so far.
    pub async fn wait_log_lines(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..500 {
            if let Ok(line) = self.logs.try_recv() {
                out.push(serde_json::from_str(&line).unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while let Ok(line) = self.logs.try_recv() {
            out.push(serde_json::from_str(&line).unwrap());
        }
        out
    }

    /// Stops the gateway and waits for its drain to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The SMH error code of a gateway error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an SMH-shaped error with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let v = self.json();
        assert_eq!(v["code"], code, "body: {v}");
        assert!(v["message"].is_string(), "body: {v}");
        assert_eq!(
            v["requestId"],
            self.headers["x-request-id"].to_str().unwrap(),
            "body: {v}"
        );
    }
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        2 * PATIENCE,
        client.request(req.body(Full::new(body)).unwrap()),
    )
    .await
    .expect("the gateway answered in time")
    .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends raw bytes on a fresh connection and returns whatever comes back until close
/// (or 5 s). For requests a well-behaved client library refuses to build.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid upload token for lib1 (no space, no user), valid for an hour.
pub fn claims() -> Value {
    json!({
        "library_id": "lib1",
        "permissions": ["upload_file"],
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// Signs claims with the test secret under kid "k1" (HS256).
pub fn sign(claims: &Value) -> String {
    sign_with(claims, jsonwebtoken::Algorithm::HS256, Some("k1"), SECRET)
}

pub fn sign_with(
    claims: &Value,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    secret: &[u8],
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A valid upload token for lib1.
pub fn token() -> String {
    sign(&claims())
}

/// A token with these claims merged over [`claims`].
pub fn token_with(extra: Value) -> String {
    let mut c = claims();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    sign(&c)
}

/// The query string the upstream received on its last request.
pub fn last_query(gw: &TestGateway) -> String {
    gw.mock
        .last()
        .expect("upstream received a request")
        .query
        .unwrap_or_default()
}

/// The real binary, `smh-gateway serve`, as a child process (the one harness for
/// every test that runs it). Its stdout (the access log) and stderr (operational
/// messages) are kept whole, so a test can search everything it wrote. Killed on
/// drop if it is still running.
pub struct BinGateway {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_smh-gateway"))
}

impl BinGateway {
    /// Starts `serve --config path` with these env vars; waits (up to 20 s) for
    /// "listening on" and reads both addresses from it.
    pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> BinGateway {
        use std::io::{BufRead, Read};
        use std::sync::{Arc, Mutex};
        let mut cmd = bin();
        cmd.arg("serve").arg("--config").arg(config);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut gw = BinGateway {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        };
        // "127.0.0.1:PORT (admin 127.0.0.1:PORT)\"..."
        let rest = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("gateway did not start: {}", gw.stderr_text()));
        let mut addrs = rest
            .split([' ', '(', ')', '"'])
            .filter_map(|w| w.parse::<SocketAddr>().ok());
        gw.addr = addrs.next().expect("main address");
        gw.admin = addrs.next().expect("admin address");
        gw
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for exit (up to `limit`) and returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "gateway did not exit within {limit:?}: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the drain and exit 0 (up to 15 s); returns everything it
    /// wrote, (stdout, stderr), once both pipes are closed.
    pub fn stop(&mut self) -> (String, String) {
        self.signal("TERM");
        let code = self.wait(Duration::from_secs(15));
        assert_eq!(code, Some(0), "exit after SIGTERM: {}", self.stderr_text());
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (self.stdout_text(), self.stderr_text())
    }

    /// The access log so far.
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for BinGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// `name{a="1",b="2"}` with labels sorted: one spelling per series.
    pub fn key(&self) -> String {
        series_key(&self.name, &self.labels)
    }
}

pub fn series_key(name: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

/// `name` or `name{a="1",...}` as name and labels.
fn parse_series(series: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let mut labels = std::collections::BTreeMap::new();
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_string(), labels);
    };
    let body = rest.strip_suffix('}').expect("labels end with }");
    // The gateway's label values hold no `",` sequence, so this split is exact here.
    for pair in body.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
        labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
    }
    (name.to_string(), labels)
}

/// The Prometheus text exposition format, parsed just enough to compare series by
/// their exact label sets. Panics on a line it cannot read.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = parse_series(series);
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The value of one series in Prometheus text (`name{labels}`, labels in any
/// order), 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let (name, labels) = parse_series(series);
    let key = series_key(&name, &labels);
    parse_exposition(text)
        .iter()
        .find(|s| s.key() == key)
        .map_or(0.0, |s| s.value)
}

/// A throwaway `redis-server` on a free loopback port (no persistence), killed on
/// drop. A test that needs one fails, with this message, when it is not installed:
/// a cache test that skips silently would pass without testing anything.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = temp_dir("redis");
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                dir: dir.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// On a port chosen before (a gateway was told to use it while it was down).
    pub fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer {
            port,
            child: None,
            dir: temp_dir("redis"),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data goes with it) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `total_commands_processed` from `INFO stats` (this INFO not included).
    pub fn commands_processed(&self) -> u64 {
        use std::io::{Read, Write};
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"INFO stats\r\nQUIT\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_commands_processed in {out}"))
    }

    /// SIGSTOP: the server keeps its connections but answers nothing (a slow Redis).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} redis-server");
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Starts redis-server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and the Redis cache tests need it: \
                 apt-get install redis-server (.ci/run installs it)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if redis_ping(self.port) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// How long a test waits for something that happens in milliseconds on an idle
/// machine: generous, so a loaded one is slow rather than failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `done` every few milliseconds until it holds; fails the test, naming
/// `what`, after [`PATIENCE`].
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One scrape of a gateway's admin `/metrics` (fails the test unless it is a 200).
pub async fn metrics_page(admin: SocketAddr) -> Resp {
    let r = send(
        Method::GET,
        &format!("http://{admin}/metrics"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// Polls one series on a gateway's `/metrics` until `done` holds for its value;
/// returns that value, or fails the test after [`PATIENCE`].
pub async fn until_metric(admin: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = metric_value(&metrics_page(admin).await.text(), series);
        if done(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} = {v}: not as wanted within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TLS client config that trusts the test CA (`tls/ca.pem`), for the HTTPS tests.
pub fn client_tls() -> rustls::ClientConfig {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("tls/ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}
