//! Process-wide counters of what the lock queues do, for diagnostics and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

static ACQUISITIONS: AtomicU64 = AtomicU64::new(0);
static WAITS: AtomicU64 = AtomicU64::new(0);
static WAKEUPS: AtomicU64 = AtomicU64::new(0);
static QUEUE_READS: AtomicU64 = AtomicU64::new(0);
static WATCH_CHECKS: AtomicU64 = AtomicU64::new(0);
static HEAD_READS: AtomicU64 = AtomicU64::new(0);
static WATCH_DOUBTS: AtomicU64 = AtomicU64::new(0);

/// A snapshot of fairlock's counters, summed over every client of this process since it
/// started. Subtract two snapshots to measure an interval (saturating: a snapshot taken
/// before `earlier` gives zeros, never a panic).
///
/// Feature `test-util`: for benchmarks and tests, not a stable API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Guards (and leaderships) handed out.
    pub acquisitions: u64,
    /// Times a waiter started waiting for its predecessor's deletion.
    pub waits: u64,
    /// Times a waiter woke up because its predecessor went (or may have gone).
    pub wakeups: u64,
    /// Reads of a queue by a waiter after waking (the post-wait check and the next
    /// predecessor); each wake-up costs at most one.
    pub queue_reads: u64,
    /// Reads of a watched key right after its watch was created, to cover the revisions
    /// between the read that found the key and the watch's start (etcd; at most one per
    /// watch, only when the store moved in between).
    pub watch_checks: u64,
    /// Reads of an election's head by [`Election::observe`](crate::Election::observe)
    /// streams (etcd): one when a stream starts and one each time the head's watch ends.
    pub head_reads: u64,
    /// Waiters' watches whose first confirming pair of creations could not show the watch
    /// synced (etcd: a write landed while the server registered it), so that another pair
    /// was created or the candidates kept.
    pub watch_doubts: u64,
}

impl std::ops::Sub for Stats {
    type Output = Stats;

    fn sub(self, earlier: Stats) -> Stats {
        Stats {
            acquisitions: self.acquisitions.saturating_sub(earlier.acquisitions),
            waits: self.waits.saturating_sub(earlier.waits),
            wakeups: self.wakeups.saturating_sub(earlier.wakeups),
            queue_reads: self.queue_reads.saturating_sub(earlier.queue_reads),
            watch_checks: self.watch_checks.saturating_sub(earlier.watch_checks),
            head_reads: self.head_reads.saturating_sub(earlier.head_reads),
            watch_doubts: self.watch_doubts.saturating_sub(earlier.watch_doubts),
        }
    }
}

/// The counters now. Feature `test-util`.
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
pub fn stats() -> Stats {
    Stats {
        acquisitions: ACQUISITIONS.load(Ordering::Relaxed),
        waits: WAITS.load(Ordering::Relaxed),
        wakeups: WAKEUPS.load(Ordering::Relaxed),
        queue_reads: QUEUE_READS.load(Ordering::Relaxed),
        watch_checks: WATCH_CHECKS.load(Ordering::Relaxed),
        head_reads: HEAD_READS.load(Ordering::Relaxed),
        watch_doubts: WATCH_DOUBTS.load(Ordering::Relaxed),
    }
}

pub(crate) fn acquired() {
    ACQUISITIONS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn waiting() {
    WAITS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn woke() {
    WAKEUPS.fetch_add(1, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn watch_checked() {
    WATCH_CHECKS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn read_queue() {
    QUEUE_READS.fetch_add(1, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn watch_doubted() {
    WATCH_DOUBTS.fetch_add(1, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn head_read() {
    HEAD_READS.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_a_later_snapshot_saturates() {
        let later = Stats {
            waits: 5,
            ..Stats::default()
        };
        assert_eq!(Stats::default() - later, Stats::default());
        assert_eq!((later - Stats::default()).waits, 5);
    }
}
