//! The leader loop's orderings, on every backend: loss during the work, a panicking work,
//! shutdown while campaigning and while leading, work that returns (resign, then requeue),
//! and work that ignores its cancellation (the health check).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fairlock::leader::{
    Health, LeaderEvent, LeaderEvents, LeaderLoop, Leading, OnSuspended, Requeue, StopReason, Stuck,
};
use fairlock::LostReason;
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::common::{eventually, soon, unique, Harness};

/// The next start or stop; leader changes are collected into `changes` on the way.
async fn next_term_event(
    events: &mut LeaderEvents,
    changes: &mut Vec<Option<String>>,
) -> Option<LeaderEvent> {
    loop {
        match soon("a leader loop event", events.next()).await {
            Some(LeaderEvent::LeaderChanged(leader)) => changes.push(leader.map(|l| l.key)),
            other => return other,
        }
    }
}

async fn started(
    events: &mut LeaderEvents,
    changes: &mut Vec<Option<String>>,
    term: u64,
) -> String {
    match next_term_event(events, changes).await {
        Some(LeaderEvent::StartedLeading { term: t, key, .. }) if t == term => key,
        other => panic!("expected term {term} to start, got {other:?}"),
    }
}

async fn stopped(
    events: &mut LeaderEvents,
    changes: &mut Vec<Option<String>>,
    term: u64,
) -> StopReason {
    match next_term_event(events, changes).await {
        Some(LeaderEvent::StoppedLeading { term: t, reason }) if t == term => reason,
        other => panic!("expected term {term} to stop, got {other:?}"),
    }
}

/// Reads leader changes until `key` leads; a start or stop meanwhile is a failure.
async fn observed(events: &mut LeaderEvents, changes: &mut Vec<Option<String>>, key: &str) {
    while !changes.contains(&Some(key.to_owned())) {
        match soon("the leader observed", events.next()).await {
            Some(LeaderEvent::LeaderChanged(leader)) => changes.push(leader.map(|l| l.key)),
            other => panic!("expected a leader change, got {other:?}"),
        }
    }
}

/// After the last stop, the stream ends with no further start or stop.
async fn ended(events: &mut LeaderEvents, changes: &mut Vec<Option<String>>) {
    let next = next_term_event(events, changes).await;
    assert!(next.is_none(), "an event after the loop ended: {next:?}");
}

/// The session expires from outside while the work runs: the work is cancelled, the stop
/// follows the start with the reason, and the loop leads again on a new session.
pub async fn leader_loop_loss_during_the_work(h: Arc<dyn Harness>) {
    let name = unique("loop-loss");
    let client = h.client().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // Expiring from outside may cut the connection first (ZooKeeper): not a suspension.
    let (handle, mut events) = LeaderLoop::new(&client, &name, "a")
        .unwrap()
        .on_suspended(OnSuspended::Continue)
        .spawn(move |leading: Leading| {
            let seen = seen_tx.clone();
            async move {
                leading.cancelled().await;
                let _ = seen.send(leading.term());
            }
        });
    let changes = &mut Vec::new();
    let first = started(&mut events, changes, 1).await;
    assert!(handle.is_leading());
    assert!(matches!(handle.health(), Health::Leading { term: 1, .. }));
    assert_eq!(h.entries(&name).await, std::slice::from_ref(&first));

    h.expire_session(&client).await;
    assert_eq!(
        stopped(&mut events, changes, 1).await,
        StopReason::Lost(LostReason::SessionExpired)
    );
    // The stop is announced only after the work has stopped.
    assert_eq!(
        seen.try_recv(),
        Ok(1),
        "stop announced before the work stopped"
    );

    let second = started(&mut events, changes, 2).await;
    assert_ne!(second, first, "term 2 on the lost session's entry");
    assert!(handle.is_leading());
    soon("shutdown", handle.shutdown()).await.unwrap();
    assert_eq!(stopped(&mut events, changes, 2).await, StopReason::Shutdown);
    assert_eq!(seen.try_recv(), Ok(2));
    ended(&mut events, changes).await;
    assert!(h.entries(&name).await.is_empty());
}

