//! The session state stream: what Curator's ConnectionStateListener tells, for every
//! backend.

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::lost::{LostReason, LostSignal};

/// The state of a client's session, as [`Client::session_states`](crate::Client::session_states)
/// reports it.
///
/// A holder should pause protected work while [`Suspended`](Self::Suspended) (its locks may
/// be lost without it knowing yet), resume on [`Reconnected`](Self::Reconnected) (they were
/// not), and give up on [`Lost`](Self::Lost) (they were; each guard's `lost()` has
/// completed too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionState {
    /// No session yet: a client from [`Client::connect_lazy`](crate::Client::connect_lazy)
    /// before its first lock or campaign (reads need none). Followed by
    /// [`Connected`](Self::Connected) when that opens one, or by
    /// [`Lost`](Self::Lost)`(`[`SessionClosed`](LostReason::SessionClosed)`)` on `close()`.
    Idle,
    /// A session is open and confirmed: the client's first, or a new one after a loss.
    Connected,
    /// The backend has not confirmed the session lately (etcd keep-alives failing,
    /// ZooKeeper disconnected). Locks are not known lost yet.
    Suspended,
    /// Confirmed again after [`Suspended`](Self::Suspended): nothing was lost.
    Reconnected,
    /// The session ended, with every lock and queue entry of it. The next acquisition
    /// opens a new session ([`Connected`](Self::Connected)), unless the client was closed.
    Lost(LostReason),
}

/// One client's state channel, shared by its sessions.
pub(crate) struct StateChannel {
    tx: watch::Sender<SessionState>,
    /// Which session is current: a late loss of an older one is not news.
    generation: AtomicU64,
}

impl StateChannel {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StateChannel {
            tx: watch::Sender::new(SessionState::Connected),
            generation: AtomicU64::new(0),
        })
    }

    /// A new session is current: reports it connected, and lost when `lost` completes.
    /// `backend` and `session` (its id) name it in traces.
    pub(crate) fn follow(
        self: &Arc<Self>,
        lost: LostSignal,
        backend: &'static str,
        session: String,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.tx.send_replace(SessionState::Connected);
        let states = Arc::downgrade(self);
        tokio::spawn(async move {
            let reason = lost.await;
            crate::metrics::session_lost(backend, reason);
            // Closing the client is deliberate; any other end of a session is a failure.
            if reason == LostReason::SessionClosed {
                tracing::info!(backend, %session, %reason, "session lost");
            } else {
                tracing::warn!(backend, %session, %reason, "session lost");
            }
            if let Some(states) = states.upgrade() {
                if states.generation.load(Ordering::SeqCst) == generation {
                    states.tx.send_replace(SessionState::Lost(reason));
                }
            }
        });
    }

    /// No session yet (a lazy client).
    pub(crate) fn idle(&self) {
        self.tx.send_replace(SessionState::Idle);
    }

    /// Ended without a session to follow (a lazy client closed before its first).
    pub(crate) fn lost(&self, reason: LostReason) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tx.send_replace(SessionState::Lost(reason));
    }

    pub(crate) fn current(&self) -> SessionState {
        *self.tx.borrow()
    }

    /// The current state, then every change.
    pub(crate) fn stream(&self) -> BoxStream<'static, SessionState> {
        let mut rx = self.tx.subscribe();
        rx.mark_changed();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let state = *rx.borrow_and_update();
            Some((state, rx))
        }))
    }
}

/// One session's suspended flag, reporting its changes to the client's channel (and to
/// traces, as the session `session` of `backend`).
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub(crate) struct Suspension {
    suspended: AtomicBool,
    states: Arc<StateChannel>,
    backend: &'static str,
    session: String,
}

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
impl Suspension {
    pub(crate) fn new(
        states: &Arc<StateChannel>,
        backend: &'static str,
        session: String,
    ) -> Arc<Self> {
        Arc::new(Suspension {
            suspended: AtomicBool::new(false),
            states: states.clone(),
            backend,
            session,
        })
    }

    pub(crate) fn get(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    /// Sets the flag; a change is reported as `Suspended` or `Reconnected`.
    pub(crate) fn set(&self, suspended: bool) {
        if self.suspended.swap(suspended, Ordering::SeqCst) != suspended {
            let (backend, session) = (self.backend, &self.session);
            if suspended {
                crate::metrics::session_suspended(backend);
                tracing::info!(backend, %session, "session suspended: the backend has not confirmed it lately");
            } else {
                tracing::info!(backend, %session, "session resumed: confirmed again, nothing lost");
            }
            self.states.tx.send_modify(|state| {
                if !matches!(state, SessionState::Lost(_)) {
                    *state = if suspended {
                        SessionState::Suspended
                    } else {
                        SessionState::Reconnected
                    };
                }
            });
        }
    }
}
