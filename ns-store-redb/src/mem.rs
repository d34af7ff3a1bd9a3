//! The in-memory indexes: what the tables hold, arranged for the queries, and changed only
//! by applying a group's committed changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::delivery::{DeliveryRecord, StatusReport};
use common::model::{AppToken, EpochMillis, EpochSecs, MessageId, UaId, UaRoute};
use common::notification::NotificationHead;
use ns_store::OwedCount;

use crate::plan::Changes;
use crate::tables::{NotificationRecord, UaRecord};

/// A notification's place in creation order.
pub(crate) type Order = (EpochMillis, MessageId);

#[derive(Default)]
pub(crate) struct Mem {
    pub(crate) uas: HashMap<UaId, UaRecord>,
    /// appToken → the WA's public key, if it registered one.
    pub(crate) apps: HashMap<AppToken, Option<String>>,
    pub(crate) registrations: HashMap<AppToken, BTreeSet<UaId>>,
    /// How many apps each UA is registered for.
    registered_per_ua: HashMap<UaId, u64>,
    /// By message id: UUIDv7, so in creation order, and a purge can walk it in chunks.
    pub(crate) notifications: BTreeMap<MessageId, NotificationRecord>,
    /// (appToken, AS id) → its notifications, oldest first.
    pub(crate) by_app_id: HashMap<(AppToken, String), Vec<Order>>,
    pub(crate) deliveries: BTreeMap<MessageId, HashMap<UaId, DeliveryRecord>>,
    /// Per UA, its outstanding deliveries in creation order.
    outstanding: HashMap<UaId, BTreeSet<Order>>,
    /// Notifications that still need routing, in creation order.
    unrouted: BTreeSet<Order>,
    /// For the quotas: see the `impl Mem` block at the end.
    pending_per_app: HashMap<AppToken, AppPending>,
    /// How many outstanding deliveries each notification has, when it has any.
    owed_per_notification: HashMap<MessageId, u32>,
}

fn order(n: &NotificationHead) -> Order {
    (n.created_at, n.message_id.clone())
}

impl Mem {
    pub(crate) fn ua_registrations(&self, ua: &UaId) -> u64 {
        self.registered_per_ua.get(ua).copied().unwrap_or(0)
    }

    pub(crate) fn route(&self, ua: &UaId) -> Option<UaRoute> {
        self.uas.get(ua).map(|r| r.to_route(ua))
    }

