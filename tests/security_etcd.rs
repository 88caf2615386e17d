//! etcd over TLS with authentication and RBAC, against the server of
//! scripts/secure-etcd.sh (`scripts/services secure start etcd`): mutual TLS with the test
//! CA, users `fairlock` (readwrite on `fairlock-secure/` only) and `other` (no role), auth
//! tokens that expire after 3 s of disuse.
#![cfg(feature = "etcd")]

mod common;

use std::time::Duration;

use common::{
    cert, secure_etcd_endpoint, secure_etcd_password, secure_etcd_password_file, soon, unique,
    Harness, SecureEtcdHarness, SECURE_ETCD_GRANT,
};
use fairlock::{Client, Error, QueueKind, WriteOp};
use futures::StreamExt;

/// What a connection attempt (or the first lock, for a lazy failure) ends with.
async fn outcome(url: &str) -> Result<(), Error> {
    let client = soon("connect", Client::connect(url)).await?;
    let name = unique("probe");
    let mutex = client.mutex(&name)?;
    let guard = soon("lock", mutex.lock()).await?;
    guard.release().await?;
    client.close().await
}

fn url_with(user: &str, tls_query: &str) -> String {
    format!(
        "etcd://{user}{}/{SECURE_ETCD_GRANT}/{}?connect_timeout=5s&{tls_query}",
        secure_etcd_endpoint(),
        unique("neg")
    )
}

