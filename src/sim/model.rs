//! A model of one etcd 3.4 server: the key space with revisions, leases, compaction and
//! watch streams, as far as fairlock and its peers use them. Synchronous and
//! deterministic; time is passed in. The network in front of it is `net.rs`.
//!
//! What it keeps of etcd's behaviour, because the queue algorithm depends on it:
//! - One revision per write transaction; reads inside a transaction see its earlier writes.
//! - Compares over an empty range compare a zero key; a put naming a lease that does not
//!   exist fails the whole transaction with NOT_FOUND; revoking or expiring a lease deletes
//!   its keys.
//! - Range reads filter by create revision, sort, then limit.
//! - Watches from now (or the future) are *synced* and hear every write at once; watches
//!   from the past are *unsynced* and are caught up by a sync loop (etcd: every 100 ms);
//!   "now" is the revision the stream read when the creation arrived (etcd 3.4's
//!   `wsrev`, which the creation's answer carries): a creation *racing* a write registers
//!   after it, so from the past, unsynced, with nothing in its answer to tell; the stream's
//!   later requests wait behind it, as etcd's one receiving loop per stream does;
//!   one whose start revision was compacted is cancelled there (`compact_revision` set) and
//!   its id stays taken on the stream until the client cancels it: a creation with a taken
//!   id is refused (created and canceled, watch id -1, "duplicate watch ID").
//! - Compaction at `r` drops the history before `r` and the deletions at `r` (etcd keeps
//!   only a key's latest live version at `r`): a watch from exactly `r` silently misses a
//!   deletion at `r`.
//! - A keep-alive answers the granted TTL, or 0 if the lease is gone; time-to-live answers
//!   the whole seconds left (0 in the last second), or -1 if the lease is gone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::etcd::api::{
    Compare, Event, EventKind, Kv, Op, OpResponse, Put, Range, RangeResponse, Sort, Target, Txn,
    TxnResponse, WatchCreate, WatchResponse,
};

/// The smallest lease TTL the server grants, in seconds (etcd's default minimum).
pub const MIN_TTL: i64 = 2;

/// What a request can fail with at the server (not on the way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    LeaseNotFound,
    KeyNotFound,
}

