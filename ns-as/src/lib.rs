//! NS-AS: the endpoint application servers post notifications to: Telefónica notify URLs
//! (PROTOCOL.md §3) and Web Push endpoints (WEBPUSH.md §3).
//!
//! A notification is answered 200 (201 for Web Push) only after it is stored and its id is
//! confirmed by the broker; anything it cannot persist is refused with 503.

mod limiter;
mod quota;
mod webpush;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use clap::Args;
use common::crypto::{PublicKey, Secret};
use common::messages::{NewMessage, NEW_MESSAGES};
use common::model::{AppToken, EpochSecs, MessageId};
use common::notification::Notification;
use common::validate::{
    validate_notify, Code, NotifyLimits, ProtocolError, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_MESSAGE,
};
use ns_broker::Broker;
use ns_runtime::metrics::{Histogram, Metric, Registry, LATENCY_BUCKETS};
use ns_runtime::Clock;
use ns_store::Store;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;
use warp::{Filter, Reply};

pub use limiter::RateLimiter;

/// Most apps whose key is kept in memory; past that the cache starts over.
const APP_CACHE_LIMIT: usize = 100_000;

const DEFAULT_RATE_LIMIT: u32 = 1000;
const DEFAULT_RATE_BURST: u32 = 2000;
const DEFAULT_MAX_PENDING_PER_APP: u64 = 10_000;

/// The settings of ns-as.
#[derive(Args, Clone, Debug)]
#[group(id = "notify")]
pub struct Settings {
    /// Largest `message`, in bytes of UTF-8.
    #[arg(long, env = "NS_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE)]
    pub max_message_bytes: usize,
    /// Notifications per second accepted for one appToken (sustained); 0 disables the limit.
    #[arg(long, env = "NS_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
    /// Burst of notifications accepted for one appToken above the sustained rate.
    #[arg(long, env = "NS_RATE_BURST", default_value_t = DEFAULT_RATE_BURST)]
    pub rate_burst: u32,
    /// Most seconds a notification's `timestamp` may be ahead of this server's clock.
    #[arg(long, env = "NS_MAX_CLOCK_SKEW_SECS", default_value_t = DEFAULT_MAX_CLOCK_SKEW)]
    pub max_clock_skew_secs: i64,
    /// Most pending notifications (stored, neither replaced nor expired, not acked by every
    /// UA) of one appToken or push subscription; a new one to store past it is refused (465,
    /// or 429 for Web Push). 0 disables the quota.
    #[arg(long, env = "NS_MAX_PENDING_PER_APP", default_value_t = DEFAULT_MAX_PENDING_PER_APP)]
    pub max_pending_per_app: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_burst: DEFAULT_RATE_BURST,
            max_clock_skew_secs: DEFAULT_MAX_CLOCK_SKEW,
            max_pending_per_app: DEFAULT_MAX_PENDING_PER_APP,
        }
    }
}

impl Settings {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_message_bytes == 0 {
            problems.push("--max-message-bytes must be positive".to_owned());
        }
        if self.max_clock_skew_secs < 0 {
            problems.push("--max-clock-skew-secs must not be negative".to_owned());
        }
        problems
    }

    /// The largest body read: the message can grow six-fold through JSON escapes.
    fn max_body(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(6)
            .saturating_add(4096)
    }
}

/// What ns-as talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
    pub clock: Clock,
    /// Authenticates push endpoints and message locations.
    pub secret: Secret,
    /// Public base URL of this service, as senders reach it: push endpoints and message
    /// locations are under it, and VAPID tokens are addressed to its origin.
    pub public_base_url: String,
}

/// The public base URL and its origin (`scheme://host[:port]`).
struct Public {
    base: String,
    origin: String,
}

impl Public {
    fn new(base: &str) -> Public {
        let base = base.trim_end_matches('/').to_owned();
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let origin = match base[after_scheme..].find('/') {
            Some(path) => base[..after_scheme + path].to_owned(),
            None => base.clone(),
        };
        Public { base, origin }
    }

    fn base_url(&self) -> &str {
        &self.base
    }

    fn origin(&self) -> &str {
        &self.origin
    }
}

