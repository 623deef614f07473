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

impl AccessRecord {
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        // Every part written is UTF-8 (escaped strings, digits, punctuation).
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the record as one JSON object (no newline). Written by hand into the
    /// caller's buffer rather than through serde: the line is the same every time,
    /// and a derive plus a `String` for the timestamp cost about twice as much per
    /// request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        write_now_rfc3339(out);
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, &self.request_id);
        out.extend_from_slice(b",\"method\":");
        json_static(out, self.method);
        out.extend_from_slice(b",\"route\":");
        json_str(out, &self.route);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        // Milliseconds with three decimals, as a JSON number: "1.234", "0.05", "12".
        let micros = self.duration.as_micros();
        out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u16;
        if frac != 0 {
            let digits = [
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let keep = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            out.push(b'.');
            out.extend_from_slice(&digits[..keep]);
        }
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(s) => out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cache\":");
        match self.cache {
            Some(c) => json_static(out, c),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"client\":\"");
        crate::text::write_ip(out, self.client.ip());
        out.push(b'"');
        if let Some(reason) = self.reason {
            out.extend_from_slice(b",\"reason\":");
            json_static(out, reason);
        }
        out.push(b'}');
    }
}

/// Printable ASCII that needs no escape in a JSON string.
static JSON_PLAIN: crate::text::ByteClass =
    crate::byte_class!(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f);

/// One of the gateway's own labels (a method label, a cache source, a refusal
/// reason: `&'static str`s of plain ASCII) as a JSON string, unscanned.
fn json_static(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(JSON_PLAIN.all(s.as_bytes()), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string. Request ids, route names and labels are plain ASCII, so
/// the usual case is one scan and one copy; anything else goes through serde_json's
/// escaping.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if JSON_PLAIN.all(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The current time as RFC 3339 UTC with milliseconds. The date and time up to
/// the second are formatted once a second per thread; only the milliseconds are
/// formatted per call.
pub fn now_rfc3339() -> String {
    let mut out = Vec::with_capacity(24);
    write_now_rfc3339(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// [`now_rfc3339`], appended to `out`.
pub fn write_now_rfc3339(out: &mut Vec<u8>) {
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
        out.extend_from_slice(cached.1.as_bytes());
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
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
                let mut buf = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
                if buf.len() >= MAX_BUFFERED {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Written straight into the shared buffer: no per-line String.
                record.write_json(&mut buf);
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

    fn record(duration: Duration, client: &str) -> AccessRecord {
        AccessRecord {
            request_id: "r-1".into(),
            method: "GET",
            route: Arc::from("info_file"),
            status: 200,
            duration,
            upstream_status: Some(200),
            cache: Some("HIT"),
            client: client.parse().unwrap(),
            reason: None,
        }
    }

    #[test]
    fn duration_ms_is_milliseconds_with_up_to_three_decimals() {
        for (micros, expected) in [
            (0, 0.0),
            (1, 0.001),
            (50, 0.05),
            (1_000, 1.0),
            (1_234, 1.234),
            (12_300, 12.3),
            (86_400_000_001, 86_400_000.001),
        ] {
            let line = record(Duration::from_micros(micros), "127.0.0.1:1").to_json();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["duration_ms"].as_f64(), Some(expected), "{line}");
        }
        // Nanoseconds below a microsecond are dropped, not rounded into garbage.
        let line = record(Duration::from_nanos(1_999), "127.0.0.1:1").to_json();
        assert!(line.contains("\"duration_ms\":0.001,"), "{line}");
    }

    #[test]
    fn line_is_valid_json_with_ipv6_clients_odd_strings_and_no_reason() {
        let mut rec = record(Duration::from_micros(5), "[2001:db8::1]:443");
        rec.route = Arc::from("we\"ird\\route\n\u{e4}");
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["route"], "we\"ird\\route\n\u{e4}");
        assert_eq!(v["cache"], "HIT");
        assert_eq!(v["upstream_status"], 200);
        assert!(v.get("reason").is_none());
        rec.cache = None;
        rec.upstream_status = None;
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert!(v["cache"].is_null() && v["upstream_status"].is_null());
        // An escape past the first sixteen bytes (the plain check's chunks).
        rec.route = Arc::from(format!("{}\"{}\u{1}", "r".repeat(20), "s".repeat(16)));
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(v["route"].as_str(), Some(&*rec.route));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), "2026-12-02T04:10:00.123Z".len(), "{ts}");
        let parsed =
            time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339);
        assert!(parsed.is_ok(), "{ts}");
    }
}
