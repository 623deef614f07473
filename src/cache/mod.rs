//! The renew cache (SPEC §7): answers renews from a cache, and turns a burst of
//! identical misses into one upstream call.
//!
//! ```text
//! lookup ─hit──────────────────────────────────────────────> Entry       (X-Cache: HIT)
//!    └─miss─> local flight for this key? ─yes─> wait for it ─> its answer (COALESCED)
//!                   └─no─> spawn the flight ─> its answer                 (MISS)
//!                            memory: upstream ─> store if cacheable
//!                            redis:  lock ─won─> upstream ─> store, or publish the
//!                                      │                      uncached result
//!                                      └held─> poll for the holder's entry or result
//! ```
//!
//! - [`key`]: who may share an entry (a wrong key is cache poisoning).
//! - [`entry`]: what is stored and for how long.
//! - `flight`: one upstream call per key, shared by its waiters (and, with Redis,
//!   by the other replicas: `lua` holds the scripts).
//! - [`memory`], [`redis`]: the two backends.
//!
//! The flight runs in its own task, so a waiter whose client goes away cancels
//! nothing; every waiter gets the flight's answer, failures included, and the next
//! request after a failure starts a new flight (failures are never stored). Redis
//! trouble never fails a request: the flight then calls the upstream itself.

pub mod entry;
mod flight;
pub mod key;
mod lua;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{CacheBackend, Config, ConfigError};
use crate::error::GatewayError;
use crate::metrics::CacheResult;
use crate::tasks::Tasks;
pub use entry::{Answer, Entry, Lifetime, now_ms};
use flight::Flights;
pub use key::{CacheKey, CredentialDigest, KeyHash, RenewKey, UploadId};
use memory::MemoryStore;
use redis::{RedisStore, Unavailable};

/// How long the gateway waits at start for a first Redis connection (when Redis is
/// reachable this takes a millisecond; when not, the gateway starts anyway).
const REDIS_WARM_UP: Duration = Duration::from_secs(1);

/// Where an answer came from: the `X-Cache` header and the access log's `cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the cache, no upstream call.
    Hit,
    /// This request's own upstream call.
    Miss,
    /// Another request's upstream call, on this replica or another.
    Coalesced,
}

impl Source {
    pub fn header(self) -> &'static str {
        match self {
            Source::Hit => "HIT",
            Source::Miss => "MISS",
            Source::Coalesced => "COALESCED",
        }
    }

    pub fn log(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Coalesced => "coalesced",
        }
    }
}

/// An answer as the cache hands it out.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A stored entry: a 200 with this body.
    Cached(Entry),
    /// An upstream answer, whatever its status (shared by the waiters of a flight).
    Fetched(Arc<Answer>),
}

/// The outcome of one lookup.
#[derive(Debug)]
pub struct Lookup {
    pub reply: Result<Reply, GatewayError>,
    pub source: Source,
    /// The `cache_requests_total` result: `error` whenever Redis failed along the
    /// way (the answer then came from the upstream), else after `source`.
    pub metric: CacheResult,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// The cache of one gateway process. Built once at start; a reload retunes it
/// ([`RenewCache::retune`]: max_entries, min_remaining, max_ttl, the flight bound)
/// but keeps its entries and backend.
pub struct RenewCache {
    backend: Backend,
    flights: Flights,
    tuning: ArcSwap<Tuning>,
    /// Lookups waiting for a flight's answer right now (leaders included).
    waiting: AtomicUsize,
}

/// The part of a cache a reload changes.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    lifetime: Lifetime,
    /// The longest a flight can run: upstream attempts times `upstream.timeout`,
    /// plus a margin. Bounds the Redis lock and remote waiting.
    flight_bound: Duration,
}

/// Counts a lookup as waiting until its answer came or its request went away.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The longest one upstream exchange of a renew can take, retries included.
pub fn flight_bound(config: &Config) -> Duration {
    let attempts = config.upstream.retries.saturating_add(1);
    config.upstream.timeout.saturating_mul(attempts) + Duration::from_secs(1)
}

