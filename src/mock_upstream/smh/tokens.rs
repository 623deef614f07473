//! The mock's SMH token API (SMH-ROUTES §T) and, once a library secret is set, its
//! check of every business request's `access_token`, so that tests of
//! `upstream.credential = "library_secret"` prove least privilege end to end.
//!
//! - `GET /api/v1/token?library_id&library_secret[&space_id][&user_id][&grant][&period]`
//!   checks the secret (400 EmptyLibraryIdOrSecret, 404 WrongLibraryIdOrSecret) and
//!   issues an opaque token, remembering what it was issued for; `{accessToken,
//!   expiresIn}` (the period clamped as SMH does, unless a test set `expiresIn`).
//! - `DELETE /api/v1/token/{LibraryId}/{AccessToken}` revokes one (204).
//! - With secrets set, a business request's token must be one the mock issued, not
//!   revoked or expired (403 InvalidAccessToken), for the path's library (403
//!   AccessTokenNotMatchLibrary) and space (403 AccessTokenNotMatchSpace), without a
//!   `user_id` unless it is an admin token without a user, and holding a grant the
//!   operation needs (403 NoPermission). The grants an operation needs come from the
//!   gateway's own route table: the table is SMH's documented grants.
//!
//! Without secrets (passthrough, claim and static tests) nothing here checks tokens.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde_json::json;

use super::Received;
use super::answers::{empty, json, smh_error};
use super::request::Query;
use crate::proxy::auth::Principal;
use crate::proxy::route::{Operation, Router, Selected, Target};
use crate::proxy::routes::AuthPolicy;
use crate::smh::{ADMIN, NO_SPACE};

/// What a token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub library: String,
    pub space: Option<String>,
    pub user: Option<String>,
    /// The `grant` it was created with, split at commas.
    pub grants: Vec<String>,
    pub period: Option<u64>,
    pub revoked: bool,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug)]
pub(in crate::mock_upstream) struct Tokens {
    secrets: HashMap<String, String>,
    issued: Vec<IssuedToken>,
    /// `expiresIn` answered instead of the period.
    pub(in crate::mock_upstream) expires_in: Option<u64>,
    /// The token API answers 500 InternalServerError.
    pub(in crate::mock_upstream) api_down: bool,
    /// Every business request's token is refused (403 InvalidAccessToken).
    pub(in crate::mock_upstream) refuse_all: bool,
    router: Option<Router>,
}

impl Tokens {
    pub(in crate::mock_upstream) fn new() -> Tokens {
        Tokens {
            secrets: HashMap::new(),
            issued: Vec::new(),
            expires_in: None,
            api_down: false,
            refuse_all: false,
            router: None,
        }
    }

    /// Sets a library's secret; from now on business requests' tokens are checked.
    pub(in crate::mock_upstream) fn set_secret(&mut self, library: &str, secret: &str) {
        self.secrets.insert(library.to_string(), secret.to_string());
        if self.router.is_none() {
            self.router = Router::new(&[]).ok();
        }
    }

    pub(in crate::mock_upstream) fn issued(&self) -> Vec<IssuedToken> {
        self.issued.clone()
    }

    /// Revokes every token issued so far; returns how many were live.
    pub(in crate::mock_upstream) fn revoke_all(&mut self) -> usize {
        let mut n = 0;
        for t in self.issued.iter_mut().filter(|t| !t.revoked) {
            t.revoked = true;
            n += 1;
        }
        n
    }

    fn strict(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// `/api/v1/token…`.
    pub(super) fn answer(
        &mut self,
        req: &Received,
        rest: &str,
        query: &Query,
    ) -> Response<Full<Bytes>> {
        if self.api_down {
            return smh_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "token service down (mock)",
            );
        }
        let parts: Vec<&str> = rest.split('/').collect();
        match (&req.method, parts.as_slice()) {
            (&Method::GET | &Method::POST, ["token"]) => self.create(query),
            (&Method::DELETE, ["token", library, token]) => {
                let token = super::request::decode(token);
                for t in self
                    .issued
                    .iter_mut()
                    .filter(|t| t.token == token && t.library == *library)
                {
                    t.revoked = true;
                }
                empty(StatusCode::NO_CONTENT)
            }
            _ => super::answers::mock_ok(),
        }
    }

