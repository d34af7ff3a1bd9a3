//! NS-UA-UDP: wakes sleeping UAs with a UDP datagram and serves `POST /pull` and
//! `POST /ack` (§4).

mod coalesce;
mod destinations;
#[doc(hidden)]
pub mod fuzz;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use common::crypto::Secret;
use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::messages::{WakeUp, UDP_WAKEUPS};
use common::model::{Interface, MessageId, UaId};
use common::notification::Payload;
use common::validate::{Code, ProtocolError};
use ns_broker::{Broker, Consumer, Handled, QueueKind};
use ns_runtime::metrics::{self, Histogram, Metric, Registry};
use ns_runtime::Clock;
use ns_store::Store;
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;
use warp::{Filter, Reply};

use coalesce::{Coalescer, Decision};
use destinations::DestinationLimiter;

/// Largest pull or ack body.
const MAX_BODY: usize = 64 * 1024;
/// Most ids in one `POST /ack`.
const MAX_ACK_IDS: usize = 1000;
/// Unacked wake-ups taken from the broker at once, and handled at the same time.
const PREFETCH: u16 = 512;
const CONCURRENCY: usize = 64;

const DEFAULT_WAKEUP_INTERVAL_SECS: u64 = 5;
const DEFAULT_COALESCE_WINDOW_SECS: u64 = 30;
const DEFAULT_MAX_PULL: usize = 100;
const DEFAULT_DESTINATION_RATE: u32 = 10;

/// The settings of ns-ua-udp.
#[derive(Args, Clone, Debug)]
#[group(id = "wakeup")]
pub struct Settings {
    /// Least time between two wake-ups of one UA while its notifications are unpulled (s).
    #[arg(long, env = "NS_WAKEUP_INTERVAL_SECS", default_value_t = DEFAULT_WAKEUP_INTERVAL_SECS)]
    pub wakeup_interval_secs: u64,
    /// Time within which a priority-2 notification wakes its UA (s).
    #[arg(long, env = "NS_COALESCE_WINDOW_SECS", default_value_t = DEFAULT_COALESCE_WINDOW_SECS)]
    pub coalesce_window_secs: u64,
    /// Notifications returned by a pull without a `limit`, and the most with one.
    #[arg(long, env = "NS_MAX_PULL", default_value_t = DEFAULT_MAX_PULL)]
    pub max_pull: usize,
    /// Most datagrams per second to one address and port, whichever UAs they wake.
    #[arg(long, env = "NS_WAKEUP_DESTINATION_RATE", default_value_t = DEFAULT_DESTINATION_RATE)]
    pub wakeup_destination_rate: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            wakeup_interval_secs: DEFAULT_WAKEUP_INTERVAL_SECS,
            coalesce_window_secs: DEFAULT_COALESCE_WINDOW_SECS,
            max_pull: DEFAULT_MAX_PULL,
            wakeup_destination_rate: DEFAULT_DESTINATION_RATE,
        }
    }
}

/// What ns-ua-udp talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
    pub clock: Clock,
    pub secret: Secret,
    pub notify_base_url: String,
}

struct Metrics {
    datagrams: Arc<Metric>,
    limited: Arc<Metric>,
    pulls: Arc<Metric>,
    acked: Arc<Metric>,
    /// Accepted to pulled, per dialect.
    latency_telefonica: Arc<Histogram>,
    latency_webpush: Arc<Histogram>,
}

struct State {
    settings: Settings,
    deps: Deps,
    coalescer: Mutex<Coalescer>,
    destinations: Mutex<DestinationLimiter>,
    /// Wakes the sender when a wake-up is scheduled earlier than it was sleeping for.
    rescheduled: tokio::sync::Notify,
    metrics: Metrics,
}

