//! The Web Push dialect of the UA side (WEBPUSH.md §2), without I/O: client messages read
//! and checked, what each leads to decided, and the server's messages built.

use common::crypto::Secret;
use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::model::{AppToken, MessageId, UaId};
use common::vapid::PublicKey;
use common::webpush::{self, ChannelId, Subscription, MAX_UAID};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Most updates taken from one `ack`.
const MAX_UPDATES: usize = 1000;

/// A client message, read.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientMessage {
    Hello {
        uaid: Option<String>,
    },
    Register {
        channel_id: String,
        key: Option<String>,
    },
    Unregister {
        channel_id: String,
    },
    /// An `ack` or a `nack`: how the UA settled each message.
    Settle(Vec<(MessageId, DeliveryStatus)>),
    /// `{}`.
    Ping,
    BroadcastSubscribe,
}

/// Why a client message ends the connection.
pub(crate) type Malformed = &'static str;

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "messageType")]
    message_type: Option<String>,
    uaid: Option<Value>,
    #[serde(rename = "channelID")]
    channel_id: Option<String>,
    key: Option<String>,
    updates: Option<Vec<RawUpdate>>,
    version: Option<String>,
}

#[derive(Deserialize)]
struct RawUpdate {
    version: Option<String>,
    code: Option<Value>,
}

/// Whether a first frame speaks this dialect: a JSON object with `messageType`.
pub(crate) fn is_webpush(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with('{')
        && serde_json::from_str::<Map<String, Value>>(text)
            .is_ok_and(|m| m.contains_key("messageType"))
}

/// Reads one client message.
pub(crate) fn parse(text: &str) -> Result<ClientMessage, Malformed> {
    let object: Map<String, Value> =
        serde_json::from_str(text).map_err(|_| "a message must be a JSON object")?;
    if object.is_empty() {
        return Ok(ClientMessage::Ping);
    }
    let raw: Raw = serde_json::from_value(Value::Object(object))
        .map_err(|_| "a field of the message has the wrong type")?;
    let kind = raw
        .message_type
        .as_deref()
        .ok_or("messageType is missing")?;
    match kind.to_ascii_lowercase().as_str() {
        "hello" => {
            let uaid = match raw.uaid {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            };
            Ok(ClientMessage::Hello { uaid })
        }
        "register" => Ok(ClientMessage::Register {
            channel_id: raw.channel_id.ok_or("register needs a channelID")?,
            key: raw.key,
        }),
        "unregister" => Ok(ClientMessage::Unregister {
            channel_id: raw.channel_id.ok_or("unregister needs a channelID")?,
        }),
        "ack" => {
            let updates = raw.updates.ok_or("ack needs updates")?;
            if updates.len() > MAX_UPDATES {
                return Err("too many updates in one ack");
            }
            Ok(ClientMessage::Settle(
                updates
                    .into_iter()
                    .filter_map(|u| Some((MessageId::new(u.version?), ack_status(u.code.as_ref()))))
                    .collect(),
            ))
        }
        "nack" => {
            let version = raw.version.ok_or("nack needs a version")?;
            Ok(ClientMessage::Settle(vec![(
                MessageId::new(version),
                DeliveryStatus::Rejected,
            )]))
        }
        "broadcast_subscribe" => Ok(ClientMessage::BroadcastSubscribe),
        _ => Err("unknown messageType"),
    }
}

/// What an ack's code says: 100 (or none, from older UAs) delivered; 101 and 102 not.
fn ack_status(code: Option<&Value>) -> DeliveryStatus {
    match code.and_then(Value::as_u64) {
        Some(101 | 102) => DeliveryStatus::Rejected,
        _ => DeliveryStatus::Acked,
    }
}

/// The UA a `hello` is for: the one its uaid names if the server issued it, else a new one.
/// Returns the uaid to answer with and its UA.
pub(crate) fn hello_identity(secret: &Secret, uaid: Option<&str>) -> (String, UaId) {
    if let Some(uaid) = uaid.filter(|u| u.len() <= MAX_UAID) {
        if let Some(ua) = webpush::verify_uaid(secret, uaid) {
            return (uaid.to_owned(), ua);
        }
    }
    let uaid = webpush::new_uaid(secret);
    let ua = common::crypto::ua_id(&uaid);
    (uaid, ua)
}

/// A checked `register` or `unregister`: the subscription it names.
#[derive(Debug, PartialEq)]
pub(crate) struct Named {
    pub(crate) channel_id: String,
    pub(crate) subscription: Subscription,
    pub(crate) app_token: AppToken,
}

/// Checks the channel and key of a `register` (or just the channel, for `unregister`);
/// `None` when either is not valid, which the UA is answered with status 400.
pub(crate) fn name_subscription(
    secret: &Secret,
    ua: &UaId,
    channel_id: &str,
    key: Option<&str>,
) -> Option<Named> {
    let channel = ChannelId::parse(channel_id)?;
    let key = match key {
        Some(k) => Some(PublicKey::from_base64(k).ok()?),
        None => None,
    };
    let subscription = Subscription::new(ua, channel, key.as_ref().map(PublicKey::as_bytes))?;
    Some(Named {
        channel_id: channel_id.to_owned(),
        app_token: subscription.app_token(secret),
        subscription,
    })
}

