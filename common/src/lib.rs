//! The shared core of the push server: the model, the crypto, the pure decisions, the
//! configuration pieces and the two I/O seams ([`store::Store`] and [`broker::Broker`]).
//!
//! Nothing here knows about HTTP or WebSockets: the status mapping of errors lives at each
//! HTTP edge.

pub mod batch;
pub mod bootstrap;
pub mod broker;
pub mod config;
pub mod crypto;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod retry;
pub mod routing;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod validate;

/// Seconds since the Unix epoch, the time unit of the protocol.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, used to order notifications.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
