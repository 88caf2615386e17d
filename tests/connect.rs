//! How a client gets its connection and session: lazy clients (no session until one is
//! needed) and clients built on a connection the user made, on every backend.

mod common;

#[cfg(feature = "zookeeper")]
use std::time::Duration;

use common::{soon, unique, Harness, MemoryHarness};
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
use fairlock::WriteOp;
use fairlock::{Client, Error, LostReason, QueueKind, SessionState};

/// A lazy memory client reads without a session, opens one at the first lock, and keeps
/// its accessors' promises before that.
#[tokio::test]
async fn lazy_memory_client_opens_no_session_until_it_locks() {
    let h = MemoryHarness::new();
    let store = fairlock::memory::MemoryStore::named(&store_of(&h));
    let name = unique("lazy");
    let client = Client::connect_lazy(&h.url(10)).await.unwrap();
    let first_lost = client.session_lost();
    assert_eq!(client.session_state(), SessionState::Idle);
    assert_eq!(client.session_id(), "");
    assert!(!client.is_suspended());

    assert!(client
        .queue(&name, QueueKind::Lock)
        .await
        .unwrap()
        .is_empty());
    let election = client.election(&name).unwrap();
    assert!(election.leader().await.unwrap().is_none());
    let absent = format!("fl1:memory:lock:{name}:5:1:fairlock/{name}/1-0");
    let status = client.check(&absent.parse().unwrap()).await.unwrap();
    assert_eq!(status, fairlock::SequencerStatus::Lost);
    assert_eq!(store.sessions(), 0, "reads opened a session");

    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    assert_eq!(store.sessions(), 1);
    assert_eq!(client.session_state(), SessionState::Connected);
    assert!(!client.session_id().is_empty());

    // The signal handed out before the first session follows that session.
    assert!(!first_lost.is_lost());
    assert!(store.expire_session(&client.session_id()));
    assert_eq!(
        soon("first session lost", first_lost).await,
        LostReason::SessionExpired
    );
    assert!(guard.release().await.is_err(), "its session expired");
    client.close().await.unwrap();
}

/// Closing a lazy client before its first session: nothing to end, and it is closed.
#[tokio::test]
async fn lazy_client_closed_before_its_first_session() {
    let h = MemoryHarness::new();
    let client = Client::connect_lazy(&h.url(10)).await.unwrap();
    let lost = client.session_lost();
    client.close().await.unwrap();
    assert_eq!(soon("lost on close", lost).await, LostReason::SessionClosed);
    assert_eq!(
        client.session_state(),
        SessionState::Lost(LostReason::SessionClosed)
    );
    let lock = client.mutex("after-close").unwrap().lock().await;
    assert!(matches!(lock, Err(Error::Closed)), "{lock:?}");
    client.close().await.unwrap(); // twice: a no-op
}

