//! ZooKeeper with TLS, digest authentication and ACLs, against the secure server of
//! `scripts/services secure start zookeeper` (mutual TLS on 127.0.0.1:21811, plain on
//! 127.0.0.1:21812; certificates from scripts/certs).
#![cfg(feature = "zookeeper")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{
    cert_file, eventually, soon, unique, zk_secure_endpoint, zk_secure_plain_endpoint,
    zk_secure_raw, zk_tls_options, Harness, ZkSecureHarness, ZK_PASSWORD, ZK_USER,
};
use fairlock::{BackendKind, Client, Config, Error, QueueKind, WriteOp};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use zookeeper_client as zk;

/// `user:password` for the raw client.
fn creds() -> String {
    format!("{ZK_USER}:{ZK_PASSWORD}")
}

/// A URL of the secure server over mutual TLS with the client certificate CN=fairlock, as
/// `user` (`user:password`) if given.
fn tls_url(userinfo: Option<&str>, base: &str, options: &str) -> String {
    cert_url("client", userinfo, base, options)
}

/// As [`tls_url`], with the client certificate CN=other: mutual TLS makes the
/// certificate's name an identity too (`x509:CN=…`), so strangers need their own.
fn stranger_url(userinfo: Option<&str>, base: &str, options: &str) -> String {
    cert_url("other", userinfo, base, options)
}

fn cert_url(cert: &str, userinfo: Option<&str>, base: &str, options: &str) -> String {
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    format!(
        "zk://{user}{}{base}?{}&{options}",
        zk_secure_endpoint(),
        zk_tls_options("ca", Some(cert))
    )
}

/// A URL of the secure server's plain port, as `user` if given.
fn plain_url(userinfo: Option<&str>, base: &str, options: &str) -> String {
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    format!("zk://{user}{}{base}?{options}", zk_secure_plain_endpoint())
}

fn new_base() -> String {
    format!("/{}", unique("secure"))
}

