//! The lock contract, written once and run against every backend.
//!
//! Each scenario is a function of a [`Harness`]; the macro at the bottom instantiates all of
//! them per backend. No scenario may special-case a backend: if one seems to need it, the
//! contract is wrong.

mod common;
// The SQL store of examples/fenced_sql, which fences writes by token.
#[path = "conformance/leader.rs"]
mod leader;
#[path = "conformance/rwlock.rs"]
mod rwlock;
#[path = "conformance/semaphore.rs"]
mod semaphore;
#[path = "../examples/fenced_sql/store.rs"]
mod store;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, soon, unique, Harness};
use fairlock::{
    Client, Error, Leader, LostReason, QueueKind, Sequencer, SequencerStatus, SessionState, WriteOp,
};
use futures::StreamExt;
use leader::*;
use rwlock::*;
use semaphore::*;

/// 16 contenders on separate sessions increment a counter with a deliberate
/// read–sleep–write race; under the lock no update may be lost and no two may overlap.
pub async fn mutual_exclusion(h: Arc<dyn Harness>) {
    let name = unique("mutex");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (h, name, counter, inside) = (h.clone(), name.clone(), counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            let client = h.client().await;
            let mutex = client.mutex(&name).unwrap();
            for _ in 0..3 {
                let guard = mutex.lock().await.unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let read = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
                counter.store(read + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        soon("contender", task).await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 48);
    assert!(h.entries(&name).await.is_empty());
}

/// Waiters acquire in the order they queued.
pub async fn fifo_order(h: Arc<dyn Harness>) {
    let name = unique("fifo");
    let holder = h.client().await;
    let first = holder.mutex(&name).unwrap().lock().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (h2, name2, order2) = (h.clone(), name.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let client = h2.client().await;
            let guard = client.mutex(&name2).unwrap().lock().await.unwrap();
            order2.lock().unwrap().push(i);
            guard.release().await.unwrap();
            client.close().await.unwrap();
        }));
        // The next waiter starts only once this one is queued.
        eventually("waiter queued", || async {
            h.entries(&name).await.len() == i + 2
        })
        .await;
    }
    first.release().await.unwrap();
    for task in tasks {
        soon("waiter", task).await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    holder.close().await.unwrap();
}

/// `try_lock` on a held lock returns `None` at once and leaves no entry.
pub async fn try_lock_leaves_no_entry(h: Arc<dyn Harness>) {
    let name = unique("try");
    let (a, b) = (h.client().await, h.client().await);
    let held = a
        .mutex(&name)
        .unwrap()
        .try_lock()
        .await
        .unwrap()
        .expect("free lock");
    let mutex_b = b.mutex(&name).unwrap();
    assert!(mutex_b.try_lock().await.unwrap().is_none());
    assert_eq!(h.entries(&name).await, [held.key().to_owned()]);
    held.release().await.unwrap();
    let taken = mutex_b.try_lock().await.unwrap().expect("released lock");
    taken.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
}

/// `try_lock` does not jump a queue: with a holder gone but a waiter queued it says no.
pub async fn try_lock_respects_waiters(h: Arc<dyn Harness>) {
    let name = unique("try-queue");
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex_b = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex_b.lock().await.map(|g| g.fencing_token()) });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(c.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    held.release().await.unwrap();
    soon("waiter", waiter).await.unwrap().unwrap();
}

/// `lock_timeout` gives up after the timeout and leaves no entry.
pub async fn timeout_leaves_no_entry(h: Arc<dyn Harness>) {
    let name = unique("timeout");
    let (a, b) = (h.client().await, h.client().await);
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let started = tokio::time::Instant::now();
    let got = b
        .mutex(&name)
        .unwrap()
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.entries(&name).await, [held.key().to_owned()]);
    held.release().await.unwrap();
    // A free lock is taken well within the timeout.
    let guard = b
        .mutex(&name)
        .unwrap()
        .lock_timeout(common::SOON)
        .await
        .unwrap();
    assert!(guard.is_some());
}

/// Dropping a waiting `lock()` future removes its entry; the next one is not blocked.
pub async fn dropped_waiter_leaves_no_entry(h: Arc<dyn Harness>) {
    let name = unique("cancel");
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex_b = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex_b.lock().await.map(drop) });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    eventually("cancelled entry removed", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    held.release().await.unwrap();
    let next = c.mutex(&name).unwrap().try_lock().await.unwrap();
    assert!(next.is_some(), "a cancelled waiter still blocks the lock");
}