#[derive(Deserialize)]
struct PullRequest {
    uatoken: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckRequest {
    uatoken: Option<String>,
    message_ids: Option<Vec<MessageId>>,
}

fn bad_token() -> ProtocolError {
    ProtocolError::new(Code::BadUaToken, "uatoken not valid; get a new one")
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(Code::Unavailable, "a dependency is unavailable; retry")
}

fn ua(secret: &Secret, token: Option<&str>) -> Result<UaId, ProtocolError> {
    token
        .and_then(|t| common::crypto::verify_uatoken(secret, t))
        .ok_or_else(bad_token)
}

/// Reads a pull's body: the UA, and how many notifications to return (`limit`, within
/// 1..=`max_pull`). Pure, so the fuzzer reaches it through [`fuzz`].
fn read_pull(
    body: &[u8],
    secret: &Secret,
    max_pull: usize,
) -> Result<(UaId, usize), ProtocolError> {
    let request: PullRequest = serde_json::from_slice(body)
        .map_err(|_| ProtocolError::new(Code::BadJson, "body is not valid JSON"))?;
    let ua = ua(secret, request.uatoken.as_deref())?;
    let limit = request.limit.unwrap_or(max_pull).clamp(1, max_pull.max(1));
    Ok((ua, limit))
}

/// Reads an ack's body: the UA and the ids it acks. Pure, like [`read_pull`].
fn read_ack(body: &[u8], secret: &Secret) -> Result<(UaId, Vec<MessageId>), ProtocolError> {
    let request: AckRequest = serde_json::from_slice(body)
        .map_err(|_| ProtocolError::new(Code::BadJson, "body is not valid JSON"))?;
    let ua = ua(secret, request.uatoken.as_deref())?;
    let ids = request.message_ids.ok_or_else(|| {
        ProtocolError::new(Code::Generic, "messageIds (array of strings) is required")
    })?;
    if ids.len() > MAX_ACK_IDS {
        return Err(ProtocolError::new(Code::TooBig, "too many message ids"));
    }
    Ok((ua, ids))
}

/// The calls of a UA woken by UDP, each a `POST` of a JSON body.
#[derive(Clone, Copy, Debug)]
enum Call {
    Pull,
    Ack,
    Count,
}

impl State {
    async fn answer(&self, call: Call, body: &[u8]) -> Result<Response, ProtocolError> {
        match call {
            Call::Pull => self.pull(body).await,
            Call::Ack => self.ack(body).await,
            Call::Count => self.count(body).await,
        }
    }

    /// `POST /count`: how many notifications the UA is owed, `{"pending": N}`.
    async fn count(&self, body: &[u8]) -> Result<Response, ProtocolError> {
        // The body of a pull without its limit.
        let (ua, _) = read_pull(body, &self.deps.secret, 1)?;
        let now = self.deps.clock.now();
        let owed = self.deps.store.owed_count(&ua, now).await.map_err(|e| {
            tracing::warn!(error = %e, "counting a UA's notifications failed");
            unavailable()
        })?;
        Ok(warp::reply::json(&serde_json::json!({ "pending": owed.pending })).into_response())
    }

