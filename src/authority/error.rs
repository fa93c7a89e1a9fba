//! What an authority error means to whoever asked, whatever layer it came from: the
//! transport maps a kind to its status code, and shows the public message, without knowing
//! the store, the lifecycle or the crypto below.

use super::AuthorityError;
use crate::authority::lifecycle::LifecycleError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The request is wrong; the message says how.
    InvalidArgument,
    /// The key set does not allow it now (too early to rotate, the last usable key).
    FailedPrecondition,
    /// No such key.
    NotFound,
    /// Nothing changed, and a retry may succeed (the database down, the change lock busy).
    Unavailable,
    /// Our own failure: the message says only what its effect was, the cause is logged.
    Internal,
}

impl AuthorityError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            AuthorityError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            AuthorityError::Lifecycle(
                LifecycleError::NotYetSafe { .. } | LifecycleError::LastUsableKey(..),
            ) => ErrorKind::FailedPrecondition,
            AuthorityError::Lifecycle(LifecycleError::UnknownKey(_)) => ErrorKind::NotFound,
            AuthorityError::Store(error) if error.is_transient() => ErrorKind::Unavailable,
            AuthorityError::SignerUnavailable(_) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// What the caller may be told: the whole message for its own mistakes, the effect
    /// (never the cause) for ours.
    pub(crate) fn public_message(&self) -> String {
        match (self.kind(), self) {
            (
                ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition | ErrorKind::NotFound,
                error,
            ) => error.to_string(),
            (ErrorKind::Unavailable, AuthorityError::Store(error)) => {
                error.outcome().unwrap_or("unavailable").to_owned()
            }
            (ErrorKind::Unavailable, AuthorityError::SignerUnavailable(_)) => {
                "the signing token cannot be reached; nothing was issued, and a retry is safe"
                    .to_owned()
            }
            (_, AuthorityError::Store(error)) => {
                error.outcome().unwrap_or("internal error").to_owned()
            }
            _ => "internal error".to_owned(),
        }
    }
}
