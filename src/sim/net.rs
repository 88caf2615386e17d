//! The simulated etcd server and the network in front of it: one [`SimEtcd`] (the model and
//! its sync loop) and one [`SimConn`] per client, whose link delays, loses, freezes and
//! resets messages as the simulation's nemesis says.
//!
//! The network model:
//! - Every unary request is in flight on its own (a task), so a client that gives up on a
//!   request (a timeout, a cancelled future) does not take it back: it may still arrive
//!   and be applied, as over a real network.
//! - Per request, drawn from the seeded generator: a delay each way (with occasional slow
//!   ones), and a fate: delivered; dropped before the server (not applied, the client hears
//!   "unavailable"); applied but its reply lost ("unavailable"); or applied and never
//!   answered (the client's own timeout decides).
//! - Streams (watch, keep-alive) keep their order; each message has its own delay.
//! - A *freeze* holds every message of the link (requests and answers, both directions)
//!   until it thaws, as a partitioned or paused client sees; held messages then arrive
//!   late. A freeze longer than [`RESET_AFTER`] (HTTP/2 keep-alive: ping every 5 s, 3 s
//!   timeout) *resets* the connection: messages in flight are lost, streams end, and until
//!   the thaw new requests fail at once (connection refused).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{Change, KeyInfo, Model, Refusal};
use crate::etcd::api::{
    ApiResult, EtcdApi, KeepAlive, Op, Put, Range, RangeResponse, Txn, TxnResponse, WatchCreate,
    WatchRequests, WatchResponse, WatchResponses,
};

/// A freeze longer than this resets the connection (HTTP/2 ping interval + timeout).
pub const RESET_AFTER: Duration = Duration::from_secs(8);

/// How often the server's loop expires leases and syncs unsynced watchers (etcd: 100 ms).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// One link's fault settings. The default is a healthy loopback link.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Faults {
    /// The delay of a message each way: uniform in this range.
    pub latency: (Duration, Duration),
    /// The chance that a message is slow instead, and how slow at most (uniform up to it).
    pub slow: f64,
    /// See `slow`.
    pub slow_latency: Duration,
    /// The chance that a request is dropped before it reaches the server.
    pub drop: f64,
    /// The chance that a request is applied but its reply is lost.
    pub lose_reply: f64,
    /// The chance that a request is applied and never answered.
    pub hang: f64,
    /// The chance that a watch creation from now races a write: it registers after the
    /// next write, unsynced, and its answer cannot tell (see the model's docs).
    pub racing_watches: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: (Duration::from_micros(100), Duration::from_micros(600)),
            slow: 0.0,
            slow_latency: Duration::ZERO,
            drop: 0.0,
            lose_reply: 0.0,
            hang: 0.0,
            racing_watches: 0.0,
        }
    }
}

/// What the observer is told about.
#[derive(Debug)]
#[non_exhaustive]
pub enum Observed<'a> {
    /// The server changed its state.
    Change(&'a Change),
    /// A request and what became of it (only while tracing is on).
    Request {
        /// The connection.
        conn: u32,
        /// The request, in short.
        what: &'a str,
        /// What happened to it.
        outcome: &'a str,
    },
}

/// The server's state, as the observer sees it after a change.
pub struct View<'a>(&'a Model);

impl View<'_> {
    /// The store's revision.
    pub fn revision(&self) -> i64 {
        self.0.revision()
    }

    /// Every key, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&[u8], KeyInfo)> {
        self.0.keys()
    }

    /// Whether the lease exists.
    pub fn lease_alive(&self, lease: i64) -> bool {
        self.0.lease_alive(lease)
    }

    /// The leases that exist.
    pub fn leases(&self) -> Vec<i64> {
        self.0.leases()
    }

    /// How many watches connection `conn` ([`SimConn::id`]) has registered on the server.
    pub fn watchers(&self, conn: u32) -> usize {
        self.0.watchers(conn)
    }
}

type Observer = Box<dyn FnMut(&View<'_>, Observed<'_>) + Send>;