    async fn pull(&self, body: &[u8]) -> Result<Response, ProtocolError> {
        let (ua, limit) = read_pull(body, &self.deps.secret, self.settings.max_pull)?;
        let now = self.deps.clock.now();
        let messages = self
            .deps
            .store
            .outstanding(&ua, now, limit)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading pending notifications failed");
                unavailable()
            })?;
        let updates = DeliveryUpdate::for_ua(
            &ua,
            messages.iter().map(|n| n.message_id.clone()),
            DeliveryStatus::Sent,
        );
        if let Err(e) = self.deps.store.record_deliveries(updates, now).await {
            tracing::warn!(error = %e, "recording pulled notifications as sent failed");
        }
        self.coalescer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pulled(&ua);
        self.metrics.pulls.inc();
        // Both store calls may have been slow: what expired meanwhile is left out.
        let after = self.deps.clock.now();
        let now = self.deps.clock.now_millis().as_i64();
        let frames: Vec<_> = messages
            .iter()
            .filter(|n| !n.is_expired(after))
            .map(|n| {
                let latency = match n.payload {
                    Payload::Text(_) => &self.metrics.latency_telefonica,
                    Payload::Push(_) => &self.metrics.latency_webpush,
                };
                latency.observe_millis(now - n.created_at.as_i64());
                n.to_frame(&self.deps.notify_base_url)
            })
            .collect();
        Ok(warp::reply::json(&serde_json::json!({ "messages": frames })).into_response())
    }

    async fn ack(&self, body: &[u8]) -> Result<Response, ProtocolError> {
        let (ua, ids) = read_ack(body, &self.deps.secret)?;
        let updates = DeliveryUpdate::for_ua(&ua, ids, DeliveryStatus::Acked);
        // Acks are answered with a count, which only a direct write gives.
        let acked = self
            .deps
            .store
            .update_deliveries(&updates, self.deps.clock.now())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "storing acks failed");
                unavailable()
            })?;
        self.metrics.acked.add(acked as i64);
        Ok(warp::reply::json(&serde_json::json!({ "acked": acked })).into_response())
    }
}

fn routes(state: Arc<State>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let call =
        |name: &'static str, call: Call| warp::path(name).and(warp::path::end()).map(move || call);
    let calls = call("pull", Call::Pull)
        .or(call("ack", Call::Ack))
        .unify()
        .or(call("count", Call::Count))
        .unify();
    // Bodies are read up to the limit with or without a Content-Length (chunked ones too).
    let posts = calls
        .and(warp::post())
        .and(warp::body::stream())
        .and(with_state)
        .then(|call, body, state: Arc<State>| async move {
            let answer = match ns_http::read_body(&mut Box::pin(body), MAX_BODY).await {
                Ok(body) => state.answer(call, &body).await,
                Err(e) => Err(e.protocol_error()),
            };
            answer.unwrap_or_else(|e| ns_http::error_reply(&e))
        });
    let health = ns_http::Health {
        store: Some(state.deps.store.clone()),
        broker: Some(state.deps.broker.clone()),
    };
    let refusals = ns_http::Refusals::new("ns-ua-udp", &state.deps.registry, &[]);
    let routes = posts
        .or(ns_http::ops_routes(health, state.deps.registry.clone()))
        .unify()
        .recover(ns_http::recover)
        .unify();
    ns_http::counted(routes, refusals)
}

/// Runs ns-ua-udp until `shutdown` is cancelled: consumes wake-ups, sends datagrams, and
/// serves pull and ack on `listener`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).await?;
    let r = &deps.registry;
    let metrics = Metrics {
        datagrams: r.counter("ns_udp_wakeups_sent_total", "Wake-up datagrams sent."),
        limited: r.counter(
            "ns_udp_wakeups_limited_total",
            "Wake-up datagrams not sent: their destination was over its rate.",
        ),
        pulls: r.counter("ns_udp_pulls_total", "Pulls served."),
        acked: r.counter("ns_udp_acked_total", "Notifications acked by POST /ack."),
        latency_telefonica: metrics::delivery_latency(r, "telefonica", "pull"),
        latency_webpush: metrics::delivery_latency(r, "webpush", "pull"),
    };
    let state = Arc::new(State {
        coalescer: Mutex::new(Coalescer::new(
            Duration::from_secs(settings.wakeup_interval_secs),
            Duration::from_secs(settings.coalesce_window_secs),
        )),
        destinations: Mutex::new(DestinationLimiter::new(settings.wakeup_destination_rate)),
        settings,
        deps,
        rescheduled: tokio::sync::Notify::new(),
        metrics,
    });
    let url = ns_http::listening_url(&listener)?;
    let wakeups_from = socket.local_addr()?;
    let tasks = TaskTracker::new();
    let socket = Arc::new(socket);
    tasks.spawn(consume(state.clone(), socket.clone(), shutdown.clone()));
    tasks.spawn(send_scheduled(state.clone(), socket, shutdown.clone()));

    tracing::info!("listening on {url} (pull and ack); wake-ups sent from udp {wakeups_from}");
    ns_http::serve(listener, routes(state), shutdown).await;
    ns_runtime::shutdown::drain(&tasks, Duration::from_secs(10), "wake-up work").await;
    Ok(())
}

