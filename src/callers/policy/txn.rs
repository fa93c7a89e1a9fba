//! The Transaction Token part of the policy: the trust domain every Txn-Token names, and
//! which callers may ask for Txn-Tokens with which scopes, which `request_details` keys
//! enter `tctx` and which `request_context` keys enter `rctx`. Deny by default: a caller
//! no `[[txn_rule]]` names gets none.

use std::collections::HashSet;

use globset::GlobSet;

/// The longest life of a Txn-Token: the draft's tokens live "on the order of minutes or
/// less", and a verifier refuses longer ones.
pub(crate) const TXN_MAX_TTL: u64 = token_authority_jose::jwt::verify::TXN_TOKEN_MAX_LIFETIME;
/// The life of a Txn-Token when neither `[txn] ttl` nor the rule says less.
pub(crate) const TXN_DEFAULT_TTL: u64 = 60;
/// The `request_context` keys a rule copies into `rctx` when it does not say.
pub(crate) const DEFAULT_REQUEST_CONTEXT: [&str; 2] = ["req_ip", "authn"];

/// `[txn]` and its `[[txn_rule]]`s, checked.
#[derive(Clone, Debug)]
pub(crate) struct TxnPolicy {
    /// The `aud` of every Txn-Token: the only audience a request may name.
    pub(crate) trust_domain: String,
    /// Seconds; at most `TXN_MAX_TTL`.
    pub(crate) ttl: u64,
    /// The `[[issuer]]`s whose tokens are subject tokens; `None`: every one.
    pub(crate) subject_issuers: Option<Vec<String>>,
    pub(crate) rules: Vec<TxnRule>,
}

/// One `[[txn_rule]]`.
#[derive(Clone, Debug)]
pub(crate) struct TxnRule {
    /// 0-based position among the `[[txn_rule]]`s.
    pub(crate) index: usize,
    pub(crate) callers: GlobSet,
    pub(crate) scopes: HashSet<String>,
    /// `request_details` keys copied into `tctx`.
    pub(crate) context: Vec<String>,
    /// `request_context` keys copied into `rctx`.
    pub(crate) request_context: Vec<String>,
    /// Seconds; at most `TXN_MAX_TTL`.
    pub(crate) max_ttl: u64,
}

/// Why the policy refuses a Txn-Token request: the RFC 6749 error it becomes is decided by
/// the transport (`unauthorized_client`, `invalid_scope`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TxnRefusal {
    #[error("caller {0:?} may not request Txn-Tokens: no [[txn_rule]] names it")]
    NoRule(String),
    #[error("scope {scope:?} is not one caller {caller:?} may request")]
    Scope { caller: String, scope: String },
}

impl TxnPolicy {
    /// The first rule naming `caller` that allows every scope of `scopes`.
    pub(crate) fn decide(&self, caller: &str, scopes: &[String]) -> Result<&TxnRule, TxnRefusal> {
        let mut refused = None;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.callers.is_match(caller))
        {
            match scopes.iter().find(|scope| !rule.scopes.contains(*scope)) {
                None => return Ok(rule),
                Some(scope) => {
                    refused.get_or_insert_with(|| TxnRefusal::Scope {
                        caller: caller.to_owned(),
                        scope: scope.clone(),
                    });
                }
            }
        }
        Err(refused.unwrap_or_else(|| TxnRefusal::NoRule(caller.to_owned())))
    }
}
