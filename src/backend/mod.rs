//! The contract between the backends and the rest of the library: what a backend
//! implements ([`QueueSession`] for one session's queue operations, [`SessionSource`] for a
//! client that opens sessions, [`KeySpace`] for plain data and queue listings) and the entry
//! types they share. Backends depend on this module, the queue algorithm and the public
//! contract only; [`crate::client`] is the one place that picks a backend.

mod slot;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::BackendKind;
use crate::error::{Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::sequencer::{Sequencer, SequencerStatus};

pub(crate) use slot::{SessionSlot, SessionSource};

/// Which queue of a name: a lock's or an election's. On etcd both are the same keys (as in
/// etcd's own tools); on ZooKeeper, lock nodes (`…lock-<seq>`, kazoo's `…__lock__<seq>`)
/// and election nodes (`…latch-<seq>`) are told apart by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueKind {
    /// A [`DistributedMutex`](crate::DistributedMutex)'s holder and waiters.
    Lock,
    /// An [`Election`](crate::Election)'s leader and candidates.
    Election,
}

impl QueueKind {
    /// Its name in traces and sequencers: `lock` or `election`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            QueueKind::Lock => "lock",
            QueueKind::Election => "election",
        }
    }
}

/// How an entry takes its place in a lock queue: exclusively (a mutex's or a writer's
/// entry: it waits for every entry ahead), or shared (a reader's: it waits only for the
/// exclusive entries ahead). Elections' entries are exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    /// A [`DistributedMutex`](crate::DistributedMutex)'s (or a candidate's) entry.
    Mutex,
    /// The write side of a [`ReadWriteLock`](crate::ReadWriteLock): exclusive, and named as
    /// a writer where the peers tell writers from mutexes (Curator's `__WRIT__`).
    Write,
    /// The read side of a [`ReadWriteLock`](crate::ReadWriteLock): shared among readers.
    Read,
    /// A semaphore's gate entry (see [`gate_name`]): exclusive, a mutex entry in the
    /// semaphore's gate queue, named as kazoo's Semaphore names its lock's nodes where the
    /// backend tells peers apart (ZooKeeper's `<uuid hex>__lock__<seq>`).
    Gate,
    /// A semaphore's lease: an entry of its pool, not of a queue (see
    /// [`QueueSession::take_lease`]).
    Lease,
}

impl Side {
    /// Whether entries of this side share the lock with each other.
    pub(crate) fn is_shared(self) -> bool {
        self == Side::Read
    }

    /// Its name in traces and `Debug`: `mutex`, `write` or `read`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Mutex => "mutex",
            Side::Write => "write",
            Side::Read => "read",
            Side::Gate => "gate",
            Side::Lease => "lease",
        }
    }
}

/// The gate queue of the semaphore `name`: `NAME-__lock__`, beside its pool `NAME` (the
/// layout of kazoo's Semaphore, whose lock lives at `PATH-__lock__`). Only the gate's head
/// looks at the pool, so a released lease wakes one waiter: the gate's head, if any.
pub(crate) fn gate_name(name: &str) -> String {
    format!("{name}-__lock__")
}

/// How a semaphore's limit is stored with its pool (kazoo's: the number in decimal).
pub(crate) fn limit_value(limit: u32) -> Vec<u8> {
    limit.to_string().into_bytes()
}

/// The limit stored with a pool, if its value is one (kazoo ignores values that are not).
pub(crate) fn parse_limit(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// [`Error::LimitMismatch`] unless `stored` (a pool's value) is `limit` or not a number.
pub(crate) fn check_limit(name: &str, stored: &[u8], limit: u32) -> Result<()> {
    match parse_limit(stored) {
        Some(stored) if stored != limit => Err(Error::LimitMismatch {
            name: name.to_owned(),
            stored,
            requested: limit,
        }),
        _ => Ok(()),
    }
}

/// Completes once the pool a full [`QueueSession::take_lease`] saw may have room again.
pub(crate) type LeaseFreed = futures::future::BoxFuture<'static, Result<()>>;

/// One entry of a queue, as [`Client::queue`](crate::Client::queue) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueEntry {
    /// The backend key or node path.
    pub key: String,
    /// The entry's fencing token (create revision, czxid).
    pub fencing_token: u64,
    /// The owning session (etcd lease id, ZooKeeper session id), in hex.
    pub session: String,
    /// The value stored with the entry (a candidate's value; empty for locks).
    pub value: Vec<u8>,
    /// A reader's entry (the shared side of a [`ReadWriteLock`](crate::ReadWriteLock),
    /// also kazoo's `ReadLock` and Curator's read lock): it holds together with the readers
    /// around it while no exclusive entry (a mutex's, a writer's) is ahead of it.
    pub shared: bool,
}

impl QueueEntry {
    /// Whether this entry holds the lock in `queue` (listed in order): it is in it, and
    /// first, or, if shared, no exclusive entry is ahead of it.
    pub fn holds(&self, queue: &[QueueEntry]) -> bool {
        let Some(at) = queue.iter().position(|e| e.key == self.key) else {
            return false;
        };
        match self.shared {
            true => queue[..at].iter().all(|e| e.shared),
            false => at == 0,
        }
    }
}

