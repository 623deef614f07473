//! Request ids for requests that arrive without a sane `X-Request-Id`: a random
//! per-process prefix (so replicas do not collide) and a counter (so ids are cheap
//! and ordered within a process).

use std::sync::atomic::{AtomicU64, Ordering};

pub struct RequestIds {
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let mut seed = [0u8; 6];
        // A failing OS RNG leaves a fixed prefix: ids stay unique per process.
        let _ = getrandom::fill(&mut seed);
        let prefix = seed.iter().map(|b| format!("{b:02x}")).collect();
        RequestIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:08x}", self.prefix)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::is_sane_request_id;

    #[test]
    fn ids_are_unique_and_sane() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(is_sane_request_id(a.as_bytes()), "{a}");
        assert_ne!(RequestIds::new().next(), RequestIds::new().next());
    }
}
