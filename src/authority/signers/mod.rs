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
    crypto::{Algorithm, CryptoError, SigningKey},
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
        match (self, &record.token) {
            // Keys made in the process; with the token signer, those made before the switch
            // still sign in the process until they retire (the README's migration path).
            (_, None) => Ok(Arc::new(SigningKey::from_pkcs8(
                record.alg,
                record.private_key.as_bytes(),
            )?)),
            // A key that never left its token cannot sign in the process.
            (Signers::InProcess, Some(_)) => Err(CryptoError::BadPrivateKey {
                alg: record.alg,
                reason: "the key lives in a PKCS#11 token; start with --signer pkcs11".into(),
            }),
            (Signers::Pkcs11(token), Some(object)) => token
                .signer(&TokenKey {
                    kid: record.kid.clone(),
                    alg: record.alg,
                    object_id: object.object_id.clone(),
                    public: object.public.clone(),
                })
                .map_err(|e| CryptoError::BadPrivateKey {
                    alg: record.alg,
                    reason: chain(&e).to_string(),
                }),
        }
    }
}
