//! The rules of `common`, translated into MongoDB filters and into the writes of a batch.
//! Pure: what runs the commands is in `collections`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use common::delivery::{drop_superseded, DeliveryStatus, DeliveryUpdate};
use common::model::{EpochSecs, MessageId, UaId};
use common::notification::{superseded, Recency};
use common::purge::{notification_is_spent, Retention};
use mongodb::bson::{doc, Document};
use ns_store::StoreResult;

use crate::documents::{date, delivery_key, NotificationDoc, NotificationKey};

/// The stored states as the strings of `status`.
pub(crate) fn status_strs(statuses: impl IntoIterator<Item = DeliveryStatus>) -> Vec<&'static str> {
    statuses.into_iter().map(DeliveryStatus::as_str).collect()
}

/// The filter on `status` of the deliveries that may become `next`
/// ([`DeliveryStatus::sources_of`]).
pub(crate) fn may_become(next: DeliveryStatus) -> Document {
    doc! { "$in": status_strs(DeliveryStatus::sources_of(next)) }
}

/// The filter on `status` of the deliveries still owed ([`DeliveryStatus::is_outstanding`]).
pub(crate) fn outstanding_statuses() -> Document {
    doc! { "$in": status_strs(DeliveryStatus::ALL.into_iter().filter(|s| s.is_outstanding())) }
}

/// The order in which a batch writes its target states: acked last, so that whatever else a
/// delivery is given in the same batch, an ack of it wins, as acked is final.
pub(crate) fn write_rank(status: DeliveryStatus) -> (bool, usize) {
    let position = DeliveryStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(usize::MAX);
    (status == DeliveryStatus::Acked, position)
}

/// The stored flags of the notifications that still need routing
/// ([`NotificationState::needs_routing`]).
///
/// [`NotificationState::needs_routing`]: common::notification::NotificationState::needs_routing
pub(crate) fn needs_routing() -> Document {
    doc! { "replaced": false, "routed": false }
}

/// The stored flags under which a notification is deliverable
/// ([`NotificationState::is_deliverable`]); the rule's other condition, not expired, is
/// [`unexpired`].
///
/// [`NotificationState::is_deliverable`]: common::notification::NotificationState::is_deliverable
pub(crate) fn deliverable() -> Document {
    doc! { "replaced": false }
}

/// Notifications not expired at `now` ([`Notification::is_expired`]): a stored notification is
/// never ephemeral, so it is expired once `expires_at <= now`.
pub(crate) fn unexpired(now: EpochSecs) -> Document {
    doc! { "expires_at": { "$gt": now.as_i64() } }
}

/// Notifications expired at `now`, on the TTL index's date (see [`unexpired`]).
pub(crate) fn expired(now: EpochSecs) -> Document {
    doc! { "expire_at": { "$lte": date(now) } }
}

/// Deliveries past their retention at `now` ([`Retention::delivery_is_spent`]): acked before
/// [`Retention::acked_cutoff`]. Served by the index on `status` and `at`.
pub(crate) fn spent_deliveries(retention: Retention, now: EpochSecs) -> Document {
    doc! {
        "status": DeliveryStatus::Acked.as_str(),
        "at": { "$lt": retention.acked_cutoff(now).as_i64() },
    }
}

pub(crate) fn with(mut filter: Document, more: &Document) -> Document {
    filter.extend(more.clone());
    filter
}

/// Delivery changes with one target state and one time, as one `update_many` (per `$in`
/// chunk).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StateWrite {
    pub(crate) status: DeliveryStatus,
    pub(crate) at: EpochSecs,
    pub(crate) keys: Vec<String>,
}

