//! The systems measured: the raw floors, fairlock on each backend, and the peers.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlock::Client;
use tokio::sync::Barrier;
use zookeeper_client as zk;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Latencies of the timed operations, and the wall time of the whole scenario.
pub struct Sample {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

const WARMUP: usize = 20;

pub enum System {
    /// etcd: put with a lease + delete, the two durable writes any lock needs.
    EtcdFloor(String),
    /// etcd's server-side Lock + Unlock RPCs, through etcd-client.
    EtcdLockRpc(String),
    /// ZooKeeper: create ephemeral sequential + delete.
    ZkFloor(String),
    /// zookeeper-client's `Client::lock` (Curator naming) + delete.
    ZkRecipe(String),
    /// fairlock, through this URL.
    Fairlock(&'static str, String),
    /// Curator 5.4 InterProcessMutex (Java peer).
    Curator(String),
    /// kazoo 2.11 Lock (Python peer).
    Kazoo(String),
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{tag}-{}-{nanos:x}", std::process::id())
}

impl System {
    pub fn all(etcd: &str, zk: &str) -> Vec<System> {
        vec![
            System::EtcdFloor(etcd.into()),
            System::EtcdLockRpc(etcd.into()),
            System::Fairlock("etcd", format!("etcd://{etcd}/fairlock-bench")),
            System::ZkFloor(zk.into()),
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
            System::EtcdFloor(_) | System::EtcdLockRpc(_) => "etcd",
            System::ZkFloor(_) | System::ZkRecipe(_) | System::Curator(_) | System::Kazoo(_) => {
                "zookeeper"
            }
            System::Fairlock(backend, _) => backend,
        }
    }

    pub fn is_floor(&self) -> bool {
        matches!(self, System::EtcdFloor(_) | System::ZkFloor(_))
    }

    pub fn is_fairlock(&self) -> bool {
        matches!(self, System::Fairlock(..))
    }

