//! The commands of PROTOCOL.md: a UA (`token`, `listen`, `pull`, `ack`), an application
//! server (`notify`, `status`) and its keys (`keygen`).

use std::time::Instant;

use reqwest::Url;
use serde_json::{json, Value};

use crate::args::{Ack, Global, Keygen, Listen, Notify, Pull, Status};
use crate::error::{Dialect, Error, Refusal};
use crate::net::{self, parse_url, Net, Socket};
use crate::output::{note, write_new, Out};

const UA_SCHEMES: &[&str] = &["ws", "wss", "http", "https"];
const HTTP_SCHEMES: &[&str] = &["http", "https"];

fn server(global: &Global) -> Result<Url, Error> {
    parse_url(&global.server, "--server", UA_SCHEMES)
}

/// `GET /token` of the UA server.
async fn fetch_token(net: &Net, server: &Url) -> Result<String, Error> {
    let url = net::join(&net::http_of(server), "token")?;
    let answer = net.get(&url).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::Telefonica));
    }
    let token = answer.text().trim().to_owned();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(Error::Protocol(format!(
            "GET /token answered {:?}",
            net::snippet(&token)
        )));
    }
    Ok(token)
}

pub async fn token(net: &Net, out: Out, global: &Global) -> Result<(), Error> {
    let token = fetch_token(net, &server(global)?).await?;
    out.either(&json!({ "uatoken": token }), &token)
}

/// A `{"error", "code"}` frame, as the WebSocket refuses a command.
fn ws_refusal(text: &str) -> Option<Error> {
    let value: Value = serde_json::from_str(text).ok()?;
    Some(Error::Refused(Refusal {
        dialect: Dialect::Telefonica,
        http: None,
        code: value["code"].as_u64()?,
        reason: value["error"].as_str()?.to_owned(),
    }))
}

fn closed(url: &Url) -> Error {
    Error::Unavailable {
        url: crate::vapid::origin(url.as_str()),
        detail: "the server closed the connection".into(),
    }
}

async fn command(socket: &mut Socket, url: &Url, name: &str, data: Value) -> Result<(), Error> {
    let frame = json!({ "command": name, "data": data });
    net::send_text(socket, url, frame.to_string()).await
}

pub async fn listen(net: &Net, out: Out, global: &Global, args: Listen) -> Result<(), Error> {
    let server = server(global)?;
    let pbk = match &args.key {
        Some(path) => Some(crate::keys::pbkbase64(&crate::keys::load_public(path)?)?),
        None => None,
    };
    let token = match args.token {
        Some(token) => token,
        None => {
            let token = fetch_token(net, &server).await?;
            if !out.json {
                note(&format!("uatoken {token}"));
            }
            token
        }
    };
    let watoken = args
        .watoken
        .unwrap_or_else(|| format!("ns-{}", uuid::Uuid::new_v4().simple()));

    let url = net::ws_of(&server);
    let mut socket = net.websocket(&url).await?;
    let mut data = json!({ "uatoken": token });
    if let Some(interface) = args.interface {
        data["interface"] = json!({ "ip": interface.ip().to_string(), "port": interface.port() });
    }
    command(&mut socket, &url, "register/ua", data).await?;
    match net::next_text(&mut socket, &url).await? {
        Some(ok) if ok == "OK" => {}
        Some(other) => {
            return Err(ws_refusal(&other)
                .unwrap_or_else(|| Error::Protocol(format!("register/ua answered {other:?}"))))
        }
        None => return Err(closed(&url)),
    }

    let mut data = json!({ "uatoken": token, "watoken": watoken });
    if let Some(pbk) = pbk {
        data["pbkbase64"] = json!(pbk);
    }
    command(&mut socket, &url, "register/wa", data).await?;
    // The pending notifications of the UA come right after its `OK`, so some may come
    // before the answer to `register/wa`: they wait until the notify URL is printed.
    let mut early = Vec::new();
    let notify_url = loop {
        let Some(text) = net::next_text(&mut socket, &url).await? else {
            return Err(closed(&url));
        };
        if text.starts_with('[') {
            early.push(text);
        } else if text.starts_with("http://") || text.starts_with("https://") {
            break text;
        } else {
            return Err(ws_refusal(&text)
                .unwrap_or_else(|| Error::Protocol(format!("register/wa answered {text:?}"))));
        }
    };
    out.either(
        &json!({ "notifyUrl": notify_url, "uatoken": token, "watoken": watoken }),
        &notify_url,
    )?;
    if !out.json {
        let sign = if args.key.is_some() {
            " --sign KEY.pem"
        } else {
            ""
        };
        note(&format!(
            "send to it with: ns notify {notify_url} MESSAGE{sign}"
        ));
    }

    let mut ua = Receiver {
        out,
        left: args.count,
    };
    for text in early {
        if ua.frame(&mut socket, &url, &text).await? {
            break;
        }
    }
    if ua.done() {
        net::close(&mut socket).await;
        return Ok(());
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            text = net::next_text(&mut socket, &url) => {
                let Some(text) = text? else { return Err(closed(&url)) };
                if ua.frame(&mut socket, &url, &text).await? {
                    break;
                }
            }
        }
    }
    net::close(&mut socket).await;
    Ok(())
}

