//! The MongoDB implementation of [`Store`], used in the distributed mode.
//!
//! Five collections with flat documents: `uas`, `apps`, `registrations`, `notifications` and
//! `deliveries` (one document per notification and UA). Every query of the hot path is served by
//! an index created in [`MongoStore::connect`]. New notifications and their routing go through
//! one writer task that groups concurrent calls into a few commands per batch, because a write
//! command has a fixed cost on the server (about 5 ms on an on-disk SecantusDB) that per-call
//! writes would pay once per notification. TTL indexes on `expire_at` let the server drop
//! expired notifications and old acked deliveries by itself; [`Store::purge`] is the explicit
//! path to the same end.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::model::{
    App, Delivery, DeliveryStatus, Interface, Notification, StatusReport, UaId, UaRoute,
};
use crate::store::{DeliveryUpdate, Store, StoreError, StoreResult};

/// How long a call waits for a usable server before it fails, so that callers answer 503
/// quickly instead of hanging while the database is down.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an acked delivery stays for the status endpoint before the TTL index drops it.
const ACKED_KEEP_SECS: i64 = 3600;

/// The most values put in one `$in`. It keeps commands far below the 16 MB BSON limit, and
/// SecantusDB matches `$in` in time proportional to the list for every candidate document, so
/// longer lists cost it quadratically.
const IN_CHUNK: usize = 100;

/// The most notification writes (inserts and routings) grouped into one batch.
const WRITE_BATCH: usize = 512;

/// How long a writer waits for more writes when it has fewer than a full batch. The database
/// spends far more on each command than on each document in it, so at a moderate rate a
/// few milliseconds of gathering cut its work several times over; under load batches fill
/// at once and nothing waits.
const WRITE_LINGER: Duration = Duration::from_millis(4);

/// How many notification writes may wait for the writer before callers are held back.
const WRITE_QUEUE: usize = 4096;

/// The server's code for a duplicate key.
const DUPLICATE_KEY: i32 = 11000;
/// The server's error code for dropping an index that is not there.
const INDEX_NOT_FOUND: i32 = 27;

const PENDING: &str = "pending";
const SENT: &str = "sent";
const ACKED: &str = "acked";
const REPLACED: &str = "replaced";

/// A [`Store`] on a MongoDB database (or any server speaking its wire protocol).
///
/// Clones share the connection pool and the writer task.
#[derive(Clone, Debug)]
pub struct MongoStore {
    c: Collections,
    writer: mpsc::Sender<WriteRequest>,
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

#[derive(Debug, Serialize, Deserialize)]
struct UaDoc {
    #[serde(rename = "_id")]
    ua: String,
    node: Option<String>,
    conn: Option<String>,
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
    app_token: String,
    pbk: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RegistrationDoc {
    #[serde(rename = "_id")]
    key: String,
    app_token: String,
    ua: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NotificationDoc {
    #[serde(rename = "_id")]
    message_id: String,
    app_token: String,
    id: String,
    /// `app_token/id` in one field: the replacing of a whole batch is then one `$in` query
    /// on one index, whatever apps the batch holds.
    #[serde(default)]
    app_id: String,
    message: String,
    ttl: i64,
    timestamp: i64,
    expires_at: i64,
    priority: i32,
    created_at: i64,
    replaced: bool,
    routed: bool,
    /// `expires_at` as a BSON date, the only type a TTL index acts on.
    expire_at: DateTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryDoc {
    #[serde(rename = "_id")]
    key: String,
    message_id: String,
    ua: String,
    status: String,
    at: i64,
    created_at: i64,
    expire_at: DateTime,
}

/// The key of a notification's app and AS id (an appToken holds no `/`).
fn app_id(app_token: &str, id: &str) -> String {
    format!("{app_token}/{id}")
}

/// The identity and age of a notification, all that replacing needs.
#[derive(Debug, Deserialize)]
struct NotificationKey {
    #[serde(rename = "_id")]
    message_id: String,
    app_id: String,
    created_at: i64,
    replaced: bool,
}

/// Whether a notification has been replaced, all that routing needs to settle it.
#[derive(Debug, Deserialize)]
struct Liveness {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    replaced: bool,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(rename = "_id")]
    id: String,
}

#[derive(Debug, Deserialize)]
struct MessageRef {
    message_id: String,
}

#[derive(Debug, Deserialize)]
struct UaRef {
    ua: String,
}

/// A notification write handed to the writer task.
#[derive(Debug)]
enum Write {
    Insert(Notification),
    Route(Notification, Vec<UaId>),
}

#[derive(Debug)]
struct WriteRequest {
    write: Write,
    /// For a routing, whether the notification could be routed; true for an insert.
    done: oneshot::Sender<StoreResult<bool>>,
}

/// The writer task is gone, which only happens while the runtime shuts down.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer task has stopped")]
struct WriterStopped;

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
        let (writer, requests) = mpsc::channel(WRITE_QUEUE);
        // The task ends when the last clone of the store, and so the last sender, is dropped.
        tokio::spawn(write_loop(c.clone(), requests));
        Ok(MongoStore { c, writer })
    }

