//! What a request names, decoded once: its query (form rules), its JSON body's
//! fields, and the normalized path under `{SpaceId}/` with the helpers that walk it.

use http::Method;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use super::Key;

/// The query, form-decoded (`+` is a space); a flag is present with or without `=1`.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Query {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn traffic_limit(&self) -> Option<u64> {
        self.get("traffic_limit")?.parse().ok()
    }
}

/// A request under `/api/v1/{file,directory}/{L}/{S}/…`, decoded once.
pub(super) struct Call<'a> {
    pub(super) method: &'a Method,
    pub(super) library: String,
    pub(super) space: String,
    /// Everything after `{SpaceId}/`, percent-decoded: a FilePath or a ConfirmKey.
    pub(super) target: String,
    pub(super) query: Query,
    /// The JSON body's fields; empty when the body is empty or not an object.
    pub(super) body: Map<String, Value>,
}

/// A JSON body's fields; none when the body is empty or not an object.
pub(super) fn json_fields(body: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

impl Call<'_> {
    pub(super) fn key(&self, name: &str) -> Key {
        (self.library.clone(), self.space.clone(), name.to_string())
    }

    pub(super) fn path(&self) -> String {
        normalize(&self.target)
    }

    pub(super) fn body_str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    /// The body's `size` (SDKs send a string), else the `filesize` query, else 0.
    pub(super) fn size(&self) -> u64 {
        match self.body.get("size") {
            Some(Value::String(s)) => s.parse().ok(),
            Some(v) => v.as_u64(),
            None => None,
        }
        .or_else(|| self.query.get("filesize")?.parse().ok())
        .unwrap_or(0)
    }
}

pub(super) fn content_type(path: &str) -> &'static str {
    let ext = name(path)
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// A path without empty components: `/docs//a.bin/` is `docs/a.bin`; the root is "".
pub(super) fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The parent of a normalized path: `a/b` → `a`, `a` → the root, the root → none.
pub(super) fn parent(path: &str) -> Option<&str> {
    match path.rsplit_once('/') {
        Some((parent, _)) => Some(parent),
        None if path.is_empty() => None,
        None => Some(""),
    }
}

/// `a`, `a/b`, `a/b/c` for `a/b/c`.
pub(super) fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

pub(super) fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

pub(super) fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

pub(super) fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}
