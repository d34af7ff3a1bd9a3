//! A conformance suite for [`Broker`] implementations: each function checks one behaviour
//! the services rely on, and panics when the broker gets it wrong. An implementation runs
//! every one of them as its own test with [`conformance_tests!`](crate::conformance_tests).
//!
//! The durable queues the suite uses are named in [`DURABLE_QUEUES`], so that a fixture on a
//! shared broker can delete them afterwards.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::messages::RouteEvent;
use common::model::{AppToken, UaId};
use futures::FutureExt;
use tokio::time::timeout;

use crate::{Broker, BrokerError, Delivery, Event, Events, QueueKind, Subscription};

/// Every durable queue the suite declares or consumes.
pub const DURABLE_QUEUES: &[&str] = &["q", "early", "shared"];

/// How long the suite waits for anything it expects.
const DEADLINE: Duration = Duration::from_secs(15);

/// A broker to run one behaviour against, and how to clean up after it.
#[async_trait]
pub trait Fixture: Send + Sync {
    fn broker(&self) -> &dyn Broker;

    /// Removes what the behaviour left behind on a shared broker.
    async fn tear_down(self);
}

/// Runs `behaviour` against the fixture's broker, then tears the fixture down, even when
/// the behaviour failed; a failure is then raised again.
pub async fn run<F>(
    fixture: F,
    behaviour: impl for<'a> FnOnce(&'a dyn Broker) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
) where
    F: Fixture,
{
    let outcome = AssertUnwindSafe(behaviour(fixture.broker()))
        .catch_unwind()
        .await;
    fixture.tear_down().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per behaviour of the suite, each with a fixture from `$fixture`, an
/// `async fn() -> impl Fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        $crate::conformance_tests!(@each $fixture;
            round_trip_with_ack,
            a_declared_durable_queue_keeps_messages_until_its_first_consumer,
            nack_redelivers,
            publishing_to_a_missing_queue_is_unroutable_and_harmless,
            private_queue_goes_away_with_its_consumer,
            events_fan_out_to_every_subscriber,
            many_concurrent_publishes_are_consumed,
            consumers_of_a_durable_queue_share_its_messages,
        );
    };
    (@each $fixture:path; $($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() {
            $crate::conformance::run($fixture().await, |broker| {
                Box::pin($crate::conformance::$behaviour(broker))
            })
            .await;
        }
    )*};
}

/// The next delivery of `subscription`; panics if none comes within the suite's deadline.
pub async fn next(subscription: &mut Subscription) -> Delivery {
    timeout(DEADLINE, subscription.recv())
        .await
        .expect("no delivery before the deadline")
        .expect("the subscription ended")
}

/// The next event; panics if none comes within the suite's deadline.
pub async fn next_event(events: &mut Events) -> Event {
    timeout(DEADLINE, events.recv())
        .await
        .expect("no event before the deadline")
        .expect("the event subscription ended")
}

