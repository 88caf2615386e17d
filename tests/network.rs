//! The network between client and server, for the backends that have one: unreachable and
//! silent endpoints, server-side limits, and partitions played with a silent TCP proxy: a
//! short one loses nothing (the session is only suspended); a long one makes `lost()`
//! complete, and no later than the server frees the lock for someone else.
#![cfg(any(feature = "etcd", feature = "zookeeper"))]

mod common;

use std::sync::Arc;

use common::proxy::Proxy;
use common::{eventually, soon, unique, Harness};
use std::time::{Duration, Instant};

use fairlock::leader::{
    Health, LeaderEvent, LeaderLoop, Leading, OnSuspended, Requeue, StopReason,
};
use fairlock::{Client, Error, LostReason, SessionState, WriteOp};
use futures::StreamExt;

async fn ttl_below_server_minimum_is_refused(h: Arc<dyn Harness>) {
    let result = Client::connect(&h.url(1)).await;
    assert!(matches!(result, Err(Error::InvalidConfig(_))), "{result:?}");
}

async fn refused_endpoint_is_unreachable(h: Arc<dyn Harness>) {
    let started = Instant::now();
    let url = format!("{}&connect_timeout=2s", h.url_via("127.0.0.1:1", 10));
    let result = Client::connect(&url).await;
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A server that accepts connections but never answers: the connect timeout must hold.
async fn silent_endpoint_is_unreachable_after_connect_timeout(h: Arc<dyn Harness>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let url = format!("{}&connect_timeout=1s", h.url_via(&endpoint, 10));
    let started = Instant::now();
    let result = Client::connect(&url).await;
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn short_partition_loses_nothing(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    let name = unique("short-partition");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let mut states = client.session_states();
    assert_eq!(
        soon("state", states.next()).await,
        Some(SessionState::Connected)
    );

    proxy.cut();
    // Long enough for the client to notice (keep-alive round, dead connection), well
    // within any loss deadline.
    eventually("session suspended", || async { client.is_suspended() }).await;
    assert_eq!(
        soon("state", states.next()).await,
        Some(SessionState::Suspended)
    );
    assert!(!guard.is_lost());
    proxy.restore();

    eventually("session confirmed again", || async {
        !client.is_suspended()
    })
    .await;
    assert_eq!(
        soon("state", states.next()).await,
        Some(SessionState::Reconnected)
    );
    assert!(!guard.is_lost(), "a short partition lost the lock");
    guard
        .guarded_write(&[WriteOp::put(h.data_key(&name), "still mine")])
        .await
        .unwrap();
    guard.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
}

async fn long_partition_is_reported_before_the_server_frees_the_lock(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 4))
        .await
        .unwrap();
    let name = unique("long-partition");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = guard.key().to_owned();

    proxy.cut();
    assert_eq!(
        soon("lost signal", guard.lost()).await,
        LostReason::SessionExpired
    );
    // The server still has the entry at this moment: the holder knew first.
    let still_there = h.entries(&name).await.contains(&key);
    eventually("server frees the lock", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    assert!(
        still_there,
        "the server freed the lock before the holder knew it had lost it"
    );
    proxy.restore();
    let write = guard
        .guarded_write(&[WriteOp::put(h.data_key(&name), "x")])
        .await;
    assert!(write.is_err());
}

/// A waiter whose timeout expires while the server is slow, and whose caller then gives up
/// on it too (an outer timeout dropping `lock_timeout` while it removes its entry), still
/// leaves no entry behind once the server answers again.
async fn cancel_during_cleanup_leaves_no_entry(h: Arc<dyn Harness>) {
    let name = unique("cancel-cleanup");
    let holder = h.client().await;
    let held = holder.mutex(&name).unwrap().lock().await.unwrap();

    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 30))
        .await
        .unwrap();
    let mutex = client.mutex(&name).unwrap();
    let waiting = tokio::spawn(async move {
        // lock_timeout gives up after 3 s and starts removing its entry; the removal
        // hangs on the silent proxy (request timeout 5 s) and this outer timeout drops it.
        let outcome = tokio::time::timeout(
            Duration::from_secs(4),
            mutex.lock_timeout(Duration::from_secs(3)),
        )
        .await;
        assert!(
            outcome.is_err(),
            "the removal should still hang: {outcome:?}"
        );
    });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    proxy.cut();
    soon("outer timeout", waiting).await.unwrap();
    proxy.restore();

    eventually("the waiter's entry removed", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    held.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
    client.close().await.unwrap();
}

