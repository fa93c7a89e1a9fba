//! The in-memory key set: an immutable snapshot built once per key-set change.
//!
//! Every expensive thing is done here, at build time: private keys parsed, public keys
//! prepared for verification, the JWS header segment of each signer encoded, the JWKS body
//! rendered and its ETag computed. The hot paths only read a snapshot through an atomic
//! pointer, so they take no lock and never touch the store.

use std::{collections::HashMap, sync::Arc};

pub use crate::jwt::Signer;

use crate::{
    b64,
    crypto::{sha256, Algorithm, CryptoError, SigningKey, VerifyingKey},
    jwk::{render_jwks, PublicJwk},
    jwt::verify::KeyLookup,
    keys::{KeyRecord, KeyState},
    lifecycle::{self, Timing},
};

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("key {kid}: {source}")]
    Key { kid: String, source: CryptoError },
    #[error("no current key for {0}")]
    NoCurrentKey(Algorithm),
    #[error("more than one current key for {0}")]
    SeveralCurrentKeys(Algorithm),
}

/// A published key the verifier knows.
#[derive(Debug)]
pub struct KnownKey {
    pub state: KeyState,
    pub key: VerifyingKey,
}

/// The JWKS as served: body bytes, strong ETag, and the structured keys.
#[derive(Debug)]
pub struct Jwks {
    pub body: bytes::Bytes,
    pub etag: String,
    pub keys: Vec<PublicJwk>,
}

#[derive(Debug)]
pub struct KeySet {
    records: Vec<KeyRecord>,
    known: HashMap<String, KnownKey>,
    /// Revoked kids: their private halves are erased; only the kid is kept, to say so.
    revoked: std::collections::HashSet<String>,
    signers: HashMap<Algorithm, Arc<Signer>>,
    jwks: Jwks,
    encrypted_at_rest: bool,
    next_change: Option<u64>,
    timing: Timing,
}

impl KeySet {
    /// Builds the snapshot from the full list of records. Each algorithm in `algorithms`
    /// must have exactly one current key.
    pub fn build(
        records: Vec<KeyRecord>,
        algorithms: &[Algorithm],
        encrypted_at_rest: bool,
        timing: Timing,
    ) -> Result<KeySet, KeySetError> {
        let mut known = HashMap::new();
        let mut signers = HashMap::new();
        let mut published = Vec::new();
        let mut revoked = std::collections::HashSet::new();
        for record in &records {
            if record.state == KeyState::Revoked {
                revoked.insert(record.kid.clone());
                continue;
            }
            let key_error = |source| KeySetError::Key {
                kid: record.kid.clone(),
                source,
            };
            let signing = SigningKey::from_pkcs8(record.alg, record.private_key.as_bytes())
                .map_err(key_error)?;
            let verifying = signing.verifying_key().map_err(key_error)?;
            if record.state.is_published() {
                published.push(PublicJwk::new(
                    &record.kid,
                    record.alg,
                    verifying.components(),
                ));
            }
            if record.state == KeyState::Current {
                let signer = Signer::new(record.kid.clone(), signing);
                if signers.insert(record.alg, Arc::new(signer)).is_some() {
                    return Err(KeySetError::SeveralCurrentKeys(record.alg));
                }
            }
            known.insert(
                record.kid.clone(),
                KnownKey {
                    state: record.state,
                    key: verifying,
                },
            );
        }
        if let Some(alg) = algorithms.iter().find(|alg| !signers.contains_key(alg)) {
            return Err(KeySetError::NoCurrentKey(*alg));
        }
        let body = render_jwks(&published);
        let etag = format!("\"{}\"", &b64::encode(sha256(&body))[..27]);
        Ok(KeySet {
            next_change: lifecycle::next_change(&records, timing),
            timing,
            records,
            known,
            revoked,
            signers,
            jwks: Jwks {
                body: bytes::Bytes::from(body),
                etag,
                keys: published,
            },
            encrypted_at_rest,
        })
    }

    /// Every record, including private material: for the lifecycle writer only.
    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    pub fn signer(&self, alg: Algorithm) -> Option<&Arc<Signer>> {
        self.signers.get(&alg)
    }

    /// A published key (next, current or retired).
    pub fn known(&self, kid: &str) -> Option<&KnownKey> {
        self.known.get(kid)
    }

    pub fn is_revoked(&self, kid: &str) -> bool {
        self.revoked.contains(kid)
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub fn encrypted_at_rest(&self) -> bool {
        self.encrypted_at_rest
    }

    /// When the published set changes next without anyone asking (unix seconds).
    pub fn next_change(&self) -> Option<u64> {
        self.next_change
    }

    /// The timings this set was built under.
    pub fn timing(&self) -> Timing {
        self.timing
    }
}

/// The verifier reads the server's published keys through this.
impl KeyLookup for KeySet {
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.known.get(kid).map(|known| &known.key)
    }

    fn is_revoked(&self, kid: &str) -> bool {
        KeySet::is_revoked(self, kid)
    }
}
