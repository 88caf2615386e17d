//! `fairlock lock`: acquire, run the command, release.

use fairlock::{Acquire, Client};

use crate::common::{self, Held, Signals};
use crate::{exit, LockArgs};

pub async fn run(url: &str, args: LockArgs) -> u8 {
    let (client, mut signals) = match common::connect(url, args.ttl, &args.name).await {
        Ok(connected) => connected,
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
    let held = Held {
        name: &args.name,
        token: guard.fencing_token(),
        key: guard.key().to_owned(),
        lost: guard.lost(),
    };
    common::run_while_held(held, &args.command, args.grace, signals, guard.release()).await
}
