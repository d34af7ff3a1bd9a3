//! Groups delivery-state writes from many concurrent callers into one store call, so a
//! front-end pays one database round trip per batch rather than per notification.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{DeliveryUpdate, Store};

/// Most updates written in one store call.
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
        tokio::spawn(write_loop(store, rx));
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

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut updates = first.0;
        let mut waiters = vec![first.1];
        // Take whatever else is already waiting: the batch grows with the load.
        while updates.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((more, done)) => {
                    updates.extend(more);
                    waiters.push(done);
                }
                Err(_) => break,
            }
        }
        let result = store.update_deliveries(&updates, crate::now_secs()).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, count = updates.len(), "writing delivery states failed");
        }
        for done in waiters {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|_| BatchError));
        }
    }
}
