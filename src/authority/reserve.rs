//! Keys generated before a change's transaction opens.
//!
//! A change of a shared keystore plans while it holds the change lock in a database
//! transaction, and the database ends a transaction left idle past its idle timeout (which
//! is what frees the lock of a replica that hangs). Generating an RSA key takes a moment in
//! the process and seconds in a hardware token: inside the transaction, a change that needs
//! a few of them would be ended half-way. So the plan first runs on the records this replica
//! holds with keys that are only counted, the keys it asked for are generated outside the
//! transaction, and the plan run under the lock takes them from this reserve. Only what a
//! change committed meanwhile by another replica adds is generated inside; what is not taken
//! is dropped (a token's objects destroyed).

use std::sync::{Arc, Mutex};

use crate::authority::{
    keys::{GeneratedKey, KeyRecord, PrivateKeyDer},
    lifecycle::{KeySource, LifecycleError, Plan},
    signers::Signers,
    AuthorityError,
};
use token_authority_jose::crypto::{Algorithm, CryptoError};

/// The algorithms of the keys `plan` generates when it runs on `records`, in order. A plan
/// that fails here asks for nothing: it fails again, with its reason, under the lock.
pub(super) fn demand<P>(records: &[KeyRecord], plan: P) -> Vec<Algorithm>
where
    P: FnOnce(&[KeyRecord], &mut dyn KeySource) -> Result<Plan, LifecycleError>,
{
    let mut counted = Counted(Vec::new());
    match plan(records, &mut counted) {
        Ok(_) => counted.0,
        Err(_) => Vec::new(),
    }
}

/// A key source that makes no key: it notes the algorithm and hands back a placeholder the
/// dry run's plan is thrown away with.
struct Counted(Vec<Algorithm>);

impl KeySource for Counted {
    fn generate(&mut self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
        self.0.push(alg);
        Ok(GeneratedKey {
            kid: format!("counted-{}", self.0.len()),
            alg,
            private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new())),
            token: None,
        })
    }
}

/// Keys made ahead of a change, shared between the plan (which takes them) and the caller
/// (which drops what is left once the change is over, committed or not).
#[derive(Clone)]
pub(super) struct KeyReserve(Arc<Mutex<Reserve>>);

struct Reserve {
    keys: Vec<GeneratedKey>,
    signers: Signers,
    /// Keys the plan asked for beyond the reserve, generated in the transaction.
    made_inside: usize,
    /// The token keys the plan took (in every run of it: a database may run the
    /// transaction again), destroyed at release unless the committed records name them.
    taken: Vec<GeneratedKey>,
}

impl KeyReserve {
    /// Generates a key of each of `algorithms` (blocking: run off the reactor).
    pub(super) fn fill(
        signers: Signers,
        algorithms: &[Algorithm],
    ) -> Result<KeyReserve, CryptoError> {
        let mut keys = Vec::with_capacity(algorithms.len());
        for alg in algorithms {
            match signers.generate(*alg) {
                Ok(key) => keys.push(key),
                Err(error) => {
                    signers.destroy_unused(&keys);
                    return Err(error);
                }
            }
        }
        Ok(KeyReserve(Arc::new(Mutex::new(Reserve {
            keys,
            signers,
            made_inside: 0,
            taken: Vec::new(),
        }))))
    }

    /// `fill`, off the reactor; a generation that fails is the lifecycle's error, as it is
    /// when the plan generates.
    pub(super) async fn make(
        signers: &Signers,
        algorithms: Vec<Algorithm>,
    ) -> Result<KeyReserve, AuthorityError> {
        let signers = signers.clone();
        let filled = tokio::task::spawn_blocking(move || KeyReserve::fill(signers, &algorithms))
            .await
            .map_err(AuthorityError::Task)?;
        Ok(filled.map_err(LifecycleError::from)?)
    }

