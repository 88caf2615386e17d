//! Fencing writes to an SQL database (SQLite here) that knows nothing of the lock.
//!
//! A lock alone cannot protect a store outside the lock service: holder A may pause (GC,
//! swap, SIGSTOP) past its TTL, lose the lock to B, and write when it wakes, still
//! believing it holds. So every write carries the holder's fencing token, the table keeps
//! the token of the last write in the row, and the write is one statement:
//!
//! ```sql
//! UPDATE accounts SET balance = ?, token = ? WHERE id = ? AND token <= ?
//! ```
//!
//! A's late write, with its older token, changes no row: refused. B's write stands.
//! (Asking `Client::check` before writing is not enough: A could pause between the check
//! and the write. The comparison must be part of the write.)
//!
//! ```text
//! cargo run --example fenced_sql -- etcd://127.0.0.1:2379/demo
//! cargo run --example fenced_sql -- zk://127.0.0.1:2181/demo
//! cargo run --example fenced_sql                    # memory://
//! ```

mod store;

use std::time::Duration;

use fairlock::{Client, Config, Sequencer, SequencerStatus};
use rusqlite::Connection;
use store::{Accounts, Write};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://fenced-sql".into());
    let mut config = Config::from_url(&url)?;
    config.ttl = Duration::from_secs(3);
    // A file in a real service (Connection::open(path)): the tokens outlive the process.
    let accounts = Accounts::new(Connection::open_in_memory()?)?;
    accounts.open("account-42", 100)?;

    let a = Client::from_config(&config).await?;
    let b = Client::from_config(&config).await?;
    let lock = "account-42";

    let a_guard = a.mutex(lock)?.lock().await?;
    // What A sends along with its writes (an HTTP header, a message field, an env var):
    let a_sequencer = a_guard.sequencer().to_string();
    println!("A holds the lock: {a_sequencer}");

    // A stalls before its write: its process stops keeping the session alive.
    a.abandon();
    let b_guard = b.mutex(lock)?.lock().await?; // after A's TTL
    println!(
        "B holds the lock: {} (A's session expired)",
        b_guard.sequencer()
    );
    let written = accounts.set_balance("account-42", 70, b_guard.fencing_token())?;
    println!("B's write: {written:?}");
    assert_eq!(written, Write::Applied);

    // A wakes up and, unaware, sends its write. The store parses the sequencer and fences
    // the write by its token.
    let sequencer: Sequencer = a_sequencer.parse()?;
    match accounts.set_balance("account-42", 150, sequencer.fencing_token())? {
        Write::Refused { newer } => println!(
            "A's late write refused: token {} < {newer}",
            sequencer.fencing_token()
        ),
        Write::Applied => return Err("A's stale write was applied".into()),
    }
    let (balance, token) = accounts.balance("account-42")?;
    println!("balance: {balance} (B's write stands, token {token})");
    assert_eq!(balance, 70);

    // Anyone can also ask the lock service about a sequencer (a read, no session needed):
    let status = b.check(&sequencer).await?;
    println!("A's sequencer is {status}");
    assert_eq!(status, SequencerStatus::Superseded);

    b_guard.release().await?;
    b.close().await?;
    std::mem::forget(a_guard); // A's session is gone; nothing left to release
    Ok(())
}
