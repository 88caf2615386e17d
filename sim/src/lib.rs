//! fairlock-sim: deterministic simulation testing of fairlock's queue algorithm.
//!
//! Each run puts fairlock's real etcd backend and queue algorithm (unchanged) against a
//! simulated etcd server behind a faulty network, on tokio's paused clock on one thread
//! (`fairlock::sim`). Everything a run does follows from its seed: the plan (`plan.rs`),
//! the actors' choices (`actors.rs`), the nemesis's faults (`nemesis.rs`) and the
//! network's delays and losses. Invariants are checked on every step (`check.rs`), and
//! liveness and cleanup at the end (`run.rs`). A failing seed runs again with its trace
//! on (`trace.rs`): the same run, now readable.
//!
//! ```text
//! fairlock-sim [--seeds N] [--from S] [--threads T] [--mutant NAME]   explore seeds
//! fairlock-sim --seed S [--trace-lines N]                             replay one, with its trace
//! fairlock-sim --mutants [--seeds N]                                  seeds until each mutant is caught
//! ```

mod actors;
mod check;
mod nemesis;
mod plan;
pub mod protocol;
mod run;
mod trace;

use std::time::{Duration, Instant};

pub use fairlock::sim::Mutant;

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// A past defect to put back for the run.
    pub mutant: Option<Mutant>,
    /// Keep the readable trace (a failing seed is traced on a second run anyway).
    pub trace: bool,
    /// How many of the trace's last lines an outcome keeps.
    pub trace_lines: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mutant: None,
            trace: false,
            trace_lines: 400,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub plan: String,
    /// The first invariant violated, if any.
    pub violation: Option<String>,
    /// A digest of the run's events: equal for two runs of one seed.
    pub digest: u64,
    /// The trace's last lines, if kept.
    pub trace: String,
    pub acquisitions: u64,
    pub writes: u64,
    /// Simulated time.
    pub simulated: Duration,
}

/// Runs `seed` on a fresh paused runtime on this thread.
pub fn run(seed: u64, options: &Options) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    // backon's jitter draws from this thread's generator.
    fastrand::seed(seed);
    fairlock::sim::mutate(options.mutant);
    let outcome = runtime.block_on(run::simulate(seed, options));
    drop(runtime);
    fairlock::sim::clear();
    outcome
}

/// Runs `seed`; if it fails, runs it again with the trace on (checking that the second
/// run is the same run) and returns that outcome.
pub fn run_traced_on_failure(seed: u64, options: &Options) -> Outcome {
    let first = run(seed, options);
    if first.violation.is_none() || options.trace {
        return first;
    }
    let traced = Options {
        trace: true,
        ..options.clone()
    };
    let mut second = run(seed, &traced);
    if second.digest != first.digest || second.violation != first.violation {
        second.violation = Some(format!(
            "NOT REPRODUCIBLE: first run: {:?} (digest {:x}); traced run: {:?} (digest {:x})",
            first.violation, first.digest, second.violation, second.digest
        ));
    }
    second
}

/// The summary of many seeds.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub acquisitions: u64,
    pub writes: u64,
    pub simulated: Duration,
    pub elapsed: Duration,
    /// The failed seeds' outcomes (traced).
    pub failures: Vec<Outcome>,
}

/// Runs seeds `from..from + count` on `threads` threads, stopping at the first failure if
/// `stop_at_first`.
pub fn explore(
    from: u64,
    count: u64,
    threads: usize,
    options: &Options,
    stop_at_first: bool,
) -> Summary {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    let started = Instant::now();
    let next = AtomicU64::new(from);
    let stop = AtomicBool::new(false);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= from + count || stop.load(Ordering::SeqCst) {
                    return;
                }
                let outcome = run_traced_on_failure(seed, options);
                let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                s.seeds += 1;
                s.acquisitions += outcome.acquisitions;
                s.writes += outcome.writes;
                s.simulated += outcome.simulated;
                if outcome.violation.is_some() {
                    s.failures.push(outcome);
                    if stop_at_first {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    summary.failures.sort_by_key(|o| o.seed);
    summary.elapsed = started.elapsed();
    summary
}

/// How to report a failed seed.
pub fn report(outcome: &Outcome, options: &Options) -> String {
    let mutant = options
        .mutant
        .map(|m| format!(" --mutant {}", m.name()))
        .unwrap_or_default();
    let env = options
        .mutant
        .map(|m| format!(" SIM_MUTANT={}", m.name()))
        .unwrap_or_default();
    format!(
        "seed {} FAILED: {}\n  plan: {}\n  replay: SIM_SEED={}{env} cargo test -p fairlock-sim --test seeds replay -- --nocapture\n      or: cargo run --release -p fairlock-sim -- --seed {}{mutant}\n--- trace (last lines) ---\n{}",
        outcome.seed,
        outcome.violation.as_deref().unwrap_or("?"),
        outcome.plan,
        outcome.seed,
        outcome.seed,
        outcome.trace
    )
}

/// The mutant named `name` (as [`Mutant::name`] gives it).
pub fn mutant(name: &str) -> Option<Mutant> {
    Mutant::ALL.into_iter().find(|m| m.name() == name)
}
