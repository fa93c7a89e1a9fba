//! Key-encryption keys: the file that holds them, and sealing private keys under them.
//!
//! The file holds one or more KEKs, one standard-base64 line each (32 bytes, as
//! `openssl rand -base64 32` prints). The first seals; all of them unseal, so a new KEK can
//! be put first, the store re-sealed, and the old one removed later without downtime.

use std::{fmt, path::Path};

use crate::authority::keys::{KeyRecord, PrivateKeyDer};
use token_authority_jose::{
    b64,
    crypto::{self, aead::Kek},
};

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("cannot read the KEK file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the KEK file {path}, line {line}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("the KEK file {path} holds no key")]
    Empty { path: String },
}

/// A private key sealed with AES-256-GCM, as it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SealedKey {
    /// Which KEK sealed it: a short digest of that KEK, never the KEK itself.
    pub(crate) kek_id: String,
    pub(crate) nonce: Vec<u8>,
    pub(crate) ciphertext: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("it was sealed with KEK {0}, which is not in the KEK file")]
    UnknownKek(String),
    #[error("it does not open with KEK {0}: a wrong KEK, or a record moved onto another key")]
    Open(String),
    #[error("it does not open with its data key: a record moved onto another key, or a damaged data key file")]
    DataKey,
    #[error("its data key is missing from the data key file: it was erased (revoked or deleted), or the file is damaged")]
    MissingDataKey,
}

/// The loaded KEKs. `Debug` names only their ids.
pub struct Keks {
    keys: Vec<(String, Kek)>,
}

impl fmt::Debug for Keks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl Keks {
    pub fn load(path: &Path) -> Result<Keks, KekError> {
        let shown = path.display().to_string();
        let text = crate::config::read::regular_text(path, crate::config::read::SECRET_MAX)
            .map_err(|source| KekError::Read {
                path: shown.clone(),
                source,
            })?;
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |reason: &str| KekError::Invalid {
                path: shown.clone(),
                line: index + 1,
                reason: reason.to_owned(),
            };
            let bytes = zeroize::Zeroizing::new(
                b64::decode_standard(line).map_err(|_| invalid("not standard base64"))?,
            );
            if bytes.len() != crypto::aead::KEY_LEN {
                return Err(invalid("a KEK must be exactly 32 bytes"));
            }
            let kek = Kek::new(&bytes).map_err(|_| invalid("not a usable AES-256 key"))?;
            keys.push((kek_id(&bytes), kek));
        }
        if keys.is_empty() {
            return Err(KekError::Empty { path: shown });
        }
        Ok(Keks { keys })
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(all: &[[u8; 32]]) -> Keks {
        Keks {
            keys: all
                .iter()
                .map(|bytes| (kek_id(bytes), Kek::new(bytes).expect("32 bytes")))
                .collect(),
        }
    }

    /// The id of the KEK that seals new records.
    pub(crate) fn sealing_id(&self) -> &str {
        &self.keys[0].0
    }

    pub(crate) fn seal(&self, record: &KeyRecord) -> Result<SealedKey, crypto::CryptoError> {
        let (kek_id, kek) = &self.keys[0];
        let (nonce, ciphertext) =
            kek.seal(&associated_data(record), record.private_key.as_bytes())?;
        Ok(SealedKey {
            kek_id: kek_id.clone(),
            nonce,
            ciphertext,
        })
    }

    /// Seals `plain` under the first KEK, `aad` bound in.
    pub(crate) fn seal_bytes(
        &self,
        aad: &[u8],
        plain: &[u8],
    ) -> Result<SealedKey, crypto::CryptoError> {
        let (kek_id, kek) = &self.keys[0];
        let (nonce, ciphertext) = kek.seal(aad, plain)?;
        Ok(SealedKey {
            kek_id: kek_id.clone(),
            nonce,
            ciphertext,
        })
    }

    /// Opens what `seal_bytes` sealed, with whichever listed KEK sealed it.
    pub(crate) fn open_bytes(
        &self,
        aad: &[u8],
        sealed: &SealedKey,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, UnsealError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.kek_id)
            .ok_or_else(|| UnsealError::UnknownKek(sealed.kek_id.clone()))?;
        kek.open(aad, &sealed.nonce, &sealed.ciphertext)
            .map(zeroize::Zeroizing::new)
            .map_err(|_| UnsealError::Open(sealed.kek_id.clone()))
    }

    pub(crate) fn unseal(
        &self,
        record_kid: &str,
        alg: &str,
        sealed: &SealedKey,
    ) -> Result<PrivateKeyDer, UnsealError> {
        let (_, kek) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.kek_id)
            .ok_or_else(|| UnsealError::UnknownKek(sealed.kek_id.clone()))?;
        let aad = associated_data_for(record_kid, alg);
        let plain = kek
            .open(&aad, &sealed.nonce, &sealed.ciphertext)
            .map_err(|_| UnsealError::Open(sealed.kek_id.clone()))?;
        Ok(PrivateKeyDer::new(zeroize::Zeroizing::new(plain)))
    }
}

/// The kid and algorithm are bound into the seal, so a sealed key copied onto another
/// record fails to open instead of signing under a foreign kid.
fn associated_data(record: &KeyRecord) -> Vec<u8> {
    associated_data_for(&record.kid, record.alg.name())
}

fn associated_data_for(kid: &str, alg: &str) -> Vec<u8> {
    format!("token-authority private key v1\0{kid}\0{alg}").into_bytes()
}

fn kek_id(bytes: &[u8]) -> String {
    format!("kek-{}", &b64::encode(crypto::sha256(bytes))[..11])
}
