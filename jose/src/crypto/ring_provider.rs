//! The default provider: ring signs, verifies, seals and draws randomness; ring cannot
//! generate RSA keys, so the `rsa` crate does (feature `rsa-keygen`, which the server turns
//! on and verifiers leave off), and ring then loads the result like any key made by
//! `openssl genpkey`.

use ring::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey,
};
use zeroize::Zeroizing;

use super::{Algorithm, CryptoError, PublicComponents};

/// ring's `digest`, `rand` and `aead` modules, which the provider-neutral code uses.
pub(super) use ring as lib;

pub(super) const NAME: &str = "ring";

pub(super) fn generate_pkcs8(alg: Algorithm) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let rng = ring::rand::SystemRandom::new();
    let document = match alg {
        Algorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| CryptoError::Generation("ECDSA P-256".into()))?
        }
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| CryptoError::Generation("Ed25519".into()))?,
        #[cfg(feature = "rsa-keygen")]
        Algorithm::RS256 | Algorithm::PS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                .map_err(|e| CryptoError::Generation(e.to_string()))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| CryptoError::Generation(e.to_string()))?;
            return Ok(Zeroizing::new(der.as_bytes().to_vec()));
        }
        // Verifiers (the client crate) never generate keys and need not carry `rsa`.
        #[cfg(not(feature = "rsa-keygen"))]
        Algorithm::RS256 | Algorithm::PS256 => {
            return Err(CryptoError::Generation(
                "RSA key generation with ring needs the `rsa-keygen` feature".into(),
            ))
        }
    };
    Ok(Zeroizing::new(document.as_ref().to_vec()))
}

/// A parsed private key of one of the supported types.
pub(super) enum PrivateKey {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl PrivateKey {
    pub(super) fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<PrivateKey, CryptoError> {
        let bad = |reason: String| CryptoError::BadPrivateKey { alg, reason };
        let rng = ring::rand::SystemRandom::new();
        Ok(match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                PrivateKey::Rsa(RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| bad(e.to_string()))?)
            }
            Algorithm::ES256 => PrivateKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            // `maybe_unchecked` also accepts PKCS#8 v1 documents, as `openssl genpkey` writes.
            Algorithm::EdDSA => PrivateKey::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|e| bad(e.to_string()))?,
            ),
        })
    }

    pub(super) fn public_components(&self) -> PublicComponents {
        match self {
            PrivateKey::Rsa(rsa) => {
                let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
                PublicComponents::Rsa {
                    n: components.n,
                    e: components.e,
                }
            }
            PrivateKey::Ecdsa(ec) => PublicComponents::from_p256_point(ec.public_key().as_ref()),
            PrivateKey::Ed25519(ed) => PublicComponents::Ed25519 {
                x: ed.public_key().as_ref().to_vec(),
            },
        }
    }

    pub(super) fn signature_len(&self) -> usize {
        match self {
            PrivateKey::Rsa(rsa) => rsa.public().modulus_len(),
            PrivateKey::Ecdsa(_) | PrivateKey::Ed25519(_) => 64,
        }
    }

    pub(super) fn public_key(&self, alg: Algorithm) -> Result<PublicKey, CryptoError> {
        let der = match self {
            PrivateKey::Rsa(rsa) => rsa.public_key().as_ref().to_vec(),
            PrivateKey::Ecdsa(ec) => ec.public_key().as_ref().to_vec(),
            PrivateKey::Ed25519(ed) => ed.public_key().as_ref().to_vec(),
        };
        Ok(PublicKey { alg, der })
    }

    pub(super) fn sign(&self, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        match self {
            PrivateKey::Rsa(rsa) => {
                let mut signature = vec![0u8; rsa.public().modulus_len()];
                let padding: &dyn signature::RsaEncoding = match alg {
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                rsa.sign(padding, &rng, message, &mut signature)
                    .map_err(|_| CryptoError::Signing)?;
                Ok(signature)
            }
            PrivateKey::Ecdsa(ec) => ec
                .sign(&rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| CryptoError::Signing),
            PrivateKey::Ed25519(ed) => Ok(ed.sign(message).as_ref().to_vec()),
        }
    }
}

/// A public key for verifying. ring has no pre-parsed verification key: it re-reads the
/// key on every verification (for RSA that includes computing the Montgomery constants,
/// a visible part of each verify in profiles).
#[derive(Clone)]
pub(super) struct PublicKey {
    alg: Algorithm,
    der: Vec<u8>,
}

impl PublicKey {
    /// From the standard encoding (PKCS#1 DER, SEC1 point, raw Ed25519). ring parses it at
    /// each verification; a malformed key simply never verifies.
    pub(super) fn from_encoded(alg: Algorithm, encoded: &[u8]) -> Result<PublicKey, CryptoError> {
        Ok(PublicKey {
            alg,
            der: encoded.to_vec(),
        })
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let params: &dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDSA => &signature::ED25519,
        };
        UnparsedPublicKey::new(params, &self.der)
            .verify(message, signature)
            .is_ok()
    }
}
