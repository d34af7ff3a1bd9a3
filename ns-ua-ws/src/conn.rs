//! One UA's WebSocket: the handshake with the `push-notification` subprotocol, then a loop
//! over client frames, queued notifications and pings, with the session state machine
//! deciding what each command may do.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::broker::{front_end_queue, BrokerError};
use common::crypto;
use common::messages::{encode, FrontEndMessage, RouteEvent};
use common::model::{notify_url, App, DeliveryStatus, UaId};
use common::store::{connected_route, DeliveryUpdate};
use common::validate::{Code, ProtocolError};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::session::{parse, Command, Session};
use crate::{ConnHandle, Outbound, Shared};

/// The subprotocol of §2.
const SUBPROTOCOL: &str = "push-notification";
/// Notifications queued for one connection before it counts as too slow.
const OUTBOUND_QUEUE: usize = 64;
/// Notifications per frame when sending the pending ones.
const PENDING_PER_FRAME: usize = 100;
/// Bytes read from the socket at once. Commands are a few hundred bytes; a larger frame
/// still gets a buffer of its own size while it is read.
const READ_BUFFER: usize = 1024;
/// Largest client frame: commands are small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

type Ws = WebSocketStream<TcpStream>;

/// Small buffers: most connections sit idle, and memory per connection is what limits how
/// many one instance holds.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Selects `push-notification` when the client offers it.
#[allow(clippy::result_large_err)]
fn select_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if offered {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(response)
}

