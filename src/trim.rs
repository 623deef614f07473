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
    // Cleared however the task ends: a runtime shut down before the task ran or
    // mid-sleep (a test's, or the gateway's at exit) must not leave later parks
    // without one. Moved in, so that it drops with the future even unpolled.
    let pending = Pending;
    tokio::spawn(async move {
        let _pending = pending;
        tokio::time::sleep(AFTER).await;
        collect();
    });
}

struct Pending;

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING.store(false, Ordering::Release);
    }
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

    // One test: the flag is process-wide, and two tests side by side would race.
    #[test]
    fn parks_share_one_collection_and_a_dropped_one_does_not_block_the_next() {
        // A runtime shut down before its collection's sleep ends: the task is
        // dropped, not run, and the flag is clear again.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { after_park() });
        assert!(PENDING.load(Ordering::Acquire));
        drop(rt);
        assert!(!PENDING.load(Ordering::Acquire));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
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
        });
    }
}
