//! `fairlock`: run a command while holding a distributed lock (like `flock(1)` across
//! hosts) or while leading an election, and look at locks and elections.
//!
//! Exit codes: the command's own; 75 not acquired (`--try`, `--timeout`); 74 lock or
//! leadership lost while the command ran (returned once the command's process group is
//! gone); 129/130/143 SIGHUP/SIGINT/SIGTERM before the command started; 3 no leader
//! (`leader`); 2 bad arguments, URL or name; 69 backend unreachable or failing; 126/127
//! command not executable / not found.

mod common;
mod elect;
mod exit;
mod inspect;
mod lock;
mod supervise;
mod watchdog;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Distributed locks on etcd and ZooKeeper, for scripts.
#[derive(Parser, Debug)]
#[command(name = "fairlock", version, about, long_about = None)]
struct Cli {
    /// Backend URL: etcd://HOST:PORT[,…]/PREFIX, zk://HOST:PORT[,…]/PATH or memory://.
    #[arg(
        long,
        global = true,
        env = "FAIRLOCK_BACKEND",
        default_value = "etcd://127.0.0.1:2379/fairlock"
    )]
    backend: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run COMMAND while holding lock NAME; exit with COMMAND's exit code.
    Lock(LockArgs),
    /// Campaign in election NAME; run COMMAND while leading; resign when it exits.
    Elect(ElectArgs),
    /// Print the value of election NAME's leader (exit 3 if nobody leads).
    Leader {
        /// The election's name.
        name: String,
    },
    /// Print election NAME's leader value each time it changes, until interrupted.
    Observe {
        /// The election's name.
        name: String,
    },
    /// Show the holder and waiters of lock NAME (or the candidates of election NAME).
    Status(StatusArgs),
    /// Internal: SIGKILL process group PGID when stdin closes without a word first.
    #[command(name = watchdog::SUBCOMMAND, hide = true)]
    WatchGroup {
        /// The process group of the command fairlock runs.
        pgid: i32,
    },
}

#[derive(Args, Debug)]
struct ElectArgs {
    /// Session TTL in seconds: how soon leadership passes on if this process dies.
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u64>,

    /// After lost leadership, how long COMMAND gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    grace: Duration,

    /// The value observers see while this candidate leads.
    #[arg(long)]
    value: String,

    /// The election's name.
    name: String,

    /// The command to run while leading, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Show the election NAME's candidates instead of the lock NAME's queue (the same
    /// entries on etcd; different nodes on ZooKeeper).
    #[arg(long)]
    election: bool,

    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,

    /// The lock's (or election's) name.
    name: String,
}

#[derive(Args, Debug)]
struct LockArgs {
    /// Session TTL in seconds: how soon the lock frees itself if this process dies.
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u64>,

    /// Give up (exit 75) if the lock is not acquired within DURATION (e.g. 30s, 500ms, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "try_")]
    timeout: Option<Duration>,

    /// Take the lock only if it is free now; else exit 75 at once.
    #[arg(long = "try", id = "try_")]
    try_: bool,

    /// After a lost lock, how long COMMAND gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    grace: Duration,

    /// The lock's name.
    name: String,

    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph, folded onto one line (usage and hints dropped).
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "fairlock: {}",
                first.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    if let Command::WatchGroup { pgid } = cli.command {
        return ExitCode::from(watchdog::run(pgid));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fairlock: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Lock(args) => lock::run(&cli.backend, args).await,
            Command::Elect(args) => elect::run(&cli.backend, args).await,
            Command::Leader { name } => inspect::leader(&cli.backend, &name).await,
            Command::Observe { name } => inspect::observe(&cli.backend, &name).await,
            Command::Status(args) => inspect::status(&cli.backend, args).await,
            // Returned above, without a runtime; this arm is not reached.
            Command::WatchGroup { pgid } => watchdog::run(pgid),
        }
    });
    // Background releases were awaited already; don't wait for anything else.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}
