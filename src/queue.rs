//! The fair-queue lock algorithm, written once for every backend.
//!
//! Each acquisition appends its own entry to the lock's queue (an etcd key ordered by create
//! revision, a ZooKeeper sequential node, a memory-store key), then waits for the deletion of
//! the one entry directly ahead of it, and re-checks. The entry at the head holds the lock.
//! Backends supply the primitives through [`QueueSession`]; this module owns the control
//! flow that users rely on: FIFO order, the post-wait check, timeouts, and removal of the
//! own entry on every path that does not end in a guard (error, timeout, cancellation).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::client::{KeySpace, QueueEntry, QueueKind};
use crate::election::{Election, Leader, Leadership};
use crate::error::{Error, Result};
use crate::guard::{HeldLock, LockGuard, WriteOp};
use crate::lost::{LossTrigger, LostReason};
use crate::mutex::{Acquire, DistributedMutex};
use crate::state::StateChannel;

/// One queue entry. Before the backend confirmed it, `order` is 0 and `key` may be
/// provisional (whatever the backend needs to find and remove it).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The backend key or node path.
    pub key: String,
    /// The fencing token.
    pub token: u64,
    /// The position in the queue (etcd create revision, ZooKeeper sequence number).
    pub order: i64,
    /// A lock's or an election's entry.
    pub kind: QueueKind,
    /// The value stored with the entry (a candidate's value; empty for locks).
    pub value: Vec<u8>,
    /// What the holder last wrote through the entry, behind a lock that serialises the
    /// holder's writes through it (guarded writes, proclaims).
    pub written: Arc<tokio::sync::Mutex<Written>>,
}

/// The own entry as the holder's last write through it left it. A guarded write moves the
/// entry's version exactly once, which lets a retried write tell whether an earlier,
/// unanswered attempt was applied; knowing the version saves reading it first.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// etcd: the mod revision; ZooKeeper: the data version. 0: as created.
    pub version: i64,
    /// The entry's value, if a proclaim changed it since its creation.
    pub value: Option<Vec<u8>>,
    /// Whether `version` and `value` are known; false after a write without a definite
    /// answer, until read back.
    pub unknown: bool,
}

impl Entry {
    /// A provisional entry, before the backend confirmed it.
    pub(crate) fn new(key: String, kind: QueueKind, value: &[u8]) -> Self {
        Entry {
            key,
            token: 0,
            order: 0,
            kind,
            value: value.to_vec(),
            written: Arc::default(),
        }
    }
}

/// The entry directly ahead of a waiter, as seen at `revision`.
#[derive(Clone, Debug)]
pub(crate) struct Predecessor {
    pub key: String,
    pub revision: i64,
    /// Which entry of that key it is (etcd: its create revision; 0 where a key is never
    /// reused, as on ZooKeeper). Go's Mutex and `etcdctl lock` reuse the key
    /// `NAME/<lease hex>` on every Lock: a key of that name with another create revision is
    /// a *new* entry, behind the waiter, and the one ahead is gone.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub created: i64,
}

