//! What the purge removes, so that storage stays bounded: every store removes exactly the
//! records these functions condemn, each in its own way.

use serde::{Deserialize, Serialize};

use crate::delivery::{DeliveryRecord, DeliveryStatus};
use crate::model::EpochSecs;
use crate::notification::{NotificationHead, NotificationState};

/// How long what is done with stays visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Seconds an acked delivery stays in the status report after its ack.
    pub acked_secs: i64,
}

impl Retention {
    /// Deliveries acked before this time are past their retention.
    pub fn acked_cutoff(&self, now: EpochSecs) -> EpochSecs {
        now.plus(-self.acked_secs)
    }

    /// A delivery goes once it was acked longer ago than the retention.
    pub fn delivery_is_spent(&self, d: &DeliveryRecord, now: EpochSecs) -> bool {
        d.status == DeliveryStatus::Acked && d.at < self.acked_cutoff(now)
    }
}

/// A notification goes, with whatever deliveries it still has, once it expired, or once it
/// was routed and none of its deliveries is left: nobody is owed it and there is nothing to
/// report on it.
pub fn notification_is_spent(
    n: &NotificationHead,
    state: NotificationState,
    deliveries_left: usize,
    now: EpochSecs,
) -> bool {
    n.is_expired(now) || (state.routed && deliveries_left == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_deliveries_go_after_the_retention_only() {
        let retention = Retention { acked_secs: 60 };
        let acked = |at| DeliveryRecord {
            status: DeliveryStatus::Acked,
            at: EpochSecs(at),
        };
        assert!(retention.delivery_is_spent(&acked(39), EpochSecs(100)));
        assert!(!retention.delivery_is_spent(&acked(40), EpochSecs(100)));
        let sent = DeliveryRecord {
            status: DeliveryStatus::Sent,
            at: EpochSecs(0),
        };
        assert!(!retention.delivery_is_spent(&sent, EpochSecs(1_000)));
    }

    #[test]
    fn notifications_go_when_expired_or_routed_with_nothing_left() {
        let n = crate::test_support::notification(10, 4).head();
        let routed = NotificationState {
            routed: true,
            replaced: false,
        };
        let unrouted = NotificationState::default();
        assert!(notification_is_spent(&n, unrouted, 3, EpochSecs(10)));
        assert!(notification_is_spent(&n, routed, 0, EpochSecs(1)));
        assert!(!notification_is_spent(&n, routed, 1, EpochSecs(1)));
        assert!(
            !notification_is_spent(&n, unrouted, 0, EpochSecs(1)),
            "an unrouted one is still on its way"
        );
    }
}
