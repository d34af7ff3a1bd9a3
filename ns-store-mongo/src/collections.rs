//! The collections and the commands run on them: indexes, the writes of a batch, the purge.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use common::delivery::{DeliveryStatus, DeliveryUpdate};
use common::model::{EpochSecs, MessageId, UaId};
use common::notification::Notification;
use common::purge::Retention;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use ns_store::{Added, StoreError, StoreResult};

use crate::documents::*;
use crate::rules::*;
use crate::IN_CHUNK;

/// The server's code for a duplicate key.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// The server's error code for dropping an index that is not there.
pub(crate) const INDEX_NOT_FOUND: i32 = 27;

/// Indexes of `notifications` made by earlier versions and since replaced by the one on
/// `app_id` and `created_at`: each one would cost every insert an index write.
pub(crate) const OBSOLETE_NOTIFICATION_INDEXES: [&str; 2] =
    ["app_token_1_id_1_created_at_1", "app_id_1"];

#[derive(Clone, Debug)]
pub(crate) struct Collections {
    pub(crate) db: Database,
    pub(crate) uas: Collection<UaDoc>,
    pub(crate) apps: Collection<AppDoc>,
    pub(crate) registrations: Collection<RegistrationDoc>,
    pub(crate) notifications: Collection<NotificationDoc>,
    pub(crate) deliveries: Collection<DeliveryDoc>,
}

/// A notification write handed to the notification writer, with the time it was made at.
#[derive(Debug)]
pub(crate) enum NotificationWrite {
    Insert {
        n: Notification,
        now: EpochSecs,
    },
    Route {
        n: Notification,
        uas: Vec<UaId>,
        now: EpochSecs,
        max_pending: Option<u64>,
    },
}

/// One [`Store::record_deliveries`] call handed to the delivery writer.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) updates: Vec<DeliveryUpdate>,
    pub(crate) now: EpochSecs,
}

