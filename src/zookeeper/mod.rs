//! The ZooKeeper backend (`zk://HOST:PORT[,HOST:PORT…][/PATH]`).
//!
//! - **Session**: one ZooKeeper session per client, with the TTL as session timeout
//!   (ZooKeeper clamps it to [2, 20] × the server's tickTime; a TTL below the minimum is
//!   refused). An expired session is replaced by a new one for later acquisitions.
//! - **Queue**: lock NAME is the znode `/PATH/NAME` (default PATH `/fairlock`; parents are
//!   created as containers). Each acquisition creates an ephemeral sequential child named
//!   exactly as Curator's InterProcessMutex does (`_c_<uuid>-lock-<seq>`), so
//!   `new InterProcessMutex(client, "/PATH/NAME")` is the same lock. kazoo's nodes
//!   (`…__lock__<seq>`) count as contenders too: every party recognised by its sequence
//!   number, so mutual exclusion holds with Curator and kazoo alike.
//! - **Sequence wrap**: ZooKeeper's sequence counter is signed 32-bit and wraps from
//!   2³¹−1 to −2³¹; fairlock orders sequence numbers in wrapping (serial-number) order,
//!   exact while the live entries of one queue lie fewer than 2³¹ counter steps apart
//!   (fewer than 2³¹ live entries, the holder younger than about a billion acquisitions of
//!   the lock). Curator and kazoo compare them as text, which breaks at the wrap.
//! - **Semaphores**: exactly kazoo's `Semaphore` layout, so kazoo's semaphores and ours
//!   are one: the pool `/PATH/NAME` (persistent, the limit as its data, in decimal) with
//!   one ephemeral child `<uuid hex>` per lease, and the gate `/PATH/NAME-__lock__`, the
//!   queue of kazoo's Lock, whose entries are named as kazoo names them
//!   (`<uuid hex>__lock__<seq>`, which its Lock recognises). The gate's head lists the pool
//!   with a children watch and creates its lease if fewer children than the limit are
//!   there, in a multi-op that first checks its gate node still exists (kazoo does not
//!   check). Listed as a lock queue, a pool's leases come oldest first (by czxid).
//!   Curator's InterProcessSemaphoreV2 lays out its nodes otherwise (`NAME/locks`,
//!   `NAME/leases`), and does not share a semaphore with kazoo or fairlock.
//! - **Waiting**: each waiter sets a data watch on the node directly ahead of it (one
//!   release wakes one waiter), then re-lists the children: its own node must still be
//!   there (the post-wait check) and nothing else ahead of it.
//! - **Protected create**: after a connection loss during create, the waiter finds its
//!   node by the uuid in its name (checking the ephemeral owner) instead of creating a
//!   second one.
//! - **Fencing**: the token is the own node's czxid, a strictly increasing transaction id.
//!   [`LockGuard::guarded_write`](crate::LockGuard::guarded_write) is a multi-op that first
//!   checks the own node still exists.
//! - **Timeouts and outcomes**: every request honours the request timeout (the own node's
//!   create included), and a waiter ends as soon as its session is known lost. Requests
//!   cut short by a connection failure (a server dying: the session moves to another one
//!   in the URL) are resolved where possible: reads and idempotent writes are sent again;
//!   a guarded write's multi-op also checks the own node's version and writes its data
//!   back unchanged, so at most one attempt per version applies and reading the version
//!   back tells whether it did; a release whose delete went unanswered and then finds the
//!   node gone deleted it. A write (guarded write, proclaim, put) left without a definite
//!   answer within the request timeout is [`Error::OutcomeUnknown`]: it may have been
//!   applied. [`Error::LockLost`] and [`Error::SessionExpired`] mean not applied: the loss
//!   was known before sending, or the server said so (failed check, expired session).
//! - **Disconnections**: while disconnected, the session is *suspended*
//!   ([`Client::is_suspended`](crate::Client::is_suspended)): the holder cannot know
//!   whether it still holds the lock, and should not start new protected work. A
//!   disconnection shorter than 2/5 of the session timeout loses nothing. Past that, the
//!   lock counts as lost (the server may expire the session soon after), `lost()`
//!   completes, and fairlock closes the session so no stale node lingers. A session the
//!   server expired is reported as soon as the client reconnects.
//! - **Partitions**: the client library declares a silent connection dead after 2/5 of the
//!   session timeout; 2/5 later the holder learns of the loss: at 4/5 of the timeout after
//!   it last heard from the server, before the server can free the lock for the next waiter.

