//! What every binary and service runs on, whatever its backends: configuration groups and
//! their checks, logging, shutdown on signals, retries with backoff, metrics, the clock, and
//! the listening sockets.

mod alloc;
pub mod clock;
pub mod config;
pub mod listen;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use clock::{Clock, ManualClock};
