//! Signing keys held in a PKCS#11 token (an HSM, a cloud HSM or KMS through its vendor's
//! PKCS#11 library, SoftHSM in tests): the private keys are generated inside the token and
//! never leave it; the server keeps, per key, the `TokenKey` record (kid, algorithm, CKA_ID,
//! public key) and asks the token for signatures.
//!
//! Every call into the token blocks the calling thread: call it from the signing threads or
//! a blocking task, never from the async reactor.
//!
//! # Layout
//! - `session_pool`: the module, the token found by label, the pool of logged-in sessions,
//!   and the reconnection when the token goes away.
//! - `mechanisms`: the mechanisms each JWS algorithm needs, and the check of a token's list.
//! - `keys`: key objects: generating a pair, reading its public half, finding and
//!   destroying objects by CKA_ID.
//! - `signing`: `TokenSigner`, the `SignatureSource` of a key in the token.
//! - `error`: `Pkcs11Error`.

mod error;
mod health;
mod keys;
mod mechanisms;
mod module;
mod session_pool;
mod sessions;
mod signing;
mod slot;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use token_authority_jose::crypto::{random_bytes, Algorithm, PublicComponents, VerifyingKey};
use token_authority_jose::jwk::thumbprint;
use token_authority_jose::jwt::SignatureSource;
use zeroize::Zeroizing;

pub use error::Pkcs11Error;

use crate::authority::keyset::KeySet;
use error::failed;
use keys::{destroy_all, find_recorded, parse_object_id};
use session_pool::Connection;
use signing::TokenSigner;

/// Where the token is and how to log in to it.
#[derive(Clone)]
pub(crate) struct Pkcs11Settings {
    /// The vendor's PKCS#11 library.
    pub(crate) module: PathBuf,
    /// The token's label (CKA_LABEL of the token, at most 32 bytes).
    pub(crate) token_label: String,
    /// The user PIN.
    pub(crate) pin: Zeroizing<String>,
}

impl fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// A key pair in the token, as the key set records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenKey {
    /// The RFC 7638 thumbprint of `public`, also the objects' CKA_LABEL.
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    /// The CKA_ID both objects carry, in lowercase hex.
    pub(crate) object_id: String,
    pub(crate) public: PublicComponents,
}

/// The verifying key `key` records, checked to be the key its kid names (else why not). It
/// verifies without the token: a key that no longer signs needs nothing else.
pub(crate) fn stored_public(key: &TokenKey) -> Result<VerifyingKey, String> {
    let verifying = VerifyingKey::from_components(key.alg, key.public.clone())
        .map_err(|error| format!("the stored public key: {error}"))?;
    if thumbprint(&key.public) != key.kid {
        return Err("the stored kid is not the thumbprint of the stored public key".to_owned());
    }
    Ok(verifying)
}

/// A logged-in connection to one token. Clones share it.
#[derive(Clone)]
pub struct Pkcs11Token {
    connection: Arc<Connection>,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("module", &self.connection.path())
            .field("token_label", &self.connection.label())
            .field("available", &self.connection.is_available())
            .finish()
    }
}

impl Pkcs11Token {
    /// Loads the module, finds the token by label, logs in, opens the pool of sessions, and
    /// checks that the token offers what each of `algorithms` needs to sign and to generate
    /// keys.
    pub(crate) fn open(
        settings: &Pkcs11Settings,
        algorithms: &[Algorithm],
    ) -> Result<Pkcs11Token, Pkcs11Error> {
        let connection = Connection::open(
            &settings.module,
            &settings.token_label,
            settings.pin.clone(),
            algorithms,
        )?;
        Ok(Pkcs11Token {
            connection: Arc::new(connection),
        })
    }

    /// Generates a key pair for `alg` in the token, labels both objects with its kid, and
    /// returns the record to keep.
    pub(crate) fn generate(&self, alg: Algorithm) -> Result<TokenKey, Pkcs11Error> {
        let id = random_bytes(keys::OBJECT_ID_BYTES).map_err(Pkcs11Error::Random)?;
        let label = self.connection.label();
        self.connection
            .run("generating a key pair", |session, attempt| {
                if attempt.after_reconnect {
                    // What the first try made before its answer was lost.
                    destroy_all(session, &id).map_err(failed(label, "removing a half-made key"))?;
                }
                keys::generate(session, label, alg, &id)
            })
    }

