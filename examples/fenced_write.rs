//! Fencing: why a lock alone cannot protect a write, and how the guarded write does.
//!
//! Holder A takes the lock, then stalls (a GC pause, a swap storm, SIGSTOP) for longer
//! than its TTL. Its session expires, B takes the lock and writes. When A wakes, it still
//! believes it holds the lock. Its plain write would clobber B's; its guarded write is
//! refused, because the backend checks A's lock entry in the same transaction.
//!
//! ```text
//! cargo run --example fenced_write -- etcd://127.0.0.1:2379/demo
//! cargo run --example fenced_write -- zk://127.0.0.1:2181/demo
//! cargo run --example fenced_write                    # memory://
//! ```

use std::time::Duration;

use fairlock::{Client, Config, Error, WriteOp};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://fenced".into());
    let mut config = Config::from_url(&url)?;
    config.ttl = Duration::from_secs(3);
    // A backend-neutral data key: the etcd key, ZooKeeper node or memory key of that name.
    let key = "fairlock-example/balance";

    let a = Client::from_config(&config).await?;
    let b = Client::from_config(&config).await?;
    let account = "account-42";

    let a_guard = a.mutex(account)?.lock().await?;
    println!("A holds the lock, token {}", a_guard.fencing_token());
    a_guard.guarded_write(&[WriteOp::put(key, "100")]).await?;

    // A stalls: its process stops keeping the session alive.
    a.abandon();
    let b_guard = b.mutex(account)?.lock().await?; // after A's TTL
    println!(
        "B holds the lock, token {} (A's session expired)",
        b_guard.fencing_token()
    );
    b_guard.guarded_write(&[WriteOp::put(key, "70")]).await?;

    // A wakes up and, unaware, writes.
    match a_guard.guarded_write(&[WriteOp::put(key, "150")]).await {
        Err(Error::LockLost(reason)) => println!("A's guarded write refused: {reason}"),
        other => return Err(format!("A's stale write was not refused: {other:?}").into()),
    }
    let balance = b.get(key).await?.unwrap_or_default();
    println!(
        "balance: {} (B's write stands)",
        String::from_utf8_lossy(&balance)
    );
    assert_eq!(balance, b"70");

    // Stores outside the lock backend get the token and compare it themselves; on etcd your
    // own transactions can carry the same check (a data key is the etcd key of that name):
    #[cfg(feature = "etcd")]
    if a.backend() == fairlock::BackendKind::Etcd {
        use fairlock::etcd::etcd_client::{Txn, TxnOp};
        let fence = fairlock::etcd::fence_compare(b_guard.key(), b_guard.fencing_token());
        let _txn = Txn::new()
            .when([fence])
            .and_then([TxnOp::put(key, "60", None)]);
    }

    b_guard.release().await?;
    b.close().await?;
    std::mem::forget(a_guard); // A's session is gone; nothing left to release
    Ok(())
}