fn bytes(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

pub async fn round_trip_with_ack(broker: &dyn Broker) {
    assert!(broker.is_healthy());
    let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
    broker.publish("q", bytes("one")).await.unwrap();
    let delivery = next(&mut subscription).await;
    assert_eq!(delivery.payload, bytes("one"));
    delivery.ack().await.unwrap();

    // Acked: a new subscription gets the next message, not this one again.
    drop(subscription);
    broker.publish("q", bytes("two")).await.unwrap();
    let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
    let delivery = next(&mut subscription).await;
    assert_eq!(delivery.payload, bytes("two"));
    delivery.ack().await.unwrap();
}

pub async fn a_declared_durable_queue_keeps_messages_until_its_first_consumer(broker: &dyn Broker) {
    assert!(matches!(
        broker.publish("early", bytes("x")).await,
        Err(BrokerError::Unroutable(_))
    ));
    broker.declare_durable("early").await.unwrap();
    broker.declare_durable("early").await.unwrap();
    broker.publish("early", bytes("kept")).await.unwrap();
    let mut subscription = broker
        .consume("early", QueueKind::Durable, 10)
        .await
        .unwrap();
    let delivery = next(&mut subscription).await;
    assert_eq!(delivery.payload, bytes("kept"));
    delivery.ack().await.unwrap();
}

pub async fn nack_redelivers(broker: &dyn Broker) {
    let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
    broker.publish("q", bytes("again")).await.unwrap();
    next(&mut subscription).await.nack().await.unwrap();
    let delivery = next(&mut subscription).await;
    assert_eq!(delivery.payload, bytes("again"));
    delivery.ack().await.unwrap();
}

pub async fn publishing_to_a_missing_queue_is_unroutable_and_harmless(broker: &dyn Broker) {
    match broker.publish("nobody", bytes("x")).await {
        Err(BrokerError::Unroutable(queue)) => assert_eq!(queue, "nobody"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // The broker is as usable as before.
    let mut subscription = broker.consume("q", QueueKind::Durable, 1).await.unwrap();
    broker.publish("q", bytes("x")).await.unwrap();
    next(&mut subscription).await.ack().await.unwrap();
    assert!(broker.is_healthy());
}

pub async fn private_queue_goes_away_with_its_consumer(broker: &dyn Broker) {
    let mut subscription = broker
        .consume("ws.a", QueueKind::Private, 10)
        .await
        .unwrap();
    broker.publish("ws.a", bytes("hi")).await.unwrap();
    next(&mut subscription).await.ack().await.unwrap();
    drop(subscription);
    let gone = timeout(DEADLINE, async {
        loop {
            match broker.publish("ws.a", bytes("hi")).await {
                Err(BrokerError::Unroutable(_)) => break,
                Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the private queue outlived its consumer");

    // A new consumer gets a new, empty queue.
    let mut subscription = broker
        .consume("ws.a", QueueKind::Private, 10)
        .await
        .unwrap();
    broker.publish("ws.a", bytes("new")).await.unwrap();
    assert_eq!(next(&mut subscription).await.payload, bytes("new"));
}

pub async fn events_fan_out_to_every_subscriber(broker: &dyn Broker) {
    let mut first = broker.subscribe_events().await.unwrap();
    let mut second = broker.subscribe_events().await.unwrap();
    let app = RouteEvent::App {
        app_token: AppToken::new("app"),
    };
    let ua = RouteEvent::Ua {
        ua: UaId::new("ua"),
    };
    broker.publish_event(&app).await.unwrap();
    broker.publish_event(&ua).await.unwrap();
    for events in [&mut first, &mut second] {
        assert_eq!(next_event(events).await, Event::Route(app.clone()));
        assert_eq!(next_event(events).await, Event::Route(ua.clone()));
    }
}

pub async fn many_concurrent_publishes_are_consumed(broker: &dyn Broker) {
    const COUNT: usize = 2000;
    let mut subscription = broker.consume("q", QueueKind::Durable, 200).await.unwrap();
    let consumer = async {
        let mut seen = HashSet::new();
        while seen.len() < COUNT {
            let delivery = next(&mut subscription).await;
            seen.insert(delivery.payload.clone());
            delivery.ack().await.unwrap();
        }
        seen
    };
    let publishes = (0..COUNT).map(|i| broker.publish("q", Bytes::from(i.to_string())));
    let (results, seen) = tokio::join!(
        timeout(DEADLINE, futures::future::join_all(publishes)),
        consumer
    );
    let results = results.expect("publishes not confirmed before the deadline");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(seen.len(), COUNT);
}

pub async fn consumers_of_a_durable_queue_share_its_messages(broker: &dyn Broker) {
    const COUNT: usize = 100;
    let mut first = broker
        .consume("shared", QueueKind::Durable, 1)
        .await
        .unwrap();
    let mut second = broker
        .consume("shared", QueueKind::Durable, 1)
        .await
        .unwrap();
    let publisher = async {
        for i in 0..COUNT {
            broker
                .publish("shared", Bytes::from(i.to_string()))
                .await
                .unwrap();
        }
    };
    let consumers = async {
        let mut seen = Vec::new();
        let (mut from_first, mut from_second) = (0, 0);
        while seen.len() < COUNT {
            let delivery = tokio::select! {
                delivery = next(&mut first) => { from_first += 1; delivery }
                delivery = next(&mut second) => { from_second += 1; delivery }
            };
            seen.push(delivery.payload.clone());
            delivery.ack().await.unwrap();
        }
        (seen, from_first, from_second)
    };
    let ((), (seen, from_first, from_second)) = tokio::join!(publisher, consumers);
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), COUNT, "a message was delivered twice");
    assert!(
        from_first > 0 && from_second > 0,
        "one consumer got everything: {from_first} and {from_second}"
    );
}
