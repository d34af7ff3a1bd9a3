//! The consumer of this instance's broker queue: delivers routed notifications to the live
//! connections here, records them as sent, and only then acks the broker. UAs that are not
//! here any more are treated as offline (woken by UDP if they can be, else left pending).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::broker::{front_end_queue, BrokerError, QueueKind, UDP_WAKEUPS};
use common::messages::{decode, encode, FrontEndMessage, WakeUp};
use common::model::{DeliveryStatus, Notification, UaId};
use common::routing::{decide, Target};
use common::store::DeliveryUpdate;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Outbound, Queued, Shared};

/// Consumes the instance's queue until `shutdown`.
pub(crate) async fn consume(shared: Arc<Shared>, shutdown: CancellationToken) {
    let queue = front_end_queue(&shared.server_id);
    let Some(mut subscription) =
        common::retry::until_ok("consuming the front-end queue", &shutdown, || {
            shared
                .deps
                .broker
                .consume(&queue, QueueKind::Private, shared.settings.prefetch)
        })
        .await
    else {
        return;
    };
    futures::stream::poll_fn(move |cx| subscription.poll_recv(cx))
        .take_until(shutdown.cancelled())
        .for_each_concurrent(256, |delivery| {
            let shared = shared.clone();
            async move {
                let handled = match decode::<FrontEndMessage>(&delivery.payload) {
                    Ok(FrontEndMessage::Deliver {
                        notification,
                        targets,
                    }) => deliver(&shared, &notification, &targets).await,
                    Ok(FrontEndMessage::Takeover { ua, conn }) => {
                        shared.take_over(&ua, &conn);
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "malformed front-end message dropped");
                        true
                    }
                };
                if handled {
                    let _ = delivery.ack().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = delivery.nack().await;
                }
            }
        })
        .await;
}

/// Delivers to the targets connected here; false if the result could not be stored (the
/// broker message is then retried).
async fn deliver(shared: &Shared, n: &Notification, targets: &[UaId]) -> bool {
    // One serialization for every target.
    let frame =
        serde_json::to_string(&[n.to_frame(&shared.deps.notify_base_url)]).unwrap_or_default();
    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(frame);
    // One slow connection must not hold up the others of a fan-out.
    let attempts = targets.iter().map(|ua| {
        let outbound = Outbound::Notify(Box::new(Queued {
            message_id: n.message_id.clone(),
            frame: frame.clone(),
        }));
        async move { (ua, shared.send_to(ua, outbound).await) }
    });
    let mut sent = Vec::with_capacity(targets.len());
    let mut away = Vec::new();
    for (ua, delivered) in futures::future::join_all(attempts).await {
        if delivered {
            sent.push(DeliveryUpdate {
                message_id: n.message_id.clone(),
                ua: ua.clone(),
                status: DeliveryStatus::Sent,
            });
        } else {
            away.push(ua.clone());
        }
    }
    if !n.is_ephemeral() && shared.writer.write(sent).await.is_err() {
        return false;
    }
    if away.is_empty() || n.is_ephemeral() {
        return true;
    }
    // Routed here but not here: the UA moved to another instance (forward it there), or it
    // disconnected or is too slow (offline handling).
    let routes = match shared.deps.store.ua_routes(&away).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reading routes of departed UAs failed");
            return false;
        }
    };
    let mut elsewhere: HashMap<&str, Vec<UaId>> = HashMap::new();
    let mut offline = Vec::new();
    for route in &routes {
        match route.node.as_deref() {
            Some(node) if node != shared.server_id => {
                elsewhere.entry(node).or_default().push(route.ua.clone())
            }
            _ => offline.push(route),
        }
    }
    for (node, targets) in elsewhere {
        let message = FrontEndMessage::Deliver {
            notification: n.clone(),
            targets: targets.clone(),
        };
        match shared
            .deps
            .broker
            .publish(&front_end_queue(node), encode(&message))
            .await
        {
            Ok(()) => {}
            Err(BrokerError::Unroutable(_)) => {
                offline.extend(routes.iter().filter(|r| targets.contains(&r.ua)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "forwarding to another front-end failed");
                return false;
            }
        }
    }
    for route in offline {
        if let Target::Wake(interface) = decide(route, n.priority, false, false) {
            let wake = WakeUp {
                ua: route.ua.clone(),
                interface,
                priority: n.priority,
            };
            if let Err(e) = shared.deps.broker.publish(UDP_WAKEUPS, encode(&wake)).await {
                tracing::warn!(error = %e, "publishing a wake-up failed");
                return false;
            }
        }
    }
    true
}
