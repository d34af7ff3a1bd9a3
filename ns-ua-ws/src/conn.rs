//! One UA's WebSocket: the handshake with the `push-notification` subprotocol, then a loop
//! over client frames, queued notifications and pings. The session state machine decides;
//! this does the I/O it asks for. The loop is generic over its socket, so that tests drive
//! it with channels.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};

use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::messages::{front_end_queue, FrontEndMessage, RouteEvent};
use common::model::{
    AppToken, ConnId, EpochMillis, EpochSecs, Interface, Live, MessageId, UaId, UaRoute,
};
use common::network;
use common::notification::{notify_url, Frame, Notification, NotificationFrame};
use common::validate::{Code, ProtocolError};
use futures::{Sink, SinkExt, Stream, StreamExt};
use ns_broker::BrokerError;
use ns_http::Stream as Connection;
use ns_store::StoreError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError as FrameError;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::registry::{self, Outbound, Queued};
use crate::session::{Action, Close, Dialect, Session, Step};
use crate::webpush::{self, ClientMessage};
use crate::Shared;

/// The subprotocol of §2.
const SUBPROTOCOL: &str = "push-notification";
/// Notifications queued for one connection before it counts as too slow.
const OUTBOUND_QUEUE: usize = 64;
/// Notifications per frame when sending the pending ones.
const PENDING_PER_FRAME: usize = 100;
/// Pings a client may leave unanswered before the connection counts as dead: it is closed
/// at the next ping time, between two and three ping intervals after the client went quiet.
const UNANSWERED_PINGS: u8 = 2;
/// Most stored messages a Web Push UA is sent before it settles them.
const WEBPUSH_BACKLOG: usize = 1000;
/// The read buffer every connection keeps: room for a command of either dialect (a
/// `register/ua`, a `hello`, a `register` with its key are under 200 bytes). A larger
/// frame still gets a buffer of its own size (and the connection keeps it, as large as the
/// largest frame it was sent); the bytes of one come from the socket in reads of up to
/// [`READ_AHEAD`] (see [`Transport`]).
const READ_BUFFER: usize = 256;
/// Most bytes read from the socket in one system call.
const READ_AHEAD: usize = 8 * 1024;
/// Largest client frame: commands are small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How long a closed connection waits for the client to end TCP before dropping it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// The stream under a connection's WebSocket (TCP, or TLS over it), or under its HTTP when
/// the head was read to see which it is. tungstenite asks for at most its read
/// buffer's size ([`READ_BUFFER`]) at a time; this reads what the socket has, up to
/// [`READ_AHEAD`], in one system call, and keeps what did not fit for the next asks, on the
/// heap only until they have taken it. So the buffer every connection keeps for good stays
/// small, and a large frame still comes in a few system calls rather than one per
/// [`READ_BUFFER`] bytes.
pub(crate) struct Transport {
    stream: Connection,
    /// Read from the socket and not asked for yet; without an allocation when empty.
    ahead: BytesMut,
}

impl Transport {
    /// `stream`, whose first bytes are `head` (already read from it), if any.
    pub(crate) fn new(stream: Connection, head: Vec<u8>) -> Self {
        Transport {
            stream,
            ahead: if head.is_empty() {
                BytesMut::new()
            } else {
                BytesMut::from(&head[..])
            },
        }
    }

    /// The stream; what was read ahead is dropped.
    fn into_inner(self) -> Connection {
        self.stream
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = buf.remaining().min(this.ahead.len());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                this.ahead = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let mut chunk = [0u8; READ_AHEAD];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
        let read = read.filled();
        let n = buf.remaining().min(read.len());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.ahead = BytesMut::from(&read[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts the WebSocket handshake on `stream`, whose first bytes are `head` when they were
/// read already: the socket to [`serve`], and the client's address. `None` when the
/// handshake failed.
pub(crate) async fn accept(
    stream: Connection,
    head: Vec<u8>,
) -> Option<(WebSocketStream<Transport>, Option<IpAddr>)> {
    let peer = stream.tcp().peer_addr().ok().map(|a| a.ip());
    // On the heap: the handshake's room is given back once it is done.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        Transport::new(stream, head),
        select_subprotocol,
        Some(ws_config()),
    ));
    match handshake.await {
        Ok(ws) => Some((ws, peer)),
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket handshake failed");
            None
        }
    }
}

/// Runs an accepted WebSocket connection to its end, then ends its TCP connection
/// ([`linger`]). Meant to be a task of its own: the future is the connection's whole state
/// while it is idle, with the socket in it once.
pub(crate) fn serve(
    ws: WebSocketStream<Transport>,
    peer: Option<IpAddr>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    run(
        ws,
        peer,
        shared,
        shutdown,
        |ws: WebSocketStream<Transport>| linger(ws.into_inner().into_inner()),
    )
}

/// Ends the connection (TLS: with its close_notify) once its WebSocket is closed. A FIN goes right away: Firefox
/// does not finish the close handshake (WEBPUSH.md §2), and other clients take the end of
/// the stream as its end. Then what the client still sends (its Close, the rest of a frame
/// too large to read) is read and dropped for up to [`CLOSE_GRACE`], so that the socket
/// closes with nothing unread: one closed with unread data sends a reset instead.
async fn linger(mut stream: Connection) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 1024];
    let drain = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Runs one connection over `socket` until the client leaves, the UA is taken over, or
/// `shutdown`; then releases its UA, and hands the socket to `end` (which ends its
/// transport).
///
/// Not an `async fn`: the arguments of one stay in its future for good even once moved,
/// and the socket is the largest part of an idle connection's memory. The future returned
/// holds it once, inside the [`Conn`].
pub(crate) fn run<S, E, F>(
    socket: S,
    peer: Option<IpAddr>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    end: E,
) -> impl Future<Output = ()>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    E: FnOnce(S) -> F,
    F: Future<Output = ()>,
{
    shared.metrics.connections.of(Dialect::Undecided).inc();
    let (tx, rx) = registry::queue(OUTBOUND_QUEUE);
    let conn = Conn {
        shared,
        id: ConnId::new(uuid::Uuid::new_v4().simple().to_string()),
        session: Session::default(),
        socket,
        tx,
        peer,
        unanswered_pings: 0,
        counts: None,
    };
    conn.run(rx, shutdown, end)
}

/// Records the UA as disconnected, unless a newer connection has taken it over.
async fn release(shared: &Shared, ua: UaId, conn: ConnId) {
    if !shared.connections.detach(&ua, &conn) {
        return;
    }
    let live = Live {
        node: shared.node.clone(),
        conn,
    };
    if let Err(e) = shared.deps.store.disconnect_ua(&ua, &live).await {
        // The route stays pointed here; a notification routed to a UA that isn't here is
        // handed back to the monitor, so nothing is lost.
        tracing::warn!(error = %e, "recording a disconnect failed");
    }
    shared.route_changed(RouteEvent::Ua { ua }).await;
}

