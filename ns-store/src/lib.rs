//! The store seam: everything the services keep. MongoDB (`ns-store-mongo`) in the
//! distributed mode, redb (`ns-store-redb`) in the one-process mode.
//!
//! The rules of what is kept live in `common` (delivery transitions, supersession, status
//! reports, the purge policy); an implementation translates them into its storage, and the
//! [`conformance`] suite (feature `conformance`) checks that it does, one test per
//! behaviour.

#[cfg(feature = "conformance")]
pub mod conformance;
mod timed;

pub use timed::{Timed, OPERATION_DURATION};

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use common::delivery::{DeliveryUpdate, StatusReport};
use common::model::{App, AppToken, EpochSecs, Live, MessageId, UaId, UaRoute};
use common::notification::Notification;
use common::purge::Retention;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database can't be reached or failed; the caller answers 503 or retries.
    #[error("the store is unavailable")]
    Unavailable(#[source] Cause),
    /// A stored record could not be read back, or a record could not be written as one.
    #[error("{what} is corrupt")]
    Corrupt {
        what: String,
        #[source]
        source: Cause,
    },
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }

    pub fn corrupt(what: impl Into<String>, e: impl Into<Cause>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            source: e.into(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Resolves once what [`Store::stage_notification`] staged is stored durably.
pub type Durable = Pin<Box<dyn Future<Output = StoreResult<()>> + Send>>;

/// What [`Store::owed_count`] says of a UA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwedCount {
    /// Notifications owed: pending or sent, not acked, neither replaced nor expired.
    pub pending: u64,
    /// The soonest `expires_at` among them.
    pub next_expiry: Option<EpochSecs>,
}

/// What [`Store::add_deliveries`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// False when the notification is no longer stored or was replaced: nothing was created,
    /// and it must not be routed.
    pub routed: bool,
    /// The UAs whose delivery is `rejected`, given now because they are at the quota of
    /// outstanding deliveries, or found so (a message handled twice): not to be routed to.
    pub refused: Vec<UaId>,
    /// The UAs whose delivery was there already and is settled otherwise (acked, expired,
    /// replaced): a message handled twice after its UA acked it. Not to be routed to either.
    pub settled: Vec<UaId>,
}

impl Added {
    /// Routed, to every UA.
    pub fn to_all() -> Added {
        Added {
            routed: true,
            refused: Vec::new(),
            settled: Vec::new(),
        }
    }
}

