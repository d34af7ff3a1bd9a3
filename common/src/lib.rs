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
pub mod network;
pub mod notification;
pub mod purge;
pub mod routing;
pub mod validate;
pub mod vapid;
pub mod webpush;

#[cfg(test)]
mod test_support {
    use crate::model::{AppToken, EpochMillis, EpochSecs, MessageId};
    use crate::notification::Notification;

    /// Notification `m` of app `t` with AS id `a`, made at time zero, expiring at
    /// `ttl` seconds.
    pub(crate) fn notification(ttl: u32, priority: u8) -> Notification {
        Notification {
            message_id: MessageId::new("m"),
            app_token: AppToken::new("t"),
            id: "a".into(),
            payload: crate::notification::Payload::Text("x".into()),
            ttl,
            timestamp: EpochSecs(0),
            expires_at: EpochSecs(i64::from(ttl)),
            priority,
            created_at: EpochMillis(0),
        }
    }
}
