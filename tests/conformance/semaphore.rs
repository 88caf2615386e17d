//! The counting semaphore's contract: at most `limit` holders, FIFO at the gate, the limit
//! stored with the semaphore, and what the mutex promises (no entry left by a try, a
//! timeout or a cancellation; take-over after a crash; fencing; lost signal; guarded
//! writes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{eventually, soon, unique, Harness};
use fairlock::{DistributedMutex, Error, LockGuard, WriteOp};

/// The gate queue's entries of semaphore `name` (its waiters).
async fn gate(h: &Arc<dyn Harness>, name: &str) -> Vec<String> {
    h.entries(&format!("{name}-__lock__")).await
}

/// Starts `semaphore.lock()` in a task and returns it once `waiters` entries wait at the
/// gate of `name` (the new one among them).
async fn waiting(
    h: &Arc<dyn Harness>,
    name: &str,
    semaphore: &Arc<dyn DistributedMutex>,
    waiters: usize,
) -> tokio::task::JoinHandle<LockGuard> {
    let semaphore = semaphore.clone();
    let task = tokio::spawn(async move { semaphore.lock().await.unwrap() });
    eventually("waiter at the gate", || async {
        gate(h, name).await.len() == waiters
    })
    .await;
    task
}

/// `limit` clients each take a lease without waiting; the next one does not get one.
pub async fn semaphore_admits_up_to_its_limit(h: Arc<dyn Harness>) {
    let name = unique("sem-limit");
    let mut clients = Vec::new();
    let mut guards = Vec::new();
    for _ in 0..3 {
        let client = h.client().await;
        let semaphore = client.semaphore(&name, 3).unwrap();
        guards.push(
            semaphore
                .try_lock()
                .await
                .unwrap()
                .expect("room in the pool"),
        );
        clients.push(client);
    }
    assert_eq!(h.entries(&name).await.len(), 3, "one lease per holder");
    let fourth = h.client().await;
    let semaphore = fourth.semaphore(&name, 3).unwrap();
    assert!(semaphore.try_lock().await.unwrap().is_none(), "a 4th of 3");
    let tokens: Vec<u64> = guards.iter().map(LockGuard::fencing_token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens {tokens:?}");
    for guard in guards {
        guard.release().await.unwrap();
    }
    assert!(h.entries(&name).await.is_empty());
    assert!(gate(&h, &name).await.is_empty());
}

/// 10 contenders on separate sessions, three rounds each, against a limit of 3: never more
/// than 3 inside, every round done, nothing left behind.
pub async fn semaphore_never_exceeds_its_limit(h: Arc<dyn Harness>) {
    let name = unique("sem-exclusion");
    let inside = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (h, name, inside, rounds) = (h.clone(), name.clone(), inside.clone(), rounds.clone());
        tasks.push(tokio::spawn(async move {
            let client = h.client().await;
            let semaphore = client.semaphore(&name, 3).unwrap();
            for _ in 0..3 {
                let guard = semaphore.lock().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= 3, "{now} holders of a semaphore of 3");
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                rounds.fetch_add(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        soon("contender", task).await.unwrap();
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 30);
    assert!(h.entries(&name).await.is_empty());
    assert!(gate(&h, &name).await.is_empty());
}

/// Waiters get leases in the order they queued, one per release.
pub async fn semaphore_fifo_order(h: Arc<dyn Harness>) {
    let name = unique("sem-fifo");
    let holder = h.client().await;
    let semaphore = holder.semaphore(&name, 2).unwrap();
    let (a, b) = (
        semaphore.lock().await.unwrap(),
        semaphore.lock().await.unwrap(),
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    let (mut tasks, mut clients) = (Vec::new(), Vec::new());
    for i in 0..4 {
        let (h2, name2, order2) = (h.clone(), name.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let client = h2.client().await;
            let guard = client.semaphore(&name2, 2).unwrap().lock().await.unwrap();
            order2.lock().unwrap().push(i);
            (client, guard)
        }));
        eventually("waiter at the gate", || async {
            gate(&h, &name).await.len() == i + 1
        })
        .await;
    }
    // One release at a time: each admits the waiter at the gate's head, and only it.
    let mut held = vec![b, a];
    for (i, task) in tasks.into_iter().enumerate() {
        held.pop().unwrap().release().await.unwrap();
        let (client, guard) = soon("the next waiter", task).await.unwrap();
        assert_eq!(*order.lock().unwrap(), (0..=i).collect::<Vec<_>>());
        held.insert(0, guard);
        clients.push(client);
    }
    for guard in held {
        guard.release().await.unwrap();
    }
    for client in clients {
        client.close().await.unwrap();
    }
    assert!(h.entries(&name).await.is_empty());
}

/// The first user stores the limit; another limit is refused with a typed error, and a
/// limit of 0 is refused up front.
pub async fn semaphore_limit_is_stored_with_it(h: Arc<dyn Harness>) {
    let name = unique("sem-mismatch");
    let (a, b) = (h.client().await, h.client().await);
    let guard = a.semaphore(&name, 2).unwrap().lock().await.unwrap();
    match b.semaphore(&name, 3).unwrap().lock().await {
        Err(Error::LimitMismatch {
            stored: 2,
            requested: 3,
            ..
        }) => {}
        other => panic!("expected LimitMismatch, got {other:?}"),
    }
    match b.semaphore(&name, 3).unwrap().try_lock().await {
        Err(Error::LimitMismatch { .. }) => {}
        other => panic!("expected LimitMismatch, got {other:?}"),
    }
    // The refusals left nothing behind.
    assert_eq!(h.entries(&name).await, [guard.key().to_owned()]);
    assert!(gate(&h, &name).await.is_empty());
    assert!(matches!(
        b.semaphore(&name, 0),
        Err(Error::InvalidConfig(_))
    ));
    // The same limit shares.
    let second = b.semaphore(&name, 2).unwrap().try_lock().await.unwrap();
    assert!(second.is_some());
    drop(second);
    guard.release().await.unwrap();
}

/// A try, a timeout and a cancelled wait leave no gate entry and no lease.
pub async fn semaphore_try_timeout_and_cancel_leave_no_entry(h: Arc<dyn Harness>) {
    let name = unique("sem-cancel");
    let (a, b) = (h.client().await, h.client().await);
    let held = a.semaphore(&name, 1).unwrap().lock().await.unwrap();
    let semaphore = b.semaphore(&name, 1).unwrap();
    assert!(semaphore.try_lock().await.unwrap().is_none());
    let timed_out = semaphore
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(timed_out.is_none());
    assert_eq!(h.entries(&name).await, [held.key().to_owned()]);
    assert!(gate(&h, &name).await.is_empty());

    let first = waiting(&h, &name, &semaphore, 1).await;
    // Behind a waiter, a try is refused (the gate is taken) and leaves nothing.
    assert!(semaphore.try_lock().await.unwrap().is_none());
    let second = waiting(&h, &name, &semaphore, 2).await;
    first.abort();
    second.abort();
    let _ = (first.await, second.await);
    eventually("the cancelled waiters removed", || async {
        gate(&h, &name).await.is_empty()
    })
    .await;
    held.release().await.unwrap();
    let next = semaphore.try_lock().await.unwrap();
    assert!(next.is_some(), "a cancelled waiter still holds a place");
    drop(next);
    eventually("nothing left", || async {
        h.entries(&name).await.is_empty() && gate(&h, &name).await.is_empty()
    })
    .await;
}

/// A crashed holder's lease goes with its session: the waiter takes over after the TTL,
/// with a greater token, and the crashed holder hears of its loss.
pub async fn semaphore_crashed_holder_replaced_after_ttl(h: Arc<dyn Harness>) {
    let name = unique("sem-crash");
    let crashed = h.client_ttl(3).await;
    let held = crashed.semaphore(&name, 1).unwrap().lock().await.unwrap();
    let successor = h.client().await;
    let semaphore = successor.semaphore(&name, 1).unwrap();
    let waiter = waiting(&h, &name, &semaphore, 1).await;
    crashed.abandon();
    soon("the crashed holder hears of its loss", held.lost()).await;
    let guard = soon("the waiter takes over after the TTL", waiter)
        .await
        .unwrap();
    assert!(guard.fencing_token() > held.fencing_token());
    std::mem::forget(held);
    guard.release().await.unwrap();
}

/// A lease deleted from outside is lost: its holder hears of it, its guarded writes are
/// refused, and its place goes to the next waiter. Guarded writes apply while it holds.
pub async fn semaphore_lost_lease_and_guarded_writes(h: Arc<dyn Harness>) {
    let name = unique("sem-lost");
    let key = h.data_key(&name);
    let (a, b) = (h.client().await, h.client().await);
    let held = a.semaphore(&name, 1).unwrap().lock().await.unwrap();
    held.guarded_write(&[WriteOp::put(&key, "a")])
        .await
        .unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"a"[..]));
    let semaphore = b.semaphore(&name, 1).unwrap();
    let waiter = waiting(&h, &name, &semaphore, 1).await;
    h.delete_entry(held.key()).await;
    soon("the holder hears of its loss", held.lost()).await;
    let refused = held.guarded_write(&[WriteOp::put(&key, "late")]).await;
    assert!(matches!(refused, Err(Error::LockLost(_))), "{refused:?}");
    let next = soon("the waiter gets the freed lease", waiter)
        .await
        .unwrap();
    assert!(next.fencing_token() > held.fencing_token());
    next.guarded_write(&[WriteOp::put(&key, "b")])
        .await
        .unwrap();
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some(&b"b"[..]));
    next.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
}

