//! One Redis connection with bounded calls and a breaker: what the renew cache
//! (`cache::redis`) and the rate limits (`ratelimit::redis`) share, so that both
//! fail the same way and, when they use the same server, share one connection and
//! one breaker.
//!
//! Failure: every call is bounded by [`CALL_TIMEOUT`]. A failed or slow call opens
//! the breaker for [`RETRY_EVERY`]; while it is open calls fail at once, without
//! waiting, and the caller does without Redis (the cache serves from the upstream,
//! the rate limits let requests through). Then one call probes, and the first
//! success closes it. The connection manager reconnects by itself, so Redis coming
//! back needs no restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The bound on one Redis call. Redis answers in well under a millisecond; a call
/// that takes this long means trouble, and doing without is the better bet.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// How long the breaker stays open after a failure before one call probes again.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Redis did not answer, or not in time, or the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A lazily connected Redis client with the breaker in front of it.
pub struct Link {
    conn: ConnectionManager,
    breaker: Breaker,
}

impl Link {
    /// Sets up the connection without connecting (call inside a Tokio runtime): a
    /// Redis that is down does not stop the gateway. `Err` only for a URL the client
    /// cannot use; the message never echoes the URL, which may hold a password.
    pub fn lazy(url: &str) -> Result<Link, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("cannot use this Redis URL ({:?})", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| format!("cannot set up the Redis connection ({:?})", e.kind()))?;
        Ok(Link {
            conn,
            breaker: Breaker::new(),
        })
    }

    /// A clone of the connection, for a call that bypasses the breaker (the start-up
    /// ping).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// One bounded call, through the breaker.
    pub async fn call<T>(
        &self,
        run: impl AsyncFnOnce(ConnectionManager) -> RedisResult<T>,
    ) -> Result<T, Unavailable> {
        if !self.breaker.allow() {
            return Err(Unavailable);
        }
        match tokio::time::timeout(CALL_TIMEOUT, run(self.conn.clone())).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(_)) | Err(_) => {
                self.breaker.failure();
                Err(Unavailable)
            }
        }
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Open after a failure for [`RETRY_EVERY`]; then one caller probes.
struct Breaker {
    epoch: Instant,
    /// 0 when closed; else the time (ms since `epoch`, at least 1) until which calls
    /// are refused.
    open_until: AtomicU64,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        ms(self.epoch.elapsed()).max(1)
    }

    fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now();
        // Half-open: the caller that moves the window on is the one that probes.
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + ms(RETRY_EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn success(&self) {
        self.open_until.store(0, Ordering::Relaxed);
    }

    fn failure(&self) {
        self.open_until
            .store(self.now() + ms(RETRY_EVERY), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_on_failure_and_lets_one_probe_through_later() {
        let b = Breaker::new();
        assert!(b.allow() && b.allow(), "closed: everything passes");
        b.failure();
        assert!(!b.allow(), "open: refused at once");
        // Pretend the window has passed.
        b.open_until.store(1, Ordering::Relaxed);
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "the others wait for the probe's outcome");
        b.success();
        assert!(b.allow() && b.allow());
    }
}
