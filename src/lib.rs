//! # fairlock
//!
//! Fair, fenced distributed locks on **etcd** and **ZooKeeper**, behind one object-safe
//! async trait, [`DistributedMutex`]. The backend is chosen by a URL or a serde
//! [`Config`], so a service switches backends without code changes:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> fairlock::Result<()> {
//! # let url = "memory://lib-doc";
//! // url = "etcd://127.0.0.1:2379/shop" or "zk://127.0.0.1:2181/shop" in production
//! let client = fairlock::Client::connect(url).await?;
//! let stock = client.mutex("stock")?;
//!
//! let guard = stock.lock().await?;
//! // Every write that the lock protects carries the fencing token, or goes through the
//! // guard's guarded write, which the backend applies only while the lock is held:
//! guard
//!     .guarded_write(&[fairlock::WriteOp::put("shop/stock", "2")])
//!     .await?;
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Guarantees
//! - **Mutual exclusion** while sessions are live: one holder per name at a time.
//! - **Fair FIFO order** without polling: each waiter watches only its predecessor.
//! - **Fencing**: [`LockGuard::fencing_token`] strictly increases across holders; a
//!   [`LockGuard::guarded_write`] is applied only while the lock is held.
//! - **Lost-lock signal**: [`LockGuard::lost`] completes as soon as the loss is known.
//! - **High availability**: a crashed holder's lock is freed when its session expires
//!   (etcd lease TTL, ZooKeeper session timeout).
//! - **Cancel safety**: dropping a waiting future removes its queue entry.
//! - **Sequencers**: [`LockGuard::sequencer`] names the holder for services elsewhere,
//!   which check it with [`Client::check`] (current, superseded or lost, in one
//!   linearizable read) or fence their own writes by its token ([`Fence`]).
//!
//! No lock service can promise mutual exclusion to a process that pauses longer than its
//! TTL and then acts on stale belief (Jepsen, etcd 3.4.3); the fencing token and the
//! guarded write are how a protected resource refuses such a holder.
//!
//! ## Backends
//! - [`etcd`] (feature `etcd`): one key per waiter under `PREFIX/NAME/`, the layout of
//!   `etcdctl lock` and Go's `concurrency.Mutex`, so they share one queue.
//! - [`zookeeper`] (feature `zookeeper`): ephemeral sequential znodes named as Curator's
//!   InterProcessMutex names them, so Curator and kazoo share the queue.
//! - [`memory`]: in-process, same semantics, for unit tests.
//!
//! ## Running a service
//! - [`leader::LeaderLoop`]: run work while leading, cancelled the moment leadership is
//!   lost; resign, campaign again; events and a health check.

#![warn(missing_docs)]
// docs.rs (nightly) badges feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod client;
mod clock;
mod config;
mod election;
mod error;
mod fence;
mod guard;
mod key;
pub mod leader;
mod lost;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
#[path = "metrics_off.rs"]
mod metrics;
mod multi;
mod mutant;
mod mutex;
mod name;
mod queue;
mod reentrant;
mod rwlock;
mod semaphore;
mod sequencer;
mod state;
mod stats;

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
pub mod memory;
#[cfg(feature = "simulation")]
#[doc(hidden)]
pub mod sim;
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub mod zookeeper;

/// The attribute that implementations of [`DistributedMutex`] and [`Election`] use, the
/// version fairlock's traits are written with.
#[doc(no_inline)]
pub use async_trait::async_trait;
pub use backend::{QueueEntry, QueueKind};
pub use client::Client;
pub use config::{redact_url, AclPolicy, BackendKind, Config, TlsConfig};
pub use election::{Election, Leader, Leadership};
pub use error::{BoxError, Error, Result};
pub use fence::{Fence, FencePermit, StaleToken};
pub use guard::{LockGuard, WriteOp};
pub use key::{validate_key, MAX_KEY_LEN};
pub use lost::{LostReason, LostSignal};
pub use multi::{MultiGuard, MultiLock};
pub use mutex::{Acquire, DistributedMutex};
pub use name::{validate_name, MAX_NAME_LEN};
pub use reentrant::ReentrantGuard;
pub use rwlock::ReadWriteLock;
pub use semaphore::SemaphoreQueue;
pub use sequencer::{Sequencer, SequencerStatus};
pub use state::SessionState;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use stats::{stats, Stats};

/// Connects to the backend named by `url`; the same as [`Client::connect`].
///
/// # Errors
/// As [`Client::connect`].
pub async fn connect(url: &str) -> Result<Client> {
    Client::connect(url).await
}

/// The README's Rust blocks, run as doctests (on `memory://`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