/// The plain key-value side of a backend: data reads and writes, and queue listings.
#[async_trait]
pub(crate) trait KeySpace: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    /// The first `limit` entries (all if `None`) of the queue `name`, in order.
    async fn queue(
        &self,
        name: &str,
        kind: QueueKind,
        limit: Option<usize>,
    ) -> Result<Vec<QueueEntry>>;
    /// What one linearizable read of the queue of `sequencer` (the queue of its name and
    /// kind under this client's prefix) says about its entry; see [`SequencerStatus`] for
    /// the definitions. Needs no session of its own (lazy clients).
    /// [`Error::InvalidSequencer`] if its key is not in that queue.
    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus>;
    /// Sends the head of the queue (first entry, with its value) each time it may have
    /// changed, starting with the current one, until `tx` is closed. Survives reconnects:
    /// errors are sent, then the head is read afresh.
    async fn watch_head(
        self: Arc<Self>,
        name: String,
        kind: QueueKind,
        tx: tokio::sync::mpsc::Sender<Result<Option<QueueEntry>>>,
    );
}

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
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub kind: QueueKind,
    /// Exclusive or shared, in a lock queue.
    pub side: Side,
    /// The value stored with the entry (a candidate's value; empty for locks).
    pub value: Vec<u8>,
    /// More than one attempt of the request that created it was sent (etcd: hedged or
    /// retried), and one may still arrive after the entry is removed, creating it again:
    /// its removal must withdraw it for good.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub stray_attempts: bool,
    /// What the holder last wrote through the entry, behind a lock that serialises the
    /// holder's writes through it (guarded writes, proclaims).
    #[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
    pub written: Arc<tokio::sync::Mutex<Written>>,
    /// The entry claimed its queue's holder record (lock-delay, see
    /// [`QueueSession::claim_holder`]): its removal deletes the record in the same write.
    pub holder_record: bool,
    /// Lock-delay, for a backend without a clock of its own (ZooKeeper): the noticed
    /// holder record this entry found (its version stamp) and when it first found it.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub delay_seen: Option<(i64, tokio::time::Instant)>,
    /// ZooKeeper: the first listing after the own node's create showed it at the head. The
    /// node's owner is known from then (the create's answer in this session, or the
    /// protected-create recovery's owner check), so the head needs no confirming read.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub head_at_create: bool,
    /// ZooKeeper, a semaphore's lease: the pool node (its czxid and data version) whose
    /// limit this acquisition checked; while the pool's listing shows the same node and
    /// version, the limit is not read again.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub pool_checked: Option<(i64, i32)>,
    /// No request that could create the entry was sent yet (a semaphore's lease while the
    /// pool is full): there is nothing to remove, nor any attempt to withdraw.
    pub unsent: bool,
}

/// The own entry as the holder's last write through it left it. A guarded write moves the
/// entry's version exactly once, which lets a retried write tell whether an earlier,
/// unanswered attempt was applied; knowing the version saves reading it first.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// etcd: the write marker's mod revision (0: none yet); ZooKeeper: the data version
    /// (0: as created).
    #[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
    pub version: i64,
    /// The entry's value, if a proclaim changed it since its creation.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub value: Option<Vec<u8>>,
    /// Whether `version` and `value` are known; false after a write without a definite
    /// answer, until read back.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    pub unknown: bool,
    /// etcd: how many guarded writes the holder started; each writes its number into the
    /// write marker, which tells an attempt of its own from an older write's.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub writes: u64,
}

