//! Subscriptions: what one consumes ([`Target`]), where it goes ([`Feed`]), and the task that
//! keeps it fed across reconnections ([`run_subscription`]), with the ackers of its deliveries.

use crate::supervise::{Backoff, BACKOFF_MAX};
use crate::{close_quietly, within, Failure, Live, Shared};
use async_trait::async_trait;
use bytes::Bytes;
use common::messages::RouteEvent;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use ns_broker::{Acker, BrokerError, Delivery, Event, QueueKind};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Events buffered for a slow subscriber before it is told that it missed some.
const EVENTS_BUFFER: usize = 1024;

/// What a subscription task keeps subscribed to.
pub(crate) enum Target {
    Queue {
        name: String,
        kind: QueueKind,
        prefetch: u16,
    },
    Events {
        exchange: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Queue { name, .. } => write!(f, "queue {name}"),
            Target::Events { exchange } => write!(f, "events of {exchange}"),
        }
    }
}

/// The caller's end of a subscription, fed by [`run_subscription`].
pub(crate) enum Feed {
    /// The deliveries of a [`Target::Queue`], for the caller to ack.
    Queue(mpsc::Sender<Delivery>),
    /// The events of a [`Target::Events`], decoded.
    Events(mpsc::Sender<Event>),
}

impl Feed {
    /// Completes once the caller has dropped its receiver.
    async fn closed(&self) {
        match self {
            Feed::Queue(tx) => tx.closed().await,
            Feed::Events(tx) => tx.closed().await,
        }
    }

    /// Hands one message to the caller; false once the caller is gone.
    async fn forward(&self, delivery: lapin::message::Delivery, missed: &mut bool) -> bool {
        match self {
            Feed::Queue(tx) => {
                let delivery = Delivery::new(
                    Bytes::from(delivery.data),
                    Box::new(AmqpAcker(delivery.acker)),
                );
                // Blocks at most until the caller takes one: the prefetch bounds how many are
                // unacked, and so how many can be waiting here.
                tx.send(delivery).await.is_ok()
            }
            Feed::Events(tx) => offer_event(tx, read_event(&delivery.data), missed),
        }
    }

    /// Tells the caller that events may have been missed, waiting for room; false once the
    /// caller is gone. Queues have nothing to tell: never completes for them.
    async fn tell_missed(&self) -> bool {
        match self {
            Feed::Events(tx) => match tx.reserve().await {
                Ok(permit) => {
                    permit.send(Event::Missed);
                    true
                }
                Err(_) => false,
            },
            Feed::Queue(_) => std::future::pending().await,
        }
    }
}

/// One subscription on one channel of one connection.
pub(crate) struct Consuming {
    pub(crate) generation: u64,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Target {
    pub(crate) fn buffer(&self) -> usize {
        match self {
            // Unacked deliveries are bounded by the prefetch already (0 means unlimited).
            Target::Queue { prefetch, .. } => usize::from(*prefetch).max(1),
            Target::Events { .. } => EVENTS_BUFFER,
        }
    }

    pub(crate) async fn open(&self, live: &Live) -> Result<Consuming, Failure> {
        let channel = within(live.connection.create_channel()).await?;
        match self.declare_and_consume(&channel).await {
            Ok(consumer) => Ok(Consuming {
                generation: live.generation,
                channel,
                consumer,
            }),
            Err(error) => {
                close_quietly(&channel).await;
                Err(error)
            }
        }
    }

    async fn declare_and_consume(&self, channel: &Channel) -> Result<lapin::Consumer, Failure> {
        let tag = ShortString::from(format!("ns-{}", uuid::Uuid::new_v4().simple()));
        match self {
            Target::Queue {
                name,
                kind,
                prefetch,
            } => {
                within(channel.basic_qos(*prefetch, BasicQosOptions::default())).await?;
                let options = match kind {
                    QueueKind::Durable => QueueDeclareOptions::durable(),
                    // Deleted by the broker when its consumer goes, so that publishing to a
                    // gone front-end fails instead of piling up.
                    QueueKind::Private => QueueDeclareOptions::default().auto_delete(),
                };
                within(channel.queue_declare(name.as_str().into(), options, FieldTable::default()))
                    .await?;
                within(channel.basic_consume(
                    name.as_str().into(),
                    tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ))
                .await
            }
            Target::Events { exchange } => {
                within(channel.exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                ))
                .await?;
                // A server-named queue of our own, deleted with its consumer (auto-delete) or
                // at the latest with the connection (exclusive).
                let queue = within(channel.queue_declare(
                    ShortString::from(""),
                    QueueDeclareOptions::exclusive().auto_delete(),
                    FieldTable::default(),
                ))
                .await?;
                within(channel.queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    ShortString::from(""),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ))
                .await?;
                let options = BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                };
                within(channel.basic_consume(
                    queue.name().clone(),
                    tag,
                    options,
                    FieldTable::default(),
                ))
                .await
            }
        }
    }
}

