//! The etcd backend (`etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`).
//!
//! - **Session**: one lease per client, granted with the configured TTL and kept alive every
//!   TTL/3 in the background. It counts as lost when the server says so or when no
//!   keep-alive succeeded for a whole TTL (a client-side deadline that passes no later than
//!   the server's expiry). A lost session is replaced for later acquisitions.
//! - **Queue**: lock NAME keeps one key per acquisition under `PREFIX/NAME/`, attached to the
//!   lease and ordered by create revision: the layout of `etcdctl lock PREFIX/NAME` and Go's
//!   `concurrency.Mutex`, which therefore share the same FIFO queue with fairlock.
//! - **Waiting**: each waiter watches only the key directly ahead of it, on the client's one
//!   multiplexed watch stream; a release wakes exactly one waiter, which then checks that
//!   its own key still exists before it reports the lock held.
//! - **Fencing**: the token is the own key's create revision. [`fence_compare`] gives the
//!   comparison to put into your own etcd transactions;
//!   [`LockGuard::guarded_write`](crate::LockGuard::guarded_write) does it for you.
//! - **Partitions**: a holder cut off from the cluster learns of the loss when its
//!   client-side deadline passes, at most one TTL after its last successful keep-alive, and
//!   no later than the cluster frees the lock for the next waiter.

pub(crate) mod api;
mod request;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{Compare, CompareOp, ConnectOptions};

use crate::backend::{KeySpace, QueueEntry, QueueKind};
use crate::backend::{SessionSlot, SessionSource};
use crate::config::Config;
use crate::error::{within, Error, Result};
use crate::sequencer::{Sequencer, SequencerStatus};
use crate::state::StateChannel;
use api::{EtcdApi, EventKind, Put, Range, Sort, WatchCreate};
use request::{request, Retry};
use session::EtcdSession;
use watch::WatchHub;

/// The etcd client library fairlock uses, for the types its API shares with it
/// ([`fence_compare`] returns one).
pub use etcd_client;

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = crate::key::ETCD_DEFAULT_PREFIX;

/// The etcd comparison that holds exactly while the lock with this key and fencing token is
/// held: `create_revision(key) == token`. Put it in the `when` of your own `Txn` to make any
/// etcd write conditional on still holding the lock.
///
/// ```
/// # fn f(guard: &fairlock::LockGuard) {
/// use fairlock::etcd::etcd_client::{Txn, TxnOp};
/// let txn = Txn::new()
///     .when([fairlock::etcd::fence_compare(guard.key(), guard.fencing_token())])
///     .and_then([TxnOp::put("shop/stock", "2", None)]);
/// # }
/// ```
pub fn fence_compare(key: &str, token: u64) -> Compare {
    Compare::create_revision(key.as_bytes(), CompareOp::Equal, token as i64)
}

/// etcd-client's error as fairlock's: refusals of the credentials, the permissions or the
/// TLS handshake as their typed errors, everything else as [`Error::Backend`].
pub(crate) fn etcd_error(e: etcd_client::Error) -> Error {
    let source = Box::new(e);
    match security_error(&source) {
        Some(Security::Authentication) => Error::AuthenticationFailed {
            backend: "etcd",
            source,
        },
        Some(Security::Permission) => Error::PermissionDenied {
            backend: "etcd",
            source,
        },
        Some(Security::Tls) => Error::Tls {
            backend: "etcd",
            source: Box::new(WithSource(*source)),
        },
        None => Error::Backend {
            backend: "etcd",
            source,
        },
    }
}

/// Which security refusal an etcd-client error is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Security {
    Authentication,
    Permission,
    Tls,
}

/// gRPC status codes etcd uses for refusals.
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Classifies `e`. etcd's statuses (etcd 3.4 `rpctypes`): PERMISSION_DENIED for RBAC;
/// UNAUTHENTICATED for an invalid or expired token (left after etcd-client's automatic
/// refresh failed); wrong passwords, unknown or empty user names come with other codes
/// (INVALID_ARGUMENT, FAILED_PRECONDITION), and the Lock and Election services lose the
/// code altogether (UNKNOWN), so their messages decide. TLS failures are found by a
/// rustls error (or the server's alert) anywhere in the error's chain of sources.
pub(crate) fn security_error(e: &etcd_client::Error) -> Option<Security> {
    if let etcd_client::Error::GRpcStatus(status) = e {
        let code = i32::from(status.code());
        let message = status.message();
        if code == GRPC_PERMISSION_DENIED || message == "etcdserver: permission denied" {
            return Some(Security::Permission);
        }
        if code == GRPC_UNAUTHENTICATED
            || [
                "etcdserver: authentication failed",
                "etcdserver: invalid auth token",
                "etcdserver: user name is empty",
                "etcdserver: user name not found",
                "etcdserver: authentication is not enabled",
            ]
            .iter()
            .any(|m| message.starts_with(m))
        {
            return Some(Security::Authentication);
        }
    }
    is_tls_failure(e).then_some(Security::Tls)
}

