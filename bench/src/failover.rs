//! Failover: the time from stopping a leader process to the next leader's start, each in a
//! process of its own, with the leader stopped gracefully (SIGTERM to `fairlock elect`,
//! which stops its command and resigns; Curator's LeaderLatch closed) or killed (`kill -9`:
//! the session must expire first).
//!
//! A round: start the leader and wait for it to lead; start the candidate and wait until it
//! has campaigned (two entries in the election's queue); note the time; stop the leader;
//! wait for the candidate's "I lead" line. The candidate's line is printed by the command
//! `fairlock elect` starts once it leads (so a fairlock failover includes starting it), or
//! by Curator's LeaderLatch peer once `await()` returns.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fairlock::{Client, QueueKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::systems::{repo, unique};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The session TTL (etcd lease, ZooKeeper session timeout) of every leader: the servers'
/// minimum, so that a killed leader is replaced as soon as these servers allow.
const TTL_SECS: u64 = 2;
/// An upper bound for anything one round waits for.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Graceful,
    Kill,
}

impl Stop {
    fn name(self, curator: bool) -> &'static str {
        match (self, curator) {
            (Stop::Graceful, false) => "SIGTERM (resign)",
            (Stop::Graceful, true) => "latch.close()",
            (Stop::Kill, _) => "kill -9",
        }
    }
}

/// The rounds of one system, backend and way of stopping.
pub struct Row {
    system: &'static str,
    backend: &'static str,
    stop: &'static str,
    samples: Vec<Duration>,
}

