//! The two dialects the benchmark speaks, and only where they differ: setting up a UA and
//! bringing it back, the sender's request, and reading and acking what a UA receives.
//! The scenarios are written once, over [`Client`].
//!
//! - Telefónica (PROTOCOL.md): `GET /token`, `register/ua`, `register/wa`, `POST /notify`
//!   with a JSON body; the send time travels in `message`.
//! - Web Push (WEBPUSH.md): Firefox's WebSocket messages (`hello`, `register`,
//!   `notification`, `ack`) and RFC 8030 `POST {pushEndpoint}` with an opaque body, optionally
//!   signed with VAPID (RFC 8292). The send time travels in the body's first bytes, so the
//!   same run works against any Web Push service (Mozilla's autopush too): nothing but the
//!   standard is used.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use clap::ValueEnum;
use common::model::EpochSecs;
use common::vapid::PublicKey;
use p256::ecdsa::SigningKey;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::Url;
use crate::ua::{self, Socket};

/// Lifetime of the benchmark's notifications: long enough for any run, short enough that
/// the server forgets them soon after.
const NOTIFICATION_TTL: u64 = 3_600;

/// Bytes of a Web Push body that carry the send time and the sequence number.
const STAMP_BYTES: usize = 16;

/// How long a VAPID JWT is valid, and how long before its expiry a new one is signed.
const VAPID_VALID_SECS: i64 = 12 * 3_600;
const VAPID_RENEW_SECS: i64 = 3_600;

/// Who the sender says it is in its VAPID JWT (`sub`).
const VAPID_SUBJECT: &str = "mailto:ns-bench@example.com";

/// What a Web Push server is given to route messages before UAs come back: RFC 8030 has no
/// way to ask whether a message is pending for its UA (a `201` says it is stored).
const WEBPUSH_ROUTE_WAIT: Duration = Duration::from_secs(1);

/// The protocol the UAs and the sender speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dialect {
    /// PROTOCOL.md: uatokens, watokens and `POST /notify`.
    Telefonica,
    /// Web Push: Firefox's WebSocket messages and RFC 8030 push endpoints.
    Webpush,
}

impl Dialect {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dialect::Telefonica => "telefonica",
            Dialect::Webpush => "webpush",
        }
    }
}

/// Both sides of one dialect for a run.
pub(crate) struct Client {
    dialect: Dialect,
    /// Asks for uatokens and notification status (Telefónica).
    http: reqwest::Client,
    vapid: Option<Vapid>,
}

/// A UA set up and subscribed.
pub(crate) struct Device {
    /// The open connection, until a scenario takes it.
    pub ws: Option<Socket>,
    /// What the UA presents when it comes back: its uatoken, or its uaid.
    pub identity: String,
    /// Where its notifications are sent: a notify URL or a push endpoint.
    pub endpoint: String,
}

/// One notification as a UA received it.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The sender's sequence number, when the notification is one of ours.
    pub seq: Option<u64>,
    /// When it was sent, in microseconds of the run's clock.
    pub sent_us: Option<u64>,
    /// The dialect's reference to it in an ack.
    pub ack: Value,
}

/// What one frame a UA received holds.
#[derive(Debug)]
pub(crate) enum Frame {
    Notifications(Vec<Delivery>),
    /// The answer to a keep-alive: nothing to count.
    KeepAlive,
    Unexpected,
}

