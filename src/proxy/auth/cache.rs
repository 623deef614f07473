//! A bounded cache of recently verified tokens. SDK clients send the same token
//! with every request of an upload, so most verifications repeat one already done;
//! a hit skips base64, JSON and the signature and re-checks only `exp`.
//!
//! Safe because a token's bytes fix everything else that is checked (signature,
//! alg, kid, iss, aud, claims) for a given config, and the cache lives inside the
//! `Verifier`, which a reload replaces. Only successes are cached, so garbage
//! cannot fill it; tokens over [`MAX_CACHED_TOKEN`] bytes are not cached at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Principal;
use crate::error::AuthFailure;

/// Entries kept at most.
const MAX_ENTRIES: usize = 10_000;
/// Longer tokens are verified every time (bounds the cache's memory).
const MAX_CACHED_TOKEN: usize = 2048;

struct Entry {
    principal: Arc<Principal>,
    exp: u64,
}

pub(super) struct VerifiedCache {
    map: Mutex<HashMap<Box<str>, Entry>>,
}

impl VerifiedCache {
    pub(super) fn new() -> Self {
        VerifiedCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `None` on a miss; an expired entry is removed and refused as `Expired`.
    pub(super) fn get(
        &self,
        token: &str,
        now: u64,
        leeway: u64,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(token)?;
        if entry.exp.saturating_add(leeway) < now {
            map.remove(token);
            return Some(Err(AuthFailure::Expired));
        }
        Some(Ok(entry.principal.clone()))
    }

    pub(super) fn insert(&self, token: &str, principal: Arc<Principal>, exp: u64, now: u64) {
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
        map.insert(token.into(), Entry { principal, exp });
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_until_expiry_plus_leeway() {
        let c = VerifiedCache::new();
        c.insert("t", Arc::new(Principal::default()), 100, 50);
        assert!(matches!(c.get("t", 100, 0), Some(Ok(_))));
        assert!(matches!(c.get("t", 110, 30), Some(Ok(_))));
        assert!(matches!(
            c.get("t", 131, 30),
            Some(Err(AuthFailure::Expired))
        ));
        assert!(c.get("t", 131, 30).is_none(), "expired entries are dropped");
        assert!(c.get("other", 0, 0).is_none());
    }

    #[test]
    fn bounded() {
        let c = VerifiedCache::new();
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(&format!("t{i}"), Arc::new(Principal::default()), 1000, 0);
        }
        assert!(c.len() <= MAX_ENTRIES);
        c.insert(
            &"x".repeat(MAX_CACHED_TOKEN + 1),
            Arc::new(Principal::default()),
            1000,
            0,
        );
        assert!(c.get(&"x".repeat(MAX_CACHED_TOKEN + 1), 0, 0).is_none());
    }
}
