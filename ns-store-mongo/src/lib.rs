//! The MongoDB implementation of [`Store`], used in the distributed mode.
//!
//! Five collections with flat documents: `uas`, `apps`, `registrations`, `notifications` and
//! `deliveries` (one document per notification and UA). Every query of the hot path is led by
//! a field with an index created in [`MongoStore::connect`].
//!
//! Writes that many callers make at once go through writer tasks that group them into a few
//! commands per batch, because a write command has a fixed cost on the server (about 5 ms on
//! an on-disk SecantusDB) that per-call writes would pay once per notification: one task for
//! new notifications and their routing, one for [`Store::record_deliveries`].
//!
//! The rules of what is kept live in `common`; this store translates them into queries:
//! delivery changes are filtered on [`DeliveryStatus::sources_of`], replacement picks with
//! [`superseded`], the notification filters are derived from [`NotificationState`]'s rules,
//! reports are built by [`StatusReport::assemble`], and the purge removes what
//! [`common::purge`] condemns. A TTL index on `expire_at` (the notification's expiry, on the
//! notification and on each of its deliveries) lets the server apply the expiry rule by
//! itself between purges; everything else is [`Store::purge`]'s.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use common::delivery::{
    drop_superseded, DeliveryRecord, DeliveryStatus, DeliveryUpdate, StatusReport,
};
use common::model::{
    App, AppToken, ConnId, EpochMillis, EpochSecs, Interface, Live, MessageId, NodeId, UaId,
    UaRoute,
};
use common::notification::{superseded, Notification, NotificationState, Recency};
use common::purge::{notification_is_spent, Retention};
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use ns_store::{Store, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// How long a call waits for a usable server before it fails, so that callers answer 503
/// quickly instead of hanging while the database is down.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The most values put in one `$in`. It keeps commands far below the 16 MB BSON limit, and
/// SecantusDB matches `$in` in time proportional to the list for every candidate document, so
/// longer lists cost it quadratically.
const IN_CHUNK: usize = 100;

/// The most notification writes (inserts and routings) grouped into one batch.
const WRITE_BATCH: usize = 512;

/// The most [`Store::record_deliveries`] calls grouped into one batch.
const DELIVERY_BATCH: usize = 2048;

/// How long a writer waits for more writes when it has fewer than a full batch. The database
/// spends far more on each command than on each document in it, so at a moderate rate a
/// few milliseconds of gathering cut its work several times over; under load batches fill
/// at once and nothing waits.
const WRITE_LINGER: Duration = Duration::from_millis(4);

/// How many writes may wait for a writer before callers are held back.
const WRITE_QUEUE: usize = 4096;

/// The server's code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// The server's error code for dropping an index that is not there.
const INDEX_NOT_FOUND: i32 = 27;

/// Indexes of `notifications` made by earlier versions and since replaced by the one on
/// `app_id` and `created_at`: each one would cost every insert an index write.
const OBSOLETE_NOTIFICATION_INDEXES: [&str; 2] = ["app_token_1_id_1_created_at_1", "app_id_1"];

/// A [`Store`] on a MongoDB database (or any server speaking its wire protocol).
///
/// Clones share the connection pool and the writer tasks.
#[derive(Clone, Debug)]
pub struct MongoStore {
    c: Collections,
    notification_writer: Writer<NotificationWrite, bool>,
    delivery_writer: Writer<Recorded, ()>,
}

#[derive(Clone, Debug)]
struct Collections {
    db: Database,
    uas: Collection<UaDoc>,
    apps: Collection<AppDoc>,
    registrations: Collection<RegistrationDoc>,
    notifications: Collection<NotificationDoc>,
    deliveries: Collection<DeliveryDoc>,
}

// --- Documents ---

#[derive(Debug, Serialize, Deserialize)]
struct UaDoc {
    #[serde(rename = "_id")]
    ua: UaId,
    /// With `conn`, the live connection: both set or both null.
    node: Option<NodeId>,
    conn: Option<ConnId>,
    interface: Option<InterfaceDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct InterfaceDoc {
    ip: String,
    port: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct AppDoc {
    #[serde(rename = "_id")]
    app_token: AppToken,
    pbk: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RegistrationDoc {
    #[serde(rename = "_id")]
    key: String,
    app_token: AppToken,
    ua: UaId,
}

/// A notification with its [`NotificationState`] (`replaced`, `routed`).
///
/// One more field is not part of this type: `spent_check`, present (and `true`) only while
/// the purge has to look at whether the notification is spent (see [`Collections::purge_spent`]).
/// Absent on almost every document, it costs them nothing in its sparse index.
#[derive(Debug, Serialize, Deserialize)]
struct NotificationDoc {
    #[serde(rename = "_id")]
    message_id: MessageId,
    app_token: AppToken,
    id: String,
    /// `app_token/id` in one field: the replacing of a whole batch is then one `$in` query
    /// on one index, whatever apps the batch holds.
    #[serde(default)]
    app_id: String,
    message: String,
    ttl: i64,
    timestamp: EpochSecs,
    expires_at: EpochSecs,
    priority: i32,
    created_at: EpochMillis,
    replaced: bool,
    routed: bool,
    /// `expires_at` as a BSON date, the only type a TTL index acts on.
    expire_at: DateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryDoc {
    /// [`delivery_key`].
    #[serde(rename = "_id")]
    key: String,
    message_id: MessageId,
    ua: UaId,
    status: DeliveryStatus,
    at: EpochSecs,
    /// The notification's, so that a UA's deliveries can be read in its order.
    created_at: EpochMillis,
    /// The notification's `expire_at`, whatever the state: the TTL index applies the expiry
    /// rule only. (Versions before the purge policy in `common` set it to `at` + 1 hour on
    /// an ack; such deliveries just go at that time.)
    expire_at: DateTime,
}

/// The identity and age of a notification, all that replacing needs.
#[derive(Debug, Deserialize)]
struct NotificationKey {
    #[serde(rename = "_id")]
    message_id: MessageId,
    app_id: String,
    created_at: EpochMillis,
    replaced: bool,
}

/// Whether a notification has been replaced, all that routing needs to settle it.
#[derive(Debug, Deserialize)]
struct Liveness {
    #[serde(rename = "_id")]
    id: MessageId,
    #[serde(default)]
    replaced: bool,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(rename = "_id")]
    id: MessageId,
}

#[derive(Debug, Deserialize)]
struct MessageRef {
    message_id: MessageId,
}

#[derive(Debug, Deserialize)]
struct UaRef {
    ua: UaId,
}

/// A delivery and its notification, all that the purge of deliveries needs.
#[derive(Debug, Deserialize)]
struct DeliveryRef {
    #[serde(rename = "_id")]
    key: String,
    message_id: MessageId,
}

/// How many deliveries a notification still has.
#[derive(Debug, Deserialize)]
struct DeliveriesLeft {
    #[serde(rename = "_id")]
    message_id: MessageId,
    left: i64,
}

/// The key of a notification's app and AS id (an appToken holds no `/`).
fn app_id(app_token: &AppToken, id: &str) -> String {
    format!("{app_token}/{id}")
}

fn delivery_key(message_id: &MessageId, ua: &UaId) -> String {
    format!("{message_id}:{ua}")
}

fn registration_key(app_token: &AppToken, ua: &UaId) -> String {
    format!("{app_token}:{ua}")
}

/// Epoch seconds as a BSON date, saturating rather than overflowing on absurd values.
fn date(secs: EpochSecs) -> DateTime {
    DateTime::from_millis(secs.as_i64().saturating_mul(1000))
}

/// Ids as the strings a `$in` takes.
fn strs<T: Borrow<str>>(ids: &[T]) -> Vec<&str> {
    ids.iter().map(Borrow::borrow).collect()
}

// --- The rules as filters ---

/// The stored states as the strings of `status`.
fn status_strs(statuses: impl IntoIterator<Item = DeliveryStatus>) -> Vec<&'static str> {
    statuses.into_iter().map(DeliveryStatus::as_str).collect()
}

/// The filter on `status` of the deliveries that may become `next`
/// ([`DeliveryStatus::sources_of`]).
fn may_become(next: DeliveryStatus) -> Document {
    doc! { "$in": status_strs(DeliveryStatus::sources_of(next)) }
}

/// The filter on `status` of the deliveries still owed ([`DeliveryStatus::is_outstanding`]).
fn outstanding_statuses() -> Document {
    doc! { "$in": status_strs(DeliveryStatus::ALL.into_iter().filter(|s| s.is_outstanding())) }
}

/// The order in which a batch writes its target states: acked last, so that whatever else a
/// delivery is given in the same batch, an ack of it wins, as acked is final.
fn write_rank(status: DeliveryStatus) -> (bool, usize) {
    let position = DeliveryStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(usize::MAX);
    (status == DeliveryStatus::Acked, position)
}

/// The filter on the stored flags (`replaced`, `routed`) of the notifications whose
/// [`NotificationState`] `accepts`, derived by asking it about every state.
fn state_filter(accepts: impl Fn(NotificationState) -> bool) -> Document {
    let all: Vec<NotificationState> = [false, true]
        .into_iter()
        .flat_map(|replaced| {
            [false, true]
                .into_iter()
                .map(move |routed| NotificationState { replaced, routed })
        })
        .collect();
    let accepted: Vec<NotificationState> = all.iter().copied().filter(|s| accepts(*s)).collect();
    let full = |s: &NotificationState| doc! { "replaced": s.replaced, "routed": s.routed };
    match accepted.len() {
        0 => return doc! { "_id": { "$in": [] } },
        4 => return Document::new(),
        1 => return full(&accepted[0]),
        _ => {}
    }
    // One flag with one value, whatever the other.
    type Flag = fn(&NotificationState) -> bool;
    let flags: [(&str, Flag); 2] = [("replaced", |s| s.replaced), ("routed", |s| s.routed)];
    for (name, flag) in flags {
        for value in [false, true] {
            let matching: Vec<NotificationState> =
                all.iter().copied().filter(|s| flag(s) == value).collect();
            if matching == accepted {
                return doc! { name: value };
            }
        }
    }
    doc! { "$or": accepted.iter().map(full).collect::<Vec<_>>() }
}

/// The notifications that still need routing ([`NotificationState::needs_routing`]).
static NEEDS_ROUTING: LazyLock<Document> =
    LazyLock::new(|| state_filter(NotificationState::needs_routing));

/// The stored flags under which a notification is deliverable
/// ([`NotificationState::is_deliverable`]). The rule's other condition, not expired, is a
/// condition on `expires_at` ([`unexpired`]); the flags are derived by asking the rule about
/// a notification that never expires.
static DELIVERABLE_STATES: LazyLock<Document> = LazyLock::new(|| {
    let never_expires = Notification {
        message_id: MessageId::new(""),
        app_token: AppToken::new(""),
        id: String::new(),
        message: String::new(),
        ttl: u32::MAX,
        timestamp: EpochSecs(0),
        expires_at: EpochSecs(i64::MAX),
        priority: 0,
        created_at: EpochMillis(0),
    };
    state_filter(|s| s.is_deliverable(&never_expires, EpochSecs(0)))
});

/// Notifications not expired at `now` ([`Notification::is_expired`]): a stored notification is
/// never ephemeral, so it is expired once `expires_at <= now`.
fn unexpired(now: EpochSecs) -> Document {
    doc! { "expires_at": { "$gt": now.as_i64() } }
}

/// Notifications expired at `now`, on the TTL index's date (see [`unexpired`]).
fn expired(now: EpochSecs) -> Document {
    doc! { "expire_at": { "$lte": date(now) } }
}

/// Deliveries past their retention at `now` ([`Retention::delivery_is_spent`]): acked before
/// [`Retention::acked_cutoff`]. Served by the index on `status` and `at`.
fn spent_deliveries(retention: Retention, now: EpochSecs) -> Document {
    doc! {
        "status": DeliveryStatus::Acked.as_str(),
        "at": { "$lt": retention.acked_cutoff(now).as_i64() },
    }
}

fn with(mut filter: Document, more: &Document) -> Document {
    filter.extend(more.clone());
    filter
}

// --- Pure folding of batches ---

/// Delivery changes with one target state and one time, as one `update_many` (per `$in`
/// chunk).
#[derive(Debug, PartialEq, Eq)]
struct StateWrite {
    status: DeliveryStatus,
    at: EpochSecs,
    keys: Vec<String>,
}

/// Folds the delivery changes of several callers, each with its own `now`, into the writes
/// that store them: the `Sent` of a delivery the batch also acks is dropped
/// ([`drop_superseded`]), and the rest is grouped by target state and time, in the order they
/// must be written: by [`write_rank`] (acked last), then oldest time first, so that a newer
/// send of one delivery records the newer time.
fn fold_deliveries<'a>(
    batch: impl IntoIterator<Item = (&'a [DeliveryUpdate], EpochSecs)>,
) -> Vec<StateWrite> {
    let batch: Vec<(&[DeliveryUpdate], EpochSecs)> = batch.into_iter().collect();
    let mut kept: Vec<DeliveryUpdate> = batch
        .iter()
        .flat_map(|(updates, _)| updates.iter().cloned())
        .collect();
    drop_superseded(&mut kept);
    // What the rule drops depends only on an update's content, so an update is kept exactly
    // when an equal one is, whichever caller it came from.
    let kept: HashSet<(&MessageId, &UaId, DeliveryStatus)> = kept
        .iter()
        .map(|u| (&u.message_id, &u.ua, u.status))
        .collect();
    // Keyed by when each group is written; the value is its state and its deliveries.
    type Order = ((bool, usize), EpochSecs);
    let mut groups: BTreeMap<Order, (DeliveryStatus, BTreeSet<String>)> = BTreeMap::new();
    for (updates, now) in &batch {
        for u in *updates {
            if kept.contains(&(&u.message_id, &u.ua, u.status)) {
                groups
                    .entry((write_rank(u.status), *now))
                    .or_insert_with(|| (u.status, BTreeSet::new()))
                    .1
                    .insert(delivery_key(&u.message_id, &u.ua));
            }
        }
    }
    groups
        .into_iter()
        .map(|((_, at), (status, keys))| StateWrite {
            status,
            at,
            keys: keys.into_iter().collect(),
        })
        .collect()
}

/// Of the stored notifications `found` (all those sharing an app and AS id with one just
/// inserted), the ones to mark replaced: every one [`superseded`] by another of its app and
/// AS id and not marked yet, grouped by the time of the replacing, `at` of their app and AS id.
fn replacements(
    found: Vec<NotificationKey>,
    at: &HashMap<String, EpochSecs>,
) -> BTreeMap<EpochSecs, Vec<MessageId>> {
    let mut by_app_id: HashMap<String, Vec<NotificationKey>> = HashMap::new();
    for k in found {
        by_app_id.entry(k.app_id.clone()).or_default().push(k);
    }
    let mut out: BTreeMap<EpochSecs, Vec<MessageId>> = BTreeMap::new();
    for (app_id, keys) in by_app_id {
        let Some(&at) = at.get(&app_id) else {
            continue;
        };
        let ranked = keys.into_iter().map(|k| {
            let recency = Recency {
                created_at: k.created_at,
                message_id: k.message_id.clone(),
            };
            (recency, k)
        });
        // Already replaced ones still take part, so that a notification arriving after a
        // newer one (broker messages can come out of order) is replaced even if that newer
        // one was replaced in turn; they are not marked again.
        for k in superseded(ranked).into_iter().filter(|k| !k.replaced) {
            out.entry(at).or_default().push(k.message_id);
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

/// Splits a page of notifications flagged for a spent check into those the purge removes
/// ([`notification_is_spent`]) and those it keeps. `left` holds how many deliveries each has.
fn split_spent(
    flagged: Vec<NotificationDoc>,
    left: &HashMap<MessageId, usize>,
    now: EpochSecs,
) -> StoreResult<(Vec<MessageId>, Vec<MessageId>)> {
    let mut spent = Vec::new();
    let mut kept = Vec::new();
    for d in flagged {
        let state = d.state();
        let left = left.get(&d.message_id).copied().unwrap_or(0);
        let n = d.into_notification()?;
        if notification_is_spent(&n, state, left, now) {
            spent.push(n.message_id);
        } else {
            kept.push(n.message_id);
        }
    }
    Ok((spent, kept))
}

// --- Writer tasks ---

/// A notification write handed to the notification writer, with the time it was made at.
#[derive(Debug)]
enum NotificationWrite {
    Insert {
        n: Notification,
        now: EpochSecs,
    },
    Route {
        n: Notification,
        uas: Vec<UaId>,
        now: EpochSecs,
    },
}

/// One [`Store::record_deliveries`] call handed to the delivery writer.
#[derive(Debug)]
struct Recorded {
    updates: Vec<DeliveryUpdate>,
    now: EpochSecs,
}

/// One caller's write waiting for its batch.
struct Request<T, R> {
    write: T,
    done: oneshot::Sender<mongodb::error::Result<R>>,
}

/// A handle to a writer task, which takes the writes handed to it a batch at a time and writes
/// each batch with a few commands. Clones share the task, which ends when the last clone is
/// dropped.
struct Writer<T, R> {
    requests: mpsc::Sender<Request<T, R>>,
}

impl<T, R> Clone for Writer<T, R> {
    fn clone(&self) -> Self {
        Writer {
            requests: self.requests.clone(),
        }
    }
}

impl<T, R> fmt::Debug for Writer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field(
                "waiting",
                &(self.requests.max_capacity() - self.requests.capacity()),
            )
            .finish()
    }
}

/// The writer task is gone, which only happens while the runtime shuts down.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer task has stopped")]
struct WriterStopped;

impl<T: Send + 'static, R: Send + 'static> Writer<T, R> {
    /// Starts a writer task that hands batches of at most `max` writes to `apply`, which
    /// returns one result per write, in order.
    fn spawn<F, Fut>(what: &'static str, max: usize, apply: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<mongodb::error::Result<R>>> + Send + 'static,
    {
        let (requests, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(what, rx, max, apply));
        Writer { requests }
    }

    /// Hands a write to the task and waits for its batch to be written.
    async fn write(&self, write: T) -> StoreResult<R> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Request { write, done })
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?;
        result
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?
            .map_err(db_err)
    }
}

/// Takes the waiting writes a batch at a time, lingering up to [`WRITE_LINGER`] for a fuller
/// one. While a batch is being written the next one gathers, so batches grow with the load.
/// One batch at a time: several at once would each be smaller, and small batches cost the
/// database more per write.
async fn write_loop<T, R, F, Fut>(
    what: &'static str,
    mut rx: mpsc::Receiver<Request<T, R>>,
    max: usize,
    mut apply: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<mongodb::error::Result<R>>>,
{
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        linger(&mut rx, &mut batch, max, WRITE_LINGER).await;
        let (writes, waiters): (Vec<T>, Vec<_>) =
            batch.drain(..).map(|r| (r.write, r.done)).unzip();
        let count = writes.len();
        let results = apply(writes).await;
        let failures = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(error = %e, failures, writes = count, "{what} failed");
        }
        for (waiter, result) in waiters.into_iter().zip(results) {
            // A caller that stopped waiting doesn't need the answer: its write is done or
            // failed either way.
            let _ = waiter.send(result);
        }
    }
}

/// Adds to `batch` what arrives on `rx` within `linger`, until it holds `max` items.
async fn linger<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize, linger: Duration) {
    if linger.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, max - batch.len())).await {
            Ok(n) if n > 0 => {}
            // Closed, or the time is up.
            _ => return,
        }
    }
}

