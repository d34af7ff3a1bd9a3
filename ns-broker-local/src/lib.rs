//! In-process implementation of the [`Broker`] seam for the one-process mode: queues are
//! bounded tokio channels, events a tokio broadcast channel. Nothing survives the process,
//! which is the one-process mode's contract anyway.

use async_trait::async_trait;
use bytes::Bytes;
use common::messages::{RouteEvent, NEW_MESSAGES, UDP_WAKEUPS};
use ns_broker::{Acker, Broker, BrokerError, Delivery, Event, Events, QueueKind, Subscription};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

/// Messages a queue holds before `publish` waits for room. Large because a durable queue may
/// fill up before its consumer starts; tokio allocates the slots only as they are used.
const QUEUE_CAPACITY: usize = 1 << 16;
/// Events kept for subscribers that fall behind before they are told they missed some.
const EVENTS_CAPACITY: usize = 1024;
/// Events handed to one subscriber ahead of its reading them.
const EVENTS_BUFFER: usize = 64;

/// A [`Broker`] inside the process. Cheap to clone: clones share the queues.
///
/// Differences with RabbitMQ worth knowing: acks are no-ops and a delivery dropped without an
/// ack is not delivered again (nothing else would consume it in this process); messages still
/// buffered in a dropped [`Subscription`] are lost with it.
#[derive(Clone)]
pub struct LocalBroker {
    inner: Arc<Inner>,
}

struct Inner {
    queues: Mutex<HashMap<String, Queue>>,
    events: broadcast::Sender<RouteEvent>,
}

/// One queue: a channel whose receiving end the consumers take turns on.
#[derive(Clone)]
struct Queue {
    kind: QueueKind,
    tx: mpsc::Sender<Bytes>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    /// The subscriptions taking from it; a Private queue lives while one of them does.
    subscriptions: Vec<mpsc::WeakSender<Delivery>>,
}

impl Queue {
    fn new(kind: QueueKind) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        Queue {
            kind,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            subscriptions: Vec::new(),
        }
    }

    /// Forgets the subscriptions whose receiver is gone; true if one is left.
    fn has_subscriptions(&mut self) -> bool {
        self.subscriptions.retain(|weak| {
            weak.upgrade()
                .is_some_and(|subscription| !subscription.is_closed())
        });
        !self.subscriptions.is_empty()
    }

    /// A Private queue without subscriptions is deleted, as RabbitMQ auto-deletes it.
    fn is_gone(&mut self) -> bool {
        self.kind == QueueKind::Private && !self.has_subscriptions()
    }
}

#[derive(Debug, thiserror::Error)]
enum LocalError {
    #[error("queue {0} already exists with another kind")]
    KindMismatch(String),
    #[error("queue {0} is gone")]
    QueueGone(String),
}

impl Default for LocalBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBroker {
    /// A broker with the durable queues of the server ([`NEW_MESSAGES`], [`UDP_WAKEUPS`])
    /// already declared, so that they buffer whatever is published before their consumer starts.
    pub fn new() -> Self {
        let broker = LocalBroker {
            inner: Arc::new(Inner {
                queues: Mutex::new(HashMap::new()),
                events: broadcast::channel(EVENTS_CAPACITY).0,
            }),
        };
        broker.declare(NEW_MESSAGES);
        broker.declare(UDP_WAKEUPS);
        broker
    }

    /// Creates a durable queue (if needed) so that it can be published to before anyone
    /// consumes it.
    fn declare(&self, queue: &str) {
        self.inner
            .queues()
            .entry(queue.to_owned())
            .or_insert_with(|| Queue::new(QueueKind::Durable));
    }
}

impl Inner {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // The map stays consistent even if a holder panicked: every update is one insert/remove.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deletes a Private queue once its last subscription is gone (if it is still this queue).
    fn forget_if_unused(&self, name: &str, rx: &Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>) {
        let mut queues = self.queues();
        if let Some(queue) = queues.get_mut(name) {
            if Arc::ptr_eq(&queue.rx, rx) && queue.is_gone() {
                queues.remove(name);
                debug!(queue = %name, "private queue deleted");
            }
        }
    }
}

