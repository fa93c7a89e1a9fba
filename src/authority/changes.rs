//! How the key set changes: the operator's rotation and revocation, the schedule's steps,
//! each one transition persisted before it is served, and catching up with the changes
//! other replicas made to a shared store.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::{
    blocking, dropped, log_plan, replica,
    reserve::{self, KeyReserve},
    Authority, AuthorityError, Built, RotationOutcome,
};
use crate::{
    authority::keys::KeyRecord,
    authority::keyset::KeySet,
    authority::lifecycle::{self, KeySource, LifecycleError, Plan},
    store::{Change, Confirmations},
    telemetry::chain,
};
use token_authority_jose::crypto::Algorithm;

/// How often a replica waiting for the others reads their acknowledgements.
const CONFIRMATION_POLL: Duration = Duration::from_millis(10);

impl Authority {
    /// Brings the key set in memory up to the shared store's, if another replica changed
    /// it, or if the database went back in time (restored from a backup): any position
    /// other than the one held is read, never skipped. Returns whether the set changed. A
    /// store only this process writes has nothing to catch up with.
    pub async fn refresh(&self, now: u64) -> Result<bool, AuthorityError> {
        match self.store.position().await? {
            Some(found) if found != self.replica.position() => {}
            Some(_) => {
                self.synced_at.fetch_max(now, Ordering::AcqRel);
                // The heartbeat: still serving the store's position.
                self.acknowledge().await;
                return Ok(false);
            }
            None => return Ok(false),
        }
        // Serialised with transitions and read under the same lock, so a set read before a
        // change this replica made never replaces the newer one.
        let mut writer = self.writer.lock().await;
        let held = self.replica.position();
        let Some(snapshot) = self.store.snapshot_if_moved(&held).await? else {
            self.synced_at.fetch_max(now, Ordering::AcqRel);
            return Ok(false);
        };
        self.replica.refused(&snapshot.refused);
        if snapshot.follows_held == Some(false) {
            self.replica.went_back(&held, &snapshot.position);
        }
        if !replica::unrevoked(&self.replica.revocations(), &snapshot.records).is_empty() {
            // Written back first: the set served is the one the database holds after that.
            self.transition_locked(&mut writer, |_, _| Ok(Plan::default()))
                .await?;
            return Ok(true);
        }
        let algorithms = self.settings.algorithms.clone();
        let timing = self.settings.timing();
        let encrypted = self.store.encrypts_at_rest();
        let signers = self.settings.signers.clone();
        let records = Arc::new(snapshot.records);
        let previous = self.keys.load_full();
        let (before, read) = (Arc::clone(&writer), Arc::clone(&records));
        let set = blocking(move || {
            previous.rebuild(&before, &read, &signers, &algorithms, encrypted, timing)
        })
        .await??;
        let set = Arc::new(set);
        *writer = records;
        self.keys.store(Arc::clone(&set));
        // WatchKeys streams follow every set this replica serves, its own changes or another's.
        self.changes.send_replace(Arc::clone(&set));
        self.replica.serving(snapshot.position.clone(), set.infos());
        self.synced_at.fetch_max(now, Ordering::AcqRel);
        tracing::info!(
            generation = snapshot.position.generation,
            "key set updated from the shared keystore"
        );
        self.acknowledge().await;
        Ok(true)
    }

    /// The operator's rotation of `alg` (default: the first configured): the next key
    /// becomes current if it has been published for the publish lead, or at once with `force`.
    pub async fn rotate(
        &self,
        alg: Option<Algorithm>,
        force: bool,
        now: u64,
    ) -> Result<RotationOutcome, AuthorityError> {
        let alg = self.settings.algorithm(alg)?;
        let timing = self.settings.timing();
        let (plan, keys) = self
            .transition(move |records, generate| {
                lifecycle::rotate(records, alg, force, timing, now, generate)
            })
            .await?;
        let (_, current_kid, previous_kid) = plan
            .rotated
            .into_iter()
            .find(|(rotated, _, _)| *rotated == alg)
            .ok_or(LifecycleError::NoCurrentKey(alg))?;
        Ok(RotationOutcome {
            current_kid,
            previous_kid,
            keys,
        })
    }

