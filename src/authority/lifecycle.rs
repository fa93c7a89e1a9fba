//! The key lifecycle as pure functions of the stored records and `now`.
//!
//! Per algorithm: `next -> current -> retired -> deleted`, or `revoked` in an emergency.
//! A `next` key is published before it may sign (the publish lead), so verifiers holding a
//! cached JWKS already know it; a retired key stays published until its last token has
//! expired. Nothing here touches the clock, the disk or the network: each function returns
//! the records that change and the kids to delete, and the caller persists them before acting
//! on them. That keeps the rules testable over days of simulated time in milliseconds.

use crate::authority::keys::{GeneratedKey, KeyRecord, KeyState};
use token_authority_jose::crypto::{Algorithm, CryptoError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("no current key for {0}: the key set is inconsistent")]
    NoCurrentKey(Algorithm),
    #[error("key {0} already exists")]
    DuplicateKid(String),
    #[error("the next {alg} key {kid} has been published for {published_for}s of the {lead}s publish lead; rotating now could break verifiers with a cached JWKS. It is safe at unix time {safe_at} (in {wait}s); set force to rotate anyway")]
    NotYetSafe {
        alg: Algorithm,
        kid: String,
        published_for: u64,
        lead: u64,
        safe_at: u64,
        wait: u64,
    },
    #[error("no key {0}")]
    UnknownKey(String),
    #[error("{0} is the last usable {1} key; revoking it would leave nothing to sign with")]
    LastUsableKey(String, Algorithm),
    #[error("{0} is not configured on this authority")]
    UnconfiguredAlgorithm(Algorithm),
    #[error(transparent)]
    Generation(#[from] CryptoError),
}

/// The timings the lifecycle follows, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a key is published before it may sign.
    pub publish_lead: u64,
    /// How long a key signs before the scheduled rotation replaces it.
    pub rotation_period: u64,
    /// The largest ttl a token may be issued with now.
    pub max_ttl: u64,
    pub leeway: u64,
}

/// A change to persist: records to write in full, kids to delete.
#[derive(Debug, Default)]
pub struct Plan {
    pub(crate) changed: Vec<KeyRecord>,
    pub deleted: Vec<String>,
    /// Per algorithm rotated: (current kid, previous kid).
    pub rotated: Vec<(Algorithm, String, String)>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }

    /// The records after this plan is applied.
    pub fn apply_to(&self, records: &[KeyRecord]) -> Vec<KeyRecord> {
        let mut merged: Vec<KeyRecord> = records
            .iter()
            .filter(|r| !self.deleted.contains(&r.kid))
            .filter(|r| !self.changed.iter().any(|c| c.kid == r.kid))
            .cloned()
            .collect();
        merged.extend(self.changed.iter().cloned());
        merged.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        merged
    }
}

/// A source of fresh keys (the real generator, or a fake in tests).
pub trait KeySource {
    fn generate(&mut self, alg: Algorithm) -> Result<GeneratedKey, CryptoError>;
}

impl<F: FnMut(Algorithm) -> Result<GeneratedKey, CryptoError> + ?Sized> KeySource for F {
    fn generate(&mut self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
        self(alg)
    }
}

fn new_record(key: GeneratedKey, state: KeyState, now: u64, max_ttl: u64) -> KeyRecord {
    KeyRecord {
        kid: key.kid,
        alg: key.alg,
        state,
        created_at: now,
        published_at: now,
        activated_at: (state == KeyState::Current).then_some(now),
        retired_at: None,
        delete_after: None,
        revoked_at: None,
        revoked_reason: None,
        max_token_ttl: max_ttl,
        private_key: key.private_key,
        token: key.token,
    }
}

/// Works on a copy of the records, collecting what changed.
struct Draft<'a, S: KeySource + ?Sized> {
    records: Vec<KeyRecord>,
    plan: Plan,
    timing: Timing,
    now: u64,
    keys: &'a mut S,
}

