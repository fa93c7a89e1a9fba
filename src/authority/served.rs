//! Who hears of each key set the authority serves, beside the hot paths' pointer: the
//! WatchKeys streams, and the metrics' key-age inputs (set here, when a set changes, so
//! that a scrape reads them and never the store's records).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::Authority;
use crate::{keys::KeyState, keyset::KeySet, metrics::KeyAges};

impl Authority {
    /// The current key set now, and every later one as it is swapped in.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.changes.subscribe()
    }

    /// Sets the metrics' key-age inputs from the key set served now, and again whenever
    /// another one is.
    pub fn report_key_ages(&self, key_ages: KeyAges) {
        self.changes.report_key_ages(key_ages);
    }
}

pub(super) struct Served {
    /// A watch channel keeps only the latest set: a watcher never needs the ones it missed.
    sets: watch::Sender<Arc<KeySet>>,
    /// Held while a set is announced, so that the ages reported are the last set's even
    /// when they are first asked for while a change goes out.
    key_ages: Mutex<Option<KeyAges>>,
}

impl Served {
    pub(super) fn new(set: Arc<KeySet>) -> Served {
        Served {
            sets: watch::Sender::new(set),
            key_ages: Mutex::new(None),
        }
    }

    /// `set` is served from now on.
    pub(super) fn send_replace(&self, set: Arc<KeySet>) {
        let key_ages = self.key_ages.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key_ages) = key_ages.as_ref() {
            report(key_ages, &set);
        }
        self.sets.send_replace(set);
    }

    fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.sets.subscribe()
    }

    /// Sets `key_ages` from the set served now, and from every later one.
    fn report_key_ages(&self, key_ages: KeyAges) {
        let mut held = self.key_ages.lock().unwrap_or_else(PoisonError::into_inner);
        report(&key_ages, &self.sets.borrow());
        *held = Some(key_ages);
    }
}

/// Each algorithm's current key's activation time (its creation time if it has none: a
/// key that has signed since it was made).
fn report(key_ages: &KeyAges, set: &KeySet) {
    let current = set
        .records()
        .iter()
        .filter(|record| record.state == KeyState::Current)
        .map(|record| (record.alg, record.activated_at.unwrap_or(record.created_at)));
    key_ages.serving(current, set.timing().rotation_period);
}
