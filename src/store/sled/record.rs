//! How a key record is stored in sled: JSON, its private key sealed under the key's own
//! data key (or, in records written before data keys, plain or under a KEK: read, then
//! rewritten at open).

use serde::{Deserialize, Serialize};

use super::SledStore;
use crate::{
    authority::keys::{KeyRecord, KeyState, PrivateKeyDer},
    store::{
        datakeys::{self, DataKeys},
        kek::{SealedKey, UnsealError},
        token::StoredToken,
        Context, StoreError,
    },
};
use token_authority_jose::{b64, crypto::Algorithm};

/// The stored form of a record: plain JSON, with the private key sealed when a KEK is set.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredKey {
    pub(super) kid: String,
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
    pub(super) private_key: StoredPrivateKey,
    /// A key generated in a PKCS#11 token: its objects and public key (no private half
    /// here). Absent for every other key, so records read as they were written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<StoredToken>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum StoredPrivateKey {
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

impl SledStore {
    pub(super) fn decode(
        &self,
        stored: StoredKey,
        data_keys: &DataKeys,
    ) -> Result<KeyRecord, StoreError> {
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
                let der = b64::decode(&pkcs8).map_err(|e| StoreError::Unreadable {
                    path: shown.clone(),
                    kid: stored.kid.clone(),
                    source: Context::new("private key", e).into(),
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
        let token = stored
            .token
            .map(StoredToken::into_object)
            .transpose()
            .map_err(|member| StoreError::Corrupt {
                path: shown.clone(),
                kid: stored.kid.clone(),
                reason: format!("token key: bad {member}"),
            })?;
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
            token,
        })
    }

    pub(super) fn encode(
        &self,
        record: &KeyRecord,
        data_keys: &DataKeys,
    ) -> Result<Vec<u8>, StoreError> {
        let pkcs8 = record.private_key.as_bytes();
        let private_key = if pkcs8.is_empty() {
            StoredPrivateKey::Erased
        } else {
            let data_key = data_keys.get(&record.kid).ok_or_else(|| {
                StoreError::NotApplied(format!("no data key for {}", record.kid).into())
            })?;
            let (nonce, ciphertext) =
                datakeys::seal(data_key, &record.kid, record.alg.name(), pkcs8)
                    .map_err(|e| StoreError::NotApplied(e.into()))?;
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
            token: record.token.as_ref().map(StoredToken::from_object),
        };
        serde_json::to_vec(&stored).map_err(|e| StoreError::Write(e.into()))
    }
}
