//! An etcd session: a lease kept alive in the background, and the lock queue on top of it.
//!
//! Queue layout (that of `etcdctl lock` and Go's `concurrency.Mutex`): lock NAME keeps one
//! key per waiter under `PREFIX/NAME/`, attached to the waiter's lease; the queue order is
//! the keys' create revision. Unlike Go, each acquisition gets its own key
//! (`<lease hex>-<n>`), so concurrent waiters of one session hold separate places.
//!
//! Readers of a read-write lock NAME queue in the same place, as `read-<lease hex>-<n>`
//! (see [`exclusive_ranges`]): writers, mutexes, `etcdctl lock` and Go's Mutex wait for
//! every key ahead of theirs, readers included; a reader waits only for the nearest
//! exclusive key ahead of it, which it finds with two range reads that leave readers out.
//!
//! A semaphore NAME (kazoo's layout) queues at its gate, the mutex queue `NAME-__lock__`;
//! its pool is the key `PREFIX/NAME`, whose value is the limit, and one key per lease under
//! `PREFIX/NAME/`, on the holder's lease. Only the gate's head counts and adds leases
//! ([`QueueSession::take_lease`]); while the pool is full, it alone watches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::api::{Compare, EtcdApi, Kv, Op, OpResponse, Put, Range, Sort, Txn, TxnResponse};
use super::request::{request, Retry};
use super::watch::{DeleteWatch, Notify, WatchHub};
use super::Settings;
use crate::backend::QueueKind;
use crate::backend::{
    check_limit, limit_value, remove_until_done, session_error, Claim, Entry, LeaseFreed,
    Predecessor, QueueSession, Side,
};
use crate::clock::{BootInstant, Deadline};
use crate::error::{Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::mutant::{self, Mutant};
use crate::state::Suspension;

pub(crate) struct EtcdSession {
    pub(super) lease: i64,
    api: Arc<dyn EtcdApi>,
    hub: WatchHub,
    settings: Arc<Settings>,
    trigger: LossTrigger,
    /// When the session counts as lost unless a keep-alive moves it.
    deadline: Arc<Deadline>,
    /// Stops the keep-alive task.
    stop: CancellationToken,
    abandoned: AtomicBool,
    /// Set while keep-alives fail; see [`Client::is_suspended`](crate::Client::is_suspended).
    pub(super) suspended: Arc<Suspension>,
    next_entry: AtomicU64,
    runtime: Handle,
}

impl EtcdSession {
    /// Grants a lease and starts keeping it alive.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the server raised the TTL to its minimum; request errors.
    /// The grant may take `grant_timeout` (the connect timeout for a client's first
    /// session); every later request of the session takes the request timeout.
    pub(super) async fn open(
        api: &Arc<dyn EtcdApi>,
        hub: &WatchHub,
        settings: &Arc<Settings>,
        grant_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let ttl = settings.ttl_secs;
        let granted_at = BootInstant::now();
        // A retried grant may leave an unused lease behind: it expires after its TTL.
        let (lease, granted) = request(grant_timeout, Retry::Idempotent, || api.grant(ttl)).await?;
        if granted > ttl {
            let _ = revoke(api, lease, settings.request_timeout).await;
            return Err(Error::config(format!(
                "ttl {ttl}s is below the etcd server's minimum lease TTL of {granted}s"
            )));
        }
        // The server frees the lease `ttl` after the grant was *sent* at the earliest; the
        // holder gives up `safety_margin` before that.
        let deadline = Arc::new(Deadline::new(
            granted_at
                .add(Duration::from_secs(granted as u64))
                .sub(settings.safety_margin),
        ));
        let session = Arc::new(EtcdSession {
            lease,
            api: api.clone(),
            hub: hub.clone(),
            settings: settings.clone(),
            trigger: LossTrigger::with_deadline(deadline.clone()),
            deadline: deadline.clone(),
            stop: CancellationToken::new(),
            abandoned: AtomicBool::new(false),
            suspended: Suspension::new(&settings.states, "etcd", format!("{lease:x}")),
            next_entry: AtomicU64::new(0),
            runtime: Handle::current(),
        });
        tokio::spawn(keep_alive(
            api.clone(),
            lease,
            settings.clone(),
            session.trigger.clone(),
            session.stop.clone(),
            session.suspended.clone(),
            deadline,
        ));
        Ok(session)
    }

    fn prefix(&self, name: &str) -> String {
        format!("{}/{name}/", self.settings.prefix)
    }

    /// The key ranges of queue `name` whose entries an entry of `side` waits for.
    fn ranges_ahead(&self, name: &str, side: Side) -> Vec<Range> {
        let prefix = self.prefix(name);
        match side.is_shared() {
            true => exclusive_ranges(&prefix).into(),
            false => vec![Range::prefix(prefix)],
        }
    }

    /// One Txn, failing over between members as `retry` allows (see `request.rs` for why
    /// each Txn of the queue is safe to repeat).
    async fn txn(&self, txn: Txn, retry: Retry) -> Result<TxnResponse> {
        Ok(self.counted_txn(txn, retry).await?.0)
    }

    /// As [`txn`](Self::txn), with the number of attempts sent: beyond one, an attempt may
    /// still be on its way to the server after the answer came.
    async fn counted_txn(&self, txn: Txn, retry: Retry) -> Result<(TxnResponse, u64)> {
        let attempts = AtomicU64::new(0);
        let resp = request(self.settings.request_timeout, retry, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            self.api.txn(txn.clone())
        })
        .await
        .map_err(|e| self.lease_error(e))?;
        Ok((resp, attempts.load(Ordering::SeqCst)))
    }

    /// A lease the server does not know was revoked or expired before the keep-alive
    /// noticed: the session is over now, for every guard of it and the next acquisition.
    fn lease_error(&self, e: Error) -> Error {
        if super::is_lease_not_found(&e) {
            self.trigger.fire(LostReason::SessionExpired);
            return Error::SessionExpired;
        }
        e
    }

    /// Why `own` is gone: the session ended, or someone deleted the key.
    fn gone(&self) -> Error {
        match self.trigger.signal().reason() {
            Some(reason) => session_error(reason),
            None => Error::LockLost(LostReason::Deleted),
        }
    }

    fn check_alive(&self) -> Result<()> {
        match self.trigger.signal().reason() {
            Some(reason) => Err(session_error(reason)),
            None => Ok(()),
        }
    }

    /// The guarded delete of `own` (and of its write marker). An entry whose enqueue may
    /// still have an attempt on its way (unconfirmed, or confirmed by one of several
    /// attempts), which etcd would apply after this delete and so create the entry again
    /// for good, is *withdrawn*: a marker key on the session's lease makes any later
    /// enqueue of it a no-op. Markers go with the session; only entries whose enqueue was
    /// sent more than once, or whose one enqueue had no answer, leave one.
    fn delete_txn(&self, own: &Entry) -> Txn {
        let delete = Op::delete(own.key.as_bytes());
        let withdraw = || {
            let marker = Put::new(beside(&own.key, "withdrawn"), Vec::new());
            Op::Put(marker.with_lease(self.lease))
        };
        if own.order == 0 {
            return Txn::default().then([withdraw(), delete]);
        }
        let (mut then, mut otherwise) = (
            vec![delete, Op::delete(beside(&own.key, "written"))],
            vec![],
        );
        if own.holder_record {
            // A clean release: the holder record goes with the entry, in one write.
            then.push(Op::delete(holder_record(&own.key)));
        }
        if own.stray_attempts {
            // Gone already (deleted from outside, say)? A stray attempt may have created
            // the key again since, as another entry: it is this acquisition's, so it goes.
            then.push(withdraw());
            otherwise.extend([withdraw(), Op::delete(own.key.as_bytes())]);
        }
        Txn::when([Compare::create_revision(own.key.as_bytes(), own.order)])
            .then(then)
            .otherwise(otherwise)
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        // The last handle is gone: end the session politely unless told to "crash".
        let stopped = self.stop.is_cancelled();
        self.stop.cancel();
        if stopped || self.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let (api, lease, timeout) = (self.api.clone(), self.lease, self.settings.request_timeout);
        self.runtime.spawn(async move {
            let _ = revoke(&api, lease, timeout).await;
        });
    }
}

