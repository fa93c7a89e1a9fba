//! A connection's requests as the listener's deadlines see them: how many are in flight,
//! since when it has been quiet, and whether a response is stuck on a client that stopped
//! reading.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// What the connection's requests are doing, for the idle and stall deadlines and the
/// per-connection request limit. One short lock per request and per response frame, on a
/// mutex of this connection only.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) inner: Mutex<StateInner>,
    /// Signalled when the last request in flight ends.
    pub(super) drained: tokio::sync::Notify,
}

#[derive(Debug)]
pub(super) struct StateInner {
    /// Requests whose response has not been fully handed to the client.
    pub(super) in_flight: usize,
    /// When the last request ended (or the connection started).
    pub(super) last_active: Instant,
    /// Responses whose next frame is waiting for the client to take it, since when.
    pub(super) waiting_on_client: HashMap<u64, Instant>,
    pub(super) next_id: u64,
}

impl Default for ConnState {
    fn default() -> ConnState {
        ConnState {
            inner: Mutex::new(StateInner {
                in_flight: 0,
                last_active: Instant::now(),
                waiting_on_client: HashMap::new(),
                next_id: 0,
            }),
            drained: tokio::sync::Notify::new(),
        }
    }
}

pub(super) enum Verdict {
    Idle,
    Stalled,
    Busy { next_check: Instant },
}

impl ConnState {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        // The state stays consistent if a holder panicked: every update is one assignment.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Since when nothing has been in flight; `None` while something is.
    pub(super) fn quiet_since(&self) -> Option<Instant> {
        let inner = self.lock();
        (inner.in_flight == 0).then_some(inner.last_active)
    }

    /// A new request, unless `limit` are already in flight.
    pub(super) fn start(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
        let mut inner = self.lock();
        if inner.in_flight >= limit {
            return None;
        }
        inner.in_flight += 1;
        inner.next_id += 1;
        Some(InFlight {
            state: Arc::clone(self),
            id: inner.next_id,
        })
    }

    /// Never later than the true deadline: the caller checks again when woken.
    pub(super) fn check(&self, now: Instant, idle: Duration) -> Verdict {
        let inner = self.lock();
        if inner.in_flight == 0 {
            let deadline = inner.last_active + idle;
            return if now >= deadline {
                Verdict::Idle
            } else {
                Verdict::Busy {
                    next_check: deadline,
                }
            };
        }
        match inner.waiting_on_client.values().min() {
            Some(since) if now >= *since + idle => Verdict::Stalled,
            Some(since) => Verdict::Busy {
                next_check: (*since + idle).min(now + idle),
            },
            None => Verdict::Busy {
                next_check: now + idle,
            },
        }
    }
}

/// One request in flight, from its arrival until its response body ends or is dropped.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) state: Arc<ConnState>,
    pub(super) id: u64,
}

impl InFlight {
    /// The response (or its next frame) is with hyper, to be sent when the client reads.
    pub(super) fn handed_over(&self) {
        self.state
            .lock()
            .waiting_on_client
            .insert(self.id, Instant::now());
    }

    /// The response body itself has nothing yet: not the client's doing.
    pub(super) fn waiting_on_source(&self) {
        self.state.lock().waiting_on_client.remove(&self.id);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.state.lock();
        inner.in_flight -= 1;
        inner.waiting_on_client.remove(&self.id);
        inner.last_active = Instant::now();
        if inner.in_flight == 0 {
            // A stored permit if nobody waits yet: the wake-up is not lost.
            self.state.drained.notify_one();
        }
    }
}