impl MongoStore {
    /// Connects to `url`, uses database `db` and creates the indexes the queries rely on.
    ///
    /// The driver reconnects by itself after the server comes back, so a store made here
    /// stays usable for the life of the process.
    pub async fn connect(url: &str, db: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(db_err)?;
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        }
        if options.app_name.is_none() {
            options.app_name = Some("notification-server".to_owned());
        }
        let client = Client::with_options(options).map_err(db_err)?;
        let db = client.database(db);
        let c = Collections {
            uas: db.collection("uas"),
            apps: db.collection("apps"),
            registrations: db.collection("registrations"),
            notifications: db.collection("notifications"),
            deliveries: db.collection("deliveries"),
            db,
        };
        c.create_indexes().await.map_err(db_err)?;
        let notification_writer = {
            let c = c.clone();
            Writer::spawn("notification writes", WRITE_BATCH, move |writes| {
                let c = c.clone();
                async move { c.apply_notification_writes(writes).await }
            })
        };
        // Delivery states have a writer of their own rather than sharing the notifications':
        // they come from other callers (the front-ends, where notifications come from ns-as
        // and the monitor), never need ordering with notification writes (a delivery is sent
        // only once its routing returned), and touch other documents; sharing one task would
        // make each kind wait behind the other's batches and split batches of one kind.
        let delivery_writer = {
            let c = c.clone();
            Writer::spawn("delivery state writes", DELIVERY_BATCH, move |batch| {
                let c = c.clone();
                async move { c.record_deliveries(batch).await }
            })
        };
        Ok(MongoStore {
            c,
            notification_writer,
            delivery_writer,
        })
    }
}