    fn create(&mut self, q: &Query) -> Response<Full<Bytes>> {
        let (Some(library), Some(secret)) = (
            q.get("library_id").filter(|v| !v.is_empty()),
            q.get("library_secret").filter(|v| !v.is_empty()),
        ) else {
            return smh_error(
                StatusCode::BAD_REQUEST,
                "EmptyLibraryIdOrSecret",
                "library id or secret is empty",
            );
        };
        if self.secrets.get(library).map(String::as_str) != Some(secret) {
            return smh_error(
                StatusCode::NOT_FOUND,
                "WrongLibraryIdOrSecret",
                "wrong library id or secret",
            );
        }
        // SMH: not a positive integer -> 86400; clamped into [300, 10 years].
        let period = q.get("period").and_then(|p| p.parse::<u64>().ok());
        let lifetime = self.expires_in.unwrap_or(match period {
            Some(p) if p > 0 => p.clamp(300, 315_360_000),
            _ => 86_400,
        });
        let mut random = [0u8; 12];
        let _ = getrandom::fill(&mut random);
        let token = format!(
            "smhtok{}{}",
            self.issued.len(),
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let non_empty = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_string);
        self.issued.push(IssuedToken {
            token: token.clone(),
            library: library.to_string(),
            space: non_empty("space_id"),
            user: non_empty("user_id"),
            grants: q
                .get("grant")
                .unwrap_or("")
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            period,
            revoked: false,
            expires_at: crate::cache::now_ms() + lifetime.saturating_mul(1000),
        });
        json(
            StatusCode::OK,
            json!({ "accessToken": token, "expiresIn": lifetime }),
        )
    }

    /// With secrets set: SMH's refusal of this business request's token, if any.
    pub(super) fn refuse(&self, req: &Received, query: &Query) -> Option<Response<Full<Bytes>>> {
        if !self.strict() {
            return None;
        }
        let router = self.router.as_ref()?;
        let target = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let uri: Uri = target.parse().ok()?;
        let target = Target::new(&uri);
        // Only rows the gateway knows are checked; the rest answer as before.
        let Ok(Selected::Row { route, dispatch }) = router.select(&req.method, &target) else {
            return None;
        };
        let route = crate::proxy::body::inspect(route, &dispatch, &req.body)
            .ok()?
            .route;
        if route.auth != AuthPolicy::Token {
            return None;
        }
        let op = Operation::parse(route, &target, &HeaderMap::new()).ok()?;
        let invalid = || {
            Some(smh_error(
                StatusCode::FORBIDDEN,
                "InvalidAccessToken",
                "access token is invalid or expired",
            ))
        };
        let now = crate::cache::now_ms();
        let Some(token) = query.get("access_token").and_then(|t| {
            self.issued
                .iter()
                .find(|i| i.token == t && !i.revoked && i.expires_at > now)
        }) else {
            return invalid();
        };
        if self.refuse_all {
            return invalid();
        }
        let admin = token.grants.iter().any(|g| g == ADMIN);
        if op
            .values
            .library
            .as_deref()
            .is_some_and(|l| l != token.library)
        {
            return Some(smh_error(
                StatusCode::FORBIDDEN,
                "AccessTokenNotMatchLibrary",
                "access token does not match the library",
            ));
        }
        let space = op.values.space.as_deref().filter(|s| *s != NO_SPACE);
        if let (Some(space), Some(own)) = (space, &token.space)
            && space != own
            && !admin
        {
            return Some(smh_error(
                StatusCode::FORBIDDEN,
                "AccessTokenNotMatchSpace",
                "access token does not match the space",
            ));
        }
        let holder = Principal {
            library: Some(token.library.clone()),
            spaces: token.space.iter().cloned().collect(),
            user: token.user.clone(),
            permissions: token.grants.clone(),
            credential: None,
            ..Principal::default()
        };
        let user_id_ok =
            query.get("user_id").is_none_or(str::is_empty) || (admin && token.user.is_none());
        if !op.route.required(op.permanent).allows(&holder) || !user_id_ok {
            return Some(smh_error(
                StatusCode::FORBIDDEN,
                "NoPermission",
                "access token lacks the grant for this operation",
            ));
        }
        None
    }
}
