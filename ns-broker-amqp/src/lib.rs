//! RabbitMQ implementation of the [`Broker`] seam, on lapin.
//!
//! One AMQP connection per [`AmqpBroker`], owned by a supervisor task. When the connection
//! dies the supervisor reconnects with exponential backoff (100 ms doubling to 5 s, reset after
//! a successful connection) for as long as the broker handle lives; [`Broker::is_healthy`] is
//! false meanwhile. [`AmqpBroker::connect`] fails fast when the *first* connection can't be made
//! (a wrong URL or wrong credentials should surface at start-up; the caller decides whether to
//! retry); after that the broker never gives up.
//!
//! lapin's `enable_auto_recover` is deliberately not used: it stops after a bounded number of
//! attempts and replays consumers on its own, while here each subscription task declares and
//! consumes again on a fresh channel of the new connection, which also re-creates the
//! non-durable queues a broker restart deleted, and keeps feeding the caller's channel.
//!
//! Publishing goes through one confirm-mode channel driven by a single task (see the `publish`
//! module) so that many publishes are in flight at once and each caller still gets its own,
//! correct outcome.
//!
//! Modules: `supervise` keeps the connection up, `publish` drives the publishing channel,
//! `subscribe` keeps each subscription fed across reconnections.

mod publish;
mod subscribe;
mod supervise;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use bytes::Bytes;
use common::messages::RouteEvent;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use ns_broker::{Broker, BrokerError, Events, QueueKind, Subscription};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use publish::{PublishRequest, Publisher};
use subscribe::{Feed, Target};
use supervise::FIRST_GENERATION;

/// Name (before the prefix) of the fan-out exchange carrying the events: with the durable
/// queues, what a cluster leaves on RabbitMQ when it is gone.
pub const EVENTS_EXCHANGE: &str = "nsEvents";
/// Bound on connecting, declaring and subscribing: a half-dead broker must not hang a task.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Broker`] on RabbitMQ. Cheap to clone: clones share the connection. The connection and
/// every task behind it stop when the last clone is dropped (a [`Subscription`] still open
/// then ends).
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

/// What the background tasks share with the handles.
struct Shared {
    url: String,
    prefix: String,
    /// The current connection, `None` while reconnecting.
    live: watch::Sender<Option<Arc<Live>>>,
    stop: CancellationToken,
}

/// One established connection with its publishing channel.
struct Live {
    /// Increases with each new connection: subscriptions compare it to learn that theirs is gone.
    generation: u64,
    connection: Arc<Connection>,
    publisher: Publisher,
}

/// Sources of [`BrokerError::Unavailable`] that are not lapin errors.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("not connected to the broker")]
    Disconnected,
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("the delivery's channel is closed")]
    ChannelClosed,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

impl From<Failure> for BrokerError {
    fn from(failure: Failure) -> Self {
        BrokerError::unavailable(failure)
    }
}

async fn within<T>(future: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(SETUP_TIMEOUT, future).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure::Timeout(SETUP_TIMEOUT)),
    }
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        // Closing requeues the unacked deliveries; failing means the channel is gone anyway.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            channel.close(200, "subscription ended".into()),
        )
        .await;
    }
}

impl AmqpBroker {
    /// Connects to `url` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`; add `?heartbeat=10` to
    /// notice a silently dead peer sooner than the server's default). Every queue and exchange
    /// name is prefixed with `prefix`. Fails with [`BrokerError::Unavailable`] if this first
    /// connection can't be made; later losses are repaired in the background.
    pub async fn connect(url: &str, prefix: &str) -> Result<AmqpBroker, BrokerError> {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            live: watch::Sender::new(None),
            stop: stop.clone(),
        });
        let session = supervise::open_session(&shared)
            .await
            .inspect_err(|error| {
                warn!(%error, "could not connect to the broker");
            })?;
        // Usable as soon as this returns, before the supervisor task has run.
        supervise::publish_live(&shared, FIRST_GENERATION, &session);
        tokio::spawn(supervise::supervise(shared.clone(), session));
        Ok(AmqpBroker {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    fn name(&self, queue: &str) -> String {
        format!("{}{queue}", self.shared.prefix)
    }

    fn current(&self) -> Result<Arc<Live>, BrokerError> {
        self.shared
            .live
            .borrow()
            .clone()
            .ok_or_else(|| Failure::Disconnected.into())
    }

    async fn submit(
        &self,
        exchange: String,
        routing_key: String,
        queue: &str,
        mandatory: bool,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        let requests = self.current()?.publisher.requests.clone();
        let (reply, outcome) = oneshot::channel();
        let request = PublishRequest {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            queue: queue.to_owned(),
            mandatory,
            payload,
            reply,
        };
        // Either side going away means the channel or the connection died under us.
        requests
            .send(request)
            .await
            .map_err(|_| Failure::Disconnected)?;
        outcome.await.map_err(|_| Failure::Disconnected)?
    }

    /// Subscribes to `target` and hands what comes from it to the caller's channel, which
    /// `feed` wraps.
    async fn subscribe<T>(
        &self,
        target: Target,
        feed: fn(mpsc::Sender<T>) -> Feed,
    ) -> Result<mpsc::Receiver<T>, BrokerError> {
        let live = self.current()?;
        // The first subscription is made before returning so that the queue exists (and is
        // routable) as soon as the caller holds the receiver.
        let consuming = target.open(&live).await.inspect_err(|error| {
            warn!(target = %target, %error, "could not subscribe");
        })?;
        let (tx, rx) = mpsc::channel(target.buffer());
        tokio::spawn(subscribe::run_subscription(
            self.shared.clone(),
            target,
            feed(tx),
            consuming,
        ));
        Ok(rx)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn is_healthy(&self) -> bool {
        self.shared.live.borrow().as_ref().is_some_and(|live| {
            live.connection.status().connected() && live.publisher.channel.status().connected()
        })
    }

    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError> {
        // The default exchange routes by queue name; `mandatory` turns "no such queue" into a
        // basic.return instead of a silent drop.
        self.submit(String::new(), self.name(queue), queue, true, payload)
            .await
    }

    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        let live = self.current()?;
        let channel = within(live.connection.create_channel()).await?;
        let declared = within(channel.queue_declare(
            self.name(queue).as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ))
        .await;
        close_quietly(&channel).await;
        declared.map(|_| ()).map_err(Into::into)
    }

    async fn consume(
        &self,
        queue: &str,
        kind: QueueKind,
        prefetch: u16,
    ) -> Result<Subscription, BrokerError> {
        let target = Target::Queue {
            name: self.name(queue),
            kind,
            prefetch,
        };
        self.subscribe(target, Feed::Queue).await
    }

    async fn publish_event(&self, event: &RouteEvent) -> Result<(), BrokerError> {
        let payload = common::messages::encode(event).map_err(BrokerError::Encode)?;
        let exchange = self.name(EVENTS_EXCHANGE);
        // Not mandatory: an event nobody listens to is not an error.
        self.submit(exchange, String::new(), EVENTS_EXCHANGE, false, payload)
            .await
    }

    async fn subscribe_events(&self) -> Result<Events, BrokerError> {
        let target = Target::Events {
            exchange: self.name(EVENTS_EXCHANGE),
        };
        self.subscribe(target, Feed::Events).await
    }
}
