//! A counting limit whose capacity can change while it is in use: the open
//! connections (`server.max_connections`) and the requests in flight
//! (`server.max_in_flight`), both of which a reload may raise or lower.
//!
//! A semaphore cannot shrink below the permits it has handed out; this counter
//! can: lowering the capacity refuses new holders until enough old ones are gone,
//! and never takes anything from a holder. One `fetch_add` to take, one
//! `fetch_sub` to give back, as cheap as a semaphore's fast path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Limit {
    held: AtomicUsize,
    capacity: AtomicUsize,
}

/// One unit of a [`Limit`], given back on drop.
#[derive(Debug)]
pub struct Held<L: AsRef<Limit>>(L);

impl AsRef<Limit> for &Limit {
    fn as_ref(&self) -> &Limit {
        self
    }
}

impl<L: AsRef<Limit>> Drop for Held<L> {
    fn drop(&mut self) {
        self.0.as_ref().held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limit {
    pub fn new(capacity: usize) -> Limit {
        Limit {
            held: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
        }
    }

    /// Takes one unit if fewer than the capacity are held.
    pub fn try_take(&self) -> Option<Held<&Limit>> {
        // Not `then_some`: that would build (and drop, giving back) a Held even
        // on refusal.
        self.take().then(|| Held(self))
    }

    /// As [`Limit::try_take`], for a holder that outlives the borrow (a task).
    pub fn try_take_owned(self: &Arc<Limit>) -> Option<Held<Arc<Limit>>> {
        self.take().then(|| Held(self.clone()))
    }

    fn take(&self) -> bool {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        if before < self.capacity.load(Ordering::Relaxed) {
            true
        } else {
            self.held.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// A new capacity (reload). Holders above it keep their unit.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Units held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_capacity_and_gives_back_on_drop() {
        let limit = Limit::new(2);
        let a = limit.try_take().unwrap();
        let _b = limit.try_take().unwrap();
        assert!(limit.try_take().is_none());
        assert_eq!(limit.held(), 2, "a refusal holds nothing");
        drop(a);
        assert!(limit.try_take().is_some());
    }

    #[test]
    fn a_capacity_change_applies_to_new_holders_only() {
        let limit = Arc::new(Limit::new(3));
        let held: Vec<_> = (0..3).map(|_| limit.try_take_owned().unwrap()).collect();
        limit.set_capacity(1);
        assert!(limit.try_take().is_none());
        assert_eq!(limit.held(), 3, "lowering takes nothing away");
        drop(held);
        let one = limit.try_take().unwrap();
        assert!(limit.try_take().is_none());
        drop(one);
        limit.set_capacity(5);
        let more: Vec<_> = (0..5).map(|_| limit.try_take().unwrap()).collect();
        assert!(limit.try_take().is_none());
        assert_eq!(more.len(), 5);
    }
}
