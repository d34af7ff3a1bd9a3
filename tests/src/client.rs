//! A UA as the protocol describes it: a WebSocket with the `push-notification` subprotocol.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for a frame it expects.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum UaEvent {
    Text(String),
    Closed,
}

pub struct Ua {
    pub ws: Socket,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    pub token: String,
}

impl Ua {
    /// Opens a WebSocket to `url` offering `push-notification`.
    pub async fn connect(url: &str, token: &str) -> Ua {
        Ua::connect_with(url, token, None).await
    }

    /// Opens a WebSocket to a `wss://` `url` offering `push-notification`, with the TLS of
    /// `tls` (see [`crate::tls::client_config`]).
    pub async fn connect_tls(url: &str, token: &str, tls: Arc<rustls::ClientConfig>) -> Ua {
        Ua::connect_with(url, token, Some(Connector::Rustls(tls))).await
    }

    async fn connect_with(url: &str, token: &str, connector: Option<Connector>) -> Ua {
        let mut request = url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "push-notification".parse().expect("header value"),
        );
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
        let (ws, response) = connect.await.expect("WebSocket connect");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ua {
            ws,
            protocol,
            token: token.to_owned(),
        }
    }

    /// Connects and registers; panics unless the answer is `OK`.
    pub async fn registered(url: &str, token: &str) -> Ua {
        let mut ua = Ua::connect(url, token).await;
        ua.command("register/ua", json!({ "uatoken": token })).await;
        assert_eq!(ua.next_text().await, "OK");
        ua
    }

    /// Connects and registers with a UDP `interface` on 127.0.0.1 at `port`; panics unless
    /// the answer is `OK`.
    pub async fn registered_wakeable(url: &str, token: &str, port: u16) -> Ua {
        let mut ua = Ua::connect(url, token).await;
        let interface = json!({ "ip": "127.0.0.1", "port": port });
        ua.command(
            "register/ua",
            json!({ "uatoken": token, "interface": interface }),
        )
        .await;
        assert_eq!(ua.next_text().await, "OK");
        ua
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("sending a frame");
    }

    pub async fn command(&mut self, command: &str, data: Value) {
        let frame = json!({ "command": command, "data": data }).to_string();
        self.send_text(&frame).await;
    }

    /// The next text frame or the close, within the deadline.
    pub async fn next_event(&mut self, deadline: Duration) -> Option<UaEvent> {
        loop {
            let frame = tokio::time::timeout(deadline, self.ws.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(Message::Text(t))) => UaEvent::Text(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => UaEvent::Closed,
            });
        }
    }

    /// The next text frame; panics on a close or time-out.
    pub async fn next_text(&mut self) -> String {
        match self.next_event(FRAME_DEADLINE).await {
            Some(UaEvent::Text(t)) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame as JSON.
    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// The code of the next frame, which must be an error.
    pub async fn next_error_code(&mut self) -> u64 {
        let v = self.next_json().await;
        assert!(v["error"].is_string(), "not an error frame: {v}");
        v["code"].as_u64().expect("error code")
    }

    /// Notification objects from the next frame (a JSON array).
    pub async fn next_notifications(&mut self) -> Vec<Value> {
        match self.next_json().await {
            Value::Array(items) => items,
            other => panic!("expected a notification array, got {other}"),
        }
    }

    /// Reads notification frames until `count` notifications have come.
    pub async fn notifications(&mut self, count: usize) -> Vec<Value> {
        let mut all = Vec::new();
        while all.len() < count {
            all.extend(self.next_notifications().await);
        }
        all
    }

    /// Registers a WA; returns the notify URL.
    pub async fn register_wa(&mut self, watoken: &str) -> String {
        let token = self.token.clone();
        self.command(
            "register/wa",
            json!({ "uatoken": token, "watoken": watoken }),
        )
        .await;
        let url = self.next_text().await;
        assert!(url.contains("/notify/"), "not a notify URL: {url}");
        url
    }

    pub async fn ack(&mut self, ids: &[&str]) {
        self.command("ack", json!({ "messageIds": ids })).await;
    }

    /// Asserts nothing arrives within `wait` (for things that must not happen).
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Some(UaEvent::Text(t)) = self.next_event(wait).await {
            panic!("expected nothing, got {t}");
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
