//! The clock the authority and the client read the time from, handed down from where each
//! is built rather than read from the system in each module that needs the time.
//!
//! Production uses the system clock (`Clock::system()`, the default). Tests use
//! `Clock::tokio(start)`: it reads `start` plus the tokio time elapsed since it was made,
//! so under `#[tokio::test(start_paused = true)]` (or `tokio::time::pause()`) it moves only
//! as tokio's paused time does, which jumps ahead whenever the runtime is idle. A task that
//! sleeps on tokio time until a moment read from this clock then wakes exactly at it, and
//! days of a key schedule or a token's life pass in milliseconds, with no wall-clock wait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the time comes from. Cheap to copy: each holder keeps its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock(Source);

#[derive(Clone, Copy, Debug, Default)]
enum Source {
    #[default]
    System,
    /// `start`, plus the tokio time elapsed since `since`.
    Tokio {
        start: SystemTime,
        since: tokio::time::Instant,
    },
}

impl Clock {
    /// The system's wall clock: what production uses.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// For tests: a clock at `start` now, moving with tokio's clock from here on (paused
    /// and advanced with it, when the runtime's time is paused). Read from a thread outside
    /// the runtime it moves with the real time instead, as tokio's clock does there.
    pub fn tokio(start: SystemTime) -> Clock {
        Clock(Source::Tokio {
            start,
            since: tokio::time::Instant::now(),
        })
    }

    /// The time now.
    pub fn now(&self) -> SystemTime {
        match self.0 {
            Source::System => SystemTime::now(),
            Source::Tokio { start, since } => {
                start + tokio::time::Instant::now().saturating_duration_since(since)
            }
        }
    }

    /// The time now since the unix epoch (zero for a time before it).
    pub fn since_epoch(&self) -> Duration {
        self.now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    /// Whole unix seconds now: what JWT claims and the key records count in.
    pub fn unix_now(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// How long from now until the unix second `at` begins; zero once it has.
    pub fn until(&self, at: u64) -> Duration {
        Duration::from_secs(at).saturating_sub(self.since_epoch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_700_000_000;

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let before = SystemTime::now();
        let read = Clock::default().now();
        assert!(read >= before && read <= SystemTime::now());
        assert!(Clock::system().unix_now() >= START);
    }

    /// Under paused time the clock moves only with tokio's: a sleep of 30 days on tokio
    /// time is 30 days on the clock, and `until` says how long to sleep to reach a moment.
    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_paused_time() {
        let start = UNIX_EPOCH + Duration::from_millis(START * 1000 + 250);
        let clock = Clock::tokio(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.unix_now(), START);
        assert_eq!(clock.until(START + 10), Duration::from_millis(9750));
        assert_eq!(clock.until(START), Duration::ZERO);

        let month = Duration::from_secs(30 * 86_400);
        tokio::time::sleep(month).await;
        assert_eq!(clock.now(), start + month);
        // A copy reads the same time.
        let copy = clock;
        tokio::time::advance(Duration::from_millis(750)).await;
        assert_eq!(copy.unix_now(), START + month.as_secs() + 1);
        assert_eq!(clock.since_epoch(), copy.since_epoch());

        tokio::time::sleep(clock.until(START + month.as_secs() + 100)).await;
        assert_eq!(clock.unix_now(), START + month.as_secs() + 100);
        assert_eq!(
            clock.now().duration_since(start).unwrap().subsec_nanos(),
            750_000_000
        );
    }
}
