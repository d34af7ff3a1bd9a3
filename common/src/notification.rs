//! What a notification is, how notifications with the same AS id supersede one another, and
//! when one is still owed to a UA. Every store keeps these rules by translating them into its
//! own storage; none writes its own version of them.

use serde::{Deserialize, Serialize};

use crate::model::{AppToken, EpochMillis, EpochSecs, MessageId};

/// A notification as accepted by ns-as and kept until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub message_id: MessageId,
    pub app_token: AppToken,
    /// The AS's own id.
    pub id: String,
    pub message: String,
    pub ttl: u32,
    pub timestamp: EpochSecs,
    pub expires_at: EpochSecs,
    pub priority: u8,
    /// When it was accepted; orders notifications oldest first.
    pub created_at: EpochMillis,
}

impl Notification {
    /// `ttl: 0` notifications go to the UAs connected right now and are never stored.
    pub fn is_ephemeral(&self) -> bool {
        self.ttl == 0
    }

    /// Past its TTL: no longer delivered, and removed by the purge. An ephemeral
    /// notification never expires, as it is never kept.
    pub fn is_expired(&self, now: EpochSecs) -> bool {
        !self.is_ephemeral() && self.expires_at <= now
    }

    /// Where it stands among the notifications with the same app and AS id.
    pub fn recency(&self) -> Recency {
        Recency {
            created_at: self.created_at,
            message_id: self.message_id.clone(),
        }
    }

    /// The frame object sent to a UA (§2), with its notify URL.
    pub fn to_frame(&self, notify_base_url: &str) -> NotificationFrame<'_> {
        NotificationFrame {
            message_type: "notification",
            message_id: self.message_id.as_str(),
            id: &self.id,
            url: notify_url(notify_base_url, &self.app_token),
            message: &self.message,
            ttl: self.ttl,
            timestamp: self.timestamp.as_i64(),
            priority: self.priority,
        }
    }
}

/// What a store knows of a notification beyond the notification itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationState {
    /// A newer notification with the same app and AS id exists.
    pub replaced: bool,
    /// Its pending deliveries have been created (it reached the monitor).
    pub routed: bool,
}

impl NotificationState {
    /// Stored but not yet routed, and still worth routing: a replaced notification never is.
    pub fn needs_routing(self) -> bool {
        !self.routed && !self.replaced
    }

    /// May be sent to the UAs it is pending for: not replaced and not expired.
    pub fn is_deliverable(self, n: &Notification, now: EpochSecs) -> bool {
        !self.replaced && !n.is_expired(now)
    }
}

/// The order of notifications with the same app and AS id: the newest wins. Ties on the
/// creation time are broken by the message id, a UUIDv7 that sorts by time, so that every
/// store and every process picks the same winner whatever order it saw them in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recency {
    pub created_at: EpochMillis,
    pub message_id: MessageId,
}

/// Of notifications sharing one app and AS id, every one but the newest: those are replaced.
/// `items` carry each notification's recency and whatever the caller needs back.
pub fn superseded<T>(items: impl IntoIterator<Item = (Recency, T)>) -> Vec<T> {
    let mut items: Vec<(Recency, T)> = items.into_iter().collect();
    let Some(newest) = items
        .iter()
        .enumerate()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0))
        .map(|(i, _)| i)
    else {
        return Vec::new();
    };
    items.swap_remove(newest);
    items.into_iter().map(|(_, item)| item).collect()
}

/// `{base}/notify/{appToken}`, the URL `register/wa` returns.
pub fn notify_url(base: &str, app_token: &AppToken) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recency(at: i64, id: &str) -> Recency {
        Recency {
            created_at: EpochMillis(at),
            message_id: MessageId::new(id),
        }
    }

    #[test]
    fn the_newest_wins_and_ties_go_to_the_larger_message_id() {
        let items = vec![
            (recency(5, "b"), "b5"),
            (recency(7, "a"), "a7"),
            (recency(7, "c"), "c7"),
            (recency(1, "z"), "z1"),
        ];
        let mut old = superseded(items);
        old.sort();
        assert_eq!(old, vec!["a7", "b5", "z1"]);
        assert!(superseded(Vec::<(Recency, ())>::new()).is_empty());
        assert!(superseded(vec![(recency(1, "a"), ())]).is_empty());
    }

    fn notification(ttl: u32, expires_at: i64) -> Notification {
        Notification {
            expires_at: EpochSecs(expires_at),
            ..crate::test_support::notification(ttl, 4)
        }
    }

    #[test]
    fn expiry_and_deliverability() {
        let n = notification(10, 100);
        assert!(!n.is_expired(EpochSecs(99)));
        assert!(n.is_expired(EpochSecs(100)));
        assert!(!notification(0, 0).is_expired(EpochSecs(1_000)));

        let live = NotificationState::default();
        assert!(live.is_deliverable(&n, EpochSecs(99)));
        assert!(!live.is_deliverable(&n, EpochSecs(100)));
        let replaced = NotificationState {
            replaced: true,
            routed: true,
        };
        assert!(!replaced.is_deliverable(&n, EpochSecs(0)));
        assert!(live.needs_routing());
        assert!(!replaced.needs_routing());
    }

    #[test]
    fn frames_carry_the_notify_url() {
        let n = notification(10, 100);
        let frame = serde_json::to_value(n.to_frame("http://h:1/")).unwrap();
        assert_eq!(frame["url"], "http://h:1/notify/t");
        assert_eq!(frame["messageType"], "notification");
        assert_eq!(frame["messageId"], "m");
    }
}
