//! The Redis backend: entries shared by every replica, and the lock that lets one
//! replica's upstream call serve the others.
//!
//! Layout (digests in hex, so no token, user or confirm key is stored in plain):
//!
//! ```text
//! smhgw:v1:u:<upload>             hash   <variant> -> <expires_at ms>\n<content type>\n<body>
//!                                        (key TTL: the longest-lived variant)
//! smhgw:v1:lock:<upload>:<variant> string <flight id>, PX = the longest a flight can run
//! smhgw:v1:res:<flight id>         string an uncached flight result, for remote waiters (short PX)
//! smhgw:v1:gone:<upload>          string an invalidated upload: refuse late stores (PX)
//! smhgw:v1:index                  zset   <upload>:<variant> scored by expires_at (the gauge)
//! ```
//!
//! One hash per upload makes invalidation one `DEL`. Variants expire inside it by
//! their own `expires_at`, which readers check; the hash's TTL follows the
//! longest-lived one (a Lua `PTTL`/`PEXPIRE` pair rather than `EXPIRE … GT`,
//! which needs Redis 7). Multi-key steps are Lua scripts, so each is atomic and one
//! round trip (see `lua.rs`).
//!
//! Failure: calls go through [`crate::redis_link::Link`] (bounded, behind a breaker,
//! reconnecting by itself); while Redis fails the gateway serves from the upstream.
//! The rate limits, when they use Redis, share this store's link.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};

use super::entry::{self, Answer, Entry, Published, now_ms};
use super::key::CacheKey;
use super::lua::Scripts;
use crate::error::GatewayError;
pub use crate::redis_link::{CALL_TIMEOUT, RETRY_EVERY, Unavailable};
use crate::redis_link::{Link, ms};

/// How long an uncached flight result stays readable for remote waiters (they
/// poll far more often than this).
const RESULT_TTL: Duration = Duration::from_secs(5);
/// How often the entries gauge is refreshed.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Variants one upload may hold in Redis (distinct users, traffic_limits,
/// credentials). Past it, new variants are not stored, so one caller cycling
/// traffic_limit values cannot grow a hash without bound.
const MAX_VARIANTS: u32 = 256;

const PREFIX: &str = "smhgw:v1:";

/// What trying to take the lock found.
#[derive(Debug)]
pub enum Acquire {
    /// A live entry: no need to call anyone.
    Hit(Entry),
    /// The lock is ours: call the upstream, then [`RedisStore::store`] or
    /// [`RedisStore::finish`].
    Leader,
    /// Another flight holds it: poll for its outcome.
    Held(Bytes),
}

/// What polling a held lock found.
#[derive(Debug)]
pub enum Poll {
    Hit(Entry),
    /// The flight ended without storing an entry: its answer.
    Result(Published),
    /// Still running.
    Waiting,
    /// The lock went without a result (its holder died or it expired): try again.
    Gone,
}

pub struct RedisStore {
    link: Arc<Link>,
    scripts: Scripts,
    /// Live entries across all replicas, as last counted.
    entries: AtomicUsize,
    /// The lock's lifetime: the longest a flight can run.
    lock_ms: AtomicU64,
    /// How long an invalidated upload refuses stores.
    gone_ms: AtomicU64,
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start does not stop the gateway. It
    /// waits up to `warm_up` for a first connection so that the first requests do
    /// not pay for it; `Err` only for a URL the client cannot use.
    pub async fn connect(
        url: &str,
        flight_bound: Duration,
        warm_up: Duration,
        tasks: &crate::tasks::Tasks,
    ) -> Result<Arc<RedisStore>, String> {
        let link = Arc::new(Link::lazy(url)?);
        let store = Arc::new(RedisStore {
            link,
            scripts: Scripts::new(),
            entries: AtomicUsize::new(0),
            lock_ms: AtomicU64::new(ms(flight_bound)),
            gone_ms: AtomicU64::new(ms(flight_bound)),
        });
        let mut conn = store.link.connection();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<Value>(&mut conn);
        match tokio::time::timeout(warm_up, ping).await {
            Ok(Ok(_)) => crate::log::info("cache: connected to Redis"),
            Ok(Err(e)) => crate::log::warn(&format!(
                "cache: Redis is not reachable ({:?}); serving from the upstream until it is",
                e.kind()
            )),
            Err(_) => crate::log::warn(
                "cache: Redis did not answer in time; serving from the upstream until it does",
            ),
        }
        spawn_counter(Arc::downgrade(&store), tasks);
        Ok(store)
    }

