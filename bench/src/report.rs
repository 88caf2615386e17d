//! Results: the table in docs/BENCHMARKS.md, the CSV, the plot, and the verdict on each
//! target, all from the numbers of one run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::systems::{Sample, System};
use crate::waiters::WaitersResult;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Uncontended,
    Contended(usize),
    Waiters(usize),
}

pub struct Measurement {
    pub system: String,
    pub backend: &'static str,
    pub is_floor: bool,
    pub scenario: Scenario,
    pub ops: usize,
    pub p50: Duration,
    pub p99: Duration,
    /// Acquire+release pairs (uncontended) or hand-offs (contended, waiters) per second.
    pub rate: f64,
    /// The client process's CPU time per timed operation.
    pub cpu_per_op: Duration,
    pub waiters: Option<WaitersResult>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl Measurement {
    fn from_sample(system: &System, scenario: Scenario, mut sample: Sample) -> Self {
        sample.latencies.sort_unstable();
        let ops = sample.latencies.len();
        Measurement {
            system: system.name(),
            backend: system.backend(),
            is_floor: system.is_floor(),
            scenario,
            ops,
            p50: percentile(&sample.latencies, 0.50),
            p99: percentile(&sample.latencies, 0.99),
            rate: ops as f64 / sample.elapsed.as_secs_f64().max(1e-9),
            cpu_per_op: sample.cpu / ops.max(1) as u32,
            waiters: None,
        }
    }

    pub fn uncontended(system: &System, sample: Sample) -> Self {
        Measurement::from_sample(system, Scenario::Uncontended, sample)
    }

    pub fn contended(system: &System, sessions: usize, sample: Sample) -> Self {
        Measurement::from_sample(system, Scenario::Contended(sessions), sample)
    }

    pub fn waiters(system: &System, count: usize, result: WaitersResult) -> Self {
        Measurement {
            system: system.name(),
            backend: system.backend(),
            is_floor: false,
            scenario: Scenario::Waiters(count),
            ops: count,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            rate: count as f64 / result.drain.as_secs_f64().max(1e-9),
            cpu_per_op: result.drain_cpu / count.max(1) as u32,
            waiters: Some(result),
        }
    }
}

pub struct Run {
    measurements: Vec<Measurement>,
    environment: Vec<(String, String)>,
    /// Against the 3-node clusters: its own title and analysis, and no targets (they are
    /// judged on single nodes).
    pub cluster: bool,
}

/// The date and time now (UTC), as the environment list shows it.
pub fn today() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M"])
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

impl Run {
    pub fn new(etcd: &str, zk: &str) -> Self {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
            })
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or("unknown".into(), |kib| {
                format!("{:.1} GiB", kib as f64 / 1048576.0)
            });
        let zk_jar = std::fs::read_dir("/usr/share/java")
            .ok()
            .and_then(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .find(|n| n.starts_with("zookeeper-3") && n.ends_with(".jar"))
            })
            .unwrap_or_else(|| "unknown".into());
        let environment = vec![
            ("date (UTC)".into(), command_output("date", &["-u", "+%Y-%m-%d %H:%M"])),
            ("machine".into(), format!(
                "{} cores, {memory}, {}",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                command_output("uname", &["-sr"])
            )),
            ("fairlock".into(), format!("commit {}", command_output("git", &["describe", "--always", "--dirty"]))),
            ("etcd".into(), format!("{} at {etcd}", command_output("etcd", &["--version"]))),
            ("ZooKeeper".into(), format!("{zk_jar} at {zk}")),
            ("peers".into(), "etcd-client 0.21 (Lock RPC), zookeeper-client 0.11, Curator 5.4.0 (Debian), kazoo 2.11.0 (PyPI)".into()),
        ];
        Run {
            measurements: Vec::new(),
            environment,
            cluster: false,
        }
    }

    pub fn push(&mut self, measurement: Measurement) {
        self.measurements.push(measurement);
    }

    fn find(
        &self,
        scenario: Scenario,
        pred: impl Fn(&Measurement) -> bool,
    ) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| m.scenario == scenario && pred(m))
    }

    fn uncontended(&self, system: &str) -> Option<&Measurement> {
        self.find(Scenario::Uncontended, |m| m.system == system)
    }

    fn floor(&self, backend: &str) -> Option<&Measurement> {
        self.find(Scenario::Uncontended, |m| {
            m.is_floor && m.backend == backend
        })
    }

    pub fn csv(&self) -> String {
        let mut out = String::from(
            "scenario,size,system,backend,ops,p50_ms,p99_ms,rate_per_s,cpu_us_per_op,wakeups_per_release,reads_per_release,server_notifications_per_release,peak_rss_mib,drain_s\n",
        );
        for m in &self.measurements {
            let (scenario, size) = match m.scenario {
                Scenario::Uncontended => ("uncontended", 1),
                Scenario::Contended(s) => ("contended", s),
                Scenario::Waiters(w) => ("waiters", w),
            };
            let w = m.waiters.as_ref();
            let per = |x: u64| {
                w.map_or(String::new(), |w| {
                    format!("{:.3}", x as f64 / w.releases as f64)
                })
            };
            let _ = writeln!(
                out,
                "{scenario},{size},{},{},{},{},{},{:.1},{},{},{},{},{},{}",
                m.system,
                m.backend,
                m.ops,
                ms(m.p50),
                ms(m.p99),
                m.rate,
                us(m.cpu_per_op),
                w.map_or(String::new(), |w| per(w.wakeups)),
                w.map_or(String::new(), |w| per(w.queue_reads)),
                w.and_then(|w| w.server_notifications)
                    .map_or(String::new(), per),
                w.map_or(String::new(), |w| format!(
                    "{:.1}",
                    w.peak_rss_kib as f64 / 1024.0
                )),
                w.map_or(String::new(), |w| format!("{:.2}", w.drain.as_secs_f64())),
            );
        }
        out
    }

    /// The document: this run's tables, then `sections` (made elsewhere), then the targets;
    /// `repeats` are later runs of the judged scenarios, for the spread.
    pub fn markdown(&self, svg: &Path, sections: &str, repeats: &[Run]) -> String {
        let mut md = if self.cluster {
            String::from("# Benchmarks on 3-node clusters\n\nThe scenarios of docs/BENCHMARKS.md on the 3-node etcd cluster and the 3-node ZooKeeper ensemble of `scripts/services cluster` (every member on this machine, over loopback), so that every write is replicated to a quorum and fsynced on each member. Every client, fairlock's and the peers', talks to member 1. Generated by `scripts/bench cluster` (`fairlock-bench --cluster`); ")
        } else {
            String::from("# Benchmarks\n\nGenerated by `scripts/bench` (`fairlock-bench`); ")
        };
        md.push_str("every number below comes from one run on the same servers. ");
        md.push_str("Latencies are medians (p50) and 99th percentiles (p99); \"× floor\" divides by the raw floor's p50 on the same backend.\n\n");
        for (k, v) in &self.environment {
            let _ = writeln!(md, "- **{k}**: {v}");
        }

        md.push_str("\n## Uncontended acquire + release\n\nOne session, one lock, no one else: the time of an acquire+release pair. The in-process systems are measured in interleaved blocks of 10 pairs (drift hits them alike); the peers run after them. The \"raw\" rows issue fairlock's exact requests without fairlock: they separate the cost of the requests from the cost of the library. Client CPU is the user+system time of the client's process (every thread: Curator's includes the JVM's JIT and GC) over the timed pairs, per pair; the in-process systems' is the benchmark process's over their own blocks.\n\n");
        md.push_str("| system | backend | p50 ms | p99 ms | pairs/s | × floor | × etcd Lock RPC | client CPU µs/pair |\n|---|---|---|---|---|---|---|---|\n");
        let lock_rpc = self.uncontended("etcd Lock RPC (etcd-client)");
        for m in self
            .measurements
            .iter()
            .filter(|m| m.scenario == Scenario::Uncontended)
        {
            let floor = self.floor(m.backend).map_or("-".into(), |f| {
                format!("{:.2}", m.p50.as_secs_f64() / f.p50.as_secs_f64())
            });
            let rpc = match (m.backend, lock_rpc) {
                ("etcd", Some(r)) => format!("{:.2}", m.p50.as_secs_f64() / r.p50.as_secs_f64()),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {floor} | {rpc} | {} |",
                m.system,
                m.backend,
                ms(m.p50),
                ms(m.p99),
                m.rate,
                us(m.cpu_per_op)
            );
        }

        md.push_str("\n## Contended hand-offs\n\nN sessions (separate clients, in one process) take turns on one lock; latency is the wait for each acquisition, after 5 untimed acquisitions per session. Client CPU is the process's user+system time over the timed part, per hand-off (a release, the next waiter's wake-up and its acquisition).\n\n");
        md.push_str("| system | backend | sessions | hand-offs/s | × own uncontended rate | wait p50 ms | wait p99 ms | client CPU µs/hand-off |\n|---|---|---|---|---|---|---|---|\n");
        for m in self
            .measurements
            .iter()
            .filter(|m| matches!(m.scenario, Scenario::Contended(_)))
        {
            let Scenario::Contended(sessions) = m.scenario else {
                continue;
            };
            let own = self
                .uncontended(&m.system)
                .map_or("-".into(), |u| format!("{:.2}", m.rate / u.rate));
            let _ = writeln!(
                md,
                "| {} | {} | {sessions} | {:.0} | {own} | {} | {} | {} |",
                m.system,
                m.backend,
                m.rate,
                ms(m.p50),
                ms(m.p99),
                us(m.cpu_per_op)
            );
        }
        let _ = writeln!(
            md,
            "\n![acquire latency vs contenders]({})\n",
            svg.file_name().map_or("latency.svg".into(), |f| format!(
                "bench/{}",
                f.to_string_lossy()
            ))
        );

        md.push_str("## Many waiters on one lock, one process\n\nOne client holds the lock; W tasks of the same client queue behind it; then the holder releases and each waiter, once it holds the lock, releases it at once. Counts are per release (W+1 releases). Client CPU (the process's user+system time): queueing, per waiter; idle, per waiter per second, over 2 s with every waiter queued and before the drain (the process's whole idle CPU divided by the waiters: an upper bound); the drain, per hand-off.\n\n");
        md.push_str("| system | waiters | queueing s | drain s | hand-offs/s | wake-ups / release | queue reads / release | server deletion notifications / release | peak RSS MiB | CPU µs: queueing per waiter / idle per waiter per s / per hand-off |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for m in self
            .measurements
            .iter()
            .filter(|m| matches!(m.scenario, Scenario::Waiters(_)))
        {
            let (Scenario::Waiters(count), Some(w)) = (m.scenario, &m.waiters) else {
                continue;
            };
            let per = |x: u64| format!("{:.3}", x as f64 / w.releases as f64);
            let per_waiter = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
            let _ = writeln!(
                md,
                "| {} | {count} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {:.1} | {:.0} / {:.2} / {} |",
                m.system,
                w.enqueue.as_secs_f64(),
                w.drain.as_secs_f64(),
                m.rate,
                per(w.wakeups),
                per(w.queue_reads),
                w.server_notifications.map_or("-".into(), per),
                w.peak_rss_kib as f64 / 1024.0,
                per_waiter(w.enqueue_cpu),
                per_waiter(w.idle_cpu_per_s),
                us(m.cpu_per_op),
            );
        }
        md.push_str(&self.cost_per_waiter());
        md.push('\n');
        md.push_str(sections);
        if self.cluster {
            // The targets are judged on single nodes; what a cluster changes is explained.
            if let Ok(analysis) = std::fs::read_to_string("docs/bench/cluster/ANALYSIS.md") {
                md.push('\n');
                md.push_str(&analysis);
            }
            return md;
        }
        md.push_str("\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
        for (target, measured, met) in self.verdicts() {
            let _ = writeln!(
                md,
                "| {target} | {measured} | {} |",
                if met { "met" } else { "**not met**" }
            );
        }
        md.push_str(&self.spread(repeats));
        if let Ok(analysis) = std::fs::read_to_string("docs/bench/ANALYSIS.md") {
            md.push('\n');
            md.push_str(&analysis);
        }
        md
    }

    /// What each queued waiter adds to a hand-off, from the smallest and the largest drain:
    /// a hand-off with n waiters queued taking a + b·n, a drain of W takes a·W + b·W²/2.
    fn cost_per_waiter(&self) -> String {
        let mut md = String::new();
        let mut systems: Vec<&str> = Vec::new();
        for m in &self.measurements {
            if matches!(m.scenario, Scenario::Waiters(_)) && !systems.contains(&m.system.as_str()) {
                systems.push(&m.system);
            }
        }
        for system in systems {
            let drains: Vec<(f64, f64)> = self
                .measurements
                .iter()
                .filter(|m| m.system == system)
                .filter_map(|m| match (m.scenario, &m.waiters) {
                    (Scenario::Waiters(n), Some(w)) => Some((n as f64, w.drain.as_secs_f64())),
                    _ => None,
                })
                .collect();
            let (Some(&(w1, d1)), Some(&(w2, d2))) = (
                drains.iter().min_by(|x, y| x.0.total_cmp(&y.0)),
                drains.iter().max_by(|x, y| x.0.total_cmp(&y.0)),
            ) else {
                continue;
            };
            if w2 <= w1 {
                continue;
            }
            let b = 2.0 * (d2 / w2 - d1 / w1) / (w2 - w1);
            let a = d1 / w1 - b * w1 / 2.0;
            let _ = writeln!(
                md,
                "- {system}: a hand-off takes {:.2} ms plus {:.2} µs per waiter still queued \
                 (fitted to the drains of {w1:.0} and {w2:.0}: with {w2:.0} queued, {:.2} ms)",
                a * 1e3,
                b * 1e6,
                (a + b * w2) * 1e3,
            );
        }
        if !md.is_empty() {
            md.insert_str(0, "\nCost per waiter: the woken waiter reads the queue again to learn whether anyone is still ahead of it (etcd: a range the server evaluates over every key under the lock's prefix; ZooKeeper: the directory's whole listing), so a hand-off's time grows with the queue's length.\n\n");
        }
        md
    }

    /// Each judged target in this run and in the repeats, and in how many of them it was met.
    fn spread(&self, repeats: &[Run]) -> String {
        if repeats.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "\n### Spread over {} runs\n\nAfter all the other scenarios, the uncontended and contended ones ran again, {} time{} more, on the same servers: each target's figure in every run, and in how many runs it was met.\n\n| target | this run | later runs | met in |\n|---|---|---|---|\n",
            repeats.len() + 1,
            repeats.len(),
            if repeats.len() == 1 { "" } else { "s" }
        );
        let later: Vec<Vec<(String, String, bool)>> = repeats.iter().map(Run::verdicts).collect();
        for (target, measured, met) in self.verdicts() {
            let mut runs = 1;
            let mut count = usize::from(met);
            let mut figures = Vec::new();
            for verdicts in &later {
                if let Some((_, figure, met)) = verdicts.iter().find(|(t, _, _)| *t == target) {
                    runs += 1;
                    count += usize::from(*met);
                    figures.push(figure.clone());
                }
            }
            if runs == 1 {
                continue;
            }
            let _ = writeln!(
                md,
                "| {target} | {measured} | {} | {count} of {runs} |",
                figures.join("; ")
            );
        }
        md
    }

    /// Each target of the benchmark issue, with the figure that decides it.
    pub fn verdicts(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for backend in ["etcd", "zookeeper"] {
            if let (Some(f), Some(floor)) = (
                self.uncontended(&format!("fairlock/{backend}")),
                self.floor(backend),
            ) {
                let ratio = f.p50.as_secs_f64() / floor.p50.as_secs_f64();
                // ZooKeeper's acquire is one round trip (create and listing pipelined): its
                // target is the tighter one.
                let target = if backend == "zookeeper" { 1.05 } else { 1.10 };
                out.push((
                    format!("uncontended ≤ {target:.2}× floor ({backend})"),
                    format!("{ratio:.2}× ({} ms vs {} ms)", ms(f.p50), ms(floor.p50)),
                    ratio <= target,
                ));
            }
        }
        if let (Some(f), Some(rpc)) = (
            self.uncontended("fairlock/etcd"),
            self.uncontended("etcd Lock RPC (etcd-client)"),
        ) {
            let ratio = f.p50.as_secs_f64() / rpc.p50.as_secs_f64();
            out.push((
                "uncontended ≤ 0.85× etcd Lock RPC pair".into(),
                format!("{ratio:.2}× ({} ms vs {} ms)", ms(f.p50), ms(rpc.p50)),
                ratio <= 0.85,
            ));
        }
        // Every contended size with more than one session: the rate holds up, and no
        // hand-off stalls (p99 within 3x p50; not for memory, whose waits are microseconds
        // of scheduler noise).
        for backend in ["etcd", "zookeeper", "memory"] {
            let system = format!("fairlock/{backend}");
            let Some(u) = self.uncontended(&system) else {
                continue;
            };
            for m in self.measurements.iter().filter(|m| m.system == system) {
                let Scenario::Contended(sessions @ 2..) = m.scenario else {
                    continue;
                };
                let ratio = m.rate / u.rate;
                out.push((
                    format!("contended hand-offs/s ({sessions} sessions) ≥ 0.8× uncontended rate ({backend})"),
                    format!("{ratio:.2}× ({:.0}/s vs {:.0}/s)", m.rate, u.rate),
                    ratio >= 0.8,
                ));
                if backend != "memory" {
                    let spread = m.p99.as_secs_f64() / m.p50.as_secs_f64().max(1e-9);
                    out.push((
                        format!("contended wait p99 ≤ 3× p50 ({sessions} sessions, {backend})"),
                        format!("{spread:.1}× ({} ms vs {} ms)", ms(m.p99), ms(m.p50)),
                        spread <= 3.0,
                    ));
                }
            }
        }
        for m in self.measurements.iter().filter(|m| m.waiters.is_some()) {
            let (Scenario::Waiters(count), Some(w)) = (m.scenario, &m.waiters) else {
                continue;
            };
            // The holder's release and every waiter's but the last wake exactly one waiter.
            out.push((
                format!(
                    "exactly one wake-up per release, {count} waiters ({})",
                    m.backend
                ),
                format!("{} wake-ups for {count} hand-offs", w.wakeups),
                w.wakeups == count as u64,
            ));
            if count >= 10_000 {
                let mib = w.peak_rss_kib as f64 / 1024.0;
                out.push((
                    format!("{count} waiters under 64 MiB peak RSS ({})", m.backend),
                    format!("{mib:.1} MiB"),
                    mib < 64.0,
                ));
            }
        }
        for peer in ["Curator 5.4 InterProcessMutex", "kazoo 2.11 Lock"] {
            for m in self.measurements.iter().filter(|m| {
                m.system == "fairlock/zookeeper" && matches!(m.scenario, Scenario::Contended(_))
            }) {
                if let Some(p) = self.find(m.scenario, |p| p.system == peer) {
                    let Scenario::Contended(sessions) = m.scenario else {
                        continue;
                    };
                    out.push((
                        format!(
                            "ahead of {peer}, {sessions} session{}",
                            if sessions == 1 { "" } else { "s" }
                        ),
                        format!("{:.0}/s vs {:.0}/s", m.rate, p.rate),
                        m.rate > p.rate,
                    ));
                }
            }
        }
        out
    }
}

/// Acquire latency (p50) against the number of contending sessions, one line per system.
pub fn plot(run: &Run, path: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use plotters::prelude::*;

    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for m in &run.measurements {
        let Scenario::Contended(sessions) = m.scenario else {
            continue;
        };
        let point = (sessions as f64, m.p50.as_secs_f64() * 1000.0);
        match series.iter_mut().find(|(name, _)| *name == m.system) {
            Some((_, points)) => points.push(point),
            None => series.push((m.system.clone(), vec![point])),
        }
    }
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Acquire latency (p50) vs contending sessions",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("sessions on one lock")
        .y_desc("wait for the lock, p50 (ms)")
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Replaces the section from `begin` to `end` in `text` (or appends it).
pub fn splice(text: &str, section: &str, begin: &str, end: &str) -> String {
    match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let after = &text[e + end.len()..];
            format!("{}{}{}", &text[..b], section.trim_end(), after)
        }
        _ => format!(
            "{}\n{section}",
            text.trim_end_matches('\n').to_owned() + "\n"
        ),
    }
}
