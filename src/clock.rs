//! The clock that session deadlines are counted on.
//!
//! A lease or session keeps running on the server while this machine is suspended (a VM
//! paused, a laptop asleep), but tokio's clock (CLOCK_MONOTONIC) stops then: a deadline on
//! it would pass that much too late, and a holder would go on believing in a lock the
//! server already freed. On Linux deadlines are therefore counted on CLOCK_BOOTTIME, which
//! includes suspended time; elsewhere on the standard monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A point in time on the suspend-aware clock, as the time since an arbitrary origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    #[cfg(any(feature = "etcd", feature = "zookeeper", test))]
    pub(crate) fn now() -> Self {
        BootInstant(since_origin())
    }

    /// How long from now until `self`; zero if passed.
    pub(crate) fn remaining(self) -> Duration {
        self.0.saturating_sub(since_origin())
    }

    pub(crate) fn has_passed(self) -> bool {
        self.remaining().is_zero()
    }

    #[cfg(any(feature = "etcd", feature = "zookeeper", test))]
    pub(crate) fn add(self, d: Duration) -> Self {
        BootInstant(self.0 + d)
    }

    #[cfg(any(feature = "etcd", test))]
    pub(crate) fn sub(self, d: Duration) -> Self {
        BootInstant(self.0.saturating_sub(d))
    }
}

#[cfg(target_os = "linux")]
fn since_origin() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    #[cfg(feature = "simulation")]
    if let Some(simulated) = crate::sim::clock() {
        return simulated;
    }
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32),
        // Not expected on any Linux since 2.6.39; the monotonic clock is the fallback.
        Err(_) => monotonic(),
    }
}

#[cfg(not(target_os = "linux"))]
fn since_origin() -> Duration {
    #[cfg(feature = "simulation")]
    if let Some(simulated) = crate::sim::clock() {
        return simulated;
    }
    monotonic()
}

#[allow(dead_code)] // used on Linux only as a fallback
fn monotonic() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// A deadline that a keep-alive task moves and anyone may check: the session's lease
/// counts as lost once it has passed.
#[derive(Debug)]
pub(crate) struct Deadline(AtomicU64);

impl Deadline {
    #[cfg(any(feature = "etcd", test))]
    pub(crate) fn new(at: BootInstant) -> Self {
        Deadline(AtomicU64::new(at.0.as_nanos() as u64))
    }

    pub(crate) fn get(&self) -> BootInstant {
        BootInstant(Duration::from_nanos(self.0.load(Ordering::SeqCst)))
    }

    #[cfg(any(feature = "etcd", test))]
    pub(crate) fn set(&self, at: BootInstant) {
        self.0.store(at.0.as_nanos() as u64, Ordering::SeqCst);
    }

    pub(crate) fn has_passed(&self) -> bool {
        self.get().has_passed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_pass() {
        let soon = BootInstant::now().add(Duration::from_millis(20));
        let deadline = Deadline::new(soon);
        assert!(!deadline.has_passed());
        std::thread::sleep(Duration::from_millis(30));
        assert!(deadline.has_passed());
        deadline.set(BootInstant::now().add(Duration::from_secs(60)));
        assert!(!deadline.has_passed());
        assert!(deadline.get().remaining() > Duration::from_secs(59));
    }
}
