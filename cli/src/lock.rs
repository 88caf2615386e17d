//! `fairlock lock`: acquire, run the command (or wait for a signal), release.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fairlock::{Acquire, Client, DistributedMutex, LockGuard, MultiGuard, MultiLock};

use crate::common::{self, Held, Signals};
use crate::{exit, holder, LockArgs};

pub async fn run(url: &str, args: LockArgs) -> u8 {
    let started = SystemTime::now();
    for name in &args.names[1..] {
        if let Err(e) = fairlock::validate_name(name) {
            return exit::report(&e);
        }
    }
    let (client, mut signals) =
        match common::connect(url, args.hold.ttl, args.hold.lock_delay, &args.names[0]).await {
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

/// The lock of each name: a mutex, with `--shared` a read-write lock's read side, with
/// `--limit` a semaphore.
fn locks(client: &Client, args: &LockArgs) -> fairlock::Result<Vec<Arc<dyn DistributedMutex>>> {
    let lock = |name: &String| match (args.shared, args.limit) {
        (_, Some(limit)) => client.semaphore(name, limit),
        (true, None) => client.rw_lock(name).map(|rw| rw.reader().clone()),
        (false, None) => client.mutex(name),
    };
    args.names.iter().map(lock).collect()
}

async fn hold_and_run(client: &Client, args: &LockArgs, signals: &mut Signals) -> u8 {
    let mode = match (args.try_, args.timeout) {
        // flock -w 0: one attempt, no waiting.
        (true, _) | (false, Some(Duration::ZERO)) => Acquire::Try,
        (false, Some(timeout)) => Acquire::Timeout(timeout),
        (false, None) => Acquire::Wait,
    };
    // One name is a multi-lock of one: the same acquisition, the same guard.
    let multi = match locks(client, args).and_then(MultiLock::new) {
        Ok(multi) => multi,
        Err(e) => return exit::report(&e),
    };
    let names = args.names.join(" ");
    tracing::debug!(names = %names, shared = args.shared, limit = ?args.limit, ?mode, "acquiring");
    let acquired = tokio::select! {
        acquired = multi.acquire(mode) => acquired,
        // Dropping the acquisition removes the queue entries and releases what it took.
        code = signals.next_exit_code() => return code,
    };
    let held = match acquired {
        Ok(Some(held)) => held,
        Ok(None) => {
            eprintln!("fairlock: lock {names:?} not acquired");
            return args.conflict_exit_code;
        }
        Err(e) => return exit::report(&e),
    };
    for guard in held.guards() {
        tracing::info!(
            name = guard.name(),
            key = guard.key(),
            token = guard.fencing_token(),
            shared = args.shared,
            "lock acquired"
        );
    }
    let Some(command) = args.hold.command_line(&args.command) else {
        return hold_until_signalled(held, &names, signals).await;
    };
    let each = |part: fn(&LockGuard) -> String| -> String {
        let parts: Vec<String> = held.guards().iter().map(part).collect();
        parts.join(" ")
    };
    // In the order taken (by name), as the tokens and keys are.
    let names = each(|g| g.name().to_owned());
    let state = Held {
        name: &names,
        token: each(|g| g.fencing_token().to_string()),
        key: each(|g| g.key().to_owned()),
        sequencer: each(|g| g.sequencer().to_string()),
        lost: held.guards().iter().map(LockGuard::lost).collect(),
    };
    common::run_while_held(state, &command, args.hold.grace, signals, held.release()).await
}

/// `fairlock lock NAME` without a command: prints the key, the fencing token and the
/// sequencer, holds the lock until a signal, then releases it (exit 0); exit 74 if it is
/// lost meanwhile. (Several NAMEs need a command; the loop serves one.)
async fn hold_until_signalled(held: MultiGuard, names: &str, signals: &mut Signals) -> u8 {
    // A signal that came in with the acquisition: as before a command starts.
    if let Some(received) = signals.pending() {
        let _ = held.release().await;
        return received.exit_code();
    }
    // Like `etcdctl lock NAME`: the key first. A closed stdout does not end the hold.
    for guard in held.guards() {
        let _ = common::print_line(&format!(
            "{}\n{}\n{}",
            guard.key(),
            guard.fencing_token(),
            guard.sequencer()
        ));
    }
    tokio::select! {
        reason = held.lost() => {
            eprintln!("fairlock: {names:?} lost: {reason}");
            let _ = held.release().await;
            return exit::LOST;
        }
        received = signals.next() => {
            tracing::info!(names, signal = ?received.signal(), "releasing");
        }
    }
    match held.release().await {
        Ok(()) => 0,
        Err(e) => exit::report(&e),
    }
}
