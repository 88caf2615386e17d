//! The invariants, checked on every step: after every change of the server's state (the
//! simulated server calls [`Checker::observe`] with it locked) and at every event of an
//! actor (acquired, released, wrote).
//!
//! - **Exclusion**: per lock name, at most one holder *believes* it holds: it has a guard,
//!   has not released it, and the guard's `is_lost()` says no (the same answer the holder's
//!   code gets, the deadline included); but any number of readers (the read side of the
//!   name's read-write lock) may believe together while no exclusive holder does. Holders whose entry or lease was removed from
//!   outside (an operator's delete or revoke) are exempt: nobody can stop that, only report
//!   it (see *Told*).
//! - **Queue**: every acquired entry held at some revision: it headed its queue, or, a
//!   reader's, had no exclusive entry ahead of it.
//! - **Fencing**: an exclusive acquisition's token is above every earlier acquisition's of
//!   its name, a reader's above every earlier exclusive one's (but for acquisitions already
//!   lost, or exempt, when reported).
//! - **Guarded writes**: every applied guarded write was fenced by an entry that held
//!   then; each is applied at most once; one acknowledged is applied exactly once,
//!   one refused as lost is not applied.
//! - **Told**: a holder whose entry or session is gone (and that did not release it) hears
//!   it from `lost()` within a bound.
//!
//! Liveness and cleanup are checked at the end of a run (`run.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fairlock::sim::{Change, Observed, View};
use fairlock::LostSignal;
use tokio::time::Instant;

use crate::trace::Trace;

/// Where the data keys of guarded writes live (etcd keys; outside the lock prefix).
pub const DATA: &str = "data/";

struct Holding {
    who: String,
    name: String,
    key: Vec<u8>,
    token: u64,
    lease: i64,
    /// `None`: a foreign peer, which believes until it unlocks.
    lost: Option<LostSignal>,
    /// When the server removed its entry, if it did.
    gone_at: Option<Instant>,
    /// A reader's.
    shared: bool,
}

impl Holding {
    fn believes(&self) -> bool {
        self.lost.as_ref().is_none_or(|l| !l.is_lost())
    }
}

/// What became of a guarded write, as its writer heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    Acknowledged,
    RefusedAsLost,
    /// Any other error: at most once.
    Other,
}

#[derive(Default)]
struct Write {
    applied: u32,
    result: Option<WriteResult>,
}

pub struct Checker {
    pub trace: Trace,
    /// The lock prefix: queues are `PREFIX/NAME/`.
    prefix: Vec<u8>,
    /// How soon a holder must hear of a loss.
    told_within: Duration,
    holdings: BTreeMap<u64, Holding>,
    next_holding: u64,
    /// Per name, the highest token acquired, and the highest of exclusive acquisitions.
    last_token: BTreeMap<String, (u64, u64)>,
    ever_head: BTreeSet<(Vec<u8>, i64)>,
    /// Entries (key, create revision) deleted from outside.
    exempt_keys: BTreeSet<(Vec<u8>, i64)>,
    exempt_leases: BTreeSet<i64>,
    writes: BTreeMap<String, Write>,
    violation: Option<String>,
    failed: tokio::sync::watch::Sender<bool>,
    /// Counts for the report.
    pub acquisitions: u64,
    pub applied_writes: u64,
}

/// How a reader's key begins after its queue prefix.
const READER: &[u8] = b"read-";

/// Whether the queue key is a reader's: `PREFIX/NAME/read-<lease hex>-<n>`.
fn is_reader(key: &[u8]) -> bool {
    let leaf = key.rsplit(|&b| b == b'/').next().unwrap_or_default();
    leaf.starts_with(READER)
}

/// The lease in a queue key: `PREFIX/NAME/[read-]<lease hex>[-<n>]`.
fn lease_of(key: &[u8]) -> i64 {
    let leaf = key.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let leaf = leaf.strip_prefix(READER).unwrap_or(leaf);
    let hex = leaf.split(|&b| b == b'-').next().unwrap_or_default();
    i64::from_str_radix(&String::from_utf8_lossy(hex), 16).unwrap_or(0)
}

