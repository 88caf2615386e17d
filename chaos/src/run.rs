//! The runner: starts the cluster (through `scripts/services cluster`), the worker
//! processes and the nemesis, then collects the final state for the checker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fairlock::{Client, QueueKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::event::{now_us, Event, Tail};
use crate::proxy::Proxy;

/// Options of `fairlock-chaos run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Backends to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "etcd,zookeeper")]
    pub backends: Vec<String>,
    /// Directory for the logs (one subdirectory per backend; emptied first).
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// Clients (sessions) per worker.
    #[arg(long, default_value_t = 3)]
    pub clients: u32,
    /// Fault time per backend: phases repeat until it is used up. 0: each fault once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub duration: Duration,
    /// How long a killed member stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub down: Duration,
    /// Quiet time after each fault is healed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub recover: Duration,
    /// Quiet time after the last fault in which every worker must make progress.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    pub calm: Duration,
    /// etcd lease TTL of the workers' sessions.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub etcd_ttl: Duration,
    /// ZooKeeper session timeout of the workers' sessions.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "6s")]
    pub zk_session_timeout: Duration,
    /// Target: hand-offs resume within this long after a member is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub takeover_target: Duration,
    /// Target: under a partition, lost() fires at least this long before the next holder
    /// acquires. Default: the workers' safety margin (fairlock's default, a tenth of the
    /// TTL), which fairlock promises to keep.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lost_margin: Option<Duration>,
    /// Write the Markdown report (docs/RELIABILITY.md) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// What was measured (e.g. the commit), for the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// The services script (cluster mode).
    #[arg(long, default_value = "scripts/services")]
    pub services: PathBuf,
    /// Stop the clusters (and delete their data) when done.
    #[arg(long)]
    pub stop_cluster: bool,
}

/// One fault of the nemesis, as written to `nemesis.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Phase {
    /// leader-kill, follower-kill, holder-pause, holder-kill, partition, pause+leader-kill.
    pub kind: String,
    /// When the fault was injected (µs since the epoch).
    pub t_fault: u64,
    /// When it was healed (member restarted, worker continued, proxy thawed).
    pub t_heal: u64,
    /// End of the phase (after the quiet time).
    pub t_end: u64,
    /// The cluster member hit, if any.
    pub member: Option<u32>,
    /// The worker hit, if any (its generation at the time).
    pub worker: Option<(u32, u32)>,
    /// Free text: what the nemesis saw.
    pub note: String,
}

/// Facts the runner collects for the checker (`run.json`).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct RunInfo {
    pub backend: String,
    pub url: String,
    pub lock: String,
    pub counter_key: String,
    pub ttl_ms: u64,
    pub workers: u32,
    pub clients: u32,
    pub takeover_target_ms: u64,
    pub lost_margin_ms: u64,
    /// The run's settings, for the report.
    pub duration_ms: u64,
    pub down_ms: u64,
    pub recover_ms: u64,
    pub label: String,
    pub t_start: u64,
    pub calm_start: u64,
    pub calm_end: u64,
    pub t_stop: u64,
    /// Final counter value, if it could be read.
    pub counter: Option<u64>,
    /// Queue entries still there once every session had ended.
    pub queue_left: Vec<String>,
    /// Problems of the harness itself (reads that failed, etc.).
    pub harness_errors: Vec<String>,
    /// Per worker process: (id, generation, exit status text, killed by the nemesis).
    pub exits: Vec<(u32, u32, String, bool)>,
    /// Workers that did not exit within 30 s of being told to stop.
    pub hung: Vec<(u32, u32)>,
    /// stderr lines of workers that mention a panic.
    pub panics: Vec<String>,
}

struct WorkerProc {
    id: u32,
    generation: u32,
    child: Child,
    stderr: PathBuf,
    killed: bool,
}

struct Harness {
    args: RunArgs,
    system: &'static str,
    dir: PathBuf,
    info: RunInfo,
    direct_url: String,
    proxied_url: String,
    proxies: Vec<Proxy>,
    procs: Vec<WorkerProc>,
    exited: Vec<WorkerProc>,
    tails: HashMap<(u32, u32), Tail>,
    /// Open holds: (worker, generation, client) -> acquired at.
    open: HashMap<(u32, u32, u32), u64>,
    phases: Vec<Phase>,
}