impl<S: KeySource + ?Sized> Draft<'_, S> {
    fn find(&self, alg: Algorithm, state: KeyState) -> Option<usize> {
        self.records
            .iter()
            .position(|r| r.alg == alg && r.state == state)
    }

    fn update(&mut self, index: usize, change: impl FnOnce(&mut KeyRecord)) {
        change(&mut self.records[index]);
        let record = self.records[index].clone();
        self.plan.changed.retain(|c| c.kid != record.kid);
        self.plan.changed.push(record);
    }

    fn add(&mut self, alg: Algorithm, state: KeyState) -> Result<(), LifecycleError> {
        let key = self.keys.generate(alg)?;
        if self.records.iter().any(|r| r.kid == key.kid) {
            return Err(LifecycleError::DuplicateKid(key.kid));
        }
        let record = new_record(key, state, self.now, self.timing.max_ttl);
        self.plan.changed.push(record.clone());
        self.records.push(record);
        Ok(())
    }

    /// `next -> current`, `current -> retired`, and a fresh `next`.
    fn promote(&mut self, alg: Algorithm) -> Result<(), LifecycleError> {
        let now = self.now;
        let leeway = self.timing.leeway;
        let max_ttl = self.timing.max_ttl;
        let current = self
            .find(alg, KeyState::Current)
            .ok_or(LifecycleError::NoCurrentKey(alg))?;
        let previous = self.records[current].kid.clone();
        self.update(current, |r| {
            r.state = KeyState::Retired;
            r.retired_at = Some(now);
            r.delete_after = Some(now.saturating_add(r.max_token_ttl).saturating_add(leeway));
        });
        let next = match self.find(alg, KeyState::Next) {
            Some(next) => next,
            None => {
                self.add(alg, KeyState::Next)?;
                self.records.len() - 1
            }
        };
        let promoted = self.records[next].kid.clone();
        self.update(next, |r| {
            r.state = KeyState::Current;
            r.activated_at = Some(now);
            r.max_token_ttl = r.max_token_ttl.max(max_ttl);
        });
        self.add(alg, KeyState::Next)?;
        self.plan.rotated.push((alg, promoted, previous));
        Ok(())
    }

    /// Brings an algorithm to one current and one next key; deletes retired keys past
    /// retention; records a raised max ttl on the current key (the bound only grows).
    fn settle(&mut self, alg: Algorithm) -> Result<(), LifecycleError> {
        if self.find(alg, KeyState::Current).is_none() {
            // A new algorithm (or store): its first key signs at once, as no verifier can
            // hold a stale JWKS for an algorithm that never signed.
            match self.find(alg, KeyState::Next) {
                Some(next) => {
                    let now = self.now;
                    self.update(next, |r| {
                        r.state = KeyState::Current;
                        r.activated_at = Some(now);
                    })
                }
                None => self.add(alg, KeyState::Current)?,
            }
        }
        if self.find(alg, KeyState::Next).is_none() {
            self.add(alg, KeyState::Next)?;
        }
        let max_ttl = self.timing.max_ttl;
        if let Some(current) = self.find(alg, KeyState::Current) {
            if self.records[current].max_token_ttl < max_ttl {
                self.update(current, |r| r.max_token_ttl = max_ttl);
            }
        }
        let expired: Vec<String> = self
            .records
            .iter()
            .filter(|r| r.alg == alg && r.state == KeyState::Retired)
            .filter(|r| r.delete_after.is_some_and(|at| at <= self.now))
            .map(|r| r.kid.clone())
            .collect();
        for kid in expired {
            self.records.retain(|r| r.kid != kid);
            self.plan.changed.retain(|c| c.kid != kid);
            self.plan.deleted.push(kid);
        }
        Ok(())
    }

    fn safe_at(&self, next: usize) -> u64 {
        self.records[next].published_at + self.timing.publish_lead
    }

    fn finish(self) -> Plan {
        self.plan
    }
}

