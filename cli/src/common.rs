//! What every subcommand shares: configuration, connecting, signals, running the command
//! while something is held, and turning the outcome into an exit code.

use std::ffi::OsString;
use std::time::Duration;

use fairlock::{Client, Config, LostSignal};
use futures::FutureExt;
use nix::sys::signal::Signal as NixSignal;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit;
use crate::supervise::{self, Outcome};

/// A signal fairlock handles: it ends a wait, and is forwarded to a running command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    Interrupt,
    Terminate,
    Hangup,
}

impl Received {
    /// The exit code when it ends a wait: 128 + the signal's number.
    pub fn exit_code(self) -> u8 {
        match self {
            Received::Interrupt => exit::SIGINT,
            Received::Terminate => exit::SIGTERM,
            Received::Hangup => exit::SIGHUP,
        }
    }

    /// The signal itself, to forward.
    pub fn signal(self) -> NixSignal {
        match self {
            Received::Interrupt => NixSignal::SIGINT,
            Received::Terminate => NixSignal::SIGTERM,
            Received::Hangup => NixSignal::SIGHUP,
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, registered before anything can wait. Once registered they no
/// longer end the process: each arrival is seen by exactly one [`next`](Self::next).
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal. Cancel safe: a signal is not lost if this is dropped.
    pub async fn next(&mut self) -> Received {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Received::Interrupt,
            Some(()) = self.terminate.recv() => Received::Terminate,
            Some(()) = self.hangup.recv() => Received::Hangup,
            // Only once the runtime shuts down: then nothing more can arrive.
            else => std::future::pending().await,
        }
    }

    /// Waits for the next signal; returns the exit code it maps to.
    pub async fn next_exit_code(&mut self) -> u8 {
        self.next().await.exit_code()
    }

    /// A signal that has arrived and not been seen yet, without waiting.
    pub fn pending(&mut self) -> Option<Received> {
        self.next().now_or_never()
    }
}

/// The configuration of `url`, with the credentials from the environment that the URL does
/// not give: `FAIRLOCK_USER`, and the password from `FAIRLOCK_PASSWORD`, else the file
/// named by `FAIRLOCK_PASSWORD_FILE` (secrets stay off the command line, which `ps` shows).
pub fn config_from(url: &str) -> Result<Config, u8> {
    let mut config = Config::from_url(url).map_err(|e| exit::report(&e))?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.username.is_none() {
        config.username = var("FAIRLOCK_USER");
    }
    if config.password.is_none() && config.password_file.is_none() {
        config.password = var("FAIRLOCK_PASSWORD");
        if config.password.is_none() {
            config.password_file = var("FAIRLOCK_PASSWORD_FILE");
        }
    }
    Ok(config)
}

/// Checks the URL, TTL and name, installs signal handlers and connects, opening a session;
/// or returns the exit code for why not. `ttl` and `lock_delay` override the URL's.
pub async fn connect(
    url: &str,
    ttl: Option<Duration>,
    lock_delay: Option<Duration>,
    name: &str,
) -> Result<(Client, Signals), u8> {
    let mut config = config_from(url)?;
    if let Some(ttl) = ttl {
        config.ttl = ttl;
    }
    if lock_delay.is_some() {
        config.lock_delay = lock_delay;
    }
    config.validate().map_err(|e| exit::report(&e))?;
    fairlock::validate_name(name).map_err(|e| exit::report(&e))?;
    let mut signals = register_signals()?;
    tracing::debug!(backend = %exit::redact_url(url), ttl = ?config.ttl, "connecting");
    tokio::select! {
        client = Client::from_config(&config) => match client {
            Ok(client) => Ok((client, signals)),
            Err(e) => Err(exit::report(&e)),
        },
        code = signals.next_exit_code() => Err(code),
    }
}

/// Like [`connect`], for commands that only read (`status`, `leader`, `observe`): the one
/// place they connect, so that they need no session of their own.
pub async fn connect_reader(url: &str, name: &str) -> Result<(Client, Signals), u8> {
    fairlock::validate_name(name).map_err(|e| exit::report(&e))?;
    let config = config_from(url)?;
    let mut signals = register_signals()?;
    tracing::debug!(backend = %exit::redact_url(url), "connecting to read");
    tokio::select! {
        // Reading needs no session: on etcd no lease is granted.
        client = Client::from_config_lazy(&config) => match client {
            Ok(client) => Ok((client, signals)),
            Err(e) => Err(exit::report(&e)),
        },
        code = signals.next_exit_code() => Err(code),
    }
}

fn register_signals() -> Result<Signals, u8> {
    Signals::register().map_err(|e| {
        eprintln!("fairlock: cannot install signal handlers: {e}");
        exit::SOFTWARE
    })
}

/// Writes `line` and a newline to stdout, flushed; an error (a closed pipe) is returned,
/// where `println!` would panic.
pub fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// What is held while the command runs: a lock or leadership.
pub struct Held<'a> {
    /// The name (names, space-separated, for a multi-lock).
    pub name: &'a str,
    /// The fencing token (tokens, space-separated, for a multi-lock).
    pub token: String,
    /// The key (keys, space-separated).
    pub key: String,
    /// Its sequencer's string form (sequencers, space-separated).
    pub sequencer: String,
    /// The loss of any of the locks held.
    pub lost: Vec<LostSignal>,
}

/// Runs `command` while `held` is held, then lets `release` give it up; returns the exit
/// code: the command's own, or 74 if the hold was lost (while it ran, or before release),
/// or 129/130/143 if a signal came in before the command could start (it is not started).
pub async fn run_while_held<R>(
    held: Held<'_>,
    command: &[OsString],
    grace: Duration,
    signals: &mut Signals,
    release: R,
) -> u8
where
    R: std::future::Future<Output = fairlock::Result<()>>,
{
    let env = [
        ("FAIRLOCK_NAME", held.name.to_owned()),
        ("FAIRLOCK_TOKEN", held.token),
        ("FAIRLOCK_KEY", held.key),
        ("FAIRLOCK_SEQUENCER", held.sequencer),
    ];
    let outcome = supervise::run(command, &env, &held.lost, grace, signals).await;
    let released = release.await;
    match outcome {
        Outcome::Exited(code) => match released {
            Ok(()) => code,
            // Lost between the command's end and the release: the end was unprotected.
            Err(e) => exit::report(&e),
        },
        Outcome::Lost(reason) => {
            eprintln!(
                "fairlock: {:?} lost while the command ran: {reason}",
                held.name
            );
            exit::LOST
        }
        Outcome::LostBeforeStart(reason) => {
            eprintln!(
                "fairlock: {:?} lost before the command started: {reason}",
                held.name
            );
            exit::LOST
        }
        Outcome::NotStarted(code) => code,
    }
}