/// One contender: the process, and its output lines.
struct Contender {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Contender {
    fn spawn(mut cmd: Command) -> Result<Contender, BoxError> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(Contender {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Waits for the line `line`.
    async fn until(&mut self, line: &str) -> Result<(), BoxError> {
        let wait = async {
            while let Some(next) = self.lines.next_line().await? {
                if next.trim() == line {
                    return Ok(());
                }
            }
            Err(format!("the process ended before printing {line:?}").into())
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .map_err(|_| format!("no {line:?} within {PATIENCE:?}"))?
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), BoxError> {
        let pid = self.child.id().ok_or("the process is gone")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Stops it gracefully (SIGTERM, or a line on stdin for the Curator peer) and reaps it.
    async fn stop(mut self, curator: bool) -> Result<(), BoxError> {
        match curator {
            true => {
                let mut stdin = self.child.stdin.take().ok_or("no stdin")?;
                stdin.write_all(b"\n").await?;
            }
            false => self.signal(nix::sys::signal::Signal::SIGTERM)?,
        }
        tokio::time::timeout(PATIENCE, self.child.wait()).await??;
        Ok(())
    }
}

/// `fairlock elect` from the same build as this benchmark.
fn fairlock_cli() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let cli = exe.with_file_name("fairlock");
    match cli.exists() {
        true => Ok(cli),
        false => Err(format!(
            "{} is missing: build it with the benchmark (cargo build -p fairlock-cli)",
            cli.display()
        )
        .into()),
    }
}

fn elect(url: &str, name: &str, value: &str) -> Result<Command, BoxError> {
    let mut cmd = Command::new(fairlock_cli()?);
    cmd.env("FAIRLOCK_BACKEND", url)
        .args(["elect", "--ttl", &TTL_SECS.to_string(), "--grace", "2s"])
        .args([
            "--value",
            value,
            name,
            "--",
            "sh",
            "-c",
            "echo leading; exec sleep 600",
        ]);
    Ok(cmd)
}

fn latch(zk: &str, path: &str, id: &str) -> Result<Command, BoxError> {
    let classpath = std::fs::read_to_string(repo().join("target/peers/classpath"))
        .map_err(|_| "the Curator peer is missing: run scripts/peers")?;
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Dfairlock.session_ms={}", TTL_SECS * 1000))
        .args([
            "-cp",
            classpath.trim(),
            "CuratorPeer",
            zk,
            path,
            "latch",
            id,
        ]);
    Ok(cmd)
}

/// One round: the time from stopping the leader to the candidate's start.
async fn round(
    observer: &Client,
    name: &str,
    start: &dyn Fn(&str) -> Result<Command, BoxError>,
    started: &str,
    stop: Stop,
    curator: bool,
) -> Result<Duration, BoxError> {
    let mut leader = Contender::spawn(start("a")?)?;
    leader.until(started).await?;
    let mut candidate = Contender::spawn(start("b")?)?;
    let deadline = Instant::now() + PATIENCE;
    while observer.queue(name, QueueKind::Election).await?.len() < 2 {
        if Instant::now() > deadline {
            return Err("the candidate never campaigned".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = Instant::now();
    match stop {
        Stop::Kill => leader.signal(nix::sys::signal::Signal::SIGKILL)?,
        Stop::Graceful if curator => {
            let mut stdin = leader.child.stdin.take().ok_or("no stdin")?;
            stdin.write_all(b"\n").await?;
        }
        Stop::Graceful => leader.signal(nix::sys::signal::Signal::SIGTERM)?,
    }
    candidate.until(started).await?;
    let took = stopped.elapsed();
    let _ = tokio::time::timeout(PATIENCE, leader.child.wait()).await;
    candidate.stop(curator).await?;
    // The next round starts on an empty election (a killed leader's entry expires).
    while !observer.queue(name, QueueKind::Election).await?.is_empty() {
        if Instant::now() > deadline + PATIENCE {
            return Err("the election never emptied".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(took)
}

/// Measures every system, backend and way of stopping, `rounds` times each. `peers`: also
/// Curator's LeaderLatch.
pub async fn measure(
    etcd: &str,
    zk: &str,
    rounds: usize,
    peers: bool,
) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    for (backend, url) in [
        ("etcd", format!("etcd://{etcd}/{}", unique("failover"))),
        ("zookeeper", format!("zk://{zk}/{}", unique("failover"))),
    ] {
        let observer = Client::connect_lazy(&url).await?;
        for stop in [Stop::Graceful, Stop::Kill] {
            eprintln!("failover: fairlock elect, {backend}, {}", stop.name(false));
            let name = "leader";
            let start = |value: &str| elect(&url, name, value);
            let mut samples = Vec::new();
            for _ in 0..rounds {
                samples.push(round(&observer, name, &start, "leading", stop, false).await?);
            }
            rows.push(Row {
                system: "fairlock elect (CLI)",
                backend,
                stop: stop.name(false),
                samples,
            });
        }
        if backend == "zookeeper" && peers {
            let base = unique("failover-curator");
            let url = format!("zk://{zk}/{base}");
            let observer = Client::connect_lazy(&url).await?;
            let path = format!("/{base}/leader");
            for stop in [Stop::Graceful, Stop::Kill] {
                eprintln!("failover: Curator LeaderLatch, {}", stop.name(true));
                let start = |id: &str| latch(zk, &path, id);
                let mut samples = Vec::new();
                for _ in 0..rounds {
                    samples.push(round(&observer, "leader", &start, "acquired", stop, true).await?);
                }
                rows.push(Row {
                    system: "Curator 5.4 LeaderLatch",
                    backend: "zookeeper",
                    stop: stop.name(true),
                    samples,
                });
            }
            observer.close().await?;
        }
        observer.close().await?;
    }
    Ok(rows)
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// The markers around the section in docs/BENCHMARKS.md, which `fairlock-bench failover`
/// replaces.
pub const BEGIN: &str = "<!-- failover: generated by fairlock-bench failover -->";
pub const END: &str = "<!-- end of failover -->";

/// The section, between its markers.
pub fn markdown(rows: &[Row], date: &str) -> String {
    let mut md =
        format!("{BEGIN}\n## Failover: from a leader's stop to the next leader's start\n\n");
    let _ = write!(
        md,
        "Two candidates, each a process of its own, on the local single-node servers; the \
         leader is stopped once the candidate has campaigned, and the time runs until the \
         candidate's command (`fairlock elect … -- sh -c 'echo leading; …'`) or Curator's \
         `await()` reports that it leads. Session TTL {TTL_SECS} s (etcd lease; ZooKeeper \
         session timeout, also Curator's), the servers' minimum, so a killed leader is \
         replaced as soon as they allow. Run of {date}; reproduce with `scripts/bench \
         failover` (or `--rounds N`).\n\n"
    );
    md.push_str("| system | backend | leader stopped by | rounds | p50 ms | min ms | max ms |\n|---|---|---|---|---|---|---|\n");
    for row in rows {
        let mut samples = row.samples.clone();
        samples.sort();
        let (Some(min), Some(max)) = (samples.first(), samples.last()) else {
            continue;
        };
        let p50 = samples[samples.len() / 2];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.system,
            row.backend,
            row.stop,
            samples.len(),
            ms(p50),
            ms(*min),
            ms(*max)
        );
    }
    md.push_str(
        "| client-go leaderelection (documented defaults, not measured) | Kubernetes Lease | graceful, `ReleaseOnCancel: true` | - | ≤ 2000 (the next retry) | - | - |\n\
         | client-go leaderelection (documented defaults, not measured) | Kubernetes Lease | crash (or graceful without `ReleaseOnCancel`, the default) | - | 15000-17000 | - | - |\n",
    );
    md.push_str(
        "\nclient-go's defaults are a 15 s lease, a 10 s renew deadline and a 2 s retry \
         period: candidates poll the Lease object every 2 s, so after a crash the next \
         leader starts once the lease has run out and a retry comes round, 15-17 s later; \
         after a release, at the next retry.\n",
    );
    md.push_str(END);
    md.push('\n');
    md
}
