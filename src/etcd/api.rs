//! The etcd requests fairlock makes, as plain data, and the one trait that carries them.
//!
//! The backend (sessions, the watch hub, the key space) speaks only [`EtcdApi`]. [`Real`]
//! sends it to a cluster through etcd-client; the simulator (feature `simulation`) answers
//! it from a model of etcd with injected faults, so the backend's own code runs, unchanged,
//! under thousands of seeded fault schedules. The data types cover exactly what fairlock
//! asks of etcd: transactions of compares (all `==`), puts, deletes and range reads;
//! delete-only or full watches on a key or prefix; leases.
//!
//! Errors stay etcd-client's, so that one classification (`request.rs`: member
//! unavailable, lease not found, refused credentials) serves both.

use async_trait::async_trait;
use etcd_client::{
    Compare as EtcdCompare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};

/// What an etcd request answers: etcd-client's errors, for both the real and the simulated
/// server.
pub(crate) type ApiResult<T> = std::result::Result<T, etcd_client::Error>;

/// The order of a range read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sort {
    /// Key order (etcd's default).
    Key,
    /// Oldest first, by create revision.
    CreateAscending,
    /// Newest first, by create revision.
    CreateDescending,
}

/// A range read of one key, of every key under a prefix, or of the keys from `key` up to
/// (not including) `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub key: Vec<u8>,
    pub prefix: bool,
    /// The end of the range, if it is neither one key nor a prefix.
    pub end: Option<Vec<u8>>,
    pub sort: Sort,
    /// At most this many keys (0: all).
    pub limit: i64,
    /// Only keys created at or before this revision (0: any).
    pub max_create_revision: i64,
    /// Leave the values out.
    pub keys_only: bool,
    /// Answer only how many keys the range holds ([`OpResponse::Count`]).
    pub count_only: bool,
}

impl Range {
    /// The key `key`, with its value.
    pub(crate) fn key(key: impl Into<Vec<u8>>) -> Self {
        Range {
            key: key.into(),
            prefix: false,
            end: None,
            sort: Sort::Key,
            limit: 0,
            max_create_revision: 0,
            keys_only: false,
            count_only: false,
        }
    }

    /// Every key starting with `prefix`.
    pub(crate) fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Range {
            prefix: true,
            ..Range::key(prefix)
        }
    }

    /// Every key from `start` up to (not including) `end`.
    pub(crate) fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Range {
            end: Some(end.into()),
            ..Range::key(start)
        }
    }

    pub(crate) fn sorted(self, sort: Sort) -> Self {
        Range { sort, ..self }
    }

    pub(crate) fn limit(self, limit: i64) -> Self {
        Range { limit, ..self }
    }

    pub(crate) fn created_at_most(self, revision: i64) -> Self {
        Range {
            max_create_revision: revision,
            ..self
        }
    }

    pub(crate) fn keys_only(self) -> Self {
        Range {
            keys_only: true,
            ..self
        }
    }

    /// Only the number of keys, not the keys: a read whose answer stays small however many
    /// keys the range holds. Keys only too, for a server that lists them anyway (the
    /// simulator's model answers with the keys; [`OpResponse::count`] takes either).
    pub(crate) fn count_only(self) -> Self {
        Range {
            count_only: true,
            keys_only: true,
            ..self
        }
    }
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    CreateRevision,
    ModRevision,
    Version,
}

/// `target(key) == value` (over every key under `key` if `prefix`, or from `key` up to
/// `end`). A missing key compares as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compare {
    pub target: Target,
    pub key: Vec<u8>,
    pub prefix: bool,
    pub end: Option<Vec<u8>>,
    pub value: i64,
}

impl Compare {
    pub(crate) fn create_revision(key: impl Into<Vec<u8>>, value: i64) -> Self {
        Compare {
            target: Target::CreateRevision,
            key: key.into(),
            prefix: false,
            end: None,
            value,
        }
    }

    pub(crate) fn mod_revision(key: impl Into<Vec<u8>>, value: i64) -> Self {
        Compare {
            target: Target::ModRevision,
            ..Compare::create_revision(key, value)
        }
    }

    /// No key lies in `range` (a prefix or a range up to an end).
    pub(crate) fn range_empty(range: &Range) -> Self {
        Compare {
            target: Target::Version,
            key: range.key.clone(),
            prefix: range.prefix,
            end: range.end.clone(),
            value: 0,
        }
    }
}

