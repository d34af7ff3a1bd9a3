//! The time the services go by: the system clock in production, a clock a test moves by hand
//! so that a TTL runs out without waiting for it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::model::{EpochMillis, EpochSecs};

/// A source of the current time. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    pub fn now(&self) -> EpochSecs {
        self.now_millis().secs()
    }

    pub fn now_millis(&self) -> EpochMillis {
        match &self.manual {
            Some(millis) => EpochMillis(millis.load(Ordering::Acquire)),
            None => EpochMillis(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            ),
        }
    }
}

/// A clock that stands still until it is moved: starts at the system's time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            millis: Arc::new(AtomicI64::new(Clock::system().now_millis().as_i64())),
        }
    }
}

impl ManualClock {
    /// The clock to hand to the services.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.millis.clone()),
        }
    }

    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.millis.fetch_add(by, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::default();
        let clock = manual.clock();
        let start = clock.now_millis();
        assert!((start.as_i64() - Clock::system().now_millis().as_i64()).abs() < 60_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now_millis(), start);
        manual.advance(Duration::from_secs(3));
        assert_eq!(clock.now_millis().as_i64(), start.as_i64() + 3000);
        assert_eq!(
            clock.clone().now(),
            EpochMillis(start.as_i64() + 3000).secs()
        );
    }
}
