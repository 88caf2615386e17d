//! The systems measured: the raw floors, fairlock on each backend, and the peers.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlock::{Client, DistributedMutex};
use tokio::sync::Barrier;
use zookeeper_client as zk;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Latencies of the timed operations, the wall time of the whole scenario, and the client
/// process's CPU time (user + system, every thread) over the timed part.
pub struct Sample {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// Untimed acquisitions each session makes before a contended run's timed part.
const CONTENDED_WARMUP: usize = 5;

/// The process's CPU time so far (user + system, every thread).
pub fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
            };
            tv(usage.user_time()) + tv(usage.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// `future`'s output and the process's CPU time while it ran (every task of the process
/// counts: measure one thing at a time).
pub async fn with_cpu<T>(future: impl std::future::Future<Output = T>) -> (T, Duration) {
    let before = cpu_time();
    let output = future.await;
    (output, cpu_time().saturating_sub(before))
}

/// Runs a child process (a peer, or one of this harness's own child modes) with stdin
/// closed and stderr shown, and reads the one JSON value it prints; `what` names it in
/// the error.
pub async fn child_json(
    cmd: Result<tokio::process::Command, BoxError>,
    what: &str,
) -> Result<serde_json::Value, BoxError> {
    let out = cmd?
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

const WARMUP: usize = 20;

pub enum System {
    /// etcd: put with a lease + delete, the two durable writes any lock needs.
    EtcdFloor(String),
    /// etcd: fairlock's two requests issued raw (enqueue Txn, guarded delete Txn).
    EtcdSameRequests(String),
    /// etcd's server-side Lock + Unlock RPCs, through etcd-client.
    EtcdLockRpc(String),
    /// ZooKeeper: create ephemeral sequential + delete.
    ZkFloor(String),
    /// ZooKeeper: fairlock's three requests issued raw (create and list children pipelined,
    /// then delete).
    ZkSameRequests(String),
    /// zookeeper-client's `Client::lock` (Curator naming) + delete.
    ZkRecipe(String),
    /// fairlock, through this URL.
    Fairlock(&'static str, String),
    /// Curator 5.4 InterProcessMutex (Java peer).
    Curator(String),
    /// kazoo 2.11 Lock (Python peer).
    Kazoo(String),
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{tag}-{}-{nanos:x}", std::process::id())
}

impl System {
    pub fn all(etcd: &str, zk: &str) -> Vec<System> {
        vec![
            System::EtcdFloor(etcd.into()),
            System::EtcdSameRequests(etcd.into()),
            System::EtcdLockRpc(etcd.into()),
            System::Fairlock("etcd", format!("etcd://{etcd}/fairlock-bench")),
            System::ZkFloor(zk.into()),
            System::ZkSameRequests(zk.into()),
            System::ZkRecipe(zk.into()),
            System::Fairlock("zookeeper", format!("zk://{zk}/fairlock-bench")),
            System::Curator(zk.into()),
            System::Kazoo(zk.into()),
            System::Fairlock("memory", "memory://bench".into()),
        ]
    }

    pub fn name(&self) -> String {
        match self {
            System::EtcdFloor(_) => "etcd floor (put+delete)".into(),
            System::EtcdLockRpc(_) => "etcd Lock RPC (etcd-client)".into(),
            System::EtcdSameRequests(_) => "etcd: fairlock's 2 Txns, raw".into(),
            System::ZkSameRequests(_) => "zk: fairlock's 3 requests, raw".into(),
            System::ZkFloor(_) => "zk floor (create+delete)".into(),
            System::ZkRecipe(_) => "zookeeper-client Client::lock".into(),
            System::Fairlock(backend, _) => format!("fairlock/{backend}"),
            System::Curator(_) => "Curator 5.4 InterProcessMutex".into(),
            System::Kazoo(_) => "kazoo 2.11 Lock".into(),
        }
    }

    /// The server the system runs on.
    pub fn backend(&self) -> &'static str {
        match self {
            System::EtcdFloor(_) | System::EtcdSameRequests(_) | System::EtcdLockRpc(_) => "etcd",
            System::ZkFloor(_)
            | System::ZkSameRequests(_)
            | System::ZkRecipe(_)
            | System::Curator(_)
            | System::Kazoo(_) => "zookeeper",
            System::Fairlock(backend, _) => backend,
        }
    }

    pub fn is_floor(&self) -> bool {
        matches!(self, System::EtcdFloor(_) | System::ZkFloor(_))
    }

    pub fn is_fairlock(&self) -> bool {
        matches!(self, System::Fairlock(..))
    }

    /// Floors and raw request sequences are not locks: nothing to contend for.
    pub fn contends(&self) -> bool {
        !self.is_floor()
            && !matches!(
                self,
                System::ZkRecipe(_) | System::EtcdSameRequests(_) | System::ZkSameRequests(_)
            )
    }

    /// Its name as a reader (the read side it measures in [`readers`](Self::readers)).
    pub fn reader_name(&self) -> String {
        match self {
            System::Fairlock(backend, _) => format!("fairlock/{backend} reader"),
            System::Curator(_) => "Curator 5.4 InterProcessReadWriteLock readLock".into(),
            System::Kazoo(_) => "kazoo 2.11 ReadLock".into(),
            other => other.name(),
        }
    }

    /// Whether it has a read-write lock's read side to measure.
    pub fn has_read_locks(&self) -> bool {
        matches!(
            self,
            System::Fairlock(..) | System::Curator(_) | System::Kazoo(_)
        )
    }

    /// Its name as a semaphore (what [`semaphore_holders`](Self::semaphore_holders)
    /// measures).
    pub fn semaphore_name(&self) -> String {
        match self {
            System::Fairlock(backend, _) => format!("fairlock/{backend} semaphore"),
            System::Curator(_) => "Curator 5.4 InterProcessSemaphoreV2".into(),
            System::Kazoo(_) => "kazoo 2.11 Semaphore".into(),
            other => other.name(),
        }
    }

    /// Whether it has a counting semaphore to measure.
    pub fn has_semaphores(&self) -> bool {
        self.has_read_locks()
    }

    pub fn queues_waiters(&self) -> bool {
        self.is_fairlock()
    }

    pub fn url(&self) -> String {
        match self {
            System::Fairlock(_, url) => url.clone(),
            _ => String::new(),
        }
    }

    /// A prepared uncontended runner (connected, lock created), or `None` for the peers,
    /// which run in processes of their own (see [`uncontended_peer`](Self::uncontended_peer)).
    pub async fn runner(&self) -> Result<Option<Box<dyn PairRunner>>, BoxError> {
        Ok(Some(match self {
            System::EtcdFloor(endpoint) => Box::new(EtcdFloor::new(endpoint).await?),
            System::EtcdLockRpc(endpoint) => Box::new(EtcdLockRpc::new(endpoint).await?),
            System::ZkFloor(endpoint) => Box::new(ZkFloor::new(endpoint).await?),
            System::EtcdSameRequests(endpoint) => Box::new(EtcdSameRequests::new(endpoint).await?),
            System::ZkSameRequests(endpoint) => {
                Box::new(ZkSameRequests(ZkDir::new(endpoint, "zk-requests").await?))
            }
            System::ZkRecipe(endpoint) => {
                Box::new(ZkRecipe(ZkDir::new(endpoint, "zk-recipe").await?))
            }
            System::Fairlock(_, url) => Box::new(Fairlock::new(url).await?),
            System::Curator(_) | System::Kazoo(_) => return Ok(None),
        }))
    }

    /// `rounds` uncontended pairs of a peer, timed by the peer itself after its warm-up.
    pub async fn uncontended_peer(&self, rounds: usize) -> Result<Sample, BoxError> {
        crate::settle().await;
        match self {
            System::Curator(endpoint) => {
                peer(curator(endpoint, &["bench", &rounds.to_string()])).await
            }
            System::Kazoo(endpoint) => peer(kazoo(endpoint, &["bench", &rounds.to_string()])).await,
            _ => Err("not a peer".into()),
        }
    }

    /// `sessions` sessions take turns on one lock, `total / sessions` times each; each
    /// acquisition's wait is timed.
    pub async fn contended(&self, sessions: usize, total: usize) -> Result<Sample, BoxError> {
        crate::settle().await;
        let each = (total / sessions).max(1);
        match self {
            System::EtcdLockRpc(endpoint) => etcd_lock_rpc(endpoint, sessions, each).await,
            System::Fairlock(_, url) => fairlock(url, sessions, each).await,
            System::Curator(endpoint) => {
                let args = ["contend", &sessions.to_string(), &each.to_string()];
                peer(curator(endpoint, &args)).await
            }
            System::Kazoo(endpoint) => {
                let args = ["contend", &sessions.to_string(), &each.to_string()];
                peer(kazoo(endpoint, &args)).await
            }
            _ => Err("no contended run for a floor".into()),
        }
    }

    /// As [`contended`](Self::contended), on the read side of a read-write lock: readers
    /// that never wait for one another (fairlock, Curator's and kazoo's read locks).
    pub async fn readers(&self, sessions: usize, total: usize) -> Result<Sample, BoxError> {
        crate::settle().await;
        let each = (total / sessions).max(1);
        let args = ["read-contend", &sessions.to_string(), &each.to_string()];
        match self {
            System::Fairlock(_, url) => {
                let reader: LockOf = |client, name| Ok(client.rw_lock(name)?.reader().clone());
                fairlock_on(url, sessions, each, reader).await
            }
            System::Curator(endpoint) => peer(curator(endpoint, &args)).await,
            System::Kazoo(endpoint) => peer(kazoo(endpoint, &args)).await,
            _ => Err("no readers' run for this system".into()),
        }
    }
}

impl System {
    /// As [`contended`](Self::contended), with a lease of a semaphore of `limit` for the
    /// lock: hand-offs once more sessions than leases contend.
    pub async fn semaphore_holders(
        &self,
        sessions: usize,
        total: usize,
        limit: u32,
    ) -> Result<Sample, BoxError> {
        crate::settle().await;
        let each = (total / sessions).max(1);
        let (sessions_arg, each_arg, limit_arg) =
            (sessions.to_string(), each.to_string(), limit.to_string());
        let args = ["semaphore-contend", &sessions_arg, &each_arg, &limit_arg];
        match self {
            System::Fairlock(_, url) => {
                debug_assert_eq!(limit, crate::semaphore::LIMIT);
                let lease: LockOf = |client, name| client.semaphore(name, crate::semaphore::LIMIT);
                fairlock_on(url, sessions, each, lease).await
            }
            System::Curator(endpoint) => peer(curator(endpoint, &args)).await,
            System::Kazoo(endpoint) => peer(kazoo(endpoint, &args)).await,
            _ => Err("no semaphore run for this system".into()),
        }
    }
}

async fn etcd_client(endpoint: &str) -> Result<etcd_client::Client, BoxError> {
    Ok(etcd_client::Client::connect([format!("http://{endpoint}")], None).await?)
}

/// `sessions` leases, each running `each` Lock + Unlock pairs on one name, timing the
/// wait for each Lock.
async fn etcd_lock_rpc(endpoint: &str, sessions: usize, each: usize) -> Result<Sample, BoxError> {
    let client = etcd_client(endpoint).await?;
    let name = unique("etcd-lock-rpc");
    let mut leases = Vec::new();
    for _ in 0..sessions {
        leases.push(client.lease_client().grant(30, None).await?.id());
    }
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut tasks = Vec::new();
    for &lease in &leases {
        let (mut locks, name, barrier) = (client.lock_client(), name.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            for i in 0..CONTENDED_WARMUP + each {
                if i == CONTENDED_WARMUP {
                    together(&barrier).await;
                }
                let pass = async {
                    let t0 = Instant::now();
                    let options = etcd_client::LockOptions::new().with_lease(lease);
                    let key = locks
                        .lock(name.as_str(), Some(options))
                        .await?
                        .key()
                        .to_vec();
                    let waited = t0.elapsed();
                    locks.unlock(key).await?;
                    Ok::<_, BoxError>(waited)
                };
                match pass.await {
                    Ok(waited) if i >= CONTENDED_WARMUP => latencies.push(waited),
                    Ok(_) => {}
                    Err(e) => return failed(e, i, &barrier).await,
                }
            }
            Ok(latencies)
        }));
    }
    let sample = start_together(&barrier, tasks).await?;
    for lease in leases {
        client.lease_client().revoke(lease).await?;
    }
    Ok(sample)
}

