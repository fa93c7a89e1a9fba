//! A list as verifiers fetch it: a Status List Token (`typ: statuslist+jwt`) signed by the
//! current key of the default algorithm, rendered once per change of the list, or when
//! half its `ttl` has passed, and kept for the requests in between.

use std::sync::Arc;

use serde_json::{Map, Value};
use token_authority_jose::jwt::{self, TokenType};

use super::{StatusError, StatusLists};
use crate::authority::{signing_pool::SIGN_DEADLINE, Authority};

/// A rendered Status List Token.
#[derive(Debug)]
pub(crate) struct ServedList {
    pub(crate) token: String,
    pub(crate) etag: String,
    /// Unix seconds.
    pub(crate) issued_at: u64,
    pub(crate) ttl: u64,
    version: u64,
}

impl ServedList {
    /// How long a cache may still keep this rendering: its `ttl` from when it was signed.
    pub(crate) fn max_age(&self, now: u64) -> u64 {
        self.ttl.saturating_sub(now.saturating_sub(self.issued_at))
    }
}

/// A list token's `exp`, in `ttl`s after its `iat`: a verifier that cannot fetch a fresh
/// copy keeps using the one it has for this long, then refuses.
const EXP_IN_TTLS: u64 = 10;

impl StatusLists {
    /// The rendering of list `id` still good at `now`, if any.
    fn cached(&self, id: u64, now: u64) -> Result<(Option<Arc<ServedList>>, u64), StatusError> {
        let lists = self.lists.read().map_err(|_| StatusError::Poisoned)?;
        let state = lists.get(&id).ok_or(StatusError::UnknownList(id))?;
        let fresh = state.served.as_ref().filter(|served| {
            served.version == state.version
                // At least a second: with a `ttl` of 1 s, every fetch would sign again.
                && now.saturating_sub(served.issued_at) < (self.settings.list_ttl / 2).max(1)
        });
        Ok((fresh.cloned(), state.version))
    }

    /// The claims of list `id` at `now`, and the version they show.
    fn claims(
        &self,
        id: u64,
        issuer: &str,
        now: u64,
    ) -> Result<(Map<String, Value>, u64), StatusError> {
        let lists = self.lists.read().map_err(|_| StatusError::Poisoned)?;
        let state = lists.get(&id).ok_or(StatusError::UnknownList(id))?;
        let ttl = self.settings.list_ttl;
        let mut claims = Map::with_capacity(6);
        claims.insert("iss".into(), Value::String(issuer.to_owned()));
        claims.insert("sub".into(), Value::String(self.uri(id)));
        claims.insert("iat".into(), now.into());
        claims.insert(
            "exp".into(),
            now.saturating_add(ttl.saturating_mul(EXP_IN_TTLS)).into(),
        );
        claims.insert("ttl".into(), ttl.into());
        let mut list = state.statuses.to_claim();
        list["aggregation_uri"] = self.aggregation_uri().into();
        claims.insert("status_list".into(), list);
        Ok((claims, state.version))
    }

    fn keep(&self, id: u64, served: &Arc<ServedList>) {
        if let Ok(mut lists) = self.lists.write() {
            if let Some(state) = lists.get_mut(&id) {
                if state.version == served.version {
                    state.served = Some(Arc::clone(served));
                }
            }
        }
    }
}

impl Authority {
    /// List `id` as a signed Status List Token.
    pub(crate) async fn status_list_token(
        self: &Arc<Self>,
        id: u64,
        now: u64,
    ) -> Result<Arc<ServedList>, StatusError> {
        let lists = self.status_lists().ok_or(StatusError::Off)?;
        if let (Some(served), _) = lists.cached(id, now)? {
            return Ok(served);
        }
        let _rendering = lists.rendering.lock().await;
        if let (Some(served), _) = lists.cached(id, now)? {
            return Ok(served);
        }
        let (claims, version) = lists.claims(id, &self.settings.issuer, now)?;
        let authority = Arc::clone(self);
        // An RSA or hardware signature blocks for a while: off the reactor, and waited for
        // no longer than any other signature (a hung device).
        let signing = tokio::task::spawn_blocking(move || {
            let keys = authority.keys.load();
            let alg = authority.settings.algorithms[0];
            let signer = keys
                .signer(alg)
                .ok_or_else(|| StatusError::Sign(format!("no current {alg} key")))?;
            // The list's size bounds the token, not the limit on issued tokens.
            let limit = claims.len() * 64 + 4096 + lst_len(&claims) + 1024;
            jwt::sign_as(signer, TokenType::StatusList, &claims, limit)
                .map_err(|e| StatusError::Sign(e.to_string()))
        });
        let token = tokio::time::timeout(SIGN_DEADLINE, signing)
            .await
            .map_err(|_| {
                StatusError::Sign(format!(
                    "the signer did not answer within {SIGN_DEADLINE:?}"
                ))
            })?
            .map_err(|e| StatusError::Sign(e.to_string()))??;
        let served = Arc::new(ServedList {
            // The bytes' own hash: it names this rendering and no other, on every replica
            // and across restarts (a count of changes would not: each process keeps its own).
            etag: format!(
                "\"{}\"",
                hex::encode(token_authority_jose::crypto::sha256(token.as_bytes()))
            ),
            token,
            issued_at: now,
            ttl: lists.settings.list_ttl,
            version,
        });
        lists.keep(id, &served);
        Ok(served)
    }
}

fn lst_len(claims: &Map<String, Value>) -> usize {
    claims
        .get("status_list")
        .and_then(|list| list.get("lst"))
        .and_then(Value::as_str)
        .map_or(0, |lst| lst.len() * 2)
}
