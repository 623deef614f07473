//! Header rules of SPEC §5, in both directions: hop-by-hop headers dropped, the
//! caller's `Authorization` never forwarded, `X-Forwarded-For`/`-Proto` and
//! `X-Request-Id` set, and the request id accepted only when it is sane.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `Proxy-Authorization`, which is for this hop alone.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present is cheaper than
    // eight removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request headers sent upstream: the caller's end-to-end headers, less its
/// credentials and `Host` (the client sets the upstream's), plus forwarding headers.
pub fn upstream_request_headers(
    mut headers: HeaderMap,
    client: SocketAddr,
    proto: &'static str,
    request_id: &str,
) -> HeaderMap {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {}", client.ip()),
        _ => client.ip().to_string(),
    };
    strip_hop_by_hop(&mut headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers
}

/// SPEC §5: 1–128 characters of `A-Z a-z 0-9 . _ : -`.
pub fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The caller's request id when it is sane, else `None` (a new one is generated).
pub fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(&X_REQUEST_ID)?;
    is_sane_request_id(v.as_bytes()).then(|| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upstream_headers_drop_authorization_and_set_forwarding() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        h.insert(header::HOST, "gateway.example".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("user-agent", "sdk/1".parse().unwrap());
        let out = upstream_request_headers(h, "192.0.2.7:5555".parse().unwrap(), "https", "rid-1");
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get(header::HOST).is_none());
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-request-id"], "rid-1");
        assert_eq!(out["user-agent"], "sdk/1");
    }

    #[test]
    fn request_id_sanity() {
        assert!(is_sane_request_id(b"abc-DEF_1.2:3"));
        assert!(is_sane_request_id(&[b'a'; 128]));
        assert!(!is_sane_request_id(&[b'a'; 129]));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"a b"));
        assert!(!is_sane_request_id(b"a\"b"));
        assert!(!is_sane_request_id("ä".as_bytes()));
    }
}
