//! The keystore: where key records live between starts. What the rest of the crate uses
//! from it is here (`KeyStore`, `Change`, `StoreError`); the sled implementation is in
//! `sled`, the guard file that catches a log sled silently opened as empty in `guard`, and
//! sealing private keys under key-encryption keys in `kek`.
//!
//! `KeyStore` is an enum over the backends rather than a trait object: the set of backends
//! is closed and known at compile time, one is blocking (sled) and another async, and a
//! lifecycle change takes a planning closure generic over its result, which a `dyn` trait
//! could not carry without boxing every call. Only each backend's module names its database
//! crate; everything else sees this enum.

use std::{path::Path, sync::Arc};

pub mod datakeys;
pub mod file_modes;
mod files;
pub(crate) mod guard;
pub mod kek;
pub mod postgres;
mod sled;

/// Reading an audit head from a stopped authority's sled keystore or from PostgreSQL.
pub(crate) mod audit_heads {
    pub(crate) use super::postgres::audit::read_audit_head as read_from_postgres;
    pub(crate) use super::sled::audit::read_audit_head as read_from_sled;
}

pub use self::postgres::{
    Confirmations, DbFailure, PgEnvironment, PgSettings, PgStore, Position, RefusedRow, Settled,
    Snapshot,
};
pub(crate) use self::sled::SledStore;
use crate::{authority::keys::KeyRecord, telemetry::chain};
use kek::{Keks, UnsealError};

/// A lifecycle change as the store writes it: records inserted or replaced by kid, and
/// kids deleted, in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub(crate) changed: Vec<KeyRecord>,
    pub(crate) deleted: Vec<String>,
}

impl Change {
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }
}

/// The keystore the authority persists its key set in.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// The embedded store of one process, in its data directory.
    Sled(Arc<SledStore>),
    /// A database shared by every replica.
    Postgres(Arc<PgStore>),
}

impl KeyStore {
    /// Opens (or creates) the sled keystore at `path` and reads every record. Blocking.
    pub fn open(path: &Path, keks: Option<Keks>) -> Result<(KeyStore, Vec<KeyRecord>), StoreError> {
        let (store, records) = SledStore::open(path, keks)?;
        Ok((KeyStore::Sled(Arc::new(store)), records))
    }