struct Metrics {
    accepted: Arc<Metric>,
    rejected: Arc<Metric>,
    unavailable: Arc<Metric>,
    /// Request in to answer, accepted or not, per dialect.
    notify_telefonica: Arc<Histogram>,
    notify_webpush: Arc<Histogram>,
}

/// The histogram of notify handling times.
const NOTIFY_DURATION: &str = "ns_as_notify_duration_seconds";

/// What an app needs at notify time; `None` key means the app sends unsigned.
type CachedApp = Option<Arc<PublicKey>>;

struct State {
    settings: Settings,
    secret: Secret,
    public: Public,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    clock: Clock,
    apps: RwLock<HashMap<AppToken, CachedApp>>,
    limiter: RateLimiter,
    pending: quota::PendingQuota,
    vapid: webpush::VapidCache,
    metrics: Metrics,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    status: &'static str,
    message_id: &'a str,
}

/// The routes of ns-as: notify and status, Web Push endpoints and message locations, health
/// and metrics.
pub fn routes(
    settings: Settings,
    deps: Deps,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = Metrics {
        accepted: deps
            .registry
            .counter("ns_as_accepted_total", "Notifications accepted."),
        rejected: deps
            .registry
            .counter("ns_as_rejected_total", "Notifications refused as invalid."),
        unavailable: deps.registry.counter(
            "ns_as_unavailable_total",
            "Notifications refused because the store or broker was unavailable.",
        ),
        notify_telefonica: notify_histogram(&deps.registry, "telefonica"),
        notify_webpush: notify_histogram(&deps.registry, "webpush"),
    };
    let refusals = ns_http::Refusals::new("ns-as", &deps.registry, &webpush::refusals());
    let max_body = settings.max_body();
    let state = Arc::new(State {
        limiter: RateLimiter::new(settings.rate_limit, settings.rate_burst),
        pending: quota::PendingQuota::new(settings.max_pending_per_app),
        settings,
        secret: deps.secret.clone(),
        public: Public::new(&deps.public_base_url),
        store: deps.store.clone(),
        broker: deps.broker.clone(),
        clock: deps.clock.clone(),
        apps: RwLock::new(HashMap::new()),
        vapid: webpush::VapidCache::default(),
        metrics,
    });
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };

    // Chunked bodies too: the body is read up to the limit, whether or not it has a
    // Content-Length (warp's `content_length_limit` refuses one without).
    let notify = warp::path!("notify" / String)
        .and(warp::post())
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(
            move |app_token: String, body, state: Arc<State>| async move {
                let start = Instant::now();
                let response = notify_request(&state, app_token, body, max_body).await;
                state.metrics.notify_telefonica.since(start);
                response
            },
        );

    let status = warp::path!("notify" / String / String)
        .and(warp::get())
        .and(with_state.clone())
        .then(
            |app_token: String, id: String, state: Arc<State>| async move {
                let now = state.clock.now();
                match state
                    .store
                    .status(&AppToken::new(app_token), &id, now)
                    .await
                {
                    Ok(Some(report)) => warp::reply::json(&report).into_response(),
                    Ok(None) => ns_http::error_reply(&ProtocolError::new(
                        Code::NotFound,
                        "unknown notification id",
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "status look-up failed");
                        ns_http::error_reply(&unavailable())
                    }
                }
            },
        );

    let push = warp::path!("wpush" / String / String)
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |version, token, state: Arc<State>, headers, body| async move {
                let start = Instant::now();
                let histogram = state.metrics.notify_webpush.clone();
                let response = webpush::push(state, version, token, headers, Box::pin(body)).await;
                histogram.since(start);
                response
            },
        );
    let discovery = warp::path!("wpush" / String / String)
        .and(warp::get())
        .and(with_state.clone())
        .map(|_version: String, token: String, state: Arc<State>| {
            webpush::discovery(&state, &token)
        });
    let message_status = warp::path!("m" / String)
        .and(warp::get())
        .and(with_state.clone())
        .then(|location, state| webpush::status(state, location));
    let withdraw = warp::path!("m" / String)
        .and(warp::delete())
        .and(with_state.clone())
        .then(|location, state| webpush::withdraw(state, location));

    let health = ns_http::Health {
        store: Some(deps.store),
        broker: Some(deps.broker),
    };
    let routes = notify
        .or(status)
        .unify()
        .or(push)
        .unify()
        .or(discovery)
        .unify()
        .or(message_status)
        .unify()
        .or(withdraw)
        .unify()
        .or(ns_http::ops_routes(health, deps.registry))
        .unify()
        .recover(ns_http::recover)
        .unify();
    ns_http::counted(routes, refusals)
}

