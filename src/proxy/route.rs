//! Phase 1, route: method + path + query (+ the Authorization header) become a typed
//! [`Operation`], once, at the edge. Later phases never re-read the raw request.
//!
//! This phase also does the request-syntax checks of SPEC §3/§5 (the second step of
//! the check order): path segments are percent-decoded and refused when they hold an
//! encoded `/`, a control character, or are `.`/`..`; known parameters may appear
//! once; traffic_limit must be ASCII digits. Unknown parameters are dropped here, which
//! is how "forward exactly what was checked" starts.

use std::borrow::Cow;

use http::{HeaderMap, Method, Uri, header};

use crate::error::GatewayError;
use crate::secret::Secret;

/// The file API prefix all SMH file operations share.
const FILE_PREFIX: &str = "/api/v1/file/";

/// The operations the gateway knows, with the permissions each one requires (any one
/// of them suffices). The one place where an operation's permissions are declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteName {
    Renew,
    Unmatched,
}

impl RouteName {
    pub const ALL: [RouteName; 2] = [RouteName::Renew, RouteName::Unmatched];

    /// The `route` label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteName::Renew => "renew",
            RouteName::Unmatched => "unmatched",
        }
    }

    /// SMH's grants that allow the operation (SMH-NOTES §2, §3).
    pub const fn permissions(self) -> &'static [&'static str] {
        match self {
            RouteName::Renew => &[
                "admin",
                "space_admin",
                "upload_file",
                "upload_file_force",
                "begin_upload",
                "begin_upload_force",
            ],
            RouteName::Unmatched => &[],
        }
    }
}

/// A request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Renew(RenewRequest),
    /// Not an operation the gateway knows; `routes.unmatched` decides.
    Unmatched,
}

impl Operation {
    pub fn route(&self) -> RouteName {
        match self {
            Operation::Renew(_) => RouteName::Renew,
            Operation::Unmatched => RouteName::Unmatched,
        }
    }
}

/// Where in SMH an operation acts: the library and the space (`-` for none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub library: String,
    pub space: String,
}

/// The space id SMH uses for a single-tenant library.
pub const NO_SPACE: &str = "-";

/// `POST /api/v1/file/{LibraryId}/{SpaceId}/{ConfirmKey}?renew&...`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    pub scope: Scope,
    pub confirm_key: String,
    /// From `access_token`, or `Authorization: Bearer`; `None` when absent or empty.
    pub token: Option<Secret>,
    /// `None` when absent or empty.
    pub user_id: Option<String>,
    /// ASCII digits, saturated into u64; clamped later, in rewrite.
    pub traffic_limit: Option<u64>,
}

