//! NS-MSG-Monitor: takes new notifications from `newMessages`, resolves the UAs registered
//! for their app, records a pending delivery for each, and routes the notification to the
//! front-end holding each UA, or to ns-ua-udp for sleeping UAs that can be woken.
//!
//! A broker message is acked only after its deliveries are stored and its routes published.

mod cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use common::broker::{front_end_queue, Broker, BrokerError, QueueKind, NEW_MESSAGES, UDP_WAKEUPS};
use common::messages::{decode, encode, FrontEndMessage, NewMessage, RouteEvent, WakeUp};
use common::metrics::{Metric, Registry};
use common::model::{Notification, UaId, UaRoute};
use common::routing::{decide, Target};
use common::store::{Store, StoreError};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

use cache::RouteCache;

/// The settings of ns-msg-monitor.
#[derive(Args, Clone, Debug)]
#[group(id = "monitor")]
pub struct Settings {
    /// Unacked `newMessages` deliveries taken from the broker at once.
    #[arg(long, env = "NS_PREFETCH", default_value_t = 512)]
    pub prefetch: u16,
    /// Notifications routed concurrently.
    #[arg(long, env = "NS_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// How often stored but never routed notifications are looked for (seconds).
    #[arg(long, env = "NS_SWEEP_INTERVAL_SECS", default_value_t = 30)]
    pub sweep_interval_secs: u64,
    /// Age after which an unrouted notification is routed by the sweep (seconds); younger
    /// ones are presumably still on their way through the broker.
    #[arg(long, env = "NS_SWEEP_MIN_AGE_SECS", default_value_t = 30)]
    pub sweep_min_age_secs: u64,
    /// How often expired notifications and old acked deliveries are purged (seconds).
    #[arg(long, env = "NS_PURGE_INTERVAL_SECS", default_value_t = 60)]
    pub purge_interval_secs: u64,
    /// How long an acked delivery stays visible in the status endpoint (seconds).
    #[arg(long, env = "NS_ACKED_RETENTION_SECS", default_value_t = 3600)]
    pub acked_retention_secs: i64,
    /// Route every unrouted notification once at start, whatever its age. Right when this
    /// monitor is the only one (the one-process mode): nothing can be in flight then.
    #[arg(long, env = "NS_SWEEP_AT_START")]
    pub sweep_at_start: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefetch: 512,
            concurrency: 256,
            sweep_interval_secs: 30,
            sweep_min_age_secs: 30,
            purge_interval_secs: 60,
            acked_retention_secs: 3600,
            sweep_at_start: false,
        }
    }
}

/// What the monitor talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
}