/// Acquisitions cancelled at arbitrary points (before, during and after their entry is
/// created) leave nothing behind.
pub async fn cancelled_at_any_point_leaves_no_entry(h: Arc<dyn Harness>) {
    let name = unique("cancel-any");
    let (a, b) = (h.client().await, h.client().await);
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex = b.mutex(&name).unwrap();
    for i in 0..24u64 {
        let m = mutex.clone();
        let attempt = tokio::spawn(async move { m.lock().await.map(drop) });
        // 0 to 11.5 ms: spans the request that creates the entry.
        tokio::time::sleep(Duration::from_micros(500 * (i % 24))).await;
        attempt.abort();
        let _ = attempt.await;
    }
    eventually("cancelled entries removed", || async {
        h.entries(&name).await == [held.key().to_owned()]
    })
    .await;
    held.release().await.unwrap();
    assert!(mutex.try_lock().await.unwrap().is_some());
}

/// Several waiters of one client each hold their own place (they must not share a key).
pub async fn one_client_many_waiters(h: Arc<dyn Harness>) {
    let name = unique("shared-session");
    let client = h.client().await;
    let mutex = client.mutex(&name).unwrap();
    let first = mutex.lock().await.unwrap();
    let m2 = mutex.clone();
    let second = tokio::spawn(async move { m2.lock().await.unwrap() });
    eventually("second queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(
        !second.is_finished(),
        "a second waiter of one session thinks it holds the lock"
    );
    assert!(mutex.try_lock().await.unwrap().is_none());
    let first_token = first.fencing_token();
    first.release().await.unwrap();
    let second = soon("second acquires", second).await.unwrap();
    assert!(second.fencing_token() > first_token);
    second.release().await.unwrap();
}

/// A holder whose session is dropped without release is replaced after its TTL; its
/// guards (`abandon()` is a crash whose process goes on) report the loss.
pub async fn crashed_holder_replaced_after_ttl(h: Arc<dyn Harness>) {
    let name = unique("crash");
    let crashed = h.client_ttl(3).await;
    let held = crashed.mutex(&name).unwrap().lock().await.unwrap();
    let (token, lost) = (held.fencing_token(), held.lost());
    let successor = h.client().await;
    let mutex = successor.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("successor queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    // Crash: stop the keep-alive, never release.
    crashed.abandon();
    let reason = soon("the crashed holder hears of its loss", lost).await;
    assert_eq!(reason, LostReason::SessionExpired);
    let guard = soon("successor takes over after the TTL", waiter)
        .await
        .unwrap();
    assert!(guard.fencing_token() > token);
    assert!(held.is_lost());
    std::mem::forget(held);
    guard.release().await.unwrap();
}

/// Fencing tokens strictly increase across successive holders.
pub async fn fencing_tokens_increase(h: Arc<dyn Harness>) {
    let name = unique("fence");
    let clients = [h.client().await, h.client().await, h.client().await];
    let mut last = 0;
    for round in 0..9 {
        let guard = clients[round % 3]
            .mutex(&name)
            .unwrap()
            .lock()
            .await
            .unwrap();
        assert!(guard.fencing_token() > last, "token did not increase");
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
}

/// The guarded write applies while held and is rejected after the session is revoked;
/// `lost()` completes.
pub async fn lost_when_session_revoked(h: Arc<dyn Harness>) {
    let name = unique("revoked");
    let key = h.data_key(&name);
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    guard
        .guarded_write(&[WriteOp::put(&key, "1")])
        .await
        .unwrap();
    assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(!guard.is_lost());

    h.expire_session(&client).await;
    assert_eq!(
        soon("lost signal", guard.lost()).await,
        LostReason::SessionExpired
    );
    assert_eq!(
        soon("session lost", client.session_lost()).await,
        LostReason::SessionExpired
    );
    let write = guard.guarded_write(&[WriteOp::put(&key, "2")]).await;
    assert!(
        matches!(write, Err(Error::LockLost(LostReason::SessionExpired))),
        "{write:?}"
    );
    assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(&b"1"[..]));
    let release = guard.release().await;
    assert!(matches!(release, Err(Error::LockLost(_))), "{release:?}");

    // The client opens a new session for later locks.
    let again = client.mutex(&name).unwrap().lock().await.unwrap();
    again
        .guarded_write(&[WriteOp::put(&key, "3")])
        .await
        .unwrap();
    again.release().await.unwrap();
}

/// An entry deleted from outside: `lost()` completes and guarded writes are rejected.
pub async fn lost_when_entry_deleted(h: Arc<dyn Harness>) {
    let name = unique("deleted");
    let key = h.data_key(&name);
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    h.delete_entry(guard.key()).await;
    assert_eq!(soon("lost signal", guard.lost()).await, LostReason::Deleted);
    let write = guard.guarded_write(&[WriteOp::put(&key, "x")]).await;
    assert!(
        matches!(write, Err(Error::LockLost(LostReason::Deleted))),
        "{write:?}"
    );
    assert_eq!(client.get(&key).await.unwrap(), None);
    assert!(
        !client.session_lost().is_lost(),
        "the session itself is fine"
    );
}

/// A waiter whose session ends while queued gets an error, never a guard.
pub async fn waiter_session_expires_while_queued(h: Arc<dyn Harness>) {
    let name = unique("queued-expiry");
    let (a, b) = (h.client().await, h.client().await);
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex_b = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex_b.lock().await });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    h.expire_session(&b).await;
    let result = soon("waiter fails", waiter).await.unwrap();
    assert!(matches!(result, Err(Error::SessionExpired)), "{result:?}");
    assert_eq!(h.entries(&name).await, [held.key().to_owned()]);
    held.release().await.unwrap();
}

