//! [`Timed`]: a [`Store`] that times every operation of the store it wraps, into the
//! histogram `ns_store_operation_duration_seconds{operation}`, whichever backend it is.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use common::delivery::{DeliveryUpdate, StatusReport};
use common::model::{App, AppToken, EpochSecs, Live, MessageId, UaId, UaRoute};
use common::notification::Notification;
use common::purge::Retention;
use ns_runtime::metrics::{Histogram, Registry, LATENCY_BUCKETS};

use crate::{Added, Durable, OwedCount, Store, StoreResult};

/// The name of the histogram.
pub const OPERATION_DURATION: &str = "ns_store_operation_duration_seconds";

/// One histogram per operation, registered up front so that an observation is atomics only.
struct Ops {
    ping: Arc<Histogram>,
    register_ua: Arc<Histogram>,
    disconnect_ua: Arc<Histogram>,
    ua_routes: Arc<Histogram>,
    put_app: Arc<Histogram>,
    get_app: Arc<Histogram>,
    register_wa: Arc<Histogram>,
    unregister_wa: Arc<Histogram>,
    ua_registrations: Arc<Histogram>,
    app_uas: Arc<Histogram>,
    insert_notification: Arc<Histogram>,
    stage_notification: Arc<Histogram>,
    notification_durable: Arc<Histogram>,
    pending_for_app: Arc<Histogram>,
    pending_total: Arc<Histogram>,
    add_deliveries: Arc<Histogram>,
    unrouted: Arc<Histogram>,
    update_deliveries: Arc<Histogram>,
    record_deliveries: Arc<Histogram>,
    outstanding: Arc<Histogram>,
    owed_count: Arc<Histogram>,
    status: Arc<Histogram>,
    report: Arc<Histogram>,
    withdraw: Arc<Histogram>,
    purge: Arc<Histogram>,
}

/// Times each call of the wrapped store, failed ones included, from call to return.
pub struct Timed {
    inner: Arc<dyn Store>,
    ops: Ops,
}

impl Timed {
    /// `store`, timed into `registry`.
    pub fn wrap(store: Arc<dyn Store>, registry: &Registry) -> Arc<dyn Store> {
        let op = |name: &str| {
            registry.histogram(
                OPERATION_DURATION,
                "Time a store operation took, by operation (stage_notification: until \
                 visible; notification_durable: from then until durable).",
                &[("operation", name)],
                LATENCY_BUCKETS,
            )
        };
        let ops = Ops {
            ping: op("ping"),
            register_ua: op("register_ua"),
            disconnect_ua: op("disconnect_ua"),
            ua_routes: op("ua_routes"),
            put_app: op("put_app"),
            get_app: op("get_app"),
            register_wa: op("register_wa"),
            unregister_wa: op("unregister_wa"),
            ua_registrations: op("ua_registrations"),
            app_uas: op("app_uas"),
            insert_notification: op("insert_notification"),
            stage_notification: op("stage_notification"),
            notification_durable: op("notification_durable"),
            pending_for_app: op("pending_for_app"),
            pending_total: op("pending_total"),
            add_deliveries: op("add_deliveries"),
            unrouted: op("unrouted"),
            update_deliveries: op("update_deliveries"),
            record_deliveries: op("record_deliveries"),
            outstanding: op("outstanding"),
            owed_count: op("owed_count"),
            status: op("status"),
            report: op("report"),
            withdraw: op("withdraw"),
            purge: op("purge"),
        };
        Arc::new(Timed { inner: store, ops })
    }
}

/// Runs `call`, observing its time in `histogram`.
async fn timed<T>(histogram: &Histogram, call: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = call.await;
    histogram.since(start);
    out
}

#[async_trait]
impl Store for Timed {
    async fn ping(&self) -> StoreResult<()> {
        timed(&self.ops.ping, self.inner.ping()).await
    }

    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>> {
        timed(&self.ops.register_ua, self.inner.register_ua(route)).await
    }