impl Entry {
    /// A provisional entry, before the backend confirmed it.
    pub(crate) fn new(key: String, kind: QueueKind, side: Side, value: &[u8]) -> Self {
        Entry {
            key,
            token: 0,
            order: 0,
            kind,
            side,
            value: value.to_vec(),
            stray_attempts: false,
            written: Arc::default(),
            holder_record: false,
            delay_seen: None,
            head_at_create: false,
            pool_checked: None,
            unsent: false,
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

/// What the head of a queue found in the queue's holder record (lock-delay; see
/// [`QueueSession::claim_holder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The record names the own entry now: the previous holder released cleanly (or there
    /// was none), or the delay after its unclean end is over.
    Claimed,
    /// A previous holder ended without a clean release (its session expired, its entry was
    /// deleted) and the delay since that was first noticed is not over: ask again after
    /// this long at the earliest.
    Delayed(std::time::Duration),
}

/// What a backend provides for one session. Every method must be bounded in time (the
/// request timeout) and must clean up after itself when its future is dropped.
#[async_trait]
pub(crate) trait QueueSession: Send + Sync + Sized + 'static {
    /// Which backend this is.
    const KIND: BackendKind;
    /// The backend's name in errors and traces: `etcd`, `zookeeper` or `memory`.
    const BACKEND: &'static str = Self::KIND.name();

    /// Keeps the guard's own entry watched for deletion while it lives.
    type OwnWatch: Send + Sync + 'static;

    /// The session's loss trigger; guards hang their own triggers below it.
    fn trigger(&self) -> &LossTrigger;

    /// A provisional entry in the queue `name` of `kind`, on `side`, before anything is
    /// written.
    fn new_entry(&self, name: &str, kind: QueueKind, side: Side, value: &[u8]) -> Entry;

    /// Creates the entry only if no entry of the queue of `name` would be ahead of it (for
    /// a shared entry: no exclusive one).
    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool>;

    /// Appends the entry to the queue of `name`; returns the predecessor, if any: the
    /// nearest entry ahead of it (for a shared entry, the nearest exclusive one).
    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>>;

    /// The predecessor of `own` (as [`enqueue`](Self::enqueue) defines it), re-read. Fails
    /// if `own` no longer exists.
    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>>;

    /// Completes once `pred` is deleted.
    async fn deleted(&self, pred: &Predecessor) -> Result<()>;

    /// A last check before `own`, now at the head, is reported held (ZooKeeper elections:
    /// the head node must belong to this session).
    async fn confirm_head(&self, own: &Entry) -> Result<()> {
        let _ = own;
        Ok(())
    }

    /// Lock-delay: claims the *holder record* of the queue of `name` (one per queue, beside
    /// it) for `own`, now at the head, before it is reported held. A holder's clean release
    /// deletes the record with its entry in one write (`remove` of an entry with
    /// `holder_record` set), so a record naming another entry means that holder ended
    /// uncleanly. The first head to find such a record marks it *noticed*, which starts the
    /// delay (on the server's clock where the backend has one), and is told
    /// [`Claim::Delayed`]; once the delay is over, a head replaces the record with its own.
    /// Only while `own` exists (else the error `predecessor` gives); sets
    /// `own.holder_record` when claimed. Cancel safe: an interrupted claim leaves at most a
    /// record naming `own`, which a later head takes as an unclean end (a longer wait, never
    /// a shorter one).
    async fn claim_holder(
        &self,
        name: &str,
        own: &mut Entry,
        delay: std::time::Duration,
    ) -> Result<Claim>;

    /// A provisional lease of the semaphore `name`: an entry of its pool (the lock queue's
    /// place of `name`, whose value is the limit), before anything is written (`unsent`).
    fn new_lease(&self, name: &str, value: &[u8]) -> Entry;

    /// Takes a lease of the semaphore `name` for `gate`, the own entry at the head of its
    /// gate queue ([`gate_name`]), only while `gate` exists (else the error `predecessor`
    /// gives). Stores `limit` with the pool if none is stored; [`Error::LimitMismatch`] if
    /// another is. Creates `lease` (setting its order and token) if fewer than `limit`
    /// leases are in the pool, and answers `None`; otherwise creates nothing and answers
    /// a future that completes once a lease the read counted is gone (or the pool changed
    /// in another way: the caller asks again). Safe to repeat after a failure; cancel
    /// safe as `enqueue` is (the caller removes `lease` if it may have been created: the
    /// backend clears `lease.unsent` before it sends a request that may create it).
    async fn take_lease(
        &self,
        name: &str,
        limit: u32,
        gate: &Entry,
        lease: &mut Entry,
    ) -> Result<Option<LeaseFreed>>;

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
/// the session). The body of every backend's `remove_in_background`; it runs in the span
/// current when it is called (the guard's hold span), although it is spawned.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub(crate) fn remove_until_done<S: QueueSession>(
    session: Arc<S>,
    own: Entry,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use backon::{ExponentialBuilder, Retryable};
    use tracing::Instrument;

    let removal = async move {
        let lost = session.trigger().signal();
        let attempt = || async { session.remove(&own).await };
        let retries = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(100))
                    .with_max_delay(std::time::Duration::from_secs(2))
                    .without_max_times(),
            )
            .when(|e: &Error| e.is_transient())
            .notify(|e: &Error, after| {
                tracing::debug!(
                    backend = S::BACKEND,
                    key = %own.key,
                    error = %e,
                    retry_in = ?after,
                    "queue entry removal failed; retrying"
                );
            });
        tokio::select! {
            biased;
            result = retries => if let Err(e) = result {
                tracing::warn!(
                    backend = S::BACKEND,
                    key = %own.key,
                    error = %e,
                    "could not remove queue entry; giving up"
                );
            },
            reason = lost => tracing::debug!(
                backend = S::BACKEND,
                key = %own.key,
                %reason,
                "queue entry removal stopped: the session ended, and the entry with it"
            ),
        }
    };
    removal.instrument(tracing::Span::current())
}

/// Maps the end of a session to the error a waiter reports.
pub(crate) fn session_error(reason: LostReason) -> Error {
    match reason {
        LostReason::SessionClosed => Error::Closed,
        _ => Error::SessionExpired,
    }
}
