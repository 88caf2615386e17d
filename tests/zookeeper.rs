//! ZooKeeper-specific behaviour: Curator's node names, kazoo's nodes as contenders, real
//! Curator and kazoo peers in the same queue (both directions; mutexes, read-write locks,
//! LeaderLatch, kazoo's Semaphore), server-side limits.
#![cfg(feature = "zookeeper")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{eventually, soon, unique, zk_endpoint, zk_entries, Harness, ZkHarness};
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

    /// kazoo's Semaphore on `path` with `limit` leases, identifier "kazoo-peer".
    fn kazoo_semaphore(path: &str, limit: u32) -> Peer {
        Peer::kazoo_python(&[path, "semaphore", &limit.to_string()])
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

    /// Waits for the peer to report a failed acquisition ("failed: …") and to exit with an
    /// error; returns what it said.
    async fn failed(mut self) -> String {
        let line = soon("the peer's failure", self.lines.next_line())
            .await
            .unwrap();
        let line = line.expect("the peer said nothing");
        assert!(line.starts_with("failed: "), "{line}");
        let status = soon("peer exits", self.child.wait()).await.unwrap();
        assert!(
            !status.success(),
            "the peer failed, then exited with {status}"
        );
        line
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
    peer_waits_for_fairlock(Peer::curator, Target::Lock(mutex)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_curator() {
    fairlock_waits_for_peer(Peer::curator, Target::Lock(mutex)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_waits_for_fairlock() {
    peer_waits_for_fairlock(Peer::kazoo, Target::Lock(mutex)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_kazoo() {
    fairlock_waits_for_peer(Peer::kazoo, Target::Lock(mutex)).await;
}

// ---- read-write locks against the peers' read and write locks ----

/// A lock fairlock takes in a scenario: a mutex, or a read-write lock's side.
type LockOf = fn(&Client, &str) -> Arc<dyn DistributedMutex>;

/// What fairlock takes in a scenario against a peer.
#[derive(Clone, Copy)]
enum Target {
    /// A lock of one queue (a mutex, a read-write lock's side), which the peer's lock shares.
    Lock(LockOf),
    /// A semaphore of this limit, which the peer's kazoo Semaphore of the same limit
    /// shares: fairlock's holders fill the pool up with the peer's lease.
    Semaphore(u32),
}

impl Target {
    fn lock(self, client: &Client, name: &str) -> Arc<dyn DistributedMutex> {
        match self {
            Target::Lock(lock_of) => lock_of(client, name),
            Target::Semaphore(limit) => client.semaphore(name, limit).unwrap(),
        }
    }

    /// How many holders fairlock adds to one (the peer's, or its own first) to fill it.
    fn fill(self) -> usize {
        match self {
            Target::Lock(_) => 0,
            Target::Semaphore(limit) => limit as usize - 1,
        }
    }

    /// The nodes of `name`, sorted: a lock's queue nodes; a semaphore's leases and its
    /// gate's entries.
    async fn entries(self, h: &ZkHarness, name: &str) -> Vec<String> {
        match self {
            Target::Lock(_) => h.entries(name).await,
            Target::Semaphore(_) => semaphore_nodes(h, name).await,
        }
    }
}

/// Every child of the pool of semaphore `name` (kazoo counts them all as leases) and the
/// entries of its gate, sorted.
async fn semaphore_nodes(h: &ZkHarness, name: &str) -> Vec<String> {
    let mut nodes = leases(h, name).await;
    nodes.extend(gate_entries(h, name).await);
    nodes.sort();
    nodes
}

/// The children of the pool of semaphore `name`, sorted.
async fn leases(h: &ZkHarness, name: &str) -> Vec<String> {
    let pool = format!("{}/{name}", h.base());
    match h.raw().list_children(&pool).await {
        Ok(mut children) => {
            children.sort();
            children.iter().map(|c| format!("{pool}/{c}")).collect()
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list {pool}: {e}"),
    }
}

/// The entries of the gate of semaphore `name` (kazoo's `PATH-__lock__`), sorted.
async fn gate_entries(h: &ZkHarness, name: &str) -> Vec<String> {
    zk_entries(h.raw(), &format!("{}/{name}-__lock__", h.base())).await
}

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

/// The peer holds; fairlock's lock (a mutex, a reader, a writer; a semaphore, which
/// fairlock's own holders fill up) does not get it while it does: `try_lock` and a short
/// `lock_timeout` give up, a waiter acquires only after the peer releases.
async fn fairlock_waits_for_peer(start: fn(&str) -> Peer, target: Target) {
    let h = ZkHarness::new().await;
    let name = unique("peer-holds");
    let mut peer = start(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    let client = h.client().await;
    let mutex = target.lock(&client, &name);
    let mut fill = Vec::new();
    for _ in 0..target.fill() {
        fill.push(
            soon("a lease beside the peer's", mutex.lock())
                .await
                .unwrap(),
        );
    }
    let held = 1 + fill.len();
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
    // Neither attempt leaves an entry: only the holders' are left.
    eventually("attempts gone", || async {
        target.entries(&h, &name).await.len() == held
    })
    .await;
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("fairlock queued", || async {
        target.entries(&h, &name).await.len() == held + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "fairlock acquired the lock next to the peer"
    );
    peer.release().await;
    let guard = soon("fairlock acquires", waiter).await.unwrap();
    let mut expected: Vec<String> = fill.iter().map(|g| g.key().to_owned()).collect();
    expected.push(guard.key().to_owned());
    expected.sort();
    assert_eq!(target.entries(&h, &name).await, expected);
    guard.release().await.unwrap();
    for guard in fill {
        guard.release().await.unwrap();
    }
}

/// fairlock's lock (a mutex, a writer, a reader; a semaphore, which fairlock's holders
/// fill) holds; the peer queues behind it and acquires only after fairlock releases.
async fn peer_waits_for_fairlock(start: fn(&str) -> Peer, target: Target) {
    let h = ZkHarness::new().await;
    let name = unique("fairlock-holds");
    let client = h.client().await;
    let lock = target.lock(&client, &name);
    let guard = lock.lock().await.unwrap();
    let mut fill = Vec::new();
    for _ in 0..target.fill() {
        fill.push(lock.lock().await.unwrap());
    }
    let mut peer = start(&format!("{}/{name}", h.base()));
    eventually("peer queued", || async {
        target.entries(&h, &name).await.len() == 2 + fill.len()
    })
    .await;
    assert!(
        peer.silent_for(Duration::from_millis(500)).await,
        "the peer acquired the lock next to fairlock"
    );
    guard.release().await.unwrap();
    peer.said("acquired").await;
    peer.release().await;
    for guard in fill {
        guard.release().await.unwrap();
    }
    eventually("queue empty", || async {
        target.entries(&h, &name).await.is_empty()
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
                fairlock_waits_for_peer($writer, Target::Lock(reader)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fairlock_writer_waits_for_peer_reader() {
                fairlock_waits_for_peer($reader, Target::Lock(writer)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peer_reader_waits_for_fairlock_writer() {
                peer_waits_for_fairlock($reader, Target::Lock(writer)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn peer_writer_waits_for_fairlock_reader() {
                peer_waits_for_fairlock($writer, Target::Lock(reader)).await;
            }
        }
    };
}

rw_interop!(rw_curator, Peer::curator_reader, Peer::curator_writer);
rw_interop!(rw_kazoo, Peer::kazoo_reader, Peer::kazoo_writer);

// ---- semaphores: kazoo's Semaphore layout, against a real kazoo Semaphore ----

/// kazoo's Semaphore of 2 on `path`.
fn kazoo_semaphore_of_2(path: &str) -> Peer {
    Peer::kazoo_semaphore(path, 2)
}

/// A kazoo lease and a fairlock lease fill a semaphore of 2: a third is refused, and a
/// waiter gets the kazoo peer's lease once it releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_semaphore_waits_for_kazoo() {
    fairlock_waits_for_peer(kazoo_semaphore_of_2, Target::Semaphore(2)).await;
}

/// Two fairlock leases fill a semaphore of 2: kazoo waits (at the head of the gate) until
/// one is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_semaphore_waits_for_fairlock() {
    peer_waits_for_fairlock(kazoo_semaphore_of_2, Target::Semaphore(2)).await;
}

/// A kazoo holder killed: its lease goes with its session (kazoo's timeout is 10 s), and
/// the fairlock waiter at the gate takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_semaphore_takes_the_lease_of_a_killed_kazoo_peer() {
    let h = ZkHarness::new().await;
    let name = unique("sem-kazoo-killed");
    let mut peer = Peer::kazoo_semaphore(&format!("{}/{name}", h.base()), 1);
    peer.said("acquired").await;
    let client = h.client().await;
    let semaphore = client.semaphore(&name, 1).unwrap();
    let waiter = tokio::spawn(async move { semaphore.lock().await.unwrap() });
    eventually("fairlock at the gate", || async {
        gate_entries(&h, &name).await.len() == 1
    })
    .await;
    peer.child.kill().await.unwrap();
    let guard = soon("fairlock takes the killed peer's lease", waiter)
        .await
        .unwrap();
    assert_eq!(semaphore_nodes(&h, &name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

/// The pool, its leases and the gate are laid out as kazoo lays them out, and fairlock
/// lists and checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_nodes_are_laid_out_as_kazoo_lays_them_out() {
    let h = ZkHarness::new().await;
    let client = h.client().await.with_holder_value("fairlock-holder");
    let name = unique("sem-layout");
    let pool = format!("{}/{name}", h.base());
    let semaphore = client.semaphore(&name, 2).unwrap();
    let first = semaphore.lock().await.unwrap();
    // The pool: persistent, the limit in decimal.
    let (limit, stat) = h.raw().get_data(&pool).await.unwrap();
    assert_eq!(limit, b"2");
    assert_eq!(stat.ephemeral_owner, 0, "the pool is persistent");
    // A lease: `<uuid hex>`, ephemeral, the holder's value; the token is its czxid.
    let lease = first.key().strip_prefix(&format!("{pool}/")).unwrap();
    assert_eq!(lease.len(), 32, "{lease}");
    assert!(lease
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let (value, stat) = h.raw().get_data(first.key()).await.unwrap();
    assert_eq!(value, b"fairlock-holder");
    assert_eq!(format!("{:x}", stat.ephemeral_owner), client.session_id());
    assert_eq!(stat.czxid as u64, first.fencing_token());
    let second = semaphore.lock().await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    // A waiter: a node of kazoo's Lock at `PATH-__lock__`, `<uuid hex>__lock__<seq>`.
    let waiter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move { semaphore.lock().await.unwrap() }
    });
    eventually("the waiter at the gate", || async {
        gate_entries(&h, &name).await.len() == 1
    })
    .await;
    let gate = gate_entries(&h, &name).await.remove(0);
    let node = gate
        .strip_prefix(&format!("{pool}-__lock__/"))
        .expect("under PATH-__lock__");
    let (uuid, sequence) = node
        .split_once("__lock__")
        .expect("<uuid hex>__lock__<seq>");
    assert_eq!(uuid.len(), 32, "{uuid}");
    assert!(uuid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(sequence.len(), 10, "{sequence}");
    // Listed: the leases oldest first, the gate's entries; both leases' sequencers hold.
    let listed = client.semaphore_queue(&name).await.unwrap();
    let holders: Vec<&str> = listed.holders.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(holders, [first.key(), second.key()]);
    assert_eq!(listed.holders[0].value, b"fairlock-holder");
    assert_eq!(listed.holders[0].fencing_token, first.fencing_token());
    let waiters: Vec<&str> = listed.waiters.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(waiters, [gate.as_str()]);
    for guard in [&first, &second] {
        let status = client.check(guard.sequencer()).await.unwrap();
        assert_eq!(status, fairlock::SequencerStatus::Current);
    }
    // A lease passed off as a lock's queue node is refused.
    let as_lock: fairlock::Sequencer = first
        .sequencer()
        .to_string()
        .replacen(":semaphore:", ":lock:", 1)
        .parse()
        .unwrap();
    let checked = client.check(&as_lock).await;
    assert!(
        matches!(checked, Err(Error::InvalidSequencer { .. })),
        "{checked:?}"
    );
    let sequencer = first.sequencer().clone();
    first.release().await.unwrap();
    assert_eq!(
        client.check(&sequencer).await.unwrap(),
        fairlock::SequencerStatus::Lost
    );
    let third = soon("the waiter takes the released lease", waiter)
        .await
        .unwrap();
    assert!(gate_entries(&h, &name).await.is_empty());
    second.release().await.unwrap();
    third.release().await.unwrap();
    assert!(leases(&h, &name).await.is_empty());
    // The pool stays, with its limit, as kazoo's does.
    assert_eq!(h.raw().get_data(&pool).await.unwrap().0, b"2");
}

/// A pool that exists without a limit (kazoo creates it empty, then sets it) is given
/// fairlock's; data that is no number is left alone (kazoo ignores it, "maybe used for
/// other purposes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_stores_its_limit_in_an_empty_pool_only() {
    let h = ZkHarness::new().await;
    let client = h.client().await;
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    for (data, stored) in [(&b""[..], &b"3"[..]), (b"not a number", b"not a number")] {
        let name = unique("sem-empty-pool");
        let pool = format!("{}/{name}", h.base());
        h.raw().mkdir(&pool, &persistent).await.unwrap();
        h.raw().set_data(&pool, data, None).await.unwrap();
        let guard = client.semaphore(&name, 3).unwrap().lock().await.unwrap();
        assert_eq!(h.raw().get_data(&pool).await.unwrap().0, stored);
        guard.release().await.unwrap();
    }
}

/// kazoo stored a limit of 2: fairlock asking for 3 is refused, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_limit_stored_by_kazoo_is_enforced() {
    let h = ZkHarness::new().await;
    let name = unique("sem-kazoo-limit");
    let mut peer = Peer::kazoo_semaphore(&format!("{}/{name}", h.base()), 2);
    peer.said("acquired").await;
    let client = h.client().await;
    let peer_lease = leases(&h, &name).await;
    assert_eq!(peer_lease.len(), 1);
    let semaphore = client.semaphore(&name, 3).unwrap();
    for locked in [semaphore.lock().await.map(Some), semaphore.try_lock().await] {
        assert!(
            matches!(
                locked,
                Err(Error::LimitMismatch {
                    stored: 2,
                    requested: 3,
                    ..
                })
            ),
            "{locked:?}"
        );
    }
    assert_eq!(semaphore_nodes(&h, &name).await, peer_lease);
    // The same limit shares it.
    let guard = client
        .semaphore(&name, 2)
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let guard = guard.expect("room beside kazoo's lease");
    guard.release().await.unwrap();
    peer.release().await;
    assert!(semaphore_nodes(&h, &name).await.is_empty());
}

/// fairlock stored a limit of 2: kazoo asking for 3 fails (its ValueError) and leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_refuses_a_limit_stored_by_fairlock() {
    let h = ZkHarness::new().await;
    let name = unique("sem-fairlock-limit");
    let client = h.client().await;
    let guard = client.semaphore(&name, 2).unwrap().lock().await.unwrap();
    let peer = Peer::kazoo_semaphore(&format!("{}/{name}", h.base()), 3);
    let said = peer.failed().await;
    assert!(
        said.contains("ValueError") && said.contains("max leases"),
        "{said}"
    );
    assert_eq!(semaphore_nodes(&h, &name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

/// A cancelled waiter leaves neither its gate entry nor a lease: kazoo, queued behind it
/// at the gate, is next, and the pool holds only the holders' leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_semaphore_waiter_leaves_no_node_before_kazoo() {
    let h = ZkHarness::new().await;
    let name = unique("sem-cancel-kazoo");
    let path = format!("{}/{name}", h.base());
    let mut holder = Peer::kazoo_semaphore(&path, 2);
    holder.said("acquired").await;
    let client = h.client().await;
    let semaphore = client.semaphore(&name, 2).unwrap();
    let held = semaphore.lock().await.unwrap();
    let waiter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move { semaphore.lock().await.unwrap() }
    });
    eventually("fairlock at the gate", || async {
        gate_entries(&h, &name).await.len() == 1
    })
    .await;
    let ours = gate_entries(&h, &name).await;
    let mut queued = Peer::kazoo_semaphore(&path, 2);
    eventually("kazoo behind fairlock at the gate", || async {
        gate_entries(&h, &name).await.len() == 2
    })
    .await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    eventually("the cancelled waiter's gate entry removed", || async {
        let gate = gate_entries(&h, &name).await;
        gate.len() == 1 && gate != ours
    })
    .await;
    assert_eq!(leases(&h, &name).await.len(), 2, "only the holders' leases");
    assert!(
        queued.silent_for(Duration::from_millis(300)).await,
        "kazoo took a lease of a full pool"
    );
    held.release().await.unwrap();
    queued.said("acquired").await;
    assert!(gate_entries(&h, &name).await.is_empty());
    assert_eq!(leases(&h, &name).await.len(), 2);
    queued.release().await;
    holder.release().await;
    assert!(semaphore_nodes(&h, &name).await.is_empty());
}

/// One gate for both: a fairlock waiter queued behind a kazoo waiter (at the gate's head)
/// waits for it, and gets the next lease after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_gate_is_fifo_across_kazoo_and_fairlock() {
    let h = ZkHarness::new().await;
    let name = unique("sem-gate-fifo");
    let path = format!("{}/{name}", h.base());
    let mut holder = Peer::kazoo_semaphore(&path, 1);
    holder.said("acquired").await;
    let mut first = Peer::kazoo_semaphore(&path, 1);
    eventually("kazoo at the gate", || async {
        gate_entries(&h, &name).await.len() == 1
    })
    .await;
    let client = h.client().await;
    let semaphore = client.semaphore(&name, 1).unwrap();
    assert!(semaphore.try_lock().await.unwrap().is_none());
    let waiter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move { semaphore.lock().await.unwrap() }
    });
    eventually("fairlock behind kazoo at the gate", || async {
        gate_entries(&h, &name).await.len() == 2
    })
    .await;
    holder.release().await;
    first.said("acquired").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "fairlock overtook kazoo's waiter");
    first.release().await;
    let guard = soon("fairlock next", waiter).await.unwrap();
    assert_eq!(semaphore_nodes(&h, &name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

/// A semaphore of 1 held by one client, and another client's waiter at its gate's head.
struct HeadWaiting {
    held: fairlock::LockGuard,
    waiter: tokio::task::JoinHandle<fairlock::Result<fairlock::LockGuard>>,
    _clients: (Client, Client),
}

async fn head_waiting(h: &ZkHarness, name: &str) -> HeadWaiting {
    let (a, b) = (h.client().await, h.client().await);
    let held = a.semaphore(name, 1).unwrap().lock().await.unwrap();
    let semaphore = b.semaphore(name, 1).unwrap();
    let waiter = tokio::spawn(async move { semaphore.lock().await });
    eventually("the waiter at the gate", || async {
        gate_entries(h, name).await.len() == 1
    })
    .await;
    HeadWaiting {
        held,
        waiter,
        _clients: (a, b),
    }
}

/// A gate head whose gate node is gone (deleted from outside; or its session's) takes no
/// lease when one is freed: the lease's create checks the gate node, in one multi-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_gate_head_without_its_gate_node_takes_no_lease() {
    let h = ZkHarness::new().await;
    let name = unique("sem-gate-gone");
    let HeadWaiting { held, waiter, .. } = head_waiting(&h, &name).await;
    let gate = gate_entries(&h, &name).await.remove(0);
    h.raw().delete(&gate, None).await.unwrap();
    held.release().await.unwrap();
    let refused = soon("the waiter gives up", waiter).await.unwrap();
    assert!(
        matches!(refused, Err(Error::LockLost(_))),
        "{:?}",
        refused.map(|g| g.key().to_owned())
    );
    assert!(semaphore_nodes(&h, &name).await.is_empty());
}

/// The head of the gate checks the pool's limit once, not on every wake-up, but a limit
/// rewritten while it waits (kazoo sets the pool's data) is checked again when it wakes:
/// it is refused, and takes no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_waiter_checks_a_limit_rewritten_while_it_waits() {
    let h = ZkHarness::new().await;
    let name = unique("sem-limit-rewritten");
    let HeadWaiting { held, waiter, .. } = head_waiting(&h, &name).await;
    // Time to check the limit and watch the pool (a data write does not fire that watch;
    // a waiter not yet there reads the new limit at once, and the test proves less).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = format!("{}/{name}", h.base());
    h.raw().set_data(&pool, b"2", None).await.unwrap();
    held.release().await.unwrap();
    let refused = soon("the waiter wakes", waiter).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(Error::LimitMismatch {
                stored: 2,
                requested: 1,
                ..
            })
        ),
        "{:?}",
        refused.map(|g| g.key().to_owned())
    );
    assert!(semaphore_nodes(&h, &name).await.is_empty());
}

/// The gate entry's create and the lease's multi-op, each cut in flight (applied, then the
/// connection closes): each node is found again as this session's, and none is left twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_creates_cut_in_flight_are_found_again() {
    let h = ZkHarness::new().await;
    let trap = RequestTrap::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=5s", h.url_via(&trap.endpoint(), 10));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("sem-cut");
    let semaphore = client.semaphore(&name, 2).unwrap();
    // The gate and the pool exist: the next create is the gate entry's.
    semaphore.lock().await.unwrap().release().await.unwrap();

    trap.arm(OP_CREATE2, Cut::Close);
    let first = soon("lock", semaphore.lock()).await.unwrap();
    assert!(
        trap.sprung(),
        "the trap did not catch the gate entry's create"
    );
    assert!(gate_entries(&h, &name).await.is_empty());
    assert_eq!(leases(&h, &name).await, [first.key().to_owned()]);

    trap.arm(OP_MULTI, Cut::Close);
    let second = soon("lock", semaphore.lock()).await.unwrap();
    assert!(trap.sprung(), "the trap did not catch the lease's create");
    let (_, stat) = h.raw().get_data(second.key()).await.unwrap();
    assert_eq!(stat.czxid as u64, second.fencing_token());
    let mut both = vec![first.key().to_owned(), second.key().to_owned()];
    both.sort();
    assert_eq!(semaphore_nodes(&h, &name).await, both);
    first.release().await.unwrap();
    second.release().await.unwrap();
    assert!(semaphore_nodes(&h, &name).await.is_empty());
}

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
const OP_CREATE2: i32 = 15;

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
