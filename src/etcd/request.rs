//! Bounded requests that fail over between cluster members.
//!
//! etcd-client balances requests over every endpoint of the URL but keeps a dead member in
//! rotation: a request that lands on it fails at once as UNAVAILABLE ("tcp connect
//! error"). Another attempt is balanced afresh and usually lands on a live member, so each
//! request is retried, with a short backoff, until it succeeds or its request timeout runs
//! out.
//!
//! Retrying is safe because of how fairlock writes (see docs/DESIGN.md, "Retries"):
//! - [`Retry::Idempotent`]: every queue request is conditional or a read. The enqueue Txn
//!   creates the own key only if it does not exist (else reads it back); try-lock's Txn
//!   reads the own key back when the queue was not empty; removals compare the create
//!   revision; proclaims put the same value under the same comparison; lease grants at
//!   worst leave an unused lease that expires after its TTL. A retry of a request that was
//!   applied finds its effect and reports it.
//! - [`Retry::Checked`]: a user's guarded write is made safe to repeat by the write itself:
//!   it compares and moves the own key's mod revision, so a repeat after an applied attempt
//!   fails its comparison and finds the revision moved (see `session.rs`). If no attempt
//!   got an answer in time, its outcome is unknown: [`Error::OutcomeUnknown`].

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// gRPC status codes (etcd-client does not re-export tonic's `Code`).
pub(super) const GRPC_NOT_FOUND: i32 = 5;
const GRPC_UNAVAILABLE: i32 = 14;

/// What may be retried after a failed attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Any failure of the member or the transport: the request is safe to repeat.
    Idempotent,
    /// As `Idempotent`, for a write that checks itself for an earlier applied attempt;
    /// running out of time means its outcome is unknown.
    Checked,
}

/// Runs `op` within `timeout`, retrying on another member as `retry` allows.
///
/// Failed attempts (member unavailable, connection broken) are sent again after a short
/// backoff. An attempt still unanswered after a fraction of the timeout is *hedged*: a
/// second one is sent while the first stays in flight, and the first answer wins. A
/// request that reached a follower just as the leader died is forwarded to the dead leader
/// and never answered (the server gives up only after its own 5 s + 2 election timeouts),
/// while a new attempt after the election succeeds at once; over a slow link, the first
/// attempt still answers. Every request here is safe to have in flight twice (module
/// docs).
///
/// # Errors
/// The attempt's error as [`Error::Backend`] if it is not a failure of the member;
/// [`Error::Timeout`] when the time ran out (for [`Retry::Checked`],
/// [`Error::OutcomeUnknown`]).
pub(crate) async fn request<T, F, Fut>(timeout: Duration, retry: Retry, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    let hedge_after = (timeout / 8).clamp(HEDGE_MIN, HEDGE_MAX);
    let mut in_flight = FuturesUnordered::new();
    in_flight.push(op());
    let mut next_hedge = Instant::now() + hedge_after;
    let mut backoff = BACKOFF_MIN;
    loop {
        // Biased (answers, then hedges, then the deadline): the same choice in every run.
        tokio::select! {
            biased;
            Some(answer) = in_flight.next() => match answer {
                Ok(value) => return Ok(value),
                // Refused credentials, permissions or certificates: no retry helps.
                Err(e) if super::security_error(&e).is_some() => return Err(super::etcd_error(e)),
                Err(e) if is_unavailable(&e) => {
                    if in_flight.is_empty() {
                        // Nothing left in flight: try again after a pause.
                        let pause = Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        if pause >= deadline {
                            return Err(out_of_time(retry, timeout, Some(e)));
                        }
                        tokio::time::sleep_until(pause).await;
                        in_flight.push(op());
                        next_hedge = Instant::now() + hedge_after;
                    }
                }
                Err(e) => return Err(super::etcd_error(e)),
            },
            _ = tokio::time::sleep_until(next_hedge), if in_flight.len() < MAX_IN_FLIGHT => {
                in_flight.push(op());
                next_hedge = Instant::now() + hedge_after;
            }
            _ = tokio::time::sleep_until(deadline) => return Err(out_of_time(retry, timeout, None)),
        }
    }
}

/// The error when no attempt succeeded in time.
fn out_of_time(retry: Retry, timeout: Duration, last: Option<etcd_client::Error>) -> Error {
    match (retry, last) {
        (Retry::Checked, Some(e)) => Error::OutcomeUnknown {
            backend: "etcd",
            source: Box::new(e),
        },
        (Retry::Checked, None) => Error::OutcomeUnknown {
            backend: "etcd",
            source: format!("no answer within {timeout:?}").into(),
        },
        (Retry::Idempotent, _) => Error::Timeout(timeout),
    }
}

/// When a second attempt joins one still unanswered: long enough for a slow fsync, short
/// enough to get through within the request timeout after a leader change.
const HEDGE_MIN: Duration = Duration::from_millis(250);
const HEDGE_MAX: Duration = Duration::from_secs(1);
/// At most this many attempts of one request in flight at once.
const MAX_IN_FLIGHT: usize = 4;
/// The pauses between attempts that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// A failure of the member or of the way to it (as opposed to a refusal of the request):
/// UNAVAILABLE, or any status the client made up itself because the connection failed (a
/// member killed mid-request: "transport error", "operation was canceled: connection
/// closed"). Statuses a server sent carry no source; those made from a transport error
/// carry it.
pub(super) fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            i32::from(s.code()) == GRPC_UNAVAILABLE || std::error::Error::source(s).is_some()
        }
        _ => false,
    }
}
