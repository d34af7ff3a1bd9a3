//! The redb tables, the records they hold (JSON values; payloads in a binary form of their
//! own), loading the indexes into memory at open, reading payloads when they are delivered,
//! and committing a group's changes in one transaction.

use common::delivery::DeliveryRecord;
use common::model::{AppToken, ConnId, Interface, Live, MessageId, NodeId, UaId, UaRoute};
use common::notification::{
    ContentEncoding, Notification, NotificationHead, NotificationState, Payload, PushMessage,
};
use ns_store::{StoreError, StoreResult};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::mem::Mem;
use crate::plan::Changes;
use crate::wal::{Op, Table};

const UAS: TableDefinition<&str, &[u8]> = TableDefinition::new("uas");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Key `{app_token}\0{ua}`, empty value.
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
/// The notifications without their payloads: what is loaded into memory at open.
const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
/// Key: message id. Read only to deliver, so that memory does not grow with payloads.
const PAYLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("payloads");
/// `schema` → the version of the layout ([`SCHEMA`]); `log` → the sequence number of the
/// last record of the log ([`crate::wal`]) the file holds.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const LOG_KEY: &str = "log";
/// 2: payloads in their own table. A file without a version is of version 1, whose
/// notification records held their payloads; [`upgrade`] moves them.
const SCHEMA: &str = "2";
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

/// A notification as stored and indexed, without its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NotificationRecord {
    pub(crate) head: NotificationHead,
    #[serde(flatten)]
    pub(crate) state: NotificationState,
}

/// A notification record of schema 1, payload included.
#[derive(Deserialize)]
struct WholeRecord {
    notification: Notification,
    #[serde(flatten)]
    state: NotificationState,
}

/// What a Web Push payload carries beside its bytes.
#[derive(Serialize, Deserialize)]
struct PushHead<'a> {
    #[serde(borrow)]
    channel_id: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<ContentEncoding>,
}

/// A payload as stored: `T` and the text's UTF-8; or `P`, the length (4 bytes, big-endian)
/// of the [`PushHead`]'s JSON, that JSON, and the body's bytes as they came.
fn encode_payload(payload: &Payload) -> Result<Vec<u8>, serde_json::Error> {
    Ok(match payload {
        Payload::Text(text) => [b"T".as_slice(), text.as_bytes()].concat(),
        Payload::Push(push) => {
            let head = serde_json::to_vec(&PushHead {
                channel_id: push.channel_id.as_str().into(),
                encoding: push.encoding.clone(),
            })?;
            let len = u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes();
            [b"P".as_slice(), &len, &head, &push.data].concat()
        }
    })
}

/// The stored form of a payload is not one [`encode_payload`] writes.
#[derive(Debug, thiserror::Error)]
#[error("a stored payload is malformed")]
struct MalformedPayload;

fn decode_payload(bytes: &[u8]) -> Result<Payload, MalformedPayload> {
    match bytes.split_first() {
        Some((b'T', text)) => std::str::from_utf8(text)
            .map(|t| Payload::Text(t.to_owned()))
            .map_err(|_| MalformedPayload),
        Some((b'P', rest)) => {
            let (len, rest) = rest.split_first_chunk::<4>().ok_or(MalformedPayload)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| MalformedPayload)?;
            let (head, data) = rest.split_at_checked(len).ok_or(MalformedPayload)?;
            let head: PushHead = serde_json::from_slice(head).map_err(|_| MalformedPayload)?;
            Ok(Payload::Push(PushMessage {
                channel_id: head.channel_id.into_owned(),
                data: bytes::Bytes::copy_from_slice(data),
                encoding: head.encoding,
            }))
        }
        _ => Err(MalformedPayload),
    }
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

/// Creates every table, so that reads of a new file find them, and brings a file of an
/// earlier layout to this one ([`SCHEMA`]) in the same transaction.
pub(crate) fn create_all(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(unavailable)?;
    for table in [
        UAS,
        APPS,
        REGISTRATIONS,
        NOTIFICATIONS,
        PAYLOADS,
        DELIVERIES,
    ] {
        txn.open_table(table).map_err(unavailable)?;
    }
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let version = meta
            .get("schema")
            .map_err(unavailable)?
            .map(|v| v.value().to_owned());
        match version.as_deref() {
            Some(SCHEMA) => {}
            None => {
                upgrade(&txn)?;
                meta.insert("schema", SCHEMA).map_err(unavailable)?;
            }
            Some(other) => {
                return Err(StoreError::corrupt(
                    format!("the store's layout version {other:?}"),
                    UnknownSchema,
                ))
            }
        }
    }
    txn.commit().map_err(unavailable)
}

/// The file was written by a newer version of the server.
#[derive(Debug, thiserror::Error)]
#[error("unknown layout version (this server reads version {SCHEMA})")]
struct UnknownSchema;