fn notify_histogram(registry: &Registry, dialect: &str) -> Arc<Histogram> {
    registry.histogram(
        NOTIFY_DURATION,
        "Time from a notify request (or push message) in to its answer, by dialect.",
        &[("dialect", dialect)],
        LATENCY_BUCKETS,
    )
}

/// `POST /notify/{appToken}`: reads the body and accepts one notification.
async fn notify_request<S, B>(
    state: &State,
    app_token: String,
    body: S,
    max_body: usize,
) -> Response
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    let read = ns_http::read_body(&mut Box::pin(body), max_body).await;
    let body = match read {
        Ok(body) => body,
        Err(e) => {
            state.metrics.rejected.inc();
            return ns_http::error_reply(&e.protocol_error());
        }
    };
    match notify(state, AppToken::new(app_token), &body).await {
        Ok(message_id) => {
            state.metrics.accepted.inc();
            warp::reply::json(&Accepted {
                status: "ACCEPTED",
                message_id: message_id.as_str(),
            })
            .into_response()
        }
        Err(e) => {
            if e.code == Code::Unavailable {
                state.metrics.unavailable.inc();
            } else {
                state.metrics.rejected.inc();
            }
            error_response(&e, state)
        }
    }
}

fn error_response(error: &ProtocolError, state: &State) -> Response {
    let mut response = ns_http::error_reply(error);
    if error.code == Code::RateLimited {
        let retry = state.limiter.retry_after_secs();
        if let Ok(value) = warp::http::HeaderValue::from_str(&retry.to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(
        Code::Unavailable,
        "the notification can't be stored right now; retry",
    )
}

/// Accepts one notification; returns its server id.
async fn notify(
    state: &State,
    app_token: AppToken,
    body: &[u8],
) -> Result<MessageId, ProtocolError> {
    if !common::crypto::looks_like_app_token(app_token.as_str()) {
        return Err(ProtocolError::new(Code::NotFound, "unknown appToken"));
    }
    let key = app_key(state, &app_token).await?;
    let now = state.clock.now();
    let limits = NotifyLimits {
        max_message: state.settings.max_message_bytes,
        max_clock_skew: state.settings.max_clock_skew_secs,
    };
    let request = validate_notify(body, limits, now)?;
    if let Some(key) = key {
        let Some(signature) = request.signature.as_deref() else {
            return Err(ProtocolError::new(
                Code::NotSigned,
                "this WA registered a public key: the notification must be signed",
            ));
        };
        key.verify(request.message.as_bytes(), signature)
            .map_err(|_| ProtocolError::new(Code::BadSignature, "bad signature"))?;
    }
    if !state.limiter.allow(app_token.as_str()) {
        return Err(ProtocolError::new(
            Code::RateLimited,
            "too many notifications for this appToken",
        ));
    }

    let notification = Notification {
        message_id: MessageId::new(uuid::Uuid::now_v7().simple().to_string()),
        app_token,
        expires_at: request.expires_at(),
        id: request.id,
        payload: common::notification::Payload::Text(request.message),
        ttl: request.ttl,
        timestamp: request.timestamp,
        priority: request.priority,
        created_at: state.clock.now_millis(),
    };
    if !room_for(state, &notification, now)
        .await
        .map_err(|Unavailable| unavailable())?
    {
        return Err(ProtocolError::new(
            Code::QuotaExceeded,
            "this appToken has too many pending notifications; retry once some were \
             acked or have expired",
        ));
    }
    let message_id = notification.message_id.clone();
    store_and_publish(state, notification, now)
        .await
        .map_err(|Unavailable| unavailable())?;
    Ok(message_id)
}

/// The store or the broker failed; the cause is logged.
struct Unavailable;

/// Whether the notification's appToken has room for it under `--max-pending-per-app`,
/// taking the place if so (see [`quota`]). A `ttl: 0` notification is never stored, so it
/// always has room. One that replaces a pending notification with the same id needs room
/// too: the quota is checked before anything is looked up.
async fn room_for(
    state: &State,
    notification: &Notification,
    now: EpochSecs,
) -> Result<bool, Unavailable> {
    if notification.is_ephemeral() {
        return Ok(true);
    }
    state
        .pending
        .reserve(&*state.store, &notification.app_token, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "counting an app's pending notifications failed");
            Unavailable
        })
}