/// Runs one WebSocket connection to its end.
pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    // The handshake's room is given back once it is done.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        select_subprotocol,
        Some(ws_config()),
    ));
    let ws = match handshake.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket handshake failed");
            return;
        }
    };
    shared.metrics.connections.inc();
    let mut conn = Conn {
        shared: shared.clone(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        session: Session::default(),
        ws,
        tx: None,
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    conn.tx = Some(tx);
    conn.run(rx, shutdown).await;
    conn.cleanup().await;
    shared.metrics.connections.dec();
}

struct Conn {
    shared: Arc<Shared>,
    /// Id of this connection, stored with the UA's route.
    id: String,
    session: Session,
    ws: Ws,
    /// Sender of this connection's outbound queue, handed to the registry on register/ua.
    tx: Option<mpsc::Sender<Outbound>>,
}

/// Why the loop ended early.
enum End {
    Closed,
    Rejected,
}

impl Conn {
    async fn run(&mut self, mut rx: mpsc::Receiver<Outbound>, shutdown: CancellationToken) {
        let period = Duration::from_secs(self.shared.settings.ping_interval_secs.max(1));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                frame = self.ws.next() => {
                    let result = match frame {
                        // On the heap: a command's future is large, and an idle
                        // connection should not carry its room.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(&text, &mut rx)).await,
                        Some(Ok(Message::Binary(_))) => {
                            self.send_error(&ProtocolError::new(Code::Binary, "binary frames not supported")).await
                        }
                        // Pings are answered by the WebSocket layer itself.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Err(End::Closed),
                    };
                    if let Err(end) = result {
                        if matches!(end, End::Rejected) {
                            self.close(CloseCode::Policy, "register/ua rejected").await;
                        }
                        return;
                    }
                }
                outbound = rx.recv() => match outbound {
                    Some(Outbound::Notify(queued)) => {
                        if self.ws.send(Message::Text(queued.frame)).await.is_err() {
                            return;
                        }
                        self.shared.metrics.delivered.inc();
                    }
                    Some(Outbound::TakenOver) => {
                        self.close(CloseCode::Normal, "uatoken registered on another connection").await;
                        // The newer connection owns the UA now: nothing to clean up.
                        self.session = Session::default();
                        return;
                    }
                    None => return,
                },
                _ = ping.tick() => {
                    if self.ws.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                _ = shutdown.cancelled() => {
                    self.close(CloseCode::Away, "server shutting down").await;
                    return;
                }
            }
        }
    }

    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }

    async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), End> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Closed)
    }

    async fn send_error(&mut self, error: &ProtocolError) -> Result<(), End> {
        let body = serde_json::json!({"error": error.reason, "code": error.code.number()});
        self.send_text(body.to_string()).await
    }

    /// Handles one client text frame.
    async fn on_text(&mut self, text: &str, rx: &mut mpsc::Receiver<Outbound>) -> Result<(), End> {
        let command = match parse(text) {
            Ok(c) => c,
            Err(e) => {
                self.send_error(&e).await?;
                // A register/ua with bad data is still a rejected register/ua.
                return if crate::session::names_register_ua(text) {
                    Err(End::Rejected)
                } else {
                    Ok(())
                };
            }
        };
        match command {
            Command::Ping => self.send_text("PONG").await,
            Command::RegisterUa { uatoken, interface } => {
                match self.register_ua(&uatoken, interface).await {
                    Ok(ua) => {
                        self.send_text("OK").await?;
                        self.send_pending(&ua, rx).await
                    }
                    Err(e) => {
                        self.send_error(&e).await?;
                        Err(End::Rejected)
                    }
                }
            }
            Command::RegisterWa {
                uatoken,
                watoken,
                pbk,
            } => {
                let reply = self.register_wa(&uatoken, &watoken, pbk.map(|k| k.0)).await;
                match reply {
                    Ok(url) => self.send_text(url).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Command::UnregisterWa {
                uatoken,
                watoken,
                pbk,
            } => {
                match self
                    .unregister_wa(&uatoken, &watoken, pbk.map(|k| k.0))
                    .await
                {
                    Ok(()) => self.send_text("OK").await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Command::Ack { message_ids } => match self.ack(message_ids).await {
                Ok(()) => Ok(()),
                Err(e) => self.send_error(&e).await,
            },
        }
    }

    async fn register_ua(
        &mut self,
        uatoken: &str,
        interface: Option<common::model::Interface>,
    ) -> Result<UaId, ProtocolError> {
        let ua = self
            .session
            .check_register_ua(&self.shared.deps.secret, uatoken)?;
        let Some(tx) = self.tx.clone() else {
            return Err(unavailable());
        };
        // Attach before storing the route: a notification routed here as soon as the route
        // is stored must find the connection. It waits in the queue until the pending ones
        // are sent, so `OK` still comes first.
        self.shared.attach(
            &ua,
            ConnHandle {
                conn: self.id.clone(),
                tx,
            },
        );
        let route = connected_route(ua.clone(), &self.shared.server_id, &self.id, interface);
        let previous = match self.shared.deps.store.register_ua(&route).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "storing a UA route failed");
                self.shared.detach(&ua, &self.id);
                return Err(unavailable());
            }
        };
        // The UA was live on another instance: that connection must close.
        if let Some(prev) = previous {
            if let (Some(node), Some(conn)) = (prev.node, prev.conn) {
                if node != self.shared.server_id {
                    let message = FrontEndMessage::Takeover {
                        ua: ua.clone(),
                        conn,
                    };
                    match self
                        .shared
                        .deps
                        .broker
                        .publish(&front_end_queue(&node), encode(&message))
                        .await
                    {
                        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
                        Err(e) => tracing::warn!(error = %e, "sending a take-over failed"),
                    }
                }
            }
        }
        self.shared
            .route_changed(RouteEvent::Ua { ua: ua.clone() })
            .await;
        self.session.registered(uatoken, ua.clone());
        self.shared.metrics.registered.inc();
        Ok(ua)
    }

    /// Sends the UA's outstanding notifications right after `OK`, then whatever was routed
    /// here meanwhile, without sending any of them twice.
    async fn send_pending(
        &mut self,
        ua: &UaId,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), End> {
        let now = common::now_secs();
        let pending = match self
            .shared
            .deps
            .store
            .outstanding(ua, now, self.shared.settings.max_pending)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                // They stay pending and go out on the next register/ua.
                tracing::warn!(error = %e, "reading pending notifications failed");
                Vec::new()
            }
        };
        let base = self.shared.deps.notify_base_url.clone();
        let mut sent = HashSet::new();
        for chunk in pending.chunks(PENDING_PER_FRAME) {
            let frames: Vec<_> = chunk.iter().map(|n| n.to_frame(&base)).collect();
            let text = serde_json::to_string(&frames).unwrap_or_default();
            self.send_text(text).await?;
            self.shared.metrics.delivered.add(chunk.len() as i64);
            sent.extend(chunk.iter().map(|n| n.message_id.clone()));
        }
        let updates = DeliveryUpdate::for_ua(
            ua,
            pending.iter().map(|n| n.message_id.clone()),
            DeliveryStatus::Sent,
        );
        if self.shared.writer.write(updates).await.is_err() {
            tracing::warn!("recording pending notifications as sent failed");
        }
        // Notifications routed here while the pending ones were read may be among them.
        while let Ok(outbound) = rx.try_recv() {
            match outbound {
                Outbound::Notify(queued) => {
                    if !sent.contains(&queued.message_id) {
                        self.send_text(queued.frame).await?;
                        self.shared.metrics.delivered.inc();
                    }
                }
                Outbound::TakenOver => {
                    self.close(
                        CloseCode::Normal,
                        "uatoken registered on another connection",
                    )
                    .await;
                    self.session = Session::default();
                    return Err(End::Closed);
                }
            }
        }
        Ok(())
    }

    async fn register_wa(
        &mut self,
        uatoken: &str,
        watoken: &str,
        pbk: Option<crypto::PublicKey>,
    ) -> Result<String, ProtocolError> {
        let ua = self.session.check_same_ua(uatoken)?;
        let app_token = crypto::app_token(&self.shared.deps.secret, watoken, pbk.as_ref());
        let store = &self.shared.deps.store;
        let app = App {
            app_token: app_token.clone(),
            pbk: pbk.map(|k| k.pem().to_owned()),
        };
        let stored = async {
            store.put_app(&app).await?;
            store.register_wa(&ua, &app_token).await
        };
        if let Err(e) = stored.await {
            tracing::warn!(error = %e, "storing a WA registration failed");
            return Err(unavailable());
        }
        self.shared
            .route_changed(RouteEvent::App {
                app_token: app_token.clone(),
            })
            .await;
        Ok(notify_url(&self.shared.deps.notify_base_url, &app_token))
    }

    async fn unregister_wa(
        &mut self,
        uatoken: &str,
        watoken: &str,
        pbk: Option<crypto::PublicKey>,
    ) -> Result<(), ProtocolError> {
        let ua = self.session.check_same_ua(uatoken)?;
        let app_token = crypto::app_token(&self.shared.deps.secret, watoken, pbk.as_ref());
        if let Err(e) = self.shared.deps.store.unregister_wa(&ua, &app_token).await {
            tracing::warn!(error = %e, "removing a WA registration failed");
            return Err(unavailable());
        }
        self.shared
            .route_changed(RouteEvent::App { app_token })
            .await;
        Ok(())
    }

    async fn ack(&mut self, message_ids: Vec<String>) -> Result<(), ProtocolError> {
        let ua = self.session.check_any_ua()?;
        let count = message_ids.len();
        let updates = DeliveryUpdate::for_ua(&ua, message_ids, DeliveryStatus::Acked);
        self.shared
            .writer
            .write(updates)
            .await
            .map_err(|_| unavailable())?;
        self.shared.metrics.acked.add(count as i64);
        Ok(())
    }

    /// Records the UA as disconnected, unless a newer connection has taken it over.
    async fn cleanup(&mut self) {
        let Some(ua) = self.session.ua().cloned() else {
            return;
        };
        if !self.shared.detach(&ua, &self.id) {
            return;
        }
        if let Err(e) = self
            .shared
            .deps
            .store
            .disconnect_ua(&ua, &self.shared.server_id, &self.id)
            .await
        {
            // The route stays pointed here; routing to a UA that isn't here falls back to
            // "offline" in the queue consumer, so nothing is lost.
            tracing::warn!(error = %e, "recording a disconnect failed");
        }
        self.shared.route_changed(RouteEvent::Ua { ua }).await;
    }
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(Code::Unavailable, "a dependency is unavailable; retry")
}
