//! The protocol's data model: pure types with serde, no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Internal identity of a UA: the hex of the first 16 bytes of SHA-256(uatoken).
///
/// It is what the stores keep and what the status endpoint shows as `device`, so the
/// uatoken itself (a bearer credential) is never stored nor shown.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UaId(pub String);

impl fmt::Display for UaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    pub app_token: String,
    /// PEM of the WA's RSA public key, when it registered one.
    pub pbk: Option<String>,
}

/// Where a UA is, as far as routing is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UaRoute {
    pub ua: UaId,
    /// Server id of the ns-ua-ws instance holding the UA's live connection, if any.
    pub node: Option<String>,
    /// Id of that connection, so a stale disconnect can't clear a newer one.
    pub conn: Option<String>,
    pub interface: Option<Interface>,
}

/// A notification as accepted by ns-as and kept until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Server id (a UUIDv7, so it sorts by creation time).
    pub message_id: String,
    pub app_token: String,
    /// The AS's own id.
    pub id: String,
    pub message: String,
    pub ttl: u32,
    pub timestamp: i64,
    pub expires_at: i64,
    pub priority: u8,
    /// Milliseconds since the epoch at acceptance; orders notifications oldest first.
    pub created_at: i64,
}

impl Notification {
    /// `ttl: 0` notifications go to the UAs connected right now and are never stored.
    pub fn is_ephemeral(&self) -> bool {
        self.ttl == 0
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.ttl != 0 && self.expires_at <= now
    }

    /// The frame object sent to a UA (§2), with its notify URL.
    pub fn to_frame(&self, notify_base_url: &str) -> NotificationFrame<'_> {
        NotificationFrame {
            message_type: "notification",
            message_id: &self.message_id,
            id: &self.id,
            url: notify_url(notify_base_url, &self.app_token),
            message: &self.message,
            ttl: self.ttl,
            timestamp: self.timestamp,
            priority: self.priority,
        }
    }
}

/// `{base}/notify/{appToken}`, the URL `register/wa` returns.
pub fn notify_url(base: &str, app_token: &str) -> String {
    format!("{}/notify/{}", base.trim_end_matches('/'), app_token)
}

/// One notification object as UAs receive it (§2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFrame<'a> {
    pub message_type: &'static str,
    pub message_id: &'a str,
    pub id: &'a str,
    pub url: String,
    pub message: &'a str,
    pub ttl: u32,
    pub timestamp: i64,
    pub priority: u8,
}

/// The delivery state of one notification for one UA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Acked,
    Expired,
    Replaced,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Acked => "acked",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Replaced => "replaced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "sent" => DeliveryStatus::Sent,
            "acked" => DeliveryStatus::Acked,
            "expired" => DeliveryStatus::Expired,
            "replaced" => DeliveryStatus::Replaced,
            _ => return None,
        })
    }

    /// Still owed to the UA: sent again on the next `register/ua` or pull.
    pub fn is_outstanding(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Sent)
    }
}

/// One row of the status endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub device: UaId,
    pub status: DeliveryStatus,
    pub at: i64,
}

/// The answer of `GET /notify/{appToken}/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub id: String,
    pub message_id: String,
    pub deliveries: Vec<Delivery>,
}