struct World {
    model: Mutex<Model>,
    rng: Mutex<fastrand::Rng>,
    observer: Mutex<Option<Observer>>,
    tracing: AtomicBool,
    next_conn: AtomicU32,
}

impl World {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the model, then tells the observer of every change it made.
    fn apply<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        let mut model = self.model();
        let result = f(&mut model);
        let changes = model.take_changes();
        if !changes.is_empty() {
            let mut observer = self.observer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(observer) = observer.as_mut() {
                for change in &changes {
                    observer(&View(&model), Observed::Change(change));
                }
            }
        }
        result
    }

    fn note(&self, conn: u32, what: &str, outcome: &str) {
        let model = self.model();
        let mut observer = self.observer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(observer) = observer.as_mut() {
            let request = Observed::Request {
                conn,
                what,
                outcome,
            };
            observer(&View(&model), request);
        }
    }

    fn draw(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64()
    }

    fn delay(&self, faults: &Faults) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if faults.slow > 0.0 && rng.f64() < faults.slow {
            return faults.slow_latency.mul_f64(rng.f64());
        }
        let (low, high) = faults.latency;
        low + (high.saturating_sub(low)).mul_f64(rng.f64())
    }
}

/// A simulated etcd server. Needs a tokio runtime (its sync loop is a task); with a paused
/// clock and one thread, everything it does follows from the seed.
#[derive(Clone)]
pub struct SimEtcd {
    world: Arc<World>,
}

impl SimEtcd {
    /// A new server, empty, whose network draws from `seed`.
    pub fn start(seed: u64) -> SimEtcd {
        let world = Arc::new(World {
            model: Mutex::new(Model::default()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            observer: Mutex::new(None),
            tracing: AtomicBool::new(false),
            next_conn: AtomicU32::new(0),
        });
        tokio::spawn(server_loop(Arc::downgrade(&world)));
        SimEtcd { world }
    }

    /// Calls `observer` after every change of the server's state (and, while tracing, every
    /// request). It runs while the server is locked: it must not call into the simulation.
    pub fn observe(&self, observer: impl FnMut(&View<'_>, Observed<'_>) + Send + 'static) {
        *self
            .world
            .observer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(observer));
    }

    /// Whether requests are described to the observer (costs formatting each request).
    pub fn set_tracing(&self, on: bool) {
        self.world.tracing.store(on, Ordering::Relaxed);
    }

    /// A new client connection, with a healthy link.
    pub fn connect(&self) -> SimConn {
        let id = self.world.next_conn.fetch_add(1, Ordering::Relaxed);
        SimConn {
            conn: Arc::new(Conn {
                id,
                world: self.world.clone(),
                link: Mutex::new(Link::default()),
                link_changed: Notify::new(),
                faults: Mutex::new(Faults::default()),
                streams: Mutex::new(Vec::new()),
                race_next: AtomicBool::new(false),
            }),
        }
    }

    /// Reads the server's state.
    pub fn view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        f(&View(&self.world.model()))
    }

    /// Compacts the history at the current revision.
    pub fn compact(&self) {
        self.world.apply(Model::compact);
    }

    /// Revokes `lease` from outside, as an operator would (its keys go at once).
    pub fn revoke(&self, lease: i64) -> bool {
        self.world.apply(|m| m.revoke(lease).is_ok())
    }

    /// Deletes `key` from outside; whether it existed.
    pub fn delete(&self, key: &[u8]) -> bool {
        self.world.apply(|m| m.delete_from_outside(key))
    }
}

