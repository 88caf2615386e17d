//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`):
//! fairlock records, your exporter (e.g. `metrics-exporter-prometheus`) publishes. Nothing
//! is recorded until a recorder is installed, and the library installs none.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `fairlock_acquire_total` | counter | `backend`, `kind`, `outcome` | acquisitions that ended: `outcome` = `acquired`, `busy` (`try_lock` found it taken), `timeout` (`lock_timeout` ran out), `error`, `cancelled` (the future was dropped) |
//! | `fairlock_acquire_wait_seconds` | histogram | `backend`, `kind`, `outcome` | how long each of them took |
//! | `fairlock_waiting` | gauge | `backend`, `kind` | acquisitions in progress (queued or on their way) |
//! | `fairlock_held` | gauge | `backend`, `kind` | guards and leaderships held, until released or known lost |
//! | `fairlock_hold_seconds` | histogram | `backend`, `kind`, `reason` | from acquisition to release (`reason` = `released`) or loss |
//! | `fairlock_lost_total` | counter | `backend`, `kind`, `reason` | holds lost: `session_expired`, `session_closed`, `deleted` |
//! | `fairlock_sessions_lost_total` | counter | `backend`, `reason` | sessions ended (`session_closed` is a `close()`) |
//! | `fairlock_sessions_suspended_total` | counter | `backend` | times a session was suspended (etcd, ZooKeeper) |
//! | `fairlock_leader` | gauge | `backend`, `election` | 1 while this process leads the election, else 0 |
//!
//! `backend` is `etcd`, `zookeeper` or `memory`; `kind` is `lock` or `election`. Every label
//! has a handful of values, except the lock name: it is left out by default, because
//! services that lock per item (an order, a user) would make one series per item. Turn it
//! on with [`set_name_label`] to get a `name` label on the lock and election metrics. The
//! switch is process-wide, as the recorder is. `fairlock_leader` always carries the
//! election's name: a process takes part in a few elections, fixed by its code.
//!
//! A deletion of a held entry by someone else is counted once it is known, that is once
//! someone asked the guard about its loss ([`LockGuard::lost`](crate::LockGuard::lost));
//! session losses are always known.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::lost::{LostReason, LostSignal};

static NAME_LABEL: AtomicBool = AtomicBool::new(false);

/// Adds the lock (or election) name as a `name` label to the lock and election metrics,
/// process-wide; off by default, to bound the number of series. Metrics recorded before
/// the switch keep their labels.
pub fn set_name_label(on: bool) {
    NAME_LABEL.store(on, Ordering::Relaxed);
}

/// Whether the `name` label is on; see [`set_name_label`].
pub fn name_label() -> bool {
    NAME_LABEL.load(Ordering::Relaxed)
}

/// `fairlock_acquire_total`.
pub const ACQUIRE_TOTAL: &str = "fairlock_acquire_total";
/// `fairlock_acquire_wait_seconds`.
pub const ACQUIRE_WAIT_SECONDS: &str = "fairlock_acquire_wait_seconds";
/// `fairlock_waiting`.
pub const WAITING: &str = "fairlock_waiting";
/// `fairlock_held`.
pub const HELD: &str = "fairlock_held";
/// `fairlock_hold_seconds`.
pub const HOLD_SECONDS: &str = "fairlock_hold_seconds";
/// `fairlock_lost_total`.
pub const LOST_TOTAL: &str = "fairlock_lost_total";
/// `fairlock_sessions_lost_total`.
pub const SESSIONS_LOST_TOTAL: &str = "fairlock_sessions_lost_total";
/// `fairlock_sessions_suspended_total`.
pub const SESSIONS_SUSPENDED_TOTAL: &str = "fairlock_sessions_suspended_total";
/// `fairlock_leader`.
pub const LEADER: &str = "fairlock_leader";

/// The `reason` label of a loss.
fn reason_label(reason: LostReason) -> &'static str {
    match reason {
        LostReason::SessionExpired => "session_expired",
        LostReason::SessionClosed => "session_closed",
        LostReason::Deleted => "deleted",
        LostReason::Released => "released",
    }
}

