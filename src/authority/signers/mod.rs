//! Where the authority's keys are made and what signs with them: the process itself (the
//! crypto provider), its private keys sealed at rest by the store; or a PKCS#11 token that
//! makes the keys, keeps them non-extractable, and is only asked to sign (`pkcs11`).

pub mod pkcs11;

use std::sync::Arc;

use self::pkcs11::{Pkcs11Token, TokenKey};
use crate::{
    authority::keys::{self, GeneratedKey, KeyRecord, PrivateKeyDer, TokenObject},
    authority::keyset::KeySet,
    telemetry::chain,
};
use token_authority_jose::{
    crypto::{Algorithm, CryptoError, SigningKey, VerifyingKey},
    jwt::SignatureSource,
};

#[derive(Clone, Debug, Default)]
pub enum Signers {
    /// Keys made by the crypto provider and held in the process.
    #[default]
    InProcess,
    /// Keys generated in a PKCS#11 token, which signs with them and never lets them out.
    Pkcs11(Pkcs11Token),
}

impl Signers {
    /// Whether signing blocks its thread on a device (every algorithm then signs on the
    /// signing threads, never on the async reactor).
    pub(crate) fn blocks(&self) -> bool {
        matches!(self, Signers::Pkcs11(_))
    }

    /// Whether the signer can sign now: the token answered its last call.
    pub(crate) fn is_available(&self) -> bool {
        match self {
            Signers::InProcess => true,
            Signers::Pkcs11(token) => token.is_available(),
        }
    }

    /// Whether a call has been in the token past the signing deadline (a hung device): a
    /// signature asked for now would wait for the deadline behind it, so none is asked.
    pub(crate) fn is_stalled(&self) -> bool {
        match self {
            Signers::InProcess => false,
            Signers::Pkcs11(token) => token.is_stalled(),
        }
    }

    /// Whether the signer can sign with `keys`' current keys now: asks the token
    /// (reconnecting when it went away). Blocking.
    pub(crate) fn probe(&self, keys: &KeySet) -> bool {
        match self {
            Signers::InProcess => true,
            Signers::Pkcs11(token) => token.probe(keys),
        }
    }

    /// Destroys the token objects of keys that are deleted or revoked; logged, never
    /// failing the change that dropped them (the store no longer names them).
    pub(crate) fn destroy(&self, dropped: &[&KeyRecord]) {
        for record in dropped {
            if let Some(object) = &record.token {
                self.destroy_object(&record.kid, object);
            }
        }
    }

    /// Destroys the token objects of keys generated for a change that did not use them.
    pub(crate) fn destroy_unused(&self, unused: &[GeneratedKey]) {
        for key in unused {
            if let Some(object) = &key.token {
                self.destroy_object(&key.kid, object);
            }
        }
    }

    fn destroy_object(&self, kid: &str, object: &TokenObject) {
        let Signers::Pkcs11(token) = self else {
            return;
        };
        match token.destroy(&object.object_id) {
            Ok(()) => {
                tracing::info!(kid, object_id = %object.object_id, "token key destroyed")
            }
            Err(error) => {
                tracing::warn!(kid, error = %chain(&error), "cannot destroy a token key; remove it by hand")
            }
        }
    }

    /// A fresh key of `alg`.
    pub(crate) fn generate(&self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
        // Where the tests make generation slow, as a hardware token's is.
        fail::fail_point!("signers.generate");
        match self {
            Signers::InProcess => keys::generate(alg),
            Signers::Pkcs11(token) => {
                let made = token
                    .generate(alg)
                    .map_err(|e| CryptoError::Generation(chain(&e).to_string()))?;
                Ok(GeneratedKey {
                    kid: made.kid,
                    alg: made.alg,
                    private_key: PrivateKeyDer::new(zeroize::Zeroizing::new(Vec::new())),
                    token: Some(TokenObject {
                        object_id: made.object_id,
                        public: made.public,
                    }),
                })
            }
        }
    }

    /// What signs with `record`'s key (and knows its verifying key).
    pub(crate) fn open(&self, record: &KeyRecord) -> Result<Arc<dyn SignatureSource>, CryptoError> {
        self.open_as(record, false)
    }

    /// Like `open`, at a start: a current key its token does not hold as recorded still
    /// gets a signer, which refuses until the key is found (`Pkcs11Token::signer_at_start`).
    pub(crate) fn open_at_start(
        &self,
        record: &KeyRecord,
    ) -> Result<Arc<dyn SignatureSource>, CryptoError> {
        self.open_as(record, true)
    }

    fn open_as(
        &self,
        record: &KeyRecord,
        at_start: bool,
    ) -> Result<Arc<dyn SignatureSource>, CryptoError> {
        match (self, &record.token) {
            // Keys made in the process; with the token signer, those made before the switch
            // still sign in the process until they retire (the README's migration path).
            (_, None) => Ok(Arc::new(SigningKey::from_pkcs8(
                record.alg,
                record.private_key.as_bytes(),
            )?)),
            // A key that never left its token cannot sign in the process.
            (Signers::InProcess, Some(_)) => Err(CryptoError::HeldKey {
                alg: record.alg,
                reason: "it lives in a PKCS#11 token; start with --signer pkcs11".into(),
            }),
            (Signers::Pkcs11(token), Some(object)) => {
                let key = token_key(record, object);
                let signer = if at_start {
                    token.signer_at_start(&key)
                } else {
                    token.signer(&key)
                };
                signer.map_err(|e| CryptoError::HeldKey {
                    alg: record.alg,
                    reason: chain(&e).to_string(),
                })
            }
        }
    }

    /// The verifying key of `record`, for a key that does not sign: an in-process key's,
    /// from its private key; a token key's, as stored (the token is not asked: a key that
    /// retired verifies the tokens it signed whether or not the token still holds it).
    pub(crate) fn verifying_key(&self, record: &KeyRecord) -> Result<VerifyingKey, CryptoError> {
        match &record.token {
            None => {
                SigningKey::from_pkcs8(record.alg, record.private_key.as_bytes())?.verifying_key()
            }
            Some(object) => pkcs11::stored_public(&token_key(record, object)).map_err(|reason| {
                CryptoError::HeldKey {
                    alg: record.alg,
                    reason,
                }
            }),
        }
    }
}

/// What the token is asked about `record`, a key it holds as `object`.
fn token_key(record: &KeyRecord, object: &TokenObject) -> TokenKey {
    TokenKey {
        kid: record.kid.clone(),
        alg: record.alg,
        object_id: object.object_id.clone(),
        public: object.public.clone(),
    }
}
