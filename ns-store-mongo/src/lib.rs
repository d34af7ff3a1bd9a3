//! The MongoDB implementation of [`Store`], used in the distributed mode.
//!
//! Five collections with flat documents: `uas`, `apps`, `registrations`, `notifications` and
//! `deliveries` (one document per notification and UA). Every query of the hot path is led by
//! a field with an index created in [`MongoStore::connect`].
//!
//! Writes that many callers make at once go through writer tasks that group them into a few
//! commands per batch, because a write command has a fixed cost on the server (about 5 ms on
//! an on-disk SecantusDB) that per-call writes would pay once per notification: one task for
//! new notifications and their routing, one for [`Store::record_deliveries`].
//!
//! The rules of what is kept live in `common`; this store translates them into queries:
//! delivery changes are filtered on [`DeliveryStatus::sources_of`], replacement picks with
//! [`superseded`], the notification filters are derived from [`NotificationState`]'s rules,
//! reports are built by [`StatusReport::assemble`], and the purge removes what
//! [`common::purge`] condemns. A TTL index on `expire_at` (the notification's expiry, on the
//! notification and on each of its deliveries) lets the server apply the expiry rule by
//! itself between purges; everything else is [`Store::purge`]'s.

mod collections;
mod documents;
mod rules;
mod writer;

use std::time::Duration;

use async_trait::async_trait;
use common::delivery::{DeliveryRecord, DeliveryUpdate, StatusReport};
use common::model::{App, AppToken, EpochSecs, Live, MessageId, UaId, UaRoute};
use common::notification::Notification;
use common::purge::Retention;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, ReturnDocument, WriteConcern};
use mongodb::Client;
use ns_store::{Added, OwedCount, Store, StoreError, StoreResult};

use collections::{db_err, is_duplicate, Collections, NotificationWrite, Recorded};
use documents::*;
use rules::*;
use writer::Writer;

/// How long a call waits for a usable server before it fails, so that callers answer 503
/// quickly instead of hanging while the database is down.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// The most values put in one `$in`. It keeps commands far below the 16 MB BSON limit, and
/// SecantusDB matches `$in` in time proportional to the list for every candidate document, so
/// longer lists cost it quadratically.
pub(crate) const IN_CHUNK: usize = 100;

/// The most notification writes (inserts and routings) grouped into one batch.
const WRITE_BATCH: usize = 512;

/// The most [`Store::record_deliveries`] calls grouped into one batch.
const DELIVERY_BATCH: usize = 2048;

/// A [`Store`] on a MongoDB database (or any server speaking its wire protocol).
///
/// Clones share the connection pool and the writer tasks.
#[derive(Clone, Debug)]
pub struct MongoStore {
    c: Collections,
    notification_writer: Writer<NotificationWrite, Added>,
    delivery_writer: Writer<Recorded, ()>,
}

impl MongoStore {
    /// The notifications owed at `now`: of one app ([`Store::pending_for_app`]), or of all.
    async fn pending(&self, app_token: Option<&AppToken>, now: EpochSecs) -> StoreResult<u64> {
        let app = match app_token {
            Some(app_token) => doc! { "app_token": app_token.as_str() },
            None => doc! {},
        };
        // Not routed yet: on the index on `app_token`, `routed`, `replaced` and `expires_at`,
        // equalities first for a server that plans on one clause (SecantusDB).
        let filter = with(app.clone(), &with(needs_routing(), &unexpired(now)));
        let unrouted = self
            .c
            .notifications
            .count_documents(filter)
            .await
            .map_err(db_err)?;
        // Routed and owed to some UA: its distinct notifications among the app's outstanding
        // deliveries, on the index on `app_token`, `status` and `expire_at`. A replaced
        // notification's deliveries are replaced too, so not outstanding.
        let owed: Vec<Document> = self
            .c
            .deliveries
            .aggregate([
                doc! { "$match": with(app, &doc! {
                    "status": outstanding_statuses(),
                    "expire_at": { "$gt": date(now) },
                }) },
                doc! { "$group": { "_id": "$message_id" } },
                doc! { "$group": { "_id": null, "n": { "$sum": 1 } } },
            ])
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        let owed = owed
            .first()
            .and_then(|d| d.get("n"))
            .and_then(|n| n.as_i32().map(i64::from).or_else(|| n.as_i64()))
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        Ok(unrouted + owed)
    }

