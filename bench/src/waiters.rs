//! Many waiters on one lock from one process: wake-ups and reads per release, peak memory
//! and drain time. Runs in a child process so that the peak RSS is the scenario's own.

use std::time::{Duration, Instant};

use fairlock::{BackendKind, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
}

/// Starts `fairlock-bench waiters URL COUNT` and reads its result.
pub async fn run_child(url: &str, count: usize) -> Result<WaitersResult, BoxError> {
    crate::settle().await;
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["waiters", url, &count.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("waiters run failed: {}", out.status).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    Ok(WaitersResult {
        enqueue: Duration::from_micros(n("enqueue_us")),
        drain: Duration::from_micros(n("drain_us")),
        wakeups: n("wakeups"),
        queue_reads: n("queue_reads"),
        releases: n("releases"),
        server_notifications: v["server_notifications"].as_u64(),
        peak_rss_kib: n("peak_rss_kib"),
    })
}

/// The scenario itself: one holder, `count` waiters of the same client, then the drain.
pub async fn run_here(url: &str, count: usize) -> Result<String, BoxError> {
    let config = Config::from_url(url)?;
    let client = Client::from_config(&config).await?;
    let name = format!("waiters-{}", std::process::id());
    let mutex = client.mutex(&name)?;
    let holder = mutex.lock().await?;

    // Queue the waiters in batches: 10,000 enqueue requests at once would only measure the
    // server's backlog (and run into the request timeout).
    const BATCH: usize = 100;
    let before = fairlock::stats();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let mut tasks = Vec::with_capacity(count);
    while tasks.len() < count {
        for _ in 0..BATCH.min(count - tasks.len()) {
            let mutex = mutex.clone();
            tasks.push(tokio::spawn(async move {
                mutex.lock().await?.release().await?;
                Ok::<_, fairlock::Error>(())
            }));
        }
        // Every waiter so far has found its predecessor and waits on it.
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
    let enqueue = started.elapsed();

    let notifications_before = server_notifications(&config).await;
    let queued = fairlock::stats();
    let started = Instant::now();
    holder.release().await?;
    for task in tasks {
        task.await??;
    }
    let drain = started.elapsed();
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
