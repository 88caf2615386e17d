//! What fairlock records through the `metrics` facade, captured by metrics-util's
//! DebuggingRecorder. Each test runs on a current-thread runtime inside
//! `with_local_recorder`, so that every task it spawns (the backends' too) records into its
//! own recorder, and parallel tests do not mix.
#![cfg(feature = "metrics")]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::{unique, Harness};
use fairlock::metrics as m;
use std::collections::HashMap;
use std::sync::Mutex;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// What a test recorded so far. The DebuggingRecorder's snapshots drain it (counters and
/// gauges are swapped to zero, histograms cleared), so every read adds the new snapshot to
/// the totals: counts for counters and histograms, the sum of changes for gauges.
struct Captured {
    snapshotter: Snapshotter,
    totals: Mutex<HashMap<Series, f64>>,
}

/// A metric's name and its labels (but `backend`), sorted.
type Series = (String, Vec<(String, String)>);

impl Captured {
    fn total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut totals = self.totals.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut have: Vec<(String, String)> = key
                .labels()
                .filter(|l| l.key() != "backend")
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            have.sort();
            let add = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(v) => v.into_inner(),
                DebugValue::Histogram(v) => v.len() as f64,
            };
            *totals.entry((key.name().to_owned(), have)).or_default() += add;
        }
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        totals
            .get(&(name.to_owned(), wanted))
            .copied()
            .unwrap_or(0.0)
    }

    /// A counter's count, a gauge's value, or a histogram's number of samples.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.total(name, labels) as u64
    }
}

/// Runs `test` on a current-thread runtime with a recorder of its own.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce(Arc<Captured>) -> F) {
    // These tests want the name label, to tell their own locks apart; the switch is
    // process-wide and no test of this binary wants it off (the default is tested in the
    // library's unit tests).
    m::set_name_label(true);
    let recorder = DebuggingRecorder::new();
    let captured = Arc::new(Captured {
        snapshotter: recorder.snapshotter(),
        totals: Mutex::new(HashMap::new()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(captured)));
}

/// Lets the per-hold tasks record a release or a loss.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Every outcome of an acquisition, the hold and its end, and the leader gauge.
async fn outcomes_holds_and_leaders(h: Arc<dyn Harness>, s: Arc<Captured>) {
    let name = unique("metrics");
    let lock = [("kind", "lock"), ("name", name.as_str())];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = lock.to_vec();
        labels.push(extra);
        labels
    };
    let (a, b) = (h.client().await, h.client().await);
    let guard = a.mutex(&name).unwrap().lock().await.unwrap();
    settle().await;
    assert_eq!(s.get(m::HELD, &lock), 1);
    assert_eq!(s.get(m::ACQUIRE_TOTAL, &with(("outcome", "acquired"))), 1);
    assert_eq!(
        s.get(m::ACQUIRE_WAIT_SECONDS, &with(("outcome", "acquired"))),
        1
    );

    let mutex_b = b.mutex(&name).unwrap();
    assert!(mutex_b.try_lock().await.unwrap().is_none());
    let timed_out = mutex_b
        .lock_timeout(Duration::from_millis(100))
        .await
        .unwrap();
    assert!(timed_out.is_none());
    let waiting = tokio::time::timeout(Duration::from_millis(200), mutex_b.lock()).await;
    assert!(waiting.is_err(), "acquired a held lock");
    assert_eq!(s.get(m::ACQUIRE_TOTAL, &with(("outcome", "busy"))), 1);
    assert_eq!(s.get(m::ACQUIRE_TOTAL, &with(("outcome", "timeout"))), 1);
    assert_eq!(s.get(m::ACQUIRE_TOTAL, &with(("outcome", "cancelled"))), 1);
    assert_eq!(s.get(m::WAITING, &lock), 0);

    guard.release().await.unwrap();
    settle().await;
    assert_eq!(s.get(m::HELD, &lock), 0);
    assert_eq!(s.get(m::HOLD_SECONDS, &with(("reason", "released"))), 1);
    assert_eq!(s.get(m::LOST_TOTAL, &with(("reason", "released"))), 0);

    // A leader gauge per election, carrying its name.
    let election = unique("metrics-election");
    let leader = [("election", election.as_str())];
    let leadership = a.election(&election).unwrap().campaign(b"a").await.unwrap();
    settle().await;
    assert_eq!(s.get(m::LEADER, &leader), 1);
    leadership.resign().await.unwrap();
    settle().await;
    assert_eq!(s.get(m::LEADER, &leader), 0);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A holder whose session is ended from outside: the hold is lost with the reason, the
/// session is counted lost, and the held gauge goes back to zero.
async fn losses_by_reason(h: Arc<dyn Harness>, s: Arc<Captured>) {
    let name = unique("metrics-loss");
    let lock = [("kind", "lock"), ("name", name.as_str())];
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    h.expire_session(&client).await;
    common::soon("lost", guard.lost()).await;
    settle().await;
    let mut expired = lock.to_vec();
    expired.push(("reason", "session_expired"));
    assert_eq!(s.get(m::LOST_TOTAL, &expired), 1);
    assert_eq!(s.get(m::HOLD_SECONDS, &expired), 1);
    assert_eq!(s.get(m::HELD, &lock), 0);
    let sessions = s.get(m::SESSIONS_LOST_TOTAL, &[("reason", "session_expired")]);
    assert!(sessions >= 1, "session loss not counted");
    drop(guard);
    client.close().await.unwrap();
}

#[test]
fn memory_outcomes_holds_and_leaders() {
    recorded(|s| outcomes_holds_and_leaders(Arc::new(common::MemoryHarness::new()), s));
}

#[test]
fn memory_losses_by_reason() {
    recorded(|s| losses_by_reason(Arc::new(common::MemoryHarness::new()), s));
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_losses_by_reason() {
    recorded(
        |s| async move { losses_by_reason(Arc::new(common::EtcdHarness::new().await), s).await },
    );
}

#[cfg(feature = "zookeeper")]
#[test]
fn zookeeper_losses_by_reason() {
    recorded(
        |s| async move { losses_by_reason(Arc::new(common::ZkHarness::new().await), s).await },
    );
}
