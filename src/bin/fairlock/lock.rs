//! `fairlock lock`: acquire, run the command, release.

use std::time::Duration;

use fairlock::{Acquire, Client, Config};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit;
use crate::supervise::{self, Outcome};
use crate::LockArgs;

/// SIGINT and SIGTERM, registered before anything can wait.
pub struct Signals {
    pub interrupt: Signal,
    pub terminate: Signal,
}

impl Signals {
    pub fn register() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal; returns the exit code it maps to while waiting.
    pub async fn next_exit_code(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => exit::SIGINT,
            _ = self.terminate.recv() => exit::SIGTERM,
        }
    }
}

/// Builds the config from the URL and the command-line overrides.
pub fn config(url: &str, ttl: Option<u64>) -> Result<Config, fairlock::Error> {
    let mut config = Config::from_url(url)?;
    if let Some(ttl) = ttl {
        config.ttl = Duration::from_secs(ttl);
    }
    config.validate()?;
    Ok(config)
}

/// Connects, or returns the exit code for why not.
pub async fn connect(config: &Config, signals: &mut Signals) -> Result<Client, u8> {
    tokio::select! {
        client = Client::from_config(config) => client.map_err(|e| exit::report(&e)),
        code = signals.next_exit_code() => Err(code),
    }
}

pub async fn run(url: &str, args: LockArgs) -> u8 {
    let config = match config(url, args.ttl) {
        Ok(config) => config,
        Err(e) => return exit::report(&e),
    };
    if let Err(e) = fairlock::validate_name(&args.name) {
        return exit::report(&e);
    }
    let mut signals = match Signals::register() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("fairlock: cannot install signal handlers: {e}");
            return exit::SOFTWARE;
        }
    };
    let client = match connect(&config, &mut signals).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let code = hold_and_run(&client, &args, &mut signals).await;
    // Ends the session: also removes anything a cancelled wait left behind.
    let _ = client.close().await;
    code
}

async fn hold_and_run(client: &Client, args: &LockArgs, signals: &mut Signals) -> u8 {
    let mode = match (args.try_, args.timeout) {
        (true, _) => Acquire::Try,
        (false, Some(timeout)) => Acquire::Timeout(timeout),
        (false, None) => Acquire::Wait,
    };
    let mutex = match client.mutex(&args.name) {
        Ok(mutex) => mutex,
        Err(e) => return exit::report(&e),
    };
    let acquired = tokio::select! {
        acquired = mutex.acquire(mode) => acquired,
        // Dropping the acquisition removes the queue entry.
        code = signals.next_exit_code() => return code,
    };
    let guard = match acquired {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            eprintln!("fairlock: lock {:?} not acquired", args.name);
            return exit::NOT_ACQUIRED;
        }
        Err(e) => return exit::report(&e),
    };
    let env = [
        ("FAIRLOCK_NAME", args.name.clone()),
        ("FAIRLOCK_TOKEN", guard.fencing_token().to_string()),
        ("FAIRLOCK_KEY", guard.key().to_owned()),
    ];
    let outcome = supervise::run(&args.command, &env, guard.lost(), args.grace, signals).await;
    let released = guard.release().await;
    match outcome {
        Outcome::Exited(code) => match released {
            Ok(()) => code,
            // Lost between the command's end and the release: the end was unprotected.
            Err(e) => exit::report(&e),
        },
        Outcome::Lost(reason) => {
            eprintln!(
                "fairlock: lock {:?} lost while the command ran: {reason}",
                args.name
            );
            exit::LOST
        }
        Outcome::NotStarted(code) => code,
    }
}
