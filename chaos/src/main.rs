//! fairlock-chaos: the project's chaos suite. Starts a 3-node etcd cluster or ZooKeeper
//! ensemble (`scripts/services cluster`), runs worker processes whose clients loop
//! acquire -> read a counter -> work -> guarded write of counter+1 -> release, injects
//! faults (member kill -9 of the leader and of a follower, SIGSTOP and kill -9 of a holder,
//! a frozen TCP path of one worker, a pause combined with a leader kill), and checks the
//! logs for safety violations and missed fail-over targets (see `check.rs`).
//!
//! ```text
//! fairlock-chaos run [--backends etcd,zookeeper] [--duration 0s] [--report docs/RELIABILITY.md] …
//! fairlock-chaos check DIR         (re-check the logs of one backend's run)
//! fairlock-chaos worker …          (internal: one worker process)
//! ```
//! Exit status: 0 all checks passed, 1 a violation or missed target, 2 the harness failed.

mod check;
mod event;
mod proxy;
mod report;
mod run;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The fairlock chaos suite.
#[derive(Parser, Debug)]
#[command(name = "fairlock-chaos", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the suite on the 3-node clusters, check, print a summary.
    Run(run::RunArgs),
    /// Check the logs of earlier runs (directories written by `run`), e.g. after a change
    /// of the checker; optionally write the report again.
    Check {
        /// One directory per backend, e.g. target/chaos/etcd.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Write the Markdown report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// One worker process (started by `run`).
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fairlock-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Worker(args) => worker::run(args).await,
            Command::Check { dirs, report } => {
                let mut summaries = Vec::new();
                for dir in dirs {
                    match check::check_dir(&dir) {
                        Ok(summary) => {
                            check::print(&summary);
                            summaries.push(summary);
                        }
                        Err(e) => {
                            eprintln!("fairlock-chaos: {}: {e}", dir.display());
                            return ExitCode::from(2);
                        }
                    }
                }
                finish(&summaries, report.as_deref(), false)
            }
            Command::Run(args) => run(args).await,
        }
    })
}

async fn run(args: run::RunArgs) -> ExitCode {
    let mut summaries = Vec::new();
    let mut harness_failed = false;
    for backend in &args.backends {
        let dir = match run::run_backend(&args, backend).await {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("fairlock-chaos: {backend}: {e}");
                harness_failed = true;
                args.out.join(if backend == "zk" {
                    "zookeeper"
                } else {
                    backend
                })
            }
        };
        match check::check_dir(&dir) {
            Ok(summary) => {
                check::print(&summary);
                summaries.push(summary);
            }
            Err(e) => {
                eprintln!("fairlock-chaos: check {}: {e}", dir.display());
                harness_failed = true;
            }
        }
    }
    finish(&summaries, args.report.as_deref(), harness_failed)
}

/// Writes the report if asked and turns the verdicts into the exit status.
fn finish(
    summaries: &[check::Summary],
    report: Option<&std::path::Path>,
    mut harness_failed: bool,
) -> ExitCode {
    let failed: usize = summaries.iter().map(|s| s.failed().count()).sum();
    if let Some(path) = report {
        if let Err(e) = std::fs::write(path, report::markdown(summaries)) {
            eprintln!("fairlock-chaos: {}: {e}", path.display());
            harness_failed = true;
        } else {
            eprintln!("fairlock-chaos: wrote {}", path.display());
        }
    }
    if harness_failed {
        return ExitCode::from(2);
    }
    if failed > 0 {
        println!("chaos: {failed} check(s) FAILED");
        ExitCode::from(1)
    } else {
        println!("chaos: all checks passed");
        ExitCode::SUCCESS
    }
}
