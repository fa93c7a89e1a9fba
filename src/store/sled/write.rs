//! Writing to the sled keystore: one change is data keys first, then one flushed sled
//! transaction and the guard file (the commit point), then erasing the data keys of what
//! was deleted or revoked; a failure after the transaction is undone.

use std::convert::Infallible;

use sled::{
    transaction::{ConflictableTransactionError, TransactionError},
    Transactional as _,
};

use super::{SledStore, FORMAT_KEY, FORMAT_V1, GENERATION_KEY};
use crate::{
    authority::keys::KeyRecord,
    store::{datakeys::DataKeys, files, guard::write_guard, Cause, Context, StoreError},
    telemetry::chain,
};

impl SledStore {
    /// Writes `records` (inserting or replacing by kid) in one transaction together with
    /// the format marker, then flushes. Returns only once the change is on disk.
    #[cfg(test)]
    pub(crate) fn write(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
        self.apply(records, &[])
    }

    /// Writes `records` and deletes the keys named in `deleted` as one change.
    ///
    /// The steps, in order:
    /// 1. data keys for new private keys are added to the data key file (a crash after it
    ///    leaves unused data keys, erased at the next open);
    /// 2. one sled transaction with the records and the next generation, flushed, then the
    ///    guard file: the commit point;
    /// 3. the data keys of deleted and revoked keys are erased from the data key file.
    ///
    /// Only when all three are done does this return `Ok`, and only then may the caller
    /// serve the change. If a step after the sled transaction fails, the change is undone:
    /// the data key file is put back as step 1 left it, and a second transaction restores
    /// the previous records (nothing outside this call has seen the change: the caller swaps
    /// memory only on `Ok`); the answer is `NotApplied`. If undoing fails too, the outcome is
    /// unknown until a restart re-reads the disk: the store refuses every further write
    /// (`Unknown`, then `Poisoned`), so no change is planned from a state that may not be the
    /// one on disk.
    pub(crate) fn apply(
        &self,
        records: &[KeyRecord],
        deleted: &[String],
    ) -> Result<(), StoreError> {
        // A write that panicked while holding the lock left the disk in a state nobody
        // knows: the same as a write that could not be undone.
        let mut guard = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let writer = &mut *guard;
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let keks = self.keks.as_ref();

        // Step 1: a data key for every private key that has none yet.
        let before = writer.data_keys.clone();
        let mut with_new = before.clone();
        let mut added = false;
        for record in records {
            if !record.private_key.as_bytes().is_empty() && with_new.get(&record.kid).is_none() {
                with_new.create(&record.kid).map_err(not_applied)?;
                added = true;
            }
        }
        if added || !with_new.sealed_as(keks) {
            with_new
                .save(&self.data_keys_path, keks, "datakeys-add")
                .map_err(not_applied)?;
            writer.data_keys = with_new.clone();
        }

        let mut change: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for record in records {
            change.push((record.kid.clone(), Some(self.encode(record, &with_new)?)));
        }
        for kid in deleted {
            change.push((kid.clone(), None));
        }
        // What the change overwrites, to put back if it cannot be made durable.
        let mut previous: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(change.len());
        for (kid, _) in &change {
            let value = self.keys.get(kid.as_bytes()).map_err(not_applied)?;
            previous.push((kid.clone(), value.map(|v| v.to_vec())));
        }
        let first_write = self.db.get(FORMAT_KEY).map_err(not_applied)?.is_none();

        // Step 2.
        let next = writer.generation + 1;
        files::step("store", "commit").map_err(not_applied)?;
        self.commit(next, &change, true).map_err(not_applied)?;
        // sled holds the change from here on (in memory, and on disk once flushed).
        writer.generation = next;
        let mut outcome: Result<(), Cause> = files::step("store", "flush")
            .map_err(Cause::from)
            .and_then(|()| self.flush_db().map_err(Cause::from))
            .and_then(|()| write_guard(&self.guard_path(), next).map_err(Cause::from));

        // Step 3: erase what no record needs any more.
        if outcome.is_ok() {
            let mut erased = with_new.clone();
            let mut any = false;
            for kid in deleted {
                any |= erased.remove(kid);
            }
            for record in records {
                if record.private_key.as_bytes().is_empty() {
                    any |= erased.remove(&record.kid);
                }
            }
            if any {
                match erased.save(&self.data_keys_path, keks, "datakeys-erase") {
                    Ok(()) => writer.data_keys = erased,
                    Err(e) => {
                        // The file may already lack the erased keys (a failure after the
                        // rename): put them back before the records that need them return.
                        let mut restored = with_new.clone();
                        if let Err(restore) =
                            restored.save(&self.data_keys_path, keks, "datakeys-restore")
                        {
                            writer.poisoned = true;
                            return Err(StoreError::Unknown {
                                failure: e.into(),
                                undo: Context::new("restoring the data key file", restore).into(),
                            });
                        }
                        outcome = Err(Context::new("erasing data keys", e).into());
                    }
                }
            }
        }
        let Err(failure) = outcome else {
            return Ok(());
        };
        match self.undo(writer, &previous, first_write) {
            Ok(()) => {
                // The data keys step 1 added now belong to no record: drop them again.
                let mut unused = before;
                if added
                    && unused
                        .save(&self.data_keys_path, keks, "datakeys-unused")
                        .is_ok()
                {
                    writer.data_keys = unused;
                }
                Err(StoreError::NotApplied(failure))
            }
            Err(undo) => {
                writer.poisoned = true;
                Err(StoreError::Unknown { failure, undo })
            }
        }
    }