struct Metrics {
    routed: Arc<Metric>,
    to_front_ends: Arc<Metric>,
    wakeups: Arc<Metric>,
    offline: Arc<Metric>,
    skipped: Arc<Metric>,
    failures: Arc<Metric>,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        Metrics {
            routed: r.counter("ns_monitor_routed_total", "Notifications routed."),
            to_front_ends: r.counter(
                "ns_monitor_front_end_deliveries_total",
                "UA deliveries handed to front-ends.",
            ),
            wakeups: r.counter("ns_monitor_wakeups_total", "Wake-ups handed to ns-ua-udp."),
            offline: r.counter(
                "ns_monitor_dead_front_end_total",
                "Routes to a front-end queue that no longer exists.",
            ),
            skipped: r.counter(
                "ns_monitor_skipped_total",
                "Notifications not routed because they were replaced.",
            ),
            failures: r.counter(
                "ns_monitor_failures_total",
                "Routing attempts that failed and will be retried.",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The routing of notifications, shared by the queue consumer and the sweep.
struct Router {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    cache: RouteCache,
    metrics: Metrics,
}

impl Router {
    fn new(deps: &Deps) -> Self {
        Router {
            store: deps.store.clone(),
            broker: deps.broker.clone(),
            cache: RouteCache::default(),
            metrics: Metrics::new(&deps.registry),
        }
    }

    async fn app_uas(&self, app_token: &str) -> Result<Arc<Vec<UaId>>, StoreError> {
        if let Some(uas) = self.cache.app(app_token) {
            return Ok(uas);
        }
        let epoch = self.cache.epoch();
        let uas = Arc::new(self.store.app_uas(app_token).await?);
        self.cache.fill_app(epoch, app_token, uas.clone());
        Ok(uas)
    }

    async fn routes(&self, uas: &[UaId]) -> Result<Vec<UaRoute>, StoreError> {
        let (mut routes, misses) = self.cache.routes(uas);
        if !misses.is_empty() {
            let epoch = self.cache.epoch();
            let fetched = self.store.ua_routes(&misses).await?;
            self.cache.fill_routes(epoch, &fetched);
            routes.extend(fetched);
        }
        Ok(routes)
    }

    /// Routes one notification to every UA registered for its app.
    async fn route(&self, n: &Notification) -> Result<(), RouteError> {
        let uas = self.app_uas(&n.app_token).await?;
        if !n.is_ephemeral() && !self.store.add_deliveries(n, &uas).await? {
            self.metrics.skipped.inc();
            return Ok(());
        }
        let routes = self.routes(&uas).await?;

        let mut by_node: HashMap<String, Vec<&UaRoute>> = HashMap::new();
        let mut wakeups = Vec::new();
        for route in &routes {
            match decide(route, n.priority, n.is_ephemeral(), true) {
                Target::FrontEnd(node) => by_node.entry(node).or_default().push(route),
                Target::Wake(interface) => wakeups.push(WakeUp {
                    ua: route.ua.clone(),
                    interface,
                    priority: n.priority,
                }),
                Target::Hold | Target::Drop => {}
            }
        }

        let sends = by_node.iter().map(|(node, targets)| async move {
            let message = FrontEndMessage::Deliver {
                notification: n.clone(),
                targets: targets.iter().map(|r| r.ua.clone()).collect(),
            };
            let result = self
                .broker
                .publish(&front_end_queue(node), encode(&message))
                .await;
            (targets, result)
        });
        for (targets, result) in futures::future::join_all(sends).await {
            match result {
                Ok(()) => self.metrics.to_front_ends.add(targets.len() as i64),
                // The front-end is gone: its UAs are offline until they connect again.
                Err(BrokerError::Unroutable(_)) => {
                    self.metrics.offline.inc();
                    for route in targets {
                        if let Target::Wake(interface) =
                            decide(route, n.priority, n.is_ephemeral(), false)
                        {
                            wakeups.push(WakeUp {
                                ua: route.ua.clone(),
                                interface,
                                priority: n.priority,
                            });
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }

        let wakes = wakeups
            .iter()
            .map(|w| self.broker.publish(UDP_WAKEUPS, encode(w)));
        for result in futures::future::join_all(wakes).await {
            result?;
        }
        self.metrics.wakeups.add(wakeups.len() as i64);
        self.metrics.routed.inc();
        Ok(())
    }

    /// Routes notifications that were stored but never routed and are older than `min_age`.
    async fn sweep(&self, min_age: Duration) -> usize {
        let cutoff = common::now_millis() - min_age.as_millis() as i64;
        let pending = match self.store.unrouted(1000).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "looking for unrouted notifications failed");
                return 0;
            }
        };
        let mut routed = 0;
        for n in pending.iter().filter(|n| n.created_at <= cutoff) {
            match self.route(n).await {
                Ok(()) => routed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, message_id = %n.message_id, "sweep routing failed");
                    break;
                }
            }
        }
        if routed > 0 {
            tracing::info!(routed, "routed notifications that had missed the queue");
        }
        routed
    }
}

/// Runs the monitor until `shutdown` is cancelled: consumes `newMessages`, keeps the route
/// cache fresh, sweeps and purges, and serves `/health` and `/metrics` on `listener`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = Arc::new(Router::new(&deps));
    if settings.sweep_at_start {
        // Bounded, in case the store keeps listing something it can't route.
        for _ in 0..1000 {
            if router.sweep(Duration::ZERO).await == 0 {
                break;
            }
        }
    }
    let tasks = TaskTracker::new();
    spawn_tasks(&settings, &deps, &router, &tasks, &shutdown);

    let health = ns_http::Health {
        store: Some(deps.store.clone()),
        broker: Some(deps.broker.clone()),
    };
    let routes = ns_http::ops_routes(health, deps.registry.clone()).recover(ns_http::recover);
    tracing::info!(addr = ?listener.local_addr().ok(), "ns-msg-monitor listening");
    ns_http::serve(listener, routes.unify(), shutdown.clone()).await;

    // Unacked messages of routing cut short are redelivered to the next monitor.
    common::shutdown::drain(&tasks, Duration::from_secs(20), "routing").await;
    Ok(())
}

/// Starts the monitor's background work on `tasks`; it stops when `shutdown` is cancelled.
fn spawn_tasks(
    settings: &Settings,
    deps: &Deps,
    router: &Arc<Router>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    tasks.spawn(consume_events(router.clone(), shutdown.clone()));
    tasks.spawn(consume_new_messages(
        settings.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    let (r, s) = (router.clone(), shutdown.clone());
    let (every, min_age) = (
        Duration::from_secs(settings.sweep_interval_secs.max(1)),
        Duration::from_secs(settings.sweep_min_age_secs),
    );
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = s.cancelled() => return,
            }
            r.sweep(min_age).await;
        }
    });
    let (store, s) = (deps.store.clone(), shutdown.clone());
    let every = Duration::from_secs(settings.purge_interval_secs.max(1));
    let retention = settings.acked_retention_secs;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = s.cancelled() => return,
            }
            let now = common::now_secs();
            match store.purge(now, now - retention).await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    });
}

