//! Who hears of each key set the authority serves, beside the hot paths' pointer: the
//! WatchKeys streams, and the metrics' key-age inputs (set here, when a set changes, so
//! that a scrape reads them and never the store's records).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::Authority;
use crate::{authority::keys::KeyState, authority::keyset::KeySet, metrics::KeyAges};

impl Authority {
    /// The current key set now, and every later one as it is swapped in.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.changes.subscribe()
    }

    /// Sets the metrics' key-age inputs from the key set served now, and again whenever
    /// another one is.
    pub(crate) fn report_key_ages(&self, key_ages: KeyAges) {
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
/// key that has signed since it was made), and the fingerprint of the keys published.
fn report(key_ages: &KeyAges, set: &KeySet) {
    let current = set
        .infos()
        .iter()
        .filter(|record| record.state == KeyState::Current)
        .map(|record| (record.alg, record.activated_at.unwrap_or(record.created_at)));
    key_ages.serving(
        current,
        set.timing().rotation_period,
        set.jwks().fingerprint,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        authority::keys,
        authority::lifecycle,
        authority::lifecycle::Timing,
        authority::signers::Signers,
        metrics::{AuthorityState, Metrics},
    };
    use token_authority_jose::crypto::Algorithm;

    const TIMING: Timing = Timing {
        publish_lead: 60,
        rotation_period: 3600,
        max_ttl: 600,
        leeway: 60,
    };
    const ALGS: [Algorithm; 1] = [Algorithm::ES256];

    fn gauges(metrics: &Metrics, now: u64) -> (String, String) {
        let text = metrics.render(&AuthorityState::default(), now);
        let line = |name: &str| {
            let prefix = format!("token_authority_{name}{{algorithm=\"ES256\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .unwrap()
                .to_owned()
        };
        (
            line("current_key_age_seconds"),
            line("seconds_until_next_rotation"),
        )
    }

    fn fingerprint(metrics: &Metrics, now: u64) -> String {
        let text = metrics.render(&AuthorityState::default(), now);
        text.lines()
            .find_map(|line| line.strip_prefix("token_authority_key_set_fingerprint "))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_metrics_follow_each_set_served_from_when_they_are_attached() {
        let mut generate = keys::generate;
        let first = lifecycle::due(&[], &ALGS, TIMING, 1000, &mut generate).unwrap();
        let records = first.apply_to(&[]);
        let set = KeySet::build(&records, &Signers::InProcess, &ALGS, false, TIMING).unwrap();
        let served = Served::new(Arc::new(set));
        let metrics = Metrics::new(&ALGS);
        served.report_key_ages(metrics.key_ages());
        assert_eq!(gauges(&metrics, 1100), ("100".into(), "3500".into()));
        let first_fingerprint = fingerprint(&metrics, 1100);
        assert_eq!(
            first_fingerprint,
            served.sets.borrow().jwks().fingerprint.to_string()
        );

        let rotated = lifecycle::rotate(
            &records,
            Algorithm::ES256,
            true,
            TIMING,
            2000,
            &mut generate,
        )
        .unwrap()
        .apply_to(&records);
        let next = KeySet::build(&rotated, &Signers::InProcess, &ALGS, false, TIMING).unwrap();
        served.send_replace(Arc::new(next));
        assert_eq!(gauges(&metrics, 2100), ("100".into(), "3500".into()));
        assert_ne!(fingerprint(&metrics, 2100), first_fingerprint);
    }
}