/// Why [`pump`] returned.
enum End {
    /// The caller dropped its receiver, or the broker was dropped.
    Done,
    /// The channel or the connection is gone: subscribe again.
    Lost,
}

/// Feeds `feed` for as long as the caller holds its receiver, subscribing again after every
/// reconnection.
pub(crate) async fn run_subscription(
    shared: Arc<Shared>,
    target: Target,
    feed: Feed,
    first: Consuming,
) {
    let mut live_rx = shared.live.subscribe();
    let mut consuming = first;
    // For events: the caller must be told (Event::Missed) that some may have been missed.
    let mut missed = false;
    // Slows down a subscription that keeps ending as soon as it is made.
    let mut backoff = Backoff::new();
    loop {
        let since = tokio::time::Instant::now();
        let end = pump(
            &shared,
            &target,
            &feed,
            &mut consuming,
            &mut live_rx,
            &mut missed,
        )
        .await;
        close_quietly(&consuming.channel).await;
        if let End::Done = end {
            debug!(target = %target, "subscription ended");
            return;
        }
        if since.elapsed() < BACKOFF_MAX {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = feed.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        } else {
            backoff = Backoff::new();
        }
        consuming = match resubscribe(&shared, &target, &feed, &mut live_rx).await {
            Some(consuming) => consuming,
            None => return,
        };
        info!(target = %target, generation = consuming.generation, "subscribed again");
        if let Feed::Events(_) = feed {
            missed = true;
        }
    }
}

async fn pump(
    shared: &Shared,
    target: &Target,
    feed: &Feed,
    consuming: &mut Consuming,
    live_rx: &mut watch::Receiver<Option<Arc<Live>>>,
    missed: &mut bool,
) -> End {
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return End::Done,
            _ = feed.closed() => return End::Done,
            changed = live_rx.changed() => {
                if changed.is_err() {
                    return End::Done;
                }
                let generation = live_rx.borrow_and_update().as_ref().map(|live| live.generation);
                // Same generation: only the publishing channel was replaced.
                if generation != Some(consuming.generation) {
                    return End::Lost;
                }
            }
            told = feed.tell_missed(), if *missed => {
                if !told {
                    return End::Done;
                }
                *missed = false;
            }
            next = consuming.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if !feed.forward(delivery, missed).await {
                        return End::Done;
                    }
                }
                Some(Err(error)) => {
                    warn!(target = %target, %error, "subscription interrupted");
                    return End::Lost;
                }
                None => {
                    warn!(target = %target, "the broker cancelled the subscription");
                    return End::Lost;
                }
            },
        }
    }
}

/// An event as published by [`ns_broker::Broker::publish_event`]; one that can't be read
/// counts as missed, which makes the subscriber drop everything events would invalidate.
fn read_event(payload: &[u8]) -> Event {
    match common::messages::decode::<RouteEvent>(payload) {
        Ok(event) => Event::Route(event),
        Err(error) => {
            warn!(%error, "an event could not be decoded; telling the subscriber it missed some");
            Event::Missed
        }
    }
}

