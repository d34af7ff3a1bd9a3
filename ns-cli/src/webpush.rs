//! The commands of WEBPUSH.md: a UA that subscribes and decrypts (`webpush listen`), a
//! sender that encrypts and signs (`webpush send`), and its keys (`vapid keygen`).

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::model::EpochSecs;
use reqwest::Url;
use serde_json::{json, Value};

use crate::args::{Global, VapidKeygen, WebpushListen, WebpushSend};
use crate::ece::{EceError, Subscriber};
use crate::error::{Dialect, Error, Refusal};
use crate::net::{self, parse_url, Net, Socket};
use crate::output::{note, write_new, write_private, Out};

/// What `--state` keeps: the UA, its one subscription and the keys it decrypts with.
struct State {
    uaid: Option<String>,
    channel_id: String,
    keys: Subscriber,
}

impl State {
    fn new() -> State {
        State {
            uaid: None,
            channel_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            keys: Subscriber::generate(),
        }
    }

    fn load(path: &Path) -> Result<State, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
            Err(e) => return Err(Error::read(path, e)),
        };
        let bad = || Error::bad_input(path, "not a state file of `ns webpush listen`");
        let value: Value = serde_json::from_str(&text).map_err(|_| bad())?;
        let field = |name: &str| value[name].as_str().map(str::to_owned).ok_or_else(bad);
        let secret = decode(&field("privateKey")?).ok_or_else(bad)?;
        let auth: [u8; 16] = decode(&field("auth")?)
            .and_then(|a| a.try_into().ok())
            .ok_or_else(bad)?;
        Ok(State {
            uaid: Some(field("uaid")?),
            channel_id: field("channelID")?,
            keys: Subscriber::from_parts(&secret, auth).map_err(|_| bad())?,
        })
    }

    fn save(&self, path: &Path, endpoint: &str) -> Result<(), Error> {
        let value = json!({
            "uaid": self.uaid,
            "channelID": self.channel_id,
            "endpoint": endpoint,
            "privateKey": URL_SAFE_NO_PAD.encode(self.keys.secret_bytes()),
            "auth": URL_SAFE_NO_PAD.encode(self.keys.auth()),
        });
        write_private(path, &format!("{value}\n"))
    }
}

/// Base64url, padded or not, as subscriptions are pasted.
fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

fn closed(url: &Url) -> Error {
    Error::Unavailable {
        url: crate::vapid::origin(url.as_str()),
        detail: "the server closed the connection".into(),
    }
}

async fn send(socket: &mut Socket, url: &Url, message: Value) -> Result<(), Error> {
    net::send_text(socket, url, message.to_string()).await
}

/// The next JSON object from the server; text that isn't one is outside the protocol.
async fn next_message(socket: &mut Socket, url: &Url) -> Result<Value, Error> {
    let Some(text) = net::next_text(socket, url).await? else {
        return Err(closed(url));
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(Error::Protocol(format!(
            "a Web Push frame that is not a JSON object: {}",
            net::snippet(&text)
        ))),
    }
}

