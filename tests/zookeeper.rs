//! ZooKeeper-specific behaviour: Curator's node names, kazoo's nodes as contenders, real
//! Curator and kazoo peers in the same queue (both directions), server-side limits.
#![cfg(feature = "zookeeper")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, soon, unique, zk_endpoint, Harness, ZkHarness};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
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

    fn kazoo(lock_path: &str) -> Peer {
        let python = repo().join(".services/venv/bin/python");
        assert!(
            python.exists(),
            "the kazoo peer is missing: run scripts/peers"
        );
        let mut cmd = Command::new(python);
        cmd.arg(repo().join("tests/peers/kazoo_peer.py"))
            .args([&zk_endpoint(), lock_path]);
        Peer::spawn(cmd)
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

/// fairlock holds; the peer queues behind it and acquires only after fairlock releases.
async fn peer_waits_for_fairlock(start: fn(&str) -> Peer) {
    let h = ZkHarness::new().await;
    let name = unique("interop-waits");
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let mut peer = start(&format!("{}/{name}", h.base()));
    eventually("peer queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(
        peer.silent_for(Duration::from_millis(500)).await,
        "the peer acquired a lock fairlock holds"
    );
    guard.release().await.unwrap();
    peer.said("acquired").await;
    peer.release().await;
    eventually("queue empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// The peer holds; fairlock queues behind it and acquires only after the peer releases.
async fn fairlock_waits_for_peer(start: fn(&str) -> Peer) {
    let h = ZkHarness::new().await;
    let name = unique("interop-holds");
    let mut peer = start(&format!("{}/{name}", h.base()));
    peer.said("acquired").await;
    let client = h.client().await;
    let mutex = client.mutex(&name).unwrap();
    assert!(
        mutex.try_lock().await.unwrap().is_none(),
        "try_lock took the peer's lock"
    );
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "fairlock acquired a lock the peer holds"
    );
    peer.release().await;
    let guard = soon("fairlock acquires", waiter).await.unwrap();
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_waits_for_fairlock() {
    peer_waits_for_fairlock(Peer::curator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_curator() {
    fairlock_waits_for_peer(Peer::curator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_waits_for_fairlock() {
    peer_waits_for_fairlock(Peer::kazoo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_kazoo() {
    fairlock_waits_for_peer(Peer::kazoo).await;
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
