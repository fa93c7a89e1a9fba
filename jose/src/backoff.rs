//! Retry pacing for whatever waits on something that is down (a database, the authority, a
//! replica): delays that double up to a cap, each with random jitter, so a fleet that lost
//! the same thing at the same moment does not retry in step.

use std::time::Duration;

use crate::crypto;

/// Exponential backoff with jitter: each delay is the current one plus up to a fraction of
/// it at random (a tenth unless set), and the next is twice as long, up to the cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    delay: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Doubling from `first` up to `max`, with up to a tenth of jitter.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            delay: first,
            max,
            jitter: 0.1,
        }
    }

    /// The same, with up to `fraction` (0 to 1) of each delay added at random.
    pub fn with_jitter(self, fraction: f64) -> Backoff {
        Backoff {
            jitter: fraction.clamp(0.0, 1.0),
            ..self
        }
    }

    /// The delay to wait now; the next one is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay();
        self.double();
        delay
    }

    /// The delay to wait now, leaving the next one as it is.
    pub fn delay(&self) -> Duration {
        self.delay + jitter(self.delay.mul_f64(self.jitter))
    }

    /// Makes the next delay twice as long, up to the cap.
    pub fn double(&mut self) {
        self.delay = (self.delay * 2).min(self.max);
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.delay = self.first;
    }
}

/// A random duration up to `max`.
pub fn jitter(max: Duration) -> Duration {
    let random = crypto::random_bytes(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    max.mul_f64(f64::from(random) / f64::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_within_its_fraction() {
        let second = Duration::from_secs(1);
        let mut backoff = Backoff::new(second, 4 * second).with_jitter(0.25);
        for base in [1, 2, 4, 4, 4] {
            let base = Duration::from_secs(base);
            let delay = backoff.next_delay();
            assert!(
                delay >= base && delay <= base.mul_f64(1.25),
                "{delay:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= second.mul_f64(1.25));
        let plain = Backoff::new(second, second).with_jitter(0.0);
        assert_eq!(plain.delay(), second);
        // A tenth unless set.
        let mut default = Backoff::new(10 * second, 10 * second);
        for _ in 0..50 {
            let delay = default.next_delay();
            assert!(delay >= 10 * second && delay <= 11 * second, "{delay:?}");
        }
    }
}