/// Dropping a guard releases in the background.
pub async fn dropped_guard_releases(h: Arc<dyn Harness>) {
    let name = unique("drop");
    let (a, b) = (h.client().await, h.client().await);
    let guard = a.mutex(&name).unwrap().lock().await.unwrap();
    let lost = guard.lost();
    drop(guard);
    assert_eq!(soon("released signal", lost).await, LostReason::Released);
    let mutex_b = b.mutex(&name).unwrap();
    let next = soon("lock free after drop", mutex_b.lock()).await.unwrap();
    next.release().await.unwrap();
}

/// `close()` releases everything at once; the client refuses further work.
pub async fn close_releases_everything(h: Arc<dyn Harness>) {
    let name = unique("close");
    let (a, b) = (h.client().await, h.client().await);
    let guard = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex_b = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex_b.lock().await.unwrap() });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    a.close().await.unwrap();
    assert_eq!(
        soon("lost on close", guard.lost()).await,
        LostReason::SessionClosed
    );
    soon("waiter takes over", waiter)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(matches!(
        a.mutex(&name).unwrap().lock().await,
        Err(Error::Closed)
    ));
    a.close().await.unwrap(); // twice is fine
}

/// Bad names are refused with a typed error.
pub async fn bad_names_refused(h: Arc<dyn Harness>) {
    let client = h.client().await;
    let long = "n".repeat(300);
    for name in [
        "",
        "a/b",
        "/a",
        "a/",
        "..",
        ".",
        "x/../y",
        "nul\0",
        "\n",
        long.as_str(),
    ] {
        assert!(
            matches!(client.mutex(name), Err(Error::InvalidName { .. })),
            "{name:?} accepted"
        );
        assert!(
            matches!(client.election(name), Err(Error::InvalidName { .. })),
            "{name:?} accepted as an election"
        );
    }
    // Percent escapes are not decoded: such a name is itself, one segment inside the prefix.
    let name = format!("%2e%2e%2f{}", unique("escaped"));
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    assert!(
        h.entries_prefix_of(&name, guard.key()),
        "{} is outside",
        guard.key()
    );
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    guard.release().await.unwrap();
}

/// Leadership passes in FIFO order, when the leader resigns and when it crashes.
pub async fn election_fifo_succession(h: Arc<dyn Harness>) {
    let name = unique("elect-fifo");
    let a = h.client_ttl(3).await;
    let leading = a.election(&name).unwrap().campaign(b"a").await.unwrap();
    let mut candidates = Vec::new();
    for value in ["b", "c"] {
        let (h2, name2) = (h.clone(), name.clone());
        candidates.push(tokio::spawn(async move {
            let client = h2.client_ttl(3).await;
            let leadership = client
                .election(&name2)
                .unwrap()
                .campaign(value.as_bytes())
                .await;
            (client, leadership.unwrap())
        }));
        let queued = candidates.len() + 1;
        eventually("candidate queued", || async {
            h.entries(&name).await.len() == queued
        })
        .await;
    }
    let observer = h.client().await;
    let election = observer.election(&name).unwrap();
    let leader = |value: &'static str| {
        let election = election.clone();
        async move {
            election.leader().await.unwrap().map(|l| l.value) == Some(value.as_bytes().to_vec())
        }
    };
    assert!(leader("a").await);

    leading.resign().await.unwrap();
    let (b, b_leads) = soon("b leads after a resigns", candidates.remove(0))
        .await
        .unwrap();
    assert_eq!(b_leads.value(), b"b");
    assert!(leader("b").await);

    b.abandon(); // b crashes while leading
    std::mem::forget(b_leads);
    let (_c, c_leads) = soon("c leads after b's TTL", candidates.remove(0))
        .await
        .unwrap();
    assert!(leader("c").await);
    c_leads.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
}

