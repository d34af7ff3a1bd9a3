//! NS-UA-WS: the front-end UAs keep their WebSocket open to (§1, §2).
//!
//! One port serves `GET /token`, `/health` and `/metrics` over HTTP and the WebSocket
//! upgrade at `/`. The instance consumes its own broker queue, on which the monitor routes
//! notifications for the UAs connected here and other instances send take-overs.

mod conn;
mod frames;
mod frontend;
#[doc(hidden)]
pub mod fuzz;
mod registry;
mod session;
mod webpush;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use common::crypto::Secret;
use common::messages::RouteEvent;
use common::model::NodeId;
use ns_broker::Broker;
use ns_http::Stream;
use ns_runtime::metrics::{self, Histogram, Metric};
use ns_runtime::Clock;
use ns_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;
use warp::{Filter, Reply};

const DEFAULT_PREFETCH: u16 = 512;
const DEFAULT_MAX_PENDING: usize = 10_000;
const DEFAULT_PING_INTERVAL_SECS: u64 = 60;
const DEFAULT_MAX_REGISTRATIONS: u64 = 1000;

/// The settings of ns-ua-ws.
#[derive(Args, Clone, Debug)]
#[group(id = "front_end")]
pub struct Settings {
    /// Unique id of this instance in the cluster; names its broker queue. Default: random.
    #[arg(long, env = "NS_SERVER_ID")]
    pub server_id: Option<String>,
    /// Unacked deliveries taken from this instance's queue at once.
    #[arg(long, env = "NS_WS_PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub ws_prefetch: u16,
    /// Most pending notifications sent right after `register/ua`.
    #[arg(long, env = "NS_MAX_PENDING", default_value_t = DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Seconds between WebSocket pings to each idle connection.
    #[arg(long, env = "NS_PING_INTERVAL_SECS", default_value_t = DEFAULT_PING_INTERVAL_SECS)]
    pub ping_interval_secs: u64,
    /// Networks (CIDR, comma-separated) a UA may give as its wake-up `interface` besides its
    /// own connection's address: the LAN behind a NAT, or every address behind a proxy.
    #[arg(long, env = "NS_UDP_ALLOW_NETWORKS", value_delimiter = ',')]
    pub udp_allow_networks: Vec<common::network::Network>,
    /// Most apps one UA may be registered for (Web Push subscriptions included).
    #[arg(long, env = "NS_MAX_REGISTRATIONS_PER_UA", default_value_t = DEFAULT_MAX_REGISTRATIONS)]
    pub max_registrations_per_ua: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_id: None,
            ws_prefetch: DEFAULT_PREFETCH,
            max_pending: DEFAULT_MAX_PENDING,
            ping_interval_secs: DEFAULT_PING_INTERVAL_SECS,
            udp_allow_networks: Vec::new(),
            max_registrations_per_ua: DEFAULT_MAX_REGISTRATIONS,
        }
    }
}

/// Everything ns-ua-ws needs to run.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: metrics::Registry,
    pub clock: Clock,
    pub secret: Secret,
    /// Base of the notify URLs handed out (`{base}/notify/{appToken}`).
    pub notify_base_url: String,
}

pub(crate) struct Metrics {
    connections: Connections,
    /// Accepted to written to the UA, per dialect.
    latency_telefonica: Arc<Histogram>,
    latency_webpush: Arc<Histogram>,
    refusals: ns_http::Refusals,
    registered: Arc<Metric>,
    delivered: Arc<Metric>,
    acked: Arc<Metric>,
    taken_over: Arc<Metric>,
    handed_back: Arc<Metric>,
    expired: Arc<Metric>,
}