impl Collections {
    async fn create_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = || {
            IndexOptions::builder()
                .expire_after(Duration::from_secs(0))
                .build()
        };
        self.registrations
            .create_indexes([index(doc! { "app_token": 1 }), index(doc! { "ua": 1 })])
            .await?;
        self.notifications
            .create_indexes([
                // The replacing in `insert_notifications`, and `status` (the newest).
                index(doc! { "app_id": 1, "created_at": 1 }),
                // `unrouted`.
                index(doc! { "routed": 1, "created_at": 1 }),
                // Expiry by the server, and the expired ones `purge` looks for.
                IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(ttl())
                    .build(),
                // The notifications `purge` has to check for being spent. Sparse: only the
                // few flagged ones have the field, so the others cost nothing here.
                IndexModel::builder()
                    .keys(doc! { "spent_check": 1 })
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            ])
            .await?;
        drop_indexes(&self.notifications, &OBSOLETE_NOTIFICATION_INDEXES).await?;
        self.deliveries
            .create_indexes([
                // `outstanding`.
                index(doc! { "ua": 1, "status": 1, "created_at": 1 }),
                // `status`, and the deliveries of replaced, spent or purged notifications.
                index(doc! { "message_id": 1 }),
                // Expiry by the server, with the notifications.
                IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(ttl())
                    .build(),
                // The acked deliveries past their retention that `purge` removes.
                index(doc! { "status": 1, "at": 1 }),
            ])
            .await?;
        Ok(())
    }

    /// Writes a batch of notification writes: the inserts first, then the routings, as if the
    /// inserts had come first. Returns, for each write, whether it took effect (a routing of a
    /// missing or replaced notification does not) or why it failed.
    async fn apply_notification_writes(
        &self,
        writes: Vec<NotificationWrite>,
    ) -> Vec<mongodb::error::Result<bool>> {
        let mut results: Vec<mongodb::error::Result<bool>> = vec![Ok(true); writes.len()];
        let mut inserts = Vec::new();
        let mut insert_pos = Vec::new();
        let mut routes = Vec::new();
        let mut route_pos = Vec::new();
        for (pos, w) in writes.iter().enumerate() {
            match w {
                NotificationWrite::Insert { n, now } => {
                    inserts.push((n, *now));
                    insert_pos.push(pos);
                }
                NotificationWrite::Route { n, uas, now } => {
                    routes.push((n, uas.as_slice(), *now));
                    route_pos.push(pos);
                }
            }
        }
        if !inserts.is_empty() {
            match self.insert_notifications(&inserts).await {
                Ok(failed) => {
                    for (k, e) in failed {
                        results[insert_pos[k]] = Err(e);
                    }
                }
                Err(e) => {
                    for &pos in &insert_pos {
                        results[pos] = Err(e.clone());
                    }
                }
            }
        }
        if !routes.is_empty() {
            match self.route_notifications(&routes).await {
                Ok(outcomes) => {
                    for (k, outcome) in outcomes.into_iter().enumerate() {
                        results[route_pos[k]] = outcome;
                    }
                }
                Err(e) => {
                    for &pos in &route_pos {
                        results[pos] = Err(e.clone());
                    }
                }
            }
        }
        results
    }

    /// Stores notifications, then marks replaced every one [`superseded`] by another with its
    /// app and AS id, among both the stored ones and the new ones. Returns the positions of the
    /// notifications that could not be stored, with the error.
    async fn insert_notifications(
        &self,
        ns: &[(&Notification, EpochSecs)],
    ) -> mongodb::error::Result<HashMap<usize, mongodb::error::Error>> {
        let docs = ns
            .iter()
            .map(|(n, _)| NotificationDoc::from_notification(n));
        // Unordered, so that a notification stored already (a broker message handled twice)
        // only fails itself, with a duplicate key. Its replacing below runs again, since it may
        // not have run the first time.
        let failed = match self.notifications.insert_many(docs).ordered(false).await {
            Ok(_) => HashMap::new(),
            Err(e) => failed_inserts(e)?,
        };

        // The replacing an insert causes happens at its `now`; of several inserts with the
        // same app and AS id in one batch, at the latest one's.
        let mut replaced_at: HashMap<String, EpochSecs> = HashMap::new();
        for (k, (n, now)) in ns.iter().enumerate() {
            if !failed.contains_key(&k) {
                let at = replaced_at.entry(app_id(&n.app_token, &n.id)).or_default();
                *at = (*at).max(*now);
            }
        }
        let keys: Vec<&str> = replaced_at.keys().map(String::as_str).collect();
        let mut replaced: BTreeMap<EpochSecs, Vec<MessageId>> = BTreeMap::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let same: Vec<NotificationKey> = self
                .notifications
                .clone_with_type::<NotificationKey>()
                .find(doc! { "app_id": { "$in": chunk } })
                .projection(doc! { "_id": 1, "app_id": 1, "created_at": 1, "replaced": 1 })
                .await?
                .try_collect()
                .await?;
            for (at, ids) in replacements(same, &replaced_at) {
                replaced.entry(at).or_default().extend(ids);
            }
        }
        for (at, ids) in replaced {
            self.mark_replaced(&ids, at).await?;
        }
        Ok(failed)
    }

    /// Marks these notifications replaced, and their deliveries that may still become
    /// replaced, at `at`.
    async fn mark_replaced(
        &self,
        message_ids: &[MessageId],
        at: EpochSecs,
    ) -> mongodb::error::Result<()> {
        for chunk in message_ids.chunks(IN_CHUNK) {
            let chunk = strs(chunk);
            self.notifications
                .update_many(
                    doc! { "_id": { "$in": &chunk } },
                    doc! { "$set": { "replaced": true } },
                )
                .await?;
            self.deliveries
                .update_many(
                    doc! {
                        "message_id": { "$in": &chunk },
                        "status": may_become(DeliveryStatus::Replaced),
                    },
                    doc! { "$set": {
                        "status": DeliveryStatus::Replaced.as_str(),
                        "at": at.as_i64(),
                    } },
                )
                .await?;
        }
        Ok(())
    }

    /// Creates the pending deliveries of the notifications that are stored and still need
    /// routing, each at its routing's `now`, then marks those routed. Returns, for each
    /// routing, whether the notification was routed or why its deliveries could not be stored.
    ///
    /// Routed is marked last, so that a crash in between leaves the notification to the
    /// recovery of unrouted ones rather than half routed for good. Whether a notification is
    /// still there and not replaced is learnt from that marking, which only matches ones that
    /// need routing, rather than asked first: almost every notification does, and asking
    /// would cost a read per notification. The rare others are then looked up, and the
    /// deliveries just made for them removed. This also covers a notification replaced while
    /// it is being routed: its pending deliveries can only have been made after the
    /// replacing, which marked the ones before it replaced.
    ///
    /// A notification routed to nobody is flagged for the purge's spent check as it is
    /// marked routed: it has no delivery, and won't get one.
    async fn route_notifications(
        &self,
        routes: &[(&Notification, &[UaId], EpochSecs)],
    ) -> mongodb::error::Result<Vec<mongodb::error::Result<bool>>> {
        let mut docs = Vec::new();
        // For each delivery document, the position of its routing.
        let mut owners = Vec::new();
        for (k, (n, uas, now)) in routes.iter().enumerate() {
            for ua in *uas {
                owners.push(k);
                docs.push(DeliveryDoc {
                    key: delivery_key(&n.message_id, ua),
                    message_id: n.message_id.clone(),
                    ua: ua.clone(),
                    status: DeliveryStatus::Pending,
                    at: *now,
                    created_at: n.created_at,
                    expire_at: date(n.expires_at),
                });
            }
        }
        let mut outcomes: Vec<mongodb::error::Result<bool>> = vec![Ok(true); routes.len()];
        if !docs.is_empty() {
            // Unordered, so that deliveries already there (a message handled twice) only fail
            // themselves, with a duplicate key, and leave them as they are.
            if let Err(e) = self.deliveries.insert_many(docs).ordered(false).await {
                for (d, e) in failed_inserts(e)? {
                    // Every routing of the notification failed: whichever of them the failed
                    // delivery came from, the notification is not fully routed.
                    let message_id = &routes[owners[d]].0.message_id;
                    for (k, (n, _, _)) in routes.iter().enumerate() {
                        if &n.message_id == message_id {
                            outcomes[k] = Err(e.clone());
                        }
                    }
                }
            }
        }

        let mut to_some: BTreeSet<&str> = BTreeSet::new();
        let mut to_nobody: BTreeSet<&str> = BTreeSet::new();
        for ((n, uas, _), outcome) in routes.iter().zip(&outcomes) {
            if outcome.is_ok() {
                if uas.is_empty() {
                    to_nobody.insert(n.message_id.as_str());
                } else {
                    to_some.insert(n.message_id.as_str());
                }
            }
        }
        // Routed both to nobody and to some UAs in one batch (a message handled twice with
        // different UAs): flagged; the purge's check then finds its deliveries.
        to_some.retain(|id| !to_nobody.contains(id));
        let mut not_live: HashSet<String> = HashSet::new();
        for (ids, set) in [
            (to_some, doc! { "routed": true }),
            (to_nobody, doc! { "routed": true, "spent_check": true }),
        ] {
            let ids: Vec<&str> = ids.into_iter().collect();
            for chunk in ids.chunks(IN_CHUNK) {
                let marked = self
                    .notifications
                    .update_many(
                        with(doc! { "_id": { "$in": chunk } }, &NEEDS_ROUTING),
                        doc! { "$set": set.clone() },
                    )
                    .await?;
                if marked.matched_count < chunk.len() as u64 {
                    // Replaced, gone, or routed already (a broker message handled twice).
                    not_live.extend(self.settle_not_live(chunk).await?);
                }
            }
        }
        for ((n, _, _), outcome) in routes.iter().zip(outcomes.iter_mut()) {
            if outcome.is_ok() && not_live.contains(n.message_id.as_str()) {
                *outcome = Ok(false);
            }
        }
        Ok(outcomes)
    }

    /// Of these notifications (at most `IN_CHUNK`), finds the ones replaced or no longer
    /// stored, removes the deliveries routing just made for them, and returns their ids.
    async fn settle_not_live(&self, ids: &[&str]) -> mongodb::error::Result<Vec<String>> {
        let found: HashMap<MessageId, bool> = self
            .notifications
            .clone_with_type::<Liveness>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1, "replaced": 1 })
            .await?
            .try_collect::<Vec<Liveness>>()
            .await?
            .into_iter()
            .map(|k| (k.id, k.replaced))
            .collect();
        let mut replaced = Vec::new();
        let mut gone = Vec::new();
        for &id in ids {
            match found.get(id) {
                Some(true) => replaced.push(id.to_owned()),
                Some(false) => {}
                None => gone.push(id.to_owned()),
            }
        }
        if !replaced.is_empty() {
            self.deliveries
                .delete_many(doc! {
                    "message_id": { "$in": &replaced },
                    "status": DeliveryStatus::Pending.as_str(),
                })
                .await?;
        }
        if !gone.is_empty() {
            self.deliveries
                .delete_many(doc! { "message_id": { "$in": &gone } })
                .await?;
        }
        replaced.extend(gone);
        Ok(replaced)
    }

    /// Writes folded delivery changes in order, each only to deliveries that may become its
    /// state. Returns how many deliveries changed.
    async fn write_states(&self, writes: &[StateWrite]) -> mongodb::error::Result<u64> {
        let mut changed = 0;
        for w in writes {
            for chunk in w.keys.chunks(IN_CHUNK) {
                changed += self
                    .deliveries
                    .update_many(
                        doc! { "_id": { "$in": chunk }, "status": may_become(w.status) },
                        doc! { "$set": { "status": w.status.as_str(), "at": w.at.as_i64() } },
                    )
                    .await?
                    .modified_count;
            }
        }
        Ok(changed)
    }

    /// Writes the delivery changes of a batch of [`Store::record_deliveries`] calls together.
    async fn record_deliveries(&self, batch: Vec<Recorded>) -> Vec<mongodb::error::Result<()>> {
        let writes = fold_deliveries(batch.iter().map(|r| (r.updates.as_slice(), r.now)));
        let result = self.write_states(&writes).await.map(|_| ());
        vec![result; batch.len()]
    }

    /// Removes notifications expired at `now` and their deliveries, a bounded page at a time.
    async fn purge_expired(&self, now: EpochSecs) -> mongodb::error::Result<u64> {
        let mut removed = 0;
        loop {
            let page: Vec<IdOnly> = self
                .notifications
                .clone_with_type::<IdOnly>()
                .find(expired(now))
                .projection(doc! { "_id": 1 })
                .limit(IN_CHUNK as i64)
                .await?
                .try_collect()
                .await?;
            let ids: Vec<MessageId> = page.into_iter().map(|d| d.id).collect();
            if ids.is_empty() {
                break;
            }
            let deleted = self.remove_notifications(&ids).await?;
            removed += deleted.0 + deleted.1;
            // A short page was the last one; and should nothing go (a server that reports
            // otherwise), stopping is better than asking for the same page for ever.
            if ids.len() < IN_CHUNK || deleted.1 == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Removes notifications (at most `IN_CHUNK`) with their deliveries. Deliveries first:
    /// should this fail halfway, the notifications are still there to lead the next purge to
    /// them. Returns how many deliveries and how many notifications went.
    async fn remove_notifications(&self, ids: &[MessageId]) -> mongodb::error::Result<(u64, u64)> {
        let ids = strs(ids);
        let deliveries = self
            .deliveries
            .delete_many(doc! { "message_id": { "$in": &ids } })
            .await?
            .deleted_count;
        let notifications = self
            .notifications
            .delete_many(doc! { "_id": { "$in": &ids } })
            .await?
            .deleted_count;
        Ok((deliveries, notifications))
    }

    /// Removes the deliveries past their retention, a bounded page at a time, flagging their
    /// notifications for the spent check first, so that a failure in between leaves a flag
    /// too many (cleared by the check) rather than one too few.
    async fn purge_spent_deliveries(
        &self,
        retention: Retention,
        now: EpochSecs,
    ) -> mongodb::error::Result<u64> {
        let mut removed = 0;
        loop {
            let page: Vec<DeliveryRef> = self
                .deliveries
                .clone_with_type::<DeliveryRef>()
                .find(spent_deliveries(retention, now))
                .projection(doc! { "_id": 1, "message_id": 1 })
                .limit(IN_CHUNK as i64)
                .await?
                .try_collect()
                .await?;
            if page.is_empty() {
                break;
            }
            let notifications: BTreeSet<&str> =
                page.iter().map(|d| d.message_id.as_str()).collect();
            let notifications: Vec<&str> = notifications.into_iter().collect();
            self.notifications
                .update_many(
                    doc! { "_id": { "$in": notifications } },
                    doc! { "$set": { "spent_check": true } },
                )
                .await?;
            let keys: Vec<&str> = page.iter().map(|d| d.key.as_str()).collect();
            let deleted = self
                .deliveries
                .delete_many(doc! { "_id": { "$in": keys } })
                .await?
                .deleted_count;
            removed += deleted;
            if page.len() < IN_CHUNK || deleted == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Removes the spent notifications among those flagged for a check
    /// ([`notification_is_spent`]), with whatever deliveries they still have, and clears the
    /// flag on the others; a bounded page at a time.
    ///
    /// A notification can become routed with nothing left in two ways only: routed to nobody,
    /// or its last deliveries removed by the purge (the TTL index removes deliveries only with
    /// their notification). Both set `spent_check`, so the purge looks at those notifications
    /// alone, through a sparse index, instead of counting the deliveries of every notification
    /// each time. A flag cleared by one purge while another instance's purge removes the last
    /// deliveries can leave a spent notification unflagged: it then stays until it expires,
    /// as it would have without this check.
    async fn purge_spent(&self, now: EpochSecs) -> StoreResult<u64> {
        let mut removed = 0;
        loop {
            let flagged: Vec<NotificationDoc> = self
                .notifications
                .find(doc! { "spent_check": true })
                .limit(IN_CHUNK as i64)
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            if flagged.is_empty() {
                break;
            }
            let page = flagged.len();
            let ids: Vec<&str> = flagged.iter().map(|d| d.message_id.as_str()).collect();
            let counts: Vec<DeliveriesLeft> = self
                .deliveries
                .aggregate([
                    doc! { "$match": { "message_id": { "$in": ids } } },
                    doc! { "$group": { "_id": "$message_id", "left": { "$sum": 1 } } },
                ])
                .with_type::<DeliveriesLeft>()
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            let left: HashMap<MessageId, usize> = counts
                .into_iter()
                .map(|c| (c.message_id, usize::try_from(c.left).unwrap_or(usize::MAX)))
                .collect();
            let (spent, kept) = split_spent(flagged, &left, now)?;
            let mut progress = 0;
            if !spent.is_empty() {
                let (deliveries, notifications) =
                    self.remove_notifications(&spent).await.map_err(db_err)?;
                removed += deliveries + notifications;
                progress += notifications;
            }
            if !kept.is_empty() {
                progress += self
                    .notifications
                    .update_many(
                        doc! { "_id": { "$in": strs(&kept) } },
                        doc! { "$unset": { "spent_check": "" } },
                    )
                    .await
                    .map_err(db_err)?
                    .modified_count;
            }
            if page < IN_CHUNK || progress == 0 {
                break;
            }
        }
        Ok(removed)
    }
}

fn index(keys: Document) -> IndexModel {
    IndexModel::builder().keys(keys).build()
}

/// Drops these indexes of `coll` where they exist.
async fn drop_indexes<T: Send + Sync>(
    coll: &Collection<T>,
    obsolete: &[&str],
) -> mongodb::error::Result<()> {
    let names = coll.list_index_names().await?;
    for name in obsolete {
        if names.iter().any(|n| n == name) {
            match coll.drop_index(*name).await {
                // Another instance starting at the same time dropped it first.
                Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) => {
                }
                other => other?,
            }
        }
    }
    Ok(())
}

/// Maps a driver error: documents that don't read back, or can't be written as documents,
/// are corrupt; anything else means the database is not answering as it should.
fn db_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::BsonDeserialization(_) => StoreError::corrupt("a stored document", e),
        ErrorKind::BsonSerialization(_) => StoreError::corrupt("a document to store", e),
        _ => StoreError::unavailable(e),
    }
}

