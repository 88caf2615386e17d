//! Partitions between a holder and its server, played with a silent TCP proxy: a short one
//! loses nothing (the session is only suspended); a long one makes `lost()` complete, and
//! no later than the server frees the lock for someone else.

mod common;

use std::sync::Arc;

use common::proxy::Proxy;
use common::{eventually, soon, unique, Harness};
use fairlock::{Client, LostReason, WriteOp};

async fn short_partition_loses_nothing(h: Arc<dyn Harness>) {
    let proxy = Proxy::start(&h.endpoint()).await;
    let client = Client::connect(&h.url_via(&proxy.endpoint(), 10))
        .await
        .unwrap();
    let name = unique("short-partition");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();

    proxy.cut();
    // Long enough for the client to notice (keep-alive round, dead connection), well
    // within any loss deadline.
    eventually("session suspended", || async { client.is_suspended() }).await;
    assert!(!guard.is_lost());
    proxy.restore();

    eventually("session confirmed again", || async {
        !client.is_suspended()
    })
    .await;
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

macro_rules! partition_tests {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn short_partition_loses_nothing() {
                super::short_partition_loses_nothing(Arc::new($harness)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn long_partition_is_reported_before_the_server_frees_the_lock() {
                super::long_partition_is_reported_before_the_server_frees_the_lock(Arc::new(
                    $harness,
                ))
                .await;
            }
        }
    };
}

partition_tests!(etcd, common::EtcdHarness::new().await);
partition_tests!(zookeeper, common::ZkHarness::new().await);