mod check;
mod names;
mod security;
mod session;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zookeeper_client as zk;

use crate::backend::{KeySpace, QueueEntry, QueueKind};
use crate::backend::{SessionSlot, SessionSource};
use crate::config::Config;
use crate::error::{within, Error, Result};
use crate::sequencer::{Sequencer, SequencerStatus};
use crate::state::StateChannel;
use session::{is_no_node, retrying, ZkSession};

/// The ZooKeeper client library fairlock uses, for the types its API shares with it.
pub use zookeeper_client;

/// The base path used when the URL names none.
pub const DEFAULT_PATH: &str = crate::key::ZOOKEEPER_DEFAULT_PATH;

/// Maps a client library error: refusals by ACL and of credentials get their own variants.
pub(crate) fn zk_error(e: zk::Error) -> Error {
    let backend = "zookeeper";
    match e {
        zk::Error::NoAuth => Error::PermissionDenied {
            backend,
            source: Box::new(e),
        },
        zk::Error::AuthFailed => Error::AuthenticationFailed {
            backend,
            source: Box::new(e),
        },
        e => Error::Backend {
            backend,
            source: Box::new(e),
        },
    }
}

/// What sessions need from the configuration.
pub(crate) struct Settings {
    /// The endpoints, comma-separated (ZooKeeper's connect string, without a chroot).
    cluster: String,
    endpoints: Vec<String>,
    /// TLS: the client library's options and the settings they came from.
    tls: Option<(zk::TlsOptions, crate::config::TlsConfig)>,
    /// Digest credentials, `user:password`.
    auth: Option<Vec<u8>>,
    /// The ACL of every node fairlock creates.
    pub(crate) acls: zk::Acls<'static>,
    base: String,
    ttl: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    safety_margin: Duration,
    /// The client's session state channel.
    states: Arc<StateChannel>,
}

pub(crate) struct ZkClient {
    settings: Arc<Settings>,
    slot: SessionSlot<ZkSession>,
}

impl ZkClient {
    /// The id and password of the current session.
    #[cfg(feature = "test-util")]
    pub(crate) fn session_info(&self) -> Option<zk::SessionInfo> {
        Some(self.slot.current()?.info().clone())
    }
}

fn settings(config: &Config) -> Result<Arc<Settings>> {
    let tls = match &config.tls {
        Some(tls) => Some((security::tls_options(tls)?, tls.clone())),
        None => None,
    };
    Ok(Arc::new(Settings {
        cluster: config.endpoints.join(","),
        endpoints: config.endpoints.clone(),
        tls,
        auth: security::digest(config)?,
        acls: security::acls(config)?,
        base: config.prefix_or(DEFAULT_PATH),
        ttl: config.ttl,
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        safety_margin: config.effective_safety_margin(),
        states: StateChannel::new(),
    }))
}

impl Settings {
    /// Connects a session as configured (TLS, credentials), `with` adding its own options.
    pub(crate) async fn connect(
        &self,
        with: impl FnOnce(zk::Connector) -> zk::Connector,
    ) -> Result<zk::Client, zk::Error> {
        let mut connector = zk::Client::connector();
        if let Some(auth) = &self.auth {
            connector = connector.with_auth("digest", auth);
        }
        match &self.tls {
            Some((options, _)) => {
                with(connector.with_tls(options.clone()))
                    .secure_connect(&self.cluster)
                    .await
            }
            None => with(connector).connect(&self.cluster).await,
        }
    }

