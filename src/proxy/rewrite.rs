//! Phase 4, rewrite: decide what goes upstream. Pure functions: clamp
//! traffic_limit into the library's bounds (SPEC §4), choose the upstream
//! credential and user (SPEC §5), and rebuild path and query canonically from the
//! checked values, so that nothing the gateway did not check reaches SMH.

use percent_encoding::{AsciiSet, utf8_percent_encode};

use crate::config::{Config, ConfigError, CredentialMode, TrafficLimitBounds};
use crate::error::{AuthFailure, GatewayError};
use crate::proxy::auth::Principal;
use crate::proxy::route::RenewRequest;
use crate::secret::Secret;

/// How a traffic_limit was changed, for the clamp metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clamp {
    Unchanged,
    Up,
    Down,
}

/// SPEC §4: a value is clamped into [min, max]; an absent one becomes the default,
/// or stays absent.
pub fn clamp_traffic_limit(
    value: Option<u64>,
    bounds: &TrafficLimitBounds,
) -> (Option<u64>, Clamp) {
    match value {
        None => (bounds.default, Clamp::Unchanged),
        Some(v) if v < bounds.min => (Some(bounds.min), Clamp::Up),
        Some(v) if v > bounds.max => (Some(bounds.max), Clamp::Down),
        Some(v) => (Some(v), Clamp::Unchanged),
    }
}

/// The upstream credential source, resolved once per config: for `static`, the
/// env var is read at start (and reload), so a missing one stops `serve` early.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    Passthrough,
    Claim,
    Static(Secret),
}

impl CredentialSource {
    pub fn from_config(config: &Config) -> Result<CredentialSource, ConfigError> {
        Ok(match &config.upstream.credential {
            CredentialMode::Passthrough => CredentialSource::Passthrough,
            CredentialMode::Claim(_) => CredentialSource::Claim,
            CredentialMode::Static { env } => {
                let value = std::env::var(env).map_err(|_| {
                    ConfigError::new(
                        &config.source,
                        Some("upstream.credential_env".into()),
                        format!("environment variable {env} is not set (or not UTF-8)"),
                    )
                })?;
                if value.is_empty() {
                    return Err(ConfigError::new(
                        &config.source,
                        Some("upstream.credential_env".into()),
                        format!("environment variable {env} is empty"),
                    ));
                }
                CredentialSource::Static(Secret::new(value))
            }
        })
    }

    /// The access_token and user_id sent upstream (SPEC §5). `caller_token` is the
    /// verified token; `user_id` is the caller's, already allowed by policy.
    pub fn choose<'a>(
        &'a self,
        caller_token: &'a Secret,
        principal: &'a Principal,
        user_id: Option<&'a str>,
    ) -> Result<(&'a Secret, Option<&'a str>), GatewayError> {
        match self {
            CredentialSource::Passthrough => Ok((caller_token, user_id)),
            CredentialSource::Claim => principal.credential.as_ref().map(|c| (c, user_id)).ok_or(
                GatewayError::InvalidAccessToken(AuthFailure::MissingCredentialClaim),
            ),
            CredentialSource::Static(token) => Ok((token, principal.user.as_deref().or(user_id))),
        }
    }
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is
/// escaped in a rebuilt path segment or query value. Sub-delimiters such as `;` are
/// escaped too: some servers read `..;` as `..` (path parameters), and a segment the
/// gateway checked must reach SMH as one opaque segment.
const SEGMENT: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Query values use the same strict set (`+` would read as a space, `&`/`=` split).
const QUERY_VALUE: &AsciiSet = SEGMENT;

/// The path SMH receives: `upstream.url`'s own path, then the file API path rebuilt
/// from the decoded, checked segments.
pub fn renew_path(base_path: &str, renew: &RenewRequest) -> String {
    let base = base_path.trim_end_matches('/');
    format!(
        "{base}/api/v1/file/{}/{}/{}",
        utf8_percent_encode(&renew.scope.library, SEGMENT),
        utf8_percent_encode(&renew.scope.space, SEGMENT),
        utf8_percent_encode(&renew.confirm_key, SEGMENT),
    )
}

