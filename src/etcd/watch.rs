//! One multiplexed watch stream per client, for the deletions waiters and holders wait on.
//!
//! etcd carries many watches on one gRPC stream, told apart by watch id. The hub owns that
//! stream in one task; every waiter (waiting for its predecessor's deletion) and every
//! holder (watching its own key, to learn of a loss) registers a watch here instead of
//! opening a stream of its own, so 10,000 waiters cost 10,000 small entries in a map, not
//! 10,000 streams. Watches carry the `NoPut` filter: only deletions travel.
//!
//! A watch is for one *entry*: a key with a given create revision (`created`), which existed
//! at revision `alive_at`. Go's Mutex and `etcdctl lock` reuse their key name for every
//! Lock, so a key of that name with another create revision is a new entry: the watched one
//! is gone. Every read below therefore asks for the key's create revision, never mere
//! existence.
//!
//! A watch is first created from *now* (start revision 0): etcd treats such a watch as
//! *synced* and delivers its events at once, while a watch starting in the past waits for
//! the server's sync loop (every 100 ms), which would put up to 100 ms on every hand-off
//! under contention (Go's waitDeletes pays exactly that). The creation response carries the
//! revision the watch starts after; if the store moved past `alive_at` by then, the hub
//! reads the key once to cover the gap: absent, or another create revision, means deleted.
//! (Starting from `alive_at + 1` instead would also be in the past under contention, and
//! compaction at exactly that revision could drop the deletion's tombstone without
//! reporting the watch as compacted.)
//!
//! "From now" is not always synced, though. etcd (3.4 and later) reads the store's
//! revision when a creation arrives (`wsrev`, which its answer carries), and registers the
//! watch from `wsrev + 1` a moment later: a write that commits in between leaves the watch
//! *unsynced*, its events held for the sync loop, and nothing in the answer says so. Under
//! contention that is about one creation in fifty, and every waiter queued behind the
//! stalled one waits those 100 ms too. So a waiter's watch is *confirmed*: two creations
//! of the same watch go out back to back, and etcd handles one stream's requests one after
//! the other. If the second read the same revision as the first, no write committed
//! between the first's read and the second's, so none before the first registered: the
//! first is synced, and the second is cancelled. Otherwise a second pair goes out; if that
//! cannot tell either, every candidate is kept (each delivers the deletion, the unsynced
//! ones later). A candidate that proves synced after the first had its gap covered up to
//! its own start by a read, as above. This costs a creation and a cancellation per wait, no
//! read; holders' own-key watches, where 100 ms do not matter, are not confirmed.
//!
//! When the stream breaks (server restart, leader change, network), the hub reopens it and
//! re-creates every watch from `alive_at` itself, so a deletion that happened in between is
//! replayed, not lost. A watch the server cancels (its start revision compacted, or a
//! creation refused: etcd answers those `created` and `canceled` at once) is *resynced*:
//! the hub cancels its server-side id (etcd keeps a compacted watch's id on the stream until
//! the client cancels it), reads the key, and either reports the deletion or creates the
//! watch again from the read's revision. Every creation uses a fresh watch id, so a
//! creation never collides with an id etcd still holds ("duplicate watch ID"). etcd answers
//! creations in the order they were sent, which is how a refusal (watch id -1) is matched to
//! its watch.
//!
//! With user/password authentication, etcd 3.4 checks a watch's permission against the
//! token the *stream* was opened with, and simple tokens expire (`--auth-token-ttl`) while
//! the stream lives on: every later creation on it is refused ("invalid auth token"; some
//! versions say "permission denied"). A refusal like that makes the hub authenticate again and reopen the stream (at most once
//! per [`TOKEN_RENEWAL_PAUSE`], so that a user who truly lacks the permission is not
//! re-authenticated in a loop; its reads are refused too and report the typed error).
//!
//! A semaphore's waiter watches its whole pool instead (a *prefix* watch: any deletion
//! under the prefix after the revision of the read that found the pool full). No read can
//! tell whether some key was deleted since a revision, so a prefix watch is never created
//! from now with its gap covered: it replays from that read (re-created on a new stream
//! too, so no deletion is missed). Where that history is gone (compacted), the watch
//! simply reports a deletion: the waiter reads the pool again, and a spurious wake-up
//! costs one read. Its first creation starts just after the read: when nothing was
//! written since, that is "now", a synced watch, without the sync loop's 100 ms on the
//! hand-off. If something was (the creation's answer tells), and on every later creation,
//! it starts at the read's own revision instead, because a compaction at exactly the first
//! deletion's revision drops that tombstone, and etcd reports a watch as compacted only if
//! it starts *before* the compaction revision. (A deletion at the read's own revision,
//! which the read already saw, then wakes it in vain.) A prefix watch the server cancels or refuses for
//! another reason is created again as it was, after the resync delay.
//!
//! The hub task never waits for the network itself: opening the stream and every read run
//! in tasks of their own and report back through the hub's command channel, so one slow
//! read or a slow reconnect never holds up the events of every other watch of the client.
//! A watch that keeps being cancelled, or whose reads keep failing, is retried with a
//! growing delay.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::api::WatchResponses;
use super::api::{EtcdApi, EventKind, Range, WatchCreate, WatchRequests, WatchResponse};
use crate::error::{Error, Result};
use crate::mutant::{self, Mutant};

