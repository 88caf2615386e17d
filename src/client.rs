//! The backend-agnostic client: one session, mutexes by name, plain reads and writes. The
//! one place that picks a backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::backend::{
    gate_name, KeySpace, QueueEntry, QueueKind, QueueSession, SessionSource, Side,
};
use crate::config::{BackendKind, Config};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::key::KeyMap;
use crate::lost::LostSignal;
use crate::mutex::DistributedMutex;
use crate::name::validate_name;
use crate::queue::{QueueElection, QueueMutex, QueueOptions};
use crate::rwlock::ReadWriteLock;
use crate::semaphore::SemaphoreQueue;
use crate::sequencer::{Sequencer, SequencerStatus};
use crate::state::SessionState;

/// What [`Client`] needs from a backend; every backend gets it from its session source and
/// key space.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    fn mutex(
        &self,
        name: String,
        side: Side,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Arc<dyn DistributedMutex>;
    fn semaphore(
        &self,
        name: String,
        limit: u32,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Arc<dyn DistributedMutex>;
    fn election(&self, name: String, options: QueueOptions) -> Arc<dyn Election>;
    fn session_lost(&self) -> LostSignal;
    fn session_id(&self) -> String;
    async fn close(&self) -> Result<()>;
    fn abandon(&self);
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    async fn queue(&self, name: &str, kind: QueueKind) -> Result<Vec<QueueEntry>>;
    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus>;
    fn is_suspended(&self) -> bool;
    fn session_state(&self) -> SessionState;
    fn session_states(&self) -> BoxStream<'static, SessionState>;
    /// For backend-specific helpers that downcast.
    #[cfg(all(feature = "zookeeper", feature = "test-util"))]
    fn as_any(&self) -> &dyn std::any::Any;
}

#[async_trait]
impl<B: SessionSource + KeySpace> Backend for Arc<B> {
    fn mutex(
        &self,
        name: String,
        side: Side,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Arc<dyn DistributedMutex> {
        Arc::new(QueueMutex::new(self.clone(), name, side, holder, options))
    }

    fn semaphore(
        &self,
        name: String,
        limit: u32,
        holder: Arc<[u8]>,
        options: QueueOptions,
    ) -> Arc<dyn DistributedMutex> {
        let source = self.clone();
        Arc::new(QueueMutex::semaphore(source, name, limit, holder, options))
    }

    fn election(&self, name: String, options: QueueOptions) -> Arc<dyn Election> {
        Arc::new(QueueElection::new(self.clone(), name, options))
    }

    fn session_lost(&self) -> LostSignal {
        self.slot().lost()
    }

    fn session_id(&self) -> String {
        self.slot().current().map_or_else(String::new, |s| s.id())
    }

    fn is_suspended(&self) -> bool {
        self.slot().current().is_some_and(|s| s.is_suspended())
    }

    fn session_state(&self) -> SessionState {
        self.slot().states().current()
    }

    fn session_states(&self) -> BoxStream<'static, SessionState> {
        self.slot().states().stream()
    }

    async fn close(&self) -> Result<()> {
        match self.slot().close() {
            Some(session) => session.close().await,
            None => Ok(()),
        }
    }