    /// The message ids of the UA's outstanding deliveries, whatever their notification's state.
    async fn owed_ids(&self, ua: &UaId) -> StoreResult<Vec<MessageId>> {
        let refs: Vec<MessageRef> = self
            .c
            .deliveries
            .clone_with_type::<MessageRef>()
            .find(doc! { "ua": ua.as_str(), "status": outstanding_statuses() })
            .projection(doc! { "_id": 0, "message_id": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        Ok(refs.into_iter().map(|r| r.message_id).collect())
    }

    /// The status report of `n` from its deliveries.
    async fn report_of(&self, n: Notification, now: EpochSecs) -> StoreResult<StatusReport> {
        let docs: Vec<DeliveryDoc> = self
            .c
            .deliveries
            .find(doc! { "message_id": n.message_id.as_str() })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        let rows = docs.into_iter().map(|d| {
            let record = DeliveryRecord {
                status: d.status,
                at: d.at,
            };
            (d.ua, record)
        });
        Ok(StatusReport::assemble(&n.head(), rows, now))
    }

    /// Connects to `url`, uses database `db` and creates the indexes the queries rely on.
    ///
    /// The driver reconnects by itself after the server comes back, so a store made here
    /// stays usable for the life of the process.
    pub async fn connect(url: &str, db: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(db_err)?;
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        }
        if options.app_name.is_none() {
            options.app_name = Some("notification-server".to_owned());
        }
        // A notification is answered 200 once stored: stored means in the journal, so that
        // a crash of the database loses nothing acknowledged. A URL that says otherwise
        // (`w=majority`, `journal=false`, ...) is followed.
        if options.write_concern.is_none() {
            options.write_concern = Some(WriteConcern::builder().journal(true).build());
        }
        let client = Client::with_options(options).map_err(db_err)?;
        let db = client.database(db);
        let c = Collections {
            uas: db.collection("uas"),
            apps: db.collection("apps"),
            registrations: db.collection("registrations"),
            notifications: db.collection("notifications"),
            deliveries: db.collection("deliveries"),
            db,
        };
        c.create_indexes().await.map_err(db_err)?;
        let notification_writer = {
            let c = c.clone();
            Writer::spawn("notification writes", WRITE_BATCH, move |writes| {
                let c = c.clone();
                async move { c.apply_notification_writes(writes).await }
            })
        };
        // Delivery states have a writer of their own rather than sharing the notifications':
        // they come from other callers (the front-ends, where notifications come from ns-as
        // and the monitor), never need ordering with notification writes (a delivery is sent
        // only once its routing returned), and touch other documents; sharing one task would
        // make each kind wait behind the other's batches and split batches of one kind.
        let delivery_writer = {
            let c = c.clone();
            Writer::spawn("delivery state writes", DELIVERY_BATCH, move |batch| {
                let c = c.clone();
                async move { c.record_deliveries(batch).await }
            })
        };
        Ok(MongoStore {
            c,
            notification_writer,
            delivery_writer,
        })
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.c
            .db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>> {
        let replacement = UaDoc::from_route(route);
        let filter = doc! { "_id": route.ua.as_str() };
        let replace = || {
            self.c
                .uas
                .find_one_and_replace(filter.clone(), &replacement)
                .upsert(true)
                .return_document(ReturnDocument::Before)
        };
        // Two upserts of a new UA racing each other can both try to insert; the loser gets a
        // duplicate key and succeeds on a second try, which finds the winner's document.
        let before = match replace().await {
            Err(e) if is_duplicate(&e) => replace().await,
            other => other,
        }
        .map_err(db_err)?;
        before.map(UaDoc::into_route).transpose()
    }

    async fn disconnect_ua(&self, ua: &UaId, live: &Live) -> StoreResult<()> {
        // The interface stays: a disconnected UA can still be woken up over UDP.
        self.c
            .uas
            .update_one(
                doc! {
                    "_id": ua.as_str(),
                    "node": live.node.as_str(),
                    "conn": live.conn.as_str(),
                },
                doc! { "$set": { "node": null, "conn": null } },
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        let mut routes = Vec::with_capacity(uas.len());
        for chunk in uas.chunks(IN_CHUNK) {
            let docs: Vec<UaDoc> = self
                .c
                .uas
                .find(doc! { "_id": { "$in": strs(chunk) } })
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            for d in docs {
                routes.push(d.into_route()?);
            }
        }
        Ok(routes)
    }

    async fn put_app(&self, app: &App) -> StoreResult<()> {
        let doc = AppDoc {
            app_token: app.app_token.clone(),
            pbk: app.pbk.clone(),
        };
        match self
            .c
            .apps
            .replace_one(doc! { "_id": app.app_token.as_str() }, &doc)
            .upsert(true)
            .await
        {
            // A concurrent upsert of the same app stored the same content.
            Err(e) if !is_duplicate(&e) => Err(db_err(e)),
            _ => Ok(()),
        }
    }

    async fn get_app(&self, app_token: &AppToken) -> StoreResult<Option<App>> {
        let doc = self
            .c
            .apps
            .find_one(doc! { "_id": app_token.as_str() })
            .await
            .map_err(db_err)?;
        Ok(doc.map(|d| App {
            app_token: d.app_token,
            pbk: d.pbk,
        }))
    }

    async fn register_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<()> {
        let key = registration_key(app_token, ua);
        let doc = RegistrationDoc {
            key: key.clone(),
            app_token: app_token.clone(),
            ua: ua.clone(),
        };
        match self
            .c
            .registrations
            .replace_one(doc! { "_id": &key }, &doc)
            .upsert(true)
            .await
        {
            // A concurrent registration of the same pair got there first: the same outcome.
            Err(e) if !is_duplicate(&e) => Err(db_err(e)),
            _ => Ok(()),
        }
    }

    async fn unregister_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<bool> {
        let result = self
            .c
            .registrations
            .delete_one(doc! { "_id": registration_key(app_token, ua) })
            .await
            .map_err(db_err)?;
        Ok(result.deleted_count > 0)
    }

    async fn ua_registrations(&self, ua: &UaId) -> StoreResult<u64> {
        // Served by the index on `ua`.
        self.c
            .registrations
            .count_documents(doc! { "ua": ua.as_str() })
            .await
            .map_err(db_err)
    }

    async fn app_uas(&self, app_token: &AppToken) -> StoreResult<Vec<UaId>> {
        let refs: Vec<UaRef> = self
            .c
            .registrations
            .clone_with_type::<UaRef>()
            .find(doc! { "app_token": app_token.as_str() })
            .projection(doc! { "_id": 0, "ua": 1 })
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        Ok(refs.into_iter().map(|r| r.ua).collect())
    }

    async fn insert_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<()> {
        self.notification_writer
            .write(NotificationWrite::Insert { n: n.clone(), now })
            .await
            .map(|_| ())
    }

    async fn pending_for_app(&self, app_token: &AppToken, now: EpochSecs) -> StoreResult<u64> {
        self.pending(Some(app_token), now).await
    }

    async fn pending_total(&self, now: EpochSecs) -> StoreResult<u64> {
        // Without an app, both counts walk their collections' outstanding part: the monitor
        // asks every few seconds, not on the hot path.
        self.pending(None, now).await
    }

    async fn add_deliveries(
        &self,
        n: &Notification,
        uas: &[UaId],
        now: EpochSecs,
        max_pending: Option<u64>,
    ) -> StoreResult<Added> {
        self.notification_writer
            .write(NotificationWrite::Route {
                n: n.clone(),
                uas: uas.to_vec(),
                now,
                max_pending,
            })
            .await
    }

    async fn unrouted(&self, now: EpochSecs, limit: usize) -> StoreResult<Vec<Notification>> {
        // A limit of 0 means "no limit" to the server.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<NotificationDoc> = self
            .c
            .notifications
            // The flags first: a server that plans on one clause (SecantusDB) takes the first
            // one it has an index for, here the one on `routed`.
            .find(with(needs_routing(), &unexpired(now)))
            .sort(doc! { "created_at": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        docs.into_iter()
            .map(NotificationDoc::into_notification)
            .collect()
    }

    async fn update_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: EpochSecs,
    ) -> StoreResult<u64> {
        // The same folding as a batch of `record_deliveries`, so both follow one rule. The
        // count is exact as long as a call gives each delivery one state (a sent superseded
        // by an ack aside), as every caller does: a delivery moved twice in one call, say
        // replaced then acked, would count twice.
        let writes = fold_deliveries([(updates, now)]);
        self.c.write_states(&writes).await.map_err(db_err)
    }

    async fn record_deliveries(
        &self,
        updates: Vec<DeliveryUpdate>,
        now: EpochSecs,
    ) -> StoreResult<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.delivery_writer.write(Recorded { updates, now }).await
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = self.owed_ids(ua).await?;
        // Each chunk yields its own oldest `limit`; merging them and cutting again gives the
        // overall oldest `limit`. There is a single chunk unless the UA owes thousands.
        let mut found = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let deliverable = with(
                with(doc! { "_id": { "$in": strs(chunk) } }, &deliverable()),
                &unexpired(now),
            );
            let docs: Vec<NotificationDoc> = self
                .c
                .notifications
                .find(deliverable)
                .sort(doc! { "created_at": 1, "_id": 1 })
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            found.extend(docs);
        }
        found.sort_by(|a, b| (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id)));
        found.truncate(limit);
        found
            .into_iter()
            .map(NotificationDoc::into_notification)
            .collect()
    }

    async fn owed_count(&self, ua: &UaId, now: EpochSecs) -> StoreResult<OwedCount> {
        let ids = self.owed_ids(ua).await?;
        let mut count = OwedCount::default();
        for chunk in ids.chunks(IN_CHUNK) {
            let deliverable = with(
                with(doc! { "_id": { "$in": strs(chunk) } }, &deliverable()),
                &unexpired(now),
            );
            let expiries: Vec<ExpiryRef> = self
                .c
                .notifications
                .clone_with_type::<ExpiryRef>()
                .find(deliverable)
                .projection(doc! { "_id": 0, "expires_at": 1 })
                .await
                .map_err(db_err)?
                .try_collect()
                .await
                .map_err(db_err)?;
            for e in expiries {
                count.pending += 1;
                count.next_expiry = Some(
                    count
                        .next_expiry
                        .map_or(e.expires_at, |at| at.min(e.expires_at)),
                );
            }
        }
        Ok(count)
    }

    async fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        // The newest by `Notification::recency`: creation time, then message id.
        let Some(n) = self
            .c
            .notifications
            .find_one(doc! { "app_id": app_id(app_token, id) })
            .sort(doc! { "created_at": -1, "_id": -1 })
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        self.report_of(n.into_notification()?, now).await.map(Some)
    }