impl Metrics {
    fn new(r: &metrics::Registry) -> Self {
        Metrics {
            connections: Connections::new(r),
            latency_telefonica: metrics::delivery_latency(r, "telefonica", "websocket"),
            latency_webpush: metrics::delivery_latency(r, "webpush", "websocket"),
            refusals: ns_http::Refusals::new(
                "ns-ua-ws",
                r,
                &[400, 429, 503].map(|status| ns_http::Refusal::webpush(status, None)),
            ),
            registered: r.counter("ns_ws_registered_total", "Successful register/ua."),
            delivered: r.counter("ns_ws_delivered_total", "Notifications sent to UAs."),
            acked: r.counter("ns_ws_acked_total", "Notifications acked by UAs."),
            taken_over: r.counter(
                "ns_ws_taken_over_total",
                "Connections closed because their UA registered elsewhere.",
            ),
            handed_back: r.counter(
                "ns_ws_handed_back_total",
                "UA deliveries handed back to the monitor because the UA was not here.",
            ),
            expired: r.counter(
                "ns_ws_expired_total",
                "Notifications that had expired by the time they were to be sent here.",
            ),
        }
    }
}

impl Metrics {
    /// A Web Push `register` or `unregister` answered with `status`, not 200.
    fn refused_push(&self, status: u16) {
        self.refusals.count(ns_http::Refusal::webpush(status, None));
    }
}

/// The open WebSocket connections, by dialect: a connection is `undecided` until its first
/// text frame.
pub(crate) struct Connections {
    undecided: Arc<Metric>,
    telefonica: Arc<Metric>,
    webpush: Arc<Metric>,
}

impl Connections {
    fn new(r: &metrics::Registry) -> Self {
        let of = |dialect| {
            r.gauge_with(
                "ns_ws_connections",
                "Open WebSocket connections, by dialect (undecided before the first frame).",
                &[("dialect", dialect)],
            )
        };
        Connections {
            undecided: of("undecided"),
            telefonica: of("telefonica"),
            webpush: of("webpush"),
        }
    }

    pub(crate) fn of(&self, dialect: session::Dialect) -> &Metric {
        match dialect {
            session::Dialect::Undecided => &self.undecided,
            session::Dialect::Telefonica => &self.telefonica,
            session::Dialect::WebPush => &self.webpush,
        }
    }
}

/// State shared by every connection and the queue consumer of one instance.
pub(crate) struct Shared {
    node: NodeId,
    deps: Deps,
    settings: Settings,
    connections: registry::Registry,
    metrics: Metrics,
}

impl Shared {
    fn new(settings: Settings, deps: Deps) -> Self {
        let node = NodeId::new(
            settings
                .server_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        );
        Shared {
            node,
            metrics: Metrics::new(&deps.registry),
            deps,
            settings,
            connections: registry::Registry::default(),
        }
    }

    /// Tells the monitors a route changed (best effort: their caches also expire).
    async fn route_changed(&self, event: RouteEvent) {
        if let Err(e) = self.deps.broker.publish_event(&event).await {
            tracing::debug!(error = %e, "publishing a route event failed");
        }
    }
}

/// The demo page of Web Push and its service worker, on the origin of the push WebSocket.
const DEMO_PAGE: &str = include_str!("demo/index.html");
const DEMO_WORKER: &str = include_str!("demo/sw.js");

/// The HTTP routes of the port: `GET /token`, the Web Push demo under `/demo/`, `/health`,
/// `/metrics`.
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
    let demo_page = warp::path("demo")
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::path::full())
        .map(|path: warp::path::FullPath| {
            // Relative links (`sw.js`) need the trailing slash.
            if path.as_str().ends_with('/') {
                warp::reply::html(DEMO_PAGE).into_response()
            } else {
                warp::redirect::see_other(warp::http::Uri::from_static("/demo/")).into_response()
            }
        });
    let demo_worker = warp::path!("demo" / "sw.js").and(warp::get()).map(|| {
        warp::reply::with_header(DEMO_WORKER, "content-type", "text/javascript").into_response()
    });
    let health = ns_http::Health {
        store: Some(shared.deps.store.clone()),
        broker: Some(shared.deps.broker.clone()),
    };
    let routes = token
        .or(demo_page)
        .unify()
        .or(demo_worker)
        .unify()
        .or(ns_http::ops_routes(health, shared.deps.registry.clone()))
        .unify()
        .recover(ns_http::recover)
        .unify();
    ns_http::counted(routes, shared.metrics.refusals.clone())
}

