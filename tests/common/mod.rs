//! Test support: a harness per backend, giving each test its own namespace and an outside
//! view of the backend (raw client, not fairlock) to check what fairlock left behind.
#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fairlock::Client;

/// Generous upper bound for anything that should happen "soon" on a slow shared machine.
pub const SOON: Duration = Duration::from_secs(20);

#[cfg(feature = "etcd")]
pub fn etcd_endpoint() -> String {
    std::env::var("FAIRLOCK_TEST_ETCD").unwrap_or_else(|_| "127.0.0.1:2379".into())
}

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 20 ms until it returns true or `SOON` passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SOON;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut` with the `SOON` bound.
pub async fn soon<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// One backend, seen from inside (fairlock clients) and outside (raw access).
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend URL for this test's namespace, with session TTL `ttl_secs`.
    fn url(&self, ttl_secs: u64) -> String;
    /// The keys (or nodes) of lock `name`'s queue, read without fairlock.
    async fn entries(&self, name: &str) -> Vec<String>;
    /// Ends `client`'s session from outside (lease revoke, session expiry).
    async fn expire_session(&self, client: &Client);
    /// Deletes a queue entry from outside.
    async fn delete_entry(&self, key: &str);
    /// A data key usable with get/put/guarded_write.
    fn data_key(&self, tag: &str) -> String;
    /// The backend URL reaching the server through `endpoint` (a proxy) instead.
    fn url_via(&self, endpoint: &str, ttl_secs: u64) -> String {
        let _ = endpoint;
        self.url(ttl_secs)
    }
    /// The server's own endpoint, for a proxy to forward to.
    fn endpoint(&self) -> String {
        String::new()
    }

    async fn client(&self) -> Client {
        self.client_ttl(10).await
    }

    /// Whether `key` is a queue entry key of lock `name` (under its prefix or path).
    fn entries_prefix_of(&self, name: &str, key: &str) -> bool;

    async fn client_ttl(&self, ttl_secs: u64) -> Client {
        Client::connect(&self.url(ttl_secs)).await.expect("connect")
    }

    /// A client with lock-delay `delay` (URL option `lock_delay`).
    async fn client_with_lock_delay(&self, delay: Duration) -> Client {
        let url = self.url(10);
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}lock_delay={}ms", delay.as_millis());
        Client::connect(&url).await.expect("connect")
    }
}

pub struct MemoryHarness {
    store: String,
}

impl MemoryHarness {
    pub fn new() -> Self {
        MemoryHarness {
            store: unique("mem"),
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn url(&self, ttl_secs: u64) -> String {
        let _ = ttl_secs; // memory sessions only expire through abandon(), after the TTL
        format!("memory://{}", self.store)
    }

    async fn client_ttl(&self, ttl_secs: u64) -> Client {
        let mut config = fairlock::Config::from_url(&self.url(ttl_secs)).unwrap();
        config.ttl = Duration::from_secs(ttl_secs);
        Client::from_config(&config).await.unwrap()
    }

    async fn entries(&self, name: &str) -> Vec<String> {
        fairlock::memory::MemoryStore::named(&self.store).keys(&format!("fairlock/{name}/"))
    }

    async fn expire_session(&self, client: &Client) {
        assert!(
            fairlock::memory::MemoryStore::named(&self.store).expire_session(&client.session_id())
        );
    }

    async fn delete_entry(&self, key: &str) {
        assert!(fairlock::memory::MemoryStore::named(&self.store).delete(key));
    }

    fn data_key(&self, tag: &str) -> String {
        format!("data/{tag}")
    }

    fn entries_prefix_of(&self, name: &str, key: &str) -> bool {
        key.starts_with(&format!("fairlock/{name}/"))
    }
}

#[cfg(feature = "etcd")]
pub struct EtcdHarness {
    prefix: String,
    raw: etcd_client::Client,
}

#[cfg(feature = "etcd")]
impl EtcdHarness {
    pub async fn new() -> Self {
        let raw = etcd_client::Client::connect([format!("http://{}", etcd_endpoint())], None)
            .await
            .expect("etcd client");
        EtcdHarness {
            prefix: unique("fairlock-test"),
            raw,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn raw(&self) -> etcd_client::Client {
        self.raw.clone()
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Harness for EtcdHarness {
    fn url(&self, ttl_secs: u64) -> String {
        format!("etcd://{}/{}?ttl={ttl_secs}", etcd_endpoint(), self.prefix)
    }

    fn url_via(&self, endpoint: &str, ttl_secs: u64) -> String {
        format!("etcd://{endpoint}/{}?ttl={ttl_secs}", self.prefix)
    }

    fn endpoint(&self) -> String {
        etcd_endpoint()
    }

    async fn entries(&self, name: &str) -> Vec<String> {
        etcd_entries(&self.raw, &format!("{}/{name}/", self.prefix)).await
    }

    async fn expire_session(&self, client: &Client) {
        etcd_revoke(&self.raw, client).await
    }

    async fn delete_entry(&self, key: &str) {
        etcd_delete(&self.raw, key).await
    }

    fn data_key(&self, tag: &str) -> String {
        format!("{}-data/{tag}", self.prefix)
    }

    fn entries_prefix_of(&self, name: &str, key: &str) -> bool {
        key.starts_with(&format!("{}/{name}/", self.prefix))
    }
}

/// The queue nodes under lock node `path` (sequential: their names end in digits; not the
/// lock-delay's holder record), sorted.
#[cfg(feature = "zookeeper")]
pub async fn zk_entries(raw: &zookeeper_client::Client, path: &str) -> Vec<String> {
    match raw.list_children(path).await {
        Ok(mut children) => {
            // Queue entries end in their sequence number; semaphore leases (kazoo's
            // layout) are 32 hex digits.
            let lease = |c: &str| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit());
            children.retain(|c| c.ends_with(|ch: char| ch.is_ascii_digit()) || lease(c));
            children.sort();
            children
                .into_iter()
                .map(|c| format!("{path}/{c}"))
                .collect()
        }
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("list {path}: {e}"),
    }
}

#[cfg(feature = "zookeeper")]
pub fn zk_endpoint() -> String {
    std::env::var("FAIRLOCK_TEST_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into())
}

#[cfg(feature = "zookeeper")]
pub struct ZkHarness {
    base: String,
    raw: zookeeper_client::Client,
}

#[cfg(feature = "zookeeper")]
impl ZkHarness {
    pub async fn new() -> Self {
        let raw = zookeeper_client::Client::connect(&zk_endpoint())
            .await
            .expect("zookeeper client");
        ZkHarness {
            base: format!("/{}", unique("fairlock-test")),
            raw,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn raw(&self) -> &zookeeper_client::Client {
        &self.raw
    }
}

#[cfg(feature = "zookeeper")]
#[async_trait]
impl Harness for ZkHarness {
    fn url(&self, ttl_secs: u64) -> String {
        format!("zk://{}{}?ttl={ttl_secs}", zk_endpoint(), self.base)
    }

    fn url_via(&self, endpoint: &str, ttl_secs: u64) -> String {
        format!("zk://{endpoint}{}?ttl={ttl_secs}", self.base)
    }

    fn endpoint(&self) -> String {
        zk_endpoint()
    }

    async fn entries(&self, name: &str) -> Vec<String> {
        zk_entries(&self.raw, &format!("{}/{name}", self.base)).await
    }

    async fn expire_session(&self, client: &Client) {
        // A second connection to the same session closes it: for the first, an expiry. The
        // first connection, kicked off by the second, may reconnect and take the session
        // back before the close goes through; then close again.
        let info = client.zookeeper_session_info().expect("a zookeeper client");
        expire_zk_session(client, || {
            let info = info.clone();
            async move {
                let connector = zookeeper_client::Client::connector();
                connector.with_session(info).connect(&zk_endpoint()).await
            }
        })
        .await
    }

    async fn delete_entry(&self, key: &str) {
        self.raw.delete(key, None).await.expect("delete");
    }

    fn data_key(&self, tag: &str) -> String {
        format!("{}-data/{tag}", self.base.trim_start_matches('/'))
    }

    fn entries_prefix_of(&self, name: &str, key: &str) -> bool {
        key.starts_with(&format!("{}/{name}/", self.base))
    }
}

// ---- The secure ZooKeeper (`scripts/services secure start zookeeper`) -------------------

/// A certificate file of scripts/certs, as a path string.
pub fn cert_file(name: &str) -> String {
    cert(name)
}

/// The secure ZooKeeper's mutual-TLS port.
pub fn zk_secure_endpoint() -> String {
    std::env::var("FAIRLOCK_TEST_SECURE_ZK").unwrap_or_else(|_| "127.0.0.1:21811".into())
}

/// The secure ZooKeeper's plain port (digest authentication without TLS).
pub fn zk_secure_plain_endpoint() -> String {
    std::env::var("FAIRLOCK_TEST_SECURE_ZK_PLAIN").unwrap_or_else(|_| "127.0.0.1:21812".into())
}

/// The digest identity the secure suites use.
pub const ZK_USER: &str = "fairlock";
/// Its password.
pub const ZK_PASSWORD: &str = "fairlock-secret";

/// URL options for TLS with the test CA and the client certificate `cert` (`client`,
/// `other`, `expired`, `rogue`; `None`: no client certificate).
pub fn zk_tls_options(ca: &str, cert: Option<&str>) -> String {
    let mut query = format!("ca_file={}", cert_file(&format!("{ca}.pem")));
    if let Some(cert) = cert {
        query += &format!(
            "&cert_file={}&key_file={}",
            cert_file(&format!("{cert}.pem")),
            cert_file(&format!("{cert}-key.pem"))
        );
    }
    query
}

/// A raw client (not fairlock) of the secure ZooKeeper over mutual TLS with the client
/// certificate `cert` (`client`: CN=fairlock, `other`: CN=other; the server makes it the
/// identity `x509:CN=…`), authenticated as `auth` (`user:password`) if given.
///
/// rustls needs a process-wide crypto provider, which fairlock installs on its first TLS
/// connection: a fairlock client connects first.
#[cfg(feature = "zookeeper")]
pub async fn zk_secure_raw(cert: &str, auth: Option<&str>) -> zookeeper_client::Client {
    let url = format!(
        "zk://{}/fairlock-provider?{}",
        zk_secure_endpoint(),
        zk_tls_options("ca", Some("client"))
    );
    Client::connect(&url)
        .await
        .expect("secure zookeeper (scripts/services secure start zookeeper)")
        .close()
        .await
        .unwrap();
    let tls = zookeeper_client::TlsOptions::new()
        .with_pem_ca(&std::fs::read_to_string(cert_file("ca.pem")).unwrap())
        .unwrap()
        .with_pem_identity(
            &std::fs::read_to_string(cert_file(&format!("{cert}.pem"))).unwrap(),
            &std::fs::read_to_string(cert_file(&format!("{cert}-key.pem"))).unwrap(),
        )
        .unwrap();
    let mut connector = zookeeper_client::Client::connector().with_tls(tls);
    if let Some(auth) = auth {
        connector = connector.with_auth("digest", auth.as_bytes());
    }
    connector
        .secure_connect(&zk_secure_endpoint())
        .await
        .expect("raw secure zookeeper client")
}

/// The ZooKeeper harness over mutual TLS with digest credentials and creator-all ACLs.
#[cfg(feature = "zookeeper")]
pub struct ZkSecureHarness {
    base: String,
    raw: zookeeper_client::Client,
}

#[cfg(feature = "zookeeper")]
impl ZkSecureHarness {
    pub async fn new() -> Self {
        ZkSecureHarness {
            base: format!("/{}", unique("fairlock-secure")),
            raw: zk_secure_raw("client", Some(&format!("{ZK_USER}:{ZK_PASSWORD}"))).await,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn raw(&self) -> &zookeeper_client::Client {
        &self.raw
    }
}

#[cfg(feature = "zookeeper")]
#[async_trait]
impl Harness for ZkSecureHarness {
    fn url(&self, ttl_secs: u64) -> String {
        format!(
            "zk://{ZK_USER}:{ZK_PASSWORD}@{}{}?ttl={ttl_secs}&acl=creator-all&{}",
            zk_secure_endpoint(),
            self.base,
            zk_tls_options("ca", Some("client"))
        )
    }

    fn endpoint(&self) -> String {
        zk_secure_endpoint()
    }

    async fn entries(&self, name: &str) -> Vec<String> {
        zk_entries(&self.raw, &format!("{}/{name}", self.base)).await
    }

    async fn expire_session(&self, client: &Client) {
        // As ZkHarness does, over TLS.
        let info = client.zookeeper_session_info().expect("a zookeeper client");
        let tls = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&std::fs::read_to_string(cert_file("ca.pem")).unwrap())
            .unwrap()
            .with_pem_identity(
                &std::fs::read_to_string(cert_file("client.pem")).unwrap(),
                &std::fs::read_to_string(cert_file("client-key.pem")).unwrap(),
            )
            .unwrap();
        expire_zk_session(client, || {
            let (tls, info) = (tls.clone(), info.clone());
            async move {
                let connector = zookeeper_client::Client::connector();
                connector
                    .with_tls(tls)
                    .with_session(info)
                    .secure_connect(&zk_secure_endpoint())
                    .await
            }
        })
        .await
    }

    async fn delete_entry(&self, key: &str) {
        self.raw.delete(key, None).await.expect("delete");
    }

    fn data_key(&self, tag: &str) -> String {
        format!("{}-data/{tag}", self.base.trim_start_matches('/'))
    }

    fn entries_prefix_of(&self, name: &str, key: &str) -> bool {
        key.starts_with(&format!("{}/{name}/", self.base))
    }
}

// ---- the etcd that requires TLS and authentication (scripts/secure-etcd.sh) -------------

/// The repository's `.services/` (tests run with the library's or the CLI's manifest dir).
pub fn services_dir() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [manifest, manifest.parent().unwrap_or(manifest)] {
        if dir.join("scripts/secure-etcd.sh").exists() {
            return dir.join(".services");
        }
    }
    panic!("no scripts/secure-etcd.sh above {}", manifest.display());
}

/// A test certificate file from scripts/certs.
pub fn cert(file: &str) -> String {
    services_dir()
        .join("certs")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

/// The password file of a user of the secure etcd (`root`, `fairlock`, `other`).
pub fn secure_etcd_password_file(user: &str) -> String {
    services_dir()
        .join(format!("secure-etcd/{user}.password"))
        .to_string_lossy()
        .into_owned()
}

pub fn secure_etcd_password(user: &str) -> String {
    let file = secure_etcd_password_file(user);
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e} (start it: scripts/services secure start etcd)"))
        .trim()
        .to_owned()
}

pub fn secure_etcd_endpoint() -> String {
    let port = std::env::var("FAIRLOCK_SECURE_ETCD_PORT").unwrap_or_else(|_| "23790".into());
    format!("127.0.0.1:{port}")
}

/// The key prefix the secure etcd's user `fairlock` may read and write.
pub const SECURE_ETCD_GRANT: &str = "fairlock-secure";

/// The secure etcd with user `fairlock` (password from its file) over mutual TLS: the
/// conformance suite's harness, and the happy path of tests/security_etcd.rs. The outside
/// view is root's.
#[cfg(feature = "etcd")]
pub struct SecureEtcdHarness {
    prefix: String,
    raw: etcd_client::Client,
}

#[cfg(feature = "etcd")]
impl SecureEtcdHarness {
    pub async fn new() -> Self {
        SecureEtcdHarness {
            prefix: format!("{SECURE_ETCD_GRANT}/{}", unique("t")),
            raw: Self::root().await,
        }
    }

    /// A raw client as root (may do anything).
    pub async fn root() -> etcd_client::Client {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(cert("ca.pem")).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(cert("client.pem")).unwrap(),
                std::fs::read(cert("client-key.pem")).unwrap(),
            ));
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_user("root", secure_etcd_password("root"))
            .with_auto_token_refresh(true);
        etcd_client::Client::connect(
            [format!("https://{}", secure_etcd_endpoint())],
            Some(options),
        )
        .await
        .expect("secure etcd as root (scripts/services secure start etcd)")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn raw(&self) -> etcd_client::Client {
        self.raw.clone()
    }

    /// The URL's TLS options: the test CA and the client certificate `client` (`client`,
    /// `other`, `expired`, `rogue`).
    pub fn tls_query(client: &str) -> String {
        format!(
            "ca_file={}&cert_file={}&key_file={}",
            cert("ca.pem"),
            cert(&format!("{client}.pem")),
            cert(&format!("{client}-key.pem"))
        )
    }

    /// The URL for user `fairlock` with its password file, presenting the CN=other
    /// certificate (the token, not the certificate, names the user).
    pub fn url_as_fairlock(&self, ttl_secs: u64) -> String {
        format!(
            "etcd://fairlock@{}/{}?ttl={ttl_secs}&{}&password_file={}",
            secure_etcd_endpoint(),
            self.prefix,
            Self::tls_query("other"),
            secure_etcd_password_file("fairlock")
        )
    }
}

#[cfg(feature = "etcd")]
#[async_trait]
impl Harness for SecureEtcdHarness {
    fn url(&self, ttl_secs: u64) -> String {
        self.url_as_fairlock(ttl_secs)
    }

    async fn entries(&self, name: &str) -> Vec<String> {
        etcd_entries(&self.raw, &format!("{}/{name}/", self.prefix)).await
    }

    async fn expire_session(&self, client: &Client) {
        etcd_revoke(&self.raw, client).await
    }

    async fn delete_entry(&self, key: &str) {
        etcd_delete(&self.raw, key).await
    }

    fn data_key(&self, tag: &str) -> String {
        format!("{}-data/{tag}", self.prefix)
    }

    fn entries_prefix_of(&self, name: &str, key: &str) -> bool {
        key.starts_with(&format!("{}/{name}/", self.prefix))
    }
}

/// The keys under `prefix`, read with a raw etcd client.
#[cfg(feature = "etcd")]
async fn etcd_entries(raw: &etcd_client::Client, prefix: &str) -> Vec<String> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let resp = raw
        .kv_client()
        .get(prefix, Some(options))
        .await
        .expect("etcd get");
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

/// Revokes `client`'s lease from outside.
#[cfg(feature = "etcd")]
async fn etcd_revoke(raw: &etcd_client::Client, client: &Client) {
    let lease = i64::from_str_radix(&client.session_id(), 16).unwrap();
    raw.lease_client().revoke(lease).await.expect("revoke");
}

/// Deletes `key`, which must exist, from outside.
#[cfg(feature = "etcd")]
async fn etcd_delete(raw: &etcd_client::Client, key: &str) {
    let resp = raw.kv_client().delete(key, None).await.expect("delete");
    assert_eq!(resp.deleted(), 1, "{key} did not exist");
}

/// Expires `client`'s ZooKeeper session from outside: a second connection to the same
/// session (made by `connect`) closes it, which is an expiry for the first. The first
/// connection, kicked off by the second, may reconnect and take the session back before the
/// close goes through; then close again.
#[cfg(feature = "zookeeper")]
async fn expire_zk_session<F>(client: &Client, mut connect: impl FnMut() -> F)
where
    F: Future<Output = Result<zookeeper_client::Client, zookeeper_client::Error>>,
{
    for _ in 0..10 {
        if let Ok(other) = connect().await {
            let mut states = other.state_watcher();
            drop(other);
            while !states.changed().await.is_terminated() {}
        }
        let lost = client.session_lost();
        // Generous: on a loaded machine the kicked-off connection may take a while to hear.
        if tokio::time::timeout(Duration::from_secs(5), lost)
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("could not expire the session from outside");
}