/// What `check` and `serve` verify before binding: a Redis URL the client can use.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    let cache = &config.cache;
    let rate_limits_redis = config.rate_limits.backend == crate::config::RateLimitBackend::Redis;
    if (cache.enabled && cache.backend == CacheBackend::Redis) || rate_limits_redis {
        ::redis::Client::open(cache.redis_url.as_str()).map_err(|e| {
            ConfigError::new(
                &config.source,
                Some("cache.redis_url".into()),
                format!("not a usable Redis URL ({:?})", e.kind()),
            )
        })?;
    }
    Ok(())
}

impl RenewCache {
    /// The cache `[cache]` asks for, or `None` when it is disabled. Redis being
    /// down does not fail this: the gateway starts and serves from the upstream.
    /// Its background task (memory: the sweeper; Redis: the entry counter) runs in
    /// `tasks`, and stops at shutdown.
    pub async fn start(config: &Config, tasks: &Tasks) -> Result<Option<RenewCache>, ConfigError> {
        let cache = &config.cache;
        if !cache.enabled {
            return Ok(None);
        }
        check_config(config)?;
        let bound = flight_bound(config);
        let lifetime = Lifetime {
            min_remaining: cache.min_remaining,
            max_ttl: cache.max_ttl,
        };
        Ok(Some(match cache.backend {
            CacheBackend::Memory => RenewCache::memory(cache.max_entries, lifetime, bound, tasks),
            CacheBackend::Redis => {
                let store = RedisStore::connect(&cache.redis_url, bound, REDIS_WARM_UP, tasks)
                    .await
                    .map_err(|msg| {
                        ConfigError::new(&config.source, Some("cache.redis_url".into()), msg)
                    })?;
                RenewCache::new(Backend::Redis(store), lifetime, bound)
            }
        }))
    }

    /// A memory cache (with its sweeper, in `tasks`: call inside a Tokio runtime).
    pub fn memory(
        max_entries: usize,
        lifetime: Lifetime,
        flight_bound: Duration,
        tasks: &Tasks,
    ) -> RenewCache {
        let store = Arc::new(MemoryStore::new(max_entries, flight_bound));
        memory::spawn_sweeper(Arc::downgrade(&store), tasks);
        RenewCache::new(Backend::Memory(store), lifetime, flight_bound)
    }

