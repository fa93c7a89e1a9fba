//! The sled keystore: key records in an embedded sled database, the only module that names
//! sled.
//!
//! Every write is one transaction, flushed to disk before the call returns, so a change the
//! authority acts on is a change that survives `kill -9`. Opening is strict: a store that
//! exists but cannot be read, parsed or unsealed is an error, never a reason to start over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::{
    transaction::{ConflictableTransactionError, TransactionError},
    Transactional as _,
};

use super::{
    datakeys::{self, DataKeys, DataKeysError},
    files,
    guard::{parse_guard, write_guard},
    kek::{Keks, SealedKey, UnsealError},
    StoreError,
};
use crate::{
    b64,
    crypto::Algorithm,
    keys::{KeyRecord, KeyState, PrivateKeyDer},
};

/// The marker that says "this sled database is a token-authority keystore, format 1".
/// Written in the same transaction as the first keys, so its absence means no key was ever
/// stored.
const FORMAT_KEY: &[u8] = b"format";
const FORMAT_V1: &[u8] = b"token-authority-keystore/1";
const KEYS_TREE: &str = "keys";
/// A counter bumped in the same transaction as every write, and mirrored in the guard file.
const GENERATION_KEY: &[u8] = b"generation";
/// sled's default cache is 1 GiB; a key set is a few kilobytes.
const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