type Waits = tokio::task::JoinHandle<Result<Vec<Duration>, BoxError>>;

/// A session task's two waits at the start barrier: warm-up done, then the clocks started.
async fn together(barrier: &Barrier) {
    barrier.wait().await;
    barrier.wait().await;
}

/// A session task's failure in pass `i`: one that fails during its warm-up still passes
/// the start barrier, which would otherwise hold every other task and the clock for ever.
async fn failed(e: BoxError, i: usize, barrier: &Barrier) -> Result<Vec<Duration>, BoxError> {
    if i < CONTENDED_WARMUP {
        together(barrier).await;
    }
    Err(e)
}

/// Waits for the session tasks to finish their warm-up at `barrier` (the first of two
/// waits), starts the clocks, releases them together (the second) and collects their
/// timed waits.
async fn start_together(barrier: &Barrier, tasks: Vec<Waits>) -> Result<Sample, BoxError> {
    barrier.wait().await;
    let cpu = cpu_time();
    let start = Instant::now();
    barrier.wait().await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Sample {
        latencies,
        elapsed: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    })
}

async fn zk_client(endpoint: &str) -> Result<zk::Client, BoxError> {
    Ok(zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(endpoint)
        .await?)
}

/// The lock a contended run takes on each client: a mutex, or a read-write lock's side.
pub type LockOf = fn(&Client, &str) -> fairlock::Result<Arc<dyn DistributedMutex>>;

