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
    files,
    guard::{parse_guard, write_guard},
    kek::{Keks, SealedKey},
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
    /// PKCS#8 DER, base64url. Only when the server runs without a KEK.
    Plain { pkcs8: String },
    /// AES-256-GCM under the named KEK, the kid and algorithm bound in.
    Sealed {
        kek_id: String,
        nonce: String,
        ciphertext: String,
    },
}

pub struct KeyStore {
    path: PathBuf,
    db: sled::Db,
    keys: sled::Tree,
    keks: Option<Keks>,
    /// Serialises writers so each gets the next generation.
    writer: std::sync::Mutex<Writer>,
    /// Records found unsealed when the store was opened.
    unsealed_at_open: usize,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("keks", &self.keks)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens (or creates) the keystore at `path` and reads every record. An empty result
    /// means a new store on which no key was ever written.
    pub fn open(path: &Path, keks: Option<Keks>) -> Result<(KeyStore, Vec<KeyRecord>), StoreError> {
        let shown = path.display().to_string();
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| open_error(&shown, e))?;
        let keys = db.open_tree(KEYS_TREE).map_err(|e| open_error(&shown, e))?;
        let mut store = KeyStore {
            path: path.to_owned(),
            db,
            keys,
            keks,
            writer: std::sync::Mutex::new(Writer::default()),
            unsealed_at_open: 0,
        };
        let (records, unsealed) = store.read_all()?;
        store.unsealed_at_open = unsealed;
        let generation = store.check_guard(records.is_empty())?;
        store.writer = std::sync::Mutex::new(Writer {
            generation,
            poisoned: false,
        });
        Ok((store, records))
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

    /// How many records were stored unsealed when the store was opened (written before a
    /// KEK was configured; `keys rewrap` seals them).
    pub fn unsealed_at_open(&self) -> usize {
        self.unsealed_at_open
    }

    fn read_all(&self) -> Result<(Vec<KeyRecord>, usize), StoreError> {
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
                return Ok((Vec::new(), 0));
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
        let mut unsealed = 0;
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
            unsealed += usize::from(matches!(stored.private_key, StoredPrivateKey::Plain { .. }));
            records.push(self.decode(stored)?);
        }
        if records.is_empty() {
            return Err(StoreError::Foreign {
                path: shown,
                reason: "it is marked as a keystore but holds no keys".into(),
            });
        }
        Ok((records, unsealed))
    }

    fn decode(&self, stored: StoredKey) -> Result<KeyRecord, StoreError> {
        let shown = self.path.display().to_string();
        let private_key = match stored.private_key {
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

    fn encode(&self, record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
        let private_key = match &self.keks {
            None => StoredPrivateKey::Plain {
                pkcs8: b64::encode(record.private_key.as_bytes()),
            },
            Some(keks) => {
                let sealed = keks
                    .seal(record)
                    .map_err(|e| StoreError::Write(e.to_string()))?;
                StoredPrivateKey::Sealed {
                    kek_id: sealed.kek_id,
                    nonce: b64::encode(&sealed.nonce),
                    ciphertext: b64::encode(&sealed.ciphertext),
                }
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
    /// The commit point is the sled flush followed by the guard file: only when both are
    /// done does this return `Ok`, and only then may the caller serve the change. If any
    /// step after the sled transaction fails, the transaction is undone by a second one that
    /// restores the previous values (nothing outside this call has seen the change: the
    /// caller swaps memory only on `Ok`), and the answer is `NotApplied`. If the undo fails
    /// too, the outcome is unknown until a restart re-reads the disk; the store then refuses
    /// every further write (`Unknown`, then `Poisoned`), so no change is ever planned from a
    /// state that may not be the one on disk.
    pub fn apply(&self, records: &[KeyRecord], deleted: &[String]) -> Result<(), StoreError> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Write("a previous write panicked".into()))?;
        if writer.poisoned {
            return Err(StoreError::Poisoned);
        }
        let not_applied = |e: String| StoreError::NotApplied(e);
        let mut change: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for record in records {
            change.push((record.kid.clone(), Some(self.encode(record)?)));
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

        let next = writer.generation + 1;
        files::step("store", "commit").map_err(|e| not_applied(e.to_string()))?;
        self.commit(next, &change, true)
            .map_err(|e| not_applied(format!("{e:?}")))?;
        // sled holds the change from here on (in memory, and on disk once flushed).
        writer.generation = next;
        let durable = files::step("store", "flush")
            .map_err(|e| e.to_string())
            .and_then(|()| self.flush_db().map_err(|e| e.to_string()))
            .and_then(|()| write_guard(&self.guard_path(), next).map_err(|e| e.to_string()));
        let Err(failure) = durable else {
            return Ok(());
        };
        match self.undo(&mut writer, &previous, first_write) {
            Ok(()) => Err(StoreError::NotApplied(failure)),
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
    use crate::store::kek::UnsealError;

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
                    KeyStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
                assert!(records.is_empty());
                store.write(&[record("a"), record("b")]).unwrap();
            }
            let (_, records) = KeyStore::open(&path, keks.map(|k| Keks::from_bytes(&k))).unwrap();
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
            let (store, _) = KeyStore::open(&path, Some(Keks::from_bytes(&[[1u8; 32]]))).unwrap();
            store.write(&[record("a")]).unwrap();
        }
        let err = KeyStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::KekRequired { .. }), "{err}");
        let err = KeyStore::open(&path, Some(Keks::from_bytes(&[[2u8; 32]]))).unwrap_err();
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
            KeyStore::open(&path, Some(Keks::from_bytes(&[[2u8; 32], [1u8; 32]]))).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn second_open_of_a_held_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        let (_held, _) = KeyStore::open(&path, None).unwrap();
        let err = KeyStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_damaged_log_that_sled_opens_as_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = KeyStore::open(&path, None).unwrap();
            store.write(&[record("a")]).unwrap();
            store.write(&[record("b")]).unwrap();
        }
        let log = path.join("db");
        let zeroes = vec![0u8; std::fs::metadata(&log).unwrap().len() as usize];
        std::fs::write(&log, zeroes).unwrap();
        let err = KeyStore::open(&path, None).unwrap_err();
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
            let (store, _) = KeyStore::open(&path, None).unwrap();
            store.write(&[record("a")]).unwrap();
        }
        write_guard(&path.with_extension("guard"), 5).unwrap();
        let err = KeyStore::open(&path, None).unwrap_err();
        assert!(err.to_string().contains("holds only generation 1"), "{err}");
        // Sled ahead of the guard (a crash between the two writes) opens fine.
        write_guard(&path.with_extension("guard"), 0).unwrap();
        assert!(KeyStore::open(&path, None).is_ok());
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
        let err = KeyStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }
}
