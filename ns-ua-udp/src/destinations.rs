//! A bound on datagrams per destination, without I/O: whatever UAs ask to be woken at one
//! address and port, it gets at most one datagram per interval, so the server can't be made
//! to flood a host of the networks its operator allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Destinations remembered; past that, the oldest half of the memory is dropped.
const MAX_DESTINATIONS: usize = 100_000;

pub(crate) struct DestinationLimiter {
    interval: Duration,
    last: HashMap<SocketAddr, Instant>,
}

impl DestinationLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        DestinationLimiter {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether a datagram may go to `to` at `now`; if so, it counts as sent.
    pub(crate) fn allow(&mut self, to: SocketAddr, now: Instant) -> bool {
        if self
            .last
            .get(&to)
            .is_some_and(|at| now < *at + self.interval)
        {
            return false;
        }
        if self.last.len() >= MAX_DESTINATIONS {
            // Entries older than the interval no longer limit anything.
            let interval = self.interval;
            self.last.retain(|_, at| now < *at + interval);
        }
        self.last.insert(to, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_datagram_per_destination_per_interval() {
        let mut limiter = DestinationLimiter::new(Duration::from_secs(1));
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.1:5001".parse().unwrap(),
        );
        let t0 = Instant::now();
        assert!(limiter.allow(a, t0));
        assert!(!limiter.allow(a, t0 + Duration::from_millis(999)));
        assert!(limiter.allow(b, t0), "another port is another destination");
        assert!(limiter.allow(a, t0 + Duration::from_secs(1)));
        assert!(!limiter.allow(a, t0 + Duration::from_millis(1500)));
    }
}
