//! The leader loop: campaign, run the caller's work while leading, stop it the moment
//! leadership is lost, resign, campaign again. Curator's LeaderSelector and client-go's
//! `RunOrDie`, with the orderings their users trip over made explicit and tested.
//!
//! - The work gets a [`CancellationToken`] (in [`Leading`]) that fires as soon as
//!   leadership is known lost, when the session is suspended (by [`OnSuspended`] policy),
//!   or on shutdown.
//! - The loop resigns only after the work has stopped, and campaigns again only after it
//!   resigned ([`Requeue`] says whether it campaigns again at all).
//! - [`LeaderEvent`]s: started and stopped leading strictly alternate, each exactly once,
//!   also when the work panics or the loop shuts down; leader changes as
//!   [`Election::observe`] sees them.
//! - [`LeaderHandle::health`] reports a stuck loop: work that ignores its cancellation
//!   past the grace period, a campaign that keeps failing or stalls.

mod health;
mod run;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::election::{Election, Leader, Leadership};
use crate::error::Result;
use crate::guard::WriteOp;
use crate::lost::LostReason;

pub use health::{Health, Stuck};

/// What the loop does once a term has ended (the work returned, failed, panicked, or was
/// cancelled because leadership was lost or the session suspended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requeue {
    /// Resign, then campaign again (Curator's `autoRequeue`). The default.
    #[default]
    Always,
    /// Resign and end the loop after the first term.
    Never,
}

/// What a suspended session (the backend has not confirmed it lately; see
/// [`SessionState::Suspended`](crate::SessionState::Suspended)) does to the work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnSuspended {
    /// Cancel the work at once, resign and campaign again, as Curator's LeaderSelector
    /// does: nothing runs while leadership is uncertain. The default.
    #[default]
    Cancel,
    /// Let the work go on: it is cancelled only once leadership is known lost (which the
    /// client reports before the server can free it, by the safety margin).
    Continue,
}

/// Why a term ended, in [`LeaderEvent::StoppedLeading`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The work returned by itself.
    Returned,
    /// The work returned an error (its text).
    Failed(String),
    /// The work panicked (the panic's message); the loop contained it and resigned.
    Panicked(String),
    /// Leadership was lost; the work was cancelled.
    Lost(LostReason),
    /// The session was suspended and the policy is [`OnSuspended::Cancel`].
    Suspended,
    /// [`LeaderHandle::shutdown`] (or dropping the handle) stopped the loop.
    Shutdown,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Returned => f.write_str("the work returned"),
            StopReason::Failed(e) => write!(f, "the work failed: {e}"),
            StopReason::Panicked(e) => write!(f, "the work panicked: {e}"),
            StopReason::Lost(reason) => write!(f, "leadership lost: {reason}"),
            StopReason::Suspended => f.write_str("the session was suspended"),
            StopReason::Shutdown => f.write_str("shut down"),
        }
    }
}

/// What the leader loop reports, in order, through [`LeaderEvents`].
///
/// [`StartedLeading`](Self::StartedLeading) and [`StoppedLeading`](Self::StoppedLeading)
/// strictly alternate, each exactly once per term, and a stop always follows a start (also
/// after a panic, a loss, or shutdown). [`LeaderChanged`](Self::LeaderChanged) reports
/// each change [`Election::observe`] sees, in its own order: it is not synchronised with
/// the other two (another process's view of the election travels through the backend).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaderEvent {
    /// This process leads: the work of term `term` (1, 2, …) has been started.
    StartedLeading {
        /// The term's number in this loop.
        term: u64,
        /// The leadership's fencing token.
        fencing_token: u64,
        /// The leadership's backend key or node path.
        key: String,
    },
    /// The term ended: its work has stopped and the loop has resigned (or leadership was
    /// already gone).
    StoppedLeading {
        /// The term's number.
        term: u64,
        /// Why it ended.
        reason: StopReason,
    },
    /// The election's leader changed (a new leader, a new value, or `None`: nobody
    /// campaigns), this process or another.
    LeaderChanged(Option<Leader>),
}

/// The events of one leader loop: a [`Stream`] that ends when the loop has ended.
///
/// A stream rather than callbacks: the loop never waits for the consumer (a slow callback
/// run by the loop would delay the cancellation of the work, or the resign), the order is
/// the channel's, and the consumer handles events in its own task with its own state.
/// Events are buffered until read; drop the stream if you do not want them (the loop then
/// stops sending, and observes the election only for its health check).
pub struct LeaderEvents {
    rx: mpsc::UnboundedReceiver<LeaderEvent>,
}