async fn server_loop(world: Weak<World>) {
    loop {
        tokio::time::sleep(SYNC_INTERVAL).await;
        let Some(world) = world.upgrade() else {
            return;
        };
        let now = Instant::now();
        world.apply(|m| {
            m.expire(now);
            m.sync_watchers();
        });
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Link {
    /// Bumped by every reset: what was in flight on the old connection is lost.
    epoch: u64,
    frozen: bool,
    /// Reset while frozen: no connection until the thaw.
    down: bool,
}

struct Conn {
    id: u32,
    world: Arc<World>,
    /// Not a `tokio::sync::watch`: its waiters are woken in a random order (it spreads them
    /// over shards at random), and a run must be the same every time.
    link: Mutex<Link>,
    link_changed: Notify,
    faults: Mutex<Faults>,
    /// The watch streams opened on this connection, to break them on demand.
    streams: Mutex<Vec<CancellationToken>>,
    /// The next watch creation from now races a write, whatever the faults say.
    race_next: AtomicBool,
}

/// What becomes of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    LoseReply,
    Hang,
}

impl Conn {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn delay(&self) -> Duration {
        self.world.delay(&self.faults())
    }

    /// Whether creation `create` races a write (drawn only where the faults allow races,
    /// so that other runs draw as before).
    fn races(&self, create: &WatchCreate) -> bool {
        if create.start_revision != 0 {
            return false;
        }
        if self.race_next.swap(false, Ordering::Relaxed) {
            return true;
        }
        let chance = self.faults().racing_watches;
        chance > 0.0 && self.world.draw() < chance
    }

    fn fate(&self) -> Fate {
        let faults = self.faults();
        let draw = self.world.draw();
        if draw < faults.drop {
            Fate::Drop
        } else if draw < faults.drop + faults.lose_reply {
            Fate::LoseReply
        } else if draw < faults.drop + faults.lose_reply + faults.hang {
            Fate::Hang
        } else {
            Fate::Deliver
        }
    }

    fn link(&self) -> Link {
        *self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change_link(&self, change: impl FnOnce(&mut Link)) {
        change(&mut self.link.lock().unwrap_or_else(|e| e.into_inner()));
        self.link_changed.notify_waiters();
    }

    /// Completes at the next change of the link after `check` says no.
    async fn until_link(&self, check: impl Fn(Link) -> Option<bool>) -> bool {
        loop {
            let changed = self.link_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(answer) = check(self.link()) {
                return answer;
            }
            changed.await;
        }
    }

    /// Carries a message over the link after `delay`: false if the connection of `epoch`
    /// was reset meanwhile (the message is lost). A frozen link holds it until the thaw.
    async fn transit(&self, delay: Duration, epoch: u64) -> bool {
        tokio::time::sleep(delay).await;
        self.until_link(|link| match (link.epoch != epoch, link.frozen) {
            (true, _) => Some(false),
            (false, false) => Some(true),
            (false, true) => None,
        })
        .await
    }

    fn tracing(&self) -> bool {
        self.world.tracing.load(Ordering::Relaxed)
    }

    fn note(&self, what: &Option<String>, outcome: &str) {
        if let Some(what) = what {
            self.world.note(self.id, what, outcome);
        }
    }

    /// Sends one request that `apply` answers at the server, as the network allows.
    async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        what: impl FnOnce() -> String,
        apply: impl FnOnce(&mut Model, Instant) -> Result<T, Refusal> + Send + 'static,
    ) -> ApiResult<T> {
        let what = self.tracing().then(what);
        self.send(what, apply).await
    }

    /// As [`call`](Self::call), with the request already described (or not, when not
    /// tracing).
    async fn send<T: Send + 'static>(
        self: &Arc<Self>,
        what: Option<String>,
        apply: impl FnOnce(&mut Model, Instant) -> Result<T, Refusal> + Send + 'static,
    ) -> ApiResult<T> {
        let (to_server, to_client, fate) = (self.delay(), self.delay(), self.fate());
        let (tx, rx) = oneshot::channel();
        let conn = self.clone();
        tokio::spawn(async move {
            let link = conn.link();
            if link.down {
                tokio::time::sleep(Duration::from_millis(1)).await;
                conn.note(&what, "refused: no connection");
                let _ = tx.send(Err(unavailable("connection refused")));
                return;
            }
            if !conn.transit(to_server, link.epoch).await || fate == Fate::Drop {
                conn.note(&what, "lost on the way");
                let _ = tx.send(Err(unavailable(
                    "connection reset before the request arrived",
                )));
                return;
            }
            let world = conn.world.clone();
            let result = world.apply(|m| apply(m, Instant::now()));
            if fate == Fate::Hang {
                conn.note(&what, "applied, never answered");
                std::mem::forget(tx); // the client's own timeout decides
                return;
            }
            let delivered = conn.transit(to_client, link.epoch).await;
            if !delivered || fate == Fate::LoseReply {
                conn.note(&what, "applied, reply lost");
                let _ = tx.send(Err(unavailable(
                    "connection reset before the reply arrived",
                )));
                return;
            }
            conn.note(
                &what,
                if result.is_ok() {
                    "answered"
                } else {
                    "refused"
                },
            );
            let _ = tx.send(result.map_err(refusal));
        });
        match rx.await {
            Ok(result) => result,
            Err(_) => std::future::pending().await,
        }
    }
}

fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
}

fn unavailable(message: &str) -> etcd_client::Error {
    status(tonic::Code::Unavailable, message)
}

fn refusal(refusal: Refusal) -> etcd_client::Error {
    match refusal {
        Refusal::LeaseNotFound => status(
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        Refusal::KeyNotFound => status(tonic::Code::InvalidArgument, "etcdserver: key not found"),
    }
}

/// A client's connection to the simulated server, with its own link and faults.
#[derive(Clone)]
pub struct SimConn {
    conn: Arc<Conn>,
}

impl SimConn {
    /// The connection's number (as in the observer's notes).
    pub fn id(&self) -> u32 {
        self.conn.id
    }

    /// Sets the link's fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.conn.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Holds every message of the link for `duration` (see the module docs); a freeze
    /// longer than [`RESET_AFTER`] also resets the connection. No-op while frozen.
    pub fn freeze(&self, duration: Duration) {
        let mut started = false;
        self.conn.change_link(|link| {
            if !link.frozen {
                link.frozen = true;
                started = true;
            }
        });
        if !started {
            return;
        }
        let conn = self.conn.clone();
        tokio::spawn(async move {
            if duration > RESET_AFTER {
                tokio::time::sleep(RESET_AFTER).await;
                conn.change_link(|link| {
                    link.epoch += 1;
                    link.down = true;
                });
                tokio::time::sleep(duration - RESET_AFTER).await;
            } else {
                tokio::time::sleep(duration).await;
            }
            conn.change_link(|link| {
                link.frozen = false;
                link.down = false;
            });
        });
    }

    /// Makes the next watch creation from now on this connection race a write: it
    /// registers after the next write (or the next sync loop's run), unsynced.
    pub fn race_next_watch(&self) {
        self.conn.race_next.store(true, Ordering::Relaxed);
    }

    /// Resets the connection: messages in flight are lost, streams end.
    pub fn reset(&self) {
        self.conn.change_link(|link| link.epoch += 1);
    }

    /// Ends every watch stream of the connection (as a proxy or a member restart would).
    pub fn break_watches(&self) {
        for stream in self
            .conn
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            stream.cancel();
        }
    }

    /// Has the server cancel one active watch of this connection (the `pick`th, modulo
    /// their number); whether there was one.
    pub fn cancel_a_watch(&self, pick: usize) -> bool {
        let id = self.conn.id;
        self.conn.world.apply(|m| m.cancel_some_watch(id, pick))
    }

    pub(crate) fn api(&self) -> Arc<dyn EtcdApi> {
        Arc::new(self.clone())
    }
}

/// A short, readable form of a request, for traces.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\\0")
}

fn describe_range(r: &Range) -> String {
    let mut s = format!("range {}{}", text(&r.key), if r.prefix { "*" } else { "" });
    if r.max_create_revision > 0 {
        s += &format!(" created<={}", r.max_create_revision);
    }
    if r.limit > 0 {
        s += &format!(" limit {}", r.limit);
    }
    s
}

fn describe_ops(ops: &[Op]) -> String {
    let ops: Vec<String> = ops
        .iter()
        .map(|op| match op {
            Op::Range(r) => describe_range(r),
            Op::Put(p) if p.ignore_value => format!("touch {}", text(&p.key)),
            Op::Put(p) => format!("put {}={}", text(&p.key), text(&p.value)),
            Op::Delete { key } => format!("delete {}", text(key)),
        })
        .collect();
    ops.join(", ")
}

