//! A foreign contender that queues as Go's `concurrency.Mutex` (etcd 3.5) and `etcdctl lock`
//! do: one key `NAME/<lease hex>` per session, *reused* by every Lock, so a key of that name
//! may come back as a new entry behind a waiter that watched the old one.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::net::SimConn;
use crate::etcd::api::{Compare, EtcdApi, EventKind, Op, Put, Range, Sort, Txn, WatchCreate};

/// A Go client's session: a lease kept alive every TTL/3.
pub struct GoSession {
    api: Arc<dyn EtcdApi>,
    lease: i64,
    stop: CancellationToken,
}

impl GoSession {
    /// Grants a lease of `ttl` seconds on `conn` and keeps it alive.
    pub async fn open(conn: &SimConn, ttl: i64) -> Result<GoSession, String> {
        let api = conn.api();
        let (lease, granted) = api.grant(ttl).await.map_err(|e| e.to_string())?;
        let stop = CancellationToken::new();
        let (keeper, stopped) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let period = Duration::from_secs(granted as u64) / 3;
            let mut stream = None;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let ok = match stream.as_mut() {
                    None => match keeper.keep_alive(lease).await {
                        Ok(opened) => {
                            stream = Some(opened);
                            true
                        }
                        Err(_) => false,
                    },
                    Some(s) => matches!(s.round().await, Ok(Some(ttl)) if ttl > 0),
                };
                if !ok {
                    stream = None;
                }
            }
        });
        Ok(GoSession { api, lease, stop })
    }

    /// The session's lease.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Revokes the lease.
    pub async fn close(&self) {
        self.stop.cancel();
        let _ = self.api.revoke(self.lease).await;
    }
}

impl Drop for GoSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Go's Mutex on `PREFIX/NAME/`, on a [`GoSession`].
pub struct GoMutex {
    api: Arc<dyn EtcdApi>,
    prefix: String,
    key: String,
    lease: i64,
}

impl GoMutex {
    /// The mutex `queue` (a lock's key prefix, `PREFIX/NAME`) of `session`.
    pub fn new(session: &GoSession, queue: &str) -> GoMutex {
        let prefix = format!("{queue}/");
        GoMutex {
            api: session.api.clone(),
            key: format!("{prefix}{:x}", session.lease),
            prefix,
            lease: session.lease,
        }
    }

    /// The key every Lock of this session uses.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Queues and waits as Go's Mutex.Lock does; the own key's create revision once held.
    /// On an error the own key is deleted (best effort), as Go does.
    pub async fn lock(&self) -> Result<i64, String> {
        let result = self.try_lock_and_wait().await;
        if result.is_err() {
            let _ = self.unlock().await;
        }
        result
    }

    async fn try_lock_and_wait(&self) -> Result<i64, String> {
        let owner = Op::Range(
            Range::prefix(self.prefix.as_bytes())
                .sorted(Sort::CreateAscending)
                .limit(1),
        );
        let put = Put::new(self.key.as_bytes(), Vec::new()).with_lease(self.lease);
        let txn = Txn::when([Compare::create_revision(self.key.as_bytes(), 0)])
            .then([Op::Put(put), owner.clone()])
            .otherwise([Op::Range(Range::key(self.key.as_bytes())), owner]);
        let resp = self.api.txn(txn).await.map_err(|e| e.to_string())?;
        let own = if resp.succeeded {
            resp.revision
        } else {
            resp.responses[0]
                .kvs()
                .and_then(|kvs| kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or("own key vanished")?
        };
        let first = resp.responses[1].kvs().and_then(|kvs| kvs.first());
        if first.is_some_and(|kv| kv.create_revision != own) {
            self.wait_deletes(own - 1).await?;
        }
        // etcd 3.5's check after waiting: the session may have expired meanwhile.
        let mine = self
            .api
            .range(Range::key(self.key.as_bytes()).keys_only())
            .await
            .map_err(|e| e.to_string())?;
        if mine.kvs.first().is_none_or(|kv| kv.create_revision != own) {
            return Err("session expired".into());
        }
        Ok(own)
    }

    /// Go's waitDeletes: until no key created at or before `max` is left, wait for the
    /// deletion of the newest of them, watched by name from the read's revision.
    async fn wait_deletes(&self, max: i64) -> Result<(), String> {
        loop {
            let last = Range::prefix(self.prefix.as_bytes())
                .sorted(Sort::CreateDescending)
                .created_at_most(max)
                .limit(1);
            let resp = self.api.range(last).await.map_err(|e| e.to_string())?;
            let Some(kv) = resp.kvs.first() else {
                return Ok(());
            };
            let watch = WatchCreate {
                key: kv.key.clone(),
                prefix: false,
                start_revision: resp.revision,
                watch_id: 0,
                deletes_only: false,
            };
            let (_requests, mut responses) =
                self.api.watch(watch).await.map_err(|e| e.to_string())?;
            // Go returns from waitDelete when the watch channel closes, too: read again.
            while let Ok(Some(message)) = responses.message().await {
                if message.canceled || message.events.iter().any(|e| e.kind == EventKind::Delete) {
                    break;
                }
            }
        }
    }

    /// Deletes the own key, as Go's Unlock does.
    pub async fn unlock(&self) -> Result<(), String> {
        let txn = Txn::default().then([Op::delete(self.key.as_bytes())]);
        self.api.txn(txn).await.map(drop).map_err(|e| e.to_string())
    }
}
