//! `fairlock`: run a command while holding a distributed lock (like `flock(1)` across
//! hosts) or while leading an election, and look at locks and elections.
//!
//! Exit codes: see [`exit::TABLE`] (also printed by `--help` and in the man page).

mod common;
mod elect;
mod exit;
mod holder;
mod inspect;
mod lock;
mod logging;
mod manual;
mod supervise;
mod watchdog;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// The backend when neither `--backend` nor `FAIRLOCK_BACKEND` names one.
const DEFAULT_BACKEND: &str = "etcd://127.0.0.1:2379/fairlock";

/// Distributed locks on etcd and ZooKeeper, for scripts.
#[derive(Parser, Debug)]
#[command(
    name = "fairlock",
    version,
    about = "Run commands under distributed locks or leader elections on etcd and ZooKeeper, \
             like flock(1) across hosts",
    long_about = None,
    arg_required_else_help = true,
    after_help = exit::help_text()
)]
struct Cli {
    // The help as an attribute: rustdoc would take its brackets for links.
    #[arg(
        help = "Backend URL: etcd://[USER:PASSWORD@]HOST:PORT[,…]/PREFIX, \
                zk://HOST:PORT[,…]/PATH or memory://; query options ttl, connect_timeout, \
                request_timeout, safety_margin",
        long,
        global = true,
        value_name = "URL",
        env = "FAIRLOCK_BACKEND",
        // Its value may carry a password: --help must not show it.
        hide_env_values = true,
        default_value = DEFAULT_BACKEND
    )]
    backend: String,

    /// Diagnostics on stderr: -v warnings and info, -vv debug (default: errors only; RUST_LOG, if set,
    /// decides instead).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run COMMAND while holding lock NAME (several NAMEs: all of them; --shared: its read
    /// side; --limit N: a lease of semaphore NAME) and exit with COMMAND's exit code; without COMMAND, hold it until SIGINT,
    /// SIGTERM or SIGHUP, printing its key, fencing token and sequencer.
    #[command(after_help = exit::help_text())]
    Lock(LockArgs),
    /// Campaign in election NAME; run COMMAND while leading; resign when it exits.
    #[command(after_help = exit::help_text())]
    Elect(ElectArgs),
    /// Print the value of election NAME's leader (exit 3 if nobody leads).
    #[command(after_help = exit::help_text())]
    Leader {
        /// The election's name.
        name: String,
    },
    /// Print election NAME's leader value each time it changes, until interrupted.
    #[command(after_help = exit::help_text())]
    Observe {
        /// The election's name.
        name: String,
    },
    /// Show the holders and waiters of lock NAME (or the candidates of election NAME, or
    /// the holders and waiters of semaphore NAME).
    #[command(after_help = exit::help_text())]
    Status(StatusArgs),
    /// Check whether the holder SEQUENCER names still holds its lock: print current (exit
    /// 0), superseded (exit 4: a newer holder holds it) or lost (exit 5: its entry is gone
    /// and nobody newer holds it), from one linearizable read.
    #[command(after_help = exit::help_text())]
    Check {
        /// The sequencer (fl1:…), as lock and elect give it to COMMAND in
        /// FAIRLOCK_SEQUENCER.
        #[arg(env = "FAIRLOCK_SEQUENCER")]
        sequencer: String,
    },
    /// Print the shell completion script for SHELL on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of fairlock, or of one of its commands, on stdout.
    Man {
        /// The command whose page to print (e.g. `lock` prints fairlock-lock(1)).
        command: Option<String>,
    },
}

/// What `lock` and `elect` share: the session, and how to run and stop the command.
#[derive(Args, Debug)]
struct HoldArgs {
    /// Session TTL: how soon what this process holds frees itself if it dies (e.g. 15s, 1.5s;
    /// a bare number is seconds). Default: the URL's ttl, else 10s.
    #[arg(long, value_name = "DURATION", env = "FAIRLOCK_TTL", value_parser = parse_duration)]
    ttl: Option<Duration>,

    /// Lock-delay: after the previous holder ended uncleanly (crashed, expired, its entry
    /// deleted), wait this long before COMMAND starts, so that its writes still in flight
    /// drain (never after a clean release; at most 60s). Default: the URL's lock_delay,
    /// else none.
    #[arg(long, value_name = "DURATION", env = "FAIRLOCK_LOCK_DELAY", value_parser = parse_duration)]
    lock_delay: Option<Duration>,

    /// After a loss, how long COMMAND gets between SIGTERM and SIGKILL.
    #[arg(
        long,
        value_name = "DURATION",
        env = "FAIRLOCK_GRACE",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    grace: Duration,

    /// Run SHELL_COMMAND with `sh -c` (like flock -c) instead of a COMMAND after `--`.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL_COMMAND",
        conflicts_with = "command"
    )]
    shell_command: Option<OsString>,
}

impl HoldArgs {
    /// The command line to run: `sh -c SHELL_COMMAND`, else `command`; `None` if neither.
    fn command_line(&self, command: &[OsString]) -> Option<Vec<OsString>> {
        match &self.shell_command {
            Some(script) => Some(vec!["sh".into(), "-c".into(), script.clone()]),
            None if command.is_empty() => None,
            None => Some(command.to_vec()),
        }
    }
}

#[derive(Args, Debug)]
struct ElectArgs {
    #[command(flatten)]
    hold: HoldArgs,

    /// The value observers see while this candidate leads.
    #[arg(long)]
    value: String,

    /// The election's name.
    name: String,

