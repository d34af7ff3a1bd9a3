//! What a notification is, how notifications with the same AS id supersede one another, and
//! when one is still owed to a UA. Every store keeps these rules by translating them into its
//! own storage; none writes its own version of them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{AppToken, EpochMillis, EpochSecs, MessageId};

/// A notification as accepted by ns-as and kept until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub message_id: MessageId,
    pub app_token: AppToken,
    /// The AS's own id: what a newer notification of the same app replaces it by. For a Web
    /// Push message, its `Topic`, or else its message id.
    pub id: String,
    pub payload: Payload,
    pub ttl: u32,
    pub timestamp: EpochSecs,
    pub expires_at: EpochSecs,
    pub priority: u8,
    /// When it was accepted; orders notifications oldest first.
    pub created_at: EpochMillis,
}

impl Notification {
    /// `ttl: 0` notifications go to the UAs connected right now and are never stored.
    pub fn is_ephemeral(&self) -> bool {
        self.ttl == 0
    }

    /// Past its TTL ([`NotificationHead::is_expired`]).
    pub fn is_expired(&self, now: EpochSecs) -> bool {
        expired(self.ttl, self.expires_at, now)
    }

    /// Where it stands among the notifications with the same app and AS id.
    pub fn recency(&self) -> Recency {
        Recency {
            created_at: self.created_at,
            message_id: self.message_id.clone(),
        }
    }

    /// Everything but the payload.
    pub fn head(&self) -> NotificationHead {
        NotificationHead {
            message_id: self.message_id.clone(),
            app_token: self.app_token.clone(),
            id: self.id.clone(),
            ttl: self.ttl,
            timestamp: self.timestamp,
            expires_at: self.expires_at,
            priority: self.priority,
            created_at: self.created_at,
        }
    }

    /// The head and the payload, apart: a store may keep them in different places.
    pub fn split(self) -> (NotificationHead, Payload) {
        let Notification {
            message_id,
            app_token,
            id,
            payload,
            ttl,
            timestamp,
            expires_at,
            priority,
            created_at,
        } = self;
        let head = NotificationHead {
            message_id,
            app_token,
            id,
            ttl,
            timestamp,
            expires_at,
            priority,
            created_at,
        };
        (head, payload)
    }

    /// What a UA is sent for it, in the dialect of its payload: a notification object of
    /// PROTOCOL.md §2 with its notify URL, or a Web Push `notification` message.
    pub fn to_frame(&self, notify_base_url: &str) -> Frame<'_> {
        match &self.payload {
            Payload::Text(message) => Frame::Telefonica(NotificationFrame {
                message_type: "notification",
                message_id: self.message_id.as_str(),
                id: &self.id,
                url: notify_url(notify_base_url, &self.app_token),
                message,
                ttl: self.ttl,
                timestamp: self.timestamp.as_i64(),
                priority: self.priority,
            }),
            Payload::Push(push) => Frame::WebPush(PushFrame {
                message_type: "notification",
                channel_id: &push.channel_id,
                version: self.message_id.as_str(),
                data: (!push.data.is_empty()).then(|| URL_SAFE_NO_PAD.encode(&push.data)),
                headers: push.encoding.as_ref(),
                ttl: self.ttl,
            }),
        }
    }
}

/// A notification without its payload: what the rules read, and what a store that keeps
/// payloads apart holds in its indexes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationHead {
    pub message_id: MessageId,
    pub app_token: AppToken,
    pub id: String,
    pub ttl: u32,
    pub timestamp: EpochSecs,
    pub expires_at: EpochSecs,
    pub priority: u8,
    pub created_at: EpochMillis,
}

impl NotificationHead {
    /// Past its TTL: no longer delivered, and removed by the purge. An ephemeral
    /// notification never expires, as it is never kept.
    pub fn is_expired(&self, now: EpochSecs) -> bool {
        expired(self.ttl, self.expires_at, now)
    }

    /// Where it stands among the notifications with the same app and AS id.
    pub fn recency(&self) -> Recency {
        Recency {
            created_at: self.created_at,
            message_id: self.message_id.clone(),
        }
    }

    /// The whole notification again.
    pub fn with_payload(self, payload: Payload) -> Notification {
        let NotificationHead {
            message_id,
            app_token,
            id,
            ttl,
            timestamp,
            expires_at,
            priority,
            created_at,
        } = self;
        Notification {
            message_id,
            app_token,
            id,
            payload,
            ttl,
            timestamp,
            expires_at,
            priority,
            created_at,
        }
    }
}