/// A push request, ready to go.
pub(crate) struct Request {
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Client {
    /// A client of `dialect`, signing with a new VAPID key when `vapid` (Web Push only).
    pub(crate) fn new(dialect: Dialect, vapid: bool) -> anyhow::Result<Client> {
        let vapid = match (dialect, vapid) {
            (Dialect::Webpush, true) => Some(Vapid::generate()),
            (Dialect::Telefonica, true) => bail!("--vapid needs --dialect webpush"),
            (_, false) => None,
        };
        Ok(Client {
            dialect,
            http: reqwest::Client::new(),
            vapid,
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether push requests are signed with VAPID.
    pub(crate) fn signs(&self) -> bool {
        self.vapid.is_some()
    }

    /// Connects a UA and identifies it (Telefónica: a new uatoken and `register/ua`, with a
    /// UDP interface when given; Web Push: `hello`). Returns the socket and the identity.
    pub(crate) async fn connect(
        &self,
        ws_url: &str,
        source: Option<IpAddr>,
        interface: Option<SocketAddr>,
    ) -> anyhow::Result<(Socket, String)> {
        match self.dialect {
            Dialect::Telefonica => {
                let token = ua::token(&self.http, ws_url).await.context("GET /token")?;
                let mut ws = ua::connect(ws_url, source).await.context("connect")?;
                ua::register(&mut ws, &token, interface)
                    .await
                    .context("register/ua")?;
                Ok((ws, token))
            }
            Dialect::Webpush => {
                let mut ws = ua::connect(ws_url, source).await.context("connect")?;
                let uaid = ua::hello(&mut ws, None).await.context("hello")?;
                Ok((ws, uaid))
            }
        }
    }

    /// Subscribes a connected UA and returns where to send to it: `watoken` registered
    /// (Telefónica), or a new channel (Web Push, where the UA names its channels and
    /// `watoken` has no part).
    pub(crate) async fn subscribe(
        &self,
        ws: &mut Socket,
        identity: &str,
        watoken: &str,
    ) -> anyhow::Result<String> {
        match self.dialect {
            Dialect::Telefonica => ua::register_wa(ws, identity, watoken).await,
            Dialect::Webpush => {
                let key = self.vapid.as_ref().map(|v| v.public.as_str());
                ua::register_channel(ws, key).await.context("register")
            }
        }
    }

    /// A UA held idle, as each dialect's devices hold one: registered with `register/ua`
    /// (Telefónica), or after `hello` and one channel registered (Web Push, where `hello`
    /// alone subscribes nothing).
    pub(crate) async fn idle(
        &self,
        ws_url: &str,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Socket> {
        let (mut ws, identity) = self.connect(ws_url, source, None).await?;
        if self.dialect == Dialect::Webpush {
            self.subscribe(&mut ws, &identity, "").await?;
        }
        Ok(ws)
    }

    /// A UA that was offline connects again with its identity; its pending notifications
    /// follow.
    pub(crate) async fn reconnect(&self, ws_url: &str, identity: &str) -> anyhow::Result<Socket> {
        let mut ws = ua::connect(ws_url, None).await.context("connect")?;
        match self.dialect {
            Dialect::Telefonica => ua::register(&mut ws, identity, None).await?,
            Dialect::Webpush => {
                let uaid = ua::hello(&mut ws, Some(identity)).await.context("hello")?;
                if uaid != identity {
                    bail!("hello with a uaid answered another one: the subscriptions are gone");
                }
            }
        }
        Ok(ws)
    }

    /// Waits until each `(endpoint, seq)` notification is pending for its UA, so that it is
    /// delivered from the store rather than live. Telefónica asks the status of each; Web
    /// Push can't ask (see [`WEBPUSH_ROUTE_WAIT`]) and gives the server a moment.
    pub(crate) async fn wait_pending(
        &self,
        last: impl IntoIterator<Item = (&str, u64)>,
        within: Duration,
    ) -> anyhow::Result<()> {
        if self.dialect == Dialect::Webpush {
            tokio::time::sleep(WEBPUSH_ROUTE_WAIT).await;
            return Ok(());
        }
        let deadline = Instant::now() + within;
        for (notify_url, seq) in last {
            loop {
                let r = self.http.get(format!("{notify_url}/{seq}")).send().await;
                let pending = match r {
                    Ok(r) if r.status() == 200 => {
                        r.json::<Value>().await.ok().is_some_and(|v| {
                            v["deliveries"].as_array().is_some_and(|d| !d.is_empty())
                        })
                    }
                    _ => false,
                };
                if pending {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "notification {seq} was not stored for its UA within {}s",
                        within.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Notification `seq` to `url`, stamped with `sent_us`, with `payload` bytes of message
    /// (Web Push: of body, at least [`STAMP_BYTES`]).
    pub(crate) fn request(
        &self,
        url: &Url,
        seq: u64,
        sent_us: u64,
        payload: usize,
        priority: u8,
    ) -> Request {
        match self.dialect {
            Dialect::Telefonica => Request {
                headers: vec![("content-type", "application/json".into())],
                body: notify_body(seq, sent_us, payload, priority),
            },
            Dialect::Webpush => {
                let mut headers = vec![
                    ("ttl", NOTIFICATION_TTL.to_string()),
                    ("content-encoding", "aes128gcm".into()),
                ];
                if let Some(vapid) = &self.vapid {
                    let origin = format!("http://{}", url.authority);
                    headers.push(("authorization", vapid.authorization(&origin)));
                }
                Request {
                    headers,
                    body: push_body(seq, sent_us, payload),
                }
            }
        }
    }

    /// Whether a push request's status means accepted.
    pub(crate) fn accepted(&self, status: u16) -> bool {
        match self.dialect {
            Dialect::Telefonica => status == 200,
            Dialect::Webpush => status == 201,
        }
    }

    /// Reads one text frame a UA received.
    pub(crate) fn read(&self, text: &str) -> Frame {
        match self.dialect {
            Dialect::Telefonica => match serde_json::from_str::<Vec<Received>>(text) {
                Ok(items) => Frame::Notifications(
                    items
                        .into_iter()
                        .map(|n| Delivery {
                            seq: seq_of(&n.id),
                            sent_us: sent_us(&n.message),
                            ack: Value::String(n.message_id),
                        })
                        .collect(),
                ),
                Err(_) if text == "PONG" => Frame::KeepAlive,
                Err(_) => Frame::Unexpected,
            },
            Dialect::Webpush => read_push(text),
        }
    }

    /// One ack frame for `acks` (taken from [`Delivery::ack`]).
    pub(crate) fn ack(&self, acks: Vec<Value>) -> String {
        match self.dialect {
            Dialect::Telefonica => json!({ "command": "ack", "data": { "messageIds": acks } }),
            Dialect::Webpush => json!({ "messageType": "ack", "updates": acks }),
        }
        .to_string()
    }
}

/// A notify body whose message starts with its send time, so the UA can tell its latency
/// without asking anyone.
pub(crate) fn notify_body(seq: u64, sent_us: u64, payload: usize, priority: u8) -> Bytes {
    let mut message = format!("{sent_us:020}");
    if payload > message.len() {
        message.extend(std::iter::repeat_n('x', payload - message.len()));
    }
    let body =
        json!({ "id": seq, "message": message, "priority": priority, "ttl": NOTIFICATION_TTL });
    Bytes::from(body.to_string())
}

/// The send time stamped in a message by [`notify_body`].
fn sent_us(message: &str) -> Option<u64> {
    message.get(..20)?.parse().ok()
}

/// A notification object as a Telefónica UA receives it (the fields the benchmark reads).
#[derive(Deserialize)]
pub(crate) struct Received {
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub id: Value,
    message: String,
}

pub(crate) fn seq_of(id: &Value) -> Option<u64> {
    id.as_u64().or_else(|| id.as_str()?.parse().ok())
}

/// A Web Push body: the send time and the sequence number (8 bytes each, little endian),
/// then bytes that look random, as an encrypted body would (the server never decrypts).
fn push_body(seq: u64, sent_us: u64, payload: usize) -> Bytes {
    let len = payload.max(STAMP_BYTES);
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&sent_us.to_le_bytes());
    body.extend_from_slice(&seq.to_le_bytes());
    // splitmix64, seeded by the sequence number: cheap, and no two bodies alike.
    let mut state = seq ^ 0x9e37_79b9_7f4a_7c15;
    while body.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let room = len - body.len();
        body.extend_from_slice(&z.to_le_bytes()[..room.min(8)]);
    }
    Bytes::from(body)
}

/// The send time and sequence number of a body made by [`push_body`].
fn push_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(body.get(8..STAMP_BYTES)?.try_into().ok()?);
    Some((sent, seq))
}

/// A Web Push server message: a `notification` (acked with code 100, whatever its body),
/// or the `{}` answering a client's `{}`.
fn read_push(text: &str) -> Frame {
    let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
        return Frame::Unexpected;
    };
    if message.is_empty() {
        return Frame::KeepAlive;
    }
    if message.get("messageType").and_then(Value::as_str) != Some("notification") {
        return Frame::Unexpected;
    }
    let (Some(channel_id), Some(version)) = (message.get("channelID"), message.get("version"))
    else {
        return Frame::Unexpected;
    };
    let stamp = message
        .get("data")
        .and_then(Value::as_str)
        .and_then(|d| URL_SAFE_NO_PAD.decode(d.trim_end_matches('=')).ok())
        .and_then(|body| push_stamp(&body));
    Frame::Notifications(vec![Delivery {
        seq: stamp.map(|(_, seq)| seq),
        sent_us: stamp.map(|(sent, _)| sent),
        ack: json!({ "channelID": channel_id, "version": version, "code": 100 }),
    }])
}

/// The sender's VAPID key for the run, and the headers signed with it, one per origin,
/// reused until close to their expiry.
struct Vapid {
    key: SigningKey,
    /// The applicationServerKey UAs register their channels with.
    public: String,
    signed: Mutex<HashMap<String, (String, i64)>>,
}

impl Vapid {
    fn generate() -> Vapid {
        let key = SigningKey::random(&mut rand::thread_rng());
        let public = PublicKey::from(key.verifying_key()).to_base64();
        Vapid {
            key,
            public,
            signed: Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` header for the push service at `origin`.
    fn authorization(&self, origin: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut signed = self.signed.lock().expect("vapid lock");
        if let Some((header, exp)) = signed.get(origin) {
            if exp - now > VAPID_RENEW_SECS {
                return header.clone();
            }
        }
        let exp = now + VAPID_VALID_SECS;
        let header = common::vapid::sign(&self.key, origin, EpochSecs(exp), Some(VAPID_SUBJECT));
        signed.insert(origin.to_owned(), (header.clone(), exp));
        header
    }
}

/// The refusal of a scenario that has no meaning in `dialect`, if it has none.
pub(crate) fn unsupported(dialect: Dialect, scenario: &str) -> Option<String> {
    let why = match (dialect, scenario) {
        (Dialect::Webpush, "fanout") => {
            "a push endpoint belongs to one subscription of one UA, so nothing fans out"
        }
        (Dialect::Webpush, "wakeup") => "Web Push has no UDP wake-up nor /pull",
        _ => return None,
    };
    Some(format!(
        "`{scenario}` has no Web Push equivalent ({why}); run it with --dialect telefonica"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(dialect: Dialect) -> Client {
        Client::new(dialect, false).unwrap()
    }

    #[test]
    fn the_send_time_travels_in_the_message() {
        let body: Value = serde_json::from_slice(&notify_body(7, 123_456, 64, 4)).unwrap();
        let message = body["message"].as_str().unwrap();
        assert_eq!(message.len(), 64);
        assert_eq!(sent_us(message), Some(123_456));
        assert_eq!(body["id"], 7);
        // Shorter payloads still carry the stamp.
        let body: Value = serde_json::from_slice(&notify_body(7, 5, 1, 1)).unwrap();
        assert_eq!(sent_us(body["message"].as_str().unwrap()), Some(5));
    }

    #[test]
    fn the_send_time_travels_in_the_push_body() {
        let body = push_body(9, 123_456, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(push_stamp(&body), Some((123_456, 9)));
        assert_ne!(body[16..], push_body(10, 123_456, 100)[16..]);
        assert_eq!(push_body(9, 1, 3).len(), STAMP_BYTES);
        assert_eq!(push_stamp(&body[..15]), None);
    }

    #[test]
    fn a_push_notification_is_read_and_acked() {
        let c = client(Dialect::Webpush);
        let data = URL_SAFE_NO_PAD.encode(push_body(3, 42, 64));
        let text = json!({ "messageType": "notification", "channelID": "c", "version": "v",
                           "data": data, "headers": { "encoding": "aes128gcm" }, "ttl": 60 });
        let Frame::Notifications(got) = c.read(&text.to_string()) else {
            panic!("not read")
        };
        assert_eq!((got[0].seq, got[0].sent_us), (Some(3), Some(42)));
        let ack: Value = serde_json::from_str(&c.ack(vec![got[0].ack.clone()])).unwrap();
        assert_eq!(
            ack,
            json!({ "messageType": "ack",
                    "updates": [{ "channelID": "c", "version": "v", "code": 100 }] })
        );
        assert!(matches!(c.read("{}"), Frame::KeepAlive));
        assert!(matches!(
            c.read(r#"{"messageType":"register","status":200}"#),
            Frame::Unexpected
        ));
        assert!(matches!(c.read("PONG"), Frame::Unexpected));
        // A notification without our stamp is still acked, but not measured.
        let bare = r#"{"messageType":"notification","channelID":"c","version":"w","ttl":0}"#;
        let Frame::Notifications(got) = c.read(bare) else {
            panic!("not read")
        };
        assert_eq!(got[0].seq, None);
    }

    #[test]
    fn push_requests_carry_the_rfc8030_headers_and_vapid() {
        let mut c = client(Dialect::Webpush);
        let url = Url::parse("http://127.0.0.1:8081/wpush/v2/abc").unwrap();
        let r = c.request(&url, 1, 2, 64, 4);
        assert_eq!(r.body.len(), 64);
        assert!(r.headers.contains(&("ttl", "3600".into())));
        assert!(r
            .headers
            .contains(&("content-encoding", "aes128gcm".into())));
        assert!(!r.headers.iter().any(|(n, _)| *n == "authorization"));
        assert!(c.accepted(201) && !c.accepted(200));

        c.vapid = Some(Vapid::generate());
        let auth = |c: &Client| {
            let r = c.request(&url, 1, 2, 64, 4);
            r.headers
                .into_iter()
                .find(|(n, _)| *n == "authorization")
                .map(|(_, v)| v)
                .unwrap()
        };
        let header = auth(&c);
        // Signed once per origin, then reused.
        assert_eq!(auth(&c), header);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let checked = common::vapid::verify(&header, None, "http://127.0.0.1:8081", EpochSecs(now))
            .expect("a valid VAPID header");
        assert_eq!(
            checked.key.to_base64(),
            c.vapid.as_ref().unwrap().public.as_str()
        );
    }

    #[test]
    fn telefonica_frames_are_read_as_before() {
        let c = client(Dialect::Telefonica);
        let text = json!([{ "messageType": "notification", "messageId": "m0", "id": 4,
                            "message": format!("{:020}", 77), "ttl": 1 }]);
        let Frame::Notifications(got) = c.read(&text.to_string()) else {
            panic!("not read")
        };
        assert_eq!((got[0].seq, got[0].sent_us), (Some(4), Some(77)));
        assert_eq!(
            c.ack(vec![got[0].ack.clone()]),
            r#"{"command":"ack","data":{"messageIds":["m0"]}}"#
        );
        assert!(matches!(c.read("PONG"), Frame::KeepAlive));
        assert!(c.accepted(200) && !c.accepted(201));
    }

    #[test]
    fn webpush_refuses_what_it_has_no_equivalent_for() {
        assert!(unsupported(Dialect::Webpush, "fanout").is_some());
        assert!(unsupported(Dialect::Webpush, "wakeup").is_some());
        assert!(unsupported(Dialect::Webpush, "stored").is_none());
        assert!(unsupported(Dialect::Telefonica, "fanout").is_none());
        assert!(Client::new(Dialect::Telefonica, true).is_err());
    }
}