/// How rustls's errors begin (its `Display`), for errors that kept only the words.
const TLS_WORDS: [&str; 4] = [
    "received fatal alert",
    "invalid peer certificate",
    "peer sent no certificates",
    "peer is incompatible",
];

/// An etcd-client error that shows its cause: etcd-client's own error type reports no
/// source, so a TLS failure's rustls error would be lost with it.
#[derive(Debug)]
struct WithSource(etcd_client::Error);

/// Shows the TLS library's words (e.g. "invalid peer certificate: UnknownIssuer",
/// "received fatal alert: BadCertificate"), which etcd-client's message ("transport
/// error") leaves out.
impl std::fmt::Display for WithSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut next = inner_error(&self.0);
        while let Some(e) = next {
            if e.is::<rustls::Error>() {
                return std::fmt::Display::fmt(e, f);
            }
            if let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                return std::fmt::Display::fmt(inner, f);
            }
            next = e.source();
        }
        self.0.fmt(f)
    }
}

impl std::error::Error for WithSource {
    /// The transport's error under a gRPC status (whose own text repeats the message with
    /// debug output), else the error inside etcd-client's.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            etcd_client::Error::GRpcStatus(status) if status.source().is_some() => status.source(),
            e => inner_error(e),
        }
    }
}

/// The error inside an etcd-client error, where its chain of sources goes on.
fn inner_error(e: &etcd_client::Error) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        etcd_client::Error::TransportError(transport) => Some(transport),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    }
}

/// Whether a rustls error lies in `e`'s chain of sources (tokio-rustls wraps it in an
/// `io::Error`).
fn is_tls_failure(e: &etcd_client::Error) -> bool {
    let mut next = inner_error(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                // The server's alert (a client certificate it refused) reaches hyper as
                // an io::Error that carries rustls's words but no longer its type.
                let text = inner.to_string();
                if inner.is::<rustls::Error>()
                    || (io.kind() == std::io::ErrorKind::InvalidData
                        && TLS_WORDS.iter().any(|w| text.starts_with(w)))
                {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

/// etcd-client's TLS options from the configuration: the configured CA, else the system's
/// roots; the client certificate and key if given (both or neither); the server name.
fn tls_options(tls: &crate::config::TlsConfig) -> Result<etcd_client::TlsOptions> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| Error::Tls {
            backend: "etcd",
            source: format!("cannot read the {what} {path}: {e}").into(),
        })
    };
    let mut options = etcd_client::TlsOptions::new();
    options = match &tls.ca_file {
        Some(ca) => {
            options.ca_certificate(etcd_client::Certificate::from_pem(read("CA file", ca)?))
        }
        None => options.with_native_roots(),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "TLS: cert_file and key_file go together (mutual TLS needs both)",
            ))
        }
    }
    if let Some(name) = &tls.server_name {
        options = options.domain_name(name.clone());
    }
    Ok(options)
}

/// What sessions need from the configuration.
pub(crate) struct Settings {
    prefix: String,
    ttl_secs: i64,
    request_timeout: Duration,
    /// How long before the server's earliest expiry a holder counts its lease as lost.
    safety_margin: Duration,
    /// The client's session state channel.
    states: Arc<StateChannel>,
}

pub(crate) struct EtcdClient {
    api: Arc<dyn EtcdApi>,
    hub: WatchHub,
    settings: Arc<Settings>,
    slot: SessionSlot<EtcdSession>,
}

