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
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
                if tx.send(Delivery::new(payload, Box::new(NoAck))).await.is_err() {
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
                rx = queue.rx.lock() => rx,
                _ = tx.closed() => break,
            };
            tokio::select! {
                received = rx.recv() => received,
                _ = tx.closed() => break,
            }
        };
        let Some(payload) = received else { break };
        let acker = LocalAcker {
            queue: name.clone(),
            requeue: queue.tx.clone(),
            payload: payload.clone(),
        };
        permit.send(Delivery::new(payload, Box::new(acker)));
    }
    inner.forget_if_unused(&name, &queue.rx);
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
        use mpsc::error::TrySendError;
        match self.requeue.try_send(self.payload) {
            Ok(()) => Ok(()),
            // Not awaited here: the caller may be the queue's only consumer, which would then
            // wait for itself to make room.
            Err(TrySendError::Full(payload)) => {
                let requeue = self.requeue.clone();
                tokio::spawn(async move { requeue.send(payload).await });
                Ok(())
            }
            Err(TrySendError::Closed(_)) => {
                Err(BrokerError::unavailable(LocalError::QueueGone(self.queue)))
            }
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
