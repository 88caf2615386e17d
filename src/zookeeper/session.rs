//! A ZooKeeper session and the lock queue on top of it.
//!
//! Queue layout (that of Curator's InterProcessMutex): lock NAME is the znode `BASE/NAME`;
//! each acquisition creates an ephemeral sequential child `_c_<uuid>-lock-<seq>`. Children
//! named by Curator (`…lock-<seq>`) or kazoo (`…__lock__<seq>`) are contenders alike, ordered
//! by sequence number, so fairlock, Curator and kazoo share one FIFO queue.
//!
//! A semaphore NAME is kazoo's Semaphore: its gate, the queue `BASE/NAME-__lock__` of
//! kazoo's Lock, whose entries are named as kazoo names them (`<uuid hex>__lock__<seq>`);
//! its pool, the persistent node `BASE/NAME` holding the limit in decimal, and one
//! ephemeral, non-sequential child `<uuid hex>` per lease. Only the gate's head lists the
//! pool (with a children watch), and creates its lease in a multi-op that first checks its
//! gate node still exists.
//!
//! Why not zookeeper-client's own `Client::lock` recipe, whose naming and protected create
//! match Curator's too: it filters contenders by the lock prefix's name, so kazoo's
//! `__lock__` nodes are invisible to it (no mutual exclusion with kazoo); it offers no
//! lost-lock signal; and it would give ZooKeeper its own copy of the queue algorithm, where
//! fairlock runs one (`queue.rs`) on every backend. fairlock builds on the client's
//! primitives instead: sequential create, children listing, data and existence watches,
//! and check-guarded multi-ops.
//!
//! Sessions are connected *detached*: dropping the connection does not close the session,
//! so [`abandon`](ZkSession::abandon) behaves like a crash. Closing is explicit: a second,
//! short connection to the same session sends ZooKeeper's CloseSession.
//!
//! A *borrowed* session is that of a client the user handed in
//! ([`Client::from_zookeeper_client`](crate::Client::from_zookeeper_client)): fairlock never
//! ends it. It remembers the attempt markers of the nodes it creates instead, and on close or
//! loss deletes whichever of them still exist ([`sweep`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zookeeper_client as zk;

use super::names;
use super::{zk_error, Settings};
use crate::backend::{
    check_limit, limit_value, remove_until_done, session_error, Claim, Entry, LeaseFreed,
    Predecessor, QueueSession, Written,
};
use crate::backend::{QueueKind, Side};
use crate::clock::BootInstant;
use crate::error::{within, Error, Result};
use crate::guard::WriteOp;
use crate::lost::{LossTrigger, LostReason};
use crate::state::Suspension;

/// Options of the queue nodes, with the configured ACL.
fn ephemeral_sequential(settings: &Settings) -> zk::CreateOptions<'static> {
    zk::CreateMode::EphemeralSequential.with_acls(settings.acls)
}

/// Options of a semaphore's leases (kazoo's: ephemeral, not sequential).
fn ephemeral(settings: &Settings) -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(settings.acls)
}

/// Options of the lock and election nodes (parents of the queue nodes).
fn containers(settings: &Settings) -> zk::CreateOptions<'static> {
    zk::CreateMode::Container.with_acls(settings.acls)
}

/// Options of data nodes and their parents.
fn persistent(settings: &Settings) -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(settings.acls)
}

pub(crate) struct ZkSession {
    /// The connection; `None` once the session is closed, abandoned or lost. Tasks borrow
    /// it per request and never hold it while waiting, so that dropping it here really
    /// ends the connection.
    client: Arc<StdMutex<Option<zk::Client>>>,
    info: zk::SessionInfo,
    pub(super) id: i64,
    settings: Arc<Settings>,
    trigger: LossTrigger,
    pub(super) suspended: Arc<Suspension>,
    /// Set once the session was closed or abandoned on purpose.
    ended: AtomicBool,
    runtime: Handle,
    /// Coalesced children listings, by lock name.
    listings: StdMutex<HashMap<String, NextListing>>,
    /// This session, for the tasks it spawns.
    me: Weak<ZkSession>,
    /// The timeout the server granted.
    session_timeout: Duration,
    /// For a borrowed session: the nodes it may have created and not removed yet, as
    /// (parent path, attempt marker); `None` once swept. `None` for fairlock's own sessions.
    borrowed: Option<StdMutex<Option<Tracked>>>,
}

/// A borrowed session's nodes, as (parent path, attempt marker).
type Tracked = HashSet<(String, String)>;

/// Where a node of `key` (provisional or confirmed) lives and the marker of its attempt
/// (`_c_<uuid>-`; a gate entry's `<uuid hex>__lock__`; a lease's whole `<uuid hex>`), as a
/// borrowed session tracks it.
fn tracked(key: &str) -> (String, String) {
    let (parent, child) = key.rsplit_once('/').unwrap_or(("", key));
    // "_c_" + 36-character uuid + "-", or 32 hex digits + "__lock__": both 40 characters.
    let marker = child.get(..40).unwrap_or(child);
    (parent.to_owned(), marker.to_owned())
}

impl ZkSession {
    /// Connects a new session.
    ///
    /// # Errors
    /// [`Error::Timeout`] if no server answered in the connect timeout;
    /// [`Error::InvalidConfig`] if the server raised the session timeout above the TTL.
    pub(super) async fn open(settings: &Arc<Settings>) -> Result<Arc<Self>> {
        let connecting = settings.connect(|c| c.with_session_timeout(settings.ttl).with_detached());
        let connected = within(settings.connect_timeout, async {
            connecting.await.map_err(zk_error)
        })
        .await;
        let client = match connected {
            Ok(client) => client,
            // A failed TLS handshake looks like a server that does not answer: ask why.
            Err(e @ (Error::Timeout(_) | Error::Backend { .. })) => {
                return Err(settings.diagnose().await.unwrap_or(e))
            }
            Err(e) => return Err(e),
        };
        let info = client.session().clone();
        let negotiated = client.session_timeout();
        if negotiated > settings.ttl + Duration::from_millis(1) {
            drop(client);
            close_session(settings, info).await;
            return Err(Error::config(format!(
                "ttl {:?} is below the ZooKeeper server's minimum session timeout of {negotiated:?}",
                settings.ttl
            )));
        }
        Ok(Self::start(client, settings, false))
    }

    /// A session on a client the user connected: fairlock never ends it (see [`sweep`]).
    ///
    /// # Errors
    /// [`Error::SessionExpired`] if the client's session has ended already.
    pub(super) fn borrow(client: zk::Client, settings: &Arc<Settings>) -> Result<Arc<Self>> {
        if client.state().is_terminated() {
            return Err(Error::SessionExpired);
        }
        Ok(Self::start(client, settings, true))
    }

