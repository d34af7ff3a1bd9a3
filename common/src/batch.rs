//! Groups delivery-state writes from many concurrent callers into one store call, so a
//! front-end pays one database round trip per batch rather than per notification.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::model::{DeliveryStatus, UaId};
use crate::store::{DeliveryUpdate, Store};

/// Most callers' writes grouped into one store call.
const MAX_BATCH: usize = 2048;

/// The write failed; the caller retries later (its broker message is not acked).
#[derive(Debug, thiserror::Error)]
#[error("the delivery states could not be stored")]
pub struct BatchError;

type Request = (Vec<DeliveryUpdate>, oneshot::Sender<Result<(), BatchError>>);

/// A handle to the writer task. Cloning shares the task.
#[derive(Clone)]
pub struct DeliveryWriter {
    tx: mpsc::Sender<Request>,
}

impl DeliveryWriter {
    /// Starts the writer task; it ends when every handle is dropped.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel::<Request>(4096);
        let linger = store.batch_linger();
        tokio::spawn(write_loop(store, rx, linger));
        DeliveryWriter { tx }
    }

    /// Stores `updates`; returns once they are written.
    pub async fn write(&self, updates: Vec<DeliveryUpdate>) -> Result<(), BatchError> {
        if updates.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send((updates, done))
            .await
            .map_err(|_| BatchError)?;
        wait.await.map_err(|_| BatchError)?
    }
}

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>, linger: Duration) {
    let mut requests = Vec::new();
    while rx.recv_many(&mut requests, MAX_BATCH).await > 0 {
        // Take whatever else is already waiting, or arrives within `linger`: the batch grows
        // with the load.
        self::linger(&mut rx, &mut requests, MAX_BATCH, linger).await;
        let mut updates = Vec::new();
        let mut waiters = Vec::with_capacity(requests.len());
        for (more, done) in requests.drain(..) {
            updates.extend(more);
            waiters.push(done);
        }
        drop_superseded(&mut updates);
        let result = store.update_deliveries(&updates, crate::now_secs()).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, count = updates.len(), "writing delivery states failed");
        }
        for done in waiters {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|_| BatchError));
        }
    }
}

/// Adds to `batch` what arrives on `rx` within `linger`, until it holds `max` items.
pub(crate) async fn linger<T>(
    rx: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    linger: Duration,
) {
    if linger.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, max - batch.len())).await {
            Ok(n) if n > 0 => {}
            // Closed, or the time is up.
            _ => return,
        }
    }
}

/// Drops the `Sent` of every delivery that the same batch also acks: acked is final whatever
/// came before it, so the store ends the same and writes each such delivery once. Under load a
/// UA's ack often arrives while its `Sent` is still waiting for the writer.
fn drop_superseded(updates: &mut Vec<DeliveryUpdate>) {
    let acked: HashSet<(String, UaId)> = updates
        .iter()
        .filter(|u| u.status == DeliveryStatus::Acked)
        .map(|u| (u.message_id.clone(), u.ua.clone()))
        .collect();
    if acked.is_empty() {
        return;
    }
    updates.retain(|u| {
        u.status != DeliveryStatus::Sent || !acked.contains(&(u.message_id.clone(), u.ua.clone()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(message_id: &str, ua: &str, status: DeliveryStatus) -> DeliveryUpdate {
        DeliveryUpdate {
            message_id: message_id.to_owned(),
            ua: UaId(ua.to_owned()),
            status,
        }
    }

    #[test]
    fn an_ack_in_the_batch_supersedes_the_sent_of_the_same_delivery_only() {
        let mut updates = vec![
            update("m1", "a", DeliveryStatus::Sent),
            update("m1", "b", DeliveryStatus::Sent),
            update("m2", "a", DeliveryStatus::Sent),
            update("m1", "a", DeliveryStatus::Acked),
            update("m2", "b", DeliveryStatus::Acked),
            update("m3", "a", DeliveryStatus::Replaced),
        ];
        drop_superseded(&mut updates);
        assert_eq!(
            updates,
            vec![
                update("m1", "b", DeliveryStatus::Sent),
                update("m2", "a", DeliveryStatus::Sent),
                update("m1", "a", DeliveryStatus::Acked),
                update("m2", "b", DeliveryStatus::Acked),
                update("m3", "a", DeliveryStatus::Replaced),
            ]
        );
    }

    #[test]
    fn a_batch_without_acks_is_left_alone() {
        let mut updates = vec![
            update("m1", "a", DeliveryStatus::Sent),
            update("m1", "a", DeliveryStatus::Sent),
        ];
        let before = updates.clone();
        drop_superseded(&mut updates);
        assert_eq!(updates, before);
    }
}