    fn new(backend: Backend, lifetime: Lifetime, flight_bound: Duration) -> RenewCache {
        RenewCache {
            backend,
            flights: Flights::default(),
            tuning: ArcSwap::from_pointee(Tuning {
                lifetime,
                flight_bound,
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Lookups waiting for a flight right now, on this replica: a test holding the
    /// upstream's answer sees every caller of a burst waiting here, on one flight,
    /// rather than guessing from timing.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The Redis connection, when the cache is shared through Redis (managed SMH
    /// tokens are shared through it too, with its timeouts and breaker).
    pub fn redis(&self) -> Option<Arc<RedisStore>> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.clone()),
        }
    }

    /// Applies a reloaded config's `[cache]` tuning and upstream timeouts; entries
    /// already stored keep the lifetime they were stored with.
    pub fn retune(&self, config: &Config) {
        let cache = &config.cache;
        let tuning = Tuning {
            lifetime: Lifetime {
                min_remaining: cache.min_remaining,
                max_ttl: cache.max_ttl,
            },
            flight_bound: flight_bound(config),
        };
        match &self.backend {
            Backend::Memory(m) => m.retune(cache.max_entries, tuning.flight_bound),
            Backend::Redis(r) => r.retune(tuning.flight_bound),
        }
        self.tuning.store(Arc::new(tuning));
    }

    fn lifetime(&self) -> Lifetime {
        self.tuning.load().lifetime
    }

    fn flight_bound(&self) -> Duration {
        self.tuning.load().flight_bound
    }

    /// The Redis connection and breaker, when this cache uses Redis: the rate
    /// limits share it.
    pub fn redis_link(&self) -> Option<Arc<crate::redis_link::Link>> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.link()),
        }
    }

    /// Entries held: exact for memory; for Redis, across all replicas as last
    /// counted.
    pub fn entries(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.len(),
            Backend::Redis(r) => r.len(),
        }
    }

    /// Answers a renew from the cache, or from one shared upstream call. `fetch`
    /// is called only by the request that starts a flight, and the future it makes
    /// runs in a task of its own.
    pub async fn lookup<'k, F, Fut>(&self, key: impl Into<RenewKey<'k>>, fetch: F) -> Lookup
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, GatewayError>> + Send + 'static,
    {
        let key = key.into();
        let mut redis_failed = false;
        // A memory hit needs the variant's digest alone; everything after it, the
        // upload id too.
        if let Backend::Memory(m) = &self.backend
            && let Some(entry) = m.get(&key.hash, now_ms())
        {
            return hit(entry);
        }
        let key = key.complete();
        match &self.backend {
            Backend::Memory(_) => {}
            Backend::Redis(r) => match r.get(&key).await {
                Ok(Some(entry)) => return hit(entry),
                Ok(None) => {}
                Err(Unavailable) => redis_failed = true,
            },
        }

        let (mut slot, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&key.hash) {
                Some(slot) => (slot.clone(), false),
                None => {
                    // A flight may have stored and left since the lookup above.
                    if let Backend::Memory(m) = &self.backend
                        && let Some(entry) = m.get(&key.hash, now_ms())
                    {
                        return hit(entry);
                    }
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.hash, rx.clone());
                    flight::spawn(self, key, fetch(), tx);
                    (rx, true)
                }
            }
        };

        let done = {
            let _waiting = Waiting::enter(&self.waiting);
            match slot.wait_for(Option::is_some).await {
                Ok(done) => done.clone(),
                Err(_) => None,
            }
        };
        // A flight that vanished without an answer panicked: answer as for a
        // broken upstream exchange rather than hang or guess.
        let Some(done) = done else {
            return Lookup {
                reply: Err(GatewayError::UpstreamUnavailable(
                    crate::error::UpstreamFailure::Invalid,
                )),
                source: Source::Coalesced,
                metric: CacheResult::Error,
            };
        };
        let source = if leader {
            done.source
        } else {
            Source::Coalesced
        };
        Lookup {
            reply: done.reply.clone(),
            source,
            metric: if redis_failed || done.redis_failed {
                CacheResult::Error
            } else {
                match source {
                    Source::Hit => CacheResult::Hit,
                    Source::Miss => CacheResult::Miss,
                    Source::Coalesced => CacheResult::Coalesced,
                }
            },
        }
    }

    /// Drops every cached renew answer of one upload (all users, traffic_limits
    /// and credentials), in memory or in Redis, and keeps answers still in flight
    /// from being stored afterwards. For confirm and cancel. Returns how many
    /// entries went; `Err` when Redis could not be reached (its entries then live
    /// out their TTL).
    pub async fn invalidate_upload(
        &self,
        library: &str,
        space: &str,
        confirm_key: &str,
    ) -> Result<usize, Unavailable> {
        let upload = UploadId::new(library, space, confirm_key);
        match &self.backend {
            Backend::Memory(m) => Ok(m.invalidate_upload(&upload, now_ms())),
            Backend::Redis(r) => r.invalidate_upload(&upload.hex()).await,
        }
    }
}