    fn start(client: zk::Client, settings: &Arc<Settings>, borrowed: bool) -> Arc<Self> {
        let info = client.session().clone();
        let negotiated = client.session_timeout();
        let session = Arc::new_cyclic(|me| ZkSession {
            listings: StdMutex::new(HashMap::new()),
            me: me.clone(),
            id: client.session_id().0,
            info,
            trigger: LossTrigger::new(),
            suspended: Suspension::new(
                &settings.states,
                "zookeeper",
                format!("{:x}", client.session_id().0),
            ),
            ended: AtomicBool::new(false),
            settings: settings.clone(),
            runtime: Handle::current(),
            client: Arc::new(StdMutex::new(None)),
            borrowed: borrowed.then(|| StdMutex::new(Some(HashSet::new()))),
            session_timeout: negotiated,
        });
        tokio::spawn(watch_state(
            client.state_watcher(),
            negotiated,
            settings.safety_margin,
            Arc::downgrade(&session),
        ));
        *session.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
        session
    }

    #[cfg(feature = "test-util")]
    pub(super) fn info(&self) -> &zk::SessionInfo {
        &self.info
    }

    fn connection(&self) -> Option<zk::Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection, or the error that says why there is none.
    pub(super) fn client(&self) -> Result<zk::Client> {
        self.connection().ok_or_else(|| self.gone_session())
    }

    fn disconnect(&self) {
        // Detached: dropping the last handle ends the connection without closing the session.
        self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Ends a session found lost: nobody may go on believing in it, and a server that still
    /// knows it must drop its nodes.
    fn lost(&self, reason: LostReason) {
        self.trigger.fire(reason);
        if self.borrowed.is_some() {
            // Not ours to end: delete our nodes if the session still lives. It cannot outlive
            // its timeout without the client reconnecting, so neither does the sweep.
            if let Some(sweep) = self.end_borrowed() {
                let bound = self.session_timeout + self.settings.request_timeout;
                self.runtime.spawn(async move {
                    if let Err(e) = sweep.run(bound).await {
                        tracing::warn!(
                            "could not remove the nodes of a lost borrowed session: {e}"
                        );
                    }
                });
            }
            return;
        }
        if self.connection().is_some() && !self.ended.swap(true, Ordering::SeqCst) {
            self.disconnect();
            let (settings, info) = (self.settings.clone(), self.info.clone());
            self.runtime
                .spawn(async move { close_session(&settings, info).await });
        }
    }

    /// Ends fairlock's use of a borrowed session, once: lets go of the connection and
    /// returns the sweep of the nodes left. `None` if ended already (or not borrowed).
    fn end_borrowed(&self) -> Option<Sweep> {
        let nodes = self.borrowed.as_ref()?;
        if self.ended.swap(true, Ordering::SeqCst) {
            return None;
        }
        let client = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let nodes = nodes.lock().unwrap_or_else(|e| e.into_inner()).take();
        Some(Sweep {
            client,
            nodes: nodes.unwrap_or_default(),
        })
    }

    /// Sends the create of `entry`'s node. A borrowed session records the attempt first,
    /// under the same lock as [`end_borrowed`](Self::end_borrowed) takes the records: every
    /// create is either refused or sent before the sweep's listings.
    fn send_create<'a>(
        &self,
        client: &'a zk::Client,
        entry: &'a Entry,
    ) -> Result<
        impl std::future::Future<Output = Result<(zk::Stat, zk::CreateSequence), zk::Error>> + 'a,
    > {
        let options = ephemeral_sequential(&self.settings);
        // The request is queued on the connection by this call, not when awaited.
        self.tracking(&entry.key, || {
            client.create(&entry.key, &entry.value, &options)
        })
        .ok_or_else(|| self.gone_session())
    }

    /// Runs `send`, which sends a request creating the node of `key`. A borrowed session
    /// records the attempt first, under the lock [`end_borrowed`](Self::end_borrowed) takes
    /// the records under; `None` (nothing sent) once they were taken.
    fn tracking<T>(&self, key: &str, send: impl FnOnce() -> T) -> Option<T> {
        let Some(nodes) = &self.borrowed else {
            return Some(send());
        };
        let mut nodes = nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.as_mut()?.insert(tracked(key));
        Some(send())
    }

