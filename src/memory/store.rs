//! The memory store: a revisioned key space with sessions and delete notifications.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use crate::backend::QueueEntry;
use crate::backend::{Claim, Entry, Predecessor, Side};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};

/// How a reader's key begins after the queue prefix (`fairlock/NAME/read-<id>-<n>`), as on
/// etcd.
pub(crate) const READER: &str = "read-";

/// Whether the entry `key` is a reader's.
fn is_reader(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|leaf| leaf.starts_with(READER))
}

/// Whether an entry at `key` is one an entry of `side` waits for (when ahead of it).
fn waits_for(side: Side, key: &str) -> bool {
    !side.is_shared() || !is_reader(key)
}

struct Kv {
    value: Vec<u8>,
    create_revision: i64,
    session: Option<u64>,
}

/// Who to tell when a key is deleted.
pub(crate) enum Notify {
    Once(oneshot::Sender<()>),
    Lost(LossTrigger),
}

/// A queue's holder record (lock-delay; see `QueueSession::claim_holder`).
enum HolderRecord {
    /// Claimed by the entry with this key and create revision.
    Claimed(String, i64),
    /// Its holder ended uncleanly; the delay started then.
    Noticed(Instant),
}

struct State {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    /// By queue prefix.
    holders: HashMap<String, HolderRecord>,
    watchers: HashMap<String, Vec<(u64, Notify)>>,
    /// Semaphores' full pools, by pool prefix: told of the next deletion in the pool.
    pool_watchers: HashMap<String, Vec<oneshot::Sender<()>>>,
    sessions: HashMap<u64, LossTrigger>,
    next_id: u64,
    /// Bumped on every change, for observers.
    changed: tokio::sync::watch::Sender<()>,
}

impl Default for State {
    fn default() -> Self {
        State {
            revision: 0,
            kvs: BTreeMap::new(),
            holders: HashMap::new(),
            watchers: HashMap::new(),
            pool_watchers: HashMap::new(),
            sessions: HashMap::new(),
            next_id: 0,
            changed: tokio::sync::watch::Sender::new(()),
        }
    }
}

impl State {
    fn put(&mut self, key: &str, value: Vec<u8>, session: Option<u64>) -> i64 {
        self.changed.send_replace(());
        self.revision += 1;
        let revision = self.revision;
        self.kvs
            .entry(key.to_owned())
            .and_modify(|kv| kv.value.clone_from(&value))
            .or_insert(Kv {
                value,
                create_revision: revision,
                session,
            });
        revision
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.kvs.remove(key).is_none() {
            return false;
        }
        self.changed.send_replace(());
        self.revision += 1;
        for (_, notify) in self.watchers.remove(key).unwrap_or_default() {
            match notify {
                Notify::Once(tx) => {
                    let _ = tx.send(());
                }
                Notify::Lost(trigger) => trigger.fire(LostReason::Deleted),
            }
        }
        if let Some((pool, _)) = key.rsplit_once('/') {
            for tx in self
                .pool_watchers
                .remove(&format!("{pool}/"))
                .unwrap_or_default()
            {
                let _ = tx.send(());
            }
        }
        true
    }

    fn holds(&self, own: &Entry) -> bool {
        self.kvs
            .get(&own.key)
            .is_some_and(|kv| kv.create_revision == own.order)
    }

    fn entries<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Kv)> {
        self.kvs
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }
}

/// An in-process store shared by every `memory://STORE` client of this process that names
/// the same STORE. Tests can inspect it and inject failures: list keys, delete a key or end
/// a session "from outside".
#[derive(Clone)]
pub struct MemoryStore(Arc<Mutex<State>>);

impl MemoryStore {
    /// The store named `name` (`memory://NAME`), created empty on first use. Stores live
    /// until the process exits.
    pub fn named(name: &str) -> MemoryStore {
        static STORES: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        let mut stores = STORES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        stores
            .entry(name.to_owned())
            .or_insert_with(|| MemoryStore(Arc::default()))
            .clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; if one ever did, the data is still
        // consistent enough to go on with.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys starting with `prefix`, in key order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.state()
            .entries(prefix)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Deletes `key`, as another process could; returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.state().delete(key)
    }

    /// How many sessions are open on this store (for tests: a lazy client opens none until
    /// it locks).
    pub fn sessions(&self) -> usize {
        self.state().sessions.len()
    }

    /// Ends session `id` (hex, as [`Client::session_id`](crate::Client::session_id) gives
    /// it) as an expiry would: its keys go, its guards report
    /// [`LostReason::SessionExpired`]. Returns whether the session existed.
    pub fn expire_session(&self, id: &str) -> bool {
        match u64::from_str_radix(id, 16) {
            Ok(id) => self.end_session(id, LostReason::SessionExpired),
            Err(_) => false,
        }
    }