fn assert_tls(result: Result<(), Error>, case: &str) {
    match result {
        Err(Error::Tls { ref source, .. }) => {
            // The cause is kept and shown: the TLS library's words (or the file's), not
            // just "transport error".
            let shown = source.to_string();
            assert!(
                ["certificate", "alert", "cannot read"]
                    .iter()
                    .any(|w| shown.contains(w)),
                "{case}: {shown:?}"
            );
        }
        other => panic!("{case}: expected Error::Tls, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_over_tls_with_password() {
    let h = SecureEtcdHarness::new().await;
    let a = h.client().await;
    let b = h.client().await;
    let name = unique("happy");

    // lock, try_lock, lock_timeout
    let guard = soon("lock", a.mutex(&name).unwrap().lock()).await.unwrap();
    assert!(b.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    assert!(b
        .mutex(&name)
        .unwrap()
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    assert_eq!(h.entries(&name).await.len(), 1);

    // status (the queue), as the CLI's `status` reads it
    let queue = a.queue(&name, QueueKind::Lock).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].fencing_token, guard.fencing_token());

    // guarded write inside the granted prefix, then read back
    let key = h.data_key(&unique("stock"));
    guard
        .guarded_write(&[WriteOp::put(&key, "2")])
        .await
        .unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"2"[..]));

    // a waiter gets it on release
    let waiter = {
        let m = b.mutex(&name).unwrap();
        tokio::spawn(async move { m.lock().await })
    };
    common::eventually("waiter queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    guard.release().await.unwrap();
    let second = soon("waiter", waiter).await.unwrap().unwrap();
    second.release().await.unwrap();

    // election and observe
    let election = unique("elect");
    let mut observed = b.election(&election).unwrap().observe();
    assert_eq!(soon("empty", observed.next()).await.unwrap().unwrap(), None);
    let leader = soon("campaign", a.election(&election).unwrap().campaign(b"a"))
        .await
        .unwrap();
    let seen = soon("leader", observed.next()).await.unwrap().unwrap();
    assert_eq!(seen.map(|l| l.value), Some(b"a".to_vec()));
    let guarded = h.data_key(&unique("leader-data"));
    leader
        .guarded_write(&[WriteOp::put(&guarded, "x")])
        .await
        .unwrap();
    leader.resign().await.unwrap();
    assert_eq!(
        soon("resigned", observed.next()).await.unwrap().unwrap(),
        None
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// etcd takes a client certificate's CN as the user when a request carries no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_cn_is_the_user() {
    let url = format!(
        "etcd://{}/{SECURE_ETCD_GRANT}/{}?{}",
        secure_etcd_endpoint(),
        unique("cn"),
        SecureEtcdHarness::tls_query("client")
    );
    let client = Client::connect(&url).await.unwrap();
    let name = unique("cn-lock");
    let guard = soon("lock", client.mutex(&name).unwrap().lock())
        .await
        .unwrap();
    let key = format!("{SECURE_ETCD_GRANT}/{}", unique("cn-data"));
    guard
        .guarded_write(&[WriteOp::put(&key, "v")])
        .await
        .unwrap();
    // The CN=fairlock user has the same grant: outside it, refused.
    let outside = guard
        .guarded_write(&[WriteOp::put(unique("cn-outside"), "v")])
        .await;
    assert!(
        matches!(outside, Err(Error::PermissionDenied { .. })),
        "{outside:?}"
    );
    guard.release().await.unwrap();
    client.close().await.unwrap();

    // CN=other is a user without a role: it connects, but may not lock.
    let url = url.replace(
        &SecureEtcdHarness::tls_query("client"),
        &SecureEtcdHarness::tls_query("other"),
    );
    let result = outcome(&url).await;
    assert!(
        matches!(result, Err(Error::PermissionDenied { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn wrong_ca_is_a_tls_error() {
    let query = format!(
        "ca_file={}&cert_file={}&key_file={}",
        cert("rogue-ca.pem"),
        cert("client.pem"),
        cert("client-key.pem")
    );
    assert_tls(outcome(&url_with("", &query)).await, "wrong CA");
    // Also with a password (the first request is then the authentication).
    let user = format!("fairlock:{}@", secure_etcd_password("fairlock"));
    assert_tls(outcome(&url_with(&user, &query)).await, "wrong CA, user");
    // No CA file: the system's roots, which do not know the test CA.
    let query = format!(
        "tls=true&cert_file={}&key_file={}",
        cert("client.pem"),
        cert("client-key.pem")
    );
    assert_tls(outcome(&url_with("", &query)).await, "system roots");
}

#[tokio::test]
async fn server_name_must_match_the_certificate() {
    let query = format!(
        "{}&server_name=etcd.example",
        SecureEtcdHarness::tls_query("client")
    );
    assert_tls(outcome(&url_with("", &query)).await, "wrong server name");
    // The right one, given explicitly, works.
    let query = format!(
        "{}&server_name=localhost",
        SecureEtcdHarness::tls_query("client")
    );
    outcome(&url_with("", &query)).await.unwrap();
}

#[tokio::test]
async fn refused_client_certificates_are_tls_errors() {
    for client in ["expired", "rogue"] {
        let query = SecureEtcdHarness::tls_query(client);
        assert_tls(outcome(&url_with("", &query)).await, client);
        let user = format!("fairlock:{}@", secure_etcd_password("fairlock"));
        assert_tls(outcome(&url_with(&user, &query)).await, client);
    }
    // No client certificate at all (no credentials of any kind).
    let query = format!("ca_file={}", cert("ca.pem"));
    assert_tls(
        outcome(&url_with("", &query)).await,
        "no client certificate",
    );
    let user = format!("fairlock:{}@", secure_etcd_password("fairlock"));
    assert_tls(
        outcome(&url_with(&user, &query)).await,
        "no client cert, user",
    );
}

#[tokio::test]
async fn unreadable_files_are_tls_errors_and_half_pairs_are_refused() {
    let query = "ca_file=/nonexistent/ca.pem";
    assert_tls(outcome(&url_with("", query)).await, "missing CA file");
    let query = format!(
        "ca_file={}&cert_file={}",
        cert("ca.pem"),
        cert("client.pem")
    );
    let result = outcome(&url_with("", &query)).await;
    assert!(matches!(result, Err(Error::InvalidConfig(_))), "{result:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_authentication() {
    let query = SecureEtcdHarness::tls_query("other");
    for user in ["fairlock:wrong@", "nobody:x@", "fairlock@"] {
        let result = outcome(&url_with(user, &query)).await;
        assert!(
            matches!(result, Err(Error::AuthenticationFailed { .. })),
            "{user}: {result:?}"
        );
        let shown = result.unwrap_err().to_string();
        assert!(!shown.contains("wrong"), "the password shows: {shown}");
        assert!(!Error::is_transient(&Error::AuthenticationFailed {
            backend: "etcd",
            source: "x".into()
        }));
    }
    // The password file of another user: same answer.
    let url = format!(
        "{}&password_file={}",
        url_with("fairlock@", &query),
        secure_etcd_password_file("other")
    );
    let result = outcome(&url).await;
    assert!(
        matches!(result, Err(Error::AuthenticationFailed { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn user_without_permission_is_denied() {
    let user = format!("other:{}@", secure_etcd_password("other"));
    let url = url_with(&user, &SecureEtcdHarness::tls_query("client"));
    // It connects (a lease needs no permission), but may not queue.
    let client = Client::connect(&url).await.unwrap();
    let mutex = client.mutex(&unique("denied")).unwrap();
    for result in [
        mutex.lock().await.map(|_| ()),
        mutex.try_lock().await.map(|_| ()),
        client.queue("denied", QueueKind::Lock).await.map(|_| ()),
        client.get("fairlock-secure/x").await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::PermissionDenied { .. })),
            "{result:?}"
        );
    }
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_grant_are_denied() {
    let h = SecureEtcdHarness::new().await;
    let client = h.client().await;
    let guard = client
        .mutex(&unique("outside"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let outside = unique("not-granted");
    let write = guard.guarded_write(&[WriteOp::put(&outside, "x")]).await;
    assert!(
        matches!(write, Err(Error::PermissionDenied { .. })),
        "{write:?}"
    );
    // Nothing was written, and the lock is still held.
    let raw = h
        .raw()
        .kv_client()
        .get(outside.as_str(), None)
        .await
        .unwrap();
    assert!(raw.kvs().is_empty());
    assert!(!guard.is_lost());
    let put = client.put(&outside, "x").await;
    assert!(
        matches!(put, Err(Error::PermissionDenied { .. })),
        "{put:?}"
    );
    let get = client.get(&outside).await;
    assert!(
        matches!(get, Err(Error::PermissionDenied { .. })),
        "{get:?}"
    );
    guard.release().await.unwrap();
    // A prefix outside the grant: the first lock is refused.
    let url = format!(
        "etcd://fairlock@{}/elsewhere-{}?{}&password_file={}",
        secure_etcd_endpoint(),
        unique("p"),
        SecureEtcdHarness::tls_query("other"),
        secure_etcd_password_file("fairlock")
    );
    let result = outcome(&url).await;
    assert!(
        matches!(result, Err(Error::PermissionDenied { .. })),
        "{result:?}"
    );
    client.close().await.unwrap();
}

/// Counts the debug events whose message contains a given text (the watch hub's "refused
/// watch"), on the thread it is set as default for.
struct Counter {
    needle: &'static str,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains(self.needle) {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The server's tokens expire after 3 s of disuse; a client keeps working long after: its
/// requests authenticate again, its lease stays alive, and a watch stream whose token
/// expired is renewed at its first refused creation, so waiters and holders keep being
/// told of deletions by the server rather than by re-reading their keys over and over.
///
/// On one thread (a current-thread runtime), so that the counting subscriber sees every
/// task of the test.
#[test]
fn long_running_clients_survive_token_expiry() {
    use tracing_subscriber::layer::SubscriberExt;
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(Counter {
        needle: "refused watch",
        count: refusals.clone(),
    });
    let _default = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(survive_token_expiry(&refusals));
}

async fn survive_token_expiry(refusals: &std::sync::atomic::AtomicUsize) {
    let refused = || refusals.load(std::sync::atomic::Ordering::Relaxed);
    let h = SecureEtcdHarness::new().await;
    let a = h.client_ttl(5).await;
    let b = h.client_ttl(5).await;
    let name = unique("expiry");
    let (a_lock, b_lock) = (a.mutex(&name).unwrap(), b.mutex(&name).unwrap());
    let (a_lost, b_lost) = (a.session_lost(), b.session_lost());

    for round in 0..2 {
        let guard = soon("a locks", a_lock.lock()).await.unwrap();
        // Both tokens (and b's watch stream's) expire while nothing is asked.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let waiter = {
            let m = b_lock.clone();
            tokio::spawn(async move { m.lock().await })
        };
        common::eventually("b queued", || async { h.entries(&name).await.len() == 2 }).await;
        // b's watch went onto a stream whose token had expired: refused, then renewed.
        // Once that settled, the watch stays, with no more refusals. (Without the renewal,
        // every creation on that stream is refused and retried, after a read, at least
        // every 2 s for as long as the watch lives.)
        tokio::time::sleep(Duration::from_secs(4)).await;
        let settled = refused();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            refused(),
            settled,
            "round {round}: watch creations still refused"
        );
        let key = h.data_key(&format!("expiry-{round}"));
        guard
            .guarded_write(&[WriteOp::put(&key, "x")])
            .await
            .unwrap();
        guard.release().await.unwrap();
        let second = soon("b wakes on release", waiter).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        second.release().await.unwrap();
    }
    // The sessions (TTL 5 s) lived through it all.
    assert!(
        !a_lost.is_lost(),
        "a's session was lost: {:?}",
        a_lost.reason()
    );
    assert!(
        !b_lost.is_lost(),
        "b's session was lost: {:?}",
        b_lost.reason()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}
