//! The fair-queue lock algorithm, written once for every backend.
//!
//! Each acquisition appends its own entry to the lock's queue (an etcd key ordered by create
//! revision, a ZooKeeper sequential node, a memory-store key), then waits for the deletion of
//! the one entry directly ahead of it, and re-checks. The entry at the head holds the lock.
//! Backends supply the primitives through
//! [`QueueSession`](crate::backend::QueueSession); this module owns the control
//! flow that users rely on: FIFO order, the post-wait check, timeouts, and removal of the
//! own entry on every path that does not end in a guard (error, timeout, cancellation).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{field, Instrument, Span};

use crate::backend::{
    gate_name, session_error, Claim, Entry, KeySpace, QueueEntry, QueueKind, QueueSession,
    SessionSource, Side,
};
use crate::election::{Election, Leader, Leadership};
use crate::error::{Error, Result};
use crate::guard::{HeldLock, LockGuard, WriteOp};
use crate::key::KeyMap;
use crate::lost::{LossTrigger, LostReason};
use crate::mutex::{Acquire, DistributedMutex};
use crate::sequencer::Sequencer;

/// What every queue of one client shares.
#[derive(Clone)]
pub(crate) struct QueueOptions {
    /// Maps the data keys of guarded writes onto the backend's.
    pub keys: Arc<KeyMap>,
    /// How long a new holder waits after the previous one ended uncleanly (lock-delay; see
    /// [`Config::lock_delay`](crate::Config::lock_delay)).
    pub lock_delay: Option<Duration>,
}

/// The queue an acquisition joins: its name, kind and side; for a semaphore, its limit
/// (then the queue is the semaphore's gate, and the lease is taken from its pool).
#[derive(Clone, Copy)]
struct Place<'a> {
    name: &'a str,
    kind: QueueKind,
    side: Side,
    limit: Option<u32>,
}

/// Enqueues in the queue `name` and waits, as `mode` says, until the entry holds (heads the
/// queue, or for a reader has no exclusive entry ahead); in an `acquire` span (debug), with
/// the outcome as an event.
async fn acquire<S: SessionSource>(
    source: &S,
    place: Place<'_>,
    value: &[u8],
    mode: Acquire,
    options: &QueueOptions,
) -> Result<Option<LockGuard>> {
    let Place {
        name, kind, side, ..
    } = place;
    let backend = <S::Session as QueueSession>::BACKEND;
    let kind_name = kind.name();
    // The hold span outlives this one: it becomes a sibling under the caller's span, not a
    // child that would keep the acquire span open while the lock is held.
    let caller = Span::current();
    let span = tracing::debug_span!(
        "acquire",
        name,
        kind = kind_name,
        side = side.name(),
        backend,
        mode = mode_name(mode),
        key = field::Empty,
        token = field::Empty,
    );
    let spans = Spans {
        acquire: &span,
        caller: &caller,
    };
    let acquiring = crate::metrics::acquiring(backend, kind_name, name);
    let result = acquire_in(source, place, value, mode, spans, options)
        .instrument(span.clone())
        .await;
    acquiring.finish(match (&result, mode) {
        (Ok(Some(_)), _) => crate::metrics::Outcome::Acquired,
        (Ok(None), Acquire::Try) => crate::metrics::Outcome::Busy,
        (Ok(None), _) => crate::metrics::Outcome::Timeout,
        (Err(_), _) => crate::metrics::Outcome::Error,
    });
    let _acquire = span.enter();
    match &result {
        Ok(Some(guard)) => tracing::info!(
            name,
            kind = kind_name,
            backend,
            key = guard.key(),
            token = guard.fencing_token(),
            "acquired"
        ),
        Ok(None) => tracing::debug!(
            name,
            kind = kind_name,
            backend,
            mode = mode_name(mode),
            "not acquired"
        ),
        Err(e @ Error::Closed) => {
            tracing::debug!(name, kind = kind_name, backend, error = %e, "acquisition failed")
        }
        Err(e) => {
            tracing::warn!(name, kind = kind_name, backend, error = %e, "acquisition failed")
        }
    }
    result
}

