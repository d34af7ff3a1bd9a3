//! NS-MSG-Monitor: takes new notifications from `newMessages`, resolves the UAs registered
//! for their app, records a pending delivery for each, and routes the notification to the
//! front-end holding each UA, or to ns-ua-udp for sleeping UAs that can be woken.
//!
//! A broker message is acked only after its deliveries are stored and its routes published.

mod cache;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use common::messages::{front_end_queue, FrontEndMessage, NewMessage, NEW_MESSAGES, UDP_WAKEUPS};
use common::model::{NodeId, UaId, UaRoute};
use common::purge::Retention;
use common::routing;
use ns_broker::{Broker, BrokerError, Consumer, Event, Handled, QueueKind};
use ns_runtime::metrics::{Metric, Registry};
use ns_runtime::Clock;
use ns_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

use cache::RouteCache;

const DEFAULT_PREFETCH: u16 = 512;
const DEFAULT_CONCURRENCY: usize = 256;
const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 30;
const DEFAULT_SWEEP_MIN_AGE_SECS: u64 = 30;
const DEFAULT_PURGE_INTERVAL_SECS: u64 = 60;
const DEFAULT_ACKED_RETENTION_SECS: i64 = 3600;
const DEFAULT_MAX_PENDING_PER_UA: u64 = 1000;
/// Unrouted notifications the sweep takes at a time.
const SWEEP_BATCH: usize = 1000;

/// How often `ns_pending_notifications` is counted again: a count may walk the store.
pub const PENDING_REFRESH: Duration = Duration::from_secs(15);

/// The settings of ns-msg-monitor.
#[derive(Args, Clone, Debug)]
#[group(id = "monitor")]
pub struct Settings {
    /// Unacked `newMessages` deliveries taken from the broker at once.
    #[arg(long, env = "NS_MONITOR_PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub monitor_prefetch: u16,
    /// Notifications routed concurrently.
    #[arg(long, env = "NS_MONITOR_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub monitor_concurrency: usize,
    /// How often stored but never routed notifications are looked for (seconds).
    #[arg(long, env = "NS_SWEEP_INTERVAL_SECS", default_value_t = DEFAULT_SWEEP_INTERVAL_SECS)]
    pub sweep_interval_secs: u64,
    /// Age after which an unrouted notification is routed by the sweep (seconds); younger
    /// ones are presumably still on their way through the broker.
    #[arg(long, env = "NS_SWEEP_MIN_AGE_SECS", default_value_t = DEFAULT_SWEEP_MIN_AGE_SECS)]
    pub sweep_min_age_secs: u64,
    /// How often expired notifications and old acked deliveries are purged (seconds).
    #[arg(long, env = "NS_PURGE_INTERVAL_SECS", default_value_t = DEFAULT_PURGE_INTERVAL_SECS)]
    pub purge_interval_secs: u64,
    /// How long an acked delivery stays visible in the status endpoint (seconds).
    #[arg(long, env = "NS_ACKED_RETENTION_SECS", default_value_t = DEFAULT_ACKED_RETENTION_SECS)]
    pub acked_retention_secs: i64,
    /// Route every unrouted notification once at start, whatever its age. Right when this
    /// monitor is the only one (the one-process mode, which always does it): nothing can be
    /// in flight then.
    #[arg(long, env = "NS_SWEEP_AT_START")]
    pub sweep_at_start: bool,
    /// Most outstanding deliveries (pending or sent, of notifications neither replaced nor
    /// expired) one UA may have; a notification routed to a UA that has as many is recorded
    /// `rejected` for it and not sent to it. 0 disables the quota.
    #[arg(long, env = "NS_MAX_PENDING_PER_UA", default_value_t = DEFAULT_MAX_PENDING_PER_UA)]
    pub max_pending_per_ua: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            monitor_prefetch: DEFAULT_PREFETCH,
            monitor_concurrency: DEFAULT_CONCURRENCY,
            sweep_interval_secs: DEFAULT_SWEEP_INTERVAL_SECS,
            sweep_min_age_secs: DEFAULT_SWEEP_MIN_AGE_SECS,
            purge_interval_secs: DEFAULT_PURGE_INTERVAL_SECS,
            acked_retention_secs: DEFAULT_ACKED_RETENTION_SECS,
            sweep_at_start: false,
            max_pending_per_ua: DEFAULT_MAX_PENDING_PER_UA,
        }
    }
}

impl Settings {
    fn retention(&self) -> Retention {
        Retention {
            acked_secs: self.acked_retention_secs,
        }
    }

    /// The quota of outstanding deliveries per UA, if there is one.
    fn max_pending_per_ua(&self) -> Option<u64> {
        (self.max_pending_per_ua > 0).then_some(self.max_pending_per_ua)
    }
}

