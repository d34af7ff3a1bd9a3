//! Test harness: the server of a test started in this process with each service's
//! `run(...)` on port-0 listeners, or with some of its parts as real processes of their
//! binaries, against the real RabbitMQ and MongoDB-wire servers (or the one-process mode on
//! a data directory); and a client of the protocol: HTTP, WebSocket and UDP.

#![allow(unreachable_pub)]

pub mod client;
pub mod cluster;
pub mod ece;
pub mod process;
pub mod webpush;

pub use client::{Ua, UaEvent};
pub use cluster::{Backend, Cluster, Options, Role};

use std::future::Future;
use std::time::Duration;

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
