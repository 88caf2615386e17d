//! etcd 3.4 answers a watch creation from "now" with the revision it read on arrival, and
//! registers it afterwards: a write that lands in between leaves the watch *unsynced*
//! (served by the server's 100 ms sync loop), and nothing in the answer says so. A waiter
//! whose predecessor's watch races a write must still wake when the predecessor goes, not
//! at the sync loop's next run, and must not keep the extra watches it made to find out.

use std::time::Duration;

use fairlock::sim::{SimConn, SimEtcd, SYNC_INTERVAL};
use fairlock::{BackendKind, Client, Config, LockGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A holder, and a waiter whose first watch creation raced a write.
struct Race {
    etcd: SimEtcd,
    holder: Client,
    waiter: Client,
    waiter_conn: SimConn,
    guard: Option<LockGuard>,
    /// Acquires, notes when, releases.
    waiting: JoinHandle<Instant>,
}

async fn race() -> Race {
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
    Race {
        etcd,
        holder,
        waiter,
        waiter_conn,
        guard: Some(guard),
        waiting,
    }
}

impl Race {
    async fn end(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release().await.unwrap();
            self.waiting.await.unwrap();
        }
        self.holder.close().await.unwrap();
        self.waiter.close().await.unwrap();
        fairlock::sim::clear();
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_watch_races_a_write_wakes_at_the_release() {
    let mut race = race().await;
    let released = Instant::now();
    race.guard.take().unwrap().release().await.unwrap();
    let acquired = (&mut race.waiting).await.unwrap();
    let woke = acquired - released;
    assert!(
        woke < Duration::from_millis(30),
        "the waiter took {woke:?} after the release (the sync loop runs every {SYNC_INTERVAL:?})"
    );
    race.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_doubted_watch_is_confirmed_by_a_second_pair_and_keeps_one_server_watch() {
    let race = race().await;
    // The first pair disagreed (the write came between its two creations); the second,
    // raced by nothing, agrees, and every other creation is cancelled.
    let conn = race.waiter_conn.id();
    let watchers = race.etcd.view(|v| v.watchers(conn));
    assert_eq!(
        watchers, 1,
        "the waiter keeps {watchers} server watches on its predecessor"
    );
    race.end().await;
}
