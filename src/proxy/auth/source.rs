//! One `[[auth.jwks_urls]]` key set: its https client, its fetch, when it is fetched
//! next, the cooldown on refetches for unknown kids, and how stale it is. And the
//! background task that refreshes every set when it is due.
//!
//! Fetches of one set never overlap: the scheduled refresh and the refetches that
//! unknown kids ask for take the same lock, and the requests that wait for a
//! refetch all wait for that one fetch. An unknown kid starts a refetch only once
//! per `auth.jwks_refetch_cooldown`; within it, a request shares a fetch already
//! under way or is refused at once, so random kids cannot make the gateway hammer
//! the identity provider.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::jwk::Jwk;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jwks::{self, Origin};
use super::keys::{Freshness, KeyStore, VerifyKey, now_ms};
use crate::config::{ConfigError, JwksUrlConfig};

/// A whole fetch (connect, answer, body) takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// JWKS documents are a few KiB; anything larger is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// A JWKS URL entry, ready to fetch: its config and its client.
pub struct Endpoint {
    pub(super) config: JwksUrlConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Scheme, host and path, for logs (a query could hold a credential).
    label: String,
}

impl Endpoint {
    /// Sets up TLS (`ca_file` is read now, so `check` reports a bad one).
    pub fn new(file: &Path, index: usize, config: &JwksUrlConfig) -> Result<Endpoint, ConfigError> {
        let err = |msg: String| {
            ConfigError::new(file, Some(format!("auth.jwks_urls[{index}].ca_file")), msg)
        };
        let roots = crate::tls_client::roots(config.ca_file.as_deref()).map_err(err)?;
        let tls = crate::tls_client::builder(roots)
            .map_err(err)?
            .with_no_client_auth();
        let https = crate::tls_client::connector(tls, FETCH_TIMEOUT);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let url = &config.url;
        let label = format!(
            "{}://{}{}",
            url.scheme_str().unwrap_or("https"),
            url.authority().map_or("", |a| a.as_str()),
            url.path()
        );
        Ok(Endpoint {
            config: config.clone(),
            client,
            label,
        })
    }

    /// GET the set: its parsed JWKs and its `max-age`.
    async fn fetch(&self) -> Result<(jwks::Parsed, Option<u64>), String> {
        let req = Request::get(self.config.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("smh-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if resp.status() != StatusCode::OK {
                return Err(format!("answered {}", resp.status()));
            }
            let max_age = resp
                .headers()
                .get(header::CACHE_CONTROL)
                .and_then(|v| jwks::max_age(v.as_bytes()));
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((body, max_age))
        };
        let (body, max_age) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        Ok((jwks::parse(&body, Origin::Url)?, max_age))
    }
}

/// Allows a refetch for unknown kids at most once per period.
#[derive(Debug, Default)]
pub struct Cooldown {
    last: Option<Instant>,
}

impl Cooldown {
    /// True (and the period starts again) when the last refetch began at least
    /// `period` before `now`, or there was none.
    pub fn try_begin(&mut self, now: Instant, period: Duration) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < period)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

struct Loaded {
    keys: Vec<Arc<VerifyKey>>,
    /// As published, to tell whether a refetch changed anything.
    jwks: Vec<Jwk>,
}

struct Schedule {
    next: Instant,
    failures: u32,
}

/// One JWKS URL's set and its fetch state. Kept across reloads that leave its
/// entry unchanged.
pub struct Source {
    endpoint: Arc<Endpoint>,
    loaded: Mutex<Loaded>,
    freshness: Arc<Freshness>,
    created_ms: u64,
    schedule: Mutex<Schedule>,
    cooldown: Mutex<Cooldown>,
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished, successful or not.
    attempts: AtomicU64,
}

impl Source {
    pub fn new(endpoint: Arc<Endpoint>) -> Source {
        Source {
            endpoint,
            loaded: Mutex::new(Loaded {
                keys: Vec::new(),
                jwks: Vec::new(),
            }),
            freshness: Arc::new(Freshness::default()),
            created_ms: now_ms(),
            schedule: Mutex::new(Schedule {
                next: Instant::now(),
                failures: 0,
            }),
            cooldown: Mutex::new(Cooldown::default()),
            fetching: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
        }
    }

    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(super) fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    pub(super) fn created_ms(&self) -> u64 {
        self.created_ms
    }

    pub(super) fn keys(&self) -> Vec<Arc<VerifyKey>> {
        lock(&self.loaded).keys.clone()
    }

    pub(super) fn key_count(&self) -> usize {
        lock(&self.loaded).keys.len()
    }

    fn next_due(&self) -> Instant {
        lock(&self.schedule).next
    }

    /// The scheduled refresh.
    async fn refresh(&self, store: &KeyStore) {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_now(store).await;
    }