/// The spans an acquisition needs besides the current one.
#[derive(Clone, Copy)]
struct Spans<'a> {
    /// Its own, to record the key and token in, and for the hold span to follow from.
    acquire: &'a Span,
    /// The one current when it was called: the hold span's parent.
    caller: &'a Span,
}

fn mode_name(mode: Acquire) -> &'static str {
    match mode {
        Acquire::Wait => "wait",
        Acquire::Try => "try",
        Acquire::Timeout(_) => "timeout",
    }
}

async fn acquire_in<S: SessionSource>(
    source: &S,
    place: Place<'_>,
    value: &[u8],
    mode: Acquire,
    spans: Spans<'_>,
    options: &QueueOptions,
) -> Result<Option<LockGuard>> {
    let Place {
        name,
        kind,
        side,
        limit,
    } = place;
    // A semaphore's acquisition queues at its gate first.
    let gate = limit.map(|_| gate_name(name));
    let queue = gate.as_deref().unwrap_or(name);
    let delay = options.lock_delay;
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
        let entry = session.new_entry(queue, kind, side, value);
        let mut pending = Pending {
            session,
            entry,
            armed: true,
        };
        let outcome = match mode {
            Acquire::Try => try_head(queue, &mut pending, delay).await,
            Acquire::Wait => wait_turn(queue, &mut pending, spans.acquire, delay)
                .await
                .map(|()| true),
            Acquire::Timeout(_) => {
                let deadline = deadline.unwrap_or_else(Instant::now);
                let waiting = wait_turn(queue, &mut pending, spans.acquire, delay);
                tokio::time::timeout_at(deadline, waiting)
                    .await
                    .map_or(Ok(false), |r| r.map(|()| true))
            }
        };
        match outcome {
            Ok(true) => {
                let Some(limit) = limit else {
                    return Ok(Some(pending.into_guard(name, spans, &options.keys)));
                };
                let leasing = take_lease(name, limit, &pending, value, mode);
                let leased = match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, leasing)
                        .await
                        .unwrap_or(Ok(None)),
                    None => leasing.await,
                };
                // The gate is let go however the lease went: the next waiter's turn.
                pending.remove().await;
                return Ok(leased?.map(|lease| lease.into_guard(name, spans, &options.keys)));
            }
            Ok(false) if mode == Acquire::Try => {
                pending.discard().await;
                return Ok(None);
            }
            Ok(false) => {
                pending.remove().await;
                return Ok(None);
            }
            // Only if the entry was never created: a waiter whose session ended while it
            // was queued has lost its place, and says so.
            Err(Error::SessionExpired) if pending.entry.order == 0 && !fresh_session_tried => {
                tracing::debug!("session found ended before the entry was written; retrying");
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

/// Takes the lock only if nobody holds or waits for it, and no lock-delay is running. A
/// try never waits: during a lock-delay it is refused (its entry removed).
async fn try_head<S: QueueSession>(
    name: &str,
    pending: &mut Pending<S>,
    delay: Option<Duration>,
) -> Result<bool> {
    let session = pending.session.clone();
    let head = session.enqueue_if_empty(name, &mut pending.entry).await?;
    if !head {
        return Ok(false);
    }
    session.confirm_head(&pending.entry).await?;
    let Some(delay) = delay else {
        return Ok(true);
    };
    match session
        .claim_holder(name, &mut pending.entry, delay)
        .await?
    {
        Claim::Claimed => Ok(true),
        Claim::Delayed(left) => {
            tracing::debug!(left = ?left, "refused: a lock-delay is running");
            Ok(false)
        }
    }
}

/// A semaphore's acquisition at the head of its gate: takes a lease of the pool `name` as
/// soon as it has room (a `try` only if it has room now). While it waits, it is the only
/// one watching the pool, so a released lease wakes one waiter. Cancel safe: the lease's
/// pending entry removes whatever may have been written.
async fn take_lease<S: QueueSession>(
    name: &str,
    limit: u32,
    gate: &Pending<S>,
    value: &[u8],
    mode: Acquire,
) -> Result<Option<Pending<S>>> {
    let session = gate.session.clone();
    let lost = session.trigger().signal();
    let mut lease = Pending {
        entry: session.new_lease(name, value),
        session: session.clone(),
        armed: true,
    };
    loop {
        let taken = tokio::select! {
            biased;
            reason = lost.wait() => return Err(session_error(reason)),
            taken = session.take_lease(name, limit, &gate.entry, &mut lease.entry) => taken,
        };
        let freed = match taken {
            Ok(None) => return Ok(Some(lease)),
            Ok(Some(freed)) => freed,
            Err(e) => {
                lease.remove().await;
                return Err(e);
            }
        };
        if mode == Acquire::Try {
            lease.discard().await;
            return Ok(None);
        }
        tracing::debug!(
            name,
            limit,
            "semaphore full: waiting for a lease to be released"
        );
        crate::stats::waiting();
        tokio::select! {
            biased;
            reason = lost.wait() => return Err(session_error(reason)),
            freed = freed => freed?,
        }
        crate::stats::woke();
    }
}

/// Lock-delay: once at the head, waits while the previous holder's unclean end is less
/// than `delay` ago, then claims the holder record. The own session's loss and the own
/// entry's deletion end the wait; cancel safe as the rest of the wait.
async fn sit_out_delay<S: QueueSession>(
    name: &str,
    session: &Arc<S>,
    entry: &mut Entry,
    delay: Duration,
) -> Result<()> {
    let lost = session.trigger().signal();
    // The own entry's deletion ends the wait at once, not when the delay is over.
    let deleted = LossTrigger::new();
    let entry_deleted = deleted.signal();
    let mut watch = None;
    loop {
        let claim = tokio::select! {
            biased;
            reason = lost.wait() => return Err(session_error(reason)),
            claim = session.claim_holder(name, entry, delay) => claim?,
        };
        let Claim::Delayed(left) = claim else {
            return Ok(());
        };
        tracing::info!(
            key = %entry.key,
            left = ?left,
            "the previous holder ended uncleanly: waiting out the lock-delay"
        );
        if watch.is_none() {
            watch = Some(session.watch_own(entry, deleted.clone()));
        }
        tokio::select! {
            biased;
            reason = lost.wait() => return Err(session_error(reason)),
            reason = entry_deleted.wait() => {
                return Err(match session.trigger().signal().reason() {
                    Some(session) => session_error(session),
                    None => Error::LockLost(reason),
                })
            }
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// Enqueues and waits until the entry heads the queue. Cancel safe: `pending` keeps the
/// entry and removes it when dropped armed.
async fn wait_turn<S: QueueSession>(
    name: &str,
    pending: &mut Pending<S>,
    span: &Span,
    delay: Option<Duration>,
) -> Result<()> {
    let session = pending.session.clone();
    let lost = session.trigger().signal();
    // A lost session ends the waiter at every await, the enqueue included.
    // Biased, the loss first: a waiter never goes on with a session known lost, and a run
    // makes the same choices every time (the simulator replays seeds).
    let mut pred = tokio::select! {
        biased;
        reason = lost.wait() => return Err(session_error(reason)),
        enqueued = session.enqueue(name, &mut pending.entry) => enqueued?,
    };
    span.record("key", pending.entry.key.as_str());
    while let Some(p) = pred {
        tracing::debug!(key = %pending.entry.key, ahead = %p.key, "waiting for the entry ahead");
        crate::stats::waiting();
        tokio::select! {
            biased;
            reason = lost.wait() => return Err(session_error(reason)),
            deleted = session.deleted(&p) => deleted?,
        }
        crate::stats::woke();
        // Post-wait check: fails if the own entry vanished (session expired while queued).
        crate::stats::read_queue();
        pred = session.predecessor(name, &pending.entry).await?;
    }
    session.confirm_head(&pending.entry).await?;
    match delay {
        Some(delay) => sit_out_delay(name, &session, &mut pending.entry, delay).await,
        None => Ok(()),
    }
}

/// A [`DistributedMutex`] over any backend: a mutex, or one side of a read-write lock.
pub(crate) struct QueueMutex<S: SessionSource> {
    source: Arc<S>,
    name: String,
    side: Side,
    /// A semaphore's: how many may hold at once.
    limit: Option<u32>,
    /// The value each entry carries (who holds or waits).
    holder: Arc<[u8]>,
    options: QueueOptions,
}

impl<S: SessionSource> QueueMutex<S> {
    pub(crate) fn new(
        source: Arc<S>,
        name: String,
        side: Side,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Self {
        QueueMutex {
            source,
            name,
            side,
            limit: None,
            holder,
            options,
        }
    }

    /// The counting semaphore `name`, which `limit` may hold at once.
    pub(crate) fn semaphore(
        source: Arc<S>,
        name: String,
        limit: u32,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Self {
        QueueMutex {
            limit: Some(limit),
            ..Self::new(source, name, Side::Gate, holder, options)
        }
    }
}

impl<S: SessionSource> fmt::Debug for QueueMutex<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedMutex")
            .field("name", &self.name)
            .field("side", &self.side.name())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: SessionSource> DistributedMutex for QueueMutex<S> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn acquire(&self, mode: Acquire) -> Result<Option<LockGuard>> {
        let place = Place {
            name: &self.name,
            kind: QueueKind::Lock,
            side: self.side,
            limit: self.limit,
        };
        acquire(&*self.source, place, &self.holder, mode, &self.options).await
    }
}

/// An [`Election`] over any backend.
pub(crate) struct QueueElection<S: SessionSource + KeySpace> {
    source: Arc<S>,
    name: String,
    options: QueueOptions,
}

impl<S: SessionSource + KeySpace> QueueElection<S> {
    pub(crate) fn new(source: Arc<S>, name: String, options: QueueOptions) -> Self {
        QueueElection {
            source,
            name,
            options,
        }
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
        let place = Place {
            name: &self.name,
            kind: QueueKind::Election,
            side: Side::Mutex,
            limit: None,
        };
        let guard = acquire(&*self.source, place, value, mode, &self.options).await?;
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
        type Heads = tokio::sync::mpsc::Receiver<Result<Option<QueueEntry>>>;
        // The watching task starts at the first poll, so that `observe()` itself needs no
        // runtime; it stops when the stream is dropped.
        let source = self.source.clone();
        let name = self.name.clone();
        let start = move || -> (Heads, AbortOnDropHandle<()>) {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let task = tokio::spawn(source.watch_head(name, QueueKind::Election, tx));
            (rx, AbortOnDropHandle::new(task))
        };
        // Each change once: skip repeats of the last leader (same key, same value).
        let state = (Some(start), None, None::<Option<(String, Vec<u8>)>>);
        Box::pin(futures::stream::unfold(
            state,
            |(mut start, mut heads, mut last)| async move {
                let (rx, _task) = match heads.as_mut() {
                    Some(heads) => heads,
                    None => heads.insert(start.take()?()),
                };
                loop {
                    match rx.recv().await? {
                        Ok(head) => {
                            let seen = head.as_ref().map(|e| (e.key.clone(), e.value.clone()));
                            if last.as_ref() == Some(&seen) {
                                continue;
                            }
                            last = Some(seen);
                            return Some((Ok(head.map(to_leader)), (start, heads, last)));
                        }
                        Err(e) => return Some((Err(e), (start, heads, last))),
                    }
                }
            },
        ))
    }
}

/// An entry that is not (yet) a guard: removed when dropped armed.
struct Pending<S: QueueSession> {
    session: Arc<S>,
    entry: Entry,
    armed: bool,
}

impl<S: QueueSession> Pending<S> {
    /// Lets go of an entry that did not get the lock: removes it if written (refused during
    /// a lock-delay, say), or if an attempt still on its way might write it.
    async fn discard(mut self) {
        if !self.entry.unsent && (self.entry.order != 0 || self.entry.stray_attempts) {
            self.remove().await;
        } else {
            self.armed = false; // nothing was written
        }
    }

    /// Removes the entry now (bounded), or in the background if the backend fails. Stays
    /// armed until the backend confirmed the removal: if this future is dropped half-way,
    /// `Drop` hands the entry to a background removal.
    async fn remove(mut self) {
        if self.entry.unsent {
            self.armed = false; // nothing was sent that could have created it
            return;
        }
        if crate::mutant::active(crate::mutant::Mutant::CleanupDisarmedEarly) {
            self.armed = false;
        }
        if self.session.remove(&self.entry).await.is_ok() {
            self.armed = false;
        }
    }

    fn into_guard(mut self, name: &str, spans: Spans<'_>, keys: &Arc<KeyMap>) -> LockGuard {
        self.armed = false;
        crate::stats::acquired();
        let (key, token) = (self.entry.key.as_str(), self.entry.token);
        spans.acquire.record("key", key);
        spans.acquire.record("token", token);
        let span = tracing::debug_span!(
            parent: spans.caller,
            "hold",
            name,
            kind = self.entry.kind.name(),
            key,
            token,
            backend = S::BACKEND,
        );
        span.follows_from(spans.acquire);
        let trigger = self.session.trigger().child();
        crate::metrics::held(trigger.signal(), S::BACKEND, self.entry.kind.name(), name);
        if tracing::enabled!(tracing::Level::WARN) {
            trace_loss(trigger.signal(), name, key, token, &span);
        }
        let held = Held {
            session: self.session.clone(),
            entry: self.entry.clone(),
            trigger: trigger.clone(),
            watch: StdMutex::new(None),
            armed: AtomicBool::new(false),
            keys: keys.clone(),
            span,
        };
        let sequencer = Sequencer::new(
            S::KIND,
            self.entry.kind,
            name,
            token,
            self.session.id(),
            key,
        )
        .of_semaphore(self.entry.side == Side::Lease);
        LockGuard::new(sequencer, trigger.signal(), Box::new(held))
    }
}

/// Reports the loss of a held lock when it happens (whether or not anyone asks the guard),
/// in the hold span. Only while someone listens: it costs a task per guard. The task ends
/// with the guard's release, which fires its signal too.
fn trace_loss(signal: crate::lost::LostSignal, name: &str, key: &str, token: u64, span: &Span) {
    let (name, key) = (name.to_owned(), key.to_owned());
    let report = async move {
        match signal.await {
            LostReason::Released => {}
            // Closing the client is deliberate; any other loss is a failure.
            reason @ LostReason::SessionClosed => {
                tracing::info!(name, key, token, %reason, "lost")
            }
            reason => tracing::warn!(name, key, token, %reason, "lost"),
        }
    };
    tokio::spawn(report.instrument(span.clone()));
}

impl<S: QueueSession> Drop for Pending<S> {
    fn drop(&mut self) {
        if self.armed && !self.entry.unsent {
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
    /// Maps the data keys of guarded writes onto the backend's.
    keys: Arc<KeyMap>,
    /// The hold span.
    span: Span,
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
        let ops = self.keys.ops(ops)?;
        self.as_lost(self.session.guarded_write(&self.entry, &ops).await)
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

    fn span(&self) -> &Span {
        &self.span
    }
}