    async fn disconnect_ua(&self, ua: &UaId, live: &Live) -> StoreResult<()> {
        timed(&self.ops.disconnect_ua, self.inner.disconnect_ua(ua, live)).await
    }

    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>> {
        timed(&self.ops.ua_routes, self.inner.ua_routes(uas)).await
    }

    async fn put_app(&self, app: &App) -> StoreResult<()> {
        timed(&self.ops.put_app, self.inner.put_app(app)).await
    }

    async fn get_app(&self, app_token: &AppToken) -> StoreResult<Option<App>> {
        timed(&self.ops.get_app, self.inner.get_app(app_token)).await
    }

    async fn register_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<()> {
        timed(&self.ops.register_wa, self.inner.register_wa(ua, app_token)).await
    }

    async fn unregister_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<bool> {
        timed(
            &self.ops.unregister_wa,
            self.inner.unregister_wa(ua, app_token),
        )
        .await
    }

    async fn ua_registrations(&self, ua: &UaId) -> StoreResult<u64> {
        timed(&self.ops.ua_registrations, self.inner.ua_registrations(ua)).await
    }

    async fn app_uas(&self, app_token: &AppToken) -> StoreResult<Vec<UaId>> {
        timed(&self.ops.app_uas, self.inner.app_uas(app_token)).await
    }

    async fn insert_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<()> {
        timed(
            &self.ops.insert_notification,
            self.inner.insert_notification(n, now),
        )
        .await
    }

    async fn stage_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<Durable> {
        let durable = timed(
            &self.ops.stage_notification,
            self.inner.stage_notification(n, now),
        )
        .await?;
        let histogram = self.ops.notification_durable.clone();
        let start = Instant::now();
        Ok(Box::pin(async move {
            let out = durable.await;
            histogram.since(start);
            out
        }))
    }

    async fn pending_for_app(&self, app_token: &AppToken, now: EpochSecs) -> StoreResult<u64> {
        timed(
            &self.ops.pending_for_app,
            self.inner.pending_for_app(app_token, now),
        )
        .await
    }

    async fn pending_total(&self, now: EpochSecs) -> StoreResult<u64> {
        timed(&self.ops.pending_total, self.inner.pending_total(now)).await
    }

    async fn add_deliveries(
        &self,
        n: &Notification,
        uas: &[UaId],
        now: EpochSecs,
        max_pending: Option<u64>,
    ) -> StoreResult<Added> {
        timed(
            &self.ops.add_deliveries,
            self.inner.add_deliveries(n, uas, now, max_pending),
        )
        .await
    }

    async fn unrouted(&self, now: EpochSecs, limit: usize) -> StoreResult<Vec<Notification>> {
        timed(&self.ops.unrouted, self.inner.unrouted(now, limit)).await
    }

    async fn update_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: EpochSecs,
    ) -> StoreResult<u64> {
        timed(
            &self.ops.update_deliveries,
            self.inner.update_deliveries(updates, now),
        )
        .await
    }

    async fn record_deliveries(
        &self,
        updates: Vec<DeliveryUpdate>,
        now: EpochSecs,
    ) -> StoreResult<()> {
        timed(
            &self.ops.record_deliveries,
            self.inner.record_deliveries(updates, now),
        )
        .await
    }

    async fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        timed(
            &self.ops.outstanding,
            self.inner.outstanding(ua, now, limit),
        )
        .await
    }

    async fn owed_count(&self, ua: &UaId, now: EpochSecs) -> StoreResult<OwedCount> {
        timed(&self.ops.owed_count, self.inner.owed_count(ua, now)).await
    }

    async fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        timed(&self.ops.status, self.inner.status(app_token, id, now)).await
    }

    async fn report(
        &self,
        message_id: &MessageId,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>> {
        timed(&self.ops.report, self.inner.report(message_id, now)).await
    }

    async fn withdraw(&self, message_id: &MessageId, now: EpochSecs) -> StoreResult<bool> {
        timed(&self.ops.withdraw, self.inner.withdraw(message_id, now)).await
    }

    async fn purge(&self, now: EpochSecs, retention: Retention) -> StoreResult<u64> {
        timed(&self.ops.purge, self.inner.purge(now, retention)).await
    }
}
