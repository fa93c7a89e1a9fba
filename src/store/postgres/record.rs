//! How a key record is stored in PostgreSQL: JSON in `ta_keys.record`, the private key
//! sealed under the first KEK with the kid and algorithm bound in, absent once erased.

use serde::{Deserialize, Serialize};

use super::PgStore;
use crate::{
    authority::keys::{KeyRecord, KeyState, PrivateKeyDer},
    store::{kek::SealedKey, token::StoredToken, StoreError},
};
use token_authority_jose::{b64, crypto::Algorithm};

/// The stored form of a record: JSON, the private key sealed under the KEK.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    alg: Algorithm,
    state: KeyState,
    created_at: u64,
    published_at: u64,
    activated_at: Option<u64>,
    retired_at: Option<u64>,
    delete_after: Option<u64>,
    revoked_at: Option<u64>,
    revoked_reason: Option<String>,
    max_token_ttl: u64,
    /// Absent once erased (a revoked key).
    private_key: Option<StoredSealed>,
    /// A key generated in a PKCS#11 token: its objects and public key (no private half
    /// here). Absent for every other key, so records read as they were written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<StoredToken>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSealed {
    kek_id: String,
    nonce: String,
    ciphertext: String,
}

impl PgStore {
    pub(super) fn decode(&self, kid: &str, text: &str) -> Result<KeyRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.shown.clone(),
            kid: kid.to_owned(),
            reason,
        };
        let stored: StoredKey =
            serde_json::from_str(text).map_err(|source| StoreError::Unreadable {
                path: self.shown.clone(),
                kid: kid.to_owned(),
                source: source.into(),
            })?;
        if stored.kid != kid {
            return Err(corrupt(format!(
                "record is filed under another kid ({:?})",
                stored.kid
            )));
        }
        let private_key = match stored.private_key {
            None => PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new())),
            Some(sealed) => {
                let sealed = SealedKey {
                    kek_id: sealed.kek_id,
                    nonce: b64::decode(&sealed.nonce)
                        .map_err(|_| corrupt("sealed private key: bad nonce".into()))?,
                    ciphertext: b64::decode(&sealed.ciphertext)
                        .map_err(|_| corrupt("sealed private key: bad ciphertext".into()))?,
                };
                self.keks
                    .unseal(&stored.kid, stored.alg.name(), &sealed)
                    .map_err(|source| StoreError::Unseal {
                        path: self.shown.clone(),
                        kid: kid.to_owned(),
                        source,
                    })?
            }
        };
        let token = stored
            .token
            .map(StoredToken::into_object)
            .transpose()
            .map_err(|member| corrupt(format!("token key: bad {member}")))?;
        Ok(KeyRecord {
            kid: stored.kid,
            alg: stored.alg,
            state: stored.state,
            created_at: stored.created_at,
            published_at: stored.published_at,
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

    pub(super) fn encode(&self, record: &KeyRecord) -> Result<String, StoreError> {
        let private_key = if record.private_key.as_bytes().is_empty() {
            None
        } else {
            let sealed = self
                .keks
                .seal(record)
                .map_err(|e| StoreError::NotApplied(e.into()))?;
            Some(StoredSealed {
                kek_id: sealed.kek_id,
                nonce: b64::encode(&sealed.nonce),
                ciphertext: b64::encode(&sealed.ciphertext),
            })
        };
        let stored = StoredKey {
            kid: record.kid.clone(),
            alg: record.alg,
            state: record.state,
            created_at: record.created_at,
            published_at: record.published_at,
            activated_at: record.activated_at,
            retired_at: record.retired_at,
            delete_after: record.delete_after,
            revoked_at: record.revoked_at,
            revoked_reason: record.revoked_reason.clone(),
            max_token_ttl: record.max_token_ttl,
            private_key,
            token: record.token.as_ref().map(StoredToken::from_object),
        };
        serde_json::to_string(&stored).map_err(|e| StoreError::NotApplied(e.into()))
    }
}