fn describe_txn(txn: &Txn) -> String {
    let when: Vec<String> = txn
        .when
        .iter()
        .map(|c| {
            format!(
                "{:?}({}{})=={}",
                c.target,
                text(&c.key),
                if c.prefix { "*" } else { "" },
                c.value
            )
        })
        .collect();
    format!(
        "txn if [{}] then [{}] else [{}]",
        when.join(", "),
        describe_ops(&txn.then),
        describe_ops(&txn.otherwise)
    )
}

#[async_trait]
impl EtcdApi for SimConn {
    async fn txn(&self, txn: Txn) -> ApiResult<TxnResponse> {
        let id = self.conn.id;
        let what = self.conn.tracing().then(|| describe_txn(&txn));
        self.conn.send(what, move |m, _| m.txn(id, &txn)).await
    }

    async fn range(&self, range: Range) -> ApiResult<RangeResponse> {
        let what = self.conn.tracing().then(|| describe_range(&range));
        self.conn.send(what, move |m, _| Ok(m.range(&range))).await
    }

    async fn put(&self, put: Put) -> ApiResult<()> {
        let id = self.conn.id;
        let what = self
            .conn
            .tracing()
            .then(|| format!("put {}", text(&put.key)));
        self.conn.send(what, move |m, _| m.put(id, put)).await
    }

    async fn grant(&self, ttl: i64) -> ApiResult<(i64, i64)> {
        self.conn
            .call(
                move || format!("grant {ttl}s"),
                move |m, now| Ok(m.grant(ttl, now)),
            )
            .await
    }

    async fn revoke(&self, lease: i64) -> ApiResult<()> {
        self.conn
            .call(
                move || format!("revoke {lease:x}"),
                move |m, _| m.revoke(lease),
            )
            .await
    }

    async fn time_to_live(&self, lease: i64) -> ApiResult<i64> {
        self.conn
            .call(
                move || format!("ttl? {lease:x}"),
                move |m, now| Ok(m.time_to_live(lease, now)),
            )
            .await
    }

    async fn keep_alive(&self, lease: i64) -> ApiResult<Box<dyn KeepAlive>> {
        let epoch = self.conn.link().epoch;
        let ttl = self
            .conn
            .call(
                move || format!("keep-alive open {lease:x}"),
                move |m, now| Ok(m.keep_alive(lease, now)),
            )
            .await?;
        if ttl <= 0 {
            return Err(etcd_client::Error::LeaseKeepAliveError(
                "lease not found".into(),
            ));
        }
        Ok(Box::new(SimKeepAlive {
            conn: self.conn.clone(),
            lease,
            epoch,
        }))
    }

    async fn watch(
        &self,
        first: WatchCreate,
    ) -> ApiResult<(Box<dyn WatchRequests>, Box<dyn WatchResponses>)> {
        let (outbox, from_server) = mpsc::unbounded_channel();
        let (id, epoch) = (self.conn.id, self.conn.link().epoch);
        let what = self
            .conn
            .tracing()
            .then(|| format!("watch open {}", text(&first.key)));
        let racing = self.conn.races(&first);
        let stream = self
            .conn
            .send(what, move |m, _| {
                let stream = m.open_stream(id, outbox);
                m.create_watch(stream, &first, racing);
                Ok(stream)
            })
            .await?;
        let broken = CancellationToken::new();
        self.conn
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(broken.clone());
        let (to_client, responses) = mpsc::unbounded_channel();
        let (requests, to_server) = mpsc::unbounded_channel();
        let pipe = Pipe {
            conn: self.conn.clone(),
            stream,
            epoch,
            broken,
        };
        tokio::spawn(pipe.clone().uplink(to_server));
        tokio::spawn(pipe.downlink(from_server, to_client));
        Ok((
            Box::new(SimWatchRequests(requests)),
            Box::new(SimWatchResponses(responses)),
        ))
    }

    async fn status(&self) -> ApiResult<()> {
        self.conn.call(|| "status".into(), |_, _| Ok(())).await
    }

