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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::watch::{DeleteWatch, Notify, WatchHub};
use super::{etcd_error, Settings};
use crate::client::QueueKind;
use crate::error::{within, Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::queue::{remove_until_done, session_error, Entry, Predecessor, QueueSession};

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
    pub(super) suspended: Arc<AtomicBool>,
    next_entry: AtomicU64,
    runtime: Handle,
}

impl EtcdSession {
    /// Grants a lease and starts keeping it alive.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the server raised the TTL to its minimum; request errors.
    pub(super) async fn open(
        client: &etcd_client::Client,
        hub: &WatchHub,
        settings: &Arc<Settings>,
    ) -> Result<Arc<Self>> {
        let ttl = settings.ttl_secs;
        let granted_at = Instant::now();
        let grant = within(settings.request_timeout, async {
            client
                .lease_client()
                .grant(ttl, None)
                .await
                .map_err(etcd_error)
        })
        .await?;
        if grant.ttl() > ttl {
            let _ = within(settings.request_timeout, async {
                client
                    .lease_client()
                    .revoke(grant.id())
                    .await
                    .map_err(etcd_error)
            })
            .await;
            return Err(Error::config(format!(
                "ttl {ttl}s is below the etcd server's minimum lease TTL of {}s",
                grant.ttl()
            )));
        }
        let session = Arc::new(EtcdSession {
            lease: grant.id(),
            client: client.clone(),
            hub: hub.clone(),
            settings: settings.clone(),
            trigger: LossTrigger::new(),
            stop: CancellationToken::new(),
            abandoned: AtomicBool::new(false),
            suspended: Arc::new(AtomicBool::new(false)),
            next_entry: AtomicU64::new(0),
            runtime: Handle::current(),
        });
        let deadline = granted_at + Duration::from_secs(grant.ttl() as u64);
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

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.client.kv_client();
        within(self.settings.request_timeout, async move {
            kv.txn(txn).await.map_err(etcd_error)
        })
        .await
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

    /// The guarded delete of `own` (blind if unconfirmed: its key is unique to one attempt).
    fn delete_txn(own: &Entry) -> Txn {
        let delete = TxnOp::delete(own.key.as_bytes(), None);
        if own.order == 0 {
            Txn::new().and_then([delete])
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
    let mut leases = client.lease_client();
    within(timeout, async move {
        match leases.revoke(lease).await {
            Ok(_) => Ok(()),
            // Already expired or revoked: the goal is reached.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(etcd_error(e)),
        }
    })
    .await
}

/// Whether the server no longer knows lease `lease` (false if it cannot tell).
async fn lease_gone(client: &etcd_client::Client, lease: i64, timeout: Duration) -> bool {
    let mut leases = client.lease_client();
    let asked = within(timeout, async move {
        leases.time_to_live(lease, None).await.map_err(etcd_error)
    })
    .await;
    matches!(asked, Ok(resp) if resp.ttl() <= 0)
}

/// Keeps lease `lease` alive every TTL/3 until `stop`, firing `trigger` when it is lost.
///
/// The lease counts as lost when the server says it is gone (TTL ≤ 0, "lease not found"),
/// or when no keep-alive succeeded for a whole TTL: the client-side deadline, which passes
/// no later than the server's own expiry (the deadline runs from when a keep-alive was
/// *sent*). A lost lease is revoked on the way out, best effort, so that a server that comes
/// back does not keep the keys of a session its holders gave up.
async fn keep_alive(
    client: etcd_client::Client,
    lease: i64,
    settings: Arc<Settings>,
    trigger: LossTrigger,
    stop: CancellationToken,
    suspended: Arc<AtomicBool>,
    mut deadline: Instant,
) {
    let ttl = Duration::from_secs(settings.ttl_secs as u64);
    let mut stream = None;
    loop {
        let sent = Instant::now();
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
        let outcome: Option<Result<Option<i64>, etcd_client::Error>> = tokio::select! {
            _ = stop.cancelled() => return,
            // A round that takes longer than TTL/3 counts as failed (a silent partition
            // looks like this); the session is suspended and the stream reopened.
            outcome = tokio::time::timeout_at(deadline.min(sent + ttl / 3), round) => outcome.ok(),
        };
        let retry = match outcome {
            Some(Ok(Some(remaining))) if remaining > 0 => {
                deadline = sent + Duration::from_secs(remaining as u64);
                suspended.store(false, Ordering::SeqCst);
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
            Some(Ok(None)) | Some(Err(_)) => {
                suspended.store(true, Ordering::SeqCst);
                stream = None;
                Duration::from_millis(250)
            }
            None => {
                suspended.store(true, Ordering::SeqCst);
                stream = None;
                Duration::ZERO
            }
        };
        if Instant::now() >= deadline {
            tracing::warn!(
                lease = format!("{lease:x}"),
                "etcd lease deadline passed: session lost"
            );
            trigger.fire(LostReason::SessionExpired);
            let _ = revoke(&client, lease, settings.request_timeout).await;
            return;
        }
        let wake = (Instant::now() + retry).min(deadline);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn get_response(op: Option<&TxnOpResponse>) -> Option<&etcd_client::GetResponse> {
    match op {
        Some(TxnOpResponse::Get(get)) => Some(get),
        _ => None,
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
    type OwnWatch = OwnWatch;

    fn trigger(&self) -> &LossTrigger {
        &self.trigger
    }

    fn new_entry(&self, name: &str, kind: QueueKind, value: &[u8]) -> Entry {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        Entry {
            key: format!("{}{:x}-{n}", self.prefix(name), self.lease),
            token: 0,
            order: 0,
            kind,
            value: value.to_vec(),
        }
    }

    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool> {
        self.check_alive()?;
        // "No key under the prefix": a range compare over an empty range compares a zero
        // key, whose version is 0.
        let prefix = self.prefix(name);
        let txn = Txn::new()
            .when([Compare::version(prefix.as_bytes(), CompareOp::Equal, 0).with_prefix()])
            .and_then([TxnOp::put(
                entry.key.as_bytes(),
                entry.value.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
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
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key,
                    entry.value.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::get(prefix.as_bytes(), Some(newest)),
            ])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        let revision = resp.header().ok_or_else(malformed)?.revision();
        let ops = resp.op_responses();
        if !resp.succeeded() {
            let own = get_response(ops.first())
                .and_then(|g| g.kvs().first())
                .ok_or_else(malformed)?;
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
        let resp = self.txn(txn).await?;
        let revision = resp.header().ok_or_else(malformed)?.revision();
        let ops = resp.op_responses();
        let own_kv = get_response(ops.first()).ok_or_else(malformed)?;
        if !own_kv
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == own.order)
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
        if self.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    async fn remove(&self, own: &Entry) -> Result<bool> {
        let resp = self.txn(Self::delete_txn(own)).await?;
        let deleted = resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted)
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
        self.suspended.load(Ordering::SeqCst)
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

    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()> {
        let ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value } => TxnOp::put(key.as_bytes(), value.clone(), None),
                WriteOp::Delete { key } => TxnOp::delete(key.as_bytes(), None::<DeleteOptions>),
            })
            .collect();
        let txn = Txn::new()
            .when([super::fence_compare(&own.key, own.token)])
            .and_then(ops);
        if self.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(self.gone())
        }
    }
}