/// Who to tell about a deletion.
pub(crate) enum Notify {
    /// A waiter: `Ok(())` on deletion.
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
}

enum Command {
    Watch {
        id: i64,
        key: Vec<u8>,
        from: i64,
        created: i64,
        notify: Notify,
        /// Confirm the watch synced (see the module docs).
        confirm: bool,
        /// Watch every key under `key` (see the module docs).
        prefix: bool,
    },
    Cancel {
        id: i64,
    },
    /// A read of watch `id`'s key, started as `ticket`, came back.
    Read {
        id: i64,
        ticket: u64,
        outcome: Outcome,
    },
    /// The stream `open` asked for, or why there is none.
    Opened(std::result::Result<Stream, String>),
    /// The client authenticated again after a refused creation: reopen the stream.
    TokenRenewed,
}

/// What a read found about a watched entry.
enum Outcome {
    /// The key is absent, or is another entry (another create revision).
    Gone,
    /// The entry exists at this revision.
    Alive(i64),
    /// No answer; nothing known.
    Failed,
    /// Nothing read (a prefix watch, after its delay): create it again as it was.
    Again,
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
    ///
    /// `token_auth`: the client authenticates with a user and password, so its tokens
    /// expire (see the module docs).
    pub(crate) fn start(
        api: Arc<dyn EtcdApi>,
        request_timeout: Duration,
        token_auth: bool,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(
            HubTask {
                reports: commands.downgrade(),
                api,
                request_timeout,
                token_auth,
                token_renewed: None,
                watches: BTreeMap::new(),
                routes: HashMap::new(),
                creating: VecDeque::new(),
                stream: None,
                opening: false,
                retry_at: None,
                failures: 0,
                next_server_id: 1,
                next_ticket: 0,
            }
            .run(receiver),
        );
        WatchHub {
            commands,
            next_id: std::sync::Arc::new(AtomicI64::new(1)),
        }
    }

    /// Watches for the deletion of the entry at `key` with create revision `created` (0:
    /// any entry at `key`), which existed at revision `alive_at`.
    pub(crate) fn watch_delete(
        &self,
        key: &str,
        alive_at: i64,
        created: i64,
        notify: Notify,
    ) -> DeleteWatch {
        self.register(key, alive_at, created, notify, false, false)
    }

    fn register(
        &self,
        key: &str,
        alive_at: i64,
        created: i64,
        notify: Notify,
        confirm: bool,
        prefix: bool,
    ) -> DeleteWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.commands.send(Command::Watch {
            id,
            key: key.as_bytes().to_vec(),
            from: alive_at,
            created,
            notify,
            confirm,
            prefix,
        });
        DeleteWatch {
            id,
            commands: self.commands.clone(),
        }
    }

    /// Waits until the entry at `key` with create revision `created`, which existed at
    /// revision `alive_at`, is deleted. The watch is confirmed synced (see the module docs):
    /// a waiter's wake-up is on the queue's critical path.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future cancels the watch.
    pub(crate) async fn deleted(&self, key: &str, alive_at: i64, created: i64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let _watch = self.register(key, alive_at, created, Notify::Once(tx), true, false);
        rx.await.unwrap_or_else(|_| Err(hub_ended()))
    }

    /// Completes once a key under `prefix` is deleted after revision `after` (that of the
    /// read that found the keys), or once that can no longer be told (its history was
    /// compacted): spurious wake-ups are possible (a deletion at `after` itself), missed
    /// deletions are not. The watch is
    /// registered when the future is first polled (it replays from `after`, so nothing is
    /// missed meanwhile; a future dropped unpolled, a `try` on a full pool, costs nothing).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future cancels the watch.
    pub(crate) fn prefix_deleted(
        &self,
        prefix: &str,
        after: i64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (hub, prefix) = (self.clone(), prefix.to_owned());
        async move {
            let (tx, rx) = oneshot::channel();
            let _watch = hub.register(&prefix, after, 0, Notify::Once(tx), false, true);
            rx.await.unwrap_or_else(|_| Err(hub_ended()))
        }
    }
}

