//! Where status lists persist: which lists exist and how far each was handed out, the
//! statuses other than VALID, and the key status jtis are minted under. The
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
    traced, KeyStore, SledStore, StoreError,
};
use token_authority_jose::crypto;

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
    /// The key status jtis are minted under, so tokens issued before the move can still
    /// be named by jti after it.
    pub(crate) jti_key: Option<[u8; 32]>,
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

#[derive(Clone, Debug)]
enum Backend {
    Sled(Arc<SledStore>),
    Postgres(Arc<PgStore>),
}

impl Reservation {
    /// A list nothing was reserved from yet, made with this reservation.
    pub(crate) fn fresh(&self, id: u64) -> ListRecord {
        ListRecord {
            id,
            size: self.size,
            allocated: 0,
            valid_until: 0,
            created_at: self.now,
        }
    }

    /// Where the block comes from: the list being filled (`cursor`, whose record is
    /// `filling`) while it has room, else (`Err`) the id after it, whose record the backend
    /// reads (made ahead) or makes (`fresh`).
    pub(crate) fn list_to_fill(
        cursor: Option<u64>,
        filling: Option<ListRecord>,
    ) -> Result<ListRecord, u64> {
        match filling {
            Some(record) if record.allocated < record.size => Ok(record),
            _ => Err(cursor.unwrap_or(0) + 1),
        }
    }

    /// Takes the block from `record`: the record as it is after (its `valid_until` raised
    /// to this reservation's), and the block.
    pub(crate) fn take_from(&self, mut record: ListRecord) -> (ListRecord, Block) {
        let start = record.allocated;
        let end = start.saturating_add(self.count).min(record.size);
        record.allocated = end;
        record.valid_until = record.valid_until.max(self.valid_until);
        let block = Block {
            list: record.id,
            start,
            end,
        };
        (record, block)
    }
}

/// The store of status lists: the keystore's backend.
#[derive(Clone, Debug)]
pub(crate) struct StatusStore {
    backend: Backend,
}

impl StatusStore {
    pub(crate) fn of(keystore: &KeyStore) -> StatusStore {
        let backend = match keystore {
            KeyStore::Sled(store) => Backend::Sled(Arc::clone(store)),
            KeyStore::Postgres(store) => Backend::Postgres(Arc::clone(store)),
        };
        StatusStore { backend }
    }

    /// The key status jtis are minted under (`authority::status::jti`): made by the first
    /// process to open the store, durably, then the same for every replica and restart.
    pub(crate) async fn jti_key(&self) -> Result<[u8; 32], StoreError> {
        let made: [u8; 32] = crypto::random_bytes(32)
            .map_err(|e| StoreError::Write(Box::new(e)))?
            .try_into()
            .map_err(|_| StoreError::Write("the random source gave a short key".into()))?;
        match &self.backend {
            Backend::Sled(store) => {
                let store = Arc::clone(store);
                blocking(move || store.status_jti_key(made)).await
            }
            Backend::Postgres(store) => store.status_jti_key(made).await,
        }
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
        let reserve = async {
            match &self.backend {
                Backend::Sled(store) => {
                    let store = Arc::clone(store);
                    blocking(move || store.reserve_status_block(reservation)).await
                }
                Backend::Postgres(store) => store.reserve_status_block(reservation).await,
            }
        };
        traced("reserve_status_block", self.is_shared(), reserve).await
    }

    /// Sets one status durably (committed before this returns); INVALID is final.
    pub(crate) async fn set_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<SetOutcome, StoreError> {
        let set = async {
            match &self.backend {
                Backend::Sled(store) => {
                    let store = Arc::clone(store);
                    blocking(move || store.set_token_status(list, idx, value)).await
                }
                Backend::Postgres(store) => store.set_token_status(list, idx, value).await,
            }
        };
        traced("set_token_status", self.is_shared(), set).await
    }

    /// Forgets lists whose tokens have all expired (with their statuses); returns the ids
    /// of the lists dropped.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule both backends follow: the list being filled while it has room, else the
    /// next id; a block never runs past its list's end, and `valid_until` only grows.
    #[test]
    fn a_block_comes_from_the_list_being_filled_until_it_is_full() {
        let reservation = Reservation {
            count: 4,
            size: 6,
            valid_until: 100,
            now: 7,
        };
        assert_eq!(Reservation::list_to_fill(None, None), Err(1));
        let fresh = reservation.fresh(1);
        assert_eq!((fresh.allocated, fresh.created_at), (0, 7));
        let (record, a) = reservation.take_from(fresh);
        assert_eq!((a.list, a.start, a.end), (1, 0, 4));
        let filling = Reservation::list_to_fill(Some(1), Some(record.clone())).unwrap();
        let later = Reservation {
            valid_until: 50,
            ..reservation
        };
        let (record, b) = later.take_from(filling);
        assert_eq!((b.start, b.end, record.valid_until), (4, 6, 100));
        assert_eq!(Reservation::list_to_fill(Some(1), Some(record)), Err(2));
    }
}
