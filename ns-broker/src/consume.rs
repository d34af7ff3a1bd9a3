//! The consume loop every service runs on its queue: subscribe (waiting for the broker),
//! decode each message, hand it to the service, and settle it by what the service says.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{Broker, QueueKind};

/// How long a message the service could not handle waits before it goes back to the queue,
/// so that a failing dependency is not hammered.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What the service made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Its effect is stored: ack it.
    Done,
    /// It could not be handled now: give it back to the queue for another attempt.
    Retry,
}

/// Which queue to consume, and how.
#[derive(Clone, Copy, Debug)]
pub struct Consumer<'a> {
    pub queue: &'a str,
    pub kind: QueueKind,
    /// Unacked messages taken from the broker at once.
    pub prefetch: u16,
    /// Messages handled at the same time.
    pub concurrency: usize,
}

/// Consumes `consumer.queue` until `shutdown`, handing each message, decoded as `T`, to
/// `handle`. A message that does not decode would come back forever: it is logged and
/// dropped. Messages in hand when `shutdown` comes are left unacked, for the next consumer.
pub async fn consume<T, F, Fut>(
    broker: &dyn Broker,
    consumer: Consumer<'_>,
    shutdown: &CancellationToken,
    handle: F,
) where
    T: DeserializeOwned,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Handled>,
{
    let what = format!("consuming {}", consumer.queue);
    let Some(mut subscription) = ns_runtime::retry::until_ok(&what, shutdown, || {
        broker.consume(consumer.queue, consumer.kind, consumer.prefetch)
    })
    .await
    else {
        return;
    };
    let queue = consumer.queue;
    let timing = broker.settle_timing(queue, consumer.kind);
    let timing = timing.as_ref();
    futures::stream::poll_fn(move |cx| subscription.poll_recv(cx))
        .take_until(shutdown.cancelled())
        .for_each_concurrent(consumer.concurrency.max(1), |delivery| {
            let received = Instant::now();
            let handled = common::messages::decode::<T>(&delivery.payload).map(&handle);
            async move {
                let outcome = match handled {
                    Ok(handling) => handling.await,
                    Err(error) => {
                        tracing::error!(%error, queue, "malformed message dropped");
                        Handled::Done
                    }
                };
                let settling = Instant::now();
                if let Some(t) = timing {
                    t.handling.observe(settling - received);
                }
                match outcome {
                    Handled::Done => {
                        if let Err(error) = delivery.ack().await {
                            tracing::warn!(%error, queue, "ack failed; the message will be handled again");
                        }
                        if let Some(t) = timing {
                            t.ack.since(settling);
                        }
                    }
                    Handled::Retry => {
                        tokio::time::sleep(RETRY_DELAY).await;
                        let nacking = Instant::now();
                        if let Err(error) = delivery.nack().await {
                            tracing::warn!(%error, queue, "nack failed; the broker redelivers the message when its channel closes");
                        }
                        if let Some(t) = timing {
                            t.nack.since(nacking);
                        }
                    }
                }
            }
        })
        .await;
    if !shutdown.is_cancelled() {
        tracing::warn!(queue, "the subscription ended");
    }
}
