//! The broker seam: queues between the services. RabbitMQ (`ns-broker-amqp`) in the
//! distributed mode, in-process channels (`ns-broker-local`) in the one-process mode.
//!
//! Queues carry bytes (the JSON of [`common::messages`]); the events that invalidate route
//! caches are typed. [`consume()`] is the one consume loop of every service, and the
//! [`conformance`] suite (feature `conformance`) is the contract both implementations pass.

#[cfg(feature = "conformance")]
pub mod conformance;
mod consume;
mod timed;

pub use consume::{consume, Consumer, Handled};
pub use timed::{SettleTiming, Timed, HANDLING_DURATION, OPERATION_DURATION};

use async_trait::async_trait;
use bytes::Bytes;
use common::messages::RouteEvent;
use serde::Serialize;
use tokio::sync::mpsc;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker can't be reached; the caller answers 503 or retries.
    #[error("the broker is unavailable")]
    Unavailable(#[source] Cause),
    /// The broker did not take the message (negative confirm).
    #[error("the broker refused the message")]
    Refused,
    /// No queue of that name exists: nobody is there to consume it.
    #[error("no queue named {0}")]
    Unroutable(String),
    /// The message could not be serialized.
    #[error("a message could not be encoded")]
    Encode(#[source] serde_json::Error),
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

/// A message taken from a queue. Dropping it without [`Delivery::ack`] leaves it to the
/// broker: RabbitMQ delivers it again once its channel closes; the in-process broker, whose
/// queues die with the process, does not.
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

/// What an event subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Route(RouteEvent),
    /// Events may have been missed (the subscriber fell behind, or the subscription was made
    /// again after a reconnection): drop everything events would have invalidated.
    Missed,
}

/// The events of one subscription; like a [`Subscription`], it outlives reconnections.
pub type Events = mpsc::Receiver<Event>;

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// True while the broker is reachable; drives `/health`.
    fn is_healthy(&self) -> bool;

    /// Publishes to a queue and returns once the broker has taken responsibility for the
    /// message (publisher confirm). Fails with `Unroutable` when the queue does not exist.
    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError>;

    /// Declares a durable queue so publishes to it are kept even before its consumers start.
    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError>;

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
    async fn publish_event(&self, event: &RouteEvent) -> Result<(), BrokerError>;

    /// Receives every event published from now on, or [`Event::Missed`] where some may
    /// have been lost.
    async fn subscribe_events(&self) -> Result<Events, BrokerError>;

    /// Where [`consume`] records the handling and settling of `queue`'s messages: `None`
    /// but for a [`Timed`] broker.
    fn settle_timing(&self, _queue: &str, _kind: QueueKind) -> Option<SettleTiming> {
        None
    }
}

/// Publishes `message` to `queue` as JSON.
pub async fn publish<T: Serialize + Sync>(
    broker: &dyn Broker,
    queue: &str,
    message: &T,
) -> Result<(), BrokerError> {
    let payload = common::messages::encode(message).map_err(BrokerError::Encode)?;
    broker.publish(queue, payload).await
}