/// SPEC §5: `renew&access_token=…&user_id=…&traffic_limit=…`, absent ones left out.
pub fn renew_query(
    credential: &Secret,
    user_id: Option<&str>,
    traffic_limit: Option<u64>,
) -> String {
    let mut q = String::with_capacity(32 + credential.len());
    q.push_str("renew&access_token=");
    q.extend(utf8_percent_encode(credential.expose(), QUERY_VALUE));
    if let Some(user) = user_id {
        q.push_str("&user_id=");
        q.extend(utf8_percent_encode(user, QUERY_VALUE));
    }
    if let Some(tl) = traffic_limit {
        q.push_str("&traffic_limit=");
        q.push_str(&tl.to_string());
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::Scope;

    const GLOBAL: TrafficLimitBounds = TrafficLimitBounds {
        min: 102_400,
        max: 104_857_600,
        default: None,
    };

    #[test]
    fn clamp_into_bounds() {
        assert_eq!(
            clamp_traffic_limit(Some(0), &GLOBAL),
            (Some(102_400), Clamp::Up)
        );
        assert_eq!(
            clamp_traffic_limit(Some(50_000), &GLOBAL),
            (Some(102_400), Clamp::Up)
        );
        assert_eq!(
            clamp_traffic_limit(Some(102_400), &GLOBAL),
            (Some(102_400), Clamp::Unchanged)
        );
        assert_eq!(
            clamp_traffic_limit(Some(500_000), &GLOBAL),
            (Some(500_000), Clamp::Unchanged)
        );
        assert_eq!(
            clamp_traffic_limit(Some(104_857_600), &GLOBAL),
            (Some(104_857_600), Clamp::Unchanged)
        );
        assert_eq!(
            clamp_traffic_limit(Some(104_857_601), &GLOBAL),
            (Some(104_857_600), Clamp::Down)
        );
        assert_eq!(
            clamp_traffic_limit(Some(u64::MAX), &GLOBAL),
            (Some(104_857_600), Clamp::Down)
        );
    }

    #[test]
    fn absent_uses_default_or_stays_absent() {
        assert_eq!(clamp_traffic_limit(None, &GLOBAL), (None, Clamp::Unchanged));
        let tier = TrafficLimitBounds {
            min: 200_000,
            max: 300_000,
            default: Some(250_000),
        };
        assert_eq!(
            clamp_traffic_limit(None, &tier),
            (Some(250_000), Clamp::Unchanged)
        );
        assert_eq!(
            clamp_traffic_limit(Some(102_400), &tier),
            (Some(200_000), Clamp::Up)
        );
    }

    #[test]
    fn query_is_canonical_and_encoded() {
        let tok = Secret::new("a.b.c");
        assert_eq!(renew_query(&tok, None, None), "renew&access_token=a.b.c");
        assert_eq!(
            renew_query(&tok, Some("u 1&x=y+z"), Some(102_400)),
            "renew&access_token=a.b.c&user_id=u%201%26x%3Dy%2Bz&traffic_limit=102400"
        );
    }

    #[test]
    fn path_is_rebuilt_from_checked_segments() {
        let r = RenewRequest {
            scope: Scope {
                library: "lib1".into(),
                space: "-".into(),
            },
            confirm_key: "c k?#".into(),
            token: None,
            user_id: None,
            traffic_limit: None,
        };
        assert_eq!(renew_path("/", &r), "/api/v1/file/lib1/-/c%20k%3F%23");
        assert_eq!(
            renew_path("/smh/", &r),
            "/smh/api/v1/file/lib1/-/c%20k%3F%23"
        );
        assert_eq!(renew_path("", &r), "/api/v1/file/lib1/-/c%20k%3F%23");
        let r = RenewRequest {
            confirm_key: "..;x=1".into(),
            ..r
        };
        // `;` is escaped: a server reading path parameters must not see `..`.
        assert_eq!(renew_path("", &r), "/api/v1/file/lib1/-/..%3Bx%3D1");
    }

    fn principal(user: Option<&str>, credential: Option<&str>) -> Principal {
        Principal {
            user: user.map(str::to_string),
            credential: credential.map(Secret::new),
            ..Principal::default()
        }
    }

    #[test]
    fn credential_modes() {
        let caller = Secret::new("caller");
        let nobody = principal(None, None);
        let with_claim = principal(None, Some("smh"));
        let alice = principal(Some("alice"), None);

        let (c, u) = CredentialSource::Passthrough
            .choose(&caller, &nobody, Some("u"))
            .unwrap();
        assert_eq!((c.expose(), u), ("caller", Some("u")));

        let (c, u) = CredentialSource::Claim
            .choose(&caller, &with_claim, None)
            .unwrap();
        assert_eq!((c.expose(), u), ("smh", None));
        let missing = CredentialSource::Claim.choose(&caller, &nobody, None);
        assert_eq!(missing.unwrap_err().code(), "InvalidAccessToken");

        let st = CredentialSource::Static(Secret::new("static"));
        let (c, u) = st.choose(&caller, &alice, None).unwrap();
        assert_eq!((c.expose(), u), ("static", Some("alice")));
        let (_, u) = st.choose(&caller, &nobody, Some("bob")).unwrap();
        assert_eq!(u, Some("bob"));
        let (_, u) = st.choose(&caller, &nobody, None).unwrap();
        assert_eq!(u, None);
    }
}
