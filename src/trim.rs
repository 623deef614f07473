//! Handing memory back to the OS once connections go idle.
//!
//! mimalloc keeps freed pages for a while (its `purge_delay`, 1 s) and purges them
//! only when the allocator is used again: a gateway whose connections have all
//! just been parked (`server/park.rs`, which frees each one's ~20 KiB of hyper
//! buffers) makes no further allocations, so that memory stayed resident (10,000
//! parked connections: 55-73 MiB of RSS for ~2 KiB of live heap each). Purging
//! at every free instead (`MIMALLOC_PURGE_DELAY=0`) cost about 7 % more CPU per
//! request under load. So parks ask for one collection a little later: at most
//! one per [`AFTER`], none while connections are busy (busy ones are not parked).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after a park the collection runs: the parks of one idle spell
/// (connections idle since the same burst) come together in one collection.
pub const AFTER: Duration = Duration::from_secs(1);

static PENDING: AtomicBool = AtomicBool::new(false);

/// A connection was parked: return freed memory to the OS soon. Cheap when a
/// collection is already due (one atomic swap).
pub fn after_park() {
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(AFTER).await;
        PENDING.store(false, Ordering::Release);
        collect();
    });
}

/// Frees the pages this thread's heap no longer uses and purges (decommits)
/// freed memory program-wide. Without mimalloc as the global allocator (the
/// library's tests) it finds nothing to do.
pub fn collect() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at
    // any time; it only walks the calling thread's heap and the shared arenas.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parks_in_a_burst_share_one_collection() {
        after_park();
        assert!(PENDING.load(Ordering::Acquire));
        after_park();
        after_park();
        // The collection runs after AFTER and clears the flag; poll generously.
        for _ in 0..600 {
            if !PENDING.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no collection within 30 s");
    }
}