    pub(crate) fn unrouted(&self, now: EpochSecs, limit: usize) -> Vec<NotificationHead> {
        self.unrouted
            .iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.needs_routing() && !r.head.is_expired(now))
            .take(limit)
            .map(|r| r.head.clone())
            .collect()
    }

    /// How many notifications the UA is owed at `now`, and their soonest expiry.
    pub(crate) fn owed_count(&self, ua: &UaId, now: EpochSecs) -> OwedCount {
        let Some(owed) = self.outstanding.get(ua) else {
            return OwedCount::default();
        };
        owed.iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.is_deliverable(&r.head, now))
            .fold(OwedCount::default(), |count, r| OwedCount {
                pending: count.pending + 1,
                next_expiry: Some(
                    count
                        .next_expiry
                        .map_or(r.head.expires_at, |at| at.min(r.head.expires_at)),
                ),
            })
    }

    pub(crate) fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> Vec<NotificationHead> {
        let Some(owed) = self.outstanding.get(ua) else {
            return Vec::new();
        };
        owed.iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.is_deliverable(&r.head, now))
            .take(limit)
            .map(|r| r.head.clone())
            .collect()
    }

    /// The notifications with this app and AS id, oldest first.
    pub(crate) fn same_app_id(&self, app_token: &AppToken, id: &str) -> &[Order] {
        self.by_app_id
            .get(&(app_token.clone(), id.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    pub(crate) fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> Option<StatusReport> {
        let (_, newest) = self.same_app_id(app_token, id).last()?;
        self.report(newest, now)
    }

    pub(crate) fn report(&self, message_id: &MessageId, now: EpochSecs) -> Option<StatusReport> {
        let record = self.notifications.get(message_id)?;
        let rows = self
            .deliveries
            .get(message_id)
            .into_iter()
            .flatten()
            .map(|(ua, d)| (ua.clone(), *d));
        Some(StatusReport::assemble(&record.head, rows, now))
    }

    /// Applies committed changes. Notifications are put first and removed last, so that a
    /// delivery always finds its notification's creation time to index it by.
    pub(crate) fn apply(&mut self, changes: Changes) {
        let touched: HashMap<MessageId, Option<Counted>> = changes
            .notifications
            .keys()
            .chain(changes.deliveries.keys())
            .map(|id| (id.clone(), self.counted(id)))
            .collect();
        let Changes {
            uas,
            apps,
            registrations,
            notifications,
            deliveries,
            payloads: _,
        } = changes;
        for (ua, record) in uas {
            match record {
                Some(r) => self.uas.insert(ua, r),
                None => self.uas.remove(&ua),
            };
        }
        self.apps.extend(apps);
        for ((app, ua), present) in registrations {
            let set = self.registrations.entry(app.clone()).or_default();
            if present {
                if set.insert(ua.clone()) {
                    *self.registered_per_ua.entry(ua).or_default() += 1;
                }
            } else {
                if set.remove(&ua) {
                    if let Some(count) = self.registered_per_ua.get_mut(&ua) {
                        *count -= 1;
                        if *count == 0 {
                            self.registered_per_ua.remove(&ua);
                        }
                    }
                }
                if set.is_empty() {
                    self.registrations.remove(&app);
                }
            }
        }
        let mut removed = Vec::new();
        for (id, record) in notifications {
            match record {
                Some(r) => self.put_notification(r),
                None => removed.push(id),
            }
        }
        for (id, of) in deliveries {
            for (ua, record) in of {
                self.set_delivery(id.clone(), ua, record);
            }
        }
        for id in removed {
            self.remove_notification(&id);
        }
        self.count_pending(touched);
    }

    fn put_notification(&mut self, record: NotificationRecord) {
        let key = order(&record.head);
        let same = self
            .by_app_id
            .entry((record.head.app_token.clone(), record.head.id.clone()))
            .or_default();
        if let Err(at) = same.binary_search(&key) {
            same.insert(at, key.clone());
        }
        if record.state.needs_routing() {
            self.unrouted.insert(key);
        } else {
            self.unrouted.remove(&key);
        }
        self.notifications
            .insert(record.head.message_id.clone(), record);
    }

    fn set_delivery(&mut self, id: MessageId, ua: UaId, record: Option<DeliveryRecord>) {
        let was_owed = self
            .deliveries
            .get(&id)
            .and_then(|of| of.get(&ua))
            .is_some_and(|r| r.status.is_outstanding());
        let owed = record.is_some_and(|r| r.status.is_outstanding());
        if owed != was_owed {
            let count = self.owed_per_notification.entry(id.clone()).or_default();
            if owed {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.owed_per_notification.remove(&id);
                }
            }
        }
        let created_at = self
            .notifications
            .get(&id)
            .map_or(EpochMillis(0), |r| r.head.created_at);
        let key = (created_at, id.clone());
        if record.is_some_and(|r| r.status.is_outstanding()) {
            self.outstanding.entry(ua.clone()).or_default().insert(key);
        } else if let Some(set) = self.outstanding.get_mut(&ua) {
            set.remove(&key);
            if set.is_empty() {
                self.outstanding.remove(&ua);
            }
        }
        match record {
            Some(r) => {
                self.deliveries.entry(id).or_default().insert(ua, r);
            }
            None => {
                if let Some(of) = self.deliveries.get_mut(&id) {
                    of.remove(&ua);
                    if of.is_empty() {
                        self.deliveries.remove(&id);
                    }
                }
            }
        }
    }

    /// Forgets a notification; its deliveries were removed by the same changes.
    fn remove_notification(&mut self, id: &MessageId) {
        let Some(record) = self.notifications.remove(id) else {
            return;
        };
        let n = &record.head;
        let key = order(n);
        self.unrouted.remove(&key);
        let app_id = (n.app_token.clone(), n.id.clone());
        if let Some(same) = self.by_app_id.get_mut(&app_id) {
            same.retain(|k| k != &key);
            if same.is_empty() {
                self.by_app_id.remove(&app_id);
            }
        }
    }
}

// --- Quotas: the counts ns-as and the monitor check, kept beside the indexes above ---

/// An app's notifications still owed ([`Mem::counted`]), by expiry: expired ones stay until
/// the purge removes them, and are subtracted when counting.
#[derive(Default)]
pub(crate) struct AppPending {
    total: u64,
    by_expiry: BTreeMap<EpochSecs, u64>,
}

/// Where a notification counts: its app and its expiry.
type Counted = (AppToken, EpochSecs);

impl Mem {
    /// The app's notifications still owed at `now`: stored, neither replaced nor expired, and
    /// either not routed yet or with a delivery still outstanding. Once every UA acked (or
    /// refused) a notification it no longer counts, though it stays for the status report.
    pub(crate) fn pending_for_app(&self, app: &AppToken, now: EpochSecs) -> u64 {
        let Some(pending) = self.pending_per_app.get(app) else {
            return 0;
        };
        let expired: u64 = pending.by_expiry.range(..=now).map(|(_, n)| n).sum();
        pending.total.saturating_sub(expired)
    }

    /// Every app's [`Mem::pending_for_app`] together: a walk of the apps with pending
    /// notifications, for a gauge refreshed every few seconds.
    pub(crate) fn pending_total(&self, now: EpochSecs) -> u64 {
        self.pending_per_app
            .keys()
            .map(|app| self.pending_for_app(app, now))
            .sum()
    }

    /// The UA's outstanding deliveries whose notification is deliverable at `now`, counted
    /// exactly only up to `enough`: below it, the size of its index is returned, which also
    /// holds expired deliveries until the purge; from it, the index is walked, so that only
    /// a UA at its quota pays for the walk.
    pub(crate) fn owed(&self, ua: &UaId, now: EpochSecs, enough: u64) -> u64 {
        let Some(owed) = self.outstanding.get(ua) else {
            return 0;
        };
        let bound = owed.len() as u64;
        if bound < enough {
            return bound;
        }
        owed.iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.is_deliverable(&r.head, now))
            .take(usize::try_from(enough).unwrap_or(usize::MAX))
            .count() as u64
    }

    /// Whether a stored notification counts toward its app's quota (expiry aside): not
    /// replaced, and not routed yet or owed to some UA.
    fn counted(&self, id: &MessageId) -> Option<Counted> {
        let r = self.notifications.get(id)?;
        let owed = !r.state.routed || self.owed_per_notification.contains_key(id);
        (!r.state.replaced && owed).then(|| (r.head.app_token.clone(), r.head.expires_at))
    }

    /// Keeps the per-app counts: `before` holds whether each notification the changes
    /// touched counted before they were applied.
    fn count_pending(&mut self, before: HashMap<MessageId, Option<Counted>>) {
        for (id, was) in before {
            let is = self.counted(&id);
            if was == is {
                continue;
            }
            if let Some((app, expiry)) = was {
                if let Some(pending) = self.pending_per_app.get_mut(&app) {
                    pending.total = pending.total.saturating_sub(1);
                    if let Some(n) = pending.by_expiry.get_mut(&expiry) {
                        *n -= 1;
                        if *n == 0 {
                            pending.by_expiry.remove(&expiry);
                        }
                    }
                    if pending.total == 0 {
                        self.pending_per_app.remove(&app);
                    }
                }
            }
            if let Some((app, expiry)) = is {
                let pending = self.pending_per_app.entry(app).or_default();
                pending.total += 1;
                *pending.by_expiry.entry(expiry).or_default() += 1;
            }
        }
    }
}
