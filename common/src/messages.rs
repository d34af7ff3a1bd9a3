//! What travels on the broker between the services, serialized as JSON.
//!
//! The notification itself rides along with its id so no hop has to read it back from the
//! store: the id is still the key of every stored state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{AppToken, ConnId, Interface, NodeId, UaId};
use crate::notification::Notification;

/// The durable queue ns-as publishes new notifications on, and front-ends hand back the ones
/// whose UA has left them.
pub const NEW_MESSAGES: &str = "newMessages";
/// The durable queue shared by the ns-ua-udp instances.
pub const UDP_WAKEUPS: &str = "udpWakeups";

/// The queue of one ns-ua-ws instance.
pub fn front_end_queue(node: &NodeId) -> String {
    format!("ws.{node}")
}

/// On `newMessages`: a notification to route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub notification: Notification,
    /// Set when a front-end hands the notification back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reroute: Option<Reroute>,
}

/// A notification a front-end could not deliver because these UAs are no longer connected
/// to it: route it again to them alone (their deliveries exist already), from fresh routes,
/// with `away_from` known not to hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reroute {
    pub uas: Vec<UaId>,
    pub away_from: NodeId,
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
    Takeover { ua: UaId, conn: ConnId },
    /// Sent by a front-end to its own queue after a broker outage: once one is taken, the
    /// queue exists again, so nothing routed from then on is unroutable. Nothing to do.
    Probe,
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
    App { app_token: AppToken },
    /// This UA connected, disconnected or changed its interface.
    Ua { ua: UaId },
}

/// Serializes a broker message.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(message).map(Bytes::from)
}

/// Reads a broker message; a malformed one is reported and dropped by the caller.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_message_reads_back_with_and_without_a_reroute() {
        let notification = crate::test_support::notification(10, 4);
        let plain = NewMessage {
            notification: notification.clone(),
            reroute: None,
        };
        let bytes = encode(&plain).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("reroute"));
        assert_eq!(decode::<NewMessage>(&bytes).unwrap(), plain);
        let back = NewMessage {
            notification,
            reroute: Some(Reroute {
                uas: vec![UaId::new("u")],
                away_from: NodeId::new("n"),
            }),
        };
        assert_eq!(decode::<NewMessage>(&encode(&back).unwrap()).unwrap(), back);
        assert_eq!(front_end_queue(&NodeId::new("n")), "ws.n");
    }
}