fn hub_ended() -> Error {
    Error::Backend {
        backend: "etcd",
        source: "the watch task ended".into(),
    }
}

struct Watch {
    key: Vec<u8>,
    /// Every key under `key`: a semaphore's pool (see the module docs).
    prefix: bool,
    /// A revision at which the entry existed (a prefix watch's: the revision of the read
    /// after which deletions count).
    from: i64,
    /// The entry's create revision (0: any entry at `key`).
    created: i64,
    notify: Notify,
    /// Never created yet: the first creation may start from now.
    fresh: bool,
    /// Its watch id on the current stream, once a creation was sent there.
    server: Option<i64>,
    /// The current creation started from now: check the gap once it is confirmed.
    from_now: bool,
    /// A read in flight.
    read: Option<Read>,
    /// Resyncs and failed reads so far: the next retry waits longer.
    retries: u32,
    /// Confirm its creations from now synced (see the module docs).
    confirm: bool,
    /// Further creations of it on the current stream: candidates, until one is confirmed.
    spares: Vec<i64>,
    /// The confirming pair of creations in flight.
    pair: Option<Pair>,
}

/// Two creations of one watch sent back to back, to learn whether the first is synced.
#[derive(Clone, Copy)]
struct Pair {
    first: i64,
    /// The revision the first's answer carries, once answered.
    first_read: Option<i64>,
    second: i64,
    /// Which pair this is: 1, then [`PAIRS`] at most.
    round: u32,
}

/// Confirming pairs per watch, before its candidates are simply kept.
const PAIRS: u32 = 2;

#[derive(Clone, Copy)]
struct Read {
    ticket: u64,
    /// A resync (no server watch meanwhile), not a check of a live watch's gap.
    resync: bool,
}

impl Watch {
    /// Whether a creation is due on the next stream (not while a resync read decides).
    fn wants_creation(&self) -> bool {
        self.server.is_none() && !self.read.is_some_and(|r| r.resync)
    }

    /// Starts a creation as `server`; returns its start revision: now (0) the first time (a
    /// synced watch, checked on creation), `from` itself afterwards (replay matters more);
    /// a prefix watch's `from + 1` the first time, `from` afterwards (see the module docs).
    fn begin_creation(&mut self, server: i64) -> i64 {
        self.server = Some(server);
        if self.prefix {
            let first = std::mem::take(&mut self.fresh);
            self.from_now = first;
            return if first { self.from + 1 } else { self.from };
        }
        let start = if std::mem::take(&mut self.fresh) {
            0
        } else {
            self.from
        };
        self.from_now = start == 0;
        start
    }

    /// Its creation on a stream as `server`, from revision `from` (0: now).
    fn creation(&self, server: i64, from: i64) -> WatchCreate {
        WatchCreate {
            key: self.key.clone(),
            prefix: self.prefix,
            start_revision: from,
            watch_id: server,
            deletes_only: true,
        }
    }

    /// How long to wait before the next resync or read: nothing the first time, then a
    /// delay that doubles up to 2 s.
    fn next_delay(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        if self.retries == 1 {
            return Duration::ZERO;
        }
        Duration::from_millis(50 << self.retries.min(6)).min(Duration::from_secs(2))
    }
}

/// A watch stream as the API opens it.
type Stream = (Box<dyn WatchRequests>, Box<dyn WatchResponses>);

/// The request side of an open stream, fed by a forwarding task so that the hub never
/// blocks on a full request channel while responses wait to be read.
struct OpenStream {
    requests: mpsc::UnboundedSender<Request>,
    responses: Box<dyn WatchResponses>,
}

enum Request {
    Create(WatchCreate),
    Cancel(i64),
}