/// The queue (`PREFIX/NAME/`) of a key, if it is a queue entry (not a withdrawal marker).
fn queue_of<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k [u8]> {
    if !key.starts_with(prefix) || key.contains(&0) {
        return None;
    }
    let cut = key.iter().rposition(|&b| b == b'/')?;
    Some(&key[..=cut])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "␀")
}

fn texts(keys: &[Vec<u8>]) -> String {
    keys.iter().map(|k| text(k)).collect::<Vec<_>>().join(" ")
}

/// A server change, readable.
fn describe(change: &Change) -> String {
    match change {
        Change::Txn {
            conn,
            revision,
            succeeded,
            puts,
            deletes,
            ..
        } => {
            let puts: Vec<String> = puts
                .iter()
                .map(|(k, v)| format!("{}={}", text(k), text(v)))
                .collect();
            format!(
                "rev {revision}: txn of conn{conn} {}: put [{}] delete [{}]",
                if *succeeded { "succeeded" } else { "failed" },
                puts.join(" "),
                texts(deletes)
            )
        }
        Change::LeaseEnded {
            lease,
            expired,
            keys,
        } => format!(
            "lease {lease:x} {}: deleted [{}]",
            if *expired { "expired" } else { "revoked" },
            texts(keys)
        ),
        Change::Compacted { revision } => format!("compacted at {revision}"),
        other => format!("{other:?}"),
    }
}

impl Checker {
    pub fn new(trace: Trace, prefix: &str, told_within: Duration) -> Checker {
        Checker {
            trace,
            prefix: format!("{prefix}/").into_bytes(),
            told_within,
            holdings: BTreeMap::new(),
            next_holding: 0,
            last_token: BTreeMap::new(),
            ever_head: BTreeSet::new(),
            exempt_keys: BTreeSet::new(),
            exempt_leases: BTreeSet::new(),
            writes: BTreeMap::new(),
            violation: None,
            failed: tokio::sync::watch::Sender::new(false),
            acquisitions: 0,
            applied_writes: 0,
        }
    }

