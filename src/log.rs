//! Operational messages (start, stop, reload, warnings) as JSON lines on stderr,
//! apart from the access log on stdout. Callers pass fixed text and config paths,
//! never request data or secrets.

use serde_json::json;

fn emit(level: &str, msg: &str) {
    let line = json!({ "ts": crate::access_log::now_rfc3339(), "level": level, "msg": msg });
    eprintln!("{line}");
}

pub fn info(msg: &str) {
    emit("info", msg);
}

pub fn warn(msg: &str) {
    emit("warn", msg);
}

pub fn error(msg: &str) {
    emit("error", msg);
}
