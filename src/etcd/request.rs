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

use backon::{ExponentialBuilder, Retryable};

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
/// # Errors
/// The last attempt's error as [`Error::Backend`]; [`Error::Timeout`] when the time ran out
/// (for [`Retry::Checked`], [`Error::OutcomeUnknown`]).
pub(crate) async fn request<T, F, Fut>(timeout: Duration, retry: Retry, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    // An idempotent attempt that hangs is abandoned and sent again: a request that reached a
    // follower just as the leader died is forwarded to the dead leader and never answered
    // (the server gives up only after its own 5 s + 2 election timeouts), while a retry
    // after the election succeeds at once.
    let attempt_timeout = (timeout / 8).clamp(ATTEMPT_MIN, ATTEMPT_MAX);
    let bounded = || {
        let attempt = op();
        async move {
            match tokio::time::timeout(attempt_timeout, attempt).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(Failed::Etcd(e)),
                Err(_) => Err(Failed::Abandoned),
            }
        }
    };
    let attempts = bounded
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(250))
                .without_max_times(),
        )
        .when(|e: &Failed| match e {
            Failed::Abandoned => true,
            Failed::Etcd(e) => is_unavailable(e),
        });
    let unknown = |source: crate::BoxError| Error::OutcomeUnknown {
        backend: "etcd",
        source,
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Failed::Etcd(e))) => Err(super::etcd_error(e)),
        Ok(Err(Failed::Abandoned)) | Err(_) if retry == Retry::Checked => {
            Err(unknown(format!("no answer within {timeout:?}").into()))
        }
        Ok(Err(Failed::Abandoned)) | Err(_) => Err(Error::Timeout(timeout)),
    }
}

/// Why one attempt failed.
enum Failed {
    Etcd(etcd_client::Error),
    /// No answer within the attempt's time.
    Abandoned,
}

/// Bounds of one idempotent attempt: long enough for a slow fsync, short enough to retry
/// within the request timeout after a leader change.
const ATTEMPT_MIN: Duration = Duration::from_millis(250);
const ATTEMPT_MAX: Duration = Duration::from_secs(1);

/// A failure of the member or of the way to it (as opposed to a refusal of the request):
/// UNAVAILABLE, or any status caused by a broken connection (a member killed mid-request
/// answers "transport error" with an I/O cause).
pub(super) fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            i32::from(s.code()) == GRPC_UNAVAILABLE || has_io_cause(s)
        }
        _ => false,
    }
}

/// Whether an I/O error is among the causes of `status`.
fn has_io_cause(status: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = status.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}
