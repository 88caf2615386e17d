//! Opt-in reentrancy: one held lock shared by nested code paths, with a hold count.

use std::fmt;
use std::ops::Deref;
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
    held: Arc<LockGuard>,
}

impl LockGuard {
    /// Turns this guard into a [`ReentrantGuard`] with a hold count of one.
    pub fn into_reentrant(self) -> ReentrantGuard {
        ReentrantGuard {
            held: Arc::new(self),
        }
    }
}

impl ReentrantGuard {
    /// Takes the lock again: another handle, hold count plus one. Never waits; the lock is
    /// already held. (If it was lost meanwhile, the new handle reports that like the old.)
    pub fn reenter(&self) -> ReentrantGuard {
        ReentrantGuard {
            held: self.held.clone(),
        }
    }

    /// How many handles hold the lock now.
    pub fn hold_count(&self) -> usize {
        Arc::strong_count(&self.held)
    }

    /// Gives up this hold. The last one releases the lock and waits for the backend;
    /// earlier ones return at once.
    ///
    /// # Errors
    /// From the last hold only: as [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// Cancel safe in effect, as [`LockGuard::release`].
    pub async fn release(self) -> Result<()> {
        match Arc::try_unwrap(self.held) {
            Ok(guard) => guard.release().await,
            Err(_) => Ok(()),
        }
    }
}

impl Deref for ReentrantGuard {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.held
    }
}

impl fmt::Debug for ReentrantGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantGuard")
            .field("guard", &*self.held)
            .field("hold_count", &self.hold_count())
            .finish()
    }
}