    /// Floors are single operations, not locks: nothing to contend for.
    pub fn contends(&self) -> bool {
        !self.is_floor() && !matches!(self, System::ZkRecipe(_))
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

    /// `rounds` uncontended acquire+release pairs (after a warm-up), each timed.
    pub async fn uncontended(&self, rounds: usize) -> Result<Sample, BoxError> {
        crate::settle().await;
        match self {
            System::EtcdFloor(endpoint) => etcd_floor(endpoint, rounds).await,
            System::EtcdLockRpc(endpoint) => etcd_lock_rpc(endpoint, 1, rounds).await,
            System::ZkFloor(endpoint) => zk_floor(endpoint, rounds).await,
            System::ZkRecipe(endpoint) => zk_recipe(endpoint, rounds).await,
            System::Fairlock(_, url) => fairlock(url, 1, rounds, true).await,
            System::Curator(endpoint) => {
                peer(curator(endpoint, &["bench", &rounds.to_string()])).await
            }
            System::Kazoo(endpoint) => peer(kazoo(endpoint, &["bench", &rounds.to_string()])).await,
        }
    }

    /// `sessions` sessions take turns on one lock, `total / sessions` times each; each
    /// acquisition's wait is timed.
    pub async fn contended(&self, sessions: usize, total: usize) -> Result<Sample, BoxError> {
        crate::settle().await;
        let each = (total / sessions).max(1);
        match self {
            System::EtcdLockRpc(endpoint) => etcd_lock_rpc(endpoint, sessions, each).await,
            System::Fairlock(_, url) => fairlock(url, sessions, each, false).await,
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
}

/// Times `rounds` calls of `op` after a warm-up.
async fn timed<F, Fut>(rounds: usize, mut op: F) -> Result<Sample, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    for _ in 0..WARMUP.min(rounds) {
        op().await?;
    }
    let mut latencies = Vec::with_capacity(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        let t0 = Instant::now();
        op().await?;
        latencies.push(t0.elapsed());
    }
    Ok(Sample {
        latencies,
        elapsed: start.elapsed(),
    })
}

async fn etcd_client(endpoint: &str) -> Result<etcd_client::Client, BoxError> {
    Ok(etcd_client::Client::connect([format!("http://{endpoint}")], None).await?)
}

async fn etcd_floor(endpoint: &str, rounds: usize) -> Result<Sample, BoxError> {
    let client = etcd_client(endpoint).await?;
    let lease = client.lease_client().grant(30, None).await?.id();
    let key = format!("{}/k", unique("etcd-floor"));
    let sample = timed(rounds, || {
        let (mut kv, key) = (client.kv_client(), key.clone());
        async move {
            let put = etcd_client::PutOptions::new().with_lease(lease);
            kv.put(key.as_str(), "", Some(put)).await?;
            kv.delete(key.as_str(), None).await?;
            Ok(())
        }
    })
    .await;
    client.lease_client().revoke(lease).await?;
    sample
}

/// `sessions` leases, each running `each` Lock + Unlock pairs on one name.
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
        let (client, name, barrier) = (client.clone(), name.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut locks = client.lock_client();
            let once = |locks: &mut etcd_client::LockClient| {
                let mut locks = locks.clone();
                let name = name.clone();
                async move {
                    let t0 = Instant::now();
                    let options = etcd_client::LockOptions::new().with_lease(lease);
                    let key = locks
                        .lock(name.as_str(), Some(options))
                        .await?
                        .key()
                        .to_vec();
                    let waited = t0.elapsed();
                    locks.unlock(key).await?;
                    Ok::<_, BoxError>((waited, t0.elapsed()))
                }
            };
            if sessions == 1 {
                for _ in 0..WARMUP {
                    once(&mut locks).await?;
                }
            }
            barrier.wait().await;
            let mut latencies = Vec::new();
            for _ in 0..each {
                let (waited, pair) = once(&mut locks).await?;
                latencies.push(if sessions == 1 { pair } else { waited });
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    for lease in leases {
        client.lease_client().revoke(lease).await?;
    }
    Ok(Sample { latencies, elapsed })
}

async fn zk_client(endpoint: &str) -> Result<zk::Client, BoxError> {
    Ok(zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(endpoint)
        .await?)
}

async fn zk_floor(endpoint: &str, rounds: usize) -> Result<Sample, BoxError> {
    let client = zk_client(endpoint).await?;
    let dir = format!("/{}", unique("zk-floor"));
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.create(&dir, b"", &persistent).await?;
    let prefix = format!("{dir}/n-");
    let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let sample = timed(rounds, || {
        let (client, prefix, ephemeral) = (&client, &prefix, &ephemeral);
        async move {
            let (_, sequence) = client.create(prefix, b"", ephemeral).await?;
            client.delete(&format!("{prefix}{sequence}"), None).await?;
            Ok(())
        }
    })
    .await;
    client.delete(&dir, None).await?;
    sample
}

async fn zk_recipe(endpoint: &str, rounds: usize) -> Result<Sample, BoxError> {
    let client = zk_client(endpoint).await?;
    let dir = format!("/{}", unique("zk-recipe"));
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.create(&dir, b"", &persistent).await?;
    timed(rounds, || {
        let (client, dir) = (&client, &dir);
        async move {
            let prefix = zk::LockPrefix::new_curator(dir, "lock-")?;
            let lock = client
                .lock(prefix, b"", zk::LockOptions::new(zk::Acls::anyone_all()))
                .await?;
            // Release explicitly and wait, as the other systems do (dropping the guard
            // deletes in the background).
            client.delete(lock.lock_path(), None).await?;
            std::mem::forget(lock);
            Ok(())
        }
    })
    .await
}

/// fairlock: `sessions` clients, `each` acquisitions each. Uncontended runs time the
/// acquire+release pair; contended ones time the wait for the lock.
async fn fairlock(
    url: &str,
    sessions: usize,
    each: usize,
    pairs: bool,
) -> Result<Sample, BoxError> {
    let name = unique("fairlock");
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Client::connect(url).await?);
    }
    if pairs {
        let mutex = clients[0].mutex(&name)?;
        let sample = timed(each, || {
            let mutex = mutex.clone();
            async move {
                mutex.lock().await?.release().await?;
                Ok(())
            }
        })
        .await;
        clients[0].close().await?;
        return sample;
    }
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut tasks = Vec::new();
    for client in &clients {
        let (mutex, barrier) = (client.mutex(&name)?, barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut latencies = Vec::with_capacity(each);
            for _ in 0..each {
                let t0 = Instant::now();
                let guard = mutex.lock().await?;
                latencies.push(t0.elapsed());
                guard.release().await?;
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    for client in clients {
        client.close().await?;
    }
    Ok(Sample { latencies, elapsed })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn curator(endpoint: &str, args: &[&str]) -> Result<tokio::process::Command, BoxError> {
    let classpath = std::fs::read_to_string(repo().join("target/peers/classpath"))
        .map_err(|_| "the Curator peer is missing: run scripts/peers")?;
    let mut cmd = tokio::process::Command::new("java");
    cmd.args(["-cp", classpath.trim(), "CuratorPeer", endpoint])
        .arg(format!("/{}", unique("curator")))
        .args(args);
    Ok(cmd)
}

fn kazoo(endpoint: &str, args: &[&str]) -> Result<tokio::process::Command, BoxError> {
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
    let out = cmd?
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("peer failed: {}", out.status).into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(line.trim())?;
    let micros = |v: &serde_json::Value| Duration::from_micros(v.as_u64().unwrap_or(0));
    Ok(Sample {
        latencies: report["latencies_us"]
            .as_array()
            .ok_or("no latencies")?
            .iter()
            .map(micros)
            .collect(),
        elapsed: micros(&report["elapsed_us"]),
    })
}
