//! Rate limits (SPEC §13): per library, per (library, user), and per client address
//! for refused tokens. Two hooks in the pipeline (`proxy::dispatch`):
//!
//! ```text
//! route ─> [auth_failures exhausted for this address? ─yes─> 429, no token verified]
//!       ─> auth ─refused─> count one failure for the address ─> 403/400
//!               └ok─> policy ─> [library + user: count this request ─over─> 429] ─> cache/upstream
//! ```
//!
//! - [`gcra`]: the arithmetic (one `tat` per key) and the `RateLimit-Policy` items.
//! - [`memory`]: the bounded in-process store; [`redis`]: the shared one.
//!
//! What lives where: the limits themselves ([`Rules`]) are part of `Settings` and
//! follow a reload; the counts ([`RateLimiter`]) belong to the running gateway and
//! survive reloads (a key's `tat` means the same under a changed limit, so a new
//! limit applies from the next request on, without a reset).
//!
//! With Redis, the library and user check is one script call; a refused token is one
//! call that also says whether the address is now exhausted, and this replica then
//! refuses the address locally until then, so the check before verifying costs no
//! round trip. (Another replica learns of the exhaustion at its own next failure
//! from that address: one more verification per replica.) When Redis fails,
//! library and user checks let the request through, and failures are counted in
//! memory meanwhile; both are counted in `smh_gateway_rate_limit_backend_errors_total`.

pub mod gcra;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use crate::config::{Config, RateLimitBackend};
use crate::error::{GatewayError, LimitKind};
use crate::metrics::Metrics;
use crate::redis_link::Link;
use gcra::{Rule, whole_seconds};
use memory::{Clock, MAX_KEYS, Store};
use redis::{Checked, RedisLimiter};

/// `RateLimit-Policy` and `RateLimit` for one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// The limits of one library: user first (the narrower), then library.
#[derive(Debug, Clone, Default)]
pub struct LibraryRules {
    pub user: Option<Rule>,
    pub library: Option<Rule>,
    /// Both policies' items, joined: the `RateLimit-Policy` of its answers.
    policy: Option<HeaderValue>,
}

impl LibraryRules {
    fn new(limits: crate::config::LibraryRateLimits) -> LibraryRules {
        let user = limits.user.map(|l| Rule::new(LimitKind::User, &l));
        let library = limits.library.map(|l| Rule::new(LimitKind::Library, &l));
        let items: Vec<&str> = [&user, &library]
            .into_iter()
            .flatten()
            .map(|r| r.policy.as_str())
            .collect();
        let policy = (!items.is_empty())
            .then(|| HeaderValue::from_str(&items.join(", ")).ok())
            .flatten();
        LibraryRules {
            user,
            library,
            policy,
        }
    }
}

/// The limits one config asks for, prepared once per config (part of `Settings`).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub backend: RateLimitBackend,
    pub auth_failures: Option<Rule>,
    auth_policy: Option<HeaderValue>,
    default: LibraryRules,
    /// Only the libraries with overrides.
    by_library: HashMap<String, LibraryRules>,
    /// `cache.redis_url`, for the Redis backend.
    redis_url: String,
}

impl Rules {
    pub fn from_config(config: &Config) -> Rules {
        let r = &config.rate_limits;
        let auth_failures = r
            .auth_failures
            .map(|l| Rule::new(LimitKind::AuthFailures, &l));
        Rules {
            backend: r.backend,
            auth_policy: auth_failures
                .as_ref()
                .and_then(|rule| HeaderValue::from_str(&rule.policy).ok()),
            auth_failures,
            default: LibraryRules::new(crate::config::LibraryRateLimits {
                library: r.library,
                user: r.user,
            }),
            by_library: config
                .libraries
                .iter()
                .filter(|l| l.rate_limits.library.is_some() || l.rate_limits.user.is_some())
                .map(|l| {
                    (
                        l.id.clone(),
                        LibraryRules::new(config.rate_limits_for(&l.id)),
                    )
                })
                .collect(),
            redis_url: config.cache.redis_url.clone(),
        }
    }

    pub fn for_library(&self, library: &str) -> &LibraryRules {
        if self.by_library.is_empty() {
            return &self.default;
        }
        self.by_library.get(library).unwrap_or(&self.default)
    }
}

