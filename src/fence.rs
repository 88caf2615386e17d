//! A fence for resources outside the lock backend: it keeps the highest fencing token seen
//! per resource and refuses older ones.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A write refused by a [`Fence`]: its token is older than one already seen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token} for {resource:?}: token {highest} was seen already")]
#[non_exhaustive]
pub struct StaleToken {
    /// The resource written to.
    pub resource: String,
    /// The refused token.
    pub token: u64,
    /// The highest token seen for the resource.
    pub highest: u64,
}

/// Keeps the highest fencing token seen per resource, in memory, and refuses older ones:
/// the check a resource outside etcd and ZooKeeper makes so that a holder that paused past
/// its TTL (and lost the lock to a newer holder) cannot write when it wakes.
///
/// Tokens of one lock name strictly increase across holders (see
/// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)); a token equal to the
/// highest seen is the same holder writing again, and is admitted. Use one resource name
/// per lock name: tokens of different locks are not meant to be compared. Thread safe;
/// share it (`Arc<Fence>`) between the tasks of a service.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let fence = fairlock::Fence::new();
/// fence.admit("stock", 7)?;                  // holder with token 7
/// fence.admit("stock", 9)?;                  // a newer holder
/// assert!(fence.admit("stock", 7).is_err()); // the old one woke up: refused
///
/// // Admission and write in one step: no older write lands after a newer one.
/// let permit = fence.enter("stock", 9).await?;
/// // … write to the store …
/// drop(permit);
/// # Ok(()) }
/// ```
///
/// # Only in memory
/// A `Fence` forgets everything when its process ends, and a new process admits any token,
/// a stale one too; it protects only what this process writes. A store that outlives the
/// process (a database, a file, an object store) must keep the highest token itself,
/// durably, next to the data it protects, and compare it in the same atomic write. In SQL:
///
/// ```sql
/// UPDATE accounts SET balance = ?1, token = ?2 WHERE id = ?3 AND token <= ?2
/// ```
///
/// A write whose token is stale changes no row (0 rows updated): refused.
/// `examples/fenced_sql.rs` does this with SQLite.
#[derive(Default)]
pub struct Fence {
    resources: Mutex<HashMap<String, Arc<Resource>>>,
}

#[derive(Default)]
struct Resource {
    highest: AtomicU64,
    /// Held by a [`FencePermit`]: admission and write, one writer at a time.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Fence {
    /// An empty fence: every token is admitted until a higher one was seen.
    pub fn new() -> Self {
        Fence::default()
    }

    fn resource(&self, resource: &str) -> Arc<Resource> {
        let mut resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        match resources.get(resource) {
            Some(found) => found.clone(),
            None => resources.entry(resource.to_owned()).or_default().clone(),
        }
    }

    /// Admits `token` for `resource` if no higher token was seen for it, and records it.
    ///
    /// Admitting and then writing are two steps: a writer admitted just before a newer one
    /// may still write after it (a pause between the two). When writes to the resource
    /// can race like that, use [`enter`](Self::enter).
    ///
    /// # Errors
    /// [`StaleToken`] if a higher token was seen for `resource`; nothing is recorded.
    pub fn admit(&self, resource: &str, token: u64) -> Result<(), StaleToken> {
        let seen = self
            .resource(resource)
            .highest
            .fetch_max(token, Ordering::SeqCst);
        if seen > token {
            return Err(StaleToken {
                resource: resource.to_owned(),
                token,
                highest: seen,
            });
        }
        Ok(())
    }

    /// Waits until no other permit for `resource` is held, then admits `token` as
    /// [`admit`](Self::admit) does; the permit keeps other writers of `resource` out until
    /// it is dropped. Write while holding it: then every write admitted lands before any
    /// write with a higher token is admitted, so no stale write can land after a newer one.
    ///
    /// # Errors
    /// [`StaleToken`] if a higher token was seen for `resource`.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future before it completes admits nothing.
    pub async fn enter(&self, resource: &str, token: u64) -> Result<FencePermit, StaleToken> {
        let writing = self.resource(resource).writing.clone();
        let held = writing.lock_owned().await;
        self.admit(resource, token)?;
        Ok(FencePermit {
            _writing: held,
            token,
        })
    }

    /// The highest token seen for `resource`, if any.
    pub fn highest(&self, resource: &str) -> Option<u64> {
        let resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let highest = resources.get(resource)?.highest.load(Ordering::SeqCst);
        (highest > 0).then_some(highest)
    }
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = f.debug_map();
        for (name, resource) in resources.iter() {
            map.entry(name, &resource.highest.load(Ordering::SeqCst));
        }
        map.finish()
    }
}

/// Admission to write one resource, from [`Fence::enter`]: other writers of the resource
/// wait until it is dropped.
#[must_use = "the write must happen while the permit is held"]
#[derive(Debug)]
pub struct FencePermit {
    _writing: OwnedMutexGuard<()>,
    token: u64,
}

impl FencePermit {
    /// The admitted token.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refuses_older_tokens_per_resource() {
        let fence = Fence::new();
        assert_eq!(fence.highest("a"), None);
        fence.admit("a", 5).unwrap();
        fence.admit("a", 5).unwrap(); // the same holder again
        fence.admit("a", 8).unwrap();
        let refused = fence.admit("a", 6).unwrap_err();
        assert_eq!(
            refused,
            StaleToken {
                resource: "a".into(),
                token: 6,
                highest: 8
            }
        );
        assert_eq!(fence.highest("a"), Some(8)); // a refusal records nothing
        fence.admit("b", 1).unwrap(); // resources are separate
        assert!(format!("{fence:?}").contains("\"a\": 8"));
    }

    #[test]
    fn concurrent_admissions_keep_the_maximum() {
        let fence = Arc::new(Fence::new());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let fence = fence.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        let _ = fence.admit("r", i * 8 + t);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(fence.highest("r"), Some(999 * 8 + 7));
    }

    /// The race `enter` closes: an old holder admitted first writes while a newer one
    /// waits, and a newer write is never followed by an older one.
    #[tokio::test(start_paused = true)]
    async fn a_permit_orders_writes() {
        let fence = Arc::new(Fence::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let old = fence.enter("r", 3).await.unwrap();
        let newer = {
            let (fence, log) = (fence.clone(), log.clone());
            tokio::spawn(async move {
                let permit = fence.enter("r", 4).await.unwrap();
                log.lock().unwrap().push(permit.fencing_token());
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await; // the old holder pauses
        assert!(
            !newer.is_finished(),
            "admitted while the old write was under way"
        );
        log.lock().unwrap().push(old.fencing_token());
        drop(old);
        newer.await.unwrap();
        assert_eq!(*log.lock().unwrap(), [3, 4]);
        assert!(fence.enter("r", 3).await.is_err());
    }
}
