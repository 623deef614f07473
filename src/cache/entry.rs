//! What is cached and for how long (SPEC §7): only a 200 whose `expiration` parses
//! is stored, until `expiration - min_remaining` and at most `max_ttl` from now.
//! Also the byte format entries and flight results take in Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{GatewayError, UpstreamFailure};

/// An upstream answer as it came, hop-by-hop headers already dropped.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The whole body, or its first part when `rest` holds the remainder.
    pub body: Bytes,
    /// An answer too large to buffer: the rest of its body, still streaming, which
    /// one caller takes and relays (such an answer is never stored or published).
    pub rest: Option<Rest>,
}

/// The unread remainder of an answer too large to buffer, for the one caller that
/// takes it.
#[derive(Clone, Default)]
pub struct Rest(std::sync::Arc<std::sync::Mutex<Option<crate::proxy::upstream::Body>>>);

impl Rest {
    pub fn new(body: crate::proxy::upstream::Body) -> Rest {
        Rest(std::sync::Arc::new(std::sync::Mutex::new(Some(body))))
    }

    /// The remainder, for the first caller that asks; `None` afterwards.
    pub fn take(&self) -> Option<crate::proxy::upstream::Body> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rest(..)")
    }
}

/// A cached renew answer: a 200 with this body, served until `expires_at`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Unix time in milliseconds.
    pub expires_at: u64,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Larger answers are passed on but not cached. SMH's renew answer is under a
/// kilobyte; the bound keeps `max_entries` a bound on memory too.
pub const MAX_ENTRY_BODY: usize = 64 * 1024;

/// Unix time in milliseconds (the unit of every expiry in the cache).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long entries live, from `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    pub min_remaining: Duration,
    pub max_ttl: Duration,
}

impl Lifetime {
    /// Until when an answer that expires at `expiration` (unix ms) may be served:
    /// `expiration - min_remaining`, at most `now + max_ttl`; `None` when that is not
    /// in the future (the SDK would renew again at once, so there is nothing to save).
    pub fn serve_until(&self, expiration: u64, now: u64) -> Option<u64> {
        let until = expiration
            .saturating_sub(ms(self.min_remaining))
            .min(now.saturating_add(ms(self.max_ttl)));
        (until > now).then_some(until)
    }

    /// The entry for an upstream answer, or `None` when it must not be cached: any
    /// status but 200, a body that is not SMH's JSON or is over [`MAX_ENTRY_BODY`],
    /// an `expiration` that does not parse or is too close.
    pub fn entry_for(&self, answer: &Answer, now: u64) -> Option<Entry> {
        if answer.status != StatusCode::OK
            || answer.body.len() > MAX_ENTRY_BODY
            || answer.rest.is_some()
        {
            return None;
        }
        let expiration = parse_expiration(&answer.body)?;
        Some(Entry {
            expires_at: self.serve_until(expiration, now)?,
            content_type: answer.headers.get(header::CONTENT_TYPE).cloned(),
            body: answer.body.clone(),
        })
    }
}

/// Only `expiration` is read; the other fields (`headers` values may be strings or
/// numbers) are skipped whatever their type.
#[derive(Deserialize)]
struct RenewBody<'a> {
    #[serde(borrow)]
    expiration: std::borrow::Cow<'a, str>,
}

/// The `expiration` of a renew answer as unix ms: ISO 8601 in UTC as SMH sends it
/// (`2021-07-24T10:34:32.000Z`), any RFC 3339 offset, or a date-time without
/// offset, read as UTC.
pub fn parse_expiration(body: &[u8]) -> Option<u64> {
    let parsed: RenewBody<'_> = serde_json::from_slice(body).ok()?;
    let s = parsed.expiration.trim();
    let at = OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let naive = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
        );
        time::PrimitiveDateTime::parse(s, naive)
            .ok()
            .map(time::PrimitiveDateTime::assume_utc)
    })?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Entries in Redis: `<expires_at ms>\n<content type>\n<body>`. The expiry comes
/// first and in decimal so that the Lua scripts can read it.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let ct = entry
        .content_type
        .as_ref()
        .map_or(&b""[..], |v| v.as_bytes());
    let mut out = Vec::with_capacity(24 + ct.len() + entry.body.len());
    out.extend_from_slice(entry.expires_at.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(ct);
    out.push(b'\n');
    out.extend_from_slice(&entry.body);
    out
}

pub fn decode_entry(bytes: Bytes) -> Option<Entry> {
    let (expires_at, rest) = split_line(&bytes, 0)?;
    let expires_at = std::str::from_utf8(expires_at).ok()?.parse().ok()?;
    let (ct, body_at) = split_line(&bytes, rest)?;
    Some(Entry {
        expires_at,
        content_type: content_type(ct),
        body: bytes.slice(body_at..),
    })
}

/// The line starting at `from` and where the next one starts.
fn split_line(bytes: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let len = bytes.get(from..)?.iter().position(|&b| b == b'\n')?;
    Some((&bytes[from..from + len], from + len + 1))
}

