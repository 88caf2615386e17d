//! `fairlock elect`: campaign, run the command while leading, resign.

use fairlock::Client;

use crate::common::{self, Held, Signals};
use crate::{exit, ElectArgs};

pub async fn run(url: &str, args: ElectArgs) -> u8 {
    let (client, mut signals) =
        match common::connect(url, args.hold.ttl, args.hold.lock_delay, &args.name).await {
            Ok(connected) => connected,
            Err(code) => return code,
        };
    let code = lead_and_run(&client, &args, &mut signals).await;
    let _ = client.close().await;
    code
}

async fn lead_and_run(client: &Client, args: &ElectArgs, signals: &mut Signals) -> u8 {
    let election = match client.election(&args.name) {
        Ok(election) => election,
        Err(e) => return exit::report(&e),
    };
    let campaign = tokio::select! {
        campaign = election.campaign(args.value.as_bytes()) => campaign,
        // Dropping the campaign withdraws the candidacy.
        code = signals.next_exit_code() => return code,
    };
    let leadership = match campaign {
        Ok(leadership) => leadership,
        Err(e) => return exit::report(&e),
    };
    tracing::info!(
        name = %args.name,
        key = leadership.key(),
        token = leadership.fencing_token(),
        "leading"
    );
    // Required by the command line: COMMAND or -c.
    let command = args.hold.command_line(&args.command).unwrap_or_default();
    let held = Held {
        name: &args.name,
        token: leadership.fencing_token().to_string(),
        key: leadership.key().to_owned(),
        sequencer: leadership.sequencer().to_string(),
        lost: vec![leadership.lost()],
    };
    common::run_while_held(
        held,
        &command,
        args.hold.grace,
        signals,
        leadership.resign(),
    )
    .await
}
