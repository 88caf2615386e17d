//! The read-write lock's and the multi-lock's contract: exclusion between writers and everyone, sharing among
//! readers, FIFO between the two, and what the mutex promises (no entry left by a try, a
//! timeout or a cancellation; take-over after a crash; fencing; guarded writes; checks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{eventually, soon, unique, Harness};
use fairlock::{
    Client, DistributedMutex, Error, LockGuard, MultiLock, QueueKind, SequencerStatus, WriteOp,
};

/// Starts `side.lock()` in a task and returns it once the queue of `name` holds `entries`
/// entries (the new one among them).
async fn queued(
    h: &Arc<dyn Harness>,
    name: &str,
    side: &Arc<dyn DistributedMutex>,
    entries: usize,
    what: &str,
) -> tokio::task::JoinHandle<LockGuard> {
    let side = side.clone();
    let task = tokio::spawn(async move { side.lock().await.unwrap() });
    eventually(what, || async { h.entries(name).await.len() == entries }).await;
    task
}

/// Who is inside, checked on every entry: a writer finds nobody, a reader no writer.
#[derive(Default)]
struct Inside {
    readers: AtomicUsize,
    writers: AtomicUsize,
    /// The most readers seen inside at once.
    most_readers: AtomicUsize,
}

/// 12 contenders on separate sessions, readers and writers mixed, each three times: no
/// writer is ever inside with anyone else, and every writer's update survives.
pub async fn rw_writers_exclude_everyone(h: Arc<dyn Harness>) {
    let name = unique("rw");
    let inside = Arc::new(Inside::default());
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (h, name, inside, counter) = (h.clone(), name.clone(), inside.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let client = h.client().await;
            let rw = client.rw_lock(&name).unwrap();
            for round in 0..3 {
                if (i + round) % 3 == 0 {
                    let guard = rw.writer().lock().await.unwrap();
                    assert_eq!(
                        inside.writers.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two writers"
                    );
                    assert_eq!(
                        inside.readers.load(Ordering::SeqCst),
                        0,
                        "a writer with readers"
                    );
                    let read = counter.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    counter.store(read + 1, Ordering::SeqCst);
                    inside.writers.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                } else {
                    let guard = rw.reader().lock().await.unwrap();
                    let now = inside.readers.fetch_add(1, Ordering::SeqCst) + 1;
                    inside.most_readers.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(
                        inside.writers.load(Ordering::SeqCst),
                        0,
                        "a reader with a writer"
                    );
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    inside.readers.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            }
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        soon("contender", task).await.unwrap();
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        12,
        "a writer's update was lost"
    );
    assert!(h.entries(&name).await.is_empty());
}

/// Readers hold together; a writer waits for all of them, and holds alone.
pub async fn rw_readers_share(h: Arc<dyn Harness>) {
    let name = unique("rw-share");
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let r1 = a.rw_lock(&name).unwrap().reader().lock().await.unwrap();
    let b_rw = b.rw_lock(&name).unwrap();
    // A second reader gets in while the first holds (no wait: nothing exclusive ahead).
    let r2 = soon("a second reader", b_rw.reader().lock()).await.unwrap();
    let writer = c.rw_lock(&name).unwrap();
    assert!(writer.writer().try_lock().await.unwrap().is_none());
    let waiting = queued(&h, &name, writer.writer(), 3, "writer queued").await;
    r1.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a writer held with a reader inside");
    r2.release().await.unwrap();
    let w = soon("the writer after the readers", waiting).await.unwrap();
    assert!(b_rw.reader().try_lock().await.unwrap().is_none());
    // A mutex of the same name is a writer too.
    assert!(a.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    w.release().await.unwrap();
    assert!(h.entries(&name).await.is_empty());
}

/// Arrival order between readers and writers: a writer W1 holds; R1, R2, W2, R3 queue in
/// that order. W1's release admits R1 and R2 together, not R3 (behind W2); W2 comes after
/// both readers, R3 after W2.
pub async fn rw_fifo_between_readers_and_writers(h: Arc<dyn Harness>) {
    let name = unique("rw-fifo");
    let holder = h.client().await;
    let w1 = holder
        .rw_lock(&name)
        .unwrap()
        .writer()
        .lock()
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let (tx, mut held) = tokio::sync::mpsc::unbounded_channel::<(&'static str, LockGuard)>();
    let mut tasks = Vec::new();
    for (i, who) in ["R1", "R2", "W2", "R3"].into_iter().enumerate() {
        let (h2, name2, order2, tx) = (h.clone(), name.clone(), order.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let client = h2.client().await;
            let rw = client.rw_lock(&name2).unwrap();
            let side = if who.starts_with('W') {
                rw.writer()
            } else {
                rw.reader()
            };
            let guard = side.lock().await.unwrap();
            order2.lock().unwrap().push(who);
            tx.send((who, guard)).unwrap();
            client
        }));
        eventually("queued", || async { h.entries(&name).await.len() == i + 2 }).await;
    }
    w1.release().await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(soon("the readers behind W1", held.recv()).await.unwrap());
    }
    let mut first: Vec<&str> = readers.iter().map(|(who, _)| *who).collect();
    first.sort_unstable();
    assert_eq!(first, ["R1", "R2"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(held.try_recv().is_err(), "W2 or R3 held with R1 and R2");
    for (_, guard) in readers {
        guard.release().await.unwrap();
    }
    let (who, w2) = soon("W2", held.recv()).await.unwrap();
    assert_eq!(who, "W2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(held.try_recv().is_err(), "R3 held with W2");
    w2.release().await.unwrap();
    let (who, r3) = soon("R3", held.recv()).await.unwrap();
    assert_eq!(who, "R3");
    r3.release().await.unwrap();
    for task in tasks {
        soon("waiter", task).await.unwrap().close().await.unwrap();
    }
    assert_eq!(order.lock().unwrap()[2..], ["W2", "R3"]);
    assert!(h.entries(&name).await.is_empty());
}

/// A refused try, a timed-out wait and a cancelled wait leave no entry, on either side;
/// a waiting writer keeps new readers out, and its cancellation lets them in again.
pub async fn rw_try_timeout_and_cancel_leave_no_entry(h: Arc<dyn Harness>) {
    let name = unique("rw-cancel");
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let r = a.rw_lock(&name).unwrap().reader().lock().await.unwrap();
    let b_rw = b.rw_lock(&name).unwrap();
    assert!(b_rw.writer().try_lock().await.unwrap().is_none());
    let timed_out = b_rw
        .writer()
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(timed_out.is_none());
    assert_eq!(h.entries(&name).await, [r.key().to_owned()]);
    // A try on the read side shares with the reader.
    let c_rw = c.rw_lock(&name).unwrap();
    let shared = c_rw
        .reader()
        .try_lock()
        .await
        .unwrap()
        .expect("readers share");
    shared.release().await.unwrap();

    let waiting = queued(&h, &name, b_rw.writer(), 2, "writer queued").await;
    // Behind a waiting writer, a reader neither gets in nor leaves an entry.
    assert!(c_rw.reader().try_lock().await.unwrap().is_none());
    let timed_out = c_rw
        .reader()
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(timed_out.is_none());
    assert_eq!(h.entries(&name).await.len(), 2);
    let queued_reader = queued(&h, &name, c_rw.reader(), 3, "reader queued").await;
    queued_reader.abort();
    waiting.abort();
    let _ = (queued_reader.await, waiting.await);
    eventually("the cancelled entries removed", || async {
        h.entries(&name).await.len() == 1
    })
    .await;
    let shared = c_rw.reader().try_lock().await.unwrap();
    assert!(
        shared.is_some(),
        "a cancelled writer still keeps readers out"
    );
    drop(shared);
    r.release().await.unwrap();
    eventually("nothing left", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
}

/// A crashed reader's entry goes with its session: the writer waiting for it takes over
/// after the TTL, with a greater token; a crashed writer's waiting readers likewise.
pub async fn rw_crashed_holder_replaced_after_ttl(h: Arc<dyn Harness>) {
    let name = unique("rw-crash");
    let crashed = h.client_ttl(3).await;
    let held = crashed
        .rw_lock(&name)
        .unwrap()
        .reader()
        .lock()
        .await
        .unwrap();
    let token = held.fencing_token();
    let successor = h.client().await;
    let rw = successor.rw_lock(&name).unwrap();
    let waiter = queued(&h, &name, rw.writer(), 2, "writer queued").await;
    crashed.abandon();
    soon("the crashed reader hears of its loss", held.lost()).await;
    let guard = soon("the writer takes over after the TTL", waiter)
        .await
        .unwrap();
    assert!(guard.fencing_token() > token);
    std::mem::forget(held);

    let crashed = h.client_ttl(3).await;
    guard.release().await.unwrap();
    let held = crashed
        .rw_lock(&name)
        .unwrap()
        .writer()
        .lock()
        .await
        .unwrap();
    let waiter = queued(&h, &name, rw.reader(), 2, "reader queued").await;
    crashed.abandon();
    let guard = soon("the reader takes over after the TTL", waiter)
        .await
        .unwrap();
    assert!(guard.fencing_token() > held.fencing_token());
    std::mem::forget(held);
    guard.release().await.unwrap();
}

/// Tokens increase from one holder to the next; readers' guarded writes apply while they
/// hold and are refused after; `check` tells a holding reader (behind another reader) from
/// a waiting one and from one superseded by a writer; the listing marks readers.
pub async fn rw_fencing_guarded_writes_and_checks(h: Arc<dyn Harness>) {
    use SequencerStatus::{Current, Lost, Superseded};
    let name = unique("rw-fence");
    let key = h.data_key(&name);
    let (a, b, c) = (h.client().await, h.client().await, h.client().await);
    let observer = Client::connect_lazy(&h.url(10)).await.unwrap();
    let check = |s| {
        let observer = observer.clone();
        async move { observer.check(&s).await.unwrap() }
    };
    let r1 = a.rw_lock(&name).unwrap().reader().lock().await.unwrap();
    let r2 = b.rw_lock(&name).unwrap().reader().lock().await.unwrap();
    assert!(r2.fencing_token() > r1.fencing_token());
    let (s1, s2) = (r1.sequencer().clone(), r2.sequencer().clone());
    assert_eq!(check(s2.clone()).await, Current, "a reader behind a reader");
    r2.guarded_write(&[WriteOp::put(&key, "r2")]).await.unwrap();
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some(&b"r2"[..]));

    let c_rw = c.rw_lock(&name).unwrap();
    let writer = queued(&h, &name, c_rw.writer(), 3, "writer queued").await;
    let late_reader = queued(&h, &name, c_rw.reader(), 4, "reader queued").await;
    let queue = observer.queue(&name, QueueKind::Lock).await.unwrap();
    let shared: Vec<bool> = queue.iter().map(|e| e.shared).collect();
    assert_eq!(shared, [true, true, false, true]);
    let holding: Vec<bool> = queue.iter().map(|e| e.holds(&queue)).collect();
    assert_eq!(holding, [true, true, false, false]);

    r1.release().await.unwrap();
    // A reader whose entry is gone writes nothing.
    h.delete_entry(r2.key()).await;
    soon("the reader hears of its loss", r2.lost()).await;
    let err = r2.guarded_write(&[WriteOp::put(&key, "late")]).await;
    assert!(matches!(err, Err(Error::LockLost(_))), "{err:?}");
    let w = soon("the writer", writer).await.unwrap();
    let w_token = w.fencing_token();
    assert!(w_token > r2.fencing_token());
    drop(r2);
    assert_eq!((check(s1).await, check(s2).await), (Superseded, Superseded));
    w.release().await.unwrap();
    let r3 = soon("the reader behind the writer", late_reader)
        .await
        .unwrap();
    assert!(r3.fencing_token() > w_token);
    let s3 = r3.sequencer().clone();
    assert_eq!(check(s3.clone()).await, Current);
    r3.release().await.unwrap();
    assert_eq!(check(s3).await, Lost);
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some(&b"r2"[..]));
}

/// A client with a lock-delay refuses read-write locks with a clear error.
pub async fn rw_lock_delay_refused(h: Arc<dyn Harness>) {
    let client = h.client_with_lock_delay(Duration::from_secs(1)).await;
    let refused = client.rw_lock(&unique("rw-delay"));
    assert!(
        matches!(refused, Err(Error::InvalidConfig(_))),
        "{refused:?}"
    );
    assert!(matches!(
        h.client().await.rw_lock("bad\0name"),
        Err(Error::InvalidName { .. })
    ));
}

/// A multi-lock takes all of its locks or none: a refused try, a timeout and a
/// cancellation leave nothing held or queued on the locks it had taken or was waiting for.
pub async fn multi_lock_all_or_nothing(h: Arc<dyn Harness>) {
    let (a, b) = (h.client().await, h.client().await);
    let names = [unique("multi-a"), unique("multi-b"), unique("multi-c")];
    let rw = a.rw_lock(&names[2]).unwrap();
    let multi = MultiLock::new([
        a.mutex(&names[1]).unwrap(),
        rw.writer().clone(),
        a.mutex(&names[0]).unwrap(),
    ])
    .unwrap();
    let order: Vec<&str> = multi.locks().iter().map(|l| l.name()).collect();
    assert_eq!(order, names.iter().map(String::as_str).collect::<Vec<_>>());
    let blocker = b.mutex(&names[1]).unwrap().lock().await.unwrap();
    let free = |h: Arc<dyn Harness>, names: [String; 3]| async move {
        h.entries(&names[0]).await.is_empty() && h.entries(&names[2]).await.is_empty()
    };
    assert!(multi.try_lock().await.unwrap().is_none());
    assert!(
        free(h.clone(), names.clone()).await,
        "a refused try left an entry"
    );
    let timed_out = multi
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(timed_out.is_none());
    assert!(
        free(h.clone(), names.clone()).await,
        "a timeout left an entry"
    );
    let m = multi.clone();
    let waiting = tokio::spawn(async move { m.lock().await.map(drop) });
    eventually("the multi-lock waits for the second lock", || async {
        h.entries(&names[1]).await.len() == 2
    })
    .await;
    assert_eq!(
        h.entries(&names[0]).await.len(),
        1,
        "the first lock is held meanwhile"
    );
    waiting.abort();
    let _ = waiting.await;
    eventually("the cancelled multi-lock let go of everything", || async {
        free(h.clone(), names.clone()).await && h.entries(&names[1]).await.len() == 1
    })
    .await;
    blocker.release().await.unwrap();
    let held = multi.lock().await.unwrap();
    assert_eq!(held.guards().len(), 3);
    assert!(!held.is_lost());
    assert!(b
        .rw_lock(&names[2])
        .unwrap()
        .reader()
        .try_lock()
        .await
        .unwrap()
        .is_none());
    held.release().await.unwrap();
    for name in &names {
        assert!(
            h.entries(name).await.is_empty(),
            "{name} left after the release"
        );
    }
    let twice = MultiLock::new([rw.reader().clone(), rw.writer().clone()]);
    assert!(matches!(twice, Err(Error::InvalidName { .. })), "{twice:?}");
}

/// Multi-locks given the same names in opposite orders never deadlock: both take them in
/// the one global order.
pub async fn multi_locks_in_any_order_never_deadlock(h: Arc<dyn Harness>) {
    let (x, y) = (unique("multi-x"), unique("multi-y"));
    let mut tasks = Vec::new();
    for flip in [false, true] {
        let (h, x, y) = (h.clone(), x.clone(), y.clone());
        tasks.push(tokio::spawn(async move {
            let client = h.client().await;
            let (first, second) = if flip { (&y, &x) } else { (&x, &y) };
            let multi =
                MultiLock::new([client.mutex(first).unwrap(), client.mutex(second).unwrap()])
                    .unwrap();
            for _ in 0..5 {
                let held = multi.lock().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                held.release().await.unwrap();
            }
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        soon("both multi-locks finish", task).await.unwrap();
    }
}

/// A lock the multi-lock took is lost while it waits for the next one: the acquisition
/// fails with `LockLost` at once, and leaves nothing held or queued.
pub async fn multi_lock_fails_when_a_taken_lock_is_lost(h: Arc<dyn Harness>) {
    let (a, b) = (h.client().await, h.client().await);
    let (first, second) = (unique("multi-lost-a"), unique("multi-lost-b"));
    let blocker = b.mutex(&second).unwrap().lock().await.unwrap();
    let multi = MultiLock::new([a.mutex(&second).unwrap(), a.mutex(&first).unwrap()]).unwrap();
    let waiting = tokio::spawn(async move { multi.lock().await.map(drop) });
    eventually("the multi-lock waits for its second lock", || async {
        h.entries(&second).await.len() == 2
    })
    .await;
    let taken = h.entries(&first).await;
    assert_eq!(taken.len(), 1, "the first lock is held meanwhile");
    h.delete_entry(&taken[0]).await;
    let failed = soon("the multi-lock gives up", waiting).await.unwrap();
    assert!(matches!(failed, Err(Error::LockLost(_))), "{failed:?}");
    eventually("its waiting entry removed", || async {
        h.entries(&second).await.len() == 1
    })
    .await;
    assert!(h.entries(&first).await.is_empty());
    blocker.release().await.unwrap();
}