fn content_type(ct: &[u8]) -> Option<HeaderValue> {
    if ct.is_empty() {
        None
    } else {
        HeaderValue::from_bytes(ct).ok()
    }
}

/// What a flight that did not store an entry answered, published in Redis for the
/// replicas that waited on it: an upstream answer (status, content type, body) or
/// an error of the gateway's own.
#[derive(Debug, Clone)]
pub enum Published {
    Answer(Answer),
    Error(GatewayError),
}

/// `a\n<status>\n<content type>\n<body>` or `e\n<error>`.
pub fn encode_result(result: &Result<Answer, GatewayError>) -> Vec<u8> {
    let mut out = BytesMut::new();
    match result {
        // Remote waiters cannot share a stream: they get the generic 502.
        Ok(a) if a.rest.is_some() => {
            out.extend_from_slice(b"e\n");
            out.extend_from_slice(b"invalid");
        }
        Ok(a) => {
            out.extend_from_slice(b"a\n");
            out.extend_from_slice(a.status.as_str().as_bytes());
            out.extend_from_slice(b"\n");
            if let Some(ct) = a.headers.get(header::CONTENT_TYPE) {
                out.extend_from_slice(ct.as_bytes());
            }
            out.extend_from_slice(b"\n");
            out.extend_from_slice(&a.body);
        }
        Err(e) => {
            out.extend_from_slice(b"e\n");
            out.extend_from_slice(error_tag(e).as_bytes());
        }
    }
    out.to_vec()
}

pub fn decode_result(bytes: Bytes) -> Option<Published> {
    let (kind, rest) = split_line(&bytes, 0)?;
    match kind {
        b"e" => Some(Published::Error(error_from_tag(bytes.get(rest..)?))),
        b"a" => {
            let (status, ct_at) = split_line(&bytes, rest)?;
            let status = StatusCode::from_bytes(status).ok()?;
            let (ct, body_at) = split_line(&bytes, ct_at)?;
            let mut headers = HeaderMap::new();
            if let Some(ct) = content_type(ct) {
                headers.insert(header::CONTENT_TYPE, ct);
            }
            Some(Published::Answer(Answer {
                status,
                headers,
                body: bytes.slice(body_at..),
                rest: None,
            }))
        }
        _ => None,
    }
}

/// The errors an upstream exchange can end in travel by name. The others cannot
/// come out of a flight (they are decided before the cache is asked); should one
/// ever do, remote waiters see the generic 502. Exhaustive, so that a new variant
/// is placed here on purpose.
fn error_tag(e: &GatewayError) -> &'static str {
    use GatewayError as E;
    match e {
        E::UpstreamTimeout => "timeout",
        E::UpstreamUnavailable(UpstreamFailure::Connect) => "connect",
        E::UpstreamUnavailable(UpstreamFailure::Invalid) => "invalid",
        E::UpstreamUnavailable(UpstreamFailure::Credential) => "credential",
        E::UpstreamOverloaded => "overloaded",
        E::RouteNotFound
        | E::ParamInvalid(_)
        | E::EmptyAccessToken
        | E::InvalidAccessToken(_)
        | E::LibraryNotFound
        | E::AccessTokenNotMatchLibrary
        | E::NotMultiSpaceLibrary
        | E::EmptySpaceId
        | E::AccessTokenNotMatchSpace
        | E::NoPermission
        | E::UserIdNotAllowed
        | E::RequestEntityTooLarge
        | E::ReadRequestTimeout
        | E::ClientClosed
        | E::UriTooLong
        | E::HeaderFieldsTooLarge
        | E::RateLimitExceeded { .. }
        | E::ServerOverloaded => "invalid",
    }
}