    /// Whether other processes change this store too (replicas over one database).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, KeyStore::Postgres(_))
    }

    /// Whether private keys are sealed under a KEK when written.
    pub(crate) fn encrypts_at_rest(&self) -> bool {
        match self {
            KeyStore::Sled(store) => store.encrypts_at_rest(),
            // Opening one requires a KEK: nothing reaches the database unsealed.
            KeyStore::Postgres(_) => true,
        }
    }

    /// How many keys were found stored unsealed although a KEK is configured.
    pub(crate) fn unsealed_at_open(&self) -> usize {
        match self {
            KeyStore::Sled(store) => store.unsealed_at_open(),
            KeyStore::Postgres(_) => 0,
        }
    }

    /// Writes `records` (inserting or replacing by kid), durably. Blocking; for the offline
    /// commands and tests that own the store.
    pub fn write(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
        self.apply(records, &[])
    }

    /// Writes `records` and deletes `deleted` as one durable change. Blocking; for the
    /// offline commands and tests that own the store.
    pub(crate) fn apply(
        &self,
        records: &[KeyRecord],
        deleted: &[String],
    ) -> Result<(), StoreError> {
        match self {
            KeyStore::Sled(store) => store.apply(records, deleted),
            // A shared store changes only through `transact`, which plans from the state
            // it re-reads: a blind write could undo another replica's change.
            KeyStore::Postgres(store) => Err(StoreError::SharedStore(store.shown().to_owned())),
        }
    }

    /// One lifecycle change: `plan` is given the current records and returns what to write
    /// (and a value for the caller); the change is durable before this returns `Ok`, and
    /// nothing is written when `plan` fails or changes nothing.
    ///
    /// `held` is the caller's copy of the records. A store only this process writes (sled)
    /// plans from it; a shared store re-reads its own state inside the transaction instead,
    /// so a plan never starts from a state another writer has already changed. The second
    /// value is where the change left the shared store (`None` for sled).
    pub(crate) async fn transact<T, E, P>(
        &self,
        held: Vec<KeyRecord>,
        plan: P,
    ) -> Result<(T, Option<Settled>), E>
    where
        P: FnOnce(&[KeyRecord]) -> Result<(T, Change), E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match self {
            KeyStore::Sled(store) => {
                let store = Arc::clone(store);
                // Key generation and sled's flush both block: off the reactor.
                tokio::task::spawn_blocking(move || {
                    let (value, change) = plan(&held)?;
                    if !change.is_empty() {
                        store.apply(&change.changed, &change.deleted)?;
                    }
                    Ok((value, None))
                })
                .await
                .map_err(StoreError::Task)?
            }
            KeyStore::Postgres(store) => {
                let (value, settled) = store.transact(plan).await?;
                Ok((value, Some(settled)))
            }
        }
    }

    /// Records that this replica serves `position` (a shared store; nothing for sled).
    pub(crate) async fn acknowledge(&self, position: &Position) -> Result<(), StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(()),
            KeyStore::Postgres(store) => store.acknowledge(position).await,
        }
    }

    /// How many other replicas reported within `live_within`, and how many of them serve
    /// `generation` or later; `None` when the store is not shared.
    pub(crate) async fn confirmations(
        &self,
        generation: u64,
        live_within: std::time::Duration,
    ) -> Result<Option<Confirmations>, StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(None),
            KeyStore::Postgres(store) => {
                store.confirmations(generation, live_within).await.map(Some)
            }
        }
    }

    /// This replica stops: others no longer wait for its acknowledgements.
    pub(crate) async fn leave(&self) -> Result<(), StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(()),
            KeyStore::Postgres(store) => store.leave().await,
        }
    }

    /// Where the shared store's history stands; `None` when the store is not shared.
    pub(crate) async fn position(&self) -> Result<Option<Position>, StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(None),
            KeyStore::Postgres(store) => store.position().await.map(Some),
        }
    }

    /// The shared store's records when it is at a position other than `held`, with whether
    /// its history passes through `held`; `None` when it is not, or when the store is not
    /// shared.
    pub(crate) async fn snapshot_if_moved(
        &self,
        held: &Position,
    ) -> Result<Option<Snapshot>, StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(None),
            KeyStore::Postgres(store) => {
                if store.position().await? == *held {
                    return Ok(None);
                }
                store.load(Some(held)).await.map(Some)
            }
        }
    }

    /// The generations other writers commit, as they are notified (a `0` after every
    /// reconnection, when some may have been missed); `None` when the store is not shared.
    /// The notifications stop when the receiver is dropped.
    pub(crate) fn changes(&self) -> Option<tokio::sync::mpsc::Receiver<u64>> {
        match self {
            KeyStore::Sled(_) => None,
            KeyStore::Postgres(store) => {
                let (sender, receiver) = tokio::sync::mpsc::channel(16);
                tokio::spawn(Arc::clone(store).listen(sender));
                Some(receiver)
            }
        }
    }

    /// Records the head of audit file `file` (opaque text the audit layer reads back).
    pub(crate) async fn record_audit_head(&self, file: &str, head: &str) -> Result<(), StoreError> {
        match self {
            KeyStore::Sled(store) => {
                let (store, file, head) = (Arc::clone(store), file.to_owned(), head.to_owned());
                tokio::task::spawn_blocking(move || store.record_audit_head(&file, &head))
                    .await
                    .map_err(StoreError::Task)?
            }
            KeyStore::Postgres(store) => store.record_audit_head(file, head).await,
        }
    }

    /// Makes every write durable; part of an orderly shutdown. Blocking.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        match self {
            KeyStore::Sled(store) => store.flush(),
            // Every change is committed before it is served: nothing to flush.
            KeyStore::Postgres(_) => Ok(()),
        }
    }
}

/// A cause kept whole, for the chain and for a downcast. Boxed because the errors of
/// several crates reach the same variant (sled's, PostgreSQL's, the file system's, the
/// crypto's) and only each backend's module names its database crate.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the store was doing when its cause happened, where the cause alone would not say
/// ("erasing data keys", then the I/O error): a link of the chain of its own.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub(crate) struct Context {
    doing: String,
    #[source]
    source: Cause,
}

impl Context {
    pub(crate) fn new(doing: impl Into<String>, source: impl Into<Cause>) -> Context {
        Context {
            doing: doing.into(),
            source: source.into(),
        }
    }
}

