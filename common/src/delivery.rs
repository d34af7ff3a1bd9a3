//! The delivery state of one notification for one UA: which changes are allowed, how a batch
//! of changes is folded, and the status report built from the states.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::model::{EpochSecs, MessageId, UaId};
use crate::notification::NotificationHead;

/// The delivery state of one notification for one UA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Acked,
    Expired,
    Replaced,
    /// The UA settled it without showing it: a Web Push UA that could not decrypt it, or
    /// whose service worker failed on it.
    Rejected,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Sent,
        DeliveryStatus::Acked,
        DeliveryStatus::Expired,
        DeliveryStatus::Replaced,
        DeliveryStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Acked => "acked",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Replaced => "replaced",
            DeliveryStatus::Rejected => "rejected",
        }
    }

    /// Still owed to the UA: sent again on the next `register/ua` or pull.
    pub fn is_outstanding(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Sent)
    }

    /// Whether a delivery in this state may be changed to `next`. Acked is final; a UA may
    /// ack whatever it was given, even after it was replaced or expired, and may reject it
    /// likewise unless it acked it; every other change applies only to a delivery still
    /// owed, so that `sent` never downgrades `acked` nor revives a replaced or expired
    /// delivery. Sending again re-records `sent` with the new time.
    pub fn can_become(self, next: DeliveryStatus) -> bool {
        match next {
            DeliveryStatus::Acked => self != DeliveryStatus::Acked,
            DeliveryStatus::Rejected => {
                !matches!(self, DeliveryStatus::Acked | DeliveryStatus::Rejected)
            }
            _ => self.is_outstanding(),
        }
    }

    /// The states from which a delivery may become `next`: what a store filters on.
    pub fn sources_of(next: DeliveryStatus) -> Vec<DeliveryStatus> {
        DeliveryStatus::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }
}

/// One delivery as stored: its state and when it got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub status: DeliveryStatus,
    pub at: EpochSecs,
}

impl DeliveryRecord {
    /// The record after `update` at `now`, or `None` when the rule refuses the change.
    pub fn apply(self, next: DeliveryStatus, now: EpochSecs) -> Option<DeliveryRecord> {
        self.status.can_become(next).then_some(DeliveryRecord {
            status: next,
            at: now,
        })
    }
}

/// A change of delivery state for one notification and one UA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub message_id: MessageId,
    pub ua: UaId,
    pub status: DeliveryStatus,
}

impl DeliveryUpdate {
    /// The same change for several notifications of one UA.
    pub fn for_ua(
        ua: &UaId,
        message_ids: impl IntoIterator<Item = MessageId>,
        status: DeliveryStatus,
    ) -> Vec<DeliveryUpdate> {
        message_ids
            .into_iter()
            .map(|message_id| DeliveryUpdate {
                message_id,
                ua: ua.clone(),
                status,
            })
            .collect()
    }

    /// The same change of one notification for several UAs.
    pub fn for_uas(
        uas: impl IntoIterator<Item = UaId>,
        message_id: &MessageId,
        status: DeliveryStatus,
    ) -> Vec<DeliveryUpdate> {
        uas.into_iter()
            .map(|ua| DeliveryUpdate {
                message_id: message_id.clone(),
                ua,
                status,
            })
            .collect()
    }
}

/// Drops the `Sent` of every delivery that the same batch also acks: acked is final whatever
/// came before it, so the outcome is the same and each such delivery is written once. Under
/// load a UA's ack often arrives while its `Sent` is still waiting to be written.
pub fn drop_superseded(updates: &mut Vec<DeliveryUpdate>) {
    let acked: HashSet<(&MessageId, &UaId)> = updates
        .iter()
        .filter(|u| u.status == DeliveryStatus::Acked)
        .map(|u| (&u.message_id, &u.ua))
        .collect();
    if acked.is_empty() {
        return;
    }
    let keep: Vec<bool> = updates
        .iter()
        .map(|u| u.status != DeliveryStatus::Sent || !acked.contains(&(&u.message_id, &u.ua)))
        .collect();
    let mut keep = keep.into_iter();
    updates.retain(|_| keep.next().unwrap_or(true));
}

/// One row of the status endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub device: UaId,
    pub status: DeliveryStatus,
    pub at: EpochSecs,
}

/// The answer of `GET /notify/{appToken}/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub id: String,
    pub message_id: MessageId,
    pub deliveries: Vec<Delivery>,
}

