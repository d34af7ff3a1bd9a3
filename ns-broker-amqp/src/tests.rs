//! Tests against the RabbitMQ at `NS_TEST_AMQP_URL`: the conformance suite of the broker seam,
//! then what only this implementation does (redelivery after a channel closes, basic.return
//! attribution, recovery). Each test has its own name prefix and deletes what it leaves behind.

use super::*;
use common::model::UaId;
use futures::FutureExt;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::ConnectionProperties;
use ns_broker::conformance::{next, next_event, DURABLE_QUEUES};
use ns_broker::Event;
use std::panic::AssertUnwindSafe;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(15);

fn url() -> String {
    std::env::var("NS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A broker of its own on the shared RabbitMQ: every name it uses carries a unique prefix.
struct AmqpFixture {
    broker: AmqpBroker,
    prefix: String,
}

async fn fixture() -> AmqpFixture {
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let broker = AmqpBroker::connect(&url(), &prefix)
        .await
        .expect("RabbitMQ must run at NS_TEST_AMQP_URL");
    AmqpFixture { broker, prefix }
}

#[async_trait]
impl ns_broker::conformance::Fixture for AmqpFixture {
    fn broker(&self) -> &dyn Broker {
        &self.broker
    }

    /// Stops the broker, then deletes what the test may have left on the shared RabbitMQ
    /// (private queues go away with their consumers by themselves).
    async fn tear_down(self) {
        drop(self.broker);
        delete(&self.prefix, DURABLE_QUEUES).await;
    }
}

ns_broker::conformance_tests!(fixture);

/// Runs an AMQP-specific test on its own broker, then tears the fixture down, even when the
/// test failed; a failure is then raised again. The durable queues the tests use are among
/// [`DURABLE_QUEUES`].
async fn run<F, T>(test: T)
where
    T: FnOnce(AmqpBroker, String) -> F,
    F: Future<Output = ()>,
{
    let fixture = fixture().await;
    let outcome = AssertUnwindSafe(test(fixture.broker.clone(), fixture.prefix.clone()))
        .catch_unwind()
        .await;
    ns_broker::conformance::Fixture::tear_down(fixture).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Deletes durable queues and the events exchange behind the broker's back.
async fn delete(prefix: &str, durable_queues: &[&str]) {
    let Ok(connection) = Connection::connect(&url(), ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in durable_queues {
            let name = format!("{prefix}{queue}");
            let _ = channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await;
        }
        let exchange = format!("{prefix}{EVENTS_EXCHANGE}");
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = channel.close(200, "test done".into()).await;
    }
    let _ = connection.close(200, "test done".into()).await;
}

/// Publishes `payload` to `queue` until the queue exists again.
async fn publish_until_routable(broker: &AmqpBroker, queue: &str, payload: &'static [u8]) {
    let routed = timeout(DEADLINE, async {
        while broker
            .publish(queue, Bytes::from_static(payload))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(routed.is_ok(), "{queue} was not declared again");
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen before the deadline");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test]
async fn unacked_delivery_comes_back_after_the_subscription_is_dropped() {
    run(|broker, _| async move {
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"lost?"))
            .await
            .unwrap();
        let delivery = next(&mut subscription).await;
        drop(subscription);
        let mut subscription = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let again = next(&mut subscription).await;
        assert_eq!(again.payload, Bytes::from_static(b"lost?"));
        again.ack().await.unwrap();
        // Too late for the first copy: the channel it came from is closed.
        assert!(matches!(
            delivery.ack().await,
            Err(BrokerError::Unavailable(_))
        ));
    })
    .await;
}

/// lapin attaches returns to whichever confirm resolves next; the publisher must still give
/// each caller its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_publishes_each_get_their_own_outcome() {
    const COUNT: usize = 4000;
    run(|broker, _| async move {
        let _subscription = broker.consume("q", QueueKind::Durable, 100).await.unwrap();
        let publishes = (0..COUNT).map(|i| {
            let broker = broker.clone();
            async move {
                let queue = if i % 2 == 0 { "q" } else { "missing" };
                (
                    queue,
                    broker.publish(queue, Bytes::from(i.to_string())).await,
                )
            }
        });
        let results = timeout(DEADLINE, futures::future::join_all(publishes))
            .await
            .expect("publishes not confirmed before the deadline");
        let wrong: Vec<_> = results
            .iter()
            .filter(|(queue, result)| match result {
                Ok(()) => *queue != "q",
                Err(BrokerError::Unroutable(returned)) => *queue != "missing" || returned != queue,
                Err(_) => true,
            })
            .collect();
        assert!(wrong.is_empty(), "{} wrong outcomes", wrong.len());
    })
    .await;
}

/// A queue deleted under its consumer is declared again; the connection is not affected.
#[tokio::test]
async fn resubscribes_when_the_queue_is_deleted() {
    init_tracing();
    run(|broker, prefix| async move {
        let mut work = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let generation = broker.current().unwrap().generation;
        delete(&prefix, &["q"]).await;
        publish_until_routable(&broker, "q", b"again").await;
        assert_eq!(next(&mut work).await.payload, Bytes::from_static(b"again"));
        assert_eq!(broker.current().unwrap().generation, generation);
        assert!(broker.is_healthy());
    })
    .await;
}

/// The pid of our connection in `rabbitmqctl list_connections`, if the tool is there.
fn connection_pid(prefix: &str) -> Option<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .ok()?;
    let marker = format!("\"ns:{prefix}:");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.contains(&marker))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}

/// Kills our connection from the broker's side (the other tests' connections are left
/// alone) and checks that everything comes back on a new one.
#[tokio::test]
async fn recovers_when_the_broker_closes_the_connection() {
    init_tracing();
    run(|broker, prefix| async move {
        let Some(pid) = connection_pid(&prefix) else {
            eprintln!("rabbitmqctl unavailable: reconnection test skipped");
            return;
        };
        let mut work = broker.consume("q", QueueKind::Durable, 10).await.unwrap();
        let mut private = broker
            .consume("ws.a", QueueKind::Private, 10)
            .await
            .unwrap();
        let mut events = broker.subscribe_events().await.unwrap();
        broker
            .publish("q", Bytes::from_static(b"before"))
            .await
            .unwrap();
        let unacked = next(&mut work).await;

        let closed = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "reconnection test"])
            .output()
            .expect("rabbitmqctl");
        assert!(closed.status.success(), "{closed:?}");
        wait_until("going unhealthy", || !broker.is_healthy()).await;
        assert!(matches!(
            broker.publish("q", Bytes::from_static(b"x")).await,
            Err(BrokerError::Unavailable(_))
        ));
        // The delivery's channel is gone: it can't be acked, it will come again.
        assert!(matches!(
            unacked.ack().await,
            Err(BrokerError::Unavailable(_))
        ));
        wait_until("reconnecting", || broker.is_healthy()).await;

        // The subscriptions come back by themselves; the private queue is declared again.
        let redelivered = next(&mut work).await;
        assert_eq!(redelivered.payload, Bytes::from_static(b"before"));
        redelivered.ack().await.unwrap();
        publish_until_routable(&broker, "ws.a", b"after").await;
        assert_eq!(
            next(&mut private).await.payload,
            Bytes::from_static(b"after")
        );
        // Events: first "you may have missed some", then events again.
        assert_eq!(next_event(&mut events).await, Event::Missed);
        let event = RouteEvent::Ua {
            ua: UaId::new("ua"),
        };
        broker.publish_event(&event).await.unwrap();
        assert_eq!(next_event(&mut events).await, Event::Route(event));
    })
    .await;
}
