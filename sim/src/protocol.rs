//! The queue protocol as an abstract state machine, checked exhaustively (stateright).
//!
//! Three clients and one lock. Each client acquires up to twice: it enqueues an entry (a
//! key with a create revision), checks what is directly ahead of it (the post-wait check
//! first: is its own entry still there?), waits for that entry's deletion, checks again,
//! and holds once nothing is ahead; then it releases. Along the way one waiting client may
//! cancel (its entry is removed), one client's session may expire (its entries go; the
//! client knows first, as its deadline passes the safety margin before the server's
//! expiry), and one client's lease may be revoked from outside (its entries go; the
//! client learns it later, and meanwhile goes on). Client 0 may queue as Go's Mutex does: one key per session, reused by every
//! acquisition, so a key may come back as another entry, *behind* whoever watched it.
//!
//! Properties, over every interleaving:
//! - *one holder*: at most one client holds (but one whose lease was revoked from outside
//!   and who has not yet heard: nobody can prevent that, only report it);
//! - *holders head the queue*: a holder's entry exists and is the oldest (the same
//!   exception);
//! - *only heads are granted*: no acquisition is granted to a client whose entry is gone;
//! - *everyone finishes*: every run ends with every client done and no entry left (no
//!   deadlock, no waiter stuck behind a gone entry, no leaked entry).
//!
//! What it abstracts away: the network (every step is atomic; retries, hedges, lost
//! replies and stray attempts are the simulator's business, `run.rs`), watch streams
//! (a waiter wakes once its predecessor's entry is gone, however etcd or ZooKeeper tells
//! it), timeouts, clocks (the safety margin is assumed: a session's own client counts it
//! lost before the server expires it), several locks, elections and guarded writes.

use stateright::{Model, Property};

/// A defect to put into the model, to see the checker find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flaw {
    /// A waiter asks whether its predecessor's *key* exists, not whether its entry does.
    ExistenceOnly,
    /// A waiter does not check that its own entry still exists before it is granted.
    NoPostWaitCheck,
    /// A cancelled waiter leaves its entry behind.
    CancelLeaks,
}

/// The protocol with three clients (`go_peer`: client 0 queues as Go's Mutex does).
#[derive(Clone, Debug)]
pub struct Protocol {
    pub go_peer: bool,
    pub flaw: Option<Flaw>,
}

/// An entry's key: the client and its acquisition (always 0 for a Go-style client).
pub type Key = (u8, u8);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Idle,
    /// Enqueued or woken: the next step checks the queue.
    Checking,
    /// Waiting for the deletion of the entry `key` created at `created`.
    Waiting {
        key: Key,
        created: u8,
    },
    Holding,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientState {
    pub phase: Phase,
    /// The own entry: key and create revision.
    pub entry: Option<(Key, u8)>,
    pub acquisitions_left: u8,
    /// Its lease was revoked from outside, and it has not heard yet.
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub revision: u8,
    /// The queue: entries (key, create revision), sorted by key.
    pub entries: Vec<(Key, u8)>,
    pub clients: [ClientState; 3],
    pub cancels_left: u8,
    pub expiries_left: u8,
    pub revokes_left: u8,
    /// Some acquisition was granted to a client whose own entry was gone.
    pub granted_without_entry: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Enqueue(u8),
    Check(u8),
    Wake(u8),
    Release(u8),
    Cancel(u8),
    Expire(u8),
    /// The lease revoked from outside: the entries go, the client does not know yet.
    Revoke(u8),
    /// The client hears that its lease was revoked.
    Notice(u8),
}

impl ClientState {
    /// Back to idle: no entry, and nothing it has not heard about its session.
    fn idle(&mut self) {
        self.phase = Phase::Idle;
        self.entry = None;
        self.revoked = false;
    }
}

impl State {
    fn created(&self, key: Key) -> Option<u8> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| *r)
    }

    fn remove(&mut self, key: Key, created: u8) {
        self.entries.retain(|e| *e != (key, created));
    }

    /// The newest entry created before `revision`.
    fn ahead_of(&self, revision: u8) -> Option<(Key, u8)> {
        self.entries
            .iter()
            .filter(|(_, r)| *r < revision)
            .max_by_key(|(_, r)| *r)
            .copied()
    }

    /// The holders that may believe they hold (not revoked from outside).
    fn holders(&self) -> impl Iterator<Item = &ClientState> {
        self.clients
            .iter()
            .filter(|c| c.phase == Phase::Holding && !c.revoked)
    }
}

