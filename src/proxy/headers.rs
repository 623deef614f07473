//! Header rules of SPEC §5, in both directions. The upstream must see only what
//! the gateway vouches for: no hop-by-hop headers (a client could otherwise have a
//! header dropped or kept at will), never the caller's `Authorization`, and client
//! addresses only in the `X-Forwarded-For` chain the gateway itself extends. A
//! response whose framing is ambiguous is refused rather than re-framed, so that the
//! client and the upstream cannot disagree about where a body ends.

use std::net::IpAddr;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `Proxy-Authorization`, which is for this hop alone. A `match` on the name's
/// text: cheaper than comparing `HeaderName`s one by one, which costs a byte
/// comparison for each name that is not a standard one.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Forwarding headers the gateway does not set: from a client they are claims an
/// upstream might trust (client address, original host or port), so they are
/// dropped rather than passed on as if the gateway had written them.
/// `X-Original-URL` and `X-Rewrite-URL` go too: some servers route by them, which
/// would run another path than the one checked. `X-Forwarded-For`,
/// `X-Forwarded-Proto` and `X-Request-Id` are the gateway's own to write.
fn is_client_forwarding(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "forwarded"
            | "x-real-ip"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "true-client-ip"
            | "x-client-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-request-id"
    )
}

/// Removes hop-by-hop headers, including every header the `Connection` header names
/// (matched case-insensitively; blank items are ignored).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    remove_where(headers, |name| is_hop_by_hop(name) || listed.contains(name));
}

/// Removes the names present that `doomed` picks, in place: one pass over the
/// names present, then one removal each (removing a fixed list of names, present
/// or not, hashed each of them; rebuilding the map would hash every name kept).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in &names {
        headers.remove(name);
    }
}

/// The request headers sent upstream: the caller's end-to-end headers, less its
/// credentials and forwarding claims, plus the gateway's forwarding headers.
/// `Host` and `Content-Length` are left for `Upstream::send`, which always sets
/// them for the upstream hop (or drops a length where no body goes).
///
/// One pass over the names present picks what must go (`remove_where`).
pub fn upstream_request_headers(
    mut headers: HeaderMap,
    client: SocketAddr,
    proto: &'static str,
    request_id: &str,
) -> HeaderMap {
    // Names the caller's `Connection` lists were for the previous hop alone; an
    // `X-Forwarded-For` among them must not seed the chain either.
    let listed = connection_listed(&headers);
    let mut chain: Vec<u8> = Vec::with_capacity(48);
    if !listed.contains(&X_FORWARDED_FOR) {
        // A list split over several lines is one list (RFC 9110 §5.3): keeping only
        // the first would let a client hide entries from whoever reads it.
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let prior = value.as_bytes().trim_ascii();
            if !prior.is_empty() {
                chain.extend_from_slice(prior);
                chain.extend_from_slice(b", ");
            }
        }
    }
    // Edited in place: a request keeps most of its headers. `Host` and
    // `Content-Length` stay for now: they are the upstream hop's, and
    // `Upstream::send` sets both (see there).
    remove_where(&mut headers, |name| {
        *name == header::AUTHORIZATION
            || is_hop_by_hop(name)
            || is_client_forwarding(name)
            || listed.contains(name)
    });
    let crumbs = headers.get_all(header::COOKIE).iter().count();
    if crumbs > 1 {
        match join_cookie_crumbs(headers.get_all(header::COOKIE)) {
            Some(joined) => headers.insert(header::COOKIE, joined),
            None => headers.remove(header::COOKIE),
        };
    }
    if let Some(v) = forwarded_for(chain, client.ip()) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    // An id that is not a header value cannot leave the caller's in place: the
    // caller's was removed above.
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers
}

/// The headers present that the message's `Connection` lines list: each was for the
/// previous hop alone. Each item is looked for among the names present,
/// case-insensitively and as bytes, so an item that is no header name (blank, or
/// not ASCII) names nothing and the others still count; a message without
/// `Connection` costs one lookup.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut listed: Vec<HeaderName> = Vec::new();
    for line in headers.get_all(header::CONNECTION) {
        for item in line.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            if let Some(name) = headers
                .keys()
                .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(item))
                && !listed.contains(name)
            {
                listed.push(name.clone());
            }
        }
    }
    listed
}

/// `chain` (the caller's `X-Forwarded-For` entries, each followed by `", "`), then
/// `client`.
fn forwarded_for(mut chain: Vec<u8>, client: IpAddr) -> Option<HeaderValue> {
    let start = chain.len();
    crate::text::write_ip(&mut chain, client);
    // Every part came from a header value or is an address, so this does not fail;
    // if it ever did, the address alone is still the truth.
    HeaderValue::from_bytes(&chain)
        .or_else(|_| HeaderValue::from_bytes(&chain[start..]))
        .ok()
}

/// HTTP/2 clients may split `Cookie` into one line per cookie (RFC 9113 §8.2.3);
/// an HTTP/1.1 upstream expects one line, so the crumbs are joined with `"; "`.
/// One line passes as it is.
fn join_cookie_crumbs(crumbs: header::GetAll<'_, HeaderValue>) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for crumb in crumbs {
        let crumb = crumb.as_bytes().trim_ascii();
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    if joined.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Whether an upstream response says unambiguously where its body ends: not both
/// `Transfer-Encoding` and `Content-Length`, and every `Content-Length` line the
/// same run of ASCII digits that fits a `u64` (a comma list such as `5, 5` is
/// refused too, as RFC 9110 §8.6 allows). A response that fails is answered 502,
/// never re-framed. Call it before [`strip_hop_by_hop`], which removes
/// `Transfer-Encoding` and with it the evidence.
pub fn response_framing_is_sane(headers: &HeaderMap) -> bool {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return true;
    };
    !headers.contains_key(header::TRANSFER_ENCODING)
        && is_decimal_length(first.as_bytes())
        && lengths.all(|other| other == first)
}