/// The counts of the running gateway (kept across reloads).
pub struct RateLimiter {
    clock: Clock,
    hasher: std::hash::RandomState,
    /// Library and user `tat`s (memory backend).
    requests: Arc<Store>,
    /// Auth-failure `tat`s: the memory backend's, and the Redis backend's while
    /// Redis fails.
    failures: Arc<Store>,
    /// Redis backend: addresses Redis said are exhausted, until when.
    blocked: Arc<Store>,
    /// The renew cache's link when it uses Redis; else one made on first use.
    shared_link: Option<Arc<Link>>,
    redis: OnceLock<Option<RedisLimiter>>,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    pub fn new(metrics: Arc<Metrics>, shared_link: Option<Arc<Link>>) -> RateLimiter {
        RateLimiter {
            clock: Clock::new(),
            hasher: std::hash::RandomState::new(),
            requests: Store::new(MAX_KEYS),
            failures: Store::new(MAX_KEYS),
            blocked: Store::new(MAX_KEYS),
            shared_link,
            redis: OnceLock::new(),
            metrics,
        }
    }

    /// Before any token is verified: 429 when this address's auth failures are
    /// exhausted. No I/O with either backend.
    pub fn check_auth_failures(
        &self,
        rules: &Rules,
        client: SocketAddr,
        headers: &mut Option<Headers>,
    ) -> Result<(), GatewayError> {
        let Some(rule) = &rules.auth_failures else {
            return Ok(());
        };
        let key = self.address_key(client.ip());
        let now = self.clock.now();
        let mut wait = rule.exhausted(self.failures.get(key, now), now);
        if rules.backend == RateLimitBackend::Redis {
            wait = wait.max(self.blocked.get(key, now).map(|until| until - now));
        }
        match wait {
            None => Ok(()),
            Some(wait_us) => Err(self.refuse(rule, &rules.auth_policy, wait_us, headers)),
        }
    }

    /// After auth: a refused token (403 InvalidAccessToken, 400 EmptyAccessToken)
    /// counts one failure for the address. Passes `verified` through.
    pub async fn after_auth<T>(
        &self,
        rules: &Rules,
        client: SocketAddr,
        verified: Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let Some(rule) = &rules.auth_failures else {
            return verified;
        };
        if !matches!(
            verified,
            Err(GatewayError::InvalidAccessToken(_) | GatewayError::EmptyAccessToken)
        ) {
            return verified;
        }
        let key = self.address_key(client.ip());
        if rules.backend == RateLimitBackend::Redis
            && let Some(redis) = self.redis(rules)
        {
            let rkey = redis::key("af", &[address_prefix(client.ip()).as_bytes()]);
            match redis.fail(&rkey, rule).await {
                Ok(0) => return verified,
                Ok(wait_us) => {
                    let now = self.clock.now();
                    self.blocked.extend(key, now, now.saturating_add(wait_us));
                    return verified;
                }
                // Counted here meanwhile, so a flood during an outage is still bounded.
                Err(_) => self.metrics.rate_limit_backend_error(),
            }
        }
        let now = self.clock.now();
        self.failures
            .update(key, now, |tat| (rule.step(tat, now).0, ()));
        verified
    }