/// Runs ns-ua-ws on `listener` until `shutdown` is cancelled, then closes every WebSocket
/// (recording the UAs as disconnected) and drains its queue consumer.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(settings, deps));
    let tasks = TaskTracker::new();
    tasks.spawn(frontend::consume(shared.clone(), shutdown.clone()));
    tasks.spawn(frontend::resync_after_outages(
        shared.clone(),
        shutdown.clone(),
    ));

    let routes = http_routes(shared.clone());
    let limits = ns_http::limits();
    let url = ns_http::listening_url(&listener)?;
    tracing::info!(server_id = %shared.node, "listening on {url} (WebSocket)");
    let max = limits.http_max_connections;
    ns_http::accept(
        listener,
        max,
        &tasks,
        &shutdown,
        |incoming, accepted_at, admitted| {
            let (shared, routes, shutdown) = (shared.clone(), routes.clone(), shutdown.clone());
            let http = Http {
                limits: limits.clone(),
                accepted_at,
                admitted,
            };
            handle(incoming, http, shared, routes, shutdown, tasks.clone())
        },
    )
    .await;
    ns_runtime::shutdown::drain(&tasks, Duration::from_secs(20), "closing connections").await;
    Ok(())
}

/// How long a delivery waits for a connection whose outbound queue is full.
const SLOW_UA_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head read before deciding between HTTP and WebSocket.
const MAX_HEAD: usize = 8192;

/// A connection's HTTP side: its limits, and its place under the connection limit.
struct Http {
    limits: ns_http::HttpLimits,
    accepted_at: tokio::time::Instant,
    admitted: ns_http::Admitted,
}

/// Serves one TCP connection: a WebSocket upgrade or plain HTTP (each over TLS when the
/// port has it). An accepted WebSocket goes on as a task of its own on `tasks`, and this
/// one ends: the connection is then held by the one future it runs (see [`conn::serve`]),
/// not also by this one's.
async fn handle<F>(
    incoming: ns_http::Incoming,
    http: Http,
    shared: Arc<Shared>,
    routes: F,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let _ = incoming.tcp().set_nodelay(true);
    // The head decides the branch, so the HTTP header timeout bounds both, and the TLS
    // handshake before it.
    let head_deadline = http.accepted_at + http.limits.header_timeout();
    let Some(mut stream) = incoming.establish(head_deadline).await else {
        return;
    };
    let detect = async {
        match stream {
            // Peeked at: the bytes stay in the socket for whoever reads the request.
            Stream::Plain(ref tcp) => is_upgrade(tcp).await.map(|upgrade| (upgrade, Vec::new())),
            // Bytes under TLS can't be peeked at: read, and handed on ahead of the rest.
            Stream::Tls(ref mut tls) => read_head(tls.as_mut()).await,
        }
    };
    let (upgrade, head) = match tokio::time::timeout_at(head_deadline, detect).await {
        Ok(Ok(detected)) => detected,
        _ => return,
    };
    // A WebSocket goes on in a task of its own, sized for it alone; plain HTTP on the heap,
    // so that this task holds only the branch it runs.
    if upgrade {
        // The HTTP connection limit is for connections not (yet) WebSockets: a front-end
        // holds far more UAs than it would let slow HTTP clients hold.
        drop(http.admitted);
        if let Some((ws, peer)) = conn::accept(stream, head).await {
            tasks.spawn(conn::serve(ws, peer, shared, shutdown));
        }
    } else {
        let Http {
            limits,
            accepted_at,
            admitted: _admitted,
        } = http;
        Box::pin(ns_http::serve_connection(
            conn::Transport::new(stream, head),
            routes,
            &limits,
            accepted_at,
            shutdown,
        ))
        .await;
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

/// Reads the request head (or its first [`MAX_HEAD`] bytes) for `Upgrade: websocket`;
/// returns what was read with the answer, to be read again before the rest.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(bool, Vec<u8>)> {
    let mut head = Vec::with_capacity(1024);
    loop {
        let n = (&mut *stream)
            .take((MAX_HEAD - head.len()) as u64)
            .read_buf(&mut head)
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // The end of the head may straddle two reads.
        let complete = head.windows(4).any(|w| w == b"\r\n\r\n");
        if complete || head.len() >= MAX_HEAD {
            return Ok((head_has_upgrade(&head), head));
        }
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