fn draft<'a, S: KeySource + ?Sized>(
    records: &[KeyRecord],
    timing: Timing,
    now: u64,
    keys: &'a mut S,
) -> Draft<'a, S> {
    Draft {
        records: records.to_vec(),
        plan: Plan::default(),
        timing,
        now,
        keys,
    }
}

/// What is due at `now` without anyone asking: missing keys created, a scheduled rotation
/// performed once the period is over and the next key has been published long enough, and
/// retired keys past retention deleted. Used on start and by the background task.
pub fn due(
    records: &[KeyRecord],
    algorithms: &[Algorithm],
    timing: Timing,
    now: u64,
    keys: &mut (impl KeySource + ?Sized),
) -> Result<Plan, LifecycleError> {
    let mut draft = draft(records, timing, now, keys);
    for &alg in algorithms {
        draft.settle(alg)?;
        let (Some(current), Some(next)) = (
            draft.find(alg, KeyState::Current),
            draft.find(alg, KeyState::Next),
        ) else {
            continue;
        };
        let period_over = draft.records[current]
            .activated_at
            .is_some_and(|at| at.saturating_add(timing.rotation_period) <= now);
        if period_over && draft.safe_at(next) <= now {
            draft.promote(alg)?;
        }
    }
    Ok(draft.finish())
}

/// An operator's rotation: promotes the next key of `alg` if it has been published for the
/// publish lead, or at once with `force`.
pub fn rotate(
    records: &[KeyRecord],
    alg: Algorithm,
    force: bool,
    timing: Timing,
    now: u64,
    keys: &mut (impl KeySource + ?Sized),
) -> Result<Plan, LifecycleError> {
    let mut draft = draft(records, timing, now, keys);
    draft.settle(alg)?;
    if let Some(next) = draft.find(alg, KeyState::Next) {
        let safe_at = draft.safe_at(next);
        if !force && safe_at > now {
            let record = &draft.records[next];
            return Err(LifecycleError::NotYetSafe {
                alg,
                kid: record.kid.clone(),
                published_for: now.saturating_sub(record.published_at),
                lead: timing.publish_lead,
                safe_at,
                wait: safe_at - now,
            });
        }
    }
    draft.promote(alg)?;
    Ok(draft.finish())
}

/// Emergency revocation of `kid`: withdrawn from the JWKS at once, its tokens rejected.
/// Revoking the current key promotes the next one immediately (there is no safe wait in an
/// emergency); revoking the next key replaces it. The revoked record stays, so the kid can
/// never come back.
pub(crate) fn revoke(
    records: &[KeyRecord],
    kid: &str,
    reason: &str,
    timing: Timing,
    now: u64,
    keys: &mut (impl KeySource + ?Sized),
) -> Result<Plan, LifecycleError> {
    let mut draft = draft(records, timing, now, keys);
    let index = draft
        .records
        .iter()
        .position(|r| r.kid == kid)
        .ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?;
    let (alg, state) = (draft.records[index].alg, draft.records[index].state);
    if state == KeyState::Revoked {
        return Ok(draft.finish());
    }
    if state == KeyState::Current && draft.find(alg, KeyState::Next).is_none() {
        return Err(LifecycleError::LastUsableKey(kid.to_owned(), alg));
    }
    if state == KeyState::Current {
        draft.promote(alg)?;
    }
    let index = draft
        .records
        .iter()
        .position(|r| r.kid == kid)
        .ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?;
    let reason = reason.to_owned();
    draft.update(index, |r| {
        r.state = KeyState::Revoked;
        r.revoked_at = Some(now);
        r.revoked_reason = Some(reason);
        r.delete_after = None;
        // It will never sign or verify again: erase the private half (a compromised key should
        // not stay on disk). The kid stays, so it can never come back.
        r.private_key =
            crate::authority::keys::PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new()));
    });
    if draft.find(alg, KeyState::Next).is_none() {
        draft.add(alg, KeyState::Next)?;
    }
    Ok(draft.finish())
}