/// True when the write failed only because the document was already there. Plain writes
/// report it as a write error, `findAndModify` as a command error.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Sorts out an unordered `insert_many` that failed: documents that were already there are
/// fine (the writes are idempotent), and a document that failed otherwise fails only itself, so
/// that one bad notification can't fail the others of its batch again and again. Returns the
/// positions of those documents with the error; the error itself when the whole command failed.
fn failed_inserts(
    e: mongodb::error::Error,
) -> mongodb::error::Result<HashMap<usize, mongodb::error::Error>> {
    match &*e.kind {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            write_concern_error: None,
            ..
        }) => Ok(errors
            .iter()
            .filter(|w| w.code != DUPLICATE_KEY)
            .map(|w| (w.index, e.clone()))
            .collect()),
        _ => Err(e),
    }
}

fn corrupt(what: &str, key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::corrupt(format!("{what} {key}"), e)
}

/// A UA document with only one of `node` and `conn`.
#[derive(Debug, thiserror::Error)]
#[error("a live connection needs both a node and a connection id")]
struct HalfLive;

impl UaDoc {
    fn from_route(route: &UaRoute) -> UaDoc {
        UaDoc {
            ua: route.ua.clone(),
            node: route.live.as_ref().map(|l| l.node.clone()),
            conn: route.live.as_ref().map(|l| l.conn.clone()),
            interface: route.interface.as_ref().map(|i| InterfaceDoc {
                ip: i.ip.to_string(),
                port: i32::from(i.port),
            }),
        }
    }