    pub(crate) fn open_session(&self, trigger: LossTrigger) -> u64 {
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        state.sessions.insert(id, trigger);
        id
    }

    pub(crate) fn end_session(&self, id: u64, reason: LostReason) -> bool {
        let mut state = self.state();
        let Some(trigger) = state.sessions.remove(&id) else {
            return false;
        };
        // The session's reason first, so guards report it rather than `Deleted`.
        trigger.fire(reason);
        let owned: Vec<String> = state
            .kvs
            .iter()
            .filter(|(_, kv)| kv.session == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            state.delete(&key);
        }
        true
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.state().kvs.get(key).map(|kv| kv.value.clone())
    }

    pub(crate) fn put(&self, key: &str, value: Vec<u8>, session: Option<u64>) -> i64 {
        self.state().put(key, value, session)
    }

    /// Creates `own` only if no entry would be ahead of it.
    pub(crate) fn create_if_empty(&self, prefix: &str, own: &Entry, session: u64) -> Option<i64> {
        let mut state = self.state();
        if state.entries(prefix).any(|(k, _)| waits_for(own.side, k)) {
            return None;
        }
        Some(state.put(&own.key, own.value.clone(), Some(session)))
    }

    /// Replaces the value of `own` if it is still the same entry.
    pub(crate) fn proclaim(&self, own: &Entry, value: &[u8]) -> bool {
        let mut state = self.state();
        if !state.holds(own) {
            return false;
        }
        state.put(&own.key, value.to_vec(), None);
        true
    }

