//! In-process implementation of the [`Broker`] seam for the one-process mode: queues are
//! bounded tokio channels, events a tokio broadcast channel. Nothing survives the process,
//! which is the one-process mode's contract anyway.

use super::{Acker, Broker, BrokerError, Delivery, QueueKind, Subscription};
use super::{NEW_MESSAGES, UDP_WAKEUPS};
use async_trait::async_trait;
use bytes::Bytes;
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
    events: broadcast::Sender<Bytes>,
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
        broker.declare_durable(NEW_MESSAGES);
        broker.declare_durable(UDP_WAKEUPS);
        broker
    }

    /// Creates a durable queue (if needed) so that it can be published to before anyone
    /// consumes it.
    pub fn declare_durable(&self, queue: &str) {
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
        // The inherent method of the same name does the work.
        LocalBroker::declare_durable(self, queue);
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

    async fn publish_event(&self, payload: Bytes) -> Result<(), BrokerError> {
        // An error only means nobody subscribes, which is fine for events.
        let _ = self.inner.events.send(payload);
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<Subscription, BrokerError> {
        let mut events = self.inner.events.subscribe();
        let (tx, subscription) = mpsc::channel(EVENTS_BUFFER);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    _ = tx.closed() => return,
                };
                let payload = match received {
                    Ok(payload) => payload,
                    // The subscriber fell behind: the empty payload tells it to drop its caches.
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        debug!(skipped, "event subscriber lagged");
                        Bytes::new()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx
                    .send(Delivery::new(payload, Box::new(NoAck)))
                    .await
                    .is_err()
                {
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

/// Event deliveries need no ack.
struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;
    use tokio::time::timeout;

    const DEADLINE: Duration = Duration::from_secs(5);

    async fn next(subscription: &mut Subscription) -> Delivery {
        timeout(DEADLINE, subscription.recv())
            .await
            .expect("no delivery before the deadline")
            .expect("the subscription ended")
    }

    fn name() -> String {
        format!("q-{}", uuid::Uuid::new_v4().simple())
    }

    #[tokio::test]
    async fn round_trip_with_ack() {
        let broker = LocalBroker::new();
        assert!(broker.is_healthy());
        let queue = name();
        let mut subscription = broker
            .consume(&queue, QueueKind::Durable, 10)
            .await
            .unwrap();
        broker
            .publish(&queue, Bytes::from_static(b"one"))
            .await
            .unwrap();
        let delivery = next(&mut subscription).await;
        assert_eq!(delivery.payload, Bytes::from_static(b"one"));
        delivery.ack().await.unwrap();
    }

    #[tokio::test]
    async fn nack_requeues_at_the_back() {
        let broker = LocalBroker::new();
        let queue = name();
        let mut subscription = broker.consume(&queue, QueueKind::Durable, 1).await.unwrap();
        broker
            .publish(&queue, Bytes::from_static(b"a"))
            .await
            .unwrap();
        broker
            .publish(&queue, Bytes::from_static(b"b"))
            .await
            .unwrap();
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
    async fn durable_queues_buffer_until_a_consumer_comes() {
        let broker = LocalBroker::new();
        // Declared up front, like the server's own durable queues.
        broker
            .publish(NEW_MESSAGES, Bytes::from_static(b"early"))
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
        // And they outlive their consumer.
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
    async fn publishing_to_a_missing_queue_is_unroutable() {
        let broker = LocalBroker::new();
        match broker.publish("nobody", Bytes::from_static(b"x")).await {
            Err(BrokerError::Unroutable(queue)) => assert_eq!(queue, "nobody"),
            other => panic!("expected Unroutable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn private_queue_goes_away_with_its_consumer() {
        let broker = LocalBroker::new();
        let mut subscription = broker
            .consume("ws.a", QueueKind::Private, 10)
            .await
            .unwrap();
        broker
            .publish("ws.a", Bytes::from_static(b"hi"))
            .await
            .unwrap();
        next(&mut subscription).await.ack().await.unwrap();
        drop(subscription);
        assert!(matches!(
            broker.publish("ws.a", Bytes::from_static(b"hi")).await,
            Err(BrokerError::Unroutable(_))
        ));
        // A new consumer gets a new, empty queue.
        let mut subscription = broker
            .consume("ws.a", QueueKind::Private, 10)
            .await
            .unwrap();
        broker
            .publish("ws.a", Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut subscription).await.payload,
            Bytes::from_static(b"new")
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
    async fn events_fan_out_to_every_subscriber() {
        let broker = LocalBroker::new();
        let mut first = broker.subscribe_events().await.unwrap();
        let mut second = broker.subscribe_events().await.unwrap();
        broker
            .publish_event(Bytes::from_static(b"changed"))
            .await
            .unwrap();
        for subscription in [&mut first, &mut second] {
            let delivery = next(subscription).await;
            assert_eq!(delivery.payload, Bytes::from_static(b"changed"));
            delivery.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_lagging_event_subscriber_is_told_it_missed_events() {
        let broker = LocalBroker::new();
        let mut subscription = broker.subscribe_events().await.unwrap();
        let count = EVENTS_CAPACITY + EVENTS_BUFFER + 100;
        for i in 0..count {
            broker
                .publish_event(Bytes::from(format!("e{i}")))
                .await
                .unwrap();
        }
        let mut received = 0;
        let mut told = false;
        while let Ok(Some(delivery)) =
            timeout(Duration::from_millis(200), subscription.recv()).await
        {
            told |= delivery.payload.is_empty();
            received += 1;
        }
        assert!(told, "no empty payload among {received} deliveries");
        assert!(received < count);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_publishes_are_consumed() {
        const COUNT: usize = 2000;
        let broker = LocalBroker::new();
        let queue = name();
        let mut subscription = broker
            .consume(&queue, QueueKind::Durable, 50)
            .await
            .unwrap();
        let publishes = (0..COUNT).map(|i| broker.publish(&queue, Bytes::from(i.to_string())));
        let results = timeout(DEADLINE, futures::future::join_all(publishes))
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok));
        let mut seen = HashSet::new();
        while seen.len() < COUNT {
            let delivery = next(&mut subscription).await;
            seen.insert(delivery.payload.clone());
            delivery.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn consumers_of_a_durable_queue_share_its_messages() {
        const COUNT: usize = 100;
        let broker = LocalBroker::new();
        let queue = name();
        let mut first = broker.consume(&queue, QueueKind::Durable, 1).await.unwrap();
        let mut second = broker.consume(&queue, QueueKind::Durable, 1).await.unwrap();
        let publisher = {
            let broker = broker.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                for i in 0..COUNT {
                    broker
                        .publish(&queue, Bytes::from(i.to_string()))
                        .await
                        .unwrap();
                }
            })
        };
        let mut seen = Vec::new();
        let (mut from_first, mut from_second) = (0, 0);
        while seen.len() < COUNT {
            let delivery = tokio::select! {
                delivery = next(&mut first) => { from_first += 1; delivery }
                delivery = next(&mut second) => { from_second += 1; delivery }
            };
            seen.push(delivery.payload);
        }
        publisher.await.unwrap();
        let distinct: HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), COUNT, "a message was delivered twice");
        assert!(from_first > 0 && from_second > 0);
    }
}