    /// Hands a write to the writer task and waits for its batch to be written.
    async fn write(&self, write: Write) -> StoreResult<bool> {
        let (done, result) = oneshot::channel();
        self.writer
            .send(WriteRequest { write, done })
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?;
        result
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?
    }
}

/// Takes the waiting notification writes a batch at a time and writes each batch with a few
/// commands. While a batch is being written the next one gathers, so batches grow with the load
/// and a lone write goes out at once. One batch at a time: several at once would each be
/// smaller, and small batches cost the database more per notification.
async fn write_loop(c: Collections, mut requests: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while requests.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        crate::batch::linger(&mut requests, &mut batch, WRITE_BATCH, WRITE_LINGER).await;
        let (writes, waiters): (Vec<Write>, Vec<_>) =
            batch.drain(..).map(|r| (r.write, r.done)).unzip();
        let results = c.apply(&writes).await;
        let failures = results.iter().filter(|r| r.is_err()).count();
        if failures > 0 {
            tracing::warn!(
                failures,
                writes = writes.len(),
                "notification writes failed"
            );
        }
        for (waiter, result) in waiters.into_iter().zip(results) {
            // A caller that stopped waiting doesn't need the answer: its write is done or
            // failed either way.
            let _ = waiter.send(result.map_err(db_err));
        }
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
            ])
            .await?;
        // Indexes of earlier versions that the one on `app_id` and `created_at` replaced: each
        // one costs every insert an index write.
        let names = self.notifications.list_index_names().await?;
        for obsolete in ["app_token_1_id_1_created_at_1", "app_id_1"] {
            if names.iter().any(|n| n == obsolete) {
                match self.notifications.drop_index(obsolete).await {
                    // Another instance starting at the same time dropped it first.
                    Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) =>
                        {}
                    other => other?,
                }
            }
        }
        self.deliveries
            .create_indexes([
                // `outstanding`.
                index(doc! { "ua": 1, "status": 1, "created_at": 1 }),
                // `status`, and the deliveries of replaced or purged notifications.
                index(doc! { "message_id": 1 }),
                // Expiry by the server, and the old acked ones `purge` looks for.
                IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(ttl())
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Marks these notifications replaced, and their outstanding deliveries too.
    async fn mark_replaced(&self, message_ids: &[String], at: i64) -> mongodb::error::Result<()> {
        for chunk in message_ids.chunks(IN_CHUNK) {
            self.notifications
                .update_many(
                    doc! { "_id": { "$in": chunk } },
                    doc! { "$set": { "replaced": true } },
                )
                .await?;
            self.deliveries
                .update_many(
                    doc! { "message_id": { "$in": chunk }, "status": { "$in": [PENDING, SENT] } },
                    doc! { "$set": { "status": REPLACED, "at": at } },
                )
                .await?;
        }
        Ok(())
    }

    /// Writes a batch of notification writes: the inserts first, then the routings, as if the
    /// inserts had come first. Returns, for each write, whether it took effect (a routing of a
    /// missing or replaced notification does not) or why it failed.
    async fn apply(&self, writes: &[Write]) -> Vec<mongodb::error::Result<bool>> {
        let mut results: Vec<mongodb::error::Result<bool>> = vec![Ok(true); writes.len()];
        let mut inserts = Vec::new();
        let mut insert_pos = Vec::new();
        let mut routes = Vec::new();
        let mut route_pos = Vec::new();
        for (pos, w) in writes.iter().enumerate() {
            match w {
                Write::Insert(n) => {
                    inserts.push(n);
                    insert_pos.push(pos);
                }
                Write::Route(n, uas) => {
                    routes.push((n, uas.as_slice()));
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

    /// Stores notifications, then marks replaced every one that is not the newest with its
    /// app and AS id, among both the stored ones and the new ones. Returns the positions of the
    /// notifications that could not be stored, with the error.
    async fn insert_notifications(
        &self,
        ns: &[&Notification],
    ) -> mongodb::error::Result<HashMap<usize, mongodb::error::Error>> {
        let docs = ns.iter().map(|n| NotificationDoc::from_notification(n));
        // Unordered, so that a notification stored already (a broker message handled twice)
        // only fails itself, with a duplicate key. Its replacing below runs again, since it may
        // not have run the first time.
        let failed = match self.notifications.insert_many(docs).ordered(false).await {
            Ok(_) => HashMap::new(),
            Err(e) => failed_inserts(e)?,
        };

        let keys: Vec<String> = ns
            .iter()
            .enumerate()
            .filter(|(k, _)| !failed.contains_key(k))
            .map(|(_, n)| app_id(&n.app_token, &n.id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut replaced = Vec::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let same: Vec<NotificationKey> = self
                .notifications
                .clone_with_type::<NotificationKey>()
                .find(doc! { "app_id": { "$in": chunk } })
                .projection(doc! { "_id": 1, "app_id": 1, "created_at": 1, "replaced": 1 })
                .await?
                .try_collect()
                .await?;
            let mut by_id: HashMap<String, Vec<NotificationKey>> = HashMap::new();
            for k in same.into_iter().filter(|k| !k.replaced) {
                by_id.entry(k.app_id.clone()).or_default().push(k);
            }
            for mut keys in by_id.into_values() {
                // Newest first; ties on `created_at` are broken by the message id, a UUIDv7
                // that sorts by time. Everything after the newest is replaced, which also
                // covers a notification that arrives after a newer one with the same ids
                // (broker messages can come out of order).
                keys.sort_by(|a, b| {
                    (b.created_at, &b.message_id).cmp(&(a.created_at, &a.message_id))
                });
                replaced.extend(keys.into_iter().skip(1).map(|k| k.message_id));
            }
        }
        if !replaced.is_empty() {
            self.mark_replaced(&replaced, crate::now_secs()).await?;
        }
        Ok(failed)
    }

    /// Creates the pending deliveries of the notifications that are stored and not replaced,
    /// then marks those routed. Returns, for each routing, whether the notification was routed
    /// or why its deliveries could not be stored.
    ///
    /// Routed is marked last, so that a crash in between leaves the notification to the
    /// recovery of unrouted ones rather than half routed for good. Whether a notification is
    /// still there and not replaced is learnt from that marking, which only matches live ones,
    /// rather than asked first: almost every notification is live, and asking would cost a
    /// read per notification. The rare others are then looked up, and the deliveries just
    /// made for them removed. This also covers a notification replaced while it is being
    /// routed: its pending deliveries can only have been made after the replacing, which
    /// marked the ones before it replaced.
    async fn route_notifications(
        &self,
        routes: &[(&Notification, &[UaId])],
    ) -> mongodb::error::Result<Vec<mongodb::error::Result<bool>>> {
        let at = crate::now_secs();
        let mut docs = Vec::new();
        // For each delivery document, the position of its routing.
        let mut owners = Vec::new();
        for (k, (n, uas)) in routes.iter().enumerate() {
            for ua in *uas {
                owners.push(k);
                docs.push(DeliveryDoc {
                    key: delivery_key(&n.message_id, ua),
                    message_id: n.message_id.clone(),
                    ua: ua.0.clone(),
                    status: PENDING.to_owned(),
                    at,
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
                    for (k, (n, _)) in routes.iter().enumerate() {
                        if &n.message_id == message_id {
                            outcomes[k] = Err(e.clone());
                        }
                    }
                }
            }
        }

        let stored: Vec<&str> = routes
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|((n, _), _)| n.message_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut not_live: HashSet<String> = HashSet::new();
        for chunk in stored.chunks(IN_CHUNK) {
            let marked = self
                .notifications
                .update_many(
                    doc! { "_id": { "$in": chunk }, "routed": false, "replaced": false },
                    doc! { "$set": { "routed": true } },
                )
                .await?;
            if marked.matched_count < chunk.len() as u64 {
                // Replaced, gone, or routed already (a broker message handled twice).
                not_live.extend(self.settle_not_live(chunk).await?);
            }
        }
        for ((n, _), outcome) in routes.iter().zip(outcomes.iter_mut()) {
            if outcome.is_ok() && not_live.contains(&n.message_id) {
                *outcome = Ok(false);
            }
        }
        Ok(outcomes)
    }

    /// Of these notifications (at most `IN_CHUNK`), finds the ones replaced or no longer
    /// stored, removes the deliveries routing just made for them, and returns their ids.
    async fn settle_not_live(&self, ids: &[&str]) -> mongodb::error::Result<Vec<String>> {
        let found: HashMap<String, bool> = self
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
                .delete_many(doc! { "message_id": { "$in": &replaced }, "status": PENDING })
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

    /// Removes expired notifications and their deliveries, a bounded batch at a time.
    async fn purge_expired(&self, now: i64) -> StoreResult<u64> {
        let mut removed = 0;
        loop {
            let expired: Vec<IdOnly> = self
                .notifications
                .clone_with_type::<IdOnly>()
                .find(doc! { "expire_at": { "$lte": date(now) } })
                .projection(doc! { "_id": 1 })
                .limit(IN_CHUNK as i64)
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            let ids: Vec<String> = expired.into_iter().map(|d| d.id).collect();
            if ids.is_empty() {
                break;
            }
            // Deliveries first: should this fail halfway, the notifications are still there to
            // lead the next purge to them.
            removed += self
                .deliveries
                .delete_many(doc! { "message_id": { "$in": &ids } })
                .await
                .map_err(db_err)?
                .deleted_count;
            let deleted = self
                .notifications
                .delete_many(doc! { "_id": { "$in": &ids } })
                .await
                .map_err(db_err)?
                .deleted_count;
            removed += deleted;
            // A short page was the last one; and should nothing go (a server that reports
            // otherwise), stopping is better than asking for the same page for ever.
            if ids.len() < IN_CHUNK || deleted == 0 {
                break;
            }
        }
        Ok(removed)
    }
}

fn index(keys: Document) -> IndexModel {
    IndexModel::builder().keys(keys).build()
}

/// Epoch seconds as a BSON date, saturating rather than overflowing on absurd values.
fn date(secs: i64) -> DateTime {
    DateTime::from_millis(secs.saturating_mul(1000))
}

fn delivery_key(message_id: &str, ua: &UaId) -> String {
    format!("{message_id}:{ua}")
}

/// Maps a driver error: documents that don't read back are corrupt, anything else means the
/// database is not answering as it should.
fn db_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::BsonDeserialization(_) => StoreError::Corrupt(e.to_string()),
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

fn corrupt(what: &str, key: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {key}: {detail}"))
}

impl UaDoc {
    fn from_route(route: &UaRoute) -> UaDoc {
        UaDoc {
            ua: route.ua.0.clone(),
            node: route.node.clone(),
            conn: route.conn.clone(),
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
                ip: i.ip.parse().map_err(|e| corrupt("ua", &self.ua, e))?,
                port: u16::try_from(i.port).map_err(|e| corrupt("ua", &self.ua, e))?,
            }),
        };
        Ok(UaRoute {
            ua: UaId(self.ua),
            node: self.node,
            conn: self.conn,
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

    fn into_notification(self) -> StoreResult<Notification> {
        Ok(Notification {
            ttl: u32::try_from(self.ttl)
                .map_err(|e| corrupt("notification", &self.message_id, e))?,
            priority: u8::try_from(self.priority)
                .map_err(|e| corrupt("notification", &self.message_id, e))?,
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
    fn batch_linger(&self) -> Duration {
        WRITE_LINGER
    }

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
        let filter = doc! { "_id": &route.ua.0 };
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

    async fn disconnect_ua(&self, ua: &UaId, node: &str, conn: &str) -> StoreResult<()> {
        // The interface stays: a disconnected UA can still be woken up over UDP.
        self.c
            .uas
            .update_one(
                doc! { "_id": &ua.0, "node": node, "conn": conn },
                doc! { "$set": { "node": null, "conn": null } },
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        let mut routes = Vec::with_capacity(uas.len());
        for chunk in uas.chunks(IN_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|u| u.0.as_str()).collect();
            let docs: Vec<UaDoc> = self
                .c
                .uas
                .find(doc! { "_id": { "$in": ids } })
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
            .replace_one(doc! { "_id": &app.app_token }, &doc)
            .upsert(true)
            .await
        {
            // A concurrent upsert of the same app stored the same content.
            Err(e) if !is_duplicate(&e) => Err(db_err(e)),
            _ => Ok(()),
        }
    }

    async fn get_app(&self, app_token: &str) -> StoreResult<Option<App>> {
        let doc = self
            .c
            .apps
            .find_one(doc! { "_id": app_token })
            .await
            .map_err(db_err)?;
        Ok(doc.map(|d| App {
            app_token: d.app_token,
            pbk: d.pbk,
        }))
    }

    async fn register_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<()> {
        let key = format!("{app_token}:{ua}");
        let doc = RegistrationDoc {
            key: key.clone(),
            app_token: app_token.to_owned(),
            ua: ua.0.clone(),
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

    async fn unregister_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<bool> {
        let key = format!("{app_token}:{ua}");
        let result = self
            .c
            .registrations
            .delete_one(doc! { "_id": key })
            .await
            .map_err(db_err)?;
        Ok(result.deleted_count > 0)
    }

    async fn app_uas(&self, app_token: &str) -> StoreResult<Vec<UaId>> {
        let refs: Vec<UaRef> = self
            .c
            .registrations
            .clone_with_type::<UaRef>()
            .find(doc! { "app_token": app_token })
            .projection(doc! { "_id": 0, "ua": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        Ok(refs.into_iter().map(|r| UaId(r.ua)).collect())
    }

    async fn insert_notification(&self, n: &Notification) -> StoreResult<()> {
        self.write(Write::Insert(n.clone())).await.map(|_| ())
    }

    async fn add_deliveries(&self, n: &Notification, uas: &[UaId]) -> StoreResult<bool> {
        self.write(Write::Route(n.clone(), uas.to_vec())).await
    }

    async fn unrouted(&self, limit: usize) -> StoreResult<Vec<Notification>> {
        // A limit of 0 means "no limit" to the server.
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Replaced notifications are left out: they can't be routed any more, and listing them
        // would hand them to the recovery again and again until they expire.
        let docs: Vec<NotificationDoc> = self
            .c
            .notifications
            .find(doc! { "routed": false, "replaced": false })
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

    async fn update_deliveries(&self, updates: &[DeliveryUpdate], now: i64) -> StoreResult<u64> {
        let mut groups: HashMap<DeliveryStatus, HashSet<String>> = HashMap::new();
        for u in updates {
            groups
                .entry(u.status)
                .or_default()
                .insert(delivery_key(&u.message_id, &u.ua));
        }
        let mut changed = 0;
        // Acked goes last, so that a Sent and an Acked of one delivery in the same batch end
        // up acked whichever came first.
        for status in [
            DeliveryStatus::Pending,
            DeliveryStatus::Sent,
            DeliveryStatus::Expired,
            DeliveryStatus::Replaced,
            DeliveryStatus::Acked,
        ] {
            let Some(keys) = groups.remove(&status) else {
                continue;
            };
            let keys: Vec<String> = keys.into_iter().collect();
            for chunk in keys.chunks(IN_CHUNK) {
                let (filter, set) = match status {
                    // Acked is final: acking again changes nothing, and from then on the
                    // delivery only waits for the TTL index.
                    DeliveryStatus::Acked => (
                        doc! { "_id": { "$in": chunk }, "status": { "$ne": ACKED } },
                        doc! { "status": ACKED, "at": now, "expire_at": date(now + ACKED_KEEP_SECS) },
                    ),
                    // Every other change applies only to deliveries still owed, so that Sent
                    // never downgrades Acked nor revives a replaced or expired delivery.
                    other => (
                        doc! { "_id": { "$in": chunk }, "status": { "$in": [PENDING, SENT] } },
                        doc! { "status": other.as_str(), "at": now },
                    ),
                };
                changed += self
                    .c
                    .deliveries
                    .update_many(filter, doc! { "$set": set })
                    .await
                    .map_err(db_err)?
                    .modified_count;
            }
        }
        Ok(changed)
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let refs: Vec<MessageRef> = self
            .c
            .deliveries
            .clone_with_type::<MessageRef>()
            .find(doc! { "ua": &ua.0, "status": { "$in": [PENDING, SENT] } })
            .projection(doc! { "_id": 0, "message_id": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = refs.into_iter().map(|r| r.message_id).collect();
        // Each chunk yields its own oldest `limit`; merging them and cutting again gives the
        // overall oldest `limit`. There is a single chunk unless the UA owes thousands.
        let mut found = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let docs: Vec<NotificationDoc> = self
                .c
                .notifications
                .find(doc! {
                    "_id": { "$in": chunk },
                    "replaced": false,
                    "expires_at": { "$gt": now },
                })
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
        app_token: &str,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<StatusReport>> {
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
        let expired = n.is_expired(now);
        let docs: Vec<DeliveryDoc> = self
            .c
            .deliveries
            .find(doc! { "message_id": &n.message_id })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        let mut deliveries = Vec::with_capacity(docs.len());
        for d in docs {
            let mut status = DeliveryStatus::parse(&d.status)
                .ok_or_else(|| corrupt("delivery", &d.key, format!("status {:?}", d.status)))?;
            if expired && status.is_outstanding() {
                status = DeliveryStatus::Expired;
            }
            deliveries.push(Delivery {
                device: UaId(d.ua),
                status,
                at: d.at,
            });
        }
        deliveries.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(Some(StatusReport {
            id: n.id,
            message_id: n.message_id,
            deliveries,
        }))
    }

    async fn purge(&self, now: i64, acked_before: i64) -> StoreResult<u64> {
        let mut removed = self.c.purge_expired(now).await?;
        // An acked delivery's `expire_at` is its `at` plus ACKED_KEEP_SECS, so the bound on
        // `expire_at` selects the same deliveries as the one on `at` while letting the server
        // use the TTL index instead of scanning the collection.
        removed += self
            .c
            .deliveries
            .delete_many(doc! {
                "expire_at": { "$lt": date(acked_before.saturating_add(ACKED_KEEP_SECS)) },
                "status": ACKED,
                "at": { "$lt": acked_before },
            })
            .await
            .map_err(db_err)?
            .deleted_count;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;

    #[tokio::test]
    async fn conformance() {
        let url = std::env::var("NS_TEST_MONGO_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
        let db = format!("ns_test_{}", uuid::Uuid::new_v4().simple());
        let store = MongoStore::connect(&url, &db).await.expect("connect");
        let outcome = AssertUnwindSafe(conformance::run_all(&store))
            .catch_unwind()
            .await;
        // The server is shared, so the database goes even when a check failed; dropping it is
        // best effort, as a leftover only takes some space.
        let _ = store.c.db.drop().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
