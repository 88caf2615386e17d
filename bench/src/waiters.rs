//! Many waiters on one lock from one process: wake-ups and reads per release, peak memory,
//! drain time and client CPU. Runs in a child process so that the peak RSS and the CPU time
//! are the scenario's own. Also the idle run: what waiting waiters cost the client's CPU,
//! beside Curator and kazoo.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fairlock::{BackendKind, Client, Config, DistributedMutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::systems::{child_json, with_cpu};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Waiter = tokio::task::JoinHandle<Result<(), fairlock::Error>>;

pub struct WaitersResult {
    pub enqueue: Duration,
    pub drain: Duration,
    pub wakeups: u64,
    pub queue_reads: u64,
    pub releases: u64,
    /// Deletion notifications the server sent (etcd: watch events; ZooKeeper: watches
    /// triggered by node deletions), if it reports them.
    pub server_notifications: Option<u64>,
    pub peak_rss_kib: u64,
    /// The process's CPU time: queueing every waiter, and draining the queue.
    pub enqueue_cpu: Duration,
    pub drain_cpu: Duration,
    /// The process's CPU time per second with every waiter queued, before the drain.
    pub idle_cpu_per_s: Duration,
}

/// How long the queued waiters sit idle, CPU measured, before the drain.
const IDLE: Duration = Duration::from_secs(2);

/// Starts `fairlock-bench waiters URL COUNT` and reads its result.
pub async fn run_child(url: &str, count: usize) -> Result<WaitersResult, BoxError> {
    crate::settle().await;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["waiters", url, &count.to_string()]);
    let v = child_json(Ok(cmd), "waiters run").await?;
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    Ok(WaitersResult {
        enqueue: Duration::from_micros(n("enqueue_us")),
        drain: Duration::from_micros(n("drain_us")),
        wakeups: n("wakeups"),
        queue_reads: n("queue_reads"),
        releases: n("releases"),
        server_notifications: v["server_notifications"].as_u64(),
        peak_rss_kib: n("peak_rss_kib"),
        enqueue_cpu: Duration::from_micros(n("enqueue_cpu_us")),
        drain_cpu: Duration::from_micros(n("drain_cpu_us")),
        idle_cpu_per_s: Duration::from_micros(n("idle_cpu_us_per_s")),
    })
}

/// The scenario itself: one holder, `count` waiters of the same client, then the drain.
pub async fn run_here(url: &str, count: usize) -> Result<String, BoxError> {
    let config = Config::from_url(url)?;
    let client = Client::from_config(&config).await?;
    let name = format!("waiters-{}", std::process::id());
    let mutex = client.mutex(&name)?;
    let holder = mutex.lock().await?;

    let started = Instant::now();
    let (tasks, enqueue_cpu) = with_cpu(queue(&mutex, count)).await;
    let (tasks, enqueue) = (tasks?, started.elapsed());
    let ((), idle_cpu) = with_cpu(tokio::time::sleep(IDLE)).await;

    let notifications_before = server_notifications(&config).await;
    let queued = fairlock::stats();
    let started = Instant::now();
    let (drained, drain_cpu) = with_cpu(async {
        holder.release().await?;
        for task in tasks {
            task.await??;
        }
        Ok::<_, BoxError>(())
    })
    .await;
    let (drain, ()) = (started.elapsed(), drained?);
    let after = fairlock::stats() - queued;
    let notifications = match (notifications_before, server_notifications(&config).await) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    client.close().await?;
    Ok(serde_json::json!({
        "enqueue_us": enqueue.as_micros() as u64,
        "drain_us": drain.as_micros() as u64,
        "wakeups": after.wakeups,
        "queue_reads": after.queue_reads,
        // The holder's release plus one per waiter.
        "releases": count as u64 + 1,
        "server_notifications": notifications,
        "peak_rss_kib": peak_rss_kib(),
        "enqueue_cpu_us": enqueue_cpu.as_micros() as u64,
        "drain_cpu_us": drain_cpu.as_micros() as u64,
        "idle_cpu_us_per_s": (idle_cpu.as_secs_f64() / IDLE.as_secs_f64() * 1e6) as u64,
    })
    .to_string())
}

