//! What the `keys` commands can fail with, as the CLI prints it.

use crate::{
    authority::lifecycle::LifecycleError,
    config::ConfigError,
    store::{kek::KekError, StoreError},
};
use token_authority_jose::crypto;

#[derive(Debug, thiserror::Error)]
pub enum KeysCommandError {
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadKey { path: String, reason: String },
    /// The file holds no PKCS#8 PEM block; the cause says what it holds.
    #[error("{path}")]
    NotPkcs8Pem {
        path: String,
        #[source]
        source: crypto::PemError,
    },
    /// The key in the file is not one of its algorithm.
    #[error("{path}")]
    UnusableKey {
        path: String,
        #[source]
        source: crypto::CryptoError,
    },
    #[error("--kid {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ -")]
    BadKid(String),
    #[error(transparent)]
    FileMode(#[from] crate::store::file_modes::FileModeError),
    #[error("--max-ttl must be a whole number of seconds from 1s to 366 days, as serve's")]
    MaxTtl,
    #[error("{0} holds no keystore (is --data-dir right?); nothing was done, nothing created")]
    NoKeystore(String),
    #[error("the keystore in {0} holds no keys: nothing to migrate")]
    NothingToMigrate(String),
    #[error("{database} already holds {keys} keys: migrate only into an empty database (a merge could leave two current keys)")]
    TargetNotEmpty { database: String, keys: usize },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Keys in a token are generated there and cannot leave it; a key imported next to
    /// them would be the one that can.
    #[error("{0}: nothing imported. A key made outside the token is not non-extractable; a forced rotation (RotateKeys with force) makes a new key in the token")]
    IntoToken(&'static str),
}
