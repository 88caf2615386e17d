//! One multiplexed watch stream per client, for the deletions waiters and holders wait on.
//!
//! etcd carries many watches on one gRPC stream, told apart by watch id. The hub owns that
//! stream in one task; every waiter (waiting for its predecessor's deletion) and every
//! holder (watching its own key, to learn of a loss) registers a watch here instead of
//! opening a stream of its own, so 10,000 waiters cost 10,000 small entries in a map, not
//! 10,000 streams. Watches carry the `NoPut` filter: only deletions travel.
//!
//! Each watch knows a revision `alive_at` at which its key existed. It is first created from
//! *now* (start revision 0): etcd treats such a watch as *synced* and delivers its events at
//! once, while a watch starting in the past waits for the server's sync loop (every
//! 100 ms), which would put up to 100 ms on every hand-off under contention (Go's
//! waitDeletes pays exactly that). The creation response carries the revision the watch
//! starts after; if the store moved past `alive_at` by then, the hub reads the key once to
//! cover the gap: absent means deleted. (Starting from `alive_at + 1` instead would also be
//! in the past under contention, and compaction at exactly that revision could drop the
//! deletion's tombstone without reporting the watch as compacted.)
//!
//! When the stream breaks (server restart, leader change, network), the hub reopens it and
//! re-creates every watch from `alive_at` itself, so a deletion that happened in between is
//! replayed, not lost. If that revision was compacted away, the server says so and the hub
//! reads the key instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse, WatchResponseStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Who to tell about a deletion.
pub(crate) enum Notify {
    /// A waiter: `Ok(())` on deletion, `Err` if the watch failed for good.
    Once(oneshot::Sender<Result<()>>),
    /// A holder: run the callback (which decides why the key went).
    Call(Box<dyn FnOnce() + Send + Sync>),
}

impl Notify {
    fn deleted(self) {
        match self {
            Notify::Once(tx) => {
                let _ = tx.send(Ok(()));
            }
            Notify::Call(callback) => callback(),
        }
    }

    fn failed(self, why: String) {
        match self {
            Notify::Once(tx) => {
                let _ = tx.send(Err(Error::Backend {
                    backend: "etcd",
                    source: why.into(),
                }));
            }
            // The session's keep-alive still guards a holder; only deletion detection is gone.
            Notify::Call(_) => tracing::warn!("etcd watch on a held lock failed: {why}"),
        }
    }
}

enum Command {
    Watch {
        id: i64,
        key: Vec<u8>,
        from: i64,
        notify: Notify,
    },
    Cancel {
        id: i64,
    },
    /// The result of reading a newly watched key: `false` if it was gone.
    Checked {
        id: i64,
        exists: bool,
    },
}

/// A handle to the client's watch task. Cloning shares the task.
#[derive(Clone)]
pub(crate) struct WatchHub {
    commands: mpsc::UnboundedSender<Command>,
    next_id: std::sync::Arc<AtomicI64>,
}

/// A registered watch; dropping it cancels the watch.
pub(crate) struct DeleteWatch {
    id: i64,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for DeleteWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

impl WatchHub {
    /// Starts the hub task on the current runtime; it ends when every handle is dropped.
    pub(crate) fn start(client: etcd_client::Client, request_timeout: Duration) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(
            HubTask {
                checks: commands.downgrade(),
                client,
                request_timeout,
                watches: HashMap::new(),
                stream: None,
                retry_at: None,
                failures: 0,
            }
            .run(receiver),
        );
        WatchHub {
            commands,
            next_id: std::sync::Arc::new(AtomicI64::new(1)),
        }
    }

    /// Watches `key`, which existed at revision `alive_at`, for its deletion.
    pub(crate) fn watch_delete(&self, key: &str, alive_at: i64, notify: Notify) -> DeleteWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.commands.send(Command::Watch {
            id,
            key: key.as_bytes().to_vec(),
            from: alive_at,
            notify,
        });
        DeleteWatch {
            id,
            commands: self.commands.clone(),
        }
    }

    /// Waits until `key`, which existed at revision `alive_at`, is deleted.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future cancels the watch.
    pub(crate) async fn deleted(&self, key: &str, alive_at: i64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let _watch = self.watch_delete(key, alive_at, Notify::Once(tx));
        rx.await.unwrap_or_else(|_| {
            Err(Error::Backend {
                backend: "etcd",
                source: "the watch task ended".into(),
            })
        })
    }
}

struct Watch {
    key: Vec<u8>,
    /// A revision at which the key existed.
    from: i64,
    /// Never created yet: the first creation may start from now.
    fresh: bool,
    /// Created from now, awaiting the creation check.
    checking: bool,
    notify: Notify,
}

/// The request side of an open stream, fed by a forwarding task so that the hub never
/// blocks on a full request channel while responses wait to be read.
struct OpenStream {
    requests: mpsc::UnboundedSender<Request>,
    responses: WatchResponseStream,
}

enum Request {
    /// Watch id, key, start revision.
    Create(i64, Vec<u8>, i64),
    Cancel(i64),
}

fn options(id: i64, from: i64) -> WatchOptions {
    WatchOptions::new()
        .with_watch_id(id)
        .with_start_revision(from)
        .with_filters([WatchFilterType::NoPut])
}