/// Queues `count` waiters on `mutex` (held elsewhere) and returns once each has found its
/// predecessor and waits on it. Each waiter, once it holds the lock, releases it.
async fn queue(mutex: &Arc<dyn DistributedMutex>, count: usize) -> Result<Vec<Waiter>, BoxError> {
    // In batches: 10,000 enqueue requests at once would only measure the server's backlog
    // (and run into the request timeout).
    const BATCH: usize = 100;
    let before = fairlock::stats();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut tasks: Vec<Waiter> = Vec::with_capacity(count);
    while tasks.len() < count {
        for _ in 0..BATCH.min(count - tasks.len()) {
            let mutex = mutex.clone();
            tasks.push(tokio::spawn(async move {
                mutex.lock().await?.release().await?;
                Ok(())
            }));
        }
        while fairlock::stats().waits - before.waits < tasks.len() as u64 {
            if let Some(failed) = tasks.iter().position(|t| t.is_finished()) {
                let result = tasks.swap_remove(failed).await?;
                return Err(format!("a waiter ended before the drain: {result:?}").into());
            }
            if Instant::now() > deadline {
                return Err("waiters did not all queue within 15 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(tasks)
}

/// The idle run, `fairlock-bench idle URL COUNT MS`, in a child process: the lock held, the
/// process's CPU time over MS milliseconds, then queueing COUNT waiters, then MS more
/// milliseconds with them waiting; printed as Curator's and kazoo's peers print theirs.
pub async fn idle_here(url: &str, count: usize, window: Duration) -> Result<String, BoxError> {
    let client = Client::connect(url).await?;
    let mutex = client.mutex(&format!("idle-{}", std::process::id()))?;
    let holder = mutex.lock().await?;
    let ((), alone) = with_cpu(tokio::time::sleep(window)).await;
    let (tasks, enqueue) = with_cpu(queue(&mutex, count)).await;
    let tasks = tasks?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let ((), waiting) = with_cpu(tokio::time::sleep(window)).await;
    for task in &tasks {
        task.abort();
    }
    drop(holder);
    client.close().await?;
    Ok(serde_json::json!({
        "enqueue_cpu_us": enqueue.as_micros() as u64,
        "alone_cpu_us": alone.as_micros() as u64,
        "waiting_cpu_us": waiting.as_micros() as u64,
    })
    .to_string())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// The server's own count of deletion notifications, if it publishes one.
async fn server_notifications(config: &Config) -> Option<u64> {
    let endpoint = config.endpoints.first()?;
    let (request, metric) = match config.backend {
        BackendKind::Etcd => (
            format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n"),
            "etcd_debugging_mvcc_events_total",
        ),
        BackendKind::Zookeeper => ("mntr".to_owned(), "zk_sum_node_deleted_watch_count"),
        _ => return None,
    };
    let mut stream = TcpStream::connect(endpoint).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(metric))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The idle run's pause between the last waiter queued and the measured window, so that
/// no queueing work (a peer's watch still being set) counts as idle. The peers use the same.
const IDLE_SETTLE: Duration = Duration::from_millis(500);

/// One system's idle run.
pub struct IdleRow {
    pub system: String,
    pub enqueue_cpu: Duration,
    pub alone_cpu: Duration,
    pub waiting_cpu: Duration,
}

pub const IDLE_BEGIN: &str = "<!-- waiting waiters: generated by fairlock-bench -->";
pub const IDLE_END: &str = "<!-- end of waiting waiters -->";

/// The idle run of fairlock on each backend, Curator and kazoo, each in its own process.
pub async fn idle(
    etcd: &str,
    zk: &str,
    count: usize,
    window: Duration,
) -> Result<Vec<IdleRow>, BoxError> {
    let args = [
        "idle".to_owned(),
        count.to_string(),
        window.as_millis().to_string(),
    ];
    let fairlock = |url: String| {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("idle").arg(url).args(&args[1..]);
        Ok::<_, BoxError>(cmd)
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let commands = [
        (
            "fairlock/etcd",
            fairlock(format!("etcd://{etcd}/fairlock-bench")),
        ),
        (
            "fairlock/zookeeper",
            fairlock(format!("zk://{zk}/fairlock-bench")),
        ),
        (
            "Curator 5.4 InterProcessMutex",
            crate::systems::curator(zk, &args),
        ),
        ("kazoo 2.11 Lock", crate::systems::kazoo(zk, &args)),
    ];
    let mut rows = Vec::new();
    for (system, cmd) in commands {
        eprintln!("idle: {system} x{count}");
        crate::settle().await;
        let v = child_json(cmd, &format!("idle run of {system}")).await?;
        let us = |key: &str| Duration::from_micros(v[key].as_u64().unwrap_or(0));
        rows.push(IdleRow {
            system: system.to_owned(),
            enqueue_cpu: us("enqueue_cpu_us"),
            alone_cpu: us("alone_cpu_us"),
            waiting_cpu: us("waiting_cpu_us"),
        });
    }
    Ok(rows)
}

/// The section for docs/BENCHMARKS.md.
pub fn idle_markdown(rows: &[IdleRow], count: usize, window: Duration, date: &str) -> String {
    use std::fmt::Write as _;
    let secs = window.as_secs_f64();
    let settle = IDLE_SETTLE.as_millis();
    let mut md = format!("{IDLE_BEGIN}\n## Waiting waiters: client CPU\n\n");
    let _ = write!(
        md,
        "One client holds a lock and sits idle for {secs:.1} s; then {count} waiters of the \
         same client (tasks for fairlock, threads for Curator and kazoo) queue behind it and \
         sit idle for {secs:.1} s more (measured from {settle} ms after the last one queued). Each system runs in its own process; CPU is the \
         process's user+system time (every thread). The JVM's resolution is 10 ms. Run of \
         {date}; reproduce with `scripts/bench` (`--idle-waiters N`).\n\n"
    );
    md.push_str("| system | queueing CPU µs / waiter | idle CPU ms/s, holder alone | idle CPU ms/s, waiters queued | idle CPU µs/s per waiter |\n|---|---|---|---|---|\n");
    for row in rows {
        let per_s = |d: Duration| d.as_secs_f64() * 1000.0 / secs;
        let added = (row.waiting_cpu.as_secs_f64() - row.alone_cpu.as_secs_f64()).max(0.0);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} |",
            row.system,
            row.enqueue_cpu.as_secs_f64() * 1e6 / count.max(1) as f64,
            per_s(row.alone_cpu),
            per_s(row.waiting_cpu),
            added * 1e6 / secs / count.max(1) as f64,
        );
    }
    md.push_str(IDLE_END);
    md.push('\n');
    md
}
