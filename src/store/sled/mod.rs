//! The sled keystore: key records in an embedded sled database, the only module that names
//! sled.
//!
//! Every write is one transaction, flushed to disk before the call returns, so a change the
//! authority acts on is a change that survives `kill -9`. Opening is strict: a store that
//! exists but cannot be read, parsed or unsealed is an error, never a reason to start over.

use std::path::{Path, PathBuf};

pub(crate) mod audit;
mod record;
mod status;
mod write;

use self::{
    record::{StoredKey, StoredPrivateKey},
    write::Writer,
};
use super::{
    datakeys::{DataKeys, DataKeysError},
    guard::{parse_guard, write_guard},
    kek::Keks,
    Context, StoreError,
};
use crate::authority::keys::KeyRecord;

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
    pub(crate) fn open(
        path: &Path,
        keks: Option<Keks>,
    ) -> Result<(SledStore, Vec<KeyRecord>), StoreError> {
        let shown = path.display().to_string();
        let db = open_db(path, &shown)?;
        let keys = db.open_tree(KEYS_TREE).map_err(|e| open_error(&shown, e))?;
        // sled creates its directory and files with the umask's modes: owner-only, now and
        // at every start (a store made by an older version, or under another umask).
        for private in [
            path.to_owned(),
            path.with_extension("guard"),
            path.with_extension("datakeys"),
        ] {
            crate::store::file_modes::make_private(&private).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: e.into(),
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
            other => StoreError::DamagedFile {
                path: shown.clone(),
                source: other.into(),
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
                    StoreError::Write(Context::new("erasing data keys of removed keys", e).into())
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
                return Err(StoreError::DamagedFile {
                    path: shown.clone(),
                    source: Context::new(
                        format!("cannot read the guard file {}", guard_path.display()),
                        e,
                    )
                    .into(),
                })
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
                write_guard(&guard_path, stored).map_err(|e| StoreError::Write(e.into()))?;
                Ok(stored)
            }
            None => Ok(stored),
        }
    }

    /// Whether private keys are sealed under a KEK when written.
    pub(crate) fn encrypts_at_rest(&self) -> bool {
        self.keks.is_some()
    }

    /// How many data keys were stored unsealed when the store was opened with a KEK (written
    /// before a KEK was configured; `keys rewrap` seals them).
    pub(crate) fn unsealed_at_open(&self) -> usize {
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
                serde_json::from_slice(&value).map_err(|e| StoreError::Unreadable {
                    path: shown.clone(),
                    kid: kid.clone(),
                    source: e.into(),
                })?;
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

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Write(e.into()))
    }
}

/// How long an open waits for sled's lock before calling the store in use. sled lets go of
/// its lock file only when the last of its handles is dropped, and its io threads hold
/// handles of their own for a moment after a database is closed: a store closed and opened
/// again in one process can find its own lock still held. Another process holding it is
/// still refused, after this wait.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_db(path: &Path, shown: &str) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| open_error(shown, e));
        match opened {
            Err(StoreError::Locked { .. }) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
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
            source: error.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        authority::keys::{KeyState, PrivateKeyDer},
        store::kek::UnsealError,
    };
    use token_authority_jose::{b64, crypto::Algorithm};

    pub(super) fn record(kid: &str) -> KeyRecord {
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
            token: None,
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

    /// sled's io threads can hold a closed database's lock for a moment; an open in that
    /// moment waits for it instead of calling the store in use.
    #[test]
    fn a_lock_let_go_of_within_the_wait_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        let lingering = sled::open(&path).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(lingering);
        });
        let opened = SledStore::open(&path, None);
        release.join().unwrap();
        let (_, records) = opened.unwrap();
        assert!(records.is_empty());
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

    /// A failure keeps its cause: the error sled gave, and the line shows it after the
    /// message, as it did when the cause was part of the message.
    #[test]
    fn a_store_that_cannot_be_opened_keeps_sleds_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        std::fs::write(&path, b"not a directory").unwrap();
        let err = SledStore::open(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let cause = std::error::Error::source(&err)
            .and_then(|cause| cause.downcast_ref::<sled::Error>())
            .unwrap_or_else(|| panic!("no sled error in {err:?}"));
        assert!(matches!(cause, sled::Error::Io(_)), "{cause:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot open the keystore {}", path.display())
        );
        assert_eq!(
            crate::telemetry::chain(&err).to_string(),
            format!("cannot open the keystore {}: {cause}", path.display())
        );
    }

    /// A cause shown inside the message stays there, and is the source too.
    #[test]
    fn an_unparsable_record_keeps_the_json_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        {
            let (store, _) = SledStore::open(&path, None).unwrap();
            store.write(&[record("a")]).unwrap();
            store.keys.insert("a", &b"{not json"[..]).unwrap();
            store.flush().unwrap();
        }
        let err = SledStore::open(&path, None).unwrap_err();
        let cause = std::error::Error::source(&err)
            .and_then(|cause| cause.downcast_ref::<serde_json::Error>())
            .unwrap_or_else(|| panic!("no JSON error in {err:?}"));
        let line = format!(
            "the keystore {} is unreadable: key record \"a\": {cause}; refusing to start with new keys",
            path.display()
        );
        assert_eq!(err.to_string(), line);
        assert_eq!(crate::telemetry::chain(&err).to_string(), line);
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
