//! Why the token failed, in one line that names what to fix; the PKCS#11 return value
//! stays the `source()`, so the chain shows it after the line.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};
use token_authority_jose::crypto::{Algorithm, CryptoError};

/// A cause kept whole for the chain: a PKCS#11 error, or the error that made a recovery fail.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("cannot load the PKCS#11 module {}; set the module path to the HSM vendor's PKCS#11 library", .path.display())]
    ModuleNotLoadable {
        path: PathBuf,
        #[source]
        source: CkError,
    },
    #[error("{} is not a PKCS#11 module (it exports no C_GetFunctionList); set the module path to the HSM vendor's PKCS#11 library", .path.display())]
    NotAModule { path: PathBuf },
    #[error("the PKCS#11 module {} failed to initialise; check the module's own configuration", .path.display())]
    ModuleInit {
        path: PathBuf,
        #[source]
        source: CkError,
    },
    #[error("the token label {label:?} is longer than the 32 bytes PKCS#11 allows; set the label the token shows")]
    LabelTooLong { label: String },
    #[error("no PKCS#11 token is labelled {label:?} ({}); set the token label to one of them", found_list(.found))]
    TokenNotFound { label: String, found: Vec<String> },
    #[error("the user PIN of token {label:?} is incorrect; set the token's user PIN (the token may lock it after a few more failures)")]
    WrongPin { label: String },
    #[error("the user PIN of token {label:?} is locked after too many failed logins; have the token's security officer unlock it")]
    PinLocked { label: String },
    #[error("token {label:?} has no user PIN; have the token's security officer set one")]
    PinNotInitialized { label: String },
    #[error("logging in to token {label:?} failed; check the token's user PIN and state")]
    Login {
        label: String,
        #[source]
        source: CkError,
    },
    #[error("token {label:?} does not offer {mechanism} for {purpose}, which {alg} needs; enable it on the token or stop configuring {alg}")]
    MechanismMissing {
        label: String,
        mechanism: String,
        purpose: &'static str,
        alg: Algorithm,
    },
    #[error("token {label:?} cannot be reached now ({doing}); transient, the next operation tries to reconnect")]
    Unreachable {
        label: String,
        doing: &'static str,
        #[source]
        source: Cause,
    },
    #[error("token {label:?} refuses the login it needs to reconnect ({reason}); fix the PIN and restart")]
    LoginRefused { label: String, reason: String },
    #[error("token {label:?} failed {doing}")]
    Token {
        label: String,
        doing: &'static str,
        #[source]
        source: CkError,
    },
    #[error("token {label:?} holds no key with CKA_ID {object_id}; the key was destroyed or the token replaced: put the object back, or rotate with force (RotateKeys) to a key the token makes")]
    KeyNotFound { label: String, object_id: String },
    #[error("the key with CKA_ID {object_id} in token {label:?} is not the stored key ({reason}); refusing to sign with it")]
    KeyMismatch {
        label: String,
        object_id: String,
        reason: String,
    },
    #[error("token {label:?} returned a signature that key {object_id}'s public key does not verify; refusing it")]
    WrongSignature { label: String, object_id: String },
    #[error("{object_id:?} is not a key object id (an even number of lowercase hex digits)")]
    BadObjectId { object_id: String },
    #[error("token {label:?} returned an unusable {alg} public key ({reason})")]
    BadPublicKey {
        label: String,
        alg: Algorithm,
        reason: String,
    },
    #[error("cannot draw a key object id")]
    Random(#[source] CryptoError),
}

impl Pkcs11Error {
    /// Whether the token could not be reached: a retry later may succeed, and the server
    /// answers UNAVAILABLE rather than an internal error.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Pkcs11Error::Unreachable { .. })
    }

    /// Whether the token answered but the key cannot sign: no object under its CKA_ID, or
    /// one that is another key.
    pub(super) fn is_the_keys_own(&self) -> bool {
        matches!(
            self,
            Pkcs11Error::KeyNotFound { .. }
                | Pkcs11Error::KeyMismatch { .. }
                | Pkcs11Error::WrongSignature { .. }
        )
    }

    /// Whether reconnecting may cure it: the token, the session or the module state went
    /// away, or an object handle stopped naming the key it was found for (handles change
    /// when the module is initialised again, and a stale one may name another object, or
    /// sign with another key).
    pub(super) fn calls_for_reconnect(&self) -> bool {
        self.token_gone()
            || matches!(self, Pkcs11Error::WrongSignature { .. })
            || self.cause().is_some_and(handle_stale)
    }

    /// Whether the token, the session or the module state went away.
    pub(super) fn token_gone(&self) -> bool {
        self.cause().is_some_and(connection_lost)
    }

    fn cause(&self) -> Option<&CkError> {
        match self {
            Pkcs11Error::Token { source, .. } | Pkcs11Error::Login { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The return values that mean the token, the session or the module state went away.
pub(super) fn connection_lost(error: &CkError) -> bool {
    matches!(
        rv(error),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized
                | RvError::DeviceError
                | RvError::GeneralError
                | RvError::UserNotLoggedIn
        )
    )
}

/// The return values of an operation on an object handle that no longer names the key it
/// was found for: gone, or another object (which may lack CKA_SIGN, be of another type, or
/// be tied to another mechanism).
fn handle_stale(error: &CkError) -> bool {
    matches!(
        rv(error),
        Some(
            RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::KeyFunctionNotPermitted
                | RvError::KeyTypeInconsistent
                | RvError::MechanismInvalid
        )
    )
}

/// Wraps the PKCS#11 error of a call on token `label` while `doing`.
pub(super) fn failed<'a>(
    label: &'a str,
    doing: &'static str,
) -> impl FnOnce(CkError) -> Pkcs11Error + 'a {
    move |source| Pkcs11Error::Token {
        label: label.to_owned(),
        doing,
        source,
    }
}

/// The return value of a PKCS#11 error, if it is one.
pub(super) fn rv(error: &CkError) -> Option<RvError> {
    match error {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

fn found_list(found: &[String]) -> String {
    if found.is_empty() {
        "the module shows no initialised token".to_owned()
    } else {
        let labels: Vec<String> = found.iter().map(|label| format!("{label:?}")).collect();
        format!("found: {}", labels.join(", "))
    }
}