async fn consume_events(router: Arc<Router>, shutdown: CancellationToken) {
    let Some(mut events) =
        common::retry::until_ok("subscribing to route events", &shutdown, || {
            router.broker.subscribe_events()
        })
        .await
    else {
        return;
    };
    // Whatever was cached before the subscription may have missed events.
    router.cache.invalidate(None);
    loop {
        let delivery = tokio::select! {
            d = events.recv() => d,
            _ = shutdown.cancelled() => return,
        };
        let Some(delivery) = delivery else {
            tracing::warn!("route event subscription ended");
            router.cache.invalidate(None);
            return;
        };
        if delivery.payload.is_empty() {
            router.cache.invalidate(None);
            continue;
        }
        match decode::<RouteEvent>(&delivery.payload) {
            Ok(event) => router.cache.invalidate(Some(&event)),
            Err(e) => tracing::warn!(error = %e, "malformed route event"),
        }
    }
}

async fn consume_new_messages(
    settings: Settings,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    if common::retry::until_ok("declaring the udpWakeups queue", &shutdown, || {
        router.broker.declare_durable(UDP_WAKEUPS)
    })
    .await
    .is_none()
    {
        return;
    }
    let Some(subscription) = common::retry::until_ok("consuming newMessages", &shutdown, || {
        router
            .broker
            .consume(NEW_MESSAGES, QueueKind::Durable, settings.prefetch)
    })
    .await
    else {
        return;
    };
    tokio_stream_of(subscription)
        .take_until(shutdown.cancelled())
        .for_each_concurrent(settings.concurrency.max(1), |delivery| {
            let router = router.clone();
            async move {
                let message = match decode::<NewMessage>(&delivery.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        // A message nobody can read would come back forever: drop it.
                        tracing::error!(error = %e, "malformed newMessages payload dropped");
                        let _ = delivery.ack().await;
                        return;
                    }
                };
                match router.route(&message.notification).await {
                    Ok(()) => {
                        if let Err(e) = delivery.ack().await {
                            tracing::warn!(error = %e, "ack failed; the message will be routed again");
                        }
                    }
                    Err(e) => {
                        router.metrics.failures.inc();
                        tracing::warn!(error = %e, message_id = %message.notification.message_id,
                            "routing failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = delivery.nack().await;
                    }
                }
            }
        })
        .await;
}

/// A subscription as a stream.
fn tokio_stream_of(
    mut rx: common::broker::Subscription,
) -> impl futures::Stream<Item = common::broker::Delivery> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
