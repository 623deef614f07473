//! The real binary, `smh-gateway serve`, with everything it writes kept.

use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::bin;

/// `smh-gateway serve` as a child process whose stdout (the access log) and stderr
/// (operational messages) are kept whole, so a test can search all it wrote.
/// Killed on drop if it is still running.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    output: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

impl Served {
    pub fn start(config: &Path) -> Served {
        let mut child = bin()
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut served = Served {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            output: Some((stdout, stderr)),
        };
        // "127.0.0.1:PORT (admin 127.0.0.1:PORT)\"..."
        let rest = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway printed its addresses");
        let mut addrs = rest
            .split([' ', '(', ')', '"'])
            .filter_map(|w| w.parse::<SocketAddr>().ok());
        served.addr = addrs.next().expect("main address");
        served.admin = addrs.next().expect("admin address");
        served
    }

    /// SIGTERM, wait for the drain and exit 0; returns (stdout, stderr).
    pub fn stop(&mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit 15s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit after SIGTERM: {status}");
        let (stdout, stderr) = self.output.take().expect("stopped once");
        (stdout.join().unwrap(), stderr.join().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
