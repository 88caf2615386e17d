//! `fairlock leader`, `observe`, `status` and `check`: look without taking part.

use fairlock::{QueueEntry, QueueKind, Sequencer, SequencerStatus};
use futures::StreamExt;

use crate::{common, holder};
use crate::{exit, StatusArgs};

pub async fn leader(url: &str, name: &str) -> u8 {
    let (client, _signals) = match common::connect_reader(url, name).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let result = match client.election(name) {
        Ok(election) => election.leader().await,
        Err(e) => Err(e),
    };
    let _ = client.close().await;
    match result {
        Ok(Some(leader)) => {
            // A closed stdout (`| head`) is not worth a message.
            let _ = common::print_line(&String::from_utf8_lossy(&leader.value));
            0
        }
        Ok(None) => exit::NO_LEADER,
        Err(e) => exit::report(&e),
    }
}

pub async fn observe(url: &str, name: &str) -> u8 {
    let (client, mut signals) = match common::connect_reader(url, name).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let mut changes = match client.election(name) {
        Ok(election) => election.observe(),
        Err(e) => return exit::report(&e),
    };
    let code = loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(Some(leader))) => {
                    // Nobody reads any more (`| head -1`): done.
                    if common::print_line(&String::from_utf8_lossy(&leader.value)).is_err() {
                        break 0;
                    }
                }
                Some(Ok(None)) => {} // nobody leads: nothing to print
                Some(Err(e)) => eprintln!("fairlock: {}", exit::one_line(&e)), // goes on
                None => break exit::SOFTWARE,
            },
            code = signals.next_exit_code() => break code,
        }
    };
    let _ = client.close().await;
    code
}

pub async fn status(url: &str, args: StatusArgs) -> u8 {
    let (client, _signals) = match common::connect_reader(url, &args.name).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let kind = if args.election {
        QueueKind::Election
    } else {
        QueueKind::Lock
    };
    // A semaphore's holders are its leases, all holding; then its gate's waiters.
    let listing = match args.semaphore {
        true => client.semaphore_queue(&args.name).await.map(|q| {
            let holders = q.holders.len();
            (q.holders.into_iter().chain(q.waiters).collect(), holders)
        }),
        false => client.queue(&args.name, kind).await.map(|e| (e, 0)),
    };
    let _ = client.close().await;
    let (entries, leases): (Vec<QueueEntry>, usize) = match listing {
        Ok(listing) => listing,
        Err(e) => return exit::report(&e),
    };
    let roles = match kind {
        QueueKind::Election => ("leader", "candidate"),
        _ => ("holder", "waiting"),
    };
    // (role, side) of each entry. Readers hold together while no writer is ahead of them,
    // leases all at once: several holders.
    let rows: Vec<(&str, &str)> = (entries.iter().enumerate())
        .map(|(i, e)| {
            let holds = match args.semaphore {
                true => i < leases,
                false => e.holds(&entries),
            };
            let role = if holds { roles.0 } else { roles.1 };
            let side = match (kind, args.semaphore, e.shared) {
                (QueueKind::Election, _, _) => "",
                (_, true, _) if holds => "lease",
                (_, true, _) => "",
                (_, false, true) => "read",
                (_, false, false) => "write",
            };
            (role, side)
        })
        .collect();
    if args.json {
        let entries: Vec<serde_json::Value> = (entries.iter().zip(&rows).enumerate())
            .map(|(i, (e, (role, side)))| {
                serde_json::json!({
                    "position": i + 1,
                    "role": role,
                    "side": side,
                    "fencing_token": e.fencing_token,
                    "session": e.session,
                    "key": e.key,
                    "value": String::from_utf8_lossy(&e.value),
                    "holder": holder::parse(&e.value),
                })
            })
            .collect();
        let kind = match (args.election, args.semaphore) {
            (true, _) => "election",
            (_, true) => "semaphore",
            _ => "lock",
        };
        let doc = serde_json::json!({ "name": args.name, "kind": kind, "entries": entries });
        let _ = common::print_line(&doc.to_string());
    } else {
        print_table(&entries, &rows);
    }
    0
}

/// `fairlock check SEQUENCER`: prints the status; exits 0 (current), 4 (superseded) or 5
/// (lost).
pub async fn check(url: &str, sequencer: &str) -> u8 {
    let sequencer: Sequencer = match sequencer.parse() {
        Ok(sequencer) => sequencer,
        Err(e) => return exit::report(&e),
    };
    let (client, _signals) = match common::connect_reader(url, sequencer.name()).await {
        Ok(connected) => connected,
        Err(code) => return code,
    };
    let checked = client.check(&sequencer).await;
    let _ = client.close().await;
    let status = match checked {
        Ok(status) => status,
        Err(e) => return exit::report(&e),
    };
    let _ = common::print_line(&status.to_string());
    match status {
        SequencerStatus::Current => 0,
        SequencerStatus::Superseded => exit::SUPERSEDED,
        _ => exit::SEQUENCER_LOST,
    }
}

fn print_table(entries: &[QueueEntry], roles: &[(&str, &str)]) {
    let rows: Vec<[String; 7]> = (entries.iter().zip(roles).enumerate())
        .map(|(i, (e, (role, side)))| {
            [
                (i + 1).to_string(),
                (*role).to_owned(),
                (*side).to_owned(),
                e.fencing_token.to_string(),
                e.session.clone(),
                e.key.clone(),
                String::from_utf8_lossy(&e.value).into_owned(),
            ]
        })
        .collect();
    let header = ["#", "ROLE", "SIDE", "TOKEN", "SESSION", "KEY", "VALUE"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        if common::print_line(cells.join("  ").trim_end()).is_err() {
            return; // stdout closed
        }
    }
}