/// What `listen` does with each frame after registering.
struct Receiver {
    out: Out,
    /// Messages still to print before exiting, if a count was given.
    left: Option<u64>,
}

impl Receiver {
    fn done(&self) -> bool {
        self.left == Some(0)
    }

    /// Prints and acks the notifications of one frame; true once `--count` are done.
    async fn frame(&mut self, socket: &mut Socket, url: &Url, text: &str) -> Result<bool, Error> {
        if self.done() {
            return Ok(true);
        }
        let notifications = match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(notifications)) => notifications,
            Ok(Value::Object(error)) if error.contains_key("error") => {
                note(&format!("the server said: {}", Value::Object(error)));
                return Ok(false);
            }
            _ if text == "PONG" => return Ok(false),
            _ => {
                note(&format!(
                    "ignored an unexpected frame: {}",
                    net::snippet(text)
                ));
                return Ok(false);
            }
        };
        let mut acks = Vec::new();
        for notification in &notifications {
            let message = notification["message"].as_str().unwrap_or_default();
            self.out.either(notification, message)?;
            if let Some(id) = notification["messageId"].as_str() {
                acks.push(id.to_owned());
            }
            if let Some(left) = &mut self.left {
                *left -= 1;
                if *left == 0 {
                    break;
                }
            }
        }
        if !acks.is_empty() {
            command(socket, url, "ack", json!({ "messageIds": acks })).await?;
        }
        Ok(self.done())
    }
}

pub async fn notify(net: &Net, out: Out, args: Notify) -> Result<(), Error> {
    let url = parse_url(&args.url, "notify URL", HTTP_SCHEMES)?;
    let signature = match &args.sign {
        Some(path) => Some(crate::keys::sign(
            &crate::keys::load_private(path)?,
            &args.message,
        )),
        None => None,
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..20].to_owned());
    let body = |id: String| {
        let mut body = json!({ "id": id, "message": args.message });
        if let Some(ttl) = args.ttl {
            body["ttl"] = json!(ttl);
        }
        if let Some(priority) = args.priority {
            body["priority"] = json!(priority);
        }
        if let Some(signature) = &signature {
            body["signature"] = json!(signature);
        }
        body
    };
    if args.repeat == 1 {
        let answer = send_notification(net, &url, &body(id)).await?;
        let message_id = answer["messageId"].as_str().unwrap_or_default().to_owned();
        return out.either(&answer, &message_id);
    }

    let bar = indicatif::ProgressBar::new(args.repeat);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} sent, {per_sec} (eta {eta})")
            .map_err(|e| Error::Internal(e.to_string()))?,
    );
    let started = Instant::now();
    let (mut accepted, mut refused, mut first_refusal) = (0u64, 0u64, None);
    for i in 1..=args.repeat {
        match send_notification(net, &url, &body(format!("{id}-{i}"))).await {
            Ok(_) => accepted += 1,
            Err(e @ Error::Refused(_)) => {
                refused += 1;
                first_refusal.get_or_insert(e);
            }
            Err(e) => {
                bar.abandon();
                summary(out, accepted, refused, i - 1, started)?;
                return Err(e);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary(out, accepted, refused, args.repeat, started)?;
    match first_refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn summary(
    out: Out,
    accepted: u64,
    refused: u64,
    sent: u64,
    started: Instant,
) -> Result<(), Error> {
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        sent as f64 / seconds
    } else {
        0.0
    };
    out.either(
        &json!({
            "sent": sent,
            "accepted": accepted,
            "refused": refused,
            "seconds": seconds,
            "perSecond": rate,
        }),
        &format!(
            "sent {sent}: {accepted} accepted, {refused} refused, in {seconds:.2} s ({rate:.1}/s)"
        ),
    )
}

/// POSTs one notify body; the server's `ACCEPTED` answer, or its refusal.
async fn send_notification(net: &Net, url: &Url, body: &Value) -> Result<Value, Error> {
    let answer = net.post_json(url, body).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::Telefonica));
    }
    let value = answer.json()?;
    if value["status"] != "ACCEPTED" || !value["messageId"].is_string() {
        return Err(Error::Protocol(format!("notify answered {value}")));
    }
    Ok(value)
}

