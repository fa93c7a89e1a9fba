//! A window of at most N admissions per second: what keeps a flood of refused calls from
//! becoming a flood of audit lines, counting what it turns away by reason.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A window of at most N admissions per second, counting what it turns away.
#[derive(Debug)]
pub(crate) struct Limiter {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
    suppressed: BTreeMap<String, u64>,
}

/// What was turned away since the last summary, by reason.
pub(crate) type Suppressed = BTreeMap<String, u64>;

impl Limiter {
    pub(crate) fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            state: Mutex::new(Window {
                started: Instant::now(),
                used: 0,
                suppressed: BTreeMap::new(),
            }),
        }
    }

    /// `Some(what was suppressed before)` when this one may be written; `None` when it is
    /// suppressed (and counted under `reason`).
    pub(crate) fn admit(&self, reason: &str) -> Option<Suppressed> {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if window.started.elapsed() >= Duration::from_secs(1) {
            window.started = Instant::now();
            window.used = 0;
        }
        if window.used < self.per_second {
            window.used += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            *window.suppressed.entry(reason.to_owned()).or_default() += 1;
            None
        }
    }

    /// What was suppressed and not yet reported, once the window it happened in is over.
    pub(crate) fn take_suppressed(&self) -> Suppressed {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if window.started.elapsed() >= Duration::from_secs(1) {
            std::mem::take(&mut window.suppressed)
        } else {
            Suppressed::new()
        }
    }

    /// Everything suppressed and not yet reported, window over or not (at shutdown).
    pub(crate) fn take_all(&self) -> Suppressed {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut window.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while the window was held does not stop the counting: the window is taken
    /// over, never silently skipped (the refusal is still counted and summarised).
    #[test]
    fn a_poisoned_window_goes_on_counting() {
        let limiter = std::sync::Arc::new(Limiter::new(1));
        assert!(limiter.admit("no_rule").is_some());
        let held = std::sync::Arc::clone(&limiter);
        let panicked = std::thread::spawn(move || {
            let _window = held.state.lock().unwrap();
            panic!("a panic while the window is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(limiter.state.is_poisoned());
        // Over the limit: suppressed and counted, not let through unlimited.
        assert!(limiter.admit("no_rule").is_none());
        assert_eq!(limiter.take_all().get("no_rule"), Some(&1));
    }
}