impl Collections {
    pub(crate) async fn create_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = || {
            IndexOptions::builder()
                .expire_after(Duration::from_secs(0))
                .build()
        };
        self.registrations
            .create_indexes([index(doc! { "app_token": 1 }), index(doc! { "ua": 1 })])
            .await?;
        self.notifications
            .create_indexes([
                // The replacing in `insert_notifications`, and `status` (the newest).
                index(doc! { "app_id": 1, "created_at": 1 }),
                // `unrouted`.
                index(doc! { "routed": 1, "created_at": 1 }),
                // `pending_for_app`: the notifications of an app not routed yet.
                index(doc! { "app_token": 1, "routed": 1, "replaced": 1, "expires_at": 1 }),
                // Expiry by the server, and the expired ones `purge` looks for.
                IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(ttl())
                    .build(),
                // The notifications `purge` has to check for being spent. Sparse: only the
                // few flagged ones have the field, so the others cost nothing here.
                IndexModel::builder()
                    .keys(doc! { "spent_check": 1 })
                    .options(IndexOptions::builder().sparse(true).build())
                    .build(),
            ])
            .await?;
        drop_indexes(&self.notifications, &OBSOLETE_NOTIFICATION_INDEXES).await?;
        self.deliveries
            .create_indexes([
                // `outstanding`, and what a UA is owed when routing checks its quota.
                index(doc! { "ua": 1, "status": 1, "created_at": 1 }),
                // `pending_for_app`: the notifications an app is still owed to some UA.
                index(doc! { "app_token": 1, "status": 1, "expire_at": 1 }),
                // `status`, and the deliveries of replaced, spent or purged notifications.
                index(doc! { "message_id": 1 }),
                // Expiry by the server, with the notifications.
                IndexModel::builder()
                    .keys(doc! { "expire_at": 1 })
                    .options(ttl())
                    .build(),
                // The acked deliveries past their retention that `purge` removes.
                index(doc! { "status": 1, "at": 1 }),
            ])
            .await?;
        Ok(())
    }

    /// Writes a batch of notification writes: the inserts first, then the routings, as if the
    /// inserts had come first. Returns, for each write, what it did (a routing of a missing or
    /// replaced notification does nothing) or why it failed.
    pub(crate) async fn apply_notification_writes(
        &self,
        writes: Vec<NotificationWrite>,
    ) -> Vec<mongodb::error::Result<Added>> {
        let mut results: Vec<mongodb::error::Result<Added>> =
            vec![Ok(Added::to_all()); writes.len()];
        let mut inserts = Vec::new();
        let mut insert_pos = Vec::new();
        let mut routes = Vec::new();
        let mut route_pos = Vec::new();
        for (pos, w) in writes.iter().enumerate() {
            match w {
                NotificationWrite::Insert { n, now } => {
                    inserts.push((n, *now));
                    insert_pos.push(pos);
                }
                NotificationWrite::Route {
                    n,
                    uas,
                    now,
                    max_pending,
                } => {
                    routes.push((n, uas.as_slice(), *now, *max_pending));
                    route_pos.push(pos);
                }
            }
        }
        if !inserts.is_empty() {
            match self.insert_notifications(&inserts).await {
                Ok(failed) => {
                    for (k, e) in failed {
                        results[insert_pos[k]] = Err(e);
                    }
                }
                Err(e) => {
                    for &pos in &insert_pos {
                        results[pos] = Err(e.clone());
                    }
                }
            }
        }
        if !routes.is_empty() {
            match self.route_notifications(&routes).await {
                Ok(outcomes) => {
                    for (k, outcome) in outcomes.into_iter().enumerate() {
                        results[route_pos[k]] = outcome;
                    }
                }
                Err(e) => {
                    for &pos in &route_pos {
                        results[pos] = Err(e.clone());
                    }
                }
            }
        }
        results
    }

    /// Stores notifications, then marks replaced every one [`superseded`] by another with its
    /// app and AS id, among both the stored ones and the new ones. Returns the positions of the
    /// notifications that could not be stored, with the error.
    pub(crate) async fn insert_notifications(
        &self,
        ns: &[(&Notification, EpochSecs)],
    ) -> mongodb::error::Result<HashMap<usize, mongodb::error::Error>> {
        let docs = ns
            .iter()
            .map(|(n, _)| NotificationDoc::from_notification(n));
        // Unordered, so that a notification stored already (a broker message handled twice)
        // only fails itself, with a duplicate key. Its replacing below runs again, since it may
        // not have run the first time.
        let failed = match self.notifications.insert_many(docs).ordered(false).await {
            Ok(_) => HashMap::new(),
            Err(e) => failed_inserts(e)?,
        };

        // The replacing an insert causes happens at its `now`; of several inserts with the
        // same app and AS id in one batch, at the latest one's.
        let mut replaced_at: HashMap<String, EpochSecs> = HashMap::new();
        for (k, (n, now)) in ns.iter().enumerate() {
            if !failed.contains_key(&k) {
                let at = replaced_at.entry(app_id(&n.app_token, &n.id)).or_default();
                *at = (*at).max(*now);
            }
        }
        let keys: Vec<&str> = replaced_at.keys().map(String::as_str).collect();
        let mut replaced: BTreeMap<EpochSecs, Vec<MessageId>> = BTreeMap::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let same: Vec<NotificationKey> = self
                .notifications
                .clone_with_type::<NotificationKey>()
                .find(doc! { "app_id": { "$in": chunk } })
                .projection(doc! { "_id": 1, "app_id": 1, "created_at": 1, "replaced": 1 })
                .await?
                .try_collect()
                .await?;
            for (at, ids) in replacements(same, &replaced_at) {
                replaced.entry(at).or_default().extend(ids);
            }
        }
        for (at, ids) in replaced {
            self.mark_replaced(&ids, at).await?;
        }
        Ok(failed)
    }

    /// Marks these notifications replaced, and their deliveries that may still become
    /// replaced, at `at`.
    pub(crate) async fn mark_replaced(
        &self,
        message_ids: &[MessageId],
        at: EpochSecs,
    ) -> mongodb::error::Result<()> {
        for chunk in message_ids.chunks(IN_CHUNK) {
            let chunk = strs(chunk);
            self.notifications
                .update_many(
                    doc! { "_id": { "$in": &chunk } },
                    doc! { "$set": { "replaced": true } },
                )
                .await?;
            self.deliveries
                .update_many(
                    doc! {
                        "message_id": { "$in": &chunk },
                        "status": may_become(DeliveryStatus::Replaced),
                    },
                    doc! { "$set": {
                        "status": DeliveryStatus::Replaced.as_str(),
                        "at": at.as_i64(),
                    } },
                )
                .await?;
        }
        Ok(())
    }

    /// Creates the deliveries of the notifications that are stored and still need routing,
    /// each at its routing's `now`, then marks those routed. Returns, for each routing, what
    /// it did, or why its deliveries could not be stored.
    ///
    /// Which deliveries are made, `pending` or `rejected` for a UA at its routing's quota, is
    /// [`choose_deliveries`]'s, from the deliveries of these notifications already there and,
    /// for the UAs with none yet under a quota, how many each is owed: one query of each kind
    /// (per `$in` chunk) for the whole batch.
    ///
    /// Routed is marked last, so that a crash in between leaves the notification to the
    /// recovery of unrouted ones rather than half routed for good. Whether a notification is
    /// still there and not replaced is learnt from that marking, which only matches ones that
    /// need routing, rather than asked first: almost every notification does, and asking
    /// would cost a read per notification. The rare others are then looked up, and the
    /// deliveries just made for them removed. This also covers a notification replaced while
    /// it is being routed: its pending deliveries can only have been made after the
    /// replacing, which marked the ones before it replaced.
    ///
    /// A notification routed to nobody is flagged for the purge's spent check as it is
    /// marked routed: it has no delivery, and won't get one.
    pub(crate) async fn route_notifications(
        &self,
        routes: &[(&Notification, &[UaId], EpochSecs, Option<u64>)],
    ) -> mongodb::error::Result<Vec<mongodb::error::Result<Added>>> {
        let existing = self.delivery_states(routes).await?;
        let owed = self.owed(routes, &existing).await?;
        let routings: Vec<Routing<'_>> = routes
            .iter()
            .map(|(n, uas, _, max)| (&n.message_id, *uas, *max))
            .collect();
        let chosen = choose_deliveries(&routings, &existing, &owed);

        let mut docs = Vec::new();
        // For each delivery document, the position of its routing.
        let mut owners = Vec::new();
        // The rejected deliveries made, by notification: removed with the pending ones
        // should the notification turn out not to be live.
        let mut rejected: HashMap<&str, Vec<String>> = HashMap::new();
        for (k, ((n, _, now, _), chosen)) in routes.iter().zip(&chosen).enumerate() {
            for (ua, status) in &chosen.create {
                let key = delivery_key(&n.message_id, ua);
                if *status == DeliveryStatus::Rejected {
                    rejected
                        .entry(n.message_id.as_str())
                        .or_default()
                        .push(key.clone());
                }
                owners.push(k);
                docs.push(DeliveryDoc {
                    key,
                    message_id: n.message_id.clone(),
                    app_token: Some(n.app_token.clone()),
                    ua: ua.clone(),
                    status: *status,
                    at: *now,
                    created_at: n.created_at,
                    expire_at: date(n.expires_at),
                });
            }
        }
        let mut outcomes: Vec<mongodb::error::Result<Added>> = chosen
            .into_iter()
            .map(|c| {
                Ok(Added {
                    routed: true,
                    refused: c.refused,
                    settled: c.settled,
                })
            })
            .collect();
        if !docs.is_empty() {
            // Unordered, so that deliveries already there (a message handled twice) only fail
            // themselves, with a duplicate key, and leave them as they are.
            if let Err(e) = self.deliveries.insert_many(docs).ordered(false).await {
                for (d, e) in failed_inserts(e)? {
                    // Every routing of the notification failed: whichever of them the failed
                    // delivery came from, the notification is not fully routed.
                    let message_id = &routes[owners[d]].0.message_id;
                    for (k, (n, _, _, _)) in routes.iter().enumerate() {
                        if &n.message_id == message_id {
                            outcomes[k] = Err(e.clone());
                        }
                    }
                }
            }
        }

        let mut to_some: BTreeSet<&str> = BTreeSet::new();
        let mut to_nobody: BTreeSet<&str> = BTreeSet::new();
        for ((n, uas, _, _), outcome) in routes.iter().zip(&outcomes) {
            if outcome.is_ok() {
                if uas.is_empty() {
                    to_nobody.insert(n.message_id.as_str());
                } else {
                    to_some.insert(n.message_id.as_str());
                }
            }
        }
        // Routed both to nobody and to some UAs in one batch (a message handled twice with
        // different UAs): flagged; the purge's check then finds its deliveries.
        to_some.retain(|id| !to_nobody.contains(id));
        let mut not_live: HashSet<String> = HashSet::new();
        for (ids, set) in [
            (to_some, doc! { "routed": true }),
            (to_nobody, doc! { "routed": true, "spent_check": true }),
        ] {
            let ids: Vec<&str> = ids.into_iter().collect();
            for chunk in ids.chunks(IN_CHUNK) {
                let marked = self
                    .notifications
                    .update_many(
                        with(doc! { "_id": { "$in": chunk } }, &needs_routing()),
                        doc! { "$set": set.clone() },
                    )
                    .await?;
                if marked.matched_count < chunk.len() as u64 {
                    // Replaced, gone, or routed already (a broker message handled twice).
                    not_live.extend(self.settle_not_live(chunk).await?);
                }
            }
        }
        let made: Vec<&str> = not_live
            .iter()
            .filter_map(|id| rejected.get(id.as_str()))
            .flatten()
            .map(String::as_str)
            .collect();
        for chunk in made.chunks(IN_CHUNK) {
            self.deliveries
                .delete_many(doc! { "_id": { "$in": chunk } })
                .await?;
        }
        for ((n, _, _, _), outcome) in routes.iter().zip(outcomes.iter_mut()) {
            if outcome.is_ok() && not_live.contains(n.message_id.as_str()) {
                *outcome = Ok(Added::default());
            }
        }
        Ok(outcomes)
    }

    /// The states of the deliveries these routings' notifications have already (a message
    /// handled twice), by notification and UA; served by the index on `message_id`.
    async fn delivery_states(
        &self,
        routes: &[(&Notification, &[UaId], EpochSecs, Option<u64>)],
    ) -> mongodb::error::Result<HashMap<(MessageId, UaId), DeliveryStatus>> {
        let ids: BTreeSet<&str> = routes
            .iter()
            .filter(|(_, uas, _, _)| !uas.is_empty())
            .map(|(n, _, _, _)| n.message_id.as_str())
            .collect();
        let ids: Vec<&str> = ids.into_iter().collect();
        let mut states = HashMap::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let found: Vec<DeliveryState> = self
                .deliveries
                .clone_with_type::<DeliveryState>()
                .find(doc! { "message_id": { "$in": chunk } })
                .projection(doc! { "_id": 0, "message_id": 1, "ua": 1, "status": 1 })
                .await?
                .try_collect()
                .await?;
            states.extend(found.into_iter().map(|d| ((d.message_id, d.ua), d.status)));
        }
        Ok(states)
    }

    /// How many outstanding deliveries, of notifications not expired, each UA has that a
    /// routing with a quota may give a new delivery: one aggregate on the index on `ua` and
    /// `status` (per `$in` chunk). Replaced ones are left out by their state.
    async fn owed(
        &self,
        routes: &[(&Notification, &[UaId], EpochSecs, Option<u64>)],
        existing: &HashMap<(MessageId, UaId), DeliveryStatus>,
    ) -> mongodb::error::Result<HashMap<UaId, u64>> {
        let mut uas: BTreeSet<&UaId> = BTreeSet::new();
        let mut now: Option<EpochSecs> = None;
        for (n, route_uas, at, max) in routes {
            if max.is_none() {
                continue;
            }
            for ua in *route_uas {
                if !existing.contains_key(&(n.message_id.clone(), ua.clone())) {
                    uas.insert(ua);
                }
            }
            // The earliest time of the batch: what expires in between still counts.
            now = Some(now.map_or(*at, |t| t.min(*at)));
        }
        let Some(now) = now else {
            return Ok(HashMap::new());
        };
        let uas: Vec<&str> = uas.into_iter().map(UaId::as_str).collect();
        let mut owed = HashMap::new();
        for chunk in uas.chunks(IN_CHUNK) {
            let counts: Vec<Owed> = self
                .deliveries
                .aggregate([
                    doc! { "$match": {
                        "ua": { "$in": chunk },
                        "status": outstanding_statuses(),
                        "expire_at": { "$gt": date(now) },
                    } },
                    doc! { "$group": { "_id": "$ua", "owed": { "$sum": 1 } } },
                ])
                .with_type::<Owed>()
                .await?
                .try_collect()
                .await?;
            owed.extend(
                counts
                    .into_iter()
                    .map(|c| (c.ua, u64::try_from(c.owed).unwrap_or(0))),
            );
        }
        Ok(owed)
    }

    /// Of these notifications (at most `IN_CHUNK`), finds the ones replaced or no longer
    /// stored, removes the deliveries routing just made for them, and returns their ids.
    pub(crate) async fn settle_not_live(
        &self,
        ids: &[&str],
    ) -> mongodb::error::Result<Vec<String>> {
        let found: HashMap<MessageId, bool> = self
            .notifications
            .clone_with_type::<Liveness>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1, "replaced": 1 })
            .await?
            .try_collect::<Vec<Liveness>>()
            .await?
            .into_iter()
            .map(|k| (k.id, k.replaced))
            .collect();
        let mut replaced = Vec::new();
        let mut gone = Vec::new();
        for &id in ids {
            match found.get(id) {
                Some(true) => replaced.push(id.to_owned()),
                Some(false) => {}
                None => gone.push(id.to_owned()),
            }
        }
        if !replaced.is_empty() {
            self.deliveries
                .delete_many(doc! {
                    "message_id": { "$in": &replaced },
                    "status": DeliveryStatus::Pending.as_str(),
                })
                .await?;
        }
        if !gone.is_empty() {
            self.deliveries
                .delete_many(doc! { "message_id": { "$in": &gone } })
                .await?;
        }
        replaced.extend(gone);
        Ok(replaced)
    }

    /// Writes folded delivery changes in order, each only to deliveries that may become its
    /// state. Returns how many deliveries changed.
    pub(crate) async fn write_states(&self, writes: &[StateWrite]) -> mongodb::error::Result<u64> {
        let mut changed = 0;
        for w in writes {
            for chunk in w.keys.chunks(IN_CHUNK) {
                changed += self
                    .deliveries
                    .update_many(
                        doc! { "_id": { "$in": chunk }, "status": may_become(w.status) },
                        doc! { "$set": { "status": w.status.as_str(), "at": w.at.as_i64() } },
                    )
                    .await?
                    .modified_count;
            }
        }
        Ok(changed)
    }

    /// Writes the delivery changes of a batch of [`Store::record_deliveries`] calls together.
    pub(crate) async fn record_deliveries(
        &self,
        batch: Vec<Recorded>,
    ) -> Vec<mongodb::error::Result<()>> {
        let writes = fold_deliveries(batch.iter().map(|r| (r.updates.as_slice(), r.now)));
        let result = self.write_states(&writes).await.map(|_| ());
        vec![result; batch.len()]
    }

    /// Removes notifications expired at `now` and their deliveries, a bounded page at a time.
    pub(crate) async fn purge_expired(&self, now: EpochSecs) -> mongodb::error::Result<u64> {
        let mut removed = 0;
        loop {
            let page: Vec<IdOnly> = self
                .notifications
                .clone_with_type::<IdOnly>()
                .find(expired(now))
                .projection(doc! { "_id": 1 })
                .limit(IN_CHUNK as i64)
                .await?
                .try_collect()
                .await?;
            let ids: Vec<MessageId> = page.into_iter().map(|d| d.id).collect();
            if ids.is_empty() {
                break;
            }
            let deleted = self.remove_notifications(&ids).await?;
            removed += deleted.0 + deleted.1;
            // A short page was the last one; and should nothing go (a server that reports
            // otherwise), stopping is better than asking for the same page for ever.
            if ids.len() < IN_CHUNK || deleted.1 == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Removes notifications (at most `IN_CHUNK`) with their deliveries. Deliveries first:
    /// should this fail halfway, the notifications are still there to lead the next purge to
    /// them. Returns how many deliveries and how many notifications went.
    pub(crate) async fn remove_notifications(
        &self,
        ids: &[MessageId],
    ) -> mongodb::error::Result<(u64, u64)> {
        let ids = strs(ids);
        let deliveries = self
            .deliveries
            .delete_many(doc! { "message_id": { "$in": &ids } })
            .await?
            .deleted_count;
        let notifications = self
            .notifications
            .delete_many(doc! { "_id": { "$in": &ids } })
            .await?
            .deleted_count;
        Ok((deliveries, notifications))
    }

    /// Removes the deliveries past their retention, a bounded page at a time, flagging their
    /// notifications for the spent check first, so that a failure in between leaves a flag
    /// too many (cleared by the check) rather than one too few.
    pub(crate) async fn purge_spent_deliveries(
        &self,
        retention: Retention,
        now: EpochSecs,
    ) -> mongodb::error::Result<u64> {
        let mut removed = 0;
        loop {
            let page: Vec<DeliveryRef> = self
                .deliveries
                .clone_with_type::<DeliveryRef>()
                .find(spent_deliveries(retention, now))
                .projection(doc! { "_id": 1, "message_id": 1 })
                .limit(IN_CHUNK as i64)
                .await?
                .try_collect()
                .await?;
            if page.is_empty() {
                break;
            }
            let notifications: BTreeSet<&str> =
                page.iter().map(|d| d.message_id.as_str()).collect();
            let notifications: Vec<&str> = notifications.into_iter().collect();
            self.notifications
                .update_many(
                    doc! { "_id": { "$in": notifications } },
                    doc! { "$set": { "spent_check": true } },
                )
                .await?;
            let keys: Vec<&str> = page.iter().map(|d| d.key.as_str()).collect();
            let deleted = self
                .deliveries
                .delete_many(doc! { "_id": { "$in": keys } })
                .await?
                .deleted_count;
            removed += deleted;
            if page.len() < IN_CHUNK || deleted == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Removes the spent notifications among those flagged for a check
    /// ([`notification_is_spent`]), with whatever deliveries they still have, and clears the
    /// flag on the others; a bounded page at a time.
    ///
    /// A notification can become routed with nothing left in two ways only: routed to nobody,
    /// or its last deliveries removed by the purge (the TTL index removes deliveries only with
    /// their notification). Both set `spent_check`, so the purge looks at those notifications
    /// alone, through a sparse index, instead of counting the deliveries of every notification
    /// each time. A flag cleared by one purge while another instance's purge removes the last
    /// deliveries can leave a spent notification unflagged: it then stays until it expires,
    /// as it would have without this check.
    pub(crate) async fn purge_spent(&self, now: EpochSecs) -> StoreResult<u64> {
        let mut removed = 0;
        loop {
            let flagged: Vec<NotificationDoc> = self
                .notifications
                .find(doc! { "spent_check": true })
                .limit(IN_CHUNK as i64)
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            if flagged.is_empty() {
                break;
            }
            let page = flagged.len();
            let ids: Vec<&str> = flagged.iter().map(|d| d.message_id.as_str()).collect();
            let counts: Vec<DeliveriesLeft> = self
                .deliveries
                .aggregate([
                    doc! { "$match": { "message_id": { "$in": ids } } },
                    doc! { "$group": { "_id": "$message_id", "left": { "$sum": 1 } } },
                ])
                .with_type::<DeliveriesLeft>()
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            let left: HashMap<MessageId, usize> = counts
                .into_iter()
                .map(|c| (c.message_id, usize::try_from(c.left).unwrap_or(usize::MAX)))
                .collect();
            let (spent, kept) = split_spent(flagged, &left, now)?;
            let mut progress = 0;
            if !spent.is_empty() {
                let (deliveries, notifications) =
                    self.remove_notifications(&spent).await.map_err(db_err)?;
                removed += deliveries + notifications;
                progress += notifications;
            }
            if !kept.is_empty() {
                progress += self
                    .notifications
                    .update_many(
                        doc! { "_id": { "$in": strs(&kept) } },
                        doc! { "$unset": { "spent_check": "" } },
                    )
                    .await
                    .map_err(db_err)?
                    .modified_count;
            }
            if page < IN_CHUNK || progress == 0 {
                break;
            }
        }
        Ok(removed)
    }
}

pub(crate) fn index(keys: Document) -> IndexModel {
    IndexModel::builder().keys(keys).build()
}

/// Drops these indexes of `coll` where they exist.
pub(crate) async fn drop_indexes<T: Send + Sync>(
    coll: &Collection<T>,
    obsolete: &[&str],
) -> mongodb::error::Result<()> {
    let names = coll.list_index_names().await?;
    for name in obsolete {
        if names.iter().any(|n| n == name) {
            match coll.drop_index(*name).await {
                // Another instance starting at the same time dropped it first.
                Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) => {
                }
                other => other?,
            }
        }
    }
    Ok(())
}

/// Maps a driver error: documents that don't read back, or can't be written as documents,
/// are corrupt; anything else means the database is not answering as it should.
pub(crate) fn db_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::BsonDeserialization(_) => StoreError::corrupt("a stored document", e),
        ErrorKind::BsonSerialization(_) => StoreError::corrupt("a document to store", e),
        _ => StoreError::unavailable(e),
    }
}

/// True when the write failed only because the document was already there. Plain writes
/// report it as a write error, `findAndModify` as a command error.
pub(crate) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Sorts out an unordered `insert_many` that failed: documents that were already there are
/// fine (the writes are idempotent), and a document that failed otherwise fails only itself, so
/// that one bad notification can't fail the others of its batch again and again. Returns the
/// positions of those documents with the error; the error itself when the whole command failed.
pub(crate) fn failed_inserts(
    e: mongodb::error::Error,
) -> mongodb::error::Result<HashMap<usize, mongodb::error::Error>> {
    match &*e.kind {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            write_concern_error: None,
            ..
        }) => Ok(errors
            .iter()
            .filter(|w| w.code != DUPLICATE_KEY)
            .map(|w| (w.index, e.clone()))
            .collect()),
        _ => Err(e),
    }
}
