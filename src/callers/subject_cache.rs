//! Subject tokens already verified, so that the edge's exchanges for one access token
//! verify its signature once, not at every request (as Envoy's `jwt_cache_config` does for
//! the JWTs it checks). An entry is the SHA-256 of the token's exact bytes and what its
//! verification found; it holds while all of this holds, else the token is verified again:
//! - the issuer's key set is the very one that verified it (a refetch, a rotation or a
//!   removed key at the issuer starts over);
//! - the token has not expired by the rules it was verified with (`exp` plus the leeway);
//! - it was verified less than `MAX_AGE` ago;
//! - the policy is the one it was verified under (the cache lives in `Active`).
//!
//! What the checks read besides the signature is fixed by the bytes and the policy, so a
//! hit gives the verdict a verification would. Only accepted tokens are kept; the map is
//! bounded (`CAPACITY`): when full, expired entries go, and if none did, all of them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use super::issuers::{IssuerKeys, TrustedIssuer};

/// Entries kept at most.
pub(crate) const CAPACITY: usize = 16_384;
/// Seconds an entry is trusted after its verification.
pub(crate) const MAX_AGE: u64 = 300;

/// What a verified subject token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proven {
    pub(crate) sub: String,
    pub(crate) scopes: Option<Vec<String>>,
}

struct Entry {
    issuer: Arc<TrustedIssuer>,
    keys: Arc<IssuerKeys>,
    /// Unix seconds: the entry holds while `now` is below.
    valid_until: u64,
    proven: Proven,
}

#[derive(Default)]
pub(crate) struct SubjectCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for SubjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectCache").finish_non_exhaustive()
    }
}

impl SubjectCache {
    /// What the token of `digest` proved, if its entry still holds at `now`.
    pub(crate) fn get(&self, digest: &[u8; 32], now: u64) -> Option<Proven> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(digest)?;
        let holds = now < entry.valid_until && Arc::ptr_eq(&entry.keys, &entry.issuer.keys());
        holds.then(|| entry.proven.clone())
    }

    /// Keeps what a token verified by `keys` of `issuer` at `now` proved, while it lives
    /// (`expires_at`, its `exp`, plus `leeway`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &self,
        digest: [u8; 32],
        issuer: Arc<TrustedIssuer>,
        keys: Arc<IssuerKeys>,
        expires_at: i64,
        leeway: u64,
        now: u64,
        proven: Proven,
    ) {
        let lives_until = u64::try_from(expires_at)
            .unwrap_or(0)
            .saturating_add(leeway);
        let valid_until = lives_until.min(now.saturating_add(MAX_AGE));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY {
            entries.retain(|_, entry| now < entry.valid_until);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                issuer,
                keys,
                valid_until,
                proven,
            },
        );
    }
}