/// fairlock: `sessions` clients, `each` acquisitions each, timing the wait for the lock.
async fn fairlock(url: &str, sessions: usize, each: usize) -> Result<Sample, BoxError> {
    fairlock_on(url, sessions, each, |client, name| client.mutex(name)).await
}

/// As [`fairlock()`], on the lock `lock_of` gives (the read side of a read-write lock, say).
pub async fn fairlock_on(
    url: &str,
    sessions: usize,
    each: usize,
    lock_of: LockOf,
) -> Result<Sample, BoxError> {
    let name = unique("fairlock");
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Client::connect(url).await?);
    }
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut tasks: Vec<Waits> = Vec::new();
    for client in &clients {
        let (mutex, barrier) = (lock_of(client, &name)?, barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            for i in 0..CONTENDED_WARMUP + each {
                if i == CONTENDED_WARMUP {
                    together(&barrier).await;
                }
                let pass = async {
                    let t0 = Instant::now();
                    let guard = mutex.lock().await?;
                    let waited = t0.elapsed();
                    guard.release().await?;
                    Ok::<_, BoxError>(waited)
                };
                match pass.await {
                    Ok(waited) if i >= CONTENDED_WARMUP => latencies.push(waited),
                    Ok(_) => {}
                    Err(e) => return failed(e, i, &barrier).await,
                }
            }
            Ok(latencies)
        }));
    }
    let sample = start_together(&barrier, tasks).await?;
    for client in clients {
        client.close().await?;
    }
    Ok(sample)
}