    /// Why a TLS connection failed, if a handshake of fairlock's own names a TLS problem.
    pub(crate) async fn diagnose(&self) -> Option<Error> {
        let (_, tls) = self.tls.as_ref()?;
        let (endpoints, tls) = (self.endpoints.clone(), tls.clone());
        let timeout = self.connect_timeout;
        tokio::task::spawn_blocking(move || security::diagnose(&endpoints, &tls, timeout))
            .await
            .ok()
            .flatten()
    }
}

impl ZkClient {
    /// Connects a session. Also for lazy clients: the connection *is* a session, which
    /// reads need; it creates no node.
    pub(crate) async fn connect(config: &Config) -> Result<Arc<Self>> {
        let settings = settings(config)?;
        let unreachable = |source: crate::error::BoxError| Error::Unreachable {
            endpoints: settings.cluster.clone(),
            source,
        };
        let first = match ZkSession::open(&settings).await {
            Ok(session) => session,
            Err(Error::Timeout(t)) => {
                return Err(unreachable(format!("no session within {t:?}").into()))
            }
            Err(Error::Backend { source, .. }) => return Err(unreachable(source)),
            Err(e) => return Err(e),
        };
        Ok(Arc::new(ZkClient {
            slot: SessionSlot::new(first, settings.states.clone()),
            settings,
        }))
    }

    /// A client whose first session is `client`'s (borrowed: fairlock never ends it);
    /// later ones are opened through `config.endpoints`, if any.
    pub(crate) fn with_client(client: zk::Client, config: &Config) -> Result<Arc<Self>> {
        let settings = settings(config)?;
        let first = ZkSession::borrow(client, &settings)?;
        Ok(Arc::new(ZkClient {
            slot: SessionSlot::new(first, settings.states.clone()),
            settings,
        }))
    }

    /// A read within the request timeout, sent again after connection failures (a server
    /// dying: the session moves to another one).
    async fn request<T, Fut>(&self, mut op: impl FnMut(zk::Client) -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T, zk::Error>>,
    {
        let client = self.session().await?.client()?;
        within(self.settings.request_timeout, async move {
            retrying(|| op(client.clone())).await.map_err(zk_error)
        })
        .await
    }
}

#[async_trait]
impl SessionSource for ZkClient {
    type Session = ZkSession;

    fn slot(&self) -> &SessionSlot<ZkSession> {
        &self.slot
    }

    async fn open(&self) -> Result<Arc<ZkSession>> {
        if self.settings.cluster.is_empty() {
            // A handed-in client's session ended, and no endpoints to open another.
            return Err(Error::SessionExpired);
        }
        ZkSession::open(&self.settings).await
    }
}

#[async_trait]
impl KeySpace for ZkClient {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.request(|c| async move { c.get_data(key).await }).await {
            Ok((data, _)) => Ok(Some(data)),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An unconditional put is idempotent: connection failures are retried, and without a
    /// definite answer within the request timeout the outcome is unknown.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let session = self.session().await?;
        let client = session.client()?;
        let acls = self.settings.acls;
        session.write(|| put_once(&client, acls, key, &value)).await
    }

    async fn queue(
        &self,
        name: &str,
        kind: QueueKind,
        limit: Option<usize>,
    ) -> Result<Vec<QueueEntry>> {
        let path = format!("{}/{name}", self.settings.base);
        let children = match self
            .request(|c| {
                let path = &path;
                async move { c.list_children(path).await }
            })
            .await
        {
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => return Ok(Vec::new()),
            other => other?,
        };
        let limit = limit.unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        for (_, child) in names::contenders(&children, kind) {
            if entries.len() >= limit {
                break;
            }
            entries.extend(self.read_entry(name, child).await?);
        }
        // A semaphore's pool: its leases, which have no sequence number, oldest first (by
        // czxid, their tokens), after any sequential contenders (there are none in a pool
        // that only semaphores use).
        if kind == QueueKind::Lock && entries.len() < limit {
            let mut leases = Vec::new();
            for child in children.iter().filter(|c| names::is_lease(c)) {
                leases.extend(self.read_entry(name, child).await?);
            }
            leases.sort_by_key(|e| e.fencing_token);
            leases.truncate(limit - entries.len());
            entries.extend(leases);
        }
        Ok(entries)
    }

