//! The memory backend: entries in a `DashMap` keyed by digest, bounded by
//! `cache.max_entries`.
//!
//! A lookup is one shard read lock and two reference-count increments (body and
//! content type): nothing else is on the hit path. Everything that changes the map
//! (insert, eviction, sweep, invalidation) runs under one `Mutex` that also holds
//! two indexes: by expiry, so that eviction and the sweep take the entries closest
//! to expiry first, and by upload, so that invalidation drops an upload's entries
//! without a scan. Writes happen once per upstream call, so that lock is cold.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;

use super::entry::{Entry, now_ms};
use super::key::{BuildDigestHasher, CacheKey, KeyHash, UploadId};

/// How often expired entries are swept out.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Stored {
    entry: Entry,
    upload: UploadId,
}

#[derive(Default)]
struct Index {
    by_expiry: BTreeSet<(u64, KeyHash)>,
    by_upload: HashMap<UploadId, Vec<KeyHash>, BuildDigestHasher>,
    /// Uploads invalidated lately, until when: a renew that was in flight when its
    /// upload was confirmed or cancelled must not store its answer afterwards.
    tombstones: HashMap<UploadId, u64, BuildDigestHasher>,
}

pub struct MemoryStore {
    entries: DashMap<KeyHash, Stored, BuildDigestHasher>,
    index: Mutex<Index>,
    len: AtomicUsize,
    /// `cache.max_entries`; a reload may change it (a lower bound takes effect as
    /// entries are next inserted).
    max_entries: AtomicUsize,
    /// How long an invalidated upload refuses new entries (the longest a flight can
    /// run).
    tombstone_ms: AtomicU64,
}