struct Conn<S> {
    shared: Arc<Shared>,
    /// Id of this connection, stored with the UA's route.
    id: ConnId,
    session: Session,
    socket: S,
    /// Sender of this connection's outbound queue, handed to the registry on register/ua.
    tx: registry::Sender,
    /// The client's address: the one `interface` it may give without the operator's leave.
    peer: Option<IpAddr>,
    /// Pings sent since the client last sent anything.
    unanswered_pings: u8,
    /// Set when the UA registered with `countEvents`; on the heap, as few connections ask.
    counts: Option<Box<CountEvents>>,
}

/// The least time between two count events of one connection (PROTOCOL.md §2).
const COUNT_EVENT_GAP: Duration = Duration::from_millis(100);

/// The count events of a UA that registered with `countEvents`: what it was last told, and
/// when to count again. The wait is a task of its own that puts [`Outbound::Count`] in the
/// connection's queue, so that a connection without count events carries no timer.
#[derive(Default)]
struct CountEvents {
    /// The count last sent.
    sent: Option<u64>,
    /// When it was sent: the next frame waits [`COUNT_EVENT_GAP`] after it.
    sent_at: Option<Instant>,
    /// When to count again (soon after something that may change the count, or when the
    /// soonest owed notification expires), and the task that waits for it.
    due: Option<(Instant, AbortHandle)>,
}

impl CountEvents {
    /// Counts again at `at`, or at the time already set if that is sooner.
    fn count_at(&mut self, at: Instant, tx: &registry::Sender) {
        if let Some((due, timer)) = &self.due {
            if *due <= at {
                return;
            }
            timer.abort();
        }
        let tx = tx.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            tx.send(Outbound::Count).await;
        });
        self.due = Some((at, timer.abort_handle()));
    }
}

impl Drop for CountEvents {
    fn drop(&mut self) {
        if let Some((_, timer)) = &self.due {
            timer.abort();
        }
    }
}

/// What the connection's loop waited for.
enum Input {
    Frame(Option<Result<Message, WsError>>),
    Outbound(Outbound),
    Ping,
    Shutdown,
}

/// Why the loop ends early.
enum End {
    /// The socket is gone.
    Gone,
    /// The client closed; tungstenite queued the echo of its Close frame when it read it.
    ClosedByClient,
    /// The client broke RFC 6455: the connection fails with this code (§7.1.7).
    Fail(CloseCode, &'static str),
    /// The server closes the connection.
    Close(Close),
}

/// The Close frame answering a client frame that tungstenite could not read; `None` when
/// the socket itself is gone.
fn failure(error: &WsError) -> Option<(CloseCode, &'static str)> {
    match error {
        WsError::Capacity(_) => Some((CloseCode::Size, "frame too large")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8")),
        WsError::Protocol(FrameError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((CloseCode::Protocol, "WebSocket protocol violation")),
        _ => None,
    }
}

impl<S> Conn<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    /// The connection's whole life, then `end` with its socket. (An `async fn` taking
    /// `mut self` would keep a second copy of the connection in its future; the block below
    /// captures it once.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold the connection twice"
    )]
    fn run<E, F>(
        mut self,
        mut rx: registry::Receiver,
        shutdown: CancellationToken,
        end: E,
    ) -> impl Future<Output = ()>
    where
        E: FnOnce(S) -> F,
        F: Future<Output = ()>,
    {
        async move {
            self.serve(&mut rx, &shutdown).await;
            drop(rx);
            let dialect = self.session.dialect();
            // The socket stays where it is until `end` takes it: moved out to wait for the
            // release, it would need room of its own beside the connection's.
            if let Some(ua) = std::mem::take(&mut self.session).into_release() {
                // On the heap: only an ending connection needs its room.
                Box::pin(release(&self.shared, ua, self.id.clone())).await;
            }
            self.shared.metrics.connections.of(dialect).dec();
            let Conn { socket, .. } = self;
            Box::pin(end(socket)).await;
        }
    }

    async fn serve(&mut self, rx: &mut registry::Receiver, shutdown: &CancellationToken) {
        let period = Duration::from_secs(self.shared.settings.ping_interval_secs.max(1));
        // A deadline moved on by one period each time it passes (a late tick comes at once,
        // as an interval's would), kept in the connection's own future rather than boxed.
        let ping = tokio::time::sleep(period);
        tokio::pin!(ping);
        let end = loop {
            let input = tokio::select! {
                frame = self.socket.next() => Input::Frame(frame),
                outbound = rx.recv() => Input::Outbound(outbound),
                () = &mut ping => {
                    let next = ping.deadline() + period;
                    ping.as_mut().reset(next);
                    Input::Ping
                }
                () = shutdown.cancelled() => Input::Shutdown,
            };
            // On the heap: what an input leads to takes far more room than the wait for one,
            // and an idle connection should carry only the wait.
            if let Err(end) = Box::pin(self.on_input(input, rx)).await {
                break end;
            }
        };
        match end {
            End::Gone => {}
            // The reply goes out with the next write; tungstenite wrote the client's code in
            // it, or 1002 for one a client may not send.
            End::ClosedByClient => {
                let _ = self.socket.flush().await;
            }
            End::Fail(code, reason) => {
                self.count_close(code);
                Box::pin(self.send_close(code, reason)).await
            }
            End::Close(close) => {
                if close == Close::TakenOver {
                    self.shared.metrics.taken_over.inc();
                }
                Box::pin(self.close(close)).await;
            }
        }
    }

