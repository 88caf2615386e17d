//! The backend-agnostic client: one session, mutexes by name, plain reads and writes. The
//! one place that picks a backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::backend::{KeySpace, QueueEntry, QueueKind, QueueSession, SessionSource};
use crate::config::{BackendKind, Config};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::key::KeyMap;
use crate::lost::LostSignal;
use crate::mutex::DistributedMutex;
use crate::name::validate_name;
use crate::queue::{QueueElection, QueueMutex};
use crate::state::SessionState;

/// What [`Client`] needs from a backend; every backend gets it from its session source and
/// key space.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    fn mutex(
        &self,
        name: String,
        holder: Arc<[u8]>,
        keys: Arc<KeyMap>,
    ) -> Arc<dyn DistributedMutex>;
    fn election(&self, name: String, keys: Arc<KeyMap>) -> Arc<dyn Election>;
    fn session_lost(&self) -> LostSignal;
    fn session_id(&self) -> String;
    async fn close(&self) -> Result<()>;
    fn abandon(&self);
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    async fn queue(&self, name: &str, kind: QueueKind) -> Result<Vec<QueueEntry>>;
    fn is_suspended(&self) -> bool;
    fn session_state(&self) -> SessionState;
    fn session_states(&self) -> BoxStream<'static, SessionState>;
    /// For backend-specific helpers that downcast.
    fn as_any(&self) -> &dyn std::any::Any;
}

#[async_trait]
impl<B: SessionSource + KeySpace> Backend for Arc<B> {
    fn mutex(
        &self,
        name: String,
        holder: Arc<[u8]>,
        keys: Arc<KeyMap>,
    ) -> Arc<dyn DistributedMutex> {
        Arc::new(QueueMutex::new(self.clone(), name, holder, keys))
    }

    fn election(&self, name: String, keys: Arc<KeyMap>) -> Arc<dyn Election> {
        Arc::new(QueueElection::new(self.clone(), name, keys))
    }

    fn session_lost(&self) -> LostSignal {
        self.slot().current().trigger().signal()
    }

    fn session_id(&self) -> String {
        self.slot().current().id()
    }

    fn is_suspended(&self) -> bool {
        self.slot().current().is_suspended()
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
}

impl Client {
    /// Connects to the backend named by `url` (see [`Config`] for the forms) and opens a
    /// session.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`]: a malformed URL, or a TTL below the server's minimum.
    /// - [`Error::Unreachable`]: no server answered within the connect timeout.
    /// - [`Error::Backend`]: the server refused (e.g. authentication).
    pub async fn connect(url: &str) -> Result<Client> {
        Client::from_config(&Config::from_url(url)?).await
    }

    /// Connects as `config` says and opens a session. Errors as [`connect`](Self::connect).
    pub async fn from_config(config: &Config) -> Result<Client> {
        config.validate()?;
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::Memory => Arc::new(crate::memory::MemoryClient::connect(config)?),
            #[cfg(feature = "etcd")]
            BackendKind::Etcd => Arc::new(crate::etcd::EtcdClient::connect(config).await?),
            #[cfg(feature = "zookeeper")]
            BackendKind::Zookeeper => Arc::new(crate::zookeeper::ZkClient::connect(config).await?),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::config(format!(
                    "fairlock was built without the {other} feature"
                )))
            }
        };
        Ok(Client {
            backend,
            kind: config.backend,
            holder: Arc::from(&[][..]),
            keys: Arc::new(KeyMap::new(config)),
        })
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
        let (holder, keys) = (self.holder.clone(), self.keys.clone());
        Ok(self.backend.mutex(name.to_owned(), holder, keys))
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
        Ok(self.backend.election(name.to_owned(), self.keys.clone()))
    }

    /// A signal that completes when the current session is lost (expired, revoked, or
    /// closed). Guards of that session complete their own [`lost`](crate::LockGuard::lost)
    /// signals at the same time.
    pub fn session_lost(&self) -> LostSignal {
        self.backend.session_lost()
    }

    /// The current session's id (etcd lease id or ZooKeeper session id, hex).
    pub fn session_id(&self) -> String {
        self.backend.session_id()
    }

    /// Whether the session is *suspended*: the backend has not confirmed it lately (etcd
    /// keep-alives failing, ZooKeeper disconnected). Locks are not lost yet (their `lost()`
    /// signals complete when they are), but a holder cannot be sure it still holds them and
    /// should not start new work that relies on the lock until this clears.
    pub fn is_suspended(&self) -> bool {
        self.backend.is_suspended()
    }

    /// The session's state now; see [`SessionState`].
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
    pub fn zookeeper_session_info(&self) -> Option<zookeeper_client::SessionInfo> {
        let zk = self
            .backend
            .as_any()
            .downcast_ref::<Arc<crate::zookeeper::ZkClient>>()?;
        Some(zk.session_info())
    }

    /// Ends the session at once: revokes the etcd lease or closes the ZooKeeper session,
    /// which releases every lock and queue entry of this client. Guards report
    /// [`LostReason::SessionClosed`](crate::LostReason::SessionClosed); later calls fail with
    /// [`Error::Closed`]. Closing twice is a no-op.
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
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.kind)
            .field("session", &self.backend.session_id())
            .finish()
    }
}
