//! Phase 4, rewrite: decide what goes upstream. Pure functions: clamp
//! traffic_limit into the library's bounds (SPEC §4), choose the upstream
//! credential and user (SPEC §5), and rebuild path and query canonically from the
//! checked values, so that nothing the gateway did not check reaches SMH.

use std::sync::Arc;

use percent_encoding::{AsciiSet, utf8_percent_encode};

use crate::config::{Config, ConfigError, CredentialMode, TrafficLimitBounds};
use crate::error::{AuthFailure, GatewayError};
use crate::proxy::auth::Principal;
use crate::proxy::credentials::LibrarySecrets;
use crate::proxy::route::{Operation, PathValues};
use crate::secret::Secret;
use crate::template::{Seg, Template};
use crate::text::ByteClass;

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
    Static(Secret<'static>),
    /// SMH tokens the gateway obtains with each library's secret (`credentials.rs`).
    LibrarySecret(Arc<LibrarySecrets>),
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
            CredentialMode::LibrarySecret => {
                CredentialSource::LibrarySecret(Arc::new(LibrarySecrets::load(config)?))
            }
        })
    }

    /// The access_token and user_id sent upstream (SPEC §5). `caller_token` is the
    /// verified token; `user_id` is the caller's, already allowed by policy.
    pub fn choose<'a>(
        &'a self,
        caller_token: &'a Secret<'a>,
        principal: &'a Principal,
        user_id: Option<&'a str>,
    ) -> Result<(&'a Secret<'a>, Option<&'a str>), GatewayError> {
        match self {
            CredentialSource::Passthrough => Ok((caller_token, user_id)),
            CredentialSource::Claim => principal.credential.as_ref().map(|c| (c, user_id)).ok_or(
                GatewayError::InvalidAccessToken(AuthFailure::MissingCredentialClaim),
            ),
            CredentialSource::Static(token) => Ok((token, principal.user.as_deref().or(user_id))),
            // The managed token is obtained asynchronously (`credentials.rs`); never
            // fall back to sending the caller's.
            CredentialSource::LibrarySecret(_) => Err(GatewayError::UpstreamUnavailable(
                crate::error::UpstreamFailure::Credential,
            )),
        }
    }
}

/// The same upstream target with `old`'s access_token swapped for `new`'s (a
/// resend after SMH refused a managed token).
pub fn replace_access_token(path_and_query: &str, old: &Secret<'_>, new: &Secret<'_>) -> String {
    let mut from = String::from("access_token=");
    push_encoded(&mut from, old.expose());
    let mut to = String::from("access_token=");
    push_encoded(&mut to, new.expose());
    path_and_query.replacen(&from, &to, 1)
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

/// The path SMH receives: `upstream.url`'s own path, then the row's template filled
/// with the decoded, checked values, each re-encoded as one segment (a FilePath's
/// `/` as `%2F`, as SMH's SDKs send it).
pub fn upstream_path(base_path: &str, template: &Template, v: &PathValues) -> String {
    let mut out = String::with_capacity(96);
    out.push_str(base_path.trim_end_matches('/'));
    for seg in &template.segs {
        out.push('/');
        let value = match seg {
            Seg::Lit(l) => {
                out.push_str(l);
                continue;
            }
            Seg::Library => v.library.as_deref(),
            Seg::Space => v.space.as_deref(),
            Seg::Key => v.key.as_deref(),
            Seg::Id => v.id.as_deref(),
            Seg::Path => v.path.as_deref(),
            Seg::Spaces => {
                push_encoded(&mut out, &v.spaces.join(","));
                continue;
            }
        };
        push_encoded(&mut out, value.unwrap_or_default());
    }
    out
}

/// SPEC §5: the flag (bare, first), `access_token`, `user_id`, `traffic_limit`, then
/// the row's other parameters in its order; absent ones left out.
pub fn upstream_query(
    op: &Operation,
    credential: Option<&Secret<'_>>,
    user_id: Option<&str>,
    traffic_limit: Option<u64>,
) -> String {
    let route = &op.route;
    let mut q = String::with_capacity(48 + credential.map_or(0, Secret::len));
    let sep = |q: &mut String| {
        if !q.is_empty() {
            q.push('&');
        }
    };
    // A flag that is also a parameter of its row carries a value
    // (`transcoding_template_id=h264_720p`): it goes first with it.
    let valued_flag = route
        .flag
        .as_deref()
        .and_then(|f| route.params.iter().position(|p| p == f));
    match (route.flag.as_deref(), valued_flag) {
        (Some(_), Some(at)) => {
            if let Some((_, v)) = op.params.iter().find(|(i, _)| *i == at) {
                push_pair(&mut q, &route.params[at], v);
            }
        }
        (Some(flag), None) => q.push_str(flag),
        (None, _) => {}
    }
    if let Some(c) = credential {
        sep(&mut q);
        push_pair(&mut q, "access_token", c.expose());
    }
    if let Some(u) = user_id {
        sep(&mut q);
        push_pair(&mut q, "user_id", u);
    }
    if let Some(tl) = traffic_limit {
        sep(&mut q);
        q.push_str("traffic_limit=");
        q.push_str(itoa::Buffer::new().format(tl));
    }
    push_params(&mut q, op, valued_flag);
    q
}

/// The row's other parameters alone, canonically (the renew cache key varies by
/// them).
pub fn params_query(op: &Operation) -> String {
    let mut q = String::new();
    let valued_flag = op
        .route
        .flag
        .as_deref()
        .and_then(|f| op.route.params.iter().position(|p| p == f));
    push_params(&mut q, op, valued_flag);
    q
}

fn push_params(q: &mut String, op: &Operation, skip: Option<usize>) {
    for (i, value) in &op.params {
        if Some(*i) == skip {
            continue;
        }
        if !q.is_empty() {
            q.push('&');
        }
        push_pair(q, &op.route.params[*i], value);
    }
}

fn push_pair(q: &mut String, key: &str, value: &str) {
    push_encoded(q, key);
    q.push('=');
    push_encoded(q, value);
}

/// Appends `value` percent-encoded (everything but RFC 3986's unreserved
/// characters). Tokens and ids are usually unreserved already: one table scan,
/// then a plain copy.
pub(crate) fn push_encoded(out: &mut String, value: &str) {
    if UNRESERVED.all(value.as_bytes()) {
        out.push_str(value);
    } else {
        out.extend(utf8_percent_encode(value, SEGMENT));
    }
}

/// `A-Z a-z 0-9 - . _ ~`, as a table (the set [`SEGMENT`] leaves alone; query values use the same strict set: `+` would read as a space, `&`/`=` split).
static UNRESERVED: ByteClass =
    crate::byte_class!(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'));

#[cfg(test)]
mod tests {
    use super::*;

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

    fn principal(user: Option<&str>, credential: Option<&str>) -> Principal {
        Principal {
            user: user.map(str::to_string),
            credential: credential.map(Secret::new),
            ..Principal::default()
        }
    }

    #[test]
    fn a_refused_token_is_swapped_in_place() {
        let (old, new) = (Secret::new("old tok"), Secret::new("new"));
        assert_eq!(
            replace_access_token("/p?renew&access_token=old%20tok&x=old", &old, &new),
            "/p?renew&access_token=new&x=old"
        );
        let library = CredentialSource::LibrarySecret(Arc::default());
        let e = library
            .choose(&old, &Principal::default(), None)
            .unwrap_err();
        assert_eq!(e.code(), "UpstreamUnavailable", "never the caller's token");
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