/// What the monitor talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub registry: Registry,
    pub clock: Clock,
}

struct Metrics {
    routed: Arc<Metric>,
    rerouted: Arc<Metric>,
    to_front_ends: Arc<Metric>,
    wakeups: Arc<Metric>,
    offline: Arc<Metric>,
    skipped: Arc<Metric>,
    refused: Arc<Metric>,
    failures: Arc<Metric>,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        Metrics {
            routed: r.counter("ns_monitor_routed_total", "Notifications routed."),
            rerouted: r.counter(
                "ns_monitor_rerouted_total",
                "Notifications handed back by a front-end their UA had left, routed again.",
            ),
            to_front_ends: r.counter(
                "ns_monitor_front_end_deliveries_total",
                "UA deliveries handed to front-ends.",
            ),
            wakeups: r.counter("ns_monitor_wakeups_total", "Wake-ups handed to ns-ua-udp."),
            offline: r.counter(
                "ns_monitor_dead_front_end_routes_total",
                "Routes to a front-end queue that no longer exists.",
            ),
            skipped: r.counter(
                "ns_monitor_skipped_total",
                "Notifications not routed because they were replaced or had expired.",
            ),
            refused: r.counter(
                "ns_monitor_over_quota_total",
                "UA deliveries refused because the UA had as many pending as it may.",
            ),
            failures: r.counter(
                "ns_monitor_routing_failures_total",
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
    clock: Clock,
    cache: RouteCache,
    metrics: Metrics,
    max_pending_per_ua: Option<u64>,
}

impl Router {
    fn new(settings: &Settings, deps: &Deps) -> Self {
        Router {
            store: deps.store.clone(),
            broker: deps.broker.clone(),
            clock: deps.clock.clone(),
            cache: RouteCache::default(),
            metrics: Metrics::new(&deps.registry),
            max_pending_per_ua: settings.max_pending_per_ua(),
        }
    }

    async fn app_uas(
        &self,
        app_token: &common::model::AppToken,
    ) -> Result<Arc<Vec<UaId>>, StoreError> {
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

    /// Routes a notification: a new one to every UA registered for its app (after storing
    /// their deliveries), one handed back by a front-end to the UAs that had left it. A UA
    /// the store refused for its quota of outstanding deliveries is not routed to: its
    /// delivery is `rejected` already. A `ttl: 0` notification is stored for nobody, so no
    /// quota holds it back.
    async fn route(&self, message: &NewMessage) -> Result<(), RouteError> {
        let n = &message.notification;
        if n.is_expired(self.clock.now()) {
            // Queued past its TTL (a broker outage, a backlog): nobody is owed it any more.
            self.metrics.skipped.inc();
            return Ok(());
        }
        let (routes, gone) = match &message.reroute {
            None => {
                let mut uas = self.app_uas(&n.app_token).await?;
                if !n.is_ephemeral() {
                    let now = self.clock.now();
                    let added = self
                        .store
                        .add_deliveries(n, &uas, now, self.max_pending_per_ua)
                        .await?;
                    if !added.routed {
                        self.metrics.skipped.inc();
                        return Ok(());
                    }
                    self.metrics.refused.add(added.refused.len() as i64);
                    // Refused at the quota, or acked already (a message handled twice).
                    let skip: HashSet<&UaId> = added.refused.iter().chain(&added.settled).collect();
                    if !skip.is_empty() {
                        let owed = uas.iter().filter(|ua| !skip.contains(ua)).cloned();
                        uas = Arc::new(owed.collect());
                    }
                }
                (self.routes(&uas).await?, Vec::new())
            }
            Some(reroute) => {
                // From the store, not the cache: the cache may still hold the very route the
                // front-end found stale. Their deliveries exist already.
                self.metrics.rerouted.inc();
                let routes = self.store.ua_routes(&reroute.uas).await?;
                (routes, vec![reroute.away_from.clone()])
            }
        };
        let plan = routing::plan(n, &routes, &gone);

        let sends = plan.front_ends.iter().map(|(node, targets)| async move {
            let message = FrontEndMessage::Deliver {
                notification: n.clone(),
                targets: targets.clone(),
            };
            let result = ns_broker::publish(&*self.broker, &front_end_queue(node), &message).await;
            (node, targets.len(), result)
        });
        let mut dead: Vec<NodeId> = Vec::new();
        for (node, count, result) in futures::future::join_all(sends).await {
            match result {
                Ok(()) => self.metrics.to_front_ends.add(count as i64),
                // The front-end is gone: its UAs are offline until they connect again.
                Err(BrokerError::Unroutable(_)) => dead.push(node.clone()),
                Err(e) => return Err(e.into()),
            }
        }
        let mut wakeups = plan.wake;
        if !dead.is_empty() {
            self.metrics.offline.add(dead.len() as i64);
            let stranded = routes
                .iter()
                .filter(|r| r.node().is_some_and(|node| dead.contains(node)));
            wakeups.extend(routing::plan(n, stranded, &dead).wake);
        }

        let wakes = wakeups
            .iter()
            .map(|w| ns_broker::publish(&*self.broker, UDP_WAKEUPS, w));
        for result in futures::future::join_all(wakes).await {
            result?;
        }
        self.metrics.wakeups.add(wakeups.len() as i64);
        self.metrics.routed.inc();
        Ok(())
    }

    /// Routes notifications that were stored but never routed and are older than `min_age`.
    async fn sweep(&self, min_age: Duration) -> usize {
        let min_age = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = self.clock.now_millis().as_i64().saturating_sub(min_age);
        let pending = match self.store.unrouted(self.clock.now(), SWEEP_BATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "looking for unrouted notifications failed");
                return 0;
            }
        };
        let mut routed = 0;
        for notification in pending
            .into_iter()
            .filter(|n| n.created_at.as_i64() <= cutoff)
        {
            let message_id = notification.message_id.clone();
            let message = NewMessage {
                notification,
                reroute: None,
            };
            match self.route(&message).await {
                Ok(()) => routed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, message_id = %message_id, "sweep routing failed");
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
    let router = Arc::new(Router::new(&settings, &deps));
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
    let routes = ns_http::ops_routes(health, deps.registry.clone())
        .recover(ns_http::recover)
        .unify();
    let refusals = ns_http::Refusals::on_first_use("ns-msg-monitor", &deps.registry);
    let url = ns_http::listening_url(&listener)?;
    tracing::info!("listening on {url} (monitor)");
    ns_http::serve(
        listener,
        ns_http::counted(routes, refusals),
        shutdown.clone(),
    )
    .await;

    // Unacked messages of routing cut short are redelivered to the next monitor.
    ns_runtime::shutdown::drain(&tasks, Duration::from_secs(20), "routing").await;
    Ok(())
}

/// Keeps `ns_pending_notifications` (every app's notifications still owed) up to date: at
/// start, then every [`PENDING_REFRESH`]. One monitor of a cluster is enough to serve it; each
/// counts.
async fn count_pending(deps: Deps, shutdown: CancellationToken) {
    let gauge = deps.registry.gauge(
        "ns_pending_notifications",
        "Notifications stored and still owed (neither replaced nor expired, not routed yet or \
         not acked by some UA), counted every 15 s.",
    );
    loop {
        match deps.store.pending_total(deps.clock.now()).await {
            Ok(n) => gauge.set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!(error = %e, "counting pending notifications failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PENDING_REFRESH) => {}
            _ = shutdown.cancelled() => return,
        }
    }
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
    tasks.spawn(count_pending(deps.clone(), shutdown.clone()));
    let (store, clock, s) = (deps.store.clone(), deps.clock.clone(), shutdown.clone());
    let every = Duration::from_secs(settings.purge_interval_secs.max(1));
    let retention = settings.retention();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = s.cancelled() => return,
            }
            match store.purge(clock.now(), retention).await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    });
}

async fn consume_events(router: Arc<Router>, shutdown: CancellationToken) {
    let Some(mut events) =
        ns_runtime::retry::until_ok("subscribing to route events", &shutdown, || {
            router.broker.subscribe_events()
        })
        .await
    else {
        return;
    };
    // Whatever was cached before the subscription may have missed events.
    router.cache.invalidate(None);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.cancelled() => return,
        };
        match event {
            Some(Event::Route(event)) => router.cache.invalidate(Some(&event)),
            Some(Event::Missed) => router.cache.invalidate(None),
            None => {
                tracing::warn!("route event subscription ended");
                router.cache.invalidate(None);
                return;
            }
        }
    }
}

async fn consume_new_messages(
    settings: Settings,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    if ns_runtime::retry::until_ok("declaring the udpWakeups queue", &shutdown, || {
        router.broker.declare_durable(UDP_WAKEUPS)
    })
    .await
    .is_none()
    {
        return;
    }
    let consumer = Consumer {
        queue: NEW_MESSAGES,
        kind: QueueKind::Durable,
        prefetch: settings.monitor_prefetch,
        concurrency: settings.monitor_concurrency,
    };
    ns_broker::consume(
        &*router.broker,
        consumer,
        &shutdown,
        |message: NewMessage| {
            let router = router.clone();
            async move {
                match router.route(&message).await {
                    Ok(()) => Handled::Done,
                    Err(e) => {
                        router.metrics.failures.inc();
                        tracing::warn!(error = %e, message_id = %message.notification.message_id,
                        "routing failed; retrying");
                        Handled::Retry
                    }
                }
            }
        },
    )
    .await;
}
