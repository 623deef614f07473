//! Every error the gateway produces itself, and the one exhaustive mapping from an
//! error to its HTTP status and SMH code (SPEC §6). There is no `_ =>` arm: a new
//! variant does not compile until someone decides what a client sees for it.
//!
//! Messages are fixed strings chosen here, never request text, so an error body can
//! never echo a token.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Why a token was refused (SPEC §2). The label of `smh_gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    Malformed,
    BadSignature,
    AlgMismatch,
    UnknownKey,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    TooLarge,
    /// `upstream.credential = "claim"` and the token lacks that claim.
    MissingCredentialClaim,
    /// The token's key is in a JWKS URL set past `auth.jwks_max_stale` (SPEC §14).
    KeysStale,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 11] = [
        AuthFailure::Malformed,
        AuthFailure::BadSignature,
        AuthFailure::AlgMismatch,
        AuthFailure::UnknownKey,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Issuer,
        AuthFailure::Audience,
        AuthFailure::TooLarge,
        AuthFailure::MissingCredentialClaim,
        AuthFailure::KeysStale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::AlgMismatch => "alg_mismatch",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Audience => "audience",
            AuthFailure::TooLarge => "too_large",
            AuthFailure::MissingCredentialClaim => "missing_credential_claim",
            AuthFailure::KeysStale => "stale_keys",
        }
    }
}

/// Which rate limit a request hit (SPEC §13): the label of
/// `smh_gateway_rate_limited_total` and the policy name of the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Per LibraryId.
    Library,
    /// Per (LibraryId, user).
    User,
    /// Per client address, counted on refused tokens.
    AuthFailures,
}

impl LimitKind {
    pub const ALL: [LimitKind; 3] = [LimitKind::Library, LimitKind::User, LimitKind::AuthFailures];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Library => "library",
            LimitKind::User => "user",
            LimitKind::AuthFailures => "auth_failures",
        }
    }
}

/// How the upstream exchange failed (all 502 UpstreamUnavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// The connection could not be made (refused, unreachable, TLS, connect timeout).
    Connect,
    /// The connection broke, or the answer was not valid HTTP or was too large.
    Invalid,
    /// `upstream.credential = "library_secret"`: SMH's token call failed, or SMH
    /// refused a freshly obtained token too. Never InvalidAccessToken to the client:
    /// its SDK would discard its own, valid token.
    Credential,
}

/// 499, SMH's status for a client that went away (not in `http`'s constants).
pub fn client_closed_status() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// An error the gateway answers itself. Upstream answers, errors included, are not
/// `GatewayError`s: they are passed through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// Unknown route while `routes.unmatched = "deny"`.
    RouteNotFound,
    /// Bad or repeated parameter, bad path segment, bad traffic_limit, query and
    /// header tokens differing. The detail is a fixed phrase for the message.
    ParamInvalid(&'static str),
    EmptyAccessToken,
    InvalidAccessToken(AuthFailure),
    LibraryNotFound,
    AccessTokenNotMatchLibrary,
    NotMultiSpaceLibrary,
    EmptySpaceId,
    AccessTokenNotMatchSpace,
    /// None of the route's permissions held.
    NoPermission,
    /// `user_id` passed by a token that may not act as another user.
    UserIdNotAllowed,
    RequestEntityTooLarge,
    /// The body did not arrive within `server.header_read_timeout` (SMH's own 408).
    ReadRequestTimeout,
    /// The client went away before its request was read or answered (SMH's 499
    /// ClientDisconnected: only the log and the metrics see it).
    ClientClosed,
    UriTooLong,
    HeaderFieldsTooLarge,
    /// Over a rate limit; `retry_after_secs` is at least 1.
    RateLimitExceeded {
        limit: LimitKind,
        retry_after_secs: u64,
    },
    UpstreamUnavailable(UpstreamFailure),
    ServerOverloaded,
    /// `upstream.max_in_flight` exchanges already running (counted where refused,
    /// in `smh_gateway_upstream_refused_total`: a coalesced flight's refusal may
    /// reach no client).
    UpstreamOverloaded,
    UpstreamTimeout,
}

