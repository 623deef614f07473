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
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 10] = [
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
    UriTooLong,
    HeaderFieldsTooLarge,
    RateLimitExceeded {
        retry_after_secs: u64,
    },
    UpstreamUnavailable(UpstreamFailure),
    ServerOverloaded,
    UpstreamTimeout,
}

impl GatewayError {
    /// Status, SMH code and message: the only place these are chosen.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use GatewayError as E;
        match self {
            E::RouteNotFound => (StatusCode::NOT_FOUND, "RouteNotFound", "no such route"),
            E::ParamInvalid(detail) => (StatusCode::BAD_REQUEST, "ParamInvalid", detail),
            E::EmptyAccessToken => (
                StatusCode::BAD_REQUEST,
                "EmptyAccessToken",
                "access_token is required",
            ),
            E::InvalidAccessToken(_) => (
                StatusCode::FORBIDDEN,
                "InvalidAccessToken",
                "access token is invalid or expired",
            ),
            E::LibraryNotFound => (
                StatusCode::NOT_FOUND,
                "LibraryNotFound",
                "library not found",
            ),
            E::AccessTokenNotMatchLibrary => (
                StatusCode::FORBIDDEN,
                "AccessTokenNotMatchLibrary",
                "access token does not match the library",
            ),
            E::NotMultiSpaceLibrary => (
                StatusCode::BAD_REQUEST,
                "NotMultiSpaceLibrary",
                "library is single-tenant: use - as the space id",
            ),
            E::EmptySpaceId => (
                StatusCode::BAD_REQUEST,
                "EmptySpaceId",
                "library is multi-tenant: a space id is required",
            ),
            E::AccessTokenNotMatchSpace => (
                StatusCode::FORBIDDEN,
                "AccessTokenNotMatchSpace",
                "access token does not cover the space",
            ),
            E::NoPermission => (
                StatusCode::FORBIDDEN,
                "NoPermission",
                "access token lacks the permission for this operation",
            ),
            E::UserIdNotAllowed => (
                StatusCode::FORBIDDEN,
                "NoPermission",
                "user_id is allowed only for an admin token without a user",
            ),
            E::RequestEntityTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "request body too large",
            ),
            E::ReadRequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "ReadRequestTimeout",
                "request body did not arrive in time",
            ),
            E::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "URITooLong",
                "request target too long",
            ),
            E::HeaderFieldsTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HeaderFieldsTooLarge",
                "request headers too large",
            ),
            E::RateLimitExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                "rate limit exceeded",
            ),
            E::UpstreamUnavailable(UpstreamFailure::Connect) => (
                StatusCode::BAD_GATEWAY,
                "UpstreamUnavailable",
                "cannot connect to the upstream",
            ),
            E::UpstreamUnavailable(UpstreamFailure::Invalid) => (
                StatusCode::BAD_GATEWAY,
                "UpstreamUnavailable",
                "upstream connection failed or its answer was invalid",
            ),
            E::ServerOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerOverloaded",
                "server overloaded, retry later",
            ),
            E::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout",
                "upstream did not answer in time",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The access log's `reason`: a bounded, operator-actionable word.
    pub fn reason(&self) -> &'static str {
        use GatewayError as E;
        match self {
            E::RouteNotFound => "route_not_found",
            E::ParamInvalid(_) => "param_invalid",
            E::EmptyAccessToken => "missing",
            E::InvalidAccessToken(failure) => failure.as_str(),
            E::LibraryNotFound => "library_not_found",
            E::AccessTokenNotMatchLibrary => "library_mismatch",
            E::NotMultiSpaceLibrary => "not_multi_space_library",
            E::EmptySpaceId => "empty_space_id",
            E::AccessTokenNotMatchSpace => "space_mismatch",
            E::NoPermission => "no_permission",
            E::UserIdNotAllowed => "user_id_not_allowed",
            E::RequestEntityTooLarge => "body_too_large",
            E::ReadRequestTimeout => "body_timeout",
            E::UriTooLong => "uri_too_long",
            E::HeaderFieldsTooLarge => "headers_too_large",
            E::RateLimitExceeded { .. } => "rate_limited",
            E::UpstreamUnavailable(UpstreamFailure::Connect) => "upstream_connect",
            E::UpstreamUnavailable(UpstreamFailure::Invalid) => "upstream_invalid",
            E::ServerOverloaded => "overloaded",
            E::UpstreamTimeout => "upstream_timeout",
        }
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
        if let GatewayError::RateLimitExceeded { retry_after_secs } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        resp
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
            (GatewayError::ReadRequestTimeout, 408, "ReadRequestTimeout"),
            (GatewayError::ServerOverloaded, 503, "ServerOverloaded"),
            (GatewayError::UpstreamTimeout, 504, "UpstreamTimeout"),
        ];
        for (err, status, code) in table {
            assert_eq!(err.status().as_u16(), *status, "{err:?}");
            assert_eq!(err.code(), *code, "{err:?}");
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
            retry_after_secs: 7,
        }
        .to_response("r");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn auth_failure_labels_are_distinct() {
        let mut names: Vec<_> = AuthFailure::ALL.iter().map(|f| f.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), AuthFailure::ALL.len());
    }
}
