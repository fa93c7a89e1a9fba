//! The crypto layer: the only module that names a cryptography library.
//!
//! Everything above it speaks of algorithms, PKCS#8 documents, signatures and random bytes.
//! Which library computes them is a build-time choice, the way rustls does it: `ring` by
//! default, `aws-lc-rs` with `--features aws-lc-rs` (it wins when both are enabled). Each
//! provider is one small module with the same items; no other module knows which is in use.
//!
//! # Layout
//! - `ring_provider`: ring (and the `rsa` crate, for RSA key generation only).
//! - `aws_lc_provider`: aws-lc-rs.

use std::fmt;

use zeroize::Zeroizing;

pub mod aead;
#[cfg(feature = "aws-lc-rs")]
mod aws_lc_provider;
pub mod mac;
mod pem;
#[cfg(feature = "aws-lc-rs")]
use aws_lc_provider as provider;

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
mod ring_provider;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use ring_provider as provider;

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!(
    "token-authority needs a crypto provider: the `ring` (default) or `aws-lc-rs` feature"
);

use provider::lib::{
    digest,
    rand::{SecureRandom, SystemRandom},
};

/// The provider this binary was built with, as logs and bench reports name it.
pub const PROVIDER: &str = provider::NAME;

pub use pem::{pkcs8_from_pem, PemError};

/// A JWS signing algorithm this authority supports (RFC 7518 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA-2048.
    RS256,
    /// RSASSA-PSS with SHA-256, RSA-2048.
    PS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    pub const ALL: &'static [Algorithm] = &[
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];

    /// The JOSE `alg` name, compared exactly: `rs256` is not `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Whether one signature costs enough CPU (RSA: hundreds of microseconds) that it must not
    /// run on the async reactor.
    pub fn is_slow_to_sign(self) -> bool {
        matches!(self, Algorithm::RS256 | Algorithm::PS256)
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|alg| alg.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("key generation failed: {0}")]
    Generation(String),
    #[error("the stored private key is not a valid {alg} PKCS#8 document: {reason}")]
    BadPrivateKey { alg: Algorithm, reason: String },
    /// A key held by a signing device (its private half never in the process) that the
    /// device cannot use.
    #[error("the {alg} key cannot sign where it is held: {reason}")]
    HeldKey { alg: Algorithm, reason: String },
    #[error("signing failed")]
    Signing,
    #[error("the system random number generator failed")]
    Random,
    #[error("sealing or unsealing a private key failed")]
    Aead,
    #[error("not a usable {alg} public key: {reason}")]
    BadPublicKey { alg: Algorithm, reason: String },
}

/// Fills a fresh buffer with `len` bytes from the operating system's CSPRNG.
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Generates a new private key for `alg` as a PKCS#8 v1 DER document.
pub fn generate_pkcs8(alg: Algorithm) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    provider::generate_pkcs8(alg)
}

/// The algorithm a PKCS#8 private key can sign with, judged by which key type parses it.
/// RSA keys answer RS256 (the same key could sign PS256: the caller may say so).
pub fn detect_algorithm(pkcs8: &[u8]) -> Option<Algorithm> {
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .find(|&alg| SigningKey::from_pkcs8(alg, pkcs8).is_ok())
}

/// The public half of a key, in the form a JWK publishes it.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicComponents {
    /// Big-endian modulus and exponent without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// P-256 point coordinates, 32 bytes each.
    EcP256 { x: Vec<u8>, y: Vec<u8> },
    /// The 32-byte Ed25519 public key.
    Ed25519 { x: Vec<u8> },
}

impl PublicComponents {
    /// From an uncompressed SEC1 P-256 point: 0x04 || x || y.
    fn from_p256_point(point: &[u8]) -> PublicComponents {
        PublicComponents::EcP256 {
            x: point[1..33].to_vec(),
            y: point[33..65].to_vec(),
        }
    }
}

impl fmt::Debug for PublicComponents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicComponents::Rsa { n, .. } => write!(f, "Rsa({} bit)", n.len() * 8),
            PublicComponents::EcP256 { .. } => f.write_str("EcP256"),
            PublicComponents::Ed25519 { .. } => f.write_str("Ed25519"),
        }
    }
}

/// A private key parsed once and ready to sign.
pub struct SigningKey {
    alg: Algorithm,
    key: provider::PrivateKey,
}

impl fmt::Debug for SigningKey {
    // Never print key material, whatever the caller's format string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<SigningKey, CryptoError> {
        let key = provider::PrivateKey::from_pkcs8(alg, pkcs8)?;
        Ok(SigningKey { alg, key })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn public_components(&self) -> PublicComponents {
        self.key.public_components()
    }

    /// The verifier for this key's public half, parsed now so that verifying parses nothing.
    pub fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        Ok(VerifyingKey {
            alg: self.alg,
            key: self.key.public_key(self.alg)?,
            signature_len: self.key.signature_len(),
            components: self.public_components(),
        })
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key.sign(self.alg, message)
    }

    /// The length of every signature this key makes, in bytes.
    pub fn signature_len(&self) -> usize {
        self.key.signature_len()
    }
}