/// The delivery changes an `ack` or `nack` makes.
pub(crate) fn settlements(
    ua: &UaId,
    settled: Vec<(MessageId, DeliveryStatus)>,
) -> Vec<DeliveryUpdate> {
    settled
        .into_iter()
        .map(|(message_id, status)| DeliveryUpdate {
            message_id,
            ua: ua.clone(),
            status,
        })
        .collect()
}

pub(crate) fn hello_reply(uaid: &str) -> String {
    json!({
        "messageType": "hello",
        "uaid": uaid,
        "status": 200,
        "use_webpush": true,
        "broadcasts": {},
    })
    .to_string()
}

pub(crate) fn register_reply(channel_id: &str, status: u16, endpoint: Option<&str>) -> String {
    let mut reply = json!({
        "messageType": "register",
        "channelID": channel_id,
        "status": status,
    });
    if let Some(endpoint) = endpoint {
        reply["pushEndpoint"] = json!(endpoint);
    }
    reply.to_string()
}

pub(crate) fn unregister_reply(channel_id: &str, status: u16) -> String {
    json!({
        "messageType": "unregister",
        "channelID": channel_id,
        "status": status,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_is_told_by_message_type() {
        assert!(is_webpush(r#"{"messageType":"hello","use_webpush":true}"#));
        assert!(!is_webpush(r#"{"command":"register/ua","data":{}}"#));
        assert!(!is_webpush("PING"));
        assert!(!is_webpush("{}"));
        assert!(!is_webpush("{"));
    }

    #[test]
    fn client_messages() {
        assert_eq!(parse("{}"), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(r#"{"messageType":"hello","uaid":"","use_webpush":true,"broadcasts":{}}"#),
            Ok(ClientMessage::Hello { uaid: None })
        );
        assert_eq!(
            parse(r#"{"messageType":"hello","uaid":"u","channelIDs":[]}"#),
            Ok(ClientMessage::Hello {
                uaid: Some("u".into())
            })
        );
        assert_eq!(
            parse(r#"{"messageType":"register","channelID":"c","key":"k"}"#),
            Ok(ClientMessage::Register {
                channel_id: "c".into(),
                key: Some("k".into())
            })
        );
        assert_eq!(
            parse(r#"{"messageType":"unregister","channelID":"c","code":200}"#),
            Ok(ClientMessage::Unregister {
                channel_id: "c".into()
            })
        );
        let ack = r#"{"messageType":"ack","updates":[
            {"channelID":"c","version":"a","code":100},
            {"channelID":"c","version":"b","code":101},
            {"channelID":"c","version":"d","code":102},
            {"channelID":"c","version":"e"}]}"#;
        assert_eq!(
            parse(ack),
            Ok(ClientMessage::Settle(vec![
                (MessageId::new("a"), DeliveryStatus::Acked),
                (MessageId::new("b"), DeliveryStatus::Rejected),
                (MessageId::new("d"), DeliveryStatus::Rejected),
                (MessageId::new("e"), DeliveryStatus::Acked),
            ]))
        );
        assert_eq!(
            parse(r#"{"messageType":"nack","version":"a","code":302}"#),
            Ok(ClientMessage::Settle(vec![(
                MessageId::new("a"),
                DeliveryStatus::Rejected
            )]))
        );
        assert_eq!(
            parse(r#"{"messageType":"broadcast_subscribe","broadcasts":{}}"#),
            Ok(ClientMessage::BroadcastSubscribe)
        );
        for bad in [
            "[]",
            "x",
            r#"{"messageType":"what"}"#,
            r#"{"messageType":"register"}"#,
            r#"{"messageType":"ack"}"#,
            r#"{"messageType":5}"#,
            r#"{"uaid":"x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_forged_uaid_gets_a_new_one() {
        let secret = Secret::new("0123456789abcdef");
        let (fresh, ua) = hello_identity(&secret, None);
        assert_eq!(hello_identity(&secret, Some(&fresh)), (fresh.clone(), ua));
        let forged = webpush::new_uaid(&Secret::new("another secret!!"));
        let (given, _) = hello_identity(&secret, Some(&forged));
        assert_ne!(given, forged);
        let (given, _) = hello_identity(&secret, Some(&"x".repeat(500)));
        assert_eq!(given.len(), 43);
    }

    #[test]
    fn register_checks_the_channel_and_the_key() {
        let secret = Secret::new("0123456789abcdef");
        let ua = common::crypto::ua_id("u");
        let channel = "5d0b5a1e-8a4c-4a43-9f3e-3a1b2c3d4e5f";
        let named = name_subscription(&secret, &ua, channel, None).expect("a UUID");
        assert_eq!(named.subscription.ua(), ua);
        assert_eq!(named.channel_id, channel);
        assert!(name_subscription(&secret, &ua, "not-a-uuid", None).is_none());
        assert!(name_subscription(&secret, &ua, channel, Some("AAAA")).is_none());
    }
}