fn hit(entry: Entry) -> Lookup {
    Lookup {
        reply: Ok(Reply::Cached(entry)),
        source: Source::Hit,
        metric: CacheResult::Hit,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::error::UpstreamFailure;
    use crate::secret::Secret;

    fn cache() -> RenewCache {
        RenewCache::memory(
            100,
            Lifetime {
                min_remaining: Duration::from_secs(300),
                max_ttl: Duration::from_secs(1800),
            },
            Duration::from_secs(5),
            &crate::tasks::Tasks::new(),
        )
    }

    fn key(user: &str) -> CacheKey {
        CacheKey::new(
            "lib",
            "-",
            "ck",
            Some(user),
            None,
            &CredentialDigest::of(&Secret::new("t")),
        )
    }

    fn renew_answer() -> Answer {
        let expiration = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let expiration = expiration
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(format!(r#"{{"expiration":"{expiration}"}}"#)),
            rest: None,
        }
    }

    /// A fetch that counts its calls, waits `delay`, then answers `result`.
    fn fetch(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
        result: Result<Answer, GatewayError>,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn Future<Output = Result<Answer, GatewayError>> + Send + 'static>,
    > + use<> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                result
            })
        }
    }

    #[tokio::test]
    async fn miss_then_hit() {
        let c = cache();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = c
            .lookup(key("u"), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
            .await;
        assert_eq!(
            (first.source, first.metric),
            (Source::Miss, CacheResult::Miss)
        );
        let second = c
            .lookup(key("u"), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
            .await;
        assert_eq!(
            (second.source, second.metric),
            (Source::Hit, CacheResult::Hit)
        );
        assert!(matches!(second.reply, Ok(Reply::Cached(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.entries(), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_call_and_its_failure() {
        let c = Arc::new(cache());
        let calls = Arc::new(AtomicUsize::new(0));
        let failure = Err(GatewayError::UpstreamTimeout);
        let lookups: Vec<_> = (0..10)
            .map(|_| {
                let (c, f) = (
                    c.clone(),
                    fetch(&calls, Duration::from_millis(50), failure.clone()),
                );
                tokio::spawn(async move { c.lookup(key("u"), f).await })
            })
            .collect();
        let mut sources = Vec::new();
        for l in lookups {
            let l = l.await.unwrap();
            assert_eq!(l.reply.unwrap_err(), GatewayError::UpstreamTimeout);
            sources.push(l.source);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sources.iter().filter(|s| **s == Source::Miss).count(), 1);
        assert_eq!(
            sources.iter().filter(|s| **s == Source::Coalesced).count(),
            9
        );
        // Not stored: the next lookup calls again.
        let next = c
            .lookup(key("u"), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
            .await;
        assert_eq!(next.source, Source::Miss);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(c.entries(), 1);
    }

    #[tokio::test]
    async fn different_keys_do_not_coalesce() {
        let c = Arc::new(cache());
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(
            c.lookup(
                key("a"),
                fetch(&calls, Duration::from_millis(20), Ok(renew_answer()))
            ),
            c.lookup(
                key("b"),
                fetch(&calls, Duration::from_millis(20), Ok(renew_answer()))
            ),
        );
        assert_eq!((a.source, b.source), (Source::Miss, Source::Miss));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_flight_that_panics_answers_502_and_leaves_the_table() {
        let c = cache();
        let boom =
            || -> std::pin::Pin<Box<dyn Future<Output = Result<Answer, GatewayError>> + Send>> {
                Box::pin(async { panic!("fetch panicked (on purpose, in a test)") })
            };
        let l = c.lookup(key("u"), boom).await;
        assert_eq!(
            l.reply.unwrap_err(),
            GatewayError::UpstreamUnavailable(UpstreamFailure::Invalid)
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let next = c
            .lookup(key("u"), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
            .await;
        assert_eq!(next.source, Source::Miss, "a new flight, not the dead one");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_upload_drops_its_entries_and_refuses_a_late_answer() {
        let c = cache();
        let calls = Arc::new(AtomicUsize::new(0));
        for user in ["a", "b"] {
            c.lookup(key(user), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
                .await;
        }
        assert_eq!(c.entries(), 2);
        assert_eq!(c.invalidate_upload("lib", "-", "ck").await, Ok(2));
        assert_eq!(c.entries(), 0);
        let again = c
            .lookup(key("a"), fetch(&calls, Duration::ZERO, Ok(renew_answer())))
            .await;
        assert_eq!(again.source, Source::Miss);
        assert_eq!(
            c.entries(),
            0,
            "the upload is gone: its answers are not kept"
        );
    }
}
