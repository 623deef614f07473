//! Background tasks of one gateway: started from one place, stopped together.
//!
//! Every long-running task that is not a connection (the cache sweeper, the Redis
//! entry counter, JWKS refresh, SMH-token refresh, ...) is spawned through a
//! [`Tasks`] registry instead of a bare `tokio::spawn`. Each gets a
//! [`CancellationToken`] that fires at shutdown; [`Tasks::shutdown`] cancels them
//! all and waits (up to a grace period) until every one has returned, so a
//! gateway started in-process by a test stops without leaving tasks behind.
//!
//! Adding a task:
//!
//! ```ignore
//! tasks.spawn("jwks-refresh", move |cancel| async move {
//!     let mut tick = tokio::time::interval(period);
//!     loop {
//!         tokio::select! {
//!             _ = cancel.cancelled() => return,
//!             _ = tick.tick() => refresh().await,
//!         }
//!     }
//! });
//! ```
//!
//! The future must return soon after `cancel` fires (select on
//! `cancel.cancelled()` wherever it waits). The registry is cheap to clone; the
//! gateway hands it to whatever builds such tasks ([`crate::proxy::Gateway::tasks`]).

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The registry: a tracker of every task spawned, the token that stops them, and
/// the names of those still running (for the log when one overstays the grace).
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    running: Arc<Mutex<Vec<&'static str>>>,
}

/// Takes a task's name off the running list when it ends, however it ends.
struct Running {
    list: Arc<Mutex<Vec<&'static str>>>,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|n| *n == self.name) {
            list.swap_remove(i);
        }
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `task(cancel)` on the current runtime. `name` appears in the log if
    /// the task is still running when the shutdown grace ends.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
        let running = Running {
            list: self.running.clone(),
            name,
        };
        let fut = task(self.cancel.child_token());
        self.tracker.spawn(async move {
            let _running = running;
            fut.await;
        });
    }

    /// Runs `work` on what `owner` points to at once and then every `period`,
    /// until the owner is dropped or the gateway stops. Ticks missed while `work`
    /// runs are not made up.
    pub fn every<T, F, Fut>(&self, name: &'static str, period: Duration, owner: Weak<T>, work: F)
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(name, move |cancel| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                work(owner).await;
            }
        });
    }

    /// The token cancelled at shutdown, for a task that spawns helpers of its own.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels every task and waits up to `grace` for all of them to return.
    /// Returns whether they all did. Tasks spawned after this are cancelled at once.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            let names = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join(", ");
            crate::log::warn(&format!(
                "background tasks still running after {grace:?}: {names}"
            ));
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let stopped = stopped.clone();
            tasks.spawn("test", move |cancel| async move {
                cancel.cancelled().await;
                // Some clean-up after the signal, which shutdown waits for.
                tokio::task::yield_now().await;
                stopped.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(tasks.running(), 3);
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
        assert_eq!(tasks.running(), 0);
    }

    /// Polls `done` every 10 ms for up to 10 s (a shared machine may be slow).
    async fn within_deadline(done: impl Fn() -> bool) -> bool {
        for _ in 0..1000 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    #[tokio::test]
    async fn a_periodic_task_runs_until_its_owner_is_dropped() {
        let tasks = Tasks::new();
        let owner = Arc::new(AtomicUsize::new(0));
        tasks.every(
            "tick",
            Duration::from_millis(5),
            Arc::downgrade(&owner),
            |o| async move {
                o.fetch_add(1, Ordering::SeqCst);
            },
        );
        assert!(within_deadline(|| owner.load(Ordering::SeqCst) >= 3).await);
        assert_eq!(tasks.running(), 1);
        drop(owner);
        assert!(
            within_deadline(|| tasks.running() == 0).await,
            "ends with its owner"
        );
    }

    #[tokio::test]
    async fn a_periodic_task_stops_at_shutdown() {
        let tasks = Tasks::new();
        let owner = Arc::new(AtomicUsize::new(0));
        tasks.every(
            "tick",
            Duration::from_secs(3600),
            Arc::downgrade(&owner),
            |_| async {},
        );
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test]
    async fn a_task_that_ignores_cancel_is_reported_after_the_grace() {
        let tasks = Tasks::new();
        tasks.spawn("stubborn", |_cancel| std::future::pending::<()>());
        assert!(!tasks.shutdown(Duration::from_millis(50)).await);
        assert_eq!(tasks.running(), 1);
    }

    #[tokio::test]
    async fn a_task_spawned_after_shutdown_sees_its_token_cancelled() {
        let tasks = Tasks::new();
        assert!(tasks.shutdown(Duration::from_secs(1)).await);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn("late", move |cancel| async move {
            let _ = tx.send(cancel.is_cancelled());
        });
        assert!(rx.await.unwrap());
    }
}