    /// Changes of the store, for observers: mark the current version seen before reading.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.state().changed.subscribe()
    }

    /// `None` if `own` is gone; else the newest entry created before it that it waits for,
    /// if any.
    pub(crate) fn predecessor(&self, prefix: &str, own: &Entry) -> Option<Option<Predecessor>> {
        let state = self.state();
        if !state.holds(own) {
            return None;
        }
        let pred = state
            .entries(prefix)
            .filter(|(k, kv)| kv.create_revision < own.order && waits_for(own.side, k))
            .max_by_key(|(_, kv)| kv.create_revision)
            .map(|(k, kv)| Predecessor {
                key: k.clone(),
                revision: state.revision,
                created: kv.create_revision,
            });
        Some(pred)
    }

    pub(crate) fn queue(&self, prefix: &str) -> Vec<QueueEntry> {
        let state = self.state();
        let mut entries: Vec<(&String, &Kv)> = state.entries(prefix).collect();
        entries.sort_by_key(|(_, kv)| kv.create_revision);
        entries
            .into_iter()
            .map(|(k, kv)| QueueEntry {
                key: k.clone(),
                fencing_token: kv.create_revision as u64,
                session: kv.session.map(|s| format!("{s:x}")).unwrap_or_default(),
                value: kv.value.clone(),
                shared: is_reader(k),
            })
            .collect()
    }

    /// Deletes `own` if it is still the same entry (any entry at its key if unconfirmed),
    /// with the holder record of `prefix` if `own` claimed it: a clean release.
    pub(crate) fn delete_entry(&self, prefix: &str, own: &Entry) -> bool {
        let mut state = self.state();
        if own.order == 0 || state.holds(own) {
            let claimed = |record: &HolderRecord| {
                matches!(record, HolderRecord::Claimed(key, order)
                    if *key == own.key && *order == own.order)
            };
            if own.holder_record && state.holders.get(prefix).is_some_and(claimed) {
                state.holders.remove(prefix);
            }
            state.delete(&own.key)
        } else {
            false
        }
    }

    /// See `QueueSession::claim_holder`; `None` if `own` is gone.
    pub(crate) fn claim_holder(&self, prefix: &str, own: &Entry, delay: Duration) -> Option<Claim> {
        let mut state = self.state();
        if !state.holds(own) {
            return None;
        }
        let now = Instant::now();
        let claim = match state.holders.get(prefix) {
            Some(HolderRecord::Claimed(key, order)) if *key == own.key && *order == own.order => {
                Claim::Claimed
            }
            Some(HolderRecord::Claimed(..)) => {
                state
                    .holders
                    .insert(prefix.to_owned(), HolderRecord::Noticed(now));
                return Some(Claim::Delayed(delay));
            }
            Some(HolderRecord::Noticed(at)) if now < *at + delay => {
                return Some(Claim::Delayed(*at + delay - now));
            }
            Some(HolderRecord::Noticed(_)) | None => Claim::Claimed,
        };
        let record = HolderRecord::Claimed(own.key.clone(), own.order);
        state.holders.insert(prefix.to_owned(), record);
        Some(claim)
    }

    /// See `QueueSession::take_lease`: the pool's limit is the value at `pool`, its leases
    /// the keys under `pool/`. `None` if `gate` is gone; `Some(Ok(None))` if `lease` was
    /// created, `Some(Ok(Some(rx)))` if the pool is full (`rx` hears of its next deletion).
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_lease(
        &self,
        pool: &str,
        limit: u32,
        gate: &Entry,
        lease: &mut Entry,
        session: u64,
    ) -> Option<crate::error::Result<Option<oneshot::Receiver<()>>>> {
        let mut state = self.state();
        if !state.holds(gate) {
            return None;
        }
        match state.kvs.get(pool) {
            Some(kv) => {
                let name = pool.rsplit('/').next().unwrap_or(pool);
                if let Err(e) = crate::backend::check_limit(name, &kv.value, limit) {
                    return Some(Err(e));
                }
            }
            None => {
                state.put(pool, crate::backend::limit_value(limit), None);
            }
        }
        let prefix = format!("{pool}/");
        if state.entries(&prefix).count() < limit as usize {
            let revision = state.put(&lease.key, lease.value.clone(), Some(session));
            lease.order = revision;
            lease.token = revision as u64;
            return Some(Ok(None));
        }
        let (tx, rx) = oneshot::channel();
        let watchers = state.pool_watchers.entry(prefix).or_default();
        // Those nobody waits on any more (a `try`, a timed-out head) go first: the list
        // stays as long as the heads waiting, however often a full pool is tried.
        watchers.retain(|w| !w.is_closed());
        watchers.push(tx);
        Some(Ok(Some(rx)))
    }

    /// Registers `notify` for the deletion of `key`; notifies at once if it is gone.
    pub(crate) fn watch_delete(
        &self,
        key: &str,
        _since: i64,
        notify: Notify,
    ) -> Option<WatchHandle> {
        let mut state = self.state();
        if !state.kvs.contains_key(key) {
            drop(state);
            if let Notify::Lost(trigger) = notify {
                trigger.fire(LostReason::Deleted);
            }
            return None; // a dropped `Once` sender wakes its receiver
        }
        state.next_id += 1;
        let id = state.next_id;
        state
            .watchers
            .entry(key.to_owned())
            .or_default()
            .push((id, notify));
        Some(WatchHandle {
            store: self.clone(),
            key: key.to_owned(),
            id,
        })
    }

    pub(crate) fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> bool {
        let mut state = self.state();
        if !state.holds(own) {
            return false;
        }
        for op in ops {
            match op {
                WriteOp::Put { key, value } => {
                    state.put(key, value.clone(), None);
                }
                WriteOp::Delete { key } => {
                    state.delete(key);
                }
            }
        }
        true
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryStore")
            .field("revision", &state.revision)
            .field("keys", &state.kvs.len())
            .field("sessions", &state.sessions.len())
            .finish()
    }
}

/// Unregisters a delete watch when dropped.
pub(crate) struct WatchHandle {
    store: MemoryStore,
    key: String,
    id: u64,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let mut state = self.store.state();
        if let Some(list) = state.watchers.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                state.watchers.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::QueueKind;

    /// A full pool tried again and again (each `try` drops its receiver at once) keeps one
    /// sender per head still waiting, not one per attempt.
    #[test]
    fn tries_of_a_full_pool_leave_no_senders_behind() {
        let store = MemoryStore(Arc::default());
        let session = store.open_session(LossTrigger::new());
        let entry = |key: &str| Entry::new(key.into(), QueueKind::Lock, Side::Lease, b"");
        let mut gate = entry("fairlock/s-__lock__/1");
        gate.order = store.put(&gate.key, Vec::new(), Some(session));
        let mut holder = entry("fairlock/s/a");
        let taken = store.take_lease("fairlock/s", 1, &gate, &mut holder, session);
        assert!(matches!(taken, Some(Ok(None))));
        let mut waiting = None;
        for n in 0..100 {
            let mut lease = entry(&format!("fairlock/s/b{n}"));
            let full = store.take_lease("fairlock/s", 1, &gate, &mut lease, session);
            let Some(Ok(Some(rx))) = full else {
                panic!("the pool of 1 is full");
            };
            if n == 0 {
                waiting = Some(rx); // the one still waiting
            }
        }
        assert_eq!(store.state().pool_watchers["fairlock/s/"].len(), 2);
        assert!(store.delete(&holder.key));
        assert_eq!(waiting.unwrap().try_recv(), Ok(()));
    }
}
