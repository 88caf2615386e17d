//! The lock guard: proof of holding, fencing token, lost signal, guarded write, release.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::lost::{LostReason, LostSignal};
use crate::sequencer::Sequencer;

/// One write of a [`LockGuard::guarded_write`].
///
/// Keys are the backend's own: an etcd key, a ZooKeeper path (absolute, parents must
/// exist), or a key of the memory store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOp {
    /// Set `key` to `value`, creating it if needed.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete `key` if it exists.
    Delete {
        /// The key.
        key: String,
    },
}

impl WriteOp {
    /// A [`WriteOp::Put`].
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        WriteOp::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A [`WriteOp::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        WriteOp::Delete { key: key.into() }
    }
}

/// What a backend keeps for one held lock. The guard drives it.
#[async_trait]
pub(crate) trait HeldLock: Send + Sync {
    /// Deletes the own entry, guarded by its token. `Ok(None)`: deleted now; `Ok(Some(why))`:
    /// it was already gone, and why (the session ended, or someone deleted it).
    async fn release(&self) -> Result<Option<LostReason>>;
    /// Starts the release without waiting; must not block or panic, in or out of a runtime.
    fn release_in_background(&self);
    /// Applies `ops` atomically, only while the own entry still exists.
    async fn guarded_write(&self, ops: &[WriteOp]) -> Result<()>;
    /// Fires the guard's signal with [`LostReason::Released`] and stops watching the own
    /// entry, so that the release's own delete is never taken for someone else's.
    fn mark_released(&self);
    /// Replaces the own entry's value, only while it still exists.
    async fn proclaim(&self, value: &[u8]) -> Result<()>;
    /// Starts watching the own entry for deletion by someone else (once; idempotent).
    fn watch_entry(&self);
    /// The hold span: lives as long as the lock is held (and its release runs); the
    /// guard's events are recorded inside it.
    fn span(&self) -> &tracing::Span;
}

/// Proof that this process holds a lock, until [`release`](Self::release) or drop.
///
/// - [`fencing_token`](Self::fencing_token): strictly increasing across successive holders
///   of one lock name; pass it to the resource you protect so it can refuse stale holders.
/// - [`lost`](Self::lost): completes when the lock is known to be lost.
/// - [`guarded_write`](Self::guarded_write): writes to the backend that happen only while
///   this guard still holds the lock.
/// - [`sequencer`](Self::sequencer): all of that for a service elsewhere, which can check
///   it with [`Client::check`](crate::Client::check).
///
/// Dropping the guard starts a best-effort release in the background; it never blocks and
/// never panics, also outside a tokio runtime. Prefer [`release`](Self::release), which
/// reports errors.
///
/// Tracing: the guard lives with a `hold` span (debug; fields `name`, `kind`, `key`,
/// `token`, `backend`) in which its loss, refused writes and release are recorded.
#[must_use = "the lock is released (in the background) as soon as the guard is dropped"]
pub struct LockGuard {
    /// Name, key, token, session: who holds.
    sequencer: Sequencer,
    lost: LostSignal,
    held: Box<dyn HeldLock>,
    /// Set once a release (awaited or in the background) has been started: exactly one.
    releasing: AtomicBool,
}

impl LockGuard {
    pub(crate) fn new(sequencer: Sequencer, lost: LostSignal, held: Box<dyn HeldLock>) -> Self {
        LockGuard {
            sequencer,
            lost,
            held,
            releasing: AtomicBool::new(false),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.sequencer.name()
    }

    /// The backend key (etcd) or node path (ZooKeeper) of this holder's queue entry.
    pub fn key(&self) -> &str {
        self.sequencer.key()
    }

    /// The fencing token: strictly greater than the token of every earlier holder of this
    /// lock name. etcd: the create revision of the own key; ZooKeeper: the czxid of the own
    /// node; memory: the store's revision at enqueue.
    pub fn fencing_token(&self) -> u64 {
        self.sequencer.fencing_token()
    }

    /// Who holds, for services elsewhere: backend, lock name and kind, fencing token, the
    /// entry's key and session, with a stable string form (`to_string()`, parsed back with
    /// `str::parse`). A service checks it with [`Client::check`](crate::Client::check), in
    /// one linearizable read, or compares its fencing token with the highest it has seen
    /// (see [`Fence`](crate::Fence)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> fairlock::Result<()> {
    /// let client = fairlock::Client::connect("memory://sequencer-doc").await?;
    /// let guard = client.mutex("report")?.lock().await?;
    /// let text = guard.sequencer().to_string(); // e.g. in a request header
    ///
    /// // The service that receives it:
    /// let sequencer: fairlock::Sequencer = text.parse()?;
    /// assert_eq!(client.check(&sequencer).await?, fairlock::SequencerStatus::Current);
    /// guard.release().await?;
    /// assert_eq!(client.check(&sequencer).await?, fairlock::SequencerStatus::Lost);
    /// # Ok(()) }
    /// ```
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    /// A signal that completes when the lock is known lost (session expired or closed,
    /// entry deleted by someone else), or with [`LostReason::Released`] once released.
    ///
    /// How fast a loss is noticed: a deletion or a lease revocation as soon as the
    /// backend's notification arrives; a partition from the backend when the session's
    /// client-side deadline passes (at most the TTL after the last successful keep-alive),
    /// which is no later than the backend itself expires the session.
    ///
    /// The first call (of this or [`is_lost`](Self::is_lost)) arms a watch on the own
    /// entry, so that a deletion by someone else is noticed too; a guard whose loss nobody
    /// asks about costs no watch. Session losses are noticed either way.
    pub fn lost(&self) -> LostSignal {
        self.watch_entry();
        self.lost.clone()
    }

    /// Whether the lock is already known lost (or released). Arms the entry watch as
    /// [`lost`](Self::lost) does.
    pub fn is_lost(&self) -> bool {
        self.watch_entry();
        self.lost.is_lost()
    }

    fn watch_entry(&self) {
        if !self.releasing.load(Ordering::SeqCst) {
            self.held.watch_entry();
        }
    }

    /// Applies `ops` in one atomic backend transaction that succeeds only while this guard
    /// still holds the lock: an etcd Txn comparing the own key's create revision, a
    /// ZooKeeper multi-op that first checks the own node. This is the fencing primitive.
    ///
    /// A write whose answer is lost (a cluster member died, a connection broke) is sent
    /// again within the request timeout and takes effect exactly once: it also moves the
    /// own entry's version (etcd mod revision, ZooKeeper data version), so a repeat can
    /// tell that an earlier attempt was applied.
    ///
    /// # Errors
    /// - [`Error::LockLost`](Error::LockLost): the lock is no longer held; nothing
    ///   was written.
    /// - [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown): the write was sent but no
    ///   definite answer came back (connection lost, request timeout): it may or may not
    ///   have been applied. Read back before retrying.
    /// - [`Error::Timeout`](crate::Error::Timeout), [`Error::Backend`](crate::Error::Backend):
    ///   the write failed before it was sent, or the server refused it; nothing was written.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future may or may not leave the write applied.
    pub async fn guarded_write(&self, ops: &[WriteOp]) -> Result<()> {
        let result = match self.lost.reason() {
            Some(reason) => Err(Error::LockLost(reason)),
            None => {
                let write = self.held.guarded_write(ops);
                write.instrument(self.held.span().clone()).await
            }
        };
        if let Err(e) = &result {
            self.trace_write_error("guarded write", e);
        }
        result
    }

    pub(crate) async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let result = match self.lost.reason() {
            Some(reason) => Err(Error::LockLost(reason)),
            None => {
                let write = self.held.proclaim(value);
                write.instrument(self.held.span().clone()).await
            }
        };
        if let Err(e) = &result {
            self.trace_write_error("proclaim", e);
        }
        result
    }