/// Every feature once: lock, try, timeout, election with observe, guarded write, queue.
async fn every_feature(url: &str) {
    let a = Client::connect(url).await.expect("connect");
    let b = Client::connect(url).await.expect("connect");
    let name = unique("all");
    let guard = a.mutex(&name).unwrap().lock().await.unwrap();
    assert!(b.mutex(&name).unwrap().try_lock().await.unwrap().is_none());
    let timed = b
        .mutex(&name)
        .unwrap()
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(timed.is_none(), "lock_timeout took a held lock");
    let queue = b.queue(&name, QueueKind::Lock).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].key, guard.key());
    let key = format!("data-{}", unique("k"));
    guard
        .guarded_write(&[WriteOp::put(key.as_str(), "v1")])
        .await
        .unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"v1"[..]));
    b.put(&key, "v2").await.unwrap();
    assert_eq!(a.get(&key).await.unwrap().as_deref(), Some(&b"v2"[..]));
    guard.release().await.unwrap();

    let election = b.election(&name).unwrap();
    let mut observed = election.observe();
    let first = soon("observe", observed.next()).await.unwrap().unwrap();
    assert!(first.is_none(), "{first:?}");
    let leading = a.election(&name).unwrap().campaign(b"a").await.unwrap();
    let seen = soon("observe leader", observed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.map(|l| l.value), Some(b"a".to_vec()));
    leading.resign().await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_over_mutual_tls_with_digest_credentials() {
    every_feature(&tls_url(Some(&creds()), &new_base(), "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_over_mutual_tls_without_credentials() {
    every_feature(&tls_url(None, &new_base(), "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_with_digest_credentials_without_tls() {
    every_feature(&plain_url(Some(&creds()), &new_base(), "")).await;
}

/// The password from a file (the way to keep it out of URLs and process listings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_a_file() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(unique("zk-password"));
    std::fs::write(&file, format!("{ZK_PASSWORD}\n")).unwrap();
    let url = tls_url(
        Some(ZK_USER),
        &new_base(),
        &format!("password_file={}", file.display()),
    );
    let client = Client::connect(&url).await.unwrap();
    let guard = client.mutex(&unique("file")).unwrap().lock().await.unwrap();
    // The node carries the identity of user:password-from-the-file.
    let raw = zk_secure_raw("client", Some(&creds())).await;
    let (acls, _) = raw.get_acl(guard.key()).await.unwrap();
    assert!(is_creator_all(&acls), "{acls:?}");
    guard.release().await.unwrap();
    client.close().await.unwrap();
    std::fs::remove_file(file).unwrap();
}

/// What `getAcl` shows on the nodes fairlock created: the lock node, its parent (the lock
/// path), the base path, a data node and its parent.
async fn acls_of_created_nodes(url: &str, base: &str) -> Vec<(String, Vec<zk::Acl>)> {
    let raw = zk_secure_raw("client", Some(&creds())).await;
    acls_seen_by(&raw, url, base).await
}

/// As [`acls_of_created_nodes`], read by `raw`.
async fn acls_seen_by(raw: &zk::Client, url: &str, base: &str) -> Vec<(String, Vec<zk::Acl>)> {
    let client = Client::connect(url).await.unwrap();
    let name = unique("acl");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let key = format!("{}-data/dir/{}", base.trim_start_matches('/'), unique("k"));
    guard
        .guarded_write(&[WriteOp::put(key.as_str(), "v")])
        .await
        .unwrap();
    let key2 = format!("{}-data/put/{}", base.trim_start_matches('/'), unique("k"));
    client.put(&key2, "v").await.unwrap();
    let mut out = Vec::new();
    for path in [
        guard.key().to_owned(),
        format!("{base}/{name}"),
        base.to_owned(),
        format!("/{key}"),
        format!("/{}", key.rsplit_once('/').unwrap().0),
        format!("/{key2}"),
        format!("/{}", key2.rsplit_once('/').unwrap().0),
    ] {
        let (acls, _) = raw
            .get_acl(&path)
            .await
            .unwrap_or_else(|e| panic!("getAcl {path}: {e}"));
        out.push((path, acls));
    }
    guard.release().await.unwrap();
    client.close().await.unwrap();
    out
}

/// The identities `acls` grant everything to, as `scheme:id`.
fn all_to(acls: &[zk::Acl]) -> Vec<String> {
    let mut ids: Vec<String> = acls
        .iter()
        .filter(|a| a.permission() == zk::Permission::ALL)
        .map(|a| format!("{}:{}", a.scheme(), a.id()))
        .collect();
    ids.sort();
    ids
}

/// The creator ACL of a client over mutual TLS (certificate CN=fairlock) with the digest
/// credentials: ZooKeeper's `auth` ACL grants every identity of the creating connection.
fn is_creator_all(acls: &[zk::Acl]) -> bool {
    let ids = all_to(acls);
    acls.len() == 2
        && ids[0].starts_with(&format!("digest:{ZK_USER}:"))
        && ids[1] == "x509:CN=fairlock"
}

fn is_world(acl: &zk::Acl, permission: zk::Permission) -> bool {
    acl.scheme() == "world" && acl.id() == "anyone" && acl.permission() == permission
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_created_node_carries_the_policy_acl() {
    // Default with credentials: creator-all.
    for acl in ["", "acl=creator-all"] {
        let base = new_base();
        for (path, acls) in acls_of_created_nodes(&tls_url(Some(&creds()), &base, acl), &base).await
        {
            assert!(is_creator_all(&acls), "{acl:?} {path}: {acls:?}");
        }
    }
    let base = new_base();
    let url = tls_url(Some(&creds()), &base, "acl=creator-all-world-read");
    for (path, acls) in acls_of_created_nodes(&url, &base).await {
        let (world, creator): (Vec<_>, Vec<_>) =
            acls.iter().cloned().partition(|a| a.scheme() == "world");
        assert!(is_creator_all(&creator), "{path}: {acls:?}");
        assert!(
            world.len() == 1 && is_world(&world[0], zk::Permission::READ),
            "{path}: {acls:?}"
        );
    }
    // Open, asked for with credentials; and the default without any identity, on the
    // plain server (the secure one refuses sessions without one).
    let base = new_base();
    let url = tls_url(Some(&creds()), &base, "acl=open");
    let open = acls_of_created_nodes(&url, &base).await;
    let plain = common::ZkHarness::new().await;
    let url = format!("zk://{}{}", common::zk_endpoint(), plain.base());
    let default = acls_seen_by(plain.raw(), &url, plain.base()).await;
    for (path, acls) in open.into_iter().chain(default) {
        assert!(
            acls.len() == 1 && is_world(&acls[0], zk::Permission::ALL),
            "{path}: {acls:?}"
        );
    }
    // The default with a client certificate alone: creator-all, for the certificate's name.
    let base = new_base();
    for (path, acls) in acls_of_created_nodes(&tls_url(None, &base, ""), &base).await {
        assert_eq!(all_to(&acls), ["x509:CN=fairlock"], "{path}: {acls:?}");
    }
}

#[tokio::test]
async fn creator_acl_without_an_identity_is_refused() {
    for acl in ["creator-all", "creator-all-world-read"] {
        let url = plain_url(None, &new_base(), &format!("acl={acl}"));
        let refused = Client::connect(&url).await;
        assert!(
            matches!(refused, Err(Error::InvalidConfig(_))),
            "{acl}: {refused:?}"
        );
    }
}

/// A held lock, as `fairlock:…` with creator-all; returns the client, guard and lock path.
async fn held(base: &str, acl: &str) -> (Client, fairlock::LockGuard, String) {
    let client = Client::connect(&tls_url(Some(&creds()), base, acl))
        .await
        .unwrap();
    let name = unique("held");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    (client, guard, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_cannot_touch_a_lock() {
    let base = new_base();
    let (client, guard, name) = held(&base, "").await;
    let lock_path = format!("{base}/{name}");
    // A raw client without the holder's identities (certificate CN=other, no password; the
    // server lets no session without any identity in): no delete, no create under the
    // lock node.
    let stranger = zk_secure_raw("other", None).await;
    let delete = stranger.delete(guard.key(), None).await;
    assert!(matches!(delete, Err(zk::Error::NoAuth)), "{delete:?}");
    let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let create = stranger
        .create(&format!("{lock_path}/_c_x-lock-"), b"", &ephemeral)
        .await;
    assert!(matches!(create, Err(zk::Error::NoAuth)), "{create:?}");
    let delete_parent = stranger.delete(&lock_path, None).await;
    assert!(
        matches!(delete_parent, Err(zk::Error::NoAuth | zk::Error::NotEmpty)),
        "{delete_parent:?}"
    );
    // fairlock without credentials, with other credentials, or with the wrong password
    // (ZooKeeper takes any digest credentials; they just name another identity): refused,
    // as PermissionDenied, for locks, reads and writes alike.
    for userinfo in [None, Some("mallory:secret"), Some("fairlock:wrong")] {
        let other = Client::connect(&stranger_url(userinfo, &base, ""))
            .await
            .unwrap();
        let mutex = other.mutex(&name).unwrap();
        let try_lock = mutex.try_lock().await;
        assert!(
            matches!(try_lock, Err(Error::PermissionDenied { .. })),
            "{userinfo:?}: {try_lock:?}"
        );
        let queue = other.queue(&name, QueueKind::Lock).await;
        assert!(
            matches!(queue, Err(Error::PermissionDenied { .. })),
            "{userinfo:?}: {queue:?}"
        );
        let lock = mutex.lock_timeout(Duration::from_secs(2)).await;
        assert!(
            matches!(lock, Err(Error::PermissionDenied { .. })),
            "{userinfo:?}: {lock:?}"
        );
        other.close().await.unwrap();
    }
    // The holder is untouched.
    assert!(!guard.is_lost());
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_read_lets_strangers_watch_but_not_lock() {
    let base = new_base();
    let (client, guard, name) = held(&base, "acl=creator-all-world-read").await;
    let stranger = Client::connect(&stranger_url(None, &base, ""))
        .await
        .unwrap();
    let queue = stranger.queue(&name, QueueKind::Lock).await.unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].key, guard.key());
    let leader = stranger.election(&name).unwrap().leader().await;
    assert!(leader.is_ok(), "{leader:?}");
    // try_lock sees the lock held and creates nothing; a waiter's create is refused.
    let mutex = stranger.mutex(&name).unwrap();
    assert!(mutex.try_lock().await.unwrap().is_none());
    let lock = mutex.lock_timeout(Duration::from_secs(2)).await;
    assert!(
        matches!(lock, Err(Error::PermissionDenied { .. })),
        "{lock:?}"
    );
    let raw = zk_secure_raw("other", None).await;
    let delete = raw.delete(guard.key(), None).await;
    assert!(matches!(delete, Err(zk::Error::NoAuth)), "{delete:?}");
    stranger.close().await.unwrap();
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

/// A stranger's data writes under a protected data node are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_are_protected() {
    let base = new_base();
    let url = tls_url(Some(&creds()), &base, "");
    let owner = Client::connect(&url).await.unwrap();
    let key = format!("{}-data/{}", base.trim_start_matches('/'), unique("k"));
    owner.put(&key, "mine").await.unwrap();
    let stranger = Client::connect(&stranger_url(Some("mallory:secret"), &base, ""))
        .await
        .unwrap();
    let put = stranger.put(&key, "theirs").await;
    assert!(
        matches!(put, Err(Error::PermissionDenied { .. })),
        "{put:?}"
    );
    let get = stranger.get(&key).await;
    assert!(
        matches!(get, Err(Error::PermissionDenied { .. })),
        "{get:?}"
    );
    assert_eq!(
        owner.get(&key).await.unwrap().as_deref(),
        Some(&b"mine"[..])
    );
    stranger.close().await.unwrap();
    owner.close().await.unwrap();
}

/// The secure server enforces authentication: a session without credentials (on its plain
/// port) is refused, as AuthenticationFailed, never as "unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_where_the_server_requires_them() {
    let url = plain_url(None, &new_base(), "");
    for refused in [
        Client::connect(&url).await,
        Client::connect_lazy(&url).await,
    ] {
        assert!(
            matches!(refused, Err(Error::AuthenticationFailed { .. })),
            "{refused:?}"
        );
    }
}

/// A connection that fails for a TLS reason reports it as such, with the cause.
async fn tls_refusal(ca: &str, cert: Option<&str>) -> String {
    let url = format!(
        "zk://{}{}?connect_timeout=3s&{}",
        zk_secure_endpoint(),
        new_base(),
        zk_tls_options(ca, cert)
    );
    match Client::connect(&url).await {
        Err(Error::Tls { source, .. }) => source.to_string(),
        other => panic!("ca {ca}, cert {cert:?}: expected a TLS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_problems_are_tls_errors_with_the_cause() {
    // The server's certificate is not signed by this CA.
    let cause = tls_refusal("rogue-ca", Some("client")).await;
    assert!(cause.contains("certificate"), "{cause}");
    // The server refuses the client: no certificate, another CA's, an expired one.
    for cert in [None, Some("rogue"), Some("expired")] {
        let cause = tls_refusal("ca", cert).await;
        assert!(cause.contains("alert"), "{cert:?}: {cause}");
    }
}

#[tokio::test]
async fn bad_tls_settings_are_refused_before_connecting() {
    let url = |options: &str| format!("zk://{}{}?{options}", zk_secure_endpoint(), new_base());
    let missing = Client::connect(&url("ca_file=/nonexistent/ca.pem")).await;
    assert!(
        matches!(&missing, Err(Error::Tls { source, .. }) if source.to_string().contains("/nonexistent/ca.pem")),
        "{missing:?}"
    );
    let not_pem = Client::connect(&url(&format!(
        "ca_file={}",
        env!("CARGO_MANIFEST_DIR").to_owned() + "/Cargo.toml"
    )))
    .await;
    assert!(matches!(not_pem, Err(Error::Tls { .. })), "{not_pem:?}");
    for options in [
        "tls=true".to_owned(),
        format!("{}&server_name=zk.example", zk_tls_options("ca", None)),
        format!(
            "ca_file={}&cert_file={}",
            cert_file("ca.pem"),
            cert_file("client.pem")
        ),
    ] {
        let refused = Client::connect(&url(&options)).await;
        assert!(
            matches!(refused, Err(Error::InvalidConfig(_))),
            "{options}: {refused:?}"
        );
    }
    // A user without a password.
    let url = format!(
        "zk://{ZK_USER}@{}{}",
        zk_secure_plain_endpoint(),
        new_base()
    );
    let refused = Client::connect(&url).await;
    assert!(
        matches!(refused, Err(Error::InvalidConfig(_))),
        "{refused:?}"
    );
}

/// TLS to a port that speaks plain text: a TLS error, not "unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_port_is_a_tls_error() {
    let url = format!(
        "zk://{}{}?connect_timeout=3s&{}",
        zk_secure_plain_endpoint(),
        new_base(),
        zk_tls_options("ca", Some("client"))
    );
    let refused = Client::connect(&url).await;
    assert!(matches!(refused, Err(Error::Tls { .. })), "{refused:?}");
}

/// A client handed in, chrooted, over TLS with credentials: fairlock's nodes are inside the
/// chroot and carry the configured ACL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chrooted_client_of_your_own() {
    let chroot = new_base();
    let raw = zk_secure_raw("client", Some(&creds())).await;
    let dirs = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
    raw.mkdir(&chroot, &dirs).await.unwrap();
    let mine = raw.clone().chroot(chroot.clone()).unwrap();
    let mut config = Config::new(BackendKind::Zookeeper).with_prefix("/app");
    config.username = Some(ZK_USER.into());
    config.password = Some(ZK_PASSWORD.into());
    let client = Client::from_zookeeper_client(mine, &config).await.unwrap();
    let name = unique("chroot");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    let outside = format!("{chroot}/app/{name}");
    let children = raw.list_children(&outside).await.unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    for path in [format!("{outside}/{}", children[0]), outside.clone()] {
        let (acls, _) = raw.get_acl(&path).await.unwrap();
        assert!(is_creator_all(&acls), "{path}: {acls:?}");
    }
    guard.release().await.unwrap();
    client.close().await.unwrap();
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// kazoo (of scripts/peers) with digest credentials holds the lock fairlock created with
/// creator-all under the same credentials; fairlock waits for it, and takes it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_with_the_same_credentials_shares_the_lock() {
    let python = repo().join(".services/venv/bin/python");
    assert!(
        python.exists(),
        "the kazoo peer is missing: run scripts/peers"
    );
    let h = Arc::new(ZkSecureHarness::new().await);
    let url = plain_url(Some(&creds()), h.base(), "");
    let client = Client::connect(&url).await.unwrap();
    let name = unique("kazoo-auth");
    // fairlock creates the lock path (creator-all) and releases.
    client
        .mutex(&name)
        .unwrap()
        .lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let script = r#"
import sys
from kazoo.client import KazooClient
hosts, path, creds = sys.argv[1:4]
client = KazooClient(hosts=hosts, timeout=10, auth_data=[("digest", creds)])
client.start(timeout=15)
lock = client.Lock(path, "kazoo-peer", extra_lock_patterns=["-lock-"])
lock.acquire()
print("acquired", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
client.stop()
"#;
    let mut peer = Command::new(python)
        .args(["-c", script, &zk_secure_plain_endpoint()])
        .arg(format!("{}/{name}", h.base()))
        .arg(creds())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    let said = soon("kazoo acquires", lines.next_line()).await.unwrap();
    assert_eq!(said.as_deref(), Some("acquired"));
    let mutex = client.mutex(&name).unwrap();
    assert!(mutex.try_lock().await.unwrap().is_none());
    let waiter = tokio::spawn(async move { mutex.lock().await.unwrap() });
    eventually("fairlock queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    assert!(!waiter.is_finished());
    let mut stdin = peer.stdin.take().unwrap();
    stdin.write_all(b"release\n").await.unwrap();
    drop(stdin);
    let guard = soon("fairlock acquires", waiter).await.unwrap();
    guard.release().await.unwrap();
    soon("kazoo exits", peer.wait()).await.unwrap();
    client.close().await.unwrap();
}

/// Curator (of scripts/peers) with `authorization("digest", …)` queues behind fairlock on a
/// creator-all lock path and acquires once fairlock releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_with_the_same_credentials_shares_the_lock() {
    let classpath = std::fs::read_to_string(repo().join("target/peers/classpath"))
        .expect("the Curator peer is missing: run scripts/peers");
    let source = r#"
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class AuthPeer {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.builder().connectString(args[0])
            .sessionTimeoutMs(10000).connectionTimeoutMs(5000).retryPolicy(new RetryOneTime(100))
            .authorization("digest", args[2].getBytes("UTF-8")).build();
        client.start();
        client.blockUntilConnected();
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        mutex.acquire();
        System.out.println("acquired");
        System.out.flush();
        System.in.read();
        mutex.release();
        System.out.println("released");
        System.out.flush();
        client.close();
    }
}
"#;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("curator-auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("AuthPeer.java");
    std::fs::write(&file, source).unwrap();
    let h = Arc::new(ZkSecureHarness::new().await);
    let client = Client::connect(&plain_url(Some(&creds()), h.base(), ""))
        .await
        .unwrap();
    let name = unique("curator-auth");
    let guard = client.mutex(&name).unwrap().lock().await.unwrap();
    // Java runs a single source file directly (compiling it takes a few seconds).
    let mut peer = Command::new("java")
        .args(["-cp", classpath.trim()])
        .arg(&file)
        .arg(zk_secure_plain_endpoint())
        .arg(format!("{}/{name}", h.base()))
        .arg(creds())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    // Compiling the source and starting the JVM may take a while on a loaded machine.
    let queued = async {
        while h.entries(&name).await.len() != 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), queued)
        .await
        .expect("curator queued within 90 s");
    guard.release().await.unwrap();
    let said = soon("curator acquires", lines.next_line()).await.unwrap();
    assert_eq!(said.as_deref(), Some("acquired"));
    let mut stdin = peer.stdin.take().unwrap();
    stdin.write_all(b"release\n").await.unwrap();
    drop(stdin);
    let said = soon("curator releases", lines.next_line()).await.unwrap();
    assert_eq!(said.as_deref(), Some("released"));
    soon("curator exits", peer.wait()).await.unwrap();
    eventually("queue empty", || async {
        h.entries(&name).await.is_empty()
    })
    .await;
    client.close().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Over mutual TLS the certificate's name is an identity of its own: a client with the same
/// certificate and no password may use a lock created with creator-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_alone_is_an_identity() {
    let base = new_base();
    let (client, guard, name) = held(&base, "").await;
    let same_cert = Client::connect(&tls_url(None, &base, "")).await.unwrap();
    let mutex = same_cert.mutex(&name).unwrap();
    assert!(mutex.try_lock().await.unwrap().is_none());
    guard.release().await.unwrap();
    mutex
        .try_lock()
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    same_cert.close().await.unwrap();
    client.close().await.unwrap();
}
