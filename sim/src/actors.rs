//! The actors: fairlock clients whose worker tasks lock, try, time out, campaign and cancel
//! at random points, write through their guards and release or drop them, and crash now and
//! then; and foreign peers that queue as Go's Mutex does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairlock::sim::{GoMutex, GoSession, SimConn, SimEtcd};
use fairlock::{Acquire, Client, Config, Error, Leadership, LockGuard, LostSignal, WriteOp};
use tokio::sync::watch;

use crate::check::{Checker, WriteResult, DATA};
use crate::plan::{self, Plan, ELECTION, PREFIX};

/// What every actor shares.
pub struct Shared {
    pub etcd: SimEtcd,
    pub checker: Arc<Mutex<Checker>>,
    pub plan: Plan,
    pub config: Config,
    /// Turns true when the faults stop: actors finish their operation, then prove
    /// liveness.
    pub stopping: watch::Receiver<bool>,
    /// What each actor is doing, for a report of one that is stuck.
    pub doing: Mutex<BTreeMap<String, String>>,
    /// The Go peers' leases, which the nemesis leaves alone (the peer does not notice a
    /// lost lease, as Go's own session does not either until its keep-alive channel closes).
    pub go_leases: Mutex<Vec<i64>>,
}

impl Shared {
    pub fn check<R>(&self, f: impl FnOnce(&mut Checker) -> R) -> R {
        f(&mut self.checker.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn event(&self, who: &str, what: impl FnOnce() -> String) {
        self.check(|c| c.trace.event(who, what));
    }

    fn doing(&self, who: &str, what: String) {
        self.doing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(who.to_owned(), what);
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

fn between(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    low + (high - low).mul_f64(rng.f64())
}

/// One fairlock client (one connection, one session at a time) and its worker tasks.
pub struct Group {
    pub conn: SimConn,
    name: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Group {
    pub fn new(conn: SimConn, name: String) -> Group {
        Group {
            conn,
            name,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The client, connected first if needed (retried while the link fails it).
    async fn client(&self, shared: &Shared) -> Client {
        let mut slot = self.client.lock().await;
        loop {
            if let Some(client) = slot.as_ref() {
                return client.clone();
            }
            match Client::simulated(&self.conn, &shared.config).await {
                Ok(client) => {
                    let session = client.session_id();
                    shared.event(&self.name, || format!("connected, session {session}"));
                    *slot = Some(client);
                }
                Err(e) => {
                    shared.event(&self.name, || format!("connect failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Crashes the client: its session is left to expire, its guards go with it.
    async fn crash(&self, shared: &Shared) {
        if let Some(client) = self.client.lock().await.take() {
            let session = client.session_id();
            shared.event(&self.name, || {
                format!("crashes (session {session} left to expire)")
            });
            client.abandon();
        }
    }

    /// Closes the client (the end of the run).
    pub async fn close(&self) -> Result<(), Error> {
        match self.client.lock().await.take() {
            Some(client) => client.close().await,
            None => Ok(()),
        }
    }
}

/// A lock guard or a leadership.
enum Held {
    Lock(LockGuard),
    Lead(Leadership),
}

impl Held {
    fn key(&self) -> &str {
        match self {
            Held::Lock(g) => g.key(),
            Held::Lead(l) => l.key(),
        }
    }

    fn token(&self) -> u64 {
        match self {
            Held::Lock(g) => g.fencing_token(),
            Held::Lead(l) => l.fencing_token(),
        }
    }

    fn lost(&self) -> LostSignal {
        match self {
            Held::Lock(g) => g.lost(),
            Held::Lead(l) => l.lost(),
        }
    }

    async fn guarded_write(&self, ops: &[WriteOp]) -> fairlock::Result<()> {
        match self {
            Held::Lock(g) => g.guarded_write(ops).await,
            Held::Lead(l) => l.guarded_write(ops).await,
        }
    }

    async fn release(self) -> fairlock::Result<()> {
        match self {
            Held::Lock(g) => g.release().await,
            Held::Lead(l) => l.resign().await,
        }
    }
}

/// Acquires `name`: the election, a lock's read side if `read`, else the mutex (which is
/// the lock's write side too).
async fn acquire(
    client: &Client,
    who: &str,
    name: &str,
    read: bool,
    mode: Acquire,
) -> fairlock::Result<Option<Held>> {
    if name == ELECTION {
        let election = client.election(name)?;
        Ok(election
            .campaign_with(who.as_bytes(), mode)
            .await?
            .map(Held::Lead))
    } else if read {
        let reader = client.rw_lock(name)?.reader().clone();
        Ok(reader.acquire(mode).await?.map(Held::Lock))
    } else {
        Ok(client.mutex(name)?.acquire(mode).await?.map(Held::Lock))
    }
}

/// The purpose of the generator that picks readers, apart from a worker's own stream, so
/// that the rest of a worker's choices draw as they did before readers existed.
const READERS: u64 = 10_000;

/// A worker task of `group`: random operations until the faults stop, then one lock of
/// every name within the liveness bound.
pub async fn worker(shared: Arc<Shared>, group: Arc<Group>, who: String, stream: u64) {
    let mut rng = plan::rng(shared.plan.seed, stream);
    let mut sides = plan::rng(shared.plan.seed, READERS + stream);
    let mut writes = 0u64;
    let mut names = shared.plan.locks.clone();
    names.push(ELECTION.to_owned());
    while !shared.stopping() {
        if rng.u8(..100) < 2 {
            shared.doing(&who, "crashing".into());
            group.crash(&shared).await;
            let pause = between(
                &mut rng,
                Duration::ZERO,
                Duration::from_secs(shared.plan.ttl),
            );
            tokio::time::sleep(pause).await;
            continue;
        }
        let client = group.client(&shared).await;
        let name = &names[rng.usize(..names.len())];
        let mode = match rng.u8(..4) {
            0 => Acquire::Wait,
            1 => Acquire::Try,
            _ => Acquire::Timeout(between(
                &mut rng,
                Duration::from_millis(20),
                Duration::from_secs(3),
            )),
        };
        // Cancelled from outside now and then; often just after a timeout, while it cleans
        // up.
        let cancel = (rng.u8(..4) == 0).then(|| match mode {
            Acquire::Timeout(t) if rng.bool() => {
                t + between(&mut rng, Duration::ZERO, Duration::from_millis(150))
            }
            _ => between(&mut rng, Duration::ZERO, Duration::from_secs(2)),
        });
        let read = sides.u8(..4) == 0;
        let side = if read { " (read side)" } else { "" };
        shared.event(&who, || {
            format!("{mode:?} {name}{side} (cancel after {cancel:?})")
        });
        shared.doing(&who, format!("{mode:?} {name}{side}"));
        let attempt = acquire(&client, &who, name, read, mode);
        let result = match cancel {
            Some(after) => match tokio::time::timeout(after, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    shared.event(&who, || format!("cancelled {name}"));
                    continue;
                }
            },
            None => attempt.await,
        };
        match result {
            Ok(Some(held)) => hold(&shared, &who, name, held, &mut rng, &mut writes).await,
            Ok(None) => shared.event(&who, || format!("did not get {name}")),
            Err(e) => shared.event(&who, || format!("{name}: {e}")),
        }
        let pause = between(&mut rng, Duration::ZERO, Duration::from_millis(300));
        tokio::time::sleep(pause).await;
    }
    // Liveness: faults stopped; every waiter must acquire within the bound.
    let bound = shared.plan.liveness_bound();
    for name in &names {
        shared.doing(&who, format!("final lock of {name}"));
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let client = group.client(&shared).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let read = sides.bool();
            match acquire(&client, &who, name, read, Acquire::Timeout(left)).await {
                Ok(Some(held)) => {
                    let lost = held.lost();
                    let id = shared.check(|c| {
                        c.acquired(&who, name, held.key().as_bytes(), held.token(), Some(lost))
                    });
                    shared.check(|c| c.releasing(id));
                    if let Err(e) = held.release().await {
                        shared.event(&who, || format!("final release of {name}: {e}"));
                    }
                    break;
                }
                Ok(None) => {
                    shared.check(|c| {
                        c.violate(format!(
                            "{who} did not get {name} within {bound:?} after the faults stopped"
                        ))
                    });
                    return;
                }
                Err(e) => {
                    shared.event(&who, || format!("final lock of {name}: {e}"));
                    if tokio::time::Instant::now() >= deadline {
                        shared.check(|c| {
                            c.violate(format!(
                                "{who} did not get {name} within {bound:?} after the faults stopped: {e}"
                            ))
                        });
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    shared.doing(&who, "done".into());
}

/// Holds: a few guarded writes, then a release (or a drop, which releases in the
/// background).
async fn hold(
    shared: &Shared,
    who: &str,
    name: &str,
    held: Held,
    rng: &mut fastrand::Rng,
    writes: &mut u64,
) {
    let lost = held.lost();
    let id =
        shared.check(|c| c.acquired(who, name, held.key().as_bytes(), held.token(), Some(lost)));
    shared.doing(who, format!("holding {name}"));
    let data = format!("{DATA}{name}");
    for _ in 0..rng.usize(0..=3) {
        tokio::time::sleep(between(rng, Duration::ZERO, Duration::from_millis(400))).await;
        *writes += 1;
        let value = format!("{who}#{writes}");
        shared.check(|c| c.write_sent(who, &value));
        let written = held
            .guarded_write(&[WriteOp::put(data.clone(), value.clone())])
            .await;
        let result = match &written {
            Ok(()) => WriteResult::Acknowledged,
            Err(Error::LockLost(_)) => WriteResult::RefusedAsLost,
            Err(_) => WriteResult::Other,
        };
        let detail = written
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        shared.check(|c| c.write_done(who, &value, result, &detail));
        if result == WriteResult::RefusedAsLost {
            break;
        }
    }
    tokio::time::sleep(between(rng, Duration::ZERO, Duration::from_millis(300))).await;
    shared.check(|c| c.releasing(id));
    if rng.u8(..10) < 7 {
        let released = held.release().await;
        shared.event(who, || format!("released {name}: {released:?}"));
    } else {
        drop(held);
        shared.event(who, || format!("dropped its guard of {name}"));
    }
}

/// A peer queueing as Go's Mutex does on the first lock name, re-locking with its one key.
pub async fn go_peer(shared: Arc<Shared>, conn: SimConn, who: String, stream: u64) {
    let mut rng = plan::rng(shared.plan.seed, stream);
    let session = loop {
        match GoSession::open(&conn, shared.plan.ttl as i64).await {
            Ok(session) => break session,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    shared
        .go_leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(session.lease());
    let name = &shared.plan.locks[0];
    let mutex = GoMutex::new(&session, &format!("{PREFIX}/{name}"));
    while !shared.stopping() {
        shared.doing(&who, format!("Lock {name}"));
        match mutex.lock().await {
            Ok(revision) => {
                let key = mutex.key().as_bytes();
                let id = shared.check(|c| c.acquired(&who, name, key, revision as u64, None));
                shared.doing(&who, format!("holding {name}"));
                tokio::time::sleep(between(
                    &mut rng,
                    Duration::ZERO,
                    Duration::from_millis(400),
                ))
                .await;
                shared.check(|c| c.releasing(id));
                if let Err(e) = mutex.unlock().await {
                    shared.event(&who, || format!("unlock failed: {e}"));
                }
            }
            Err(e) => shared.event(&who, || format!("Lock failed: {e}")),
        }
        // Often at once: the key comes back as a new entry while others still watch it.
        if rng.bool() {
            tokio::time::sleep(between(
                &mut rng,
                Duration::ZERO,
                Duration::from_millis(300),
            ))
            .await;
        }
    }
    session.close().await;
    shared.doing(&who, "done".into());
}
