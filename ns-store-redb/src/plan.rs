//! What each write command changes, worked out before anything is committed: against what
//! is committed ([`Mem`]) plus the changes of the commands before it in the same group
//! ([`View`]). The rules themselves come from `common`; this only applies them to records.

use std::collections::HashMap;

use common::delivery::{DeliveryRecord, DeliveryStatus, DeliveryUpdate};
use common::model::{App, AppToken, EpochSecs, Live, MessageId, UaId, UaRoute};
use common::notification::{superseded, Notification, NotificationState, Payload, Recency};
use common::purge::{notification_is_spent, Retention};
use ns_store::{Added, StoreError, StoreResult};

use crate::mem::Mem;
use crate::tables::{NotificationRecord, UaRecord};

/// A write, as the writer thread receives it.
#[derive(Debug)]
pub(crate) enum Command {
    RegisterUa(UaRoute),
    DisconnectUa(UaId, Live),
    PutApp(App),
    RegisterWa(UaId, AppToken),
    UnregisterWa(UaId, AppToken),
    InsertNotification(Notification, EpochSecs),
    /// With the quota of outstanding deliveries per UA, if any.
    AddDeliveries(MessageId, Vec<UaId>, EpochSecs, Option<u64>),
    UpdateDeliveries(Vec<DeliveryUpdate>, EpochSecs),
    Withdraw(MessageId, EpochSecs),
    /// One chunk of the purge: up to `limit` notifications after `after`.
    Purge {
        after: Option<MessageId>,
        limit: usize,
        now: EpochSecs,
        retention: Retention,
    },
}

impl Command {
    /// Whether what the command records must be on disk before it is answered. Two kinds
    /// need not, because a crash that loses them loses nothing owed:
    /// - routing (`AddDeliveries`): the notification it marks routed is then unrouted
    ///   again, and the monitor's sweep of unrouted notifications routes it after the
    ///   restart;
    /// - `sent`: the delivery is then pending again, so it is sent again when the UA comes
    ///   back, which at-least-once delivery allows.
    ///
    /// Every later durable commit writes them too: what is on disk after a crash is always
    /// everything up to some commit, never a later write without an earlier one.
    pub(crate) fn must_be_durable(&self) -> bool {
        match self {
            Command::AddDeliveries(..) => false,
            Command::UpdateDeliveries(updates, _) => {
                updates.iter().any(|u| u.status != DeliveryStatus::Sent)
            }
            _ => true,
        }
    }
}

/// What a command answers.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Previous(Option<UaRoute>),
    Bool(bool),
    Count(u64),
    Added(Added),
    /// Records removed, and the last notification looked at (`None`: the walk is over).
    Purged(u64, Option<MessageId>),
}

/// The writer answered with another kind of outcome than the command has.
#[derive(Debug, thiserror::Error)]
#[error("the store's writer gave an unexpected answer")]
struct WrongOutcome;

impl Outcome {
    fn wrong() -> StoreError {
        StoreError::unavailable(WrongOutcome)
    }

    pub(crate) fn into_previous(self) -> StoreResult<Option<UaRoute>> {
        match self {
            Outcome::Previous(p) => Ok(p),
            _ => Err(Self::wrong()),
        }
    }

    pub(crate) fn into_bool(self) -> StoreResult<bool> {
        match self {
            Outcome::Bool(b) => Ok(b),
            _ => Err(Self::wrong()),
        }
    }

    pub(crate) fn into_added(self) -> StoreResult<Added> {
        match self {
            Outcome::Added(a) => Ok(a),
            _ => Err(Self::wrong()),
        }
    }

    pub(crate) fn into_count(self) -> StoreResult<u64> {
        match self {
            Outcome::Count(n) => Ok(n),
            _ => Err(Self::wrong()),
        }
    }

    pub(crate) fn into_purged(self) -> StoreResult<(u64, Option<MessageId>)> {
        match self {
            Outcome::Purged(n, last) => Ok((n, last)),
            _ => Err(Self::wrong()),
        }
    }
}

