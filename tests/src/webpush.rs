//! Both sides of Web Push as the standard stacks speak them: a UA of Firefox's WebSocket
//! dialect (WEBPUSH.md §2) holding its subscriptions' keys, and a sender of RFC 8030 requests
//! with real `aes128gcm` / `aesgcm` encryption and VAPID.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::model::EpochSecs;
use p256::ecdsa::SigningKey;
use serde_json::{json, Value};

use crate::client::{Ua, UaEvent, FRAME_DEADLINE};
use crate::ece::{self, Subscriber};

/// A Web Push UA: a connection that said `hello`.
pub struct PushUa {
    pub ua: Ua,
    pub uaid: String,
}

/// One subscription of a [`PushUa`], with the keys a sender encrypts to.
pub struct Subscription {
    pub channel_id: String,
    pub endpoint: String,
    pub keys: Subscriber,
}

impl PushUa {
    /// Connects to `ws_url` and says `hello`, with `uaid` if given; panics unless the answer
    /// is a `hello` with status 200.
    pub async fn hello(ws_url: &str, uaid: Option<&str>) -> PushUa {
        PushUa::say_hello(Ua::connect(ws_url, "").await, uaid).await
    }

    /// [`PushUa::hello`] over TLS: `ws_url` is a `wss://` URL, `tls` trusts its certificate.
    pub async fn hello_tls(
        ws_url: &str,
        uaid: Option<&str>,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> PushUa {
        PushUa::say_hello(Ua::connect_tls(ws_url, "", tls).await, uaid).await
    }

    async fn say_hello(mut ua: Ua, uaid: Option<&str>) -> PushUa {
        let mut hello = json!({"messageType": "hello", "use_webpush": true, "broadcasts": {}});
        if let Some(uaid) = uaid {
            hello["uaid"] = json!(uaid);
        }
        ua.send_text(&hello.to_string()).await;
        let reply = ua.next_json().await;
        assert_eq!(reply["messageType"], "hello", "{reply}");
        assert_eq!(reply["status"], 200, "{reply}");
        assert_eq!(reply["use_webpush"], true, "{reply}");
        let uaid = reply["uaid"].as_str().expect("a uaid").to_owned();
        PushUa { ua, uaid }
    }

    pub async fn send(&mut self, message: Value) {
        self.ua.send_text(&message.to_string()).await;
    }

    pub async fn next_json(&mut self) -> Value {
        self.ua.next_json().await
    }

    /// Registers `channel_id` (with an applicationServerKey if given); returns the reply.
    pub async fn register(&mut self, channel_id: &str, key: Option<&str>) -> Value {
        let mut register = json!({"messageType": "register", "channelID": channel_id});
        if let Some(key) = key {
            register["key"] = json!(key);
        }
        self.send(register).await;
        let reply = self.reply("register").await;
        assert_eq!(reply["channelID"], channel_id, "{reply}");
        reply
    }

    /// A new subscription, bound to `vapid` if given; panics unless it is accepted.
    pub async fn subscribe(&mut self, vapid: Option<&SigningKey>) -> Subscription {
        let channel_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let key = vapid.map(application_server_key);
        let reply = self.register(&channel_id, key.as_deref()).await;
        assert_eq!(reply["status"], 200, "{reply}");
        let endpoint = reply["pushEndpoint"]
            .as_str()
            .expect("a pushEndpoint")
            .to_owned();
        Subscription {
            channel_id,
            endpoint,
            keys: Subscriber::generate(),
        }
    }

    /// The next message of this type, skipping notifications that come first.
    pub async fn reply(&mut self, message_type: &str) -> Value {
        loop {
            let message = self.next_json().await;
            if message["messageType"] != "notification" || message_type == "notification" {
                assert_eq!(message["messageType"], message_type, "{message}");
                return message;
            }
        }
    }

    /// The next `notification` message.
    pub async fn notification(&mut self) -> Value {
        let message = self.next_json().await;
        assert_eq!(message["messageType"], "notification", "{message}");
        message
    }

    /// Acks one message with `code`.
    pub async fn ack(&mut self, message: &Value, code: u16) {
        let update = json!({
            "channelID": message["channelID"],
            "version": message["version"],
            "code": code,
        });
        self.send(json!({"messageType": "ack", "updates": [update]}))
            .await;
    }

    /// Waits for the server to close the connection; panics if it sends text first.
    pub async fn closed(&mut self) {
        match self.ua.next_event(FRAME_DEADLINE).await {
            Some(UaEvent::Closed) => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }

    pub async fn assert_silent(&mut self, wait: Duration) {
        self.ua.assert_silent(wait).await;
    }

    pub async fn close(self) {
        self.ua.close().await;
    }
}

impl Subscription {
    /// Decrypts the payload of a `notification` message for this subscription.
    pub fn decrypt(&self, message: &Value) -> String {
        assert_eq!(message["channelID"], self.channel_id.as_str(), "{message}");
        let data = URL_SAFE_NO_PAD
            .decode(message["data"].as_str().expect("data"))
            .expect("base64url data");
        let headers = &message["headers"];
        let plain = match headers["encoding"].as_str() {
            Some("aes128gcm") => self.keys.decrypt_aes128gcm(&data),
            Some("aesgcm") => self.keys.decrypt_aesgcm(
                &data,
                headers["encryption"].as_str().expect("encryption"),
                headers["crypto_key"].as_str().expect("crypto_key"),
            ),
            other => panic!("unknown encoding {other:?}"),
        };
        String::from_utf8(plain.expect("decryptable")).expect("UTF-8")
    }

    /// A push request for `text`, encrypted with `aes128gcm`, with `TTL: ttl`.
    pub fn message(&self, text: &str, ttl: u32) -> Push {
        let body = ece::encrypt_aes128gcm(&self.keys.p256dh(), &self.keys.auth(), text.as_bytes())
            .expect("p256dh is an uncompressed P-256 point");
        Push::new(&self.endpoint, body)
            .header("TTL", &ttl.to_string())
            .header("Content-Encoding", "aes128gcm")
    }

    /// The same with the legacy `aesgcm` encoding and its two headers.
    pub fn legacy_message(&self, text: &str, ttl: u32) -> Push {
        let e = ece::encrypt_aesgcm(&self.keys.p256dh(), &self.keys.auth(), text.as_bytes())
            .expect("p256dh is an uncompressed P-256 point");
        Push::new(&self.endpoint, e.body)
            .header("TTL", &ttl.to_string())
            .header("Content-Encoding", "aesgcm")
            .header("Encryption", &e.encryption)
            .header("Crypto-Key", &e.crypto_key)
    }
}

/// A push request being built.
pub struct Push {
    url: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// What a push request was answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub ttl: Option<String>,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Answer {
    /// The `errno` of an error answer, checking the body's shape on the way.
    pub fn errno(&self) -> u64 {
        assert_eq!(self.body["code"], self.status, "{:?}", self.body);
        assert!(self.body["error"].is_string(), "{:?}", self.body);
        assert!(self.body["message"].is_string(), "{:?}", self.body);
        self.body["errno"].as_u64().expect("an errno")
    }
}

impl Push {
    pub fn new(url: &str, body: impl Into<Vec<u8>>) -> Push {
        Push {
            url: url.to_owned(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Push {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn without(mut self, name: &str) -> Push {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Signs with VAPID for the endpoint's origin, expiring in `valid_for` seconds.
    pub fn vapid(self, key: &SigningKey, valid_for: i64) -> Push {
        let aud = origin(&self.url);
        self.vapid_for(key, &aud, valid_for)
    }

    pub fn vapid_for(self, key: &SigningKey, aud: &str, valid_for: i64) -> Push {
        let exp = EpochSecs(now_secs() + valid_for);
        let value = common::vapid::sign(key, aud, exp, Some("mailto:test@example.com"));
        self.header("Authorization", &value)
    }

    pub async fn send(self) -> Answer {
        let mut request = reqwest::Client::new().post(&self.url).body(self.body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let r = request.send().await.expect("POST to the push endpoint");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, ttl, retry_after) =
            (header("location"), header("ttl"), header("retry-after"));
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            location,
            ttl,
            retry_after,
            body,
        }
    }
}

/// `scheme://host:port` of a URL, and the applicationServerKey of a VAPID key: `ns`'s.
pub use ns_cli::vapid::{application_server_key, origin};

pub fn vapid_key() -> SigningKey {
    SigningKey::random(&mut rand::thread_rng())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// `GET` or `DELETE` of a message location; status and JSON body.
pub async fn location(method: reqwest::Method, url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, url)
        .send()
        .await
        .expect("a request to the location");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A sender that is pywebpush, unmodified: `python3 -c PYWEBPUSH` with the endpoint, p256dh,
/// auth, VAPID private key (raw, base64url), encoding and text as arguments sends one
/// message and prints the status answered.
pub const PYWEBPUSH: &str = r#"
import sys
from pywebpush import webpush, WebPushException
endpoint, p256dh, auth, vapid, encoding, text = sys.argv[1:7]
try:
    r = webpush({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}, text,
                vapid_private_key=vapid, vapid_claims={"sub": "mailto:test@example.com"},
                content_encoding=encoding, ttl=600)
    print(r.status_code)
except WebPushException as e:
    print(e.response.status_code if e.response is not None else e)
"#;