/// The expiry rule: `ttl: 0` notifications are never kept, so never expire.
fn expired(ttl: u32, expires_at: EpochSecs, now: EpochSecs) -> bool {
    ttl != 0 && expires_at <= now
}

/// What a notification carries, as its sender gave it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// The `message` of a Telefónica notification (PROTOCOL.md §3).
    Text(String),
    /// The body of a Web Push message (WEBPUSH.md §3), for one subscription.
    Push(PushMessage),
}

/// Payloads are what the senders wrote to their users: never shown in logs.
impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Text(m) => write!(f, "Text({} bytes)", m.len()),
            Payload::Push(p) => write!(f, "Push({}, {} bytes)", p.channel_id, p.data.len()),
        }
    }
}

/// A Web Push message: the body bytes exactly as the sender posted them (encrypted for the
/// UA; the server never reads them) and the headers the UA needs to decrypt them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMessage {
    /// The subscription's channel, as the UA named it in `register`.
    pub channel_id: String,
    /// Base64url in text formats (the broker's JSON), bytes in binary ones.
    #[serde(with = "binary")]
    pub data: Bytes,
    /// Absent only for an empty body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ContentEncoding>,
}

/// The `Content-Encoding` of a Web Push body, with the headers relayed for it; serialized as
/// the `headers` object of the `notification` message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "lowercase")]
pub enum ContentEncoding {
    /// RFC 8291: everything the UA needs is in the body.
    Aes128gcm,
    /// The legacy draft encoding: salt and sender key travel in two headers.
    Aesgcm {
        encryption: String,
        crypto_key: String,
    },
}

/// Bytes as base64url in human-readable formats, as bytes otherwise.
mod binary {
    use super::*;

    pub(super) fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&URL_SAFE_NO_PAD.encode(data))
        } else {
            s.serialize_bytes(data)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)
        } else {
            Vec::<u8>::deserialize(d).map(Bytes::from)
        }
    }
}

/// What a store knows of a notification beyond the notification itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationState {
    /// A newer notification with the same app and AS id exists.
    pub replaced: bool,
    /// Its pending deliveries have been created (it reached the monitor).
    pub routed: bool,
}

impl NotificationState {
    /// Stored but not yet routed, and still worth routing: a replaced notification never is.
    pub fn needs_routing(self) -> bool {
        !self.routed && !self.replaced
    }

    /// May be sent to the UAs it is pending for: not replaced and not expired.
    pub fn is_deliverable(self, n: &NotificationHead, now: EpochSecs) -> bool {
        !self.replaced && !n.is_expired(now)
    }
}

/// The order of notifications with the same app and AS id: the newest wins. Ties on the
/// creation time are broken by the message id, a UUIDv7 that sorts by time, so that every
/// store and every process picks the same winner whatever order it saw them in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recency {
    pub created_at: EpochMillis,
    pub message_id: MessageId,
}

/// Of notifications sharing one app and AS id, every one but the newest: those are replaced.
/// `items` carry each notification's recency and whatever the caller needs back.
pub fn superseded<T>(items: impl IntoIterator<Item = (Recency, T)>) -> Vec<T> {
    let mut items: Vec<(Recency, T)> = items.into_iter().collect();
    let Some(newest) = items
        .iter()
        .enumerate()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0))
        .map(|(i, _)| i)
    else {
        return Vec::new();
    };
    items.swap_remove(newest);
    items.into_iter().map(|(_, item)| item).collect()
}

/// `{base}/notify/{appToken}`, the URL `register/wa` returns.
pub fn notify_url(base: &str, app_token: &AppToken) -> String {
    format!("{}/notify/{}", base.trim_end_matches('/'), app_token)
}

/// A notification as its UA receives it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Frame<'a> {
    /// An object of the array a Telefónica UA receives (PROTOCOL.md §2).
    Telefonica(NotificationFrame<'a>),
    /// A whole Web Push message (WEBPUSH.md §2).
    WebPush(PushFrame<'a>),
}

impl Frame<'_> {
    /// The text frame that sends it alone: a Telefónica notification in an array of one.
    pub fn to_text(&self) -> Result<String, serde_json::Error> {
        match self {
            Frame::Telefonica(f) => serde_json::to_string(&[f]),
            Frame::WebPush(f) => serde_json::to_string(f),
        }
    }
}

