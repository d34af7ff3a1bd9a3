//! The writer tasks: each takes the writes its callers hand it a batch at a time, so that
//! the database pays its per-command cost once per batch rather than once per write.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use ns_store::{StoreError, StoreResult};
use tokio::sync::{mpsc, oneshot};

use crate::collections::db_err;

/// How long a writer waits for more writes when it has fewer than a full batch. The database
/// spends far more on each command than on each document in it, so at a moderate rate a
/// few milliseconds of gathering cut its work several times over; under load batches fill
/// at once and nothing waits.
pub(crate) const WRITE_LINGER: Duration = Duration::from_millis(4);

/// How many writes may wait for a writer before callers are held back.
pub(crate) const WRITE_QUEUE: usize = 4096;

/// One caller's write waiting for its batch.
pub(crate) struct Request<T, R> {
    write: T,
    done: oneshot::Sender<mongodb::error::Result<R>>,
}

/// A handle to a writer task, which takes the writes handed to it a batch at a time and writes
/// each batch with a few commands. Clones share the task, which ends when the last clone is
/// dropped.
pub(crate) struct Writer<T, R> {
    requests: mpsc::Sender<Request<T, R>>,
}

impl<T, R> Clone for Writer<T, R> {
    fn clone(&self) -> Self {
        Writer {
            requests: self.requests.clone(),
        }
    }
}

impl<T, R> fmt::Debug for Writer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field(
                "waiting",
                &(self.requests.max_capacity() - self.requests.capacity()),
            )
            .finish()
    }
}

/// The writer task is gone, which only happens while the runtime shuts down.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer task has stopped")]
pub(crate) struct WriterStopped;

impl<T: Send + 'static, R: Send + 'static> Writer<T, R> {
    /// Starts a writer task that hands batches of at most `max` writes to `apply`, which
    /// returns one result per write, in order.
    pub(crate) fn spawn<F, Fut>(what: &'static str, max: usize, apply: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<mongodb::error::Result<R>>> + Send + 'static,
    {
        let (requests, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(what, rx, max, apply));
        Writer { requests }
    }

    /// Hands a write to the task and waits for its batch to be written.
    pub(crate) async fn write(&self, write: T) -> StoreResult<R> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(Request { write, done })
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?;
        result
            .await
            .map_err(|_| StoreError::unavailable(WriterStopped))?
            .map_err(db_err)
    }
}

/// Takes the waiting writes a batch at a time, lingering up to [`WRITE_LINGER`] for a fuller
/// one. While a batch is being written the next one gathers, so batches grow with the load.
/// One batch at a time: several at once would each be smaller, and small batches cost the
/// database more per write.
pub(crate) async fn write_loop<T, R, F, Fut>(
    what: &'static str,
    mut rx: mpsc::Receiver<Request<T, R>>,
    max: usize,
    mut apply: F,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<mongodb::error::Result<R>>>,
{
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        linger(&mut rx, &mut batch, max, WRITE_LINGER).await;
        let (writes, waiters): (Vec<T>, Vec<_>) =
            batch.drain(..).map(|r| (r.write, r.done)).unzip();
        let count = writes.len();
        let results = apply(writes).await;
        let failures = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(error = %e, failures, writes = count, "{what} failed");
        }
        for (waiter, result) in waiters.into_iter().zip(results) {
            // A caller that stopped waiting doesn't need the answer: its write is done or
            // failed either way.
            let _ = waiter.send(result);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn linger_waits_for_more_until_the_deadline_or_a_full_batch() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.expect("send");
        let mut batch = Vec::new();
        rx.recv_many(&mut batch, 8).await;
        let early = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            early.send(2).await.expect("send");
            tokio::time::sleep(Duration::from_millis(10)).await;
            early.send(3).await.expect("send");
        });
        linger(&mut rx, &mut batch, 8, Duration::from_millis(4)).await;
        assert_eq!(
            batch,
            vec![1, 2],
            "what comes within the linger joins the batch"
        );

        let mut full = vec![0; 8];
        let started = tokio::time::Instant::now();
        linger(&mut rx, &mut full, 8, Duration::from_secs(60)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch goes at once"
        );

        let mut none = Vec::new();
        linger(&mut rx, &mut none, 8, Duration::ZERO).await;
        assert!(none.is_empty(), "no linger takes nothing more");

        drop(tx);
        let mut rest = Vec::new();
        linger(&mut rx, &mut rest, 8, Duration::from_secs(60)).await;
        assert_eq!(rest, vec![3], "a closed channel ends the linger");
    }
}
