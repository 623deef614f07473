//! The `prometheus` package's tools: `promtool`, and `prometheus` itself as a
//! child process on a free loopback port, queried through its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::common::{free_port, temp_dir};
use crate::repo;

/// The path of a tool from Debian's `prometheus` package; a missing one fails the
/// test with the fix.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. These tests need Debian's `prometheus` package, which \
                 ships both `prometheus` and `promtool`: `apt-get install prometheus` \
                 (`.ci/run` installs it)."
            )
        })
}

/// Runs promtool with `stdin`, asserting success; returns its output.
pub fn promtool(args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo("."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

/// A GET that reports a refused connection instead of panicking (Prometheus is
/// still starting).
pub async fn try_get(url: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer in 5s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `prometheus` as a child process with its own config and TSDB in a temp dir,
/// scraping one target every second and evaluating `deploy/prometheus/alerts.yml`
/// every second. Killed on drop.
pub struct Prometheus {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        let rules = repo("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: smh-gateway\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = try_get(&format!("{}/-/ready", self.url)).await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 20s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>`; the `data` of a successful answer.
    pub async fn api(&self, path: &str) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let (status, body) = try_get(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{url}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query: each series' labels (`__name__` included) and value. A
    /// scalar answer is one series without labels.
    pub async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("query?query={}", encode(q))).await;
        let num = |v: &Value| v[1].as_str().unwrap().parse::<f64>().unwrap();
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s["metric"].clone()).unwrap();
                    (labels, num(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), num(&data["result"]))],
            other => panic!("{q}: unexpected result type {other:?}"),
        }
    }

    /// Polls `q` until `done` holds for its answer (up to 15 s); returns it.
    pub async fn query_until(
        &self,
        q: &str,
        done: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.query(q).await;
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
