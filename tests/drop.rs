//! Dropping guards and pending acquisitions in awkward places: on a thread outside any
//! runtime, and after the runtime itself is gone. Never a panic, never a hang, and the lock
//! is released whenever a runtime is still there to do it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, unique, Harness};

/// A guard dropped on a plain thread (no runtime there) is still released.
async fn drop_on_a_thread_without_runtime(h: Arc<dyn Harness>) {
    let name = unique("drop-thread");
    let client = h.client().await;
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("drop panicked");
    eventually("released", || async { h.entries(&name).await.is_empty() }).await;
}

/// A guard that outlives its runtime drops without panicking.
fn drop_after_runtime_shutdown(make: fn() -> Arc<dyn Harness>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (guard, client) = runtime.block_on(async {
        let h = make();
        let client = h.client().await;
        let guard = client
            .mutex(&unique("drop-late"))
            .unwrap()
            .lock()
            .await
            .unwrap();
        (guard, client)
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(guard);
    drop(client);
}

/// `observe()` called where no runtime is (a plain thread) does not panic; the stream
/// works once polled inside one.
async fn observe_created_outside_a_runtime(h: Arc<dyn Harness>) {
    use futures::StreamExt;

    let name = unique("observe-thread");
    let client = h.client().await;
    let election = client.election(&name).unwrap();
    let observer = election.clone();
    let mut stream = std::thread::spawn(move || observer.observe())
        .join()
        .expect("observe() panicked outside a runtime");
    let leadership = election.campaign(b"one").await.unwrap();
    let seen = common::soon("a leader", async {
        loop {
            match stream.next().await {
                Some(Ok(Some(leader))) => break leader,
                Some(_) => continue,
                None => panic!("the stream ended"),
            }
        }
    })
    .await;
    assert_eq!(seen.value, b"one");
    leadership.resign().await.unwrap();
}

macro_rules! drop_tests {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_on_a_thread_without_runtime() {
                super::drop_on_a_thread_without_runtime(Arc::new($harness)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn observe_created_outside_a_runtime() {
                super::observe_created_outside_a_runtime(Arc::new($harness)).await;
            }

            #[test]
            fn drop_after_runtime_shutdown() {
                fn make() -> Arc<dyn Harness> {
                    futures::executor::block_on(async { Arc::new($harness) })
                }
                super::drop_after_runtime_shutdown(make);
            }
        }
    };
}

drop_tests!(memory, common::MemoryHarness::new());
#[cfg(feature = "etcd")]
drop_tests!(etcd, common::EtcdHarness::new().await);
#[cfg(feature = "zookeeper")]
drop_tests!(zookeeper, common::ZkHarness::new().await);
