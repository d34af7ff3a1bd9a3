//! NS-UA-WS: the front-end UAs keep their WebSocket open to (§1, §2).
//!
//! One port serves `GET /token`, `/health` and `/metrics` over HTTP and the WebSocket
//! upgrade at `/`. The instance consumes its own broker queue, on which the monitor routes
//! notifications for the UAs connected here and other instances send take-overs.

mod conn;
mod frontend;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use common::batch::DeliveryWriter;
use common::broker::Broker;
use common::crypto::Secret;
use common::messages::{encode, RouteEvent};
use common::metrics::{Metric, Registry};
use common::model::UaId;
use common::store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;
use warp::{Filter, Reply};

/// The settings of ns-ua-ws.
#[derive(Args, Clone, Debug)]
#[group(id = "front_end")]
pub struct Settings {
    /// Unique id of this instance in the cluster; names its broker queue. Default: random.
    #[arg(long, env = "NS_SERVER_ID")]
    pub server_id: Option<String>,
    /// Unacked deliveries taken from this instance's queue at once.
    #[arg(long, env = "NS_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Most pending notifications sent right after `register/ua`.
    #[arg(long, env = "NS_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,
    /// Seconds between WebSocket pings to each idle connection.
    #[arg(long, env = "NS_PING_INTERVAL_SECS", default_value_t = 60)]
    pub ping_interval_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_id: None,
            prefetch: 512,
            max_pending: 10_000,
            ping_interval_secs: 60,
        }
    }
}

/// Everything ns-ua-ws needs to run.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
    pub secret: Secret,
    /// Base of the notify URLs handed out (`{base}/notify/{appToken}`).
    pub notify_base_url: String,
}

/// What is sent to a live connection from outside its task. Kept one pointer wide: the
/// queue of every connection, idle or not, allocates room for a block of these.
pub(crate) enum Outbound {
    /// One notification frame (a JSON array of one object).
    Notify(Box<Queued>),
    /// Close the connection: the UA registered elsewhere.
    TakenOver,
}

pub(crate) struct Queued {
    pub(crate) message_id: String,
    pub(crate) frame: Utf8Bytes,
}

/// The handle of a live, registered connection.
pub(crate) struct ConnHandle {
    conn: String,
    tx: tokio::sync::mpsc::Sender<Outbound>,
}

pub(crate) struct Metrics {
    connections: Arc<Metric>,
    registered: Arc<Metric>,
    delivered: Arc<Metric>,
    acked: Arc<Metric>,
    taken_over: Arc<Metric>,
}

/// State shared by every connection and the queue consumer of one instance.
pub(crate) struct Shared {
    server_id: String,
    deps: Deps,
    settings: Settings,
    writer: DeliveryWriter,
    conns: Mutex<HashMap<UaId, ConnHandle>>,
    metrics: Metrics,
}

impl Shared {
    /// Makes `conn` the live connection of `ua` here; tells an older local one to close.
    fn attach(&self, ua: &UaId, handle: ConnHandle) {
        let conn = handle.conn.clone();
        let old = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ua.clone(), handle);
        // A connection registering its own UA again is not a take-over.
        if let Some(old) = old.filter(|old| old.conn != conn) {
            self.metrics.taken_over.inc();
            let _ = old.tx.try_send(Outbound::TakenOver);
        }
    }

    /// Forgets `ua`'s connection if it is still `conn`.
    fn detach(&self, ua: &UaId, conn: &str) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(ua).is_some_and(|h| h.conn == conn) {
            conns.remove(ua);
            true
        } else {
            false
        }
    }

    /// Queues `outbound` on `ua`'s live connection, waiting a little while the connection
    /// catches up; false if it has none here or stays too far behind (the notification then
    /// stays pending for its next registration).
    async fn send_to(&self, ua: &UaId, outbound: Outbound) -> bool {
        let tx = {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            match conns.get(ua) {
                Some(h) => h.tx.clone(),
                None => return false,
            }
        };
        tx.send_timeout(outbound, SLOW_UA_TIMEOUT).await.is_ok()
    }

    /// Closes `ua`'s connection here if it is `conn` (a take-over from another instance).
    fn take_over(&self, ua: &UaId, conn: &str) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = conns.get(ua).filter(|h| h.conn == conn) {
            self.metrics.taken_over.inc();
            let _ = h.tx.try_send(Outbound::TakenOver);
        }
    }

    /// Tells the monitors a UA's route changed (best effort: their caches also expire).
    async fn route_changed(&self, event: RouteEvent) {
        if let Err(e) = self.deps.broker.publish_event(encode(&event)).await {
            tracing::debug!(error = %e, "publishing a route event failed");
        }
    }
}

