//! How a start or a run of the server fails, and the exit code each failure means. A
//! failure caused by another error keeps it as its source; the `error:` line shows the
//! chain (`telemetry::chain`).

use crate::{
    authority::signers::pkcs11::Pkcs11Error,
    authority::AuthorityError,
    callers::admin::AdminTokenError,
    callers::{audit::AuditError, reload::LoadError},
    store::file_modes::FileModeError,
    store::{kek::KekError, StoreError},
    transport::tls::TlsError,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    FileMode(#[from] FileModeError),
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load the keys: {0}")]
    Authority(#[from] AuthorityError),
    #[error("cannot read a listener's address: {0}")]
    Listener(std::io::Error),
    #[error("reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("cannot load the TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error("--store postgres://... needs --kek-file")]
    KekRequired,
    #[error("a start-up task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot start the signing threads: {0}")]
    SigningPool(std::io::Error),
    #[error(transparent)]
    Policy(#[from] LoadError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot read the PKCS#11 PIN file {path}: {source}")]
    Pin {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// The cause's chain, as text: the status list error type stays inside the crate.
    #[error("cannot open the status lists: {0}")]
    StatusLists(String),
}

impl ServerError {
    /// The process's exit code for a start that stopped with this error: 2 for settings the
    /// shared database refuses (as for a bad flag), 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ServerError::Store(error) | ServerError::Authority(AuthorityError::Store(error))
                if error.is_permanent() =>
            {
                2
            }
            // A module, token, PIN or mechanism the settings name wrongly; a token that
            // cannot be reached now is another failure.
            ServerError::Pkcs11(error) if !error.is_transient() => 2,
            ServerError::Pin { .. } => 2,
            _ => 1,
        }
    }
}