impl EtcdClient {
    /// Connects to `config.endpoints`. Eager: grants the first lease (within the connect
    /// timeout). Lazy: only checks that the cluster answers; the first lease is granted
    /// when a lock or campaign needs it.
    pub(crate) async fn connect(config: &Config, lazy: bool) -> Result<Arc<Self>> {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // HTTP/2 pings notice a dead connection, so watches reconnect promptly.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        if let Some(user) = &config.username {
            // The token expires (etcd's --auth-token-ttl); requests refused for that
            // authenticate again. The watch stream is renewed by the hub (watch.rs).
            options = options
                .with_user(
                    user.clone(),
                    config.resolved_password()?.unwrap_or_default(),
                )
                .with_auto_token_refresh(true);
        }
        // With credentials, connecting authenticates: a request like any other, retried
        // while the server is unavailable. (A server that refuses the client certificate
        // closes the connection after its alert, and the alert does not always arrive
        // first: a retry hears it.)
        let connected = request(config.connect_timeout, Retry::Idempotent, || {
            etcd_client::Client::connect(&endpoints, Some(options.clone()))
        })
        .await;
        let client = match connected {
            Ok(client) => client,
            Err(Error::Timeout(_)) => {
                return Err(unreachable(
                    config,
                    format!("no answer within {:?}", config.connect_timeout).into(),
                ))
            }
            Err(e) => return Err(e),
        };
        Self::with_client(client, config, lazy).await
    }

    /// A client on top of a connected `client` (the user's, or fairlock's own), with
    /// sessions as `config` says.
    pub(crate) async fn with_client(
        client: etcd_client::Client,
        config: &Config,
        lazy: bool,
    ) -> Result<Arc<Self>> {
        Self::with_api(Arc::new(api::Real(client)), config, lazy).await
    }

    /// A client on any [`EtcdApi`]: a real cluster's, or the simulator's.
    pub(crate) async fn with_api(
        api: Arc<dyn EtcdApi>,
        config: &Config,
        lazy: bool,
    ) -> Result<Arc<Self>> {
        let settings = Arc::new(Settings {
            prefix: config.prefix_or(DEFAULT_PREFIX),
            ttl_secs: config.ttl.as_secs_f64().ceil() as i64,
            request_timeout: config.request_timeout,
            safety_margin: config.effective_safety_margin(),
            states: StateChannel::new(),
        });
        let hub = WatchHub::start(
            api.clone(),
            config.request_timeout,
            config.username.is_some(),
        );
        // The first request proves the cluster answers, so it may take the connect timeout;
        // the session's own requests later use the request timeout.
        let slot = if lazy {
            let status = request(config.connect_timeout, Retry::Idempotent, || api.status()).await;
            status.map_err(|e| connect_error(config, e))?;
            SessionSlot::empty(settings.states.clone())
        } else {
            let first = EtcdSession::open(&api, &hub, &settings, config.connect_timeout)
                .await
                .map_err(|e| connect_error(config, e))?;
            SessionSlot::new(first, settings.states.clone())
        };
        Ok(Arc::new(EtcdClient {
            api,
            hub,
            slot,
            settings,
        }))
    }
}

fn unreachable(config: &Config, source: crate::error::BoxError) -> Error {
    Error::Unreachable {
        endpoints: config.endpoints.join(","),
        source,
    }
}

/// The error of a client's first request: no answer means unreachable.
fn connect_error(config: &Config, e: Error) -> Error {
    match e {
        Error::Timeout(_) => unreachable(
            config,
            format!("no answer within {:?}", config.connect_timeout).into(),
        ),
        Error::Backend { source, .. } if is_transport(&*source) => unreachable(config, source),
        e => e,
    }
}

/// Whether the server said the session's lease does not exist (revoked or expired): gRPC
/// status NOT_FOUND, which etcd returns for nothing else fairlock asks on a lease.
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    match e {
        Error::Backend { source, .. } => matches!(
            source.downcast_ref::<etcd_client::Error>(),
            Some(etcd_client::Error::GRpcStatus(s)) if i32::from(s.code()) == request::GRPC_NOT_FOUND
        ),
        _ => false,
    }
}

fn is_transport(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::TransportError(_)) => true,
        Some(e) => request::is_unavailable(e),
        None => false,
    }
}

#[async_trait]
impl SessionSource for EtcdClient {
    type Session = EtcdSession;

    fn slot(&self) -> &SessionSlot<EtcdSession> {
        &self.slot
    }

    async fn open(&self) -> Result<Arc<EtcdSession>> {
        EtcdSession::open(
            &self.api,
            &self.hub,
            &self.settings,
            self.settings.request_timeout,
        )
        .await
    }
}