/// The HTTP routes of the port: `GET /token`, `/health`, `/metrics`.
fn http_routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let secret = shared.deps.secret.clone();
    let token = warp::path("token")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            warp::reply::with_header(
                common::crypto::new_uatoken(&secret),
                "content-type",
                "text/plain",
            )
            .into_response()
        });
    let health = ns_http::Health {
        store: Some(shared.deps.store.clone()),
        broker: Some(shared.deps.broker.clone()),
    };
    token
        .or(ns_http::ops_routes(health, shared.deps.registry.clone()))
        .unify()
        .recover(ns_http::recover)
        .unify()
}

/// Runs ns-ua-ws on `listener` until `shutdown` is cancelled, then closes every WebSocket
/// (recording the UAs as disconnected) and drains its queue consumer.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server_id = settings
        .server_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let r = &deps.registry;
    let metrics = Metrics {
        connections: r.gauge("ns_ws_connections", "Open WebSocket connections."),
        registered: r.counter("ns_ws_registered_total", "Successful register/ua."),
        delivered: r.counter("ns_ws_delivered_total", "Notifications sent to UAs."),
        acked: r.counter("ns_ws_acked_total", "Notifications acked by UAs."),
        taken_over: r.counter(
            "ns_ws_taken_over_total",
            "Connections closed because their UA registered elsewhere.",
        ),
    };
    let shared = Arc::new(Shared {
        server_id: server_id.clone(),
        writer: DeliveryWriter::spawn(deps.store.clone()),
        deps,
        settings,
        conns: Mutex::new(HashMap::new()),
        metrics,
    });
    let tasks = TaskTracker::new();
    tasks.spawn(frontend::consume(shared.clone(), shutdown.clone()));

    let routes = http_routes(shared.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), server_id = %server_id, "ns-ua-ws listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let (shared, routes, shutdown) = (shared.clone(), routes.clone(), shutdown.clone());
                tasks.spawn(async move { handle(stream, shared, routes, shutdown).await });
            }
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    common::shutdown::drain(&tasks, Duration::from_secs(20), "closing connections").await;
    Ok(())
}

/// How long a delivery waits for a connection whose outbound queue is full.
const SLOW_UA_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head read before deciding between HTTP and WebSocket.
const MAX_HEAD: usize = 8192;

/// Serves one TCP connection: a WebSocket upgrade or plain HTTP.
async fn handle<F>(stream: TcpStream, shared: Arc<Shared>, routes: F, shutdown: CancellationToken)
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    let upgrade = match tokio::time::timeout(Duration::from_secs(10), is_upgrade(&stream)).await {
        Ok(Ok(upgrade)) => upgrade,
        _ => return,
    };
    // Each branch on the heap: the task then holds only the one it runs, at its own size.
    if upgrade {
        Box::pin(conn::serve(stream, shared, shutdown)).await;
    } else {
        // An idle keep-alive connection must not hold up shutdown.
        tokio::select! {
            _ = Box::pin(ns_http::serve_connection(stream, routes)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Peeks at the request head (without consuming it) for `Upgrade: websocket`.
async fn is_upgrade(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let head = &buf[..n];
        let complete = head.windows(4).any(|w| w == b"\r\n\r\n");
        if complete || n == MAX_HEAD {
            return Ok(head_has_upgrade(head));
        }
        // The head came in pieces: wait a little for the rest rather than spin on peek.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn head_has_upgrade(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("upgrade:") && line.contains("websocket")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_detection() {
        assert!(head_has_upgrade(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(!head_has_upgrade(b"GET /token HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
}