    /// Records a write through the guard that failed, in the hold span.
    fn trace_write_error(&self, write: &'static str, e: &Error) {
        let _hold = self.held.span().enter();
        let (name, key, token) = (self.name(), self.key(), self.fencing_token());
        match e {
            Error::LockLost(reason) => tracing::warn!(
                name = %name, key = %key, token, write, %reason,
                "write refused: the lock is lost"
            ),
            Error::OutcomeUnknown { .. } => tracing::warn!(
                name = %name, key = %key, token, write, error = %e,
                "write outcome unknown: it may or may not have been applied"
            ),
            _ => tracing::warn!(
                name = %name, key = %key, token, write, error = %e,
                "write failed; nothing was written"
            ),
        }
    }

    /// Releases the lock and waits for the backend to confirm.
    ///
    /// # Errors
    /// - [`Error::LockLost`](Error::LockLost): the lock had been lost before this
    ///   call; the critical section was not fully protected.
    /// - [`Error::Timeout`](crate::Error::Timeout), [`Error::Backend`](crate::Error::Backend):
    ///   the release could not be confirmed; it goes on in the background until it succeeds
    ///   or the session ends, so the entry is never left behind.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: if the future is dropped, the release continues in the
    /// background as on drop.
    pub async fn release(self) -> Result<()> {
        self.release_shared().await
    }

