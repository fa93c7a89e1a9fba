//! Where status lists persist: which lists exist and how far each was handed out, the
//! statuses other than VALID, and which list and index each token's `jti` holds. The
//! authority's status lists (`authority::status`) keep everything in memory and write
//! through this; only a backend module names its database.
//!
//! The rule this layer keeps: an index is handed out once. Indexes go out in blocks, and a
//! block is durable before its first index is used, so a restart (or a crash) skips what
//! was left of a block instead of handing it out again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;

use super::{
    postgres::{PgStore, STATUS_CHANNEL},
    KeyStore, SledStore, StoreError,
};

/// One list as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListRecord {
    pub(crate) id: u64,
    /// How many statuses it holds.
    pub(crate) size: u64,
    /// Indexes below this were handed out (in blocks).
    pub(crate) allocated: u64,
    /// Unix seconds after which no token holding one of its indexes can be valid: then the
    /// list is dropped.
    pub(crate) valid_until: u64,
    pub(crate) created_at: u64,
}

/// A run of indexes of one list, reserved durably for this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) list: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// What a token's `jti` points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JtiRecord {
    pub(crate) list: u64,
    pub(crate) idx: u64,
    /// The token's `exp`: the record is forgotten after it.
    pub(crate) exp: u64,
}

/// What setting a status did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetOutcome {
    /// Set (or already so); the value it had.
    Set { previous: u8 },
    /// Refused: the token is revoked, which is final.
    Final,
}

/// A sled keystore's status lists whole, for `keys migrate`.
#[derive(Debug, Default)]
pub(crate) struct Exported {
    pub(crate) lists: Vec<ListRecord>,
    /// The list being filled.
    pub(crate) cursor: Option<u64>,
    pub(crate) statuses: Vec<(u64, u64, u8)>,
    pub(crate) jtis: Vec<(String, JtiRecord)>,
}

/// Everything stored, as read at start.
#[derive(Debug, Default)]
pub(crate) struct StoredLists {
    pub(crate) lists: Vec<ListRecord>,
    /// (list, index, status value) for every status other than VALID.
    pub(crate) statuses: Vec<(u64, u64, u8)>,
}

/// A reservation: `count` indexes for tokens that expire by `valid_until`, from the list
/// being filled, or from a new list of `size` when it has no room left.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reservation {
    pub(crate) count: u64,
    pub(crate) size: u64,
    pub(crate) valid_until: u64,
    pub(crate) now: u64,
}

/// How many jti records are written in one statement (PostgreSQL) or batch (sled), how
/// long the writer waits for company after a wake-up, and how many may wait unwritten
/// (while the database is unreachable) before new ones are dropped.
const JTI_BATCH: usize = 512;
const JTI_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
const JTI_PENDING_MAX: usize = 1 << 20;

/// jti records not yet written: looked up here first, so SetTokenStatus by jti works on
/// this replica from the moment the token is issued.
#[derive(Debug)]
struct Pending {
    records: std::sync::Mutex<std::collections::HashMap<String, JtiRecord>>,
    wake: Arc<tokio::sync::Notify>,
    /// Where they go. The writer holds the queue weakly, so the keystore is closed (and
    /// sled's lock released) as soon as the authority is gone.
    backend: Backend,
    /// Held by a write in progress: the shutdown's flush waits for it.
    writing: tokio::sync::Mutex<()>,
    /// Set by the shutdown's flush: the writer writes nothing after it, so nothing holds
    /// the keystore once the server has stopped.
    closed: std::sync::atomic::AtomicBool,
}

impl Drop for Pending {
    /// The writer exits once the queue is gone.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

#[derive(Clone, Debug)]
enum Backend {
    Sled(Arc<SledStore>),
    Postgres(Arc<PgStore>),
}

/// The store of status lists: the keystore's backend, and the jti records on their way to
/// it, which a background task writes in batches off the issuing path.
#[derive(Clone, Debug)]
pub(crate) struct StatusStore {
    backend: Backend,
    pending: Arc<Pending>,
}

impl StatusStore {
    /// The status store of `keystore`, and the task that writes jti records in batches
    /// (it ends when the store is dropped).
    pub(crate) fn of(keystore: &KeyStore) -> StatusStore {
        let backend = match keystore {
            KeyStore::Sled(store) => Backend::Sled(Arc::clone(store)),
            KeyStore::Postgres(store) => Backend::Postgres(Arc::clone(store)),
        };
        let pending = Arc::new(Pending {
            records: std::sync::Mutex::default(),
            wake: Arc::default(),
            backend: backend.clone(),
            writing: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(write_jtis(
            Arc::downgrade(&pending),
            Arc::clone(&pending.wake),
        ));
        StatusStore { backend, pending }
    }

    /// Whether other replicas change these lists too.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    pub(crate) async fn load(&self) -> Result<(StoredLists, u64), StoreError> {
        match &self.backend {
            Backend::Sled(store) => {
                let store = Arc::clone(store);
                let stored = blocking(move || store.load_status_lists()).await?;
                Ok((stored, 0))
            }
            Backend::Postgres(store) => store.load_status_lists().await,
        }
    }

    /// A shared store's lists, and the statuses changed after change `seen`; `None` for a
    /// store only this process writes.
    pub(crate) async fn changes_since(
        &self,
        seen: u64,
    ) -> Result<Option<(StoredLists, u64)>, StoreError> {
        match &self.backend {
            Backend::Sled(_) => Ok(None),
            Backend::Postgres(store) => store.status_changes_since(seen).await.map(Some),
        }
    }

    /// Reserves a block durably (committed before this returns); returns the block, its
    /// list's record and that of the list after it (made ahead, empty).
    pub(crate) async fn reserve(
        &self,
        reservation: Reservation,
    ) -> Result<(Vec<ListRecord>, Block), StoreError> {
        match &self.backend {
            Backend::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.reserve_status_block(reservation)).await
            }
            Backend::Postgres(store) => store.reserve_status_block(reservation).await,
        }
    }