/// Folds the delivery changes of several callers, each with its own `now`, into the writes
/// that store them: the `Sent` of a delivery the batch also acks is dropped
/// ([`drop_superseded`]), and the rest is grouped by target state and time, in the order they
/// must be written: by [`write_rank`] (acked last), then oldest time first, so that a newer
/// send of one delivery records the newer time.
pub(crate) fn fold_deliveries<'a>(
    batch: impl IntoIterator<Item = (&'a [DeliveryUpdate], EpochSecs)>,
) -> Vec<StateWrite> {
    let batch: Vec<(&[DeliveryUpdate], EpochSecs)> = batch.into_iter().collect();
    let mut kept: Vec<DeliveryUpdate> = batch
        .iter()
        .flat_map(|(updates, _)| updates.iter().cloned())
        .collect();
    drop_superseded(&mut kept);
    // What the rule drops depends only on an update's content, so an update is kept exactly
    // when an equal one is, whichever caller it came from.
    let kept: HashSet<(&MessageId, &UaId, DeliveryStatus)> = kept
        .iter()
        .map(|u| (&u.message_id, &u.ua, u.status))
        .collect();
    // Keyed by when each group is written; the value is its state and its deliveries.
    type Order = ((bool, usize), EpochSecs);
    let mut groups: BTreeMap<Order, (DeliveryStatus, BTreeSet<String>)> = BTreeMap::new();
    for (updates, now) in &batch {
        for u in *updates {
            if kept.contains(&(&u.message_id, &u.ua, u.status)) {
                groups
                    .entry((write_rank(u.status), *now))
                    .or_insert_with(|| (u.status, BTreeSet::new()))
                    .1
                    .insert(delivery_key(&u.message_id, &u.ua));
            }
        }
    }
    groups
        .into_iter()
        .map(|((_, at), (status, keys))| StateWrite {
            status,
            at,
            keys: keys.into_iter().collect(),
        })
        .collect()
}

