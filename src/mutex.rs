//! The backend-agnostic lock contract.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::guard::LockGuard;

/// How long an acquisition may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Wait in the queue until the lock is held.
    Wait,
    /// Take the lock only if nobody holds or awaits it; never wait, never enqueue.
    Try,
    /// Wait at most this long.
    Timeout(Duration),
}

/// A fair (FIFO), cross-process mutex on one lock name.
///
/// Object safe: hand out `Arc<dyn DistributedMutex>` and switch backends by configuration.
/// Obtain one from [`Client::mutex`](crate::Client::mutex).
///
/// Not reentrant: a second `lock()` from the same process queues behind the first holder,
/// like a waiter from any other process (each acquisition holds its own queue entry).
#[async_trait]
pub trait DistributedMutex: Send + Sync + fmt::Debug {
    /// The lock's name.
    fn name(&self) -> &str;

    /// The one required method: acquire as `mode` says. `Ok(None)` means "not acquired"
    /// (held by someone else for [`Acquire::Try`], time up for [`Acquire::Timeout`]), and
    /// then no queue entry is left behind.
    ///
    /// # Errors
    /// See [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future before it completes removes the queue entry it may
    /// have created (in the background, bounded by the request timeout and retried until the
    /// session ends), so no other waiter is blocked by it. Once the future has returned a
    /// guard, the guard owns the lock.
    async fn acquire(&self, mode: Acquire) -> Result<Option<LockGuard>>;

    /// Waits in FIFO order until this process holds the lock.
    ///
    /// Waiting costs no polling: the waiter watches only its predecessor, so a release wakes
    /// exactly one waiter. After waking, the waiter checks that its own entry still exists:
    /// a session that expired while queued never yields a guard.
    ///
    /// # Errors
    /// - [`Error::SessionExpired`]: the session ended while waiting.
    /// - [`Error::LockLost`]: the waiter's entry was deleted by someone else.
    /// - [`Error::Closed`]: the client was closed.
    /// - [`Error::Timeout`], [`Error::Unreachable`], [`Error::Backend`]: the backend did not
    ///   answer or failed; the entry is removed before the error is returned (or, if the
    ///   backend stays away, in the background).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    async fn lock(&self) -> Result<LockGuard> {
        match self.acquire(Acquire::Wait).await? {
            Some(guard) => Ok(guard),
            None => Err(Error::Backend {
                backend: "fairlock",
                source: "a waiting acquisition returned without the lock".into(),
            }),
        }
    }

    /// Takes the lock only if it is free right now (nobody holds or awaits it). Never waits
    /// and never leaves a queue entry: `Ok(None)` when the lock is taken.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    async fn try_lock(&self) -> Result<Option<LockGuard>> {
        self.acquire(Acquire::Try).await
    }

    /// Waits at most `timeout` for the lock, in FIFO order. `Ok(None)` when time ran out;
    /// the queue entry is then removed before this returns.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    async fn lock_timeout(&self, timeout: Duration) -> Result<Option<LockGuard>> {
        self.acquire(Acquire::Timeout(timeout)).await
    }
}
