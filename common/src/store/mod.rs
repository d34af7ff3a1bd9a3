//! The store seam: everything the services keep. MongoDB ([`mongo::MongoStore`]) in the
//! distributed mode, an embedded database in the one-process mode.

pub mod conformance;
pub mod disk;
pub mod mongo;

use async_trait::async_trait;

use crate::model::{App, DeliveryStatus, Interface, Notification, StatusReport, UaId, UaRoute};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database can't be reached or failed; the caller answers 503 or retries.
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record could not be read back.
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A change of delivery state for one notification and one UA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub message_id: String,
    pub ua: UaId,
    pub status: DeliveryStatus,
}

impl DeliveryUpdate {
    /// The same change for several notifications of one UA.
    pub fn for_ua(
        ua: &UaId,
        message_ids: impl IntoIterator<Item = String>,
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
}

/// What every implementation keeps: UAs and where they are connected, WA registrations,
/// notifications and their per-UA delivery states.
///
/// Every write is idempotent, because broker messages may be handled twice.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does; drives `/health`.
    async fn ping(&self) -> StoreResult<()>;

    /// How long a batching writer may wait for more writes before writing a small batch.
    /// Worth it where each command costs far more than each document in it (a database
    /// over the network); zero where a batch costs little whatever its size.
    fn batch_linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    // --- UAs ---

    /// Records that `route.ua` is now connected as `route` (node and conn set) or only
    /// registered for wake-ups (node unset). Returns the record as it was before.
    async fn register_ua(&self, route: &UaRoute) -> StoreResult<Option<UaRoute>>;

    /// Clears the UA's node, but only if it is still `node`/`conn`: a newer connection
    /// elsewhere must not be forgotten by the close of an older one.
    async fn disconnect_ua(&self, ua: &UaId, node: &str, conn: &str) -> StoreResult<()>;

    /// Where these UAs are; unknown UAs are left out.
    async fn ua_routes(&self, uas: &[UaId]) -> StoreResult<Vec<UaRoute>>;

    // --- Apps ---

    /// Stores an app (idempotent: its token is derived from its content).
    async fn put_app(&self, app: &App) -> StoreResult<()>;

    async fn get_app(&self, app_token: &str) -> StoreResult<Option<App>>;

    /// Registers `ua` for `app_token` (idempotent).
    async fn register_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<()>;

    /// Removes the registration; true if there was one.
    async fn unregister_wa(&self, ua: &UaId, app_token: &str) -> StoreResult<bool>;

    /// The UAs registered for an app.
    async fn app_uas(&self, app_token: &str) -> StoreResult<Vec<UaId>>;

    // --- Notifications ---

    /// Stores a new notification and marks every older one with the same app and AS id as
    /// replaced (the notifications and their outstanding deliveries).
    async fn insert_notification(&self, n: &Notification) -> StoreResult<()>;

    /// Creates `pending` deliveries of `n` for these UAs, leaving existing ones as they are,
    /// and marks the notification routed. Returns false, and creates nothing, when the
    /// notification is no longer stored or was replaced: it must not be routed then.
    async fn add_deliveries(&self, n: &Notification, uas: &[UaId]) -> StoreResult<bool>;

    /// Notifications stored but not yet routed (a crash between store and route), leaving out
    /// replaced and expired ones; oldest first.
    async fn unrouted(&self, limit: usize) -> StoreResult<Vec<Notification>>;

    /// Applies delivery state changes. `Sent` never downgrades `Acked`; updates of unknown
    /// deliveries are ignored. Returns how many deliveries changed.
    async fn update_deliveries(&self, updates: &[DeliveryUpdate], now: i64) -> StoreResult<u64>;

    /// The UA's outstanding (pending or sent), unexpired, unreplaced notifications, oldest first.
    async fn outstanding(
        &self,
        ua: &UaId,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>>;

    /// The status report of the newest notification with this app and AS id.
    async fn status(
        &self,
        app_token: &str,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<StatusReport>>;

    /// Removes notifications expired before `now` and deliveries acked before `acked_before`.
    /// Returns how many records went. (MongoDB also has TTL indexes for this.)
    async fn purge(&self, now: i64, acked_before: i64) -> StoreResult<u64>;
}

/// Parameters of a UA record for `register/ua` on a live connection.
pub fn connected_route(ua: UaId, node: &str, conn: &str, interface: Option<Interface>) -> UaRoute {
    UaRoute {
        ua,
        node: Some(node.to_owned()),
        conn: Some(conn.to_owned()),
        interface,
    }
}
