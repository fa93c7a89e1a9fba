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
mod error;
pub mod file_modes;
mod files;
pub(crate) mod guard;
pub mod kek;
pub mod postgres;
mod sled;
pub(crate) mod status;
pub(crate) mod token;

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
use crate::authority::keys::KeyRecord;
pub use error::StoreError;
pub(crate) use error::{Cause, Context};
use kek::Keks;

/// Runs a store call in its span, under the request's (only with traces on).
pub(crate) async fn traced<T>(
    op: &'static str,
    shared: bool,
    call: impl std::future::Future<Output = T>,
) -> T {
    let span = crate::telemetry::traces::Trace::current().child("store", || {
        let backend = if shared { "postgres" } else { "sled" };
        vec![
            opentelemetry::KeyValue::new("op", op),
            opentelemetry::KeyValue::new("backend", backend),
        ]
    });
    let result = call.await;
    span.end();
    result
}

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
        let change = async {
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
        };
        traced("transact", self.is_shared(), change).await
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

    /// The records a shared store holds now (none for sled, which `Authority::open` reads).
    pub(crate) async fn shared_records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        match self {
            KeyStore::Sled(_) => Ok(Vec::new()),
            KeyStore::Postgres(store) => Ok(store.load(None).await?.records),
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

    /// Every status list of a sled keystore, for `keys migrate` (none from PostgreSQL).
    pub(crate) fn export_status_lists(&self) -> Result<status::Exported, StoreError> {
        match self {
            KeyStore::Sled(store) => store.export_status_lists(),
            KeyStore::Postgres(_) => Ok(status::Exported::default()),
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