/// Why the keystore failed. A variant caused by another error keeps it as its `source()`:
/// where the cause ended the message, the message stops before it and the chain
/// (`telemetry::chain`, how errors are logged and printed) adds it, so the line reads as
/// before; where it sat inside the message (`Unreadable`, `DamagedFile`, `Unknown`,
/// `CommitUnknown`), the message still shows it there, whole, and the chain does not repeat
/// it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the keystore {path} is in use by another process (sled holds an exclusive lock); stop the other token-authority first")]
    Locked { path: String },
    /// sled, a file beside it, or the database's connection settings failed.
    #[error("cannot open the keystore {path}")]
    Open {
        path: String,
        #[source]
        source: Cause,
    },
    /// As `Open`, for a reason that is no error of its own (nothing at the path, a setting
    /// the store does not support).
    #[error("cannot open the keystore {path}: {reason}")]
    Unopenable { path: String, reason: String },
    #[error("the keystore {path} is not a token-authority keystore ({reason}); refusing to create new keys over it")]
    Foreign { path: String, reason: String },
    /// A record whose content is wrong (filed under another kid, a bad nonce).
    #[error("the keystore {path} is unreadable: key record {kid:?}: {reason}; refusing to start with new keys")]
    Corrupt {
        path: String,
        kid: String,
        reason: String,
    },
    /// A record (or the manifest) that does not parse or authenticate.
    #[error("the keystore {path} is unreadable: key record {kid:?}: {}; refusing to start with new keys", chain(.source.as_ref()))]
    Unreadable {
        path: String,
        kid: String,
        #[source]
        source: Cause,
    },
    #[error("the keystore {path} holds encrypted private keys but no --kek-file was given")]
    KekRequired { path: String },
    #[error("the keystore {path}: key {kid}: {source}")]
    Unseal {
        path: String,
        kid: String,
        source: UnsealError,
    },
    /// What the store finds contradicts itself (the guard ahead of sled).
    #[error("the keystore {path} is damaged: {reason}; refusing to start (restore the data directory from a backup)")]
    Damaged { path: String, reason: String },
    /// A file beside sled (the guard, the data keys) cannot be read or parsed.
    #[error("the keystore {path} is damaged: {}; refusing to start (restore the data directory from a backup)", chain(.source.as_ref()))]
    DamagedFile {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("keystore write failed")]
    Write(#[source] Cause),
    /// A lifecycle write failed and was undone: disk and memory hold the state from before.
    #[error("the keystore write failed and nothing changed (a retry is safe)")]
    NotApplied(#[source] Cause),
    /// A lifecycle write failed after sled had it, and undoing it failed too.
    #[error("the keystore write failed ({}) and could not be undone ({}): whether the change is on disk is known only after a restart, so the keystore refuses further changes until then", chain(.failure.as_ref()), chain(.undo.as_ref()))]
    Unknown {
        #[source]
        failure: Cause,
        undo: Cause,
    },
    /// A write after one that could not be undone.
    #[error("an earlier keystore write could not be undone; the keystore refuses changes until the server restarts")]
    Poisoned,
    #[error("a keystore task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The database cannot be reached or failed a statement before the commit, for a
    /// reason that passes (down, restarting, failing over): nothing changed.
    #[error("the keystore database is unavailable (transient, retried): {database}")]
    Unavailable {
        database: String,
        #[source]
        source: DbFailure,
    },
    /// The database refuses this replica for what it is (its password, role, database,
    /// grants, schema objects): no retry helps, so a replica stops at start.
    #[error("the keystore database refuses this replica (permanent, not retried; fix the settings or grants): {database}")]
    Refused {
        database: String,
        #[source]
        source: DbFailure,
    },
    /// A change waited `waited` for the change lock, which another replica (or `keys`
    /// command) held all along: nothing changed.
    #[error(
        "another replica holds the change lock (transient: waited {waited} for it): {database}"
    )]
    ChangeLockBusy {
        waited: &'static str,
        database: String,
        #[source]
        source: DbFailure,
    },
    /// The connection failed while the commit was in flight.
    #[error("the keystore database failed during a commit ({database}: {}); whether the change was made shows at the next sync", chain(.source))]
    CommitUnknown {
        database: String,
        #[source]
        source: DbFailure,
    },
    #[error("the keystore {path} has schema version {found}, newer than the {known} this token-authority knows; upgrade the binary (a database is never migrated backwards)")]
    SchemaTooNew {
        path: String,
        found: i32,
        known: i32,
    },
    #[error("the keystore {0} is shared by replicas and changes only through a running server")]
    SharedStore(String),
}

impl StoreError {
    /// Whether waiting may cure it: the shared database down or busy, not refusing.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::ChangeLockBusy { .. }
        )
    }

    /// Whether it is a fault of the settings, which a start refuses with exit code 2: the
    /// database refusing the replica, or holding a schema newer than the binary.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::Refused { .. } | StoreError::SchemaTooNew { .. }
        )
    }

    /// For a failed lifecycle write: what a client may be told about its effect, without
    /// the cause (which goes to the log). `None` for errors that are not write outcomes.
    pub(crate) fn outcome(&self) -> Option<&'static str> {
        match self {
            StoreError::NotApplied(_) => Some(
                "internal error: the keystore write failed and was undone; nothing changed, and a retry is safe",
            ),
            StoreError::Unavailable { .. } => Some(
                "unavailable: the keystore database cannot be reached; nothing changed, and a retry is safe",
            ),
            StoreError::ChangeLockBusy { .. } => Some(
                "unavailable: another replica holds the change lock; nothing changed, and a retry is safe",
            ),
            StoreError::Refused { .. } => Some(
                "internal error: the keystore database refuses this replica (see its log); nothing changed",
            ),
            StoreError::CommitUnknown { .. } => Some(
                "internal error: the keystore database failed during the commit; list the keys to see whether it took effect",
            ),
            StoreError::Unknown { .. } | StoreError::Poisoned => Some(
                "internal error: the keystore write failed and could not be undone; whether it took effect is known after a restart, and changes are refused until then",
            ),
            _ => None,
        }
    }
}
