//! The keys tokens are verified with. A [`KeySet`] is one immutable value: the
//! file keys of the running config (`auth.keys`, `auth.jwks_file`) and the keys of
//! every `auth.jwks_urls` set as last fetched, with a generation number. The
//! [`KeyStore`] holds the current set behind an atomic swap and builds a new one,
//! with a new generation, whenever a fetched set changes or a reload brings new
//! files. The verified-token cache remembers the generation a token was verified
//! under, so a key that leaves a set stops verifying at once, cached tokens
//! included.
//!
//! The store outlives reloads: a JWKS URL entry that a reload leaves unchanged keeps
//! its fetched keys and its readiness; only new or changed entries start unfetched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::source::{Endpoint, Source};
use crate::config::{Config, ConfigError};
use crate::error::AuthFailure;

/// The keys a config names: the file keys, loaded (so `check` and a reload fail on a
/// bad file), and the JWKS URLs, ready to fetch (their TLS set up, nothing fetched).
pub struct KeySources {
    pub(super) file_keys: Vec<Arc<VerifyKey>>,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    pub(super) cooldown: Duration,
    pub(super) max_stale: Duration,
}

impl KeySources {
    pub fn from_config(config: &Config) -> Result<KeySources, ConfigError> {
        let auth = &config.auth;
        let file_keys = super::files::load(config)?;
        let endpoints = auth
            .jwks_urls
            .iter()
            .enumerate()
            .map(|(i, u)| Endpoint::new(&config.source, i, u).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        if file_keys.is_empty() && endpoints.is_empty() {
            return Err(ConfigError::new(
                &config.source,
                Some("auth.jwks_file".into()),
                "holds no usable key, and auth.keys and auth.jwks_urls are empty",
            ));
        }
        Ok(KeySources {
            file_keys,
            endpoints,
            cooldown: auth.jwks_refetch_cooldown,
            max_stale: auth.jwks_max_stale,
        })
    }

    /// The file keys alone, as a set (what [`super::Verifier::verify`] uses).
    pub(super) fn file_set(&self) -> KeySet {
        KeySet::new(0, self.file_keys.clone(), self.max_stale)
    }
}

/// A verification key with its pinned algorithm.
pub struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
    /// For a key of a JWKS URL set: when that set last fetched successfully.
    pub(super) fetched: Option<Arc<Freshness>>,
}

/// When a JWKS URL set last fetched successfully, shared by its keys and by the
/// cache entries verified with them: one atomic read tells whether they may serve.
#[derive(Debug, Default)]
pub struct Freshness {
    /// Unix milliseconds; 0 = never.
    last_success_ms: AtomicU64,
}

impl Freshness {
    pub(super) fn succeeded(&self, now_ms: u64) {
        self.last_success_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(super) fn last_success_ms(&self) -> Option<u64> {
        Some(self.last_success_ms.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }

    /// Within `max_stale` of the last success.
    pub(super) fn is_fresh(&self, now_ms: u64, max_stale: Duration) -> bool {
        self.last_success_ms()
            .is_some_and(|t| now_ms.saturating_sub(t) <= max_stale.as_millis() as u64)
    }
}

/// The wall clock in Unix milliseconds (staleness spans hours, and is compared with
/// the times the fetches recorded).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every key the gateway verifies with, at one moment.
pub struct KeySet {
    generation: u64,
    keys: Vec<Arc<VerifyKey>>,
    /// When no key names an issuer, the payload need not be peeked before verifying.
    lookup_by_issuer: bool,
    max_stale: Duration,
}

impl KeySet {
    pub(super) fn new(generation: u64, keys: Vec<Arc<VerifyKey>>, max_stale: Duration) -> KeySet {
        KeySet {
            generation,
            lookup_by_issuer: keys.iter().any(|k| k.issuer.is_some()),
            keys,
            max_stale,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn lookup_by_issuer(&self) -> bool {
        self.lookup_by_issuer
    }

    /// A key of a JWKS URL set may serve while its set is within `auth.jwks_max_stale`
    /// of its last successful fetch; file keys always may.
    pub(super) fn may_serve(&self, fetched: Option<&Freshness>, now_ms: u64) -> bool {
        fetched.is_none_or(|f| f.is_fresh(now_ms, self.max_stale))
    }

    /// SPEC §2: a key is found by (`iss`, `kid`); a token without `kid` may use only
    /// the sole key for its issuer. A key without `issuer` serves any issuer, after
    /// the keys that name the token's issuer.
    pub(super) fn find(
        &self,
        issuer: Option<&str>,
        kid: Option<&str>,
    ) -> Result<&Arc<VerifyKey>, AuthFailure> {
        let keys = &self.keys;
        let found = match kid {
            Some(kid) => keys_for_issuer(keys, issuer)
                .find(|k| k.kid.as_deref() == Some(kid))
                .or_else(|| keys_for_issuer(keys, None).find(|k| k.kid.as_deref() == Some(kid))),
            None => match sole_key(keys, issuer) {
                Sole::One(k) => Some(k),
                Sole::Several => None,
                Sole::None if issuer.is_some() => match sole_key(keys, None) {
                    Sole::One(k) => Some(k),
                    Sole::Several | Sole::None => None,
                },
                Sole::None => None,
            },
        };
        found.ok_or(AuthFailure::UnknownKey)
    }
}

fn keys_for_issuer<'k, 'i>(
    keys: &'k [Arc<VerifyKey>],
    issuer: Option<&'i str>,
) -> impl Iterator<Item = &'k Arc<VerifyKey>> + use<'k, 'i> {
    keys.iter().filter(move |k| k.issuer.as_deref() == issuer)
}

enum Sole<'k> {
    None,
    One(&'k Arc<VerifyKey>),
    Several,
}

fn sole_key<'k>(keys: &'k [Arc<VerifyKey>], issuer: Option<&str>) -> Sole<'k> {
    let mut it = keys_for_issuer(keys, issuer);
    match (it.next(), it.next()) {
        (None, _) => Sole::None,
        (Some(k), None) => Sole::One(k),
        (Some(_), Some(_)) => Sole::Several,
    }
}

/// Whether every JWKS URL set can serve (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A URL has not answered once yet.
    Fetching,
    /// A set is past `auth.jwks_max_stale` since its last success.
    Stale,
}