/// The repository's root: this crate lives in its bench/ directory.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

pub fn curator(endpoint: &str, args: &[&str]) -> Result<tokio::process::Command, BoxError> {
    let classpath = std::fs::read_to_string(repo().join("target/peers/classpath"))
        .map_err(|_| "the Curator peer is missing: run scripts/peers")?;
    let mut cmd = tokio::process::Command::new("java");
    cmd.args(["-cp", classpath.trim(), "CuratorPeer", endpoint])
        .arg(format!("/{}", unique("curator")))
        .args(args);
    Ok(cmd)
}

pub fn kazoo(endpoint: &str, args: &[&str]) -> Result<tokio::process::Command, BoxError> {
    let python = repo().join(".services/venv/bin/python");
    if !python.exists() {
        return Err("the kazoo peer is missing: run scripts/peers".into());
    }
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo().join("tests/peers/kazoo_peer.py"))
        .arg(endpoint)
        .arg(format!("/{}", unique("kazoo")))
        .args(args);
    Ok(cmd)
}

/// Runs a peer's benchmark mode and reads its one JSON line.
async fn peer(cmd: Result<tokio::process::Command, BoxError>) -> Result<Sample, BoxError> {
    let report = child_json(cmd, "peer").await?;
    let micros = |v: &serde_json::Value| Duration::from_micros(v.as_u64().unwrap_or(0));
    Ok(Sample {
        latencies: report["latencies_us"]
            .as_array()
            .ok_or("no latencies")?
            .iter()
            .map(micros)
            .collect(),
        elapsed: micros(&report["elapsed_us"]),
        cpu: micros(&report["cpu_us"]),
    })
}

