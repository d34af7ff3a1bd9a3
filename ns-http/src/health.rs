//! `/health`: whether a component's dependencies answer, told within a bound.
//!
//! A prober (a load balancer, Kubernetes) gives up after a second or so and counts a slow
//! answer as a failure of the component itself, so `/health` must answer promptly even
//! while the database hangs. The store's ping is bounded by [`PING_TIMEOUT`], one ping at
//! a time serves every concurrent probe, and its result is kept for [`FRESH_FOR`]; the
//! answer as a whole never takes longer than [`ANSWER_WITHIN`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ns_broker::Broker;
use ns_store::Store;
use tokio::time::Instant;

/// Longest wait for the store's ping; a store slower than this counts as down.
const PING_TIMEOUT: Duration = Duration::from_millis(400);
/// Longest time `/health` takes to answer.
const ANSWER_WITHIN: Duration = Duration::from_millis(500);
/// How long a ping's result is the answer before the store is pinged again.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What `/health` checks: the dependencies a component has.
#[derive(Clone, Default)]
pub struct Health {
    pub store: Option<Arc<dyn Store>>,
    pub broker: Option<Arc<dyn Broker>>,
}

impl Health {
    /// True when every dependency answers, each within its timeout (no cache).
    pub async fn check(&self) -> bool {
        self.broker_healthy() && self.store_healthy().await
    }

    fn broker_healthy(&self) -> bool {
        // The broker's connection state is in memory: no I/O, no wait.
        self.broker.as_ref().is_none_or(|b| b.is_healthy())
    }

    async fn store_healthy(&self) -> bool {
        match &self.store {
            None => true,
            Some(store) => matches!(
                tokio::time::timeout(PING_TIMEOUT, store.ping()).await,
                Ok(Ok(()))
            ),
        }
    }
}

/// The dependencies of [`Health`] with the last known answer of the store's ping.
pub(crate) struct HealthView {
    health: Health,
    /// When the store was last pinged, and whether it answered.
    last: Mutex<Option<(Instant, bool)>>,
    /// Held by the one ping in flight; the other probes wait for its result.
    pinging: tokio::sync::Mutex<()>,
}

impl HealthView {
    pub(crate) fn new(health: Health) -> Self {
        HealthView {
            health,
            last: Mutex::new(None),
            pinging: tokio::sync::Mutex::new(()),
        }
    }

    /// True when every dependency is up, answered within [`ANSWER_WITHIN`].
    pub(crate) async fn healthy(&self) -> bool {
        if !self.health.broker_healthy() {
            return false;
        }
        // A dependency that can't be confirmed in time counts as down.
        tokio::time::timeout(ANSWER_WITHIN, self.store_healthy())
            .await
            .unwrap_or(false)
    }

    async fn store_healthy(&self) -> bool {
        if let Some(known) = self.fresh() {
            return known;
        }
        let _pinging = self.pinging.lock().await;
        // The ping this probe waited for may have just answered.
        if let Some(known) = self.fresh() {
            return known;
        }
        let healthy = self.health.store_healthy().await;
        *self.lock() = Some((Instant::now(), healthy));
        healthy
    }

    fn fresh(&self) -> Option<bool> {
        match *self.lock() {
            Some((at, healthy)) if at.elapsed() < FRESH_FOR => Some(healthy),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, bool)>> {
        // A plain value: a panic elsewhere can't leave it half-written.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
