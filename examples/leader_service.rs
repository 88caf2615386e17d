//! A service that does its work only while it leads, steps down cleanly on SIGTERM or
//! Ctrl-C, and takes over when the leader dies.
//!
//! Run two or three in separate terminals and kill the leader (`kill -9`): the next one
//! leads once the dead one's session expires (the TTL).
//!
//! ```text
//! cargo run --example leader_service -- etcd://127.0.0.1:2379/services worker-1
//! cargo run --example leader_service -- zk://127.0.0.1:2181/services worker-2
//! ```

use std::time::Duration;

use fairlock::{Client, Leadership, WriteOp};
use tokio::signal::unix::{signal, SignalKind};

/// One unit of the leader's work. Its write is fenced: applied only while still leading.
async fn work(leadership: &Leadership, heartbeat_key: &str, round: u64) -> fairlock::Result<()> {
    let note = format!(
        "{} round {round} token {}",
        String::from_utf8_lossy(leadership.value()),
        leadership.fencing_token()
    );
    leadership
        .guarded_write(&[WriteOp::put(heartbeat_key, note.clone())])
        .await?;
    println!("work: {note}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "etcd://127.0.0.1:2379/services".into());
    let id = args
        .next()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    // A backend-neutral data key, the same on etcd, ZooKeeper and memory.
    let heartbeat_key = "fairlock-example/report-heartbeat";

    let client = Client::connect(&url).await?;
    let election = client.election("report-generator")?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    'campaigning: loop {
        println!("{id}: campaigning");
        let mut leadership = tokio::select! {
            leadership = election.campaign(id.as_bytes()) => match leadership {
                Ok(leadership) => leadership,
                Err(e) if e.is_transient() => {
                    eprintln!("{id}: campaign failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue 'campaigning;
                }
                Err(e) => return Err(e.into()),
            },
            // Stopping while campaigning: dropping the campaign withdraws the candidacy.
            _ = terminate.recv() => break 'campaigning,
            _ = interrupt.recv() => break 'campaigning,
        };
        println!(
            "{id}: leading with fencing token {}",
            leadership.fencing_token()
        );
        leadership
            .proclaim(format!("{id} (working)").as_bytes())
            .await?;

        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut round = 0;
        loop {
            tokio::select! {
                reason = leadership.lost() => {
                    // Stop the work at once: someone else may lead already.
                    eprintln!("{id}: leadership lost ({reason}); campaigning again");
                    continue 'campaigning;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = ticks.tick() => {
                    round += 1;
                    if let Err(e) = work(&leadership, heartbeat_key, round).await {
                        eprintln!("{id}: work refused ({e}); campaigning again");
                        continue 'campaigning;
                    }
                }
            }
        }
        // Step down cleanly: the next candidate leads at once, not after a TTL.
        leadership.resign().await?;
        println!("{id}: resigned");
        break;
    }
    client.close().await?;
    Ok(())
}