fn is_decimal_length(v: &[u8]) -> bool {
    // The digit check first: `u64::from_str` would also take a leading `+`.
    !v.is_empty()
        && v.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(v).is_ok_and(|s| s.parse::<u64>().is_ok())
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

    const CLIENT: &str = "192.0.2.7:5555";

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn upstream(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        upstream_request_headers(headers(lines), CLIENT.parse().unwrap(), "https", "rid-1")
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn connection_names_match_case_insensitively_and_tolerate_blank_items() {
        let mut h = headers(&[
            ("connection", ", X-A ,x-b"),
            ("connection", " ,,\tX-C\t"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn connection_with_a_non_ascii_item_still_drops_the_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-a, \xe4, x-b").unwrap(),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn upstream_headers_drop_authorization_and_set_forwarding() {
        let out = upstream(&[
            ("authorization", "Bearer secret"),
            ("host", "gateway.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("user-agent", "sdk/1"),
        ]);
        assert!(out.get(header::AUTHORIZATION).is_none());
        // Replaced by the upstream's own in `Upstream::send`.
        assert_eq!(out["host"], "gateway.example");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-request-id"], "rid-1");
        assert_eq!(out["user-agent"], "sdk/1");
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order_and_dropped_ones_drop_every_value() {
        let out = upstream(&[
            ("x-multi", "1"),
            ("host", "a.example"),
            ("x-multi", "2"),
            ("host", "b.example"),
            ("accept", "application/json"),
            ("x-multi", "3"),
            ("content-length", "0"),
            ("content-length", "0"),
        ]);
        assert_eq!(values(&out, "x-multi"), [b"1", b"2", b"3"]);
        assert_eq!(values(&out, "accept"), [b"application/json"]);
        assert_eq!(values(&out, "host"), [b"a.example", b"b.example"]);
        assert_eq!(out.len(), 8 + 3, "{out:?}");
    }

    #[test]
    fn connection_named_x_forwarded_for_is_dropped_and_the_chain_starts_at_the_client() {
        let out = upstream(&[
            ("connection", "X-Forwarded-For"),
            ("x-forwarded-for", "10.6.6.6"),
        ]);
        assert_eq!(values(&out, "x-forwarded-for"), [b"192.0.2.7"]);
        assert!(out.get(header::CONNECTION).is_none());
    }

    #[test]
    fn client_forwarding_claims_are_dropped() {
        let out = upstream(&[
            ("forwarded", "for=10.6.6.6;host=evil.example;proto=https"),
            ("x-real-ip", "10.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/admin"),
            ("true-client-ip", "10.6.6.6"),
            ("x-client-ip", "10.6.6.6"),
            ("x-original-url", "/api/v1/file/lib1/-/ck?renew"),
            ("x-rewrite-url", "/api/v1/file/lib1/-/ck?renew"),
            ("x-forwarded-proto", "ftp"),
            ("x-request-id", "caller-id"),
        ]);
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "true-client-ip",
            "x-client-ip",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(out.get(gone).is_none(), "{gone} was forwarded: {out:?}");
        }
        assert_eq!(values(&out, "x-forwarded-proto"), [b"https"]);
        assert_eq!(values(&out, "x-request-id"), [b"rid-1"]);
        assert_eq!(values(&out, "x-forwarded-for"), [b"192.0.2.7"]);
    }

    #[test]
    fn repeated_x_forwarded_for_lines_are_joined_in_order_then_the_client_appended() {
        let out = upstream(&[
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-for", "  "),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            values(&out, "x-forwarded-for"),
            [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"]
        );
    }

    #[test]
    fn x_forwarded_for_of_an_ipv6_client_is_the_bare_address() {
        let out = upstream_request_headers(
            HeaderMap::new(),
            "[2001:db8::1]:443".parse().unwrap(),
            "http",
            "rid-1",
        );
        assert_eq!(out["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_line() {
        let out = upstream(&[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("cookie", " "),
            ("cookie", "c=3"),
        ]);
        assert_eq!(values(&out, "cookie"), [b"a=1; b=2; c=3"]);
        let single = upstream(&[("cookie", "a=1; b=2")]);
        assert_eq!(values(&single, "cookie"), [b"a=1; b=2"]);
    }

    #[test]
    fn response_with_transfer_encoding_and_content_length_is_not_sane() {
        let h = headers(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        assert!(!response_framing_is_sane(&h));
    }

    #[test]
    fn response_with_differing_content_lengths_is_not_sane() {
        let h = headers(&[("content-length", "5"), ("content-length", "6")]);
        assert!(!response_framing_is_sane(&h));
    }

    #[test]
    fn response_with_a_content_length_that_is_not_digits_is_not_sane() {
        for bad in [
            "",
            " 5",
            "5 ",
            "+5",
            "-1",
            "0x5",
            "1e3",
            "5, 5",
            "5,5",
            "٥",
            "18446744073709551616",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(bad).unwrap());
            assert!(!response_framing_is_sane(&h), "{bad:?} passed");
        }
    }

    #[test]
    fn response_with_one_length_or_one_framing_is_sane() {
        assert!(response_framing_is_sane(&HeaderMap::new()));
        assert!(response_framing_is_sane(&headers(&[(
            "content-length",
            "0"
        )])));
        assert!(response_framing_is_sane(&headers(&[(
            "content-length",
            "18446744073709551615"
        )])));
        assert!(response_framing_is_sane(&headers(&[
            ("content-length", "42"),
            ("content-length", "42"),
        ])));
        assert!(response_framing_is_sane(&headers(&[(
            "transfer-encoding",
            "chunked"
        )])));
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