/// What a refusal counts as in the metrics: the label set it adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `smh_gateway_auth_failures_total{reason}`.
    Auth(&'static str),
    /// `smh_gateway_policy_refusals_total{reason}`.
    Policy(&'static str),
    /// `smh_gateway_upstream_errors_total{kind}`.
    Upstream(&'static str),
    /// `smh_gateway_rate_limited_total{limit}`.
    RateLimited(LimitKind),
    /// Only in `requests_total` (by status).
    Request,
}

/// Everything a client, the metrics and the access log see of an error: decided
/// together, in [`GatewayError::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    /// The access log's `reason`: a bounded, operator-actionable word.
    pub reason: &'static str,
    pub counted: Counted,
}

const fn class(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    reason: &'static str,
    counted: Counted,
) -> Class {
    Class {
        status,
        code,
        message,
        reason,
        counted,
    }
}

impl GatewayError {
    /// Status, SMH code, message, log reason and metric: the only place these are
    /// chosen.
    pub fn class(&self) -> Class {
        use Counted::*;
        use GatewayError as E;
        use StatusCode as S;
        match self {
            E::RouteNotFound => class(
                S::NOT_FOUND,
                "RouteNotFound",
                "no such route",
                "route_not_found",
                Request,
            ),
            E::ParamInvalid(detail) => class(
                S::BAD_REQUEST,
                "ParamInvalid",
                detail,
                "param_invalid",
                Request,
            ),
            E::EmptyAccessToken => class(
                S::BAD_REQUEST,
                "EmptyAccessToken",
                "access_token is required",
                "missing",
                Auth("missing"),
            ),
            E::InvalidAccessToken(failure) => class(
                S::FORBIDDEN,
                "InvalidAccessToken",
                "access token is invalid or expired",
                failure.as_str(),
                Auth(failure.as_str()),
            ),
            E::LibraryNotFound => class(
                S::NOT_FOUND,
                "LibraryNotFound",
                "library not found",
                "library_not_found",
                Policy("library_not_found"),
            ),
            E::AccessTokenNotMatchLibrary => class(
                S::FORBIDDEN,
                "AccessTokenNotMatchLibrary",
                "access token does not match the library",
                "library_mismatch",
                Policy("library_mismatch"),
            ),
            E::NotMultiSpaceLibrary => class(
                S::BAD_REQUEST,
                "NotMultiSpaceLibrary",
                "library is single-tenant: use - as the space id",
                "not_multi_space_library",
                Policy("not_multi_space_library"),
            ),
            E::EmptySpaceId => class(
                S::BAD_REQUEST,
                "EmptySpaceId",
                "library is multi-tenant: a space id is required",
                "empty_space_id",
                Policy("empty_space_id"),
            ),
            E::AccessTokenNotMatchSpace => class(
                S::FORBIDDEN,
                "AccessTokenNotMatchSpace",
                "access token does not cover the space",
                "space_mismatch",
                Policy("space_mismatch"),
            ),
            E::NoPermission => class(
                S::FORBIDDEN,
                "NoPermission",
                "access token lacks the permission for this operation",
                "no_permission",
                Policy("no_permission"),
            ),
            E::UserIdNotAllowed => class(
                S::FORBIDDEN,
                "NoPermission",
                "user_id is allowed only for an admin token without a user",
                "user_id_not_allowed",
                Policy("user_id_not_allowed"),
            ),
            E::RequestEntityTooLarge => class(
                S::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "request body too large",
                "body_too_large",
                Request,
            ),
            E::ReadRequestTimeout => class(
                S::REQUEST_TIMEOUT,
                "ReadRequestTimeout",
                "request body did not arrive in time",
                "body_timeout",
                Request,
            ),
            E::ClientClosed => class(
                client_closed_status(),
                "ClientDisconnected",
                "the client closed the connection",
                "client_closed",
                Request,
            ),
            E::UriTooLong => class(
                S::URI_TOO_LONG,
                "URITooLong",
                "request target too long",
                "uri_too_long",
                Request,
            ),
            E::HeaderFieldsTooLarge => class(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HeaderFieldsTooLarge",
                "request headers too large",
                "headers_too_large",
                Request,
            ),
            E::RateLimitExceeded { limit, .. } => class(
                S::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                "rate limit exceeded, retry after the time in Retry-After",
                match limit {
                    LimitKind::Library => "rate_limited_library",
                    LimitKind::User => "rate_limited_user",
                    LimitKind::AuthFailures => "rate_limited_auth_failures",
                },
                RateLimited(*limit),
            ),
            E::UpstreamUnavailable(UpstreamFailure::Connect) => class(
                S::BAD_GATEWAY,
                "UpstreamUnavailable",
                "cannot connect to the upstream",
                "upstream_connect",
                Upstream("connect"),
            ),
            E::UpstreamUnavailable(UpstreamFailure::Invalid) => class(
                S::BAD_GATEWAY,
                "UpstreamUnavailable",
                "upstream connection failed or its answer was invalid",
                "upstream_invalid",
                Upstream("invalid"),
            ),
            E::UpstreamUnavailable(UpstreamFailure::Credential) => class(
                S::BAD_GATEWAY,
                "UpstreamUnavailable",
                "the upstream credential could not be obtained or was refused",
                "upstream_credential",
                Upstream("credential"),
            ),
            E::ServerOverloaded => class(
                S::SERVICE_UNAVAILABLE,
                "ServerOverloaded",
                "server overloaded, retry later",
                "overloaded",
                Request,
            ),
            E::UpstreamOverloaded => class(
                S::SERVICE_UNAVAILABLE,
                "ServerOverloaded",
                "too many upstream requests at once, retry later",
                "upstream_overloaded",
                Request,
            ),
            E::UpstreamTimeout => class(
                S::GATEWAY_TIMEOUT,
                "UpstreamTimeout",
                "upstream did not answer in time",
                "upstream_timeout",
                Upstream("timeout"),
            ),
        }
    }

    /// Status, SMH code and message.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        let c = self.class();
        (c.status, c.code, c.message)
    }

    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    pub fn code(&self) -> &'static str {
        self.class().code
    }

    /// The access log's `reason`.
    pub fn reason(&self) -> &'static str {
        self.class().reason
    }

    /// The SMH-shaped JSON error response.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let (status, code, message) = self.parts();
        let body = serde_json::json!({ "code": code, "message": message, "requestId": request_id });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let GatewayError::RateLimitExceeded {
            retry_after_secs, ..
        } = self
        {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from((*retry_after_secs).max(1)),
            );
        }
        resp
    }
}

