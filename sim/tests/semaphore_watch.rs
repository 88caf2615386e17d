//! A semaphore's waiter at the head of its gate watches the whole pool with a prefix watch
//! from the revision it read the pool at. If its watch stream breaks, a lease is released
//! and the history is compacted at exactly that release's revision before the watch is
//! created again, etcd drops the deletion's tombstone, and only a watch that starts
//! *before* the compaction revision is told it was compacted (and re-reads the pool): one
//! starting at it hears nothing, and the waiter would wait for a release that came.

use std::time::Duration;

use fairlock::sim::SimEtcd;
use fairlock::{BackendKind, Client, Config};

#[tokio::test(start_paused = true)]
async fn a_semaphore_waiter_takes_a_lease_released_at_the_compaction_revision() {
    fairlock::sim::install_clock();
    let etcd = SimEtcd::start(11);
    let config = Config::new(BackendKind::Etcd).with_prefix("sem");
    let (holder_conn, waiter_conn) = (etcd.connect(), etcd.connect());
    let holder = Client::simulated(&holder_conn, &config).await.unwrap();
    let waiter = Client::simulated(&waiter_conn, &config).await.unwrap();
    let guard = holder.semaphore("s", 1).unwrap().lock().await.unwrap();

    let semaphore = waiter.semaphore("s", 1).unwrap();
    let waiting = tokio::spawn(async move { semaphore.lock().await.unwrap() });
    // The waiter queues at the gate, reads the full pool and watches it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read_at = etcd.view(|v| v.revision());
    assert!(!waiting.is_finished());

    // Its stream ends and the new one's messages are held: the release, then a compaction
    // at the release's revision, land before the watch is created again.
    waiter_conn.freeze(Duration::from_secs(2));
    waiter_conn.break_watches();
    guard.release().await.unwrap();
    assert_eq!(
        etcd.view(|v| v.revision()),
        read_at + 1,
        "the release is the one write after the waiter's read"
    );
    etcd.compact();

    let lease = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiter missed the release at the compaction revision")
        .unwrap();
    assert!(!lease.is_lost());
    lease.release().await.unwrap();
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
    fairlock::sim::clear();
}
