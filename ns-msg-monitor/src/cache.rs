//! The monitor's route cache: appToken → UAs and UA → route, invalidated by route events.
//!
//! A look-up that races an invalidation must not put stale data back: every fill carries
//! the epoch read before the store was asked, and is dropped if an invalidation came since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::messages::RouteEvent;
use common::model::{AppToken, UaId, UaRoute};

/// Entries older than this are read again even without an event, as a backstop.
const MAX_AGE: Duration = Duration::from_secs(60);
/// Most entries of each map; past that the map starts over.
const LIMIT: usize = 500_000;

struct Entry<T> {
    value: T,
    at: Instant,
}

#[derive(Default)]
pub(crate) struct RouteCache {
    epoch: AtomicU64,
    apps: Mutex<HashMap<AppToken, Entry<Arc<Vec<UaId>>>>>,
    uas: Mutex<HashMap<UaId, Entry<UaRoute>>>,
}

impl RouteCache {
    /// The epoch to pass to the fills that follow a store read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn app(&self, app_token: &AppToken) -> Option<Arc<Vec<UaId>>> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.get(app_token)
            .filter(|e| e.at.elapsed() < MAX_AGE)
            .map(|e| e.value.clone())
    }

    pub(crate) fn fill_app(&self, epoch: u64, app_token: &AppToken, uas: Arc<Vec<UaId>>) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch() != epoch {
            return;
        }
        if apps.len() >= LIMIT {
            apps.clear();
        }
        apps.insert(
            app_token.clone(),
            Entry {
                value: uas,
                at: Instant::now(),
            },
        );
    }

    /// Splits `uas` into the cached routes and the ones to read from the store.
    pub(crate) fn routes(&self, uas: &[UaId]) -> (Vec<UaRoute>, Vec<UaId>) {
        let cache = self.uas.lock().unwrap_or_else(|e| e.into_inner());
        let mut hits = Vec::with_capacity(uas.len());
        let mut misses = Vec::new();
        for ua in uas {
            match cache.get(ua).filter(|e| e.at.elapsed() < MAX_AGE) {
                Some(e) => hits.push(e.value.clone()),
                None => misses.push(ua.clone()),
            }
        }
        (hits, misses)
    }

    pub(crate) fn fill_routes(&self, epoch: u64, routes: &[UaRoute]) {
        let mut cache = self.uas.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch() != epoch {
            return;
        }
        if cache.len() + routes.len() > LIMIT {
            cache.clear();
        }
        let now = Instant::now();
        for r in routes {
            cache.insert(
                r.ua.clone(),
                Entry {
                    value: r.clone(),
                    at: now,
                },
            );
        }
    }

    /// Applies an event; `None` means events may have been missed: forget everything.
    pub(crate) fn invalidate(&self, event: Option<&RouteEvent>) {
        // Bump first, under the locks, so a fill that read the store before this event
        // sees the new epoch and drops its result.
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let mut uas = self.uas.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match event {
            Some(RouteEvent::App { app_token }) => {
                apps.remove(app_token);
            }
            Some(RouteEvent::Ua { ua }) => {
                uas.remove(ua);
            }
            None => {
                apps.clear();
                uas.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ua: &str) -> UaRoute {
        UaRoute::connected(
            UaId::new(ua),
            common::model::NodeId::new("n"),
            common::model::ConnId::new("c"),
            None,
        )
    }

    fn app() -> AppToken {
        AppToken::new("app")
    }

    #[test]
    fn fills_and_invalidates() {
        let cache = RouteCache::default();
        let e = cache.epoch();
        cache.fill_app(e, &app(), Arc::new(vec![UaId::new("u")]));
        cache.fill_routes(e, &[route("u")]);
        assert_eq!(cache.app(&app()).unwrap().len(), 1);
        let (hits, misses) = cache.routes(&[UaId::new("u"), UaId::new("v")]);
        assert_eq!((hits.len(), misses.len()), (1, 1));

        cache.invalidate(Some(&RouteEvent::App { app_token: app() }));
        assert!(cache.app(&app()).is_none());
        assert_eq!(cache.routes(&[UaId::new("u")]).0.len(), 1);
        cache.invalidate(Some(&RouteEvent::Ua { ua: UaId::new("u") }));
        assert!(cache.routes(&[UaId::new("u")]).0.is_empty());
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = RouteCache::default();
        let before = cache.epoch();
        cache.invalidate(Some(&RouteEvent::App { app_token: app() }));
        cache.fill_app(before, &app(), Arc::new(vec![]));
        assert!(cache.app(&app()).is_none());
        cache.fill_routes(before, &[route("u")]);
        assert!(cache.routes(&[UaId::new("u")]).0.is_empty());
    }

    #[test]
    fn missed_events_clear_everything() {
        let cache = RouteCache::default();
        let e = cache.epoch();
        cache.fill_app(e, &app(), Arc::new(vec![]));
        cache.fill_routes(e, &[route("u")]);
        cache.invalidate(None);
        assert!(cache.app(&app()).is_none());
        assert!(cache.routes(&[UaId::new("u")]).0.is_empty());
    }
}