/// A Web Push `notification` message.
#[derive(Debug, Serialize)]
pub struct PushFrame<'a> {
    #[serde(rename = "messageType")]
    pub message_type: &'static str,
    #[serde(rename = "channelID")]
    pub channel_id: &'a str,
    pub version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a ContentEncoding>,
    pub ttl: u32,
}

/// One notification object as UAs receive it (§2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFrame<'a> {
    pub message_type: &'static str,
    pub message_id: &'a str,
    pub id: &'a str,
    pub url: String,
    pub message: &'a str,
    pub ttl: u32,
    pub timestamp: i64,
    pub priority: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recency(at: i64, id: &str) -> Recency {
        Recency {
            created_at: EpochMillis(at),
            message_id: MessageId::new(id),
        }
    }

    #[test]
    fn the_newest_wins_and_ties_go_to_the_larger_message_id() {
        let items = vec![
            (recency(5, "b"), "b5"),
            (recency(7, "a"), "a7"),
            (recency(7, "c"), "c7"),
            (recency(1, "z"), "z1"),
        ];
        let mut old = superseded(items);
        old.sort();
        assert_eq!(old, vec!["a7", "b5", "z1"]);
        assert!(superseded(Vec::<(Recency, ())>::new()).is_empty());
        assert!(superseded(vec![(recency(1, "a"), ())]).is_empty());
    }

    fn notification(ttl: u32, expires_at: i64) -> Notification {
        Notification {
            expires_at: EpochSecs(expires_at),
            ..crate::test_support::notification(ttl, 4)
        }
    }

    #[test]
    fn expiry_and_deliverability() {
        let n = notification(10, 100);
        assert!(!n.is_expired(EpochSecs(99)));
        assert!(n.is_expired(EpochSecs(100)));
        assert!(!notification(0, 0).is_expired(EpochSecs(1_000)));

        let (head, payload) = n.clone().split();
        assert_eq!(
            head.is_expired(EpochSecs(100)),
            n.is_expired(EpochSecs(100))
        );
        assert_eq!(head.recency(), n.recency());
        assert_eq!(
            head.clone().with_payload(payload),
            n,
            "split and joined back"
        );
        let n = head;
        let live = NotificationState::default();
        assert!(live.is_deliverable(&n, EpochSecs(99)));
        assert!(!live.is_deliverable(&n, EpochSecs(100)));
        let replaced = NotificationState {
            replaced: true,
            routed: true,
        };
        assert!(!replaced.is_deliverable(&n, EpochSecs(0)));
        assert!(live.needs_routing());
        assert!(!replaced.needs_routing());
    }

    #[test]
    fn push_frames_carry_the_body_as_base64url_and_the_encoding_headers() {
        let mut n = notification(10, 100);
        n.payload = Payload::Push(PushMessage {
            channel_id: "c".into(),
            data: Bytes::from_static(&[0xfb, 0xff, 0x00]),
            encoding: Some(ContentEncoding::Aesgcm {
                encryption: "salt=s".into(),
                crypto_key: "dh=k".into(),
            }),
        });
        let frame = serde_json::to_value(n.to_frame("http://h:1/")).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"messageType": "notification", "channelID": "c", "version": "m",
                "data": "-_8A", "ttl": 10,
                "headers": {"encoding": "aesgcm", "encryption": "salt=s", "crypto_key": "dh=k"}})
        );
        let back: Notification = serde_json::from_slice(&serde_json::to_vec(&n).unwrap()).unwrap();
        assert_eq!(back, n, "bytes survive the broker's JSON");
        assert!(!format!("{n:?}").contains("salt"), "no payload in logs");

        n.payload = Payload::Push(PushMessage {
            channel_id: "c".into(),
            data: Bytes::new(),
            encoding: None,
        });
        let frame = serde_json::to_value(n.to_frame("http://h:1/")).unwrap();
        assert!(frame.get("data").is_none() && frame.get("headers").is_none());
        let aes128gcm = serde_json::to_value(ContentEncoding::Aes128gcm).unwrap();
        assert_eq!(aes128gcm, serde_json::json!({"encoding": "aes128gcm"}));
    }

    #[test]
    fn frames_carry_the_notify_url() {
        let n = notification(10, 100);
        let frame = serde_json::to_value(n.to_frame("http://h:1/")).unwrap();
        assert_eq!(frame["url"], "http://h:1/notify/t");
        assert_eq!(frame["messageType"], "notification");
        assert_eq!(frame["messageId"], "m");
    }
}