    /// A signer of `key`, after checking that the token holds it: the private key with its
    /// CKA_ID, of `key.alg`'s type, and beside it the public key `key` records.
    pub(crate) fn signer(&self, key: &TokenKey) -> Result<Arc<dyn SignatureSource>, Pkcs11Error> {
        let label = self.connection.label();
        let verifying = stored_public(key).map_err(|reason| Pkcs11Error::KeyMismatch {
            label: label.to_owned(),
            object_id: key.object_id.clone(),
            reason,
        })?;
        let id = parse_object_id(&key.object_id)?;
        let (epoch, private) = self.connection.run("finding a key", |session, attempt| {
            Ok((attempt.epoch, find_recorded(session, label, key, &id)?))
        })?;
        Ok(Arc::new(TokenSigner::new(
            Arc::clone(&self.connection),
            key.alg,
            id,
            verifying,
            Some((epoch, private)),
        )))
    }

    /// Like `signer`, for a start: a key the token does not hold as recorded (its object
    /// destroyed, or another key under its CKA_ID) gets a signer all the same, which looks
    /// the key up at each call and refuses until it is found (as a running server does when
    /// the object goes), so the server serves its JWKS and verifies, and a forced rotation
    /// can mend it.
    pub(crate) fn signer_at_start(
        &self,
        key: &TokenKey,
    ) -> Result<Arc<dyn SignatureSource>, Pkcs11Error> {
        match self.signer(key) {
            // Only a key whose own record holds together: one whose stored public key is
            // not its kid's stays refused.
            Err(error) if error.is_the_keys_own() && stored_public(key).is_ok() => {
                tracing::error!(
                    kid = %key.kid,
                    alg = key.alg.name(),
                    error = %crate::telemetry::chain(&error),
                    "a current key cannot sign: IssueToken with it answers UNAVAILABLE until the object is put back or a forced rotation (RotateKeys with force) makes a new key"
                );
                Ok(Arc::new(TokenSigner::new(
                    Arc::clone(&self.connection),
                    key.alg,
                    parse_object_id(&key.object_id)?,
                    stored_public(key).map_err(|reason| Pkcs11Error::KeyMismatch {
                        label: self.connection.label().to_owned(),
                        object_id: key.object_id.clone(),
                        reason,
                    })?,
                    None,
                )))
            }
            other => other,
        }
    }

    /// Destroys both objects of the key with CKA_ID `object_id`; a key already gone is no
    /// error.
    pub(crate) fn destroy(&self, object_id: &str) -> Result<(), Pkcs11Error> {
        let id = parse_object_id(object_id)?;
        let label = self.connection.label();
        self.connection.run("destroying a key", |session, _| {
            destroy_all(session, &id).map_err(failed(label, "destroying a key"))
        })
    }

    /// Whether the token answered the last call (for health checks and a gauge).
    pub(crate) fn is_available(&self) -> bool {
        self.connection.is_available()
    }

    /// Whether a call has been in the token past the signing deadline.
    pub(crate) fn is_stalled(&self) -> bool {
        self.connection.stalled()
    }

    /// Asks the token for a session's state, reconnecting when it went away (at most once
    /// per `RECONNECT_PAUSE`), then has each of `keys`' current keys sign a probe (checked
    /// against its public key, as every signature is): whether this replica can issue. A
    /// token that answers but lacks a current key, or holds another under its CKA_ID,
    /// cannot. Blocking.
    pub(crate) fn probe(&self, keys: &KeySet) -> bool {
        let label = self.connection.label();
        self.connection.forget_unusable_keys();
        let answered = self.connection.run("checking the token", |session, _| {
            session
                .get_session_info()
                .map(|_| ())
                .map_err(failed(label, "checking the token"))
        });
        // Not a JWS signing input (a space is not base64url): no token can be made of it.
        let signed = answered.is_ok()
            && keys
                .signers()
                .all(|signer| signer.key.sign(b"token-authority signer probe").is_ok());
        signed && self.is_available()
    }
}