    /// One sled transaction: the change, the generation, and the format marker (or, when
    /// undoing the very first write, their removal: a store that never held keys must read
    /// as new again, not as a damaged keystore).
    fn commit(
        &self,
        generation: u64,
        change: &[(String, Option<Vec<u8>>)],
        marked: bool,
    ) -> Result<(), sled::Error> {
        let default_tree: &sled::Tree = &self.db;
        let result = (default_tree, &self.keys).transaction(|(meta, keys)| {
            if marked {
                meta.insert(FORMAT_KEY, FORMAT_V1)?;
                meta.insert(GENERATION_KEY, &generation.to_be_bytes())?;
            } else {
                meta.remove(FORMAT_KEY)?;
                meta.remove(GENERATION_KEY)?;
            }
            for (kid, value) in change {
                match value {
                    Some(value) => keys.insert(kid.as_bytes(), value.as_slice())?,
                    None => keys.remove(kid.as_bytes())?,
                };
            }
            Ok::<_, ConflictableTransactionError<Infallible>>(())
        });
        result.map_err(|error| match error {
            TransactionError::Storage(error) => error,
            // The transaction never aborts.
            TransactionError::Abort(never) => match never {},
        })
    }

    /// Puts back the values a failed write overwrote, under a newer generation, flushed.
    /// The guard may already name the failed write's generation; the undo is newer, so the
    /// guard is never ahead of sled. Undoing a first write removes the guard with the keys.
    fn undo(
        &self,
        writer: &mut Writer,
        previous: &[(String, Option<Vec<u8>>)],
        first_write: bool,
    ) -> Result<(), Cause> {
        let generation = writer.generation + 1;
        files::step("store", "undo")?;
        self.commit(generation, previous, !first_write)?;
        writer.generation = generation;
        self.flush_db()?;
        if first_write {
            writer.generation = 0;
            files::remove(&self.guard_path())?;
        } else if let Err(error) = write_guard(&self.guard_path(), generation) {
            // A guard behind sled is what a crash between the two leaves: harmless.
            tracing::warn!(error = %chain(&error), "the guard file could not be updated after undoing a write");
        }
        Ok(())
    }

    fn flush_db(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }
}

/// The writer's state, behind the lock that serialises writes.
#[derive(Default)]
pub(super) struct Writer {
    /// The generation of the last write sled holds.
    pub(super) generation: u64,
    /// A write could not be undone: memory may differ from disk until a restart.
    pub(super) poisoned: bool,
    /// What the data key file holds.
    pub(super) data_keys: DataKeys,
}

/// A write step that failed before sled had the change.
fn not_applied(error: impl Into<Cause>) -> StoreError {
    StoreError::NotApplied(error.into())
}
