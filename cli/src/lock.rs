//! `fairlock lock`: acquire, run the command (or wait for a signal), release.

use std::time::{Duration, SystemTime};

use fairlock::{Acquire, Client, LockGuard};

use crate::common::{self, Held, Signals};
use crate::{exit, holder, LockArgs};

pub async fn run(url: &str, args: LockArgs) -> u8 {
    let started = SystemTime::now();
    let (client, mut signals) =
        match common::connect(url, args.hold.ttl, args.hold.lock_delay, &args.name).await {
            Ok(connected) => connected,
            Err(code) => return code,
        };
    let code = hold_and_run(
        &client.with_holder_value(holder::value(started)),
        &args,
        &mut signals,
    )
    .await;
    // Ends the session: also removes anything a cancelled wait left behind.
    let _ = client.close().await;
    code
}

async fn hold_and_run(client: &Client, args: &LockArgs, signals: &mut Signals) -> u8 {
    let mode = match (args.try_, args.timeout) {
        // flock -w 0: one attempt, no waiting.
        (true, _) | (false, Some(Duration::ZERO)) => Acquire::Try,
        (false, Some(timeout)) => Acquire::Timeout(timeout),
        (false, None) => Acquire::Wait,
    };
    let mutex = match client.mutex(&args.name) {
        Ok(mutex) => mutex,
        Err(e) => return exit::report(&e),
    };
    tracing::debug!(name = %args.name, ?mode, "acquiring");
    let acquired = tokio::select! {
        acquired = mutex.acquire(mode) => acquired,
        // Dropping the acquisition removes the queue entry.
        code = signals.next_exit_code() => return code,
    };
    let guard = match acquired {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            eprintln!("fairlock: lock {:?} not acquired", args.name);
            return args.conflict_exit_code;
        }
        Err(e) => return exit::report(&e),
    };
    tracing::info!(
        name = %args.name,
        key = guard.key(),
        token = guard.fencing_token(),
        "lock acquired"
    );
    let Some(command) = args.hold.command_line(&args.command) else {
        return hold_until_signalled(guard, &args.name, signals).await;
    };
    let held = Held {
        name: &args.name,
        token: guard.fencing_token(),
        key: guard.key().to_owned(),
        sequencer: guard.sequencer().to_string(),
        lost: guard.lost(),
    };
    common::run_while_held(held, &command, args.hold.grace, signals, guard.release()).await
}

/// `fairlock lock NAME` without a command: prints the key, the fencing token and the
/// sequencer, holds the lock until a signal, then releases it (exit 0); exit 74 if it is
/// lost meanwhile.
async fn hold_until_signalled(guard: LockGuard, name: &str, signals: &mut Signals) -> u8 {
    // A signal that came in with the acquisition: as before a command starts.
    if let Some(received) = signals.pending() {
        let _ = guard.release().await;
        return received.exit_code();
    }
    // Like `etcdctl lock NAME`: the key first. A closed stdout does not end the hold.
    let _ = common::print_line(&format!(
        "{}\n{}\n{}",
        guard.key(),
        guard.fencing_token(),
        guard.sequencer()
    ));
    let mut lost = guard.lost();
    tokio::select! {
        reason = &mut lost => {
            eprintln!("fairlock: {name:?} lost: {reason}");
            let _ = guard.release().await;
            return exit::LOST;
        }
        received = signals.next() => {
            tracing::info!(name, signal = ?received.signal(), "releasing");
        }
    }
    match guard.release().await {
        Ok(()) => 0,
        Err(e) => exit::report(&e),
    }
}