    /// A key of `alg`: one from the reserve, or a fresh one when none is left.
    fn take(&self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
        let mut reserve = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = match reserve.keys.iter().position(|key| key.alg == alg) {
            Some(at) => reserve.keys.remove(at),
            None => {
                reserve.made_inside += 1;
                let signers = reserve.signers.clone();
                drop(reserve);
                let key = signers.generate(alg)?;
                reserve = self.0.lock().unwrap_or_else(|e| e.into_inner());
                key
            }
        };
        if let Some(token) = &key.token {
            reserve.taken.push(GeneratedKey {
                kid: key.kid.clone(),
                alg,
                private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new())),
                token: Some(token.clone()),
            });
        }
        Ok(key)
    }

    /// Drops the keys nobody took, and the token keys taken that no committed record
    /// names (a token's objects are destroyed), and returns how many keys had to be
    /// generated inside the transaction. `committed`: the records as the change left them
    /// (before it, when it failed and is known to have changed nothing); `None` when
    /// whether it committed is unknown, and then the taken keys stay in the token (a key
    /// left over wastes room; a key destroyed that a record names could never sign again).
    pub(super) fn release(&self, committed: Option<&[KeyRecord]>) -> usize {
        let mut reserve = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let unused = std::mem::take(&mut reserve.keys);
        reserve.signers.destroy_unused(&unused);
        if let Some(records) = committed {
            let taken = std::mem::take(&mut reserve.taken);
            let named = |key: &GeneratedKey| {
                records.iter().any(|record| {
                    record.token.as_ref().map(|t| &t.object_id)
                        == key.token.as_ref().map(|t| &t.object_id)
                })
            };
            let orphans: Vec<GeneratedKey> = taken.into_iter().filter(|key| !named(key)).collect();
            reserve.signers.destroy_unused(&orphans);
        }
        reserve.made_inside
    }

    /// The key source the plan generates through.
    pub(super) fn source(&self) -> impl KeySource + '_ {
        move |alg| self.take(alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::lifecycle::{self, Timing};

    const TIMING: Timing = Timing {
        rotation_period: 30 * 86_400,
        publish_lead: 3_600,
        max_ttl: 3_600,
        leeway: 60,
    };

    #[test]
    fn a_new_key_set_asks_for_a_current_and_a_next_key_of_each_algorithm() {
        let algorithms = [Algorithm::ES256, Algorithm::EdDSA];
        let wanted = demand(&[], |records, keys| {
            lifecycle::due(records, &algorithms, TIMING, 1_000, keys)
        });
        let mut sorted = wanted.clone();
        sorted.sort_by_key(|alg| alg.name());
        assert_eq!(
            sorted,
            [
                Algorithm::ES256,
                Algorithm::ES256,
                Algorithm::EdDSA,
                Algorithm::EdDSA
            ]
        );
    }

    #[test]
    fn the_plan_under_the_lock_takes_the_reserve_and_generates_only_what_it_lacks() {
        let reserve = KeyReserve::fill(Signers::InProcess, &[Algorithm::ES256]).unwrap();
        let reserved = reserve.0.lock().unwrap().keys[0].kid.clone();
        let mut source = reserve.source();
        let first = source.generate(Algorithm::ES256).unwrap();
        let second = source.generate(Algorithm::ES256).unwrap();
        assert_eq!(first.kid, reserved);
        assert_ne!(second.kid, reserved);
        assert_eq!(reserve.release(Some(&[])), 1);
    }

    #[test]
    fn keys_nobody_took_are_dropped_at_release() {
        let reserve =
            KeyReserve::fill(Signers::InProcess, &[Algorithm::ES256, Algorithm::EdDSA]).unwrap();
        let mut source = reserve.source();
        source.generate(Algorithm::EdDSA).unwrap();
        assert_eq!(reserve.release(Some(&[])), 0);
        assert!(reserve.0.lock().unwrap().keys.is_empty());
    }

    #[test]
    fn a_plan_that_fails_in_the_dry_run_asks_for_nothing() {
        let wanted = demand(&[], |records, keys| {
            lifecycle::rotate(records, Algorithm::ES256, false, TIMING, 1_000, keys)
        });
        assert!(wanted.is_empty());
    }
}
