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

/// How many jti records a replica writes to PostgreSQL in one statement, and how long one
/// waits for company.
const JTI_BATCH: usize = 512;
const JTI_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// The store of status lists: the keystore's backend.
#[derive(Clone, Debug)]
pub(crate) enum StatusStore {
    Sled(Arc<SledStore>),
    /// With the queue of jti records a background task writes in batches.
    Postgres(Arc<PgStore>, mpsc::Sender<(String, JtiRecord)>),
}

impl StatusStore {
    /// The status store of `keystore`. With PostgreSQL, starts the task that writes jti
    /// records in batches (it ends when the store is dropped).
    pub(crate) fn of(keystore: &KeyStore) -> StatusStore {
        match keystore {
            KeyStore::Sled(store) => StatusStore::Sled(Arc::clone(store)),
            KeyStore::Postgres(store) => {
                let (sender, receiver) = mpsc::channel(JTI_BATCH * 16);
                tokio::spawn(write_jtis(Arc::clone(store), receiver));
                StatusStore::Postgres(Arc::clone(store), sender)
            }
        }
    }

    /// Whether other replicas change these lists too.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, StatusStore::Postgres(..))
    }

    pub(crate) async fn load(&self) -> Result<(StoredLists, u64), StoreError> {
        match self {
            StatusStore::Sled(store) => {
                let store = Arc::clone(store);
                let stored = blocking(move || store.load_status_lists()).await?;
                Ok((stored, 0))
            }
            StatusStore::Postgres(store, _) => store.load_status_lists().await,
        }
    }

    /// A shared store's lists, and the statuses changed after change `seen`; `None` for a
    /// store only this process writes.
    pub(crate) async fn changes_since(
        &self,
        seen: u64,
    ) -> Result<Option<(StoredLists, u64)>, StoreError> {
        match self {
            StatusStore::Sled(_) => Ok(None),
            StatusStore::Postgres(store, _) => store.status_changes_since(seen).await.map(Some),
        }
    }

    /// Reserves a block durably (committed before this returns); returns the block, its
    /// list's record and that of the list after it (made ahead, empty).
    pub(crate) async fn reserve(
        &self,
        reservation: Reservation,
    ) -> Result<(Vec<ListRecord>, Block), StoreError> {
        match self {
            StatusStore::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.reserve_status_block(reservation)).await
            }
            StatusStore::Postgres(store, _) => store.reserve_status_block(reservation).await,
        }
    }

    /// Sets one status durably (committed before this returns); INVALID is final.
    pub(crate) async fn set_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<SetOutcome, StoreError> {
        match self {
            StatusStore::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.set_token_status(list, idx, value)).await
            }
            StatusStore::Postgres(store, _) => store.set_token_status(list, idx, value).await,
        }
    }

    /// Remembers which index a token holds. Written without waiting for the disk (sled) or
    /// in batches (PostgreSQL): the index is in the token itself, so a record lost to a
    /// crash only means that token's status is set by list and index instead of by jti.
    pub(crate) fn remember(&self, jti: &str, record: JtiRecord) -> Result<(), StoreError> {
        match self {
            StatusStore::Sled(store) => store.remember_jti(jti, record),
            StatusStore::Postgres(_, queue) => queue
                .try_send((jti.to_owned(), record))
                .map_err(|_| StoreError::Write("the jti queue is full".into())),
        }
    }

    pub(crate) async fn lookup(&self, jti: &str) -> Result<Option<JtiRecord>, StoreError> {
        match self {
            StatusStore::Sled(store) => {
                let (store, jti) = (Arc::clone(store), jti.to_owned());
                blocking(move || store.lookup_jti(&jti)).await
            }
            StatusStore::Postgres(store, _) => store.lookup_jti(jti).await,
        }
    }

    /// Forgets lists whose tokens have all expired (with their statuses) and jti records
    /// past their token's `exp`; returns the ids of the lists dropped.
    pub(crate) async fn purge(&self, now: u64) -> Result<Vec<u64>, StoreError> {
        match self {
            StatusStore::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.purge_status_lists(now)).await
            }
            StatusStore::Postgres(store, _) => store.purge_status_lists(now).await,
        }
    }

    /// Another replica's status changes, as they are notified (a `0` after every
    /// reconnection, when some may have been missed); `None` for sled.
    pub(crate) fn notifications(&self) -> Option<mpsc::Receiver<u64>> {
        match self {
            StatusStore::Sled(_) => None,
            StatusStore::Postgres(store, _) => {
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

/// Writes queued jti records in batches until the queue's senders are gone.
async fn write_jtis(store: Arc<PgStore>, mut queue: mpsc::Receiver<(String, JtiRecord)>) {
    let mut batch = Vec::with_capacity(JTI_BATCH);
    while queue.recv_many(&mut batch, JTI_BATCH).await > 0 {
        if batch.len() < JTI_BATCH {
            // A moment for company: one statement for a burst.
            tokio::time::sleep(JTI_FLUSH).await;
            let room = JTI_BATCH - batch.len();
            let mut more = Vec::with_capacity(room);
            if !queue.is_empty() {
                queue.recv_many(&mut more, room).await;
            }
            batch.append(&mut more);
        }
        if let Err(error) = store.remember_jtis(&batch).await {
            tracing::warn!(error = %crate::telemetry::chain(&error), records = batch.len(), "jti records could not be written; those tokens' statuses can still be set by list and index");
        }
        batch.clear();
    }
}