impl Stream for LeaderEvents {
    type Item = LeaderEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LeaderEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl fmt::Debug for LeaderEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderEvents").finish_non_exhaustive()
    }
}

/// What one term's work gets: the cancellation token, and the leadership for fenced writes.
///
/// Cheap to clone. A clone kept past the term (in a task the work spawned) is harmless: the
/// leadership it refers to reports itself lost once the loop resigned, and its guarded
/// writes are refused.
#[derive(Clone)]
pub struct Leading {
    leadership: Arc<Leadership>,
    cancel: CancellationToken,
    term: u64,
}

impl Leading {
    /// The token that fires when the work must stop: leadership lost, session suspended (by
    /// policy), or shutdown. Hand clones to sub-tasks.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Completes when the work must stop; see [`token`](Self::token).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it loses nothing.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the work must stop now.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// This term's number in the loop (1, 2, …).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The leadership's fencing token: pass it to the stores you write to.
    pub fn fencing_token(&self) -> u64 {
        self.leadership.fencing_token()
    }

    /// The leadership itself: its key, value and `lost()` signal.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Writes to the backend only while still leading; see
    /// [`LockGuard::guarded_write`](crate::LockGuard::guarded_write).
    ///
    /// # Errors
    /// As [`LockGuard::guarded_write`](crate::LockGuard::guarded_write); after the loop
    /// resigned, [`Error::LockLost`](crate::Error::LockLost).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future may or may not leave the write applied.
    pub async fn guarded_write(&self, ops: &[WriteOp]) -> Result<()> {
        self.leadership.guarded_write(ops).await
    }
}

impl fmt::Debug for Leading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leading")
            .field("term", &self.term)
            .field("fencing_token", &self.fencing_token())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// What the work of a term returns: `()`, or a `Result` whose error is reported as
/// [`StopReason::Failed`].
pub trait WorkOutcome: Send + 'static {
    /// The error's text, if the work failed.
    fn failure(self) -> Option<String>;
}

impl WorkOutcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: fmt::Display + Send + 'static> WorkOutcome for std::result::Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// A leader loop on one election, to configure and then [`spawn`](Self::spawn).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// use fairlock::leader::{LeaderEvent, LeaderLoop, Leading, StopReason};
/// use futures::StreamExt;
///
/// let client = fairlock::Client::connect("memory://leader-doc").await?;
/// let (handle, mut events) = LeaderLoop::new(&client, "reports", "worker-1")?
///     .spawn(|leading: Leading| async move {
///         // The work: runs while leading, stops when the token fires.
///         leading.cancelled().await;
///     });
/// let Some(LeaderEvent::StartedLeading { term: 1, .. }) = next_term_event(&mut events).await
/// else { panic!("not leading") };
/// assert!(handle.is_leading());
///
/// handle.shutdown().await?; // cancels the work, waits for it, then resigns
/// assert_eq!(
///     next_term_event(&mut events).await,
///     Some(LeaderEvent::StoppedLeading { term: 1, reason: StopReason::Shutdown })
/// );
/// # async fn next_term_event(events: &mut fairlock::leader::LeaderEvents) -> Option<LeaderEvent> {
/// #     while let Some(event) = events.next().await {
/// #         if !matches!(event, LeaderEvent::LeaderChanged(_)) { return Some(event); }
/// #     }
/// #     None
/// # }
/// # client.close().await
/// # }
/// ```
#[derive(Debug)]
pub struct LeaderLoop {
    client: Client,
    election: Arc<dyn Election>,
    value: Vec<u8>,
    requeue: Requeue,
    on_suspended: OnSuspended,
    grace: Duration,
}

