//! The in-process backend (`memory://STORE`): the same queue semantics as etcd, without a
//! server, for users' unit tests and zero-setup demos.
//!
//! A [`MemoryStore`] is a small key space with revisions, sessions and delete notifications,
//! modelled on etcd: lock NAME keeps its queue under `fairlock/NAME/`, ordered by create
//! revision, and the fencing token is the entry's create revision. All clients of one
//! process that name the same store share it. Session TTLs matter only for
//! [`Client::abandon`](crate::Client::abandon), which expires the session one TTL later.

mod store;

pub use store::MemoryStore;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::backend::{Claim, Entry, Predecessor, QueueSession, SessionSlot, SessionSource, Side};
use crate::backend::{KeySpace, LeaseFreed, QueueEntry, QueueKind};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::sequencer::{Sequencer, SequencerStatus};
use crate::state::StateChannel;
use store::{Notify, WatchHandle};

const LOCK_ROOT: &str = crate::key::MEMORY_LOCK_ROOT;

fn queue_prefix(name: &str) -> String {
    format!("{LOCK_ROOT}/{name}/")
}

/// The queue prefix of an entry's key (`fairlock/NAME/`).
fn queue_of(own: &Entry) -> String {
    let queue = own.key.rsplit_once('/').map_or("", |(queue, _)| queue);
    format!("{queue}/")
}

pub(crate) struct MemoryClient {
    store: MemoryStore,
    ttl: Duration,
    slot: SessionSlot<MemorySession>,
}

impl MemoryClient {
    /// Connects to the store named by the prefix; opens a session unless `lazy`.
    pub(crate) fn connect(config: &Config, lazy: bool) -> Result<Arc<Self>> {
        let store = MemoryStore::named(&config.prefix);
        let slot = if lazy {
            SessionSlot::empty(StateChannel::new())
        } else {
            SessionSlot::new(MemorySession::open(&store, config.ttl), StateChannel::new())
        };
        Ok(Arc::new(MemoryClient {
            store,
            ttl: config.ttl,
            slot,
        }))
    }
}

#[async_trait]
impl SessionSource for MemoryClient {
    type Session = MemorySession;

    fn slot(&self) -> &SessionSlot<MemorySession> {
        &self.slot
    }

    async fn open(&self) -> Result<Arc<MemorySession>> {
        Ok(MemorySession::open(&self.store, self.ttl))
    }
}

#[async_trait]
impl KeySpace for MemoryClient {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(key))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.store.put(key, value, None);
        Ok(())
    }

    async fn queue(
        &self,
        name: &str,
        _kind: QueueKind,
        limit: Option<usize>,
    ) -> Result<Vec<QueueEntry>> {
        let mut entries = self.store.queue(&queue_prefix(name));
        entries.truncate(limit.unwrap_or(usize::MAX));
        Ok(entries)
    }

    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus> {
        let prefix = queue_prefix(sequencer.name());
        sequencer.entry_in(&prefix)?;
        Ok(SequencerStatus::of_queue(
            sequencer,
            &self.store.queue(&prefix),
        ))
    }

    async fn watch_head(
        self: Arc<Self>,
        name: String,
        _kind: QueueKind,
        tx: tokio::sync::mpsc::Sender<Result<Option<QueueEntry>>>,
    ) {
        let prefix = queue_prefix(&name);
        let mut changes = self.store.changes();
        loop {
            changes.borrow_and_update();
            let head = self.store.queue(&prefix).into_iter().next();
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            tokio::select! {
                biased;
                _ = tx.closed() => return,
                _ = changes.changed() => {}
            }
        }
    }
}

/// A session of the memory store.
pub(crate) struct MemorySession {
    store: MemoryStore,
    id: u64,
    trigger: LossTrigger,
    next_entry: AtomicU64,
    abandoned: AtomicBool,
    ttl: Duration,
}

impl MemorySession {
    pub(crate) fn open(store: &MemoryStore, ttl: Duration) -> Arc<Self> {
        let trigger = LossTrigger::new();
        let id = store.open_session(trigger.clone());
        Arc::new(MemorySession {
            store: store.clone(),
            id,
            trigger,
            next_entry: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            ttl,
        })
    }

    fn end(&self, reason: LostReason) {
        self.store.end_session(self.id, reason);
    }

    fn check_alive(&self) -> Result<()> {
        match self.trigger.signal().reason() {
            Some(reason) => Err(crate::backend::session_error(reason)),
            None => Ok(()),
        }
    }

    /// Why `own` is gone: the session ended, or someone deleted it.
    fn gone(&self) -> Error {
        match self.trigger.signal().reason() {
            Some(reason) => crate::backend::session_error(reason),
            None => Error::LockLost(LostReason::Deleted),
        }
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::SeqCst) {
            self.end(LostReason::SessionClosed);
        }
    }
}

