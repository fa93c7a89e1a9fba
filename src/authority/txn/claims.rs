//! The claims of a Txn-Token: what a new one asserts, and what a replacement keeps.
//!
//! A replacement keeps `txn`, `sub`, `aud`, `tctx` and `rctx` as they are, may only narrow
//! `scope`, may add `tctx` members the old token lacks (never change one), and appends the
//! new requesting workload to `req_wl`, so the call chain of requesters is kept: the draft
//! leaves the mechanism open; `req_wl` here is the requesters' names joined by commas,
//! oldest first.

use serde_json::{Map, Value};

use super::{ExchangeError, OAuthError};
use token_authority_jose::crypto;

/// The most requesting workloads a `req_wl` chain names: the draft asks to limit how many
/// times a Txn-Token is replaced.
pub(crate) const MAX_REQUESTERS: usize = 8;

/// What a Txn-Token carries besides its times and signature.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TxnContext {
    pub(crate) txn: String,
    pub(crate) sub: String,
    pub(crate) scope: Vec<String>,
    /// The requesting workloads, oldest first; the last one asked for this token.
    pub(crate) req_wl: Vec<String>,
    pub(crate) tctx: Map<String, Value>,
    pub(crate) rctx: Map<String, Value>,
}

/// The parts of a verified Txn-Token a replacement starts from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Replaced {
    pub(crate) txn: String,
    pub(crate) sub: String,
    pub(crate) scope: Vec<String>,
    pub(crate) req_wl: Vec<String>,
    pub(crate) tctx: Map<String, Value>,
    pub(crate) rctx: Map<String, Value>,
}

impl Replaced {
    /// Reads the claims of a Txn-Token this authority signed (verified by the caller).
    pub(crate) fn from_claims(claims: &Map<String, Value>) -> Result<Replaced, ExchangeError> {
        let invalid = |what: &str| {
            ExchangeError::new(
                OAuthError::InvalidGrant,
                format!("the subject Txn-Token's {what}"),
            )
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let object = |name: &str| match claims.get(name) {
            None => Ok(Map::new()),
            Some(Value::Object(members)) => Ok(members.clone()),
            Some(_) => Err(invalid(&format!("{name} is not an object"))),
        };
        let req_wl: Vec<String> = text("req_wl")
            .ok_or_else(|| invalid("req_wl is missing"))?
            .split(',')
            .map(str::to_owned)
            .collect();
        Ok(Replaced {
            txn: text("txn")
                .ok_or_else(|| invalid("txn is missing"))?
                .to_owned(),
            sub: text("sub")
                .ok_or_else(|| invalid("sub is missing"))?
                .to_owned(),
            scope: split_scope(text("scope").ok_or_else(|| invalid("scope is missing"))?),
            req_wl,
            tctx: object("tctx")?,
            rctx: object("rctx")?,
        })
    }
}

/// The scopes of a space-delimited `scope`, in order, each once.
pub(crate) fn split_scope(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in scope.split(' ').filter(|token| !token.is_empty()) {
        if !out.iter().any(|seen| seen == token) {
            out.push(token.to_owned());
        }
    }
    out
}

/// A new transaction's identifier: a random UUID (version 4), the form the draft's
/// examples use.
pub(crate) fn new_txn_id() -> Result<String, crypto::CryptoError> {
    let mut bytes: [u8; 16] = crypto::random_bytes(16)?
        .try_into()
        .map_err(|_| crypto::CryptoError::Random)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// The members of `from` named in `keys`, in `keys`' order.
pub(crate) fn pick(from: &Map<String, Value>, keys: &[String]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|key| Some((key.clone(), from.get(key)?.clone())))
        .collect()
}

impl TxnContext {
    /// The claim set of the token: registered claims first, then the draft's.
    pub(crate) fn claims(
        &self,
        issuer: &str,
        trust_domain: &str,
        issued_at: u64,
        expires_at: u64,
    ) -> Map<String, Value> {
        let mut claims = Map::with_capacity(10);
        claims.insert("iss".into(), issuer.into());
        claims.insert("iat".into(), issued_at.into());
        claims.insert("exp".into(), expires_at.into());
        claims.insert("aud".into(), trust_domain.into());
        claims.insert("txn".into(), self.txn.clone().into());
        claims.insert("sub".into(), self.sub.clone().into());
        claims.insert("scope".into(), self.scope.join(" ").into());
        claims.insert("req_wl".into(), self.req_wl.join(",").into());
        if !self.tctx.is_empty() {
            claims.insert("tctx".into(), Value::Object(self.tctx.clone()));
        }
        if !self.rctx.is_empty() {
            claims.insert("rctx".into(), Value::Object(self.rctx.clone()));
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_are_random_version_4_uuids() {
        let a = new_txn_id().unwrap();
        let b = new_txn_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn scopes_split_on_spaces_once_each_in_order() {
        assert_eq!(split_scope("b a  b c"), ["b", "a", "c"]);
        assert!(split_scope("  ").is_empty());
    }
}