/// What a backend provides for one session. Every method must be bounded in time (the
/// request timeout) and must clean up after itself when its future is dropped.
#[async_trait]
pub(crate) trait QueueSession: Send + Sync + Sized + 'static {
    /// Keeps the guard's own entry watched for deletion while it lives.
    type OwnWatch: Send + Sync + 'static;

    /// The session's loss trigger; guards hang their own triggers below it.
    fn trigger(&self) -> &LossTrigger;

    /// A provisional entry in the queue `name` of `kind`, before anything is written.
    fn new_entry(&self, name: &str, kind: QueueKind, value: &[u8]) -> Entry;

    /// Creates the entry only if the queue of `name` is empty.
    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool>;

    /// Appends the entry to the queue of `name`; returns the predecessor, if any.
    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>>;

    /// The entry directly ahead of `own`, re-read. Fails if `own` no longer exists.
    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>>;

    /// Completes once `pred` is deleted.
    async fn deleted(&self, pred: &Predecessor) -> Result<()>;

    /// A last check before `own`, now at the head, is reported held (ZooKeeper elections:
    /// the head node must belong to this session).
    async fn confirm_head(&self, own: &Entry) -> Result<()> {
        let _ = own;
        Ok(())
    }

    /// Replaces the value of `own`, only while it exists; [`Error::LockLost`] otherwise.
    async fn proclaim(&self, own: &Entry, value: &[u8]) -> Result<()>;

    /// Deletes the own entry if it is still the same one; `Ok(false)` if it was gone.
    async fn remove(&self, own: &Entry) -> Result<bool>;

    /// Deletes the own entry in the background, retrying until done or the session ends.
    /// Never blocks, never panics.
    fn remove_in_background(self: &Arc<Self>, own: Entry);

    /// Fires `trigger` with [`LostReason::Deleted`] when `own` is deleted.
    fn watch_own(&self, own: &Entry, trigger: LossTrigger) -> Self::OwnWatch;

    /// Applies `ops` only while `own` exists; [`Error::LockLost`] otherwise.
    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()>;

    /// The session id as users see it (hex).
    fn id(&self) -> String;

    /// Whether the backend has not confirmed the session lately.
    fn is_suspended(&self) -> bool {
        false
    }

    /// Ends the session now; its entries go with it.
    async fn close(&self) -> Result<()>;

    /// Stops keeping the session alive without ending it, as a crash would.
    fn abandon(&self);
}

/// Retries removing `own` until done, or until the session ends (its entries then go with
/// the session). The body of every backend's `remove_in_background`.
pub(crate) async fn remove_until_done<S: QueueSession>(session: Arc<S>, own: Entry) {
    use backon::{ExponentialBuilder, Retryable};

    let lost = session.trigger().signal();
    let attempt = || async { session.remove(&own).await };
    let retries = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(100))
                .with_max_delay(std::time::Duration::from_secs(2))
                .without_max_times(),
        )
        .when(|e: &Error| e.is_transient());
    tokio::select! {
        result = retries => if let Err(e) = result {
            tracing::warn!("could not remove queue entry {}: {e}", own.key);
        },
        _ = lost => {}
    }
}

/// Maps the end of a session to the error a waiter reports.
pub(crate) fn session_error(reason: LostReason) -> Error {
    match reason {
        LostReason::SessionClosed => Error::Closed,
        _ => Error::SessionExpired,
    }
}

/// The current session of a client; replaced by a new one once it is lost.
pub(crate) struct SessionSlot<S> {
    /// The session, and whether the slot was closed: one lock, so that a renewal cannot
    /// install a session after `close()` took the last one.
    state: StdMutex<SlotState<S>>,
    renewing: tokio::sync::Mutex<()>,
    /// Where the client's session states are reported.
    states: Arc<StateChannel>,
}

struct SlotState<S> {
    current: Arc<S>,
    closed: bool,
}

impl<S: QueueSession> SessionSlot<S> {
    /// A slot holding `first`; `states` is the channel its sessions report to.
    pub(crate) fn new(first: Arc<S>, states: Arc<StateChannel>) -> Self {
        states.follow(first.trigger().signal());
        SessionSlot {
            state: StdMutex::new(SlotState {
                current: first,
                closed: false,
            }),
            renewing: tokio::sync::Mutex::new(()),
            states,
        }
    }