fn error_from_tag(tag: &[u8]) -> GatewayError {
    match tag {
        b"timeout" => GatewayError::UpstreamTimeout,
        b"connect" => GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
        b"credential" => GatewayError::UpstreamUnavailable(UpstreamFailure::Credential),
        b"overloaded" => GatewayError::UpstreamOverloaded,
        _ => GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_627_122_872_000; // 2021-07-24T10:34:32Z

    fn lifetime(min_remaining: u64, max_ttl: u64) -> Lifetime {
        Lifetime {
            min_remaining: Duration::from_secs(min_remaining),
            max_ttl: Duration::from_secs(max_ttl),
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::from(body.to_string()),
            rest: None,
        }
    }

    const SMH_BODY: &str = r#"{"domain":"d","path":"/p","uploadId":"u","headers":{"Content-Type":"application/octet-stream","x-cos-traffic-limit":819200,"x-cos-security-token":"t"},"confirmKey":"ck","expiration":"2021-07-24T10:34:32.000Z","availableDomainNum":1}"#;

    #[test]
    fn expiration_in_smh_shape_parses_with_numeric_headers() {
        assert_eq!(parse_expiration(SMH_BODY.as_bytes()), Some(T0));
    }

    #[test]
    fn expiration_variants() {
        let at = |s: &str| parse_expiration(format!(r#"{{"expiration":"{s}"}}"#).as_bytes());
        assert_eq!(at("2021-07-24T10:34:32Z"), Some(T0));
        assert_eq!(at("2021-07-24T10:34:32.250Z"), Some(T0 + 250));
        assert_eq!(at("2021-07-24T18:34:32+08:00"), Some(T0));
        assert_eq!(
            at("2021-07-24T10:34:32"),
            Some(T0),
            "no offset reads as UTC"
        );
        assert_eq!(at("2021-07-24T10:34:32.5"), Some(T0 + 500));
        for bad in [
            "",
            "tomorrow",
            "2021-07-24",
            "2021-13-24T10:34:32Z",
            "1627122872",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        assert_eq!(parse_expiration(br#"{"expiration":1627122872}"#), None);
        assert_eq!(parse_expiration(br#"{"domain":"d"}"#), None);
        assert_eq!(parse_expiration(b"not json"), None);
    }

    #[test]
    fn serve_until_subtracts_min_remaining_and_caps_at_max_ttl() {
        let now = T0 - 3_600_000; // an hour before expiration
        // 5 min margin, 30 min cap: the cap wins.
        assert_eq!(
            lifetime(300, 1800).serve_until(T0, now),
            Some(now + 1_800_000)
        );
        // 50 min margin: 10 minutes left.
        assert_eq!(
            lifetime(3000, 1800).serve_until(T0, now),
            Some(T0 - 3_000_000)
        );
        // Exactly the hour, or more: nothing left.
        assert_eq!(lifetime(3600, 1800).serve_until(T0, now), None);
        assert_eq!(lifetime(7200, 1800).serve_until(T0, now), None);
        // Already expired.
        assert_eq!(lifetime(0, 1800).serve_until(T0, T0), None);
        assert_eq!(lifetime(0, 1800).serve_until(T0, T0 + 1), None);
        // No margin: right up to the expiration.
        assert_eq!(lifetime(0, 7200).serve_until(T0, now), Some(T0));
    }

    #[test]
    fn only_a_200_with_a_parsable_expiration_is_an_entry() {
        let now = T0 - 3_600_000;
        let lt = lifetime(300, 1800);
        let e = lt.entry_for(&answer(200, SMH_BODY), now).unwrap();
        assert_eq!(e.expires_at, now + 1_800_000);
        assert_eq!(e.content_type.unwrap(), "application/json");
        for status in [201, 204, 400, 403, 404, 429, 500, 502, 503] {
            assert!(lt.entry_for(&answer(status, SMH_BODY), now).is_none());
        }
        assert!(lt.entry_for(&answer(200, "{}"), now).is_none());
        assert!(lt.entry_for(&answer(200, ""), now).is_none());
        assert!(lt.entry_for(&answer(200, SMH_BODY), T0).is_none());
        let padded = SMH_BODY.replace("\"d\"", &format!("\"{}\"", "d".repeat(MAX_ENTRY_BODY)));
        assert!(
            lt.entry_for(&answer(200, &padded), now).is_none(),
            "too large"
        );
    }

    #[test]
    fn entries_round_trip_through_the_redis_format() {
        let e = Entry {
            expires_at: T0,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b"{\"a\":\"x\ny\"}"),
        };
        let back = decode_entry(Bytes::from(encode_entry(&e))).unwrap();
        assert_eq!(back.expires_at, T0);
        assert_eq!(back.content_type, e.content_type);
        assert_eq!(back.body, e.body);
        let none = Entry {
            content_type: None,
            ..e
        };
        let back = decode_entry(Bytes::from(encode_entry(&none))).unwrap();
        assert_eq!(back.content_type, None);
        assert!(decode_entry(Bytes::from_static(b"garbage")).is_none());
        assert!(decode_entry(Bytes::from_static(b"12x\n\n{}")).is_none());
    }

    #[test]
    fn results_round_trip_through_the_redis_format() {
        let a = answer(503, r#"{"code":"X"}"#);
        match decode_result(Bytes::from(encode_result(&Ok(a)))).unwrap() {
            Published::Answer(back) => {
                assert_eq!(back.status, 503);
                assert_eq!(back.headers[header::CONTENT_TYPE], "application/json");
                assert_eq!(back.body, r#"{"code":"X"}"#);
            }
            Published::Error(e) => panic!("{e:?}"),
        }
        for e in [
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
            GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid),
            GatewayError::UpstreamUnavailable(UpstreamFailure::Credential),
        ] {
            match decode_result(Bytes::from(encode_result(&Err(e.clone())))).unwrap() {
                Published::Error(back) => assert_eq!(back, e),
                Published::Answer(a) => panic!("{a:?}"),
            }
        }
        assert!(decode_result(Bytes::from_static(b"x\n")).is_none());
    }
}
