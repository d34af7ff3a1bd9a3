//! What travels on the broker between the services, serialized as JSON.
//!
//! The notification itself rides along with its id so no hop has to read it back from the
//! store: the id is still the key of every stored state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{Interface, Notification, UaId};

/// On `newMessages`: a notification accepted by ns-as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub notification: Notification,
}

/// On a front-end's own queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FrontEndMessage {
    /// Deliver `notification` to these UAs if they are connected here.
    Deliver {
        notification: Notification,
        targets: Vec<UaId>,
    },
    /// The UA registered on another connection: close `conn` if it is still here.
    Takeover { ua: UaId, conn: String },
}

/// On `udpWakeups`: wake this UA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeUp {
    pub ua: UaId,
    pub interface: Interface,
    pub priority: u8,
}

/// Fan-out events that invalidate the monitors' route caches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteEvent {
    /// The set of UAs registered for this app changed.
    App { app_token: String },
    /// This UA connected, disconnected or changed its interface.
    Ua { ua: UaId },
}

/// Serializes a broker message. The types above always serialize.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

/// Reads a broker message; a malformed one is reported and dropped by the caller.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}