struct HubTask {
    /// Where creation checks report back; weak, so the hub still ends with its handles.
    checks: mpsc::WeakUnboundedSender<Command>,
    client: etcd_client::Client,
    request_timeout: Duration,
    watches: HashMap<i64, Watch>,
    stream: Option<OpenStream>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Watch {
    /// Where a creation on a new stream starts: from now (0) the first time (a synced watch,
    /// checked on creation), at `from` itself when re-created (replay matters more).
    fn start(&self) -> i64 {
        if self.fresh {
            0
        } else {
            self.from
        }
    }
}

impl HubTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                response = next_response(&mut self.stream) => match response {
                    Ok(Some(response)) => self.response(response).await,
                    Ok(None) | Err(_) => {
                        tracing::debug!("etcd watch stream broke: {:?}", response.err());
                        self.stream = None;
                        self.schedule_retry();
                    }
                },
                _ = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.open().await;
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Watch {
                id,
                key,
                from,
                notify,
            } => {
                let created = self.stream.is_some();
                if let Some(stream) = &self.stream {
                    let _ = stream.requests.send(Request::Create(id, key.clone(), 0));
                } else if self.retry_at.is_none() {
                    self.retry_at = Some(Instant::now());
                }
                let watch = Watch {
                    key,
                    from,
                    fresh: !created,
                    checking: created,
                    notify,
                };
                self.watches.insert(id, watch);
            }
            Command::Cancel { id } => {
                if self.watches.remove(&id).is_some() {
                    self.send(Request::Cancel(id));
                }
            }
            Command::Checked { id, exists } => {
                if !exists {
                    if let Some(watch) = self.watches.remove(&id) {
                        watch.notify.deleted();
                        self.send(Request::Cancel(id));
                    }
                }
            }
        }
    }

    fn send(&self, request: Request) {
        if let Some(stream) = &self.stream {
            let _ = stream.requests.send(request);
        }
    }

    async fn response(&mut self, response: WatchResponse) {
        self.failures = 0;
        let id = response.watch_id();
        if response
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            if let Some(watch) = self.watches.remove(&id) {
                watch.notify.deleted();
                self.send(Request::Cancel(id));
            }
            return;
        }
        if response.created() {
            self.check_fresh(id, response.header().map_or(0, |h| h.revision()));
        }
        if !response.canceled() || !self.watches.contains_key(&id) {
            return;
        }
        if response.compact_revision() > 0 {
            self.resync(id).await;
        } else if let Some(watch) = self.watches.remove(&id) {
            watch.notify.failed(format!(
                "watch canceled by the server: {}",
                response.cancel_reason()
            ));
        }
    }

    /// Watch `id` was created from now, after `revision`: if the store moved past the
    /// watch's `from` before that, read the key once (see the module docs for why).
    fn check_fresh(&mut self, id: i64, revision: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        if !std::mem::take(&mut watch.checking) || revision <= watch.from {
            return;
        }
        let (mut kv, key, timeout) = (
            self.client.kv_client(),
            watch.key.clone(),
            self.request_timeout,
        );
        let checks = self.checks.clone();
        crate::stats::watch_checked();
        tokio::spawn(async move {
            let options = etcd_client::GetOptions::new().with_keys_only();
            let read = tokio::time::timeout(timeout, kv.get(key, Some(options))).await;
            if let (Ok(Ok(resp)), Some(checks)) = (read, checks.upgrade()) {
                let exists = !resp.kvs().is_empty();
                let _ = checks.send(Command::Checked { id, exists });
            }
        });
    }

    /// The start revision of watch `id` was compacted: read the key instead.
    async fn resync(&mut self, id: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        let read = tokio::time::timeout(
            self.request_timeout,
            self.client.kv_client().get(watch.key.clone(), None),
        )
        .await;
        match read {
            Ok(Ok(resp)) if resp.kvs().is_empty() => {
                if let Some(watch) = self.watches.remove(&id) {
                    watch.notify.deleted();
                }
            }
            Ok(Ok(resp)) => {
                watch.from = resp.header().map_or(watch.from, |h| h.revision());
                let request = Request::Create(id, watch.key.clone(), watch.from);
                self.send(request);
            }
            _ => {
                // Reopening the stream re-creates the watch and, if needed, resyncs again.
                self.stream = None;
                self.schedule_retry();
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100 << self.failures.min(4)).min(Duration::from_secs(1));
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Opens a stream carrying every registered watch.
    async fn open(&mut self) {
        let Some((&first_id, first)) = self.watches.iter().next() else {
            return; // nothing to watch; the next registration opens the stream
        };
        let opened = tokio::time::timeout(
            self.request_timeout,
            self.client
                .watch_client()
                .watch(first.key.clone(), Some(options(first_id, first.start()))),
        )
        .await;
        let Ok(Ok(stream)) = opened else {
            self.schedule_retry();
            return;
        };
        let (mut sender, responses) = stream.split();
        let (requests, mut queued) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(request) = queued.recv().await {
                let sent = match request {
                    Request::Create(id, key, from) => {
                        sender.watch(key, Some(options(id, from))).await
                    }
                    Request::Cancel(id) => sender.cancel(id).await,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        for (&id, watch) in &self.watches {
            if id != first_id {
                let _ = requests.send(Request::Create(id, watch.key.clone(), watch.start()));
            }
        }
        for watch in self.watches.values_mut() {
            watch.checking = std::mem::take(&mut watch.fresh);
        }
        self.stream = Some(OpenStream {
            requests,
            responses,
        });
    }
}

async fn next_response(stream: &mut Option<OpenStream>) -> Result<Option<WatchResponse>, String> {
    match stream {
        Some(stream) => stream.responses.message().await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