    async fn report(
        &self,
        message_id: &MessageId,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        let found = self
            .c
            .notifications
            .find_one(doc! { "_id": message_id.as_str() })
            .await
            .map_err(db_err)?;
        match found {
            Some(n) => self.report_of(n.into_notification()?, now).await.map(Some),
            None => Ok(None),
        }
    }

    async fn withdraw(&self, message_id: &MessageId, now: EpochSecs) -> StoreResult<bool> {
        let found = self
            .c
            .notifications
            .clone_with_type::<IdOnly>()
            .find_one(doc! { "_id": message_id.as_str() })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(db_err)?;
        if found.is_none() {
            return Ok(false);
        }
        self.c
            .mark_replaced(std::slice::from_ref(message_id), now)
            .await
            .map_err(db_err)?;
        Ok(true)
    }

    async fn purge(&self, now: EpochSecs, retention: Retention) -> StoreResult<u64> {
        // Expired notifications first, as they take their deliveries with them and so spare
        // the next steps those.
        let mut removed = self.c.purge_expired(now).await.map_err(db_err)?;
        removed += self
            .c
            .purge_spent_deliveries(retention, now)
            .await
            .map_err(db_err)?;
        removed += self.c.purge_spent(now).await?;
        Ok(removed)
    }
}

/// The conformance suite of `ns-store`, one test per behaviour, each on a database of its
/// own on the server at `NS_TEST_MONGO_URL`.
#[cfg(test)]
mod conformance {
    use super::*;
    use ns_store::conformance::Fixture;

    struct MongoFixture {
        store: MongoStore,
    }

    #[async_trait]
    impl Fixture for MongoFixture {
        fn store(&self) -> &dyn Store {
            &self.store
        }

        async fn tear_down(self) {
            // The server is shared, so the database goes whatever the outcome; dropping it is
            // best effort, as a leftover only takes some space.
            if let Err(e) = self.store.c.db.drop().await {
                tracing::warn!(error = %e, "dropping the test database failed");
            }
        }
    }

    async fn fixture() -> MongoFixture {
        let url = std::env::var("NS_TEST_MONGO_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
        let db = format!("ns_test_{}", uuid::Uuid::new_v4().simple());
        let store = MongoStore::connect(&url, &db).await.expect("connect");
        MongoFixture { store }
    }

    ns_store::conformance_tests!(fixture);
}
