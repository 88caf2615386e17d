//! The read-write lock: two sides of one fair queue.

use std::fmt;
use std::sync::Arc;

use crate::mutex::DistributedMutex;

/// A fair (FIFO), cross-process read-write lock on one lock name: any number of readers
/// at once, or one writer. Obtain one from [`Client::rw_lock`](crate::Client::rw_lock).
///
/// Each side is a [`DistributedMutex`] (as Curator's `readLock()` and `writeLock()` are
/// mutexes), with everything the mutex has: `lock`, `try_lock`, `lock_timeout`, guards
/// with fencing tokens, [`lost`](crate::LockGuard::lost), guarded writes, sequencers, cancel
/// safety, [`ReentrantGuard`](crate::ReentrantGuard). Readers and writers share one queue,
/// in arrival order:
/// - a **writer** holds once nothing is ahead of it: it waits for its predecessor, reader
///   or writer, like a mutex waiter;
/// - a **reader** holds once no writer is ahead of it: it waits only for the nearest
///   writer ahead, so readers that queued after a writer wait for that writer, and a stream
///   of readers cannot starve a writer;
/// - a release wakes only the entries that waited for it: a writer's release wakes the
///   readers behind it up to the next writer (a batch, each watching that writer), a
///   reader's the writer directly behind it, if any.
///
/// [`try_lock`](DistributedMutex::try_lock) on the read side succeeds while no writer
/// holds or waits; on the write side, only while nobody holds or waits.
///
/// Fencing: every entry's token is greater than those of the entries ahead of it, so a
/// writer's token is above every earlier holder's, and a reader's above every earlier
/// writer's; readers holding together have tokens in no particular order. A
/// [`Fence`](crate::Fence) (which refuses any token below the highest seen) is therefore
/// for writers: readers should not write, or not through a fence they share. A reader's
/// guarded write is applied while that reader holds, whatever other readers do.
///
/// Within fairlock, the lock shares its queue with the name's [`mutex`](crate::Client::mutex),
/// which counts as a writer. With the peers:
/// - **etcd**: writers' keys are mutex keys (`PREFIX/NAME/<lease>-<n>`), so `etcdctl lock`
///   and Go's `concurrency.Mutex` on `PREFIX/NAME` count as writers, and wait for readers
///   too; readers are `PREFIX/NAME/read-<lease>-<n>`. See docs/DESIGN.md.
/// - **ZooKeeper**: the nodes of Curator's InterProcessReadWriteLock
///   (`_c_<uuid>-__READ__<seq>`, `_c_<uuid>-__WRIT__<seq>`); kazoo's ReadLock and
///   WriteLock nodes (`…__rlock__<seq>`, `…__lock__<seq>`) are readers and writers too.
///   kazoo sees fairlock's and Curator's nodes when told their names:
///   `ReadLock(…, extra_lock_patterns=["__WRIT__", "-lock-"])` and
///   `WriteLock(…, extra_lock_patterns=["__READ__", "__WRIT__", "-lock-"])`. Curator
///   does not: its InterProcessMutex and its read-write lock ignore each other's nodes, so
///   a name that Curator locks as a mutex must not be a read-write lock anywhere (and one
///   that Curator locks as a read-write lock, not a `fairlock` mutex), or Curator's side
///   may hold beside another holder.
/// - **memory**: the same semantics in-process.
///
/// There is no downgrade from write to read: Curator's (take the read lock while holding
/// the write lock, then release the write lock) lets a writer that queued in between take
/// the lock while the downgraded reader still reads. Release the write lock and take the
/// read lock instead.
///
/// [`Config::lock_delay`](crate::Config::lock_delay) applies to mutexes only: a client
/// with a lock-delay refuses read-write locks ([`Error::InvalidConfig`](crate::Error)),
/// and readers (of clients without one) never wait out a mutex's lock-delay.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fairlock::Result<()> {
/// let client = fairlock::Client::connect("memory://rwlock-doc").await?;
/// let prices = client.rw_lock("prices")?;
///
/// let r1 = prices.reader().lock().await?;
/// let r2 = prices.reader().lock().await?; // readers share
/// assert!(prices.writer().try_lock().await?.is_none()); // a writer waits for both
/// r1.release().await?;
/// r2.release().await?;
///
/// let w = prices.writer().lock().await?;
/// assert!(prices.reader().try_lock().await?.is_none()); // readers wait for the writer
/// w.release().await
/// # }
/// ```
#[derive(Clone)]
pub struct ReadWriteLock {
    name: String,
    reader: Arc<dyn DistributedMutex>,
    writer: Arc<dyn DistributedMutex>,
}

impl ReadWriteLock {
    pub(crate) fn new(
        name: String,
        reader: Arc<dyn DistributedMutex>,
        writer: Arc<dyn DistributedMutex>,
    ) -> Self {
        ReadWriteLock {
            name,
            reader,
            writer,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The read (shared) side: its guards hold together with other readers.
    pub fn reader(&self) -> &Arc<dyn DistributedMutex> {
        &self.reader
    }

    /// The write (exclusive) side: its guards hold alone.
    pub fn writer(&self) -> &Arc<dyn DistributedMutex> {
        &self.writer
    }
}

impl fmt::Debug for ReadWriteLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadWriteLock")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