#[async_trait]
impl KeySpace for EtcdClient {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let resp = request(self.settings.request_timeout, Retry::Idempotent, || {
            self.api.range(Range::key(key))
        })
        .await?;
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        // A plain put of one value: repeating it is harmless.
        request(self.settings.request_timeout, Retry::Idempotent, || {
            self.api.put(Put::new(key, value.clone()))
        })
        .await
    }

    async fn queue(
        &self,
        name: &str,
        _kind: QueueKind,
        limit: Option<usize>,
    ) -> Result<Vec<QueueEntry>> {
        Ok(self.read_queue(name, limit).await?.0)
    }

    /// The queue's head (a reader's, a lease's: the whole queue) in one range request,
    /// linearizable (etcd's default).
    async fn check(&self, sequencer: &Sequencer) -> Result<SequencerStatus> {
        sequencer.entry_in(&self.queue_prefix(sequencer.name()))?;
        // A reader's and a lease's status need the whole queue (a semaphore's: its pool),
        // not just its head.
        let reader = session::is_reader(sequencer.key().as_bytes());
        let limit = (!reader && !sequencer.is_semaphore()).then_some(1);
        let (queue, _) = self.read_queue(sequencer.name(), limit).await?;
        Ok(SequencerStatus::of_queue(sequencer, &queue))
    }

    async fn watch_head(
        self: Arc<Self>,
        name: String,
        _kind: QueueKind,
        tx: tokio::sync::mpsc::Sender<Result<Option<QueueEntry>>>,
    ) {
        // A round that ends without a new head (its watch cancelled, say because its start
        // revision was compacted; the stream gone; an error) is followed by a delay that
        // doubles each time, so that a server that keeps cancelling the watch does not make
        // observe re-read in a tight loop. A round that followed the head for a while, or
        // saw it change, starts the delays over.
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        while !tx.is_closed() {
            let started = tokio::time::Instant::now();
            let round = self.follow_head(&name, &tx).await;
            if matches!(round, Ok(true)) || started.elapsed() >= Duration::from_secs(10) {
                delays = backoff();
            }
            match round {
                Ok(true) => continue, // a new head: read it at once
                Ok(false) => {}
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                biased;
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl EtcdClient {
    fn queue_prefix(&self, name: &str) -> String {
        format!("{}/{name}/", self.settings.prefix)
    }

    /// The first `limit` entries of queue `name`, with the revision they were read at.
    async fn read_queue(&self, name: &str, limit: Option<usize>) -> Result<(Vec<QueueEntry>, i64)> {
        let range = Range::prefix(self.queue_prefix(name))
            .sorted(Sort::CreateAscending)
            .limit(limit.map_or(0, |l| l as i64));
        let resp = request(self.settings.request_timeout, Retry::Idempotent, || {
            self.api.range(range.clone())
        })
        .await?;
        let entries = resp
            .kvs
            .into_iter()
            .map(|kv| QueueEntry {
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                fencing_token: kv.create_revision as u64,
                session: format!("{:x}", kv.lease),
                shared: session::is_reader(&kv.key),
                value: kv.value,
            })
            .collect();
        Ok((entries, resp.revision))
    }

    /// Reads the head of queue `name`, sends it, and follows it (as Go's Election.Observe):
    /// the head's puts are new values; its deletion, or the first put into an empty queue,
    /// means a new head. Returns when the head must be read again: `true` if it changed,
    /// `false` if the watch ended without a change (or nobody listens any more).
    async fn follow_head(
        &self,
        name: &str,
        tx: &tokio::sync::mpsc::Sender<Result<Option<QueueEntry>>>,
    ) -> Result<bool> {
        let (entries, revision) = self.read_queue(name, Some(1)).await?;
        crate::stats::head_read();
        let mut head = entries.into_iter().next();
        if tx.send(Ok(head.clone())).await.is_err() {
            return Ok(false);
        }
        // Watch from the read's revision on: nothing between read and watch is missed.
        let (key, prefix) = match &head {
            Some(head) => (head.key.clone(), false),
            None => (self.queue_prefix(name), true),
        };
        let watch = WatchCreate {
            key: key.into_bytes(),
            prefix,
            start_revision: revision + 1,
            watch_id: 0,
            deletes_only: false,
        };
        let (_requests, mut stream) = within(self.settings.request_timeout, async {
            self.api.watch(watch).await.map_err(etcd_error)
        })
        .await?;
        loop {
            let message = tokio::select! {
                biased;
                _ = tx.closed() => return Ok(false),
                message = stream.message() => message.map_err(etcd_error)?,
            };
            let Some(resp) = message else {
                return Ok(false); // stream ended: read again
            };
            if resp.canceled {
                return Ok(false);
            }
            for event in resp.events {
                let Some(current) = head.as_mut() else {
                    return Ok(true); // a first candidate arrived
                };
                match event.kind {
                    EventKind::Put => {
                        current.value = event.kv.value;
                        if tx.send(Ok(head.clone())).await.is_err() {
                            return Ok(false);
                        }
                    }
                    EventKind::Delete => return Ok(true), // the head left
                }
            }
        }
    }
}