    /// The client's session state channel.
    pub(crate) fn states(&self) -> &Arc<StateChannel> {
        &self.states
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState<S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session in use now, lost or not.
    pub(crate) fn current(&self) -> Arc<S> {
        self.state().current.clone()
    }

    /// The current session if the slot is open and the session not lost.
    fn open_and_live(&self) -> Result<Option<Arc<S>>> {
        let state = self.state();
        if state.closed {
            return Err(Error::Closed);
        }
        Ok((!state.current.trigger().signal().is_lost()).then(|| state.current.clone()))
    }

    /// A live session: the current one, or a new one from `open` if it was lost.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Self::close); whatever `open` returns.
    pub(crate) async fn live<F>(&self, open: impl FnOnce() -> F) -> Result<Arc<S>>
    where
        F: Future<Output = Result<Arc<S>>>,
    {
        if let Some(current) = self.open_and_live()? {
            return Ok(current);
        }
        let _renewing = self.renewing.lock().await;
        if let Some(current) = self.open_and_live()? {
            return Ok(current);
        }
        let fresh = open().await?;
        {
            let mut state = self.state();
            if !state.closed {
                state.current = fresh.clone();
                self.states.follow(fresh.trigger().signal());
                return Ok(fresh);
            }
        }
        // Closed while the new session was opening: it must not outlive the client.
        let _ = fresh.close().await;
        Err(Error::Closed)
    }

    /// Marks the slot closed; returns the session to end, unless closed already.
    pub(crate) fn close(&self) -> Option<Arc<S>> {
        let mut state = self.state();
        if std::mem::replace(&mut state.closed, true) {
            None
        } else {
            Some(state.current.clone())
        }
    }
}

/// A backend's client: where a [`QueueMutex`] gets its live session from.
#[async_trait]
pub(crate) trait SessionSource: Send + Sync + 'static {
    type Session: QueueSession;

    /// The client's current session.
    fn slot(&self) -> &SessionSlot<Self::Session>;

    /// Opens a new session.
    async fn open(&self) -> Result<Arc<Self::Session>>;

    /// A live session: the current one, or a new one if it was lost.
    async fn session(&self) -> Result<Arc<Self::Session>> {
        self.slot().live(|| self.open()).await
    }
}

/// Enqueues in the queue `name` and waits, as `mode` says, until the entry heads it.
async fn acquire<S: SessionSource>(
    source: &S,
    name: &str,
    kind: QueueKind,
    value: &[u8],
    mode: Acquire,
) -> Result<Option<LockGuard>> {
    let deadline = match mode {
        Acquire::Timeout(timeout) => Some(Instant::now() + timeout),
        Acquire::Wait | Acquire::Try => None,
    };
    // A session found ended by the server before the entry was written (a lease revoked
    // from outside, a session expired while idle) costs nothing: retry once on a new one.
    let mut fresh_session_tried = false;
    loop {
        let session = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, source.session()).await {
                Ok(session) => session?,
                Err(_) => return Ok(None),
            },
            None => source.session().await?,
        };
        let entry = session.new_entry(name, kind, value);
        let mut pending = Pending {
            session,
            entry,
            armed: true,
        };
        let outcome = match mode {
            Acquire::Try => try_head(name, &mut pending).await,
            Acquire::Wait => wait_turn(name, &mut pending).await.map(|()| true),
            Acquire::Timeout(_) => {
                let deadline = deadline.unwrap_or_else(Instant::now);
                tokio::time::timeout_at(deadline, wait_turn(name, &mut pending))
                    .await
                    .map_or(Ok(false), |r| r.map(|()| true))
            }
        };
        match outcome {
            Ok(true) => return Ok(Some(pending.into_guard(name))),
            Ok(false) if mode == Acquire::Try => {
                pending.armed = false; // nothing was written
                return Ok(None);
            }
            Ok(false) => {
                pending.remove().await;
                return Ok(None);
            }
            // Only if the entry was never created: a waiter whose session ended while it
            // was queued has lost its place, and says so.
            Err(Error::SessionExpired) if pending.entry.order == 0 && !fresh_session_tried => {
                // Its entries went with the session: nothing to remove.
                pending.armed = false;
                fresh_session_tried = true;
            }
            Err(err) => {
                pending.remove().await;
                return Err(err);
            }
        }
    }
}

/// Takes the lock only if nobody holds or waits for it.
async fn try_head<S: QueueSession>(name: &str, pending: &mut Pending<S>) -> Result<bool> {
    let session = pending.session.clone();
    let head = session.enqueue_if_empty(name, &mut pending.entry).await?;
    if head {
        session.confirm_head(&pending.entry).await?;
    }
    Ok(head)
}