    fn into_route(self) -> StoreResult<UaRoute> {
        let interface = match self.interface {
            None => None,
            Some(i) => Some(Interface {
                ip: i
                    .ip
                    .parse()
                    .map_err(|e| corrupt("ua", self.ua.as_str(), e))?,
                port: u16::try_from(i.port).map_err(|e| corrupt("ua", self.ua.as_str(), e))?,
            }),
        };
        let live = match (self.node, self.conn) {
            (Some(node), Some(conn)) => Some(Live { node, conn }),
            (None, None) => None,
            _ => return Err(corrupt("ua", self.ua.as_str(), HalfLive)),
        };
        Ok(UaRoute {
            ua: self.ua,
            live,
            interface,
        })
    }
}

impl NotificationDoc {
    fn from_notification(n: &Notification) -> NotificationDoc {
        NotificationDoc {
            message_id: n.message_id.clone(),
            app_token: n.app_token.clone(),
            id: n.id.clone(),
            app_id: app_id(&n.app_token, &n.id),
            message: n.message.clone(),
            ttl: i64::from(n.ttl),
            timestamp: n.timestamp,
            expires_at: n.expires_at,
            priority: i32::from(n.priority),
            created_at: n.created_at,
            replaced: false,
            routed: false,
            expire_at: date(n.expires_at),
        }
    }

