//! An etcd session: a lease kept alive in the background, and the lock queue on top of it.
//!
//! Queue layout (that of `etcdctl lock` and Go's `concurrency.Mutex`): lock NAME keeps one
//! key per waiter under `PREFIX/NAME/`, attached to the waiter's lease; the queue order is
//! the keys' create revision. Unlike Go, each acquisition gets its own key
//! (`<lease hex>-<n>`), so concurrent waiters of one session hold separate places.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::request::{request, Retry};
use super::watch::{DeleteWatch, Notify, WatchHub};
use super::Settings;
use crate::backend::QueueKind;
use crate::backend::{remove_until_done, session_error, Entry, Predecessor, QueueSession};
use crate::clock::{BootInstant, Deadline};
use crate::error::{Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::state::Suspension;

pub(crate) struct EtcdSession {
    pub(super) lease: i64,
    client: etcd_client::Client,
    hub: WatchHub,
    settings: Arc<Settings>,
    trigger: LossTrigger,
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
        client: &etcd_client::Client,
        hub: &WatchHub,
        settings: &Arc<Settings>,
        grant_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let ttl = settings.ttl_secs;
        let granted_at = BootInstant::now();
        // A retried grant may leave an unused lease behind: it expires after its TTL.
        let grant = request(grant_timeout, Retry::Idempotent, || {
            let mut leases = client.lease_client();
            async move { leases.grant(ttl, None).await }
        })
        .await?;
        if grant.ttl() > ttl {
            let _ = revoke(client, grant.id(), settings.request_timeout).await;
            return Err(Error::config(format!(
                "ttl {ttl}s is below the etcd server's minimum lease TTL of {}s",
                grant.ttl()
            )));
        }
        // The server frees the lease `ttl` after the grant was *sent* at the earliest; the
        // holder gives up `safety_margin` before that.
        let deadline = Arc::new(Deadline::new(
            granted_at
                .add(Duration::from_secs(grant.ttl() as u64))
                .sub(settings.safety_margin),
        ));
        let session = Arc::new(EtcdSession {
            lease: grant.id(),
            client: client.clone(),
            hub: hub.clone(),
            settings: settings.clone(),
            trigger: LossTrigger::with_deadline(deadline.clone()),
            stop: CancellationToken::new(),
            abandoned: AtomicBool::new(false),
            suspended: Suspension::new(&settings.states, "etcd", format!("{:x}", grant.id())),
            next_entry: AtomicU64::new(0),
            runtime: Handle::current(),
        });
        tokio::spawn(keep_alive(
            client.clone(),
            grant.id(),
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

    /// One Txn, failing over between members as `retry` allows (see `request.rs` for why
    /// each Txn of the queue is safe to repeat).
    async fn txn(&self, txn: Txn, retry: Retry) -> Result<TxnResponse> {
        request(self.settings.request_timeout, retry, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.lease_error(e))
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

    /// The guarded delete of `own`. An unconfirmed entry (its enqueue may still be in
    /// flight, and etcd may apply it after this delete) is *withdrawn*: a marker key on
    /// the session's lease makes any later enqueue of it a no-op.
    fn delete_txn(&self, own: &Entry) -> Txn {
        let delete = TxnOp::delete(own.key.as_bytes(), None);
        if own.order == 0 {
            let withdrawn = TxnOp::put(
                withdrawn_key(&own.key),
                Vec::new(),
                Some(PutOptions::new().with_lease(self.lease)),
            );
            Txn::new().and_then([withdrawn, delete])
        } else {
            Txn::new()
                .when([Compare::create_revision(
                    own.key.as_bytes(),
                    CompareOp::Equal,
                    own.order,
                )])
                .and_then([delete])
        }
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
        let (client, lease, timeout) = (
            self.client.clone(),
            self.lease,
            self.settings.request_timeout,
        );
        self.runtime.spawn(async move {
            let _ = revoke(&client, lease, timeout).await;
        });
    }
}

async fn revoke(client: &etcd_client::Client, lease: i64, timeout: Duration) -> Result<()> {
    let revoked = request(timeout, Retry::Idempotent, || {
        let mut leases = client.lease_client();
        async move { leases.revoke(lease).await }
    })
    .await;
    match revoked {
        // Already expired or revoked: the goal is reached.
        Err(e) if super::is_lease_not_found(&e) => Ok(()),
        other => other.map(drop),
    }
}

/// Whether the server no longer knows lease `lease` (false if it cannot tell).
async fn lease_gone(client: &etcd_client::Client, lease: i64, timeout: Duration) -> bool {
    let asked = request(timeout, Retry::Idempotent, || {
        let mut leases = client.lease_client();
        async move { leases.time_to_live(lease, None).await }
    })
    .await;
    matches!(asked, Ok(resp) if resp.ttl() <= 0)
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
    client: etcd_client::Client,
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
            let (keeper, responses) = match &mut stream {
                Some(stream) => stream,
                None => {
                    // Opening the stream performs one keep-alive already.
                    stream = Some(client.lease_client().keep_alive(lease).await?);
                    return Ok(Some(settings.ttl_secs));
                }
            };
            keeper.keep_alive().await?;
            Ok(responses.message().await?.map(|r| r.ttl()))
        };
        // A round still unanswered after a moment is hedged with a new stream, which the
        // balancer may open on another member: a keep-alive that reached a follower just
        // as the leader died is forwarded to the dead leader and never answered, and a
        // session must not wait a whole round for it. The first answer wins.
        let hedge = async {
            tokio::time::sleep((ttl / 6).min(KEEPALIVE_HEDGE)).await;
            loop {
                match client.lease_client().keep_alive(lease).await {
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
        // Closed or abandoned while the round was answered (select! picks a ready branch at
        // random): the session was ended on purpose, nothing to report.
        if stop.is_cancelled() {
            return;
        }
        let retry = match outcome {
            Some(Ok(Some(remaining))) if remaining > 0 => {
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
            let _ = revoke(&client, lease, settings.request_timeout).await;
            return;
        }
        let wake = BootInstant::now().add(retry).min(deadline.get());
        tokio::select! {
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

fn get_response(op: Option<&TxnOpResponse>) -> Option<&etcd_client::GetResponse> {
    match op {
        Some(TxnOpResponse::Get(get)) => Some(get),
        _ => None,
    }
}

/// Where the withdrawal of the unconfirmed entry `key` is marked: beside the queue, not in
/// it (`PREFIX/NAME<NUL>withdrawn/LEAF`: no lock name contains a NUL, so no queue prefix
/// covers it).
fn withdrawn_key(key: &str) -> Vec<u8> {
    let (queue, leaf) = key.rsplit_once('/').unwrap_or(("", key));
    format!("{queue}\u{0}withdrawn/{leaf}").into_bytes()
}

/// The enqueue's condition that its entry was not withdrawn meanwhile.
fn not_withdrawn(key: &str) -> Compare {
    Compare::create_revision(withdrawn_key(key), CompareOp::Equal, 0)
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

/// The newest key of `prefix` created before `before`.
fn predecessor_query(prefix: &str, before: i64) -> TxnOp {
    TxnOp::get(
        prefix.as_bytes(),
        Some(
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(before - 1)
                .with_limit(1)
                .with_keys_only(),
        ),
    )
}

/// The key `kv`, read at `revision`, as a predecessor: it is that key *with that create
/// revision* a waiter waits for (the key name alone may come back as a new entry).
fn to_predecessor(kv: &etcd_client::KeyValue, revision: i64) -> Predecessor {
    Predecessor {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        revision,
        created: kv.create_revision(),
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

    fn new_entry(&self, name: &str, kind: QueueKind, value: &[u8]) -> Entry {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        Entry::new(
            format!("{}{:x}-{n}", self.prefix(name), self.lease),
            kind,
            value,
        )
    }

    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool> {
        self.check_alive()?;
        // "No key under the prefix": a range compare over an empty range compares a zero
        // key, whose version is 0.
        let prefix = self.prefix(name);
        // Else read the own key back: if a retried attempt finds it, the first attempt put
        // it (into an empty queue) and only its answer was lost.
        let txn = Txn::new()
            .when([
                Compare::version(prefix.as_bytes(), CompareOp::Equal, 0).with_prefix(),
                not_withdrawn(&entry.key),
            ])
            .and_then([TxnOp::put(
                entry.key.as_bytes(),
                entry.value.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(
                entry.key.as_bytes(),
                Some(GetOptions::new().with_keys_only()),
            )]);
        let resp = self.txn(txn, Retry::Idempotent).await?;
        if !resp.succeeded() {
            let own = get_response(resp.op_responses().first())
                .ok_or_else(malformed)?
                .kvs()
                .first()
                .map(|kv| kv.create_revision());
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
        let revision = resp.header().ok_or_else(malformed)?.revision();
        entry.order = revision;
        entry.token = revision as u64;
        Ok(true)
    }

    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>> {
        self.check_alive()?;
        let prefix = self.prefix(name);
        let key = entry.key.as_bytes();
        // One round trip: create the key if new (a retried request finds it instead) and
        // read the two newest keys; at the txn's revision the own key is the newest, so the
        // other one, if any, is the predecessor.
        let newest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(2)
            .with_keys_only();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, 0),
                not_withdrawn(&entry.key),
            ])
            .and_then([
                TxnOp::put(
                    key,
                    entry.value.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::get(prefix.as_bytes(), Some(newest)),
            ])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn, Retry::Idempotent).await?;
        let revision = resp.header().ok_or_else(malformed)?.revision();
        let ops = resp.op_responses();
        if !resp.succeeded() {
            let own = get_response(ops.first())
                .and_then(|g| g.kvs().first())
                .ok_or_else(withdrawn)?;
            entry.order = own.create_revision();
            entry.token = entry.order as u64;
            return self.predecessor(name, entry).await;
        }
        entry.order = revision;
        entry.token = revision as u64;
        let newest = get_response(ops.get(1)).ok_or_else(malformed)?;
        Ok(newest
            .kvs()
            .iter()
            .find(|kv| kv.key() != key)
            .map(|kv| to_predecessor(kv, revision)))
    }

    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>> {
        // One read-only txn: does the own key still exist (the post-wait check), and which
        // key is now directly ahead of it.
        let txn = Txn::new().and_then([
            TxnOp::get(own.key.as_bytes(), Some(GetOptions::new().with_keys_only())),
            predecessor_query(&self.prefix(name), own.order),
        ]);
        let resp = self.txn(txn, Retry::Idempotent).await?;
        let revision = resp.header().ok_or_else(malformed)?.revision();
        let ops = resp.op_responses();
        let own_kv = get_response(ops.first()).ok_or_else(malformed)?;
        if own_kv
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != own.order)
        {
            return Err(self.gone());
        }
        let ahead = get_response(ops.get(1)).ok_or_else(malformed)?;
        Ok(ahead.kvs().first().map(|kv| to_predecessor(kv, revision)))
    }

    async fn deleted(&self, pred: &Predecessor) -> Result<()> {
        self.hub
            .deleted(&pred.key, pred.revision, pred.created)
            .await
    }

    async fn proclaim(&self, own: &Entry, value: &[u8]) -> Result<()> {
        // As Go's Election.Proclaim: a put guarded by the own key's create revision, on the
        // same lease.
        let put = TxnOp::put(
            own.key.as_bytes(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(self.lease)),
        );
        let txn = Txn::new()
            .when([super::fence_compare(&own.key, own.token)])
            .and_then([put]);
        let mut written = own.written.lock().await;
        let resp = self.txn(txn, Retry::Idempotent).await?;
        if !resp.succeeded() {
            return Err(self.gone());
        }
        written.version = resp.header().ok_or_else(malformed)?.revision();
        Ok(())
    }

    /// `Ok(false)` if the key was gone already. When the delete was sent more than once
    /// (a hedged or repeated attempt), the attempt that answers "nothing deleted" may
    /// follow our own applied one: then the key counts as removed by us, as the entry was
    /// ours and is gone either way.
    async fn remove(&self, own: &Entry) -> Result<bool> {
        let attempts = AtomicU64::new(0);
        let txn = self.delete_txn(own);
        let resp = request(self.settings.request_timeout, Retry::Idempotent, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.lease_error(e))?;
        let deleted = resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted || attempts.load(Ordering::SeqCst) > 1)
    }

    fn remove_in_background(self: &Arc<Self>, own: Entry) {
        // Spawning on a runtime that shut down drops the task; it never panics.
        self.runtime.spawn(remove_until_done(self.clone(), own));
    }

    fn watch_own(&self, own: &Entry, trigger: LossTrigger) -> OwnWatch {
        // A deleted own key may mean the whole lease is gone (revoked, expired): then say so,
        // for this guard and for the session, rather than wait for the next keep-alive.
        let client = self.client.clone();
        let (lease, session) = (self.lease, self.trigger.clone());
        let timeout = self.settings.request_timeout;
        let on_delete = move || {
            if trigger.signal().is_lost() {
                return; // released (the delete was our own) or lost already
            }
            tokio::spawn(async move {
                if lease_gone(&client, lease, timeout).await {
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
        revoke(&self.client, self.lease, self.settings.request_timeout).await
    }

    /// Stops the keep-alive, leaving the lease to expire as after a crash.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    /// The write's Txn also touches the own key (same value, same lease) and compares its
    /// mod revision with the last one this guard saw: the revision moves exactly when the
    /// Txn applies. So the Txn can be sent again after a lost answer (a member died, a
    /// leader changed): a repeat after an applied attempt fails its comparison, finds the
    /// key still ours with a newer mod revision, and reports the write done. The cost: a
    /// change of the own key by someone else while an answer was lost would be taken for
    /// the write's own (fairlock's and Go's peers never change another's key).
    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()> {
        let mut written = own.written.lock().await;
        if written.version == 0 {
            written.version = own.order; // never changed since its creation
        }
        let mut ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => TxnOp::put(key.as_bytes(), value.clone(), None),
                WriteOp::Delete { key } => TxnOp::delete(key.as_bytes(), None::<DeleteOptions>),
            })
            .collect();
        ops.push(TxnOp::put(
            own.key.as_bytes(),
            Vec::new(),
            Some(PutOptions::new().with_ignore_value().with_ignore_lease()),
        ));
        let attempts = AtomicU64::new(0);
        // A failed comparison with nothing of ours in flight: someone else touched the key;
        // compare again with what it is now (a few times at most).
        for _ in 0..3 {
            let expected = written.version;
            let txn = Txn::new()
                .when([
                    super::fence_compare(&own.key, own.token),
                    Compare::mod_revision(own.key.as_bytes(), CompareOp::Equal, expected),
                ])
                .and_then(ops.clone())
                .or_else([TxnOp::get(
                    own.key.as_bytes(),
                    Some(GetOptions::new().with_keys_only()),
                )]);
            let resp = request(self.settings.request_timeout, Retry::Checked, || {
                attempts.fetch_add(1, Ordering::SeqCst);
                let (mut kv, txn) = (self.client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|e| self.lease_error(e))?;
            if resp.succeeded() {
                written.version = resp.header().ok_or_else(malformed)?.revision();
                return Ok(());
            }
            let own_now = get_response(resp.op_responses().first())
                .and_then(|get| get.kvs().first())
                .filter(|kv| kv.create_revision() == own.order)
                .map(|kv| kv.mod_revision());
            let Some(revision) = own_now else {
                return Err(self.gone());
            };
            written.version = revision;
            if attempts.swap(0, Ordering::SeqCst) > 1 && revision > expected {
                return Ok(()); // an earlier attempt applied; its answer was lost
            }
        }
        Err(Error::Backend {
            backend: "etcd",
            source: "the lock key kept changing under the guarded write".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_markers_lie_outside_every_queue() {
        let marker = withdrawn_key("fairlock/stock/694d8a1f2c3b-7");
        assert_eq!(marker, b"fairlock/stock\0withdrawn/694d8a1f2c3b-7");
        assert!(!marker.starts_with(b"fairlock/stock/"));
        // Only a name containing NUL could cover it, and names cannot.
        assert!(crate::validate_name("stock\0withdrawn").is_err());
    }
}