impl LeaderLoop {
    /// A loop campaigning in election `name` of `client` with `value` (what observers
    /// see). Defaults: [`Requeue::Always`], [`OnSuspended::Cancel`], a grace of 10 s.
    ///
    /// # Errors
    /// [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn new(client: &Client, name: &str, value: impl Into<Vec<u8>>) -> Result<LeaderLoop> {
        Ok(LeaderLoop {
            election: client.election(name)?,
            client: client.clone(),
            value: value.into(),
            requeue: Requeue::default(),
            on_suspended: OnSuspended::default(),
            grace: Duration::from_secs(10),
        })
    }

    /// Whether to campaign again after a term; see [`Requeue`].
    pub fn requeue(mut self, requeue: Requeue) -> Self {
        self.requeue = requeue;
        self
    }

    /// What a suspended session does to the work; see [`OnSuspended`].
    pub fn on_suspended(mut self, policy: OnSuspended) -> Self {
        self.on_suspended = policy;
        self
    }

    /// How long work may run on after its cancellation, and a campaign may keep failing,
    /// before [`LeaderHandle::health`] reports the loop [`Stuck`].
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Starts the loop in a task of its own: campaign, run `work` while leading, resign,
    /// and (by [`Requeue`] policy) campaign again. `work` is called once per term, and its
    /// future runs in a task of its own, so a panic in it is contained: the loop resigns,
    /// reports [`StopReason::Panicked`] and goes on.
    ///
    /// Campaigns that fail with a transient error are retried with a growing delay
    /// (100 ms to 10 s); so is the next campaign after work that failed or panicked. A
    /// permanent error (the client was closed, say) ends the loop;
    /// [`LeaderHandle::shutdown`] returns it.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F, Fut>(self, work: F) -> (LeaderHandle, LeaderEvents)
    where
        F: FnMut(Leading) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WorkOutcome,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(health::Shared::new(self.grace));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run::run(
            self,
            work,
            run::Context {
                shared: shared.clone(),
                shutdown: shutdown.clone(),
                events: tx,
            },
        ));
        let handle = LeaderHandle {
            shared,
            shutdown,
            task: Some(task),
        };
        (handle, LeaderEvents { rx })
    }
}

/// The running loop: readiness, health, shutdown. Dropping it shuts the loop down in the
/// background (the work is cancelled, and the loop resigns once it has stopped).
#[must_use = "dropping the handle shuts the leader loop down"]
pub struct LeaderHandle {
    shared: Arc<health::Shared>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl LeaderHandle {
    /// Whether this process leads now and its work has not been told to stop: for a
    /// readiness probe. False as soon as leadership is known lost, even before the loop
    /// has handled it.
    pub fn is_leading(&self) -> bool {
        self.shared.is_leading()
    }

    /// The loop's state, or why it is stuck; see [`Health`].
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// A cheap, cloneable view of [`is_leading`](Self::is_leading) and
    /// [`health`](Self::health), for HTTP handlers and probes, while the handle stays with
    /// whoever shuts the loop down.
    pub fn status(&self) -> LeaderStatus {
        LeaderStatus {
            shared: self.shared.clone(),
        }
    }

    /// Stops the loop: a campaign in progress is withdrawn; work in progress is cancelled,
    /// awaited (however long it takes: [`health`](Self::health) reports it stuck after the
    /// grace period), and only then is leadership resigned. Returns when the loop has
    /// ended.
    ///
    /// # Errors
    /// The permanent error that ended the loop before (a closed client, say), or the
    /// final resign's if the backend did not confirm it ([`Error::Timeout`](crate::Error::Timeout),
    /// [`Error::Backend`](crate::Error::Backend); the release goes on in the background).
    ///
    /// # Cancel safety
    /// Cancel safe in effect: if the future is dropped, the loop still shuts down in the
    /// background.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the loop ends by itself ([`Requeue::Never`] after its term, or a
    /// permanent error), without asking it to.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future shuts the loop down, as dropping the handle does.
    pub async fn join(mut self) -> Result<()> {
        self.wait().await
    }

    async fn wait(&mut self) -> Result<()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(result) => result,
            // The loop contains the work's panics; a panic of its own is a bug.
            Err(e) => Err(crate::Error::Backend {
                backend: "fairlock",
                source: format!("the leader loop failed: {e}").into(),
            }),
        }
    }
}

/// A read-only view of a leader loop; see [`LeaderHandle::status`]. It outlives the loop
/// harmlessly (reporting [`Health::Stopped`]).
#[derive(Clone)]
pub struct LeaderStatus {
    shared: Arc<health::Shared>,
}

impl LeaderStatus {
    /// As [`LeaderHandle::is_leading`].
    pub fn is_leading(&self) -> bool {
        self.shared.is_leading()
    }

    /// As [`LeaderHandle::health`].
    pub fn health(&self) -> Health {
        self.shared.health()
    }
}

impl fmt::Debug for LeaderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderStatus")
            .field("health", &self.health())
            .finish()
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl fmt::Debug for LeaderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderHandle")
            .field("health", &self.health())
            .finish()
    }
}