/// Every lease's sequencer is current while the lease exists, whichever lease came first,
/// and lost once it is released; never superseded.
pub async fn semaphore_sequencers_are_checked(h: Arc<dyn Harness>) {
    use fairlock::SequencerStatus::{Current, Lost};
    let name = unique("sem-check");
    let (a, b) = (h.client().await, h.client().await);
    let observer = fairlock::Client::connect_lazy(&h.url(10)).await.unwrap();
    let first = a.semaphore(&name, 2).unwrap().lock().await.unwrap();
    let second = b.semaphore(&name, 2).unwrap().lock().await.unwrap();
    let (s1, s2) = (first.sequencer().clone(), second.sequencer().clone());
    assert!(s1.is_semaphore() && s2.is_semaphore());
    assert_eq!(s2.to_string().parse::<fairlock::Sequencer>().unwrap(), s2);
    assert_eq!(observer.check(&s1).await.unwrap(), Current);
    assert_eq!(
        observer.check(&s2).await.unwrap(),
        Current,
        "the second lease"
    );
    first.release().await.unwrap();
    assert_eq!(observer.check(&s1).await.unwrap(), Lost);
    assert_eq!(observer.check(&s2).await.unwrap(), Current);
    second.release().await.unwrap();
    assert_eq!(observer.check(&s2).await.unwrap(), Lost);
}