/// Enqueues and waits until the entry heads the queue. Cancel safe: `pending` keeps the
/// entry and removes it when dropped unarmed.
async fn wait_turn<S: QueueSession>(name: &str, pending: &mut Pending<S>) -> Result<()> {
    let session = pending.session.clone();
    let lost = session.trigger().signal();
    // A lost session ends the waiter at every await, the enqueue included.
    let mut pred = tokio::select! {
        enqueued = session.enqueue(name, &mut pending.entry) => enqueued?,
        reason = lost.wait() => return Err(session_error(reason)),
    };
    while let Some(p) = pred {
        crate::stats::waiting();
        tokio::select! {
            deleted = session.deleted(&p) => deleted?,
            reason = lost.wait() => return Err(session_error(reason)),
        }
        crate::stats::woke();
        // Post-wait check: fails if the own entry vanished (session expired while queued).
        crate::stats::read_queue();
        pred = session.predecessor(name, &pending.entry).await?;
    }
    session.confirm_head(&pending.entry).await
}

/// A [`DistributedMutex`] over any backend.
pub(crate) struct QueueMutex<S: SessionSource> {
    source: Arc<S>,
    name: String,
}

impl<S: SessionSource> QueueMutex<S> {
    pub(crate) fn new(source: Arc<S>, name: String) -> Self {
        QueueMutex { source, name }
    }
}

impl<S: SessionSource> fmt::Debug for QueueMutex<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedMutex")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: SessionSource> DistributedMutex for QueueMutex<S> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn acquire(&self, mode: Acquire) -> Result<Option<LockGuard>> {
        acquire(&*self.source, &self.name, QueueKind::Lock, b"", mode).await
    }
}

/// An [`Election`] over any backend.
pub(crate) struct QueueElection<S: SessionSource + KeySpace> {
    source: Arc<S>,
    name: String,
}

impl<S: SessionSource + KeySpace> QueueElection<S> {
    pub(crate) fn new(source: Arc<S>, name: String) -> Self {
        QueueElection { source, name }
    }
}

impl<S: SessionSource + KeySpace> fmt::Debug for QueueElection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn to_leader(entry: QueueEntry) -> Leader {
    Leader {
        value: entry.value,
        key: entry.key,
        fencing_token: entry.fencing_token,
    }
}

#[async_trait]
impl<S: SessionSource + KeySpace> Election for QueueElection<S> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn campaign_with(&self, value: &[u8], mode: Acquire) -> Result<Option<Leadership>> {
        let guard = acquire(&*self.source, &self.name, QueueKind::Election, value, mode).await?;
        Ok(guard.map(|guard| Leadership::new(guard, value.to_vec())))
    }

    async fn leader(&self) -> Result<Option<Leader>> {
        let head = self
            .source
            .queue(&self.name, QueueKind::Election, Some(1))
            .await?;
        Ok(head.into_iter().next().map(to_leader))
    }

    fn observe(&self) -> futures::stream::BoxStream<'static, Result<Option<Leader>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let heads = tokio::spawn(self.source.clone().watch_head(
            self.name.clone(),
            QueueKind::Election,
            tx,
        ));
        // Each change once: skip repeats of the last leader (same key, same value).
        let state = (rx, None::<Option<(String, Vec<u8>)>>, AbortOnDrop(heads));
        Box::pin(futures::stream::unfold(
            state,
            |(mut rx, mut last, task)| async move {
                loop {
                    match rx.recv().await? {
                        Ok(head) => {
                            let seen = head.as_ref().map(|e| (e.key.clone(), e.value.clone()));
                            if last.as_ref() == Some(&seen) {
                                continue;
                            }
                            last = Some(seen);
                            return Some((Ok(head.map(to_leader)), (rx, last, task)));
                        }
                        Err(e) => return Some((Err(e), (rx, last, task))),
                    }
                }
            },
        ))
    }
}

/// Stops a background task when the stream that owns it is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An entry that is not (yet) a guard: removed when dropped armed.
struct Pending<S: QueueSession> {
    session: Arc<S>,
    entry: Entry,
    armed: bool,
}

impl<S: QueueSession> Pending<S> {
    /// Removes the entry now (bounded), or in the background if the backend fails. Stays
    /// armed until the backend confirmed the removal: if this future is dropped half-way,
    /// `Drop` hands the entry to a background removal.
    async fn remove(mut self) {
        if self.session.remove(&self.entry).await.is_ok() {
            self.armed = false;
        }
    }

