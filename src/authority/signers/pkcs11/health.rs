//! What the connection knows of the token beyond its link: the calls in it now (one held
//! past the signing deadline means the token stopped answering: a C_Sign that never returns
//! answers nothing) and the keys that could not sign (the token answers, but cannot issue
//! with them).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::authority::signing_pool::SIGN_DEADLINE;

#[derive(Default)]
pub(super) struct TokenHealth {
    /// The calls in the token now, by ticket, with when each started.
    in_flight: Mutex<BTreeMap<u64, Instant>>,
    tickets: AtomicU64,
    /// The CKA_IDs of keys whose last signature failed for the key's own reason (no such
    /// object, or one that signs with another key). Each probe starts the set again from
    /// the current keys.
    unusable_keys: Mutex<HashSet<Vec<u8>>>,
}

/// A call in the token, struck off when it returns.
pub(super) struct InFlight<'a> {
    health: &'a TokenHealth,
    ticket: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.health
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.ticket);
    }
}

impl TokenHealth {
    /// A call going into the token, until the guard is dropped.
    pub(super) fn enter(&self) -> InFlight<'_> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ticket, Instant::now());
        InFlight {
            health: self,
            ticket,
        }
    }

    /// Whether a call has been in the token for longer than callers wait for it.
    pub(super) fn stalled(&self) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_key_value()
            .is_some_and(|(_, started)| started.elapsed() >= SIGN_DEADLINE)
    }

    /// Whether every key that signed last (or that the last probe tried) could sign.
    pub(super) fn keys_usable(&self) -> bool {
        self.unusable_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Notes whether key `id` could sign.
    pub(super) fn key_signed(&self, id: &[u8], usable: bool) {
        let mut unusable = self
            .unusable_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if usable {
            unusable.remove(id);
        } else {
            unusable.insert(id.to_vec());
        }
    }

    /// Forgets which keys could not sign: a probe tries the current ones again (a key
    /// rotated away no longer counts).
    pub(super) fn forget_unusable_keys(&self) {
        self.unusable_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