/// Waits for one key's deletion; unregisters when dropped.
pub(crate) struct OwnWatch(#[allow(dead_code)] Option<WatchHandle>);

#[async_trait]
impl QueueSession for MemorySession {
    const KIND: crate::config::BackendKind = crate::config::BackendKind::Memory;
    type OwnWatch = OwnWatch;

    fn trigger(&self) -> &LossTrigger {
        &self.trigger
    }

    fn new_entry(&self, name: &str, kind: QueueKind, side: Side, value: &[u8]) -> Entry {
        let seq = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let reader = if side.is_shared() { store::READER } else { "" };
        Entry::new(
            format!("{}{reader}{:x}-{seq}", queue_prefix(name), self.id),
            kind,
            side,
            value,
        )
    }

    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool> {
        self.check_alive()?;
        let prefix = queue_prefix(name);
        match self.store.create_if_empty(&prefix, entry, self.id) {
            Some(revision) => {
                entry.order = revision;
                entry.token = revision as u64;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>> {
        self.check_alive()?;
        let revision = self
            .store
            .put(&entry.key, entry.value.clone(), Some(self.id));
        entry.order = revision;
        entry.token = revision as u64;
        self.predecessor(name, entry).await
    }

    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>> {
        self.store
            .predecessor(&queue_prefix(name), own)
            .ok_or_else(|| self.gone())
    }

    async fn deleted(&self, pred: &Predecessor) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let _handle = self
            .store
            .watch_delete(&pred.key, pred.revision, Notify::Once(tx));
        // A dropped sender means the store let go of the watch without a deletion; the
        // caller's re-check then decides.
        let _ = rx.await;
        Ok(())
    }

    fn new_lease(&self, name: &str, value: &[u8]) -> Entry {
        let seq = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{:x}-{seq}", queue_prefix(name), self.id);
        Entry {
            unsent: true,
            ..Entry::new(key, QueueKind::Lock, Side::Lease, value)
        }
    }

    async fn take_lease(
        &self,
        name: &str,
        limit: u32,
        gate: &Entry,
        lease: &mut Entry,
    ) -> Result<Option<LeaseFreed>> {
        self.check_alive()?;
        let pool = format!("{LOCK_ROOT}/{name}");
        let taken = self.store.take_lease(&pool, limit, gate, lease, self.id);
        match taken.ok_or_else(|| self.gone())?? {
            // Created in that one synchronous step, or not at all.
            None => {
                lease.unsent = false;
                Ok(None)
            }
            // A dropped sender (the store gone) wakes it too; the caller asks again.
            Some(rx) => Ok(Some(Box::pin(async move {
                let _ = rx.await;
                Ok(())
            }))),
        }
    }

    async fn claim_holder(&self, name: &str, own: &mut Entry, delay: Duration) -> Result<Claim> {
        let claim = self.store.claim_holder(&queue_prefix(name), own, delay);
        let claim = claim.ok_or_else(|| self.gone())?;
        own.holder_record = claim == Claim::Claimed;
        Ok(claim)
    }

    async fn remove(&self, own: &Entry) -> Result<bool> {
        Ok(self.store.delete_entry(&queue_of(own), own))
    }

    fn remove_in_background(self: &Arc<Self>, own: Entry) {
        // In-process: done at once, no waiting involved.
        self.store.delete_entry(&queue_of(&own), &own);
    }

    fn watch_own(&self, own: &Entry, trigger: LossTrigger) -> OwnWatch {
        OwnWatch(
            self.store
                .watch_delete(&own.key, own.order, Notify::Lost(trigger)),
        )
    }

    fn id(&self) -> String {
        format!("{:x}", self.id)
    }

    async fn close(&self) -> Result<()> {
        self.end(LostReason::SessionClosed);
        Ok(())
    }

    /// Expires the session one TTL from now, as the server of a crashed client would.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        let (store, id, ttl) = (self.store.clone(), self.id, self.ttl);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(ttl).await;
                    store.end_session(id, LostReason::SessionExpired);
                });
            }
            Err(_) => {
                store.end_session(id, LostReason::SessionExpired);
            }
        }
    }

    async fn proclaim(&self, own: &Entry, value: &[u8]) -> Result<()> {
        if self.store.proclaim(own, value) {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()> {
        if self.store.guarded_write(own, ops) {
            Ok(())
        } else {
            Err(Error::LockLost(
                self.trigger
                    .signal()
                    .reason()
                    .unwrap_or(LostReason::Deleted),
            ))
        }
    }
}
