//! [`Timed`]: a [`Broker`] that times the operations of the broker it wraps, whichever it
//! is: publishing (until confirmed) here, and, through [`SettleTiming`] for the consume loop
//! ([`crate::consume`]), settling a message and each message's time from its receipt to its
//! settlement (what the service took to handle it).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use common::messages::RouteEvent;
use ns_runtime::metrics::{Histogram, Registry, LATENCY_BUCKETS};

use crate::{Broker, BrokerError, Events, QueueKind, Subscription};

/// The histogram of operation times.
pub const OPERATION_DURATION: &str = "ns_broker_operation_duration_seconds";
/// The histogram of the times from a message's receipt to its settlement.
pub const HANDLING_DURATION: &str = "ns_broker_message_handling_duration_seconds";

struct Ops {
    publish: Arc<Histogram>,
    publish_event: Arc<Histogram>,
    ack: Arc<Histogram>,
    nack: Arc<Histogram>,
}

/// Times each call of the wrapped broker; see the module's documentation.
pub struct Timed {
    inner: Arc<dyn Broker>,
    ops: Ops,
    registry: Registry,
}

impl Timed {
    /// `broker`, timed into `registry`.
    pub fn wrap(broker: Arc<dyn Broker>, registry: &Registry) -> Arc<dyn Broker> {
        let op = |name: &str| {
            registry.histogram(
                OPERATION_DURATION,
                "Time a broker operation took, by operation (publish: until confirmed).",
                &[("operation", name)],
                LATENCY_BUCKETS,
            )
        };
        let ops = Ops {
            publish: op("publish"),
            publish_event: op("publish_event"),
            ack: op("ack"),
            nack: op("nack"),
        };
        Arc::new(Timed {
            inner: broker,
            ops,
            registry: registry.clone(),
        })
    }
}

#[async_trait]
impl Broker for Timed {
    fn is_healthy(&self) -> bool {
        self.inner.is_healthy()
    }

    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError> {
        let start = Instant::now();
        let out = self.inner.publish(queue, payload).await;
        self.ops.publish.since(start);
        out
    }

    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner.declare_durable(queue).await
    }

    /// The subscription as it is: [`crate::consume`] times its messages with
    /// [`Broker::settle_timing`], so that no task or allocation of this wrapper sits between
    /// the broker and the service.
    async fn consume(
        &self,
        queue: &str,
        kind: QueueKind,
        prefetch: u16,
    ) -> Result<Subscription, BrokerError> {
        self.inner.consume(queue, kind, prefetch).await
    }

    async fn publish_event(&self, event: &RouteEvent) -> Result<(), BrokerError> {
        let start = Instant::now();
        let out = self.inner.publish_event(event).await;
        self.ops.publish_event.since(start);
        out
    }

    async fn subscribe_events(&self) -> Result<Events, BrokerError> {
        self.inner.subscribe_events().await
    }

    fn settle_timing(&self, queue: &str, kind: QueueKind) -> Option<SettleTiming> {
        // A front-end's own queue is named after its random id: one series for them all.
        let label = match kind {
            QueueKind::Durable => queue,
            QueueKind::Private => "front_end",
        };
        let handling = self.registry.histogram(
            HANDLING_DURATION,
            "Time from a message's receipt from the broker to its ack or nack, by queue.",
            &[("queue", label)],
            LATENCY_BUCKETS,
        );
        Some(SettleTiming {
            handling,
            ack: self.ops.ack.clone(),
            nack: self.ops.nack.clone(),
        })
    }
}

/// The histograms of one consumer's messages: the time from each one's receipt to the start
/// of its settlement (what the service took to handle it), and the settling itself.
pub struct SettleTiming {
    pub handling: Arc<Histogram>,
    pub ack: Arc<Histogram>,
    pub nack: Arc<Histogram>,
}
