//! Defects fixed in the past, kept re-insertable so that the simulator's power to find
//! them is checked again and again (feature `simulation`: `fairlock::sim::mutate`).
//! Without the feature every check is a constant `false`, and the code is the fixed code.

/// A defect that can be put back, one at a time, on the simulation's thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mutant {
    /// The etcd watch hub creates every watch under the same id, ignores refused creations
    /// and never cancels the ids of watches the server cancelled: after a compaction, etcd
    /// refuses the re-creation ("duplicate watch ID") and the waiter never wakes.
    ReusedWatchIds,
    /// The etcd watch hub's reads ask only whether a watched key exists, not whether it is
    /// still the same entry (create revision): a Go-style peer that re-locked its key is
    /// taken for the predecessor it replaced, and the waiter waits on a waiter behind it.
    ExistenceOnlyChecks,
    /// A removal disarms the queue entry's cleanup before the backend confirmed it: a
    /// removal cancelled half-way leaves the entry behind.
    CleanupDisarmedEarly,
    /// The etcd keep-alive counts the lease's deadline from when the answer arrived rather
    /// than from when the request was sent: a slow answer stretches the holder's belief
    /// past the server's expiry.
    DeadlineFromAnswer,
    /// A waiter does not check after waiting that its own entry still exists (etcd issue
    /// 11456): a waiter whose entry went with its session is handed the lock.
    NoPostWaitCheck,
    /// A reader's `try_lock` does not compare that its own key is absent (the readers' keys
    /// lie outside the ranges it compares): a retried attempt puts the key again, and the
    /// reader takes the retry's revision for its create revision (a wrong token, an entry
    /// it cannot remove).
    ReaderTryPutsTwice,
}

#[cfg_attr(not(feature = "simulation"), allow(dead_code))]
impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 6] = [
        Mutant::ReusedWatchIds,
        Mutant::ExistenceOnlyChecks,
        Mutant::CleanupDisarmedEarly,
        Mutant::DeadlineFromAnswer,
        Mutant::NoPostWaitCheck,
        Mutant::ReaderTryPutsTwice,
    ];

    /// Its name, as `fairlock-sim --mutant` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::ReusedWatchIds => "reused-watch-ids",
            Mutant::ExistenceOnlyChecks => "existence-only-checks",
            Mutant::CleanupDisarmedEarly => "cleanup-disarmed-early",
            Mutant::DeadlineFromAnswer => "deadline-from-answer",
            Mutant::NoPostWaitCheck => "no-post-wait-check",
            Mutant::ReaderTryPutsTwice => "reader-try-puts-twice",
        }
    }
}

/// Whether `mutant` is active on this thread.
#[cfg(feature = "simulation")]
pub(crate) fn active(mutant: Mutant) -> bool {
    crate::sim::mutated() == Some(mutant)
}

/// Never, without the `simulation` feature.
#[cfg(not(feature = "simulation"))]
#[inline(always)]
pub(crate) fn active(_: Mutant) -> bool {
    false
}
