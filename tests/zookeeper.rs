//! ZooKeeper-specific behaviour: Curator's node names, kazoo's nodes as contenders, real
//! Curator and kazoo peers in the same queue (both directions; mutexes, read-write locks,
//! LeaderLatch), server-side limits.
#![cfg(feature = "zookeeper")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{eventually, soon, unique, zk_endpoint, Harness, ZkHarness};
use fairlock::{Client, DistributedMutex, Error, WriteOp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};

#[tokio::test]
async fn nodes_are_named_as_curator_names_them() {
    let h = ZkHarness::new().await;
    let client = h.client().await;
    let name = unique("naming");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let node = guard
        .key()
        .strip_prefix(&format!("{}/{name}/", h.base()))
        .expect("node under /BASE/NAME");
    let (uuid, sequence) = node
        .strip_prefix("_c_")
        .and_then(|rest| rest.split_once("-lock-"))
        .expect("_c_<uuid>-lock-<seq>");
    assert_eq!(uuid.len(), 36, "hyphenated uuid: {uuid}");
    assert_eq!(sequence.len(), 10, "10-digit sequence: {sequence}");
    // The fencing token is the node's czxid, owned by our session.
    let (_, stat) = h.raw().get_data(guard.key()).await.unwrap();
    assert_eq!(stat.czxid as u64, guard.fencing_token());
    assert_eq!(format!("{:x}", stat.ephemeral_owner), client.session_id());
    guard.release().await.unwrap();
}