/// Adds an existing key (a team's own, made with `openssl genpkey`) as the `next` key of its
/// algorithm; it then rotates in under the same rules. A generated next key it replaces never
/// signed, so it is deleted. On a store without keys the imported key is the only one, and
/// it signs from the first start.
pub(crate) fn import(
    records: &[KeyRecord],
    key: GeneratedKey,
    now: u64,
    max_ttl: u64,
) -> Result<Plan, LifecycleError> {
    if records.iter().any(|r| r.kid == key.kid) {
        return Err(LifecycleError::DuplicateKid(key.kid));
    }
    let mut plan = Plan::default();
    if let Some(next) = records
        .iter()
        .find(|r| r.alg == key.alg && r.state == KeyState::Next && r.activated_at.is_none())
    {
        plan.deleted.push(next.kid.clone());
    }
    plan.changed
        .push(new_record(key, KeyState::Next, now, max_ttl));
    Ok(plan)
}

/// When the published set changes next without anyone asking (a rotation or a deletion),
/// if ever: the JWKS may not be cached past it.
pub(crate) fn next_change(records: &[KeyRecord], timing: Timing) -> Option<u64> {
    let rotations = records
        .iter()
        .filter(|r| r.state == KeyState::Current)
        .filter_map(|current| {
            let period_end = current.activated_at?.saturating_add(timing.rotation_period);
            let next_safe = records
                .iter()
                .find(|r| r.alg == current.alg && r.state == KeyState::Next)
                .map_or(period_end, |next| {
                    next.published_at.saturating_add(timing.publish_lead)
                });
            Some(period_end.max(next_safe))
        });
    let deletions = records
        .iter()
        .filter(|r| r.state == KeyState::Retired)
        .filter_map(|r| r.delete_after);
    rotations.chain(deletions).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::keys::PrivateKeyDer;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;
    const TIMING: Timing = Timing {
        publish_lead: 15 * 60,
        rotation_period: DAY,
        max_ttl: HOUR,
        leeway: 60,
    };

    /// Fake keys: kids k1, k2, ... in order of generation.
    struct Counter(u32);

    impl KeySource for Counter {
        fn generate(&mut self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
            self.0 += 1;
            Ok(GeneratedKey {
                kid: format!("k{}", self.0),
                alg,
                private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(vec![1, 2, 3])),
                token: None,
            })
        }
    }

    fn states(records: &[KeyRecord]) -> Vec<(&str, KeyState)> {
        records.iter().map(|r| (r.kid.as_str(), r.state)).collect()
    }

    fn step(records: &mut Vec<KeyRecord>, plan: Plan) {
        *records = plan.apply_to(records);
    }

    fn start(keys: &mut Counter, now: u64) -> Vec<KeyRecord> {
        let plan = due(&[], &[Algorithm::RS256], TIMING, now, keys).unwrap();
        plan.apply_to(&[])
    }

    fn invariant(records: &[KeyRecord]) {
        for state in [KeyState::Current, KeyState::Next] {
            assert_eq!(
                records.iter().filter(|r| r.state == state).count(),
                1,
                "{:?}",
                states(records)
            );
        }
    }

    #[test]
    fn a_new_store_gets_a_current_and_a_next_key() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        assert_eq!(
            states(&records),
            [("k1", KeyState::Current), ("k2", KeyState::Next)]
        );
        assert_eq!(records[0].activated_at, Some(1000));
        assert_eq!(records[1].published_at, 1000);
        // Nothing more is due until the period is over.
        assert!(due(
            &records,
            &[Algorithm::RS256],
            TIMING,
            1000 + DAY - 1,
            &mut keys
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn manual_rotation_waits_for_the_publish_lead_unless_forced() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        let err = rotate(
            &records,
            Algorithm::RS256,
            false,
            TIMING,
            1000 + 600,
            &mut keys,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LifecycleError::NotYetSafe {
                    safe_at: 1900,
                    wait: 300,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("set force"));
        let plan = rotate(&records, Algorithm::RS256, false, TIMING, 1900, &mut keys).unwrap();
        assert_eq!(
            plan.rotated,
            [(Algorithm::RS256, "k2".to_owned(), "k1".to_owned())]
        );
        let forced = rotate(&records, Algorithm::RS256, true, TIMING, 1001, &mut keys).unwrap();
        assert_eq!(forced.rotated[0].1, "k2");
    }

    /// Days of scheduled rotations: one current and one next always; each key published for
    /// at least the lead before it signs; retired keys kept until their tokens expired.
    #[test]
    fn walking_a_week_of_schedule() {
        let mut keys = Counter(0);
        let t0 = 1_000_000;
        let mut records = start(&mut keys, t0);
        let mut signed_by: Vec<(String, u64)> = Vec::new(); // (kid, last exp it signed)
        let mut now = t0;
        let mut rotations = 0;
        while now < t0 + 7 * DAY {
            now += 600;
            let plan = due(&records, &[Algorithm::RS256], TIMING, now, &mut keys).unwrap();
            rotations += plan.rotated.len();
            step(&mut records, plan);
            invariant(&records);
            let current = records
                .iter()
                .find(|r| r.state == KeyState::Current)
                .unwrap();
            assert!(current.published_at + TIMING.publish_lead <= now || current.kid == "k1");
            signed_by.push((current.kid.clone(), now + TIMING.max_ttl));
            // Every token signed so far is still verifiable until its exp.
            for (kid, exp) in &signed_by {
                if *exp + TIMING.leeway > now {
                    assert!(
                        records
                            .iter()
                            .any(|r| &r.kid == kid && r.state.is_published()),
                        "{kid} lost at {now}"
                    );
                }
            }
        }
        assert_eq!(rotations, 7, "{:?}", states(&records));
        // Retired keys past retention are gone: only the last day's retiree remains.
        assert!(
            records
                .iter()
                .filter(|r| r.state == KeyState::Retired)
                .count()
                <= 1
        );
    }

    #[test]
    fn a_server_down_past_a_due_rotation_rotates_on_start() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        let plan = due(
            &records,
            &[Algorithm::RS256],
            TIMING,
            1000 + 3 * DAY,
            &mut keys,
        )
        .unwrap();
        assert_eq!(plan.rotated.len(), 1);
        // The key retired at start is kept for the tokens it may have signed before.
        let records = plan.apply_to(&records);
        let retired = records
            .iter()
            .find(|r| r.state == KeyState::Retired)
            .unwrap();
        assert_eq!(retired.delete_after, Some(1000 + 3 * DAY + HOUR + 60));
    }

    #[test]
    fn retention_uses_the_ttl_bound_stored_with_the_key() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        // Lowering max ttl later does not shorten retention of the key that signed with 1h.
        let lowered = Timing {
            max_ttl: 60,
            ..TIMING
        };
        let plan = rotate(&records, Algorithm::RS256, true, lowered, 2000, &mut keys).unwrap();
        let records = plan.apply_to(&records);
        let k1 = records.iter().find(|r| r.kid == "k1").unwrap();
        assert_eq!(k1.delete_after, Some(2000 + HOUR + 60));
        let plan = due(
            &records,
            &[Algorithm::RS256],
            lowered,
            2000 + HOUR + 59,
            &mut keys,
        )
        .unwrap();
        assert!(!plan.deleted.contains(&"k1".to_owned()));
        let plan = due(
            &records,
            &[Algorithm::RS256],
            lowered,
            2000 + HOUR + 60,
            &mut keys,
        )
        .unwrap();
        assert_eq!(plan.deleted, ["k1"]);
        // Raising it grows the bound of the current key.
        let raised = Timing {
            max_ttl: 2 * HOUR,
            ..TIMING
        };
        let plan = due(&records, &[Algorithm::RS256], raised, 2001, &mut keys).unwrap();
        assert_eq!(
            plan.changed
                .iter()
                .find(|r| r.kid == "k2")
                .unwrap()
                .max_token_ttl,
            2 * HOUR
        );
    }

    #[test]
    fn revocation_rules() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        // Revoking current promotes next at once and makes a new next.
        let plan = revoke(&records, "k1", "leaked", TIMING, 1001, &mut keys).unwrap();
        let records = plan.apply_to(&records);
        assert_eq!(
            states(&records),
            [
                ("k1", KeyState::Revoked),
                ("k2", KeyState::Current),
                ("k3", KeyState::Next)
            ]
        );
        assert_eq!(records[0].revoked_reason.as_deref(), Some("leaked"));
        assert!(
            records[0].private_key.as_bytes().is_empty(),
            "a revoked key keeps its private half"
        );
        // Revoking next replaces it; revoking again changes nothing.
        let records = revoke(&records, "k3", "test", TIMING, 1002, &mut keys)
            .unwrap()
            .apply_to(&records);
        invariant(&records);
        assert!(revoke(&records, "k3", "again", TIMING, 1003, &mut keys)
            .unwrap()
            .is_empty());
        assert_eq!(
            revoke(&records, "nope", "x", TIMING, 1003, &mut keys).unwrap_err(),
            LifecycleError::UnknownKey("nope".into())
        );
        // A current key with no next is the last usable one.
        let alone: Vec<KeyRecord> = records
            .iter()
            .filter(|r| r.state != KeyState::Next)
            .cloned()
            .collect();
        assert!(matches!(
            revoke(&alone, "k2", "x", TIMING, 1004, &mut keys).unwrap_err(),
            LifecycleError::LastUsableKey(..)
        ));
        // A revoked kid is never deleted nor reused.
        let later = due(
            &records,
            &[Algorithm::RS256],
            TIMING,
            1000 + 30 * DAY,
            &mut keys,
        )
        .unwrap();
        assert!(!later.deleted.contains(&"k1".to_owned()));
    }

    #[test]
    fn an_imported_key_replaces_next_and_rotates_in_under_the_rules() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        let imported = Counter(100).generate(Algorithm::RS256).unwrap();
        let plan = import(&records, imported, 2000, HOUR).unwrap();
        assert_eq!(plan.deleted, ["k2"]);
        let records = plan.apply_to(&records);
        assert_eq!(
            states(&records),
            [("k1", KeyState::Current), ("k101", KeyState::Next)]
        );
        let err = rotate(
            &records,
            Algorithm::RS256,
            false,
            TIMING,
            2000 + 60,
            &mut keys,
        )
        .unwrap_err();
        assert!(matches!(err, LifecycleError::NotYetSafe { .. }));
        let plan = rotate(
            &records,
            Algorithm::RS256,
            false,
            TIMING,
            2000 + 900,
            &mut keys,
        )
        .unwrap();
        assert_eq!(plan.rotated[0].1, "k101");
        // Into an empty store: the imported key signs from the first start.
        let only = import(
            &[],
            Counter(200).generate(Algorithm::ES256).unwrap(),
            10,
            HOUR,
        )
        .unwrap()
        .apply_to(&[]);
        let started = due(&only, &[Algorithm::ES256], TIMING, 20, &mut keys)
            .unwrap()
            .apply_to(&only);
        assert_eq!(
            started.iter().find(|r| r.kid == "k201").unwrap().state,
            KeyState::Current
        );
        let again = import(
            &started,
            Counter(200).generate(Algorithm::ES256).unwrap(),
            30,
            HOUR,
        );
        assert!(
            matches!(again, Err(LifecycleError::DuplicateKid(ref kid)) if kid == "k201"),
            "{:?}",
            again.map(|_| ())
        );
    }

    #[test]
    fn next_change_is_the_earlier_of_rotation_and_deletion() {
        let mut keys = Counter(0);
        let records = start(&mut keys, 1000);
        assert_eq!(next_change(&records, TIMING), Some(1000 + DAY));
        let records = rotate(&records, Algorithm::RS256, true, TIMING, 5000, &mut keys)
            .unwrap()
            .apply_to(&records);
        assert_eq!(next_change(&records, TIMING), Some(5000 + HOUR + 60));
    }
}
