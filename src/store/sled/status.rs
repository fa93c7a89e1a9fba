//! Status lists in sled, in a tree of their own: the list being filled (`c`), each list's
//! record (`l` + id), each status other than VALID (`s` + id + index) and the key status
//! jtis are minted under (`k`). Ids and indexes are big-endian, so a list's statuses are
//! one range.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::SledStore;
use crate::store::{
    status::{Block, Exported, ListRecord, Reservation, SetOutcome, StoredLists},
    StoreError,
};

const STATUS_TREE: &str = "status_lists";
const CURSOR: &[u8] = b"c";
const LIST: u8 = b'l';
const STATUS: u8 = b's';
const JTI_KEY: &[u8] = b"k";

fn list_key(id: u64) -> [u8; 9] {
    let mut key = [LIST; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn status_key(list: u64, idx: u64) -> [u8; 17] {
    let mut key = [STATUS; 17];
    key[1..9].copy_from_slice(&list.to_be_bytes());
    key[9..].copy_from_slice(&idx.to_be_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn write_error(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Write(Box::new(e))
}

fn damaged(what: &str) -> StoreError {
    StoreError::Write(format!("the status lists' {what} is damaged").into())
}

impl SledStore {
    fn status_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(STATUS_TREE).map_err(write_error)
    }

    pub(crate) fn load_status_lists(&self) -> Result<StoredLists, StoreError> {
        let tree = self.status_tree()?;
        let mut stored = StoredLists::default();
        for entry in tree.scan_prefix([LIST]) {
            let (_, value) = entry.map_err(write_error)?;
            stored
                .lists
                .push(serde_json::from_slice(&value).map_err(|_| damaged("list record"))?);
        }
        for entry in tree.scan_prefix([STATUS]) {
            let (key, value) = entry.map_err(write_error)?;
            let (list, idx) = match (
                key.get(1..9).and_then(be_u64),
                key.get(9..).and_then(be_u64),
            ) {
                (Some(list), Some(idx)) => (list, idx),
                _ => return Err(damaged("status key")),
            };
            let value = *value.first().ok_or_else(|| damaged("status value"))?;
            stored.statuses.push((list, idx, value));
        }
        Ok(stored)
    }

    /// Takes the next block of the list being filled (or of a new list when it is full) and
    /// raises that list's `valid_until`, in one transaction, flushed.
    pub(crate) fn reserve_status_block(
        &self,
        reservation: Reservation,
    ) -> Result<(Vec<ListRecord>, Block), StoreError> {
        let tree = self.status_tree()?;
        let reserved = tree
            .transaction(|tx| {
                let abort = |what: &'static str| ConflictableTransactionError::Abort(what);
                let current = match tx.get(CURSOR)? {
                    Some(bytes) => Some(be_u64(&bytes).ok_or_else(|| abort("cursor"))?),
                    None => None,
                };
                let filling = match current {
                    Some(id) => match tx.get(list_key(id))? {
                        Some(bytes) => Some(
                            serde_json::from_slice::<ListRecord>(&bytes)
                                .map_err(|_| abort("list record"))?,
                        ),
                        None => None,
                    },
                    None => None,
                };
                let read = |id: u64| -> Result<
                    Option<ListRecord>,
                    ConflictableTransactionError<&'static str>,
                > {
                    match tx.get(list_key(id))? {
                        Some(bytes) => Ok(Some(
                            serde_json::from_slice::<ListRecord>(&bytes)
                                .map_err(|_| abort("list record"))?,
                        )),
                        None => Ok(None),
                    }
                };
                let (record, block) =
                    reservation.take_from(match Reservation::list_to_fill(current, filling) {
                        Ok(record) => record,
                        Err(id) => read(id)?.unwrap_or_else(|| reservation.fresh(id)),
                    });
                let value = serde_json::to_vec(&record).map_err(|_| abort("list record"))?;
                tx.insert(&list_key(record.id), value)?;
                tx.insert(CURSOR, &record.id.to_be_bytes())?;
                // The next list exists before its first index is needed, so watchers hold
                // it before any token names it.
                let next = match read(record.id + 1)? {
                    Some(next) => next,
                    None => {
                        let next = reservation.fresh(record.id + 1);
                        let value = serde_json::to_vec(&next).map_err(|_| abort("list record"))?;
                        tx.insert(&list_key(next.id), value)?;
                        next
                    }
                };
                Ok((vec![record, next], block))
            })
            .map_err(|e| match e {
                TransactionError::Abort(what) => damaged(what),
                TransactionError::Storage(e) => write_error(e),
            })?;
        tree.flush().map_err(write_error)?;
        Ok(reserved)
    }

    /// Sets one status, flushed; INVALID is final.
    pub(crate) fn set_token_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<SetOutcome, StoreError> {
        let tree = self.status_tree()?;
        let key = status_key(list, idx);
        let previous = match tree.get(key).map_err(write_error)? {
            Some(bytes) => *bytes.first().ok_or_else(|| damaged("status value"))?,
            None => 0,
        };
        if previous == value {
            return Ok(SetOutcome::Set { previous });
        }
        if previous == 1 {
            return Ok(SetOutcome::Final);
        }
        if value == 0 {
            tree.remove(key).map_err(write_error)?;
        } else {
            tree.insert(key, &[value]).map_err(write_error)?;
        }
        tree.flush().map_err(write_error)?;
        Ok(SetOutcome::Set { previous })
    }

    /// The key status jtis are minted under: `made` when there is none yet (kept, flushed).
    pub(crate) fn status_jti_key(&self, made: [u8; 32]) -> Result<[u8; 32], StoreError> {
        let tree = self.status_tree()?;
        // Only one key ever: a key already stored stays.
        let _ = tree
            .compare_and_swap(JTI_KEY, None::<&[u8]>, Some(&made[..]))
            .map_err(write_error)?;
        tree.flush().map_err(write_error)?;
        let stored = tree.get(JTI_KEY).map_err(write_error)?;
        stored
            .as_deref()
            .and_then(|key| key.try_into().ok())
            .ok_or_else(|| damaged("jti key"))
    }

    /// Everything, for `keys migrate`: the lists, the one being filled, the statuses and
    /// the jti key.
    pub(crate) fn export_status_lists(&self) -> Result<Exported, StoreError> {
        let tree = self.status_tree()?;
        let StoredLists { lists, statuses } = self.load_status_lists()?;
        let cursor = match tree.get(CURSOR).map_err(write_error)? {
            Some(bytes) => Some(be_u64(&bytes).ok_or_else(|| damaged("cursor"))?),
            None => None,
        };
        let jti_key = match tree.get(JTI_KEY).map_err(write_error)? {
            Some(key) => Some((&key[..]).try_into().map_err(|_| damaged("jti key"))?),
            None => None,
        };
        Ok(Exported {
            lists,
            cursor,
            statuses,
            jti_key,
        })
    }

    /// Drops every list (but the one being filled) past its `valid_until`, with its
    /// statuses.
    pub(crate) fn purge_status_lists(&self, now: u64) -> Result<Vec<u64>, StoreError> {
        let tree = self.status_tree()?;
        let keep = match tree.get(CURSOR).map_err(write_error)? {
            Some(bytes) => Some(be_u64(&bytes).ok_or_else(|| damaged("cursor"))?),
            None => None,
        };
        let mut dropped = Vec::new();
        for entry in tree.scan_prefix([LIST]) {
            let (key, value) = entry.map_err(write_error)?;
            let record: ListRecord =
                serde_json::from_slice(&value).map_err(|_| damaged("list record"))?;
            // A list made ahead and not used yet stays.
            if record.valid_until < now && record.allocated > 0 && Some(record.id) != keep {
                let mut prefix = vec![STATUS];
                prefix.extend_from_slice(&record.id.to_be_bytes());
                for status in tree.scan_prefix(&prefix).keys() {
                    tree.remove(status.map_err(write_error)?)
                        .map_err(write_error)?;
                }
                tree.remove(key).map_err(write_error)?;
                dropped.push(record.id);
            }
        }
        tree.flush().map_err(write_error)?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(count: u64, size: u64, valid_until: u64) -> Reservation {
        Reservation {
            count,
            size,
            valid_until,
            now: 1,
        }
    }

    /// Blocks never overlap, a full list rolls over to the next id, and both survive a
    /// reopen, with the statuses set.
    #[test]
    fn blocks_roll_over_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = SledStore::open(&path, None).unwrap();
            // Status lists live beside the keys of a keystore.
            store.write(&[super::super::tests::record("a")]).unwrap();
            let (records, a) = store.reserve_status_block(reservation(4, 6, 100)).unwrap();
            // The next list is made with the first block of the one before.
            let ids: Vec<_> = records.iter().map(|r| (r.id, r.allocated)).collect();
            assert_eq!(ids, [(1, 4), (2, 0)]);
            let (_, b) = store.reserve_status_block(reservation(4, 6, 200)).unwrap();
            let (records, c) = store.reserve_status_block(reservation(4, 6, 150)).unwrap();
            let record = &records[0];
            assert_eq!((a.list, a.start, a.end), (1, 0, 4));
            assert_eq!((b.list, b.start, b.end), (1, 4, 6));
            assert_eq!((c.list, c.start, c.end), (2, 0, 4));
            assert_eq!(record.valid_until, 150);
            let set = |list, idx, value| store.set_token_status(list, idx, value).unwrap();
            assert_eq!(set(1, 5, 1), SetOutcome::Set { previous: 0 });
            assert_eq!(set(1, 5, 0), SetOutcome::Final);
            assert_eq!(set(1, 5, 1), SetOutcome::Set { previous: 1 });
            assert_eq!(set(2, 0, 2), SetOutcome::Set { previous: 0 });
            assert_eq!(set(2, 0, 0), SetOutcome::Set { previous: 2 });
            assert_eq!(store.status_jti_key([1; 32]).unwrap(), [1; 32]);
            store.flush().unwrap();
        }
        let (store, _) = SledStore::open(&path, None).unwrap();
        let stored = store.load_status_lists().unwrap();
        assert_eq!(stored.statuses, [(1, 5, 1)]);
        let valid_until: Vec<_> = stored.lists.iter().map(|l| (l.id, l.valid_until)).collect();
        assert_eq!(valid_until, [(1, 200), (2, 150), (3, 0)]);
        let (_, d) = store.reserve_status_block(reservation(4, 6, 100)).unwrap();
        assert_eq!((d.list, d.start, d.end), (2, 4, 6));
        // The first key stays, across a reopen.
        assert_eq!(store.status_jti_key([2; 32]).unwrap(), [1; 32]);
        // At 180 list 2 is past its time but kept (it is being filled).
        assert!(store.purge_status_lists(180).unwrap().is_empty());
        assert_eq!(store.purge_status_lists(201).unwrap(), [1]);
        let left = store.load_status_lists().unwrap();
        assert!(left.statuses.is_empty());
        // The list made ahead stays, however old.
        let ids: Vec<_> = left.lists.iter().map(|l| l.id).collect();
        assert_eq!(ids, [2, 3]);
    }
}