    /// A borrowed session's node is gone (removed, or never created): stop tracking it.
    fn untrack(&self, key: &str) {
        if let Some(nodes) = &self.borrowed {
            if let Some(nodes) = nodes.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                nodes.remove(&tracked(key));
            }
        }
    }

    fn lock_path(&self, name: &str) -> String {
        format!("{}/{name}", self.settings.base)
    }

    fn gone_session(&self) -> Error {
        session_error(
            self.trigger
                .signal()
                .reason()
                .unwrap_or(LostReason::SessionExpired),
        )
    }

    /// Why `own` is gone: the session ended, or someone deleted the node.
    fn gone(&self) -> Error {
        match self.trigger.signal().reason() {
            Some(reason) => session_error(reason),
            None => Error::LockLost(LostReason::Deleted),
        }
    }

    /// Maps a ZooKeeper error, noticing a session that ended.
    fn error(&self, e: zk::Error) -> Error {
        match e {
            zk::Error::SessionExpired => {
                self.lost(LostReason::SessionExpired);
                Error::SessionExpired
            }
            zk::Error::ClientClosed => self.gone_session(),
            e => zk_error(e),
        }
    }

    /// Runs `op` within the request timeout, retrying connection failures (ZooKeeper gives
    /// no answer for them: the request may or may not have been applied, so every `op` here
    /// is idempotent or checks first). Ends early, with the session's error, once the
    /// session is lost: a waiter must not outlive its session.
    async fn request<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, zk::Error>>,
    {
        self.bounded(async { retrying(op).await.map_err(|e| self.error(e)) })
            .await
    }

    /// Runs `fut` within the request timeout, ending it early if the session is lost. Only
    /// for requests whose outcome does not matter once the session is gone (reads, the own
    /// node's create): writes whose outcome the caller needs use [`Self::write`].
    async fn bounded<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let lost = self.trigger.signal();
        tokio::select! {
            biased;
            done = within(self.settings.request_timeout, fut) => done,
            reason = lost.wait() => Err(session_error(reason)),
        }
    }

    /// Runs an idempotent write within the request timeout, retrying connection failures.
    /// No answer in time is [`Error::OutcomeUnknown`], and so is any error after an attempt
    /// that went unanswered (that attempt may have been applied); otherwise a definite
    /// answer from the server is mapped as by [`Self::error`].
    pub(super) async fn write<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, zk::Error>>,
    {
        let unanswered = AtomicBool::new(false);
        let attempt = || {
            let fut = op();
            async {
                let done = fut.await;
                if done.as_ref().is_err_and(is_unanswered) {
                    unanswered.store(true, Ordering::Relaxed);
                }
                done
            }
        };
        let answered = within(self.settings.request_timeout, async {
            Ok(retrying(attempt).await)
        })
        .await;
        match answered {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) if unanswered.load(Ordering::Relaxed) || is_unanswered(&e) => {
                Err(outcome_unknown(e))
            }
            Ok(Err(e)) => Err(self.error(e)),
            Err(Error::Timeout(after)) => Err(outcome_unknown(no_answer(after))),
            Err(e) => Err(e),
        }
    }

    /// Own node of an unconfirmed entry, found by its attempt marker and checked to belong
    /// to this session (Curator's protected create). A lease, by its path (a fresh uuid's).
    async fn find_own(&self, own: &Entry) -> Result<Option<(String, zk::Stat)>> {
        let client = self.client()?;
        if own.side == Side::Lease {
            return match self.request(|| client.get_data(&own.key)).await {
                Ok((_, stat)) if stat.ephemeral_owner == self.id => {
                    Ok(Some((own.key.clone(), stat)))
                }
                Ok(_) => Ok(None),
                Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let (parent, prefix) = own.key.rsplit_once('/').unwrap_or(("", &own.key));
        let marker = names::attempt_marker(prefix);
        let children = match self.request(|| client.list_children(parent)).await {
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => return Ok(None),
            other => other?,
        };
        for child in children.iter().filter(|c| c.starts_with(marker)) {
            let path = format!("{parent}/{child}");
            match self.request(|| client.get_data(&path)).await {
                Ok((_, stat)) if stat.ephemeral_owner == self.id => return Ok(Some((path, stat))),
                Ok(_) => {}
                Err(Error::Backend { source, .. }) if is_no_node(&*source) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Creates the own node (and the lock's parent znodes if needed) and lists the lock's
    /// children after it. Each request honours the request timeout and ends with the
    /// session; a create cut short leaves at most a node that the caller's clean-up finds
    /// by its attempt marker.
    ///
    /// One round trip when nobody else lists this lock: ZooKeeper answers a session's
    /// requests in the order sent, and the client sends each request when it is made, not
    /// when awaited, so a listing sent right behind the create is answered after it and
    /// holds the new node. Otherwise (or if that listing fails) the listing is the shared
    /// one of [`Self::children`], which also begins after the create's answer.
    async fn create_and_list(&self, name: &str, entry: &mut Entry) -> Result<Arc<Vec<String>>> {
        let lead = self.join_listing(name, None);
        let client = self.client()?;
        let path = self.lock_path(name);
        for _ in 0..3 {
            let sending = self.send_create(&client, entry)?;
            let listing = lead.as_ref().map(|_| client.list_children(&path));
            let created = self.bounded(async { Ok(sending.await) }).await?;
            // Only behind a create answered: after a lost connection the listing may have
            // gone out on the next connection, not behind the create.
            let listing = listing.filter(|_| created.is_ok());
            let (node, stat) = match created {
                Ok((stat, sequence)) => (format!("{}{sequence}", entry.key), stat),
                Err(zk::Error::NoNode) => {
                    let dirs = containers(&self.settings);
                    self.request(|| client.mkdir(&path, &dirs)).await?;
                    continue;
                }
                Err(e) if is_transport(&e) => match self.find_own(entry).await? {
                    Some(found) => found,
                    None => continue, // the create did not happen: try again
                },
                Err(e) => return Err(self.error(e)),
            };
            entry.order = node
                .rsplit('/')
                .next()
                .and_then(|node| names::sequence(node, entry.kind))
                .map(i64::from)
                .ok_or_else(|| Error::Backend {
                    backend: "zookeeper",
                    source: format!("unexpected node name {node}").into(),
                })?;
            entry.key = node;
            entry.token = stat.czxid as u64;
            if let Some(listing) = listing {
                if let Ok(children) = self.bounded(async { Ok(listing.await) }).await? {
                    return Ok(Arc::new(children));
                }
            }
            drop(lead); // the shared listing below must not wait for this one
            return self.children(name).await;
        }
        Err(Error::Backend {
            backend: "zookeeper",
            source: "could not create the lock node (parent keeps vanishing)".into(),
        })
    }

    /// One attempt of a guarded write (see [`QueueSession::guarded_write`]). `sent`: the own
    /// node's version of an earlier attempt that went unanswered; once set, every error is
    /// [`Error::OutcomeUnknown`], since that attempt may have been applied.
    async fn write_attempt(
        &self,
        client: &zk::Client,
        own: &Entry,
        written: &mut Written,
        ops: &[WriteOp],
        sent: Option<i32>,
    ) -> Result<Attempt> {
        let unknown = |e: Error| match sent {
            Some(_) => outcome_unknown(e),
            None => e,
        };
        if sent.is_some() || written.unknown {
            // The reads write nothing: they are retried, and end with the session's error
            // once the session is known lost.
            let (data, stat) = match self.request(|| client.get_data(&own.key)).await {
                Ok(found) => found,
                Err(Error::Backend { source, .. }) if is_no_node(&*source) => {
                    return Err(unknown(self.gone()))
                }
                Err(e) => return Err(unknown(e)),
            };
            *written = Written {
                version: i64::from(stat.version),
                value: Some(data),
                unknown: false,
                writes: written.writes,
            };
            if let Some(version) = sent {
                if stat.version == version.wrapping_add(1) {
                    return Ok(Attempt::Applied);
                } else if stat.version != version {
                    return Err(outcome_unknown(
                        "the own node's version moved by more than one",
                    ));
                }
            }
        }
        // Known from the holder's own writes: no read before the write.
        let version = written.version as i32;
        let data = written.value.as_deref().unwrap_or(&own.value);
        // Existence decides between create and set_data, and lets deletes of absent nodes
        // be no-ops; a race with another writer shows up as a failed op: try again.
        let mut exists = Vec::with_capacity(ops.len());
        for op in ops {
            let key = match op {
                WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
            };
            let found = self
                .request(|| client.check_stat(key))
                .await
                .map_err(unknown)?
                .is_some();
            if let (WriteOp::Put { .. }, false) = (op, found) {
                // Parents are plain directories: creating them needs no fence.
                if let Some((parent, _)) = key.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                    let dirs = persistent(&self.settings);
                    self.request(|| client.mkdir(parent, &dirs))
                        .await
                        .map_err(unknown)?;
                }
            }
            exists.push(found);
        }
        let mut writer = client
            .new_check_writer(&own.key, Some(version))
            .map_err(zk_error)?;
        writer
            .add_set_data(&own.key, data, None)
            .map_err(zk_error)?;
        for (op, exists) in ops.iter().zip(exists) {
            match (op, exists) {
                (WriteOp::Put { key, value }, true) => writer.add_set_data(key, value, None),
                (WriteOp::Put { key, value }, false) => {
                    writer.add_create(key, value, &persistent(&self.settings))
                }
                (WriteOp::Delete { key }, true) => writer.add_delete(key, None),
                (WriteOp::Delete { .. }, false) => Ok(()),
            }
            .map_err(zk_error)?;
        }
        // Known lost: nothing is sent. From here on, only a definite answer of the server
        // says "not applied".
        if let Some(reason) = self.trigger.signal().reason() {
            return Err(unknown(session_error(reason)));
        }
        let timeout = self.settings.request_timeout;
        let committed = match tokio::time::timeout(timeout, writer.commit()).await {
            Ok(committed) => committed,
            Err(_) => return Ok(Attempt::Unanswered(version, no_answer(timeout).into())),
        };
        match committed {
            Ok(_) => {
                written.version = i64::from(version.wrapping_add(1));
                Ok(Attempt::Applied)
            }
            // The own node's version moved (an earlier attempt of ours applied late, or
            // someone else wrote it): read again.
            Err(zk::CheckWriteError::CheckFailed {
                source: zk::Error::BadVersion,
            }) => {
                written.unknown = true;
                Ok(Attempt::Again)
            }
            Err(zk::CheckWriteError::CheckFailed { .. }) => Err(unknown(self.gone())),
            Err(zk::CheckWriteError::OperationFailed {
                source: zk::Error::NoNode | zk::Error::NodeExists,
                ..
            }) => Ok(Attempt::Again),
            Err(zk::CheckWriteError::OperationFailed { source, .. })
            | Err(zk::CheckWriteError::RequestFailed { source }) => {
                if is_unanswered(&source) {
                    Ok(Attempt::Unanswered(version, source.into()))
                } else {
                    Err(unknown(self.error(source)))
                }
            }
        }
    }

    /// A clean release under lock-delay: the own node and the holder record it claimed,
    /// deleted in one multi-op. `None` if the record was gone (deleted from outside): then
    /// the node is deleted alone.
    async fn release_with_record(&self, client: &zk::Client, own: &Entry) -> Result<Option<bool>> {
        let record = holder_record(own);
        // As in `remove`: after an attempt cut by a connection failure, NoNode for our node
        // is our own delete.
        let cut = AtomicBool::new(false);
        let attempt = || {
            let mut writer = client.new_multi_writer();
            let built = writer
                .add_delete(&own.key, None)
                .and_then(|()| writer.add_delete(&record, None));
            let commit = built.map(|()| writer.commit());
            let cut = &cut;
            async move {
                // As a check writer's outcome: the first op's failure is `CheckFailed`.
                let done = multi(async { Ok(commit?.await?) }).await;
                if done.as_ref().is_err_and(is_unanswered) {
                    cut.store(true, Ordering::SeqCst);
                }
                done
            }
        };
        match self.request(attempt).await? {
            Ok(_) => Ok(Some(true)),
            Err(zk::CheckWriteError::CheckFailed {
                source: zk::Error::NoNode,
            }) => Ok(Some(cut.load(Ordering::SeqCst))),
            Err(zk::CheckWriteError::OperationFailed {
                source: zk::Error::NoNode,
                ..
            }) => Ok(None),
            Err(e) => Err(self.error(e.into())),
        }
    }

    /// The children of lock `name`, listed after this call began. Listings are coalesced:
    /// at most one per lock name is in flight, and the callers that arrive meanwhile share
    /// the next one. Each of them started waiting before that listing began, so it sees
    /// everything a listing of their own would have. Without this, a thousand waiters
    /// enqueueing at once would each hold a copy of a thousand-name listing.
    async fn children(&self, name: &str) -> Result<Arc<Vec<String>>> {
        let (tx, rx) = oneshot::channel();
        if let Some(_handover) = self.join_listing(name, Some(tx)) {
            // Nobody listing: list inline (the uncontended path pays no task hand-off).
            return self.list(name).await.map(Arc::new);
        }
        match rx.await {
            Ok(listed) => listed.map_err(unshare),
            Err(_) => Err(self.gone_session()),
        }
    }

    /// Takes the lead of the listings of `name` if nobody lists it now: the caller lists
    /// inline, and those who queue meanwhile get the next listing, from a task that the
    /// returned hand-over starts when dropped (also if the caller's future is dropped
    /// half-way). Otherwise queues `waiter`, if given, for that next listing.
    fn join_listing(
        &self,
        name: &str,
        waiter: Option<oneshot::Sender<Listed>>,
    ) -> Option<HandOver> {
        let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let next = listings.entry(name.to_owned()).or_default();
        if next.running {
            next.waiting.extend(waiter);
            return None;
        }
        next.running = true;
        Some(HandOver {
            session: self.me.clone(),
            name: name.to_owned(),
        })
    }

    /// The entry directly ahead of `own` in `children` (a listing made after its create).
    /// Fails if `own` is not among them.
    fn predecessor_in(
        &self,
        name: &str,
        own: &Entry,
        children: &[String],
    ) -> Result<Option<Predecessor>> {
        let own_name = own.key.rsplit('/').next().unwrap_or_default();
        if !children.iter().any(|c| c == own_name) {
            return Err(self.gone());
        }
        let pred =
            names::predecessor(sequence_of(own), children, own.kind, own.side).map(|child| {
                Predecessor {
                    key: format!("{}/{child}", self.lock_path(name)),
                    revision: 0,
                    created: 0,
                }
            });
        Ok(pred)
    }

    /// One listing, with retries and the request timeout.
    async fn list(&self, name: &str) -> Result<Vec<String>> {
        let client = self.client()?;
        let path = self.lock_path(name);
        match self.request(|| client.list_children(&path)).await {
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Ok(Vec::new()),
            other => other,
        }
    }

    /// kazoo's `Semaphore._ensure_path`: the pool node `pool` of semaphore `name` exists
    /// and holds `limit` ([`Error::LimitMismatch`] if it holds another number). A new pool
    /// is created persistent with the limit as its data, in one request (kazoo creates it
    /// empty and then sets it); an empty one (kazoo's between its two requests, or made by
    /// someone's `ensure_path`) is given the limit, only if still empty. Other data that is
    /// no number is left alone, as kazoo leaves it ("maybe used for other purposes").
    /// Every request is idempotent or conditional: a retried one that finds its earlier
    /// attempt applied reads the pool again. Gives the pool node's czxid and data version
    /// the check held for, if the answer had them.
    async fn ensure_pool(
        &self,
        client: &zk::Client,
        name: &str,
        pool: &str,
        limit: u32,
    ) -> Result<Option<(i64, i32)>> {
        let checked = |stat: &zk::Stat| (!stat.is_invalid()).then_some((stat.czxid, stat.version));
        let value = limit_value(limit);
        let node_is = |e: &Error, expected: zk::Error| {
            matches!(e, Error::Backend { source, .. }
                if source.downcast_ref::<zk::Error>() == Some(&expected))
        };
        for _ in 0..4 {
            let (data, stat) = match self.request(|| client.get_data(pool)).await {
                Ok(found) => found,
                Err(e) if node_is(&e, zk::Error::NoNode) => {
                    let options = persistent(&self.settings);
                    match self.request(|| client.create(pool, &value, &options)).await {
                        Ok((stat, _)) => return Ok(checked(&stat)),
                        Err(e) if node_is(&e, zk::Error::NodeExists) => continue,
                        Err(e) if node_is(&e, zk::Error::NoNode) => {
                            // Parents as the queues' own: containers, gone once empty.
                            let parent = pool.rsplit_once('/').map_or("", |(p, _)| p);
                            if !parent.is_empty() {
                                let dirs = containers(&self.settings);
                                self.request(|| client.mkdir(parent, &dirs)).await?;
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if !data.is_empty() {
                return check_limit(name, &data, limit).map(|()| checked(&stat));
            }
            match self
                .request(|| client.set_data(pool, &value, Some(stat.version)))
                .await
            {
                Ok(stat) => return Ok(checked(&stat)),
                // Set or deleted meanwhile (by an earlier attempt of ours, too): read again.
                Err(e) if node_is(&e, zk::Error::BadVersion) || node_is(&e, zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            source: format!("the pool of semaphore {name:?} kept changing").into(),
        })
    }

    /// Whether the node at `lease`'s path is this session's (see [`Self::find_own`]); if
    /// so, confirms `lease` with it: its token and order are the node's czxid.
    async fn confirm_lease(&self, lease: &mut Entry) -> Result<bool> {
        let Some((_, stat)) = self.find_own(lease).await? else {
            return Ok(false);
        };
        lease.token = stat.czxid as u64;
        lease.order = stat.czxid;
        Ok(true)
    }

    /// Creates `lease` (ephemeral) only while `gate` exists, and confirms it. `false` if the
    /// pool is gone (deleted since it was listed: nothing created); the error
    /// [`Self::gone`] gives if `gate` is.
    async fn create_lease(
        &self,
        client: &zk::Client,
        gate: &Entry,
        lease: &mut Entry,
    ) -> Result<bool> {
        let options = ephemeral(&self.settings);
        let attempt = || {
            let sent = self.tracking(&lease.key, || {
                client
                    .new_check_writer(&gate.key, None)
                    .and_then(|mut writer| {
                        writer.add_create(&lease.key, &lease.value, &options)?;
                        Ok(writer)
                    })
                    .map(zk::CheckWriter::commit)
            });
            async move {
                // A borrowed session's records were swept: nothing was sent.
                let commit = sent.ok_or(zk::Error::ClientClosed)??;
                multi(commit).await
            }
        };
        match self.request(attempt).await? {
            Ok(results) => match results.first() {
                Some(zk::MultiWriteResult::Create { stat, .. }) if !stat.is_invalid() => {
                    lease.token = stat.czxid as u64;
                    lease.order = stat.czxid;
                    Ok(true)
                }
                // No stat in the answer (ZOOKEEPER-4026): read it.
                _ => match self.confirm_lease(lease).await? {
                    true => Ok(true),
                    false => Err(self.gone()),
                },
            },
            Err(zk::CheckWriteError::CheckFailed { .. }) => Err(self.gone()),
            // An earlier attempt applied, its answer lost: ours if this session owns it.
            Err(zk::CheckWriteError::OperationFailed {
                source: zk::Error::NodeExists,
                ..
            }) => match self.confirm_lease(lease).await? {
                true => Ok(true),
                false => Err(Error::Backend {
                    backend: "zookeeper",
                    source: format!("another session's node at the lease path {}", lease.key)
                        .into(),
                }),
            },
            Err(zk::CheckWriteError::OperationFailed {
                source: zk::Error::NoNode,
                ..
            }) => Ok(false),
            Err(e) => Err(self.error(e.into())),
        }
    }
}

/// What became of one attempt of a guarded write.
enum Attempt {
    Applied,
    /// Definitely not applied, for a reason that another attempt may not meet.
    Again,
    /// Sent against this version of the own node; no answer.
    Unanswered(i32, crate::error::BoxError),
}

type Listed = std::result::Result<Arc<Vec<String>>, Arc<Error>>;

/// The callers waiting for the next listing of one lock path.
#[derive(Default)]
struct NextListing {
    running: bool,
    waiting: Vec<oneshot::Sender<Listed>>,
}

/// Ends an inline listing: serves those who queued meanwhile from a task, or closes the
/// entry if none did.
struct HandOver {
    session: Weak<ZkSession>,
    name: String,
}

impl Drop for HandOver {
    fn drop(&mut self) {
        let Some(session) = self.session.upgrade() else {
            return;
        };
        let mut listings = session.listings.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = listings
            .get(&self.name)
            .is_some_and(|next| !next.waiting.is_empty());
        if waiting {
            drop(listings);
            session
                .runtime
                .spawn(list_for_waiters(self.session.clone(), self.name.clone()));
        } else {
            listings.remove(&self.name);
        }
    }
}

/// Lists children for the callers that queued up, batch after batch, until none wait.
async fn list_for_waiters(session: Weak<ZkSession>, name: String) {
    loop {
        let Some(session) = session.upgrade() else {
            return; // senders dropped: callers see the session gone
        };
        let batch = {
            let mut listings = session.listings.lock().unwrap_or_else(|e| e.into_inner());
            let Some(next) = listings.get_mut(&name) else {
                return;
            };
            if next.waiting.is_empty() {
                listings.remove(&name);
                return;
            }
            std::mem::take(&mut next.waiting)
        };
        let listed: Listed = session.list(&name).await.map(Arc::new).map_err(Arc::new);
        for caller in batch {
            let _ = caller.send(listed.clone());
        }
    }
}

/// An error shared by several callers, back to an owned one.
fn unshare(shared: Arc<Error>) -> Error {
    match Arc::try_unwrap(shared) {
        Ok(error) => error,
        Err(shared) => match &*shared {
            Error::SessionExpired => Error::SessionExpired,
            Error::Closed => Error::Closed,
            Error::Timeout(after) => Error::Timeout(*after),
            Error::LockLost(reason) => Error::LockLost(*reason),
            other => Error::Backend {
                backend: "zookeeper",
                source: other.to_string().into(),
            },
        },
    }
}

/// The holder record of the queue of `own` (lock-delay): a persistent child of the lock
/// node, named so that no peer takes it for a contender (kazoo matches names by pattern;
/// Curator sorts it after every sequence number) and none of ours does
/// ([`names::sequence`] finds no number in it).
fn holder_record(own: &Entry) -> String {
    let parent = own.key.rsplit_once('/').map_or("", |(parent, _)| parent);
    format!("{parent}/fairlock-holder-{}", own.kind.name())
}

/// A multi-op's outcome, with connection failures as errors to retry (see [`retrying`]).
async fn multi(
    commit: impl std::future::Future<Output = Result<Vec<zk::MultiWriteResult>, zk::CheckWriteError>>,
) -> Result<Result<Vec<zk::MultiWriteResult>, zk::CheckWriteError>, zk::Error> {
    match commit.await {
        Err(
            zk::CheckWriteError::RequestFailed { source }
            | zk::CheckWriteError::OperationFailed { source, .. },
        ) if is_transport(&source) => Err(source),
        other => Ok(other),
    }
}

/// The sequence number of a confirmed own entry (stored widened in `Entry::order`).
fn sequence_of(own: &Entry) -> i32 {
    own.order as i32 // set from an i32 by `create`: lossless
}

pub(super) fn is_no_node(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(e.downcast_ref::<zk::Error>(), Some(zk::Error::NoNode))
}

/// Whether `e` is the connection failing rather than an answer of the server: the
/// connection lost or closed, or silent past the library's deadline ("no response from
/// connection"), or an I/O error (both reported as custom errors).
pub(super) fn is_transport(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_)
    )
}

/// Whether a request that failed with `e` may nevertheless have been applied: the
/// connection failed after it went out, or its answer could not be read. Every other error
/// is the server's definite answer (the request was refused), or the client library's
/// refusal to send it (bad arguments, client closed, session known expired).
pub(super) fn is_unanswered(e: &zk::Error) -> bool {
    is_transport(e)
        || matches!(
            e,
            zk::Error::UnexpectedError(_) | zk::Error::UnmarshalError { .. }
        )
}

/// A write sent without a definite answer.
pub(super) fn outcome_unknown(source: impl Into<crate::error::BoxError>) -> Error {
    Error::OutcomeUnknown {
        backend: "zookeeper",
        source: source.into(),
    }
}

/// The source of an [`Error::OutcomeUnknown`] for a write without an answer in time.
pub(super) fn no_answer(after: Duration) -> String {
    format!("no answer within the request timeout of {after:?}")
}

/// `op`, retried with backoff while the connection fails (not bounded in time: callers
/// bound it).
pub(super) async fn retrying<T, F, Fut>(op: F) -> Result<T, zk::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, zk::Error>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(500))
            .without_max_times(),
    )
    .when(is_transport)
    .await
}

impl Drop for ZkSession {
    fn drop(&mut self) {
        if self.borrowed.is_some() {
            // Nobody uses it any more; guards removed their nodes as they went.
            if let Some(sweep) = self.end_borrowed().filter(|s| !s.nodes.is_empty()) {
                let timeout = self.settings.request_timeout;
                self.runtime.spawn(async move { sweep.run(timeout).await });
            }
            return;
        }
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.disconnect();
            let (settings, info) = (self.settings.clone(), self.info.clone());
            self.runtime
                .spawn(async move { close_session(&settings, info).await });
        }
    }
}

/// The nodes a borrowed session may have left, with its connection.
struct Sweep {
    client: zk::Client,
    nodes: Tracked,
}

impl Sweep {
    /// Deletes every node of the recorded attempts, within `timeout`. ZooKeeper applies a
    /// session's requests in order, so a listing sent after a create sees its node.
    async fn run(self, timeout: Duration) -> Result<()> {
        let client = &self.client;
        let swept = within(timeout, async {
            for (parent, marker) in &self.nodes {
                let children = match retrying(|| client.list_children(parent)).await {
                    Ok(children) => children,
                    Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(zk_error(e)),
                };
                for child in children.iter().filter(|c| c.starts_with(marker.as_str())) {
                    let path = format!("{parent}/{child}");
                    match retrying(|| client.delete(&path, None)).await {
                        Ok(()) | Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(zk_error(e)),
                    }
                }
            }
            Ok(())
        })
        .await;
        match swept {
            // An ended session's nodes went with it.
            Err(Error::Backend { source, .. })
                if matches!(
                    source.downcast_ref::<zk::Error>(),
                    Some(zk::Error::SessionExpired | zk::Error::ClientClosed)
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Closes a session through a second connection: ZooKeeper's CloseSession, which the
/// client library sends when its last handle of a non-detached connection goes.
pub(super) async fn close_session(settings: &Settings, info: zk::SessionInfo) {
    let timeout = settings.request_timeout;
    let connecting = settings.connect(|c| c.with_session(info));
    if let Ok(Ok(client)) = tokio::time::timeout(timeout, connecting).await {
        let mut states = client.state_watcher();
        drop(client);
        let _ = tokio::time::timeout(timeout, async {
            while !states.changed().await.is_terminated() {}
        })
        .await;
    }
}

/// How long a disconnection may last before the session counts as lost (see
/// [`watch_state`]).
fn disconnection_grace(timeout: Duration, margin: Duration) -> Duration {
    (timeout * 2 / 5).min((timeout * 11 / 20).saturating_sub(margin))
}

/// Follows the session's state: suspended while disconnected; lost when expired, or when a
/// disconnection lasts long enough that the server may have expired it.
///
/// The client library declares a connection dead after 2/5 of the session timeout without
/// an answer (checked every 1/20), and the server expires the session one timeout after it
/// last heard from us, which is no earlier than we last heard from it. So the server cannot
/// expire the session before `11/20` of the timeout after the disconnection; counting 2/5
/// from it declares the loss first, with 3/20 of the timeout to spare, or the configured
/// safety margin if that is larger. Counted on the suspend-aware clock.
async fn watch_state(
    mut states: zk::StateWatcher,
    timeout: Duration,
    margin: Duration,
    session: Weak<ZkSession>,
) {
    let grace = disconnection_grace(timeout, margin);
    let mut deadline: Option<BootInstant> = None;
    loop {
        let state = tokio::select! {
            state = states.changed() => state,
            _ = sleep_until(deadline) => {
                if let Some(session) = session.upgrade() {
                    tracing::warn!(
                        session = %format_args!("{:x}", session.id),
                        "zookeeper disconnected for 2/5 of the session timeout: session lost"
                    );
                    session.lost(LostReason::SessionExpired);
                }
                return;
            }
        };
        let Some(session) = session.upgrade() else {
            return;
        };
        tracing::debug!(
            session = %format_args!("{:x}", session.id),
            ?state,
            "zookeeper connection state changed"
        );
        match state {
            zk::SessionState::Disconnected => {
                session.suspended.set(true);
                deadline.get_or_insert(BootInstant::now().add(grace));
            }
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                session.suspended.set(false);
                deadline = None;
            }
            zk::SessionState::Closed => {
                // Our own disconnect (close, abandon) or the library giving up.
                if !session.ended.load(Ordering::SeqCst) {
                    session.lost(LostReason::SessionExpired);
                }
                return;
            }
            _ => {
                session.lost(LostReason::SessionExpired); // Expired, AuthFailed
                return;
            }
        }
    }
}

/// Sleeps until `at` on the suspend-aware clock (in slices: tokio's timers stop while the
/// machine is suspended); never if `None`.
async fn sleep_until(at: Option<BootInstant>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    while !at.has_passed() {
        tokio::time::sleep(at.remaining().min(Duration::from_secs(1))).await;
    }
}

/// Keeps a held lock's node watched; dropping it stops the watching task.
pub(crate) struct OwnWatch(JoinHandle<()>);

impl Drop for OwnWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl QueueSession for ZkSession {
    const KIND: crate::config::BackendKind = crate::config::BackendKind::Zookeeper;
    type OwnWatch = OwnWatch;

    fn trigger(&self) -> &LossTrigger {
        &self.trigger
    }

    fn new_entry(&self, name: &str, kind: QueueKind, side: Side, value: &[u8]) -> Entry {
        let prefix = names::protected_prefix(&uuid::Uuid::new_v4(), kind, side);
        Entry::new(
            format!("{}/{prefix}", self.lock_path(name)),
            kind,
            side,
            value,
        )
    }

    async fn enqueue_if_empty(&self, name: &str, entry: &mut Entry) -> Result<bool> {
        // ZooKeeper cannot create "only if the parent has no children" atomically: look
        // first (no write if taken), then create and confirm being first; else step back.
        let children = self.children(name).await?;
        if names::blocking(&children, entry.kind, entry.side)
            .next()
            .is_some()
        {
            return Ok(false);
        }
        let children = self.create_and_list(name, entry).await?;
        if self.predecessor_in(name, entry, &children)?.is_none() {
            entry.head_at_create = true;
            return Ok(true);
        }
        self.remove(entry).await?;
        entry.order = 0;
        Ok(false)
    }

    async fn enqueue(&self, name: &str, entry: &mut Entry) -> Result<Option<Predecessor>> {
        let children = self.create_and_list(name, entry).await?;
        let pred = self.predecessor_in(name, entry, &children)?;
        entry.head_at_create = pred.is_none();
        Ok(pred)
    }

    async fn predecessor(&self, name: &str, own: &Entry) -> Result<Option<Predecessor>> {
        let children = self.children(name).await?;
        self.predecessor_in(name, own, &children)
    }

    async fn deleted(&self, pred: &Predecessor) -> Result<()> {
        let watcher = {
            let client = self.client()?;
            match self.request(|| client.get_and_watch_data(&pred.key)).await {
                // Gone already: the caller re-lists at once.
                Err(Error::Backend { source, .. }) if is_no_node(&*source) => return Ok(()),
                Err(e) => return Err(e),
                Ok((_, _, watcher)) => watcher,
            }
        };
        // Deletion, data change or session event: the caller re-lists either way.
        watcher.changed().await;
        Ok(())
    }

    /// An elected leader's node must belong to this very session (Curator's LeaderLatch
    /// double leaders came from trusting a node after a reconnect).
    async fn confirm_head(&self, own: &Entry) -> Result<()> {
        if own.kind == QueueKind::Lock || own.head_at_create {
            // The children listing showed the node; headed at create, its owner was
            // checked by the create itself (see `Entry::head_at_create`).
            return Ok(());
        }
        let client = self.client()?;
        match self.request(|| client.get_data(&own.key)).await {
            Ok((_, stat)) if stat.ephemeral_owner == self.id => Ok(()),
            Ok(_) => Err(self.gone()),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Err(self.gone()),
            Err(e) => Err(e),
        }
    }

    /// kazoo's lease: `BASE/NAME/<uuid hex>`.
    fn new_lease(&self, name: &str, value: &[u8]) -> Entry {
        let key = format!("{}/{}", self.lock_path(name), uuid::Uuid::new_v4().simple());
        Entry {
            unsent: true,
            ..Entry::new(key, QueueKind::Lock, Side::Lease, value)
        }
    }

    /// kazoo's `Semaphore._get_lease`: list the pool with a children watch, and create the
    /// lease if fewer than `limit` children are there; guarded, unlike kazoo's, by a check
    /// that the gate node still exists, in the same multi-op. A create cut short is found
    /// again by its path and owner.
    async fn take_lease(
        &self,
        name: &str,
        limit: u32,
        gate: &Entry,
        lease: &mut Entry,
    ) -> Result<Option<LeaseFreed>> {
        let client = self.client()?;
        let pool = self.lock_path(name);
        let own = lease.key.rsplit('/').next().unwrap_or_default().to_owned();
        for _ in 0..4 {
            // Once per acquisition, as kazoo's `_ensure_path`; again only if the pool was
            // replaced or its data written since.
            if lease.pool_checked.is_none() {
                lease.pool_checked = self.ensure_pool(&client, name, &pool, limit).await?;
            }
            let (children, stat, watcher) =
                match self.request(|| client.get_and_watch_children(&pool)).await {
                    // Deleted since (to change the limit): create it again.
                    Err(Error::Backend { source, .. }) if is_no_node(&*source) => {
                        lease.pool_checked = None;
                        continue;
                    }
                    other => other?,
                };
            if lease
                .pool_checked
                .is_some_and(|c| c != (stat.czxid, stat.version))
            {
                lease.pool_checked = None;
                continue;
            }
            // An earlier attempt's create applied, its answer lost: the lease is ours.
            if children.contains(&own) && self.confirm_lease(lease).await? {
                return Ok(None);
            }
            if children.len() >= limit as usize {
                // Any change of the pool wakes the caller, who asks again.
                return Ok(Some(Box::pin(async move {
                    watcher.changed().await;
                    Ok(())
                })));
            }
            drop(watcher);
            lease.unsent = false;
            if self.create_lease(&client, gate, lease).await? {
                return Ok(None);
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            source: format!("the pool of semaphore {name:?} kept vanishing").into(),
        })
    }

    /// ZooKeeper has no leases to time the delay: a noticed record's modification time
    /// (the server's clock when the unclean end was noticed) is compared with the own
    /// node's creation time (the server's clock too), which is recent for a `try_lock`; a
    /// waiter that queued earlier counts the delay from when it first saw the record, on
    /// its own clock (never sooner than the server's count, since it saw it after).
    async fn claim_holder(&self, _name: &str, own: &mut Entry, delay: Duration) -> Result<Claim> {
        let client = self.client()?;
        let record = holder_record(own);
        let persistent = persistent(&self.settings);
        // While `own` exists: put `data` into the record (create it if `version` is None).
        let write = |data: Vec<u8>, version: Option<i32>| {
            let (client, own, record, persistent) = (&client, &own.key, &record, &persistent);
            let attempt = move || {
                let writer = client.new_check_writer(own, None).and_then(|mut w| {
                    match version {
                        None => w.add_create(record, &data, persistent)?,
                        Some(v) => w.add_set_data(record, &data, Some(v))?,
                    }
                    Ok(w)
                });
                async move { multi(writer?.commit()).await }
            };
            self.request(attempt)
        };
        for _ in 0..4 {
            match write(own.key.clone().into_bytes(), None).await? {
                Ok(_) => {
                    own.holder_record = true;
                    return Ok(Claim::Claimed);
                }
                Err(zk::CheckWriteError::CheckFailed { .. }) => return Err(self.gone()),
                Err(zk::CheckWriteError::OperationFailed {
                    source: zk::Error::NodeExists,
                    ..
                }) => {}
                Err(e) => return Err(self.error(e.into())),
            }
            let (data, stat) = match self.request(|| client.get_data(&record)).await {
                Ok(found) => found,
                Err(Error::Backend { source, .. }) if is_no_node(&*source) => continue,
                Err(e) => return Err(e),
            };
            if data == own.key.as_bytes() {
                // An earlier attempt of this claim applied; its answer was lost.
                own.holder_record = true;
                return Ok(Claim::Claimed);
            }
            let (data, version) = if data.is_empty() {
                // Noticed: is the delay over?
                let Some(created) = self.request(|| client.check_stat(&own.key)).await? else {
                    return Err(self.gone());
                };
                let on_server = (created.ctime - stat.mtime).max(0) as u64;
                let first_seen = match own.delay_seen {
                    Some((mzxid, at)) if mzxid == stat.mzxid => at,
                    _ => own.delay_seen.insert((stat.mzxid, Instant::now())).1,
                };
                let elapsed = Duration::from_millis(on_server).max(first_seen.elapsed());
                if elapsed < delay {
                    return Ok(Claim::Delayed(delay - elapsed));
                }
                (own.key.clone().into_bytes(), stat.version)
            } else {
                // An unclean end, not noticed yet: the delay starts now.
                (Vec::new(), stat.version)
            };
            let noticing = data.is_empty();
            match write(data, Some(version)).await? {
                Ok(results) if noticing => {
                    let mzxid = match results.last() {
                        Some(zk::MultiWriteResult::SetData { stat }) => stat.mzxid,
                        _ => 0,
                    };
                    own.delay_seen = Some((mzxid, Instant::now()));
                    return Ok(Claim::Delayed(delay));
                }
                Ok(_) => {
                    own.holder_record = true;
                    return Ok(Claim::Claimed);
                }
                Err(zk::CheckWriteError::CheckFailed { .. }) => return Err(self.gone()),
                // Changed or gone meanwhile: look again.
                Err(zk::CheckWriteError::OperationFailed {
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(self.error(e.into())),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            source: "the holder record kept changing".into(),
        })
    }

    async fn proclaim(&self, own: &Entry, value: &[u8]) -> Result<()> {
        // Known lost: nothing is sent.
        if let Some(reason) = self.trigger.signal().reason() {
            return Err(session_error(reason));
        }
        let client = self.client()?;
        // Serialised with the guarded writes, whose read-back must see only their own change.
        let mut written = own.written.lock().await;
        // Setting the own node's value again is idempotent: connection failures are retried.
        // A repeat may have moved the version more than once: the next write reads it.
        written.unknown = true;
        match self.write(|| client.set_data(&own.key, value, None)).await {
            Ok(stat) => {
                *written = Written {
                    version: i64::from(stat.version),
                    value: Some(value.to_vec()),
                    unknown: false,
                    writes: written.writes,
                };
                Ok(())
            }
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => Err(self.gone()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, own: &Entry) -> Result<bool> {
        if self.trigger.signal().is_lost() {
            return Ok(false); // ephemeral: the node went with the session (which we closed)
        }
        let path = if own.order == 0 {
            match self.find_own(own).await? {
                Some((path, _)) => path,
                None => {
                    self.untrack(&own.key);
                    return Ok(false);
                }
            }
        } else {
            own.key.clone()
        };
        // Sequential paths are never reused: deleting our path can only delete our node.
        let client = self.client()?;
        if own.holder_record {
            if let Some(removed) = self.release_with_record(&client, own).await? {
                self.untrack(&path);
                return Ok(removed);
            }
        }
        // An attempt cut by a connection failure (the server died, the session moved; also
        // the library's "no response from connection") may have deleted the node: then the
        // retry's NoNode is our own delete, not someone else's.
        let cut = AtomicBool::new(false);
        let delete = || {
            let attempt = client.delete(&path, None);
            let cut = &cut;
            async move {
                let result = attempt.await;
                if result.as_ref().is_err_and(is_unanswered) {
                    cut.store(true, Ordering::SeqCst);
                }
                result
            }
        };
        let removed = match self.request(delete).await {
            Ok(()) => Ok(true),
            Err(Error::Backend { source, .. }) if is_no_node(&*source) => {
                Ok(cut.load(Ordering::SeqCst))
            }
            Err(e) => Err(e),
        };
        if removed.is_ok() {
            self.untrack(&path);
        }
        removed
    }

    fn remove_in_background(self: &Arc<Self>, own: Entry) {
        self.runtime.spawn(remove_until_done(self.clone(), own));
    }

    fn watch_own(&self, own: &Entry, trigger: LossTrigger) -> OwnWatch {
        let connection = self.client.clone();
        let current = move || connection.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let path = own.key.clone();
        let session = self.trigger.clone();
        let request_timeout = self.settings.request_timeout;
        OwnWatch(self.runtime.spawn(async move {
            loop {
                let Some(client) = current() else { return };
                let watched = client.check_and_watch_stat(&path).await;
                drop(client);
                let watcher = match watched {
                    Ok((Some(_), watcher)) => watcher,
                    Ok((None, _)) => break,
                    Err(e) if is_transport(&e) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => return, // session over: its trigger reports that
                };
                match watcher.changed().await.event_type {
                    zk::EventType::NodeDeleted => break,
                    zk::EventType::Session => return,
                    _ => {}
                }
            }
            if trigger.signal().is_lost() {
                return; // released (the delete was our own) or lost already
            }
            // Deleted: by someone else, or with the whole session, which the server reports
            // on the next request (after the connection loss it may cause first).
            let deadline = Instant::now() + request_timeout;
            while let Some(client) = current() {
                match client.check_stat("/").await {
                    Ok(_) => break, // the session answers: someone deleted the node
                    Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                        session.fire(LostReason::SessionExpired);
                        break;
                    }
                    // Connection loss, session moved: not an answer yet.
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("zookeeper session check after deletion: {e}");
                        drop(client);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => break,
                }
            }
            trigger.fire(LostReason::Deleted);
        }))
    }

    fn id(&self) -> String {
        format!("{:x}", self.id)
    }

    fn is_suspended(&self) -> bool {
        self.suspended.get()
    }

    /// Closes the session: its nodes go at once. A borrowed session stays open, without
    /// fairlock's nodes.
    async fn close(&self) -> Result<()> {
        self.trigger.fire(LostReason::SessionClosed);
        if self.borrowed.is_some() {
            return match self.end_borrowed() {
                Some(sweep) => sweep.run(self.settings.request_timeout).await,
                None => Ok(()),
            };
        }
        self.ended.store(true, Ordering::SeqCst);
        self.disconnect();
        close_session(&self.settings, self.info.clone()).await;
        Ok(())
    }

    /// Drops the connection without closing the session, as a crash would. The process
    /// goes on, though, and its guards must not go on believing: they count the session
    /// lost as after any disconnection that lasts (the connection is gone for good).
    fn abandon(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.disconnect();
        let grace = disconnection_grace(self.session_timeout, self.settings.safety_margin);
        let trigger = self.trigger.clone();
        self.runtime.spawn(async move {
            sleep_until(Some(BootInstant::now().add(grace))).await;
            trigger.fire(LostReason::SessionExpired);
        });
    }

    /// Errors: nothing was applied, except for [`Error::OutcomeUnknown`] (a multi-op went
    /// out, and neither its answer nor a read-back told whether it was applied).
    ///
    /// Each multi-op checks the own node's version and writes its data back unchanged, which
    /// bumps the version: of all attempts made against one version, at most one can apply.
    /// So after an attempt went unanswered (connection lost, for example when a server
    /// dies), reading the version back tells: one more, it was applied; the same, it was
    /// not (yet), and sending it again is safe.
    /// The holder's writes through its entry are serialised (`Entry::written` is held
    /// throughout, here and by `proclaim`), so no other write of ours moves the version
    /// meanwhile; nobody else writes another's lock node. `Entry::written` also remembers
    /// the version and value the last write left, so a write needs no read first; only
    /// after an unanswered or refused attempt is the node read back.
    async fn guarded_write(&self, own: &Entry, ops: &[WriteOp]) -> Result<()> {
        let client = self.client()?;
        let mut written = own.written.lock().await;
        // Set once an attempt went unanswered: its version, the deadline for finding out
        // what became of it, and why it went unanswered.
        let mut unanswered: Option<(i32, Instant, crate::error::BoxError)> = None;
        for _ in 0..5 {
            let sent = unanswered.as_ref().map(|(version, ..)| *version);
            let attempt = self.write_attempt(&client, own, &mut written, ops, sent);
            let outcome = match &unanswered {
                None => attempt.await,
                Some((_, deadline, _)) => match tokio::time::timeout_at(*deadline, attempt).await {
                    Ok(outcome) => outcome,
                    Err(_) => break,
                },
            };
            match outcome? {
                Attempt::Applied => return Ok(()),
                Attempt::Again => {}
                Attempt::Unanswered(version, source) => {
                    written.unknown = true;
                    let deadline = Instant::now() + self.settings.request_timeout;
                    let deadline = unanswered.as_ref().map_or(deadline, |(_, d, _)| *d);
                    unanswered = Some((version, deadline, source));
                }
            }
        }
        Err(match unanswered {
            Some((_, _, source)) => outcome_unknown(source),
            None => Error::Backend {
                backend: "zookeeper",
                source: "guarded write kept racing with other writers".into(),
            },
        })
    }
}