/// A put. `lease` 0: none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Put {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    /// Keep the key's value (the put only moves its mod revision).
    pub ignore_value: bool,
    /// Keep the key's lease.
    pub ignore_lease: bool,
}

impl Put {
    pub(crate) fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    pub(crate) fn with_lease(self, lease: i64) -> Self {
        Put { lease, ..self }
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Range(Range),
    Put(Put),
    Delete { key: Vec<u8> },
}

impl Op {
    pub(crate) fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// `if when… then then… else otherwise…`, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

impl Txn {
    pub(crate) fn when(when: impl Into<Vec<Compare>>) -> Self {
        Txn {
            when: when.into(),
            ..Txn::default()
        }
    }

    pub(crate) fn then(self, then: impl Into<Vec<Op>>) -> Self {
        Txn {
            then: then.into(),
            ..self
        }
    }

    pub(crate) fn otherwise(self, otherwise: impl Into<Vec<Op>>) -> Self {
        Txn {
            otherwise: otherwise.into(),
            ..self
        }
    }
}

/// A key as a read or a watch event shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A range read's keys, at the store's revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RangeResponse {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// One operation's answer; a count-only range read's is [`Count`](Self::Count), how many
/// keys the range holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpResponse {
    Range(Vec<Kv>),
    Count(i64),
    Put,
    Delete { deleted: i64 },
}

impl OpResponse {
    /// The keys, if this is a range read's answer.
    pub(crate) fn kvs(&self) -> Option<&[Kv]> {
        match self {
            OpResponse::Range(kvs) => Some(kvs),
            _ => None,
        }
    }

    /// How many keys a range read found: a count-only read's count, or the number of keys
    /// listed.
    pub(crate) fn count(&self) -> Option<i64> {
        match self {
            OpResponse::Count(count) => Some(*count),
            OpResponse::Range(kvs) => Some(kvs.len() as i64),
            _ => None,
        }
    }
}

/// A transaction's answer: whether `when` held, the store's revision after it, and one
/// answer per operation of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnResponse {
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
}

/// A watch to create on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatchCreate {
    pub key: Vec<u8>,
    pub prefix: bool,
    /// The first revision to report (0: from now on).
    pub start_revision: i64,
    /// The client-chosen watch id (0: the server picks one).
    pub watch_id: i64,
    /// Report deletions only (etcd's `NoPut` filter).
    pub deletes_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub kind: EventKind,
    pub kv: Kv,
}

/// One message of a watch stream: a creation's answer (`created`; refused if also
/// `canceled`, with watch id -1), a cancellation by the server (`canceled`; compacted if
/// `compact_revision` is set), or events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WatchResponse {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    /// The store's revision when the message was sent.
    pub revision: i64,
    pub events: Vec<Event>,
}

/// The request side of a watch stream.
#[async_trait]
pub(crate) trait WatchRequests: Send {
    async fn create(&mut self, watch: WatchCreate) -> ApiResult<()>;
    async fn cancel(&mut self, watch_id: i64) -> ApiResult<()>;
}

/// The response side of a watch stream; `Ok(None)` when the stream ended.
#[async_trait]
pub(crate) trait WatchResponses: Send {
    async fn message(&mut self) -> ApiResult<Option<WatchResponse>>;
}

/// A lease's keep-alive stream.
#[async_trait]
pub(crate) trait KeepAlive: Send {
    /// One keep-alive: the lease's TTL as the server answered it (≤ 0: the lease is gone),
    /// or `None` if the stream ended.
    async fn round(&mut self) -> ApiResult<Option<i64>>;
}

/// Everything fairlock asks of etcd.
#[async_trait]
pub(crate) trait EtcdApi: Send + Sync + 'static {
    async fn txn(&self, txn: Txn) -> ApiResult<TxnResponse>;
    async fn range(&self, range: Range) -> ApiResult<RangeResponse>;
    async fn put(&self, put: Put) -> ApiResult<()>;
    /// Grants a lease of `ttl` seconds: its id and the TTL granted (the server may raise it
    /// to its minimum).
    async fn grant(&self, ttl: i64) -> ApiResult<(i64, i64)>;
    async fn revoke(&self, lease: i64) -> ApiResult<()>;
    /// The lease's remaining TTL (≤ 0: it does not exist).
    async fn time_to_live(&self, lease: i64) -> ApiResult<i64>;
    /// Opens a keep-alive stream; opening keeps the lease alive once, and fails with
    /// `LeaseKeepAliveError("lease not found")` if it is gone.
    async fn keep_alive(&self, lease: i64) -> ApiResult<Box<dyn KeepAlive>>;
    /// Opens a watch stream with its first watch.
    async fn watch(
        &self,
        first: WatchCreate,
    ) -> ApiResult<(Box<dyn WatchRequests>, Box<dyn WatchResponses>)>;
    /// Asks the cluster for its status: proves it answers.
    async fn status(&self) -> ApiResult<()>;
    /// Authenticates again (a fresh token).
    async fn refresh_token(&self) -> ApiResult<()>;
}

