//! The multi-lock: several locks taken all or nothing, in one global order.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::lost::LostReason;
use crate::mutex::{Acquire, DistributedMutex};

/// Several locks taken all or nothing: mutexes and sides of read-write locks, on one client
/// or several (Curator's InterProcessMultiLock).
///
/// The locks are taken one at a time in the order of their names (byte order), whatever
/// order they were given in: every multi-lock of every process takes shared names in the
/// same order, so two of them never wait for each other in a cycle. A name may appear once
/// only (a reader and a writer of one name would wait for each other), even on different
/// clients.
///
/// All or nothing: if one lock cannot be had (a refused try, the time up, an error), the
/// ones taken already are released before the call returns, and a cancelled acquisition
/// releases them as it is dropped (each guard's release on drop). No queue entry is left
/// either way: each lock's own acquisition removes its entry.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// use fairlock::MultiLock;
/// let client = fairlock::Client::connect("memory://multi-doc").await?;
/// let transfer = MultiLock::new([
///     client.mutex("account-b")?,
///     client.mutex("account-a")?,
///     client.rw_lock("rates")?.reader().clone(),
/// ])?;
/// let held = transfer.lock().await?; // account-a, then account-b, then rates
/// assert_eq!(held.guards().len(), 3);
/// assert!(client.mutex("account-b")?.try_lock().await?.is_none());
/// held.release().await
/// # }
/// ```
#[derive(Clone)]
pub struct MultiLock {
    /// In acquisition order.
    locks: Vec<Arc<dyn DistributedMutex>>,
}

impl MultiLock {
    /// The multi-lock of `locks`.
    ///
    /// # Errors
    /// [`Error::InvalidName`]: no lock given, or a name given twice.
    pub fn new(locks: impl IntoIterator<Item = Arc<dyn DistributedMutex>>) -> Result<MultiLock> {
        let mut locks: Vec<_> = locks.into_iter().collect();
        locks.sort_by(|a, b| a.name().as_bytes().cmp(b.name().as_bytes()));
        if locks.is_empty() {
            return Err(Error::InvalidName {
                name: String::new(),
                reason: "a multi-lock needs at least one lock",
            });
        }
        if let Some(twice) = locks.windows(2).find(|w| w[0].name() == w[1].name()) {
            return Err(Error::InvalidName {
                name: twice[0].name().to_owned(),
                reason: "named twice in one multi-lock",
            });
        }
        Ok(MultiLock { locks })
    }

    /// The locks, in the order they are taken.
    pub fn locks(&self) -> &[Arc<dyn DistributedMutex>] {
        &self.locks
    }

    /// Takes every lock as `mode` says: [`Acquire::Wait`] waits for each in turn;
    /// [`Acquire::Try`] takes each only if it is free and gives up at the first that is
    /// not; [`Acquire::Timeout`] waits at most that long for all of them together.
    /// `Ok(None)`: not acquired, and nothing is held or queued.
    ///
    /// # Errors
    /// - The first error of a lock's acquisition (see [`DistributedMutex::lock`]); the
    ///   locks taken before it are released first.
    /// - [`Error::LockLost`]: a lock taken already was lost before the last one was had
    ///   (its session ended, its entry was deleted); everything is released, and nothing
    ///   is held or queued.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops the guards taken so far, which releases them
    /// in the background, and the acquisition under way removes its entry.
    pub async fn acquire(&self, mode: Acquire) -> Result<Option<MultiGuard>> {
        let deadline = match mode {
            Acquire::Timeout(timeout) => Some(Instant::now() + timeout),
            Acquire::Wait | Acquire::Try => None,
        };
        let mut guards: Vec<LockGuard> = Vec::with_capacity(self.locks.len());
        for lock in &self.locks {
            let step = match deadline {
                Some(deadline) => {
                    Acquire::Timeout(deadline.saturating_duration_since(Instant::now()))
                }
                None => mode,
            };
            // A lock taken already may be lost while a later one is awaited: then the whole
            // is not had, and the acquisition under way is dropped (removing its entry).
            let acquired = tokio::select! {
                biased;
                reason = any_lost(&guards) => Err(Error::LockLost(reason)),
                acquired = lock.acquire(step) => acquired,
            };
            match acquired {
                Ok(Some(guard)) => guards.push(guard),
                Ok(None) => {
                    release_all(guards).await;
                    return Ok(None);
                }
                Err(e) => {
                    release_all(guards).await;
                    return Err(e);
                }
            }
        }
        // Lost at the very end (between the last acquisition and now): not had either.
        if let Some(reason) = guards.iter().find_map(|g| g.lost().reason()) {
            release_all(guards).await;
            return Err(Error::LockLost(reason));
        }
        Ok(Some(MultiGuard { guards }))
    }

    /// Waits until every lock is held; see [`acquire`](Self::acquire).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn lock(&self) -> Result<MultiGuard> {
        match self.acquire(Acquire::Wait).await? {
            Some(guard) => Ok(guard),
            None => Err(Error::Backend {
                backend: "fairlock",
                source: "a waiting multi-lock returned without the locks".into(),
            }),
        }
    }

    /// Takes every lock only if each is free right now; see [`acquire`](Self::acquire).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn try_lock(&self) -> Result<Option<MultiGuard>> {
        self.acquire(Acquire::Try).await
    }

    /// Waits at most `timeout` for all the locks together; see [`acquire`](Self::acquire).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn lock_timeout(&self, timeout: std::time::Duration) -> Result<Option<MultiGuard>> {
        self.acquire(Acquire::Timeout(timeout)).await
    }
}

impl fmt::Debug for MultiLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.locks.iter().map(|l| l.name()).collect();
        f.debug_struct("MultiLock").field("names", &names).finish()
    }
}

/// The first loss among `guards`; never, if there are none.
async fn any_lost(guards: &[LockGuard]) -> LostReason {
    match guards {
        [] => std::future::pending().await,
        guards => {
            futures::future::select_all(guards.iter().map(LockGuard::lost))
                .await
                .0
        }
    }
}

/// Releases `guards`, the last taken first; errors are the guards' to report (each release
/// goes on in the background if it cannot be confirmed).
async fn release_all(guards: Vec<LockGuard>) {
    for guard in guards.into_iter().rev() {
        let _ = guard.release().await;
    }
}

/// Every lock of a [`MultiLock`], held. Dropping it releases them all in the background.
#[must_use = "the locks are released (in the background) as soon as the guard is dropped"]
pub struct MultiGuard {
    /// In acquisition order.
    guards: Vec<LockGuard>,
}

impl MultiGuard {
    /// The guards, in the order they were taken (by name): fencing tokens, keys, guarded
    /// writes of each lock.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// Completes when any of the locks is lost, with the reason of the first loss.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn lost(&self) -> LostReason {
        any_lost(&self.guards).await
    }

    /// Whether any of the locks is known lost.
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(LockGuard::is_lost)
    }

    /// Releases every lock, the last taken first, and reports the first error (every
    /// release is attempted; see [`LockGuard::release`]).
    ///
    /// # Errors
    /// As [`LockGuard::release`], for the first lock that failed.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: the guards not yet released are released in the background.
    pub async fn release(self) -> Result<()> {
        let mut first = Ok(());
        for guard in self.guards.into_iter().rev() {
            if let Err(e) = guard.release().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The guards, to keep or release one by one.
    pub fn into_guards(self) -> Vec<LockGuard> {
        self.guards
    }
}

impl fmt::Debug for MultiGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.guards.iter().map(LockGuard::key).collect();
        f.debug_struct("MultiGuard").field("keys", &keys).finish()
    }
}
