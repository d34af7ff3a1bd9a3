//! The consumer of this instance's broker queue: delivers routed notifications to the live
//! connections here, records them as sent (a failure leaves them pending, still owed), and
//! only then acks the broker. A UA that is not here any more is handed back to the monitor,
//! which routes it again from fresh routes.

use std::sync::Arc;
use std::time::Duration;

use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::messages::{front_end_queue, FrontEndMessage, NewMessage, Reroute, NEW_MESSAGES};
use common::model::UaId;
use common::notification::Notification;
use ns_broker::{Consumer, Handled, QueueKind};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::registry::{Outbound, Queued};
use crate::{Shared, SLOW_UA_TIMEOUT};

/// Deliveries of the queue handled at the same time.
const CONCURRENCY: usize = 256;

/// Consumes the instance's queue until `shutdown`.
pub(crate) async fn consume(shared: Arc<Shared>, shutdown: CancellationToken) {
    let queue = front_end_queue(&shared.node);
    let consumer = Consumer {
        queue: &queue,
        kind: QueueKind::Private,
        prefetch: shared.settings.ws_prefetch,
        concurrency: CONCURRENCY,
    };
    ns_broker::consume(
        &*shared.deps.broker,
        consumer,
        &shutdown,
        |message: FrontEndMessage| {
            let shared = shared.clone();
            async move {
                match message {
                    FrontEndMessage::Deliver {
                        notification,
                        targets,
                    } => deliver(&shared, notification, targets).await,
                    FrontEndMessage::Takeover { ua, conn } => {
                        shared.connections.take_over(&ua, &conn);
                        Handled::Done
                    }
                    FrontEndMessage::Probe => Handled::Done,
                }
            }
        },
    )
    .await;
}

/// How often the broker's health is looked at, and a probe sent again.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Watches the broker until `shutdown`. While it is down, and until this instance's queue
/// exists again, the monitor finds the queue gone (unroutable) and keeps what it routes here
/// pending in the store only, as for a dead front-end; so once a probe to the queue is taken
/// again, every connection here is told to send what its UA is owed.
pub(crate) async fn resync_after_outages(shared: Arc<Shared>, shutdown: CancellationToken) {
    let queue = front_end_queue(&shared.node);
    let broker = &*shared.deps.broker;
    let mut was_down = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        if !broker.is_healthy() {
            was_down = true;
            continue;
        }
        if !was_down {
            continue;
        }
        match ns_broker::publish(broker, &queue, &FrontEndMessage::Probe).await {
            Ok(()) => {
                was_down = false;
                let connections = shared.connections.resync_all();
                tracing::info!(connections, "queue back after a broker outage: resyncing");
            }
            // Not declared again yet (unroutable), or the broker went again: later.
            Err(e) => tracing::debug!(error = %e, "probing the queue"),
        }
    }
}

/// Delivers to the targets connected here and hands the others back to the monitor. Asks
/// for a retry only when the hand-back failed; a connection drops the copy it then gets of
/// what it was sent already.
async fn deliver(shared: &Shared, n: Notification, targets: Vec<UaId>) -> Handled {
    if n.is_expired(shared.deps.clock.now()) {
        // Queued past its TTL (a broker outage, a backlog): no longer to be delivered.
        shared.metrics.expired.inc();
        return Handled::Done;
    }
    let frame = match n.to_frame(&shared.deps.notify_base_url).to_text() {
        Ok(frame) => Utf8Bytes::from(frame),
        Err(e) => {
            tracing::error!(error = %e, message_id = %n.message_id, "encoding a notification failed");
            return Handled::Done;
        }
    };
    // One slow connection must not hold up the others of a fan-out.
    let attempts = targets.into_iter().map(|ua| {
        let outbound = Outbound::Notify(Box::new(Queued::new(&n, frame.clone())));
        async move {
            let here = shared
                .connections
                .send_to(&ua, outbound, SLOW_UA_TIMEOUT)
                .await;
            (ua, here)
        }
    });
    let (here, away): (Vec<_>, Vec<_>) = futures::future::join_all(attempts)
        .await
        .into_iter()
        .partition(|(_, here)| *here);
    if !n.is_ephemeral() && !here.is_empty() {
        let updates = DeliveryUpdate::for_uas(
            here.into_iter().map(|(ua, _)| ua),
            &n.message_id,
            DeliveryStatus::Sent,
        );
        let now = shared.deps.clock.now();
        if let Err(e) = shared.deps.store.record_deliveries(updates, now).await {
            // They were sent: not again. Still `pending` in the store, they are owed until
            // acked, which is all `sent` would have said beside.
            tracing::warn!(error = %e, "recording notifications as sent failed");
        }
    }
    if away.is_empty() {
        return Handled::Done;
    }
    // Routed here but not here: the UA moved to another front-end, disconnected, or is too
    // slow. Where it is now is the monitor's decision.
    let uas: Vec<UaId> = away.into_iter().map(|(ua, _)| ua).collect();
    let count = uas.len();
    let message = NewMessage {
        notification: n,
        reroute: Some(Reroute {
            uas,
            away_from: shared.node.clone(),
        }),
    };
    match ns_broker::publish(&*shared.deps.broker, NEW_MESSAGES, &message).await {
        Ok(()) => {
            shared.metrics.handed_back.add(count as i64);
            Handled::Done
        }
        Err(e) => {
            tracing::warn!(error = %e, "handing a notification back to the monitor failed");
            Handled::Retry
        }
    }
}
