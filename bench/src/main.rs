//! fairlock-bench: fairlock side by side with the raw floor and with the peers, on the same
//! servers, in one run. See docs/BENCHMARKS.md; `scripts/bench` runs it.
//!
//! ```text
//! fairlock-bench [--out DIR] [--docs FILE] [--smoke] [--cluster] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                [--rounds N] [--sessions 1,8,32] [--waiters 256,10000] [--repeats 3]
//!                [--idle-waiters 100] [--idle-ms 5000]
//! fairlock-bench failover [--rounds N] [--docs FILE] [--no-peers] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                                          (only the failover figures, spliced into FILE)
//! fairlock-bench many [--window-ms N] [--docs FILE] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                                          (only the many-locks figures, spliced into FILE)
//! fairlock-bench waiting [--idle-waiters N] [--idle-ms N] [--docs FILE] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                                          (only the waiting waiters' CPU, spliced into FILE)
//! fairlock-bench rwlock [--sessions 1,8,32] [--docs FILE] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                                          (only the read-write lock figures, spliced into FILE)
//! fairlock-bench semaphore [--docs FILE] [--etcd HOST:PORT] [--zk HOST:PORT]
//!                                          (only the semaphore figures, spliced into FILE)
//! fairlock-bench waiters URL COUNT        (internal: one waiters run, in its own process)
//! fairlock-bench idle URL COUNT MS        (internal: one idle run, in its own process)
//! fairlock-bench many-child …              (internal: one process of a many-locks run)
//! ```

mod failover;
mod many;
mod report;
mod rwlock;
mod semaphore;
mod systems;
mod waiters;

use std::path::PathBuf;
use std::time::Duration;

use report::{Measurement, Run};
use systems::System;

/// Sizes of one run.
struct Sizes {
    rounds: usize,
    contended_ops: usize,
    sessions: Vec<usize>,
    waiters: Vec<usize>,
    /// Rounds of each failover case.
    failover_rounds: usize,
    /// Whether the failover figures include Curator's LeaderLatch.
    failover_peers: bool,
    many: many::ManySizes,
    /// Waiters queued in the idle run, and how long it measures each state.
    idle_waiters: usize,
    idle_window: Duration,
    /// Runs of the uncontended and contended scenarios (the first, and repeats for the spread).
    repeats: usize,
}

struct Options {
    /// Against the 3-node clusters (`--cluster`).
    cluster: bool,
    out: PathBuf,
    docs: Option<PathBuf>,
    etcd: String,
    zk: String,
    sizes: Sizes,
}