    /// A `sync`, then one multi-read: see `check.rs`.
    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus> {
        check::check(self, sequencer).await
    }

    async fn watch_head(
        self: Arc<Self>,
        name: String,
        kind: QueueKind,
        tx: tokio::sync::mpsc::Sender<Result<Option<QueueEntry>>>,
    ) {
        let path = format!("{}/{name}", self.settings.base);
        while !tx.is_closed() {
            let watcher = match self.head_and_watch(&path, kind).await {
                Ok(Some((head, watcher))) => {
                    if tx.send(Ok(head)).await.is_err() {
                        return;
                    }
                    watcher
                }
                Ok(None) => continue, // changed while reading: read again
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Data change or deletion of the head, children change, or session event: any
            // of them means "read again".
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tx.closed() => return,
            }
        }
    }
}

/// One attempt of [`KeySpace::put`]: set the data, or create the node (and its parents)
/// with the configured ACL.
async fn put_once(
    c: &zk::Client,
    acls: zk::Acls<'static>,
    key: &str,
    value: &[u8],
) -> Result<(), zk::Error> {
    match c.set_data(key, value, None).await {
        Err(zk::Error::NoNode) => {
            let options = zk::CreateMode::Persistent.with_acls(acls);
            if let Some((parent, _)) = key.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                c.mkdir(parent, &options).await?;
            }
            match c.create(key, value, &options).await {
                Err(zk::Error::NodeExists) => c.set_data(key, value, None).await.map(drop),
                other => other.map(drop),
            }
        }
        other => other.map(drop),
    }
}

impl ZkClient {
    /// The entry `child` of queue `name`, `None` if it just left.
    async fn read_entry(&self, name: &str, child: &str) -> Result<Option<QueueEntry>> {
        let key = format!("{}/{name}/{child}", self.settings.base);
        let read = self
            .request(|c| {
                let key = key.clone();
                async move { c.get_data(&key).await }
            })
            .await;
        match read {
            Ok((value, stat)) => Ok(Some(entry(key, value, &stat))),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn entry(key: String, value: Vec<u8>, stat: &zk::Stat) -> QueueEntry {
    let leaf = key.rsplit('/').next().unwrap_or_default();
    let shared = names::contender(leaf, QueueKind::Lock).is_some_and(|(_, shared)| shared);
    QueueEntry {
        key,
        fencing_token: stat.czxid as u64,
        session: format!("{:x}", stat.ephemeral_owner),
        value,
        shared,
    }
}

impl ZkClient {
    /// The head of queue `path` with a watch that fires when it may have changed: a data
    /// watch on the head node, or a children watch (or an existence watch on the parent)
    /// when the queue is empty. `None` if the queue changed while reading.
    async fn head_and_watch(
        &self,
        path: &str,
        kind: QueueKind,
    ) -> Result<Option<(Option<QueueEntry>, zk::OneshotWatcher)>> {
        let client = self.session().await?.client()?;
        let timeout = self.settings.request_timeout;
        let children = match within(timeout, async {
            client.list_and_watch_children(path).await.map_err(zk_error)
        })
        .await
        {
            Ok((children, watcher)) => Some((children, watcher)),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => None,
            Err(e) => return Err(e),
        };
        let Some((children, children_watcher)) = children else {
            // No queue node yet: watch for its creation.
            let (stat, watcher) = within(timeout, async {
                client.check_and_watch_stat(path).await.map_err(zk_error)
            })
            .await?;
            return Ok(stat.is_none().then_some((None, watcher)));
        };
        let Some((_, head)) = names::contenders(&children, kind).first().copied() else {
            return Ok(Some((None, children_watcher)));
        };
        let key = format!("{path}/{head}");
        match within(timeout, async {
            client.get_and_watch_data(&key).await.map_err(zk_error)
        })
        .await
        {
            Ok((value, stat, watcher)) => Ok(Some((Some(entry(key, value, &stat)), watcher))),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
