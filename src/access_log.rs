//! The access log: one JSON line per request on stdout (SPEC §9). Lines are
//! formatted on the request's task and written by one background thread through a
//! buffer, so a busy gateway makes one write per batch, not per request, and a slow
//! stdout never blocks a request (lines beyond the queue are counted and dropped).
//!
//! A record holds no path and no query: the route name stands for them, so no
//! token, user id or confirm key can reach the log.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use http::Method;
use serde::Serialize;

use crate::proxy::route::RouteName;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 65_536;

/// What one request did.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub request_id: String,
    pub method: Method,
    pub route: RouteName,
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
    route: &'static str,
    status: u16,
    duration_ms: f64,
    upstream_status: Option<u16>,
    cache: Option<&'static str>,
    client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl AccessRecord {
    pub fn to_json(&self) -> String {
        let line = Line {
            ts: now_rfc3339(),
            request_id: &self.request_id,
            method: self.method.as_str(),
            route: self.route.as_str(),
            status: self.status,
            duration_ms: (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            upstream_status: self.upstream_status,
            cache: self.cache,
            client: self.client.ip().to_string(),
            reason: self.reason,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(fmt).unwrap_or_default()
}

/// Where access lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Lines to stdout through a background writer thread.
    pub fn stdout() -> AccessLog {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, std::io::stdout()))
            .expect("spawn access-log thread");
        AccessLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lines into a channel the caller reads (tests).
    pub fn channel() -> (AccessLog, Receiver<String>) {
        let (tx, rx) = sync_channel(QUEUE);
        (
            AccessLog {
                tx: Some(tx),
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// No access log at all.
    pub fn disabled() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn record(&self, record: AccessRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record.to_json()) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(rx: Receiver<String>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = writeln!(out, "{line}");
        // Batch whatever else is already queued, then flush once.
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_spec_fields() {
        let rec = AccessRecord {
            request_id: "r-1".into(),
            method: Method::POST,
            route: RouteName::Renew,
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