/// Schema 1 to 2: moves every notification's payload out of its record into `payloads`.
fn upgrade(txn: &redb::WriteTransaction) -> StoreResult<()> {
    let mut notifications = txn.open_table(NOTIFICATIONS).map_err(unavailable)?;
    let mut payloads = txn.open_table(PAYLOADS).map_err(unavailable)?;
    let mut whole = Vec::new();
    for entry in notifications.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let record: WholeRecord = decode("notifications", k.value(), v.value())?;
        whole.push((k.value().to_owned(), record));
    }
    let corrupt = |e| StoreError::corrupt("a record to upgrade", e);
    for (
        key,
        WholeRecord {
            notification,
            state,
        },
    ) in whole
    {
        let (head, payload) = notification.split();
        let record = NotificationRecord { head, state };
        let record = serde_json::to_vec(&record).map_err(corrupt)?;
        let payload = encode_payload(&payload).map_err(corrupt)?;
        notifications
            .insert(key.as_str(), record.as_slice())
            .map_err(unavailable)?;
        payloads
            .insert(key.as_str(), payload.as_slice())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The notifications of `heads` with their payloads, read in one transaction. One that is
/// no longer stored (the purge removed it since the heads were read) is left out.
pub(crate) fn with_payloads(
    db: &Database,
    heads: Vec<NotificationHead>,
) -> StoreResult<Vec<Notification>> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(PAYLOADS).map_err(unavailable)?;
    let mut whole = Vec::with_capacity(heads.len());
    for head in heads {
        let Some(bytes) = table.get(head.message_id.as_str()).map_err(unavailable)? else {
            continue;
        };
        let payload = decode_payload(bytes.value()).map_err(|e| {
            StoreError::corrupt(format!("payload {:?}", head.message_id.as_str()), e)
        })?;
        whole.push(head.with_payload(payload));
    }
    Ok(whole)
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
            .insert(record.head.message_id.clone(), Some(record));
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

/// Why a group's changes were not committed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    #[error("the database failed")]
    Database(#[from] redb::Error),
    #[error("a record could not be encoded")]
    Encode(#[from] serde_json::Error),
    #[error("writing the store's log failed")]
    Log(#[source] std::io::Error),
}

impl CommitError {
    fn database(e: impl Into<redb::Error>) -> Self {
        CommitError::Database(e.into())
    }
}

/// `changes` as puts and removals, table by table: what the log records and
/// [`commit_ops`] writes. Removing a notification removes its payload too.
pub(crate) fn ops(changes: &Changes) -> Result<Vec<Op>, serde_json::Error> {
    let mut ops = Vec::new();
    let mut put = |table, key: &str, value: Option<Vec<u8>>| {
        ops.push(Op {
            table,
            key: key.to_owned(),
            value,
        })
    };
    for (ua, record) in &changes.uas {
        let value = record.as_ref().map(serde_json::to_vec).transpose()?;
        put(Table::Uas, ua.as_str(), value);
    }
    for (app, pbk) in &changes.apps {
        put(Table::Apps, app.as_str(), Some(serde_json::to_vec(pbk)?));
    }
    for ((app, ua), present) in &changes.registrations {
        let key = pair(app.as_str(), ua.as_str());
        put(Table::Registrations, &key, present.then(Vec::new));
    }
    for (id, record) in &changes.notifications {
        let value = record.as_ref().map(serde_json::to_vec).transpose()?;
        if value.is_none() {
            put(Table::Payloads, id.as_str(), None);
        }
        put(Table::Notifications, id.as_str(), value);
    }
    for (id, payload) in &changes.payloads {
        put(Table::Payloads, id.as_str(), Some(encode_payload(payload)?));
    }
    for (id, of) in &changes.deliveries {
        for (ua, record) in of {
            let value = record.as_ref().map(serde_json::to_vec).transpose()?;
            put(Table::Deliveries, &pair(id.as_str(), ua.as_str()), value);
        }
    }
    Ok(ops)
}

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match table {
        Table::Uas => UAS,
        Table::Apps => APPS,
        Table::Registrations => REGISTRATIONS,
        Table::Notifications => NOTIFICATIONS,
        Table::Payloads => PAYLOADS,
        Table::Deliveries => DELIVERIES,
    }
}

fn apply(txn: &WriteTransaction, ops: &[Op]) -> Result<(), redb::Error> {
    for run in ops.chunk_by(|a, b| a.table == b.table) {
        let mut table = txn.open_table(definition(run[0].table))?;
        for op in run {
            match &op.value {
                Some(value) => table.insert(op.key.as_str(), value.as_slice())?,
                None => table.remove(op.key.as_str())?,
            };
        }
    }
    Ok(())
}

/// Writes `ops` in one transaction, not synced to the disk: the log has them already, and
/// the next [`checkpoint`] syncs them. Nothing of them is in the file if it fails.
pub(crate) fn commit_ops(db: &Database, ops: &[Op]) -> Result<(), CommitError> {
    let mut txn = db.begin_write().map_err(CommitError::database)?;
    txn.set_durability(Durability::None)
        .map_err(CommitError::database)?;
    apply(&txn, ops)?;
    txn.commit().map_err(CommitError::database)
}

/// The sequence number of the last record of the log the file holds.
pub(crate) fn checkpointed(db: &Database) -> StoreResult<u64> {
    let txn = db.begin_read().map_err(unavailable)?;
    let meta = txn.open_table(META).map_err(unavailable)?;
    let Some(seq) = meta.get(LOG_KEY).map_err(unavailable)? else {
        return Ok(0);
    };
    seq.value()
        .parse()
        .map_err(|e| StoreError::corrupt("the store's log position", e))
}

/// A synced commit that holds every commit before it and records `seq` as the last record
/// of the log they include, after applying `replay` (records of the log that follow the last
/// checkpoint, at open).
pub(crate) fn checkpoint(db: &Database, replay: &[Vec<Op>], seq: u64) -> Result<(), CommitError> {
    let txn = db.begin_write().map_err(CommitError::database)?;
    for ops in replay {
        apply(&txn, ops)?;
    }
    txn.open_table(META)
        .map_err(CommitError::database)?
        .insert(LOG_KEY, seq.to_string().as_str())
        .map_err(CommitError::database)?;
    txn.commit().map_err(CommitError::database)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::{EpochMillis, EpochSecs};

    fn notification(payload: Payload) -> Notification {
        Notification {
            message_id: MessageId::new("0190a6b2c3d4e5f60718293a4b5c6d7e"),
            app_token: AppToken::new("app"),
            id: "a".into(),
            payload,
            ttl: 3600,
            timestamp: EpochSecs(1_700_000_000),
            expires_at: EpochSecs(1_700_003_600),
            priority: 4,
            created_at: EpochMillis(1),
        }
    }

    fn payloads() -> Vec<Payload> {
        let push = |data: &[u8], encoding| {
            Payload::Push(PushMessage {
                channel_id: "5b1c4a3e-7b0a-4c1e-9f6e-2d8c7a1b0e3f".into(),
                data: bytes::Bytes::copy_from_slice(data),
                encoding,
            })
        };
        vec![
            Payload::Text(String::new()),
            Payload::Text("héllo \0 wörld".into()),
            push(b"", None),
            push(
                &[0, 255, b'P', b'T', 1, 2, 3],
                Some(ContentEncoding::Aes128gcm),
            ),
            push(
                &[7; 4096],
                Some(ContentEncoding::Aesgcm {
                    encryption: "salt=abc".into(),
                    crypto_key: "dh=def".into(),
                }),
            ),
        ]
    }

    #[test]
    fn payloads_come_back_as_they_were_stored() {
        for payload in payloads() {
            let stored = encode_payload(&payload).unwrap();
            assert_eq!(decode_payload(&stored).unwrap(), payload);
        }
        let body = [9u8; 100];
        let stored = encode_payload(&payloads()[3]).unwrap();
        assert!(
            stored.len() < 100 + body.len(),
            "the body's bytes are stored as they are, not as text"
        );
    }

    #[test]
    fn a_malformed_payload_is_an_error_not_a_panic() {
        let good = encode_payload(&payloads()[4]).unwrap();
        for bad in [
            &b""[..],
            b"X",
            b"T\xff",
            b"P",
            b"P\0\0",
            b"P\0\0\0\x09{}",
            b"P\xff\xff\xff\xff{}",
            b"P\0\0\0\x02[]",
            &good[..7],
        ] {
            assert!(decode_payload(bad).is_err(), "{bad:?}");
        }
    }

    /// A file of schema 1 (payloads inside the notification records, no version) opens with
    /// every payload moved to its table, and opens again as schema 2.
    #[test]
    fn a_file_of_the_first_layout_is_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let stored: Vec<Notification> = payloads()
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Notification {
                message_id: MessageId::new(format!("m{i}")),
                ..notification(payload)
            })
            .collect();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(NOTIFICATIONS).unwrap();
                for n in &stored {
                    let record = serde_json::json!({
                        "notification": n, "replaced": false, "routed": true,
                    });
                    let bytes = serde_json::to_vec(&record).unwrap();
                    table
                        .insert(n.message_id.as_str(), bytes.as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let db = Database::create(&path).unwrap();
            create_all(&db).unwrap();
            let mem = load(&db).unwrap();
            assert_eq!(mem.notifications.len(), stored.len());
            let heads = stored.iter().map(Notification::head).collect();
            assert_eq!(with_payloads(&db, heads).unwrap(), stored);
            let txn = db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get("schema").unwrap().unwrap().value(), SCHEMA);
        }
    }

    #[test]
    fn a_file_of_an_unknown_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema", "99")
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(create_all(&db), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_payload_purged_meanwhile_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        create_all(&db).unwrap();
        let n = notification(Payload::Text("m".into()));
        assert_eq!(with_payloads(&db, vec![n.head()]).unwrap(), vec![]);
    }
}