/// Every request of the first session is bounded by the request timeout, not by the
/// (longer) connect timeout.
async fn first_session_uses_the_request_timeout(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!(
        "{}&connect_timeout=60s&request_timeout=1s",
        h.url_via(&proxy.endpoint(), 30)
    );
    let client = Client::connect(&url).await.unwrap();
    let mutex = client.mutex(&unique("request-timeout")).unwrap();
    proxy.cut();
    let started = Instant::now();
    let result = soon("try_lock on a silent server", mutex.try_lock()).await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded by the 60 s connect timeout, not the 1 s request timeout: {:?}",
        started.elapsed()
    );
    proxy.restore();
}

/// One endpoint of the URL is dead (as after kill -9 of a cluster member): requests that
/// the client balances onto it fail over to the live one, and no call returns an error.
async fn a_dead_endpoint_in_the_url_costs_no_errors(h: Arc<dyn Harness>) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = dead.local_addr().unwrap().to_string();
    drop(dead); // nothing listens there now: connections are refused
    let endpoints = format!("{dead_endpoint},{}", h.endpoint());
    let client = Client::connect(&h.url_via(&endpoints, 10)).await.unwrap();
    let name = unique("dead-endpoint");
    let key = h.data_key(&name);
    let mutex = client.mutex(&name).unwrap();
    for round in 0..60 {
        let guard = mutex
            .lock()
            .await
            .unwrap_or_else(|e| panic!("round {round}: lock: {e}"));
        guard
            .guarded_write(&[WriteOp::put(&key, round.to_string())])
            .await
            .unwrap_or_else(|e| panic!("round {round}: guarded_write: {e}"));
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("round {round}: release: {e}"));
        let taken = mutex
            .try_lock()
            .await
            .unwrap_or_else(|e| panic!("round {round}: try_lock: {e}"));
        taken.expect("free after release").release().await.unwrap();
    }
    assert!(h.entries(&name).await.is_empty());
    client.close().await.unwrap();
}