fn services(script: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(script)
        .arg("cluster")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "scripts/services cluster {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Retries `f` for up to `limit` (the harness's own requests must survive the faults it
/// injects; their failures are not what is measured).
async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub async fn run_backend(args: &RunArgs, backend: &str) -> Result<PathBuf, String> {
    let (system, scheme, ttl, ttl_param) = match backend {
        "etcd" => ("etcd", "etcd", args.etcd_ttl, "ttl"),
        "zookeeper" | "zk" => (
            "zookeeper",
            "zk",
            args.zk_session_timeout,
            "session_timeout",
        ),
        other => return Err(format!("unknown backend {other} (etcd or zookeeper)")),
    };
    let dir = args.out.join(system);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("chaos[{system}]: starting the 3-node cluster");
    services(&args.services, &["start", system])?;
    let endpoints = services(&args.services, &["endpoints", system])?;

    let run_id = format!("{:x}", now_us());
    // A data key is the same on every backend.
    let (prefix, counter_key) = (
        "fairlock-chaos".to_owned(),
        format!("fairlock-chaos-data/{run_id}/counter"),
    );
    let lock = format!("chaos-{run_id}");
    let query = format!("{ttl_param}={}ms", ttl.as_millis());
    let direct_url = format!("{scheme}://{endpoints}/{prefix}?{query}");
    let mut proxies = Vec::new();
    for endpoint in endpoints.split(',') {
        proxies.push(
            Proxy::start(endpoint)
                .await
                .map_err(|e| format!("proxy: {e}"))?,
        );
    }
    let proxied: Vec<String> = proxies.iter().map(Proxy::endpoint).collect();
    let proxied_url = format!("{scheme}://{}/{prefix}?{query}", proxied.join(","));

    let info = RunInfo {
        backend: system.to_owned(),
        url: direct_url.clone(),
        lock: lock.clone(),
        counter_key: counter_key.clone(),
        ttl_ms: ttl.as_millis() as u64,
        workers: args.workers,
        clients: args.clients,
        takeover_target_ms: args.takeover_target.as_millis() as u64,
        lost_margin_ms: args.lost_margin.unwrap_or(ttl / 10).as_millis() as u64,
        duration_ms: args.duration.as_millis() as u64,
        down_ms: args.down.as_millis() as u64,
        recover_ms: args.recover.as_millis() as u64,
        label: args.label.clone(),
        t_start: now_us(),
        ..RunInfo::default()
    };
    let mut h = Harness {
        args: args.clone(),
        system,
        dir: dir.clone(),
        info,
        direct_url,
        proxied_url,
        proxies,
        procs: Vec::new(),
        exited: Vec::new(),
        tails: HashMap::new(),
        open: HashMap::new(),
        phases: Vec::new(),
    };
    let result = h.drive().await;
    // Whatever happened: no worker outlives the run (and these kills are no crash).
    for mut p in std::mem::take(&mut h.procs) {
        if let Ok(None) = p.child.try_wait() {
            p.killed = true;
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
        h.exited.push(p);
    }
    if let Err(e) = &result {
        h.info.harness_errors.push(e.clone());
    }
    h.write_files()?;
    if args.stop_cluster {
        services(&args.services, &["stop", system])?;
    }
    result.map(|()| dir)
}

impl Harness {
    async fn drive(&mut self) -> Result<(), String> {
        let raw = self.raw_client().await?;
        let key = self.info.counter_key.clone();
        retry(Duration::from_secs(30), || async {
            raw.put(&key, "0").await.map_err(|e| e.to_string())
        })
        .await?;
        let stop_file = self.dir.join("stop");
        for id in 0..self.args.workers {
            self.spawn_worker(id, 0, &stop_file)?;
        }
        // Warm-up: every worker has acquired at least once.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < self.args.workers as usize && Instant::now() < deadline {
            for e in self.poll() {
                if e.ev == "acquired" {
                    seen.insert(e.w);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if seen.len() < self.args.workers as usize {
            return Err(format!(
                "warm-up: only workers {seen:?} acquired within 30 s"
            ));
        }
        eprintln!("chaos[{}]: workers running; nemesis starts", self.system);

        let kinds = [
            "leader-kill",
            "follower-kill",
            "holder-pause",
            "holder-kill",
            "partition",
            "pause+leader-kill",
        ];
        let started = Instant::now();
        let mut round = 0usize;
        loop {
            for kind in kinds {
                let phase = self.phase(kind, &stop_file).await?;
                eprintln!(
                    "chaos[{}]: {kind}: {} ({:.1} s)",
                    self.system,
                    phase.note,
                    (phase.t_end - phase.t_fault) as f64 / 1e6
                );
                self.phases.push(phase);
            }
            round += 1;
            if started.elapsed() >= self.args.duration {
                break;
            }
        }
        eprintln!(
            "chaos[{}]: {round} round(s) of faults done; calm",
            self.system
        );

        self.info.calm_start = now_us();
        self.sleep_polling(self.args.calm).await;
        self.info.calm_end = now_us();

        // Stop the workers; each must exit within 30 s.
        self.info.t_stop = now_us();
        std::fs::write(&stop_file, b"").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|p| matches!(p.child.try_wait(), Ok(None)))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for mut p in std::mem::take(&mut self.procs) {
            if let Ok(None) = p.child.try_wait() {
                self.info.hung.push((p.id, p.generation));
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
            self.exited.push(p);
        }
        self.poll();

        // Every session has ended (closed, or expired after the TTL): no entry may be left.
        let lock = self.info.lock.clone();
        let deadline =
            Instant::now() + Duration::from_millis(self.info.ttl_ms) + Duration::from_secs(15);
        loop {
            match raw.queue(&lock, QueueKind::Lock).await {
                Ok(entries) if entries.is_empty() => {
                    self.info.queue_left.clear();
                    break;
                }
                Ok(entries) => {
                    self.info.queue_left = entries
                        .iter()
                        .map(|e| format!("{} (session {})", e.key, e.session))
                        .collect()
                }
                Err(e) => self.info.queue_left = vec![format!("queue not readable: {e}")],
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let key = self.info.counter_key.clone();
        match retry(Duration::from_secs(30), || async {
            raw.get(&key).await.map_err(|e| e.to_string())
        })
        .await
        {
            Ok(Some(v)) => self.info.counter = String::from_utf8_lossy(&v).trim().parse().ok(),
            Ok(None) => self.info.harness_errors.push("counter key missing".into()),
            Err(e) => self
                .info
                .harness_errors
                .push(format!("counter not readable: {e}")),
        }
        let _ = raw.close().await;
        Ok(())
    }

    async fn raw_client(&self) -> Result<Client, String> {
        let url = self.direct_url.clone();
        retry(Duration::from_secs(30), || async {
            Client::connect(&url).await.map_err(|e| e.to_string())
        })
        .await
    }

    fn spawn_worker(&mut self, id: u32, generation: u32, stop_file: &Path) -> Result<(), String> {
        let log = self.dir.join(format!("worker-{id}-{generation}.jsonl"));
        let stderr = self.dir.join(format!("worker-{id}-{generation}.stderr"));
        // Worker 0 reaches the cluster through the freezable proxies.
        let url = if id == 0 {
            &self.proxied_url
        } else {
            &self.direct_url
        };
        let err_file = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("worker")
            .args(["--url", url, "--id", &id.to_string()])
            .args(["--generation", &generation.to_string()])
            .args(["--clients", &self.args.clients.to_string()])
            .args([
                "--lock",
                &self.info.lock,
                "--counter",
                &self.info.counter_key,
            ])
            .arg("--log")
            .arg(&log)
            .arg("--stop-file")
            .arg(stop_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("spawn worker: {e}"))?;
        self.tails.insert((id, generation), Tail::new(&log));
        self.procs.push(WorkerProc {
            id,
            generation,
            child,
            stderr,
            killed: false,
        });
        Ok(())
    }

    /// Reads new events of every worker and keeps track of open holds.
    fn poll(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        for tail in self.tails.values_mut() {
            for e in tail.read_new() {
                let k = (e.w, e.g, e.c);
                match e.ev.as_str() {
                    "acquired" => {
                        self.open.insert(k, e.t);
                    }
                    "release_sent" | "lost" => {
                        self.open.remove(&k);
                    }
                    _ => {}
                }
                all.push(e);
            }
        }
        all
    }

    async fn sleep_polling(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.poll();
            tokio::time::sleep(Duration::from_millis(50).min(end - Instant::now())).await;
        }
    }

    /// Waits (up to 8 s) for a worker other than 0 whose client has held the lock for at
    /// least 25 ms (most likely a long piece of work, so a signal sent now lands while it
    /// holds); after 4 s any holder will do. Falls back to worker 1.
    async fn pick_holder(&mut self) -> (usize, bool) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            self.poll();
            let now = now_us();
            let min_us = if started.elapsed() < Duration::from_secs(4) {
                25_000
            } else {
                0
            };
            let procs = &self.procs;
            let found = self
                .open
                .iter()
                .filter(|((w, _, _), t)| *w != 0 && now.saturating_sub(**t) >= min_us)
                .find_map(|((w, g, _), _)| {
                    procs.iter().position(|p| p.id == *w && p.generation == *g)
                });
            if let Some(i) = found {
                return (i, true);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let i = self.procs.iter().position(|p| p.id == 1).unwrap_or(0);
        (i, false)
    }

    /// Waits (up to 8 s) until worker 0 has held for at least 25 ms; after 4 s, until it
    /// holds at all.
    async fn wait_worker0_holds(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            self.poll();
            let now = now_us();
            let min_us = if started.elapsed() < Duration::from_secs(4) {
                25_000
            } else {
                0
            };
            if self
                .open
                .iter()
                .any(|((w, _, _), t)| *w == 0 && now.saturating_sub(*t) >= min_us)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    async fn leader(&self) -> Result<u32, String> {
        let script = self.args.services.clone();
        let system = self.system;
        retry(Duration::from_secs(20), || {
            let script = script.clone();
            async move {
                services(&script, &["leader", system])?
                    .parse::<u32>()
                    .map_err(|e| e.to_string())
            }
        })
        .await
    }

    fn signal(&self, i: usize, signal: Signal) -> Result<(), String> {
        let pid = self.procs[i].child.id() as i32;
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("kill {pid}: {e}"))
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.info.ttl_ms)
    }

    async fn phase(&mut self, kind: &str, stop_file: &Path) -> Result<Phase, String> {
        let mut phase = Phase {
            kind: kind.to_owned(),
            ..Phase::default()
        };
        let script = self.args.services.clone();
        // Every member must be up before a fault: one that is not was hit by something
        // other than this nemesis, and the measurements would not mean what they say.
        // (Up to 20 s: a restarted member may still be catching up.)
        let started = Instant::now();
        loop {
            let status = services(&script, &["status", self.system])?;
            let bad = status
                .lines()
                .find(|l| !l.contains(": up") || l.contains("not serving"))
                .map(str::to_owned);
            match bad {
                None => break,
                Some(line) if started.elapsed() > Duration::from_secs(20) => {
                    return Err(format!(
                        "before {kind}: {line} (hit by something other than the nemesis?)"
                    ))
                }
                Some(_) => self.sleep_polling(Duration::from_secs(1)).await,
            }
        }
        // Long enough for the server to expire a silent session, and a bit more.
        let past_ttl = self.ttl() + Duration::from_secs(2);
        match kind {
            "leader-kill" | "follower-kill" => {
                let leader = self.leader().await?;
                let member = if kind == "leader-kill" {
                    leader
                } else {
                    leader % 3 + 1
                };
                phase.member = Some(member);
                phase.t_fault = now_us();
                services(&script, &["kill", self.system, &member.to_string()])?;
                self.sleep_polling(self.args.down).await;
                services(&script, &["restart", self.system, &member.to_string()])?;
                phase.t_heal = now_us();
                phase.note = format!("member {member} killed (leader was {leader}), restarted");
            }
            "holder-pause" => {
                let (i, holding) = self.pick_holder().await;
                let (w, g) = (self.procs[i].id, self.procs[i].generation);
                phase.worker = Some((w, g));
                phase.t_fault = now_us();
                self.signal(i, Signal::SIGSTOP)?;
                self.sleep_polling(past_ttl).await;
                self.signal(i, Signal::SIGCONT)?;
                phase.t_heal = now_us();
                phase.note = format!("worker {w} paused {past_ttl:?} (seen holding: {holding})");
            }
            "holder-kill" => {
                let (i, holding) = self.pick_holder().await;
                let (w, g) = (self.procs[i].id, self.procs[i].generation);
                phase.worker = Some((w, g));
                phase.t_fault = now_us();
                self.signal(i, Signal::SIGKILL)?;
                let mut p = self.procs.remove(i);
                let _ = p.child.wait();
                // Its holds end with it (no release will be logged).
                self.open.retain(|(ow, og, _), _| (*ow, *og) != (w, g));
                p.killed = true;
                self.exited.push(p);
                self.spawn_worker(w, g + 1, stop_file)?;
                phase.t_heal = phase.t_fault;
                self.sleep_polling(past_ttl).await;
                phase.note = format!("worker {w} killed (seen holding: {holding}), replaced");
            }
            "partition" => {
                let holding = self.wait_worker0_holds().await;
                let g = self.procs.iter().find(|p| p.id == 0).map(|p| p.generation);
                phase.worker = g.map(|g| (0, g));
                phase.t_fault = now_us();
                for p in &self.proxies {
                    p.freeze();
                }
                self.sleep_polling(past_ttl).await;
                for p in &self.proxies {
                    p.thaw();
                }
                phase.t_heal = now_us();
                phase.note = format!("worker 0 cut off {past_ttl:?} (seen holding: {holding})");
            }
            "pause+leader-kill" => {
                let (i, holding) = self.pick_holder().await;
                let (w, g) = (self.procs[i].id, self.procs[i].generation);
                phase.worker = Some((w, g));
                phase.t_fault = now_us();
                self.signal(i, Signal::SIGSTOP)?;
                let paused = Instant::now();
                self.sleep_polling(Duration::from_millis(500)).await;
                let leader = self.leader().await?;
                phase.member = Some(leader);
                services(&script, &["kill", self.system, &leader.to_string()])?;
                self.sleep_polling(self.args.down).await;
                services(&script, &["restart", self.system, &leader.to_string()])?;
                if let Some(rest) = past_ttl.checked_sub(paused.elapsed()) {
                    self.sleep_polling(rest).await;
                }
                self.signal(i, Signal::SIGCONT)?;
                phase.t_heal = now_us();
                phase.note = format!(
                    "worker {w} paused (seen holding: {holding}), leader {leader} killed meanwhile"
                );
            }
            other => return Err(format!("unknown fault {other}")),
        }
        self.sleep_polling(self.args.recover).await;
        phase.t_end = now_us();
        Ok(phase)
    }

    fn write_files(&mut self) -> Result<(), String> {
        let mut exits = Vec::new();
        for p in self.exited.iter_mut() {
            let status = match p.child.try_wait() {
                Ok(Some(s)) => s.to_string(),
                _ => "unknown".into(),
            };
            exits.push((p.id, p.generation, status, p.killed));
            if let Ok(text) = std::fs::read_to_string(&p.stderr) {
                for line in text.lines().filter(|l| l.contains("panicked")) {
                    self.info
                        .panics
                        .push(format!("worker {}-{}: {line}", p.id, p.generation));
                }
            }
        }
        self.info.exits = exits;
        let info = serde_json::to_string_pretty(&self.info).map_err(|e| e.to_string())?;
        std::fs::write(self.dir.join("run.json"), info).map_err(|e| e.to_string())?;
        let mut text = String::new();
        for phase in &self.phases {
            text.push_str(&serde_json::to_string(phase).map_err(|e| e.to_string())?);
            text.push('\n');
        }
        std::fs::write(self.dir.join("nemesis.jsonl"), text).map_err(|e| e.to_string())
    }
}