/// A node named the kazoo way (`…__lock__<seq>`) is a contender like any other.
#[tokio::test]
async fn kazoo_named_nodes_are_contenders() {
    let h = ZkHarness::new().await;
    let name = unique("kazoo-node");
    let lock_path = format!("{}/{name}", h.base());
    let dirs =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    h.raw().mkdir(&lock_path, &dirs).await.unwrap();
    let ephemeral = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    let (_, sequence) = h
        .raw()
        .create(&format!("{lock_path}/0123abcd__lock__"), b"", &ephemeral)
        .await
        .unwrap();
    let kazoo_node = format!("{lock_path}/0123abcd__lock__{sequence}");

    let client = h.client().await;
    let mutex = client.mutex(&name).unwrap();
    assert!(
        mutex.try_lock().await.unwrap().is_none(),
        "ignored a kazoo holder"
    );
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(!waiter.is_finished());
    h.raw().delete(&kazoo_node, None).await.unwrap();
    soon("fairlock acquires", waiter)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

// ---- real peers, built by scripts/peers ----

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A peer process that acquires the lock, says "acquired", and releases on a line of input.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn curator_java(args: &[&str]) -> Peer {
        let classpath = std::fs::read_to_string(repo().join("target/peers/classpath"))
            .expect("the Curator peer is missing: run scripts/peers");
        let mut cmd = Command::new("java");
        cmd.args(["-cp", classpath.trim(), "CuratorPeer", &zk_endpoint()])
            .args(args);
        Peer::spawn(cmd)
    }

    /// Curator's InterProcessMutex on `lock_path`.
    fn curator(lock_path: &str) -> Peer {
        Peer::curator_java(&[lock_path])
    }

    /// Curator's LeaderLatch on `path`, with participant id "curator-peer".
    fn leader_latch(path: &str) -> Peer {
        Peer::curator_java(&[path, "latch", "curator-peer"])
    }

    /// Curator's InterProcessReadWriteLock on `lock_path`: its readLock().
    fn curator_reader(lock_path: &str) -> Peer {
        Peer::curator_java(&[lock_path, "read"])
    }

    /// Curator's InterProcessReadWriteLock on `lock_path`: its writeLock().
    fn curator_writer(lock_path: &str) -> Peer {
        Peer::curator_java(&[lock_path, "write"])
    }

    fn kazoo_python(args: &[&str]) -> Peer {
        let python = repo().join(".services/venv/bin/python");
        assert!(
            python.exists(),
            "the kazoo peer is missing: run scripts/peers"
        );
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("tests/peers/kazoo_peer.py"))
            .arg(zk_endpoint())
            .args(args);
        Peer::spawn(cmd)
    }

    /// kazoo's Lock on `lock_path`.
    fn kazoo(lock_path: &str) -> Peer {
        Peer::kazoo_python(&[lock_path])
    }

    /// kazoo's ReadLock on `lock_path`, told that `__WRIT__` and `-lock-` nodes are writers.
    fn kazoo_reader(lock_path: &str) -> Peer {
        Peer::kazoo_python(&[lock_path, "read"])
    }

    /// kazoo's WriteLock on `lock_path`, told of `__READ__`, `__WRIT__` and `-lock-` nodes.
    fn kazoo_writer(lock_path: &str) -> Peer {
        Peer::kazoo_python(&[lock_path, "write"])
    }

    fn spawn(mut cmd: Command) -> Peer {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("peer");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer { child, lines }
    }

    /// Waits for the next line of output, up to `SOON`.
    async fn said(&mut self, what: &str) {
        let line = soon(what, self.lines.next_line()).await.unwrap();
        assert_eq!(line.as_deref(), Some(what));
    }

    /// Whether the peer says anything within `wait`.
    async fn silent_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.lines.next_line())
            .await
            .is_err()
    }

    async fn release(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"release\n").await.unwrap();
        drop(stdin);
        self.said("released").await;
        soon("peer exits", self.child.wait()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_waits_for_fairlock() {
    peer_waits_for_fairlock(Peer::curator, mutex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_curator() {
    fairlock_waits_for_peer(Peer::curator, mutex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_waits_for_fairlock() {
    peer_waits_for_fairlock(Peer::kazoo, mutex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_kazoo() {
    fairlock_waits_for_peer(Peer::kazoo, mutex).await;
}

// ---- read-write locks against the peers' read and write locks ----

/// The lock fairlock takes in a scenario: a mutex, or a read-write lock's side.
type LockOf = fn(&Client, &str) -> Arc<dyn DistributedMutex>;

fn mutex(client: &Client, name: &str) -> Arc<dyn DistributedMutex> {
    client.mutex(name).unwrap()
}

fn reader(client: &Client, name: &str) -> Arc<dyn DistributedMutex> {
    Arc::clone(client.rw_lock(name).unwrap().reader())
}

fn writer(client: &Client, name: &str) -> Arc<dyn DistributedMutex> {
    Arc::clone(client.rw_lock(name).unwrap().writer())
}

/// The peer's reader holds; a fairlock reader shares the lock with it at once.
async fn fairlock_reader_shares_with_peer_reader(start: fn(&str) -> Peer) {
    let h = ZkHarness::new().await;
    let name = unique("rw-share-peer-first");
    let mut peer = start(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    let client = h.client().await;
    let rw = client.rw_lock(&name).unwrap();
    let tried = rw.reader().try_lock().await.unwrap();
    let tried = tried.expect("try_lock: a reader waits for the peer's reader");
    tried.release().await.unwrap();
    let guard = soon("a reader acquires next to the peer's", rw.reader().lock())
        .await
        .unwrap();
    // Both hold: the peer's node and ours.
    assert_eq!(h.entries(&name).await.len(), 2);
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    peer.release().await;
    eventually("queue empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// A fairlock reader holds; the peer's reader shares the lock with it at once.
async fn peer_reader_shares_with_fairlock_reader(start: fn(&str) -> Peer) {
    let h = ZkHarness::new().await;
    let name = unique("rw-share-fairlock-first");
    let client = h.client().await;
    let guard = client
        .rw_lock(&name)
        .unwrap()
        .reader()
        .lock()
        .await
        .unwrap();
    let mut peer = start(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    assert_eq!(h.entries(&name).await.len(), 2);
    assert!(!guard.is_lost());
    peer.release().await;
    guard.release().await.unwrap();
    eventually("queue empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// The peer holds; fairlock's lock (a mutex, a reader, a writer) does not get it while it
/// does: `try_lock` and a short `lock_timeout` give up, a waiter acquires only after the
/// peer releases.
async fn fairlock_waits_for_peer(start: fn(&str) -> Peer, lock_of: LockOf) {
    let h = ZkHarness::new().await;
    let name = unique("peer-holds");
    let mut peer = start(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    let client = h.client().await;
    let mutex = lock_of(&client, &name);
    assert!(
        mutex.try_lock().await.unwrap().is_none(),
        "try_lock took the lock next to the peer"
    );
    let timed = mutex
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        timed.is_none(),
        "lock_timeout took the lock next to the peer"
    );
    // Neither attempt leaves an entry: only the peer's is left.
    eventually("attempts gone", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "fairlock acquired the lock next to the peer"
    );
    peer.release().await;
    let guard = soon("fairlock acquires", waiter).await.unwrap();
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

/// fairlock's lock (a mutex, a writer, a reader) holds; the peer queues behind it and
/// acquires only after fairlock releases.
async fn peer_waits_for_fairlock(start: fn(&str) -> Peer, lock_of: LockOf) {
    let h = ZkHarness::new().await;
    let name = unique("fairlock-holds");
    let client = h.client().await;
    let guard = lock_of(&client, &name).lock().await.unwrap();
    let mut peer = start(&format!("{}/{name}", h.base()));
    eventually("peer queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(
        peer.silent_for(Duration::from_millis(500)).await,
        "the peer acquired the lock next to fairlock"
    );
    guard.release().await.unwrap();
    peer.said("acquired").await;
    peer.release().await;
    eventually("queue empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// The read-write scenarios above, with one peer's reader and writer.
macro_rules! rw_interop {
    ($peer:ident, $reader:expr, $writer:expr) => {
        mod $peer {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fairlock_reader_shares_with_peer_reader() {
                super::fairlock_reader_shares_with_peer_reader($reader).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peer_reader_shares_with_fairlock_reader() {
                super::peer_reader_shares_with_fairlock_reader($reader).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fairlock_reader_waits_for_peer_writer() {
                fairlock_waits_for_peer($writer, reader).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fairlock_writer_waits_for_peer_reader() {
                fairlock_waits_for_peer($reader, writer).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peer_reader_waits_for_fairlock_writer() {
                peer_waits_for_fairlock($reader, writer).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peer_writer_waits_for_fairlock_reader() {
                peer_waits_for_fairlock($writer, reader).await;
            }
        }
    };
}

rw_interop!(rw_curator, Peer::curator_reader, Peer::curator_writer);
rw_interop!(rw_kazoo, Peer::kazoo_reader, Peer::kazoo_writer);

/// fairlock leads; Curator's LeaderLatch waits, and leads once fairlock resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_latch_waits_for_fairlock() {
    let h = ZkHarness::new().await;
    let name = unique("latch-waits");
    let client = h.client().await;
    let election = client.election(&name).unwrap();
    let leading = election.campaign(b"fairlock").await.unwrap();
    let mut peer = Peer::leader_latch(&format!("{}/{name}", h.base()));
    eventually("latch queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(
        peer.silent_for(Duration::from_millis(500)).await,
        "LeaderLatch leads while fairlock does"
    );
    leading.resign().await.unwrap();
    peer.said("acquired").await;
    // fairlock sees Curator's participant id as the leader's value.
    let leader = election.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value, b"curator-peer");
    peer.release().await;
}

/// Curator's LeaderLatch leads; fairlock waits, and leads once the latch closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_leader_latch() {
    let h = ZkHarness::new().await;
    let name = unique("latch-leads");
    let mut peer = Peer::leader_latch(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    let client = h.client().await;
    let election = client.election(&name).unwrap();
    let campaign = tokio::spawn({
        let election = election.clone();
        async move { election.campaign(b"fairlock").await.unwrap() }
    });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !campaign.is_finished(),
        "fairlock leads while LeaderLatch does"
    );
    peer.release().await;
    let leading = soon("fairlock leads", campaign).await.unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().value, b"fairlock");
    leading.resign().await.unwrap();
}

// ---- faults: silent partitions, requests cut in flight ----

/// Under a silent partition every request ends at the request timeout: `lock()` and
/// `try_lock()` fail after a few request timeouts, long before the session could be
/// declared lost (2/5 of a 30 s session timeout), and leave no entry behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_ends_acquisitions_at_the_request_timeout() {
    let h = ZkHarness::new().await;
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=1s", h.url_via(&proxy.endpoint(), 30));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("partition-timeout");
    let mutex = client.mutex(&name).unwrap();

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the proxy go silent
    let started = Instant::now();
    let locked = soon("lock under a partition", mutex.lock()).await;
    let lock_took = started.elapsed();
    let started = Instant::now();
    let tried = soon("try_lock under a partition", mutex.try_lock()).await;
    let try_took = started.elapsed();
    assert!(locked.is_err(), "lock() succeeded under a partition");
    assert!(tried.is_err(), "try_lock() succeeded under a partition");
    // Session loss would come at 12 s; six request timeouts is generous and still tells.
    let bound = Duration::from_secs(6);
    assert!(lock_took < bound, "lock() took {lock_took:?}: {locked:?}");
    assert!(try_took < bound, "try_lock() took {try_took:?}: {tried:?}");
    assert!(!client.session_lost().is_lost(), "the session was lost");

    proxy.restore();
    // Whatever the cut-short create left is removed once the server is reachable again.
    eventually("no entry left", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    let guard = soon("lock after the partition", mutex.lock())
        .await
        .unwrap();
    guard.release().await.unwrap();
}

/// A holder cut off (as if paused) past its session timeout while writing: once its loss
/// is known, the write reports the lock lost, never a raw backend error. The write was
/// never sent, and the server does not have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_of_a_holder_cut_off_past_its_session_reports_lock_lost() {
    let h = ZkHarness::new().await;
    let proxy = Proxy::start(&h.endpoint()).await;
    // The connection is declared dead after 2/5 of 4 s; the request timeout is longer.
    let url = format!("{}&request_timeout=10s", h.url_via(&proxy.endpoint(), 4));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("paused-holder");
    let guard = Arc::new(client.mutex(&name).unwrap().lock().await.unwrap());
    let lost = guard.lost();
    let key = h.data_key(&name);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the proxy go silent
    let write = tokio::spawn({
        let (guard, key) = (guard.clone(), key.clone());
        async move { guard.guarded_write(&[WriteOp::put(key, "late")]).await }
    });
    // Past the session timeout: the server expires the session.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let result = soon("guarded write", write).await.unwrap();
    assert!(lost.is_lost(), "lost() did not fire");
    assert!(
        matches!(result, Err(Error::LockLost(_))),
        "expected LockLost, got {result:?}"
    );
    let stored = h.raw().get_data(&format!("/{key}")).await;
    assert!(
        matches!(stored, Err(zookeeper_client::Error::NoNode)),
        "a write reported lost was applied: {stored:?}"
    );
}

/// The own node's version, which every guarded write moves by one.
async fn own_version(h: &ZkHarness, guard: &fairlock::LockGuard) -> i32 {
    h.raw().get_data(guard.key()).await.unwrap().1.version
}

/// A guarded write whose connection breaks in flight is resolved by reading the own node's
/// version back: applied exactly once, whether the request reached the server or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_write_cut_in_flight_is_resolved_exactly_once() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=5s", h.url_via(&trap.endpoint(), 10));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("write-resolved");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = h.data_key(&name);
    let before = own_version(&h, &guard).await;

    // The server gets the multi-op; the connection closes before the answer.
    trap.arm(OP_MULTI, Cut::Close);
    let result = soon("write", guard.guarded_write(&[WriteOp::put(&key, "1")])).await;
    assert!(trap.sprung(), "the trap did not catch the write");
    assert!(result.is_ok(), "applied, then cut: {result:?}");
    assert_eq!(h.raw().get_data(&format!("/{key}")).await.unwrap().0, b"1");
    assert_eq!(own_version(&h, &guard).await, before + 1, "applied once");

    // The connection closes before the multi-op reaches the server: sent again.
    trap.arm(OP_MULTI, Cut::Swallow);
    let result = soon("write", guard.guarded_write(&[WriteOp::put(&key, "2")])).await;
    assert!(trap.sprung(), "the trap did not catch the write");
    assert!(
        result.is_ok(),
        "lost before the server, then sent again: {result:?}"
    );
    assert_eq!(h.raw().get_data(&format!("/{key}")).await.unwrap().0, b"2");
    assert_eq!(own_version(&h, &guard).await, before + 2, "applied once");

    assert!(!guard.is_lost());
    guard.release().await.unwrap();
}

/// A guarded write that went out and got no answer, with no way to read back in time, is
/// reported as of unknown outcome; and indeed it may have been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_write_without_an_answer_has_unknown_outcome() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    // The library declares a silent connection dead 2/5 of the TTL after the last answer:
    // 8 s, long after the 2 s request timeout (and the 2 s more spent trying to read back).
    let url = format!("{}&request_timeout=2s", h.url_via(&trap.endpoint(), 20));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("write-unknown");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = h.data_key(&name);

    // The connection closes right behind the multi-op, and the server stays out of reach.
    trap.arm(OP_MULTI, Cut::CloseAndSilence);
    let result = soon("write", guard.guarded_write(&[WriteOp::put(&key, "1")])).await;
    assert!(
        matches!(result, Err(Error::OutcomeUnknown { .. })),
        "connection lost in flight: expected OutcomeUnknown, got {result:?}"
    );
    trap.thaw();
    eventually("the unconfirmed write is applied", || async {
        matches!(h.raw().get_data(&format!("/{key}")).await, Ok((value, _)) if value == b"1")
    })
    .await;

    // The connection goes silent behind the multi-op: the server applies it, the answer
    // never comes.
    eventually("session confirmed again", || async {
        !client.is_suspended()
    })
    .await;
    trap.arm(OP_MULTI, Cut::Freeze);
    let result = soon("write", guard.guarded_write(&[WriteOp::put(&key, "2")])).await;
    assert!(
        matches!(result, Err(Error::OutcomeUnknown { .. })),
        "no answer in time: expected OutcomeUnknown, got {result:?}"
    );
    eventually("the unconfirmed write is applied", || async {
        matches!(h.raw().get_data(&format!("/{key}")).await, Ok((value, _)) if value == b"2")
    })
    .await;
    trap.thaw();

    // The session survives; a write that gets its answer succeeds.
    soon("write", guard.guarded_write(&[WriteOp::put(&key, "3")]))
        .await
        .unwrap();
    guard.release().await.unwrap();
}

/// A release whose delete is answered by nobody (the connection closes behind it) is
/// still a clean release: the retry finds the node gone, deleted by the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_cut_in_flight_is_a_clean_release() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=5s", h.url_via(&trap.endpoint(), 10));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("release-cut");
    // (lost() not armed: whether the entry watch reports the own delete as Released is
    // another matter, issue 8's defect 8.)
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    trap.arm(OP_DELETE, Cut::Close);
    let released = soon("release", guard.release()).await;
    assert!(trap.sprung(), "the trap did not catch the delete");
    assert!(released.is_ok(), "{released:?}");
    assert!(h.entries(&name).await.is_empty());
}

/// A read whose connection closes in flight (a server dying) is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_cut_in_flight_is_sent_again() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=5s", h.url_via(&trap.endpoint(), 10));
    let client = Client::connect(&url).await.unwrap();
    let key = h.data_key(&unique("read-cut"));
    client.put(&key, "x").await.unwrap();
    trap.arm(OP_GET_DATA, Cut::Close);
    let read = soon("get", client.get(&key)).await;
    assert!(trap.sprung(), "the trap did not catch the read");
    assert_eq!(read.unwrap().as_deref(), Some(&b"x"[..]));
}

/// `Client::put` and `Leadership::proclaim` without an answer: unknown outcome too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_proclaim_without_an_answer_have_unknown_outcome() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    // As above: the request timeout ends the wait long before the library would.
    let url = format!("{}&request_timeout=2s", h.url_via(&trap.endpoint(), 20));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("put-in-flight");
    let key = h.data_key(&name);
    client.put(&key, "0").await.unwrap();

    trap.arm(OP_SET_DATA, Cut::Freeze);
    let result = client.put(&key, "1").await;
    assert!(
        matches!(result, Err(Error::OutcomeUnknown { .. })),
        "put: expected OutcomeUnknown, got {result:?}"
    );
    trap.thaw();

    let mut leading = soon("campaign", client.election(&name).unwrap().campaign(b"a"))
        .await
        .unwrap();
    trap.arm(OP_SET_DATA, Cut::Freeze);
    let result = leading.proclaim(b"b").await;
    assert!(
        matches!(result, Err(Error::OutcomeUnknown { .. })),
        "proclaim: expected OutcomeUnknown, got {result:?}"
    );
    trap.thaw();
    soon("resign", leading.resign()).await.unwrap();
}

const OP_DELETE: i32 = 2;
const OP_GET_DATA: i32 = 4;
const OP_SET_DATA: i32 = 5;
const OP_MULTI: i32 = 14;

/// What a [`RequestTrap`] does to the connection that carries the trapped request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Forward the request, then close both sides: the client sees the connection lost.
    Close,
    /// Close both sides without forwarding the request.
    Swallow,
    /// Forward the request, then forward nothing more either way (sockets kept open) until
    /// `thaw`.
    Freeze,
    /// As `Close`, and leave new connections unanswered until `thaw`.
    CloseAndSilence,
}

/// A loopback proxy that reads ZooKeeper's framing from client to server: once armed, it
/// cuts the connection that carries the next request with the given opcode, so the
/// request is in flight when its connection goes.
struct RequestTrap {
    addr: SocketAddr,
    state: Arc<TrapState>,
}

#[derive(Default)]
struct TrapState {
    armed: Mutex<Option<(i32, Cut)>>,
    sprung: std::sync::atomic::AtomicBool,
    silent: std::sync::atomic::AtomicBool,
    held: Mutex<Vec<TcpStream>>,
}

impl RequestTrap {
    async fn start(upstream: &str) -> RequestTrap {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TrapState::default());
        let (upstream, state2) = (upstream.to_owned(), state.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if state2.silent.load(SeqCst) {
                    state2.held.lock().unwrap().push(client); // accepted, never answered
                    continue;
                }
                let (upstream, state) = (upstream.clone(), state2.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    let cut = {
                        let (mut client_rd, mut client_wr) = client.split();
                        let (mut server_rd, mut server_wr) = server.split();
                        let down = tokio::io::copy(&mut server_rd, &mut client_wr);
                        let up = forward_until_trapped(&mut client_rd, &mut server_wr, &state);
                        tokio::select! {
                            _ = down => None,
                            cut = up => cut,
                        }
                    };
                    match cut {
                        Some(Cut::Freeze) => state.held.lock().unwrap().extend([client, server]),
                        Some(Cut::CloseAndSilence) => state.silent.store(true, SeqCst),
                        _ => {} // both dropped: closed
                    }
                    if cut.is_some() {
                        state.sprung.store(true, SeqCst);
                    }
                });
            }
        });
        RequestTrap { addr, state }
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts the connection that carries the next request with `opcode`, as `cut` says.
    fn arm(&self, opcode: i32, cut: Cut) {
        self.state
            .sprung
            .store(false, std::sync::atomic::Ordering::SeqCst);
        *self.state.armed.lock().unwrap() = Some((opcode, cut));
    }

    /// Whether the armed trap caught its request.
    fn sprung(&self) -> bool {
        self.state.sprung.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers new connections again and closes the frozen or unanswered ones, so their
    /// clients reconnect.
    fn thaw(&self) {
        self.state
            .silent
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.state.held.lock().unwrap().clear();
    }
}

/// Forwards client frames (a 4-byte length, then the body; after the connect request each
/// body starts with xid and opcode) until one with the armed opcode comes; forwards that
/// one too unless the cut swallows it.
async fn forward_until_trapped(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    state: &TrapState,
) -> Option<Cut> {
    let mut first = true;
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        from.read_exact(&mut body).await.ok()?;
        let mut trapped = None;
        if !std::mem::take(&mut first) && body.len() >= 8 {
            let opcode = i32::from_be_bytes(body[4..8].try_into().unwrap());
            let mut armed = state.armed.lock().unwrap();
            if let Some((wanted, cut)) = *armed {
                if wanted == opcode {
                    *armed = None;
                    trapped = Some(cut);
                }
            }
        }
        if trapped == Some(Cut::Swallow) {
            return trapped;
        }
        to.write_all(&len).await.ok()?;
        to.write_all(&body).await.ok()?;
        to.flush().await.ok()?;
        if trapped.is_some() {
            return trapped;
        }
    }
}

/// A queue node deleted and created again (as ZooKeeper deletes empty containers) numbers
/// its children from 0 again: a later holder may carry a smaller sequence number than an
/// old sequencer's node. The queue node's czxid tells that it is newer: superseded.
#[tokio::test]
async fn check_sees_a_holder_of_a_recreated_queue_node_as_newer() {
    let h = ZkHarness::new().await;
    let (client, reader) = (h.client().await, h.client().await);
    let name = unique("check-recreated");
    let mutex = client.mutex(&name).unwrap();
    // Move the old holder's sequence number past the new one's first.
    for _ in 0..3 {
        mutex.lock().await.unwrap().release().await.unwrap();
    }
    let old = mutex.lock().await.unwrap();
    let sequencer = old.sequencer().clone();
    old.release().await.unwrap();
    h.raw()
        .delete(&format!("{}/{name}", h.base()), None)
        .await
        .unwrap();
    let new = mutex.lock().await.unwrap();
    assert!(new.key().ends_with("-lock-0000000000"), "{}", new.key());
    let status = reader.check(&sequencer).await.unwrap();
    assert_eq!(status, fairlock::SequencerStatus::Superseded);
    new.release().await.unwrap();
}

/// On ZooKeeper a lock and an election of one name are separate queues under one node:
/// each sequencer is checked against its own kind's queue, and a lock node passed off as
/// an election's is refused.
#[tokio::test]
async fn check_tells_lock_and_election_queues_apart() {
    let h = ZkHarness::new().await;
    let (a, b, reader) = (h.client().await, h.client().await, h.client().await);
    let name = unique("check-kinds");
    let lock = a.mutex(&name).unwrap().lock().await.unwrap();
    let leading = b.election(&name).unwrap().campaign(b"b").await.unwrap();
    for sequencer in [lock.sequencer(), leading.sequencer()] {
        let status = reader.check(sequencer).await.unwrap();
        assert_eq!(status, fairlock::SequencerStatus::Current, "{sequencer}");
    }
    let as_election: fairlock::Sequencer = lock
        .sequencer()
        .to_string()
        .replacen(":lock:", ":election:", 1)
        .parse()
        .unwrap();
    let checked = reader.check(&as_election).await;
    assert!(
        matches!(checked, Err(Error::InvalidSequencer { .. })),
        "{checked:?}"
    );
    lock.release().await.unwrap();
    leading.resign().await.unwrap();
}