/// Work that panics (in its future, or in the call that makes it) is contained: the loop
/// resigns, reports the panic, and leads again.
pub async fn leader_loop_contains_a_panic(h: Arc<dyn Harness>) {
    let name = unique("loop-panic");
    let client = h.client().await;
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let (handle, mut events) =
        LeaderLoop::new(&client, &name, "a")
            .unwrap()
            .spawn(move |leading: Leading| {
                if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                    panic!("boom before the future");
                }
                async move {
                    if leading.term() == 1 {
                        panic!("boom in the work");
                    }
                    leading.cancelled().await;
                }
            });
    let changes = &mut Vec::new();
    let first = started(&mut events, changes, 1).await;
    assert_eq!(
        stopped(&mut events, changes, 1).await,
        StopReason::Panicked("boom in the work".into())
    );
    let second = started(&mut events, changes, 2).await;
    assert_eq!(
        stopped(&mut events, changes, 2).await,
        StopReason::Panicked("boom before the future".into())
    );
    let third = started(&mut events, changes, 3).await;
    // Each panicked term was resigned: only the current candidacy is left.
    assert_eq!(h.entries(&name).await, std::slice::from_ref(&third));
    assert!(first != second && second != third);
    soon("shutdown", handle.shutdown()).await.unwrap();
    assert_eq!(stopped(&mut events, changes, 3).await, StopReason::Shutdown);
    ended(&mut events, changes).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(h.entries(&name).await.is_empty());
}