    /// Emergency revocation; returns the kid that now signs for the revoked key's algorithm.
    pub async fn revoke(
        &self,
        kid: &str,
        reason: &str,
        now: u64,
    ) -> Result<(String, Arc<KeySet>), AuthorityError> {
        let timing = self.settings.timing();
        let known = |keys: &KeySet| keys.infos().iter().find(|r| r.kid == kid).map(|r| r.alg);
        let mut alg = known(&self.keys.load());
        if alg.is_none() && self.store.is_shared() {
            // Another replica may have created it since the last sync: an operator revoking
            // a key they have just seen in ListKeys must not be told it does not exist.
            self.refresh(now).await?;
            alg = known(&self.keys.load());
        }
        let alg = alg.ok_or_else(|| LifecycleError::UnknownKey(kid.to_owned()))?;
        let (kid, reason) = (kid.to_owned(), reason.to_owned());
        let (_, keys) = self
            .transition(move |records, generate| {
                lifecycle::revoke(records, &kid, &reason, timing, now, generate)
            })
            .await?;
        let current = keys
            .signer(alg)
            .map(|signer| signer.kid.to_string())
            .unwrap_or_default();
        Ok((current, keys))
    }

    /// Performs what the schedule says is due at `now`. Called by the background task.
    pub async fn tick(&self, now: u64) -> Result<Plan, AuthorityError> {
        let timing = self.settings.timing();
        let algorithms = self.settings.algorithms.clone();
        let (plan, _) = self
            .transition(move |records, generate| {
                lifecycle::due(records, &algorithms, timing, now, generate)
            })
            .await?;
        Ok(plan)
    }

    /// When the key set changes next by itself, if ever.
    pub(crate) fn next_change(&self) -> Option<u64> {
        self.keys.load().next_change()
    }

    /// Records in the shared store that this replica serves the position it holds, so a
    /// replica that changed the set can wait for it. A failure only delays that wait.
    async fn acknowledge(&self) {
        if let Err(error) = self.store.acknowledge(&self.replica.position()).await {
            tracing::debug!(error = %chain(&error), "cannot acknowledge the key set served");
        }
    }