impl StatusReport {
    /// The report of `n` from its delivery records at `now`: what was still owed when the
    /// notification expired shows as expired; rows come sorted by device.
    pub fn assemble(
        n: &NotificationHead,
        rows: impl IntoIterator<Item = (UaId, DeliveryRecord)>,
        now: EpochSecs,
    ) -> StatusReport {
        let expired = n.is_expired(now);
        let mut deliveries: Vec<Delivery> = rows
            .into_iter()
            .map(|(device, record)| Delivery {
                device,
                status: if expired && record.status.is_outstanding() {
                    DeliveryStatus::Expired
                } else {
                    record.status
                },
                at: record.at,
            })
            .collect();
        deliveries.sort_by(|a, b| a.device.cmp(&b.device));
        StatusReport {
            id: n.id.clone(),
            message_id: n.message_id.clone(),
            deliveries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    #[test]
    fn acked_is_final_and_only_owed_deliveries_move_otherwise() {
        for next in DeliveryStatus::ALL {
            assert!(!Acked.can_become(next), "acked -> {next:?}");
        }
        for from in [Pending, Sent, Expired, Replaced, Rejected] {
            assert!(from.can_become(Acked), "{from:?} -> acked");
        }
        for from in [Pending, Sent, Expired, Replaced] {
            assert!(from.can_become(Rejected), "{from:?} -> rejected");
        }
        assert!(!Acked.can_become(Rejected), "nothing downgrades an ack");
        assert!(!Rejected.can_become(Sent), "a rejected delivery is settled");
        assert!(!Rejected.is_outstanding());
        assert!(Pending.can_become(Sent));
        assert!(Sent.can_become(Sent), "a resend records the new time");
        assert!(Sent.can_become(Replaced));
        assert!(Pending.can_become(Expired));
        assert!(!Replaced.can_become(Sent));
        assert!(!Expired.can_become(Pending));
        assert_eq!(
            DeliveryStatus::sources_of(Acked),
            vec![Pending, Sent, Expired, Replaced, Rejected]
        );
        assert_eq!(DeliveryStatus::sources_of(Sent), vec![Pending, Sent]);
        assert_eq!(DeliveryStatus::sources_of(Replaced), vec![Pending, Sent]);
    }

    #[test]
    fn records_apply_the_rule_and_take_the_time() {
        let sent = DeliveryRecord {
            status: Sent,
            at: EpochSecs(1),
        };
        assert_eq!(
            sent.apply(Acked, EpochSecs(5)),
            Some(DeliveryRecord {
                status: Acked,
                at: EpochSecs(5)
            })
        );
        let acked = DeliveryRecord {
            status: Acked,
            at: EpochSecs(1),
        };
        assert_eq!(acked.apply(Sent, EpochSecs(5)), None);
        assert_eq!(
            acked.apply(Acked, EpochSecs(5)),
            None,
            "acking twice changes nothing"
        );
        for status in DeliveryStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", status.as_str()),
                "stored as its name"
            );
        }
    }

    fn update(message_id: &str, ua: &str, status: DeliveryStatus) -> DeliveryUpdate {
        DeliveryUpdate {
            message_id: MessageId::new(message_id),
            ua: UaId::new(ua),
            status,
        }
    }

    #[test]
    fn an_ack_in_the_batch_supersedes_the_sent_of_the_same_delivery_only() {
        let mut updates = vec![
            update("m1", "a", Sent),
            update("m1", "b", Sent),
            update("m2", "a", Sent),
            update("m1", "a", Acked),
            update("m2", "b", Acked),
            update("m3", "a", Replaced),
        ];
        drop_superseded(&mut updates);
        assert_eq!(
            updates,
            vec![
                update("m1", "b", Sent),
                update("m2", "a", Sent),
                update("m1", "a", Acked),
                update("m2", "b", Acked),
                update("m3", "a", Replaced),
            ]
        );
        let mut unchanged = vec![update("m1", "a", Sent), update("m1", "a", Sent)];
        drop_superseded(&mut unchanged);
        assert_eq!(unchanged.len(), 2);
    }

    #[test]
    fn a_report_shows_owed_deliveries_of_an_expired_notification_as_expired() {
        let n = crate::test_support::notification(10, 4).head();
        let rows = [("c", Acked), ("a", Pending), ("b", Sent)].map(|(ua, status)| {
            (
                UaId::new(ua),
                DeliveryRecord {
                    status,
                    at: EpochSecs(3),
                },
            )
        });
        let live = StatusReport::assemble(&n, rows.clone(), EpochSecs(9));
        let statuses: Vec<_> = live.deliveries.iter().map(|d| d.status).collect();
        assert_eq!(statuses, vec![Pending, Sent, Acked], "sorted by device");
        let late = StatusReport::assemble(&n, rows, EpochSecs(10));
        let statuses: Vec<_> = late.deliveries.iter().map(|d| d.status).collect();
        assert_eq!(statuses, vec![Expired, Expired, Acked]);
        assert_eq!(late.message_id, n.message_id);
        assert_eq!(late.id, "a");
    }
}
