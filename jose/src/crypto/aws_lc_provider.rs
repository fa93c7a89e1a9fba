//! The aws-lc-rs provider (`--features aws-lc-rs`): AWS-LC signs, verifies, generates every
//! key type (RSA included), seals and draws randomness. Its RSA uses the CPU's wide-integer
//! instructions as OpenSSL does, and its verification keys are parsed once per key-set
//! change rather than on every verify.

use aws_lc_rs::{
    encoding::{AsDer as _, Pkcs8V1Der},
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaKeyPair},
};
use zeroize::Zeroizing;

use super::{Algorithm, CryptoError, PublicComponents};

/// aws-lc-rs's ring-compatible `digest`, `rand` and `aead` modules.
pub(super) use aws_lc_rs as lib;

pub(super) const NAME: &str = "aws-lc-rs";

pub(super) fn generate_pkcs8(alg: Algorithm) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let document = match alg {
        Algorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| CryptoError::Generation("ECDSA P-256".into()))?
        }
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| CryptoError::Generation("Ed25519".into()))?,
        Algorithm::RS256 | Algorithm::PS256 => {
            let key = RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| CryptoError::Generation("RSA-2048".into()))?;
            let der: Pkcs8V1Der<'static> = key
                .as_der()
                .map_err(|_| CryptoError::Generation("RSA-2048 PKCS#8".into()))?;
            return Ok(Zeroizing::new(der.as_ref().to_vec()));
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
        Ok(match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                let key = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| bad(e.to_string()))?;
                // AWS-LC accepts RSA keys ring refuses; hold both providers to the same
                // rule so a data directory behaves alike under either.
                let bits = key.public_modulus_len() * 8;
                if !(2048..=4096).contains(&bits) {
                    return Err(bad(format!(
                        "an RSA key of {bits} bits (2048 to 4096 allowed)"
                    )));
                }
                PrivateKey::Rsa(key)
            }
            Algorithm::ES256 => PrivateKey::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
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
                let components =
                    aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
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
            PrivateKey::Rsa(rsa) => rsa.public_modulus_len(),
            PrivateKey::Ecdsa(_) | PrivateKey::Ed25519(_) => 64,
        }
    }

    pub(super) fn public_key(&self, alg: Algorithm) -> Result<PublicKey, CryptoError> {
        let (params, der): (&'static dyn signature::VerificationAlgorithm, &[u8]) = match self {
            PrivateKey::Rsa(rsa) => (
                match alg {
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA256,
                },
                rsa.public_key().as_ref(),
            ),
            PrivateKey::Ecdsa(ec) => (
                &signature::ECDSA_P256_SHA256_FIXED,
                ec.public_key().as_ref(),
            ),
            PrivateKey::Ed25519(ed) => (&signature::ED25519, ed.public_key().as_ref()),
        };
        let parsed = ParsedPublicKey::new(params, der).map_err(|e| CryptoError::BadPrivateKey {
            alg,
            reason: format!("its public half does not parse: {e}"),
        })?;
        Ok(PublicKey { parsed })
    }

    pub(super) fn sign(&self, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            PrivateKey::Rsa(rsa) => {
                let mut signature = vec![0u8; rsa.public_modulus_len()];
                let padding: &'static dyn signature::RsaEncoding = match alg {
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

/// A verification key parsed once, when the key set is built.
#[derive(Clone)]
pub(super) struct PublicKey {
    parsed: ParsedPublicKey,
}

impl PublicKey {
    /// From the standard encoding (PKCS#1 DER, SEC1 point, raw Ed25519), parsed now.
    pub(super) fn from_encoded(alg: Algorithm, encoded: &[u8]) -> Result<PublicKey, CryptoError> {
        let params: &'static dyn signature::VerificationAlgorithm = match alg {
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDSA => &signature::ED25519,
        };
        let parsed =
            ParsedPublicKey::new(params, encoded).map_err(|e| CryptoError::BadPublicKey {
                alg,
                reason: e.to_string(),
            })?;
        Ok(PublicKey { parsed })
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }
}