    /// Waits, at most `bound`, until every other live replica of a shared store serves the
    /// key set this one serves now or a later one (after a revocation: until none of them
    /// signs with or accepts the revoked key). Returns how many confirmed of how many;
    /// `None` with a store only this process uses, before the sync task started, or when
    /// the acknowledgements cannot be read.
    pub(crate) async fn await_replicas(&self, bound: Duration) -> Option<Confirmations> {
        let live_within = self.replica.live_within()?;
        let generation = self.replica.position().generation;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match self.store.confirmations(generation, live_within).await {
                Ok(Some(seen)) if seen.all() || tokio::time::Instant::now() >= deadline => {
                    return Some(seen)
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "cannot read which replicas serve the new key set");
                    return None;
                }
            }
            tokio::time::sleep(CONFIRMATION_POLL).await;
        }
    }

    /// The sync task runs every `interval`: replicas that have not acknowledged for three
    /// of them are taken for gone.
    pub(crate) fn set_sync_interval(&self, interval: Duration) {
        self.replica.set_sync_interval(interval);
    }

    /// This replica stops: the others no longer wait for it.
    pub(crate) async fn leave(&self) {
        if let Err(error) = self.store.leave().await {
            tracing::debug!(error = %chain(&error), "cannot remove this replica from the keystore's list");
        }
    }

    /// One lifecycle change: plan it from the current records, build the next key set,
    /// persist the change (flushed), and only then serve the new set. Writers are serialised;
    /// readers never wait.
    async fn transition<F>(&self, plan: F) -> Result<(Plan, Arc<KeySet>), AuthorityError>
    where
        F: FnOnce(&[KeyRecord], &mut dyn KeySource) -> Result<Plan, LifecycleError>
            + Clone
            + Send
            + 'static,
    {
        let mut writer = self.writer.lock().await;
        let (plan, in_step) = self.transition_locked(&mut writer, plan).await?;
        if !in_step {
            // Nothing to do because another replica already did it: catch up now rather
            // than plan again from a stale set at the next wake.
            drop(writer);
            self.refresh(self.clock().unix_now()).await?;
        }
        Ok((plan, self.keys.load_full()))
    }

    /// `transition` with the writer lock held. Every change of a shared store first
    /// revokes again any key this replica has seen revoked that the database holds live.
    /// Returns the plan and whether the set served is at the store's position (false when
    /// nothing was written although another writer moved the store on).
    async fn transition_locked<F>(
        &self,
        held: &mut Arc<Vec<KeyRecord>>,
        plan: F,
    ) -> Result<(Plan, bool), AuthorityError>
    where
        F: FnOnce(&[KeyRecord], &mut dyn KeySource) -> Result<Plan, LifecycleError>
            + Clone
            + Send
            + 'static,
    {
        let previous = self.keys.load_full();
        let before = Arc::clone(held);
        let before_change = Arc::clone(held);
        let algorithms = self.settings.algorithms.clone();
        let timing = self.settings.timing();
        let encrypted = self.store.encrypts_at_rest();
        let revoked = self.replica.revocations();
        let clock = self.clock();
        let signers = self.settings.signers.clone();
        // The keys the plan will ask for are made before the transaction opens (`reserve`).
        let wanted = reserve::demand(held.as_slice(), plan.clone());
        let reserve = KeyReserve::make(&signers, wanted).await?;
        let taken = reserve.clone();
        let changed = self
            .store
            .transact(
                held.to_vec(),
                move |records| -> Result<((Plan, Option<Built>), Change), AuthorityError> {
                    let mut generate = taken.source();
                    let now = clock.unix_now();
                    let plan = replica::keeping_revocations(
                        records,
                        &revoked,
                        timing,
                        now,
                        &mut generate,
                        plan,
                    )?;
                    if plan.is_empty() {
                        return Ok(((plan, None), Change::default()));
                    }
                    // Build first: a record that does not load must not reach the store.
                    let records = plan.apply_to(records);
                    let next = previous.rebuild(
                        &before,
                        &records,
                        &signers,
                        &algorithms,
                        encrypted,
                        timing,
                    )?;
                    let change = Change {
                        changed: plan.changed.clone(),
                        deleted: plan.deleted.clone(),
                    };
                    Ok(((plan, Some((next, records))), change))
                },
            )
            .await;
        // The records the change left, to keep the token keys they name and destroy the
        // others it took; unknown when whether it committed is.
        let committed: Option<Vec<KeyRecord>> = match &changed {
            Ok(((_, Some((_, records))), _)) => Some(records.clone()),
            Ok(((_, None), _)) => Some(before_change.to_vec()),
            Err(error) if error.changed_nothing() => Some(before_change.to_vec()),
            Err(_) => None,
        };
        let made_inside = blocking(move || reserve.release(committed.as_deref())).await?;
        if made_inside > 0 {
            tracing::debug!(
                made_inside,
                "another replica changed the key set meanwhile: keys were generated in the transaction"
            );
        }
        let ((plan, next), settled) = changed?;
        let position = settled.map(|settled| {
            self.replica.refused(&settled.refused);
            settled.position
        });
        let next_built = next.is_some();
        if let Some((next, records)) = next {
            let next = Arc::new(next);
            *held = Arc::new(records);
            self.keys.store(Arc::clone(&next));
            // Under the writer lock, so watchers see the sets in the order they were served.
            self.changes.send_replace(Arc::clone(&next));
            log_plan(&plan);
            let dropped = dropped(&before_change, &plan);
            if !dropped.is_empty() {
                let signers = self.settings.signers.clone();
                blocking(move || signers.destroy(&dropped.iter().collect::<Vec<_>>())).await?;
            }
            if let Some(position) = &position {
                self.replica.serving(position.clone(), next.infos());
                self.acknowledge().await;
            }
        }
        if let Some(position) = position {
            self.synced_at
                .fetch_max(self.clock().unix_now(), Ordering::AcqRel);
            if !next_built && position != self.replica.position() {
                return Ok((plan, false));
            }
        }
        Ok((plan, true))
    }
}
