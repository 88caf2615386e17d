//! etcd-specific behaviour: the key layout shared with `etcdctl lock`, interoperability in
//! both directions, server-side limits and unreachable endpoints.
#![cfg(feature = "etcd")]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{etcd_endpoint, eventually, soon, unique, EtcdHarness, Harness, SOON};
use fairlock::{Client, Error};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

fn etcdctl() -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(etcd_endpoint())
        .kill_on_drop(true);
    cmd
}

/// A client of `h` that reaches etcd through a proxy of its own, for the test to cut or
/// slow down.
async fn client_via_proxy(h: &EtcdHarness) -> (common::proxy::Proxy, Client) {
    let proxy = common::proxy::Proxy::start(&etcd_endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    (proxy, client)
}

/// `client` waiting for lock `name` in a task, once its entry is second in the queue.
async fn queued_waiter(
    h: &EtcdHarness,
    client: &Client,
    name: &str,
) -> tokio::task::JoinHandle<fairlock::LockGuard> {
    let mutex = client.mutex(name).unwrap();
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("waiter queued", || async {
        h.entries(name).await.len() == 2
    })
    .await;
    waiter
}

/// Starts `etcdctl lock PREFIX/NAME echo peer-acquired` behind the `ahead` entries of lock
/// `name`'s queue, and returns it once it is queued and still waits a few hundred ms later.
///
/// etcdctl (Go's `concurrency.Mutex`) gives up, saying "required revision has been
/// compacted", when a compaction (other tests make them) falls between its read of the
/// queue and the start of its watch on the key ahead of it. Such a run shows nothing either
/// way: `None`, for the caller to start another. Any other end fails the test.
async fn etcdctl_lock_waiting(h: &EtcdHarness, name: &str, ahead: usize) -> Option<Child> {
    let mut peer = etcdctl()
        .args([
            "lock",
            &format!("{}/{name}", h.prefix()),
            "echo",
            "peer-acquired",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let deadline = Instant::now() + SOON;
    let mut queued: Option<Instant> = None;
    while peer.try_wait().unwrap().is_none() {
        match queued {
            Some(at) if at.elapsed() >= Duration::from_millis(300) => return Some(peer),
            None if h.entries(name).await.len() == ahead + 1 => queued = Some(Instant::now()),
            _ => assert!(Instant::now() < deadline, "timed out: etcdctl queues"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = peer.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains("peer-acquired"),
        "etcdctl acquired a held lock"
    );
    assert!(
        stderr.contains("required revision has been compacted"),
        "etcdctl failed ({}): {stderr}",
        out.status
    );
    None
}

/// `etcdctl lock PREFIX/NAME`, holding: the process and the key it printed (etcdctl prints
/// its key once it holds the lock). SIGINT makes it release and end.
async fn etcdctl_holding(h: &EtcdHarness, name: &str) -> (Child, String) {
    let mut peer = etcdctl()
        .args(["lock", &format!("{}/{name}", h.prefix())])
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    let key = soon("etcdctl acquires", lines.next_line())
        .await
        .unwrap()
        .expect("etcdctl ended without the lock");
    assert!(key.starts_with(&format!("{}/{name}/", h.prefix())), "{key}");
    (peer, key)
}

/// `etcdctl lock … echo peer-acquired`, queued behind `ahead` entries and still waiting;
/// started again when a compaction made it give up (at most ten times).
async fn queued_etcdctl(h: &EtcdHarness, name: &str, ahead: usize) -> Child {
    for _ in 0..10 {
        if let Some(peer) = etcdctl_lock_waiting(h, name, ahead).await {
            return peer;
        }
    }
    panic!("etcdctl failed on compactions ten times");
}

#[tokio::test]
async fn keys_follow_the_etcdctl_layout() {
    let h = EtcdHarness::new().await;
    let client = h.client().await;
    let name = unique("layout");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let expected = format!("{}/{name}/{}-", h.prefix(), client.session_id());
    assert!(
        guard.key().starts_with(&expected),
        "{} !~ {expected}",
        guard.key()
    );
    // The token is the key's create revision, as etcd reports it.
    let resp = h.raw().kv_client().get(guard.key(), None).await.unwrap();
    assert_eq!(
        resp.kvs()[0].create_revision() as u64,
        guard.fencing_token()
    );
    assert_eq!(
        client
            .queue(&name, fairlock::QueueKind::Lock)
            .await
            .unwrap()[0]
            .fencing_token,
        guard.fencing_token()
    );
    guard.release().await.unwrap();
}

/// fairlock holds; `etcdctl lock` queues behind it and gets the lock only after release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_waits_for_fairlock() {
    let h = EtcdHarness::new().await;
    let name = unique("interop-a");
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    // Queued behind us, it must still be waiting.
    let peer = queued_etcdctl(&h, &name, 1).await;
    guard.release().await.unwrap();
    let out = soon("etcdctl acquires", peer.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "peer-acquired");
    eventually("etcdctl released", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// `etcdctl lock` holds; fairlock queues behind it and gets the lock only after release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_etcdctl() {
    let h = EtcdHarness::new().await;
    let name = unique("interop-b");
    let mut peer = etcdctl_holding(&h, &name).await.0;

    let client = h.client().await;
    let waiter = queued_waiter(&h, &client, &name).await;
    assert!(
        !waiter.is_finished(),
        "fairlock acquired a lock etcdctl holds"
    );

    // etcdctl releases (revokes its session) on SIGINT.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(peer.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let guard = soon("fairlock acquires", waiter).await.unwrap();
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
    let _ = peer.wait().await;
}

/// `etcdctl lock` holds; a fairlock reader waits for it (its key `NAME/<lease hex>` is a
/// writer's, and sorts before the readers' `NAME/read-…`) and reads once etcdctl ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_reader_waits_for_etcdctl() {
    let h = EtcdHarness::new().await;
    let name = unique("rw-etcdctl-holds");
    let (mut peer, peer_key) = etcdctl_holding(&h, &name).await;

    let client = h.client().await;
    let reader = Arc::clone(client.rw_lock(&name).unwrap().reader());
    assert!(
        reader.try_lock().await.unwrap().is_none(),
        "a reader took the lock etcdctl holds"
    );
    // The refused attempt leaves no entry: only etcdctl's is left.
    eventually("attempt gone", || async {
        h.entries(&name).await == [peer_key.clone()]
    })
    .await;
    let waiter = tokio::spawn(async move { reader.lock().await.unwrap() });
    eventually("reader queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a reader acquired the lock etcdctl holds"
    );

    // etcdctl releases (revokes its session) on SIGINT, and ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(peer.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let guard = soon("reader acquires", waiter).await.unwrap();
    assert!(
        guard
            .key()
            .starts_with(&format!("{}/{name}/read-", h.prefix())),
        "{}",
        guard.key()
    );
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
    let _ = soon("etcdctl exits", peer.wait()).await;
}

/// A fairlock reader holds; `etcdctl lock`, a writer to it, queues behind it and gets the
/// lock only after the reader releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_etcdctl_waits_for_reader() {
    let h = EtcdHarness::new().await;
    let name = unique("rw-reader-holds");
    let client = h.client().await;
    let guard = client
        .rw_lock(&name)
        .unwrap()
        .reader()
        .lock()
        .await
        .unwrap();
    assert!(
        guard
            .key()
            .starts_with(&format!("{}/{name}/read-", h.prefix())),
        "{}",
        guard.key()
    );

    let peer = queued_etcdctl(&h, &name, 1).await;

    guard.release().await.unwrap();
    let out = soon("etcdctl acquires", peer.wait_with_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "peer-acquired");
    eventually("etcdctl released", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// Release is guarded by create revision: a guard never deletes a newer key at its path.
#[tokio::test]
async fn release_after_loss_does_not_touch_a_newer_key() {
    let h = EtcdHarness::new().await;
    let client = h.client().await;
    let name = unique("guarded-release");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = guard.key().to_owned();
    h.delete_entry(&key).await;
    soon("lost", guard.lost()).await;
    // Someone re-creates a key at the same path (as a retried blind put could).
    h.raw()
        .kv_client()
        .put(key.as_str(), "newer", None)
        .await
        .unwrap();
    assert!(matches!(guard.release().await, Err(Error::LockLost(_))));
    let resp = h.raw().kv_client().get(key.as_str(), None).await.unwrap();
    assert_eq!(
        resp.kvs().len(),
        1,
        "release deleted a key it did not create"
    );
    h.raw()
        .kv_client()
        .delete(key.as_str(), None)
        .await
        .unwrap();
}

/// The waiter's watch stream breaks while its predecessor is deleted, and the history is
/// compacted past that deletion before the stream comes back: the waiter still acquires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_survives_a_broken_watch_stream_and_compaction() {
    let h = EtcdHarness::new().await;
    let name = unique("rewatch");
    let holder = h.client().await;
    let guard = holder.mutex(&name).unwrap().lock().await.unwrap();

    let (proxy, waiter_client) = client_via_proxy(&h).await;
    let waiter = queued_waiter(&h, &waiter_client, &name).await;
    // Let the enqueue's answer arrive (a cut would break that request) and the watch be
    // created.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.cut();
    guard.release().await.unwrap();
    let revision = h
        .raw()
        .kv_client()
        .get("any", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    h.raw().kv_client().compact(revision, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter heard through a cut connection"
    );
    proxy.restore();

    let guard = soon("waiter acquires after the stream is back", waiter)
        .await
        .unwrap();
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
}

/// A semaphore's waiter, at the head of its gate, watches the full pool. Its watch stream
/// breaks while a lease is released, and the history is compacted past that deletion
/// before the stream comes back: the waiter still takes the freed lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_waiter_survives_a_broken_watch_stream_and_compaction() {
    let h = EtcdHarness::new().await;
    let name = unique("sem-rewatch");
    let holder = h.client().await;
    let guard = holder.semaphore(&name, 1).unwrap().lock().await.unwrap();

    let (proxy, waiter_client) = client_via_proxy(&h).await;
    let semaphore = waiter_client.semaphore(&name, 1).unwrap();
    let waiter = tokio::spawn(async move { semaphore.lock().await.unwrap() });
    let gate = format!("{name}-__lock__");
    eventually("waiter at the gate", || async {
        h.entries(&gate).await.len() == 1
    })
    .await;
    // Let the pool's read be answered and its watch be created.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.cut();
    guard.release().await.unwrap();
    compact_now(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter heard through a cut connection"
    );
    proxy.restore();

    let lease = soon("waiter takes the lease after the stream is back", waiter)
        .await
        .unwrap();
    assert!(!lease.is_lost());
    assert_eq!(h.entries(&name).await, [lease.key().to_owned()]);
    lease.release().await.unwrap();
    assert!(h.entries(&gate).await.is_empty());
}

/// Everything under `prefix`, read with `options` (and `with_prefix`) by the raw client.
async fn get_prefix(
    h: &EtcdHarness,
    prefix: &str,
    options: etcd_client::GetOptions,
) -> etcd_client::GetResponse {
    let mut kv = h.raw().kv_client();
    kv.get(prefix, Some(options.with_prefix())).await.unwrap()
}

/// Waiters that never got to create a lease (timed out, or cancelled, at the head of the
/// gate of a full pool; refused for another limit) write nothing for it: no withdrawal
/// marker is left beside the pool on their sessions' leases, however often they try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_waiters_that_sent_no_lease_leave_no_marker() {
    let h = EtcdHarness::new().await;
    let name = unique("sem-no-marker");
    let holder = h.client().await;
    let guard = holder.semaphore(&name, 1).unwrap().lock().await.unwrap();
    let client = h.client().await;
    let semaphore = client.semaphore(&name, 1).unwrap();
    for _ in 0..3 {
        let waited = semaphore.lock_timeout(Duration::from_millis(300)).await;
        assert!(matches!(waited, Ok(None)), "{:?}", waited.map(|_| ()));
        let cancelled = tokio::time::timeout(Duration::from_millis(300), semaphore.lock()).await;
        assert!(cancelled.is_err(), "the waiter was admitted to a full pool");
    }
    let refused = client.semaphore(&name, 2).unwrap().lock().await;
    assert!(matches!(refused, Err(Error::LimitMismatch { .. })));
    // Everything of the semaphore: the pool key, its leases, its gate and anything beside
    // them (`PREFIX/NAME<NUL>withdrawn/...` markers).
    let pool = format!("{}/{name}", h.prefix());
    eventually("only the limit and the holder's lease", || async {
        let found = get_prefix(&h, &pool, etcd_client::GetOptions::new().with_keys_only()).await;
        let keys: Vec<String> = (found.kvs().iter())
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        keys == [pool.clone(), guard.key().to_owned()]
    })
    .await;
    guard.release().await.unwrap();
}

/// fairlock leads; `etcdctl elect` campaigns behind it and leads once fairlock resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_waits_for_fairlock() {
    let h = EtcdHarness::new().await;
    let name = unique("elect-a");
    let client = h.client().await;
    let leading = client
        .election(&name)
        .unwrap()
        .campaign(b"fair")
        .await
        .unwrap();
    let mut peer = etcdctl()
        .args(["elect", &format!("{}/{name}", h.prefix()), "peer"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    eventually("etcdctl queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await;
    assert!(early.is_err(), "etcdctl leads while fairlock does");
    leading.resign().await.unwrap();
    let key = soon("etcdctl leads", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(key.starts_with(&format!("{}/{name}/", h.prefix())));
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("peer"));
    let leader = client
        .election(&name)
        .unwrap()
        .leader()
        .await
        .unwrap()
        .unwrap();
    assert_eq!((leader.key, leader.value), (key, b"peer".to_vec()));
    // etcdctl resigns (revokes its session) on SIGINT; SIGKILL would leave its key for
    // etcdctl's 60 s TTL.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(peer.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    soon("etcdctl exits", peer.wait()).await.unwrap();
    eventually("election empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// `etcdctl elect` leads; fairlock campaigns behind it and leads once etcdctl resigns, and
/// `etcdctl elect -l` observes fairlock's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairlock_waits_for_etcdctl_elect_and_is_observed() {
    let h = EtcdHarness::new().await;
    let name = unique("elect-b");
    let election_path = format!("{}/{name}", h.prefix());
    let mut peer = etcdctl()
        .args(["elect", &election_path, "peer"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    soon("etcdctl leads", lines.next_line())
        .await
        .unwrap()
        .unwrap();

    let mut observer = etcdctl()
        .args(["elect", "-l", &election_path])
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl");
    let mut observed = BufReader::new(observer.stdout.take().unwrap()).lines();
    type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;
    async fn next_value(observed: &mut Lines) -> String {
        let _key = soon("observed key", observed.next_line()).await.unwrap();
        soon("observed value", observed.next_line())
            .await
            .unwrap()
            .unwrap()
    }
    assert_eq!(next_value(&mut observed).await, "peer");

    let client = h.client().await;
    let election = client.election(&name).unwrap();
    let campaign = tokio::spawn(async move { election.campaign(b"fair").await.unwrap() });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(!campaign.is_finished(), "fairlock leads while etcdctl does");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(peer.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut leading = soon("fairlock leads", campaign).await.unwrap();
    assert_eq!(next_value(&mut observed).await, "fair");
    leading.proclaim(b"fair-2").await.unwrap();
    assert_eq!(next_value(&mut observed).await, "fair-2");
    leading.resign().await.unwrap();
    let _ = observer.kill().await;
    let _ = peer.wait().await;
    eventually("election empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// Writes once and compacts the store at that write's revision, so that the history of
/// everything before it is gone (someone else compacting further is fine).
async fn compact_now(h: &EtcdHarness) -> i64 {
    let mut kv = h.raw().kv_client();
    let junk = h.data_key("compaction");
    let revision = kv
        .put(junk, "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    if let Err(e) = kv.compact(revision, None).await {
        assert!(e.to_string().contains("compacted"), "compact: {e}");
    }
    revision
}

/// One hand-off through `client`: a waiter there wakes when `holder` releases.
async fn wake_through(h: &EtcdHarness, holder: &Client, client: &Client) {
    let name = unique("wake");
    let guard = holder.mutex(&name).unwrap().lock().await.unwrap();
    let waiter = queued_waiter(h, client, &name).await;
    guard.release().await.unwrap();
    let woke = soon("waiter wakes", waiter).await.unwrap();
    woke.release().await.unwrap();
}

/// After a stream break whose watches' start revisions were compacted, the hub re-creates
/// them; a waiter still wakes and a holder still hears its key deleted. (etcd keeps a
/// compacted watch's id on the stream until the client cancels it, and refuses a new watch
/// with the same id.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recreated_after_compaction_still_fire() {
    let h = EtcdHarness::new().await;
    let (name, own) = (unique("recreate"), unique("recreate-own"));
    let holder = h.client().await;
    let guard = holder.mutex(&name).unwrap().lock().await.unwrap();

    let (proxy, client) = client_via_proxy(&h).await;
    let held = client.mutex(&own).unwrap().lock().await.unwrap();
    assert!(!held.is_lost()); // arms the own-key watch
    let waiter = queued_waiter(&h, &client, &name).await;
    // Its watch is created just after the enqueue's answer arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.cut();
    compact_now(&h).await;
    proxy.restore();
    // A hand-off through the client proves its stream is back; the re-created watches were
    // answered (compacted, within the server's 100 ms sync loop) and re-created again by
    // the time a second while has passed.
    wake_through(&h, &holder, &client).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wake_through(&h, &holder, &client).await;
    assert!(!waiter.is_finished() && !held.is_lost());

    guard.release().await.unwrap();
    let acquired = soon("the waiter acquires", waiter).await.unwrap();
    h.delete_entry(held.key()).await;
    soon("the holder hears its key deleted", held.lost()).await;
    acquired.release().await.unwrap();
}

/// A peer locking as Go's `concurrency.Mutex` and `etcdctl lock` do: one key,
/// `NAME/<lease hex>`, reused for every Lock of its session.
struct GoPeer {
    raw: etcd_client::Client,
    lease: i64,
    key: String,
}

impl GoPeer {
    async fn new(h: &EtcdHarness, name: &str) -> Self {
        let raw = h.raw();
        let lease = raw.lease_client().grant(60, None).await.unwrap().id();
        let key = format!("{}/{name}/{lease:x}", h.prefix());
        GoPeer { raw, lease, key }
    }

    async fn lock(&self) {
        let options = etcd_client::PutOptions::new().with_lease(self.lease);
        let mut kv = self.raw.kv_client();
        kv.put(self.key.as_str(), "", Some(options)).await.unwrap();
    }

    async fn unlock(&self) {
        let mut kv = self.raw.kv_client();
        kv.delete(self.key.as_str(), None).await.unwrap();
    }

    /// The create revision of its key now.
    async fn created(&self) -> u64 {
        let mut kv = self.raw.kv_client();
        let got = kv.get(self.key.as_str(), None).await.unwrap();
        got.kvs()[0].create_revision() as u64
    }

    async fn end(&self) {
        self.raw.lease_client().revoke(self.lease).await.unwrap();
    }
}

/// Go's Mutex and `etcdctl lock` reuse the key NAME/<lease hex> on every Lock. A peer that
/// unlocks and locks again between our enqueue and our watch's creation has a key of the
/// same name *behind* ours: we hold the lock (waiting on it would deadlock with the peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_style_peer_relocking_its_key_is_behind_us() {
    let h = EtcdHarness::new().await;
    let name = unique("go-relock");
    let peer = GoPeer::new(&h, &name).await;
    peer.lock().await;

    let (proxy, client) = client_via_proxy(&h).await;
    // Our requests reach the server a second late: our watch is created long after our
    // enqueue.
    proxy.delay(Duration::from_secs(1), Duration::ZERO);
    let waiter = queued_waiter(&h, &client, &name).await;
    peer.unlock().await;
    peer.lock().await;

    let guard = soon("we hold: the peer's new key is behind ours", waiter)
        .await
        .unwrap();
    assert!(peer.created().await > guard.fencing_token());
    proxy.delay(Duration::ZERO, Duration::ZERO);
    guard.release().await.unwrap();
    peer.end().await;
}

/// Many watches need a read after a reconnect (their start revision was compacted) while
/// every request of the client crawls over a slow line: reading them one after another
/// would hold up every other waiter of the client for N round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_resync_reads_do_not_stall_other_waiters() {
    const WAITERS: usize = 100;
    let h = EtcdHarness::new().await;
    let holder = h.client().await;
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..WAITERS {
        let name = unique("stall");
        held.push(holder.mutex(&name).unwrap().lock().await.unwrap());
        names.push(name);
    }
    let (proxy, client) = client_via_proxy(&h).await;
    // A round trip through the proxy takes at least 300 ms: 100 reads in a row, 30 s.
    proxy.delay(Duration::from_millis(150), Duration::from_millis(150));
    let mut waiters = Vec::new();
    for name in &names {
        let mutex = client.mutex(name).unwrap();
        waiters.push(tokio::spawn(async move { mutex.lock().await }));
    }
    let prefix = format!("{}/", h.prefix());
    let count = || async {
        let options = etcd_client::GetOptions::new().with_count_only();
        get_prefix(&h, &prefix, options).await.count() as usize
    };
    eventually("all queued", || async { count().await == 2 * WAITERS }).await;
    // Their watches are created half a round trip after the enqueue's answer arrived.
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.cut();
    compact_now(&h).await;
    proxy.restore();

    let name = unique("stall-other");
    let guard = holder.mutex(&name).unwrap().lock().await.unwrap();
    let waiter = queued_waiter(&h, &client, &name).await;
    // By now its watch exists, and the server has long answered the re-created ones
    // (compacted): the release's event reaches the client behind those answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    guard.release().await.unwrap();
    let acquired = soon("the other waiter wakes", waiter).await.unwrap();
    for w in &mut waiters {
        if w.is_finished() {
            panic!(
                "a waiter ended: {:?}",
                w.await.unwrap().map(|g| g.key().to_owned())
            );
        }
    }
    proxy.delay(Duration::ZERO, Duration::ZERO);
    acquired.release().await.unwrap();
    for w in waiters {
        w.abort();
    }
    holder.close().await.unwrap();
    client.close().await.unwrap();
}

/// etcd cancels observe()'s watch each time (its start revision compacted before the watch
/// arrives): observe re-reads, but backs off instead of re-reading in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_backs_off_when_its_watch_keeps_being_cancelled() {
    use futures::StreamExt;
    let h = EtcdHarness::new().await;
    let (proxy, client) = client_via_proxy(&h).await;
    // Requests reach the server 300 ms late: after each read of the head, two writes and a
    // compaction past them land before the watch that follows the read.
    proxy.delay(Duration::from_millis(300), Duration::ZERO);
    let junk = h.data_key(&unique("junk"));
    // The counter is process-wide: no other test of this binary uses observe().
    let start = fairlock::stats().head_reads;
    let mut observed = client
        .election(&unique("observe-cancel"))
        .unwrap()
        .observe();
    let drain = tokio::spawn(async move {
        let first = observed.next().await.unwrap();
        assert!(first.unwrap().is_none());
        while observed.next().await.is_some() {}
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < until {
        let seen = fairlock::stats().head_reads;
        while fairlock::stats().head_reads == seen && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut kv = h.raw().kv_client();
        kv.put(junk.as_str(), "1", None).await.unwrap();
        kv.put(junk.as_str(), "2", None).await.unwrap();
        compact_now(&h).await;
    }
    let reads = fairlock::stats().head_reads - start;
    eprintln!("observe read its head {reads} times in 15 s");
    // Without backing off: a read every 600 ms (25). With it: 7 or so.
    assert!(reads <= 12, "observe read its head {reads} times in 15 s");
    assert!(reads >= 2, "the watch was not cancelled ({reads} reads)");
    drain.abort();
    proxy.delay(Duration::ZERO, Duration::ZERO);
    client.close().await.unwrap();
}

/// As above, but the peer re-locks while our watch stream is down and the history of its
/// old key is compacted: the read that replaces the lost history must see a new entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_style_peer_relocking_during_an_outage_is_behind_us() {
    let h = EtcdHarness::new().await;
    let name = unique("go-relock-outage");
    let peer = GoPeer::new(&h, &name).await;
    peer.lock().await;

    let (proxy, client) = client_via_proxy(&h).await;
    let waiter = queued_waiter(&h, &client, &name).await;
    // Its watch is created just after the enqueue's answer arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.cut();
    peer.unlock().await;
    peer.lock().await;
    compact_now(&h).await;
    proxy.restore();

    let guard = soon("we hold: the peer's new key is behind ours", waiter)
        .await
        .unwrap();
    assert!(peer.created().await > guard.fencing_token());
    guard.release().await.unwrap();
    peer.end().await;
}

/// A guarded write whose answer is lost (the connection breaks after etcd applied it) is
/// sent again and recognised as applied: `Ok`, written exactly once, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_write_whose_answer_was_lost_is_applied_once() {
    let h = EtcdHarness::new().await;
    let proxy = common::proxy::Proxy::start(&etcd_endpoint()).await;
    let url = format!("{}&request_timeout=10s", h.url_via(&proxy.endpoint(), 30));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("lost-answer");
    let key = h.data_key(&name);
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();

    // Requests still reach etcd; answers are held back (and dropped below).
    proxy.delay(Duration::ZERO, Duration::from_secs(3600));
    let write = {
        let key = key.clone();
        tokio::spawn(async move {
            let written = guard
                .guarded_write(&[fairlock::WriteOp::put(key, "1")])
                .await;
            (written, guard)
        })
    };
    let raw = h.raw();
    eventually("etcd applied the write", || {
        let (mut kv, key) = (raw.kv_client(), key.clone());
        async move { !kv.get(key, None).await.unwrap().kvs().is_empty() }
    })
    .await;
    proxy.delay(Duration::ZERO, Duration::ZERO);
    proxy.cut();
    proxy.restore(); // the held answers go with the closed connections

    let (written, guard) = soon("the guarded write", write).await.unwrap();
    assert!(written.is_ok(), "{written:?}");
    let stored = raw.kv_client().get(key.clone(), None).await.unwrap();
    assert_eq!(stored.kvs()[0].version(), 1, "applied more than once");
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// A guarded write whose outcome stayed unknown, applied by etcd late, is not taken for the
/// next write of the same guard. Found by the simulator (fairlock-sim, seed 17): the next
/// write was acknowledged but never applied, because a late older write had moved the
/// revision it compared. Here the first write's requests are held back beyond the request
/// timeout (OutcomeUnknown) and reach etcd just before the second's, on the same
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_is_not_taken_for_the_next_one() {
    let h = EtcdHarness::new().await;
    let proxy = common::proxy::Proxy::start(&etcd_endpoint()).await;
    // Margins for a slow machine: the first write's attempts (hedged every 500 ms, the last
    // sent at 1.5 s) reach etcd at 5 to 6.5 s, after its 4 s timeout; the second write, from
    // 4 s, has until 8 s although its attempts queue behind them.
    let url = format!("{}&request_timeout=4s", h.url_via(&proxy.endpoint(), 30));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("late-write");
    let key = h.data_key(&name);
    let guard = Arc::new(client.mutex(&name).unwrap().lock().await.unwrap());

    proxy.delay(Duration::from_secs(5), Duration::ZERO);
    let first = tokio::spawn({
        let (guard, key) = (guard.clone(), key.clone());
        async move { (guard.guarded_write(&[fairlock::WriteOp::put(key, "first")])).await }
    });
    // Once its last attempt is on the way, and well before it gives up: what the client
    // sends from then on (the cancellations of its attempts, the second write) is delayed
    // only a little, queued behind the first write's attempts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.delay(Duration::from_millis(200), Duration::ZERO);
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(Error::OutcomeUnknown { .. })),
        "{first:?}"
    );
    let second = soon(
        "the second write",
        guard.guarded_write(&[fairlock::WriteOp::put(key.clone(), "second")]),
    )
    .await;
    assert!(second.is_ok(), "{second:?}");
    proxy.delay(Duration::ZERO, Duration::ZERO);
    let stored = h.raw().kv_client().get(key.clone(), None).await.unwrap();
    assert_eq!(
        stored.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"second".to_vec()),
        "the second write was acknowledged, so it is the last one applied"
    );
    let guard = Arc::into_inner(guard).expect("the first write's task is done");
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// A `try_lock` refused while a hedged attempt of it is still on the way leaves nothing
/// behind when that attempt arrives after the holder let go. Found by the simulator
/// (fairlock-sim, seed 34): the late attempt created the entry in the emptied queue, for
/// good (its session lives on), and every later waiter queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_try_lock_leaves_no_entry_when_its_hedge_lands_late() {
    let h = EtcdHarness::new().await;
    let holder = h.client().await;
    let proxy = common::proxy::Proxy::start(&etcd_endpoint()).await;
    let url = format!("{}&request_timeout=2s", h.url_via(&proxy.endpoint(), 30));
    let trier = Client::connect(&url).await.unwrap();
    let name = unique("late-try");
    let held = holder.mutex(&name).unwrap().lock().await.unwrap();

    // The try's first attempt arrives after 400 ms; its hedge, sent 250 ms later, after
    // 650 ms. The holder lets go in between, on its own connection.
    proxy.delay(Duration::from_millis(400), Duration::ZERO);
    let mutex = trier.mutex(&name).unwrap();
    let tried = tokio::spawn(async move { mutex.try_lock().await.map(|g| g.is_some()) });
    tokio::time::sleep(Duration::from_millis(520)).await;
    held.release().await.unwrap();
    let acquired = soon("the try", tried).await.unwrap().unwrap();
    proxy.delay(Duration::ZERO, Duration::ZERO);
    if acquired {
        return; // the timing differed (the first attempt found the queue empty)
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // every attempt has landed
    eventually("no entry left", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    assert!(
        holder
            .mutex(&name)
            .unwrap()
            .try_lock()
            .await
            .unwrap()
            .is_some(),
        "the lock is free"
    );
    trier.close().await.unwrap();
    holder.close().await.unwrap();
}