/// The labels of one lock or election.
#[derive(Clone)]
struct Labels {
    backend: &'static str,
    kind: &'static str,
    name: String,
}

impl Labels {
    fn with(&self, extra: Option<(&'static str, &'static str)>) -> Vec<::metrics::Label> {
        let mut labels = vec![
            ::metrics::Label::new("backend", self.backend),
            ::metrics::Label::new("kind", self.kind),
        ];
        if name_label() {
            labels.push(::metrics::Label::new("name", self.name.clone()));
        }
        if let Some((key, value)) = extra {
            labels.push(::metrics::Label::new(key, value));
        }
        labels
    }
}

/// How an acquisition ended.
#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    Acquired,
    Busy,
    Timeout,
    Error,
}

/// One acquisition in progress: counted as waiting until [`finish`](Self::finish), or as
/// cancelled if dropped first.
pub(crate) struct Acquiring {
    labels: Labels,
    started: std::time::Instant,
    done: bool,
}

pub(crate) fn acquiring(backend: &'static str, kind: &'static str, name: &str) -> Acquiring {
    let labels = Labels {
        backend,
        kind,
        name: name.to_owned(),
    };
    ::metrics::gauge!(WAITING, labels.with(None)).increment(1.0);
    Acquiring {
        labels,
        started: std::time::Instant::now(),
        done: false,
    }
}

impl Acquiring {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.record(match outcome {
            Outcome::Acquired => "acquired",
            Outcome::Busy => "busy",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        });
    }

    fn record(&mut self, outcome: &'static str) {
        self.done = true;
        let labels = &self.labels;
        ::metrics::gauge!(WAITING, labels.with(None)).decrement(1.0);
        let with_outcome = labels.with(Some(("outcome", outcome)));
        ::metrics::counter!(ACQUIRE_TOTAL, with_outcome.clone()).increment(1);
        ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, with_outcome).record(self.started.elapsed());
    }
}

impl Drop for Acquiring {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled");
        }
    }
}

/// A hold that began: counted as held (and, for an election, leading) until `signal`
/// completes, with the release or the loss. A small task per hold waits for it.
pub(crate) fn held(signal: LostSignal, backend: &'static str, kind: &'static str, name: &str) {
    let labels = Labels {
        backend,
        kind,
        name: name.to_owned(),
    };
    let leader = (kind == "election").then(|| {
        vec![
            ::metrics::Label::new("backend", backend),
            ::metrics::Label::new("election", name.to_owned()),
        ]
    });
    ::metrics::gauge!(HELD, labels.with(None)).increment(1.0);
    if let Some(leader) = &leader {
        ::metrics::gauge!(LEADER, leader.clone()).increment(1.0);
    }
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        let reason = signal.await;
        ::metrics::gauge!(HELD, labels.with(None)).decrement(1.0);
        if let Some(leader) = leader {
            ::metrics::gauge!(LEADER, leader).decrement(1.0);
        }
        let with_reason = labels.with(Some(("reason", reason_label(reason))));
        ::metrics::histogram!(HOLD_SECONDS, with_reason.clone()).record(started.elapsed());
        if reason != LostReason::Released {
            ::metrics::counter!(LOST_TOTAL, with_reason).increment(1);
        }
    });
}

pub(crate) fn session_lost(backend: &'static str, reason: LostReason) {
    let reason = reason_label(reason);
    ::metrics::counter!(SESSIONS_LOST_TOTAL, "backend" => backend, "reason" => reason).increment(1);
}

#[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
pub(crate) fn session_suspended(backend: &'static str) {
    ::metrics::counter!(SESSIONS_SUSPENDED_TOTAL, "backend" => backend).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::DebuggingRecorder;

    /// The name label is off unless switched on (no test in this binary switches it).
    #[test]
    fn no_name_label_by_default() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            acquiring("memory", "lock", "order-4711").finish(Outcome::Busy);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        assert!(!snapshot.is_empty());
        for (key, ..) in snapshot {
            let labels: Vec<_> = key.key().labels().map(|l| l.key().to_owned()).collect();
            assert!(!labels.contains(&"name".to_owned()), "{labels:?}");
        }
    }
}