    async fn on_input(&mut self, input: Input, rx: &mut registry::Receiver) -> Result<(), End> {
        if let Input::Frame(Some(Ok(_))) = &input {
            // Any frame shows the client is there, a pong or not.
            self.unanswered_pings = 0;
        }
        match input {
            Input::Frame(frame) => match frame {
                Some(Ok(Message::Text(text))) => match self.dialect_for(&text) {
                    Dialect::WebPush => self.on_push_text(&text, rx).await,
                    _ => self.on_text(&text, rx).await,
                },
                Some(Ok(Message::Binary(_))) if self.session.dialect() == Dialect::WebPush => Err(
                    End::Close(Close::Protocol("binary frames are not part of Web Push")),
                ),
                Some(Ok(Message::Binary(_))) => self.step(self.session.on_binary()).await,
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                Some(Ok(Message::Close(_))) => Err(End::ClosedByClient),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "unreadable client frame");
                    Err(failure(&e).map_or(End::Gone, |(code, reason)| End::Fail(code, reason)))
                }
                None => Err(End::Gone),
            },
            Input::Outbound(outbound) => match outbound {
                Outbound::Notify(queued) => {
                    // New, or a replacement of one it is owed.
                    self.count_may_change();
                    if self.fresh(&queued) && self.session.first_routed(&queued.message_id) {
                        let created_at = queued.created_at;
                        self.send_notification(queued.frame).await?;
                        self.delivered_since([created_at]);
                        Ok(())
                    } else {
                        Ok(())
                    }
                }
                Outbound::TakenOver => Err(End::Close(self.session.taken_over())),
                Outbound::Resync => {
                    self.count_may_change();
                    self.resync().await
                }
                Outbound::Count => self.send_count_event().await,
            },
            // A client that let the last pings go unanswered is gone, whatever TCP says.
            Input::Ping if self.unanswered_pings >= UNANSWERED_PINGS => {
                Err(End::Close(Close::Unresponsive))
            }
            Input::Ping => {
                self.unanswered_pings += 1;
                self.socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .map_err(|_| End::Gone)
            }
            Input::Shutdown => Err(End::Close(Close::GoingAway)),
        }
    }

    async fn close(&mut self, close: Close) {
        // A rejection was counted with the error frame sent before it: one refusal, once.
        let refusal = matches!(close, Close::Protocol(_) | Close::Unavailable);
        let (code, reason) = match close {
            Close::Rejected => (CloseCode::Policy, "register/ua rejected"),
            Close::TakenOver => (
                CloseCode::Normal,
                "uatoken registered on another connection",
            ),
            Close::GoingAway => (CloseCode::Away, "server shutting down"),
            Close::Protocol(reason) => (CloseCode::Protocol, reason),
            Close::Unavailable => (CloseCode::Again, "service unavailable; retry later"),
            Close::Unresponsive => (CloseCode::Away, "no answer to pings"),
        };
        if refusal {
            self.count_close(code);
        }
        self.send_close(code, reason).await;
    }

    async fn send_close(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }

    async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), End> {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)
    }

    /// Not past its TTL: it may have waited in the queue since it was routed.
    fn fresh(&self, queued: &Queued) -> bool {
        if queued.is_expired(self.shared.deps.clock.now()) {
            self.shared.metrics.expired.inc();
            return false;
        }
        true
    }

    /// The connection's dialect, fixed by its first text frame; moves the connection from
    /// the undecided ones to its dialect's in the gauge when that frame comes.
    fn dialect_for(&mut self, text: &str) -> Dialect {
        let before = self.session.dialect();
        let dialect = self.session.dialect_for(text);
        if before != dialect {
            let connections = &self.shared.metrics.connections;
            connections.of(before).dec();
            connections.of(dialect).inc();
        }
        dialect
    }

    /// Observes, for notifications just written to the UA, the time since they were
    /// accepted.
    fn delivered_since(&self, accepted: impl IntoIterator<Item = EpochMillis>) {
        let histogram = match self.session.dialect() {
            Dialect::WebPush => &self.shared.metrics.latency_webpush,
            _ => &self.shared.metrics.latency_telefonica,
        };
        let now = self.shared.deps.clock.now_millis();
        for at in accepted {
            histogram.observe_millis(now.as_i64() - at.as_i64());
        }
    }

    /// Counts a close that refuses the client (a protocol error, an unreadable frame, an
    /// outage), by its close code.
    fn count_close(&self, code: CloseCode) {
        let dialect = match self.session.dialect() {
            Dialect::WebPush => "webpush",
            _ => "telefonica",
        };
        self.shared.metrics.refusals.count(ns_http::Refusal {
            dialect,
            code: u16::from(code),
            errno: None,
        });
    }

    async fn send_notification(&mut self, frame: Utf8Bytes) -> Result<(), End> {
        self.send_text(frame).await?;
        self.shared.metrics.delivered.inc();
        Ok(())
    }

    async fn send_error(&mut self, error: &ProtocolError) -> Result<(), End> {
        self.shared
            .metrics
            .refusals
            .count(ns_http::Refusal::telefonica(error.code));
        let body = serde_json::json!({"error": error.reason, "code": error.code.number()});
        self.send_text(body.to_string()).await
    }

    /// Handles one client text frame.
    async fn on_text(&mut self, text: &str, rx: &mut registry::Receiver) -> Result<(), End> {
        match self.session.on_text(text, &self.shared.deps.secret) {
            Step::Do(action) => self.perform(action, rx).await,
            step => self.step(step).await,
        }
    }

    /// Answers a step that needs no I/O beyond the answer.
    async fn step(&mut self, step: Step) -> Result<(), End> {
        match step {
            Step::Pong => self.send_text("PONG").await,
            Step::Error(e) => self.send_error(&e).await,
            Step::Reject(e) => {
                self.send_error(&e).await?;
                Err(End::Close(Close::Rejected))
            }
            Step::Do(_) => Ok(()),
        }
    }

    async fn perform(&mut self, action: Action, rx: &mut registry::Receiver) -> Result<(), End> {
        match action {
            Action::RegisterUa {
                ua,
                interface,
                count_events,
            } => {
                match self.check_interface(interface.as_ref()) {
                    Err(e) => self.step(Step::Reject(e)).await,
                    Ok(()) => match self.register_ua(&ua, interface).await {
                        Ok(()) => {
                            self.session.registered(ua.clone());
                            self.shared.metrics.registered.inc();
                            self.send_text("OK").await?;
                            self.send_pending(&ua, rx).await?;
                            // The first count event says the count as it is now.
                            self.counts = count_events.then(Box::default);
                            self.count_may_change();
                            Ok(())
                        }
                        Err(e) => self.step(Step::Reject(e)).await,
                    },
                }
            }
            Action::RegisterWa { ua, app } => {
                match self.within_quota(&ua, &app.app_token).await {
                    Ok(true) => {}
                    Ok(false) => return self.send_error(&quota_exceeded()).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "counting registrations failed");
                        return self.send_error(&unavailable()).await;
                    }
                }
                let store = &self.shared.deps.store;
                let stored = async {
                    store.put_app(&app).await?;
                    store.register_wa(&ua, &app.app_token).await
                };
                if let Err(e) = stored.await {
                    tracing::warn!(error = %e, "storing a WA registration failed");
                    return self.send_error(&unavailable()).await;
                }
                let url = notify_url(&self.shared.deps.notify_base_url, &app.app_token);
                self.shared
                    .route_changed(RouteEvent::App {
                        app_token: app.app_token,
                    })
                    .await;
                self.send_text(url).await
            }
            Action::UnregisterWa { ua, app_token } => {
                if let Err(e) = self.shared.deps.store.unregister_wa(&ua, &app_token).await {
                    tracing::warn!(error = %e, "removing a WA registration failed");
                    return self.send_error(&unavailable()).await;
                }
                self.shared
                    .route_changed(RouteEvent::App { app_token })
                    .await;
                self.send_text("OK").await
            }
            Action::Ack { ua, message_ids } => {
                let count = message_ids.len();
                let updates = DeliveryUpdate::for_ua(&ua, message_ids, DeliveryStatus::Acked);
                let now = self.shared.deps.clock.now();
                match self.shared.deps.store.record_deliveries(updates, now).await {
                    Ok(()) => {
                        self.shared.metrics.acked.add(count as i64);
                        self.count_may_change();
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "storing acks failed");
                        self.send_error(&unavailable()).await
                    }
                }
            }
            Action::Count { ua } => {
                let now = self.shared.deps.clock.now();
                match self.shared.deps.store.owed_count(&ua, now).await {
                    Ok(owed) => self.send_text(count_frame(owed.pending)).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "counting a UA's notifications failed");
                        self.send_error(&unavailable()).await
                    }
                }
            }
        }
    }

    /// Something happened that may change the UA's count: count again soon, but send at
    /// most one count event per [`COUNT_EVENT_GAP`].
    fn count_may_change(&mut self) {
        if let Some(c) = self.counts.as_deref_mut() {
            let now = Instant::now();
            let earliest = c.sent_at.map_or(now, |at| (at + COUNT_EVENT_GAP).max(now));
            c.count_at(earliest, &self.tx);
        }
    }

    /// Counts what the UA is owed and, if that is not what it was last told, tells it.
    async fn send_count_event(&mut self) -> Result<(), End> {
        let Some(ua) = self.session.ua().cloned() else {
            return Ok(());
        };
        let Some(c) = self.counts.as_deref_mut() else {
            return Ok(());
        };
        // The timer that woke this one is done.
        if c.due
            .as_ref()
            .is_some_and(|(due, _)| *due <= Instant::now())
        {
            c.due = None;
        }
        // The wake-up of a timer replaced just as it fired: keep to the gap all the same.
        if let Some(next) = c.sent_at.map(|at| at + COUNT_EVENT_GAP) {
            if next > Instant::now() {
                c.count_at(next, &self.tx);
                return Ok(());
            }
        }
        // Counting now: whatever was set for later is set again below.
        if let Some((_, timer)) = c.due.take() {
            timer.abort();
        }
        let now = self.shared.deps.clock.now();
        let owed = self.shared.deps.store.owed_count(&ua, now).await;
        let Some(c) = self.counts.as_deref_mut() else {
            return Ok(());
        };
        let owed = match owed {
            Ok(owed) => owed,
            Err(e) => {
                tracing::warn!(error = %e, "counting a UA's notifications failed; retrying");
                c.count_at(Instant::now() + Duration::from_secs(1), &self.tx);
                return Ok(());
            }
        };
        // The soonest expiry lowers the count by itself: count again then.
        if let Some(at) = owed.next_expiry {
            let secs = u64::try_from(at.as_i64() - now.as_i64()).unwrap_or(0);
            c.count_at(
                Instant::now() + Duration::from_secs(secs).max(COUNT_EVENT_GAP),
                &self.tx,
            );
        }
        if c.sent == Some(owed.pending) {
            return Ok(());
        }
        c.sent = Some(owed.pending);
        c.sent_at = Some(Instant::now());
        self.send_text(count_frame(owed.pending)).await
    }

    /// A UA may be registered for at most `--max-registrations-per-ua` apps (Web Push
    /// subscriptions included); registering again for one it has is always fine.
    async fn within_quota(&self, ua: &UaId, app_token: &AppToken) -> Result<bool, StoreError> {
        let store = &self.shared.deps.store;
        let max = self.shared.settings.max_registrations_per_ua;
        if store.ua_registrations(ua).await? < max {
            return Ok(true);
        }
        Ok(store.app_uas(app_token).await?.contains(ua))
    }

    /// A UA is woken only at its own address or inside a network the operator allows: any
    /// other `interface` would make the server send datagrams to third parties.
    fn check_interface(&self, interface: Option<&Interface>) -> Result<(), ProtocolError> {
        let allowed = &self.shared.settings.udp_allow_networks;
        match interface {
            Some(i) if !network::interface_allowed(i.ip, self.peer, allowed) => {
                Err(ProtocolError::new(
                    Code::BadField,
                    "interface.ip must be this connection's own address, or inside \
                     the networks the server allows",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Makes this connection the UA's live one, here and in the store, and closes the one
    /// it had elsewhere.
    async fn register_ua(
        &mut self,
        ua: &UaId,
        interface: Option<Interface>,
    ) -> Result<(), ProtocolError> {
        // Attach before storing the route: a notification routed here as soon as the route
        // is stored must find the connection. It waits in the queue until the pending ones
        // are sent, so `OK` still comes first.
        self.shared
            .connections
            .attach(ua, &self.id, self.tx.clone());
        let route = UaRoute::connected(
            ua.clone(),
            self.shared.node.clone(),
            self.id.clone(),
            interface,
        );
        let previous = match self.shared.deps.store.register_ua(&route).await {
            Ok(previous) => previous,
            Err(e) => {
                tracing::warn!(error = %e, "storing a UA route failed");
                self.shared.connections.detach(ua, &self.id);
                return Err(unavailable());
            }
        };
        // The UA was live on another front-end: that connection must close.
        if let Some(Live { node, conn }) = previous.and_then(|p| p.live) {
            if node != self.shared.node {
                let message = FrontEndMessage::Takeover {
                    ua: ua.clone(),
                    conn,
                };
                let queue = front_end_queue(&node);
                match ns_broker::publish(&*self.shared.deps.broker, &queue, &message).await {
                    // A front-end that is gone has closed its connections already.
                    Ok(()) | Err(BrokerError::Unroutable(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "sending a take-over failed"),
                }
            }
        }
        self.shared
            .route_changed(RouteEvent::Ua { ua: ua.clone() })
            .await;
        Ok(())
    }

    /// Sends up to `limit` of the UA's stored notifications and records them sent; returns
    /// their ids. On a Web Push connection they are the backlog the UA has to settle before
    /// the rest follows.
    async fn send_stored(&mut self, ua: &UaId, limit: usize) -> Result<Vec<MessageId>, End> {
        let now = self.shared.deps.clock.now();
        let pending = self.owed(ua, limit, now).await;
        let more = limit > 0 && pending.len() == limit;
        let ids = self.send_owed(ua, pending, now).await?;
        if self.session.dialect() == Dialect::WebPush {
            self.session.backlog_sent(ids.iter().cloned(), more);
        }
        Ok(ids)
    }

    /// Up to `limit` of what `ua` is owed, oldest first; none when the store fails (they
    /// stay pending and go out on the next register/ua or hello).
    async fn owed(&self, ua: &UaId, limit: usize, now: EpochSecs) -> Vec<Notification> {
        match self.shared.deps.store.outstanding(ua, now, limit).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading pending notifications failed");
                Vec::new()
            }
        }
    }

    /// Sends stored notifications and records them as sent; returns their ids.
    async fn send_owed(
        &mut self,
        ua: &UaId,
        pending: Vec<Notification>,
        now: EpochSecs,
    ) -> Result<Vec<MessageId>, End> {
        // The read may have been slow: what expired meanwhile stays unsent.
        let mut pending = pending;
        let read = pending.len();
        let after = self.shared.deps.clock.now();
        pending.retain(|n| !n.is_expired(after));
        self.shared
            .metrics
            .expired
            .add((read - pending.len()) as i64);
        let texts = frames_of(&pending, &self.shared.deps.notify_base_url).map_err(|e| {
            tracing::error!(error = %e, "encoding pending notifications failed");
            End::Gone
        })?;
        for text in texts {
            self.send_text(text).await?;
        }
        self.shared.metrics.delivered.add(pending.len() as i64);
        self.delivered_since(pending.iter().map(|n| n.created_at));
        let ids: Vec<MessageId> = pending.into_iter().map(|n| n.message_id).collect();
        self.session.remember_sent(ids.iter().cloned());
        let updates = DeliveryUpdate::for_ua(ua, ids.iter().cloned(), DeliveryStatus::Sent);
        if let Err(e) = self.shared.deps.store.record_deliveries(updates, now).await {
            tracing::warn!(error = %e, "recording pending notifications as sent failed");
        }
        Ok(ids)
    }

    /// After a broker outage: sends the UA registered here what it is owed and was not sent
    /// on this connection lately (what was routed while the queue was gone).
    async fn resync(&mut self) -> Result<(), End> {
        let Some(ua) = self.session.ua().cloned() else {
            return Ok(());
        };
        let limit = match self.session.dialect() {
            Dialect::WebPush => self.webpush_backlog(),
            _ => self.shared.settings.max_pending,
        };
        let now = self.shared.deps.clock.now();
        let missed: Vec<Notification> = self
            .owed(&ua, limit, now)
            .await
            .into_iter()
            .filter(|n| !self.session.sent_lately(&n.message_id))
            .collect();
        if missed.is_empty() {
            return Ok(());
        }
        self.send_owed(&ua, missed, now).await.map(|_| ())
    }

    /// Handles one text frame of a Web Push connection.
    async fn on_push_text(&mut self, text: &str, rx: &mut registry::Receiver) -> Result<(), End> {
        let message = webpush::parse(text).map_err(|reason| {
            tracing::debug!(reason, "malformed Web Push message");
            End::Close(Close::Protocol(reason))
        })?;
        let ua = self.session.ua().cloned();
        match (message, ua) {
            (ClientMessage::Ping, _) => self.send_text("{}").await,
            (ClientMessage::BroadcastSubscribe, _) => Ok(()),
            (ClientMessage::Hello { uaid }, None) => {
                let (uaid, ua) = webpush::hello_identity(&self.shared.deps.secret, uaid.as_deref());
                if self.register_ua(&ua, None).await.is_err() {
                    return Err(End::Close(Close::Unavailable));
                }
                self.session.registered(ua.clone());
                self.shared.metrics.registered.inc();
                self.send_text(webpush::hello_reply(&uaid)).await?;
                self.send_pending(&ua, rx).await
            }
            (ClientMessage::Hello { .. }, Some(_)) => {
                Err(End::Close(Close::Protocol("a second hello")))
            }
            (_, None) => Err(End::Close(Close::Protocol("hello must come first"))),
            (ClientMessage::Register { channel_id, key }, Some(ua)) => {
                self.push_register(&ua, &channel_id, key.as_deref()).await
            }
            (ClientMessage::Unregister { channel_id }, Some(ua)) => {
                self.push_unregister(&ua, &channel_id).await
            }
            (ClientMessage::Settle(settled), Some(ua)) => self.settle(&ua, settled).await,
        }
    }

    async fn push_register(
        &mut self,
        ua: &UaId,
        channel_id: &str,
        key: Option<&str>,
    ) -> Result<(), End> {
        let secret = &self.shared.deps.secret;
        let Some(named) = webpush::name_subscription(secret, ua, channel_id, key) else {
            self.shared.metrics.refused_push(400);
            return self
                .send_text(webpush::register_reply(channel_id, 400, None))
                .await;
        };
        let endpoint = named
            .subscription
            .endpoint(secret, &self.shared.deps.notify_base_url);
        let status = match self.within_quota(ua, &named.app_token).await {
            Ok(true) => None,
            Ok(false) => Some(429),
            Err(e) => {
                tracing::warn!(error = %e, "counting registrations failed");
                Some(503)
            }
        };
        if let Some(status) = status {
            self.shared.metrics.refused_push(status);
            return self
                .send_text(webpush::register_reply(channel_id, status, None))
                .await;
        }
        if let Err(e) = self
            .shared
            .deps
            .store
            .register_wa(ua, &named.app_token)
            .await
        {
            tracing::warn!(error = %e, "storing a subscription failed");
            self.shared.metrics.refused_push(503);
            return self
                .send_text(webpush::register_reply(channel_id, 503, None))
                .await;
        }
        self.shared
            .route_changed(RouteEvent::App {
                app_token: named.app_token,
            })
            .await;
        self.send_text(webpush::register_reply(channel_id, 200, Some(&endpoint)))
            .await
    }

    async fn push_unregister(&mut self, ua: &UaId, channel_id: &str) -> Result<(), End> {
        let secret = &self.shared.deps.secret;
        let Some(named) = webpush::name_subscription(secret, ua, channel_id, None) else {
            self.shared.metrics.refused_push(400);
            return self
                .send_text(webpush::unregister_reply(channel_id, 400))
                .await;
        };
        let store = &self.shared.deps.store;
        if let Err(e) = store.unregister_wa(ua, &named.app_token).await {
            tracing::warn!(error = %e, "removing a subscription failed");
            self.shared.metrics.refused_push(503);
            return self
                .send_text(webpush::unregister_reply(channel_id, 503))
                .await;
        }
        self.shared
            .route_changed(RouteEvent::App {
                app_token: named.app_token,
            })
            .await;
        self.send_text(webpush::unregister_reply(channel_id, 200))
            .await
    }

    /// Records an `ack` or `nack`; once the backlog sent is settled, sends the rest of it.
    async fn settle(
        &mut self,
        ua: &UaId,
        settled: Vec<(MessageId, DeliveryStatus)>,
    ) -> Result<(), End> {
        let ids: Vec<MessageId> = settled.iter().map(|(id, _)| id.clone()).collect();
        let updates = webpush::settlements(ua, settled);
        let now = self.shared.deps.clock.now();
        match self.shared.deps.store.record_deliveries(updates, now).await {
            Ok(()) => self.shared.metrics.acked.add(ids.len() as i64),
            // Unsettled, they are sent again on the next hello.
            Err(e) => tracing::warn!(error = %e, "storing acks failed"),
        }
        if self.session.settled(&ids) {
            self.send_stored(ua, self.webpush_backlog()).await?;
        }
        Ok(())
    }

    /// Most stored messages a Web Push UA has unsettled at once.
    fn webpush_backlog(&self) -> usize {
        self.shared.settings.max_pending.min(WEBPUSH_BACKLOG)
    }

    /// Sends the UA's outstanding notifications right after `OK` (or `hello`), then whatever
    /// was routed here meanwhile, without sending any of them twice.
    async fn send_pending(&mut self, ua: &UaId, rx: &mut registry::Receiver) -> Result<(), End> {
        let limit = match self.session.dialect() {
            Dialect::WebPush => self.webpush_backlog(),
            _ => self.shared.settings.max_pending,
        };
        let ids = self.send_stored(ua, limit).await?;
        self.session.sent_after_ok(ids);
        // Notifications routed here while the pending ones were read may be among them.
        while let Some(outbound) = rx.try_recv() {
            match outbound {
                Outbound::Notify(queued) => {
                    if self.fresh(&queued)
                        && self.session.is_new(&queued.message_id)
                        && self.session.first_routed(&queued.message_id)
                    {
                        self.send_notification(queued.frame).await?;
                    }
                }
                Outbound::TakenOver => return Err(End::Close(self.session.taken_over())),
                // What is owed was just read from the store.
                Outbound::Resync => {}
                Outbound::Count => self.send_count_event().await?,
            }
        }
        self.session.drained();
        Ok(())
    }
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(Code::Unavailable, "a dependency is unavailable; retry")
}

/// The answer to `count`, and a count event: `{"pending": N}`.
fn count_frame(pending: u64) -> String {
    serde_json::json!({ "pending": pending }).to_string()
}

fn quota_exceeded() -> ProtocolError {
    ProtocolError::new(
        Code::QuotaExceeded,
        "this UA is registered for as many apps as allowed; unregister one first",
    )
}

/// Writes notifications in their frames, oldest first: Telefónica ones in arrays of up to
/// [`PENDING_PER_FRAME`], Web Push ones each in its own message.
fn frames_of(pending: &[Notification], base: &str) -> Result<Vec<String>, serde_json::Error> {
    let mut texts = Vec::new();
    let mut batch: Vec<NotificationFrame<'_>> = Vec::new();
    for n in pending {
        match n.to_frame(base) {
            Frame::Telefonica(frame) => {
                batch.push(frame);
                if batch.len() == PENDING_PER_FRAME {
                    texts.push(serde_json::to_string(&batch)?);
                    batch.clear();
                }
            }
            frame @ Frame::WebPush(_) => {
                if !batch.is_empty() {
                    texts.push(serde_json::to_string(&batch)?);
                    batch.clear();
                }
                texts.push(frame.to_text()?);
            }
        }
    }
    if !batch.is_empty() {
        texts.push(serde_json::to_string(&batch)?);
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use common::crypto::{self, Secret};
    use common::model::{AppToken, EpochSecs, MessageId};
    use common::notification::Notification;
    use futures::channel::mpsc as chan;
    use ns_broker_local::LocalBroker;
    use ns_runtime::metrics::Registry;
    use ns_runtime::Clock;
    use ns_store::Store;
    use ns_store_redb::EmbeddedStore;
    use serde_json::{json, Value};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::{Deps, Settings};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// The server's end of a WebSocket, made of two channels.
    struct TestSocket {
        from_client: chan::UnboundedReceiver<Message>,
        to_client: chan::UnboundedSender<Message>,
    }

    impl Stream for TestSocket {
        type Item = Result<Message, WsError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_next_unpin(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Message> for TestSocket {
        type Error = WsError;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.to_client
                .unbounded_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The client's end.
    struct Client {
        to_server: chan::UnboundedSender<Message>,
        from_server: chan::UnboundedReceiver<Message>,
        task: JoinHandle<()>,
    }

    impl Client {
        fn command(&self, command: &str, data: Value) {
            let frame = json!({ "command": command, "data": data }).to_string();
            self.to_server
                .unbounded_send(Message::Text(frame.into()))
                .expect("the connection is open");
        }

        async fn next(&mut self) -> Message {
            tokio::time::timeout(DEADLINE, self.from_server.next())
                .await
                .expect("a frame before the deadline")
                .expect("the connection sent something")
        }

        async fn text(&mut self) -> String {
            match self.next().await {
                Message::Text(text) => text.to_string(),
                other => panic!("expected text, got {other:?}"),
            }
        }

        async fn json(&mut self) -> Value {
            serde_json::from_str(&self.text().await).expect("JSON")
        }

        async fn close_code(&mut self) -> CloseCode {
            match self.next().await {
                Message::Close(Some(frame)) => frame.code,
                other => panic!("expected a close, got {other:?}"),
            }
        }

        /// Leaves, and waits for the server to have released the connection.
        async fn leave(self) {
            drop(self.to_server);
            tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("the connection ends")
                .expect("no panic");
        }
    }

    struct Fixture {
        shared: Arc<Shared>,
        store: Arc<EmbeddedStore>,
        secret: Secret,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    const NOW: EpochSecs = EpochSecs(1_700_000_000);

    fn fixture() -> Fixture {
        fixture_with(Settings::default())
    }

    fn fixture_with(settings: Settings) -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).expect("store"));
        let secret = Secret::new("0123456789abcdef");
        let deps = Deps {
            store: store.clone(),
            broker: Arc::new(LocalBroker::new()),
            registry: Registry::default(),
            clock: Clock::system(),
            secret: secret.clone(),
            notify_base_url: "http://push.example".into(),
        };
        let settings = Settings {
            server_id: Some("here".into()),
            ..settings
        };
        Fixture {
            shared: Arc::new(Shared::new(settings, deps)),
            store,
            secret,
            shutdown: CancellationToken::new(),
            _dir: dir,
        }
    }

    impl Fixture {
        fn connect(&self) -> Client {
            let (to_server, from_client) = chan::unbounded();
            let (to_client, from_server) = chan::unbounded();
            let socket = TestSocket {
                from_client,
                to_client,
            };
            let loopback = Some(IpAddr::from([127, 0, 0, 1]));
            let task = tokio::spawn(run(
                socket,
                loopback,
                self.shared.clone(),
                self.shutdown.clone(),
                |_| async {},
            ));
            Client {
                to_server,
                from_server,
                task,
            }
        }

        async fn registered(&self, token: &str) -> Client {
            let mut client = self.connect();
            client.command("register/ua", json!({ "uatoken": token }));
            assert_eq!(client.text().await, "OK");
            client
        }

        /// A notification stored and pending for `ua`.
        async fn pending(&self, ua: &UaId, id: &str) -> Notification {
            let n = Notification {
                message_id: MessageId::new(uuid::Uuid::now_v7().simple().to_string()),
                app_token: AppToken::new("app"),
                id: id.into(),
                payload: common::notification::Payload::Text(format!("message {id}")),
                ttl: 3600,
                timestamp: NOW,
                expires_at: Clock::system().now().plus(3600),
                priority: 4,
                created_at: Clock::system().now_millis(),
            };
            self.store.insert_notification(&n, NOW).await.unwrap();
            assert!(
                self.store
                    .add_deliveries(&n, std::slice::from_ref(ua), NOW, None)
                    .await
                    .unwrap()
                    .routed
            );
            n
        }

        fn queued(&self, n: &Notification) -> Outbound {
            let frame = serde_json::to_string(&[n.to_frame("http://push.example")]).unwrap();
            Outbound::Notify(Box::new(Queued::new(n, frame.into())))
        }

        async fn live_conn(&self, ua: &UaId) -> Option<ConnId> {
            let routes = self
                .store
                .ua_routes(std::slice::from_ref(ua))
                .await
                .unwrap();
            routes
                .into_iter()
                .next()
                .and_then(|r| r.live)
                .map(|l| l.conn)
        }
    }

    fn ids(frame: &Value) -> Vec<String> {
        frame
            .as_array()
            .expect("a notification array")
            .iter()
            .map(|n| n["id"].as_str().expect("an id").to_owned())
            .collect()
    }

    /// One thread, so that what the test queues between two of the connection's awaits is
    /// there before the connection runs again.
    #[tokio::test(flavor = "current_thread")]
    async fn pending_ones_go_right_after_ok_and_queued_duplicates_are_dropped() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let ua = crypto::ua_id(&token);
        let first = f.pending(&ua, "first").await;
        let second = f.pending(&ua, "second").await;
        let mut client = f.connect();
        client.command("register/ua", json!({ "uatoken": token }));
        // Routed here while the connection registers: one of them is among the pending
        // ones, the other is new.
        let fresh = Notification {
            id: "fresh".into(),
            message_id: MessageId::new("fresh-id"),
            ..first.clone()
        };
        tokio::time::timeout(DEADLINE, async {
            while !f
                .shared
                .connections
                .send_to(&ua, f.queued(&second), Duration::ZERO)
                .await
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection attaches");
        assert!(
            f.shared
                .connections
                .send_to(&ua, f.queued(&fresh), Duration::ZERO)
                .await
        );

        assert_eq!(client.text().await, "OK");
        assert_eq!(
            ids(&client.json().await),
            ["first", "second"],
            "oldest first"
        );
        assert_eq!(
            ids(&client.json().await),
            ["fresh"],
            "second is not sent twice"
        );
        let report = f
            .store
            .status(&first.app_token, "first", NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.deliveries[0].status, DeliveryStatus::Sent);
        client.leave().await;
    }

    /// A notification that expired while it waited in the connection's queue is not sent;
    /// the next one is.
    #[tokio::test]
    async fn what_expired_in_the_queue_is_not_sent() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let ua = crypto::ua_id(&token);
        let mut client = f.registered(&token).await;
        let fresh = f.pending(&ua, "fresh").await;
        let stale = Notification {
            id: "stale".into(),
            message_id: MessageId::new("stale-id"),
            expires_at: Clock::system().now(),
            ..fresh.clone()
        };
        for n in [&stale, &fresh] {
            assert!(
                f.shared
                    .connections
                    .send_to(&ua, f.queued(n), DEADLINE)
                    .await
            );
        }
        assert_eq!(ids(&client.json().await), ["fresh"]);
        assert_eq!(f.shared.metrics.expired.get(), 1);
        client.leave().await;
    }

    /// After a broker outage a connection is sent what its UA is owed and missed (routed
    /// while the queue was gone, so only stored), and nothing it was sent already; a copy
    /// routed here again is not sent twice either.
    #[tokio::test]
    async fn a_resync_sends_what_was_missed_and_nothing_twice() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let ua = crypto::ua_id(&token);
        let mut client = f.registered(&token).await;
        let routed = f.pending(&ua, "routed").await;
        assert!(
            f.shared
                .connections
                .send_to(&ua, f.queued(&routed), DEADLINE)
                .await
        );
        assert_eq!(ids(&client.json().await), ["routed"]);
        let missed = f.pending(&ua, "missed").await;

        assert_eq!(f.shared.connections.resync_all(), 1);
        assert_eq!(ids(&client.json().await), ["missed"], "only what it missed");
        assert!(
            f.shared
                .connections
                .send_to(&ua, f.queued(&routed), DEADLINE)
                .await
        );
        f.shared.connections.resync_all();
        client
            .to_server
            .unbounded_send(Message::Text("PING".into()))
            .unwrap();
        assert_eq!(
            client.text().await,
            "PONG",
            "neither the copy routed again nor a second resync sent anything"
        );
        assert_eq!(missed.id, "missed");
        client.leave().await;
    }

    #[tokio::test]
    async fn web_push_connections_are_kept_alive_with_websocket_pings() {
        let f = fixture_with(Settings {
            ping_interval_secs: 1,
            ..Settings::default()
        });
        let mut client = f.connect();
        let hello = r#"{"messageType":"hello","use_webpush":true}"#;
        client
            .to_server
            .unbounded_send(Message::Text(hello.into()))
            .expect("the connection is open");
        let reply = client.json().await;
        assert_eq!(reply["messageType"], "hello");
        // Firefox does not answer a server's `{}`: only control frames keep it alive.
        for _ in 0..2 {
            assert!(matches!(client.next().await, Message::Ping(_)));
        }
        client.leave().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_stops_answering_pings_is_closed() {
        let f = fixture_with(Settings {
            ping_interval_secs: 1,
            ..Settings::default()
        });
        let mut client = f.connect();
        assert!(matches!(client.next().await, Message::Ping(_)));
        // Any answer keeps it open.
        client
            .to_server
            .unbounded_send(Message::Pong(Default::default()))
            .expect("the connection is open");
        assert!(matches!(client.next().await, Message::Ping(_)));
        assert!(matches!(client.next().await, Message::Ping(_)));
        assert_eq!(client.close_code().await, CloseCode::Away);
        client.leave().await;
    }

    #[tokio::test]
    async fn acks_are_recorded() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let ua = crypto::ua_id(&token);
        let n = f.pending(&ua, "a").await;
        let mut client = f.registered(&token).await;
        assert_eq!(ids(&client.json().await), ["a"]);
        client.command("ack", json!({ "messageId": n.message_id }));
        tokio::time::timeout(DEADLINE, async {
            loop {
                let report = f.store.status(&n.app_token, "a", NOW).await.unwrap();
                if report.is_some_and(|r| r.deliveries[0].status == DeliveryStatus::Acked) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the ack is stored");
        client.leave().await;
    }

    #[tokio::test]
    async fn a_refused_register_ua_is_answered_then_closed() {
        let f = fixture();
        let forged = crypto::new_uatoken(&Secret::new("another secret!!"));
        let mut client = f.connect();
        client.command("register/ua", json!({ "uatoken": forged }));
        assert_eq!(client.json().await["code"], 456);
        assert_eq!(client.close_code().await, CloseCode::Policy);
        tokio::time::timeout(DEADLINE, client.task)
            .await
            .expect("the connection ends")
            .unwrap();
    }

    #[tokio::test]
    async fn a_new_connection_takes_the_ua_over_and_the_old_one_releases_nothing() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let ua = crypto::ua_id(&token);
        let mut old = f.registered(&token).await;
        let before = f.live_conn(&ua).await.expect("live");
        let new = f.registered(&token).await;
        assert_eq!(old.close_code().await, CloseCode::Normal);
        tokio::time::timeout(DEADLINE, old.task)
            .await
            .expect("the old connection ends")
            .unwrap();
        let after = f.live_conn(&ua).await.expect("still live");
        assert_ne!(after, before, "the newer connection holds the UA");
        assert_eq!(f.shared.metrics.taken_over.get(), 1);

        new.leave().await;
        assert_eq!(f.live_conn(&ua).await, None, "leaving releases the UA");
        assert!(
            !f.shared
                .connections
                .send_to(&ua, Outbound::TakenOver, Duration::ZERO)
                .await
        );
    }

    #[tokio::test]
    async fn shutdown_closes_with_going_away_and_releases() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let mut client = f.registered(&token).await;
        f.shutdown.cancel();
        assert_eq!(client.close_code().await, CloseCode::Away);
        tokio::time::timeout(DEADLINE, client.task)
            .await
            .expect("the connection ends")
            .unwrap();
        assert_eq!(f.live_conn(&crypto::ua_id(&token)).await, None);
    }

    #[tokio::test]
    async fn wa_registration_gives_the_notify_url_and_errors_keep_the_connection() {
        let f = fixture();
        let token = crypto::new_uatoken(&f.secret);
        let mut client = f.registered(&token).await;
        client.command("register/wa", json!({ "uatoken": token, "watoken": "w" }));
        let url = client.text().await;
        let app = crypto::app_token(&f.secret, "w", None);
        assert_eq!(url, format!("http://push.example/notify/{app}"));
        assert_eq!(
            f.store.app_uas(&app).await.unwrap(),
            vec![crypto::ua_id(&token)]
        );
        client.command("register/wa", json!({ "uatoken": token }));
        assert_eq!(client.json().await["code"], 457);
        client
            .to_server
            .unbounded_send(Message::Binary(vec![1].into()))
            .unwrap();
        assert_eq!(client.json().await["code"], 463);
        client.command("unregister/wa", json!({ "uatoken": token, "watoken": "w" }));
        assert_eq!(client.text().await, "OK");
        assert!(f.store.app_uas(&app).await.unwrap().is_empty());
        client
            .to_server
            .unbounded_send(Message::Text("PING".into()))
            .unwrap();
        assert_eq!(client.text().await, "PONG");
        client.leave().await;
    }

    /// A masked client frame with a payload under 126 bytes; `first` is its first byte
    /// (FIN, reserved bits, opcode).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        frame
    }

    /// Runs a connection over tungstenite itself on an in-memory pipe, writes `bytes` as
    /// the client, and returns all the server wrote until it dropped the pipe.
    async fn server_bytes_after(bytes: &[u8]) -> Vec<u8> {
        let f = fixture();
        let (mut client, server) = tokio::io::duplex(4096);
        let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(server, role, Some(ws_config()))
                .await;
        // The pipe closes when the connection drops its socket.
        let task = tokio::spawn(run(
            ws,
            None,
            f.shared.clone(),
            f.shutdown.clone(),
            |_| async {},
        ));
        client.write_all(bytes).await.expect("the pipe is open");
        let mut sent = Vec::new();
        tokio::time::timeout(DEADLINE, client.read_to_end(&mut sent))
            .await
            .expect("the connection ends")
            .expect("a read");
        task.await.expect("no panic");
        sent
    }

    /// A frame many times the read buffer's size is read whole (in reads of up to
    /// [`READ_AHEAD`]), and so is the frame right behind it, read ahead with its end.
    #[tokio::test]
    async fn a_frame_far_larger_than_the_read_buffer_is_read_whole() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let f = fixture();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let ws = WebSocketStream::from_raw_socket(
            Transport::new(server.into(), Vec::new()),
            Role::Server,
            Some(ws_config()),
        )
        .await;
        let task = tokio::spawn(serve(ws, None, f.shared.clone(), f.shutdown.clone()));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        let ids: Vec<String> = (0..crate::frames::MAX_ACK_IDS)
            .map(|i| format!("{i:040}"))
            .collect();
        let ack = json!({"command": "ack", "data": {"messageIds": ids}}).to_string();
        assert!(ack.len() > 4 * READ_AHEAD && ack.len() < MAX_CLIENT_MESSAGE);
        client.send(Message::Text(ack.into())).await.unwrap();
        client.send(Message::Text("PING".into())).await.unwrap();
        let mut next_text = async || match tokio::time::timeout(DEADLINE, client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        };
        let reply: Value = serde_json::from_str(&next_text().await).expect("JSON");
        assert_eq!(reply["code"], Code::NoUaRegistered.number(), "{reply}");
        assert_eq!(next_text().await, "PONG");
        drop(client);
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("the connection ends")
            .expect("no panic");
    }

    /// The server's Close frame: FIN and opcode 8, a payload under 126 bytes.
    fn close_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x88, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    #[tokio::test]
    async fn a_client_close_is_echoed() {
        let bye = [&1000u16.to_be_bytes()[..], b"bye"].concat();
        let sent = server_bytes_after(&client_frame(0x88, &bye)).await;
        assert_eq!(sent, close_frame(&bye));
        let sent = server_bytes_after(&client_frame(0x88, &[])).await;
        assert_eq!(sent, close_frame(&[]), "no code, no code in the answer");
    }

    #[tokio::test]
    async fn unreadable_frames_are_answered_with_the_close_code_that_says_why() {
        let unmasked = vec![0x81, 4, b'P', b'I', b'N', b'G'];
        // The header of a frame of 64 KiB + 1: refused before its payload is read.
        let too_large = [
            &[0x82, 0x80 | 127][..],
            &((MAX_CLIENT_MESSAGE + 1) as u64).to_be_bytes(),
            &[1, 2, 3, 4],
        ]
        .concat();
        let cases = [
            (unmasked, CloseCode::Protocol),
            (client_frame(0x81 | 0x40, b"PING"), CloseCode::Protocol),
            // A ping without FIN: control frames are never fragmented.
            (client_frame(0x09, b"p"), CloseCode::Protocol),
            (client_frame(0x81, &[0xff]), CloseCode::Invalid),
            (too_large, CloseCode::Size),
        ];
        for (bytes, code) in cases {
            let sent = server_bytes_after(&bytes).await;
            assert!(sent.len() >= 4 && sent[0] == 0x88, "{bytes:?}: {sent:?}");
            let got = CloseCode::from(u16::from_be_bytes([sent[2], sent[3]]));
            assert_eq!(got, code, "{bytes:?}");
        }
        assert_eq!(failure(&WsError::ConnectionClosed), None);
        assert_eq!(
            failure(&WsError::Protocol(FrameError::ResetWithoutClosingHandshake)),
            None,
            "a client that is gone gets no Close"
        );
    }
}
