//! SMH's and COS's answer shapes as the mock writes them: upload tasks, file and
//! directory entries, SMH error bodies, and the times SMH prints.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::request::{name, segments};
use super::{File, Kind};

pub(super) const DOMAIN: &str = "examplebucket-1250000000.cos.ap-beijing.myqcloud.com";
const COS_AUTHORIZATION: &str = "q-sign-algorithm=sha1&q-ak=mock&q-sign-time=0;1&q-key-time=0;1&q-header-list=&q-url-param-list=&q-signature=mock";
/// What a COS URL path segment keeps unencoded (RFC 3986 unreserved characters).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The COS side of an upload: where and how the client sends its bytes.
pub(super) fn cos_task(
    library: &str,
    confirm_key: &str,
    kind: Kind,
    traffic_limit: Option<u64>,
    expiration: &str,
) -> Value {
    let mut body = json!({
        "domain": DOMAIN,
        "path": cos_path(library, confirm_key),
        "confirmKey": confirm_key,
        "expiration": expiration,
        "availableDomainNum": 1,
    });
    match kind {
        Kind::Multipart => {
            body["uploadId"] = json!(upload_id(confirm_key));
            body["headers"] = cos_headers(traffic_limit);
        }
        Kind::Simple => body["headers"] = cos_headers(traffic_limit),
        Kind::Form => {
            let mut form = json!({
                "key": format!("{library}/{confirm_key}"),
                "policy": "mock-policy",
                "q-sign-algorithm": "sha1",
                "q-ak": "mock",
                "q-key-time": "0;1",
                "q-signature": "mock",
                "x-cos-security-token": "mock-security-token",
            });
            if let Some(tl) = traffic_limit {
                form["x-cos-traffic-limit"] = json!(tl.to_string());
            }
            body["form"] = form;
        }
    }
    body
}

/// The headers for the COS PUTs; `x-cos-traffic-limit` is a JSON number, as in
/// SMH's renew example.
pub(super) fn cos_headers(traffic_limit: Option<u64>) -> Value {
    let mut headers = json!({
        "Content-Type": "application/octet-stream",
        "Authorization": COS_AUTHORIZATION,
        "x-cos-security-token": "mock-security-token",
    });
    if let Some(tl) = traffic_limit {
        headers["x-cos-traffic-limit"] = json!(tl);
    }
    headers
}

pub(super) fn cos_path(library: &str, confirm_key: &str) -> String {
    format!("/{library}/{confirm_key}")
}

pub(super) fn upload_id(confirm_key: &str) -> String {
    format!("mock-upload-{confirm_key}")
}

pub(super) fn cos_url(library: &str, path: &str) -> String {
    let encoded: Vec<String> = std::iter::once(library)
        .chain(path.split('/'))
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect();
    format!("https://{DOMAIN}/{}?sign=mock", encoded.join("/"))
}

/// The fields SMH gives for a file everywhere (info, listing, confirm).
pub(super) fn file_fields(f: &File) -> Value {
    json!({
        "type": "file",
        "creationTime": f.creation_time,
        "modificationTime": f.modification_time,
        "contentType": f.content_type,
        "size": f.size.to_string(),
        "eTag": f.etag,
        "crc64": f.crc64,
        "metaData": {},
    })
}

/// A file as confirm and instant upload answer it: with its path and name.
pub(super) fn file_json(path: &str, f: &File) -> Value {
    let mut v = file_fields(f);
    v["path"] = json!(segments(path));
    v["name"] = json!(name(path));
    v
}

pub(super) fn dir_json(path: &str, created: &str) -> Value {
    json!({
        "name": name(path),
        "type": "dir",
        "creationTime": created,
        "modificationTime": created,
        "metaData": {},
    })
}

pub(super) fn path_answer(path: &str) -> Response<Full<Bytes>> {
    json(StatusCode::OK, json!({ "path": segments(path) }))
}

pub(super) fn now() -> String {
    iso(time::OffsetDateTime::now_utc())
}

pub(super) fn in_an_hour() -> String {
    iso(time::OffsetDateTime::now_utc() + time::Duration::hours(1))
}

/// ISO 8601 in UTC with milliseconds, as SMH writes times: `2021-07-24T10:34:32.000Z`.
pub(super) fn iso(t: time::OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

pub(super) fn put_headers(map: &mut HeaderMap, headers: &[(&'static str, Option<&str>)]) {
    for (name, value) in headers {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
}

/// Any other SMH business route: a JSON object, as SMH answers.
pub(super) fn mock_ok() -> Response<Full<Bytes>> {
    json(StatusCode::OK, json!({ "mock": "ok" }))
}

pub(super) fn not_found(code: &str) -> Response<Full<Bytes>> {
    smh_error(StatusCode::NOT_FOUND, code, "not found")
}

pub(super) fn conflict(code: &str) -> Response<Full<Bytes>> {
    smh_error(StatusCode::CONFLICT, code, "conflict")
}

pub(super) fn smh_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "code": code, "message": message, "requestId": "mock-upstream" });
    json(status, body)
}

pub(super) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub(super) fn json(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    json_response(status, body.to_string())
}

pub(in crate::mock_upstream) fn json_response(
    status: StatusCode,
    body: String,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
