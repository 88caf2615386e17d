//! Leader election: the same fair queue as the mutex, with a value per candidate.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::guard::{LockGuard, WriteOp};
use crate::lost::LostSignal;
use crate::mutex::Acquire;

/// The leader of an election, as [`Election::leader`] and [`Election::observe`] see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The value the leader campaigned with, or last proclaimed.
    pub value: Vec<u8>,
    /// The leader's backend key or node path.
    pub key: String,
    /// The leader's fencing token.
    pub fencing_token: u64,
}

/// A fair leader election on one name: candidates queue in FIFO order, the first leads, and
/// when it resigns or its session ends, the next one leads.
///
/// Object safe; obtain one from [`Client::election`](crate::Client::election).
///
/// Layouts: on etcd, that of Go's `concurrency.Election` (so `etcdctl elect PREFIX/NAME
/// VALUE` campaigns in the same election and `etcdctl elect -l PREFIX/NAME` observes it);
/// on ZooKeeper, that of Curator's LeaderLatch (`_c_<uuid>-latch-<seq>` nodes holding the
/// value).
///
/// Open for wrappers, as [`DistributedMutex`](crate::DistributedMutex) is: delegate to an
/// inner election and pass on its [`Leadership`].
#[async_trait]
pub trait Election: Send + Sync + fmt::Debug {
    /// The election's name.
    fn name(&self) -> &str;

    /// The one required acquisition method: campaign as `mode` says. `Ok(None)` means not
    /// elected (someone else leads or campaigns, for [`Acquire::Try`]; time up, for
    /// [`Acquire::Timeout`]), and then no candidacy is left behind.
    ///
    /// # Errors
    /// See [`campaign`](Self::campaign).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future withdraws the candidacy (in the background, bounded
    /// by the request timeout).
    async fn campaign_with(&self, value: &[u8], mode: Acquire) -> Result<Option<Leadership>>;

    /// Waits in FIFO order until this candidate leads. A candidate whose session expired
    /// while it waited is never told it leads: its own entry is checked after the wait (on
    /// ZooKeeper, together with the node's owner session).
    ///
    /// # Errors
    /// - [`Error::SessionExpired`]: the session ended while campaigning.
    /// - [`Error::LockLost`]: the candidacy was deleted by someone else.
    /// - [`Error::Closed`]: the client was closed.
    /// - [`Error::Timeout`], [`Error::Unreachable`], [`Error::Backend`]: the backend failed;
    ///   the candidacy is withdrawn before the error is returned.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`campaign_with`](Self::campaign_with).
    async fn campaign(&self, value: &[u8]) -> Result<Leadership> {
        match self.campaign_with(value, Acquire::Wait).await? {
            Some(leadership) => Ok(leadership),
            None => Err(Error::Backend {
                backend: "fairlock",
                source: "a waiting campaign returned without leadership".into(),
            }),
        }
    }

    /// The current leader, or `None` when nobody campaigns.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Backend`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    async fn leader(&self) -> Result<Option<Leader>>;

    /// A stream of the leader as it changes: a new leader, a new value proclaimed, or `None`
    /// when the last candidate left. Each change is yielded once, in order; the stream
    /// re-reads the leader after a reconnection (changes that came and went while
    /// disconnected are not replayed), and ends only when dropped. A backend error is
    /// yielded as an item, and the stream goes on.
    fn observe(&self) -> BoxStream<'static, Result<Option<Leader>>>;
}

/// Proof of leadership, until [`resign`](Self::resign) or drop (which resigns in the
/// background).
///
/// Like a [`LockGuard`]: a fencing token, a lost signal and guarded writes; plus
/// [`proclaim`](Self::proclaim) to change the value observers see.
#[must_use = "leadership is given up (in the background) as soon as this is dropped"]
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    value: Vec<u8>,
}

impl Leadership {
    pub(crate) fn new(guard: LockGuard, value: Vec<u8>) -> Self {
        Leadership { guard, value }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// This candidate's backend key or node path.
    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// The fencing token: greater than that of every earlier leader of this election.
    pub fn fencing_token(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// Who leads, for services elsewhere; see [`LockGuard::sequencer`]. Its kind is
    /// [`QueueKind::Election`](crate::QueueKind::Election).
    pub fn sequencer(&self) -> &crate::Sequencer {
        self.guard.sequencer()
    }

    /// The value observers see.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Completes when leadership is known lost (or resigned); see [`LockGuard::lost`].
    pub fn lost(&self) -> LostSignal {
        self.guard.lost()
    }

    /// Whether leadership is already known lost.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Publishes a new value, only while still leading.
    ///
    /// # Errors
    /// [`Error::LockLost`] if leadership was lost (nothing written); [`Error::Timeout`],
    /// [`Error::Backend`].
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future may or may not leave the value published.
    pub async fn proclaim(&mut self, value: &[u8]) -> Result<()> {
        self.guard.proclaim(value).await?;
        self.value = value.to_vec();
        Ok(())
    }

    /// Writes to the backend only while still leading; see [`LockGuard::guarded_write`].
    ///
    /// # Errors
    /// As [`LockGuard::guarded_write`].
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`LockGuard::guarded_write`].
    pub async fn guarded_write(&self, ops: &[WriteOp]) -> Result<()> {
        self.guard.guarded_write(ops).await
    }

    /// Steps down and waits for the backend to confirm; the next candidate leads.
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// Cancel safe in effect, as [`LockGuard::release`].
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }

    /// [`resign`](Self::resign) through a shared reference, for the leader loop, whose
    /// work may still hold clones: only the first call resigns.
    pub(crate) async fn resign_shared(&self) -> Result<()> {
        self.guard.release_shared().await
    }

    /// The underlying guard.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }
}