/// One system, connected and ready to run uncontended acquire+release pairs.
#[async_trait::async_trait]
pub trait PairRunner: Send {
    /// One acquire+release pair.
    async fn pair(&mut self) -> Result<(), BoxError>;
    /// Cleans up.
    async fn finish(self: Box<Self>) -> Result<(), BoxError>;
}

struct EtcdFloor {
    client: etcd_client::Client,
    lease: i64,
    key: String,
}

impl EtcdFloor {
    async fn new(endpoint: &str) -> Result<Self, BoxError> {
        let client = etcd_client(endpoint).await?;
        let lease = client.lease_client().grant(60, None).await?.id();
        let key = format!("{}/k", unique("etcd-floor"));
        Ok(EtcdFloor { client, lease, key })
    }
}

#[async_trait::async_trait]
impl PairRunner for EtcdFloor {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let mut kv = self.client.kv_client();
        let put = etcd_client::PutOptions::new().with_lease(self.lease);
        kv.put(self.key.as_str(), "", Some(put)).await?;
        kv.delete(self.key.as_str(), None).await?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.client.lease_client().revoke(self.lease).await?;
        Ok(())
    }
}

struct EtcdSameRequests {
    floor: EtcdFloor,
    prefix: String,
}

impl EtcdSameRequests {
    async fn new(endpoint: &str) -> Result<Self, BoxError> {
        let floor = EtcdFloor::new(endpoint).await?;
        let prefix = unique("etcd-txns");
        Ok(EtcdSameRequests { floor, prefix })
    }
}

#[async_trait::async_trait]
impl PairRunner for EtcdSameRequests {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let mut kv = self.floor.client.kv_client();
        etcd_fairlock_txns(&mut kv, &self.prefix, self.floor.lease).await
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        Box::new(self.floor).finish().await
    }
}