    /// The command to run while leading, after `--`.
    #[arg(
        last = true,
        required_unless_present = "shell_command",
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Show the election NAME's candidates instead of the lock NAME's queue (the same
    /// entries on etcd; different nodes on ZooKeeper).
    #[arg(long, conflicts_with = "semaphore")]
    election: bool,

    /// Show the semaphore NAME's holders (its leases) and waiters instead.
    #[arg(long)]
    semaphore: bool,

    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,

    /// The lock's (or election's) name.
    name: String,
}

#[derive(Args, Debug)]
struct LockArgs {
    #[command(flatten)]
    hold: HoldArgs,

    /// Give up if the lock is not acquired within DURATION (e.g. 30s, 500ms, 2m; a bare
    /// number is seconds); 0 is --try.
    #[arg(
        short = 'w',
        long,
        value_name = "DURATION",
        env = "FAIRLOCK_TIMEOUT",
        value_parser = parse_duration
    )]
    timeout: Option<Duration>,

    /// Take the lock only if it is free now; else give up at once. Overrides a timeout from
    /// FAIRLOCK_TIMEOUT.
    #[arg(short = 'n', long = "try", id = "try_")]
    try_: bool,

    /// The exit code when the lock is not acquired (--try, --timeout), like flock -E.
    #[arg(
        short = 'E',
        long,
        value_name = "CODE",
        env = "FAIRLOCK_CONFLICT_EXIT_CODE",
        default_value_t = exit::NOT_ACQUIRED
    )]
    conflict_exit_code: u8,

    /// Take the read (shared) side of read-write lock NAME, like flock -s: held together
    /// with other readers, never with a writer or a plain `fairlock lock` (which are
    /// exclusive). With several NAMEs, the read side of each.
    #[arg(short = 's', long, conflicts_with = "limit")]
    shared: bool,

    /// Take a lease of counting semaphore NAME, which at most N hold at once (like `consul
    /// lock -n N`; kazoo's Semaphore on ZooKeeper). The first user stores N with the
    /// semaphore; another N is refused. With several NAMEs, a lease of each.
    #[arg(short = 'l', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,

    /// The lock's name. Several: take them all or none, in name order (so that two
    /// `fairlock lock` runs naming the same locks never deadlock); they need a COMMAND.
    #[arg(value_name = "NAME", required = true, num_args = 1..)]
    names: Vec<String>,

    /// The command to run, after `--`. Without one (and without -c): hold the lock, print
    /// its key, fencing token and sequencer (one line each), release it on SIGINT, SIGTERM or
    /// SIGHUP.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// A duration: a bare number is seconds (`10`, `1.5`), else humantime's form (`1.5s`,
/// `500ms`, `2m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("{text:?} is not a duration (seconds must be a finite number, at least 0)")
        });
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// For `lock NAME cmd` (COMMAND without `--` before it): a tip on what to write instead.
/// clap suggests `--` for things that look like options only, not for a positional that
/// must come last.
fn add_command_tip(error: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument || error.get(ContextKind::Suggested).is_some() {
        return;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::StyledStr(usage))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::Usage),
    ) else {
        return;
    };
    if !usage.to_string().contains("-- <COMMAND>") {
        return;
    }
    let tip = format!("to run '{arg}' as COMMAND, put '--' before it: '-- {arg}'");
    error.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![tip.into()]),
    );
}

fn main() -> ExitCode {
    // The watchdog fairlock starts for itself: not a command for people (nor their shell
    // completions), so not one for clap.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|first| first == watchdog::SUBCOMMAND)
    {
        return ExitCode::from(watchdog::run(args.next(), args.next().is_none()));
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        // No command (the options may all come from the environment): the usage, exit 2.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingSubcommand => {
            eprint!("{}", Cli::command().render_help());
            return ExitCode::from(exit::USAGE);
        }
        // clap's own output, tips included; exit 2 for errors, 0 for --help and --version.
        Err(mut e) => {
            add_command_tip(&mut e);
            e.exit()
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Lock(args) = &cli.command {
        // A timeout from FAIRLOCK_TIMEOUT gives way to --try; one given with it does not.
        let timeout_given = matches
            .subcommand_matches("lock")
            .and_then(|lock| lock.value_source("timeout"))
            == Some(ValueSource::CommandLine);
        let lock_error = |kind, message: String| {
            let mut cmd = Cli::command();
            cmd.build();
            if let Some(lock) = cmd.find_subcommand_mut("lock") {
                lock.error(kind, message).exit();
            }
        };
        if args.try_ && timeout_given {
            lock_error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--try' cannot be used with '--timeout <DURATION>'".into(),
            );
        }
        // `lock x true` is a forgotten `--` far more often than a multi-lock held without
        // a command: several NAMEs need a COMMAND.
        if let [_, .., last] = args.names.as_slice() {
            if args.hold.command_line(&args.command).is_none() {
                lock_error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!(
                        "several NAMEs need a COMMAND (after '--') or -c\n\n  \
                         tip: to run '{last}' as COMMAND, put '--' before it: '-- {last}'"
                    ),
                );
            }
        }
    }
    exit::keep_secret(&cli.backend);
    logging::init(cli.verbose);
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fairlock", &mut script);
            // Written here, not by clap_complete, which panics on a closed stdout.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return ExitCode::SUCCESS;
        }
        Command::Man { command } => return ExitCode::from(manual::print(command.as_deref())),
        _ => {}
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
            Command::Check { sequencer } => inspect::check(&cli.backend, &sequencer).await,
            // Handled above, without a runtime; these arms are not reached.
            Command::Completions { .. } | Command::Man { .. } => exit::SOFTWARE,
        }
    });
    // Background releases were awaited already; don't wait for anything else.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_bare_seconds_and_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["-1", "NaN", "inf", "soon", "", "1e30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
