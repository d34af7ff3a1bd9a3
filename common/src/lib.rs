//! The pure core of the push server: the model with its typed ids and times, the domain
//! rules (delivery-state transitions, supersession, status reports, the purge policy, the
//! routing plan), validation and protocol codes, crypto, and the messages the services
//! exchange over the broker.
//!
//! No I/O, no async runtime, no clock, no HTTP: callers pass the time in, and each HTTP edge
//! maps protocol codes to statuses. A rule lives here once; each store only translates it
//! into its storage.

pub mod crypto;
pub mod delivery;
pub mod messages;
pub mod model;
pub mod notification;
pub mod purge;
pub mod routing;
pub mod validate;