async fn revoke(api: &Arc<dyn EtcdApi>, lease: i64, timeout: Duration) -> Result<()> {
    let revoked = request(timeout, Retry::Idempotent, || api.revoke(lease)).await;
    match revoked {
        // Already expired or revoked: the goal is reached.
        Err(e) if super::is_lease_not_found(&e) => Ok(()),
        other => other,
    }
}

/// Whether the server no longer knows lease `lease` (false if it cannot tell).
async fn lease_gone(api: &Arc<dyn EtcdApi>, lease: i64, timeout: Duration) -> bool {
    let asked = request(timeout, Retry::Idempotent, || api.time_to_live(lease)).await;
    matches!(asked, Ok(ttl) if ttl <= 0)
}

/// Keeps lease `lease` alive every TTL/3 until `stop`, firing `trigger` when it is lost.
///
/// The lease counts as lost when the server says it is gone (TTL ≤ 0, "lease not found"),
/// or when `deadline` passes: the remaining TTL of the last successful keep-alive, counted
/// from when it was *sent* (so no later than the server's own expiry) less the safety
/// margin, on the suspend-aware clock. A lost lease is revoked on the way out, best effort,
/// so that a server that comes back does not keep the keys of a session its holders gave
/// up. A broken stream (a member died) is reopened at once, on whichever member the
/// client's balancer picks next, with a short backoff while that fails.
async fn keep_alive(
    api: Arc<dyn EtcdApi>,
    lease: i64,
    settings: Arc<Settings>,
    trigger: LossTrigger,
    stop: CancellationToken,
    suspended: Arc<Suspension>,
    deadline: Arc<Deadline>,
) {
    let ttl = Duration::from_secs(settings.ttl_secs as u64);
    let mut stream = None;
    let mut failures = 0u32;
    loop {
        let sent = BootInstant::now();
        let round = async {
            let keeper = match &mut stream {
                Some(stream) => stream,
                None => {
                    // Opening the stream performs one keep-alive already.
                    stream = Some(api.keep_alive(lease).await?);
                    return Ok(Some(settings.ttl_secs));
                }
            };
            keeper.round().await
        };
        // A round still unanswered after a moment is hedged with a new stream, which the
        // balancer may open on another member: a keep-alive that reached a follower just
        // as the leader died is forwarded to the dead leader and never answered, and a
        // session must not wait a whole round for it. The first answer wins.
        let hedge = async {
            tokio::time::sleep((ttl / 6).min(KEEPALIVE_HEDGE)).await;
            loop {
                match api.keep_alive(lease).await {
                    Ok(opened) => return opened,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        let mut reopened = None;
        // A round that takes longer than TTL/3 counts as failed (a silent partition looks
        // like this); the session is suspended and the stream reopened.
        let limit = deadline.get().remaining().min(ttl / 3);
        let outcome: Option<Result<Option<i64>, etcd_client::Error>> = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            outcome = tokio::time::timeout(limit, round) => outcome.ok(),
            opened = tokio::time::timeout(limit, hedge) => match opened {
                // Opening the stream performs one keep-alive already.
                Ok(opened) => {
                    reopened = Some(opened);
                    Some(Ok(Some(settings.ttl_secs)))
                }
                Err(_) => None,
            },
        };
        if reopened.is_some() {
            stream = reopened;
        }
        // Closed or abandoned while the round was being answered: the session was ended on
        // purpose, nothing to report.
        if stop.is_cancelled() {
            return;
        }
        let retry = match outcome {
            Some(Ok(Some(remaining))) if remaining > 0 => {
                let sent = match mutant::active(Mutant::DeadlineFromAnswer) {
                    true => BootInstant::now(),
                    false => sent,
                };
                deadline.set(
                    sent.add(Duration::from_secs(remaining as u64))
                        .sub(settings.safety_margin),
                );
                suspended.set(false);
                failures = 0;
                ttl / 3
            }
            // etcd-client reports a dead lease as this message (and a broken stream as other
            // LeaseKeepAliveErrors, which only mean "reopen").
            Some(Err(etcd_client::Error::LeaseKeepAliveError(message)))
                if message.contains("lease not found") =>
            {
                tracing::warn!(
                    lease = format!("{lease:x}"),
                    "etcd lease not found: session lost"
                );
                trigger.fire(LostReason::SessionExpired);
                return;
            }
            Some(Ok(Some(_))) => {
                tracing::warn!(
                    lease = format!("{lease:x}"),
                    "etcd lease not found: session lost"
                );
                trigger.fire(LostReason::SessionExpired);
                return;
            }
            Some(Ok(None)) | Some(Err(_)) | None => {
                suspended.set(true);
                stream = None;
                failures = failures.saturating_add(1);
                // 10, 30, 70, 150, 250 ms…: the first reopen at once, likely on another member.
                Duration::from_millis((10u64 << failures.min(5)) - 10).min(RETRY_MAX)
            }
        };
        if deadline.has_passed() || trigger.signal().is_lost() {
            tracing::warn!(
                lease = format!("{lease:x}"),
                "etcd lease deadline passed: session lost"
            );
            trigger.fire(LostReason::SessionExpired);
            let _ = revoke(&api, lease, settings.request_timeout).await;
            return;
        }
        let wake = BootInstant::now().add(retry).min(deadline.get());
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = sleep_until(wake) => {}
        }
    }
}

/// How long a keep-alive round waits for its answer before a second stream joins it.
const KEEPALIVE_HEDGE: Duration = Duration::from_secs(1);

/// The longest pause between two attempts to reopen the keep-alive stream.
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Sleeps until `at` on the suspend-aware clock: in slices of at most a second, since
/// tokio's timers run on a clock that stops while the machine is suspended.
async fn sleep_until(at: BootInstant) {
    loop {
        let left = at.remaining();
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

/// The keys of a transaction's `i`th answer, if it is a range read's.
fn range_response(resp: &TxnResponse, i: usize) -> Option<&[Kv]> {
    resp.responses.get(i).and_then(OpResponse::kvs)
}

/// A marker about the entry `key` (`what`: `withdrawn`, `written`), beside the queue, not in
/// it (`PREFIX/NAME<NUL>what/LEAF`: no lock name contains a NUL, so no queue prefix covers
/// it).
fn beside(key: &str, what: &str) -> Vec<u8> {
    let (queue, leaf) = key.rsplit_once('/').unwrap_or(("", key));
    format!("{queue}\u{0}{what}/{leaf}").into_bytes()
}

/// The holder record of the queue of entry `key` (lock-delay; `PREFIX/NAME<NUL>holder`,
/// beside the queue as the markers are). Not on a lease: it must outlive a holder whose
/// session expires. Its value names the holder's entry; empty, on a lease of the delay's
/// length, it marks an unclean end noticed (the delay runs until the lease expires).
fn holder_record(key: &str) -> Vec<u8> {
    let queue = key.rsplit_once('/').map_or(key, |(queue, _)| queue);
    format!("{queue}\u{0}holder").into_bytes()
}

/// The enqueue's condition that its entry was not withdrawn meanwhile.
fn not_withdrawn(key: &str) -> Compare {
    Compare::create_revision(beside(key, "withdrawn"), 0)
}

fn withdrawn() -> Error {
    Error::Backend {
        backend: "etcd",
        source: "the acquisition was withdrawn while its enqueue was in flight".into(),
    }
}

fn malformed() -> Error {
    Error::Backend {
        backend: "etcd",
        source: "unexpected transaction response".into(),
    }
}

/// The newest key of `range` created before `before`.
fn predecessor_query(range: Range, before: i64) -> Op {
    Op::Range(
        range
            .sorted(Sort::CreateDescending)
            .created_at_most(before - 1)
            .limit(1)
            .keys_only(),
    )
}

/// How a reader's key begins after the queue prefix. Every other key of a queue begins
/// with a hex digit (fairlock's `<lease hex>-<n>`, etcdctl's and Go's `<lease hex>`), which
/// sorts before `r`: the readers are one key range.
const READER: &str = "read-";

/// The key ranges of queue `prefix` (which ends in `/`) outside the readers': the keys
/// before `read-` and those from `read.` (`-` + 1) to the end of the prefix.
fn exclusive_ranges(prefix: &str) -> [Range; 2] {
    let queue = prefix.strip_suffix('/').unwrap_or(prefix);
    [
        Range::between(prefix, format!("{prefix}{READER}")),
        Range::between(format!("{prefix}read."), format!("{queue}0")),
    ]
}

/// Whether `key` (of the queue `PREFIX/NAME/`) is a reader's.
pub(super) fn is_reader(key: &[u8]) -> bool {
    let leaf = key.rsplit(|b| *b == b'/').next().unwrap_or_default();
    leaf.starts_with(READER.as_bytes())
}

/// The newest of the keys that answers `first..` of `resp` hold, other than `own`.
fn newest_other<'a>(resp: &'a TxnResponse, first: usize, own: &[u8]) -> Result<Option<&'a Kv>> {
    let mut newest: Option<&Kv> = None;
    for i in first..resp.responses.len() {
        let kvs = range_response(resp, i).ok_or_else(malformed)?;
        if let Some(kv) = kvs.iter().find(|kv| kv.key != own) {
            if newest.is_none_or(|n| kv.create_revision > n.create_revision) {
                newest = Some(kv);
            }
        }
    }
    Ok(newest)
}

/// The key `kv`, read at `revision`, as a predecessor: it is that key *with that create
/// revision* a waiter waits for (the key name alone may come back as a new entry).
fn to_predecessor(kv: &Kv, revision: i64) -> Predecessor {
    Predecessor {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        revision,
        created: kv.create_revision,
    }
}

/// Keeps a held lock's own key watched; dropping it cancels the watch.
pub(crate) struct OwnWatch(#[allow(dead_code)] DeleteWatch);

#[async_trait]
impl QueueSession for EtcdSession {
    const KIND: crate::config::BackendKind = crate::config::BackendKind::Etcd;
    type OwnWatch = OwnWatch;

    fn trigger(&self) -> &LossTrigger {
        &self.trigger
    }

    fn new_entry(&self, name: &str, kind: QueueKind, side: Side, value: &[u8]) -> Entry {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let reader = if side.is_shared() { READER } else { "" };
        Entry::new(
            format!("{}{reader}{:x}-{n}", self.prefix(name), self.lease),
            kind,
            side,
            value,
        )
    }

    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool> {
        self.check_alive()?;
        // "No key in the ranges ahead": a range compare over an empty range compares a zero
        // key, whose version is 0.
        let mut when: Vec<Compare> = (self.ranges_ahead(name, entry.side).iter())
            .map(Compare::range_empty)
            .collect();
        // The own key does not exist yet: a reader's is outside the ranges compared, and a
        // retried attempt must not put it again (a put on an existing key keeps its create
        // revision, which the answer's revision would not be).
        if !mutant::active(Mutant::ReaderTryPutsTwice) {
            when.push(Compare::create_revision(entry.key.as_bytes(), 0));
        }
        when.push(not_withdrawn(&entry.key));
        // Else read the own key back: if a retried attempt finds it, the first attempt put
        // it (into an empty queue) and only its answer was lost.
        let put = Put::new(entry.key.as_bytes(), entry.value.clone()).with_lease(self.lease);
        let txn = Txn::when(when)
            .then([Op::Put(put)])
            .otherwise([Op::Range(Range::key(entry.key.as_bytes()).keys_only())]);
        let (resp, attempts) = self.counted_txn(txn, Retry::Idempotent).await?;
        entry.stray_attempts = attempts > 1;
        if !resp.succeeded {
            let own = range_response(&resp, 0)
                .ok_or_else(malformed)?
                .first()
                .map(|kv| kv.create_revision);
            let Some(created) = own else {
                return Ok(false);
            };
            entry.order = created;
            entry.token = created as u64;
            if self.predecessor(name, entry).await?.is_none() {
                return Ok(true);
            }
            self.remove(entry).await?; // cannot happen (it was put into an empty queue)
            entry.order = 0;
            return Ok(false);
        }
        entry.order = resp.revision;
        entry.token = resp.revision as u64;
        Ok(true)
    }

    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>> {
        self.check_alive()?;
        let key = entry.key.as_bytes();
        // One round trip: create the key if new (a retried request finds it instead) and
        // read the two newest keys of each range ahead; at the txn's revision the own key
        // is the newest, so the newest other one, if any, is the predecessor.
        let newest = (self.ranges_ahead(name, entry.side).into_iter())
            .map(|range| Op::Range(range.sorted(Sort::CreateDescending).limit(2).keys_only()));
        let put = Put::new(key, entry.value.clone()).with_lease(self.lease);
        let txn = Txn::when([Compare::create_revision(key, 0), not_withdrawn(&entry.key)])
            .then(
                std::iter::once(Op::Put(put))
                    .chain(newest)
                    .collect::<Vec<_>>(),
            )
            .otherwise([Op::Range(Range::key(key))]);
        let (resp, attempts) = self.counted_txn(txn, Retry::Idempotent).await?;
        entry.stray_attempts = attempts > 1;
        if !resp.succeeded {
            let own = range_response(&resp, 0)
                .and_then(|kvs| kvs.first())
                .ok_or_else(withdrawn)?;
            entry.order = own.create_revision;
            entry.token = entry.order as u64;
            return self.predecessor(name, entry).await;
        }
        entry.order = resp.revision;
        entry.token = resp.revision as u64;
        let newest = newest_other(&resp, 1, key)?;
        Ok(newest.map(|kv| to_predecessor(kv, resp.revision)))
    }

    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>> {
        // One read-only txn: does the own key still exist (the post-wait check), and which
        // key is now directly ahead of it.
        let ahead = (self.ranges_ahead(name, own.side).into_iter())
            .map(|range| predecessor_query(range, own.order));
        let own_key = Op::Range(Range::key(own.key.as_bytes()).keys_only());
        let txn = Txn::default().then(std::iter::once(own_key).chain(ahead).collect::<Vec<_>>());
        let resp = self.txn(txn, Retry::Idempotent).await?;
        let own_kv = range_response(&resp, 0).ok_or_else(malformed)?;
        let gone = own_kv
            .first()
            .is_none_or(|kv| kv.create_revision != own.order);
        if gone && !mutant::active(Mutant::NoPostWaitCheck) {
            return Err(self.gone());
        }
        let ahead = newest_other(&resp, 1, own.key.as_bytes())?;
        Ok(ahead.map(|kv| to_predecessor(kv, resp.revision)))
    }

    async fn deleted(&self, pred: &Predecessor) -> Result<()> {
        self.hub
            .deleted(&pred.key, pred.revision, pred.created)
            .await
    }

    /// A key of the pool `PREFIX/NAME/`, named as a queue entry is (`<lease hex>-<n>`).
    fn new_lease(&self, name: &str, value: &[u8]) -> Entry {
        Entry {
            unsent: true,
            ..self.new_entry(name, QueueKind::Lock, Side::Lease, value)
        }
    }

    /// Two round trips when the pool has room: a first Txn checks the gate, stores the
    /// limit at `PREFIX/NAME` if none is stored (else reads it) and counts the leases; a
    /// second creates the lease, guarded by the gate. Between the two the pool can only
    /// shrink: only the gate's head creates leases, and the gate compare keeps a head that
    /// lost its gate (its session expired, a late attempt) from creating one.
    async fn take_lease(
        &self,
        name: &str,
        limit: u32,
        gate: &Entry,
        lease: &mut Entry,
    ) -> Result<Option<LeaseFreed>> {
        self.check_alive()?;
        let pool = format!("{}/{name}", self.settings.prefix);
        let leases = self.prefix(name);
        let gate_key = gate.key.as_bytes();
        let gate_alive = || Compare::create_revision(gate_key, gate.order);
        let count = || Op::Range(Range::prefix(leases.as_bytes()).count_only());
        // Not on a lease: the limit outlives its users, as kazoo's does. A repeated attempt
        // whose first one stored it reads it back, the same limit.
        let store = Put::new(pool.as_bytes(), limit_value(limit));
        let txn = Txn::when([gate_alive(), Compare::create_revision(pool.as_bytes(), 0)])
            .then([Op::Put(store), count()])
            .otherwise([
                Op::Range(Range::key(gate_key).keys_only()),
                Op::Range(Range::key(pool.as_bytes())),
                count(),
            ]);
        let resp = self.txn(txn, Retry::Idempotent).await?;
        let counted = match resp.succeeded {
            true => 1,
            false => {
                let gate_now = range_response(&resp, 0)
                    .ok_or_else(malformed)?
                    .first()
                    .filter(|kv| kv.create_revision == gate.order);
                if gate_now.is_none() {
                    return Err(self.gone());
                }
                if let Some(stored) = range_response(&resp, 1).and_then(|kvs| kvs.first()) {
                    check_limit(name, &stored.value, limit)?;
                }
                2
            }
        };
        let taken = (resp.responses.get(counted))
            .and_then(OpResponse::count)
            .ok_or_else(malformed)?;
        if taken >= i64::from(limit) {
            // Deletions from the read on: one between the read and the watch is replayed.
            let freed = self.hub.prefix_deleted(&leases, resp.revision);
            return Ok(Some(Box::pin(freed)));
        }
        // As `enqueue`: created only while the gate holds, once (a repeated attempt reads
        // the key back instead), and never after the lease was withdrawn.
        let key = lease.key.as_bytes();
        let put = Put::new(key, lease.value.clone()).with_lease(self.lease);
        let txn = Txn::when([
            gate_alive(),
            Compare::create_revision(key, 0),
            not_withdrawn(&lease.key),
        ])
        .then([Op::Put(put)])
        .otherwise([
            Op::Range(Range::key(key).keys_only()),
            Op::Range(Range::key(gate_key).keys_only()),
        ]);
        lease.unsent = false;
        let (resp, attempts) = self.counted_txn(txn, Retry::Idempotent).await?;
        lease.stray_attempts |= attempts > 1;
        let created = match resp.succeeded {
            true => resp.revision,
            // An earlier attempt created it, while the gate held; only its answer was lost.
            false => match range_response(&resp, 0).ok_or_else(malformed)?.first() {
                Some(own) => own.create_revision,
                None => {
                    let gate_now = range_response(&resp, 1)
                        .ok_or_else(malformed)?
                        .first()
                        .filter(|kv| kv.create_revision == gate.order);
                    return Err(match gate_now {
                        None => self.gone(),
                        Some(_) => withdrawn(),
                    });
                }
            },
        };
        lease.order = created;
        lease.token = created as u64;
        Ok(None)
    }

    /// The delay runs on the server's clock: the record of a noticed unclean end sits on a
    /// lease of the delay's length (the server may round it up to its minimum TTL), so it
    /// is gone exactly when the delay is over, for every client, `try_lock` included.
    async fn claim_holder(&self, _name: &str, own: &mut Entry, delay: Duration) -> Result<Claim> {
        let record = holder_record(&own.key);
        let timeout = self.settings.request_timeout;
        // Each round either claims, or finds the record changed by another head (there is
        // one at a time, so only a few rounds: a race with an expiring lease).
        for _ in 0..4 {
            let put = Put::new(record.clone(), own.key.clone().into_bytes());
            let txn = Txn::when([
                fence(&own.key, own.token),
                Compare::create_revision(record.clone(), 0),
            ])
            .then([Op::Put(put)])
            .otherwise([
                Op::Range(Range::key(own.key.as_bytes()).keys_only()),
                Op::Range(Range::key(record.clone())),
            ]);
            let resp = self.txn(txn, Retry::Idempotent).await?;
            if resp.succeeded {
                own.holder_record = true;
                return Ok(Claim::Claimed);
            }
            let own_now = range_response(&resp, 0)
                .and_then(|kvs| kvs.first())
                .filter(|kv| kv.create_revision == own.order);
            if own_now.is_none() {
                return Err(self.gone());
            }
            let Some(found) = range_response(&resp, 1).and_then(|kvs| kvs.first()) else {
                continue; // gone meanwhile (its delay ended): claim again
            };
            if found.value == own.key.as_bytes() {
                // An earlier attempt of this claim applied; its answer was lost.
                own.holder_record = true;
                return Ok(Claim::Claimed);
            }
            if found.value.is_empty() && found.lease != 0 {
                // Noticed: the delay lasts as long as the record's lease. The server gives
                // whole seconds, rounded down (0 in the last second of a live lease).
                let lease = found.lease;
                let ttl =
                    request(timeout, Retry::Idempotent, || self.api.time_to_live(lease)).await?;
                if ttl < 0 {
                    continue; // just expired, and the record with it
                }
                return Ok(Claim::Delayed(Duration::from_secs(ttl as u64 + 1)));
            }
            // An unclean end, not noticed yet: the delay starts now, on a lease of its own.
            // (A lease left unused by a lost race expires by itself, holding nothing; it
            // is not revoked, since an unanswered attempt may have put the record on it.)
            let secs = delay.as_secs_f64().ceil().max(1.0) as i64;
            let (lease, granted) =
                request(timeout, Retry::Idempotent, || self.api.grant(secs)).await?;
            let noticed = Put::new(record.clone(), Vec::new()).with_lease(lease);
            let txn = Txn::when([
                fence(&own.key, own.token),
                Compare::mod_revision(record.clone(), found.mod_revision),
            ])
            .then([Op::Put(noticed)]);
            if self.txn(txn, Retry::Idempotent).await?.succeeded {
                tracing::debug!(previous = %String::from_utf8_lossy(&found.value), "unclean end noticed");
                return Ok(Claim::Delayed(
                    Duration::from_secs(granted.max(secs) as u64),
                ));
            }
        }
        Err(Error::Backend {
            backend: "etcd",
            source: "the holder record kept changing".into(),
        })
    }

    async fn proclaim(&self, own: &Entry, value: &[u8]) -> Result<()> {
        // As Go's Election.Proclaim: a put guarded by the own key's create revision, on the
        // same lease.
        let put = Put::new(own.key.as_bytes(), value.to_vec()).with_lease(self.lease);
        let txn = Txn::when([fence(&own.key, own.token)]).then([Op::Put(put)]);
        let _serialised = own.written.lock().await;
        let resp = self.txn(txn, Retry::Idempotent).await?;
        if !resp.succeeded {
            return Err(self.gone());
        }
        Ok(())
    }

    /// `Ok(false)` if the key was gone already. When the delete was sent more than once
    /// (a hedged or repeated attempt), the attempt that answers "nothing deleted" may
    /// follow our own applied one: then the key counts as removed by us, as the entry was
    /// ours and is gone either way.
    async fn remove(&self, own: &Entry) -> Result<bool> {
        let (resp, attempts) = self
            .counted_txn(self.delete_txn(own), Retry::Idempotent)
            .await?;
        // A confirmed entry was ours exactly if the compare held (the other branch only
        // clears what a stray enqueue attempt may have made of the key since).
        let deleted = match own.order {
            0 => resp
                .responses
                .iter()
                .any(|op| matches!(op, OpResponse::Delete { deleted } if *deleted > 0)),
            _ => resp.succeeded,
        };
        Ok(deleted || attempts > 1)
    }

    fn remove_in_background(self: &Arc<Self>, own: Entry) {
        // Spawning on a runtime that shut down drops the task; it never panics.
        self.runtime.spawn(remove_until_done(self.clone(), own));
    }

    fn watch_own(&self, own: &Entry, trigger: LossTrigger) -> OwnWatch {
        // A deleted own key may mean the whole lease is gone (revoked, expired): then say so,
        // for this guard and for the session, rather than wait for the next keep-alive.
        let api = self.api.clone();
        let (lease, session) = (self.lease, self.trigger.clone());
        let timeout = self.settings.request_timeout;
        let on_delete = move || {
            if trigger.signal().is_lost() {
                return; // released (the delete was our own) or lost already
            }
            tokio::spawn(async move {
                if lease_gone(&api, lease, timeout).await {
                    session.fire(LostReason::SessionExpired);
                }
                trigger.fire(LostReason::Deleted);
            });
        };
        OwnWatch(self.hub.watch_delete(
            &own.key,
            own.order,
            own.order,
            Notify::Call(Box::new(on_delete)),
        ))
    }

    fn id(&self) -> String {
        format!("{:x}", self.lease)
    }

    fn is_suspended(&self) -> bool {
        self.suspended.get()
    }

    /// Revokes the lease: every key of the session goes at once.
    async fn close(&self) -> Result<()> {
        self.stop.cancel();
        self.trigger.fire(LostReason::SessionClosed);
        revoke(&self.api, self.lease, self.settings.request_timeout).await
    }

    /// Stops the keep-alive, leaving the lease to expire as after a crash. The process
    /// goes on, though: its guards hear of the loss when the deadline passes.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.stop.cancel();
        let (deadline, trigger) = (self.deadline.clone(), self.trigger.clone());
        self.runtime.spawn(async move {
            sleep_until(deadline.get()).await;
            trigger.fire(LostReason::SessionExpired);
        });
    }

    /// The write's Txn also puts the write's number into the entry's *write marker*
    /// (`PREFIX/NAME<NUL>written/LEAF`, on the lease) and compares the marker's mod
    /// revision with the one the holder's last write left: at most one attempt of a write
    /// applies, so the Txn can be sent again after a lost answer (a member died, a leader
    /// changed). A repeat that fails its comparison reads the marker: this write's number
    /// means an earlier attempt applied (done); an older write's number means that older
    /// write, whose outcome was unknown, arrived late (compare with the marker as it is now
    /// and send again). Without the number, a late older write would be taken for this one.
    /// If the entry is gone, the marker tells whether this write applied before it went;
    /// gone with the session, it cannot tell: the outcome is unknown if an attempt was
    /// unanswered.
    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()> {
        let mut written = own.written.lock().await;
        written.writes += 1;
        let number = written.writes.to_string().into_bytes();
        let marker = beside(&own.key, "written");
        let mut ops: Vec<Op> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => Op::Put(Put::new(key.as_bytes(), value.clone())),
                WriteOp::Delete { key } => Op::delete(key.as_bytes()),
            })
            .collect();
        ops.push(Op::Put(
            Put::new(marker.clone(), number.clone()).with_lease(self.lease),
        ));
        let mut unanswered = false;
        // A failed comparison with no attempt of this write applied: an older write of
        // this holder moved the marker; compare again with what it is now (a few times at
        // most: each older write applies at most once).
        for _ in 0..4 {
            let txn = Txn::when([
                fence(&own.key, own.token),
                Compare::mod_revision(marker.clone(), written.version),
            ])
            .then(ops.clone())
            .otherwise([
                Op::Range(Range::key(own.key.as_bytes()).keys_only()),
                Op::Range(Range::key(marker.clone())),
            ]);
            let (resp, attempts) = self.counted_txn(txn, Retry::Checked).await?;
            unanswered |= attempts > 1;
            if resp.succeeded {
                written.version = resp.revision;
                return Ok(());
            }
            let own_now = range_response(&resp, 0)
                .and_then(|kvs| kvs.first())
                .filter(|kv| kv.create_revision == own.order);
            let marker_now = range_response(&resp, 1).and_then(|kvs| kvs.first());
            if let Some(m) = marker_now {
                written.version = m.mod_revision;
                if m.value == number {
                    return Ok(()); // an earlier attempt applied; its answer was lost
                }
            }
            if own_now.is_none() {
                if marker_now.is_none() && unanswered {
                    return Err(Error::OutcomeUnknown {
                        backend: "etcd",
                        source: "an attempt went unanswered, and the lock's entry is gone \
                                 with its session"
                            .into(),
                    });
                }
                return Err(self.gone());
            }
        }
        Err(Error::Backend {
            backend: "etcd",
            source: "the write marker kept changing under the guarded write".into(),
        })
    }
}

/// The fence: `create_revision(key) == token` (see [`super::fence_compare`]).
fn fence(key: &str, token: u64) -> Compare {
    Compare::create_revision(key.as_bytes(), token as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_markers_lie_outside_every_queue() {
        let marker = beside("fairlock/stock/694d8a1f2c3b-7", "withdrawn");
        assert_eq!(marker, b"fairlock/stock\0withdrawn/694d8a1f2c3b-7");
        assert!(!marker.starts_with(b"fairlock/stock/"));
        // Only a name containing NUL could cover it, and names cannot.
        assert!(crate::validate_name("stock\0withdrawn").is_err());
    }
}
