//! The backend-agnostic lock contract.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::guard::LockGuard;

/// How long an acquisition may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
///
/// # Implementing it
/// The trait is open, for wrappers that add metrics, tracing, retries or policies around
/// any backend's mutex: implement [`acquire`](Self::acquire) (and [`name`](Self::name))
/// by delegating, and pass on the guard the inner mutex returns. A [`LockGuard`] cannot be
/// built from nothing, on purpose: it is the proof of holding, and its
/// [`lost`](LockGuard::lost) signal and guarded writes are only as true as the backend
/// behind it. For tests, use the `memory://` backend, which keeps every promise of the
/// real ones in-process, rather than a mock. (The async methods are written with
/// `async_trait`, so rustdoc shows them returning boxed futures.)
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use fairlock::{Acquire, DistributedMutex, LockGuard};
///
/// /// Counts the acquisitions that waited for the lock.
/// #[derive(Debug)]
/// struct Counted {
///     inner: Arc<dyn DistributedMutex>,
///     waited: AtomicU64,
/// }
///
/// #[fairlock::async_trait]
/// impl DistributedMutex for Counted {
///     fn name(&self) -> &str {
///         self.inner.name()
///     }
///
///     async fn acquire(&self, mode: Acquire) -> fairlock::Result<Option<LockGuard>> {
///         if mode != Acquire::Try {
///             self.waited.fetch_add(1, Ordering::Relaxed);
///         }
///         self.inner.acquire(mode).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// let client = fairlock::Client::connect("memory://wrapper-doc").await?;
/// let counted = Counted { inner: client.mutex("jobs")?, waited: AtomicU64::new(0) };
/// let mutex: Arc<dyn DistributedMutex> = Arc::new(counted);
/// let guard = mutex.lock().await?; // the default methods go through `acquire`
/// assert!(mutex.try_lock().await?.is_none());
/// guard.release().await
/// # }
/// ```
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
