//! A client's current session, replaced by a new one once it is lost. A lazy client's slot
//! starts empty and opens its first session the way it renews a lost one.

use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;

use super::QueueSession;
use crate::error::{Error, Result};
use crate::lost::{LossTrigger, LostReason, LostSignal};
use crate::state::StateChannel;

/// The current session of a client; replaced by a new one once it is lost.
pub(crate) struct SessionSlot<S> {
    /// The session, and whether the slot was closed: one lock, so that a renewal cannot
    /// install a session after `close()` took the last one.
    state: StdMutex<SlotState<S>>,
    renewing: tokio::sync::Mutex<()>,
    /// Where the client's session states are reported.
    states: Arc<StateChannel>,
    /// What [`lost`](Self::lost) hands out while the slot is empty: it fires when the first
    /// session is lost, or on `close()` before any session was opened.
    first_lost: LossTrigger,
}

struct SlotState<S> {
    /// `None` until a lazy client's first session.
    current: Option<Arc<S>>,
    closed: bool,
}

impl<S: QueueSession> SessionSlot<S> {
    /// A slot holding `first`; `states` is the channel its sessions report to.
    pub(crate) fn new(first: Arc<S>, states: Arc<StateChannel>) -> Self {
        tracing::debug!(backend = S::BACKEND, session = %first.id(), "session opened");
        states.follow(first.trigger().signal(), S::BACKEND, first.id());
        SessionSlot {
            state: StdMutex::new(SlotState {
                current: Some(first),
                closed: false,
            }),
            renewing: tokio::sync::Mutex::new(()),
            states,
            first_lost: LossTrigger::new(),
        }
    }

    /// An empty slot (a lazy client): the first [`live`](Self::live) opens a session.
    /// `states` reports [`SessionState::Idle`](crate::SessionState::Idle) until then.
    pub(crate) fn empty(states: Arc<StateChannel>) -> Self {
        states.idle();
        SessionSlot {
            state: StdMutex::new(SlotState {
                current: None,
                closed: false,
            }),
            renewing: tokio::sync::Mutex::new(()),
            states,
            first_lost: LossTrigger::new(),
        }
    }

    /// The client's session state channel.
    pub(crate) fn states(&self) -> &Arc<StateChannel> {
        &self.states
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState<S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session in use now, lost or not; `None` before a lazy client's first session.
    pub(crate) fn current(&self) -> Option<Arc<S>> {
        self.state().current.clone()
    }

    /// The current session's loss signal; before the first session, one that completes
    /// when the first session is lost (or the slot is closed without one).
    pub(crate) fn lost(&self) -> LostSignal {
        match self.current() {
            Some(session) => session.trigger().signal(),
            None => self.first_lost.signal(),
        }
    }

    /// The current session if the slot is open and the session not lost.
    fn open_and_live(&self) -> Result<Option<Arc<S>>> {
        let state = self.state();
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(state
            .current
            .as_ref()
            .filter(|s| !s.trigger().signal().is_lost())
            .cloned())
    }

    /// A live session: the current one, or a new one from `open` if it was lost (or if
    /// there is none yet).
    ///
    /// # Errors
    /// [`Error::Closed`] after [`close`](Self::close); whatever `open` returns.
    pub(crate) async fn live<F>(&self, open: impl FnOnce() -> F) -> Result<Arc<S>>
    where
        F: Future<Output = Result<Arc<S>>>,
    {
        if let Some(current) = self.open_and_live()? {
            return Ok(current);
        }
        let _renewing = self.renewing.lock().await;
        if let Some(current) = self.open_and_live()? {
            return Ok(current);
        }
        let fresh = open().await?;
        {
            let mut state = self.state();
            if !state.closed {
                let previous = state.current.replace(fresh.clone());
                match &previous {
                    // The first session: the signal handed out before it follows it.
                    None => {
                        let (first, lost) = (self.first_lost.clone(), fresh.trigger().signal());
                        tokio::spawn(async move { first.fire(lost.await) });
                    }
                    Some(previous) => tracing::info!(
                        backend = S::BACKEND,
                        session = %fresh.id(),
                        previous = %previous.id(),
                        "session replaced by a new one"
                    ),
                }
                self.states
                    .follow(fresh.trigger().signal(), S::BACKEND, fresh.id());
                return Ok(fresh);
            }
        }
        // Closed while the new session was opening: it must not outlive the client.
        let _ = fresh.close().await;
        Err(Error::Closed)
    }

    /// Marks the slot closed; returns the session to end, unless closed already or none
    /// was ever opened.
    pub(crate) fn close(&self) -> Option<Arc<S>> {
        let mut state = self.state();
        if std::mem::replace(&mut state.closed, true) {
            return None;
        }
        if state.current.is_none() {
            self.first_lost.fire(LostReason::SessionClosed);
            self.states.lost(LostReason::SessionClosed);
        }
        state.current.clone()
    }
}

/// A backend's client: where a [`QueueMutex`] gets its live session from.
#[async_trait]
pub(crate) trait SessionSource: Send + Sync + 'static {
    type Session: QueueSession;

    /// The client's current session.
    fn slot(&self) -> &SessionSlot<Self::Session>;

    /// Opens a new session.
    async fn open(&self) -> Result<Arc<Self::Session>>;

    /// A live session: the current one, or a new one if it was lost.
    async fn session(&self) -> Result<Arc<Self::Session>> {
        self.slot().live(|| self.open()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lost::LostReason;
    use crate::memory::{MemorySession, MemoryStore};
    use crate::state::StateChannel;

    /// `close()` while a renewal is opening a new session: the new session must not
    /// outlive the close (nor serve the closed client).
    #[tokio::test]
    async fn close_during_renewal_ends_the_new_session() {
        let store = MemoryStore::named("slot-close-during-renewal");
        let ttl = Duration::from_secs(10);
        let slot = SessionSlot::new(MemorySession::open(&store, ttl), StateChannel::new());
        assert!(store.expire_session(&slot.current().unwrap().id()));

        let fresh = MemorySession::open(&store, ttl);
        let (opened, gate) = tokio::sync::oneshot::channel::<()>();
        let renewal = slot.live(|| {
            let fresh = fresh.clone();
            async move {
                let _ = gate.await;
                Ok(fresh)
            }
        });
        tokio::pin!(renewal);
        assert!(
            futures::poll!(renewal.as_mut()).is_pending(),
            "waits at the gate"
        );
        let _ = slot.close();
        let _ = opened.send(());
        let renewed = renewal.await.map(|s| s.id());
        assert!(matches!(renewed, Err(Error::Closed)), "{renewed:?}");
        assert_eq!(
            fresh.trigger().signal().reason(),
            Some(LostReason::SessionClosed),
            "the session opened during close() was left open"
        );
    }
}