    /// Completes (turns true) at the first violation.
    pub fn failed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.failed.subscribe()
    }

    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    pub fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.trace.event("CHECK", || format!("VIOLATION: {what}"));
            self.violation = Some(what);
            self.failed.send_replace(true);
        }
    }

    fn exempt(&self, key: &[u8], token: u64, lease: i64) -> bool {
        self.exempt_keys.contains(&(key.to_vec(), token as i64))
            || self.exempt_leases.contains(&lease)
    }

    /// The nemesis deletes the entry `key` (created at `revision`) from outside.
    pub fn deleted_from_outside(&mut self, key: &[u8], revision: i64) {
        self.exempt_keys.insert((key.to_vec(), revision));
    }

    /// The nemesis revoked `lease` from outside.
    pub fn revoked_from_outside(&mut self, lease: i64) {
        self.exempt_leases.insert(lease);
    }

    /// `who` was handed lock `name` (entry `key`, `token`); returns the holding's id.
    pub fn acquired(
        &mut self,
        who: &str,
        name: &str,
        key: &[u8],
        token: u64,
        lost: Option<LostSignal>,
    ) -> u64 {
        self.acquisitions += 1;
        let lease = lease_of(key);
        let lost_already = lost.as_ref().is_some_and(|l| l.is_lost());
        self.trace.event(who, || {
            format!(
                "acquired {name} token {token} key {}{}",
                text(key),
                if lost_already { " (already lost)" } else { "" }
            )
        });
        if !self.ever_head.contains(&(key.to_vec(), token as i64)) {
            self.violate(format!(
                "{who} acquired {name} with entry {} (token {token}), which never held its queue",
                text(key)
            ));
        }
        let shared = is_reader(key);
        if !lost_already && !self.exempt(key, token, lease) {
            let (any, exclusive) = self.last_token.get(name).copied().unwrap_or((0, 0));
            let last = if shared { exclusive } else { any };
            if token <= last {
                self.violate(format!(
                    "{who} acquired {name} with token {token}, not above the last holder's {last}"
                ));
            }
            let exclusive = if shared { exclusive } else { token };
            self.last_token
                .insert(name.to_owned(), (any.max(token), exclusive));
        }
        let id = self.next_holding;
        self.next_holding += 1;
        self.holdings.insert(
            id,
            Holding {
                who: who.to_owned(),
                name: name.to_owned(),
                key: key.to_vec(),
                token,
                lease,
                lost,
                gone_at: None,
                shared,
            },
        );
        self.check(Instant::now());
        id
    }

    /// The holder lets go (before its release is sent): it no longer believes.
    pub fn releasing(&mut self, id: u64) {
        if let Some(h) = self.holdings.remove(&id) {
            let (who, name, token) = (h.who, h.name, h.token);
            self.trace
                .event(&who, || format!("releases {name} token {token}"));
        }
    }

    /// A guarded write with the unique value `value` is about to be sent.
    pub fn write_sent(&mut self, who: &str, value: &str) {
        self.trace.event(who, || format!("guarded write {value}"));
        self.writes.entry(value.to_owned()).or_default();
    }

    pub fn write_done(&mut self, who: &str, value: &str, result: WriteResult, detail: &str) {
        self.trace.event(who, || {
            format!("guarded write {value}: {result:?} {detail}")
        });
        let write = self.writes.entry(value.to_owned()).or_default();
        write.result = Some(result);
        match result {
            WriteResult::Acknowledged if write.applied != 1 => {
                let applied = write.applied;
                self.violate(format!(
                    "{who}'s guarded write {value} was acknowledged but applied {applied} times"
                ))
            }
            WriteResult::RefusedAsLost if write.applied != 0 => self.violate(format!(
                "{who}'s guarded write {value} was refused as lost but applied"
            )),
            _ => {}
        }
    }

    /// A change of the server's state, or a request (while tracing).
    pub fn observe(&mut self, view: &View<'_>, observed: Observed<'_>) {
        let change = match observed {
            Observed::Request {
                conn,
                what,
                outcome,
            } => {
                self.trace
                    .detail(&format!("conn{conn}"), || format!("{what} -> {outcome}"));
                return;
            }
            Observed::Change(change) => change,
            _ => return,
        };
        self.trace.detail("server", || describe(change));
        self.note_heads(view);
        let now = Instant::now();
        match change {
            Change::Txn {
                revision,
                succeeded: true,
                fences,
                puts,
                deletes,
                ..
            } => {
                let data: Vec<&(Vec<u8>, Vec<u8>)> = puts
                    .iter()
                    .filter(|(k, _)| k.starts_with(DATA.as_bytes()))
                    .collect();
                if !data.is_empty() {
                    self.check_fenced(view, *revision, fences, &data);
                }
                self.entries_gone(deletes, now);
            }
            Change::LeaseEnded { keys, .. } => self.entries_gone(keys, now),
            _ => {}
        }
        self.check(now);
    }

    /// The entries of every queue that hold at `view`: its head, and the readers with no
    /// exclusive entry ahead of them.
    fn holders(&self, view: &View<'_>) -> BTreeSet<(Vec<u8>, i64)> {
        let mut queues: BTreeMap<Vec<u8>, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
        for (key, info) in view.keys() {
            if let Some(queue) = queue_of(&self.prefix, key) {
                let entries = queues.entry(queue.to_vec()).or_default();
                entries.push((info.create_revision, key.to_vec()));
            }
        }
        let mut holders = BTreeSet::new();
        for (_, mut entries) in queues {
            entries.sort();
            for (i, (revision, key)) in entries.into_iter().enumerate() {
                let shared = is_reader(&key);
                if i > 0 && !shared {
                    break;
                }
                holders.insert((key, revision));
                if !shared {
                    break;
                }
            }
        }
        holders
    }

    /// Records the entries that hold, in every queue.
    fn note_heads(&mut self, view: &View<'_>) {
        let holders = self.holders(view);
        self.ever_head.extend(holders);
    }

    /// An applied write to data keys: its fence must be the entry heading its queue.
    fn check_fenced(
        &mut self,
        view: &View<'_>,
        revision: i64,
        fences: &[(Vec<u8>, i64)],
        data: &[&(Vec<u8>, Vec<u8>)],
    ) {
        let Some((fence, token)) = fences
            .iter()
            .find(|(k, _)| queue_of(&self.prefix, k).is_some())
        else {
            self.violate(format!(
                "an unfenced write to data keys applied at revision {revision}"
            ));
            return;
        };
        if !self.holders(view).contains(&(fence.clone(), *token)) {
            let queue = queue_of(&self.prefix, fence).unwrap_or_default().to_vec();
            let head = view
                .keys()
                .filter(|(k, _)| queue_of(&self.prefix, k) == Some(queue.as_slice()))
                .min_by_key(|(_, info)| info.create_revision)
                .map(|(k, info)| (k.to_vec(), info.create_revision));
            self.violate(format!(
                "a guarded write fenced by {} (token {token}) applied at revision {revision}, \
                 but it did not hold: the head of the queue was {:?}",
                text(fence),
                head.map(|(k, r)| (text(&k), r))
            ));
        }
        for (_, value) in data {
            let value = text(value);
            let write = self.writes.entry(value.clone()).or_default();
            write.applied += 1;
            self.applied_writes += 1;
            let (applied, result) = (write.applied, write.result);
            if applied > 1 {
                self.violate(format!("guarded write {value} applied {applied} times"));
            }
            if result == Some(WriteResult::RefusedAsLost) {
                self.violate(format!(
                    "guarded write {value} applied after its writer heard it refused as lost"
                ));
            }
        }
    }

    fn entries_gone(&mut self, keys: &[Vec<u8>], now: Instant) {
        for h in self.holdings.values_mut() {
            if h.gone_at.is_none() && keys.contains(&h.key) {
                h.gone_at = Some(now);
            }
        }
    }

    /// Exclusion per name, and that holders whose entry went were told in time.
    pub fn check(&mut self, now: Instant) {
        let mut believers: BTreeMap<&str, Vec<&Holding>> = BTreeMap::new();
        let mut untold = None;
        for h in self.holdings.values() {
            let believes = h.believes();
            if believes && !self.exempt(&h.key, h.token, h.lease) {
                believers.entry(&h.name).or_default().push(h);
            }
            if let Some(gone) = h.gone_at {
                if believes && now.duration_since(gone) > self.told_within {
                    untold = Some(format!(
                        "{} still believes it holds {} (token {}) {:?} after its entry went",
                        h.who,
                        h.name,
                        h.token,
                        now.duration_since(gone)
                    ));
                }
            }
        }
        // Readers may believe together; anyone exclusive only alone.
        let doubled = believers
            .iter()
            .find(|(_, hs)| hs.len() > 1 && hs.iter().any(|h| !h.shared))
            .map(|(name, hs)| {
                let who: Vec<String> = hs
                    .iter()
                    .map(|h| format!("{} (token {}, key {})", h.who, h.token, text(&h.key)))
                    .collect();
                format!(
                    "{} holders believe they hold {name}: {}",
                    hs.len(),
                    who.join(", ")
                )
            });
        if let Some(v) = doubled.or(untold) {
            self.violate(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_lease_and_queue() {
        assert_eq!(lease_of(b"sim/a/694d00000003-7"), 0x694d_0000_0003);
        assert_eq!(lease_of(b"sim/a/694d00000003"), 0x694d_0000_0003);
        let prefix = b"sim/";
        assert_eq!(
            queue_of(prefix, b"sim/a/694d-1"),
            Some(b"sim/a/".as_slice())
        );
        assert_eq!(queue_of(prefix, b"sim/a\0withdrawn/694d-1"), None);
        assert_eq!(lease_of(b"sim/a/read-694d00000003-7"), 0x694d_0000_0003);
        assert_eq!(
            queue_of(prefix, b"sim/a/read-694d-1"),
            Some(b"sim/a/".as_slice())
        );
        assert!(is_reader(b"sim/a/read-694d-1") && !is_reader(b"sim/a/694d-1"));
        assert_eq!(queue_of(prefix, b"data/a"), None);
    }
}