fn parse(subcommand: bool) -> Result<Options, String> {
    let mut options = Options {
        cluster: false,
        out: PathBuf::from("docs/bench"),
        docs: Some(PathBuf::from("docs/BENCHMARKS.md")),
        etcd: "127.0.0.1:2379".into(),
        zk: "127.0.0.1:2181".into(),
        sizes: Sizes {
            rounds: 300,
            contended_ops: 320,
            sessions: vec![1, 8, 32],
            waiters: vec![256, 10_000],
            failover_rounds: 5,
            failover_peers: true,
            many: many::ManySizes {
                window: Duration::from_secs(4),
                in_flight: vec![1, 16, 64],
                processes: vec![1, 4],
            },
            idle_waiters: 100,
            idle_window: Duration::from_secs(5),
            repeats: 3,
        },
    };
    let mut args = std::env::args().skip(if subcommand { 2 } else { 1 });
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => options.out = PathBuf::from(value()?),
            "--cluster" => options.cluster = true,
            "--docs" => options.docs = Some(PathBuf::from(value()?)),
            "--etcd" => options.etcd = value()?,
            "--zk" => options.zk = value()?,
            "--waiters" => options.sizes.waiters = list(&value()?)?,
            "--sessions" => options.sizes.sessions = list(&value()?)?,
            "--rounds" => {
                let rounds = value()?.parse().map_err(|e| format!("{e}"))?;
                options.sizes.rounds = rounds;
                options.sizes.failover_rounds = rounds;
            }
            "--no-peers" => options.sizes.failover_peers = false,
            "--in-flight" => options.sizes.many.in_flight = list(&value()?)?,
            "--processes" => options.sizes.many.processes = list(&value()?)?,
            "--repeats" => {
                options.sizes.repeats = value()?.parse().map_err(|e| format!("{e}"))?;
            }
            "--idle-waiters" => {
                options.sizes.idle_waiters = value()?.parse().map_err(|e| format!("{e}"))?;
            }
            "--idle-ms" => {
                let ms = value()?.parse().map_err(|e| format!("{e}"))?;
                options.sizes.idle_window = Duration::from_millis(ms);
            }
            "--window-ms" => {
                let ms = value()?.parse().map_err(|e| format!("{e}"))?;
                options.sizes.many.window = Duration::from_millis(ms);
            }
            "--smoke" => {
                options.sizes = Sizes {
                    rounds: 5,
                    contended_ops: 8,
                    sessions: vec![1, 2],
                    waiters: vec![8],
                    failover_rounds: 1,
                    failover_peers: false,
                    many: many::ManySizes {
                        window: Duration::from_millis(200),
                        in_flight: vec![4],
                        processes: vec![1],
                    },
                    idle_waiters: 4,
                    idle_window: Duration::from_millis(200),
                    repeats: 2,
                };
                options.docs = None;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn list(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("{s:?}: {e}")))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("waiters") {
        // A child process of the main run, so that its peak RSS is its own.
        let (url, count) = (&args[2], args[3].parse().expect("COUNT"));
        let result = runtime.block_on(waiters::run_here(url, count));
        match result {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("fairlock-bench waiters: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("idle") {
        let (url, count, ms) = (&args[2], args[3].parse(), args[4].parse());
        let (Ok(count), Ok(ms)) = (count, ms) else {
            eprintln!("fairlock-bench idle URL COUNT MS");
            std::process::exit(2);
        };
        match runtime.block_on(waiters::idle_here(url, count, Duration::from_millis(ms))) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("fairlock-bench idle: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("many-child") {
        match runtime.block_on(many::child(&args[2..])) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("fairlock-bench many-child: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let only = args
        .get(1)
        .map(String::as_str)
        .filter(|a| ["failover", "many", "waiting", "rwlock", "semaphore"].contains(a));
    let options = match parse(only.is_some()) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("fairlock-bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match only {
        Some("failover") => runtime.block_on(failover_only_run(&options)),
        Some("waiting") => runtime.block_on(waiting_only_run(&options)),
        Some("rwlock") => runtime.block_on(rwlock_only_run(&options)),
        Some("semaphore") => runtime.block_on(semaphore_only_run(&options)),
        Some(_) => runtime.block_on(many_only_run(&options)),
        None => runtime.block_on(run(&options)),
    };
    if let Err(e) = result {
        eprintln!("fairlock-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(options: &Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let systems = System::all(&options.etcd, &options.zk);
    let sizes = &options.sizes;
    let mut run = Run::new(&options.etcd, &options.zk);
    run.cluster = options.cluster;

    measure_pairs(&systems, sizes, &mut run).await?;
    for &count in &sizes.waiters {
        for system in systems.iter().filter(|s| s.queues_waiters()) {
            eprintln!("waiters: {} x{count}", system.name());
            // Queueing thousands at once keeps the server busy for seconds: give requests and
            // the session room (the defaults, 5 s and 10 s, are for interactive use).
            let url = format!("{}?ttl=30&request_timeout=60s", system.url());
            let result = waiters::run_child(&url, count).await?;
            run.push(Measurement::waiters(system, count, result));
        }
    }
    std::fs::create_dir_all(&options.out)?;
    let csv = options.out.join("results.csv");
    std::fs::write(&csv, run.csv())?;
    let svg = options.out.join("latency.svg");
    report::plot(&run, &svg)?;
    eprintln!("failover");
    let rows = failover::measure(
        &options.etcd,
        &options.zk,
        sizes.failover_rounds,
        sizes.failover_peers,
    )
    .await?;
    let section = failover::markdown(&rows, &report::today());
    let many_rows = many::measure(&options.etcd, &options.zk, &sizes.many).await?;
    let many_section = many::markdown(&many_rows, &sizes.many, &report::today());
    let idle_section = waiting_section(options).await?;
    let rw_section = rwlock_section(options).await?;
    let semaphore_section = semaphore_section(options).await?;
    // The spread: the judged scenarios again, after everything else.
    let mut repeats = Vec::new();
    for r in 1..sizes.repeats {
        eprintln!("repeat {r} of the uncontended and contended scenarios");
        let mut again = Run::new(&options.etcd, &options.zk);
        measure_pairs(&systems, sizes, &mut again).await?;
        repeats.push(again);
    }
    let sections =
        format!("{section}\n{many_section}\n{idle_section}\n{rw_section}\n{semaphore_section}");
    let markdown = run.markdown(&svg, &sections, &repeats);
    match &options.docs {
        Some(docs) => {
            std::fs::write(docs, &markdown)?;
            eprintln!(
                "wrote {}, {} and {}",
                docs.display(),
                csv.display(),
                svg.display()
            );
        }
        None => println!("{markdown}"),
    }
    Ok(())
}

/// The uncontended and contended scenarios, the ones the targets judge, into `run`.
async fn measure_pairs(
    systems: &[System],
    sizes: &Sizes,
    run: &mut Run,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Uncontended: the in-process systems interleaved in blocks (fair against drift), then
    // the peers, each in its own process.
    eprintln!("uncontended: floors, etcd Lock RPC, zookeeper-client lock, fairlock");
    let mut runners = Vec::new();
    for (i, system) in systems.iter().enumerate() {
        if let Some(runner) = system.runner().await? {
            runners.push((i, runner));
        }
    }
    let samples = systems::interleaved(&mut runners, sizes.rounds, 10).await?;
    for (_, runner) in runners {
        runner.finish().await?;
    }
    let mut uncontended: Vec<(usize, systems::Sample)> = samples;
    for (i, system) in systems.iter().enumerate() {
        if matches!(system, System::Curator(_) | System::Kazoo(_)) {
            eprintln!("uncontended: {}", system.name());
            uncontended.push((i, system.uncontended_peer(sizes.rounds).await?));
        }
    }
    uncontended.sort_by_key(|(i, _)| *i);
    for (i, sample) in uncontended {
        run.push(Measurement::uncontended(&systems[i], sample));
    }
    for &sessions in &sizes.sessions {
        for system in systems.iter().filter(|s| s.contends()) {
            eprintln!("contended: {} x{sessions}", system.name());
            let sample = system.contended(sessions, sizes.contended_ops).await?;
            run.push(Measurement::contended(system, sessions, sample));
        }
    }
    Ok(())
}

/// `fairlock-bench failover`: only the failover figures, spliced into the docs file.
async fn failover_only_run(
    options: &Options,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sizes = &options.sizes;
    let rows = failover::measure(
        &options.etcd,
        &options.zk,
        sizes.failover_rounds,
        sizes.failover_peers,
    )
    .await?;
    let section = failover::markdown(&rows, &report::today());
    splice_into(options, &section, failover::BEGIN, failover::END)
}

/// `fairlock-bench many`: only the many-locks figures, spliced into the docs file.
async fn many_only_run(options: &Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sizes = &options.sizes.many;
    let rows = many::measure(&options.etcd, &options.zk, sizes).await?;
    let section = many::markdown(&rows, sizes, &report::today());
    splice_into(options, &section, many::BEGIN, many::END)
}

/// The waiting waiters' CPU section.
async fn waiting_section(
    options: &Options,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let sizes = &options.sizes;
    let (count, window) = (sizes.idle_waiters, sizes.idle_window);
    let rows = waiters::idle(&options.etcd, &options.zk, count, window).await?;
    Ok(waiters::idle_markdown(
        &rows,
        count,
        window,
        &report::today(),
    ))
}

/// Batches of readers in the wake-up scenario.
const READER_BATCH: usize = 16;

/// The read-write locks' section: readers' throughput at each session count, wake-ups.
async fn rwlock_section(
    options: &Options,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let systems = System::all(&options.etcd, &options.zk);
    let sizes = &options.sizes;
    let readers = rwlock::readers(&systems, &sizes.sessions, sizes.contended_ops).await?;
    let wakeups = rwlock::wakeups(&systems, READER_BATCH).await?;
    Ok(rwlock::markdown(&readers, &wakeups, &report::today()))
}

/// `fairlock-bench rwlock`: only the read-write lock figures, spliced into the docs file.
async fn rwlock_only_run(
    options: &Options,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let section = rwlock_section(options).await?;
    splice_into(options, &section, rwlock::BEGIN, rwlock::END)
}

/// Waiters behind the full semaphore in the wake-up run, and releases measured.
const SEMAPHORE_WAITERS: usize = 16;
const SEMAPHORE_RELEASES: usize = 8;

/// The semaphores' section: hand-offs per second, wake-ups per release.
async fn semaphore_section(
    options: &Options,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let systems = System::all(&options.etcd, &options.zk);
    let sizes = &options.sizes;
    // More sessions than leases (the smoke run's few sessions: one more than the limit).
    let limit = semaphore::LIMIT as usize;
    let mut counts: Vec<usize> = (sizes.sessions.iter().copied())
        .filter(|&n| n > limit)
        .collect();
    if counts.is_empty() {
        counts.push(limit + 1);
    }
    let handoffs = semaphore::handoffs(&systems, &counts, sizes.contended_ops).await?;
    let wakeups = semaphore::wakeups(&systems, SEMAPHORE_WAITERS, SEMAPHORE_RELEASES).await?;
    Ok(semaphore::markdown(&handoffs, &wakeups, &report::today()))
}

/// `fairlock-bench semaphore`: only the semaphore figures, spliced into the docs file.
async fn semaphore_only_run(
    options: &Options,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let section = semaphore_section(options).await?;
    splice_into(options, &section, semaphore::BEGIN, semaphore::END)
}

/// `fairlock-bench waiting`: only the waiting waiters' CPU, spliced into the docs file.
async fn waiting_only_run(
    options: &Options,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let section = waiting_section(options).await?;
    splice_into(options, &section, waiters::IDLE_BEGIN, waiters::IDLE_END)
}

/// Replaces the section between `begin` and `end` of the docs file (or prints it).
fn splice_into(
    options: &Options,
    section: &str,
    begin: &str,
    end: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match &options.docs {
        Some(docs) => {
            let text = std::fs::read_to_string(docs).unwrap_or_default();
            std::fs::write(docs, report::splice(&text, section, begin, end))?;
            eprintln!("wrote a section of {}", docs.display());
        }
        None => println!("{section}"),
    }
    Ok(())
}

/// Waits between scenarios so one's cleanup does not run into the next one's numbers.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