/// [`EtcdApi`] on a real cluster, through etcd-client.
pub(crate) struct Real(pub etcd_client::Client);

impl From<&Compare> for EtcdCompare {
    fn from(c: &Compare) -> Self {
        let key = c.key.clone();
        let compare = match c.target {
            Target::CreateRevision => EtcdCompare::create_revision(key, CompareOp::Equal, c.value),
            Target::ModRevision => EtcdCompare::mod_revision(key, CompareOp::Equal, c.value),
            Target::Version => EtcdCompare::version(key, CompareOp::Equal, c.value),
        };
        match &c.end {
            Some(end) => compare.with_range(end.clone()),
            None if c.prefix => compare.with_prefix(),
            None => compare,
        }
    }
}

fn get_options(range: &Range) -> GetOptions {
    let mut options = GetOptions::new();
    match &range.end {
        Some(end) => options = options.with_range(end.clone()),
        None if range.prefix => options = options.with_prefix(),
        None => {}
    }
    options = match range.sort {
        Sort::Key => options,
        Sort::CreateAscending => options.with_sort(SortTarget::Create, SortOrder::Ascend),
        Sort::CreateDescending => options.with_sort(SortTarget::Create, SortOrder::Descend),
    };
    if range.limit > 0 {
        options = options.with_limit(range.limit);
    }
    if range.max_create_revision > 0 {
        options = options.with_max_create_revision(range.max_create_revision);
    }
    if range.keys_only {
        options = options.with_keys_only();
    }
    if range.count_only {
        options = options.with_count_only();
    }
    options
}

fn put_options(put: &Put) -> PutOptions {
    let mut options = PutOptions::new();
    if put.lease != 0 {
        options = options.with_lease(put.lease);
    }
    if put.ignore_value {
        options = options.with_ignore_value();
    }
    if put.ignore_lease {
        options = options.with_ignore_lease();
    }
    options
}

impl From<&Op> for TxnOp {
    fn from(op: &Op) -> Self {
        match op {
            Op::Range(range) => TxnOp::get(range.key.clone(), Some(get_options(range))),
            Op::Put(put) => TxnOp::put(put.key.clone(), put.value.clone(), Some(put_options(put))),
            Op::Delete { key } => TxnOp::delete(key.clone(), None::<DeleteOptions>),
        }
    }
}

impl From<&Txn> for EtcdTxn {
    fn from(txn: &Txn) -> Self {
        let when: Vec<EtcdCompare> = txn.when.iter().map(Into::into).collect();
        let then: Vec<TxnOp> = txn.then.iter().map(Into::into).collect();
        let otherwise: Vec<TxnOp> = txn.otherwise.iter().map(Into::into).collect();
        EtcdTxn::new().when(when).and_then(then).or_else(otherwise)
    }
}

fn kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn watch_options(watch: &WatchCreate) -> WatchOptions {
    let mut options = WatchOptions::new().with_start_revision(watch.start_revision);
    if watch.prefix {
        options = options.with_prefix();
    }
    if watch.watch_id != 0 {
        options = options.with_watch_id(watch.watch_id);
    }
    if watch.deletes_only {
        options = options.with_filters([WatchFilterType::NoPut]);
    }
    options
}

fn watch_response(resp: etcd_client::WatchResponse) -> WatchResponse {
    WatchResponse {
        watch_id: resp.watch_id(),
        created: resp.created(),
        canceled: resp.canceled(),
        compact_revision: resp.compact_revision(),
        cancel_reason: resp.cancel_reason().to_owned(),
        revision: resp.header().map_or(0, |h| h.revision()),
        events: resp
            .events()
            .iter()
            .map(|e| Event {
                kind: match e.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                },
                kv: e.kv().map(kv).unwrap_or_default(),
            })
            .collect(),
    }
}

