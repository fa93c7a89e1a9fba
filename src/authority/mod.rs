//! The authority: issuing, verifying and rotating, over one key set and one keystore.
//!
//! Readers (issue, verify, JWKS) load the current `KeySet` through an atomic pointer and
//! never wait. Writers (rotation) are serialised by one async mutex, build the next set from
//! the current records, persist the change (flushed) and only then swap the set in: what is
//! served is always what is on disk. The changes (rotation, revocation, the schedule, and
//! following a shared store) are in `changes`.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use arc_swap::ArcSwap;

use crate::{
    authority::domain::InvalidArgument,
    authority::keys::{KeyRecord, KeyState},
    authority::keyset::{KeySet, KeySetError},
    authority::lifecycle::{LifecycleError, Plan, Timing},
    store::{Change, KeyStore, Position, StoreError},
};
pub(crate) use error::ErrorKind;
pub(crate) use issue::Issued;
use replica::Replica;
use reserve::KeyReserve;
use served::Served;
pub use signers::Signers;
use token_authority_jose::{
    clock::Clock,
    crypto::{Algorithm, CryptoError},
    jwt::verify::Policy,
};

mod changes;
pub(crate) mod domain;
mod error;
mod issue;
pub mod keys;
pub mod keyset;
pub mod lifecycle;
mod replica;
mod reserve;
mod served;
pub mod signers;
pub mod signing_pool;
pub(crate) mod status;
pub(crate) mod txn;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    KeySet(#[from] KeySetError),
    #[error("a background task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The PKCS#11 token cannot sign now (unreachable, or reconnecting).
    #[error("the signing token cannot be reached: {0}")]
    SignerUnavailable(#[source] CryptoError),
}

impl AuthorityError {
    /// Whether a key change that failed so is known to have changed nothing: the plan or
    /// the new key set refused it before the commit, or the store says so.
    pub(crate) fn changed_nothing(&self) -> bool {
        match self {
            AuthorityError::Store(error) => error.changed_nothing(),
            AuthorityError::InvalidArgument(_)
            | AuthorityError::Lifecycle(_)
            | AuthorityError::KeySet(_)
            | AuthorityError::Crypto(_)
            | AuthorityError::SignerUnavailable(_) => true,
            AuthorityError::Task(_) => false,
        }
    }
}

/// The token rules of this authority.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer: String,
    /// Whole seconds.
    pub default_ttl: u64,
    pub max_ttl: u64,
    pub leeway: u64,
    pub max_token_bytes: usize,
    /// The configured algorithms; the first is the default for IssueToken.
    pub algorithms: Vec<Algorithm>,
    pub publish_lead: u64,
    pub rotation_period: u64,
    /// What the authority reads the time from when nobody hands it one (its schedule, its
    /// own transitions) and what its callers read: the system clock but in tests.
    pub clock: Clock,
    /// Where its keys are made and what signs with them.
    pub signers: Signers,
}

impl Settings {
    pub(crate) fn timing(&self) -> Timing {
        Timing {
            publish_lead: self.publish_lead,
            rotation_period: self.rotation_period,
            max_ttl: self.max_ttl,
            leeway: self.leeway,
        }
    }