    async fn refresh_token(&self) -> ApiResult<()> {
        self.conn
            .call(|| "authenticate".into(), |_, _| Ok(()))
            .await
    }
}

struct SimKeepAlive {
    conn: Arc<Conn>,
    lease: i64,
    epoch: u64,
}

#[async_trait]
impl KeepAlive for SimKeepAlive {
    async fn round(&mut self) -> ApiResult<Option<i64>> {
        if self.conn.link().epoch != self.epoch {
            return Err(unavailable("keep-alive stream reset"));
        }
        let lease = self.lease;
        let ttl = self
            .conn
            .call(
                move || format!("keep-alive {lease:x}"),
                move |m, now| Ok(m.keep_alive(lease, now)),
            )
            .await?;
        Ok(Some(ttl))
    }
}

enum Uplink {
    Create(WatchCreate),
    Cancel(i64),
}

struct SimWatchRequests(mpsc::UnboundedSender<Uplink>);

#[async_trait]
impl WatchRequests for SimWatchRequests {
    async fn create(&mut self, watch: WatchCreate) -> ApiResult<()> {
        self.0
            .send(Uplink::Create(watch))
            .map_err(|_| etcd_client::Error::WatchError("watch stream closed".into()))
    }

    async fn cancel(&mut self, watch_id: i64) -> ApiResult<()> {
        self.0
            .send(Uplink::Cancel(watch_id))
            .map_err(|_| etcd_client::Error::WatchError("watch stream closed".into()))
    }
}

struct SimWatchResponses(mpsc::UnboundedReceiver<ApiResult<WatchResponse>>);

#[async_trait]
impl WatchResponses for SimWatchResponses {
    async fn message(&mut self) -> ApiResult<Option<WatchResponse>> {
        match self.0.recv().await {
            Some(message) => message.map(Some),
            None => Ok(None),
        }
    }
}

/// One watch stream's two directions over the link. Each keeps its order: a message
/// leaves at the later of its own delay and the previous message's arrival.
#[derive(Clone)]
struct Pipe {
    conn: Arc<Conn>,
    stream: u64,
    epoch: u64,
    broken: CancellationToken,
}

impl Pipe {
    /// Waits until a message sent now may arrive: in order, over a live link.
    async fn carry(&self, last: &mut Instant) -> bool {
        let at = (Instant::now() + self.conn.delay()).max(*last);
        *last = at;
        let delay = at.saturating_duration_since(Instant::now());
        tokio::select! {
            biased;
            _ = self.broken.cancelled() => false,
            ok = self.conn.transit(delay, self.epoch) => ok,
        }
    }

    async fn uplink(self, mut requests: mpsc::UnboundedReceiver<Uplink>) {
        let mut last = Instant::now();
        while let Some(request) = requests.recv().await {
            if !self.carry(&mut last).await {
                return;
            }
            let stream = self.stream;
            let racing = matches!(&request, Uplink::Create(c) if self.conn.races(c));
            self.conn.world.apply(|m| match &request {
                Uplink::Create(create) => m.create_watch(stream, create, racing),
                Uplink::Cancel(id) => m.cancel_watch(stream, *id),
            });
        }
    }

    async fn downlink(
        self,
        mut from_server: mpsc::UnboundedReceiver<WatchResponse>,
        to_client: mpsc::UnboundedSender<ApiResult<WatchResponse>>,
    ) {
        let mut last = Instant::now();
        let epoch = self.epoch;
        let reset = self
            .conn
            .until_link(|link| (link.epoch != epoch).then_some(true));
        tokio::pin!(reset);
        loop {
            let message = tokio::select! {
                biased;
                _ = self.broken.cancelled() => break,
                _ = to_client.closed() => break,
                _ = &mut reset => break,
                message = from_server.recv() => message,
            };
            let Some(message) = message else { break };
            if !self.carry(&mut last).await {
                break;
            }
            if to_client.send(Ok(message)).is_err() {
                break;
            }
        }
        let _ = to_client.send(Err(unavailable("watch stream reset")));
        let stream = self.stream;
        self.conn.world.apply(|m| m.close_stream(stream));
    }
}