/// Shutdown while waiting behind another leader withdraws the candidacy; nothing started.
pub async fn leader_loop_shutdown_while_campaigning(h: Arc<dyn Harness>) {
    let name = unique("loop-campaigning");
    let (a, b) = (h.client().await, h.client().await);
    let other = b.election(&name).unwrap().campaign(b"b").await.unwrap();
    let (handle, mut events) = LeaderLoop::new(&a, &name, "a")
        .unwrap()
        .spawn(|leading: Leading| async move { leading.cancelled().await });
    eventually("candidacy queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert_eq!(handle.health(), Health::Campaigning);
    assert!(!handle.is_leading());
    soon("shutdown", handle.shutdown()).await.unwrap();
    let changes = &mut Vec::new();
    ended(&mut events, changes).await;
    eventually("candidacy withdrawn", || async {
        h.entries(&name).await == [other.key().to_owned()]
    })
    .await;
    other.resign().await.unwrap();
}

/// Shutdown while leading cancels the work and resigns only once it has stopped: the work
/// still finds its entry on the backend after the cancellation.
pub async fn leader_loop_shutdown_while_leading(h: Arc<dyn Harness>) {
    let name = unique("loop-leading");
    let client = h.client().await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (h2, name2) = (h.clone(), name.clone());
    let (handle, mut events) =
        LeaderLoop::new(&client, &name, "a")
            .unwrap()
            .spawn(move |leading: Leading| {
                let (h, name, seen) = (h2.clone(), name2.clone(), seen_tx.clone());
                async move {
                    leading.cancelled().await;
                    // Slow to stop: the resign must wait for this.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let key = leading.leadership().key().to_owned();
                    let held =
                        h.entries(&name).await.contains(&key) && !leading.leadership().is_lost();
                    let _ = seen.send(held);
                }
            });
    let changes = &mut Vec::new();
    started(&mut events, changes, 1).await;
    soon("shutdown", handle.shutdown()).await.unwrap();
    assert_eq!(
        seen.try_recv(),
        Ok(true),
        "resigned before the work stopped"
    );
    assert_eq!(stopped(&mut events, changes, 1).await, StopReason::Shutdown);
    ended(&mut events, changes).await;
    assert!(
        h.entries(&name).await.is_empty(),
        "shutdown returned before the resign"
    );
}

/// Work that returns ends the term: the loop resigns (the next candidate leads), then
/// campaigns again behind it. Leader changes arrive once each, in order.
pub async fn leader_loop_resigns_then_requeues_when_the_work_returns(h: Arc<dyn Harness>) {
    let name = unique("loop-requeue");
    let (a, b) = (h.client().await, h.client().await);
    let finish = Arc::new(Notify::new());
    let finish2 = finish.clone();
    let (handle, mut events) =
        LeaderLoop::new(&a, &name, "a")
            .unwrap()
            .spawn(move |leading: Leading| {
                let finish = finish2.clone();
                async move {
                    match leading.term() {
                        1 => finish.notified().await,
                        _ => leading.cancelled().await,
                    }
                }
            });
    let changes = &mut Vec::new();
    let first = started(&mut events, changes, 1).await;
    let election = b.election(&name).unwrap();
    let other = tokio::spawn(async move { election.campaign(b"b").await.unwrap() });
    eventually("b queued", || async { h.entries(&name).await.len() == 2 }).await;
    observed(&mut events, changes, &first).await;

    finish.notify_one();
    assert_eq!(stopped(&mut events, changes, 1).await, StopReason::Returned);
    // The stop is announced once the resign is confirmed, and before the loop campaigns
    // again.
    assert!(
        !h.entries(&name).await.contains(&first),
        "stop announced before the resign"
    );
    let other = soon("b leads after the loop resigned", other)
        .await
        .unwrap();
    eventually("the loop campaigns again, behind b", || async {
        let entries = h.entries(&name).await;
        entries.len() == 2 && entries.contains(&other.key().to_owned())
    })
    .await;
    assert_eq!(handle.health(), Health::Campaigning);
    assert!(!handle.is_leading());

    // Each leader is observed before it steps down: observe reports the current leader,
    // and one that came and went between two reads would be skipped.
    let b_key = other.key().to_owned();
    observed(&mut events, changes, &b_key).await;
    other.resign().await.unwrap();
    let second = started(&mut events, changes, 2).await;
    assert_ne!(second, first);
    observed(&mut events, changes, &second).await;
    soon("shutdown", handle.shutdown()).await.unwrap();
    assert_eq!(stopped(&mut events, changes, 2).await, StopReason::Shutdown);
    ended(&mut events, changes).await;

    // Each change once, in order: a, then b, then a's second candidacy (a `None` may come
    // first, before a's entry was written).
    let leaders: Vec<&String> = changes.iter().flatten().collect();
    assert_eq!(
        leaders,
        [&first, &b_key, &second],
        "leader changes: {changes:?}"
    );
    assert!(h.entries(&name).await.is_empty());
}

/// Work that ignores its cancellation past the grace period shows as stuck; once it stops,
/// the stop is announced; with `Requeue::Never` the loop then ends.
pub async fn leader_loop_reports_work_ignoring_cancellation(h: Arc<dyn Harness>) {
    let name = unique("loop-stuck");
    let client = h.client().await;
    let release = Arc::new(Notify::new());
    let release2 = release.clone();
    let (handle, mut events) = LeaderLoop::new(&client, &name, "a")
        .unwrap()
        .grace(Duration::from_millis(200))
        .requeue(Requeue::Never)
        .on_suspended(OnSuspended::Continue)
        .spawn(move |_leading: Leading| {
            let release = release2.clone();
            async move { release.notified().await }
        });
    let changes = &mut Vec::new();
    started(&mut events, changes, 1).await;
    h.expire_session(&client).await;
    eventually("reported stuck", || async {
        matches!(
            handle.health(),
            Health::Stuck(Stuck::CancellationIgnored { term: 1, .. })
        )
    })
    .await;
    assert!(!handle.is_leading(), "ready while its leadership is lost");
    release.notify_one();
    assert_eq!(
        stopped(&mut events, changes, 1).await,
        StopReason::Lost(LostReason::SessionExpired)
    );
    ended(&mut events, changes).await;
    assert_eq!(handle.health(), Health::Stopped);
    soon("join", handle.join()).await.unwrap();
}
