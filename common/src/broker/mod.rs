//! The broker seam: queues between the services. RabbitMQ ([`amqp::AmqpBroker`]) in the
//! distributed mode, in-process channels in the one-process mode.

pub mod amqp;
pub mod local;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// The durable queue ns-as publishes new notifications on.
pub const NEW_MESSAGES: &str = "newMessages";
/// The durable queue shared by the ns-ua-udp instances.
pub const UDP_WAKEUPS: &str = "udpWakeups";

/// The queue of one ns-ua-ws instance.
pub fn front_end_queue(server_id: &str) -> String {
    format!("ws.{server_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker can't be reached; the caller answers 503 or retries.
    #[error("the broker is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker did not take the message (negative confirm).
    #[error("the broker refused the message")]
    Refused,
    /// No queue of that name exists: nobody is there to consume it.
    #[error("no queue named {0}")]
    Unroutable(String),
}

impl BrokerError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BrokerError::Unavailable(Box::new(e))
    }
}

/// How a queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// Shared work queue that survives broker and consumer restarts (`newMessages`, `udpWakeups`).
    Durable,
    /// One consumer's own queue: it disappears with its consumer, so publishing to a dead
    /// front-end fails with [`BrokerError::Unroutable`] instead of piling up.
    Private,
}

/// A message taken from a queue. Dropping it without [`Delivery::ack`] leaves it to be
/// delivered again (after a reconnection, or at once with [`Delivery::nack`]).
pub struct Delivery {
    pub payload: Bytes,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(payload: Bytes, acker: Box<dyn Acker>) -> Self {
        Delivery { payload, acker }
    }

    /// Tells the broker the message's effect is stored: it will not be delivered again.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }

    /// Gives the message back to the queue for another attempt.
    pub async fn nack(self) -> Result<(), BrokerError> {
        self.acker.nack().await
    }
}

/// How a [`Delivery`] is settled; one implementation per broker.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    async fn nack(self: Box<Self>) -> Result<(), BrokerError>;
}

/// Deliveries of one subscription. It outlives broker reconnections: the implementation
/// subscribes again and keeps feeding the same channel.
pub type Subscription = mpsc::Receiver<Delivery>;

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// True while the broker is reachable; drives `/health`.
    fn is_healthy(&self) -> bool;

    /// Publishes to a queue and returns once the broker has taken responsibility for the
    /// message (publisher confirm). Fails with `Unroutable` when the queue does not exist.
    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError>;

    /// Declares a durable queue so publishes to it are kept even before its consumers start.
    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        let _ = queue;
        Ok(())
    }

    /// Declares the queue (if needed) and consumes it with at most `prefetch` unacked
    /// messages in flight.
    async fn consume(
        &self,
        queue: &str,
        kind: QueueKind,
        prefetch: u16,
    ) -> Result<Subscription, BrokerError>;

    /// Publishes an event to every subscriber of [`Broker::subscribe_events`] (fan-out, no
    /// durability: events only invalidate caches).
    async fn publish_event(&self, payload: Bytes) -> Result<(), BrokerError>;

    /// Receives every event published from now on. Deliveries need no ack. A delivery with an
    /// empty payload means events may have been missed (the subscription was set up again
    /// after a reconnection): drop everything events would have invalidated.
    async fn subscribe_events(&self) -> Result<Subscription, BrokerError>;
}
