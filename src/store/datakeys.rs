//! Data keys: one random AES-256 key per private key, kept outside sled so that erasing a
//! key really erases it.
//!
//! sled is log-structured: a value it replaced or removed stays in its files until the
//! segment is reused. So each private key is stored in sled sealed under its own data key,
//! and the data keys live in one small file (`keystore.datakeys`) that is rewritten whole,
//! atomically and durably, on every change: dropping a key's data key from it leaves the
//! sealed copies in sled's log undecryptable (crypto-shredding). With a KEK the file is
//! sealed under it, so the data directory alone opens nothing.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    files,
    kek::{Keks, SealedKey, UnsealError},
    Cause,
};
use token_authority_jose::{b64, crypto};

const FORMAT: &str = "token-authority-data-keys/1";
const FILE_AAD: &[u8] = b"token-authority data keys v1";

#[derive(Debug, thiserror::Error)]
pub enum DataKeysError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    /// The file, or a key in it, does not parse.
    #[error("{path} is damaged")]
    Unparsable {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("{path} is sealed under a KEK but no --kek-file was given")]
    KekRequired { path: String },
    #[error("{path}: {source}")]
    Unseal { path: String, source: UnsealError },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    /// Without a KEK: kid -> data key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<BTreeMap<String, String>>,
    /// With a KEK: the same map as JSON, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kek_id: String,
    nonce: String,
    ciphertext: String,
}

/// The data keys, by kid. `Debug` shows only the kids.
#[derive(Clone, Default)]
pub struct DataKeys {
    keys: BTreeMap<String, Zeroizing<Vec<u8>>>,
    /// The KEK the file was sealed under when read (None: plain, or no file).
    sealed_by: Option<String>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl DataKeys {
    /// Reads the file; a missing file is an empty set (a new store, or one written before
    /// data keys existed).
    pub fn load(path: &Path, keks: Option<&Keks>) -> Result<DataKeys, DataKeysError> {
        let shown = path.display().to_string();
        let damaged = |reason: String| DataKeysError::Damaged {
            path: shown.clone(),
            reason,
        };
        let unparsable = |source: Cause| DataKeysError::Unparsable {
            path: shown.clone(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataKeys::default()),
            Err(source) => {
                return Err(DataKeysError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let file: File = serde_json::from_slice(&bytes).map_err(|e| unparsable(e.into()))?;
        if file.format != FORMAT {
            return Err(damaged(format!("unknown format {:?}", file.format)));
        }
        let (map, sealed_by) = match (file.keys, file.sealed) {
            (Some(map), None) => (map, None),
            (None, Some(sealed)) => {
                let keks = keks.ok_or_else(|| DataKeysError::KekRequired {
                    path: shown.clone(),
                })?;
                let sealed = SealedKey {
                    kek_id: sealed.kek_id,
                    nonce: b64::decode(&sealed.nonce).map_err(|e| unparsable(e.into()))?,
                    ciphertext: b64::decode(&sealed.ciphertext)
                        .map_err(|e| unparsable(e.into()))?,
                };
                let plain =
                    keks.open_bytes(FILE_AAD, &sealed)
                        .map_err(|source| DataKeysError::Unseal {
                            path: shown.clone(),
                            source,
                        })?;
                let map: BTreeMap<String, String> =
                    serde_json::from_slice(&plain).map_err(|e| unparsable(e.into()))?;
                (map, Some(sealed.kek_id))
            }
            _ => return Err(damaged("it holds neither keys nor sealed keys".into())),
        };
        let mut keys = BTreeMap::new();
        for (kid, encoded) in map {
            let key = Zeroizing::new(b64::decode(&encoded).map_err(|e| unparsable(e.into()))?);
            if key.len() != crypto::aead::KEY_LEN {
                return Err(damaged(format!("the data key of {kid} is not 32 bytes")));
            }
            keys.insert(kid, key);
        }
        Ok(DataKeys { keys, sealed_by })
    }

    /// Replaces the file with this set, sealed under the first KEK when there is one.
    /// `label` names the failpoints of this write.
    pub(crate) fn save(
        &mut self,
        path: &Path,
        keks: Option<&Keks>,
        label: &str,
    ) -> std::io::Result<()> {
        // The base64 text of the keys is wiped on drop like the keys themselves.
        let encoded: Vec<(&str, Zeroizing<String>)> = self
            .keys
            .iter()
            .map(|(kid, key)| (kid.as_str(), Zeroizing::new(b64::encode(key.as_slice()))))
            .collect();
        let map: BTreeMap<&str, &str> = encoded
            .iter()
            .map(|(kid, key)| (*kid, key.as_str()))
            .collect();
        let file = match keks {
            None => File {
                format: FORMAT.into(),
                keys: Some(
                    map.iter()
                        .map(|(kid, key)| ((*kid).to_owned(), (*key).to_owned()))
                        .collect(),
                ),
                sealed: None,
            },
            Some(keks) => {
                let plain =
                    Zeroizing::new(serde_json::to_vec(&map).map_err(std::io::Error::other)?);
                let sealed = keks
                    .seal_bytes(FILE_AAD, &plain)
                    .map_err(std::io::Error::other)?;
                File {
                    format: FORMAT.into(),
                    keys: None,
                    sealed: Some(Sealed {
                        kek_id: sealed.kek_id,
                        nonce: b64::encode(&sealed.nonce),
                        ciphertext: b64::encode(&sealed.ciphertext),
                    }),
                }
            }
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&file).map_err(std::io::Error::other)?);
        files::replace(path, &bytes, label)?;
        self.sealed_by = keks.map(|keks| keks.sealing_id().to_owned());
        Ok(())
    }

    pub fn get(&self, kid: &str) -> Option<&[u8]> {
        self.keys.get(kid).map(|key| key.as_slice())
    }

    /// A fresh random data key for `kid`.
    pub(crate) fn create(&mut self, kid: &str) -> Result<(), crypto::CryptoError> {
        let key = Zeroizing::new(crypto::random_bytes(crypto::aead::KEY_LEN)?);
        self.keys.insert(kid.to_owned(), key);
        Ok(())
    }

    pub(crate) fn remove(&mut self, kid: &str) -> bool {
        self.keys.remove(kid).is_some()
    }

    pub(crate) fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the file as last read or written is sealed under a KEK at all.
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed_by.is_some()
    }

    /// Whether the file as last read or written is sealed under `keks`' first KEK (or,
    /// without a KEK, plain).
    pub(crate) fn sealed_as(&self, keks: Option<&Keks>) -> bool {
        self.sealed_by.as_deref() == keks.map(Keks::sealing_id)
    }
}

/// Seals a private key under its data key; the kid and algorithm are bound in, so a sealed
/// key copied onto another record does not open.
pub(crate) fn seal(
    data_key: &[u8],
    kid: &str,
    alg: &str,
    pkcs8: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), crypto::CryptoError> {
    crypto::aead::Kek::new(data_key)?.seal(&aad(kid, alg), pkcs8)
}

pub(crate) fn open(
    data_key: &[u8],
    kid: &str,
    alg: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
    crypto::aead::Kek::new(data_key)
        .and_then(|key| key.open(&aad(kid, alg), nonce, ciphertext))
        .map(Zeroizing::new)
        .map_err(|_| UnsealError::DataKey)
}

fn aad(kid: &str, alg: &str) -> Vec<u8> {
    format!("token-authority private key v2\0{kid}\0{alg}").into_bytes()
}