/// fairlock's two etcd Txns for one acquire+release in the queue `queue` (its prefix
/// without the trailing slash), issued raw: the enqueue (create the own key if absent and
/// not withdrawn; read the two newest keys) and the release (delete the key if it is
/// still this entry, with its written-marker).
pub async fn etcd_fairlock_txns(
    kv: &mut etcd_client::KvClient,
    queue: &str,
    lease: i64,
) -> Result<(), BoxError> {
    use etcd_client::{
        Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    };
    let prefix = format!("{queue}/");
    let key = format!("{prefix}{lease:x}-0");
    let beside = |what: &str| format!("{queue}\u{0}{what}/{lease:x}-0");
    let newest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(2)
        .with_keys_only();
    let enqueue = Txn::new()
        .when([
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(beside("withdrawn"), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(key.as_str(), "", Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(prefix.as_str(), Some(newest)),
        ])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let revision = kv.txn(enqueue).await?.header().map_or(0, |h| h.revision());
    let release = Txn::new()
        .when([Compare::create_revision(
            key.as_str(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(beside("written"), None),
        ]);
    kv.txn(release).await?;
    Ok(())
}

struct ZkSameRequests(ZkDir);

#[async_trait::async_trait]
impl PairRunner for ZkSameRequests {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let ZkDir { client, dir } = &self.0;
        let prefix = format!("{dir}/_c_0-lock-");
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        // The listing is sent right behind the create, before its answer, as fairlock does.
        let created = client.create(&prefix, b"", &ephemeral);
        let listed = client.list_children(dir);
        let (_, sequence) = created.await?;
        listed.await?;
        client.delete(&format!("{prefix}{sequence}"), None).await?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.0.finish().await
    }
}

struct EtcdLockRpc {
    client: etcd_client::Client,
    lease: i64,
    name: String,
}

impl EtcdLockRpc {
    async fn new(endpoint: &str) -> Result<Self, BoxError> {
        let client = etcd_client(endpoint).await?;
        let lease = client.lease_client().grant(60, None).await?.id();
        let name = unique("etcd-lock-rpc");
        Ok(EtcdLockRpc {
            client,
            lease,
            name,
        })
    }
}

#[async_trait::async_trait]
impl PairRunner for EtcdLockRpc {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let mut locks = self.client.lock_client();
        let options = etcd_client::LockOptions::new().with_lease(self.lease);
        let key = locks
            .lock(self.name.as_str(), Some(options))
            .await?
            .key()
            .to_vec();
        locks.unlock(key).await?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.client.lease_client().revoke(self.lease).await?;
        Ok(())
    }
}

/// A ZooKeeper connection with a directory of its own, removed at the end.
struct ZkDir {
    client: zk::Client,
    dir: String,
}

impl ZkDir {
    async fn new(endpoint: &str, tag: &str) -> Result<Self, BoxError> {
        let client = zk_client(endpoint).await?;
        let dir = format!("/{}", unique(tag));
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client.create(&dir, b"", &persistent).await?;
        Ok(ZkDir { client, dir })
    }

    async fn finish(self) -> Result<(), BoxError> {
        self.client.delete(&self.dir, None).await?;
        Ok(())
    }
}

struct ZkFloor(ZkDir);

impl ZkFloor {
    async fn new(endpoint: &str) -> Result<Self, BoxError> {
        Ok(ZkFloor(ZkDir::new(endpoint, "zk-floor").await?))
    }
}

#[async_trait::async_trait]
impl PairRunner for ZkFloor {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let ZkDir { client, dir } = &self.0;
        let prefix = format!("{dir}/n-");
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let (_, sequence) = client.create(&prefix, b"", &ephemeral).await?;
        client.delete(&format!("{prefix}{sequence}"), None).await?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.0.finish().await
    }
}

struct ZkRecipe(ZkDir);

#[async_trait::async_trait]
impl PairRunner for ZkRecipe {
    async fn pair(&mut self) -> Result<(), BoxError> {
        let ZkDir { client, dir } = &self.0;
        let prefix = zk::LockPrefix::new_curator(dir, "lock-")?;
        let lock = client
            .lock(prefix, b"", zk::LockOptions::new(zk::Acls::anyone_all()))
            .await?;
        // Release explicitly and wait, as the other systems do (dropping the guard deletes
        // in the background).
        client.delete(lock.lock_path(), None).await?;
        std::mem::forget(lock);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.0.finish().await
    }
}

struct Fairlock {
    client: Client,
    mutex: Arc<dyn fairlock::DistributedMutex>,
}

impl Fairlock {
    async fn new(url: &str) -> Result<Self, BoxError> {
        let client = Client::connect(url).await?;
        let mutex = client.mutex(&unique("fairlock"))?;
        Ok(Fairlock { client, mutex })
    }
}

#[async_trait::async_trait]
impl PairRunner for Fairlock {
    async fn pair(&mut self) -> Result<(), BoxError> {
        self.mutex.lock().await?.release().await?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<(), BoxError> {
        self.client.close().await?;
        Ok(())
    }
}

/// Uncontended pairs of several systems, measured in interleaved blocks of `block` pairs,
/// so that drift in the machine or the servers during the run affects them alike.
pub async fn interleaved(
    runners: &mut [(usize, Box<dyn PairRunner>)],
    rounds: usize,
    block: usize,
) -> Result<Vec<(usize, Sample)>, BoxError> {
    for (_, runner) in runners.iter_mut() {
        for _ in 0..WARMUP {
            runner.pair().await?;
        }
    }
    let mut samples: Vec<(usize, Sample)> = runners
        .iter()
        .map(|(i, _)| {
            let sample = Sample {
                latencies: Vec::with_capacity(rounds),
                elapsed: Duration::ZERO,
                cpu: Duration::ZERO,
            };
            (*i, sample)
        })
        .collect();
    let mut done = 0;
    while done < rounds {
        let n = block.min(rounds - done);
        for ((_, runner), (_, sample)) in runners.iter_mut().zip(samples.iter_mut()) {
            // Only this runner works during its block: the process's CPU time in the block
            // is its own (plus the others' idle upkeep, a lease keep-alive or a ping).
            let (start, cpu) = (Instant::now(), cpu_time());
            for _ in 0..n {
                let t0 = Instant::now();
                runner.pair().await?;
                sample.latencies.push(t0.elapsed());
            }
            sample.elapsed += start.elapsed();
            sample.cpu += cpu_time().saturating_sub(cpu);
        }
        done += n;
    }
    Ok(samples)
}