/// `observe` yields every change once, in order: new leaders, proclaimed values, and no
/// leader at all.
pub async fn observe_yields_each_change_once(h: Arc<dyn Harness>) {
    let name = unique("observe");
    let watcher = h.client().await;
    let mut changes = watcher.election(&name).unwrap().observe();
    async fn next(
        changes: &mut futures::stream::BoxStream<'static, fairlock::Result<Option<Leader>>>,
    ) -> Option<String> {
        let item = soon("a change", changes.next())
            .await
            .expect("stream ended");
        item.unwrap()
            .map(|Leader { value, .. }| String::from_utf8(value).unwrap())
    }
    assert_eq!(next(&mut changes).await, None);

    let (a, b) = (h.client().await, h.client().await);
    let mut a_leads = a.election(&name).unwrap().campaign(b"a").await.unwrap();
    assert_eq!(next(&mut changes).await.as_deref(), Some("a"));
    a_leads.proclaim(b"a2").await.unwrap();
    assert_eq!(next(&mut changes).await.as_deref(), Some("a2"));

    let b_election = b.election(&name).unwrap();
    let b_campaign = tokio::spawn(async move { b_election.campaign(b"b").await.unwrap() });
    eventually("b queued", || async { h.entries(&name).await.len() == 2 }).await;
    a_leads.resign().await.unwrap();
    assert_eq!(next(&mut changes).await.as_deref(), Some("b"));
    soon("b leads", b_campaign)
        .await
        .unwrap()
        .resign()
        .await
        .unwrap();
    assert_eq!(next(&mut changes).await, None);

    // Nothing else changed: nothing else arrives.
    let extra = tokio::time::timeout(Duration::from_millis(300), changes.next()).await;
    assert!(extra.is_err(), "an extra change was yielded: {extra:?}");
}