/// What every implementation keeps: UAs and where they are connected, WA registrations,
/// notifications and their per-UA delivery states.
///
/// Every write is idempotent, because broker messages may be handled twice. Every method
/// that depends on the time takes it as `now`; none reads a clock.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does; drives `/health`.
    async fn ping(&self) -> StoreResult<()>;

    // --- UAs ---

    /// Records `route` as where its UA is now: connected (`live` set) or only registered
    /// for wake-ups. Returns the record as it was before.
    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>>;

    /// Clears the UA's live connection, but only if it is still `live`: a newer connection
    /// elsewhere must not be forgotten by the close of an older one.
    async fn disconnect_ua(&self, ua: &UaId, live: &Live) -> StoreResult<()>;

    /// Where these UAs are; unknown UAs are left out.
    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>>;

    // --- Apps ---

    /// Stores an app (idempotent: its token is derived from its content).
    async fn put_app(&self, app: &App) -> StoreResult<()>;

    async fn get_app(&self, app_token: &AppToken) -> StoreResult<Option<App>>;

    /// Registers `ua` for `app_token` (idempotent).
    async fn register_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<()>;

    /// Removes the registration; true if there was one.
    async fn unregister_wa(&self, ua: &UaId, app_token: &AppToken) -> StoreResult<bool>;

    /// How many apps (Web Push subscriptions included) the UA is registered for.
    async fn ua_registrations(&self, ua: &UaId) -> StoreResult<u64>;

    /// The UAs registered for an app.
    async fn app_uas(&self, app_token: &AppToken) -> StoreResult<Vec<UaId>>;

    // --- Notifications ---

    /// Stores a new notification and marks replaced every one it supersedes
    /// ([`common::notification::superseded`]): the notifications, and their deliveries
    /// that may still change ([`DeliveryStatus::can_become`] replaced), at `now`.
    ///
    /// [`DeliveryStatus::can_become`]: common::delivery::DeliveryStatus::can_become
    async fn insert_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<()>;

    /// Stores a notification as [`Store::insert_notification`] does, in two steps: returns
    /// once every later write and read sees it, with a future that resolves once it is
    /// stored durably. In between it may be routed and delivered, so that a UA connected
    /// right now need not wait for the disk; its sender is answered only after the second
    /// step. A store with a single step (the default) takes both before returning.
    async fn stage_notification(&self, n: &Notification, now: EpochSecs) -> StoreResult<Durable> {
        self.insert_notification(n, now).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// How many of the app's notifications are still owed at `now`: stored, neither replaced
    /// nor expired, and either not routed yet or with a delivery still outstanding (pending
    /// or sent). What ns-as holds against `--max-pending-per-app`; a notification every UA
    /// acked no longer counts, though it stays for the status report. Asked on the hot path
    /// of notify, so cheap: a counter in memory, or indexed counts.
    async fn pending_for_app(&self, app_token: &AppToken, now: EpochSecs) -> StoreResult<u64>;

    /// How many notifications are still owed at `now`, all apps together: the sum of
    /// [`Store::pending_for_app`] over every app. For the `ns_pending_notifications` gauge,
    /// which the monitor refreshes every few seconds: it may cost a scan.
    async fn pending_total(&self, now: EpochSecs) -> StoreResult<u64>;

    /// Creates deliveries of `n` for these UAs at `now`, leaving existing ones as they are,
    /// and marks the notification routed. A UA with no delivery of `n` yet gets a `pending`
    /// one, unless `max_pending` is given and the UA already has that many outstanding
    /// deliveries ([`DeliveryStatus::is_outstanding`]) of notifications neither replaced nor
    /// expired at `now`: it then gets a `rejected` one, settled at once. A UA that has a
    /// delivery already is never counted again, so that a message handled twice keeps what
    /// the first handling decided.
    ///
    /// Returns [`Added::routed`] false, and creates nothing, when the notification is no
    /// longer stored or was replaced: it must not be routed then. Otherwise
    /// [`Added::refused`] lists the UAs among `uas` whose delivery of `n` is `rejected`
    /// (refused now, or settled so before), and [`Added::settled`] those whose delivery is
    /// settled otherwise: it must not be routed to either.
    ///
    /// [`DeliveryStatus::is_outstanding`]: common::delivery::DeliveryStatus::is_outstanding
    async fn add_deliveries(
        &self,
        n: &Notification,
        uas: &[UaId],
        now: EpochSecs,
        max_pending: Option<u64>,
    ) -> StoreResult<Added>;

    /// Notifications stored but not yet routed (a crash between store and route) that still
    /// need routing ([`NotificationState::needs_routing`]) and have not expired; oldest
    /// first.
    ///
    /// [`NotificationState::needs_routing`]: common::notification::NotificationState::needs_routing
    async fn unrouted(&self, now: EpochSecs, limit: usize) -> StoreResult<Vec<Notification>>;

    /// Applies delivery state changes at `now`, each only where
    /// [`DeliveryStatus::can_become`] allows it; updates of unknown deliveries are ignored.
    /// Returns how many deliveries changed.
    ///
    /// [`DeliveryStatus::can_become`]: common::delivery::DeliveryStatus::can_become
    async fn update_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: EpochSecs,
    ) -> StoreResult<u64>;

    /// The same changes as [`Store::update_deliveries`], for callers that need no count: the
    /// store may write them together with other callers' (MongoDB does, in one command per
    /// state for a whole batch). Returns once they are stored.
    async fn record_deliveries(
        &self,
        updates: Vec<DeliveryUpdate>,
        now: EpochSecs,
    ) -> StoreResult<()> {
        self.update_deliveries(&updates, now).await.map(|_| ())
    }

    /// What the UA is owed: its outstanding deliveries whose notification is still
    /// deliverable ([`NotificationState::is_deliverable`]), oldest first.
    ///
    /// [`NotificationState::is_deliverable`]: common::notification::NotificationState::is_deliverable
    async fn outstanding(
        &self,
        ua: &UaId,
        now: EpochSecs,
        limit: usize,
    ) -> StoreResult<Vec<Notification>>;

    /// How many notifications the UA is owed at `now`: what [`Store::outstanding`] would
    /// return without a limit, counted without reading a payload; and the soonest expiry
    /// among them, when the count next drops by itself.
    async fn owed_count(&self, ua: &UaId, now: EpochSecs) -> StoreResult<OwedCount>;

    /// The report ([`StatusReport::assemble`]) of the newest notification with this app and
    /// AS id.
    async fn status(
        &self,
        app_token: &AppToken,
        id: &str,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>>;

    /// The report of the notification with this message id, whatever its app and AS id.
    async fn report(
        &self,
        message_id: &MessageId,
        now: EpochSecs,
    ) -> StoreResult<Option<StatusReport>>;

    /// Withdraws a notification: marks it replaced, as a newer one with its AS id would,
    /// with its deliveries that may still become replaced, at `now`; it is then neither
    /// routed nor delivered any more. Returns false if it is not stored.
    async fn withdraw(&self, message_id: &MessageId, now: EpochSecs) -> StoreResult<bool>;

    /// Removes what [`common::purge`] condemns at `now`: deliveries past their retention,
    /// then spent notifications with whatever deliveries they still have. Returns how many
    /// records went.
    async fn purge(&self, now: EpochSecs, retention: Retention) -> StoreResult<u64>;
}
