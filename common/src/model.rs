//! The identities and times of the protocol, and the records that say where a UA is and
//! which apps exist. Pure types with serde, no I/O.
//!
//! Every id is its own type so that a message id can't be passed where an appToken is
//! wanted; each serializes as the bare string, so stored records and broker messages keep
//! the shape they would have with plain strings.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Declares a string id type: transparent in serde, shown as the bare string, borrowable as
/// `str` so maps keyed by it can be searched with a `&str`. The string is shared: a clone
/// (every index that holds an id holds a clone) costs a reference count, not a copy.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                $name(Arc::from(id.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(Arc::from(id))
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(Arc::from(id))
            }
        }
    };
}

string_id!(
    /// Internal identity of a UA: the hex of the first 16 bytes of SHA-256(uatoken).
    ///
    /// It is what the stores keep and what the status endpoint shows as `device`, so the
    /// uatoken itself (a bearer credential) is never stored nor shown.
    UaId
);

string_id!(
    /// The server's id of one notification: a UUIDv7 in simple form, so it sorts by
    /// creation time.
    MessageId
);

string_id!(
    /// The last segment of a notify URL: names an app (a watoken, and the WA's key if it
    /// registered one) without revealing it.
    AppToken
);

string_id!(
    /// The id of one ns-ua-ws instance in the cluster; names its broker queue.
    NodeId
);

string_id!(
    /// The id of one WebSocket connection, so that the close of an older connection can't
    /// clear the route of a newer one.
    ConnId
);

/// A time in whole seconds since the Unix epoch, the time unit of the protocol.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EpochSecs(pub i64);

impl EpochSecs {
    /// `secs` later (earlier when negative), saturating instead of overflowing.
    pub fn plus(self, secs: i64) -> EpochSecs {
        EpochSecs(self.0.saturating_add(secs))
    }

    pub fn as_i64(self) -> i64 {
        self.0
    }
}

impl fmt::Display for EpochSecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A time in milliseconds since the Unix epoch: orders notifications by acceptance.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EpochMillis(pub i64);

impl EpochMillis {
    pub fn as_i64(self) -> i64 {
        self.0
    }

    /// The whole second this instant falls in.
    pub fn secs(self) -> EpochSecs {
        EpochSecs(self.0.div_euclid(1000))
    }
}

/// Where a UA can be woken by UDP while it has no live WebSocket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub ip: IpAddr,
    pub port: u16,
}

/// A registered web application: what ns-as needs to accept a notification for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub app_token: AppToken,
    /// PEM of the WA's RSA public key, when it registered one.
    pub pbk: Option<String>,
}

/// Where a UA is, as far as routing is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UaRoute {
    pub ua: UaId,
    /// The front-end holding the UA's live connection, with that connection's id.
    pub live: Option<Live>,
    pub interface: Option<Interface>,
}

/// A UA's live connection: which front-end holds it, and which connection it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub node: NodeId,
    pub conn: ConnId,
}

impl UaRoute {
    /// A UA connected right now on `node`, as `conn`.
    pub fn connected(ua: UaId, node: NodeId, conn: ConnId, interface: Option<Interface>) -> Self {
        UaRoute {
            ua,
            live: Some(Live { node, conn }),
            interface,
        }
    }

    /// A UA with no live connection, wakeable at `interface` if it has one.
    pub fn offline(ua: UaId, interface: Option<Interface>) -> Self {
        UaRoute {
            ua,
            live: None,
            interface,
        }
    }

    /// The front-end holding the UA, if it is connected.
    pub fn node(&self) -> Option<&NodeId> {
        self.live.as_ref().map(|l| &l.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_bare_strings() {
        let id = MessageId::new("abc");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"abc\"");
        assert_eq!(serde_json::from_str::<MessageId>("\"abc\"").unwrap(), id);
        assert_eq!(id.to_string(), "abc");
    }

    #[test]
    fn times_saturate_and_convert() {
        assert_eq!(EpochSecs(i64::MAX).plus(1), EpochSecs(i64::MAX));
        assert_eq!(EpochSecs(10).plus(-3), EpochSecs(7));
        assert_eq!(EpochMillis(1_999).secs(), EpochSecs(1));
        assert_eq!(EpochMillis(-1).secs(), EpochSecs(-1));
    }
}
