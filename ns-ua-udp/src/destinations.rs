//! A bound on datagrams per destination, without I/O: whatever UAs ask to be woken at one
//! address and port, it gets at most a rate of datagrams (a token bucket with a burst of one
//! second's worth), so the server can't be made to flood a host of the networks its operator
//! allows. One UA that pulls at once after each wake-up stays far below it.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::time::Instant;

/// Destinations remembered; past that, the ones with a full bucket are forgotten.
const MAX_DESTINATIONS: usize = 100_000;

pub(crate) struct DestinationLimiter {
    /// Datagrams per second, and the burst.
    rate: f64,
    /// Tokens left per destination, and when they were counted.
    buckets: HashMap<SocketAddr, (f64, Instant)>,
}

impl DestinationLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        DestinationLimiter {
            rate: f64::from(per_second.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Whether a datagram may go to `to` at `now`; if so, it is counted.
    pub(crate) fn allow(&mut self, to: SocketAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_DESTINATIONS && !self.buckets.contains_key(&to) {
            let rate = self.rate;
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now, rate) < rate);
        }
        let rate = self.rate;
        let (tokens, at) = self.buckets.entry(to).or_insert((rate, now));
        let available = refill(*tokens, *at, now, rate);
        *at = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

/// Tokens in a bucket that had `tokens` at `at`, at `now`.
fn refill(tokens: f64, at: Instant, now: Instant, rate: f64) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (tokens + elapsed * rate).min(rate)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_rate() {
        let mut limiter = DestinationLimiter::new(10);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.allow(a, t0), "burst {i}");
        }
        assert!(!limiter.allow(a, t0), "past the burst");
        assert!(limiter.allow(b, t0), "another port is another destination");
        assert!(!limiter.allow(a, t0 + Duration::from_millis(50)));
        assert!(
            limiter.allow(a, t0 + Duration::from_millis(100)),
            "refilled"
        );
        assert!(!limiter.allow(a, t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(limiter.allow(a, later));
        }
        assert!(
            !limiter.allow(a, later),
            "the burst never exceeds a second's worth"
        );
    }
}