pub async fn listen(
    net: &Net,
    out: Out,
    global: &Global,
    args: WebpushListen,
) -> Result<(), Error> {
    let server = parse_url(&global.server, "--server", &["ws", "wss", "http", "https"])?;
    if let Some(key) = &args.application_server_key {
        common::vapid::PublicKey::from_base64(key).map_err(|_| {
            Error::Usage(format!(
                "bad --application-server-key {key:?}: want the base64url of a P-256 public key"
            ))
        })?;
    }
    let mut state = match &args.state {
        Some(path) => State::load(path)?,
        None => State::new(),
    };
    let url = net::ws_of(&server);
    let mut socket = net.websocket(&url).await?;

    let mut hello = json!({ "messageType": "hello", "use_webpush": true, "broadcasts": {} });
    if let Some(uaid) = &state.uaid {
        hello["uaid"] = json!(uaid);
    }
    send(&mut socket, &url, hello).await?;
    let reply = next_message(&mut socket, &url).await?;
    if reply["messageType"] != "hello" || reply["status"] != 200 {
        return Err(Error::Protocol(format!("hello answered {reply}")));
    }
    let uaid = reply["uaid"]
        .as_str()
        .ok_or_else(|| Error::Protocol(format!("hello answered {reply}")))?
        .to_owned();
    if state.uaid.as_ref().is_some_and(|old| *old != uaid) {
        // The server forgot the UA (or never made it): its old subscription is gone.
        note("the server gave a new uaid: the subscription is a new one");
        state = State {
            uaid: None,
            ..State::new()
        };
    }
    state.uaid = Some(uaid.clone());

    let mut register = json!({ "messageType": "register", "channelID": state.channel_id });
    if let Some(key) = &args.application_server_key {
        register["key"] = json!(key);
    }
    send(&mut socket, &url, register).await?;
    // Stored messages of a known UA come right after its hello, so some may come before
    // the answer to `register`: they wait until the subscription is printed.
    let mut early = Vec::new();
    let endpoint = loop {
        let message = next_message(&mut socket, &url).await?;
        match message["messageType"].as_str() {
            Some("notification") => early.push(message),
            Some("register") => {
                let status = message["status"].as_u64().unwrap_or_default();
                if status != 200 {
                    return Err(Error::Refused(Refusal {
                        dialect: Dialect::WebPushUa,
                        http: None,
                        code: status,
                        reason: "register refused".into(),
                    }));
                }
                match message["pushEndpoint"].as_str() {
                    Some(endpoint) => break endpoint.to_owned(),
                    None => return Err(Error::Protocol(format!("register answered {message}"))),
                }
            }
            _ => {}
        }
    };
    if let Some(path) = &args.state {
        state.save(path, &endpoint)?;
    }
    let keys = json!({
        "p256dh": URL_SAFE_NO_PAD.encode(state.keys.p256dh()),
        "auth": URL_SAFE_NO_PAD.encode(state.keys.auth()),
    });
    let subscription = if out.json {
        json!({ "endpoint": endpoint, "keys": keys, "uaid": uaid, "channelID": state.channel_id })
    } else {
        json!({ "endpoint": endpoint, "keys": keys })
    };
    out.object(&subscription)?;
    if !out.json {
        let vapid = if args.application_server_key.is_some() {
            " --vapid-key VAPID.pem"
        } else {
            ""
        };
        note(&format!(
            "send to it with: ns webpush send {endpoint} MESSAGE --p256dh {} --auth {}{vapid}",
            keys["p256dh"].as_str().unwrap_or_default(),
            keys["auth"].as_str().unwrap_or_default(),
        ));
    }

    let mut left = args.count;
    for message in early {
        if left == Some(0) {
            break;
        }
        receive(&mut socket, &url, out, &state, &message, &mut left).await?;
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while left != Some(0) {
        tokio::select! {
            _ = &mut interrupted => break,
            message = next_message(&mut socket, &url) => {
                receive(&mut socket, &url, out, &state, &message?, &mut left).await?;
            }
        }
    }
    net::close(&mut socket).await;
    Ok(())
}

/// Decrypts, prints and acks one message; others than `notification` are passed over.
async fn receive(
    socket: &mut Socket,
    url: &Url,
    out: Out,
    state: &State,
    message: &Value,
    left: &mut Option<u64>,
) -> Result<(), Error> {
    if message["messageType"] != "notification" {
        return Ok(());
    }
    let code = match open(state, message) {
        Ok(plain) => {
            let text = String::from_utf8_lossy(&plain);
            let printed = json!({
                "channelID": message["channelID"],
                "version": message["version"],
                "ttl": message["ttl"],
                "message": text,
            });
            out.either(&printed, &text)?;
            if let Some(left) = left {
                *left = left.saturating_sub(1);
            }
            100
        }
        Err(why) => {
            note(&format!(
                "a message that does not decrypt ({why}), acked with code 101: {}",
                message["version"]
            ));
            101
        }
    };
    let update =
        json!({ "channelID": message["channelID"], "version": message["version"], "code": code });
    send(
        socket,
        url,
        json!({ "messageType": "ack", "updates": [update] }),
    )
    .await
}

/// The plaintext of a notification to this UA's subscription.
fn open(state: &State, message: &Value) -> Result<Vec<u8>, String> {
    if message["channelID"] != state.channel_id.as_str() {
        return Err(format!("for another channel, {}", message["channelID"]));
    }
    let Some(data) = message["data"].as_str() else {
        return Ok(Vec::new());
    };
    let data = decode(data).ok_or("data is not base64url")?;
    let headers = &message["headers"];
    let plain = match headers["encoding"].as_str() {
        Some("aes128gcm") => state.keys.decrypt_aes128gcm(&data),
        Some("aesgcm") => state.keys.decrypt_aesgcm(
            &data,
            headers["encryption"].as_str().unwrap_or_default(),
            headers["crypto_key"].as_str().unwrap_or_default(),
        ),
        other => return Err(format!("unknown encoding {other:?}")),
    };
    plain.map_err(|e| e.to_string())
}

pub async fn send_message(net: &Net, out: Out, args: WebpushSend) -> Result<(), Error> {
    let endpoint = parse_url(&args.endpoint, "endpoint", &["http", "https"])?;
    let p256dh = decode(&args.p256dh)
        .ok_or_else(|| Error::Usage(format!("bad --p256dh {:?}: not base64url", args.p256dh)))?;
    let auth = decode(&args.auth)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::Usage(format!("bad --auth {:?}: not base64url", args.auth)))?;
    let vapid = args
        .vapid_key
        .as_deref()
        .map(crate::vapid::load)
        .transpose()?;
    let body = crate::ece::encrypt_aes128gcm(&p256dh, &auth, args.message.as_bytes()).map_err(
        |e| match e {
            EceError::BadKey => Error::Usage(format!(
                "bad --p256dh {:?}: not an uncompressed P-256 public key",
                args.p256dh
            )),
            other => Error::Internal(other.to_string()),
        },
    )?;
    let mut request = net
        .post(&endpoint)
        .header("TTL", args.ttl.to_string())
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .body(body);
    if let Some(urgency) = args.urgency {
        request = request.header("Urgency", urgency.header());
    }
    if let Some(topic) = &args.topic {
        request = request.header("Topic", topic);
    }
    if let Some(key) = &vapid {
        let exp = EpochSecs(now_secs() + crate::vapid::VALID_FOR_SECS);
        let header = crate::vapid::authorization(key, endpoint.as_str(), exp, &args.subject);
        request = request.header("Authorization", header);
    }
    let answer = net.send(&endpoint, request).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::WebPush));
    }
    let location = answer.header("location").unwrap_or_default();
    out.either(
        &json!({ "status": answer.status, "location": location, "ttl": answer.header("ttl") }),
        &location,
    )
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
        .unwrap_or_default()
}

pub fn vapid_keygen(out: Out, args: VapidKeygen) -> Result<(), Error> {
    let key = crate::vapid::generate();
    let pem = crate::vapid::to_pem(&key)?;
    let public = crate::vapid::application_server_key(&key);
    let raw = crate::vapid::to_raw(&key);
    match &args.out {
        Some(path) => {
            write_new(path, &pem)?;
            out.either(
                &json!({ "publicKey": public, "privateKeyFile": path.display().to_string() }),
                &public,
            )
        }
        None => out.either(
            &json!({ "publicKey": public, "privateKey": raw, "privateKeyPem": pem }),
            &format!("applicationServerKey: {public}\n{}", pem.trim_end()),
        ),
    }
}
