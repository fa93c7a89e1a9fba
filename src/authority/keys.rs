//! Key records: what the authority knows about each signing key, and the states of its life.
//!
//! A record carries its whole history (created, activated, retired, revoked times and the
//! largest ttl it signed with), so the lifecycle can be decided from stored facts alone.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use token_authority_jose::crypto::{Algorithm, PublicComponents};

/// Where a key is in its life: `Next -> Current -> Retired`, or `Revoked` at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// The one key that signs for its algorithm.
    Current,
    /// No longer signs; published and verifying until its tokens have expired.
    Retired,
    /// Withdrawn: unpublished, and its tokens are rejected.
    Revoked,
}

impl KeyState {
    /// Whether the key belongs in the JWKS and verifies tokens.
    pub(crate) fn is_published(self) -> bool {
        !matches!(self, KeyState::Revoked)
    }
}

/// A PKCS#8 DER private key, wiped from memory on drop and never printed.
#[derive(Clone)]
pub struct PrivateKeyDer(Zeroizing<Vec<u8>>);

impl PrivateKeyDer {
    pub(crate) fn new(der: Zeroizing<Vec<u8>>) -> PrivateKeyDer {
        PrivateKeyDer(der)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyDer(..)")
    }
}

/// Everything the authority records about one key.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: Algorithm,
    pub state: KeyState,
    /// Unix seconds.
    pub created_at: u64,
    /// When the key entered the JWKS. It may sign once it has been published for the
    /// publish lead, so every verifier's cached JWKS holds it before its first token.
    pub published_at: u64,
    pub activated_at: Option<u64>,
    pub retired_at: Option<u64>,
    /// For a retired key: when its last possible token has expired (retired_at + the
    /// largest ttl it signed with + leeway), and the key may be deleted.
    pub delete_after: Option<u64>,
    pub revoked_at: Option<u64>,
    pub revoked_reason: Option<String>,
    /// The largest ttl a token signed by this key may have had, in seconds. Stored with the
    /// key so that lowering `--max-ttl` later never shortens the life of issued tokens.
    pub max_token_ttl: u64,
    /// Empty when the key has no private half here: erased (revoked), or held in a token.
    pub private_key: PrivateKeyDer,
    /// For a key generated in a PKCS#11 token: which object it is, and its public half.
    pub token: Option<TokenObject>,
}

/// A key pair that lives in a PKCS#11 token: its objects' CKA_ID and the public key read
/// back from the token when it was generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenObject {
    /// The CKA_ID both objects carry, in lowercase hex.
    pub object_id: String,
    pub public: PublicComponents,
}

/// What may be known of a key outside the store and its signer: its record without the
/// private key. The key set the transport reads holds these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: Algorithm,
    pub state: KeyState,
    pub created_at: u64,
    pub published_at: u64,
    pub activated_at: Option<u64>,
    pub retired_at: Option<u64>,
    pub delete_after: Option<u64>,
    pub revoked_at: Option<u64>,
    pub revoked_reason: Option<String>,
    pub max_token_ttl: u64,
    /// The CKA_ID of the key's objects when it lives in a PKCS#11 token; `None` when the
    /// process holds it.
    pub token_object_id: Option<String>,
}

impl KeyRecord {
    /// The record without its private key.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            kid: self.kid.clone(),
            alg: self.alg,
            state: self.state,
            created_at: self.created_at,
            published_at: self.published_at,
            activated_at: self.activated_at,
            retired_at: self.retired_at,
            delete_after: self.delete_after,
            revoked_at: self.revoked_at,
            revoked_reason: self.revoked_reason.clone(),
            max_token_ttl: self.max_token_ttl,
            token_object_id: self.token.as_ref().map(|t| t.object_id.clone()),
        }
    }
}

/// A freshly generated key, before the lifecycle gives it a place.
pub struct GeneratedKey {
    pub kid: String,
    pub alg: Algorithm,
    /// Empty for a key generated in a token.
    pub private_key: PrivateKeyDer,
    pub token: Option<TokenObject>,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Generates a key for `alg`; its kid is the RFC 7638 thumbprint of its public half.
/// Slow for RSA (hundreds of milliseconds): call it off the async reactor.
pub fn generate(alg: Algorithm) -> Result<GeneratedKey, token_authority_jose::crypto::CryptoError> {
    let der = token_authority_jose::crypto::generate_pkcs8(alg)?;
    let signing = token_authority_jose::crypto::SigningKey::from_pkcs8(alg, &der)?;
    Ok(GeneratedKey {
        kid: token_authority_jose::jwk::thumbprint(&signing.public_components()),
        alg,
        private_key: PrivateKeyDer::new(der),
        token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_private_bytes() {
        let generated = generate(Algorithm::ES256).unwrap();
        let der = generated.private_key.as_bytes().to_vec();
        let record = KeyRecord {
            kid: generated.kid.clone(),
            alg: generated.alg,
            state: KeyState::Current,
            created_at: 1,
            published_at: 1,
            activated_at: Some(1),
            retired_at: None,
            delete_after: None,
            revoked_at: None,
            revoked_reason: None,
            max_token_ttl: 60,
            private_key: generated.private_key.clone(),
            token: None,
        };
        let signing =
            token_authority_jose::crypto::SigningKey::from_pkcs8(Algorithm::ES256, &der).unwrap();
        for text in [
            format!("{generated:?}"),
            format!("{record:?}"),
            format!("{record:#?}"),
            format!("{signing:?}"),
        ] {
            assert!(text.contains("..") || text.contains("SigningKey"), "{text}");
            // The private scalar sits in the last 32+ bytes of the document; no byte run of it
            // may show, in decimal lists or in hex.
            let tail = &der[der.len() - 40..der.len() - 8];
            assert!(
                !text.contains(format!("{:?}", &tail[..4]).trim_matches(['[', ']'])),
                "{text}"
            );
            let hex: String = tail[..8].iter().map(|b| format!("{b:02x}")).collect();
            assert!(!text.to_lowercase().contains(&hex), "{text}");
        }
    }
}
