//! The memory backend: one `DashMap<u64, u64>` per store, key digest → a time in
//! microseconds (a GCRA `tat`, or the end of a block). A value in the past means the
//! same as no entry, so forgetting it loses nothing.
//!
//! Bounded: at most [`MAX_KEYS`] keys per store. A key is 16 bytes of map entry (a
//! digest, never the user id or address itself), so a store stays under a few MB
//! however many users or addresses a caller cycles through. When a new key finds
//! the store full, the keys whose time has passed are dropped (lossless); if the
//! store is still over 7/8 full, the eighth of the keys nearest to replenished is
//! evicted too (they are the ones whose memory matters least). A sweeper also drops
//! passed keys every [`SWEEP_EVERY`], so an idle store shrinks back.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::cache::key::BuildDigestHasher;

/// Keys one store holds at most.
pub const MAX_KEYS: usize = 100_000;
/// How often passed keys are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct Store {
    /// Keys are keyed SipHash digests already: the map uses them as they are.
    map: DashMap<u64, u64, BuildDigestHasher>,
    max_keys: usize,
}

impl Store {
    pub fn new(max_keys: usize) -> Arc<Store> {
        let store = Arc::new(Store {
            map: DashMap::with_hasher(BuildDigestHasher::default()),
            max_keys: max_keys.max(8),
        });
        spawn_sweeper(Arc::downgrade(&store));
        store
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The key's time, if it has one still to come.
    pub fn get(&self, key: u64, now: u64) -> Option<u64> {
        self.map.get(&key).map(|v| *v).filter(|&t| t > now)
    }

    /// Reads the key's time, lets `step` decide the new one (`None`: leave it), and
    /// returns what `step` returned beside it. `step` may run twice for a new key.
    pub fn update<R>(
        &self,
        key: u64,
        now: u64,
        step: impl Fn(Option<u64>) -> (Option<u64>, R),
    ) -> R {
        if let Some(mut value) = self.map.get_mut(&key) {
            let (next, out) = step(Some(*value));
            if let Some(next) = next {
                *value = next;
            }
            return out;
        }
        // Never while holding a shard: making room walks every shard.
        if self.map.len() >= self.max_keys {
            self.make_room(now);
        }
        match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                let (next, out) = step(Some(*e.get()));
                if let Some(next) = next {
                    *e.get_mut() = next;
                }
                out
            }
            Entry::Vacant(e) => {
                let (next, out) = step(None);
                if let Some(next) = next {
                    e.insert(next);
                }
                out
            }
        }
    }

    /// Sets the key's time to `until` unless it already holds a later one.
    pub fn extend(&self, key: u64, now: u64, until: u64) {
        self.update(key, now, |t| {
            ((t.unwrap_or(0) < until).then_some(until), ())
        });
    }

    /// Moves the key's time back by `by` (a request that did not go through after
    /// all gives its place back).
    pub fn refund(&self, key: u64, by: u64) {
        if let Some(mut value) = self.map.get_mut(&key) {
            *value = value.saturating_sub(by);
        }
    }

    /// Drops passed keys; then, if still over 7/8 of the cap, the eighth nearest to
    /// passing.
    fn make_room(&self, now: u64) {
        self.sweep(now);
        let high = self.max_keys - self.max_keys / 8;
        if self.map.len() <= high {
            return;
        }
        let mut times: Vec<u64> = self.map.iter().map(|e| *e.value()).collect();
        // Other threads may have emptied it meanwhile.
        if times.is_empty() {
            return;
        }
        let cut = (self.max_keys / 8).min(times.len() - 1);
        let (_, threshold, _) = times.select_nth_unstable(cut);
        let threshold = *threshold;
        self.map.retain(|_, t| *t > threshold);
    }

    pub fn sweep(&self, now: u64) {
        self.map.retain(|_, t| *t > now);
    }
}

/// Microseconds on a monotonic clock shared by every store of one limiter.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Never 0, so that 0 can mean "never".
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Sweeps passed keys until the store is dropped; only inside a Tokio runtime (a
/// store built outside one is still bounded by `make_room`).
fn spawn_sweeper(store: Weak<Store>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let clock = Clock::new();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            // The sweeper's clock started later than the limiter's: a time that has
            // passed on it has passed on the limiter's too, so nothing live is lost.
            store.sweep(clock.now());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GCRA-like step: always sets the time to `now + 1000`.
    fn touch(store: &Store, key: u64, now: u64) {
        store.update(key, now, |_| (Some(now + 1000), ()));
    }

    #[test]
    fn cycling_keys_never_grows_the_store_past_its_cap() {
        let store = Store::new(64);
        for key in 0..10_000u64 {
            // All still live: the cap must evict, not just sweep.
            touch(&store, key, 1);
            assert!(store.len() <= 64, "{} keys after {key}", store.len());
        }
    }

    #[test]
    fn a_full_store_drops_passed_keys_first() {
        let store = Store::new(16);
        for key in 0..15 {
            store.update(key, 0, |_| (Some(10), ()));
        }
        store.update(100, 0, |_| (Some(1_000_000), ()));
        // At now = 500 every key but 100 has passed: making room keeps 100.
        touch(&store, 200, 500);
        assert_eq!(store.get(100, 500), Some(1_000_000));
        assert_eq!(store.get(200, 500), Some(1500));
        assert!(store.len() <= 3, "{}", store.len());
    }

    #[test]
    fn eviction_keeps_the_keys_furthest_from_replenished() {
        let store = Store::new(16);
        for key in 0..16u64 {
            store.update(key, 0, |_| (Some(1000 + key), ()));
        }
        touch(&store, 99, 1);
        // The lowest times went; the highest stayed.
        assert_eq!(store.get(15, 1), Some(1015));
        assert_eq!(store.get(0, 1), None);
    }

    #[test]
    fn extend_and_refund() {
        let store = Store::new(16);
        store.extend(1, 0, 50);
        store.extend(1, 0, 40);
        assert_eq!(store.get(1, 0), Some(50), "never shortened");
        store.refund(1, 20);
        assert_eq!(store.get(1, 0), Some(30));
        assert_eq!(store.get(1, 30), None, "passed means absent");
    }
}