struct RealWatchRequests(etcd_client::WatchRequestSender);

#[async_trait]
impl WatchRequests for RealWatchRequests {
    async fn create(&mut self, watch: WatchCreate) -> ApiResult<()> {
        let options = watch_options(&watch);
        self.0.watch(watch.key, Some(options)).await
    }

    async fn cancel(&mut self, watch_id: i64) -> ApiResult<()> {
        self.0.cancel(watch_id).await
    }
}

struct RealWatchResponses(etcd_client::WatchResponseStream);

#[async_trait]
impl WatchResponses for RealWatchResponses {
    async fn message(&mut self) -> ApiResult<Option<WatchResponse>> {
        Ok(self.0.message().await?.map(watch_response))
    }
}

struct RealKeepAlive(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

#[async_trait]
impl KeepAlive for RealKeepAlive {
    async fn round(&mut self) -> ApiResult<Option<i64>> {
        self.0.keep_alive().await?;
        Ok(self.1.message().await?.map(|r| r.ttl()))
    }
}

#[async_trait]
impl EtcdApi for Real {
    async fn txn(&self, txn: Txn) -> ApiResult<TxnResponse> {
        let resp = self.0.kv_client().txn(EtcdTxn::from(&txn)).await?;
        // The answers come in the order of the branch's operations: a count-only read's
        // answer is its count.
        let ops = if resp.succeeded() {
            &txn.then
        } else {
            &txn.otherwise
        };
        let count_only = |i: usize| matches!(ops.get(i), Some(Op::Range(r)) if r.count_only);
        let responses = resp
            .op_responses()
            .iter()
            .enumerate()
            .map(|(i, op)| match op {
                TxnOpResponse::Get(get) if count_only(i) => OpResponse::Count(get.count()),
                TxnOpResponse::Get(get) => OpResponse::Range(get.kvs().iter().map(kv).collect()),
                TxnOpResponse::Put(_) => OpResponse::Put,
                TxnOpResponse::Delete(delete) => OpResponse::Delete {
                    deleted: delete.deleted(),
                },
                // fairlock sends no nested transactions.
                TxnOpResponse::Txn(_) => OpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            revision: resp.header().map_or(0, |h| h.revision()),
            succeeded: resp.succeeded(),
            responses,
        })
    }

    async fn range(&self, range: Range) -> ApiResult<RangeResponse> {
        let options = get_options(&range);
        let resp = self.0.kv_client().get(range.key, Some(options)).await?;
        Ok(RangeResponse {
            revision: resp.header().map_or(0, |h| h.revision()),
            kvs: resp.kvs().iter().map(kv).collect(),
        })
    }

    async fn put(&self, put: Put) -> ApiResult<()> {
        let options = put_options(&put);
        self.0
            .kv_client()
            .put(put.key, put.value, Some(options))
            .await
            .map(drop)
    }

    async fn grant(&self, ttl: i64) -> ApiResult<(i64, i64)> {
        let grant = self.0.lease_client().grant(ttl, None).await?;
        Ok((grant.id(), grant.ttl()))
    }

    async fn revoke(&self, lease: i64) -> ApiResult<()> {
        self.0.lease_client().revoke(lease).await.map(drop)
    }

    async fn time_to_live(&self, lease: i64) -> ApiResult<i64> {
        Ok(self.0.lease_client().time_to_live(lease, None).await?.ttl())
    }

    async fn keep_alive(&self, lease: i64) -> ApiResult<Box<dyn KeepAlive>> {
        let (keeper, stream) = self.0.lease_client().keep_alive(lease).await?;
        Ok(Box::new(RealKeepAlive(keeper, stream)))
    }

    async fn watch(
        &self,
        first: WatchCreate,
    ) -> ApiResult<(Box<dyn WatchRequests>, Box<dyn WatchResponses>)> {
        let options = watch_options(&first);
        let stream = self
            .0
            .watch_client()
            .watch(first.key, Some(options))
            .await?;
        let (requests, responses) = stream.split();
        Ok((
            Box::new(RealWatchRequests(requests)),
            Box::new(RealWatchResponses(responses)),
        ))
    }

    async fn status(&self) -> ApiResult<()> {
        self.0.maintenance_client().status().await.map(drop)
    }

    async fn refresh_token(&self) -> ApiResult<()> {
        self.0.refresh_token().await
    }
}