/// Parses a request head into an [`Operation`], or a 400 for bad syntax on a route
/// the gateway knows. An unknown route is `Ok(Operation::Unmatched)`, never an error.
///
/// Every `Err` this returns is about a renew (the only route with syntax checks so
/// far), so callers may label it `renew`.
pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Operation, GatewayError> {
    let path = uri.path();
    let Some(rest) = path.strip_prefix(FILE_PREFIX) else {
        if method == Method::POST
            && looks_like_file_api(path)
            && Query::parse(uri.query().unwrap_or("")).has("renew")
        {
            return Err(NOT_CANONICAL);
        }
        return Ok(Operation::Unmatched);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let query = Query::parse(uri.query().unwrap_or(""));

    if method == Method::POST && query.has("renew") {
        if segments.len() != 3 {
            // A renew that is not in the one shape checked here (a trailing `/`, a
            // deeper path) must not slip past the checks as an "unknown" request,
            // which `unmatched = "forward"` would pass on unchecked.
            return Err(NOT_CANONICAL);
        }
        return parse_renew(&segments, &query, headers).map(Operation::Renew);
    }
    Ok(Operation::Unmatched)
}

const NOT_CANONICAL: GatewayError = GatewayError::ParamInvalid(
    "renew must be POST /api/v1/file/{LibraryId}/{SpaceId}/{ConfirmKey}?renew",
);

/// The file API prefix up to case, doubled slashes or dot segments: what a lenient
/// upstream might still route to the file API.
fn looks_like_file_api(path: &str) -> bool {
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .take(3)
        .map(str::to_ascii_lowercase)
        .collect();
    parts == ["api", "v1", "file"]
}

fn parse_renew(
    segments: &[&str],
    query: &Query<'_>,
    headers: &HeaderMap,
) -> Result<RenewRequest, GatewayError> {
    let library = path_segment(segments[0])?;
    let space = path_segment(segments[1])?;
    let confirm_key = path_segment(segments[2])?;

    query.single("renew")?;
    let query_token = query
        .single("access_token")?
        .map(decode_value)
        .transpose()?;
    let user_id = query.single("user_id")?.map(decode_value).transpose()?;
    let traffic_limit = query
        .single("traffic_limit")?
        .map(|raw| parse_traffic_limit(&decode_value(raw)?))
        .transpose()?;

    Ok(RenewRequest {
        scope: Scope { library, space },
        confirm_key,
        token: token(query_token, headers)?,
        user_id: user_id.filter(|u| !u.is_empty()),
        traffic_limit,
    })
}

/// The token from the query (SMH's convention) or `Authorization: Bearer` (an
/// extension). Both present and different is a 400: one of them would go unchecked.
fn token(query_token: Option<String>, headers: &HeaderMap) -> Result<Option<Secret>, GatewayError> {
    let query_token = query_token.filter(|t| !t.is_empty());
    let header_token = bearer(headers)?;
    match (query_token, header_token) {
        (Some(q), Some(h)) if q != h => Err(GatewayError::ParamInvalid(
            "access_token in the query and the Authorization header differ",
        )),
        (Some(t), _) | (None, Some(t)) => Ok(Some(Secret::new(t))),
        (None, None) => Ok(None),
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::ParamInvalid("repeated Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| GatewayError::ParamInvalid("malformed Authorization header"))?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme is not a token for us; it is not forwarded either.
        return Ok(None);
    }
    let t = rest.trim();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// SPEC §4: ASCII digits only, huge values saturate (they are clamped to max later).
pub fn parse_traffic_limit(value: &str) -> Result<u64, GatewayError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::ParamInvalid(
            "traffic_limit must be a whole number of bytes per second",
        ));
    }
    Ok(value.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// An id the gateway accepts as a path segment (also used to validate configured
/// library ids): non-empty, no `/`, no control character, not `.` or `..`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains('/')
        && !id.chars().any(char::is_control)
}

/// One path segment, percent-decoded and checked.
fn path_segment(raw: &str) -> Result<String, GatewayError> {
    let decoded = percent_decode_strict(raw).ok_or(GatewayError::ParamInvalid(
        "malformed percent-encoding in the path",
    ))?;
    if decoded.is_empty() {
        return Err(GatewayError::ParamInvalid("empty path segment"));
    }
    if !is_valid_id(&decoded) {
        return Err(GatewayError::ParamInvalid(
            "path segment holds /, a control character, or is . or ..",
        ));
    }
    Ok(decoded)
}

/// A query value: `+` is a space (form encoding, as SMH's SDKs send it), `%XX` is
/// decoded, control characters are refused.
fn decode_value(raw: &str) -> Result<String, GatewayError> {
    let spaced;
    let raw = if raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    let decoded = percent_decode_strict(raw).ok_or(GatewayError::ParamInvalid(
        "malformed percent-encoding in the query",
    ))?;
    if decoded.chars().any(char::is_control) {
        return Err(GatewayError::ParamInvalid(
            "control character in a query parameter",
        ));
    }
    Ok(decoded)
}

/// Percent-decoding that refuses what lenient decoders pass through: a `%` not
/// followed by two hex digits, and bytes that are not UTF-8.
fn percent_decode_strict(raw: &str) -> Option<String> {
    percent_decode_cow(raw).map(Cow::into_owned)
}

/// As [`percent_decode_strict`], borrowing when there is nothing to decode.
fn percent_decode_cow(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + off;
        let hex = bytes.get(at + 1..at + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        i = at + 3;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|c| Cow::Owned(c.into_owned()))
}

/// The raw query as `key[=value]` pairs in order; keys decoded, values kept raw
/// until a phase asks for one.
struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                // An undecodable key cannot be one we know; it is dropped with the rest.
                let key = percent_decode_cow(k).unwrap_or_default();
                (key, v)
            })
            .collect();
        Query { pairs }
    }

    fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The raw value of a parameter that may appear at most once.
    fn single(&self, key: &str) -> Result<Option<&'a str>, GatewayError> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| *v);
        let first = found.next();
        if found.next().is_some() {
            return Err(GatewayError::ParamInvalid("repeated query parameter"));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(method: Method, target: &str) -> Result<Operation, GatewayError> {
        parse(&method, &target.parse().unwrap(), &HeaderMap::new())
    }

    fn renew(target: &str) -> RenewRequest {
        match parse_str(Method::POST, target) {
            Ok(Operation::Renew(r)) => r,
            other => panic!("{target}: {other:?}"),
        }
    }

    fn rejected(target: &str) -> GatewayError {
        match parse_str(Method::POST, target) {
            Err(e) => e,
            other => panic!("{target} was accepted: {other:?}"),
        }
    }

    #[test]
    fn renew_with_sdk_shape_parses() {
        let r = renew(
            "/api/v1/file/lib1/-/ck123?renew=1&access_token=tok&user_id=u1&traffic_limit=500000",
        );
        assert_eq!(
            r.scope,
            Scope {
                library: "lib1".into(),
                space: "-".into()
            }
        );
        assert_eq!(r.confirm_key, "ck123");
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        assert_eq!(r.traffic_limit, Some(500000));
    }

    #[test]
    fn bare_renew_flag_and_absent_params() {
        let r = renew("/api/v1/file/lib1/space2/ck?renew");
        assert_eq!(r.token, None);
        assert_eq!(r.user_id, None);
        assert_eq!(r.traffic_limit, None);
    }

    #[test]
    fn empty_token_and_user_id_count_as_absent() {
        let r = renew("/api/v1/file/lib1/-/ck?renew&access_token=&user_id=");
        assert_eq!(r.token, None);
        assert_eq!(r.user_id, None);
    }

    #[test]
    fn unknown_parameters_are_dropped() {
        let r = renew("/api/v1/file/lib1/-/ck?renew&evil=1&access_token=t");
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("t"));
    }

    #[test]
    fn renew_look_alikes_are_refused_not_unmatched() {
        for t in [
            "/api/v1/file/lib1/-/a/b?renew",
            "/api/v1/file/lib1/-?renew",
            "/api/v1/file/lib1/-/ck/?renew",
            "/api/v1//file/lib1/-/ck?renew",
            "/API/v1/file/lib1/-/ck?renew",
            "//api/v1/file/lib1/-/ck?renew=1",
        ] {
            assert_eq!(rejected(t).code(), "ParamInvalid", "{t}");
        }
    }

    #[test]
    fn other_requests_are_unmatched() {
        for (m, t) in [
            (Method::GET, "/api/v1/file/lib1/-/ck?renew"),
            (Method::POST, "/api/v1/file/lib1/-/ck?confirm"),
            (Method::POST, "/api/v1/file/lib1/-/a/b?multipart"),
            (Method::POST, "/api/v1/token?renew"),
            (Method::POST, "/"),
        ] {
            assert_eq!(parse_str(m.clone(), t), Ok(Operation::Unmatched), "{m} {t}");
        }
    }

    #[test]
    fn renew_with_repeated_parameters_is_rejected() {
        for q in [
            "renew&renew",
            "renew&access_token=a&access_token=a",
            "renew&user_id=a&user_id=b",
            "renew&traffic_limit=1&traffic_limit=2",
            "renew&traffic_limit=1&%74raffic_limit=2",
        ] {
            let e = rejected(&format!("/api/v1/file/lib1/-/ck?{q}"));
            assert_eq!(e.code(), "ParamInvalid", "{q}");
        }
    }

    #[test]
    fn bad_path_segments_are_rejected() {
        for p in [
            "ck%2Fx", "ck%2fx", "%2e%2e", "..", ".", "%2E", "ck%00", "ck%0a", "ck%zz", "ck%", "%ff",
        ] {
            let e = rejected(&format!("/api/v1/file/lib1/-/{p}?renew"));
            assert_eq!(e.code(), "ParamInvalid", "{p}");
        }
        assert_eq!(
            rejected("/api/v1/file/%2e%2e/-/ck?renew").code(),
            "ParamInvalid"
        );
        assert_eq!(
            rejected("/api/v1/file/lib1//ck?renew").code(),
            "ParamInvalid"
        );
        assert_eq!(
            rejected("/api/v1/file/lib1/a%2Fb/ck?renew").code(),
            "ParamInvalid"
        );
    }

    #[test]
    fn encoded_segments_are_compared_decoded() {
        let r = renew("/api/v1/file/lib%31/-/c%6B%20x?renew");
        assert_eq!(r.scope.library, "lib1");
        assert_eq!(r.confirm_key, "ck x");
    }

    #[test]
    fn traffic_limit_syntax() {
        assert_eq!(parse_traffic_limit("0"), Ok(0));
        assert_eq!(parse_traffic_limit("00102400"), Ok(102400));
        assert_eq!(
            parse_traffic_limit("99999999999999999999999999"),
            Ok(u64::MAX)
        );
        for bad in ["", "-1", "+1", "1.5", "1e6", " 1", "1 ", "0x10", "１"] {
            assert!(parse_traffic_limit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            rejected("/api/v1/file/l/-/c?renew&traffic_limit=").code(),
            "ParamInvalid"
        );
        assert_eq!(
            rejected("/api/v1/file/l/-/c?renew&traffic_limit=1%20").code(),
            "ParamInvalid"
        );
        assert_eq!(
            rejected("/api/v1/file/l/-/c?renew&traffic_limit=1+").code(),
            "ParamInvalid"
        );
    }

    #[test]
    fn control_characters_in_values_are_rejected() {
        assert_eq!(
            rejected("/api/v1/file/l/-/c?renew&user_id=a%0d%0aX:1").code(),
            "ParamInvalid"
        );
        assert_eq!(
            rejected("/api/v1/file/l/-/c?renew&access_token=a%00").code(),
            "ParamInvalid"
        );
    }

    #[test]
    fn bearer_token_and_conflicts() {
        let uri: Uri = "/api/v1/file/l/-/c?renew".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let Ok(Operation::Renew(r)) = parse(&Method::POST, &uri, &h) else {
            panic!()
        };
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("abc"));

        let same: Uri = "/api/v1/file/l/-/c?renew&access_token=abc".parse().unwrap();
        assert!(parse(&Method::POST, &same, &h).is_ok());

        let differ: Uri = "/api/v1/file/l/-/c?renew&access_token=xyz".parse().unwrap();
        assert_eq!(
            parse(&Method::POST, &differ, &h).unwrap_err().code(),
            "ParamInvalid"
        );

        let mut basic = HeaderMap::new();
        basic.insert(header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
        let Ok(Operation::Renew(r)) = parse(&Method::POST, &uri, &basic) else {
            panic!()
        };
        assert_eq!(r.token, None);
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("lib-1_x"));
        assert!(is_valid_id("-"));
        for bad in ["", ".", "..", "a/b", "a\u{7f}", "a\nb"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
