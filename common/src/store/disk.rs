//! The embedded store of the one-process mode: redb on disk as the record, indexes in
//! memory for the reads.
//!
//! Every write is applied to the in-memory indexes under one lock, then handed to a single
//! writer task that commits whatever has queued up in one redb transaction (group commit:
//! one fsync for many writes) before any of those calls return. The disk is therefore always
//! a prefix of memory, and nothing returned `Ok` is lost by a crash. At open, the indexes
//! are rebuilt from the tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{DeliveryUpdate, Store, StoreError, StoreResult};
use crate::model::{
    App, Delivery, DeliveryStatus, Interface, Notification, StatusReport, UaId, UaRoute,
};

/// Notifications the purge looks at while holding the lock once.
const PURGE_CHUNK: usize = 1_000;
/// Writes committed in one transaction at most.
const MAX_GROUP: usize = 4096;

const UAS: TableDefinition<&str, &[u8]> = TableDefinition::new("uas");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Key `{app_token}\0{ua}`, empty value.
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
/// Key `{message_id}\0{ua}`.
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Uas,
    Apps,
    Registrations,
    Notifications,
    Deliveries,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Uas => UAS,
            Table::Apps => APPS,
            Table::Registrations => REGISTRATIONS,
            Table::Notifications => NOTIFICATIONS,
            Table::Deliveries => DELIVERIES,
        }
    }
}

/// One change to the tables.
enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

#[derive(Clone, Serialize, Deserialize)]
struct UaRecord {
    node: Option<String>,
    conn: Option<String>,
    interface: Option<Interface>,
}

#[derive(Clone, Serialize, Deserialize)]
struct NotificationRecord {
    notification: Notification,
    replaced: bool,
    routed: bool,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct DeliveryRecord {
    status: DeliveryStatus,
    at: i64,
}

fn pair(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::unavailable(e.into())
}

/// The in-memory indexes; what the tables hold, arranged for the queries.
#[derive(Default)]
struct Mem {
    uas: HashMap<UaId, UaRecord>,
    apps: HashMap<String, Option<String>>,
    registrations: HashMap<String, BTreeSet<UaId>>,
    /// By message id: UUIDv7, so in creation order, and a purge can walk it in chunks.
    notifications: BTreeMap<String, NotificationRecord>,
    /// (app_token, AS id) → message ids, oldest first.
    by_app_id: HashMap<(String, String), Vec<(i64, String)>>,
    deliveries: BTreeMap<String, HashMap<UaId, DeliveryRecord>>,
    /// Per UA, its pending or sent deliveries by (created_at, message_id).
    outstanding: HashMap<UaId, BTreeSet<(i64, String)>>,
    unrouted: BTreeSet<(i64, String)>,
}

impl Mem {
    /// Removes what the purge removes of one notification: its acked deliveries past their
    /// retention, then the notification itself if it expired or has no delivery left to
    /// report. Returns how many records went.
    fn purge_one(
        &mut self,
        message_id: &str,
        now: i64,
        acked_before: i64,
        ops: &mut Vec<Op>,
    ) -> u64 {
        let mut removed = 0;
        if let Some(deliveries) = self.deliveries.get_mut(message_id) {
            deliveries.retain(|ua, r| {
                let old = r.status == DeliveryStatus::Acked && r.at < acked_before;
                if old {
                    ops.push(Op::Delete(Table::Deliveries, pair(message_id, &ua.0)));
                    removed += 1;
                }
                !old
            });
        }
        let gone = self.notifications.get(message_id).is_some_and(|r| {
            let n = &r.notification;
            n.is_expired(now)
                || n.ttl == 0
                || (r.routed
                    && self
                        .deliveries
                        .get(message_id)
                        .is_none_or(HashMap::is_empty))
        });
        if gone {
            removed += self.remove_notification(message_id, ops);
        }
        removed
    }

    fn index_notification(&mut self, record: &NotificationRecord) {
        let n = &record.notification;
        let key = (n.created_at, n.message_id.clone());
        let ids = self
            .by_app_id
            .entry((n.app_token.clone(), n.id.clone()))
            .or_default();
        if let Err(at) = ids.binary_search(&key) {
            ids.insert(at, key.clone());
        }
        if !record.routed && !record.replaced {
            self.unrouted.insert(key);
        }
    }

