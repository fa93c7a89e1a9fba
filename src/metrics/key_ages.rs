//! The inputs of the gauges that follow the key set served: when each algorithm's current
//! key began signing, the rotation period, and the set's fingerprint. Whoever serves a new
//! key set sets them; a scrape only reads them, and works the ages out from its own clock
//! (they grow between changes).

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use token_authority_jose::crypto::Algorithm;

#[derive(Debug, Default)]
struct Served {
    /// Unix seconds each algorithm's current key was activated.
    activated: HashMap<Algorithm, u64>,
    rotation_period: u64,
    /// Identifies the public keys served (`None` before a set is).
    fingerprint: Option<u64>,
}

/// A handle shared by the metrics and the one that serves key sets.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyAges {
    served: Arc<ArcSwap<Served>>,
}

/// What a scrape sets the gauges of one algorithm to.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ages {
    pub(crate) age: u64,
    pub(crate) until_rotation: u64,
}

impl KeyAges {
    /// A new key set is served: `current` names each algorithm's current key's activation
    /// time (unix seconds), `fingerprint` identifies its public keys. An algorithm without a
    /// current key keeps its gauges where they were.
    pub(crate) fn serving(
        &self,
        current: impl IntoIterator<Item = (Algorithm, u64)>,
        rotation_period: u64,
        fingerprint: u64,
    ) {
        self.served.store(Arc::new(Served {
            activated: current.into_iter().collect(),
            rotation_period,
            fingerprint: Some(fingerprint),
        }));
    }

    /// The fingerprint of the set served, once one is.
    pub(super) fn fingerprint(&self) -> Option<u64> {
        self.served.load().fingerprint
    }

    /// The gauges' values at `now`, for the algorithms that have a current key.
    pub(super) fn at(&self, now: u64) -> Vec<(Algorithm, Ages)> {
        let served = self.served.load();
        served
            .activated
            .iter()
            .map(|(alg, activated)| {
                let due = activated + served.rotation_period;
                let ages = Ages {
                    age: now.saturating_sub(*activated),
                    until_rotation: due.saturating_sub(now),
                };
                (*alg, ages)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_grow_with_the_clock_from_what_was_served() {
        let ages = KeyAges::default();
        assert!(ages.at(1_000).is_empty());
        ages.serving([(Algorithm::ES256, 1_000)], 3_600, 7);
        let at = |now| ages.at(now).pop().map(|(_, ages)| ages);
        assert_eq!(
            at(1_100),
            Some(Ages {
                age: 100,
                until_rotation: 3_500
            })
        );
        assert_eq!(
            at(5_000),
            Some(Ages {
                age: 4_000,
                until_rotation: 0
            })
        );
        ages.serving([(Algorithm::ES256, 4_600)], 3_600, 8);
        assert_eq!(
            at(5_000),
            Some(Ages {
                age: 400,
                until_rotation: 3_200
            })
        );
    }
}