/// The new value of every record a group changes (`None`: removed). One value per key: a
/// later command of the group overwrites an earlier one's.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) uas: HashMap<UaId, Option<UaRecord>>,
    /// Apps are never removed: appToken → the WA's public key.
    pub(crate) apps: HashMap<AppToken, Option<String>>,
    pub(crate) registrations: HashMap<(AppToken, UaId), bool>,
    pub(crate) notifications: HashMap<MessageId, Option<NotificationRecord>>,
    /// The payloads of the notifications inserted; a payload goes with its notification.
    pub(crate) payloads: HashMap<MessageId, Payload>,
    /// By notification, then UA.
    pub(crate) deliveries: HashMap<MessageId, HashMap<UaId, Option<DeliveryRecord>>>,
}

impl Changes {
    fn set_delivery(&mut self, id: &MessageId, ua: UaId, record: Option<DeliveryRecord>) {
        self.deliveries
            .entry(id.clone())
            .or_default()
            .insert(ua, record);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.uas.is_empty()
            && self.apps.is_empty()
            && self.registrations.is_empty()
            && self.notifications.is_empty()
            && self.payloads.is_empty()
            && self.deliveries.is_empty()
    }
}

/// Plans every command of a group in order; returns each one's outcome and the group's
/// changes.
pub(crate) fn plan_group(mem: &Mem, commands: Vec<Command>) -> (Vec<Outcome>, Changes) {
    let mut view = View {
        mem,
        changes: Changes::default(),
        inserted: HashMap::new(),
        owed_in_group: HashMap::new(),
    };
    let outcomes = commands
        .into_iter()
        .map(|command| view.plan(command))
        .collect();
    (outcomes, view.changes)
}

/// The records as they will be once the group's changes so far are committed.
struct View<'a> {
    mem: &'a Mem,
    changes: Changes,
    /// The notifications the group inserts, by app and AS id.
    inserted: HashMap<(AppToken, String), Vec<MessageId>>,
    /// The pending deliveries the group's routings made so far, by UA: what a quota is
    /// checked against beside the committed ones.
    owed_in_group: HashMap<UaId, u64>,
}

