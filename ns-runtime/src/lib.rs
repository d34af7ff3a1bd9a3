//! What every binary and service runs on, whatever its backends: configuration groups and
//! their checks, logging, shutdown on signals, retries with backoff, metrics, the clock, the
//! listening sockets and their TLS.

mod alloc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod listen;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use clock::{Clock, ManualClock};