/// Candidates campaign, lead briefly, then resign or crash, over and over: never two
/// leaders at once, and every leader's fencing token exceeds the one before.
pub async fn no_two_leaders_under_crash_and_restart(h: Arc<dyn Harness>) {
    let name = unique("elect-chaos");
    let acting = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut tasks = Vec::new();
    for candidate in 0..3u64 {
        let (h, name, acting, terms) = (h.clone(), name.clone(), acting.clone(), terms.clone());
        tasks.push(tokio::spawn(async move {
            for term in 0..2u64 {
                let client = h.client_ttl(3).await;
                let election = client.election(&name).unwrap();
                let leadership = election
                    .campaign(format!("{candidate}").as_bytes())
                    .await
                    .unwrap();
                assert_eq!(
                    acting.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two leaders at once"
                );
                {
                    let mut terms = terms.lock().unwrap();
                    let last = terms.last().copied().unwrap_or(0);
                    assert!(leadership.fencing_token() > last, "fencing token went back");
                    terms.push(leadership.fencing_token());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                acting.fetch_sub(1, Ordering::SeqCst);
                if (candidate + term) % 3 == 0 {
                    // Crash: stop acting, leave the session to expire.
                    client.abandon();
                    std::mem::forget(leadership);
                } else {
                    leadership.resign().await.unwrap();
                    client.close().await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(90), task)
            .await
            .expect("candidates stalled")
            .unwrap();
    }
    assert_eq!(terms.lock().unwrap().len(), 6);
    eventually("election empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// A leader that lost its session cannot proclaim, and observers never see its value again.
pub async fn proclaim_after_loss_fails(h: Arc<dyn Harness>) {
    let name = unique("proclaim-lost");
    let client = h.client().await;
    let mut leading = client
        .election(&name)
        .unwrap()
        .campaign(b"x")
        .await
        .unwrap();
    h.expire_session(&client).await;
    soon("lost", leading.lost()).await;
    let proclaimed = leading.proclaim(b"stale").await;
    assert!(
        matches!(proclaimed, Err(Error::LockLost(_))),
        "{proclaimed:?}"
    );
    let observer = h.client().await;
    assert_eq!(
        observer.election(&name).unwrap().leader().await.unwrap(),
        None
    );
}

/// Reentrancy is opt-in and counted: the lock stays held until the last hold goes.
pub async fn reentrant_holds_are_counted(h: Arc<dyn Harness>) {
    let name = unique("reentrant");
    let (a, b) = (h.client().await, h.client().await);
    let mutex_a = a.mutex(&name).unwrap();
    let mutex_b = b.mutex(&name).unwrap();
    let outer = mutex_a.lock().await.unwrap().into_reentrant();
    let inner = outer.reenter();
    let innermost = inner.reenter();
    assert_eq!(outer.hold_count(), 3);
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    // Plain lock() does not reenter: it queues like anyone else.
    assert!(mutex_a.try_lock().await.unwrap().is_none());
    innermost.release().await.unwrap();
    drop(inner);
    assert_eq!(outer.hold_count(), 1);
    assert!(
        mutex_b.try_lock().await.unwrap().is_none(),
        "released while still held"
    );
    outer.release().await.unwrap();
    assert!(
        mutex_b.try_lock().await.unwrap().is_some(),
        "not released at count zero"
    );
}

/// A holder's own release ends its `lost()` signal with `Released`, never `Deleted`: the
/// own-entry watch must not mistake the release for someone else's deletion.
pub async fn own_release_is_reported_as_released(h: Arc<dyn Harness>) {
    let name = unique("own-release");
    let client = h.client().await;
    let mutex = client.mutex(&name).unwrap();
    for round in 0..40 {
        let guard = mutex.lock().await.unwrap();
        let lost = guard.lost(); // arms the own-entry watch
        assert!(!guard.is_lost());
        guard.release().await.unwrap();
        let reason = soon("released signal", lost).await;
        assert_eq!(reason, LostReason::Released, "round {round}");
    }
    client.close().await.unwrap();
}

/// A session ended from outside (lease revoked, session expired by the server) costs the
/// next acquisition nothing: it runs on a new session instead of failing with the raw
/// backend error until the keep-alive notices.
pub async fn acquire_right_after_the_session_ended_from_outside(h: Arc<dyn Harness>) {
    let name = unique("after-revoke");
    let client = h.client_ttl(30).await;
    let old = client.session_id();
    h.expire_session(&client).await;
    let guard = client.mutex(&name).unwrap().try_lock().await;
    let guard = match guard {
        Ok(Some(guard)) => guard,
        other => panic!("acquisition after the session ended: {other:?}"),
    };
    assert_ne!(client.session_id(), old, "still on the ended session");
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// The session state stream follows the client across sessions: connected, lost when the
/// session ends, connected again with the next acquisition's new session, lost on close.
pub async fn session_states_follow_the_session(h: Arc<dyn Harness>) {
    let name = unique("states");
    let client = h.client().await;
    let mut states = client.session_states();
    assert_eq!(
        soon("next session state", states.next()).await,
        Some(SessionState::Connected)
    );
    h.expire_session(&client).await;
    // Expiring from outside may cut the connection first (ZooKeeper): a suspension
    // before the loss is fine.
    let mut state = soon("next session state", states.next()).await;
    while let Some(SessionState::Suspended | SessionState::Reconnected) = state {
        state = soon("next session state", states.next()).await;
    }
    assert_eq!(state, Some(SessionState::Lost(LostReason::SessionExpired)));
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    assert_eq!(
        soon("next session state", states.next()).await,
        Some(SessionState::Connected)
    );
    assert_eq!(client.session_state(), SessionState::Connected);
    guard.release().await.unwrap();
    client.close().await.unwrap();
    assert_eq!(
        soon("next session state", states.next()).await,
        Some(SessionState::Lost(LostReason::SessionClosed))
    );
}

/// One program, every backend: the same neutral data keys read and write the same data
/// through `put`, `get` and guarded writes (nested keys too: ZooKeeper parents are made),
/// and bad keys get the same typed error everywhere.
pub async fn data_keys_are_backend_neutral(h: Arc<dyn Harness>) {
    let name = unique("neutral");
    let base = format!("apps/{name}");
    let client = h.client().await.with_holder_value("neutral test");
    client.put(&format!("{base}/stock"), "3").await.unwrap();
    let stock = client.get(&format!("{base}/stock")).await.unwrap();
    assert_eq!(stock.as_deref(), Some(&b"3"[..]));
    assert_eq!(client.get(&format!("{base}/none")).await.unwrap(), None);

    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let order = format!("{base}/orders/1");
    guard
        .guarded_write(&[
            WriteOp::put(format!("{base}/stock"), "2"),
            WriteOp::put(&order, "paid"),
        ])
        .await
        .unwrap();
    assert_eq!(
        client.get(&order).await.unwrap().as_deref(),
        Some(&b"paid"[..])
    );
    guard
        .guarded_write(&[
            WriteOp::delete(&order),
            WriteOp::delete(format!("{base}/gone")),
        ])
        .await
        .unwrap();
    assert_eq!(client.get(&order).await.unwrap(), None);
    let stock = client.get(&format!("{base}/stock")).await.unwrap();
    assert_eq!(stock.as_deref(), Some(&b"2"[..]));

    // The entry carries the client's holder value on every backend.
    let queue = client.queue(&name, QueueKind::Lock).await.unwrap();
    assert_eq!(queue[0].value, b"neutral test");

    // The lock's own entry, named as a data key, is inside the lock prefix: refused, as are
    // malformed keys, before anything is sent.
    let own = guard.key().trim_start_matches('/').to_owned();
    for bad in [own.as_str(), "/abs/key", "a//b", "a/../b", ""] {
        let read = client.get(bad).await;
        assert!(
            matches!(read, Err(Error::InvalidKey { .. })),
            "get {bad:?}: {read:?}"
        );
        let write = guard.guarded_write(&[WriteOp::put(bad, "x")]).await;
        assert!(
            matches!(write, Err(Error::InvalidKey { .. })),
            "write {bad:?}: {write:?}"
        );
    }
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
}

/// `client.check(sequencer)` on a lazy client (no session of its own).
async fn check(reader: &Client, sequencer: &Sequencer) -> SequencerStatus {
    soon("check", reader.check(sequencer)).await.unwrap()
}

/// A sequencer names its holder, round-trips through its string form, and checks as
/// current while held (waiters behind change nothing), superseded once a newer holder
/// holds, and lost when its entry is gone and nobody newer holds. A sequencer of another
/// backend or prefix is refused with a typed error.
pub async fn check_follows_the_holder(h: Arc<dyn Harness>) {
    use SequencerStatus::{Current, Lost, Superseded};
    let name = unique("check");
    let (a, b) = (h.client().await, h.client().await);
    let reader = Client::connect_lazy(&h.url(10)).await.unwrap();
    let a_guard = a.mutex(&name).unwrap().lock().await.unwrap();
    let a_seq = a_guard.sequencer().clone();
    assert_eq!(
        (a_seq.backend(), a_seq.kind(), a_seq.name()),
        (a.backend(), QueueKind::Lock, name.as_str())
    );
    assert_eq!(
        (a_seq.fencing_token(), a_seq.key(), a_seq.session()),
        (
            a_guard.fencing_token(),
            a_guard.key(),
            a.session_id().as_str()
        )
    );
    assert_eq!(a_seq.to_string().parse::<Sequencer>().unwrap(), a_seq);
    assert_eq!(check(&reader, &a_seq).await, Current);

    let mutex_b = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex_b.lock().await.unwrap() });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert_eq!(check(&reader, &a_seq).await, Current);
    a_guard.release().await.unwrap();
    let b_guard = soon("waiter acquires", waiter).await.unwrap();
    let b_seq = b_guard.sequencer().clone();
    assert_eq!(check(&reader, &a_seq).await, Superseded);
    assert_eq!(check(&reader, &b_seq).await, Current);
    b_guard.release().await.unwrap();
    assert_eq!(check(&reader, &a_seq).await, Lost);
    assert_eq!(check(&reader, &b_seq).await, Lost);

    // A later holder supersedes every earlier one.
    let c_guard = a.mutex(&name).unwrap().lock().await.unwrap();
    assert_eq!(check(&reader, &a_seq).await, Superseded);
    assert_eq!(check(&reader, &b_seq).await, Superseded);
    assert_eq!(check(&reader, c_guard.sequencer()).await, Current);

    let text = a_seq.to_string();
    let (_, rest) = text.split_once(&format!(":{}:", a_seq.backend())).unwrap();
    let other = if a.backend() == fairlock::BackendKind::Memory {
        "etcd"
    } else {
        "memory"
    };
    let (head, key) = text.rsplit_once(':').unwrap();
    for refused in [
        format!("fl1:{other}:{rest}"),
        format!("{head}:elsewhere{key}"),
    ] {
        let sequencer: Sequencer = refused.parse().unwrap();
        let checked = reader.check(&sequencer).await;
        assert!(
            matches!(checked, Err(Error::InvalidSequencer { .. })),
            "{refused}: {checked:?}"
        );
    }
    c_guard.release().await.unwrap();
    reader.close().await.unwrap();
}

/// A holder whose session expired: lost while nobody else holds, superseded once someone
/// does.
pub async fn check_after_session_expiry(h: Arc<dyn Harness>) {
    let name = unique("check-expiry");
    let (a, b, reader) = (h.client().await, h.client().await, h.client().await);
    let guard = a.mutex(&name).unwrap().lock().await.unwrap();
    let sequencer = guard.sequencer().clone();
    h.expire_session(&a).await;
    eventually("entry gone with the session", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    assert_eq!(check(&reader, &sequencer).await, SequencerStatus::Lost);
    let next = b.mutex(&name).unwrap().lock().await.unwrap();
    assert_eq!(
        check(&reader, &sequencer).await,
        SequencerStatus::Superseded
    );
    assert_eq!(
        check(&reader, next.sequencer()).await,
        SequencerStatus::Current
    );
    next.release().await.unwrap();
    drop(guard);
}

/// A leader's sequencer is of kind election and follows leadership as a lock's follows
/// the lock.
pub async fn check_follows_the_leader(h: Arc<dyn Harness>) {
    let name = unique("check-elect");
    let (a, b, reader) = (h.client().await, h.client().await, h.client().await);
    let a_leads = a.election(&name).unwrap().campaign(b"a").await.unwrap();
    let a_seq = a_leads.sequencer().clone();
    assert_eq!(a_seq.kind(), QueueKind::Election);
    assert_eq!(a_seq.fencing_token(), a_leads.fencing_token());
    assert_eq!(check(&reader, &a_seq).await, SequencerStatus::Current);
    let b_election = b.election(&name).unwrap();
    let b_campaign = tokio::spawn(async move { b_election.campaign(b"b").await.unwrap() });
    eventually("b queued", || async { h.entries(&name).await.len() == 2 }).await;
    a_leads.resign().await.unwrap();
    let b_leads = soon("b leads", b_campaign).await.unwrap();
    assert_eq!(check(&reader, &a_seq).await, SequencerStatus::Superseded);
    assert_eq!(
        check(&reader, b_leads.sequencer()).await,
        SequencerStatus::Current
    );
    let b_seq = b_leads.sequencer().clone();
    b_leads.resign().await.unwrap();
    assert_eq!(check(&reader, &b_seq).await, SequencerStatus::Lost);
}

/// The paused holder: A takes the lock and, before its write, stalls past its TTL (its
/// keep-alive stops). B takes over and writes to an SQL store that keeps the token of the
/// last write. When A's write finally arrives with its old token, the store refuses it (no
/// row changes), and so does a `Fence`; B's write stands, and A's sequencer checks as
/// superseded.
pub async fn late_write_of_a_paused_holder_is_refused_by_the_store(h: Arc<dyn Harness>) {
    let name = unique("fenced-sql");
    let accounts = store::Accounts::new(rusqlite::Connection::open_in_memory().unwrap()).unwrap();
    accounts.open(&name, 100).unwrap();
    let fence = fairlock::Fence::new();
    let (a, b) = (h.client_ttl(3).await, h.client().await);
    let a_guard = a.mutex(&name).unwrap().lock().await.unwrap();
    let a_seq: Sequencer = a_guard.sequencer().to_string().parse().unwrap();

    a.abandon(); // A pauses: no more keep-alives, its write held back
    let b_guard = soon("B acquires after A's TTL", b.mutex(&name).unwrap().lock())
        .await
        .unwrap();
    let b_token = b_guard.fencing_token();
    assert!(b_token > a_seq.fencing_token());
    fence.admit(&name, b_token).unwrap();
    let written = accounts.set_balance(&name, 70, b_token).unwrap();
    assert_eq!(written, store::Write::Applied);

    // A wakes up and writes with the token it had.
    let late = accounts
        .set_balance(&name, 150, a_seq.fencing_token())
        .unwrap();
    assert_eq!(late, store::Write::Refused { newer: b_token });
    let stale = fence.admit(&name, a_seq.fencing_token()).unwrap_err();
    assert_eq!(
        (stale.token, stale.highest),
        (a_seq.fencing_token(), b_token)
    );
    assert_eq!(accounts.balance(&name).unwrap(), (70, b_token));
    assert_eq!(check(&b, &a_seq).await, SequencerStatus::Superseded);

    // B writes again with the same token: the same holder, applied.
    let again = accounts.set_balance(&name, 60, b_token).unwrap();
    assert_eq!(again, store::Write::Applied);
    b_guard.release().await.unwrap();
    std::mem::forget(a_guard); // A "crashed" (abandoned): nothing left to release
}

/// Lock-delay: a clean release hands the lock on at once, to a waiter and to a later
/// `try_lock` (consul applies its lock-delay here too; we must not).
pub async fn lock_delay_not_applied_after_a_clean_release(h: Arc<dyn Harness>) {
    let name = unique("delay-clean");
    let delay = Duration::from_secs(60);
    let (a, b) = (
        h.client_with_lock_delay(delay).await,
        h.client_with_lock_delay(delay).await,
    );
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    held.release().await.unwrap();
    // Well before the delay (SOON is a third of it).
    let next = soon("the waiter takes over at once", waiter).await.unwrap();
    next.release().await.unwrap();
    let again = a.mutex(&name).unwrap().try_lock().await.unwrap();
    let again = again.expect("a try_lock right after a clean release is refused");
    again.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
}

/// Lock-delay after an unclean end (`loss` ends holder `a`'s hold from outside): the next
/// holder is told no sooner than the delay after the loss; a `try_lock` meanwhile is
/// refused and leaves no entry; after that holder's clean release there is no delay.
async fn lock_delay_after(h: Arc<dyn Harness>, tag: &str, expire: bool) {
    let name = unique(tag);
    let delay = Duration::from_secs(3);
    let clients = [
        h.client_with_lock_delay(delay).await,
        h.client_with_lock_delay(delay).await,
        h.client_with_lock_delay(delay).await,
    ];
    let [a, b, c] = &clients;
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    let mutex = b.mutex(&name).unwrap();
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    let before_loss = tokio::time::Instant::now();
    if expire {
        h.expire_session(a).await;
    } else {
        h.delete_entry(held.key()).await;
    }
    soon("the holder hears of its loss", held.lost()).await;
    eventually("the lost entry is gone", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    // During the delay (nothing is held yet: the waiter sits it out).
    if before_loss.elapsed() < delay / 2 {
        assert!(!waiter.is_finished(), "no delay after an unclean end");
        let tried = c.mutex(&name).unwrap().try_lock().await.unwrap();
        assert!(
            tried.is_none(),
            "a try_lock during the lock-delay succeeded"
        );
        assert_eq!(
            h.entries(&name).await.len(),
            1,
            "the refused try left an entry"
        );
    }
    let next = soon("the waiter takes over after the delay", waiter)
        .await
        .unwrap();
    let waited = before_loss.elapsed();
    assert!(waited >= delay, "told it holds {waited:?} after the loss");
    next.release().await.unwrap();
    let again = c.mutex(&name).unwrap().try_lock().await.unwrap();
    let again = again.expect("delayed after a clean release");
    again.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
    std::mem::forget(held);
}

pub async fn lock_delay_after_the_holder_expired(h: Arc<dyn Harness>) {
    lock_delay_after(h, "delay-expired", true).await;
}

pub async fn lock_delay_after_the_holder_was_deleted(h: Arc<dyn Harness>) {
    lock_delay_after(h, "delay-deleted", false).await;
}

/// A timeout and a cancellation during the lock-delay leave no entry; the delay counts
/// towards `lock_timeout`.
pub async fn lock_delay_cancel_and_timeout_leave_no_entry(h: Arc<dyn Harness>) {
    let name = unique("delay-cancel");
    let delay = Duration::from_secs(60);
    let (a, b) = (
        h.client_with_lock_delay(delay).await,
        h.client_with_lock_delay(delay).await,
    );
    let held = a.mutex(&name).unwrap().lock().await.unwrap();
    h.delete_entry(held.key()).await;
    soon("the holder hears of its loss", held.lost()).await;
    let mutex = b.mutex(&name).unwrap();
    let started = tokio::time::Instant::now();
    let got = mutex
        .lock_timeout(Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(got.is_none(), "acquired during the lock-delay");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        h.entries(&name).await.is_empty(),
        "the timed-out entry is left"
    );
    let m = mutex.clone();
    let waiting = tokio::spawn(async move { m.lock().await.map(drop) });
    eventually("waiter queued", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "acquired during the lock-delay");
    waiting.abort();
    let _ = waiting.await;
    eventually("the cancelled entry is removed", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    assert!(mutex.try_lock().await.unwrap().is_none());
    assert!(
        h.entries(&name).await.is_empty(),
        "the refused try left an entry"
    );
    std::mem::forget(held);
}

macro_rules! conformance {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            async fn harness() -> Arc<dyn Harness> {
                Arc::new($harness)
            }

            conformance!(@tests
                mutual_exclusion, fifo_order, try_lock_leaves_no_entry, try_lock_respects_waiters,
                timeout_leaves_no_entry, dropped_waiter_leaves_no_entry, one_client_many_waiters,
                cancelled_at_any_point_leaves_no_entry,
                crashed_holder_replaced_after_ttl, fencing_tokens_increase,
                lost_when_session_revoked, lost_when_entry_deleted,
                waiter_session_expires_while_queued, dropped_guard_releases,
                close_releases_everything, bad_names_refused, election_fifo_succession,
                observe_yields_each_change_once, no_two_leaders_under_crash_and_restart,
                proclaim_after_loss_fails, reentrant_holds_are_counted,
                own_release_is_reported_as_released,
                acquire_right_after_the_session_ended_from_outside,
                session_states_follow_the_session, data_keys_are_backend_neutral,
                check_follows_the_holder, check_after_session_expiry, check_follows_the_leader,
                late_write_of_a_paused_holder_is_refused_by_the_store,
                leader_loop_loss_during_the_work, leader_loop_contains_a_panic,
                leader_loop_shutdown_while_campaigning, leader_loop_shutdown_while_leading,
                leader_loop_resigns_then_requeues_when_the_work_returns,
                leader_loop_reports_work_ignoring_cancellation,
                lock_delay_not_applied_after_a_clean_release, lock_delay_after_the_holder_expired,
                lock_delay_after_the_holder_was_deleted,
                lock_delay_cancel_and_timeout_leave_no_entry,
                rw_writers_exclude_everyone, rw_readers_share,
                rw_fifo_between_readers_and_writers, rw_try_timeout_and_cancel_leave_no_entry,
                rw_crashed_holder_replaced_after_ttl, rw_fencing_guarded_writes_and_checks,
                rw_lock_delay_refused, multi_lock_all_or_nothing,
                multi_locks_in_any_order_never_deadlock,
                multi_lock_fails_when_a_taken_lock_is_lost,
                semaphore_admits_up_to_its_limit, semaphore_never_exceeds_its_limit,
                semaphore_fifo_order, semaphore_limit_is_stored_with_it,
                semaphore_try_timeout_and_cancel_leave_no_entry,
                semaphore_crashed_holder_replaced_after_ttl,
                semaphore_lost_lease_and_guarded_writes, semaphore_sequencers_are_checked);
        }
    };
    (@tests $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(harness().await).await;
            }
        )*
    };
}

conformance!(memory, common::MemoryHarness::new());
#[cfg(feature = "etcd")]
conformance!(etcd, common::EtcdHarness::new().await);
#[cfg(feature = "zookeeper")]
conformance!(zookeeper, common::ZkHarness::new().await);
#[cfg(feature = "zookeeper")]
conformance!(zookeeper_secure, common::ZkSecureHarness::new().await);
// Once more over mutual TLS with user/password and RBAC (scripts/secure-etcd.sh).
#[cfg(feature = "etcd")]
conformance!(etcd_tls_auth, common::SecureEtcdHarness::new().await);