/// JWKS numbers for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwksStats {
    pub refresh_success: u64,
    pub refresh_failure: u64,
    /// Keys loaded from JWKS URLs.
    pub keys: usize,
    /// Seconds since the oldest set's last success (since it was configured, when it
    /// never succeeded); 0 without JWKS URLs.
    pub age_secs: u64,
}

/// The current [`KeySet`], and the JWKS URL sets it is built from.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    inner: Mutex<Inner>,
    next_generation: AtomicU64,
    /// Wakes the refresher: a reload added sets to fetch.
    pub(super) wake: tokio::sync::Notify,
    pub(super) successes: AtomicU64,
    pub(super) failures: AtomicU64,
}

struct Inner {
    files: Vec<Arc<VerifyKey>>,
    sources: Vec<Arc<Source>>,
    cooldown: Duration,
    max_stale: Duration,
}

impl KeyStore {
    pub fn new(config: &KeySources) -> KeyStore {
        let store = KeyStore {
            current: ArcSwap::from_pointee(KeySet::new(0, Vec::new(), config.max_stale)),
            inner: Mutex::new(Inner {
                files: Vec::new(),
                sources: Vec::new(),
                cooldown: config.cooldown,
                max_stale: config.max_stale,
            }),
            next_generation: AtomicU64::new(1),
            wake: tokio::sync::Notify::new(),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        store.reconfigure(config);
        store
    }

    /// A reload: the new file keys, and the JWKS URL sets of the new config. A set
    /// whose entry is unchanged keeps its keys and its schedule.
    pub fn reconfigure(&self, config: &KeySources) {
        let mut inner = self.lock();
        let old = std::mem::take(&mut inner.sources);
        inner.sources = config
            .endpoints
            .iter()
            .map(|endpoint| {
                old.iter()
                    .find(|s| s.endpoint().config == endpoint.config)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Source::new(endpoint.clone())))
            })
            .collect();
        inner.files = config.file_keys.clone();
        inner.cooldown = config.cooldown;
        inner.max_stale = config.max_stale;
        self.compose(&inner);
        drop(inner);
        self.wake.notify_one();
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn readiness(&self) -> Readiness {
        let inner = self.lock();
        let now = now_ms();
        let mut readiness = Readiness::Ready;
        for source in &inner.sources {
            match source.freshness().last_success_ms() {
                None => return Readiness::Fetching,
                Some(_) if !source.freshness().is_fresh(now, inner.max_stale) => {
                    readiness = Readiness::Stale;
                }
                Some(_) => {}
            }
        }
        readiness
    }

    pub fn stats(&self) -> JwksStats {
        let inner = self.lock();
        let now = now_ms();
        JwksStats {
            refresh_success: self.successes.load(Ordering::Relaxed),
            refresh_failure: self.failures.load(Ordering::Relaxed),
            keys: inner.sources.iter().map(|s| s.key_count()).sum(),
            age_secs: inner
                .sources
                .iter()
                .map(|s| {
                    now.saturating_sub(s.freshness().last_success_ms().unwrap_or(s.created_ms()))
                })
                .max()
                .unwrap_or(0)
                / 1000,
        }
    }

    /// The sets a token of this issuer may be verified with: those bound to it and
    /// those bound to none.
    fn sources_for(&self, issuer: Option<&str>) -> (Vec<Arc<Source>>, Duration) {
        let inner = self.lock();
        let sources = inner
            .sources
            .iter()
            .filter(|s| {
                let bound = s.endpoint().config.issuer.as_deref();
                bound.is_none() || bound == issuer
            })
            .cloned()
            .collect();
        (sources, inner.cooldown)
    }

    pub(super) fn has_sources(&self) -> bool {
        !self.lock().sources.is_empty()
    }

    /// An unknown kid: one refetch of every set a token of this issuer may use,
    /// each shared by the requests waiting for it and bound by the cooldown.
    pub(super) async fn refetch(&self, issuer: Option<&str>) {
        let (sources, cooldown) = self.sources_for(issuer);
        for source in sources {
            source.refetch(self, cooldown).await;
        }
    }

    pub(super) fn sources(&self) -> Vec<Arc<Source>> {
        self.lock().sources.clone()
    }

    /// A set's keys changed: build the next [`KeySet`]. A source no longer
    /// configured (a reload dropped it while it fetched) changes nothing.
    pub(super) fn recompose(&self) {
        let inner = self.lock();
        self.compose(&inner);
    }

    fn compose(&self, inner: &Inner) {
        let mut keys = inner.files.clone();
        for source in &inner.sources {
            keys.extend(source.keys());
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.current
            .store(Arc::new(KeySet::new(generation, keys, inner.max_stale)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_lasts_max_stale_after_the_last_success() {
        let f = Freshness::default();
        let max = Duration::from_secs(10);
        assert!(!f.is_fresh(1_000, max), "never fetched is not fresh");
        f.succeeded(1_000);
        assert!(f.is_fresh(1_000, max));
        assert!(f.is_fresh(11_000, max));
        assert!(!f.is_fresh(11_001, max));
        f.succeeded(20_000);
        assert!(f.is_fresh(25_000, max));
    }
}