/// Stores a notification (unless it is for the UAs connected right now: `ttl: 0` ones are
/// never stored), publishes it on `newMessages` and waits for the store to have it durably
/// and for the broker's confirm: what has to be done before the sender is answered. The
/// publish goes out once the store has the notification, before it is durable (with the
/// embedded store, [`Store::stage_notification`]), so that a UA connected right now gets it
/// while the disk syncs; if the sync then fails, the sender is told so and retries, and at
/// worst the UA gets it twice. A stored notification must have had [`room_for`] it, whose
/// place is given back if storing fails.
///
/// [`Store::stage_notification`]: ns_store::Store::stage_notification
async fn store_and_publish(
    state: &State,
    notification: Notification,
    now: EpochSecs,
) -> Result<(), Unavailable> {
    let message_id = notification.message_id.clone();
    let app_token = notification.app_token.clone();
    let failed_to_store = |e: &ns_store::StoreError| {
        state.pending.release(&app_token);
        tracing::warn!(error = %e, message_id = %message_id, "storing a notification failed");
        Unavailable
    };
    let durable = if notification.is_ephemeral() {
        None
    } else {
        match state.store.stage_notification(&notification, now).await {
            Ok(durable) => Some(durable),
            Err(e) => return Err(failed_to_store(&e)),
        }
    };
    let message = NewMessage {
        notification,
        reroute: None,
    };
    let stored = async {
        match durable {
            Some(durable) => durable.await,
            None => Ok(()),
        }
    };
    let (stored, published) = tokio::join!(
        stored,
        ns_broker::publish(&*state.broker, NEW_MESSAGES, &message)
    );
    if let Err(e) = stored {
        return Err(failed_to_store(&e));
    }
    if let Err(e) = published {
        tracing::warn!(error = %e, message_id = %message_id, "publishing a notification failed");
        return Err(Unavailable);
    }
    Ok(())
}

/// The app's public key, from the cache or the store; 404 for an unknown appToken.
async fn app_key(state: &State, app_token: &AppToken) -> Result<CachedApp, ProtocolError> {
    if let Some(cached) = state
        .apps
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(app_token)
    {
        return Ok(cached.clone());
    }
    let app = state.store.get_app(app_token).await.map_err(|e| {
        tracing::warn!(error = %e, "app look-up failed");
        unavailable()
    })?;
    let Some(app) = app else {
        return Err(ProtocolError::new(Code::NotFound, "unknown appToken"));
    };
    let key = match app.pbk.as_deref() {
        None => None,
        Some(pem) => Some(Arc::new(PublicKey::from_pem(pem).map_err(|_| {
            tracing::error!(app_token = %app_token, "stored public key does not parse");
            ProtocolError::new(Code::Generic, "the WA's public key is not usable")
        })?)),
    };
    // An appToken is derived from its content, so a cached entry never goes stale.
    let mut apps = state.apps.write().unwrap_or_else(|e| e.into_inner());
    if apps.len() >= APP_CACHE_LIMIT {
        apps.clear();
    }
    apps.insert(app_token.clone(), key.clone());
    Ok(key)
}

/// Runs ns-as on `listener` until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    declare_queue(&deps, &shutdown).await;
    let url = ns_http::listening_url(&listener)?;
    tracing::info!("listening on {url} (notify)");
    ns_http::serve(listener, routes(settings, deps), shutdown).await;
    Ok(())
}

/// Declares `newMessages`, retrying while the broker is down: notifications accepted before
/// the monitor starts must wait in the queue, not be returned as unroutable.
async fn declare_queue(deps: &Deps, shutdown: &CancellationToken) {
    ns_runtime::retry::until_ok("declaring the newMessages queue", shutdown, || {
        deps.broker.declare_durable(NEW_MESSAGES)
    })
    .await;
}
