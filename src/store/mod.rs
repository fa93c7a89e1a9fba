//! The keystore: where key records live between starts. What the rest of the crate uses
//! from it is here (`KeyStore`, `StoreError`); the sled implementation is in `sled`, the
//! guard file that catches a log sled silently opened as empty in `guard`, and sealing
//! private keys under key-encryption keys in `kek`. A shared backend joins as a sibling of
//! `sled` behind the same interface.

pub mod datakeys;
mod files;
pub mod guard;
pub mod kek;
mod sled;

pub use self::sled::KeyStore;
use kek::UnsealError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the keystore {path} is in use by another process (sled holds an exclusive lock); stop the other token-authority first")]
    Locked { path: String },
    #[error("cannot open the keystore {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the keystore {path} is not a token-authority keystore ({reason}); refusing to create new keys over it")]
    Foreign { path: String, reason: String },
    #[error("the keystore {path} is unreadable: key record {kid:?}: {reason}; refusing to start with new keys")]
    Corrupt {
        path: String,
        kid: String,
        reason: String,
    },
    #[error("the keystore {path} holds encrypted private keys but no --kek-file was given")]
    KekRequired { path: String },
    #[error("the keystore {path}: key {kid}: {source}")]
    Unseal {
        path: String,
        kid: String,
        source: UnsealError,
    },
    #[error("the keystore {path} is damaged: {reason}; refusing to start (restore the data directory from a backup)")]
    Damaged { path: String, reason: String },
    #[error("keystore write failed: {0}")]
    Write(String),
    /// A lifecycle write failed and was undone: disk and memory hold the state from before.
    #[error("the keystore write failed and nothing changed (a retry is safe): {0}")]
    NotApplied(String),
    /// A lifecycle write failed after sled had it, and undoing it failed too.
    #[error("the keystore write failed ({failure}) and could not be undone ({undo}): whether the change is on disk is known only after a restart, so the keystore refuses further changes until then")]
    Unknown { failure: String, undo: String },
    /// A write after one that could not be undone.
    #[error("an earlier keystore write could not be undone; the keystore refuses changes until the server restarts")]
    Poisoned,
}

impl StoreError {
    /// For a failed lifecycle write: what a client may be told about its effect, without
    /// the cause (which goes to the log). `None` for errors that are not write outcomes.
    pub fn outcome(&self) -> Option<&'static str> {
        match self {
            StoreError::NotApplied(_) => Some(
                "internal error: the keystore write failed and was undone; nothing changed, and a retry is safe",
            ),
            StoreError::Unknown { .. } | StoreError::Poisoned => Some(
                "internal error: the keystore write failed and could not be undone; whether it took effect is known after a restart, and changes are refused until then",
            ),
            _ => None,
        }
    }
}