/// The least time between two renewals of the token for refused creations.
const TOKEN_RENEWAL_PAUSE: Duration = Duration::from_secs(5);

struct HubTask {
    /// Where reads and the stream opener report back; weak, so the hub still ends with its
    /// handles.
    reports: mpsc::WeakUnboundedSender<Command>,
    api: Arc<dyn EtcdApi>,
    request_timeout: Duration,
    /// The client's requests carry a token that expires.
    token_auth: bool,
    /// When the hub last authenticated again because a creation was refused.
    token_renewed: Option<Instant>,
    /// In id order, so that the hub's choices (which watch opens a stream, the order of
    /// re-creations) are the same in every run: the simulator replays a seed exactly.
    watches: BTreeMap<i64, Watch>,
    /// Watch ids on the current stream (fresh for every creation) to the hub's watch ids.
    routes: HashMap<i64, i64>,
    /// Creations sent on the current stream and not yet answered, in order: etcd answers
    /// them in order, and a refused one carries watch id -1.
    creating: VecDeque<i64>,
    stream: Option<OpenStream>,
    /// A task is opening a stream.
    opening: bool,
    retry_at: Option<Instant>,
    failures: u32,
    next_server_id: i64,
    next_ticket: u64,
}

impl HubTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let retry_at = self.retry_at;
            // Biased, in this order, so that a run is the same every time (the simulator
            // replays seeds); every branch is finite, so none starves the others.
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                response = next_response(&mut self.stream) => match response {
                    Ok(Some(response)) => self.response(response),
                    Ok(None) | Err(_) => {
                        tracing::debug!("etcd watch stream broke: {:?}", response.err());
                        self.broken();
                    }
                },
                _ = sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.open();
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
                created,
                notify,
                confirm,
                prefix,
            } => {
                let watch = Watch {
                    key,
                    prefix,
                    from,
                    created,
                    notify,
                    fresh: true,
                    server: None,
                    from_now: false,
                    read: None,
                    retries: 0,
                    confirm,
                    spares: Vec::new(),
                    pair: None,
                };
                self.watches.insert(id, watch);
                self.create(id);
            }
            Command::Cancel { id } => {
                if let Some(mut watch) = self.watches.remove(&id) {
                    self.retire_spares(&mut watch);
                    self.retire(watch.server);
                }
            }
            Command::Read {
                id,
                ticket,
                outcome,
            } => self.read_done(id, ticket, outcome),
            Command::Opened(opened) => self.opened(opened),
            Command::TokenRenewed => {
                tracing::debug!("etcd auth token renewed: reopening the watch stream");
                self.broken();
            }
        }
    }

    fn send(&self, request: Request) {
        if let Some(stream) = &self.stream {
            let _ = stream.requests.send(request);
        }
    }

    /// Forgets server watch `server` and cancels it on the stream: etcd keeps the id of a
    /// watch it cancelled itself (compaction) until the client cancels it too.
    fn retire(&mut self, server: Option<i64>) {
        if let Some(server) = server {
            self.routes.remove(&server);
            self.send(Request::Cancel(server));
        }
    }

    /// Cancels every candidate of `watch` but its main creation, and ends its confirming.
    fn retire_spares(&mut self, watch: &mut Watch) {
        watch.pair = None;
        for spare in std::mem::take(&mut watch.spares) {
            self.retire(Some(spare));
        }
    }

    /// Reports watch `id`'s entry deleted and drops the watch.
    fn deleted(&mut self, id: i64) {
        if let Some(mut watch) = self.watches.remove(&id) {
            self.retire_spares(&mut watch);
            self.retire(watch.server);
            watch.notify.deleted();
        }
    }

    /// Sends a creation of watch `id` on the current stream, or has a stream opened.
    fn create(&mut self, id: i64) {
        let Some(stream) = &self.stream else {
            self.want_stream();
            return;
        };
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        if !watch.wants_creation() {
            return;
        }
        let server = server_id(&mut self.next_server_id, id);
        let start = watch.begin_creation(server);
        let _ = stream
            .requests
            .send(Request::Create(watch.creation(server, start)));
        self.routes.insert(server, id);
        self.creating.push_back(server);
        self.start_confirming(id, server, 1);
    }

    /// If watch `id` is to be confirmed and its creation `first` (just sent) starts from
    /// now, sends a second creation right behind it (see the module docs). Round 1 pairs
    /// the main creation, which may replay from `from` instead; later rounds pair a spare,
    /// always from now.
    fn start_confirming(&mut self, id: i64, first: i64, round: u32) {
        let Some(watch) = self.watches.get(&id) else {
            return;
        };
        if !watch.confirm || (round == 1 && !watch.from_now) {
            return;
        }
        let Some(second) = self.create_spare(id) else {
            return;
        };
        if let Some(watch) = self.watches.get_mut(&id) {
            watch.pair = Some(Pair {
                first,
                first_read: None,
                second,
                round,
            });
        }
    }

    /// Sends one more creation of watch `id` from now, as a spare candidate.
    fn create_spare(&mut self, id: i64) -> Option<i64> {
        let stream = self.stream.as_ref()?;
        let watch = self.watches.get_mut(&id)?;
        let server = server_id(&mut self.next_server_id, id);
        let _ = stream
            .requests
            .send(Request::Create(watch.creation(server, 0)));
        watch.spares.push(server);
        self.routes.insert(server, id);
        self.creating.push_back(server);
        Some(server)
    }

    /// Creation `server` of watch `id` was answered with the revision etcd read when it
    /// arrived: part of a confirming pair, it may settle which candidate is synced.
    fn confirming(&mut self, id: i64, server: i64, read: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        let Some(mut pair) = watch.pair else {
            return;
        };
        if server == pair.first {
            pair.first_read = Some(read);
            watch.pair = Some(pair);
            return;
        }
        if server != pair.second {
            return;
        }
        watch.pair = None;
        if pair.first_read == Some(read) {
            // No write between the two reads: the first registered synced. Keep it alone.
            let others: Vec<i64> = watch
                .spares
                .drain(..)
                .chain(watch.server)
                .filter(|&s| s != pair.first)
                .collect();
            let was_main = watch.server == Some(pair.first);
            watch.server = Some(pair.first);
            for other in others {
                self.retire(Some(other));
            }
            if !was_main {
                self.cover(id, read);
            }
            return;
        }
        if pair.round == 1 {
            crate::stats::watch_doubted();
        }
        if pair.round < PAIRS {
            if let Some(first) = self.create_spare(id) {
                self.start_confirming(id, first, pair.round + 1);
            }
        }
    }

    fn want_stream(&mut self) {
        if self.stream.is_none() && !self.opening && self.retry_at.is_none() {
            self.retry_at = Some(Instant::now());
        }
    }

    fn response(&mut self, response: WatchResponse) {
        self.failures = 0;
        if response.created {
            self.creation_answered(&response);
            return;
        }
        let server = response.watch_id;
        let Some(&id) = self.routes.get(&server) else {
            return; // cancelled by us already
        };
        if response.events.iter().any(|e| e.kind == EventKind::Delete) {
            self.deleted(id);
        } else if response.canceled {
            // Compacted (its start revision is history), or dropped by the server for
            // another reason: read the key instead.
            tracing::debug!(
                "etcd cancelled watch {server} (compacted at {}): {}",
                response.compact_revision,
                response.cancel_reason
            );
            if !self.compacted(id, response.compact_revision) {
                self.resync(id);
            }
        }
    }

    /// A prefix watch whose start was compacted away cannot tell whether a deletion is in
    /// the lost history: it reports one (the waiter reads again; see the module docs).
    fn compacted(&mut self, id: i64, compact_revision: i64) -> bool {
        let prefix = self.watches.get(&id).is_some_and(|w| w.prefix);
        if !prefix || compact_revision <= 0 {
            return false;
        }
        self.deleted(id);
        true
    }

    /// The oldest creation on the stream was answered: confirmed, or refused.
    fn creation_answered(&mut self, response: &WatchResponse) {
        let Some(server) = self.creating.pop_front() else {
            tracing::warn!("etcd confirmed a watch nobody created; reconnecting");
            self.broken();
            return;
        };
        let refused = response.canceled;
        if !refused && response.watch_id != server {
            tracing::warn!(
                "etcd confirmed watch {} for creation {server}; reconnecting",
                response.watch_id
            );
            self.broken();
            return;
        }
        let Some(&id) = self.routes.get(&server) else {
            if !refused {
                self.send(Request::Cancel(server)); // its watch went meanwhile
            }
            return;
        };
        if refused && mutant::active(Mutant::ReusedWatchIds) {
            return;
        }
        if let Some(watch) = self.watches.get_mut(&id) {
            if watch.server != Some(server) {
                // A spare candidate: a refused one is dropped, the main creation decides.
                if refused {
                    self.routes.remove(&server);
                    watch.spares.retain(|&s| s != server);
                    watch.pair = None;
                } else {
                    self.confirming(id, server, response.revision);
                }
                return;
            }
        }
        if refused {
            let reason = &response.cancel_reason;
            tracing::debug!("etcd refused watch {server}: {reason}");
            if self.compacted(id, response.compact_revision) {
                return;
            }
            if reason.contains("invalid auth token") || reason.contains("permission denied") {
                self.renew_token();
            }
            self.resync(id);
            return;
        }
        self.check_gap(id, response.revision);
        self.confirming(id, server, response.revision);
    }

    /// The stream's token may have expired: authenticate again in a task of its own, then
    /// reopen the stream ([`Command::TokenRenewed`]). At most once per
    /// [`TOKEN_RENEWAL_PAUSE`].
    fn renew_token(&mut self) {
        if !self.token_auth
            || self
                .token_renewed
                .is_some_and(|at| at.elapsed() < TOKEN_RENEWAL_PAUSE)
        {
            return;
        }
        self.token_renewed = Some(Instant::now());
        let (api, timeout, reports) =
            (self.api.clone(), self.request_timeout, self.reports.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, api.refresh_token()).await {
                Ok(Ok(())) => {
                    if let Some(reports) = reports.upgrade() {
                        let _ = reports.send(Command::TokenRenewed);
                    }
                }
                Ok(Err(e)) => tracing::debug!("etcd: could not authenticate again: {e}"),
                Err(_) => tracing::debug!("etcd: no answer to authenticate within {timeout:?}"),
            }
        });
    }

    /// Watch `id` was created from now, after `revision`: if the store moved past the
    /// watch's `from` before that, read the key once (see the module docs for why). A prefix
    /// watch, created from just after its read, is created again from the read's own
    /// revision instead.
    fn check_gap(&mut self, id: i64, revision: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        if !std::mem::take(&mut watch.from_now) {
            return;
        }
        if watch.prefix {
            if revision > watch.from {
                self.resync(id);
            }
            return;
        }
        self.cover(id, revision);
    }

    /// Reads watch `id`'s key unless the entry is known to have existed at `revision`.
    fn cover(&mut self, id: i64, revision: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        if revision <= watch.from {
            return;
        }
        crate::stats::watch_checked();
        self.read(id, false, Duration::ZERO);
    }

    /// Watch `id` is gone on the server (cancelled or refused): cancel its id there, and
    /// read the key to learn whether to report a deletion or create the watch again (a
    /// prefix watch: create it again after the delay).
    fn resync(&mut self, id: i64) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        let (server, delay) = (watch.server.take(), watch.next_delay());
        let mut spares = std::mem::take(&mut watch.spares);
        watch.pair = None;
        tracing::debug!(
            key = %String::from_utf8_lossy(&watch.key),
            retry_in = ?delay,
            "etcd watch resynchronised: reading its key, then watching again"
        );
        if mutant::active(Mutant::ReusedWatchIds) {
            self.routes.retain(|_, hub| *hub != id);
        } else {
            self.retire(server);
            for spare in spares.drain(..) {
                self.retire(Some(spare));
            }
        }
        self.read(id, true, delay);
    }

    /// Reads watch `id`'s key in a task of its own, after `delay`; the answer comes back as
    /// [`Command::Read`].
    fn read(&mut self, id: i64, resync: bool, delay: Duration) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        watch.read = Some(Read { ticket, resync });
        let (api, key, created) = (self.api.clone(), watch.key.clone(), watch.created);
        let prefix = watch.prefix;
        let (timeout, reports) = (self.request_timeout, self.reports.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A prefix watch has nothing to read (see the module docs): after the delay, it
            // is created again as it was.
            if prefix {
                if let Some(reports) = reports.upgrade() {
                    let outcome = Outcome::Again;
                    let _ = reports.send(Command::Read {
                        id,
                        ticket,
                        outcome,
                    });
                }
                return;
            }
            let read = tokio::time::timeout(timeout, api.range(Range::key(key).keys_only())).await;
            let outcome = match read {
                Ok(Ok(resp)) => match resp.kvs.first() {
                    Some(kv)
                        if created == 0
                            || kv.create_revision == created
                            || mutant::active(Mutant::ExistenceOnlyChecks) =>
                    {
                        Outcome::Alive(resp.revision)
                    }
                    _ => Outcome::Gone,
                },
                _ => Outcome::Failed,
            };
            if let Some(reports) = reports.upgrade() {
                let _ = reports.send(Command::Read {
                    id,
                    ticket,
                    outcome,
                });
            }
        });
    }

    fn read_done(&mut self, id: i64, ticket: u64, outcome: Outcome) {
        let Some(watch) = self.watches.get_mut(&id) else {
            return;
        };
        if matches!(outcome, Outcome::Gone) {
            // Final whichever read found it: that entry never comes back.
            self.deleted(id);
            return;
        }
        let Some(read) = watch.read.filter(|r| r.ticket == ticket) else {
            return; // a later read decides
        };
        watch.read = None;
        match outcome {
            Outcome::Alive(revision) if read.resync => {
                watch.from = watch.from.max(revision);
                self.create(id);
            }
            // The gap is covered; later candidates need cover only past this.
            Outcome::Alive(revision) => watch.from = watch.from.max(revision),
            Outcome::Again => {
                if read.resync {
                    self.create(id);
                }
            }
            Outcome::Gone | Outcome::Failed => {
                let delay = watch.next_delay();
                self.read(id, read.resync, delay);
            }
        }
    }

    /// The stream broke, or could not be opened: every watch is to be created again on the
    /// next one.
    fn broken(&mut self) {
        self.stream = None;
        self.opening = false;
        self.routes.clear();
        self.creating.clear();
        for watch in self.watches.values_mut() {
            watch.server = None;
            watch.spares.clear();
            watch.pair = None;
        }
        self.schedule_retry();
    }

    fn schedule_retry(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100 << self.failures.min(4)).min(Duration::from_secs(1));
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Opens a stream in a task of its own, with the creation of one watch (etcd's API
    /// opens a stream with a first request); the others follow once it is open.
    fn open(&mut self) {
        if self.stream.is_some() || self.opening {
            return;
        }
        let Some((&id, watch)) = self.watches.iter_mut().find(|(_, w)| w.wants_creation()) else {
            return; // nothing to watch; the next registration opens the stream
        };
        let server = server_id(&mut self.next_server_id, id);
        let start = watch.begin_creation(server);
        let first = watch.creation(server, start);
        self.routes.insert(server, id);
        self.creating.push_back(server);
        self.opening = true;
        let (api, timeout, reports) =
            (self.api.clone(), self.request_timeout, self.reports.clone());
        tokio::spawn(async move {
            let opened = tokio::time::timeout(timeout, api.watch(first)).await;
            let opened = match opened {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            if let Some(reports) = reports.upgrade() {
                let _ = reports.send(Command::Opened(opened));
            }
        });
    }

    fn opened(&mut self, opened: std::result::Result<Stream, String>) {
        self.opening = false;
        let (mut sender, responses) = match opened {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!("could not open an etcd watch stream: {e}");
                self.broken();
                return;
            }
        };
        let (requests, mut queued) = mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            while let Some(request) = queued.recv().await {
                let sent = match request {
                    Request::Create(create) => sender.create(create).await,
                    Request::Cancel(id) => sender.cancel(id).await,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        self.stream = Some(OpenStream {
            requests,
            responses,
        });
        // The creation that opened the stream went out with it: its confirming second now.
        let opener = self
            .watches
            .iter()
            .find_map(|(&id, w)| w.server.filter(|_| w.from_now).map(|s| (id, s)));
        if let Some((id, server)) = opener {
            self.start_confirming(id, server, 1);
        }
        let due: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.wants_creation())
            .map(|(&id, _)| id)
            .collect();
        // Plus the one whose creation opened the stream; after a failure, all are re-created.
        tracing::debug!(
            watches = due.len() + 1,
            reopened = self.failures > 0,
            "etcd watch stream opened; (re-)creating its watches"
        );
        for id in due {
            self.create(id);
        }
    }
}

/// A fresh id on the stream for a creation of watch `id`: etcd may still hold any earlier
/// one (a compacted watch's, until cancelled), and refuses it again.
fn server_id(next: &mut i64, id: i64) -> i64 {
    if mutant::active(Mutant::ReusedWatchIds) {
        return id;
    }
    *next += 1;
    *next - 1
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