#[async_trait]
impl Broker for LocalBroker {
    fn is_healthy(&self) -> bool {
        true
    }

    async fn declare_durable(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare(queue);
        Ok(())
    }

    async fn publish(&self, queue: &str, payload: Bytes) -> Result<(), BrokerError> {
        let tx = {
            let mut queues = self.inner.queues();
            let Some(existing) = queues.get_mut(queue) else {
                return Err(BrokerError::Unroutable(queue.to_owned()));
            };
            if existing.is_gone() {
                queues.remove(queue);
                return Err(BrokerError::Unroutable(queue.to_owned()));
            }
            existing.tx.clone()
        };
        // Waits for room rather than failing. It fails only if the queue was deleted meanwhile.
        tx.send(payload)
            .await
            .map_err(|_| BrokerError::Unroutable(queue.to_owned()))
    }

    async fn consume(
        &self,
        queue: &str,
        kind: QueueKind,
        prefetch: u16,
    ) -> Result<Subscription, BrokerError> {
        let (tx, subscription) = mpsc::channel(usize::from(prefetch).max(1));
        let source = {
            let mut queues = self.inner.queues();
            let entry = queues
                .entry(queue.to_owned())
                .or_insert_with(|| Queue::new(kind));
            let in_use = entry.has_subscriptions();
            if entry.kind == QueueKind::Private && !in_use {
                // A dead Private queue: start afresh, whatever the kind asked for now.
                *entry = Queue::new(kind);
            } else if entry.kind != kind {
                return Err(BrokerError::unavailable(LocalError::KindMismatch(
                    queue.to_owned(),
                )));
            }
            entry.subscriptions.push(tx.downgrade());
            entry.clone()
        };
        tokio::spawn(feed(self.inner.clone(), queue.to_owned(), source, tx));
        Ok(subscription)
    }