    /// An unknown kid of this set's issuer: refetch, unless the cooldown forbids it;
    /// then only a fetch already under way is waited for.
    pub(super) async fn refetch(&self, store: &KeyStore, cooldown: Duration) {
        let seen = self.attempts.load(Ordering::SeqCst);
        if lock(&self.cooldown).try_begin(Instant::now(), cooldown) {
            let _one_at_a_time = self.fetching.lock().await;
            // A fetch that ended while this one waited is as new as it would be.
            if self.attempts.load(Ordering::SeqCst) == seen {
                self.fetch_now(store).await;
            }
        } else if self.fetching.try_lock().is_err() {
            drop(self.fetching.lock().await);
        }
    }

    async fn fetch_now(&self, store: &KeyStore) {
        let result = self.endpoint.fetch().await;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let config = &self.endpoint.config;
        let label = &self.endpoint.label;
        let failure = match result {
            Ok((parsed, max_age)) if !parsed.keys.is_empty() => {
                store.successes.fetch_add(1, Ordering::Relaxed);
                self.freshness.succeeded(now_ms());
                *lock(&self.schedule) = Schedule {
                    next: Instant::now() + jwks::refresh_after(config.refresh, max_age),
                    failures: 0,
                };
                if self.replace(parsed) {
                    store.recompose();
                }
                return;
            }
            Ok((parsed, _)) => format!("no usable key{}", describe_skipped(&parsed.skipped)),
            Err(e) => e,
        };
        store.failures.fetch_add(1, Ordering::Relaxed);
        let mut schedule = lock(&self.schedule);
        schedule.failures = schedule.failures.saturating_add(1);
        let retry = jwks::retry_after(schedule.failures, config.refresh);
        schedule.next = Instant::now() + retry;
        drop(schedule);
        crate::log::warn(&format!(
            "JWKS {label}: fetch failed ({failure}); the last good set keeps serving up to auth.jwks_max_stale after its last success; next try in {retry:?}"
        ));
    }

    /// Installs a fetched set; false when it is the set already loaded.
    fn replace(&self, parsed: jwks::Parsed) -> bool {
        let jwks: Vec<Jwk> = parsed.keys.iter().map(|k| k.jwk.clone()).collect();
        let mut loaded = lock(&self.loaded);
        if loaded.jwks == jwks {
            return false;
        }
        let label = &self.endpoint.label;
        for (kid, skip) in &parsed.skipped {
            crate::log::warn(&format!("JWKS {label}: JWK {kid} {skip}; skipped"));
        }
        let kids: Vec<&str> = parsed
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect();
        crate::log::info(&format!(
            "JWKS {label}: {} keys loaded ({}), {} skipped",
            kids.len(),
            kids.join(", "),
            parsed.skipped.len()
        ));
        loaded.keys = parsed
            .keys
            .into_iter()
            .map(|k| {
                Arc::new(VerifyKey {
                    kid: k.kid,
                    issuer: self.endpoint.config.issuer.clone(),
                    alg: k.alg,
                    key: k.key,
                    fetched: Some(self.freshness.clone()),
                })
            })
            .collect();
        loaded.jwks = jwks;
        true
    }
}

fn describe_skipped(skipped: &[(String, jwks::Skip)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let each: Vec<String> = skipped
        .iter()
        .map(|(kid, s)| format!("{kid} {s}"))
        .collect();
    format!(": {}", each.join("; "))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background refresh of every JWKS URL set: each is fetched when due (at
/// start, then per its `refresh` or `max-age`, sooner after a failure), and a
/// reload that adds sets wakes it. Ends when `cancel` is cancelled.
/// Runs as the `jwks-refresh` task of [`crate::tasks`].
pub async fn refresh_loop(keys: Arc<KeyStore>, cancel: CancellationToken) {
    {
        loop {
            let round = async {
                for source in keys.sources() {
                    if source.next_due() <= Instant::now() {
                        source.refresh(&keys).await;
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = round => {}
            }
            let next = keys
                .sources()
                .iter()
                .map(|s| s.next_due())
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                _ = keys.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_allows_one_refetch_per_period() {
        let mut c = Cooldown::default();
        let period = Duration::from_secs(30);
        let t0 = Instant::now();
        assert!(c.try_begin(t0, period), "the first refetch may start");
        for s in [0, 1, 10, 29] {
            assert!(
                !c.try_begin(t0 + Duration::from_secs(s), period),
                "at +{s}s"
            );
        }
        assert!(c.try_begin(t0 + period, period), "a period later");
        assert!(!c.try_begin(t0 + period + Duration::from_secs(1), period));
        // A shorter period after a reload applies from the last refetch.
        assert!(c.try_begin(t0 + period + Duration::from_secs(2), Duration::from_secs(1)));
    }
}
