//! The one error type of fairlock.

use std::time::Duration;

use crate::lost::LostReason;

/// A boxed error from a backend's client library, kept as the source of [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of fairlock.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fairlock.
///
/// Matching should use a wildcard arm: new variants may be added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock (or election) name is not acceptable; see [`validate_name`](crate::validate_name).
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The semaphore was asked for with another limit than the one stored with it (by the
    /// first client that used it, fairlock or kazoo). Delete the semaphore's pool (key or
    /// node `NAME`) while nobody holds it to change the limit.
    #[error("semaphore {name:?} has a limit of {stored}, not {requested}")]
    LimitMismatch {
        /// The semaphore's name.
        name: String,
        /// The limit stored with it.
        stored: u32,
        /// The limit this client asked for.
        requested: u32,
    },

    /// The data key is not acceptable; see [`validate_key`](crate::validate_key).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The sequencer is not acceptable: its string form is malformed (see
    /// [`Sequencer`](crate::Sequencer)), or it cannot be checked by this client (another
    /// backend, a key outside this client's queue of that name).
    #[error("invalid sequencer {sequencer:?}: {reason}")]
    InvalidSequencer {
        /// The sequencer as given.
        sequencer: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The backend URL or configuration is malformed or not supported.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// No server answered within the connect timeout.
    #[error("backend unreachable at {endpoints}: {source}")]
    Unreachable {
        /// The endpoints that were tried, comma-separated.
        endpoints: String,
        /// What the last attempt reported.
        #[source]
        source: BoxError,
    },

    /// The session (etcd lease, ZooKeeper session) ended: expired, revoked or closed.
    /// Locks held or awaited on it are gone; a later call on the same client starts a new
    /// session, unless the client was closed.
    #[error("session expired")]
    SessionExpired,

    /// The lock is no longer held (or the waiter's queue entry vanished), for the given reason.
    /// Returned by guarded writes and by `release` of a guard whose lock was lost.
    #[error("lock lost: {0}")]
    LockLost(LostReason),

    /// The client was closed with [`Client::close`](crate::Client::close).
    #[error("client closed")]
    Closed,

    /// A request did not complete within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),

    /// A write was sent, but no answer came back (the request timed out, or the connection
    /// broke while it was in flight): it may or may not have been applied. Read back before
    /// retrying. Writes known *not* to have been applied report [`Error::LockLost`] or
    /// [`Error::SessionExpired`] instead.
    #[error("{backend}: outcome unknown: {source}")]
    OutcomeUnknown {
        /// Which backend: `etcd`, `zookeeper` or `memory`.
        backend: &'static str,
        /// What cut the request short.
        #[source]
        source: BoxError,
    },

    /// The server refused the credentials (wrong password, unknown user, no credentials
    /// where the server requires them, a client certificate it does not accept), or they
    /// could not be read. Not transient: retrying with the same credentials fails again.
    #[error("{backend}: authentication failed: {source}")]
    AuthenticationFailed {
        /// Which backend: `etcd` or `zookeeper`.
        backend: &'static str,
        /// What the server or client library said.
        #[source]
        source: BoxError,
    },

    /// The server knows who this client is and does not allow the operation (etcd RBAC
    /// permission denied, ZooKeeper NoAuth from a node's ACL).
    #[error("{backend}: permission denied: {source}")]
    PermissionDenied {
        /// Which backend: `etcd` or `zookeeper`.
        backend: &'static str,
        /// What the server or client library said.
        #[source]
        source: BoxError,
    },

    /// The TLS handshake failed: a server certificate that the configured CA did not sign,
    /// has expired or names another host; a client certificate the server refused; or a
    /// certificate, key or CA file that could not be read. The cause is kept as the
    /// source.
    #[error("{backend}: TLS: {source}")]
    Tls {
        /// Which backend: `etcd` or `zookeeper`.
        backend: &'static str,
        /// The TLS library's or the client library's error.
        #[source]
        source: BoxError,
    },

    /// The backend reported an error; the client library's error is the source.
    #[error("{backend} error: {source}")]
    Backend {
        /// Which backend: `etcd`, `zookeeper` or `memory`.
        backend: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig(message.into())
    }

    /// Whether retrying the same call later may succeed (timeouts, unreachable servers,
    /// transport errors, expired sessions), as opposed to errors in the input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::SessionExpired
                | Error::Timeout(_)
                | Error::OutcomeUnknown { .. }
                | Error::Backend { .. }
        )
    }
}

/// Runs `fut` with the request timeout, mapping expiry to [`Error::Timeout`].
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub(crate) async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(Error::Timeout(timeout)))
}
