//! Where the authority's keys are made and what signs with them. Today the process itself
//! (the crypto provider), its private keys sealed at rest by the store; a hardware token
//! that makes keys and only signs with them is the other kind this seam is for.

use std::sync::Arc;

use crate::authority::keys::{self, GeneratedKey, KeyRecord};
use token_authority_jose::{
    crypto::{Algorithm, CryptoError, SigningKey},
    jwt::SignatureSource,
};

#[derive(Clone, Debug, Default)]
pub enum Signers {
    /// Keys made by the crypto provider and held in the process.
    #[default]
    InProcess,
}

impl Signers {
    /// A fresh key of `alg`.
    pub(crate) fn generate(&self, alg: Algorithm) -> Result<GeneratedKey, CryptoError> {
        match self {
            Signers::InProcess => keys::generate(alg),
        }
    }

    /// What signs with `record`'s key (and knows its verifying key).
    pub(crate) fn open(&self, record: &KeyRecord) -> Result<Arc<dyn SignatureSource>, CryptoError> {
        match (self, &record.token) {
            (Signers::InProcess, None) => Ok(Arc::new(SigningKey::from_pkcs8(
                record.alg,
                record.private_key.as_bytes(),
            )?)),
            // A key that never left its token cannot sign in the process.
            (Signers::InProcess, Some(_)) => Err(CryptoError::BadPrivateKey {
                alg: record.alg,
                reason: "the key lives in a PKCS#11 token; start with --signer pkcs11".into(),
            }),
        }
    }
}
