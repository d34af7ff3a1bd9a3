//! The in-memory indexes: what the tables hold, arranged for the queries, and changed only
//! by applying a group's committed changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::delivery::{DeliveryRecord, StatusReport};
use common::model::{AppToken, EpochMillis, EpochSecs, MessageId, UaId, UaRoute};
use common::notification::Notification;

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
}

fn order(n: &Notification) -> Order {
    (n.created_at, n.message_id.clone())
}

impl Mem {
    pub(crate) fn ua_registrations(&self, ua: &UaId) -> u64 {
        self.registered_per_ua.get(ua).copied().unwrap_or(0)
    }

    pub(crate) fn route(&self, ua: &UaId) -> Option<UaRoute> {
        self.uas.get(ua).map(|r| r.to_route(ua))
    }

    pub(crate) fn unrouted(&self, now: EpochSecs, limit: usize) -> Vec<Notification> {
        self.unrouted
            .iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.needs_routing() && !r.notification.is_expired(now))
            .take(limit)
            .map(|r| r.notification.clone())
            .collect()
    }

    pub(crate) fn outstanding(&self, ua: &UaId, now: EpochSecs, limit: usize) -> Vec<Notification> {
        let Some(owed) = self.outstanding.get(ua) else {
            return Vec::new();
        };
        owed.iter()
            .filter_map(|(_, id)| self.notifications.get(id))
            .filter(|r| r.state.is_deliverable(&r.notification, now))
            .take(limit)
            .map(|r| r.notification.clone())
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
        Some(StatusReport::assemble(&record.notification, rows, now))
    }

    /// Applies committed changes. Notifications are put first and removed last, so that a
    /// delivery always finds its notification's creation time to index it by.
    pub(crate) fn apply(&mut self, changes: Changes) {
        let Changes {
            uas,
            apps,
            registrations,
            notifications,
            deliveries,
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
    }

    fn put_notification(&mut self, record: NotificationRecord) {
        let key = order(&record.notification);
        let same = self
            .by_app_id
            .entry((
                record.notification.app_token.clone(),
                record.notification.id.clone(),
            ))
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
            .insert(record.notification.message_id.clone(), record);
    }

    fn set_delivery(&mut self, id: MessageId, ua: UaId, record: Option<DeliveryRecord>) {
        let created_at = self
            .notifications
            .get(&id)
            .map_or(EpochMillis(0), |r| r.notification.created_at);
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
        let n = &record.notification;
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
