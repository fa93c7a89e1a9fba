//! The places watchers take: `--max-watchers` in all, and `--max-watchers-per-ip` for one
//! client address (an IPv6 client: its /64, as the listener's per-address limits count it),
//! so that one client cannot take every place and keep the others' watchers out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{metrics::WatchMetrics, transport::peers::PeerKey};

/// Why a watcher got no place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// `--max-watchers` are open.
    Full,
    /// Its address holds `--max-watchers-per-ip` already.
    PeerFull,
}

/// Every watcher's place, in all and per address.
#[derive(Debug)]
pub(super) struct Slots {
    all: Arc<Semaphore>,
    per_peer: usize,
    peers: Mutex<HashMap<PeerKey, usize>>,
    metrics: WatchMetrics,
}

impl Slots {
    pub(super) fn new(max: usize, per_peer: usize, metrics: WatchMetrics) -> Arc<Slots> {
        Arc::new(Slots {
            all: Arc::new(Semaphore::new(max)),
            per_peer,
            peers: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A place for a watcher of `peer` (`None`: not over TCP, counted in all only).
    pub(super) fn take(self: &Arc<Self>, peer: Option<PeerKey>) -> Result<Slot, Refused> {
        let permit = Arc::clone(&self.all).try_acquire_owned().map_err(|_| {
            self.metrics.refused_at_limit.inc();
            Refused::Full
        })?;
        if let Some(key) = peer {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let count = peers.entry(key).or_insert(0);
            if *count >= self.per_peer {
                self.metrics.refused_at_peer_limit.inc();
                return Err(Refused::PeerFull);
            }
            *count += 1;
        }
        self.metrics.open.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            peer,
            _permit: permit,
        })
    }
}

/// One watcher's place, counted while it lives.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    peer: Option<PeerKey>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub(super) fn metrics(&self) -> &WatchMetrics {
        &self.slots.metrics
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.metrics.open.dec();
        let Some(key) = self.peer else { return };
        let mut peers = self
            .slots
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = peers.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                peers.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use token_authority_jose::crypto::Algorithm;

    #[test]
    fn places_are_capped_in_all_and_per_address_and_given_back() {
        let metrics = Metrics::new(&[Algorithm::ES256]).watchers.clone();
        let slots = Slots::new(3, 2, metrics.clone());
        let key = |s: &str| Some(PeerKey::of(s.parse().unwrap()));
        let first = slots.take(key("10.0.0.1")).unwrap();
        let _second = slots.take(key("10.0.0.1")).unwrap();
        assert_eq!(slots.take(key("10.0.0.1")).unwrap_err(), Refused::PeerFull);
        // The refused one took no place in all.
        let _other = slots.take(key("10.0.0.2")).unwrap();
        assert_eq!(slots.take(key("10.0.0.3")).unwrap_err(), Refused::Full);
        assert_eq!(metrics.open.get(), 3);
        drop(first);
        assert_eq!(metrics.open.get(), 2);
        let _again = slots.take(key("10.0.0.1")).unwrap();
        assert_eq!(metrics.refused_at_peer_limit.get(), 1);
        assert_eq!(metrics.refused_at_limit.get(), 1);
    }
}
