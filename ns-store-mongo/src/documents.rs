//! The documents of each collection, their keys, and their conversion to and from the
//! model.

use std::borrow::Borrow;

use common::delivery::DeliveryStatus;
use common::model::{
    AppToken, ConnId, EpochMillis, EpochSecs, Interface, Live, MessageId, NodeId, UaId, UaRoute,
};
use common::notification::{
    ContentEncoding, Notification, NotificationState, Payload, PushMessage,
};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, DateTime};
use ns_store::{StoreError, StoreResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UaDoc {
    #[serde(rename = "_id")]
    pub(crate) ua: UaId,
    /// With `conn`, the live connection: both set or both null.
    pub(crate) node: Option<NodeId>,
    pub(crate) conn: Option<ConnId>,
    pub(crate) interface: Option<InterfaceDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InterfaceDoc {
    pub(crate) ip: String,
    pub(crate) port: i32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AppDoc {
    #[serde(rename = "_id")]
    pub(crate) app_token: AppToken,
    pub(crate) pbk: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RegistrationDoc {
    #[serde(rename = "_id")]
    pub(crate) key: String,
    pub(crate) app_token: AppToken,
    pub(crate) ua: UaId,
}

/// A notification with its [`NotificationState`] (`replaced`, `routed`).
///
/// One more field is not part of this type: `spent_check`, present (and `true`) only while
/// the purge has to look at whether the notification is spent (see [`Collections::purge_spent`]).
/// Absent on almost every document, it costs them nothing in its sparse index.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NotificationDoc {
    #[serde(rename = "_id")]
    pub(crate) message_id: MessageId,
    pub(crate) app_token: AppToken,
    pub(crate) id: String,
    /// `app_token/id` in one field: the replacing of a whole batch is then one `$in` query
    /// on one index, whatever apps the batch holds.
    #[serde(default)]
    pub(crate) app_id: String,
    /// The payload of a Telefónica notification ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// ... or of a Web Push message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) push: Option<PushDoc>,
    pub(crate) ttl: i64,
    pub(crate) timestamp: EpochSecs,
    pub(crate) expires_at: EpochSecs,
    pub(crate) priority: i32,
    pub(crate) created_at: EpochMillis,
    pub(crate) replaced: bool,
    pub(crate) routed: bool,
    /// `expires_at` as a BSON date, the only type a TTL index acts on.
    pub(crate) expire_at: DateTime,
}

/// A Web Push payload: the body as BSON binary, the encoding and its relayed headers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PushDoc {
    pub(crate) channel_id: String,
    pub(crate) data: Binary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encryption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) crypto_key: Option<String>,
}

/// A stored encoding that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown content encoding {0:?}")]
pub(crate) struct UnknownEncoding(String);

impl PushDoc {
    fn from_message(p: &PushMessage) -> PushDoc {
        let (encoding, encryption, crypto_key) = match &p.encoding {
            None => (None, None, None),
            Some(ContentEncoding::Aes128gcm) => (Some("aes128gcm"), None, None),
            Some(ContentEncoding::Aesgcm {
                encryption,
                crypto_key,
            }) => (
                Some("aesgcm"),
                Some(encryption.clone()),
                Some(crypto_key.clone()),
            ),
        };
        PushDoc {
            channel_id: p.channel_id.clone(),
            data: Binary {
                subtype: BinarySubtype::Generic,
                bytes: p.data.to_vec(),
            },
            encoding: encoding.map(str::to_owned),
            encryption,
            crypto_key,
        }
    }

    fn into_message(self) -> Result<PushMessage, UnknownEncoding> {
        let encoding = match (self.encoding.as_deref(), self.encryption, self.crypto_key) {
            (None, _, _) => None,
            (Some("aes128gcm"), _, _) => Some(ContentEncoding::Aes128gcm),
            (Some("aesgcm"), Some(encryption), Some(crypto_key)) => Some(ContentEncoding::Aesgcm {
                encryption,
                crypto_key,
            }),
            (Some(other), _, _) => return Err(UnknownEncoding(other.to_owned())),
        };
        Ok(PushMessage {
            channel_id: self.channel_id,
            data: self.data.bytes.into(),
            encoding,
        })
    }
}

/// A notification document with neither a message nor a push payload.
#[derive(Debug, thiserror::Error)]
#[error("a notification needs a message or a push payload")]
pub(crate) struct NoPayload;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeliveryDoc {
    /// [`delivery_key`].
    #[serde(rename = "_id")]
    pub(crate) key: String,
    pub(crate) message_id: MessageId,
    /// The notification's: what an app is still owed is counted on these. Absent from
    /// deliveries written before the quota, which then do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) app_token: Option<AppToken>,
    pub(crate) ua: UaId,
    pub(crate) status: DeliveryStatus,
    pub(crate) at: EpochSecs,
    /// The notification's, so that a UA's deliveries can be read in its order.
    pub(crate) created_at: EpochMillis,
    /// The notification's `expire_at`, whatever the state: the TTL index applies the expiry
    /// rule only. (Versions before the purge policy in `common` set it to `at` + 1 hour on
    /// an ack; such deliveries just go at that time.)
    pub(crate) expire_at: DateTime,
}

/// The identity and age of a notification, all that replacing needs.
#[derive(Debug, Deserialize)]
pub(crate) struct NotificationKey {
    #[serde(rename = "_id")]
    pub(crate) message_id: MessageId,
    pub(crate) app_id: String,
    pub(crate) created_at: EpochMillis,
    pub(crate) replaced: bool,
}

/// Whether a notification has been replaced, all that routing needs to settle it.
#[derive(Debug, Deserialize)]
pub(crate) struct Liveness {
    #[serde(rename = "_id")]
    pub(crate) id: MessageId,
    #[serde(default)]
    pub(crate) replaced: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct IdOnly {
    #[serde(rename = "_id")]
    pub(crate) id: MessageId,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageRef {
    pub(crate) message_id: MessageId,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExpiryRef {
    pub(crate) expires_at: EpochSecs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UaRef {
    pub(crate) ua: UaId,
}

/// A delivery and its notification, all that the purge of deliveries needs.
#[derive(Debug, Deserialize)]
pub(crate) struct DeliveryRef {
    #[serde(rename = "_id")]
    pub(crate) key: String,
    pub(crate) message_id: MessageId,
}

/// A delivery's state, all that routing needs to leave it as it is.
#[derive(Debug, Deserialize)]
pub(crate) struct DeliveryState {
    pub(crate) message_id: MessageId,
    pub(crate) ua: UaId,
    pub(crate) status: DeliveryStatus,
}

/// How many outstanding deliveries a UA has.
#[derive(Debug, Deserialize)]
pub(crate) struct Owed {
    #[serde(rename = "_id")]
    pub(crate) ua: UaId,
    pub(crate) owed: i64,
}

/// How many deliveries a notification still has.
#[derive(Debug, Deserialize)]
pub(crate) struct DeliveriesLeft {
    #[serde(rename = "_id")]
    pub(crate) message_id: MessageId,
    pub(crate) left: i64,
}

/// The key of a notification's app and AS id (an appToken holds no `/`).
pub(crate) fn app_id(app_token: &AppToken, id: &str) -> String {
    format!("{app_token}/{id}")
}

pub(crate) fn delivery_key(message_id: &MessageId, ua: &UaId) -> String {
    format!("{message_id}:{ua}")
}

pub(crate) fn registration_key(app_token: &AppToken, ua: &UaId) -> String {
    format!("{app_token}:{ua}")
}

/// Epoch seconds as a BSON date, saturating rather than overflowing on absurd values.
pub(crate) fn date(secs: EpochSecs) -> DateTime {
    DateTime::from_millis(secs.as_i64().saturating_mul(1000))
}

/// Ids as the strings a `$in` takes.
pub(crate) fn strs<T: Borrow<str>>(ids: &[T]) -> Vec<&str> {
    ids.iter().map(Borrow::borrow).collect()
}

pub(crate) fn corrupt(
    what: &str,
    key: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::corrupt(format!("{what} {key}"), e)
}

/// A UA document with only one of `node` and `conn`.
#[derive(Debug, thiserror::Error)]
#[error("a live connection needs both a node and a connection id")]
pub(crate) struct HalfLive;

impl UaDoc {
    pub(crate) fn from_route(route: &UaRoute) -> UaDoc {
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

    pub(crate) fn into_route(self) -> StoreResult<UaRoute> {
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
    pub(crate) fn from_notification(n: &Notification) -> NotificationDoc {
        NotificationDoc {
            message_id: n.message_id.clone(),
            app_token: n.app_token.clone(),
            id: n.id.clone(),
            app_id: app_id(&n.app_token, &n.id),
            message: match &n.payload {
                Payload::Text(m) => Some(m.clone()),
                Payload::Push(_) => None,
            },
            push: match &n.payload {
                Payload::Text(_) => None,
                Payload::Push(p) => Some(PushDoc::from_message(p)),
            },
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

    pub(crate) fn state(&self) -> NotificationState {
        NotificationState {
            replaced: self.replaced,
            routed: self.routed,
        }
    }

    pub(crate) fn into_notification(self) -> StoreResult<Notification> {
        let payload = match (self.message, self.push) {
            (Some(m), _) => Payload::Text(m),
            (None, Some(p)) => Payload::Push(
                p.into_message()
                    .map_err(|e| corrupt("notification", self.message_id.as_str(), e))?,
            ),
            (None, None) => {
                return Err(corrupt("notification", self.message_id.as_str(), NoPayload))
            }
        };
        Ok(Notification {
            ttl: u32::try_from(self.ttl)
                .map_err(|e| corrupt("notification", self.message_id.as_str(), e))?,
            priority: u8::try_from(self.priority)
                .map_err(|e| corrupt("notification", self.message_id.as_str(), e))?,
            message_id: self.message_id,
            app_token: self.app_token,
            id: self.id,
            payload,
            timestamp: self.timestamp,
            expires_at: self.expires_at,
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::Bson;

    #[test]
    fn push_payloads_are_stored_as_bson_binary() {
        let n = Notification {
            message_id: MessageId::new("m"),
            app_token: AppToken::new("t"),
            id: "a".into(),
            payload: Payload::Push(PushMessage {
                channel_id: "c".into(),
                data: vec![0, 255, 1].into(),
                encoding: Some(ContentEncoding::Aesgcm {
                    encryption: "salt=s".into(),
                    crypto_key: "dh=k".into(),
                }),
            }),
            ttl: 10,
            timestamp: EpochSecs(0),
            expires_at: EpochSecs(10),
            priority: 2,
            created_at: EpochMillis(0),
        };
        let doc = mongodb::bson::to_document(&NotificationDoc::from_notification(&n))
            .expect("a document");
        let push = doc.get_document("push").expect("a push payload");
        match push.get("data") {
            Some(Bson::Binary(b)) => assert_eq!(b.bytes, vec![0, 255, 1]),
            other => panic!("not binary: {other:?}"),
        }
        assert_eq!(push.get_str("encoding").ok(), Some("aesgcm"));
        assert!(!doc.contains_key("message"));
        let back: NotificationDoc = mongodb::bson::from_document(doc).expect("read back");
        assert_eq!(back.into_notification().expect("a notification"), n);
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
}