impl MemoryStore {
    pub fn new(max_entries: usize, tombstone: Duration) -> MemoryStore {
        MemoryStore {
            entries: DashMap::with_hasher(BuildDigestHasher::default()),
            index: Mutex::new(Index::default()),
            len: AtomicUsize::new(0),
            max_entries: AtomicUsize::new(max_entries.max(1)),
            tombstone_ms: AtomicU64::new(u64::try_from(tombstone.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// New `cache.max_entries` and flight bound (reload).
    pub fn retune(&self, max_entries: usize, tombstone: Duration) {
        self.max_entries
            .store(max_entries.max(1), Ordering::Relaxed);
        self.tombstone_ms.store(
            u64::try_from(tombstone.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The live entry for `key`, if any. The hit path.
    pub fn get(&self, key: &KeyHash, now: u64) -> Option<Entry> {
        let stored = self.entries.get(key)?;
        (stored.entry.expires_at > now).then(|| stored.entry.clone())
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an entry; returns whether it was stored. When full, the entries
    /// closest to expiry (expired ones first) make room, unless the new entry is
    /// itself the closest: then it is the one left out.
    pub fn insert(&self, key: &CacheKey, entry: Entry, now: u64) -> bool {
        if entry.expires_at <= now {
            return false;
        }
        let mut index = self.lock();
        if index.tombstones.get(&key.upload).is_some_and(|&t| t > now) {
            return false;
        }
        self.remove_locked(&mut index, &key.hash);
        let max_entries = self.max_entries.load(Ordering::Relaxed);
        while index.by_expiry.len() >= max_entries {
            let Some(&(soonest, victim)) = index.by_expiry.first() else {
                break;
            };
            if soonest >= entry.expires_at && soonest > now {
                return false;
            }
            self.remove_locked(&mut index, &victim);
        }
        index.by_expiry.insert((entry.expires_at, key.hash));
        index
            .by_upload
            .entry(key.upload)
            .or_default()
            .push(key.hash);
        self.entries.insert(
            key.hash,
            Stored {
                entry,
                upload: key.upload,
            },
        );
        self.len.store(index.by_expiry.len(), Ordering::Relaxed);
        true
    }

    fn remove_locked(&self, index: &mut Index, key: &KeyHash) {
        let Some((_, stored)) = self.entries.remove(key) else {
            return;
        };
        index.by_expiry.remove(&(stored.entry.expires_at, *key));
        if let Some(keys) = index.by_upload.get_mut(&stored.upload) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                index.by_upload.remove(&stored.upload);
            }
        }
        self.len.store(index.by_expiry.len(), Ordering::Relaxed);
    }

    /// Drops every entry of an upload, and refuses new ones for a while (see
    /// `tombstones`). Returns how many were dropped.
    pub fn invalidate_upload(&self, upload: &UploadId, now: u64) -> usize {
        let mut index = self.lock();
        index.tombstones.insert(
            *upload,
            now.saturating_add(self.tombstone_ms.load(Ordering::Relaxed)),
        );
        let keys = index.by_upload.remove(upload).unwrap_or_default();
        for key in &keys {
            if let Some((_, stored)) = self.entries.remove(key) {
                index.by_expiry.remove(&(stored.entry.expires_at, *key));
            }
        }
        self.len.store(index.by_expiry.len(), Ordering::Relaxed);
        keys.len()
    }

    /// Removes expired entries and tombstones; returns how many entries went.
    pub fn sweep(&self, now: u64) -> usize {
        let mut index = self.lock();
        let mut removed = 0;
        while let Some(&(expires_at, key)) = index.by_expiry.first() {
            if expires_at > now {
                break;
            }
            self.remove_locked(&mut index, &key);
            removed += 1;
        }
        index.tombstones.retain(|_, &mut until| until > now);
        removed
    }
}

/// Sweeps every [`SWEEP_EVERY`] until the store is dropped or the gateway stops.
pub fn spawn_sweeper(store: Weak<MemoryStore>, tasks: &crate::tasks::Tasks) {
    tasks.every("cache-sweeper", SWEEP_EVERY, store, |store| async move {
        store.sweep(now_ms());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use bytes::Bytes;

    fn key(ck: &str, user: &str) -> CacheKey {
        CacheKey::new(
            "lib",
            "-",
            ck,
            Some(user),
            None,
            &crate::cache::CredentialDigest::of(&Secret::new("t")),
        )
    }

    fn entry(expires_at: u64) -> Entry {
        Entry {
            expires_at,
            content_type: None,
            body: Bytes::from(expires_at.to_string()),
        }
    }

    fn store(max: usize) -> MemoryStore {
        MemoryStore::new(max, Duration::from_secs(10))
    }

    #[test]
    fn get_serves_until_expiry() {
        let s = store(10);
        let k = key("ck", "u");
        assert!(s.insert(&k, entry(1000), 0));
        assert_eq!(s.get(&k.hash, 999).unwrap().body, "1000");
        assert!(s.get(&k.hash, 1000).is_none());
        assert!(s.get(&key("ck", "v").hash, 0).is_none());
        assert!(
            !s.insert(&key("ck2", "u"), entry(10), 10),
            "already expired"
        );
    }

    #[test]
    fn eviction_takes_the_entries_closest_to_expiry() {
        let s = store(3);
        let (a, b, c, d) = (key("a", "u"), key("b", "u"), key("c", "u"), key("d", "u"));
        s.insert(&a, entry(300), 0);
        s.insert(&b, entry(100), 0);
        s.insert(&c, entry(200), 0);
        assert!(s.insert(&d, entry(400), 0));
        assert_eq!(s.len(), 3);
        assert!(s.get(&b.hash, 0).is_none(), "b expired soonest: evicted");
        assert!(s.get(&c.hash, 0).is_some());
        // The next to go is c (200), then a (300).
        assert!(s.insert(&b, entry(500), 0));
        assert!(s.get(&c.hash, 0).is_none());
        assert!(s.get(&a.hash, 0).is_some());
        // A newcomer closer to expiry than everything stored is the one left out.
        assert!(!s.insert(&c, entry(250), 0));
        assert!(s.get(&a.hash, 0).is_some());
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn expired_entries_make_room_first() {
        let s = store(2);
        s.insert(&key("a", "u"), entry(100), 0);
        s.insert(&key("b", "u"), entry(900), 0);
        // At 200, a is expired: even a short-lived newcomer takes its place.
        assert!(s.insert(&key("c", "u"), entry(300), 200));
        assert!(s.get(&key("b", "u").hash, 200).is_some());
        assert!(s.get(&key("c", "u").hash, 200).is_some());
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let s = store(10);
        let k = key("a", "u");
        s.insert(&k, entry(100), 0);
        s.insert(&k, entry(200), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(&k.hash, 150).unwrap().body, "200");
        assert_eq!(s.sweep(150), 0, "the old expiry left the index");
        assert_eq!(s.sweep(200), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn sweep_removes_expired_entries_only() {
        let s = store(10);
        s.insert(&key("a", "u"), entry(100), 0);
        s.insert(&key("b", "u"), entry(200), 0);
        s.insert(&key("c", "u"), entry(300), 0);
        assert_eq!(s.sweep(200), 2);
        assert_eq!(s.len(), 1);
        assert!(s.get(&key("c", "u").hash, 200).is_some());
    }

    #[test]
    fn invalidate_upload_drops_every_variant_of_that_upload_only() {
        let s = store(10);
        s.insert(&key("ck", "u1"), entry(1000), 0);
        s.insert(&key("ck", "u2"), entry(1000), 0);
        s.insert(&key("other", "u1"), entry(1000), 0);
        assert_eq!(s.invalidate_upload(&key("ck", "x").upload, 10), 2);
        assert!(s.get(&key("ck", "u1").hash, 10).is_none());
        assert!(s.get(&key("ck", "u2").hash, 10).is_none());
        assert!(s.get(&key("other", "u1").hash, 10).is_some());
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(2000), 1, "the index holds no dropped entries");
    }

    #[test]
    fn an_invalidated_upload_refuses_late_answers_for_a_while() {
        let s = store(10);
        let k = key("ck", "u");
        s.invalidate_upload(&k.upload, 0);
        assert!(
            !s.insert(&k, entry(100_000), 5_000),
            "an answer in flight at confirm"
        );
        assert!(s.insert(&key("other", "u"), entry(100_000), 5_000));
        s.sweep(10_000);
        assert!(
            s.insert(&k, entry(100_000), 10_000),
            "the tombstone is gone"
        );
    }
}