    fn set_delivery(&mut self, message_id: &str, ua: &UaId, record: DeliveryRecord) {
        let created_at = self
            .notifications
            .get(message_id)
            .map_or(0, |n| n.notification.created_at);
        let key = (created_at, message_id.to_owned());
        if record.status.is_outstanding() {
            self.outstanding.entry(ua.clone()).or_default().insert(key);
        } else if let Some(set) = self.outstanding.get_mut(ua) {
            set.remove(&key);
            if set.is_empty() {
                self.outstanding.remove(ua);
            }
        }
        self.deliveries
            .entry(message_id.to_owned())
            .or_default()
            .insert(ua.clone(), record);
    }

    /// Removes a notification and its deliveries from memory; returns the table deletes.
    fn remove_notification(&mut self, message_id: &str, ops: &mut Vec<Op>) -> u64 {
        let mut removed = 0;
        let Some(record) = self.notifications.remove(message_id) else {
            return 0;
        };
        let n = &record.notification;
        let key = (n.created_at, n.message_id.clone());
        self.unrouted.remove(&key);
        let app_id = (n.app_token.clone(), n.id.clone());
        if let Some(ids) = self.by_app_id.get_mut(&app_id) {
            ids.retain(|k| k != &key);
            if ids.is_empty() {
                self.by_app_id.remove(&app_id);
            }
        }
        ops.push(Op::Delete(Table::Notifications, message_id.to_owned()));
        removed += 1;
        for (ua, _) in self.deliveries.remove(message_id).unwrap_or_default() {
            if let Some(set) = self.outstanding.get_mut(&ua) {
                set.remove(&key);
                if set.is_empty() {
                    self.outstanding.remove(&ua);
                }
            }
            ops.push(Op::Delete(Table::Deliveries, pair(message_id, &ua.0)));
            removed += 1;
        }
        removed
    }
}

type Commit = (Vec<Op>, oneshot::Sender<StoreResult<()>>);

/// The one-process store. Cloning shares it.
#[derive(Clone)]
pub struct EmbeddedStore {
    mem: Arc<Mutex<Mem>>,
    writer: mpsc::Sender<Commit>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and rebuilds the indexes from it.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        let db = Database::create(path).map_err(db_err)?;
        // Create every table so reads of a new file find them.
        let txn = db.begin_write().map_err(db_err)?;
        for table in [
            Table::Uas,
            Table::Apps,
            Table::Registrations,
            Table::Notifications,
            Table::Deliveries,
        ] {
            txn.open_table(table.definition()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let mem = load(&db)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        std::thread::Builder::new()
            .name("ns-store-writer".into())
            .spawn(move || write_loop(&db, rx))
            .map_err(StoreError::unavailable)?;
        Ok(EmbeddedStore {
            mem: Arc::new(Mutex::new(mem)),
            writer: tx,
        })
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ops` are committed to disk.
    async fn commit(&self, ops: Vec<Op>) -> StoreResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        let gone = || StoreError::unavailable(std::io::Error::other("the store writer stopped"));
        self.writer.send((ops, done)).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

fn load(db: &Database) -> StoreResult<Mem> {
    let mut mem = Mem::default();
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(UAS).map_err(db_err)?;
    for entry in table.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        mem.uas
            .insert(UaId(k.value().to_owned()), decode(v.value())?);
    }
    let table = txn.open_table(APPS).map_err(db_err)?;
    for entry in table.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        mem.apps.insert(k.value().to_owned(), decode(v.value())?);
    }
    let table = txn.open_table(REGISTRATIONS).map_err(db_err)?;
    for entry in table.iter().map_err(db_err)? {
        let (k, _) = entry.map_err(db_err)?;
        if let Some((app, ua)) = k.value().split_once('\0') {
            mem.registrations
                .entry(app.to_owned())
                .or_default()
                .insert(UaId(ua.to_owned()));
        }
    }
    let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
    for entry in table.iter().map_err(db_err)? {
        let (_, v) = entry.map_err(db_err)?;
        let record: NotificationRecord = decode(v.value())?;
        mem.index_notification(&record);
        mem.notifications
            .insert(record.notification.message_id.clone(), record);
    }
    let table = txn.open_table(DELIVERIES).map_err(db_err)?;
    for entry in table.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        if let Some((message_id, ua)) = k.value().split_once('\0') {
            let record: DeliveryRecord = decode(v.value())?;
            mem.set_delivery(message_id, &UaId(ua.to_owned()), record);
        }
    }
    Ok(mem)
}

/// The writer thread: commits every queued write in one transaction, then answers them all.
fn write_loop(db: &Database, mut rx: mpsc::Receiver<Commit>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        let mut count = group[0].0.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => {
                    count += more.0.len();
                    group.push(more);
                }
                Err(_) => break,
            }
        }
        let result = apply(db, group.iter().flat_map(|(ops, _)| ops.iter()));
        if let Err(e) = &result {
            tracing::error!(error = %e, "committing to the store failed");
        }
        for (_, done) in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::unavailable(std::io::Error::other(
                    e.to_string(),
                ))),
            };
            let _ = done.send(answer);
        }
    }
}

fn apply<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut tables = [
            txn.open_table(UAS)?,
            txn.open_table(APPS)?,
            txn.open_table(REGISTRATIONS)?,
            txn.open_table(NOTIFICATIONS)?,
            txn.open_table(DELIVERIES)?,
        ];
        for op in ops {
            match op {
                Op::Put(table, key, value) => {
                    tables[*table as usize].insert(key.as_str(), value.as_slice())?;
                }
                Op::Delete(table, key) => {
                    tables[*table as usize].remove(key.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn route_of(ua: &UaId, record: &UaRecord) -> UaRoute {
    UaRoute {
        ua: ua.clone(),
        node: record.node.clone(),
        conn: record.conn.clone(),
        interface: record.interface.clone(),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>> {
        let record = UaRecord {
            node: route.node.clone(),
            conn: route.conn.clone(),
            interface: route.interface.clone(),
        };
        let (previous, ops) = {
            let mut mem = self.mem();
            let previous = mem.uas.insert(route.ua.clone(), record.clone());
            let ops = vec![Op::Put(Table::Uas, route.ua.0.clone(), encode(&record))];
            (previous.map(|p| route_of(&route.ua, &p)), ops)
        };
        self.commit(ops).await?;
        Ok(previous)
    }

    async fn disconnect_ua(&self, ua: &UaId, node: &str, conn: &str) -> StoreResult<()> {
        let ops = {
            let mut mem = self.mem();
            match mem.uas.get_mut(ua) {
                Some(r) if r.node.as_deref() == Some(node) && r.conn.as_deref() == Some(conn) => {
                    r.node = None;
                    r.conn = None;
                    vec![Op::Put(Table::Uas, ua.0.clone(), encode(&*r))]
                }
                _ => Vec::new(),
            }
        };
        self.commit(ops).await
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        let mem = self.mem();
        Ok(uas
            .iter()
            .filter_map(|ua| mem.uas.get(ua).map(|r| route_of(ua, r)))
            .collect())
    }

    async fn put_app(&self, app: &App) -> StoreResult<()> {
        let ops = {
            let mut mem = self.mem();
            if mem.apps.get(&app.app_token) == Some(&app.pbk) {
                Vec::new()
            } else {
                mem.apps.insert(app.app_token.clone(), app.pbk.clone());
                vec![Op::Put(
                    Table::Apps,
                    app.app_token.clone(),
                    encode(&app.pbk),
                )]
            }
        };
        self.commit(ops).await
    }

    async fn get_app(&self, app_token: &str) -> StoreResult<Option<App>> {
        Ok(self.mem().apps.get(app_token).map(|pbk| App {
            app_token: app_token.to_owned(),
            pbk: pbk.clone(),
        }))
    }

    async fn register_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<()> {
        let ops = {
            let mut mem = self.mem();
            if mem
                .registrations
                .entry(app_token.to_owned())
                .or_default()
                .insert(ua.clone())
            {
                vec![Op::Put(
                    Table::Registrations,
                    pair(app_token, &ua.0),
                    Vec::new(),
                )]
            } else {
                Vec::new()
            }
        };
        self.commit(ops).await
    }

    async fn unregister_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<bool> {
        let (removed, ops) = {
            let mut mem = self.mem();
            let removed = match mem.registrations.get_mut(app_token) {
                Some(set) => {
                    let removed = set.remove(ua);
                    if set.is_empty() {
                        mem.registrations.remove(app_token);
                    }
                    removed
                }
                None => false,
            };
            let ops = if removed {
                vec![Op::Delete(Table::Registrations, pair(app_token, &ua.0))]
            } else {
                Vec::new()
            };
            (removed, ops)
        };
        self.commit(ops).await?;
        Ok(removed)
    }

    async fn app_uas(&self, app_token: &str) -> StoreResult<Vec<UaId>> {
        Ok(self
            .mem()
            .registrations
            .get(app_token)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn insert_notification(&self, n: &Notification) -> StoreResult<()> {
        let ops = {
            let mut mem = self.mem();
            let mut ops = Vec::new();
            let record = NotificationRecord {
                notification: n.clone(),
                replaced: false,
                routed: false,
            };
            mem.notifications
                .insert(n.message_id.clone(), record.clone());
            mem.index_notification(&record);
            ops.push(Op::Put(
                Table::Notifications,
                n.message_id.clone(),
                encode(&record),
            ));
            // Every older notification with the same app and AS id is replaced, wherever it
            // is still outstanding.
            let older: Vec<(i64, String)> = mem
                .by_app_id
                .get(&(n.app_token.clone(), n.id.clone()))
                .map(|ids| {
                    ids.iter()
                        .filter(|(at, id)| (*at, id) < (n.created_at, &n.message_id))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let now = crate::now_secs();
            for key in older {
                let Some(old) = mem.notifications.get_mut(&key.1) else {
                    continue;
                };
                if old.replaced {
                    continue;
                }
                old.replaced = true;
                let old = old.clone();
                mem.unrouted.remove(&key);
                ops.push(Op::Put(Table::Notifications, key.1.clone(), encode(&old)));
                let deliveries: Vec<(UaId, DeliveryRecord)> = mem
                    .deliveries
                    .get(&key.1)
                    .map(|d| d.iter().map(|(u, r)| (u.clone(), *r)).collect())
                    .unwrap_or_default();
                for (ua, record) in deliveries {
                    if record.status.is_outstanding() {
                        let replaced = DeliveryRecord {
                            status: DeliveryStatus::Replaced,
                            at: now,
                        };
                        mem.set_delivery(&key.1, &ua, replaced);
                        ops.push(Op::Put(
                            Table::Deliveries,
                            pair(&key.1, &ua.0),
                            encode(&replaced),
                        ));
                    }
                }
            }
            ops
        };
        self.commit(ops).await
    }

    async fn add_deliveries(&self, n: &Notification, uas: &[UaId]) -> StoreResult<bool> {
        let ops = {
            let mut mem = self.mem();
            let Some(record) = mem.notifications.get_mut(&n.message_id) else {
                return Ok(false);
            };
            if record.replaced {
                return Ok(false);
            }
            let mut ops = Vec::new();
            if !record.routed {
                record.routed = true;
                let record = record.clone();
                mem.unrouted.remove(&(n.created_at, n.message_id.clone()));
                ops.push(Op::Put(
                    Table::Notifications,
                    n.message_id.clone(),
                    encode(&record),
                ));
            }
            let now = crate::now_secs();
            for ua in uas {
                let exists = mem
                    .deliveries
                    .get(&n.message_id)
                    .is_some_and(|d| d.contains_key(ua));
                if !exists {
                    let pending = DeliveryRecord {
                        status: DeliveryStatus::Pending,
                        at: now,
                    };
                    mem.set_delivery(&n.message_id, ua, pending);
                    ops.push(Op::Put(
                        Table::Deliveries,
                        pair(&n.message_id, &ua.0),
                        encode(&pending),
                    ));
                }
            }
            ops
        };
        self.commit(ops).await?;
        Ok(true)
    }

    async fn unrouted(&self, limit: usize) -> StoreResult<Vec<Notification>> {
        let mem = self.mem();
        Ok(mem
            .unrouted
            .iter()
            .filter_map(|(_, id)| mem.notifications.get(id))
            .filter(|r| !r.replaced)
            .take(limit)
            .map(|r| r.notification.clone())
            .collect())
    }

    async fn update_deliveries(&self, updates: &[DeliveryUpdate], now: i64) -> StoreResult<u64> {
        let (changed, ops) = {
            let mut mem = self.mem();
            let mut changed = 0;
            let mut ops = Vec::new();
            for u in updates {
                let Some(current) = mem
                    .deliveries
                    .get(&u.message_id)
                    .and_then(|d| d.get(&u.ua))
                    .copied()
                else {
                    continue;
                };
                let allowed = match u.status {
                    DeliveryStatus::Acked => current.status != DeliveryStatus::Acked,
                    // Nothing else brings back an acked, replaced or expired delivery.
                    _ => current.status.is_outstanding(),
                };
                if !allowed {
                    continue;
                }
                let record = DeliveryRecord {
                    status: u.status,
                    at: now,
                };
                mem.set_delivery(&u.message_id, &u.ua, record);
                ops.push(Op::Put(
                    Table::Deliveries,
                    pair(&u.message_id, &u.ua.0),
                    encode(&record),
                ));
                changed += 1;
            }
            (changed, ops)
        };
        self.commit(ops).await?;
        Ok(changed)
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        let mem = self.mem();
        let Some(keys) = mem.outstanding.get(ua) else {
            return Ok(Vec::new());
        };
        Ok(keys
            .iter()
            .filter_map(|(_, id)| mem.notifications.get(id))
            .filter(|r| !r.replaced && !r.notification.is_expired(now) && r.notification.ttl > 0)
            .take(limit)
            .map(|r| r.notification.clone())
            .collect())
    }

    async fn status(
        &self,
        app_token: &str,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<StatusReport>> {
        let mem = self.mem();
        let Some((_, newest)) = mem
            .by_app_id
            .get(&(app_token.to_owned(), id.to_owned()))
            .and_then(|ids| ids.last())
        else {
            return Ok(None);
        };
        let Some(record) = mem.notifications.get(newest) else {
            return Ok(None);
        };
        let expired = record.notification.is_expired(now);
        let mut deliveries: Vec<Delivery> = mem
            .deliveries
            .get(newest)
            .map(|d| {
                d.iter()
                    .map(|(ua, r)| Delivery {
                        device: ua.clone(),
                        status: if expired && r.status.is_outstanding() {
                            DeliveryStatus::Expired
                        } else {
                            r.status
                        },
                        at: r.at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        deliveries.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(Some(StatusReport {
            id: id.to_owned(),
            message_id: newest.clone(),
            deliveries,
        }))
    }

    async fn purge(&self, now: i64, acked_before: i64) -> StoreResult<u64> {
        // In chunks, letting go of the lock in between: a purge must not stall deliveries
        // for as long as a walk over every notification takes.
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let (ops, last) = {
                let mut mem = self.mem();
                let from = match &after {
                    Some(id) => Bound::Excluded(id.as_str()),
                    None => Bound::Unbounded,
                };
                let chunk: Vec<String> = mem
                    .notifications
                    .range::<str, _>((from, Bound::Unbounded))
                    .take(PURGE_CHUNK)
                    .map(|(id, _)| id.clone())
                    .collect();
                let mut ops = Vec::new();
                for message_id in &chunk {
                    removed += mem.purge_one(message_id, now, acked_before, &mut ops);
                }
                (ops, chunk.last().cloned())
            };
            if !ops.is_empty() {
                self.commit(ops).await?;
            }
            match last {
                Some(id) => after = Some(id),
                None => return Ok(removed),
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(app: &str, id: &str, created_at: i64) -> Notification {
        Notification {
            message_id: uuid::Uuid::now_v7().simple().to_string(),
            app_token: app.into(),
            id: id.into(),
            message: "m".into(),
            ttl: 3600,
            timestamp: crate::now_secs(),
            expires_at: crate::now_secs() + 3600,
            priority: 4,
            created_at,
        }
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        super::super::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let ua = UaId("u1".into());
        let n = notification("app", "a", 1);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .register_ua(&UaRoute {
                    ua: ua.clone(),
                    node: None,
                    conn: None,
                    interface: None,
                })
                .await
                .unwrap();
            store
                .put_app(&App {
                    app_token: "app".into(),
                    pbk: None,
                })
                .await
                .unwrap();
            store.register_wa(&ua, "app").await.unwrap();
            store.insert_notification(&n).await.unwrap();
            assert!(store
                .add_deliveries(&n, std::slice::from_ref(&ua))
                .await
                .unwrap());
        }
        // The writer thread of the first store may still hold the file for a moment.
        let store = loop {
            match EmbeddedStore::open(&path) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert!(store.get_app("app").await.unwrap().is_some());
        assert_eq!(store.app_uas("app").await.unwrap(), vec![ua.clone()]);
        assert_eq!(
            store
                .ua_routes(std::slice::from_ref(&ua))
                .await
                .unwrap()
                .len(),
            1
        );
        let out = store.outstanding(&ua, crate::now_secs(), 10).await.unwrap();
        assert_eq!(out, vec![n]);
    }

    #[tokio::test]
    async fn group_commit_serves_many_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let ns: Vec<_> = (0..1000)
            .map(|i| notification("app", &i.to_string(), i))
            .collect();
        let results =
            futures::future::join_all(ns.iter().map(|n| store.insert_notification(n))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(store.unrouted(10_000).await.unwrap().len(), 1000);
    }
}