    /// Counts a request whose token was verified against its library's and user's
    /// limits; `Err` (429) when over one. Sets the answer's `RateLimit` headers.
    pub async fn check(
        &self,
        rules: &Rules,
        library: &str,
        user: Option<&str>,
        headers: &mut Option<Headers>,
    ) -> Result<(), GatewayError> {
        let lib_rules = rules.for_library(library);
        let checks: [Option<&Rule>; 2] = [lib_rules.user.as_ref(), lib_rules.library.as_ref()];
        if checks.iter().all(Option::is_none) {
            return Ok(());
        }
        let user = user.unwrap_or("");
        let mut states: [Option<(u64, u64)>; 2] = [None, None];
        match rules.backend {
            RateLimitBackend::Memory => {
                let now = self.clock.now();
                let keys = [
                    self.hasher.hash_one((LimitKind::User as u8, library, user)),
                    self.hasher.hash_one((LimitKind::Library as u8, library)),
                ];
                for i in 0..2 {
                    let Some(rule) = checks[i] else { continue };
                    let step = self
                        .requests
                        .update(keys[i], now, |tat| rule.step(tat, now));
                    if !step.allowed {
                        // All or nothing: the user's place goes back.
                        if i == 1
                            && let Some(user_rule) = checks[0]
                        {
                            self.requests.refund(keys[0], user_rule.interval_us);
                        }
                        return Err(self.refuse(rule, &lib_rules.policy, step.wait_us, headers));
                    }
                    states[i] = Some((step.remaining, step.wait_us));
                }
            }
            RateLimitBackend::Redis => {
                let Some(redis) = self.redis(rules) else {
                    self.metrics.rate_limit_backend_error();
                    return Ok(());
                };
                let mut keys: Vec<(String, &Rule)> = Vec::with_capacity(2);
                if let Some(rule) = checks[0] {
                    keys.push((
                        redis::key("u", &[library.as_bytes(), user.as_bytes()]),
                        rule,
                    ));
                }
                if let Some(rule) = checks[1] {
                    keys.push((redis::key("l", &[library.as_bytes()]), rule));
                }
                match redis.check(&keys).await {
                    Ok(Checked::Allowed(found)) => {
                        let mut found = found.into_iter();
                        for (i, check) in checks.iter().enumerate() {
                            if check.is_some() {
                                states[i] = found.next();
                            }
                        }
                    }
                    Ok(Checked::Refused(i, wait_us)) => {
                        let rule = keys[i].1;
                        return Err(self.refuse(rule, &lib_rules.policy, wait_us, headers));
                    }
                    Err(_) => {
                        self.metrics.rate_limit_backend_error();
                        return Ok(());
                    }
                }
            }
        }
        *headers = lib_rules.policy.clone().and_then(|policy| {
            let mut state = String::with_capacity(48);
            for (rule, found) in checks.iter().zip(states) {
                if let (Some(rule), Some((remaining, wait_us))) = (rule, found) {
                    if !state.is_empty() {
                        state.push_str(", ");
                    }
                    state_item(&mut state, rule.kind, remaining, whole_seconds(wait_us));
                }
            }
            Some(Headers {
                policy,
                state: HeaderValue::from_str(&state).ok()?,
            })
        });
        Ok(())
    }

    /// The 429 for `rule`, and its headers: `RateLimit: "<kind>";r=0;t=<Retry-After>`.
    fn refuse(
        &self,
        rule: &Rule,
        policy: &Option<HeaderValue>,
        wait_us: u64,
        headers: &mut Option<Headers>,
    ) -> GatewayError {
        let retry_after_secs = whole_seconds(wait_us);
        let mut state = String::with_capacity(32);
        state_item(&mut state, rule.kind, 0, retry_after_secs);
        *headers = policy
            .clone()
            .zip(HeaderValue::from_str(&state).ok())
            .map(|(policy, state)| Headers { policy, state });
        GatewayError::RateLimitExceeded {
            limit: rule.kind,
            retry_after_secs,
        }
    }

    fn address_key(&self, ip: IpAddr) -> u64 {
        self.hasher
            .hash_one((LimitKind::AuthFailures as u8, normalize(ip)))
    }

    /// The Redis limiter, made on first use (`None`: the URL is unusable, which
    /// `check` rejects before start).
    fn redis(&self, rules: &Rules) -> Option<&RedisLimiter> {
        self.redis
            .get_or_init(|| {
                let link = match &self.shared_link {
                    Some(link) => link.clone(),
                    None => Arc::new(Link::lazy(&rules.redis_url).ok()?),
                };
                Some(RedisLimiter::new(link))
            })
            .as_ref()
    }

    /// Keys held in memory, per store (for tests of the bound).
    pub fn memory_keys(&self) -> usize {
        self.requests.len() + self.failures.len() + self.blocked.len()
    }
}

/// One item of `RateLimit`: `"user";r=5;t=1` (itoa: this runs on every limited
/// request).
fn state_item(out: &mut String, kind: LimitKind, remaining: u64, reset_secs: u64) {
    let mut digits = itoa::Buffer::new();
    out.push('"');
    out.push_str(kind.as_str());
    out.push_str("\";r=");
    out.push_str(digits.format(remaining));
    out.push_str(";t=");
    out.push_str(digits.format(reset_secs));
}

/// What one client is: an IPv4 address, or an IPv6 /64 (one host usually holds a
/// whole /64, so limiting single IPv6 addresses would limit nothing).
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn address_prefix(ip: IpAddr) -> String {
    normalize(ip).to_string()
}

#[cfg(test)]
mod tests;