    /// The body of [`release`](Self::release), callable through a shared reference (the
    /// final hold of a [`ReentrantGuard`](crate::ReentrantGuard)). Only the first call
    /// releases; later ones return `Ok(())` at once.
    pub(crate) async fn release_shared(&self) -> Result<()> {
        if self.releasing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let span = tracing::debug_span!(parent: self.held.span(), "release");
        let result = self.release_now().instrument(span.clone()).await;
        let _release = span.enter();
        let (name, key, token) = (self.name(), self.key(), self.fencing_token());
        match &result {
            Ok(()) => tracing::info!(name = %name, key = %key, token, "released"),
            Err(Error::LockLost(reason)) => tracing::warn!(
                name = %name, key = %key, token, %reason,
                "released, but the lock had been lost before"
            ),
            Err(e) => tracing::warn!(
                name = %name, key = %key, token, error = %e,
                "release not confirmed; it goes on in the background"
            ),
        }
        result
    }

    async fn release_now(&self) -> Result<()> {
        let lost_before = self.lost.reason();
        self.held.mark_released();
        // If this future is dropped mid-way, the release goes on in the background.
        let pending = ReleaseOnDrop(Some(&*self.held));
        let result = self.held.release().await;
        pending.disarm();
        let lost_before = lost_before.filter(|reason| *reason != LostReason::Released);
        match result {
            Ok(None) => match lost_before {
                Some(reason) => Err(Error::LockLost(reason)),
                None => Ok(()),
            },
            Ok(Some(gone)) => Err(Error::LockLost(lost_before.unwrap_or(gone))),
            Err(err) => {
                self.held.release_in_background();
                Err(err)
            }
        }
    }

    /// Starts a release without waiting, unless one was started already.
    pub(crate) fn release_in_background(&self) {
        if !self.releasing.swap(true, Ordering::SeqCst) {
            // The background removal runs in the span current here (see
            // `remove_until_done`).
            let _release = tracing::debug_span!(parent: self.held.span(), "release").entered();
            tracing::info!(
                name = %self.name(), key = %self.key(), token = self.fencing_token(),
                "released in the background (guard dropped)"
            );
            self.held.release_in_background();
        }
    }
}

struct ReleaseOnDrop<'a>(Option<&'a dyn HeldLock>);

impl ReleaseOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            held.release_in_background();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.release_in_background();
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name())
            .field("key", &self.key())
            .field("fencing_token", &self.fencing_token())
            .field("lost", &self.lost.reason())
            .finish()
    }
}