    /// Sets one status durably (committed before this returns); INVALID is final.
    pub(crate) async fn set_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<SetOutcome, StoreError> {
        match &self.backend {
            Backend::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.set_token_status(list, idx, value)).await
            }
            Backend::Postgres(store) => store.set_token_status(list, idx, value).await,
        }
    }

    /// Remembers which index a token holds, without waiting: the record is written in a
    /// batch moments later, and looked up here until then. The index is in the token
    /// itself, so a record lost to a crash only means that token's status is set by list
    /// and index instead of by jti.
    pub(crate) fn remember(&self, jti: &str, record: JtiRecord) -> Result<(), StoreError> {
        let mut records = self
            .pending
            .records
            .lock()
            .map_err(|_| StoreError::Write("the jti queue is poisoned".into()))?;
        if records.len() >= JTI_PENDING_MAX {
            return Err(StoreError::Write("the jti queue is full".into()));
        }
        records.insert(jti.to_owned(), record);
        drop(records);
        self.pending.wake.notify_one();
        Ok(())
    }

    pub(crate) async fn lookup(&self, jti: &str) -> Result<Option<JtiRecord>, StoreError> {
        let queued = self
            .pending
            .records
            .lock()
            .map_err(|_| StoreError::Write("the jti queue is poisoned".into()))?
            .get(jti)
            .copied();
        if queued.is_some() {
            return Ok(queued);
        }
        match &self.backend {
            Backend::Sled(store) => {
                let (store, jti) = (Arc::clone(store), jti.to_owned());
                blocking(move || store.lookup_jti(&jti)).await
            }
            Backend::Postgres(store) => store.lookup_jti(jti).await,
        }
    }

    /// Writes the jti records still queued, after any write in progress, and stops the
    /// writer; part of an orderly shutdown.
    pub(crate) async fn flush_jtis(&self) -> Result<(), StoreError> {
        let _writing = self.pending.writing.lock().await;
        self.pending
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        write_pending(&self.pending).await
    }

    /// Forgets lists whose tokens have all expired (with their statuses) and jti records
    /// past their token's `exp`; returns the ids of the lists dropped.
    pub(crate) async fn purge(&self, now: u64) -> Result<Vec<u64>, StoreError> {
        match &self.backend {
            Backend::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.purge_status_lists(now)).await
            }
            Backend::Postgres(store) => store.purge_status_lists(now).await,
        }
    }

    /// Another replica's status changes, as they are notified (a `0` after every
    /// reconnection, when some may have been missed); `None` for sled.
    pub(crate) fn notifications(&self) -> Option<mpsc::Receiver<u64>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(store) => {
                let (sender, receiver) = mpsc::channel(16);
                tokio::spawn(Arc::clone(store).listen_on(STATUS_CHANNEL, sender));
                Some(receiver)
            }
        }
    }
}

async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(StoreError::Task)?
}

/// Writes queued jti records in batches until the queue is dropped (a last wake-up).
async fn write_jtis(pending: std::sync::Weak<Pending>, wake: Arc<tokio::sync::Notify>) {
    loop {
        wake.notified().await;
        // A moment for company: one write for a burst.
        tokio::time::sleep(JTI_WAIT).await;
        let Some(pending) = pending.upgrade() else {
            return;
        };
        let writing = pending.writing.lock().await;
        if pending.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let written = write_pending(&pending).await;
        drop(writing);
        drop(pending);
        if let Err(error) = written {
            tracing::warn!(error = %crate::telemetry::chain(&error), "jti records could not be written; retrying; those tokens' statuses can be set by list and index meanwhile");
            wake.notify_one();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// Writes what is queued, in batches; each batch leaves the queue once written.
async fn write_pending(pending: &Pending) -> Result<(), StoreError> {
    loop {
        let batch: Vec<(String, JtiRecord)> = pending
            .records
            .lock()
            .map_err(|_| StoreError::Write("the jti queue is poisoned".into()))?
            .iter()
            .take(JTI_BATCH)
            .map(|(jti, record)| (jti.clone(), *record))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        match &pending.backend {
            Backend::Sled(store) => {
                let (store, batch) = (Arc::clone(store), batch.clone());
                blocking(move || store.remember_jtis(&batch)).await?;
            }
            Backend::Postgres(store) => store.remember_jtis(&batch).await?,
        }
        let mut records = pending
            .records
            .lock()
            .map_err(|_| StoreError::Write("the jti queue is poisoned".into()))?;
        for (jti, _) in &batch {
            records.remove(jti);
        }
    }
}
