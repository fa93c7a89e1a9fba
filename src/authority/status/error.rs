//! What can go wrong with a status change or a list: each is mapped to its gRPC and HTTP
//! status in the transport, in one place each.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error("no token with this jti holds a status (unknown, or expired)")]
    UnknownJti,
    #[error("status list {0} does not exist")]
    UnknownList(u64),
    #[error("index {idx} of status list {list} was never handed out (the list has handed out {allocated})")]
    NotHandedOut { list: u64, idx: u64, allocated: u64 },
    #[error("index {idx} of status list {list} has not been handed out yet: no token holds it")]
    NotYetHandedOut { list: u64, idx: u64 },
    #[error("the token at index {idx} of status list {list} is revoked, which is final")]
    Final { list: u64, idx: u64 },
    #[error("status lists are off on this authority")]
    Off,
    #[error("no index could be reserved")]
    Exhausted,
    #[error("the status lists are damaged: {0}")]
    Damaged(String),
    #[error("a status list lock was poisoned by a panic")]
    Poisoned,
    #[error(transparent)]
    Store(StoreError),
    #[error("the status list token could not be signed: {0}")]
    Sign(String),
}

impl StatusError {
    /// The store cannot be written now (a database down): worth retrying later.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, StatusError::Store(_) | StatusError::Exhausted)
    }
}