/// The memory store a harness uses (its URL's name).
fn store_of(h: &MemoryHarness) -> String {
    h.url(10).trim_start_matches("memory://").to_owned()
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use common::{EtcdHarness, SOON};
    use fairlock::etcd::etcd_client;

    /// A TTL no other test uses, to tell this test's leases from others' on a shared server.
    const TTL: u64 = 53;

    /// The leases on the server whose granted TTL is [`TTL`].
    async fn our_leases(raw: &etcd_client::Client) -> Vec<i64> {
        let leases = raw.lease_client().leases().await.expect("lease_leases");
        let mut ours = Vec::new();
        for lease in leases.leases() {
            // A lease may go between the listing and this question: then it is not ours.
            let ttl = raw.lease_client().time_to_live(lease.id(), None).await;
            if ttl.is_ok_and(|ttl| ttl.granted_ttl() == TTL as i64) {
                ours.push(lease.id());
            }
        }
        ours
    }

    /// Reads grant no lease; the first lock does; close revokes it.
    #[tokio::test]
    async fn lazy_etcd_client_grants_no_lease_until_it_locks() {
        let h = EtcdHarness::new().await;
        let raw = h.raw();
        let name = unique("lazy");
        let before = our_leases(&raw).await;
        let client = Client::connect_lazy(&h.url(TTL)).await.unwrap();
        assert_eq!(client.session_state(), SessionState::Idle);

        // A holder from elsewhere, so the reads have something to find.
        let other = h.client().await;
        let held = other.mutex(&name).unwrap().lock().await.unwrap();
        let elected = format!("{name}-e"); // on etcd, a lock and an election share keys
        let leadership = other
            .election(&elected)
            .unwrap()
            .campaign(b"other")
            .await
            .unwrap();
        let queue = client.queue(&name, QueueKind::Lock).await.unwrap();
        assert_eq!(queue.len(), 1, "{queue:?}");
        let election = client.election(&elected).unwrap();
        let leader = election.leader().await.unwrap().expect("a leader");
        assert_eq!(leader.value, b"other");
        let observed = {
            use futures::StreamExt;
            let mut observe = election.observe();
            soon("observe", observe.next()).await
        };
        assert!(matches!(observed, Some(Ok(Some(_)))), "{observed:?}");
        let key = h.data_key(&name);
        assert_eq!(client.get(&key).await.unwrap(), None);
        let status = client.check(held.sequencer()).await.unwrap();
        assert_eq!(status, fairlock::SequencerStatus::Current);
        let after_reads = our_leases(&raw).await;
        assert!(
            after_reads.iter().all(|l| before.contains(l)),
            "reads granted a lease: {after_reads:?} after {before:?}"
        );
        assert_eq!(client.session_id(), "");
        leadership.resign().await.unwrap();
        held.release().await.unwrap();

        let guard = soon("lock", client.mutex(&name).unwrap().lock())
            .await
            .unwrap();
        assert_eq!(client.session_state(), SessionState::Connected);
        let lease = i64::from_str_radix(&client.session_id(), 16).unwrap();
        let granted = our_leases(&raw).await;
        assert!(granted.contains(&lease), "{granted:?} lacks {lease:x}");
        assert!(!before.contains(&lease));
        guard.release().await.unwrap();
        client.close().await.unwrap();
        let left = our_leases(&raw).await;
        assert!(!left.contains(&lease), "close did not revoke {lease:x}");
        other.close().await.unwrap();
    }

    /// A lazy client of an unreachable cluster fails like `connect`, within the connect
    /// timeout.
    #[tokio::test]
    async fn lazy_etcd_client_of_nothing_is_unreachable() {
        // Nothing listens on port 1 of the loopback address.
        let connected = soon(
            "lazy connect",
            Client::connect_lazy("etcd://127.0.0.1:1/x?connect_timeout=2s"),
        )
        .await;
        assert!(
            matches!(connected, Err(Error::Unreachable { .. })),
            "{connected:?}"
        );
    }

    fn config(h: &EtcdHarness, endpoints: bool) -> fairlock::Config {
        let mut config = fairlock::Config::from_url(&h.url(10)).unwrap();
        if !endpoints {
            config.endpoints.clear();
        }
        config
    }

    /// A lock and a guarded write through the user's etcd client; close revokes only
    /// fairlock's lease and leaves that client usable.
    #[tokio::test]
    async fn etcd_client_handed_in() {
        let h = EtcdHarness::new().await;
        let name = unique("handed");
        let user = etcd_client::Client::connect([format!("http://{}", h.endpoint())], None)
            .await
            .unwrap();
        let client = Client::from_etcd_client(user.clone(), &config(&h, false))
            .await
            .unwrap();
        let lease = i64::from_str_radix(&client.session_id(), 16).unwrap();
        let guard = client.mutex(&name).unwrap().lock().await.unwrap();
        assert!(guard.key().starts_with(h.prefix()), "{}", guard.key());
        let key = h.data_key(&name);
        guard
            .guarded_write(&[WriteOp::put(&key, "written")])
            .await
            .unwrap();
        assert_eq!(
            client.get(&key).await.unwrap().as_deref(),
            Some(&b"written"[..])
        );

        client.close().await.unwrap();
        assert_eq!(
            soon("guard lost", guard.lost()).await,
            LostReason::SessionClosed
        );
        assert!(h.entries(&name).await.is_empty(), "the lock key stayed");
        let ttl = h
            .raw()
            .lease_client()
            .time_to_live(lease, None)
            .await
            .unwrap();
        assert_eq!(ttl.ttl(), -1, "fairlock's lease was not revoked");
        // The user's client is untouched.
        let mut kv = user.kv_client();
        let read = tokio::time::timeout(SOON, kv.get(key.as_str(), None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.kvs()[0].value(), b"written");
        kv.put(key.as_str(), "after", None).await.unwrap();
    }

    /// The config must name etcd; endpoints may be absent but must be well-formed if given.
    #[tokio::test]
    async fn etcd_client_handed_in_checks_the_config() {
        let h = EtcdHarness::new().await;
        let user = h.raw();
        let mut zk = config(&h, false);
        zk.backend = fairlock::BackendKind::Zookeeper;
        let built = Client::from_etcd_client(user.clone(), &zk).await;
        assert!(matches!(built, Err(Error::InvalidConfig(_))), "{built:?}");
        let mut bad = config(&h, false);
        bad.endpoints = vec!["no port".into()];
        let built = Client::from_etcd_client(user, &bad).await;
        assert!(matches!(built, Err(Error::InvalidConfig(_))), "{built:?}");
    }
}

#[cfg(feature = "zookeeper")]
mod zookeeper {
    use super::*;
    use common::{zk_endpoint, ZkHarness};
    use fairlock::zookeeper::zookeeper_client as zk;

    async fn exists(h: &ZkHarness, path: &str) -> bool {
        h.raw().check_stat(path).await.unwrap().is_some()
    }

    /// On ZooKeeper the connection is a session, but reads create no node.
    #[tokio::test]
    async fn lazy_zookeeper_client_creates_no_node_until_it_locks() {
        let h = ZkHarness::new().await;
        let name = unique("lazy");
        let client = Client::connect_lazy(&h.url(10)).await.unwrap();
        assert!(client
            .queue(&name, QueueKind::Lock)
            .await
            .unwrap()
            .is_empty());
        let election = client.election(&name).unwrap();
        assert!(election.leader().await.unwrap().is_none());
        let observed = {
            use futures::StreamExt;
            let mut observe = election.observe();
            soon("observe", observe.next()).await
        };
        assert!(matches!(observed, Some(Ok(None))), "{observed:?}");
        let absent = format!(
            "fl1:zookeeper:lock:{name}:5:1:{}/{name}/_c_0-lock-0000000000",
            h.base()
        );
        let status = client.check(&absent.parse().unwrap()).await.unwrap();
        assert_eq!(status, fairlock::SequencerStatus::Lost);
        assert!(!exists(&h, h.base()).await, "reads created {}", h.base());

        let guard = client.mutex(&name).unwrap().lock().await.unwrap();
        assert_eq!(h.entries(&name).await, vec![guard.key().to_owned()]);
        guard.release().await.unwrap();
        client.close().await.unwrap();
    }

    async fn user_client() -> zk::Client {
        zk::Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .connect(&zk_endpoint())
            .await
            .unwrap()
    }

    fn config(h: &ZkHarness, endpoints: bool) -> fairlock::Config {
        let mut config = fairlock::Config::from_url(&h.url(10)).unwrap();
        if !endpoints {
            config.endpoints.clear();
        }
        config
    }

    /// A lock, a waiter and a guarded write through the user's ZooKeeper client; close
    /// deletes fairlock's nodes and leaves the session and the client usable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper_client_handed_in() {
        let h = ZkHarness::new().await;
        let name = unique("handed");
        let user = user_client().await;
        let session = user.session_id();
        let client = Client::from_zookeeper_client(user.clone(), &config(&h, false))
            .await
            .unwrap();
        assert_eq!(client.session_id(), format!("{:x}", session.0));
        let mutex = client.mutex(&name).unwrap();
        let guard = mutex.lock().await.unwrap();
        let key = h.data_key(&name);
        guard
            .guarded_write(&[WriteOp::put(&key, "written")])
            .await
            .unwrap();
        assert_eq!(
            client.get(&key).await.unwrap().as_deref(),
            Some(&b"written"[..])
        );
        // A waiter of the same session, queued behind the guard.
        let waiter = tokio::spawn({
            let mutex = mutex.clone();
            async move { mutex.lock().await.map(drop) }
        });
        common::eventually("the waiter queued", || async {
            h.entries(&name).await.len() == 2
        })
        .await;

        client.close().await.unwrap();
        assert_eq!(
            soon("guard lost", guard.lost()).await,
            LostReason::SessionClosed
        );
        let waited = soon("waiter ends", waiter).await.unwrap();
        assert!(matches!(waited, Err(Error::Closed)), "{waited:?}");
        assert!(
            h.entries(&name).await.is_empty(),
            "close left fairlock's nodes"
        );
        // The session and the user's client live on.
        assert_eq!(user.session_id(), session);
        let (data, _) = user.get_data(&format!("/{key}")).await.unwrap();
        assert_eq!(data, b"written");
        user.set_data(&format!("/{key}"), b"after", None)
            .await
            .unwrap();
        let lock = client.mutex(&name).unwrap().lock().await;
        assert!(matches!(lock, Err(Error::Closed)), "{lock:?}");
    }

    /// Once the handed-in session expired: later locks fail with `SessionExpired` when the
    /// config names no endpoints, and use a session of fairlock's own when it does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper_client_handed_in_after_its_session_expired() {
        let h = ZkHarness::new().await;
        for endpoints in [false, true] {
            let name = unique("expired");
            let client = Client::from_zookeeper_client(user_client().await, &config(&h, endpoints))
                .await
                .unwrap();
            let first = client.session_id();
            let guard = client.mutex(&name).unwrap().lock().await.unwrap();
            h.expire_session(&client).await;
            assert_eq!(
                soon("guard lost", guard.lost()).await,
                LostReason::SessionExpired
            );
            let again = client.mutex(&name).unwrap().lock().await;
            if endpoints {
                let again = again.unwrap();
                assert_ne!(client.session_id(), first);
                again.release().await.unwrap();
            } else {
                assert!(matches!(again, Err(Error::SessionExpired)), "{again:?}");
            }
            client.close().await.unwrap();
        }
    }

    /// Fairlock counts the handed-in session lost after a long disconnection, but the session
    /// lives on once the client reconnects: fairlock's nodes must not linger in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper_client_handed_in_loses_its_nodes_with_the_lock() {
        let h = ZkHarness::new().await;
        let name = unique("partitioned");
        let proxy = common::proxy::Proxy::start(&zk_endpoint()).await;
        // fairlock counts the session lost 2/5 of the timeout into the partition; the
        // server expires it only after the whole timeout: time to reconnect in between.
        let user = zk::Client::connector()
            .with_session_timeout(Duration::from_secs(20))
            .connect(&proxy.endpoint())
            .await
            .unwrap();
        let session = user.session_id();
        let client = Client::from_zookeeper_client(user.clone(), &config(&h, false))
            .await
            .unwrap();
        let guard = client.mutex(&name).unwrap().lock().await.unwrap();
        proxy.cut();
        assert_eq!(
            soon("guard lost", guard.lost()).await,
            LostReason::SessionExpired
        );
        proxy.restore();
        common::eventually("the lost lock's node deleted", || async {
            h.entries(&name).await.is_empty()
        })
        .await;
        // Deleted by fairlock, not with the session: that one lives on.
        let alive = soon("the user's session answers", user.check_stat("/")).await;
        assert!(alive.is_ok(), "{alive:?}");
        assert_eq!(user.session_id(), session);
        client.close().await.unwrap();
    }

    /// The config must name ZooKeeper.
    #[tokio::test]
    async fn zookeeper_client_handed_in_checks_the_config() {
        let h = ZkHarness::new().await;
        let mut etcd = config(&h, false);
        etcd.backend = fairlock::BackendKind::Etcd;
        let built = Client::from_zookeeper_client(user_client().await, &etcd).await;
        assert!(matches!(built, Err(Error::InvalidConfig(_))), "{built:?}");
    }
}