impl View<'_> {
    fn ua(&self, ua: &UaId) -> Option<UaRecord> {
        match self.changes.uas.get(ua) {
            Some(changed) => changed.clone(),
            None => self.mem.uas.get(ua).cloned(),
        }
    }

    fn app(&self, app: &AppToken) -> Option<Option<String>> {
        match self.changes.apps.get(app) {
            Some(pbk) => Some(pbk.clone()),
            None => self.mem.apps.get(app).cloned(),
        }
    }

    fn registered(&self, app: &AppToken, ua: &UaId) -> bool {
        match self.changes.registrations.get(&(app.clone(), ua.clone())) {
            Some(present) => *present,
            None => self
                .mem
                .registrations
                .get(app)
                .is_some_and(|set| set.contains(ua)),
        }
    }

    fn notification(&self, id: &MessageId) -> Option<NotificationRecord> {
        match self.changes.notifications.get(id) {
            Some(changed) => changed.clone(),
            None => self.mem.notifications.get(id).cloned(),
        }
    }

    fn delivery(&self, id: &MessageId, ua: &UaId) -> Option<DeliveryRecord> {
        match self.changes.deliveries.get(id).and_then(|of| of.get(ua)) {
            Some(changed) => *changed,
            None => self
                .mem
                .deliveries
                .get(id)
                .and_then(|of| of.get(ua))
                .copied(),
        }
    }

    /// Every delivery of a notification.
    fn deliveries_of(&self, id: &MessageId) -> Vec<(UaId, DeliveryRecord)> {
        let mut all: HashMap<UaId, DeliveryRecord> =
            self.mem.deliveries.get(id).cloned().unwrap_or_default();
        for (ua, changed) in self.changes.deliveries.get(id).into_iter().flatten() {
            match changed {
                Some(record) => all.insert(ua.clone(), *record),
                None => all.remove(ua),
            };
        }
        all.into_iter().collect()
    }

    /// The live notifications with this app and AS id, with their recency.
    fn same_app_id(&self, n: &Notification) -> Vec<(Recency, MessageId)> {
        let mut ids: Vec<MessageId> = self
            .mem
            .same_app_id(&n.app_token, &n.id)
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        if let Some(inserted) = self.inserted.get(&(n.app_token.clone(), n.id.clone())) {
            ids.extend(inserted.iter().cloned());
        }
        // Removed ones (by a purge earlier in the group) are not found.
        ids.into_iter()
            .filter_map(|id| self.notification(&id))
            .map(|r| (r.head.recency(), r.head.message_id))
            .collect()
    }

    fn plan(&mut self, command: Command) -> Outcome {
        match command {
            Command::RegisterUa(route) => {
                let previous = self.ua(&route.ua).map(|r| r.to_route(&route.ua));
                self.changes
                    .uas
                    .insert(route.ua.clone(), Some(UaRecord::from_route(&route)));
                Outcome::Previous(previous)
            }
            Command::DisconnectUa(ua, live) => {
                if let Some(record) = self.ua(&ua).filter(|r| r.is_live_as(&live)) {
                    self.changes.uas.insert(ua, Some(record.disconnected()));
                }
                Outcome::Done
            }
            Command::PutApp(app) => {
                if self.app(&app.app_token).as_ref() != Some(&app.pbk) {
                    self.changes.apps.insert(app.app_token, app.pbk);
                }
                Outcome::Done
            }
            Command::RegisterWa(ua, app) => {
                if !self.registered(&app, &ua) {
                    self.changes.registrations.insert((app, ua), true);
                }
                Outcome::Done
            }
            Command::UnregisterWa(ua, app) => {
                let present = self.registered(&app, &ua);
                if present {
                    self.changes.registrations.insert((app, ua), false);
                }
                Outcome::Bool(present)
            }
            Command::InsertNotification(n, now) => {
                self.insert_notification(n, now);
                Outcome::Done
            }
            Command::AddDeliveries(id, uas, now, max_pending) => {
                Outcome::Added(self.add_deliveries(&id, uas, now, max_pending))
            }
            Command::UpdateDeliveries(updates, now) => {
                let mut changed = 0;
                for u in updates {
                    let next = self
                        .delivery(&u.message_id, &u.ua)
                        .and_then(|current| current.apply(u.status, now));
                    if let Some(next) = next {
                        self.changes.set_delivery(&u.message_id, u.ua, Some(next));
                        changed += 1;
                    }
                }
                Outcome::Count(changed)
            }
            Command::Withdraw(id, now) => {
                let stored = self.notification(&id).is_some();
                self.mark_replaced(&id, now);
                Outcome::Bool(stored)
            }
            Command::Purge {
                after,
                limit,
                now,
                retention,
            } => self.purge(after, limit, now, retention),
        }
    }

    /// Marks a notification replaced, with its deliveries that may still become replaced.
    fn mark_replaced(&mut self, id: &MessageId, now: EpochSecs) {
        let Some(mut record) = self.notification(id) else {
            return;
        };
        if record.state.replaced {
            return;
        }
        record.state.replaced = true;
        self.changes.notifications.insert(id.clone(), Some(record));
        for (ua, delivery) in self.deliveries_of(id) {
            if let Some(replaced) = delivery.apply(DeliveryStatus::Replaced, now) {
                self.changes.set_delivery(id, ua, Some(replaced));
            }
        }
    }

    /// Stores `n` (a broker message handled twice finds it stored, and changes nothing
    /// then), and marks replaced whatever it supersedes, with their deliveries.
    fn insert_notification(&mut self, n: Notification, now: EpochSecs) {
        if self.notification(&n.message_id).is_some() {
            return;
        }
        let mut same = self.same_app_id(&n);
        same.push((n.recency(), n.message_id.clone()));
        self.inserted
            .entry((n.app_token.clone(), n.id.clone()))
            .or_default()
            .push(n.message_id.clone());
        let (head, payload) = n.split();
        self.changes
            .payloads
            .insert(head.message_id.clone(), payload);
        self.changes.notifications.insert(
            head.message_id.clone(),
            Some(NotificationRecord {
                head,
                state: NotificationState::default(),
            }),
        );
        for id in superseded(same) {
            self.mark_replaced(&id, now);
        }
    }

    fn add_deliveries(
        &mut self,
        id: &MessageId,
        uas: Vec<UaId>,
        now: EpochSecs,
        max_pending: Option<u64>,
    ) -> Added {
        let Some(mut record) = self.notification(id) else {
            return Added::default();
        };
        if record.state.replaced {
            return Added::default();
        }
        if !record.state.routed {
            record.state.routed = true;
            self.changes.notifications.insert(id.clone(), Some(record));
        }
        let (mut refused, mut settled) = (Vec::new(), Vec::new());
        for ua in uas {
            match self.delivery(id, &ua) {
                Some(existing) => {
                    if existing.status == DeliveryStatus::Rejected {
                        refused.push(ua);
                    } else if !existing.status.is_outstanding() {
                        settled.push(ua);
                    }
                }
                None => {
                    let status = if max_pending.is_some_and(|max| self.at_quota(&ua, now, max)) {
                        refused.push(ua.clone());
                        DeliveryStatus::Rejected
                    } else {
                        *self.owed_in_group.entry(ua.clone()).or_default() += 1;
                        DeliveryStatus::Pending
                    };
                    let record = DeliveryRecord { status, at: now };
                    self.changes.set_delivery(id, ua, Some(record));
                }
            }
        }
        Added {
            routed: true,
            refused,
            settled,
        }
    }

    /// Whether the UA is owed `max` deliveries at `now`: the committed ones, plus those the
    /// group's routings made. (Other changes of the group, an ack say, count from the next
    /// group on.)
    fn at_quota(&self, ua: &UaId, now: EpochSecs, max: u64) -> bool {
        let in_group = self.owed_in_group.get(ua).copied().unwrap_or(0);
        if in_group >= max {
            return true;
        }
        in_group + self.mem.owed(ua, now, max - in_group) >= max
    }

    fn purge(
        &mut self,
        after: Option<MessageId>,
        limit: usize,
        now: EpochSecs,
        retention: Retention,
    ) -> Outcome {
        use std::ops::Bound;
        let from = match &after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let chunk: Vec<MessageId> = self
            .mem
            .notifications
            .range::<MessageId, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect();
        let mut removed = 0;
        for id in &chunk {
            let Some(record) = self.notification(id) else {
                continue;
            };
            let mut left = Vec::new();
            for (ua, delivery) in self.deliveries_of(id) {
                if retention.delivery_is_spent(&delivery, now) {
                    self.changes.set_delivery(id, ua, None);
                    removed += 1;
                } else {
                    left.push(ua);
                }
            }
            if notification_is_spent(&record.head, record.state, left.len(), now) {
                self.changes.notifications.insert(id.clone(), None);
                removed += 1;
                for ua in left {
                    self.changes.set_delivery(id, ua, None);
                    removed += 1;
                }
            }
        }
        Outcome::Purged(removed, chunk.last().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(status: DeliveryStatus) -> DeliveryUpdate {
        DeliveryUpdate {
            message_id: MessageId::new("m"),
            ua: UaId::new("u"),
            status,
        }
    }

    #[test]
    fn only_routing_and_sent_may_wait_for_a_later_sync() {
        let now = EpochSecs(1);
        let sent = Command::UpdateDeliveries(vec![update(DeliveryStatus::Sent)], now);
        assert!(!sent.must_be_durable());
        let routing = Command::AddDeliveries(MessageId::new("m"), vec![UaId::new("u")], now, None);
        assert!(!routing.must_be_durable());
        for settled in [DeliveryStatus::Acked, DeliveryStatus::Rejected] {
            let mixed =
                Command::UpdateDeliveries(vec![update(DeliveryStatus::Sent), update(settled)], now);
            assert!(
                mixed.must_be_durable(),
                "{settled:?} is answered or owed no more"
            );
        }
        let ua = UaId::new("u");
        assert!(Command::RegisterWa(ua.clone(), AppToken::new("a")).must_be_durable());
    }
}
