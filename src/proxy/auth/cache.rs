//! A bounded cache of recently verified tokens. SDK clients send the same token
//! with every request of an upload, so most verifications repeat one already done;
//! a hit skips base64, JSON and the signature and re-checks only `exp`.
//!
//! Safe because a token's bytes fix everything else that is checked (signature,
//! alg, kid, iss, aud, claims) for a given config and key set: the cache lives
//! inside the `Verifier`, which a reload replaces, and each entry remembers the
//! generation of the [`KeySet`] it was verified under, so any change of keys (a
//! JWKS refresh that drops one) sends the token through full verification again.
//! An entry verified with a JWKS URL key also shares that set's freshness, so a
//! set past `auth.jwks_max_stale` refuses its cached tokens too. Only successes are
//! cached, so garbage cannot fill it; tokens over [`MAX_CACHED_TOKEN`] bytes are
//! not cached at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Principal;
use super::keys::{Freshness, KeySet, now_ms};
use crate::error::AuthFailure;

/// Entries kept at most.
const MAX_ENTRIES: usize = 10_000;
/// Longer tokens are verified every time (bounds the cache's memory).
const MAX_CACHED_TOKEN: usize = 2048;

/// foldhash, not SipHash: a key is a whole token (hundreds of bytes, hashed on
/// every request), and only tokens that verified are ever inserted, so nobody
/// without the issuer's key can fill a bucket with colliding keys; the seed is
/// random per process all the same.
type Map = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

struct Entry {
    principal: Arc<Principal>,
    exp: u64,
    generation: u64,
    fetched: Option<Arc<Freshness>>,
}

pub(super) struct VerifiedCache {
    map: Mutex<Map>,
}

impl VerifiedCache {
    pub(super) fn new() -> Self {
        VerifiedCache {
            map: Mutex::new(Map::default()),
        }
    }

    /// `None` on a miss, and for an entry of another key set generation (removed:
    /// the token is verified again against the keys in force). An expired entry is
    /// removed and refused as `Expired`; one whose JWKS set went stale is refused.
    pub(super) fn get(
        &self,
        token: &str,
        now: u64,
        leeway: u64,
        keys: &KeySet,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(token)?;
        if entry.generation != keys.generation() {
            map.remove(token);
            return None;
        }
        if entry.exp.saturating_add(leeway) < now {
            map.remove(token);
            return Some(Err(AuthFailure::Expired));
        }
        if entry.fetched.is_some() && !keys.may_serve(entry.fetched.as_deref(), now_ms()) {
            return Some(Err(AuthFailure::KeysStale));
        }
        Some(Ok(entry.principal.clone()))
    }

    pub(super) fn insert(
        &self,
        token: &str,
        principal: Arc<Principal>,
        exp: u64,
        now: u64,
        generation: u64,
        fetched: Option<Arc<Freshness>>,
    ) {
        if token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| e.exp >= now);
            if map.len() >= MAX_ENTRIES {
                // Still full of live tokens: start over rather than track recency.
                map.clear();
            }
        }
        map.insert(
            token.into(),
            Entry {
                principal,
                exp,
                generation,
                fetched,
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn set(generation: u64) -> KeySet {
        KeySet::new(generation, Vec::new(), Duration::from_secs(60))
    }

    fn put(c: &VerifiedCache, token: &str, exp: u64, generation: u64) {
        c.insert(
            token,
            Arc::new(Principal::default()),
            exp,
            0,
            generation,
            None,
        );
    }

    #[test]
    fn hit_until_expiry_plus_leeway() {
        let c = VerifiedCache::new();
        let keys = set(1);
        put(&c, "t", 100, 1);
        assert!(matches!(c.get("t", 100, 0, &keys), Some(Ok(_))));
        assert!(matches!(c.get("t", 110, 30, &keys), Some(Ok(_))));
        assert!(matches!(
            c.get("t", 131, 30, &keys),
            Some(Err(AuthFailure::Expired))
        ));
        assert!(
            c.get("t", 131, 30, &keys).is_none(),
            "expired entries are dropped"
        );
        assert!(c.get("other", 0, 0, &keys).is_none());
    }

    #[test]
    fn an_entry_of_another_key_set_generation_is_a_miss_and_dropped() {
        let c = VerifiedCache::new();
        put(&c, "t", 100, 1);
        assert!(c.get("t", 50, 0, &set(2)).is_none());
        assert!(
            c.get("t", 50, 0, &set(1)).is_none(),
            "dropped, not kept for the old generation"
        );
    }

    #[test]
    fn an_entry_of_a_stale_jwks_set_is_refused() {
        let c = VerifiedCache::new();
        let fresh = Arc::new(Freshness::default());
        c.insert(
            "t",
            Arc::new(Principal::default()),
            100,
            0,
            1,
            Some(fresh.clone()),
        );
        // Never fetched (or fetched long ago): stale.
        assert!(matches!(
            c.get("t", 50, 0, &set(1)),
            Some(Err(AuthFailure::KeysStale))
        ));
        fresh.succeeded(now_ms());
        assert!(matches!(c.get("t", 50, 0, &set(1)), Some(Ok(_))));
    }

    #[test]
    fn bounded() {
        let c = VerifiedCache::new();
        for i in 0..MAX_ENTRIES + 10 {
            put(&c, &format!("t{i}"), 1000, 0);
        }
        assert!(c.len() <= MAX_ENTRIES);
        put(&c, &"x".repeat(MAX_CACHED_TOKEN + 1), 1000, 0);
        assert!(
            c.get(&"x".repeat(MAX_CACHED_TOKEN + 1), 0, 0, &set(0))
                .is_none()
        );
    }
}