/// How a connection ended badly, as far as it concerns operators: hyper refused
/// to parse a request (smuggling attempts such as conflicting Content-Length and
/// Transfer-Encoding, obs-fold, an oversized head) or a head did not arrive in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    /// A request hyper could not parse: it answered a bare 400 and closed.
    Parse,
    /// A request head over hyper's buffer: a bare 431, closed.
    TooLarge,
    /// No complete head within `server.header_read_timeout` (over TLS, also an
    /// idle keep-alive connection).
    Timeout,
    /// Anything else (the client reset, an I/O error).
    Other,
}

impl ConnectionError {
    pub const ALL: [ConnectionError; 4] = [
        ConnectionError::Parse,
        ConnectionError::TooLarge,
        ConnectionError::Timeout,
        ConnectionError::Other,
    ];

    pub fn of(e: &hyper::Error) -> ConnectionError {
        if e.is_parse_too_large() {
            ConnectionError::TooLarge
        } else if e.is_parse() || e.is_parse_version_h2() {
            ConnectionError::Parse
        } else if e.is_timeout() {
            ConnectionError::Timeout
        } else {
            ConnectionError::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionError::Parse => "parse",
            ConnectionError::TooLarge => "too_large",
            ConnectionError::Timeout => "timeout",
            ConnectionError::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins SPEC §6: a change of status or code must be a change of this table.
    #[test]
    fn every_error_maps_to_its_spec_status_and_code() {
        let table: &[(GatewayError, u16, &str)] = &[
            (GatewayError::ParamInvalid("x"), 400, "ParamInvalid"),
            (GatewayError::EmptyAccessToken, 400, "EmptyAccessToken"),
            (
                GatewayError::NotMultiSpaceLibrary,
                400,
                "NotMultiSpaceLibrary",
            ),
            (GatewayError::EmptySpaceId, 400, "EmptySpaceId"),
            (
                GatewayError::InvalidAccessToken(AuthFailure::Expired),
                403,
                "InvalidAccessToken",
            ),
            (
                GatewayError::AccessTokenNotMatchLibrary,
                403,
                "AccessTokenNotMatchLibrary",
            ),
            (
                GatewayError::AccessTokenNotMatchSpace,
                403,
                "AccessTokenNotMatchSpace",
            ),
            (GatewayError::NoPermission, 403, "NoPermission"),
            (GatewayError::UserIdNotAllowed, 403, "NoPermission"),
            (GatewayError::LibraryNotFound, 404, "LibraryNotFound"),
            (GatewayError::RouteNotFound, 404, "RouteNotFound"),
            (
                GatewayError::RequestEntityTooLarge,
                413,
                "RequestEntityTooLarge",
            ),
            (GatewayError::UriTooLong, 414, "URITooLong"),
            (
                GatewayError::HeaderFieldsTooLarge,
                431,
                "HeaderFieldsTooLarge",
            ),
            (
                GatewayError::RateLimitExceeded {
                    limit: LimitKind::User,
                    retry_after_secs: 1,
                },
                429,
                "RateLimitExceeded",
            ),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
                502,
                "UpstreamUnavailable",
            ),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid),
                502,
                "UpstreamUnavailable",
            ),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Credential),
                502,
                "UpstreamUnavailable",
            ),
            (GatewayError::ReadRequestTimeout, 408, "ReadRequestTimeout"),
            (GatewayError::ClientClosed, 499, "ClientDisconnected"),
            (GatewayError::ServerOverloaded, 503, "ServerOverloaded"),
            (GatewayError::UpstreamOverloaded, 503, "ServerOverloaded"),
            (GatewayError::UpstreamTimeout, 504, "UpstreamTimeout"),
        ];
        for (err, status, code) in table {
            assert_eq!(err.status().as_u16(), *status, "{err:?}");
            assert_eq!(err.code(), *code, "{err:?}");
            // The access log writes reasons unescaped.
            let reason = err.reason();
            assert!(
                !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{err:?}: {reason:?}"
            );
        }
    }

    #[test]
    fn error_body_is_smh_shaped_json() {
        let resp = GatewayError::InvalidAccessToken(AuthFailure::BadSignature).to_response("req-1");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["code"], "InvalidAccessToken");
        assert_eq!(v["requestId"], "req-1");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn rate_limit_sets_retry_after() {
        let resp = GatewayError::RateLimitExceeded {
            limit: LimitKind::Library,
            retry_after_secs: 7,
        }
        .to_response("r");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        // Never 0, which would invite an immediate retry.
        let resp = GatewayError::RateLimitExceeded {
            limit: LimitKind::Library,
            retry_after_secs: 0,
        }
        .to_response("r");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn each_rate_limit_has_its_own_log_reason() {
        let mut reasons: Vec<_> = LimitKind::ALL
            .iter()
            .map(|&limit| {
                GatewayError::RateLimitExceeded {
                    limit,
                    retry_after_secs: 1,
                }
                .reason()
            })
            .collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), LimitKind::ALL.len());
    }

    #[test]
    fn auth_failure_labels_are_distinct() {
        let mut names: Vec<_> = AuthFailure::ALL.iter().map(|f| f.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), AuthFailure::ALL.len());
    }
}
