//! The leader loop's task: campaign, lead one term, resign, again.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::health::Shared;
use super::{LeaderEvent, LeaderLoop, Leading, OnSuspended, Requeue, StopReason, WorkOutcome};
use crate::election::{Election, Leadership};
use crate::error::{Error, Result};
use crate::state::SessionState;

/// What the task shares with the handle.
pub(super) struct Context {
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    pub(super) events: UnboundedSender<LeaderEvent>,
}

pub(super) async fn run<F, Fut>(setup: LeaderLoop, mut work: F, cx: Context) -> Result<()>
where
    F: FnMut(Leading) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WorkOutcome,
{
    let _observer = observe(setup.election.clone(), cx.shared.clone(), cx.events.clone());
    let result = campaign_and_lead(&setup, &mut work, &cx).await;
    cx.shared.stopped();
    if let Err(e) = &result {
        tracing::warn!(name = setup.election.name(), error = %e, "leader loop ended");
    }
    result
}

/// Delays between failed campaigns, and before campaigning again after work that failed.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}

async fn campaign_and_lead<F, Fut>(setup: &LeaderLoop, work: &mut F, cx: &Context) -> Result<()>
where
    F: FnMut(Leading) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WorkOutcome,
{
    let name = setup.election.name();
    let mut delays = backoff();
    let mut delay = None;
    let mut term = 0;
    loop {
        cx.shared.campaigning();
        if let Some(delay) = delay.take() {
            tokio::select! {
                _ = cx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // Dropping the campaign on shutdown withdraws the candidacy.
        let campaign = tokio::select! {
            biased;
            _ = cx.shutdown.cancelled() => return Ok(()),
            campaign = setup.election.campaign(&setup.value) => campaign,
        };
        let leadership = match campaign {
            Ok(leadership) => leadership,
            Err(e) if e.is_transient() => {
                tracing::warn!(name, error = %e, "campaign failed; retrying");
                cx.shared.campaign_failed(&e);
                delay = delays.next();
                continue;
            }
            Err(e) => return Err(e),
        };
        if cx.shutdown.is_cancelled() {
            // Elected just as the shutdown came: no term to start.
            return leadership.resign().await.or_else(ignore_loss);
        }
        term += 1;
        let (reason, resigned) = lead(setup, work, cx, term, leadership).await;
        if cx.shutdown.is_cancelled() || setup.requeue == Requeue::Never {
            return resigned;
        }
        delay = match reason {
            StopReason::Failed(_) | StopReason::Panicked(_) => delays.next(),
            _ => {
                delays = backoff();
                None
            }
        };
    }
}

/// A resign that found leadership lost already has nothing left to do.
fn ignore_loss(e: Error) -> Result<()> {
    match e {
        Error::LockLost(_) => Ok(()),
        e => Err(e),
    }
}

/// One term: start the work, stop it when it must stop, wait for it, then resign.
async fn lead<F, Fut>(
    setup: &LeaderLoop,
    work: &mut F,
    cx: &Context,
    term: u64,
    leadership: Leadership,
) -> (StopReason, Result<()>)
where
    F: FnMut(Leading) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WorkOutcome,
{
    let leadership = Arc::new(leadership);
    let cancel = CancellationToken::new();
    // Leading before the start is announced: a consumer of the event finds it ready.
    cx.shared.leading(term, leadership.clone(), cancel.clone());
    let announced = Term::start(cx, term, &leadership);
    let leading = Leading {
        leadership: leadership.clone(),
        cancel: cancel.clone(),
        term,
    };
    // The work runs in a task of its own: its panics end up in the join result. Calling
    // `work` may panic too, before any future exists.
    let mut task = match std::panic::catch_unwind(AssertUnwindSafe(|| work(leading))) {
        Ok(future) => Some(AbortOnDropHandle::new(tokio::spawn(async move {
            future.await.failure()
        }))),
        Err(panic) => {
            let reason = StopReason::Panicked(panic_message(panic));
            return announced.end(cx, &leadership, reason).await;
        }
    };
    let mut states = match setup.on_suspended {
        OnSuspended::Cancel => Some(setup.client.session_states()),
        OnSuspended::Continue => None,
    };
    let lost = leadership.lost();
    let reason = loop {
        let Some(running) = task.as_mut() else {
            unreachable!("the task is taken only after the loop");
        };
        tokio::select! {
            biased;
            joined = running => {
                task = None;
                break outcome(joined);
            }
            reason = lost.clone() => break StopReason::Lost(reason),
            _ = cx.shutdown.cancelled() => break StopReason::Shutdown,
            state = next_state(&mut states) => {
                if state == SessionState::Suspended {
                    break StopReason::Suspended;
                }
            }
        }
    };
    cancel.cancel(); // also for sub-tasks of work that returned
    cx.shared.stopping(term);
    if let Some(running) = task {
        tracing::info!(name = setup.election.name(), term, %reason, "stopping the leader's work");
        if let StopReason::Panicked(panic) = outcome(running.await) {
            tracing::warn!(
                name = setup.election.name(),
                term,
                panic,
                "the work panicked while stopping"
            );
        }
    }
    cx.shared.work_done();
    announced.end(cx, &leadership, reason).await
}

/// The work's end, from its task's join result.
fn outcome(joined: std::result::Result<Option<String>, tokio::task::JoinError>) -> StopReason {
    match joined {
        Ok(None) => StopReason::Returned,
        Ok(Some(error)) => StopReason::Failed(error),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => StopReason::Panicked(panic_message(panic)),
            // Aborted: only when the runtime shuts down.
            Err(_) => StopReason::Shutdown,
        },
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

/// The next session state, or never if there is no stream (or it ended).
async fn next_state(states: &mut Option<BoxStream<'static, SessionState>>) -> SessionState {
    match states.as_mut() {
        Some(stream) => match stream.next().await {
            Some(state) => state,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A started term: its stop is announced exactly once, by [`end`](Self::end) or, if the
/// loop's task is dropped half-way (its runtime shutting down), on drop.
struct Term {
    events: UnboundedSender<LeaderEvent>,
    term: u64,
    open: bool,
    name: String,
}

impl Term {
    fn start(cx: &Context, term: u64, leadership: &Leadership) -> Term {
        let (name, key, token) = (
            leadership.name(),
            leadership.key(),
            leadership.fencing_token(),
        );
        tracing::info!(name, key, token, term, "started leading");
        let _ = cx.events.send(LeaderEvent::StartedLeading {
            term,
            fencing_token: token,
            key: key.to_owned(),
        });
        Term {
            events: cx.events.clone(),
            term,
            open: true,
            name: name.to_owned(),
        }
    }

    /// Resigns (the work has stopped), then announces the stop.
    async fn end(
        mut self,
        cx: &Context,
        leadership: &Leadership,
        reason: StopReason,
    ) -> (StopReason, Result<()>) {
        let resigned = leadership.resign_shared().await.or_else(ignore_loss);
        if let Err(e) = &resigned {
            tracing::warn!(name = %self.name, error = %e, "resign not confirmed; it goes on in the background");
        }
        cx.shared.stopping(self.term);
        cx.shared.work_done();
        self.announce(reason.clone());
        (reason, resigned)
    }

    fn announce(&mut self, reason: StopReason) {
        if std::mem::replace(&mut self.open, false) {
            let (name, term) = (&self.name, self.term);
            tracing::info!(name = %name, term, %reason, "stopped leading");
            let _ = self
                .events
                .send(LeaderEvent::StoppedLeading { term, reason });
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.announce(StopReason::Shutdown);
    }
}

/// Follows the election's leader for the events and the stall check, until dropped.
fn observe(
    election: Arc<dyn Election>,
    shared: Arc<Shared>,
    events: UnboundedSender<LeaderEvent>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut changes = election.observe();
        while let Some(change) = changes.next().await {
            match change {
                Ok(leader) => {
                    shared.observed(leader.is_some());
                    let _ = events.send(LeaderEvent::LeaderChanged(leader));
                }
                Err(e) => {
                    tracing::debug!(name = election.name(), error = %e, "observing the leader failed")
                }
            }
        }
    }))
}