/// A public key parsed once per key-set change and ready to verify.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    key: provider::PublicKey,
    signature_len: usize,
    components: PublicComponents,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .field("components", &self.components)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// A public key received from elsewhere (a JWK of a trusted issuer's JWKS), for `alg`.
    /// Works the same under both providers: each is handed the standard encoding (PKCS#1
    /// RSAPublicKey DER, an uncompressed SEC1 point, the raw Ed25519 key).
    pub fn from_components(
        alg: Algorithm,
        components: PublicComponents,
    ) -> Result<VerifyingKey, CryptoError> {
        let bad = |reason: &str| CryptoError::BadPublicKey {
            alg,
            reason: reason.to_owned(),
        };
        let (encoded, signature_len, components) = match (alg, components) {
            (Algorithm::RS256 | Algorithm::PS256, PublicComponents::Rsa { n, e }) => {
                let n = strip_leading_zeros(&n).to_vec();
                let e = strip_leading_zeros(&e).to_vec();
                let bits = n.len() * 8;
                // The range both providers verify (ring: 2048..=8192 bits).
                if !(2048..=8192).contains(&bits) {
                    return Err(bad("the RSA modulus is not 2048 to 8192 bits long"));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err(bad("the RSA exponent is empty or too long"));
                }
                let der = der_sequence(&[der_integer(&n), der_integer(&e)]);
                (der, n.len(), PublicComponents::Rsa { n, e })
            }
            (Algorithm::ES256, PublicComponents::EcP256 { x, y }) => {
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("a P-256 coordinate is not 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (point, 64, PublicComponents::EcP256 { x, y })
            }
            (Algorithm::EdDSA, PublicComponents::Ed25519 { x }) => {
                if x.len() != 32 {
                    return Err(bad("an Ed25519 key is not 32 bytes"));
                }
                (x.clone(), 64, PublicComponents::Ed25519 { x })
            }
            (_, other) => {
                return Err(bad(&format!("a {other:?} key cannot verify {alg}")));
            }
        };
        let key = provider::PublicKey::from_encoded(alg, &encoded)?;
        Ok(VerifyingKey {
            alg,
            key,
            signature_len,
            components,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn components(&self) -> &PublicComponents {
        &self.components
    }

    /// The exact signature length this key produces; anything else is rejected before
    /// any arithmetic is spent on it.
    pub fn signature_len(&self) -> usize {
        self.signature_len
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature.len() == self.signature_len && self.key.verify(message, signature)
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = strip_leading_zeros(&bytes);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// A DER INTEGER of an unsigned big-endian magnitude (a 0x00 keeps it positive).
fn der_integer(magnitude: &[u8]) -> Vec<u8> {
    let pad = magnitude.first().is_some_and(|b| b & 0x80 != 0);
    let mut out = vec![0x02];
    der_length(magnitude.len() + usize::from(pad), &mut out);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(magnitude);
    out
}

fn der_sequence(items: &[Vec<u8>]) -> Vec<u8> {
    let len = items.iter().map(Vec::len).sum();
    let mut out = vec![0x30];
    der_length(len, &mut out);
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_sign_then_verify_and_reject_tampering() {
        let pkcs8 = generate_pkcs8(Algorithm::RS256).unwrap();
        let key = SigningKey::from_pkcs8(Algorithm::RS256, &pkcs8).unwrap();
        let verifier = key.verifying_key().unwrap();
        let sig = key.sign(b"message").unwrap();
        assert_eq!(sig.len(), 256);
        assert!(verifier.verify(b"message", &sig));
        assert!(!verifier.verify(b"messagE", &sig));
        assert!(!verifier.verify(b"message", &sig[..255]));
        let PublicComponents::Rsa { n, e } = key.public_components() else {
            panic!("an RSA key")
        };
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
    }

    #[test]
    fn every_algorithm_signs_and_verifies_and_rejects_the_others() {
        let keys: Vec<SigningKey> = Algorithm::ALL
            .iter()
            .map(|&alg| SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap())
            .collect();
        for key in &keys {
            let sig = key.sign(b"payload").unwrap();
            assert_eq!(
                sig.len(),
                key.verifying_key().unwrap().signature_len(),
                "{}",
                key.algorithm()
            );
            for other in &keys {
                let expected = std::ptr::eq(key, other);
                assert_eq!(
                    other.verifying_key().unwrap().verify(b"payload", &sig),
                    expected
                );
            }
            assert!(!key.verifying_key().unwrap().verify(b"payloaD", &sig));
        }
    }

    /// A key rebuilt from its published components verifies what the private half signed,
    /// under whichever provider this build uses; mismatched or short keys are refused.
    #[test]
    fn public_components_rebuild_a_verifier_for_every_algorithm() {
        for &alg in Algorithm::ALL {
            let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
            let sig = key.sign(b"payload").unwrap();
            let rebuilt = VerifyingKey::from_components(alg, key.public_components()).unwrap();
            assert!(rebuilt.verify(b"payload", &sig), "{alg}");
            assert!(!rebuilt.verify(b"payloaD", &sig), "{alg}");
            assert_eq!(rebuilt.components(), &key.public_components());
        }
        let ec =
            SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
                .unwrap();
        let cases = [
            (
                Algorithm::RS256,
                ec.public_components(),
                "cannot verify RS256",
            ),
            (
                Algorithm::RS256,
                PublicComponents::Rsa {
                    n: vec![0xff; 128],
                    e: vec![1, 0, 1],
                },
                "not 2048 to 8192 bits",
            ),
            (
                Algorithm::ES256,
                PublicComponents::EcP256 {
                    x: vec![1; 31],
                    y: vec![1; 32],
                },
                "not 32 bytes",
            ),
            (
                Algorithm::EdDSA,
                PublicComponents::Ed25519 { x: vec![1; 33] },
                "not 32 bytes",
            ),
        ];
        for (alg, components, expected) in cases {
            let error = VerifyingKey::from_components(alg, components)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn aead_binds_associated_data() {
        let kek = aead::Kek::new(&[7u8; 32]).unwrap();
        let (nonce, sealed) = kek.seal(b"kid-a", b"secret").unwrap();
        assert_eq!(kek.open(b"kid-a", &nonce, &sealed).unwrap(), b"secret");
        assert_eq!(kek.open(b"kid-b", &nonce, &sealed), Err(CryptoError::Aead));
        assert!(!format!("{kek:?}").contains('7'));
    }
}
