//! The counting semaphore's listing. The semaphore itself is a
//! [`DistributedMutex`](crate::DistributedMutex) ([`Client::semaphore`](crate::Client::semaphore)),
//! acquired by the queue algorithm (`queue.rs`): a gate queue, then a lease of the pool.

use crate::backend::QueueEntry;

/// Who holds and who waits for a semaphore, as
/// [`Client::semaphore_queue`](crate::Client::semaphore_queue) lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreQueue {
    /// The leases, oldest first: every one holds.
    pub holders: Vec<QueueEntry>,
    /// The entries of the semaphore's gate, in order: the first waits for a lease to be
    /// released, the others for the entry ahead of them.
    pub waiters: Vec<QueueEntry>,
}
