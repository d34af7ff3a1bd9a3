//! A lean UA: the `push-notification` WebSocket with small buffers, so that one load
//! generator can hold as many connections as the server it measures. It speaks both
//! dialects' set-up: PROTOCOL.md's commands and Web Push's `hello` and `register`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Socket = WebSocketStream<TcpStream>;

/// How long a UA waits for the answer to one of its commands.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// `http://host:port` of a WebSocket URL's server.
pub(crate) fn http_base(ws_url: &str) -> String {
    let base = ws_url
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    base.trim_end_matches('/').to_owned()
}

/// A new uatoken from `GET /token` of the front-end at `ws_url`.
pub(crate) async fn token(client: &reqwest::Client, ws_url: &str) -> anyhow::Result<String> {
    let r = client
        .get(format!("{}/token", http_base(ws_url)))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("GET /token answered {}", r.status());
    }
    Ok(r.text().await?)
}

/// Opens the WebSocket, from `source` when given (a loopback address of its own gives the
/// connection its own range of ephemeral ports).
pub(crate) async fn connect(ws_url: &str, source: Option<IpAddr>) -> anyhow::Result<Socket> {
    let authority = ws_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow!("not a ws:// URL: {ws_url}"))?;
    let addr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| anyhow!("{authority} has no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "push-notification".parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

pub(crate) async fn command(
    ws: &mut Socket,
    command: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let frame = json!({ "command": command, "data": data }).to_string();
    ws.send(Message::Text(frame.into())).await?;
    Ok(())
}

/// The next text frame; an error if the connection closes first.
pub(crate) async fn next_text(ws: &mut Socket) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => bail!("the server sent a binary frame"),
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn answer(ws: &mut Socket) -> anyhow::Result<String> {
    tokio::time::timeout(ANSWER_DEADLINE, next_text(ws))
        .await
        .map_err(|_| anyhow!("no answer within {ANSWER_DEADLINE:?}"))?
}

/// `register/ua`, with a UDP interface when given; an error unless the answer is `OK`.
pub(crate) async fn register(
    ws: &mut Socket,
    token: &str,
    interface: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let data = match interface {
        Some(a) => {
            json!({ "uatoken": token, "interface": { "ip": a.ip().to_string(), "port": a.port() } })
        }
        None => json!({ "uatoken": token }),
    };
    command(ws, "register/ua", data).await?;
    match answer(ws).await? {
        ok if ok == "OK" => Ok(()),
        other => bail!("register/ua answered {other}"),
    }
}

/// `register/wa`; returns the notify URL.
pub(crate) async fn register_wa(
    ws: &mut Socket,
    token: &str,
    watoken: &str,
) -> anyhow::Result<String> {
    command(
        ws,
        "register/wa",
        json!({ "uatoken": token, "watoken": watoken }),
    )
    .await?;
    let url = answer(ws).await?;
    if !url.contains("/notify/") {
        bail!("register/wa answered {url}");
    }
    Ok(url)
}

/// Sends one Web Push message.
async fn send_message(ws: &mut Socket, message: serde_json::Value) -> anyhow::Result<()> {
    ws.send(Message::Text(message.to_string().into())).await?;
    Ok(())
}

/// The answer to a Web Push message: of `kind`, with status 200.
async fn reply(ws: &mut Socket, kind: &str) -> anyhow::Result<serde_json::Value> {
    let text = answer(ws).await?;
    let reply: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{kind} answered {text}"))?;
    if reply["messageType"] != kind || reply["status"] != 200 {
        bail!("{kind} answered {text}");
    }
    Ok(reply)
}

/// Web Push `hello`, with the uaid of an earlier connection when coming back; returns the
/// uaid the server answered with.
pub(crate) async fn hello(ws: &mut Socket, uaid: Option<&str>) -> anyhow::Result<String> {
    let mut hello = json!({ "messageType": "hello", "use_webpush": true });
    if let Some(uaid) = uaid {
        hello["uaid"] = json!(uaid);
    }
    send_message(ws, hello).await?;
    let reply = reply(ws, "hello").await?;
    match reply["uaid"].as_str() {
        Some(uaid) if !uaid.is_empty() => Ok(uaid.to_owned()),
        _ => bail!("hello answered {reply}"),
    }
}

/// Web Push `register` of a new channel, bound to the sender's VAPID `key` when given;
/// returns the push endpoint.
pub(crate) async fn register_channel(ws: &mut Socket, key: Option<&str>) -> anyhow::Result<String> {
    let channel_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let mut register = json!({ "messageType": "register", "channelID": channel_id });
    if let Some(key) = key {
        register["key"] = json!(key);
    }
    send_message(ws, register).await?;
    let reply = reply(ws, "register").await?;
    match reply["pushEndpoint"].as_str() {
        Some(endpoint) if reply["channelID"] == channel_id.as_str() => Ok(endpoint.to_owned()),
        _ => bail!("register answered {reply}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_come_from_the_front_end_itself() {
        assert_eq!(
            super::http_base("ws://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            super::http_base("wss://push.example.com"),
            "https://push.example.com"
        );
    }
}
