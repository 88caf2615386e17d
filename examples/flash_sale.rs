//! The flash sale: 3 items, many buyers in several OS processes, one shared stock counter.
//!
//! Each buyer reads the stock, takes a moment to "process the order", then writes the stock
//! back one lower. Without a lock, buyers overlap between read and write and the shop sells
//! more than it has; with fairlock, the read-modify-write is one critical section and the
//! write is fenced (applied only while the lock is still held), so exactly 3 are sold.
//!
//! ```text
//! cargo run --example flash_sale -- --backend etcd://127.0.0.1:2379/demo --processes 8 --buyers 25
//! ```
//! (`scripts/demo` runs it on every backend, with and without the lock.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fairlock::{Client, WriteOp};

const STOCK: u64 = 3;

struct Options {
    backend: String,
    processes: usize,
    buyers: usize,
    locked: bool,
    /// Internal: run as one buyer process, starting at this Unix time (ms).
    start_at: Option<u64>,
    key: String,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        backend: "etcd://127.0.0.1:2379/demo".into(),
        processes: 8,
        buyers: 25,
        locked: true,
        start_at: None,
        key: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--backend" => o.backend = value()?,
            "--processes" => o.processes = value()?.parse().map_err(|e| format!("{e}"))?,
            "--buyers" => o.buyers = value()?.parse().map_err(|e| format!("{e}"))?,
            "--no-lock" => o.locked = false,
            "--start-at" => o.start_at = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--key" => o.key = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// A backend-neutral data key: the etcd key, ZooKeeper node or memory key of that name.
const STOCK_KEY: &str = "fairlock-demo/stock";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn read_stock(client: &Client, key: &str) -> fairlock::Result<u64> {
    let value = client.get(key).await?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&value).trim().parse().unwrap_or(0))
}

/// One buyer process: `buyers` concurrent buyers on one client (one session; each
/// acquisition still holds its own place in the queue). Prints `sold latencies…`.
async fn buyer_process(o: &Options, start_at: u64) -> fairlock::Result<()> {
    let client = Client::connect(&o.backend).await?;
    let mutex = client.mutex("flash-sale")?;
    let wait = start_at.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut tasks = Vec::new();
    for _ in 0..o.buyers {
        let (client, mutex, key, locked) = (client.clone(), mutex.clone(), o.key.clone(), o.locked);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let guard = if locked {
                Some(mutex.lock().await?)
            } else {
                None
            };
            let waited = started.elapsed();
            let stock = read_stock(&client, &key).await?;
            let mut sold = false;
            if stock > 0 {
                // Processing the order: the window in which unlocked buyers collide.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let new_stock = (stock - 1).to_string();
                match &guard {
                    Some(guard) => {
                        guard
                            .guarded_write(&[WriteOp::put(&key, new_stock)])
                            .await?
                    }
                    None => client.put(&key, new_stock).await?,
                }
                sold = true;
            }
            if let Some(guard) = guard {
                guard.release().await?;
            }
            Ok::<_, fairlock::Error>((sold, waited))
        }));
    }
    let mut sold = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (was_sold, waited) = task.await.map_err(|e| fairlock::Error::Backend {
            backend: "demo",
            source: e.to_string().into(),
        })??;
        sold += u64::from(was_sold);
        latencies.push(waited.as_micros().to_string());
    }
    client.close().await?;
    println!("{sold} {}", latencies.join(" "));
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The coordinator: resets the stock, starts the buyer processes, adds up their sales.
async fn coordinator(o: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let key = STOCK_KEY;
    let client = Client::connect(&o.backend).await?;
    client.put(key, STOCK.to_string()).await?;
    let start_at = now_ms() + 1500; // every process connected by then
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..o.processes)
        .map(|_| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--backend", &o.backend, "--buyers", &o.buyers.to_string()])
                .args(["--start-at", &start_at.to_string(), "--key", key])
                .stdout(Stdio::piped());
            if !o.locked {
                cmd.arg("--no-lock");
            }
            cmd.spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut sold = 0;
    let mut latencies = Vec::new();
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("a buyer process failed: {}", out.status).into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace();
        sold += fields.next().ok_or("empty buyer output")?.parse::<u64>()?;
        latencies.extend(fields.map(|f| f.parse::<u64>().unwrap_or(0)));
    }
    let left = read_stock(&client, key).await?;
    client.close().await?;
    latencies.sort_unstable();
    let (p50, p99) = if o.locked {
        (
            format!("{:.1} ms", percentile(&latencies, 0.50) as f64 / 1000.0),
            format!("{:.1} ms", percentile(&latencies, 0.99) as f64 / 1000.0),
        )
    } else {
        ("-".into(), "-".into())
    };
    let backend = o.backend.split("://").next().unwrap_or("?");
    println!(
        "| {backend:<9} | {:<4} | {:>7} | {sold:>4} | {:>8} | {left:>10} | {p50:>11} | {p99:>11} |",
        if o.locked { "on" } else { "off" },
        o.processes * o.buyers,
        sold.saturating_sub(STOCK),
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("flash_sale: {e}");
            std::process::exit(2);
        }
    };
    let result = match options.start_at {
        Some(start_at) => buyer_process(&options, start_at).await.map_err(Into::into),
        None => coordinator(&options).await,
    };
    if let Err(e) = result {
        eprintln!("flash_sale: {e}");
        std::process::exit(1);
    }
}
