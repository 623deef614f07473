//! The access log: one JSON line per request on stdout (SPEC §9). Lines are
//! formatted on the request's task and appended to a shared buffer; one background
//! thread writes the buffer out every [`FLUSH_EVERY`] (or sooner when it fills).
//! So a busy gateway makes a few writes a second instead of one per request, and
//! request threads never wait on stdout or wake another thread per line. When
//! stdout cannot keep up and the buffer reaches `MAX_BUFFERED`, lines are dropped
//! and counted rather than stalling requests.
//!
//! A record holds no path and no query: the route name stands for them, so no
//! token, user id or confirm key can reach the log.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

/// How often buffered lines are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer early.
const FLUSH_AT: usize = 256 * 1024;
/// Buffered bytes beyond which lines are dropped (stdout is stuck).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// The access log's `method`: the request's when it is a standard one, else
/// `OTHER` (a method token can be of any length).
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// What one request did.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub request_id: String,
    /// A method from a bounded set (`OTHER` for any other): never request text of
    /// unbounded length.
    pub method: &'static str,
    /// The route table row's name, or `unmatched`.
    pub route: Arc<str>,
    pub status: u16,
    pub duration: Duration,
    pub upstream_status: Option<u16>,
    pub cache: Option<&'static str>,
    pub client: SocketAddr,
    pub reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    method: &'a str,
    route: &'a str,
    status: u16,
    duration_ms: f64,
    upstream_status: Option<u16>,
    cache: Option<&'static str>,
    client: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl AccessRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.line()).unwrap_or_default()
    }

    fn line(&self) -> Line<'_> {
        Line {
            ts: now_rfc3339(),
            request_id: &self.request_id,
            method: self.method,
            route: &self.route,
            status: self.status,
            duration_ms: (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            upstream_status: self.upstream_status,
            cache: self.cache,
            client: self.client.ip(),
            reason: self.reason,
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds. The date and time up to
/// the second are formatted once a second per thread; only the milliseconds are
/// formatted per call.
pub fn now_rfc3339() -> String {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let fmt =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            let formatted = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .and_then(|t| t.format(fmt).ok())
                .unwrap_or_default();
            *cached = (secs, formatted);
        }
        format!("{}.{:03}Z", cached.1, since.subsec_millis())
    })
}

/// Where access lines go.
#[derive(Clone)]
pub struct AccessLog {
    sink: Sink,
    dropped: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Sink {
    Buffered(Arc<Shared>),
    Channel(SyncSender<String>),
}

/// The buffer the request tasks append to and the writer thread drains.
struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Held while writing, so that a final flush cannot overtake the writer.
    writing: Mutex<()>,
}

impl AccessLog {
    /// Lines to stdout through a background writer thread.
    pub fn stdout() -> AccessLog {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            wake: Condvar::new(),
            writing: Mutex::new(()),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_out(&writer, std::io::stdout()))
            .expect("spawn access-log thread");
        AccessLog {
            sink: Sink::Buffered(shared),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lines into a channel the caller reads (tests).
    pub fn channel() -> (AccessLog, Receiver<String>) {
        let (tx, rx) = sync_channel(65_536);
        let log = AccessLog {
            sink: Sink::Channel(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (log, rx)
    }

    pub fn record(&self, record: AccessRecord) {
        match &self.sink {
            Sink::Channel(tx) => {
                if let Err(TrySendError::Full(_)) = tx.try_send(record.to_json()) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Sink::Buffered(shared) => {
                let line = record.line();
                let mut buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
                if buf.len() >= MAX_BUFFERED {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Serialized straight into the shared buffer: no per-line String.
                let start = buf.len();
                if serde_json::to_writer(&mut *buf, &line).is_err() {
                    buf.truncate(start);
                    return;
                }
                buf.push(b'\n');
                if buf.len() >= FLUSH_AT {
                    shared.wake.notify_one();
                }
            }
        }
    }

    /// Writes out whatever is buffered now; called before the process exits.
    pub fn flush(&self) {
        if let Sink::Buffered(shared) = &self.sink {
            let _writing = shared.writing.lock().unwrap_or_else(|e| e.into_inner());
            let pending =
                std::mem::take(&mut *shared.buf.lock().unwrap_or_else(|e| e.into_inner()));
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&pending);
            let _ = out.flush();
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: every FLUSH_EVERY (or when woken early), swap the buffer out
/// under the lock and write it without the lock.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::with_capacity(FLUSH_AT);
    loop {
        {
            let buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
            let (buf, _) = shared
                .wake
                .wait_timeout_while(buf, FLUSH_EVERY, |b| b.len() < FLUSH_AT)
                .unwrap_or_else(|e| e.into_inner());
            drop(buf);
        }
        let _writing = shared.writing.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *buf, &mut spare);
        }
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_spec_fields() {
        let rec = AccessRecord {
            request_id: "r-1".into(),
            method: "POST",
            route: Arc::from("renew"),
            status: 403,
            duration: Duration::from_micros(1234),
            upstream_status: None,
            cache: None,
            client: "127.0.0.1:5000".parse().unwrap(),
            reason: Some("expired"),
        };
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        for key in [
            "ts",
            "request_id",
            "method",
            "route",
            "status",
            "duration_ms",
            "upstream_status",
            "cache",
            "client",
            "reason",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
        assert_eq!(v["route"], "renew");
        assert_eq!(v["status"], 403);
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["client"], "127.0.0.1");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
