//! Retry pacing shared by what waits on something that is down: reconnecting to the
//! database, and the schedule retrying a lifecycle step.

use std::time::Duration;

/// Exponential backoff with jitter (up to a tenth of the delay): replicas that lost the
/// database at the same moment do not retry in step.
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    /// From 100 ms to 5 s: reconnecting.
    pub fn new() -> Backoff {
        Backoff::between(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Doubling from `first` up to `max`.
    pub fn between(first: Duration, max: Duration) -> Backoff {
        Backoff { delay: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let current = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        let jitter = crate::crypto::random_bytes(2)
            .map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
        let spread = u64::try_from(current.as_millis() / 10)
            .unwrap_or(u64::MAX)
            .max(1);
        current + Duration::from_millis(jitter % spread)
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}