/// Of the stored notifications `found` (all those sharing an app and AS id with one just
/// inserted), the ones to mark replaced: every one [`superseded`] by another of its app and
/// AS id and not marked yet, grouped by the time of the replacing, `at` of their app and AS id.
pub(crate) fn replacements(
    found: Vec<NotificationKey>,
    at: &HashMap<String, EpochSecs>,
) -> BTreeMap<EpochSecs, Vec<MessageId>> {
    let mut by_app_id: HashMap<String, Vec<NotificationKey>> = HashMap::new();
    for k in found {
        by_app_id.entry(k.app_id.clone()).or_default().push(k);
    }
    let mut out: BTreeMap<EpochSecs, Vec<MessageId>> = BTreeMap::new();
    for (app_id, keys) in by_app_id {
        let Some(&at) = at.get(&app_id) else {
            continue;
        };
        let ranked = keys.into_iter().map(|k| {
            let recency = Recency {
                created_at: k.created_at,
                message_id: k.message_id.clone(),
            };
            (recency, k)
        });
        // Already replaced ones still take part, so that a notification arriving after a
        // newer one (broker messages can come out of order) is replaced even if that newer
        // one was replaced in turn; they are not marked again.
        for k in superseded(ranked).into_iter().filter(|k| !k.replaced) {
            out.entry(at).or_default().push(k.message_id);
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

/// One routing of a batch, as far as choosing its deliveries goes: the notification, its
/// UAs, and the quota of outstanding deliveries per UA, if any.
pub(crate) type Routing<'a> = (&'a MessageId, &'a [UaId], Option<u64>);

/// What one routing of a batch creates and answers: the deliveries to insert with their
/// state, and the UAs whose delivery is `rejected` (not to be routed to).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub(crate) create: Vec<(UaId, DeliveryStatus)>,
    pub(crate) refused: Vec<UaId>,
    /// Those with a delivery already, settled otherwise (acked, say): not routed to either.
    pub(crate) settled: Vec<UaId>,
}

/// Chooses the deliveries of a batch of routings, in order, as [`Store::add_deliveries`]
/// says: a UA with a delivery of the notification already (`existing`, or made by a routing
/// before in the batch) keeps it, and is refused when it is `rejected`; any other UA gets a
/// `pending` delivery, or a `rejected` one when its routing has a quota and the UA is owed
/// that many: `owed` (what is stored) plus the pending ones the batch made before.
///
/// [`Store::add_deliveries`]: ns_store::Store::add_deliveries
pub(crate) fn choose_deliveries(
    routings: &[Routing<'_>],
    existing: &HashMap<(MessageId, UaId), DeliveryStatus>,
    owed: &HashMap<UaId, u64>,
) -> Vec<Chosen> {
    let mut made: HashMap<(MessageId, UaId), DeliveryStatus> = HashMap::new();
    let mut owed = owed.clone();
    routings
        .iter()
        .map(|&(message_id, uas, max_pending)| {
            let mut chosen = Chosen::default();
            for ua in uas {
                let key = (message_id.clone(), ua.clone());
                if let Some(status) = existing.get(&key).or_else(|| made.get(&key)) {
                    if *status == DeliveryStatus::Rejected {
                        chosen.refused.push(ua.clone());
                    } else if !status.is_outstanding() {
                        chosen.settled.push(ua.clone());
                    }
                    continue;
                }
                let count = owed.entry(ua.clone()).or_default();
                let status = if max_pending.is_some_and(|max| *count >= max) {
                    chosen.refused.push(ua.clone());
                    DeliveryStatus::Rejected
                } else {
                    *count += 1;
                    DeliveryStatus::Pending
                };
                made.insert(key, status);
                chosen.create.push((ua.clone(), status));
            }
            chosen
        })
        .collect()
}

/// Splits a page of notifications flagged for a spent check into those the purge removes
/// ([`notification_is_spent`]) and those it keeps. `left` holds how many deliveries each has.
pub(crate) fn split_spent(
    flagged: Vec<NotificationDoc>,
    left: &HashMap<MessageId, usize>,
    now: EpochSecs,
) -> StoreResult<(Vec<MessageId>, Vec<MessageId>)> {
    let mut spent = Vec::new();
    let mut kept = Vec::new();
    for d in flagged {
        let state = d.state();
        let left = left.get(&d.message_id).copied().unwrap_or(0);
        let n = d.into_notification()?;
        if notification_is_spent(&n.head(), state, left, now) {
            spent.push(n.message_id);
        } else {
            kept.push(n.message_id);
        }
    }
    Ok((spent, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::{AppToken, EpochMillis};
    use common::notification::{Notification, NotificationState};
    use mongodb::bson::DateTime;
    use DeliveryStatus::*;

    fn update(message_id: &str, ua: &str, status: DeliveryStatus) -> DeliveryUpdate {
        DeliveryUpdate {
            message_id: MessageId::new(message_id),
            ua: UaId::new(ua),
            status,
        }
    }

    fn write(status: DeliveryStatus, at: i64, keys: &[&str]) -> StateWrite {
        StateWrite {
            status,
            at: EpochSecs(at),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn a_batch_folds_into_one_write_per_state_and_time_acked_last() {
        let first = vec![update("m1", "a", Sent), update("m2", "a", Acked)];
        let second = vec![
            update("m1", "a", Acked),
            update("m1", "b", Sent),
            update("m3", "a", Replaced),
        ];
        let third = vec![update("m1", "b", Sent), update("m4", "c", Sent)];
        let writes = fold_deliveries([
            (first.as_slice(), EpochSecs(10)),
            (second.as_slice(), EpochSecs(10)),
            (third.as_slice(), EpochSecs(11)),
        ]);
        assert_eq!(
            writes,
            vec![
                write(Sent, 10, &["m1:b"]),
                write(Sent, 11, &["m1:b", "m4:c"]),
                write(Replaced, 10, &["m3:a"]),
                write(Acked, 10, &["m1:a", "m2:a"]),
            ],
            "the sent of m1:a is superseded by its ack; a later send records the later time"
        );
    }

    #[test]
    fn an_ack_supersedes_a_sent_from_another_caller_at_another_time() {
        let sent = vec![update("m", "a", Sent)];
        let acked = vec![update("m", "a", Acked)];
        let writes = fold_deliveries([
            (acked.as_slice(), EpochSecs(5)),
            (sent.as_slice(), EpochSecs(6)),
        ]);
        assert_eq!(writes, vec![write(Acked, 5, &["m:a"])]);
        assert!(fold_deliveries([(&[][..], EpochSecs(1))]).is_empty());
    }

    #[test]
    fn the_write_order_puts_acked_last() {
        let mut order = DeliveryStatus::ALL.to_vec();
        order.sort_by_key(|s| write_rank(*s));
        assert_eq!(order.last(), Some(&Acked));
        assert_eq!(order[..5], [Pending, Sent, Expired, Replaced, Rejected]);
    }

    #[test]
    fn status_filters_come_from_the_transition_rule() {
        assert_eq!(
            may_become(Acked),
            doc! { "$in": ["pending", "sent", "expired", "replaced", "rejected"] }
        );
        assert_eq!(
            may_become(Rejected),
            doc! { "$in": ["pending", "sent", "expired", "replaced"] }
        );
        assert_eq!(may_become(Sent), doc! { "$in": ["pending", "sent"] });
        assert_eq!(outstanding_statuses(), doc! { "$in": ["pending", "sent"] });
    }

    #[test]
    fn flag_filters_agree_with_the_notification_rules() {
        /// Whether a document with these flags matches a filter on the flags alone.
        fn matches(filter: &Document, state: NotificationState) -> bool {
            filter.iter().all(|(field, value)| match field.as_str() {
                "replaced" => value.as_bool() == Some(state.replaced),
                "routed" => value.as_bool() == Some(state.routed),
                other => panic!("a filter on {other}"),
            })
        }
        let unexpired = Notification {
            message_id: MessageId::new("m"),
            app_token: AppToken::new("t"),
            id: "a".into(),
            payload: common::notification::Payload::Text("x".into()),
            ttl: 10,
            timestamp: EpochSecs(0),
            expires_at: EpochSecs(10),
            priority: 1,
            created_at: EpochMillis(0),
        };
        for replaced in [false, true] {
            for routed in [false, true] {
                let state = NotificationState { replaced, routed };
                assert_eq!(matches(&needs_routing(), state), state.needs_routing());
                assert_eq!(
                    matches(&deliverable(), state),
                    state.is_deliverable(&unexpired.head(), EpochSecs(0))
                );
            }
        }
    }

    #[test]
    fn time_filters_translate_expiry_and_retention() {
        assert_eq!(
            unexpired(EpochSecs(7)),
            doc! { "expires_at": { "$gt": 7_i64 } }
        );
        assert_eq!(
            expired(EpochSecs(7)),
            doc! { "expire_at": { "$lte": DateTime::from_millis(7_000) } }
        );
        assert_eq!(
            spent_deliveries(Retention { acked_secs: 60 }, EpochSecs(100)),
            doc! { "status": "acked", "at": { "$lt": 40_i64 } }
        );
        assert_eq!(date(EpochSecs(i64::MAX)), DateTime::from_millis(i64::MAX));
    }

    fn key(id: &str, app_id: &str, created_at: i64, replaced: bool) -> NotificationKey {
        NotificationKey {
            message_id: MessageId::new(id),
            app_id: app_id.to_owned(),
            created_at: EpochMillis(created_at),
            replaced,
        }
    }

    #[test]
    fn replacing_marks_every_superseded_one_not_marked_yet() {
        let found = vec![
            key("a1", "t/a", 1, true),
            key("a2", "t/a", 2, false),
            key("a3", "t/a", 3, false),
            key("b9", "t/b", 5, false),
            key("b1", "t/b", 5, false),
            key("c0", "t/c", 0, false),
            key("d1", "t/d", 1, false),
            key("d2", "t/d", 2, true),
        ];
        let at = HashMap::from([
            ("t/a".to_owned(), EpochSecs(10)),
            ("t/b".to_owned(), EpochSecs(11)),
            ("t/c".to_owned(), EpochSecs(11)),
            ("t/d".to_owned(), EpochSecs(10)),
        ]);
        let replaced = replacements(found, &at);
        assert_eq!(
            replaced,
            BTreeMap::from([
                (
                    EpochSecs(10),
                    vec![MessageId::new("a2"), MessageId::new("d1")]
                ),
                (EpochSecs(11), vec![MessageId::new("b1")]),
            ]),
            "a1 is marked already; the tie on b goes to the larger message id; d1 arrived \
             after d2 was itself replaced, and is still superseded by it"
        );
    }

    #[test]
    fn a_batch_keeps_to_the_quota_and_to_what_exists() {
        let (m1, m2, m3) = (
            MessageId::new("m1"),
            MessageId::new("m2"),
            MessageId::new("m3"),
        );
        let (full, free, old) = (UaId::new("full"), UaId::new("free"), UaId::new("old"));
        let existing = HashMap::from([
            ((m1.clone(), old.clone()), Rejected),
            ((m2.clone(), old.clone()), Sent),
            ((m3.clone(), old.clone()), Acked),
        ]);
        let owed = HashMap::from([(full.clone(), 1), (old.clone(), 9)]);
        let all = [full.clone(), free.clone(), old.clone()];
        let chosen = choose_deliveries(
            &[
                (&m1, &all, Some(2)),
                (&m2, &all, Some(2)),
                // The first routing again (a message handled twice in one batch).
                (&m1, &all, Some(2)),
                (&m3, &all, None),
            ],
            &existing,
            &owed,
        );
        assert_eq!(
            chosen[0],
            Chosen {
                create: vec![(full.clone(), Pending), (free.clone(), Pending)],
                refused: vec![old.clone()],
                settled: Vec::new(),
            },
            "a UA with a delivery keeps it; the others are under the quota"
        );
        assert_eq!(
            chosen[1],
            Chosen {
                create: vec![(full.clone(), Rejected), (free.clone(), Pending)],
                refused: vec![full.clone()],
                settled: Vec::new(),
            },
            "the first routing's delivery counts for the second; an existing one is never counted"
        );
        assert_eq!(
            chosen[2],
            Chosen {
                create: Vec::new(),
                refused: vec![old.clone()],
                settled: Vec::new(),
            }
        );
        assert_eq!(
            chosen[3],
            Chosen {
                create: vec![(full, Pending), (free, Pending)],
                refused: Vec::new(),
                settled: vec![old],
            },
            "no quota, no refusal; an acked delivery stays acked and is not routed again"
        );
    }

    fn notification_doc(id: &str, expires_at: i64, routed: bool) -> NotificationDoc {
        NotificationDoc::from_notification(&Notification {
            message_id: MessageId::new(id),
            app_token: AppToken::new("t"),
            id: id.to_owned(),
            payload: common::notification::Payload::Text("x".into()),
            ttl: 100,
            timestamp: EpochSecs(0),
            expires_at: EpochSecs(expires_at),
            priority: 1,
            created_at: EpochMillis(0),
        })
        .with_routed(routed)
    }

    impl NotificationDoc {
        fn with_routed(mut self, routed: bool) -> Self {
            self.routed = routed;
            self
        }
    }

    #[test]
    fn a_flagged_page_splits_by_the_purge_rule() {
        let flagged = vec![
            notification_doc("nothing-left", 100, true),
            notification_doc("owed", 100, true),
            notification_doc("unrouted", 100, false),
            notification_doc("expired", 10, true),
        ];
        let left = HashMap::from([(MessageId::new("owed"), 2), (MessageId::new("expired"), 1)]);
        let (spent, kept) = split_spent(flagged, &left, EpochSecs(50)).expect("split");
        assert_eq!(
            spent,
            vec![MessageId::new("nothing-left"), MessageId::new("expired")]
        );
        assert_eq!(
            kept,
            vec![MessageId::new("owed"), MessageId::new("unrouted")]
        );
    }
}
