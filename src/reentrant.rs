//! Opt-in reentrancy: one held lock shared by nested code paths, with a hold count.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::guard::LockGuard;

/// A held lock that its holder can take again without deadlocking itself.
///
/// Made from a [`LockGuard`] with [`LockGuard::into_reentrant`]. Each
/// [`reenter`](Self::reenter) returns another handle and raises the hold count; each handle
/// dropped or [`release`](Self::release)d lowers it; the lock is released when the count
/// reaches zero. Derefs to the [`LockGuard`] for the fencing token, lost signal and guarded
/// writes.
///
/// **What "the same holder" means.** In async Rust a task hops between threads and one
/// thread runs many tasks, so neither threads nor tasks identify a holder. Here the holder
/// is whoever has a handle: reentering is explicit, by passing the handle (or a clone from
/// `reenter`) to the code that wants the lock again. Code that calls
/// [`DistributedMutex::lock`](crate::DistributedMutex::lock) instead queues like anyone
/// else, so a plain `lock()` never reenters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// let client = fairlock::Client::connect("memory://reentrant-doc").await?;
/// let mutex = client.mutex("ledger")?;
///
/// let outer = mutex.lock().await?.into_reentrant();
/// let inner = outer.reenter();            // nested code path: no deadlock
/// assert_eq!(outer.hold_count(), 2);
/// inner.release().await?;                 // count 1: still held
/// assert!(mutex.try_lock().await?.is_none());
/// outer.release().await?;                 // count 0: released
/// assert!(mutex.try_lock().await?.is_some());
/// # Ok(())
/// # }
/// ```
#[must_use = "the lock is released (in the background) when the last handle is dropped"]
pub struct ReentrantGuard {
    shared: Arc<Shared>,
    /// Whether this handle still counts as a hold (cleared by `release`, not by `Drop`).
    holding: bool,
}

/// The one guard and its hold count. The count, not the `Arc`'s, decides which hold is
/// the last: an atomic decrement has exactly one winner, so concurrent final releases
/// cannot both believe another one is left.
struct Shared {
    guard: LockGuard,
    holds: AtomicUsize,
}

impl LockGuard {
    /// Turns this guard into a [`ReentrantGuard`] with a hold count of one.
    pub fn into_reentrant(self) -> ReentrantGuard {
        ReentrantGuard {
            shared: Arc::new(Shared {
                guard: self,
                holds: AtomicUsize::new(1),
            }),
            holding: true,
        }
    }
}

impl ReentrantGuard {
    /// Takes the lock again: another handle, hold count plus one. Never waits; the lock is
    /// already held. (If it was lost meanwhile, the new handle reports that like the old.)
    pub fn reenter(&self) -> ReentrantGuard {
        self.shared.holds.fetch_add(1, Ordering::SeqCst);
        ReentrantGuard {
            shared: self.shared.clone(),
            holding: true,
        }
    }

    /// How many handles hold the lock now.
    pub fn hold_count(&self) -> usize {
        self.shared.holds.load(Ordering::SeqCst)
    }

    /// Gives up this hold. The last one releases the lock and waits for the backend;
    /// earlier ones return at once.
    ///
    /// # Errors
    /// From the last hold only: as [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// Cancel safe in effect, as [`LockGuard::release`].
    pub async fn release(mut self) -> Result<()> {
        self.holding = false;
        let shared = self.shared.clone();
        drop(self);
        if shared.holds.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.guard.release_shared().await
        } else {
            Ok(())
        }
    }
}

impl Drop for ReentrantGuard {
    fn drop(&mut self) {
        if self.holding && self.shared.holds.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.guard.release_in_background();
        }
    }
}

impl Deref for ReentrantGuard {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.shared.guard
    }
}

impl fmt::Debug for ReentrantGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantGuard")
            .field("guard", &self.shared.guard)
            .field("hold_count", &self.hold_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::client::Client;
    use crate::error::Error;

    /// Two final holds released at the same instant on two threads: exactly one of them is
    /// the final release and reports the real outcome (here: the lock was lost before).
    #[test]
    fn concurrent_final_releases_report_the_outcome() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = format!("reentrant-race-{}", std::process::id());
        let client = runtime
            .block_on(Client::connect(&format!("memory://{store}")))
            .unwrap();
        let mutex = client.mutex("race").unwrap();
        for round in 0..2000 {
            let outer = runtime.block_on(mutex.lock()).unwrap().into_reentrant();
            assert!(crate::memory::MemoryStore::named(&store).delete(outer.key()));
            runtime.block_on(outer.lost());
            let inner = outer.reenter();
            // Both threads spin until both are ready, then release at once.
            let ready = Arc::new(AtomicUsize::new(0));
            let errors: usize = std::thread::scope(|scope| {
                let threads: Vec<_> = [outer, inner]
                    .into_iter()
                    .map(|hold| {
                        let (ready, handle) = (ready.clone(), runtime.handle().clone());
                        scope.spawn(move || {
                            ready.fetch_add(1, Ordering::SeqCst);
                            while ready.load(Ordering::SeqCst) < 2 {
                                std::hint::spin_loop();
                            }
                            match handle.block_on(hold.release()) {
                                Ok(()) => 0,
                                Err(Error::LockLost(_)) => 1,
                                Err(e) => panic!("round {round}: {e}"),
                            }
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(
                errors, 1,
                "round {round}: the final release must report the loss"
            );
        }
    }
}