/// The stored form of a record: plain JSON, with the private key sealed when a KEK is set.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    alg: Algorithm,
    state: KeyState,
    created_at: u64,
    /// Absent in records written before the lifecycle kept it: then equal to created_at.
    #[serde(default)]
    published_at: Option<u64>,
    activated_at: Option<u64>,
    retired_at: Option<u64>,
    #[serde(default)]
    delete_after: Option<u64>,
    revoked_at: Option<u64>,
    revoked_reason: Option<String>,
    max_token_ttl: u64,
    private_key: StoredPrivateKey,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum StoredPrivateKey {
    /// AES-256-GCM under the key's own data key (in the data key file), the kid and
    /// algorithm bound in. How every key is written.
    DataKey { nonce: String, ciphertext: String },
    /// No private half: the key was revoked, and its data key erased.
    Erased,
    /// Written before data keys: PKCS#8 DER, base64url (no KEK). Read, and rewritten
    /// sealed under a data key when the store is opened.
    Plain { pkcs8: String },
    /// Written before data keys: AES-256-GCM under the named KEK. Read and rewritten
    /// like `Plain`.
    Sealed {
        kek_id: String,
        nonce: String,
        ciphertext: String,
    },
}

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    keys: sled::Tree,
    keks: Option<Keks>,
    /// The data key file beside the sled directory.
    data_keys_path: PathBuf,
    /// Serialises writers so each gets the next generation.
    writer: std::sync::Mutex<Writer>,
    /// Records found unsealed when the store was opened.
    unsealed_at_open: usize,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("keks", &self.keks)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the keystore at `path` and reads every record. An empty result
    /// means a new store on which no key was ever written.
    pub fn open(
        path: &Path,
        keks: Option<Keks>,
    ) -> Result<(SledStore, Vec<KeyRecord>), StoreError> {
        let shown = path.display().to_string();
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| open_error(&shown, e))?;
        let keys = db.open_tree(KEYS_TREE).map_err(|e| open_error(&shown, e))?;
        // sled creates its directory and files with the umask's modes: owner-only, now and
        // at every start (a store made by an older version, or under another umask).
        for private in [
            path.to_owned(),
            path.with_extension("guard"),
            path.with_extension("datakeys"),
        ] {
            crate::file_modes::make_private(&private).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
        let data_keys_path = path.with_extension("datakeys");
        let data_keys = DataKeys::load(&data_keys_path, keks.as_ref()).map_err(|e| match e {
            DataKeysError::KekRequired { .. } => StoreError::KekRequired {
                path: shown.clone(),
            },
            DataKeysError::Unseal { source, .. } => StoreError::Unseal {
                path: shown.clone(),
                kid: "(data key file)".into(),
                source,
            },
            other => StoreError::Damaged {
                path: shown.clone(),
                reason: other.to_string(),
            },
        })?;
        let mut store = SledStore {
            path: path.to_owned(),
            data_keys_path,
            db,
            keys,
            keks,
            writer: std::sync::Mutex::new(Writer::default()),
            unsealed_at_open: 0,
        };
        let (records, legacy) = store.read_all(&data_keys)?;
        let generation = store.check_guard(records.is_empty())?;
        store.writer = std::sync::Mutex::new(Writer {
            generation,
            poisoned: false,
            data_keys,
        });
        store.finish_open(&records, legacy)?;
        Ok((store, records))
    }

    /// Brings a store to the current format before it is used: records written before data
    /// keys are rewritten sealed under one, and data keys of keys that are gone or revoked
    /// are erased (a crash between a revocation's commit and its erasure leaves one).
    fn finish_open(
        &mut self,
        records: &[KeyRecord],
        legacy: Vec<String>,
    ) -> Result<(), StoreError> {
        if !legacy.is_empty() {
            let rewrite: Vec<KeyRecord> = records
                .iter()
                .filter(|r| legacy.contains(&r.kid))
                .cloned()
                .collect();
            self.apply(&rewrite, &[])?;
            tracing::info!(
                keys = rewrite.len(),
                "private keys rewritten under per-key data keys"
            );
        }
        let writer = self
            .writer
            .get_mut()
            .map_err(|_| StoreError::Write("a previous write panicked".into()))?;
        let live = |kid: &str| {
            records
                .iter()
                .any(|r| r.kid == kid && !r.private_key.as_bytes().is_empty())
        };
        let stale: Vec<String> = writer
            .data_keys
            .kids()
            .filter(|kid| !live(kid))
            .map(str::to_owned)
            .collect();
        if !stale.is_empty() {
            let mut kept = writer.data_keys.clone();
            for kid in &stale {
                kept.remove(kid);
            }
            kept.save(&self.data_keys_path, self.keks.as_ref(), "datakeys-prune")
                .map_err(|e| {
                    StoreError::Write(format!("erasing data keys of removed keys: {e}"))
                })?;
            writer.data_keys = kept;
        }
        self.unsealed_at_open = match &self.keks {
            // Sealed under an older KEK still counts as sealed; rewrap moves it to the first.
            Some(_) if !writer.data_keys.is_sealed() => writer.data_keys.len(),
            _ => 0,
        };
        Ok(())
    }

    /// The guard file beside the sled directory records the last generation written. sled
    /// opens a damaged log as an empty (or older) database without an error; the guard turns
    /// that into a refusal instead of a silent start with new keys.
    fn guard_path(&self) -> PathBuf {
        self.path.with_extension("guard")
    }

    fn check_guard(&self, empty: bool) -> Result<u64, StoreError> {
        let shown = self.path.display().to_string();
        let damaged = |reason: String| StoreError::Damaged {
            path: shown.clone(),
            reason,
        };
        let stored = match self
            .db
            .get(GENERATION_KEY)
            .map_err(|e| open_error(&shown, e))?
        {
            None => 0,
            Some(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| damaged("its generation counter is not 8 bytes".into()))?;
                u64::from_be_bytes(bytes)
            }
        };
        let guard_path = self.guard_path();
        let guarded = match std::fs::read_to_string(&guard_path) {
            Ok(text) => Some(parse_guard(&text).ok_or_else(|| {
                damaged(format!(
                    "the guard file {} is unreadable",
                    guard_path.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(damaged(format!(
                    "cannot read the guard file {}: {e}",
                    guard_path.display()
                )))
            }
        };
        match guarded {
            Some(expected) if empty || stored < expected => Err(damaged(format!(
                "{} records that generation {expected} was written, but the database holds {}",
                guard_path.display(),
                if empty {
                    "no keys".to_owned()
                } else {
                    format!("only generation {stored}")
                }
            ))),
            // A crash between the sled flush and the guard update leaves sled ahead: fine.
            Some(_) => Ok(stored),
            None if !empty => {
                // A store written before the guard existed (or whose guard was removed).
                write_guard(&guard_path, stored).map_err(|e| StoreError::Write(e.to_string()))?;
                Ok(stored)
            }
            None => Ok(stored),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether private keys are sealed under a KEK when written.
    pub fn encrypts_at_rest(&self) -> bool {
        self.keks.is_some()
    }

    /// How many data keys were stored unsealed when the store was opened with a KEK (written
    /// before a KEK was configured; `keys rewrap` seals them).
    pub fn unsealed_at_open(&self) -> usize {
        self.unsealed_at_open
    }

    /// Every record, and the kids of those written in a format older than data keys.
    fn read_all(&self, data_keys: &DataKeys) -> Result<(Vec<KeyRecord>, Vec<String>), StoreError> {
        let shown = self.path.display().to_string();
        let format = self.db.get(FORMAT_KEY).map_err(|e| open_error(&shown, e))?;
        match format {
            None => {
                // No marker: nothing was ever committed here, unless something else wrote it.
                let foreign_trees = self
                    .db
                    .tree_names()
                    .into_iter()
                    .filter(|name| {
                        name.as_ref() != b"__sled__default" && name.as_ref() != KEYS_TREE.as_bytes()
                    })
                    .count();
                if !self.keys.is_empty() || !self.db.is_empty() || foreign_trees > 0 {
                    return Err(StoreError::Foreign {
                        path: shown,
                        reason: "it holds data but no token-authority format marker".into(),
                    });
                }
                return Ok((Vec::new(), Vec::new()));
            }
            Some(value) if value.as_ref() == FORMAT_V1 => {}
            Some(value) => {
                return Err(StoreError::Foreign {
                    path: shown,
                    reason: format!(
                        "unknown format {:?}",
                        String::from_utf8_lossy(&value)
                            .chars()
                            .take(64)
                            .collect::<String>()
                    ),
                })
            }
        }
        let mut records = Vec::new();
        let mut legacy = Vec::new();
        for entry in self.keys.iter() {
            let (kid, value) = entry.map_err(|e| open_error(&shown, e))?;
            let kid = String::from_utf8_lossy(&kid).into_owned();
            let corrupt = |reason: String| StoreError::Corrupt {
                path: shown.clone(),
                kid: kid.clone(),
                reason,
            };
            let stored: StoredKey =
                serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
            if stored.kid != kid {
                return Err(corrupt(format!(
                    "record is filed under another kid ({:?})",
                    stored.kid
                )));
            }
            if matches!(
                stored.private_key,
                StoredPrivateKey::Plain { .. } | StoredPrivateKey::Sealed { .. }
            ) {
                legacy.push(kid.clone());
            }
            records.push(self.decode(stored, data_keys)?);
        }
        if records.is_empty() {
            return Err(StoreError::Foreign {
                path: shown,
                reason: "it is marked as a keystore but holds no keys".into(),
            });
        }
        Ok((records, legacy))
    }

    fn decode(&self, stored: StoredKey, data_keys: &DataKeys) -> Result<KeyRecord, StoreError> {
        let shown = self.path.display().to_string();
        let unseal = |source| StoreError::Unseal {
            path: shown.clone(),
            kid: stored.kid.clone(),
            source,
        };
        let private_key = match stored.private_key {
            StoredPrivateKey::Erased => PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new())),
            StoredPrivateKey::DataKey { nonce, ciphertext } => {
                let corrupt = |what: &str| StoreError::Corrupt {
                    path: shown.clone(),
                    kid: stored.kid.clone(),
                    reason: format!("sealed private key: bad {what}"),
                };
                let nonce = b64::decode(&nonce).map_err(|_| corrupt("nonce"))?;
                let ciphertext = b64::decode(&ciphertext).map_err(|_| corrupt("ciphertext"))?;
                let data_key = data_keys
                    .get(&stored.kid)
                    .ok_or_else(|| unseal(UnsealError::MissingDataKey))?;
                let der = datakeys::open(
                    data_key,
                    &stored.kid,
                    stored.alg.name(),
                    &nonce,
                    &ciphertext,
                )
                .map_err(unseal)?;
                PrivateKeyDer::new(der)
            }
            StoredPrivateKey::Plain { pkcs8 } => {
                let der = b64::decode(&pkcs8).map_err(|e| StoreError::Corrupt {
                    path: shown.clone(),
                    kid: stored.kid.clone(),
                    reason: format!("private key: {e}"),
                })?;
                PrivateKeyDer::new(zeroize::Zeroizing::new(der))
            }
            StoredPrivateKey::Sealed {
                kek_id,
                nonce,
                ciphertext,
            } => {
                let keks = self.keks.as_ref().ok_or_else(|| StoreError::KekRequired {
                    path: shown.clone(),
                })?;
                let corrupt = |what: &str| StoreError::Corrupt {
                    path: shown.clone(),
                    kid: stored.kid.clone(),
                    reason: format!("sealed private key: bad {what}"),
                };
                let sealed = SealedKey {
                    kek_id,
                    nonce: b64::decode(&nonce).map_err(|_| corrupt("nonce"))?,
                    ciphertext: b64::decode(&ciphertext).map_err(|_| corrupt("ciphertext"))?,
                };
                keks.unseal(&stored.kid, stored.alg.name(), &sealed)
                    .map_err(|source| StoreError::Unseal {
                        path: shown.clone(),
                        kid: stored.kid.clone(),
                        source,
                    })?
            }
        };
        Ok(KeyRecord {
            kid: stored.kid,
            alg: stored.alg,
            state: stored.state,
            created_at: stored.created_at,
            published_at: stored.published_at.unwrap_or(stored.created_at),
            activated_at: stored.activated_at,
            retired_at: stored.retired_at,
            delete_after: stored.delete_after,
            revoked_at: stored.revoked_at,
            revoked_reason: stored.revoked_reason,
            max_token_ttl: stored.max_token_ttl,
            private_key,
        })
    }

    fn encode(&self, record: &KeyRecord, data_keys: &DataKeys) -> Result<Vec<u8>, StoreError> {
        let pkcs8 = record.private_key.as_bytes();
        let private_key = if pkcs8.is_empty() {
            StoredPrivateKey::Erased
        } else {
            let data_key = data_keys
                .get(&record.kid)
                .ok_or_else(|| StoreError::NotApplied(format!("no data key for {}", record.kid)))?;
            let (nonce, ciphertext) =
                datakeys::seal(data_key, &record.kid, record.alg.name(), pkcs8)
                    .map_err(|e| StoreError::NotApplied(e.to_string()))?;
            StoredPrivateKey::DataKey {
                nonce: b64::encode(&nonce),
                ciphertext: b64::encode(&ciphertext),
            }
        };
        let stored = StoredKey {
            kid: record.kid.clone(),
            alg: record.alg,
            state: record.state,
            created_at: record.created_at,
            published_at: Some(record.published_at),
            activated_at: record.activated_at,
            retired_at: record.retired_at,
            delete_after: record.delete_after,
            revoked_at: record.revoked_at,
            revoked_reason: record.revoked_reason.clone(),
            max_token_ttl: record.max_token_ttl,
            private_key,
        };
        serde_json::to_vec(&stored).map_err(|e| StoreError::Write(e.to_string()))
    }

    /// Writes `records` (inserting or replacing by kid) in one transaction together with
    /// the format marker, then flushes. Returns only once the change is on disk.
    pub fn write(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
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
    pub fn apply(&self, records: &[KeyRecord], deleted: &[String]) -> Result<(), StoreError> {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| StoreError::Write("a previous write panicked".into()))?;
        let writer = &mut *guard;
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let not_applied = |e: String| StoreError::NotApplied(e);
        let keks = self.keks.as_ref();

        // Step 1: a data key for every private key that has none yet.
        let before = writer.data_keys.clone();
        let mut with_new = before.clone();
        let mut added = false;
        for record in records {
            if !record.private_key.as_bytes().is_empty() && with_new.get(&record.kid).is_none() {
                with_new
                    .create(&record.kid)
                    .map_err(|e| not_applied(e.to_string()))?;
                added = true;
            }
        }
        if added || !with_new.sealed_as(keks) {
            with_new
                .save(&self.data_keys_path, keks, "datakeys-add")
                .map_err(|e| not_applied(e.to_string()))?;
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
            let value = self
                .keys
                .get(kid.as_bytes())
                .map_err(|e| not_applied(e.to_string()))?;
            previous.push((kid.clone(), value.map(|v| v.to_vec())));
        }
        let first_write = self
            .db
            .get(FORMAT_KEY)
            .map_err(|e| not_applied(e.to_string()))?
            .is_none();

        // Step 2.
        let next = writer.generation + 1;
        files::step("store", "commit").map_err(|e| not_applied(e.to_string()))?;
        self.commit(next, &change, true)
            .map_err(|e| not_applied(format!("{e:?}")))?;
        // sled holds the change from here on (in memory, and on disk once flushed).
        writer.generation = next;
        let mut outcome = files::step("store", "flush")
            .map_err(|e| e.to_string())
            .and_then(|()| self.flush_db().map_err(|e| e.to_string()))
            .and_then(|()| write_guard(&self.guard_path(), next).map_err(|e| e.to_string()));

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
                        outcome = Err(format!("erasing data keys: {e}"));
                        let mut restored = with_new.clone();
                        if let Err(restore) =
                            restored.save(&self.data_keys_path, keks, "datakeys-restore")
                        {
                            writer.poisoned = true;
                            return Err(StoreError::Unknown {
                                failure: e.to_string(),
                                undo: format!("restoring the data key file: {restore}"),
                            });
                        }
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
    ) -> Result<(), TransactionError<()>> {
        let default_tree: &sled::Tree = &self.db;
        (default_tree, &self.keys).transaction(|(meta, keys)| {
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
            Ok::<_, ConflictableTransactionError<()>>(())
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
    ) -> Result<(), String> {
        let generation = writer.generation + 1;
        files::step("store", "undo").map_err(|e| e.to_string())?;
        self.commit(generation, previous, !first_write)
            .map_err(|e| format!("{e:?}"))?;
        writer.generation = generation;
        self.flush_db().map_err(|e| e.to_string())?;
        if first_write {
            writer.generation = 0;
            files::remove(&self.guard_path()).map_err(|e| e.to_string())?;
        } else if let Err(error) = write_guard(&self.guard_path(), generation) {
            // A guard behind sled is what a crash between the two leaves: harmless.
            tracing::warn!(%error, "the guard file could not be updated after undoing a write");
        }
        Ok(())
    }

    fn flush_db(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

/// The writer's state, behind the lock that serialises writes.
#[derive(Default)]
struct Writer {
    /// The generation of the last write sled holds.
    generation: u64,
    /// A write could not be undone: memory may differ from disk until a restart.
    poisoned: bool,
    /// What the data key file holds.
    data_keys: DataKeys,
}

fn open_error(path: &str, error: sled::Error) -> StoreError {
    match &error {
        // sled reports its lock as a formatted `Other` error; the text is all there is to match.
        sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            reason: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kid: &str) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: Algorithm::RS256,
            state: KeyState::Current,
            created_at: 10,
            published_at: 10,
            activated_at: Some(10),
            retired_at: None,
            delete_after: None,
            revoked_at: None,
            revoked_reason: None,
            max_token_ttl: 3600,
            private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(
                b"not-really-a-key-but-secret".to_vec(),
            )),
        }
    }

    #[test]
    fn round_trips_records_plain_and_sealed() {
        for keks in [None, Some([[1u8; 32]])] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keystore");
            {
                let (store, records) =
                    SledStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
                assert!(records.is_empty());
                store.write(&[record("a"), record("b")]).unwrap();
            }
            let (_, records) = SledStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
            let kids: Vec<_> = records.iter().map(|r| r.kid.as_str()).collect();
            assert_eq!(kids, ["a", "b"]);
            assert_eq!(
                records[0].private_key.as_bytes(),
                b"not-really-a-key-but-secret"
            );
        }
    }

    #[test]
    fn sealed_store_needs_the_right_kek_and_leaves_files_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = SledStore::open(&path, Some(Keks::from_bytes(&[[1u8; 32]]))).unwrap();
            store.write(&[record("a")]).unwrap();
        }
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::KekRequired { .. }), "{err}");
        let err = SledStore::open(&path, Some(Keks::from_bytes(&[[2u8; 32]]))).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unseal {
                    source: UnsealError::UnknownKek(_),
                    ..
                }
            ),
            "{err}"
        );
        // Both KEKs, new one first: old records still open.
        let (_, records) =
            SledStore::open(&path, Some(Keks::from_bytes(&[[2u8; 32], [1u8; 32]]))).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn second_open_of_a_held_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        let (_held, _) = SledStore::open(&path, None).unwrap();
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_damaged_log_that_sled_opens_as_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = SledStore::open(&path, None).unwrap();
            store.write(&[record("a")]).unwrap();
            store.write(&[record("b")]).unwrap();
        }
        let log = path.join("db");
        let zeroes = vec![0u8; std::fs::metadata(&log).unwrap().len() as usize];
        std::fs::write(&log, zeroes).unwrap();
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(
            err.to_string().contains("generation 2 was written"),
            "{err}"
        );
    }

    #[test]
    fn a_store_behind_its_guard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = SledStore::open(&path, None).unwrap();
            store.write(&[record("a")]).unwrap();
        }
        write_guard(&path.with_extension("guard"), 5).unwrap();
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(err.to_string().contains("holds only generation 1"), "{err}");
        // Sled ahead of the guard (a crash between the two writes) opens fine.
        write_guard(&path.with_extension("guard"), 0).unwrap();
        assert!(SledStore::open(&path, None).is_ok());
    }

    /// Records written before data keys (plain, or sealed under the KEK) are rewritten
    /// under their own data key when the store is opened, and still open.
    #[test]
    fn records_older_than_data_keys_are_migrated_on_open() {
        for keks in [None, Some([[1u8; 32]])] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keystore");
            {
                let (store, _) =
                    SledStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
                let legacy = match keks.map(|k| Keks::from_bytes(&k)) {
                    None => StoredPrivateKey::Plain {
                        pkcs8: b64::encode(b"not-really-a-key-but-secret"),
                    },
                    Some(keks) => {
                        let sealed = keks.seal(&record("a")).unwrap();
                        StoredPrivateKey::Sealed {
                            kek_id: sealed.kek_id,
                            nonce: b64::encode(&sealed.nonce),
                            ciphertext: b64::encode(&sealed.ciphertext),
                        }
                    }
                };
                let mut stored: serde_json::Value = serde_json::from_slice(
                    &store
                        .encode(&record("a"), &{
                            let mut keys = DataKeys::default();
                            keys.create("a").unwrap();
                            keys
                        })
                        .unwrap(),
                )
                .unwrap();
                stored["private_key"] = serde_json::to_value(&legacy).unwrap();
                store.db.insert(FORMAT_KEY, FORMAT_V1).unwrap();
                store
                    .keys
                    .insert("a", serde_json::to_vec(&stored).unwrap())
                    .unwrap();
                store.flush().unwrap();
            }
            let (store, records) =
                SledStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
            assert_eq!(
                records[0].private_key.as_bytes(),
                b"not-really-a-key-but-secret"
            );
            let stored: StoredKey =
                serde_json::from_slice(&store.keys.get("a").unwrap().unwrap()).unwrap();
            assert!(matches!(
                stored.private_key,
                StoredPrivateKey::DataKey { .. }
            ));
            drop(store);
            let (_, records) = SledStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
            assert_eq!(
                records[0].private_key.as_bytes(),
                b"not-really-a-key-but-secret"
            );
        }
    }

    #[test]
    fn marked_store_without_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let db = sled::open(&path).unwrap();
            db.insert(FORMAT_KEY, FORMAT_V1).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }
}
