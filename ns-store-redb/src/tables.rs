//! The redb tables, the records they hold (JSON values), loading them into memory at open,
//! and committing a group's changes in one transaction.

use common::delivery::DeliveryRecord;
use common::model::{AppToken, ConnId, Interface, Live, MessageId, NodeId, UaId, UaRoute};
use common::notification::{Notification, NotificationState};
use ns_store::{StoreError, StoreResult};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::mem::Mem;
use crate::plan::Changes;

const UAS: TableDefinition<&str, &[u8]> = TableDefinition::new("uas");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Key `{app_token}\0{ua}`, empty value.
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
/// Key `{message_id}\0{ua}`.
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");

/// A UA as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UaRecord {
    node: Option<NodeId>,
    conn: Option<ConnId>,
    interface: Option<Interface>,
}

impl UaRecord {
    pub(crate) fn from_route(route: &UaRoute) -> Self {
        UaRecord {
            node: route.live.as_ref().map(|l| l.node.clone()),
            conn: route.live.as_ref().map(|l| l.conn.clone()),
            interface: route.interface.clone(),
        }
    }

    pub(crate) fn to_route(&self, ua: &UaId) -> UaRoute {
        let live = match (&self.node, &self.conn) {
            (Some(node), Some(conn)) => Some(Live {
                node: node.clone(),
                conn: conn.clone(),
            }),
            _ => None,
        };
        UaRoute {
            ua: ua.clone(),
            live,
            interface: self.interface.clone(),
        }
    }

    pub(crate) fn is_live_as(&self, live: &Live) -> bool {
        self.node.as_ref() == Some(&live.node) && self.conn.as_ref() == Some(&live.conn)
    }

    /// The same UA without its live connection: it can still be woken over UDP.
    pub(crate) fn disconnected(&self) -> Self {
        UaRecord {
            node: None,
            conn: None,
            interface: self.interface.clone(),
        }
    }
}

/// A notification as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NotificationRecord {
    pub(crate) notification: Notification,
    #[serde(flatten)]
    pub(crate) state: NotificationState,
}

fn pair(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

fn decode<T: for<'de> Deserialize<'de>>(table: &str, key: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(format!("record {key:?} of table {table}"), e))
}

pub(crate) fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::unavailable(e.into())
}

/// Creates every table, so that reads of a new file find them.
pub(crate) fn create_all(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(unavailable)?;
    for table in [UAS, APPS, REGISTRATIONS, NOTIFICATIONS, DELIVERIES] {
        txn.open_table(table).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)
}

/// Every table, read into the in-memory indexes.
pub(crate) fn load(db: &Database) -> StoreResult<Mem> {
    let mut changes = Changes::default();
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(UAS).map_err(unavailable)?;
    for entry in table.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let record = decode("uas", k.value(), v.value())?;
        changes.uas.insert(UaId::new(k.value()), Some(record));
    }
    let table = txn.open_table(APPS).map_err(unavailable)?;
    for entry in table.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let pbk = decode("apps", k.value(), v.value())?;
        changes.apps.insert(AppToken::new(k.value()), pbk);
    }
    let table = txn.open_table(REGISTRATIONS).map_err(unavailable)?;
    for entry in table.iter().map_err(unavailable)? {
        let (k, _) = entry.map_err(unavailable)?;
        if let Some((app, ua)) = k.value().split_once('\0') {
            changes
                .registrations
                .insert((AppToken::new(app), UaId::new(ua)), true);
        }
    }
    let table = txn.open_table(NOTIFICATIONS).map_err(unavailable)?;
    for entry in table.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let record: NotificationRecord = decode("notifications", k.value(), v.value())?;
        changes
            .notifications
            .insert(record.notification.message_id.clone(), Some(record));
    }
    let table = txn.open_table(DELIVERIES).map_err(unavailable)?;
    for entry in table.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        if let Some((message_id, ua)) = k.value().split_once('\0') {
            let record: DeliveryRecord = decode("deliveries", k.value(), v.value())?;
            changes
                .deliveries
                .entry(MessageId::new(message_id))
                .or_default()
                .insert(UaId::new(ua), Some(record));
        }
    }
    let mut mem = Mem::default();
    mem.apply(changes);
    Ok(mem)
}

/// Why a group's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    #[error("the database failed")]
    Database(#[from] redb::Error),
    #[error("a record could not be encoded")]
    Encode(#[from] serde_json::Error),
}

impl CommitError {
    fn database(e: impl Into<redb::Error>) -> Self {
        CommitError::Database(e.into())
    }
}

/// Writes `changes` in one transaction; nothing of them is on disk if it fails.
pub(crate) fn commit(db: &Database, changes: &Changes) -> Result<(), CommitError> {
    let txn = db.begin_write().map_err(CommitError::database)?;
    {
        let mut uas = txn.open_table(UAS).map_err(CommitError::database)?;
        for (ua, record) in &changes.uas {
            match record {
                Some(r) => uas.insert(ua.as_str(), serde_json::to_vec(r)?.as_slice()),
                None => uas.remove(ua.as_str()),
            }
            .map_err(CommitError::database)?;
        }
        let mut apps = txn.open_table(APPS).map_err(CommitError::database)?;
        for (app, pbk) in &changes.apps {
            apps.insert(app.as_str(), serde_json::to_vec(pbk)?.as_slice())
                .map_err(CommitError::database)?;
        }
        let mut registrations = txn
            .open_table(REGISTRATIONS)
            .map_err(CommitError::database)?;
        for ((app, ua), present) in &changes.registrations {
            let key = pair(app.as_str(), ua.as_str());
            if *present {
                registrations.insert(key.as_str(), [].as_slice())
            } else {
                registrations.remove(key.as_str())
            }
            .map_err(CommitError::database)?;
        }
        let mut notifications = txn
            .open_table(NOTIFICATIONS)
            .map_err(CommitError::database)?;
        for (id, record) in &changes.notifications {
            match record {
                Some(r) => notifications.insert(id.as_str(), serde_json::to_vec(r)?.as_slice()),
                None => notifications.remove(id.as_str()),
            }
            .map_err(CommitError::database)?;
        }
        let mut deliveries = txn.open_table(DELIVERIES).map_err(CommitError::database)?;
        for (id, ua, record) in changes
            .deliveries
            .iter()
            .flat_map(|(id, of)| of.iter().map(move |(ua, r)| (id, ua, r)))
        {
            let key = pair(id.as_str(), ua.as_str());
            match record {
                Some(r) => deliveries.insert(key.as_str(), serde_json::to_vec(r)?.as_slice()),
                None => deliveries.remove(key.as_str()),
            }
            .map_err(CommitError::database)?;
        }
    }
    txn.commit().map_err(CommitError::database)
}
