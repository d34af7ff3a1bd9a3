//! Wake-up coalescing (§4), without I/O: at most one datagram per UA per wake-up interval
//! while its notifications are unpulled; priority 1 wakes at once, priority 2 within the
//! coalescing window.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use common::model::{Interface, UaId};

#[derive(Debug, Default)]
struct UaWake {
    last_sent: Option<Instant>,
    due: Option<Instant>,
    interface: Option<Interface>,
}

/// What became of a wake-up request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send a datagram now.
    SendNow(Interface),
    /// A datagram will go at this time (or one already will).
    Scheduled(Instant),
    /// Nothing to do: this priority never wakes.
    Ignored,
}

pub(crate) struct Coalescer {
    interval: Duration,
    window: Duration,
    uas: HashMap<UaId, UaWake>,
}

impl Coalescer {
    pub(crate) fn new(interval: Duration, window: Duration) -> Self {
        Coalescer {
            interval,
            window,
            uas: HashMap::new(),
        }
    }

    pub(crate) fn request(
        &mut self,
        ua: &UaId,
        interface: Interface,
        priority: u8,
        now: Instant,
    ) -> Decision {
        let wanted = match priority {
            1 => now,
            2 => now + self.window,
            _ => return Decision::Ignored,
        };
        let state = self.uas.entry(ua.clone()).or_default();
        state.interface = Some(interface.clone());
        // Not before the interval since the last datagram has passed.
        let earliest = state
            .last_sent
            .map_or(now, |t| (t + self.interval).max(now));
        let at = wanted.max(earliest);
        let at = state.due.map_or(at, |d| d.min(at));
        if at <= now {
            state.due = None;
            state.last_sent = Some(now);
            Decision::SendNow(interface)
        } else {
            state.due = Some(at);
            Decision::Scheduled(at)
        }
    }

    /// The wake-ups due at `now`, marked as sent.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(UaId, Interface)> {
        let mut out = Vec::new();
        for (ua, state) in self.uas.iter_mut() {
            if state.due.is_some_and(|d| d <= now) {
                state.due = None;
                state.last_sent = Some(now);
                if let Some(i) = state.interface.clone() {
                    out.push((ua.clone(), i));
                }
            }
        }
        out
    }

    /// The earliest scheduled wake-up.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.uas.values().filter_map(|s| s.due).min()
    }

    /// The UA pulled its notifications: the next one may wake it at once.
    pub(crate) fn pulled(&mut self, ua: &UaId) {
        self.uas.remove(ua);
    }

    /// Forgets UAs with nothing scheduled whose interval has passed.
    pub(crate) fn prune(&mut self, now: Instant) {
        let interval = self.interval;
        self.uas.retain(|_, s| {
            s.due.is_some()
                || s.last_sent
                    .is_some_and(|t| now.duration_since(t) < interval)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> Interface {
        Interface {
            ip: "127.0.0.1".parse().unwrap(),
            port: 9,
        }
    }

    fn coalescer() -> Coalescer {
        Coalescer::new(Duration::from_secs(5), Duration::from_secs(30))
    }

    #[test]
    fn priority_one_wakes_at_once_then_coalesces() {
        let mut c = coalescer();
        let ua = UaId::new("u");
        let t0 = Instant::now();
        assert_eq!(c.request(&ua, iface(), 1, t0), Decision::SendNow(iface()));
        // A second one within the interval waits for the interval's end.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            c.request(&ua, iface(), 1, t1),
            Decision::Scheduled(t0 + Duration::from_secs(5))
        );
        // And a third is folded into the same datagram.
        assert_eq!(
            c.request(&ua, iface(), 1, t1),
            Decision::Scheduled(t0 + Duration::from_secs(5))
        );
        assert!(c.due(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(c.due(t0 + Duration::from_secs(5)).len(), 1);
        assert!(c.due(t0 + Duration::from_secs(6)).is_empty());
    }

    #[test]
    fn priority_two_waits_for_the_window_unless_one_comes_sooner() {
        let mut c = coalescer();
        let ua = UaId::new("u");
        let t0 = Instant::now();
        assert_eq!(
            c.request(&ua, iface(), 2, t0),
            Decision::Scheduled(t0 + Duration::from_secs(30))
        );
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(30)));
        // A priority 1 meanwhile goes at once and takes the scheduled one with it.
        assert_eq!(
            c.request(&ua, iface(), 1, t0 + Duration::from_secs(2)),
            Decision::SendNow(iface())
        );
        assert!(c.due(t0 + Duration::from_secs(31)).is_empty());
    }

    #[test]
    fn low_priorities_never_wake() {
        let mut c = coalescer();
        let t0 = Instant::now();
        assert_eq!(
            c.request(&UaId::new("u"), iface(), 3, t0),
            Decision::Ignored
        );
        assert_eq!(
            c.request(&UaId::new("u"), iface(), 4, t0),
            Decision::Ignored
        );
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn a_pull_resets_the_interval() {
        let mut c = coalescer();
        let ua = UaId::new("u");
        let t0 = Instant::now();
        assert_eq!(c.request(&ua, iface(), 1, t0), Decision::SendNow(iface()));
        c.pulled(&ua);
        assert_eq!(
            c.request(&ua, iface(), 1, t0 + Duration::from_secs(1)),
            Decision::SendNow(iface())
        );
    }

    #[test]
    fn prune_forgets_idle_uas() {
        let mut c = coalescer();
        let t0 = Instant::now();
        c.request(&UaId::new("u"), iface(), 1, t0);
        c.prune(t0 + Duration::from_secs(10));
        assert!(c.uas.is_empty());
    }
}