#[derive(Clone, Debug)]
struct Stored {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

impl Stored {
    fn kv(&self, key: &[u8], keys_only: bool) -> Kv {
        Kv {
            key: key.to_vec(),
            value: if keys_only {
                Vec::new()
            } else {
                self.value.clone()
            },
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

struct Lease {
    ttl: i64,
    expires: Instant,
    keys: BTreeSet<Vec<u8>>,
}

struct Watcher {
    key: Vec<u8>,
    prefix: bool,
    deletes_only: bool,
    /// The first revision not yet reported.
    next: i64,
    synced: bool,
}

impl Watcher {
    fn matches(&self, event: &Event) -> bool {
        let key_matches = if self.prefix {
            event.kv.key.starts_with(&self.key)
        } else {
            event.kv.key == self.key
        };
        key_matches && !(self.deletes_only && event.kind == EventKind::Put)
    }
}

/// One watch stream's server side.
struct Stream {
    /// Which connection opened it (for faults aimed at one client).
    conn: u32,
    outbox: mpsc::UnboundedSender<WatchResponse>,
    watchers: BTreeMap<i64, Watcher>,
    /// Ids of watches the server cancelled for compaction, still taken until the client
    /// cancels them.
    compacted: BTreeSet<i64>,
    next_id: i64,
    /// A racing creation that read the revision and registers after the next write.
    held: Option<(WatchCreate, i64)>,
    /// The requests that arrived behind it, in order.
    backlog: VecDeque<Behind>,
}

/// A request waiting behind a racing creation.
enum Behind {
    /// A creation, and whether it races too.
    Create(WatchCreate, bool),
    Cancel(i64),
}

impl Stream {
    fn taken(&self, id: i64) -> bool {
        self.watchers.contains_key(&id) || self.compacted.contains(&id)
    }
}

/// A change the model made, for the simulation's observer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Change {
    /// A transaction (or a plain put) from connection `conn` ran.
    Txn {
        /// The connection it came from.
        conn: u32,
        /// The store's revision after it.
        revision: i64,
        /// Whether its compares held.
        succeeded: bool,
        /// `create_revision(key) == value` compares, as (key, value).
        fences: Vec<(Vec<u8>, i64)>,
        /// The keys it put, with their values (in the branch that ran).
        puts: Vec<(Vec<u8>, Vec<u8>)>,
        /// The keys it deleted.
        deletes: Vec<Vec<u8>>,
    },
    /// A lease was revoked (by a client) or expired, with its keys.
    LeaseEnded {
        /// The lease.
        lease: i64,
        /// Expired (not revoked).
        expired: bool,
        /// The keys deleted with it.
        keys: Vec<Vec<u8>>,
    },
    /// The history before `revision` was compacted away.
    Compacted {
        /// The compaction revision.
        revision: i64,
    },
}

/// A key as the observer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// Its create revision.
    pub create_revision: i64,
    /// Its lease (0: none).
    pub lease: i64,
    /// Its value.
    pub value: Vec<u8>,
}

pub(crate) struct Model {
    revision: i64,
    compacted: i64,
    kvs: BTreeMap<Vec<u8>, Stored>,
    /// Events after the compaction revision, in revision order.
    history: Vec<(i64, Event)>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    streams: BTreeMap<u64, Stream>,
    next_stream: u64,
    /// Changes since the observer last looked.
    changes: Vec<Change>,
}

impl Default for Model {
    /// An empty store at revision 1, as a new etcd cluster is (its first write is revision
    /// 2; a range's `max_create_revision` of 0 means "no limit", so no key may have
    /// create revision 1).
    fn default() -> Self {
        Model {
            revision: 1,
            compacted: 0,
            kvs: BTreeMap::new(),
            history: Vec::new(),
            leases: BTreeMap::new(),
            next_lease: 0,
            streams: BTreeMap::new(),
            next_stream: 0,
            changes: Vec::new(),
        }
    }
}

fn prefix_matches(key: &[u8], range: &[u8], prefix: bool) -> bool {
    if prefix {
        key.starts_with(range)
    } else {
        key == range
    }
}

/// Whether `key` lies in the range from `start`: one key, a prefix, or up to `end`.
fn in_range(key: &[u8], start: &[u8], prefix: bool, end: Option<&[u8]>) -> bool {
    match end {
        Some(end) => key < end,
        None => prefix_matches(key, start, prefix),
    }
}

impl Model {
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    pub(crate) fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Every key, in key order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&[u8], KeyInfo)> {
        self.kvs.iter().map(|(k, s)| {
            let info = KeyInfo {
                create_revision: s.create_revision,
                lease: s.lease,
                value: s.value.clone(),
            };
            (k.as_slice(), info)
        })
    }

    pub(crate) fn lease_alive(&self, lease: i64) -> bool {
        self.leases.contains_key(&lease)
    }

    pub(crate) fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// How many watches connection `conn`'s streams have registered (held ones not yet).
    pub(crate) fn watchers(&self, conn: u32) -> usize {
        let streams = self.streams.values().filter(|s| s.conn == conn);
        streams.map(|s| s.watchers.len()).sum()
    }