    fn state(&self) -> NotificationState {
        NotificationState {
            replaced: self.replaced,
            routed: self.routed,
        }
    }

    fn into_notification(self) -> StoreResult<Notification> {
        Ok(Notification {
            ttl: u32::try_from(self.ttl)
                .map_err(|e| corrupt("notification", self.message_id.as_str(), e))?,
            priority: u8::try_from(self.priority)
                .map_err(|e| corrupt("notification", self.message_id.as_str(), e))?,
            message_id: self.message_id,
            app_token: self.app_token,
            id: self.id,
            message: self.message,
            timestamp: self.timestamp,
            expires_at: self.expires_at,
            created_at: self.created_at,
        })
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.c
            .db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>> {
        let replacement = UaDoc::from_route(route);
        let filter = doc! { "_id": route.ua.as_str() };
        let replace = || {
            self.c
                .uas
                .find_one_and_replace(filter.clone(), &replacement)
                .upsert(true)
                .return_document(ReturnDocument::Before)
        };
        // Two upserts of a new UA racing each other can both try to insert; the loser gets a
        // duplicate key and succeeds on a second try, which finds the winner's document.
        let before = match replace().await {
            Err(e) if is_duplicate(&e) => replace().await,
            other => other,
        }
        .map_err(db_err)?;
        before.map(UaDoc::into_route).transpose()
    }

    async fn disconnect_ua(&self, ua: &UaId, live: &Live) -> StoreResult<()> {
        // The interface stays: a disconnected UA can still be woken up over UDP.
        self.c
            .uas
            .update_one(
                doc! {
                    "_id": ua.as_str(),
                    "node": live.node.as_str(),
                    "conn": live.conn.as_str(),
                },
                doc! { "$set": { "node": null, "conn": null } },
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        let mut routes = Vec::with_capacity(uas.len());
        for chunk in uas.chunks(IN_CHUNK) {
            let docs: Vec<UaDoc> = self
                .c
                .uas
                .find(doc! { "_id": { "$in": strs(chunk) } })
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            for d in docs {
                routes.push(d.into_route()?);
            }
        }
        Ok(routes)
    }

    async fn put_app(&self, app: &App) -> StoreResult<()> {
        let doc = AppDoc {
            app_token: app.app_token.clone(),
            pbk: app.pbk.clone(),
        };
        match self
            .c
            .apps
            .replace_one(doc! { "_id": app.app_token.as_str() }, &doc)
            .upsert(true)
            .await
        {
            // A concurrent upsert of the same app stored the same content.
            Err(e) if !is_duplicate(&e) => Err(db_err(e)),
            _ => Ok(()),
        }
    }

    async fn get_app(&self, app_token: &AppToken) -> StoreResult<Option<App>> {
        let doc = self
            .c
            .apps
            .find_one(doc! { "_id": app_token.as_str() })
            .await
            .map_err(db_err)?;
        Ok(doc.map(|d| App {
            app_token: d.app_token,
            pbk: d.pbk,
        }))
    }

    async fn register_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<()> {
        let key = registration_key(app_token, ua);
        let doc = RegistrationDoc {
            key: key.clone(),
            app_token: app_token.clone(),
            ua: ua.clone(),
        };
        match self
            .c
            .registrations
            .replace_one(doc! { "_id": &key }, &doc)
            .upsert(true)
            .await
        {
            // A concurrent registration of the same pair got there first: the same outcome.
            Err(e) if !is_duplicate(&e) => Err(db_err(e)),
            _ => Ok(()),
        }
    }

    async fn unregister_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<bool> {
        let result = self
            .c
            .registrations
            .delete_one(doc! { "_id": registration_key(app_token, ua) })
            .await
            .map_err(db_err)?;
        Ok(result.deleted_count > 0)
    }

    async fn app_uas(&self, app_token: &AppToken) -> StoreResult<Vec<UaId>> {
        let refs: Vec<UaRef> = self
            .c
            .registrations
            .clone_with_type::<UaRef>()
            .find(doc! { "app_token": app_token.as_str() })
            .projection(doc! { "_id": 0, "ua": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        Ok(refs.into_iter().map(|r| r.ua).collect())
    }

    async fn insert_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<()> {
        self.notification_writer
            .write(NotificationWrite::Insert { n: n.clone(), now })
            .await
            .map(|_| ())
    }

    async fn add_deliveries(
        &self,
        n: &Notification,
        uas: &[UaId],
        now: EpochSecs,
    ) -> StoreResult<bool> {
        self.notification_writer
            .write(NotificationWrite::Route {
                n: n.clone(),
                uas: uas.to_vec(),
                now,
            })
            .await
    }

    async fn unrouted(&self, now: EpochSecs, limit: usize) -> StoreResult<Vec<Notification>> {
        // A limit of 0 means "no limit" to the server.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<NotificationDoc> = self
            .c
            .notifications
            // The flags first: a server that plans on one clause (SecantusDB) takes the first
            // one it has an index for, here the one on `routed`.
            .find(with(NEEDS_ROUTING.clone(), &unexpired(now)))
            .sort(doc! { "created_at": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        docs.into_iter()
            .map(NotificationDoc::into_notification)
            .collect()
    }

    async fn update_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: EpochSecs,
    ) -> StoreResult<u64> {
        // The same folding as a batch of `record_deliveries`, so both follow one rule. The
        // count is exact as long as a call gives each delivery one state (a sent superseded
        // by an ack aside), as every caller does: a delivery moved twice in one call, say
        // replaced then acked, would count twice.
        let writes = fold_deliveries([(updates, now)]);
        self.c.write_states(&writes).await.map_err(db_err)
    }

    async fn record_deliveries(
        &self,
        updates: Vec<DeliveryUpdate>,
        now: EpochSecs,
    ) -> StoreResult<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.delivery_writer.write(Recorded { updates, now }).await
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let refs: Vec<MessageRef> = self
            .c
            .deliveries
            .clone_with_type::<MessageRef>()
            .find(doc! { "ua": ua.as_str(), "status": outstanding_statuses() })
            .projection(doc! { "_id": 0, "message_id": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<MessageId> = refs.into_iter().map(|r| r.message_id).collect();
        // Each chunk yields its own oldest `limit`; merging them and cutting again gives the
        // overall oldest `limit`. There is a single chunk unless the UA owes thousands.
        let mut found = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let deliverable = with(
                with(doc! { "_id": { "$in": strs(chunk) } }, &DELIVERABLE_STATES),
                &unexpired(now),
            );
            let docs: Vec<NotificationDoc> = self
                .c
                .notifications
                .find(deliverable)
                .sort(doc! { "created_at": 1, "_id": 1 })
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            found.extend(docs);
        }
        found.sort_by(|a, b| (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id)));
        found.truncate(limit);
        found
            .into_iter()
            .map(NotificationDoc::into_notification)
            .collect()
    }

    async fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        // The newest by `Notification::recency`: creation time, then message id.
        let Some(n) = self
            .c
            .notifications
            .find_one(doc! { "app_id": app_id(app_token, id) })
            .sort(doc! { "created_at": -1, "_id": -1 })
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let n = n.into_notification()?;
        let docs: Vec<DeliveryDoc> = self
            .c
            .deliveries
            .find(doc! { "message_id": n.message_id.as_str() })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        let rows = docs.into_iter().map(|d| {
            let record = DeliveryRecord {
                status: d.status,
                at: d.at,
            };
            (d.ua, record)
        });
        Ok(Some(StatusReport::assemble(&n, rows, now)))
    }

    async fn purge(&self, now: EpochSecs, retention: Retention) -> StoreResult<u64> {
        // Expired notifications first, as they take their deliveries with them and so spare
        // the next steps those.
        let mut removed = self.c.purge_expired(now).await.map_err(db_err)?;
        removed += self
            .c
            .purge_spent_deliveries(retention, now)
            .await
            .map_err(db_err)?;
        removed += self.c.purge_spent(now).await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    fn update(message_id: &str, ua: &str, status: DeliveryStatus) -> DeliveryUpdate {
        DeliveryUpdate {
            message_id: MessageId::new(message_id),
            ua: UaId::new(ua),
            status,
        }
    }

    fn write(status: DeliveryStatus, at: i64, keys: &[&str]) -> StateWrite {
        StateWrite {
            status,
            at: EpochSecs(at),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn a_batch_folds_into_one_write_per_state_and_time_acked_last() {
        let first = vec![update("m1", "a", Sent), update("m2", "a", Acked)];
        let second = vec![
            update("m1", "a", Acked),
            update("m1", "b", Sent),
            update("m3", "a", Replaced),
        ];
        let third = vec![update("m1", "b", Sent), update("m4", "c", Sent)];
        let writes = fold_deliveries([
            (first.as_slice(), EpochSecs(10)),
            (second.as_slice(), EpochSecs(10)),
            (third.as_slice(), EpochSecs(11)),
        ]);
        assert_eq!(
            writes,
            vec![
                write(Sent, 10, &["m1:b"]),
                write(Sent, 11, &["m1:b", "m4:c"]),
                write(Replaced, 10, &["m3:a"]),
                write(Acked, 10, &["m1:a", "m2:a"]),
            ],
            "the sent of m1:a is superseded by its ack; a later send records the later time"
        );
    }

    #[test]
    fn an_ack_supersedes_a_sent_from_another_caller_at_another_time() {
        let sent = vec![update("m", "a", Sent)];
        let acked = vec![update("m", "a", Acked)];
        let writes = fold_deliveries([
            (acked.as_slice(), EpochSecs(5)),
            (sent.as_slice(), EpochSecs(6)),
        ]);
        assert_eq!(writes, vec![write(Acked, 5, &["m:a"])]);
        assert!(fold_deliveries([(&[][..], EpochSecs(1))]).is_empty());
    }

    #[test]
    fn the_write_order_puts_acked_last() {
        let mut order = DeliveryStatus::ALL.to_vec();
        order.sort_by_key(|s| write_rank(*s));
        assert_eq!(order.last(), Some(&Acked));
        assert_eq!(order[..4], [Pending, Sent, Expired, Replaced]);
    }

    #[test]
    fn status_filters_come_from_the_transition_rule() {
        assert_eq!(
            may_become(Acked),
            doc! { "$in": ["pending", "sent", "expired", "replaced"] }
        );
        assert_eq!(may_become(Sent), doc! { "$in": ["pending", "sent"] });
        assert_eq!(outstanding_statuses(), doc! { "$in": ["pending", "sent"] });
    }

    #[test]
    fn state_filters_come_from_the_notification_rules() {
        assert_eq!(*NEEDS_ROUTING, doc! { "replaced": false, "routed": false });
        assert_eq!(*DELIVERABLE_STATES, doc! { "replaced": false });
        assert_eq!(state_filter(|_| true), Document::new());
        assert_eq!(state_filter(|_| false), doc! { "_id": { "$in": [] } });
        assert_eq!(state_filter(|s| s.routed), doc! { "routed": true });
        assert_eq!(
            state_filter(|s| s.routed != s.replaced),
            doc! { "$or": [
                { "replaced": false, "routed": true },
                { "replaced": true, "routed": false },
            ] }
        );
    }

    #[test]
    fn time_filters_translate_expiry_and_retention() {
        assert_eq!(
            unexpired(EpochSecs(7)),
            doc! { "expires_at": { "$gt": 7_i64 } }
        );
        assert_eq!(
            expired(EpochSecs(7)),
            doc! { "expire_at": { "$lte": DateTime::from_millis(7_000) } }
        );
        assert_eq!(
            spent_deliveries(Retention { acked_secs: 60 }, EpochSecs(100)),
            doc! { "status": "acked", "at": { "$lt": 40_i64 } }
        );
        assert_eq!(date(EpochSecs(i64::MAX)), DateTime::from_millis(i64::MAX));
    }

    fn key(id: &str, app_id: &str, created_at: i64, replaced: bool) -> NotificationKey {
        NotificationKey {
            message_id: MessageId::new(id),
            app_id: app_id.to_owned(),
            created_at: EpochMillis(created_at),
            replaced,
        }
    }

    #[test]
    fn replacing_marks_every_superseded_one_not_marked_yet() {
        let found = vec![
            key("a1", "t/a", 1, true),
            key("a2", "t/a", 2, false),
            key("a3", "t/a", 3, false),
            key("b9", "t/b", 5, false),
            key("b1", "t/b", 5, false),
            key("c0", "t/c", 0, false),
            key("d1", "t/d", 1, false),
            key("d2", "t/d", 2, true),
        ];
        let at = HashMap::from([
            ("t/a".to_owned(), EpochSecs(10)),
            ("t/b".to_owned(), EpochSecs(11)),
            ("t/c".to_owned(), EpochSecs(11)),
            ("t/d".to_owned(), EpochSecs(10)),
        ]);
        let replaced = replacements(found, &at);
        assert_eq!(
            replaced,
            BTreeMap::from([
                (
                    EpochSecs(10),
                    vec![MessageId::new("a2"), MessageId::new("d1")]
                ),
                (EpochSecs(11), vec![MessageId::new("b1")]),
            ]),
            "a1 is marked already; the tie on b goes to the larger message id; d1 arrived \
             after d2 was itself replaced, and is still superseded by it"
        );
    }

    fn notification_doc(id: &str, expires_at: i64, routed: bool) -> NotificationDoc {
        NotificationDoc::from_notification(&Notification {
            message_id: MessageId::new(id),
            app_token: AppToken::new("t"),
            id: id.to_owned(),
            message: "x".into(),
            ttl: 100,
            timestamp: EpochSecs(0),
            expires_at: EpochSecs(expires_at),
            priority: 1,
            created_at: EpochMillis(0),
        })
        .with_routed(routed)
    }

    impl NotificationDoc {
        fn with_routed(mut self, routed: bool) -> Self {
            self.routed = routed;
            self
        }
    }

    #[test]
    fn a_flagged_page_splits_by_the_purge_rule() {
        let flagged = vec![
            notification_doc("nothing-left", 100, true),
            notification_doc("owed", 100, true),
            notification_doc("unrouted", 100, false),
            notification_doc("expired", 10, true),
        ];
        let left = HashMap::from([(MessageId::new("owed"), 2), (MessageId::new("expired"), 1)]);
        let (spent, kept) = split_spent(flagged, &left, EpochSecs(50)).expect("split");
        assert_eq!(
            spent,
            vec![MessageId::new("nothing-left"), MessageId::new("expired")]
        );
        assert_eq!(
            kept,
            vec![MessageId::new("owed"), MessageId::new("unrouted")]
        );
    }

    #[test]
    fn ua_documents_keep_the_live_connection_whole() {
        let route = UaRoute::connected(
            UaId::new("u"),
            NodeId::new("n"),
            ConnId::new("c"),
            Some(Interface {
                ip: "2001:db8::1".parse().expect("ip"),
                port: 2442,
            }),
        );
        let back = UaDoc::from_route(&route).into_route().expect("route");
        assert_eq!(back, route);
        let offline = UaRoute::offline(UaId::new("u"), None);
        assert_eq!(
            UaDoc::from_route(&offline).into_route().expect("route"),
            offline
        );
        let half = UaDoc {
            ua: UaId::new("u"),
            node: Some(NodeId::new("n")),
            conn: None,
            interface: None,
        };
        assert!(matches!(half.into_route(), Err(StoreError::Corrupt { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn linger_waits_for_more_until_the_deadline_or_a_full_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.expect("send");
        let mut batch = Vec::new();
        rx.recv_many(&mut batch, 8).await;
        let early = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            early.send(2).await.expect("send");
            tokio::time::sleep(Duration::from_millis(10)).await;
            early.send(3).await.expect("send");
        });
        linger(&mut rx, &mut batch, 8, Duration::from_millis(4)).await;
        assert_eq!(
            batch,
            vec![1, 2],
            "what comes within the linger joins the batch"
        );

        let mut full = vec![0; 8];
        let started = tokio::time::Instant::now();
        linger(&mut rx, &mut full, 8, Duration::from_secs(60)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch goes at once"
        );

        let mut none = Vec::new();
        linger(&mut rx, &mut none, 8, Duration::ZERO).await;
        assert!(none.is_empty(), "no linger takes nothing more");

        drop(tx);
        let mut rest = Vec::new();
        linger(&mut rx, &mut rest, 8, Duration::from_secs(60)).await;
        assert_eq!(rest, vec![3], "a closed channel ends the linger");
    }
}

/// The conformance suite of `ns-store`, one test per behaviour, each on a database of its
/// own on the server at `NS_TEST_MONGO_URL`.
#[cfg(test)]
mod conformance {
    use super::*;
    use ns_store::conformance::Fixture;

    struct MongoFixture {
        store: MongoStore,
    }

    #[async_trait]
    impl Fixture for MongoFixture {
        fn store(&self) -> &dyn Store {
            &self.store
        }

        async fn tear_down(self) {
            // The server is shared, so the database goes whatever the outcome; dropping it is
            // best effort, as a leftover only takes some space.
            if let Err(e) = self.store.c.db.drop().await {
                tracing::warn!(error = %e, "dropping the test database failed");
            }
        }
    }

    async fn fixture() -> MongoFixture {
        let url = std::env::var("NS_TEST_MONGO_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
        let db = format!("ns_test_{}", uuid::Uuid::new_v4().simple());
        let store = MongoStore::connect(&url, &db).await.expect("connect");
        MongoFixture { store }
    }

    ns_store::conformance_tests!(fixture);
}
