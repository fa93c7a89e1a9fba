//! The key lifecycle as pure functions of the stored records and `now`.
//!
//! Nothing here touches the clock, the disk or the network: each function returns the
//! records that change, and the caller persists them before acting on them. That keeps the
//! rules testable over days of simulated time in milliseconds.

use crate::{
    crypto::Algorithm,
    keys::{GeneratedKey, KeyRecord, KeyState},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("no current key for {0}: the key set is inconsistent")]
    NoCurrentKey(Algorithm),
    #[error("key {0} already exists")]
    DuplicateKid(String),
}

/// The first key of an algorithm on a new store: it signs at once, as there is no verifier
/// yet that could hold a stale JWKS.
pub fn first_key(new: GeneratedKey, now: u64, max_ttl: u64) -> KeyRecord {
    KeyRecord {
        kid: new.kid,
        alg: new.alg,
        state: KeyState::Current,
        created_at: now,
        activated_at: Some(now),
        retired_at: None,
        revoked_at: None,
        revoked_reason: None,
        max_token_ttl: max_ttl,
        private_key: new.private_key,
    }
}

/// What a rotation changed.
#[derive(Debug)]
pub struct Rotation {
    /// The records to persist, in full.
    pub changed: Vec<KeyRecord>,
    pub current_kid: String,
    pub previous_kid: String,
}

/// `new` becomes the current key for its algorithm; the current one retires and keeps
/// verifying.
pub fn rotate(
    records: &[KeyRecord],
    new: GeneratedKey,
    now: u64,
    max_ttl: u64,
) -> Result<Rotation, LifecycleError> {
    if records.iter().any(|r| r.kid == new.kid) {
        return Err(LifecycleError::DuplicateKid(new.kid));
    }
    let alg = new.alg;
    let mut previous = records
        .iter()
        .find(|r| r.alg == alg && r.state == KeyState::Current)
        .cloned()
        .ok_or(LifecycleError::NoCurrentKey(alg))?;
    previous.state = KeyState::Retired;
    previous.retired_at = Some(now);
    let current = first_key(new, now, max_ttl);
    Ok(Rotation {
        current_kid: current.kid.clone(),
        previous_kid: previous.kid.clone(),
        changed: vec![previous, current],
    })
}

/// Changes due when the server starts: a current key that may now sign longer tokens than
/// it did before (a raised `--max-ttl`) records the larger bound, so its retention covers
/// them. The bound only ever grows.
pub fn on_start(records: &[KeyRecord], max_ttl: u64) -> Vec<KeyRecord> {
    records
        .iter()
        .filter(|r| r.state == KeyState::Current && r.max_token_ttl < max_ttl)
        .map(|r| KeyRecord {
            max_token_ttl: max_ttl,
            ..r.clone()
        })
        .collect()
}

/// Applies `changed` over `records` by kid, returning the new full list.
pub fn merge(records: &[KeyRecord], changed: &[KeyRecord]) -> Vec<KeyRecord> {
    let mut merged: Vec<KeyRecord> = records
        .iter()
        .filter(|r| !changed.iter().any(|c| c.kid == r.kid))
        .cloned()
        .collect();
    merged.extend(changed.iter().cloned());
    merged.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.kid.cmp(&b.kid))
    });
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKeyDer;

    fn key(kid: &str) -> GeneratedKey {
        GeneratedKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(vec![1, 2, 3])),
        }
    }

    #[test]
    fn rotation_retires_current_and_activates_new() {
        let records = vec![first_key(key("a"), 100, 3600)];
        let rotation = rotate(&records, key("b"), 200, 3600).unwrap();
        assert_eq!(
            (
                rotation.current_kid.as_str(),
                rotation.previous_kid.as_str()
            ),
            ("b", "a")
        );
        let merged = merge(&records, &rotation.changed);
        let states: Vec<_> = merged
            .iter()
            .map(|r| (r.kid.as_str(), r.state, r.retired_at))
            .collect();
        assert_eq!(
            states,
            [
                ("a", KeyState::Retired, Some(200)),
                ("b", KeyState::Current, None)
            ]
        );
        assert_eq!(
            merged
                .iter()
                .filter(|r| r.state == KeyState::Current)
                .count(),
            1
        );
    }

    #[test]
    fn rotation_refuses_a_known_kid_and_a_set_without_current() {
        let records = vec![first_key(key("a"), 100, 3600)];
        assert_eq!(
            rotate(&records, key("a"), 200, 3600).unwrap_err(),
            LifecycleError::DuplicateKid("a".into())
        );
        assert_eq!(
            rotate(&[], key("b"), 200, 3600).unwrap_err(),
            LifecycleError::NoCurrentKey(Algorithm::RS256)
        );
    }

    #[test]
    fn raised_max_ttl_grows_the_current_bound_and_never_shrinks_it() {
        let records = vec![first_key(key("a"), 100, 3600)];
        assert_eq!(on_start(&records, 7200)[0].max_token_ttl, 7200);
        assert!(on_start(&records, 60).is_empty());
    }
}