impl Protocol {
    fn key(&self, state: &State, i: u8) -> Key {
        if self.go_peer && i == 0 {
            (0, 0)
        } else {
            (i, state.clients[i as usize].acquisitions_left)
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let client = ClientState {
            phase: Phase::Idle,
            entry: None,
            acquisitions_left: 2,
            revoked: false,
        };
        vec![State {
            revision: 1,
            entries: Vec::new(),
            clients: [client.clone(), client.clone(), client],
            cancels_left: 1,
            expiries_left: 1,
            revokes_left: 1,
            granted_without_entry: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for i in 0..3u8 {
            let c = &state.clients[i as usize];
            match c.phase {
                // A client whose lease is gone unbeknownst to it fails to enqueue on it, and
                // so hears (Notice).
                Phase::Idle if c.acquisitions_left > 0 && !c.revoked => {
                    actions.push(Action::Enqueue(i))
                }
                Phase::Idle => {}
                Phase::Checking => actions.push(Action::Check(i)),
                Phase::Waiting { key, created } => {
                    let gone = match self.flaw {
                        Some(Flaw::ExistenceOnly) => state.created(key).is_none(),
                        _ => state.created(key) != Some(created),
                    };
                    if gone {
                        actions.push(Action::Wake(i));
                    }
                }
                Phase::Holding => actions.push(Action::Release(i)),
            }
            if matches!(c.phase, Phase::Checking | Phase::Waiting { .. }) && state.cancels_left > 0
            {
                actions.push(Action::Cancel(i));
            }
            if c.phase != Phase::Idle && !c.revoked && state.expiries_left > 0 {
                actions.push(Action::Expire(i));
            }
            if c.phase != Phase::Idle && !c.revoked && state.revokes_left > 0 {
                actions.push(Action::Revoke(i));
            }
            if c.revoked {
                actions.push(Action::Notice(i));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Enqueue(i) => {
                let key = self.key(&s, i);
                let revision = s.revision;
                s.revision += 1;
                s.entries.push((key, revision));
                s.entries.sort();
                let c = &mut s.clients[i as usize];
                c.acquisitions_left -= 1;
                c.entry = Some((key, revision));
                c.phase = Phase::Checking;
            }
            Action::Check(i) => {
                let (key, revision) = s.clients[i as usize].entry?;
                let present = s.created(key) == Some(revision);
                if !present && self.flaw != Some(Flaw::NoPostWaitCheck) {
                    // The entry went with the session: the acquisition fails, and the
                    // client knows its session is gone.
                    s.clients[i as usize].idle();
                    return Some(s);
                }
                match s.ahead_of(revision) {
                    Some((key, created)) => {
                        s.clients[i as usize].phase = Phase::Waiting { key, created };
                    }
                    None => {
                        s.granted_without_entry |= !present;
                        s.clients[i as usize].phase = Phase::Holding;
                    }
                }
            }
            Action::Wake(i) => s.clients[i as usize].phase = Phase::Checking,
            Action::Release(i) => {
                let (key, revision) = s.clients[i as usize].entry?;
                s.remove(key, revision);
                s.clients[i as usize].idle();
            }
            Action::Cancel(i) => {
                s.cancels_left -= 1;
                let (key, revision) = s.clients[i as usize].entry?;
                if self.flaw != Some(Flaw::CancelLeaks) {
                    s.remove(key, revision);
                }
                s.clients[i as usize].idle();
            }
            Action::Expire(i) => {
                // The client counts the session lost first (its deadline passes before the
                // server's expiry): a holder stops holding, a waiter stops waiting; then
                // the server deletes its entries. Its next acquisition opens a new session.
                s.expiries_left -= 1;
                if let Some((key, revision)) = s.clients[i as usize].entry {
                    s.remove(key, revision);
                }
                s.clients[i as usize].idle();
            }
            Action::Revoke(i) => {
                s.revokes_left -= 1;
                if let Some((key, revision)) = s.clients[i as usize].entry {
                    s.remove(key, revision);
                }
                s.clients[i as usize].revoked = true;
            }
            Action::Notice(i) => s.clients[i as usize].idle(),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("one holder", |_, s: &State| s.holders().count() <= 1),
            Property::always("holders head the queue", |_, s: &State| {
                s.holders().all(|c| {
                    c.entry.is_some_and(|(key, revision)| {
                        s.created(key) == Some(revision) && s.ahead_of(revision).is_none()
                    })
                })
            }),
            Property::always("only heads are granted", |_, s: &State| {
                !s.granted_without_entry
            }),
            Property::eventually("everyone finishes, nothing left", |_, s: &State| {
                s.entries.is_empty()
                    && s.clients
                        .iter()
                        .all(|c| c.phase == Phase::Idle && c.acquisitions_left == 0)
            }),
            // Not vacuous: waiting, and hand-offs after each kind of exit, happen.
            Property::sometimes("a waiter waits", |_, s: &State| {
                s.clients
                    .iter()
                    .any(|c| matches!(c.phase, Phase::Waiting { .. }))
            }),
            Property::sometimes("a holder after an expiry", |_, s: &State| {
                s.expiries_left == 0 && s.holders().count() == 1
            }),
            Property::sometimes("a holder after a cancel", |_, s: &State| {
                s.cancels_left == 0 && s.holders().count() == 1
            }),
        ]
    }
}