    /// `alg`, or the default algorithm; an unconfigured one is a caller's mistake.
    pub(crate) fn algorithm(&self, alg: Option<Algorithm>) -> Result<Algorithm, InvalidArgument> {
        match alg {
            None => Ok(self.algorithms[0]),
            Some(alg) if self.algorithms.contains(&alg) => Ok(alg),
            Some(alg) => Err(InvalidArgument {
                field: "algorithm",
                reason: format!(
                    "{alg} is not configured on this authority (configured: {})",
                    self.algorithms
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

/// A key set and the records (private keys included) it was built from.
type Built = (KeySet, Vec<KeyRecord>);
/// What opening a shared store plans and builds: the plan, the key set built from the
/// records it leaves, and the token keys it drops.
type Opened = (Plan, Built, Vec<KeyRecord>);

#[derive(Debug)]
pub struct RotationOutcome {
    pub(crate) current_kid: String,
    pub(crate) previous_kid: String,
    pub(crate) keys: Arc<KeySet>,
}

pub struct Authority {
    keys: ArcSwap<KeySet>,
    /// Where the shared store's history stood when the key set in memory was read from it,
    /// and the revocations seen (unused with sled).
    replica: Replica,
    /// Unix seconds of the last time the key set was known to match the store.
    synced_at: AtomicU64,
    store: KeyStore,
    settings: Settings,
    policy: Policy,
    /// Serialises the changes, and holds the records (private keys included) the key set
    /// served was built from: only the writer plans from them.
    writer: tokio::sync::Mutex<Arc<Vec<KeyRecord>>>,
    /// The same snapshots as `keys`, for those who wait for the next one (WatchKeys) and
    /// for the metrics.
    changes: Served,
    /// The status lists, once the server has opened them (never, when they are off).
    status: std::sync::OnceLock<Arc<status::StatusLists>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Builds the authority from the stored records, first applying whatever the lifecycle
    /// says is due (a new store's first keys, a rotation missed while the server was down,
    /// deletions), persisted before anything is served. Blocking: generates keys and writes to
    /// disk; call it off the async reactor.
    pub fn open(
        store: KeyStore,
        records: Vec<KeyRecord>,
        settings: Settings,
        now: u64,
    ) -> Result<Authority, AuthorityError> {
        // Keys are generated through a reserve (empty: it only counts what is taken), so
        // that token keys made for a start that then fails are destroyed.
        let reserve = KeyReserve::fill(settings.signers.clone(), &[])?;
        let before = records;
        let opened = (|| -> Result<(Plan, KeySet, Vec<KeyRecord>), AuthorityError> {
            let plan = lifecycle::due(
                &before,
                &settings.algorithms,
                settings.timing(),
                now,
                &mut reserve.source(),
            )?;
            // Build first: a keystore whose records do not load is refused before anything
            // is written to it.
            let records = plan.apply_to(&before);
            let set = KeySet::build(
                &records,
                &settings.signers,
                &settings.algorithms,
                store.encrypts_at_rest(),
                settings.timing(),
            )?;
            if !plan.is_empty() {
                store.apply(&plan.changed, &plan.deleted)?;
            }
            Ok((plan, set, records))
        })();
        let committed = match &opened {
            Ok((_, _, records)) => Some(records.as_slice()),
            Err(error) if error.changed_nothing() => Some(before.as_slice()),
            Err(_) => None,
        };
        reserve.release(committed);
        let (plan, set, records) = opened?;
        if !plan.is_empty() {
            log_plan(&plan);
            let dropped = dropped(&before, &plan);
            settings
                .signers
                .destroy(&dropped.iter().collect::<Vec<_>>());
        }
        Ok(Authority::serving(
            store,
            settings,
            (set, records),
            Position::default(),
            now,
        ))
    }

    /// Builds the authority from a store shared by several replicas: whatever the lifecycle
    /// says is due (a new database's first keys, a rotation missed while every replica was
    /// down) is one transaction planned from the records it re-reads, so replicas starting
    /// together create one key set, not one each.
    pub async fn open_shared(
        store: KeyStore,
        settings: Settings,
        now: u64,
    ) -> Result<Authority, AuthorityError> {
        let algorithms = settings.algorithms.clone();
        let timing = settings.timing();
        let encrypted = store.encrypts_at_rest();
        let signers = settings.signers.clone();
        // The keys that are due are made before the transaction opens (`reserve`), from what
        // the database holds now.
        let found = store.shared_records().await?;
        let wanted = reserve::demand(&found, |records, keys| {
            lifecycle::due(records, &algorithms, timing, now, keys)
        });
        let reserve = KeyReserve::make(&signers, wanted).await?;
        let taken = reserve.clone();
        let opened = store
            .transact(
                Vec::new(),
                move |records| -> Result<(Opened, Change), AuthorityError> {
                    let mut generate = taken.source();
                    let plan = lifecycle::due(records, &algorithms, timing, now, &mut generate)?;
                    let dropped = dropped(records, &plan);
                    let records = plan.apply_to(records);
                    let set = KeySet::build(&records, &signers, &algorithms, encrypted, timing)?;
                    let change = Change {
                        changed: plan.changed.clone(),
                        deleted: plan.deleted.clone(),
                    };
                    Ok(((plan, (set, records), dropped), change))
                },
            )
            .await;
        let committed: Option<Vec<KeyRecord>> = match &opened {
            Ok(((_, (_, records), _), _)) => Some(records.clone()),
            Err(error) if error.changed_nothing() => Some(found.clone()),
            Err(_) => None,
        };
        blocking(move || reserve.release(committed.as_deref())).await?;
        let ((plan, built, dropped), generation) = opened?;
        log_plan(&plan);
        if !dropped.is_empty() {
            // Deleted after their retention while every replica was down: once committed,
            // their token objects go too.
            let signers = settings.signers.clone();
            blocking(move || signers.destroy(&dropped.iter().collect::<Vec<_>>())).await?;
        }
        let (position, refused) = generation
            .map(|settled| (settled.position, settled.refused))
            .unwrap_or_default();
        let authority = Authority::serving(store, settings, built, position, now);
        authority.replica.refused(&refused);
        Ok(authority)
    }

    /// The authority serving `set`, built from `records`, read from `store` at `position`
    /// at `now`.
    fn serving(
        store: KeyStore,
        settings: Settings,
        (set, records): Built,
        position: Position,
        now: u64,
    ) -> Authority {
        let replica = Replica::new();
        replica.serving(position, set.infos());
        let policy = Policy {
            issuer: settings.issuer.clone(),
            leeway: settings.leeway,
            max_token_bytes: settings.max_token_bytes,
        };
        let set = Arc::new(set);
        Authority {
            keys: ArcSwap::from(Arc::clone(&set)),
            changes: Served::new(set),
            replica,
            synced_at: AtomicU64::new(now),
            store,
            settings,
            policy,
            writer: tokio::sync::Mutex::new(Arc::new(records)),
            status: std::sync::OnceLock::new(),
        }
    }

    /// Hands the authority its status lists; the first call wins.
    pub(crate) fn attach_status_lists(&self, lists: Arc<status::StatusLists>) {
        if self.status.set(lists).is_err() {
            tracing::warn!("status lists were attached twice; the first stays");
        }
    }

    /// The status lists, when they are on.
    pub(crate) fn status_lists(&self) -> Option<&Arc<status::StatusLists>> {
        self.status.get()
    }

    /// Seconds since the key set was last known to match the store: always 0 for a store
    /// only this process writes, whose every change goes through memory.
    pub(crate) fn sync_age(&self, now: u64) -> u64 {
        match self.store {
            KeyStore::Sled(_) => 0,
            KeyStore::Postgres(_) => now.saturating_sub(self.synced_at.load(Ordering::Acquire)),
        }
    }

    /// Whether this replica serves what the shared store holds: false from finding its
    /// history gone back (a restore) until the revocations are written back and the set
    /// it holds is served. Always true with a store only this process writes.
    pub(crate) fn in_step(&self) -> tokio::sync::watch::Receiver<bool> {
        self.replica.in_step()
    }

    /// How many times the shared store's history was seen going back (a restore).
    pub fn history_rewinds(&self) -> u64 {
        self.replica.rewinds()
    }

    /// How many rows of the shared store the last read refused (edited, written back from
    /// a backup, undecodable).
    pub(crate) fn refused_records(&self) -> usize {
        self.replica.refused_count()
    }

    /// The store, for the tasks that follow its changes.
    pub(crate) fn store(&self) -> &KeyStore {
        &self.store
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The clock of this authority: the one the transports and the schedule read.
    pub fn clock(&self) -> Clock {
        self.settings.clock
    }

    /// The current key set snapshot.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Flushes the keystore; part of an orderly shutdown.
    pub(crate) async fn flush(&self) -> Result<(), AuthorityError> {
        let store = self.store.clone();
        blocking(move || store.flush()).await??;
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthorityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(AuthorityError::Task)
}

/// The keys `plan` drops from `before` (deleted after their retention, or revoked): with
/// a token signer their objects are destroyed once the change is committed.
fn dropped(before: &[KeyRecord], plan: &Plan) -> Vec<KeyRecord> {
    plan.changed
        .iter()
        .filter(|r| r.state == KeyState::Revoked)
        .chain(before.iter().filter(|r| plan.deleted.contains(&r.kid)))
        .filter(|r| r.token.is_some())
        .cloned()
        .collect()
}

fn log_plan(plan: &Plan) {
    for (alg, current, previous) in &plan.rotated {
        tracing::info!(%alg, %current, %previous, "key rotated");
    }
    for record in &plan.changed {
        tracing::info!(kid = %record.kid, alg = %record.alg, state = ?record.state, "key state written");
    }
    for kid in &plan.deleted {
        tracing::info!(%kid, "retired key deleted after its retention");
    }
}
