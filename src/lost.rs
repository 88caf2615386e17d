//! The lost-lock signal: a one-shot, cloneable event with a reason.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::clock::Deadline;

/// Why a lock (or session) stopped being held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// The session expired: the backend stopped hearing from this client for longer than
    /// the TTL (etcd lease expired, ZooKeeper session expired), or the lease was revoked
    /// by someone else.
    SessionExpired,
    /// The session was closed by this process ([`Client::close`](crate::Client::close)).
    SessionClosed,
    /// The lock's key or node was deleted by someone else.
    Deleted,
    /// The holder released the lock. Not a loss: it ends the signal for tasks still
    /// waiting on it.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::SessionExpired => "session expired",
            LostReason::SessionClosed => "session closed",
            LostReason::Deleted => "lock entry deleted by someone else",
            LostReason::Released => "released",
        })
    }
}

struct Inner {
    token: CancellationToken,
    reason: OnceLock<LostReason>,
    parent: Option<Arc<Inner>>,
    /// A session's lease deadline: once it passed, the session is lost, whether or not the
    /// keep-alive task has run since (it may not have: the machine was suspended).
    deadline: Option<Arc<Deadline>>,
}

impl Inner {
    fn fire(&self, reason: LostReason) {
        if !self.token.is_cancelled() {
            let _ = self.reason.set(reason);
        }
        self.token.cancel();
    }

    /// Whether this trigger or an ancestor has fired, or has a deadline that passed (which
    /// fires it now, as an expiry).
    fn is_lost(&self) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        if self.deadline.as_ref().is_some_and(|d| d.has_passed()) {
            self.fire(LostReason::SessionExpired);
            return true;
        }
        self.parent.as_ref().is_some_and(|p| p.is_lost())
    }

    fn reason(&self) -> Option<LostReason> {
        match self.reason.get() {
            Some(reason) => Some(*reason),
            None => self.parent.as_ref().and_then(|p| p.reason()),
        }
    }
}

/// The firing side of a [`LostSignal`]; backends hold it.
#[derive(Clone)]
pub(crate) struct LossTrigger(Arc<Inner>);

impl LossTrigger {
    pub(crate) fn new() -> Self {
        LossTrigger(Arc::new(Inner {
            token: CancellationToken::new(),
            reason: OnceLock::new(),
            parent: None,
            deadline: None,
        }))
    }

    /// A trigger that also counts as fired ([`LostReason::SessionExpired`]) once `deadline`
    /// has passed, as soon as anyone asks.
    #[cfg(any(feature = "etcd", test))]
    pub(crate) fn with_deadline(deadline: Arc<Deadline>) -> Self {
        LossTrigger(Arc::new(Inner {
            token: CancellationToken::new(),
            reason: OnceLock::new(),
            parent: None,
            deadline: Some(deadline),
        }))
    }

    /// A trigger that also fires (with the parent's reason) when this one fires.
    pub(crate) fn child(&self) -> Self {
        LossTrigger(Arc::new(Inner {
            token: self.0.token.child_token(),
            reason: OnceLock::new(),
            parent: Some(self.0.clone()),
            deadline: None,
        }))
    }

    /// Fires with `reason`, unless it has fired already (the first reason sticks).
    pub(crate) fn fire(&self, reason: LostReason) {
        self.0.fire(reason);
    }

    pub(crate) fn signal(&self) -> LostSignal {
        LostSignal {
            inner: self.0.clone(),
            waiting: None,
        }
    }
}

/// Completes when a lock (or a session) is known to be no longer held.
///
/// A future, cheap to clone and `'static`: move a clone into a task or a `tokio::select!`
/// while the guard stays with you. It yields the [`LostReason`];
/// [`is_lost`](Self::is_lost) asks without waiting.
///
/// # Cancel safety
/// Cancel safe: dropping it loses nothing; any clone still completes on the loss.
pub struct LostSignal {
    inner: Arc<Inner>,
    waiting: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl LostSignal {
    /// Whether the loss has been observed already, or is certain now: a session whose
    /// client-side deadline passed counts as lost here even before the task that keeps it
    /// alive has run again (after the machine was suspended, say).
    pub fn is_lost(&self) -> bool {
        self.inner.is_lost()
    }

    /// The reason, once lost.
    pub fn reason(&self) -> Option<LostReason> {
        if self.is_lost() {
            self.inner.reason().or(Some(LostReason::SessionExpired))
        } else {
            None
        }
    }

    /// Waits for the loss and returns its reason, without consuming the signal.
    pub async fn wait(&self) -> LostReason {
        self.clone().await
    }
}

impl Clone for LostSignal {
    fn clone(&self) -> Self {
        LostSignal {
            inner: self.inner.clone(),
            waiting: None,
        }
    }
}

impl Future for LostSignal {
    type Output = LostReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LostReason> {
        if self.inner.is_lost() {
            // Also a deadline that passed while the machine slept, before any task noticed.
            return Poll::Ready(self.reason().unwrap_or(LostReason::SessionExpired));
        }
        let token = self.inner.token.clone();
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(token.cancelled_owned()));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.reason().unwrap_or(LostReason::SessionExpired)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for LostSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LostSignal")
            .field("lost", &self.reason())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_reports_parent_reason() {
        let session = LossTrigger::new();
        let guard = session.child();
        let signal = guard.signal();
        assert!(!signal.is_lost());
        session.fire(LostReason::SessionExpired);
        assert_eq!(signal.clone().await, LostReason::SessionExpired);
        guard.fire(LostReason::Released);
        assert_eq!(signal.reason(), Some(LostReason::SessionExpired));
    }

    #[tokio::test]
    async fn a_passed_deadline_is_a_loss_when_asked() {
        use crate::clock::BootInstant;
        use std::time::Duration;

        let deadline = Arc::new(Deadline::new(
            BootInstant::now().add(Duration::from_secs(60)),
        ));
        let session = LossTrigger::with_deadline(deadline.clone());
        let guard = session.child().signal();
        assert!(!guard.is_lost());
        // Nobody fires the trigger: the deadline alone decides, as after a suspend.
        deadline.set(BootInstant::now().sub(Duration::from_millis(1)));
        assert!(guard.is_lost());
        assert_eq!(guard.reason(), Some(LostReason::SessionExpired));
        assert_eq!(guard.clone().await, LostReason::SessionExpired);
    }

    #[tokio::test]
    async fn first_reason_sticks() {
        let t = LossTrigger::new();
        t.fire(LostReason::Deleted);
        t.fire(LostReason::Released);
        assert_eq!(t.signal().wait().await, LostReason::Deleted);
    }
}