    /// A new flight bound (reload): the lock's and the invalidation's lifetime.
    pub fn retune(&self, flight_bound: Duration) {
        self.lock_ms.store(ms(flight_bound), Ordering::Relaxed);
        self.gone_ms.store(ms(flight_bound), Ordering::Relaxed);
    }

    /// Live entries across all replicas, as last counted (every few seconds).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connection and breaker, for the rate limits to share.
    pub fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// One bounded call, through the breaker.
    async fn call<T>(
        &self,
        run: impl AsyncFnOnce(ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, Unavailable> {
        self.link.call(run).await
    }

    /// The live entry for `key`, if any: one `HGET`.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, Unavailable> {
        let entries = entries_key(key);
        let variant = key.hash.hex();
        let value: Option<Vec<u8>> = self
            .call(async |mut conn| {
                redis::cmd("HGET")
                    .arg(&entries)
                    .arg(&variant)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let now = now_ms();
        Ok(value
            .and_then(|v| entry::decode_entry(Bytes::from(v)))
            .filter(|e| e.expires_at > now))
    }

    /// Looks again, and takes the lock when there is still nothing.
    pub async fn acquire(&self, key: &CacheKey, flight: &str) -> Result<Acquire, Unavailable> {
        let (entries, lock) = (entries_key(key), lock_key(key));
        let variant = key.hash.hex();
        let reply: Value = self
            .call(async |mut conn| {
                self.scripts
                    .acquire
                    .key(&entries)
                    .key(&lock)
                    .arg(&variant)
                    .arg(flight)
                    .arg(self.lock_ms.load(Ordering::Relaxed))
                    .arg(now_ms())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match tagged(reply)? {
            (1, Some(v)) => entry::decode_entry(v).map(Acquire::Hit).ok_or(Unavailable),
            (2, _) => Ok(Acquire::Leader),
            (3, holder) => Ok(Acquire::Held(holder.unwrap_or_default())),
            _ => Err(Unavailable),
        }
    }

    pub async fn poll(&self, key: &CacheKey, holder: &[u8]) -> Result<Poll, Unavailable> {
        let (entries, lock) = (entries_key(key), lock_key(key));
        let result = result_key(holder);
        let variant = key.hash.hex();
        let reply: Value = self
            .call(async |mut conn| {
                self.scripts
                    .poll
                    .key(&entries)
                    .key(&lock)
                    .key(&result)
                    .arg(&variant)
                    .arg(holder)
                    .arg(now_ms())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match tagged(reply)? {
            (1, Some(v)) => entry::decode_entry(v).map(Poll::Hit).ok_or(Unavailable),
            (4, Some(r)) => entry::decode_result(r).map(Poll::Result).ok_or(Unavailable),
            (3, _) => Ok(Poll::Waiting),
            (0, _) => Ok(Poll::Gone),
            _ => Err(Unavailable),
        }
    }

    /// Stores a cacheable answer and releases the lock. Remote waiters read the
    /// entry, or the answer as a flight result when it could not be stored.
    pub async fn store(
        &self,
        key: &CacheKey,
        flight: &str,
        entry: &Entry,
    ) -> Result<bool, Unavailable> {
        let (entries, lock, gone) = (entries_key(key), lock_key(key), gone_key(key));
        let result = result_key(flight.as_bytes());
        let member = format!("{}:{}", key.upload.hex(), key.hash.hex());
        let value = entry::encode_entry(entry);
        let ct = entry
            .content_type
            .as_ref()
            .map_or(&b""[..], |v| v.as_bytes());
        let stored: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .store
                    .key(&entries)
                    .key(&lock)
                    .key(&gone)
                    .key(index_key())
                    .key(&result)
                    .arg(key.hash.hex())
                    .arg(&value)
                    .arg(entry.expires_at)
                    .arg(flight)
                    .arg(now_ms())
                    .arg(ms(RESULT_TTL))
                    .arg(&member)
                    .arg(MAX_VARIANTS)
                    .arg(ct)
                    .arg(&entry.body[..])
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Publishes an answer that is not cached (an error, a non-200, an expiration
    /// too close) for remote waiters, and releases the lock.
    pub async fn finish(
        &self,
        key: &CacheKey,
        flight: &str,
        result: &Result<Answer, GatewayError>,
    ) -> Result<(), Unavailable> {
        let lock = lock_key(key);
        let result_key = result_key(flight.as_bytes());
        let value = entry::encode_result(result);
        let _: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .finish
                    .key(&lock)
                    .key(&result_key)
                    .arg(flight)
                    .arg(&value)
                    .arg(ms(RESULT_TTL))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Drops every variant of an upload; returns how many there were.
    pub async fn invalidate_upload(&self, upload_hex: &str) -> Result<usize, Unavailable> {
        let entries = format!("{PREFIX}u:{upload_hex}");
        let gone = format!("{PREFIX}gone:{upload_hex}");
        let n: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .invalidate
                    .key(&entries)
                    .key(&gone)
                    .key(index_key())
                    .arg(upload_hex)
                    .arg(self.gone_ms.load(Ordering::Relaxed))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// A plain `GET`, through the same timeout and breaker (for state other
    /// features share across replicas: managed SMH tokens).
    pub async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        self.call(async |mut conn| redis::cmd("GET").arg(key).query_async(&mut conn).await)
            .await
    }

    /// `SET key value PX ttl`.
    pub async fn set_value(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let px = ms(ttl).max(1);
        self.call(async |mut conn| {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(px)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Deletes `key` only while its value still ends with `suffix` (another replica
    /// may have replaced it meanwhile).
    pub async fn delete_if_ends_with(&self, key: &str, suffix: &[u8]) -> Result<(), Unavailable> {
        self.call(async |mut conn| {
            self.scripts
                .delete_if
                .key(key)
                .arg(suffix)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn count(&self) -> Result<usize, Unavailable> {
        let n: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .count
                    .key(index_key())
                    .arg(now_ms())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Refreshes the entries gauge every [`COUNT_EVERY`] until the store is dropped
/// or the gateway stops.
fn spawn_counter(store: Weak<RedisStore>, tasks: &crate::tasks::Tasks) {
    tasks.every(
        "cache-redis-counter",
        COUNT_EVERY,
        store,
        |store| async move {
            if let Ok(n) = store.count().await {
                store.entries.store(n, Ordering::Relaxed);
            }
        },
    );
}

fn entries_key(key: &CacheKey) -> String {
    format!("{PREFIX}u:{}", key.upload.hex())
}

fn lock_key(key: &CacheKey) -> String {
    format!("{PREFIX}lock:{}:{}", key.upload.hex(), key.hash.hex())
}

fn gone_key(key: &CacheKey) -> String {
    format!("{PREFIX}gone:{}", key.upload.hex())
}

fn result_key(flight: &[u8]) -> Vec<u8> {
    let mut k = format!("{PREFIX}res:").into_bytes();
    k.extend_from_slice(flight);
    k
}

fn index_key() -> &'static str {
    "smhgw:v1:index"
}

/// A script's `{tag, value?}` reply.
fn tagged(reply: Value) -> Result<(i64, Option<Bytes>), Unavailable> {
    let Value::Array(items) = reply else {
        return Err(Unavailable);
    };
    let mut items = items.into_iter();
    let Some(Value::Int(tag)) = items.next() else {
        return Err(Unavailable);
    };
    let value = match items.next() {
        Some(Value::BulkString(b)) => Some(Bytes::from(b)),
        _ => None,
    };
    Ok((tag, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_digests_only() {
        let key = CacheKey::new(
            "lib1",
            "space",
            "confirm",
            Some("user"),
            Some(1),
            &crate::cache::CredentialDigest::of(&crate::secret::Secret::new("token")),
        );
        for k in [entries_key(&key), lock_key(&key), gone_key(&key)] {
            assert!(k.starts_with(PREFIX), "{k}");
            for plain in ["lib1", "space", "confirm", "user", "token"] {
                assert!(!k.contains(plain), "{k} holds {plain}");
            }
        }
    }
}
