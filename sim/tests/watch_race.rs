//! etcd 3.4 answers a watch creation from "now" with the revision it read on arrival, and
//! registers it afterwards: a write that lands in between leaves the watch *unsynced*
//! (served by the server's 100 ms sync loop), and nothing in the answer says so. A waiter
//! whose predecessor's watch races a write must still wake when the predecessor goes, not
//! at the sync loop's next run.

use std::time::Duration;

use fairlock::sim::{SimEtcd, SYNC_INTERVAL};
use fairlock::{BackendKind, Client, Config};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_watch_races_a_write_wakes_at_the_release() {
    fairlock::sim::install_clock();
    let started = Instant::now();
    let etcd = SimEtcd::start(7);
    let config = Config::new(BackendKind::Etcd).with_prefix("race");
    let (holder_conn, waiter_conn) = (etcd.connect(), etcd.connect());
    let holder = Client::simulated(&holder_conn, &config).await.unwrap();
    let waiter = Client::simulated(&waiter_conn, &config).await.unwrap();
    let guard = holder.mutex("x").unwrap().lock().await.unwrap();

    // Just after a sync loop's run, so that the next one is as far off as it gets.
    let since = started.elapsed().as_micros() % SYNC_INTERVAL.as_micros();
    let next_run = SYNC_INTERVAL - Duration::from_micros(since as u64);
    tokio::time::sleep(next_run + Duration::from_millis(1)).await;

    waiter_conn.race_next_watch();
    let mutex = waiter.mutex("x").unwrap();
    let waiting = tokio::spawn(async move {
        let guard = mutex.lock().await.unwrap();
        let at = Instant::now();
        guard.release().await.unwrap();
        at
    });
    // The waiter queues and creates its watch, which waits for a write: this one.
    tokio::time::sleep(Duration::from_millis(10)).await;
    holder.put("race-data/other", "x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;

    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = waiting.await.unwrap();
    let woke = acquired - released;
    assert!(
        woke < Duration::from_millis(30),
        "the waiter took {woke:?} after the release (the sync loop runs every {SYNC_INTERVAL:?})"
    );
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
    fairlock::sim::clear();
}