    async fn publish_event(&self, event: &RouteEvent) -> Result<(), BrokerError> {
        // An error only means nobody subscribes, which is fine for events.
        let _ = self.inner.events.send(event.clone());
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<Events, BrokerError> {
        let mut events = self.inner.events.subscribe();
        let (tx, subscription) = mpsc::channel(EVENTS_BUFFER);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    _ = tx.closed() => return,
                };
                let event = match received {
                    Ok(event) => Event::Route(event),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        debug!(skipped, "event subscriber lagged");
                        Event::Missed
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(subscription)
    }
}

/// Moves messages from a queue to one subscription, taking turns with the queue's other
/// subscriptions, and only when the subscription has room (its capacity is the prefetch).
async fn feed(inner: Arc<Inner>, name: String, queue: Queue, tx: mpsc::Sender<Delivery>) {
    loop {
        let Ok(permit) = tx.reserve().await else {
            break;
        };
        let received = {
            let mut rx = tokio::select! {
                biased;
                _ = tx.closed() => break,
                rx = queue.rx.lock() => rx,
            };
            tokio::select! {
                biased;
                _ = tx.closed() => break,
                received = rx.recv() => received,
            }
        };
        let Some(payload) = received else { break };
        if tx.is_closed() {
            // The subscription went away while the message was being taken: it goes back
            // (at the back of the queue) for the other consumers.
            requeue(&queue.tx, payload);
            break;
        }
        let acker = LocalAcker {
            queue: name.clone(),
            requeue: queue.tx.clone(),
            payload: payload.clone(),
        };
        permit.send(Delivery::new(payload, Box::new(acker)));
    }
    inner.forget_if_unused(&name, &queue.rx);
}

/// Puts a message back at the end of its queue; false if the queue is gone.
fn requeue(queue: &mpsc::Sender<Bytes>, payload: Bytes) -> bool {
    use mpsc::error::TrySendError;
    match queue.try_send(payload) {
        Ok(()) => true,
        // Not awaited by the caller: it may be the queue's only consumer, which would then wait
        // for itself to make room.
        Err(TrySendError::Full(payload)) => {
            let queue = queue.clone();
            tokio::spawn(async move { queue.send(payload).await });
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

struct LocalAcker {
    queue: String,
    requeue: mpsc::Sender<Bytes>,
    payload: Bytes,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        if requeue(&self.requeue, self.payload) {
            Ok(())
        } else {
            Err(BrokerError::unavailable(LocalError::QueueGone(self.queue)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_broker::conformance::next;
    use std::time::Duration;
    use tokio::time::timeout;

    async fn fixture() -> LocalFixture {
        LocalFixture(LocalBroker::new())
    }

    struct LocalFixture(LocalBroker);

    #[async_trait]
    impl ns_broker::conformance::Fixture for LocalFixture {
        fn broker(&self) -> &dyn Broker {
            &self.0
        }

        async fn tear_down(self) {}
    }

    ns_broker::conformance_tests!(fixture);

    /// The timing decorator keeps every behaviour of the broker it wraps.
    mod timed {
        use super::*;
        use ns_runtime::metrics::Registry;

        async fn fixture() -> TimedFixture {
            let registry = Registry::default();
            TimedFixture(
                ns_broker::Timed::wrap(Arc::new(LocalBroker::new()), &registry),
                registry,
            )
        }

        struct TimedFixture(Arc<dyn Broker>, Registry);

        #[async_trait]
        impl ns_broker::conformance::Fixture for TimedFixture {
            fn broker(&self) -> &dyn Broker {
                self.0.as_ref()
            }

            async fn tear_down(self) {
                let text = self.1.render();
                assert!(
                    text.contains(
                        "ns_broker_operation_duration_seconds_count{operation=\"publish\"}"
                    ),
                    "{text}"
                );
            }
        }

        ns_broker::conformance_tests!(fixture);
    }

    #[tokio::test]
    async fn nack_requeues_at_the_back() {
        let broker = LocalBroker::new();
        let mut subscription = broker.consume("q", QueueKind::Durable, 1).await.unwrap();
        broker.publish("q", Bytes::from_static(b"a")).await.unwrap();
        broker.publish("q", Bytes::from_static(b"b")).await.unwrap();
        next(&mut subscription).await.nack().await.unwrap();
        assert_eq!(
            next(&mut subscription).await.payload,
            Bytes::from_static(b"b")
        );
        assert_eq!(
            next(&mut subscription).await.payload,
            Bytes::from_static(b"a")
        );
    }

    #[tokio::test]
    async fn the_servers_durable_queues_exist_from_the_start_and_outlive_their_consumer() {
        let broker = LocalBroker::new();
        broker
            .publish(NEW_MESSAGES, Bytes::from_static(b"early"))
            .await
            .unwrap();
        broker
            .publish(UDP_WAKEUPS, Bytes::from_static(b"early"))
            .await
            .unwrap();
        let mut subscription = broker
            .consume(NEW_MESSAGES, QueueKind::Durable, 10)
            .await
            .unwrap();
        assert_eq!(
            next(&mut subscription).await.payload,
            Bytes::from_static(b"early")
        );
        drop(subscription);
        broker
            .publish(NEW_MESSAGES, Bytes::from_static(b"later"))
            .await
            .unwrap();
        let mut subscription = broker
            .consume(NEW_MESSAGES, QueueKind::Durable, 10)
            .await
            .unwrap();
        assert_eq!(
            next(&mut subscription).await.payload,
            Bytes::from_static(b"later")
        );
    }

    #[tokio::test]
    async fn queue_kinds_do_not_mix() {
        let broker = LocalBroker::new();
        let _subscription = broker.consume("ws.a", QueueKind::Private, 1).await.unwrap();
        assert!(matches!(
            broker.consume("ws.a", QueueKind::Durable, 1).await,
            Err(BrokerError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_lagging_event_subscriber_is_told_it_missed_events() {
        let broker = LocalBroker::new();
        let mut events = broker.subscribe_events().await.unwrap();
        let count = EVENTS_CAPACITY + EVENTS_BUFFER + 100;
        for i in 0..count {
            let event = RouteEvent::Ua {
                ua: common::model::UaId::new(format!("u{i}")),
            };
            broker.publish_event(&event).await.unwrap();
        }
        let mut received = 0;
        let mut told = false;
        while let Ok(Some(event)) = timeout(Duration::from_millis(200), events.recv()).await {
            told |= event == Event::Missed;
            received += 1;
        }
        assert!(told, "no Missed among {received} events");
        assert!(received < count);
    }
}
