//! Flights: one upstream call per key at a time, whose answer every waiter shares.
//!
//! A flight runs in a task of its own. In memory it calls the upstream and stores
//! a cacheable answer. With Redis it first negotiates across replicas: it takes the
//! key's lock and calls the upstream, or polls for the flight of the replica that
//! holds the lock; if Redis fails, or the holder outlives every bound, it calls the
//! upstream alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::entry::{Answer, Lifetime, Published, now_ms};
use super::key::{BuildDigestHasher, CacheKey, KeyHash};
use super::memory::MemoryStore;
use super::redis::{Acquire, Poll, RedisStore, Unavailable};
use super::{Backend, RenewCache, Reply, Source};
use crate::error::GatewayError;

/// Polling a remote flight: first interval, growth up to this.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// What a flight ended with, shared by everyone waiting on it.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) reply: Result<Reply, GatewayError>,
    /// How the flight's leader got it: `Miss` when this replica called the upstream.
    pub(super) source: Source,
    pub(super) redis_failed: bool,
}

pub(super) type Slot = watch::Receiver<Option<Arc<Done>>>;
pub(super) type Flights = Arc<Mutex<HashMap<KeyHash, Slot, BuildDigestHasher>>>;

/// Starts the flight for `key` in a task of its own, which answers on `tx` and
/// then leaves the table.
pub(super) fn spawn<Fut>(
    cache: &RenewCache,
    key: CacheKey,
    fetch: Fut,
    tx: watch::Sender<Option<Arc<Done>>>,
) where
    Fut: Future<Output = Result<Answer, GatewayError>> + Send + 'static,
{
    let (backend, lifetime, bound) = (
        cache.backend.clone(),
        cache.lifetime(),
        cache.flight_bound(),
    );
    let leaving = Leaving {
        flights: cache.flights.clone(),
        key: key.hash,
    };
    tokio::spawn(async move {
        let done = match backend {
            Backend::Memory(m) => fly_memory(&m, &key, fetch, lifetime).await,
            Backend::Redis(r) => fly_redis(&r, &key, fetch, lifetime, bound).await,
        };
        // Leave the table only now that the entry (if any) is stored: a request
        // arriving in between finds either the flight or the entry.
        drop(leaving);
        let _ = tx.send(Some(Arc::new(done)));
    });
}

/// Removes a flight from the table when its task ends, panics included.
struct Leaving {
    flights: Flights,
    key: KeyHash,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

async fn fly_memory(
    store: &MemoryStore,
    key: &CacheKey,
    fetch: impl Future<Output = Result<Answer, GatewayError>>,
    lifetime: Lifetime,
) -> Done {
    let result = fetch.await;
    if let Ok(answer) = &result {
        let now = now_ms();
        if let Some(entry) = lifetime.entry_for(answer, now) {
            store.insert(key, entry, now);
        }
    }
    Done {
        reply: result.map(|a| Reply::Fetched(Arc::new(a))),
        source: Source::Miss,
        redis_failed: false,
    }
}

/// What the Redis lock protocol decided for this replica's flight.
enum Plan {
    /// Answered without calling the upstream.
    Done(Done),
    /// The lock is ours.
    Lead,
    /// Redis failed, or the holder outlived every bound: call the upstream
    /// without the lock.
    Alone { redis_failed: bool },
}

async fn fly_redis(
    store: &RedisStore,
    key: &CacheKey,
    fetch: impl Future<Output = Result<Answer, GatewayError>>,
    lifetime: Lifetime,
    bound: Duration,
) -> Done {
    let flight = flight_id();
    let redis_failed = match negotiate(store, key, &flight, bound).await {
        Plan::Done(done) => return done,
        Plan::Lead => false,
        Plan::Alone { redis_failed } => redis_failed,
    };
    let result = fetch.await;
    let now = now_ms();
    let published = match result
        .as_ref()
        .ok()
        .and_then(|a| lifetime.entry_for(a, now))
    {
        Some(entry) => store.store(key, &flight, &entry).await.map(|_| ()),
        None => store.finish(key, &flight, &result).await,
    };
    Done {
        reply: result.map(|a| Reply::Fetched(Arc::new(a))),
        source: Source::Miss,
        redis_failed: redis_failed || published.is_err(),
    }
}

async fn negotiate(store: &RedisStore, key: &CacheKey, flight: &str, bound: Duration) -> Plan {
    let deadline = Instant::now() + bound;
    loop {
        let holder = match store.acquire(key, flight).await {
            Err(Unavailable) => return Plan::Alone { redis_failed: true },
            Ok(Acquire::Leader) => return Plan::Lead,
            Ok(Acquire::Hit(entry)) => {
                return Plan::Done(Done {
                    reply: Ok(Reply::Cached(entry)),
                    source: Source::Hit,
                    redis_failed: false,
                });
            }
            Ok(Acquire::Held(holder)) => holder,
        };
        let mut interval = POLL_FIRST;
        loop {
            if Instant::now() + interval > deadline {
                return Plan::Alone {
                    redis_failed: false,
                };
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(POLL_MAX);
            let reply = match store.poll(key, &holder).await {
                Err(Unavailable) => return Plan::Alone { redis_failed: true },
                Ok(Poll::Waiting) => continue,
                Ok(Poll::Gone) => break,
                Ok(Poll::Hit(entry)) => Ok(Reply::Cached(entry)),
                Ok(Poll::Result(Published::Answer(a))) => Ok(Reply::Fetched(Arc::new(a))),
                Ok(Poll::Result(Published::Error(e))) => Err(e),
            };
            return Plan::Done(Done {
                reply,
                source: Source::Coalesced,
                redis_failed: false,
            });
        }
    }
}

/// A random id for one flight: the lock's value, and the name of its result.
pub(super) fn flight_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the process id, the time and a counter are still
        // unique enough for a lock that lives seconds.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        bytes[..8].copy_from_slice(&(now_ms() ^ u64::from(std::process::id())).to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn flight_ids_are_unique() {
        assert_ne!(super::flight_id(), super::flight_id());
        assert_eq!(super::flight_id().len(), 32);
    }
}
