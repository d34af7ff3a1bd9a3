//! The quota of pending notifications per appToken (`--max-pending-per-app`): how many of
//! an appToken's stored notifications may be neither replaced nor expired and still owed to
//! some UA ([`Store::pending_for_app`]).
//!
//! The check is on the path of every notify, so the store is asked at most about once a
//! second per appToken ([`FRESH`]); in between, this ns-as adds what it accepted itself to
//! the store's last answer. Each acceptance reserves its place before the notification is
//! stored, so that the concurrent requests of one ns-as never pass the quota together; what
//! other ns-as instances accepted meanwhile is seen at the next count. The quota can thus be
//! passed by at most what is in flight: what the other instances accepted within the last
//! second, or a few notifications while a count is under way.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::model::{AppToken, EpochSecs};
use ns_store::{Store, StoreResult};

/// How long a count from the store is trusted.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// How long the other callers wait for one that went to ask the store again (meanwhile
/// using the older count) before one of them asks in its stead: it may have been cut short.
const REFRESH_GIVE_UP: Duration = Duration::from_secs(5);

/// Counts kept at most; past that, the stale ones go, and a new appToken's count is used
/// without being kept while the fresh ones alone fill it.
const LIMIT: usize = 10_000;

struct Count {
    /// What the store counted, and when it was asked.
    stored: u64,
    at: Instant,
    /// Places taken here since: notifications accepted, or being stored.
    accepted: u64,
    /// When a caller went to ask the store again, while it is at it.
    refreshing: Option<Instant>,
}

impl Count {
    /// Takes a place if there is one.
    fn take(&mut self, max: u64) -> bool {
        if self.stored.saturating_add(self.accepted) >= max {
            return false;
        }
        self.accepted += 1;
        true
    }
}

/// The per-appToken counts of pending notifications, and the quota.
pub(crate) struct PendingQuota {
    /// 0: no quota.
    max: u64,
    counts: Mutex<HashMap<AppToken, Count>>,
}

impl PendingQuota {
    pub(crate) fn new(max: u64) -> Self {
        PendingQuota {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for one more stored notification of `app`; false when the appToken has
    /// as many pending notifications as the quota allows. A place taken for a notification
    /// that then is not stored is given back with [`PendingQuota::release`].
    pub(crate) async fn reserve(
        &self,
        store: &dyn Store,
        app: &AppToken,
        now: EpochSecs,
    ) -> StoreResult<bool> {
        if self.max == 0 {
            return Ok(true);
        }
        let asked_at = Instant::now();
        if let Some(taken) = self.reserve_counted(app, asked_at) {
            return Ok(taken);
        }
        match store.pending_for_app(app, now).await {
            Ok(stored) => Ok(self.counted(app, stored, asked_at)),
            Err(e) => {
                self.not_counted(app);
                Err(e)
            }
        }
    }

    /// Keeps what the store counted when it was asked at `asked_at`, and takes a place.
    fn counted(&self, app: &AppToken, stored: u64, asked_at: Instant) -> bool {
        let mut count = Count {
            stored,
            at: asked_at,
            accepted: 0,
            refreshing: None,
        };
        let taken = count.take(self.max);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= LIMIT && !counts.contains_key(app) {
            counts.retain(|_, c| asked_at.saturating_duration_since(c.at) < FRESH);
        }
        if counts.len() < LIMIT || counts.contains_key(app) {
            counts.insert(app.clone(), count);
        }
        taken
    }

    /// The store could not count: the next caller asks again.
    fn not_counted(&self, app: &AppToken) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(app) {
            count.refreshing = None;
        }
    }

    /// Decides from the count kept, when it is fresh or another caller is renewing it.
    /// `None`: the caller is to ask the store (and is marked as doing so).
    fn reserve_counted(&self, app: &AppToken, now: Instant) -> Option<bool> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.get_mut(app)?;
        let fresh = now.saturating_duration_since(count.at) < FRESH;
        let renewing = count
            .refreshing
            .is_some_and(|since| now.saturating_duration_since(since) < REFRESH_GIVE_UP);
        if fresh || renewing {
            return Some(count.take(self.max));
        }
        count.refreshing = Some(now);
        None
    }

    /// Gives back a place taken for a notification that was not stored.
    pub(crate) fn release(&self, app: &AppToken) {
        if self.max == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(app) {
            count.accepted = count.accepted.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn counts_locally_between_asking_the_store() {
        let quota = PendingQuota::new(10);
        let (app, other) = (AppToken::new("a"), AppToken::new("b"));
        let t0 = Instant::now();
        assert_eq!(quota.reserve_counted(&app, t0), None, "nothing counted yet");
        assert!(quota.counted(&app, 7, t0), "7 stored: room for 3");
        assert_eq!(quota.reserve_counted(&app, t0 + MS), Some(true));
        assert_eq!(quota.reserve_counted(&app, t0 + MS), Some(true));
        assert_eq!(quota.reserve_counted(&app, t0 + MS), Some(false));
        quota.release(&app);
        assert_eq!(quota.reserve_counted(&app, t0 + MS), Some(true));
        assert_eq!(quota.reserve_counted(&app, t0 + MS), Some(false));
        assert_eq!(
            quota.reserve_counted(&other, t0 + MS),
            None,
            "each app has its count"
        );
    }

    #[test]
    fn a_stale_count_is_asked_for_again_by_one_caller() {
        let quota = PendingQuota::new(10);
        let app = AppToken::new("a");
        let t0 = Instant::now();
        assert!(!quota.counted(&app, 10, t0));
        assert_eq!(quota.reserve_counted(&app, t0 + FRESH - MS), Some(false));
        assert_eq!(quota.reserve_counted(&app, t0 + FRESH), None, "stale: ask");
        assert_eq!(
            quota.reserve_counted(&app, t0 + FRESH + MS),
            Some(false),
            "another caller meanwhile goes by the older count"
        );
        assert_eq!(
            quota.reserve_counted(&app, t0 + FRESH + REFRESH_GIVE_UP),
            None,
            "the first asker is given up on"
        );
        quota.not_counted(&app);
        assert_eq!(
            quota.reserve_counted(&app, t0 + FRESH + REFRESH_GIVE_UP),
            None,
            "after a failed count, the next caller asks"
        );
        let t1 = t0 + FRESH + REFRESH_GIVE_UP;
        assert!(quota.counted(&app, 9, t1));
        assert_eq!(quota.reserve_counted(&app, t1 + MS), Some(false));
    }

    #[test]
    fn the_counts_kept_are_bounded() {
        let quota = PendingQuota::new(10);
        let t0 = Instant::now();
        for i in 0..LIMIT {
            assert!(quota.counted(&AppToken::new(format!("app{i}")), 0, t0));
        }
        let app = AppToken::new("new");
        assert!(quota.counted(&app, 0, t0 + MS), "used, though not kept");
        assert_eq!(quota.counts.lock().unwrap().len(), LIMIT);
        assert_eq!(quota.reserve_counted(&app, t0 + MS), None);
        assert!(quota.counted(&app, 0, t0 + FRESH));
        let counts = quota.counts.lock().unwrap();
        assert_eq!(counts.len(), 1, "the stale ones went");
        assert!(counts.contains_key(&app));
    }
}
