//! The authority: issuing, verifying and rotating, over one key set and one keystore.
//!
//! Readers (issue, verify, JWKS) load the current `KeySet` through an atomic pointer and
//! never wait. Writers (rotation) are serialised by one async mutex, build the next set from
//! the current records, persist the change (flushed) and only then swap the set in: what is
//! served is always what is on disk. The changes (rotation, revocation, the schedule, and
//! following a shared store) are in `changes`; starting, alone or as a replica, in `open`.

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
    store::{KeyStore, Position, StoreError},
};
pub(crate) use error::ErrorKind;
pub(crate) use issue::Issued;
use replica::Replica;
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
mod open;
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