/// A guarded write into a silent network, with the session still alive: either it was
/// sent and the caller hears "may or may not have been applied" (`OutcomeUnknown`), or it
/// was never sent (`Timeout`: ZooKeeper's existence reads before the multi-op time out)
/// and then it was not applied. Never a plain backend error.
async fn unanswered_guarded_write_has_unknown_outcome(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=1s", h.url_via(&proxy.endpoint(), 30));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("unanswered-write");
    let key = h.data_key(&name);
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    proxy.cut();
    let write = soon(
        "the guarded write",
        guard.guarded_write(&[WriteOp::put(&key, "x")]),
    )
    .await;
    assert!(!guard.is_lost(), "the session outlives one request timeout");
    proxy.restore();
    match write {
        Err(Error::OutcomeUnknown { .. }) => {}
        Err(Error::Timeout(_)) => {
            let observer = h.client().await;
            assert_eq!(
                observer.get(&key).await.unwrap(),
                None,
                "applied after Timeout"
            );
            observer.close().await.unwrap();
        }
        other => panic!("{other:?}"),
    }
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// The next start or stop of a leader loop (leader changes skipped).
async fn next_term_event(events: &mut fairlock::leader::LeaderEvents) -> Option<LeaderEvent> {
    loop {
        match soon("a leader loop event", events.next()).await {
            Some(LeaderEvent::LeaderChanged(_)) => {}
            other => return other,
        }
    }
}

/// The leader loop's default suspension policy: a short partition cancels the work and the
/// term ends as `Suspended`; with `Requeue::Never` the loop then ends, and nothing is left
/// once the network is back.
async fn leader_loop_cancels_the_work_when_suspended(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    let name = unique("loop-suspended");
    let (handle, mut events) = LeaderLoop::new(&client, &name, "a")
        .unwrap()
        .requeue(Requeue::Never)
        .spawn(|leading: Leading| async move { leading.cancelled().await });
    let started = next_term_event(&mut events).await;
    assert!(
        matches!(started, Some(LeaderEvent::StartedLeading { term: 1, .. })),
        "{started:?}"
    );

    proxy.cut();
    eventually("not ready while suspended", || async {
        !handle.is_leading()
    })
    .await;
    let stopped = next_term_event(&mut events).await;
    assert_eq!(
        stopped,
        Some(LeaderEvent::StoppedLeading {
            term: 1,
            reason: StopReason::Suspended
        })
    );
    proxy.restore();
    // The resign may not have been confirmed through the cut proxy: it goes on after.
    let joined = soon("loop ends", handle.join()).await;
    assert!(
        joined.is_ok() || joined.as_ref().is_err_and(Error::is_transient),
        "{joined:?}"
    );
    eventually("nothing left", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    client.close().await.unwrap();
}

/// With `OnSuspended::Continue`, a short partition leaves the work running and the loop
/// leading.
async fn leader_loop_rides_out_a_suspension_by_policy(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    let name = unique("loop-continue");
    let (handle, mut events) = LeaderLoop::new(&client, &name, "a")
        .unwrap()
        .on_suspended(OnSuspended::Continue)
        .spawn(|leading: Leading| async move { leading.cancelled().await });
    let started = next_term_event(&mut events).await;
    assert!(
        matches!(started, Some(LeaderEvent::StartedLeading { term: 1, .. })),
        "{started:?}"
    );

    proxy.cut();
    eventually("session suspended", || async { client.is_suspended() }).await;
    assert!(matches!(handle.health(), Health::Leading { term: 1, .. }));
    proxy.restore();
    eventually("session confirmed again", || async {
        !client.is_suspended()
    })
    .await;
    assert!(handle.is_leading(), "a short partition ended the term");
    soon("shutdown", handle.shutdown()).await.unwrap();
    let stopped = next_term_event(&mut events).await;
    assert_eq!(
        stopped,
        Some(LeaderEvent::StoppedLeading {
            term: 1,
            reason: StopReason::Shutdown
        })
    );
    assert!(h.entries(&name).await.is_empty());
}

/// A campaign that keeps failing (the backend unreachable) shows as stuck after the grace.
async fn leader_loop_reports_a_failing_campaign(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let url = format!("{}&request_timeout=1s", h.url_via(&proxy.endpoint(), 10));
    let client = Client::connect(&url).await.unwrap();
    let name = unique("loop-failing");
    proxy.cut();
    // Cut before the first campaign: its requests time out, again and again.
    let (handle, _events) = LeaderLoop::new(&client, &name, "a")
        .unwrap()
        .grace(Duration::from_secs(2))
        .spawn(|leading: Leading| async move { leading.cancelled().await });
    eventually("reported stuck", || async {
        matches!(
            handle.health(),
            Health::Stuck(fairlock::leader::Stuck::CampaignFailing { .. })
        )
    })
    .await;
    proxy.restore();
    eventually("leading once the backend is back", || async {
        handle.is_leading()
    })
    .await;
    soon("shutdown", handle.shutdown()).await.unwrap();
    eventually("nothing left", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

macro_rules! network_tests {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            network_tests!(@tests $harness;
                ttl_below_server_minimum_is_refused, refused_endpoint_is_unreachable,
                silent_endpoint_is_unreachable_after_connect_timeout,
                short_partition_loses_nothing,
                long_partition_is_reported_before_the_server_frees_the_lock,
                cancel_during_cleanup_leaves_no_entry, first_session_uses_the_request_timeout,
                a_dead_endpoint_in_the_url_costs_no_errors,
                unanswered_guarded_write_has_unknown_outcome,
                leader_loop_cancels_the_work_when_suspended,
                leader_loop_rides_out_a_suspension_by_policy,
                leader_loop_reports_a_failing_campaign);
        }
    };
    (@tests $harness:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(Arc::new($harness)).await;
            }
        )*
    };
}

#[cfg(feature = "etcd")]
network_tests!(etcd, common::EtcdHarness::new().await);
#[cfg(feature = "zookeeper")]
network_tests!(zookeeper, common::ZkHarness::new().await);