async fn send_datagram(state: &State, socket: &UdpSocket, interface: &Interface) {
    let target = std::net::SocketAddr::new(interface.ip, interface.port);
    let allowed = state
        .destinations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allow(target, Instant::now());
    if !allowed {
        state.metrics.limited.inc();
        return;
    }
    match socket.send_to(b"NOTIFY", target).await {
        Ok(_) => state.metrics.datagrams.inc(),
        Err(e) => tracing::debug!(error = %e, "sending a wake-up failed"),
    }
}

async fn consume(state: Arc<State>, socket: Arc<UdpSocket>, shutdown: CancellationToken) {
    let consumer = Consumer {
        queue: UDP_WAKEUPS,
        kind: QueueKind::Durable,
        prefetch: PREFETCH,
        concurrency: CONCURRENCY,
    };
    ns_broker::consume(&*state.deps.broker, consumer, &shutdown, |wake: WakeUp| {
        let (state, socket) = (state.clone(), socket.clone());
        async move {
            let decision = state
                .coalescer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .request(&wake.ua, wake.interface, wake.priority, Instant::now());
            match decision {
                Decision::SendNow(interface) => send_datagram(&state, &socket, &interface).await,
                Decision::Scheduled(_) => state.rescheduled.notify_one(),
                Decision::Ignored => {}
            }
            // A wake-up is advisory: the notification itself stays pending in the store.
            Handled::Done
        }
    })
    .await;
}

async fn send_scheduled(state: Arc<State>, socket: Arc<UdpSocket>, shutdown: CancellationToken) {
    loop {
        let next = state
            .coalescer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_due();
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = state.rescheduled.notified() => continue,
            _ = shutdown.cancelled() => return,
        }
        let due = {
            let mut c = state.coalescer.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let due = c.due(now);
            c.prune(now);
            due
        };
        for (_, interface) in due {
            send_datagram(&state, &socket, &interface).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("test-secret")
    }

    #[test]
    fn pull_and_ack_bodies_are_read() {
        let token = common::crypto::new_uatoken(&secret());
        let pull = |body: String, max| read_pull(body.as_bytes(), &secret(), max);
        let (_, limit) = pull(format!(r#"{{"uatoken":"{token}","limit":500}}"#), 100).unwrap();
        assert_eq!(limit, 100);
        let (_, limit) = pull(format!(r#"{{"uatoken":"{token}","limit":0}}"#), 100).unwrap();
        assert_eq!(limit, 1);
        assert_eq!(
            pull(r#"{"uatoken":"forged"}"#.into(), 100)
                .unwrap_err()
                .code,
            Code::BadUaToken
        );
        assert_eq!(pull("[".into(), 100).unwrap_err().code, Code::BadJson);
        let ack = |body: String| read_ack(body.as_bytes(), &secret()).map_err(|e| e.code);
        assert_eq!(
            ack(format!(r#"{{"uatoken":"{token}","messageIds":["a"]}}"#))
                .unwrap()
                .1,
            vec![MessageId::new("a")]
        );
        assert_eq!(
            ack(format!(r#"{{"uatoken":"{token}"}}"#)).unwrap_err(),
            Code::Generic
        );
    }

    #[test]
    fn a_max_pull_of_zero_does_not_panic_a_pull() {
        // `usize::clamp(1, 0)` panics; a `--max-pull 0` must not turn every pull into one.
        let token = common::crypto::new_uatoken(&secret());
        let body = format!(r#"{{"uatoken":"{token}","limit":5}}"#);
        let (_, limit) = read_pull(body.as_bytes(), &secret(), 0).unwrap();
        assert_eq!(limit, 1);
    }
}