    fn abandon(&self) {
        if let Some(session) = self.slot().close() {
            session.abandon();
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        KeySpace::get(&**self, key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        KeySpace::put(&**self, key, value).await
    }

    async fn queue(&self, name: &str, kind: QueueKind) -> Result<Vec<QueueEntry>> {
        KeySpace::queue(&**self, name, kind, None).await
    }

    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus> {
        KeySpace::check(&**self, sequencer).await
    }

    #[cfg(all(feature = "zookeeper", feature = "test-util"))]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A connection to a lock backend, owning one session (an etcd lease kept alive in the
/// background, a ZooKeeper session, or a memory-store session).
///
/// Locks taken through this client live as long as its session. If the session is lost
/// (see [`session_lost`](Self::session_lost)), every guard of it reports the loss and the
/// next acquisition opens a new session. Cheap to clone; clones share the session.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// let client = fairlock::Client::connect("memory://doc-example").await?;
/// let stock = client.mutex("stock")?;
///
/// let guard = stock.lock().await?;
/// assert!(stock.try_lock().await?.is_none()); // held: try_lock does not wait
/// println!("holding {} with token {}", guard.key(), guard.fencing_token());
/// guard.release().await?;
///
/// client.close().await
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    backend: Arc<dyn Backend>,
    kind: BackendKind,
    /// The value of this client's lock entries; see [`Client::with_holder_value`].
    holder: Arc<[u8]>,
    /// Maps data keys onto the backend's keys.
    keys: Arc<KeyMap>,
    /// See [`Config::lock_delay`].
    lock_delay: Option<std::time::Duration>,
}

impl Client {
    /// Connects to the backend named by `url` (see [`Config`] for the forms) and opens a
    /// session.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`]: a malformed URL, or a TTL below the server's minimum.
    /// - [`Error::Unreachable`]: no server answered within the connect timeout.
    /// - [`Error::AuthenticationFailed`]: the server refused the credentials (or requires
    ///   some and none were given); [`Error::PermissionDenied`]: the user may not use the
    ///   prefix; [`Error::Tls`]: the TLS handshake failed (certificates, CA, server name).
    /// - [`Error::Backend`]: the server failed otherwise.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::from_config(&Config::from_url(url)?).await
    }

    /// Connects as `config` says and opens a session. Errors as [`connect`](Self::connect).
    pub async fn from_config(config: &Config) -> Result<Client> {
        Client::open(config, false).await
    }

    /// Connects to the backend named by `url` like [`connect`](Self::connect), but opens
    /// no session until one is needed: for tools that mostly read.
    ///
    /// Reads ([`get`](Self::get), [`queue`](Self::queue), [`Election::leader`],
    /// [`Election::observe`]) need no session. The first lock or campaign opens one, as a
    /// lost session is replaced. Until then [`session_state`](Self::session_state) is
    /// [`SessionState::Idle`], [`session_id`](Self::session_id) is empty,
    /// [`is_suspended`](Self::is_suspended) is false, and [`session_lost`](Self::session_lost)
    /// completes when the first session is lost (or with
    /// [`SessionClosed`](crate::LostReason::SessionClosed) on [`close`](Self::close) before
    /// any). Closing before the first session ends nothing on the backend.
    ///
    /// - **etcd**: connects and checks that the cluster answers; no lease is granted until
    ///   the first lock or campaign (a TTL below the server's minimum shows there, as
    ///   [`Error::InvalidConfig`]).
    /// - **ZooKeeper**: the connection itself is a ZooKeeper session, which reads need, so
    ///   one is opened as by [`connect`](Self::connect); it creates no node.
    /// - **memory**: no session is registered with the store until needed.
    ///
    /// # Errors
    /// As [`connect`](Self::connect): [`Error::InvalidConfig`], [`Error::Unreachable`],
    /// [`Error::Backend`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> fairlock::Result<()> {
    /// let client = fairlock::Client::connect_lazy("memory://lazy-doc").await?;
    /// assert_eq!(client.session_state(), fairlock::SessionState::Idle);
    /// assert!(client.queue("jobs", fairlock::QueueKind::Lock).await?.is_empty());
    /// let guard = client.mutex("jobs")?.lock().await?; // opens the session
    /// assert_eq!(client.session_state(), fairlock::SessionState::Connected);
    /// guard.release().await?;
    /// client.close().await
    /// # }
    /// ```
    pub async fn connect_lazy(url: &str) -> Result<Client> {
        Client::from_config_lazy(&Config::from_url(url)?).await
    }

    /// Connects as `config` says, without a session until one is needed; see
    /// [`connect_lazy`](Self::connect_lazy), whose errors it shares.
    pub async fn from_config_lazy(config: &Config) -> Result<Client> {
        Client::open(config, true).await
    }

    async fn open(config: &Config, lazy: bool) -> Result<Client> {
        config.validate()?;
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::Memory => Arc::new(crate::memory::MemoryClient::connect(config, lazy)?),
            #[cfg(feature = "etcd")]
            BackendKind::Etcd => Arc::new(crate::etcd::EtcdClient::connect(config, lazy).await?),
            #[cfg(feature = "zookeeper")]
            BackendKind::Zookeeper => Arc::new(crate::zookeeper::ZkClient::connect(config).await?),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::config(format!(
                    "fairlock was built without the {other} feature"
                )))
            }
        };
        Ok(Client::wrap(backend, config))
    }

    fn wrap(backend: Arc<dyn Backend>, config: &Config) -> Client {
        Client {
            backend,
            kind: config.backend,
            holder: Arc::from(&[][..]),
            keys: Arc::new(KeyMap::new(config)),
            lock_delay: config.lock_delay,
        }
    }

    fn queue_options(&self) -> QueueOptions {
        QueueOptions {
            keys: self.keys.clone(),
            lock_delay: self.lock_delay,
        }
    }

    /// A client on an etcd client you connected (your TLS, auth, interceptors, channel):
    /// `config` gives the prefix, TTL and timeouts; its backend must be etcd, its endpoints
    /// may be empty, and neither they nor its credentials are used (the client has its own).
    ///
    /// # Sessions
    /// etcd leases do not depend on the connection: fairlock grants its own lease on
    /// `client` now (within the connect timeout) and renews it, and a new one after a
    /// loss, as for a client it connected itself. [`close`](Self::close) revokes only that
    /// lease (fairlock's locks and queue entries go with it); your `client` and anything
    /// else you do with it are untouched and stay usable.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]: a bad setting, a backend other than etcd, or a TTL below
    /// the server's minimum. [`Error::Unreachable`]: no answer to the lease grant within the
    /// connect timeout. [`Error::AuthenticationFailed`], [`Error::PermissionDenied`]: the
    /// server refused the client's credentials or its user. [`Error::Backend`]: the server
    /// failed otherwise.
    #[cfg(feature = "etcd")]
    pub async fn from_etcd_client(
        client: crate::etcd::etcd_client::Client,
        config: &Config,
    ) -> Result<Client> {
        Client::check_handed_in(config, BackendKind::Etcd)?;
        let backend = crate::etcd::EtcdClient::with_client(client, config, false).await?;
        Ok(Client::wrap(Arc::new(backend), config))
    }

    /// A client on a ZooKeeper client you connected (your auth, TLS, chroot: fairlock's
    /// paths are then inside the chroot): `config` gives the base path, timeouts and the
    /// TTL of sessions fairlock opens itself; its backend must be ZooKeeper.
    ///
    /// # Sessions
    /// A ZooKeeper client *is* one session, with the timeout it negotiated, and fairlock's
    /// locks are ephemeral nodes of it. fairlock never ends that session: it is yours.
    /// - [`close`](Self::close) deletes the nodes fairlock created (held locks, queued
    ///   waiters, candidacies) and leaves the session and your `client` open and usable. If
    ///   it cannot within the request timeout it returns the error, and those nodes stay
    ///   until the session ends.
    /// - When fairlock counts the session lost (expired, or disconnected too long), guards
    ///   report the loss as usual and fairlock deletes its nodes if the session turns out
    ///   to live on. It cannot open a new session from the same client: later acquisitions
    ///   open fairlock's own sessions through `config.endpoints` if it names any (as
    ///   [`from_config`](Self::from_config) would), and fail with [`Error::SessionExpired`]
    ///   if it is empty. Those sessions know no chroot: with a chrooted client, leave the
    ///   endpoints empty.
    /// - [`abandon`](Self::abandon) only lets go of the client: fairlock's nodes stay
    ///   until the session ends.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]: a bad setting, or a backend other than ZooKeeper.
    /// [`Error::SessionExpired`]: `client`'s session has ended already.
    #[cfg(feature = "zookeeper")]
    pub async fn from_zookeeper_client(
        client: crate::zookeeper::zookeeper_client::Client,
        config: &Config,
    ) -> Result<Client> {
        Client::check_handed_in(config, BackendKind::Zookeeper)?;
        let backend = crate::zookeeper::ZkClient::with_client(client, config)?;
        Ok(Client::wrap(Arc::new(backend), config))
    }

    /// A client whose etcd backend talks to a simulated server through `conn` (feature
    /// `simulation`, for the deterministic simulator; not a stable API). `config` gives the
    /// prefix, TTL, timeouts and safety margin; its backend must be etcd.
    ///
    /// # Errors
    /// As [`from_config`](Self::from_config).
    #[cfg(feature = "simulation")]
    #[doc(hidden)]
    pub async fn simulated(conn: &crate::sim::SimConn, config: &Config) -> Result<Client> {
        Client::check_handed_in(config, BackendKind::Etcd)?;
        let backend = crate::etcd::EtcdClient::with_api(conn.api(), config, false).await?;
        Ok(Client::wrap(Arc::new(backend), config))
    }

    /// Checks a config for a client handed in: every setting, endpoints only if given.
    #[cfg(any(feature = "etcd", feature = "zookeeper"))]
    fn check_handed_in(config: &Config, kind: BackendKind) -> Result<()> {
        if config.backend != kind {
            return Err(Error::config(format!(
                "a {kind} client needs a {kind} config, not {}",
                config.backend
            )));
        }
        match config.endpoints.is_empty() {
            true => config.validate_settings(),
            false => config.validate(),
        }
    }

    /// The backend this client talks to.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// The mutex named `name`. Creating it costs nothing; each acquisition through it holds
    /// its own queue entry, so tasks may share one mutex or create their own.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; see [`validate_name`].
    pub fn mutex(&self, name: &str) -> Result<Arc<dyn DistributedMutex>> {
        validate_name(name)?;
        let (holder, options) = (self.holder.clone(), self.queue_options());
        Ok(self
            .backend
            .mutex(name.to_owned(), Side::Mutex, holder, options))
    }

    /// The read-write lock named `name`: readers share it, a writer holds it alone; see
    /// [`ReadWriteLock`]. Creating it costs nothing. Its queue is the one of fairlock's
    /// mutex of the same name, whose holders count as writers (Curator's mutex is another
    /// matter: see [`ReadWriteLock`]).
    ///
    /// # Errors
    /// - [`Error::InvalidName`]; see [`validate_name`].
    /// - [`Error::InvalidConfig`]: the client has a
    ///   [`lock_delay`](crate::Config::lock_delay), which read-write locks do not support.
    pub fn rw_lock(&self, name: &str) -> Result<ReadWriteLock> {
        validate_name(name)?;
        if self.lock_delay.is_some() {
            return Err(Error::config(
                "read-write locks do not support a lock-delay; use a client without one",
            ));
        }
        let side = |side| {
            let (holder, options) = (self.holder.clone(), self.queue_options());
            self.backend.mutex(name.to_owned(), side, holder, options)
        };
        Ok(ReadWriteLock::new(
            name.to_owned(),
            side(Side::Read),
            side(Side::Write),
        ))
    }

    /// The counting semaphore named `name`, which at most `limit` holders hold at once: a
    /// [`DistributedMutex`] whose guards are leases. Creating it costs nothing; the first
    /// acquisition stores the limit with the semaphore, and a client asking for another
    /// limit later fails with [`Error::LimitMismatch`] (as kazoo's does).
    ///
    /// Waiters queue fairly (FIFO) at the semaphore's gate, a mutex queue named
    /// `NAME-__lock__` where each waiter watches only its predecessor; the gate's head
    /// alone watches the pool of leases (`NAME`) and takes a lease as soon as there is
    /// room, then lets the gate go. So a released lease wakes the head (and, as it leaves the
    /// gate, the next waiter moves up), however many wait; and a lease is
    /// only ever taken by the gate's head, in a write that holds only while its gate
    /// entry exists (a head that lost its session cannot over-fill the pool). Cancelling
    /// or timing out an acquisition removes its gate entry and any lease it may have
    /// written. [`try_lock`](DistributedMutex::try_lock) succeeds while nobody waits at
    /// the gate and the pool has room.
    ///
    /// Each lease has the guard's usual fencing token (unique, above every earlier
    /// lease's), [`lost`](crate::LockGuard::lost) signal and guarded writes (applied while
    /// the lease is held); up to `limit` holders share the semaphore, so a
    /// [`Fence`](crate::Fence) does not order them.
    ///
    /// Layout: the pool `NAME` holds the limit (in decimal) and one entry per lease, the
    /// gate `NAME-__lock__` the waiters: on ZooKeeper, exactly kazoo's `Semaphore` (pool
    /// node `PATH` with the limit as data, ephemeral lease nodes `PATH/<uuid hex>`, the
    /// lock `PATH-__lock__` of kazoo's Lock), so kazoo's semaphores and fairlock's share
    /// one; on etcd and memory, the same shape in keys (`PREFIX/NAME`,
    /// `PREFIX/NAME/<lease>-<n>`, `PREFIX/NAME-__lock__/…`). A semaphore's name is not
    /// also a lock's: the pool would hold the lock's entries.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> fairlock::Result<()> {
    /// let client = fairlock::Client::connect("memory://semaphore-doc").await?;
    /// let downloads = client.semaphore("downloads", 2)?;
    ///
    /// let a = downloads.lock().await?;
    /// let b = downloads.lock().await?; // two may hold
    /// assert!(downloads.try_lock().await?.is_none()); // a third waits
    /// a.release().await?;
    /// let c = downloads.lock().await?; // a's lease went to the next one
    /// b.release().await?;
    /// c.release().await
    /// # }
    /// ```
    ///
    /// # Errors
    /// - [`Error::InvalidName`]; see [`validate_name`].
    /// - [`Error::InvalidConfig`]: `limit` is 0, or the client has a
    ///   [`lock_delay`](crate::Config::lock_delay), which semaphores do not support.
    pub fn semaphore(&self, name: &str, limit: u32) -> Result<Arc<dyn DistributedMutex>> {
        validate_name(name)?;
        if limit == 0 {
            return Err(Error::config("a semaphore's limit must be at least 1"));
        }
        if self.lock_delay.is_some() {
            return Err(Error::config(
                "semaphores do not support a lock-delay; use a client without one",
            ));
        }
        let (holder, options) = (self.holder.clone(), self.queue_options());
        Ok(self
            .backend
            .semaphore(name.to_owned(), limit, holder, options))
    }

    /// A client sharing this one's session whose lock entries carry `value`: who holds or
    /// waits (host, process, user), for [`queue`](Self::queue) listings and `fairlock
    /// status`. Empty by default. Peers ignore it (etcdctl and Go's Mutex write an empty
    /// value; Curator writes its client's address as node data, kazoo its identifier), so it
    /// changes nothing for them. Election candidates carry the value they campaign with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> fairlock::Result<()> {
    /// let client = fairlock::Client::connect("memory://holder-doc")
    ///     .await?
    ///     .with_holder_value("host-a pid 4242");
    /// let guard = client.mutex("report")?.lock().await?;
    /// let queue = client.queue("report", fairlock::QueueKind::Lock).await?;
    /// assert_eq!(queue[0].value, b"host-a pid 4242");
    /// guard.release().await
    /// # }
    /// ```
    pub fn with_holder_value(&self, value: impl Into<Vec<u8>>) -> Client {
        Client {
            holder: value.into().into(),
            ..self.clone()
        }
    }

    /// The election named `name`; see [`Election`]. Creating it costs nothing.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; see [`validate_name`].
    pub fn election(&self, name: &str) -> Result<Arc<dyn Election>> {
        validate_name(name)?;
        Ok(self.backend.election(name.to_owned(), self.queue_options()))
    }

    /// A signal that completes when the current session is lost (expired, revoked, or
    /// closed). Guards of that session complete their own [`lost`](crate::LockGuard::lost)
    /// signals at the same time. Before a lazy client's first session, the signal follows
    /// that first session (see [`connect_lazy`](Self::connect_lazy)).
    pub fn session_lost(&self) -> LostSignal {
        self.backend.session_lost()
    }

    /// The current session's id (etcd lease id or ZooKeeper session id, hex); empty before
    /// a lazy client's first session.
    pub fn session_id(&self) -> String {
        self.backend.session_id()
    }

    /// Whether the session is *suspended*: the backend has not confirmed it lately (etcd
    /// keep-alives failing, ZooKeeper disconnected). Locks are not lost yet (their `lost()`
    /// signals complete when they are), but a holder cannot be sure it still holds them and
    /// should not start new work that relies on the lock until this clears. False before a
    /// lazy client's first session.
    pub fn is_suspended(&self) -> bool {
        self.backend.is_suspended()
    }

    /// The session's state now; see [`SessionState`]. [`SessionState::Idle`] before a lazy
    /// client's first session.
    pub fn session_state(&self) -> SessionState {
        self.backend.session_state()
    }

    /// The session's state, then each change: connected, suspended, reconnected, lost
    /// (Curator's ConnectionStateListener). A service pauses protected work while
    /// suspended instead of polling [`is_suspended`](Self::is_suspended).
    ///
    /// States are delivered in order; a consumer that falls behind skips to the latest
    /// (a brief suspension may then show only as `Reconnected`). The stream follows the
    /// client across sessions: after `Lost`, the next acquisition's new session shows as
    /// `Connected`. It ends when the client is dropped.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping a `next()` loses no state; the stream still holds the latest.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> fairlock::Result<()> {
    /// use futures::StreamExt;
    /// use fairlock::SessionState;
    ///
    /// let client = fairlock::Client::connect("memory://states-doc").await?;
    /// let mut states = client.session_states();
    /// assert_eq!(states.next().await, Some(SessionState::Connected));
    /// client.close().await?;
    /// assert!(matches!(states.next().await, Some(SessionState::Lost(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn session_states(&self) -> BoxStream<'static, SessionState> {
        self.backend.session_states()
    }

    /// The id and password of a ZooKeeper client's current session, for tools that must act
    /// on it from another connection (for example, to expire it in a failover test). `None`
    /// for clients of other backends.
    #[cfg(all(feature = "zookeeper", feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "zookeeper", feature = "test-util"))))]
    pub fn zookeeper_session_info(&self) -> Option<zookeeper_client::SessionInfo> {
        let zk = self
            .backend
            .as_any()
            .downcast_ref::<Arc<crate::zookeeper::ZkClient>>()?;
        zk.session_info()
    }

    /// Ends the session at once: revokes the etcd lease or closes the ZooKeeper session,
    /// which releases every lock and queue entry of this client. Guards report
    /// [`LostReason::SessionClosed`](crate::LostReason::SessionClosed); later calls fail with
    /// [`Error::Closed`]. Closing twice is a no-op. A lazy client that never opened a
    /// session ends nothing. On a client built from yours, only fairlock's part ends: see
    /// [`from_etcd_client`](Self::from_etcd_client) and
    /// [`from_zookeeper_client`](Self::from_zookeeper_client).
    ///
    /// # Errors
    /// [`Error::Timeout`] or [`Error::Backend`] if the backend did not confirm; the session
    /// then still ends when its TTL runs out, since nothing keeps it alive any more.
    pub async fn close(&self) -> Result<()> {
        self.backend.close().await
    }

    /// Stops keeping the session alive without ending it, as if this process had crashed:
    /// its locks stay held until the backend expires the session after its TTL. For
    /// failover tests. Later calls behave as after [`close`](Self::close).
    pub fn abandon(&self) {
        self.backend.abandon()
    }

    /// Reads the data key `key` outside any lock; `None` if it has no value. Pair it with
    /// [`LockGuard::guarded_write`](crate::LockGuard::guarded_write).
    ///
    /// Data keys are backend-neutral (see [`validate_key`](crate::validate_key)): `shop/stock`
    /// is the etcd key `shop/stock`, the ZooKeeper node `/shop/stock` and the memory store's
    /// `shop/stock`, so a program reads the same data whichever backend its URL names.
    ///
    /// # Errors
    /// - [`Error::InvalidKey`]: a malformed key, or one inside this client's lock prefix
    ///   (`PREFIX` and below on etcd, `/PATH` and below on ZooKeeper, `fairlock` and below
    ///   in a memory store), where the lock queues live.
    /// - [`Error::Timeout`], [`Error::Backend`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.keys.path(key)?;
        self.backend.get(&key).await
    }

    /// Writes the data key `key` unconditionally (no lock, no fencing), creating it (and on
    /// ZooKeeper its parents) if needed. For set-up and for comparisons with guarded writes.
    ///
    /// # Errors
    /// As [`get`](Self::get); and [`Error::OutcomeUnknown`] when the write went unanswered.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<()> {
        let key = self.keys.path(key)?;
        self.backend.put(&key, value.into()).await
    }

    /// The queue `name` of `kind`: the holder (or leader) first, then the waiters (or
    /// candidates) in order, with their fencing tokens, sessions and values.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Timeout`], [`Error::Backend`].
    pub async fn queue(&self, name: &str, kind: QueueKind) -> Result<Vec<QueueEntry>> {
        validate_name(name)?;
        self.backend.queue(name, kind).await
    }

    /// The holders (leases) and waiters (its gate's entries) of the semaphore `name`; see
    /// [`semaphore`](Self::semaphore).
    ///
    /// # Errors
    /// As [`queue`](Self::queue).
    pub async fn semaphore_queue(&self, name: &str) -> Result<SemaphoreQueue> {
        validate_name(name)?;
        let holders = self.backend.queue(name, QueueKind::Lock).await?;
        let waiters = self
            .backend
            .queue(&gate_name(name), QueueKind::Lock)
            .await?;
        Ok(SemaphoreQueue { holders, waiters })
    }

    /// Whether the holder `sequencer` names still holds its lock: [`SequencerStatus::Current`]
    /// (its entry exists and heads the queue), [`SequencerStatus::Superseded`] (a newer
    /// holder heads it) or [`SequencerStatus::Lost`] (gone, and nobody newer holds). For a
    /// service that receives requests from lock holders (see [`Sequencer`]).
    ///
    /// One linearizable read of the queue of the sequencer's name and kind under this
    /// client's prefix; it needs no session (works on a [`connect_lazy`](Self::connect_lazy)
    /// client) and creates nothing.
    /// - **etcd**: one range request (the queue's first key by create revision), which etcd
    ///   serves linearizably (it is not a serializable read).
    /// - **ZooKeeper**: a `sync` of the queue node, then one multi-read (the queue node, its
    ///   children, the entry) served by the same server after the sync: ZooKeeper's
    ///   strongest read, linearizable except while the ensemble's leader changes at that
    ///   very moment (a `sync` is not acknowledged by a quorum: ZOOKEEPER-1675, -2136).
    ///   Needs ZooKeeper 3.6 or later (multi-read).
    /// - **memory**: one look at the store, under its lock.
    ///
    /// The answer is true at the moment of the read: a current holder may lose the lock
    /// right after. A service that must refuse stale holders for good keeps the highest
    /// token it has seen (see [`Fence`](crate::Fence)), or has its store compare tokens.
    ///
    /// # Errors
    /// - [`Error::InvalidSequencer`]: the sequencer is of another backend, or its key is not
    ///   in this client's queue of that name (a client with another prefix).
    /// - [`Error::Timeout`], [`Error::Backend`], and the security errors of
    ///   [`connect`](Self::connect).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus> {
        if sequencer.backend() != self.kind {
            return Err(sequencer.invalid("made on another backend than this client's"));
        }
        self.backend.check(sequencer).await
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.kind)
            .field("session", &self.backend.session_id())
            .finish()
    }
}
