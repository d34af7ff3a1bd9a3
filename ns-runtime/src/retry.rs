//! Retrying start-up connections with backoff, so a service can start before its
//! dependencies and wait for them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `attempt` until it succeeds, waiting 100 ms doubling to 5 s between failures.
/// Returns `None` if `shutdown` is cancelled first.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