/// Hands an event to a subscriber without ever waiting on it: a subscriber that lags behind
/// loses events and gets [`Event::Missed`] instead, as soon as it has room. False once the
/// subscriber is gone.
fn offer_event(tx: &mpsc::Sender<Event>, event: Event, missed: &mut bool) -> bool {
    use mpsc::error::TrySendError;
    if *missed {
        match tx.try_send(Event::Missed) {
            Ok(()) => *missed = false,
            Err(TrySendError::Full(_)) => return true,
            Err(TrySendError::Closed(_)) => return false,
        }
        if event == Event::Missed {
            // Just said.
            return true;
        }
    }
    match tx.try_send(event) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            *missed = true;
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Waits for a connection and subscribes on it; `None` when there is no one to feed any more.
async fn resubscribe(
    shared: &Shared,
    target: &Target,
    feed: &Feed,
    live_rx: &mut watch::Receiver<Option<Arc<Live>>>,
) -> Option<Consuming> {
    let mut backoff = Backoff::new();
    loop {
        let live = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = feed.closed() => return None,
            live = live_rx.wait_for(Option::is_some) => match live {
                Ok(live) => live.clone(),
                Err(_) => return None,
            },
        };
        let Some(live) = live else { continue };
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = feed.closed() => return None,
            attempt = target.open(&live) => attempt,
        };
        match attempt {
            Ok(consuming) => return Some(consuming),
            Err(error) => {
                // Usually the connection died too and the supervisor is on it.
                let delay = backoff.next_delay();
                debug!(target = %target, %error, retry_in = ?delay, "could not subscribe again");
                tokio::select! {
                    _ = shared.stop.cancelled() => return None,
                    _ = feed.closed() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Settles a queue delivery on the channel it came from.
struct AmqpAcker(lapin::Acker);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        settled(self.0.ack(BasicAckOptions::default()).await)
    }

    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        settled(self.0.nack(options).await)
    }
}

/// lapin answers `Ok(false)` when the delivery's channel is closed: the broker will deliver
/// the message again, so the caller must know it was not settled.
fn settled(result: lapin::Result<bool>) -> Result<(), BrokerError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::ChannelClosed.into()),
        Err(error) => Err(Failure::Amqp(error).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::UaId;

    fn ua_event() -> RouteEvent {
        RouteEvent::Ua {
            ua: UaId::new("ua"),
        }
    }

    #[test]
    fn an_event_that_cant_be_read_counts_as_missed() {
        let payload = common::messages::encode(&ua_event()).unwrap();
        assert_eq!(read_event(&payload), Event::Route(ua_event()));
        assert_eq!(read_event(b"not json"), Event::Missed);
        assert_eq!(read_event(b""), Event::Missed);
    }

    #[test]
    fn a_lagging_subscriber_is_told_it_missed_events_once_it_has_room() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut missed = false;
        for _ in 0..3 {
            assert!(offer_event(&tx, Event::Route(ua_event()), &mut missed));
        }
        assert!(missed, "the third event did not fit");
        // Still no room: the event is dropped and the marker still owed.
        assert!(offer_event(&tx, Event::Route(ua_event()), &mut missed));
        assert!(missed);
        assert_eq!(rx.try_recv().unwrap(), Event::Route(ua_event()));
        assert_eq!(rx.try_recv().unwrap(), Event::Route(ua_event()));
        // Room again: the marker first, then the event.
        assert!(offer_event(&tx, Event::Route(ua_event()), &mut missed));
        assert!(!missed);
        assert_eq!(rx.try_recv().unwrap(), Event::Missed);
        assert_eq!(rx.try_recv().unwrap(), Event::Route(ua_event()));
        // An unreadable event while the marker is owed: one marker only.
        missed = true;
        assert!(offer_event(&tx, Event::Missed, &mut missed));
        assert!(!missed);
        assert_eq!(rx.try_recv().unwrap(), Event::Missed);
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(!offer_event(&tx, Event::Route(ua_event()), &mut missed));
    }
}