pub async fn status(net: &Net, out: Out, args: Status) -> Result<(), Error> {
    let mut url = parse_url(&args.url, "URL", HTTP_SCHEMES)?;
    if let Some(id) = &args.id {
        url.path_segments_mut()
            .map_err(|()| Error::Usage(format!("bad URL {}", args.url)))?
            .pop_if_empty()
            .push(id);
    }
    let answer = net.get(&url).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::Telefonica));
    }
    let report = answer.json()?;
    if out.json {
        return out.object(&report);
    }
    let deliveries = report["deliveries"].as_array().cloned().unwrap_or_default();
    for delivery in deliveries {
        out.line(&format!(
            "{}\t{}\t{}",
            delivery["device"].as_str().unwrap_or("?"),
            delivery["status"].as_str().unwrap_or("?"),
            delivery["at"]
        ))?;
    }
    Ok(())
}

pub fn keygen(out: Out, args: Keygen) -> Result<(), Error> {
    let bits = usize::try_from(args.bits).map_err(|e| Error::Usage(e.to_string()))?;
    let key = crate::keys::generate(bits)?;
    let pem = crate::keys::private_pem(&key)?;
    let pbk = crate::keys::pbkbase64(&key.to_public_key())?;
    match &args.out {
        Some(path) => {
            write_new(path, &pem)?;
            out.either(
                &json!({ "pbkbase64": pbk, "privateKeyFile": path.display().to_string() }),
                &pbk,
            )
        }
        None => out.either(
            &json!({ "pbkbase64": pbk, "privateKeyPem": pem }),
            &format!("pbkbase64: {pbk}\n{}", pem.trim_end()),
        ),
    }
}

fn pull_server(global: &Global) -> Result<Url, Error> {
    parse_url(&global.pull_server, "--pull-server", HTTP_SCHEMES)
}

pub async fn pull(net: &Net, out: Out, global: &Global, args: Pull) -> Result<(), Error> {
    let server = pull_server(global)?;
    let mut body = json!({ "uatoken": args.token });
    if let Some(limit) = args.limit {
        body["limit"] = json!(limit);
    }
    let answer = net.post_json(&net::join(&server, "pull")?, &body).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::Telefonica));
    }
    let value = answer.json()?;
    let Some(messages) = value["messages"].as_array() else {
        return Err(Error::Protocol(format!("pull answered {value}")));
    };
    let mut ids = Vec::new();
    for message in messages {
        let id = message["messageId"].as_str().unwrap_or_default();
        let text = message["message"].as_str().unwrap_or_default();
        out.either(message, &format!("{id}\t{text}"))?;
        ids.push(id.to_owned());
    }
    if args.ack && !ids.is_empty() {
        let acked = post_ack(net, &server, &args.token, ids).await?;
        note(&format!("acked {acked}"));
    }
    Ok(())
}

pub async fn ack(net: &Net, out: Out, global: &Global, args: Ack) -> Result<(), Error> {
    let server = pull_server(global)?;
    let acked = post_ack(net, &server, &args.token, args.message_ids).await?;
    out.either(&json!({ "acked": acked }), &acked.to_string())
}

async fn post_ack(net: &Net, server: &Url, token: &str, ids: Vec<String>) -> Result<u64, Error> {
    let body = json!({ "uatoken": token, "messageIds": ids });
    let answer = net.post_json(&net::join(server, "ack")?, &body).await?;
    if !answer.is_success() {
        return Err(answer.refusal(Dialect::Telefonica));
    }
    let value = answer.json()?;
    value["acked"]
        .as_u64()
        .ok_or_else(|| Error::Protocol(format!("ack answered {value}")))
}