    fn range_of<'a>(
        &'a self,
        key: &'a [u8],
        prefix: bool,
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Stored)> + 'a {
        // Every key of the range sorts at or after its start, contiguously.
        self.kvs
            .range(key.to_vec()..)
            .take_while(move |(k, _)| in_range(k, key, prefix, end))
    }

    fn compare(&self, c: &Compare) -> bool {
        let value = |s: &Stored| match c.target {
            Target::CreateRevision => s.create_revision,
            Target::ModRevision => s.mod_revision,
            Target::Version => s.version,
        };
        let mut any = false;
        for (_, stored) in self.range_of(&c.key, c.prefix, c.end.as_deref()) {
            any = true;
            if value(stored) != c.value {
                return false;
            }
        }
        // An empty range compares a zero key.
        any || c.value == 0
    }

    pub(crate) fn range(&self, range: &Range) -> RangeResponse {
        let mut kvs: Vec<(&Vec<u8>, &Stored)> = self
            .range_of(&range.key, range.prefix, range.end.as_deref())
            .filter(|(_, s)| {
                range.max_create_revision == 0 || s.create_revision <= range.max_create_revision
            })
            .collect();
        match range.sort {
            Sort::Key => {}
            Sort::CreateAscending => kvs.sort_by_key(|(_, s)| s.create_revision),
            Sort::CreateDescending => {
                kvs.sort_by_key(|(_, s)| std::cmp::Reverse(s.create_revision))
            }
        }
        if range.limit > 0 {
            kvs.truncate(range.limit as usize);
        }
        RangeResponse {
            revision: self.revision,
            kvs: kvs
                .into_iter()
                .map(|(k, s)| s.kv(k, range.keys_only))
                .collect(),
        }
    }

    /// Runs `txn` from connection `conn`.
    pub(crate) fn txn(&mut self, conn: u32, txn: &Txn) -> Result<TxnResponse, Refusal> {
        let succeeded = txn.when.iter().all(|c| self.compare(c));
        let ops = if succeeded { &txn.then } else { &txn.otherwise };
        // Refusals first: a transaction applies whole or not at all.
        for op in ops {
            if let Op::Put(put) = op {
                if put.lease != 0 && !put.ignore_lease && !self.leases.contains_key(&put.lease) {
                    return Err(Refusal::LeaseNotFound);
                }
                if (put.ignore_value || put.ignore_lease) && !self.kvs.contains_key(&put.key) {
                    return Err(Refusal::KeyNotFound);
                }
            }
        }
        let writes = ops.iter().any(|op| !matches!(op, Op::Range(_)));
        let revision = self.revision + i64::from(writes);
        let mut events = Vec::new();
        let mut responses = Vec::new();
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for op in ops {
            let response = match op {
                Op::Range(range) => {
                    let mut resp = self.range(range);
                    resp.revision = revision;
                    OpResponse::Range(resp.kvs)
                }
                Op::Put(put) => {
                    events.push(self.write(put, revision));
                    puts.push((put.key.clone(), put.value.clone()));
                    OpResponse::Put
                }
                Op::Delete { key } => {
                    let deleted = match self.remove(key, revision) {
                        Some(event) => {
                            events.push(event);
                            deletes.push(key.clone());
                            1
                        }
                        None => 0,
                    };
                    OpResponse::Delete { deleted }
                }
            };
            responses.push(response);
        }
        self.revision = revision;
        self.changes.push(Change::Txn {
            conn,
            revision,
            succeeded,
            fences: txn
                .when
                .iter()
                .filter(|c| c.target == Target::CreateRevision && !c.prefix)
                .map(|c| (c.key.clone(), c.value))
                .collect(),
            puts,
            deletes,
        });
        self.publish(revision, events);
        Ok(TxnResponse {
            revision,
            succeeded,
            responses,
        })
    }

    fn write(&mut self, put: &Put, revision: i64) -> Event {
        let old_lease = self.kvs.get(&put.key).map(|s| s.lease);
        let stored = self.kvs.entry(put.key.clone()).or_insert(Stored {
            value: Vec::new(),
            create_revision: revision,
            mod_revision: revision,
            version: 0,
            lease: 0,
        });
        if !put.ignore_value {
            stored.value = put.value.clone();
        }
        if !put.ignore_lease {
            stored.lease = put.lease;
        }
        stored.mod_revision = revision;
        stored.version += 1;
        let (lease, kv) = (stored.lease, stored.kv(&put.key, false));
        if old_lease != Some(lease) {
            if let Some(old) = old_lease.and_then(|l| self.leases.get_mut(&l)) {
                old.keys.remove(&put.key);
            }
            if let Some(new) = self.leases.get_mut(&lease) {
                new.keys.insert(put.key.clone());
            }
        }
        Event {
            kind: EventKind::Put,
            kv,
        }
    }

    fn remove(&mut self, key: &[u8], revision: i64) -> Option<Event> {
        let stored = self.kvs.remove(key)?;
        if let Some(lease) = self.leases.get_mut(&stored.lease) {
            lease.keys.remove(key);
        }
        Some(Event {
            kind: EventKind::Delete,
            kv: Kv {
                key: key.to_vec(),
                mod_revision: revision,
                ..Kv::default()
            },
        })
    }

    /// Deletes `key` as another client (an operator) would; whether it existed.
    pub(crate) fn delete_from_outside(&mut self, key: &[u8]) -> bool {
        let txn = Txn::default().then([Op::delete(key)]);
        matches!(self.txn(u32::MAX, &txn), Ok(r) if r.responses == [OpResponse::Delete { deleted: 1 }])
    }

    pub(crate) fn grant(&mut self, ttl: i64, now: Instant) -> (i64, i64) {
        let ttl = ttl.max(MIN_TTL);
        self.next_lease += 1;
        // Ids that look like etcd's (large, hex-printed in keys).
        let id = 0x694d_0000_0000 + self.next_lease;
        self.leases.insert(
            id,
            Lease {
                ttl,
                expires: now + Duration::from_secs(ttl as u64),
                keys: BTreeSet::new(),
            },
        );
        (id, ttl)
    }

    pub(crate) fn keep_alive(&mut self, lease: i64, now: Instant) -> i64 {
        match self.leases.get_mut(&lease) {
            Some(l) => {
                l.expires = now + Duration::from_secs(l.ttl as u64);
                l.ttl
            }
            None => 0,
        }
    }

    pub(crate) fn time_to_live(&self, lease: i64, now: Instant) -> i64 {
        match self.leases.get(&lease) {
            Some(l) => l.expires.saturating_duration_since(now).as_secs() as i64,
            None => -1,
        }
    }

    pub(crate) fn revoke(&mut self, lease: i64) -> Result<(), Refusal> {
        if self.end_lease(lease, false) {
            Ok(())
        } else {
            Err(Refusal::LeaseNotFound)
        }
    }

    fn end_lease(&mut self, lease: i64, expired: bool) -> bool {
        let Some(ended) = self.leases.remove(&lease) else {
            return false;
        };
        let keys: Vec<Vec<u8>> = ended.keys.into_iter().collect();
        if !keys.is_empty() {
            let revision = self.revision + 1;
            let events = keys
                .iter()
                .filter_map(|k| self.remove(k, revision))
                .collect();
            self.revision = revision;
            self.publish(revision, events);
        }
        self.changes.push(Change::LeaseEnded {
            lease,
            expired,
            keys,
        });
        true
    }

    /// Ends every lease whose TTL ran out by `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(&id, _)| id)
            .collect();
        for lease in due {
            self.end_lease(lease, true);
        }
    }

    /// Compacts the history at the current revision.
    pub(crate) fn compact(&mut self) {
        let at = self.revision;
        self.history
            .retain(|(rev, e)| *rev > at || (*rev == at && e.kind == EventKind::Put));
        self.compacted = at;
        self.changes.push(Change::Compacted { revision: at });
    }

    /// Registers the racing creations that waited for a write (or a sync loop's run), and
    /// then what their streams received behind them.
    fn release_held(&mut self) {
        let held: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.held.is_some())
            .map(|(&id, _)| id)
            .collect();
        for sid in held {
            let Some((create, wsrev)) = self.streams.get_mut(&sid).and_then(|s| s.held.take())
            else {
                continue;
            };
            self.register_watch(sid, &create, wsrev);
            // Until the stream is gone, a creation races again, or nothing is left.
            while let Some(next) = self
                .streams
                .get_mut(&sid)
                .filter(|s| s.held.is_none())
                .and_then(|s| s.backlog.pop_front())
            {
                match next {
                    Behind::Create(create, racing) => self.create_watch(sid, &create, racing),
                    Behind::Cancel(id) => self.cancel_watch(sid, id),
                }
            }
        }
    }

    /// Records `events` at `revision` and tells the synced watchers.
    fn publish(&mut self, revision: i64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for stream in self.streams.values_mut() {
            for (&id, watcher) in stream.watchers.iter_mut().filter(|(_, w)| w.synced) {
                let matching: Vec<Event> = events
                    .iter()
                    .filter(|e| watcher.matches(e))
                    .cloned()
                    .collect();
                watcher.next = revision + 1;
                if !matching.is_empty() {
                    let _ = stream.outbox.send(WatchResponse {
                        watch_id: id,
                        revision,
                        events: matching,
                        ..WatchResponse::default()
                    });
                }
            }
        }
        self.history
            .extend(events.into_iter().map(|e| (revision, e)));
        self.release_held();
    }

    /// A new watch stream of connection `conn`; its messages go to `outbox`.
    pub(crate) fn open_stream(
        &mut self,
        conn: u32,
        outbox: mpsc::UnboundedSender<WatchResponse>,
    ) -> u64 {
        self.next_stream += 1;
        self.streams.insert(
            self.next_stream,
            Stream {
                conn,
                outbox,
                watchers: BTreeMap::new(),
                compacted: BTreeSet::new(),
                next_id: 1,
                held: None,
                backlog: VecDeque::new(),
            },
        );
        self.next_stream
    }

    pub(crate) fn close_stream(&mut self, stream: u64) {
        self.streams.remove(&stream);
    }

    /// A creation arrives on `stream`; a `racing` one from now registers only after the
    /// next write (or the next sync loop's run, whichever is first).
    pub(crate) fn create_watch(&mut self, stream: u64, create: &WatchCreate, racing: bool) {
        let wsrev = self.revision;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.held.is_some() {
            s.backlog.push_back(Behind::Create(create.clone(), racing));
            return;
        }
        if racing && create.start_revision == 0 {
            s.held = Some((create.clone(), wsrev));
            return;
        }
        self.register_watch(stream, create, wsrev);
    }

    /// Registers a creation that read revision `wsrev` on arrival.
    fn register_watch(&mut self, stream: u64, create: &WatchCreate, wsrev: i64) {
        let revision = wsrev;
        let current = self.revision;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let id = if create.watch_id == 0 {
            while s.taken(s.next_id) {
                s.next_id += 1;
            }
            s.next_id
        } else {
            create.watch_id
        };
        if s.taken(id) {
            let _ = s.outbox.send(WatchResponse {
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                revision,
                ..WatchResponse::default()
            });
            return;
        }
        // etcd's receiving loop turns "now" into `wsrev + 1` before it registers.
        let start = if create.start_revision == 0 {
            wsrev + 1
        } else {
            create.start_revision
        };
        s.watchers.insert(
            id,
            Watcher {
                key: create.key.clone(),
                prefix: create.prefix,
                deletes_only: create.deletes_only,
                next: start,
                synced: start > current,
            },
        );
        let _ = s.outbox.send(WatchResponse {
            watch_id: id,
            created: true,
            revision,
            ..WatchResponse::default()
        });
    }

    pub(crate) fn cancel_watch(&mut self, stream: u64, id: i64) {
        let revision = self.revision;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.held.is_some() {
            s.backlog.push_back(Behind::Cancel(id));
            return;
        }
        if s.watchers.remove(&id).is_some() || s.compacted.remove(&id) {
            let _ = s.outbox.send(WatchResponse {
                watch_id: id,
                canceled: true,
                revision,
                ..WatchResponse::default()
            });
        }
    }

    /// Cancels one active watch of connection `conn` as the server may (the `pick`th, modulo
    /// their number); whether there was one.
    pub(crate) fn cancel_some_watch(&mut self, conn: u32, pick: usize) -> bool {
        let revision = self.revision;
        let active: Vec<(u64, i64)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .flat_map(|(&sid, s)| s.watchers.keys().map(move |&w| (sid, w)))
            .collect();
        if active.is_empty() {
            return false;
        }
        let (sid, id) = active[pick % active.len()];
        if let Some(s) = self.streams.get_mut(&sid) {
            s.watchers.remove(&id);
            let _ = s.outbox.send(WatchResponse {
                watch_id: id,
                canceled: true,
                cancel_reason: "simulated: cancelled by the server".into(),
                revision,
                ..WatchResponse::default()
            });
        }
        true
    }

    /// The sync loop: catches the unsynced watchers up, or cancels those whose start was
    /// compacted away.
    pub(crate) fn sync_watchers(&mut self) {
        self.release_held();
        let (revision, compacted) = (self.revision, self.compacted);
        for stream in self.streams.values_mut() {
            let mut gone = Vec::new();
            for (&id, watcher) in stream.watchers.iter_mut().filter(|(_, w)| !w.synced) {
                if watcher.next < compacted {
                    gone.push(id);
                    let _ = stream.outbox.send(WatchResponse {
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted,
                        cancel_reason: "mvcc: required revision has been compacted".into(),
                        revision,
                        ..WatchResponse::default()
                    });
                    continue;
                }
                let next = watcher.next;
                let events: Vec<Event> = self
                    .history
                    .iter()
                    .filter(|(rev, e)| *rev >= next && watcher.matches(e))
                    .map(|(_, e)| e.clone())
                    .collect();
                watcher.next = revision + 1;
                watcher.synced = true;
                if !events.is_empty() {
                    let _ = stream.outbox.send(WatchResponse {
                        watch_id: id,
                        revision,
                        events,
                        ..WatchResponse::default()
                    });
                }
            }
            for id in gone {
                stream.watchers.remove(&id);
                stream.compacted.insert(id);
            }
        }
    }

    /// A plain put (outside a transaction).
    pub(crate) fn put(&mut self, conn: u32, put: Put) -> Result<(), Refusal> {
        self.txn(conn, &Txn::default().then([Op::Put(put)]))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, lease: i64) -> Op {
        Op::Put(Put::new(key, "v").with_lease(lease))
    }

    #[tokio::test(start_paused = true)]
    async fn leases_take_their_keys_along() {
        let mut m = Model::default();
        let (lease, ttl) = m.grant(1, Instant::now());
        assert_eq!(ttl, MIN_TTL);
        m.txn(0, &Txn::default().then([put("q/a", lease)])).unwrap();
        assert!(m.keys().any(|(k, _)| k == b"q/a"));
        m.expire(Instant::now() + Duration::from_secs(3));
        assert!(m.keys().next().is_none());
        let refused = m.txn(0, &Txn::default().then([put("q/b", lease)]));
        assert_eq!(refused.unwrap_err(), Refusal::LeaseNotFound);
    }

    #[test]
    fn prefix_ranges_and_compares() {
        let mut m = Model::default();
        m.put(0, Put::new("q/a", "1")).unwrap();
        m.put(0, Put::new("q/b", "2")).unwrap();
        m.put(0, Put::new("r/c", "3")).unwrap();
        let all = m.range(&Range::prefix("q/").sorted(Sort::CreateDescending));
        let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [b"q/b".as_slice(), b"q/a"]);
        let before = m.range(&Range::prefix("q/").created_at_most(2));
        assert_eq!(before.kvs.len(), 1);
        assert!(!m.compare(&Compare::range_empty(&Range::prefix("q/"))));
        assert!(m.compare(&Compare::range_empty(&Range::prefix("s/"))));
        assert!(m.compare(&Compare::create_revision("nope", 0)));
        // Ranges up to an end leave the end out.
        let between = m.range(&Range::between("q/b", "r/c"));
        let keys: Vec<&[u8]> = between.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [b"q/b".as_slice()]);
        assert!(m.compare(&Compare::range_empty(&Range::between("q/c", "r/c"))));
        assert!(!m.compare(&Compare::range_empty(&Range::between("q/", "q/b"))));
    }

    #[test]
    fn a_compacted_watch_keeps_its_id_until_cancelled() {
        let mut m = Model::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = m.open_stream(0, tx);
        m.put(0, Put::new("k", "1")).unwrap();
        m.put(0, Put::new("k", "2")).unwrap();
        m.compact();
        let from_past = WatchCreate {
            key: b"k".to_vec(),
            prefix: false,
            start_revision: 1,
            watch_id: 7,
            deletes_only: true,
        };
        m.create_watch(stream, &from_past, false);
        assert!(rx.try_recv().unwrap().created);
        m.sync_watchers();
        let cancelled = rx.try_recv().unwrap();
        assert!(cancelled.canceled && cancelled.compact_revision == 3);
        m.create_watch(stream, &from_past, false);
        let refused = rx.try_recv().unwrap();
        assert_eq!((refused.watch_id, refused.canceled), (-1, true));
        m.cancel_watch(stream, 7);
        assert!(rx.try_recv().unwrap().canceled);
        m.create_watch(
            stream,
            &WatchCreate {
                start_revision: 0,
                ..from_past
            },
            false,
        );
        assert_eq!(rx.try_recv().unwrap().watch_id, 7);
    }

    /// etcd 3.4: a creation from now that a write overtakes registers from the past,
    /// unsynced, and its answer names the revision it read; requests behind it wait.
    #[test]
    fn a_creation_racing_a_write_is_unsynced_until_the_sync_loop() {
        let mut m = Model::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = m.open_stream(0, tx);
        m.put(0, Put::new("k", "1")).unwrap();
        let now = |id| WatchCreate {
            key: b"k".to_vec(),
            prefix: false,
            start_revision: 0,
            watch_id: id,
            deletes_only: true,
        };
        let read = m.revision;
        m.create_watch(stream, &now(1), true);
        m.create_watch(stream, &now(2), false);
        assert!(rx.try_recv().is_err(), "held until the next write");
        m.put(0, Put::new("other", "x")).unwrap();
        let (first, second) = (rx.try_recv().unwrap(), rx.try_recv().unwrap());
        assert_eq!(
            (first.watch_id, first.revision),
            (1, read),
            "answers what it read"
        );
        assert_eq!((second.watch_id, second.revision), (2, read + 1));
        m.txn(0, &Txn::default().then([Op::Delete { key: b"k".to_vec() }]))
            .unwrap();
        let event = rx.try_recv().unwrap();
        assert_eq!(
            event.watch_id, 2,
            "only the synced watch hears the deletion at once"
        );
        assert!(rx.try_recv().is_err());
        m.sync_watchers();
        assert_eq!(
            rx.try_recv().unwrap().watch_id,
            1,
            "the sync loop catches up the other"
        );
    }
}