    fn into_guard(mut self, name: &str) -> LockGuard {
        self.armed = false;
        crate::stats::acquired();
        let trigger = self.session.trigger().child();
        let held = Held {
            session: self.session.clone(),
            entry: self.entry.clone(),
            trigger: trigger.clone(),
            watch: StdMutex::new(None),
            armed: AtomicBool::new(false),
        };
        LockGuard::new(
            name.to_owned(),
            self.entry.key.clone(),
            self.entry.token,
            trigger.signal(),
            Box::new(held),
        )
    }
}

impl<S: QueueSession> Drop for Pending<S> {
    fn drop(&mut self) {
        if self.armed {
            self.session.remove_in_background(self.entry.clone());
        }
    }
}

/// The backend side of a [`LockGuard`].
struct Held<S: QueueSession> {
    session: Arc<S>,
    entry: Entry,
    trigger: LossTrigger,
    /// The watch on the own entry, armed on first demand (see `LockGuard::lost`).
    watch: StdMutex<Option<S::OwnWatch>>,
    armed: AtomicBool,
}

impl<S: QueueSession> Held<S> {
    /// A write refused because the entry or the whole session is gone is a lost lock, with
    /// the most precise reason known.
    fn as_lost(&self, result: Result<()>) -> Result<()> {
        let known = self.trigger.signal().reason();
        match result {
            Err(Error::LockLost(reason)) => Err(Error::LockLost(known.unwrap_or(reason))),
            Err(Error::SessionExpired) => {
                Err(Error::LockLost(known.unwrap_or(LostReason::SessionExpired)))
            }
            Err(Error::Closed) => Err(Error::LockLost(known.unwrap_or(LostReason::SessionClosed))),
            other => other,
        }
    }
}

#[async_trait]
impl<S: QueueSession> HeldLock for Held<S> {
    async fn release(&self) -> Result<Option<LostReason>> {
        if self.session.remove(&self.entry).await? {
            return Ok(None);
        }
        let session = self.session.trigger().signal().reason();
        Ok(Some(session.unwrap_or(LostReason::Deleted)))
    }

    fn release_in_background(&self) {
        self.mark_released();
        self.session.remove_in_background(self.entry.clone());
    }

    async fn guarded_write(&self, ops: &[WriteOp]) -> Result<()> {
        self.as_lost(self.session.guarded_write(&self.entry, ops).await)
    }

    fn mark_released(&self) {
        self.armed.store(true, Ordering::SeqCst); // nothing left to watch
        self.trigger.fire(LostReason::Released);
        self.watch.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn watch_entry(&self) {
        if self.armed.swap(true, Ordering::SeqCst) || self.trigger.signal().is_lost() {
            return;
        }
        let watch = self.session.watch_own(&self.entry, self.trigger.clone());
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        self.as_lost(self.session.proclaim(&self.entry, value).await)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::memory::{MemorySession, MemoryStore};

    /// `close()` while a renewal is opening a new session: the new session must not
    /// outlive the close (nor serve the closed client).
    #[tokio::test]
    async fn close_during_renewal_ends_the_new_session() {
        let store = MemoryStore::named("slot-close-during-renewal");
        let ttl = Duration::from_secs(10);
        let slot = SessionSlot::new(MemorySession::open(&store, ttl), StateChannel::new());
        assert!(store.expire_session(&slot.current().id()));

        let fresh = MemorySession::open(&store, ttl);
        let (opened, gate) = tokio::sync::oneshot::channel::<()>();
        let renewal = slot.live(|| {
            let fresh = fresh.clone();
            async move {
                let _ = gate.await;
                Ok(fresh)
            }
        });
        tokio::pin!(renewal);
        assert!(
            futures::poll!(renewal.as_mut()).is_pending(),
            "waits at the gate"
        );
        let _ = slot.close();
        let _ = opened.send(());
        let renewed = renewal.await.map(|s| s.id());
        assert!(matches!(renewed, Err(Error::Closed)), "{renewed:?}");
        assert_eq!(
            fresh.trigger().signal().reason(),
            Some(LostReason::SessionClosed),
            "the session opened during close() was left open"
        );
    }
}
