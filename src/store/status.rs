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

use super::{KeyStore, SledStore, StoreError};

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

/// The store of status lists: the keystore's backend.
#[derive(Clone, Debug)]
pub(crate) enum StatusStore {
    Sled(Arc<SledStore>),
}

impl StatusStore {
    /// The status store of `keystore`, when its backend keeps status lists.
    pub(crate) fn of(keystore: &KeyStore) -> Option<StatusStore> {
        match keystore {
            KeyStore::Sled(store) => Some(StatusStore::Sled(Arc::clone(store))),
            KeyStore::Postgres(_) => None,
        }
    }

    pub(crate) async fn load(&self) -> Result<StoredLists, StoreError> {
        self.blocking(|store| store.load_status_lists()).await
    }

    /// Reserves a block durably (flushed before this returns).
    pub(crate) async fn reserve(
        &self,
        reservation: Reservation,
    ) -> Result<(ListRecord, Block), StoreError> {
        self.blocking(move |store| store.reserve_status_block(reservation))
            .await
    }

    /// Sets one status durably (flushed before this returns).
    pub(crate) async fn set_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<(), StoreError> {
        self.blocking(move |store| store.set_token_status(list, idx, value))
            .await
    }

    /// Remembers which index a token holds. Written without waiting for the disk: the index
    /// is in the token itself, so a record lost to a crash only means that token's status
    /// is set by list and index instead of by jti.
    pub(crate) fn remember(&self, jti: &str, record: JtiRecord) -> Result<(), StoreError> {
        match self {
            StatusStore::Sled(store) => store.remember_jti(jti, record),
        }
    }

    pub(crate) async fn lookup(&self, jti: &str) -> Result<Option<JtiRecord>, StoreError> {
        let jti = jti.to_owned();
        self.blocking(move |store| store.lookup_jti(&jti)).await
    }

    /// Forgets lists whose tokens have all expired (with their statuses) and jti records
    /// past their token's `exp`; returns the ids of the lists dropped.
    pub(crate) async fn purge(&self, now: u64, keep: Option<u64>) -> Result<Vec<u64>, StoreError> {
        self.blocking(move |store| store.purge_status_lists(now, keep))
            .await
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&SledStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            StatusStore::Sled(store) => {
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || work(&store))
                    .await
                    .map_err(StoreError::Task)?
            }
        }
    }
}
