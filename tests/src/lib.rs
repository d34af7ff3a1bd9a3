//! Test harness: the server of a test started in this process with each service's
//! `run(...)` on port-0 listeners, or with some of its parts as real processes of their
//! binaries, against the real RabbitMQ and MongoDB-wire servers (or the one-process mode on
//! a data directory); and a client of the protocol: HTTP, WebSocket and UDP.

#![allow(unreachable_pub)]

pub mod cli;
pub mod client;
pub mod cluster;
pub mod faults;
pub mod process;
pub mod raw;
pub mod tls;
pub mod webpush;

pub use client::{Ua, UaEvent};
pub use cluster::{Backend, Cluster, Options, Role};
/// Web Push payload encryption: one implementation, `ns`'s.
pub use ns_cli::ece;

use std::future::Future;
use std::time::Duration;

/// Makes each named test body, an `async fn(Backend)` of the calling file, two tests: one
/// against the distributed mode and one against the one-process mode.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() {
                super::$name($crate::Backend::Distributed).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::Backend::Embedded).await
            }
        }
    )*};
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
