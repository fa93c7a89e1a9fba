//! Who may have which Transaction Token: the requester authorised by a `[[txn_rule]]`, the
//! subject token verified against the trusted issuers, and the Txn-Token's context drawn
//! from both, never wider than the subject token nor the rule.

use std::sync::Arc;

use serde_json::Value;

use super::{
    identity::{self, Caller, IdentityError},
    policy::txn::{TxnPolicy, TxnRefusal, TxnRule},
    subject_cache::Proven,
    Active, Callers,
};
use crate::authority::txn::{
    new_txn_id, pick, split_scope, ExchangeError, OAuthError, Replaced, TxnContext, TxnRequest,
    MAX_REQUESTERS,
};
use token_authority_jose::crypto;

/// The subject of a Txn-Token request, once its token was verified.
#[derive(Clone, Debug)]
pub(crate) enum Subject {
    /// A trusted issuer's token: its `sub`, and its scopes when it carries any (`scope`,
    /// or `scp`).
    Issued {
        sub: String,
        scopes: Option<Vec<String>>,
    },
    /// A Txn-Token of this authority, to be replaced.
    Replaced(Replaced),
}

/// What the policy grants a Txn-Token request.
#[derive(Clone, Debug)]
pub(crate) struct TxnGrant {
    /// The `[[txn_rule]]` (0-based) that allowed it.
    pub(crate) rule: usize,
    pub(crate) context: TxnContext,
    /// Seconds.
    pub(crate) ttl: u64,
}

impl Callers {
    /// Verifies a subject token of a trusted `[[issuer]]`: its signature, `iss`, `aud`
    /// (the issuer's `audiences`), lifetime and algorithm, as for a caller's token.
    pub(crate) async fn verify_subject_token(
        &self,
        active: &Active,
        token: &str,
        now: u64,
    ) -> Result<Subject, ExchangeError> {
        let invalid_grant = |reason: String| {
            ExchangeError::new(
                OAuthError::InvalidGrant,
                format!("the subject token is refused: {reason}"),
            )
        };
        let digest = crypto::sha256(token.as_bytes());
        if let Some(Proven { sub, scopes }) = active.subjects.get(&digest, now) {
            return Ok(Subject::Issued { sub, scopes });
        }
        let (verified, issuer, keys) = identity::verify_issuer_token(
            &active.issuers,
            token,
            &self.settings,
            self.own_status(),
            now,
        )
        .await
        .map_err(|error| invalid_grant(subject_reason(error)))?;
        let scopes = subject_scopes(verified.claims.get("scope"), verified.claims.get("scp"))
            .map_err(|reason| invalid_grant(reason.into()))?;
        // A token of the authority's own with a status can be revoked at any moment: its
        // verdict is not kept, its status is read at every exchange.
        let revocable =
            issuer.config.issuer == *self.settings.own_issuer && verified.claims.has_status();
        let sub = identity::asserted_subject(&issuer.config, verified.subject)
            .map_err(|error| invalid_grant(subject_reason(error)))?;
        let named = active
            .policy
            .txn
            .as_ref()
            .and_then(|txn| txn.subject_issuers.as_ref());
        if let Some(names) = named {
            if !names.contains(&issuer.config.name) {
                return Err(invalid_grant(format!(
                    "its issuer {:?} is not one of [txn] subject_issuers",
                    issuer.config.name
                )));
            }
            // The draft: a Txn-Token's sub is unique in the trust domain. A sub another
            // subject issuer may assert too would name two subjects.
            let also = active.issuers.iter().find(|other| {
                other.config.name != issuer.config.name
                    && names.contains(&other.config.name)
                    && other
                        .config
                        .subjects
                        .as_ref()
                        .is_none_or(|bound| bound.allows(&sub))
            });
            if let Some(other) = also {
                return Err(invalid_grant(format!(
                    "its sub is one the [[issuer]] {:?} may assert too, so it would not name one subject in the trust domain",
                    other.config.name
                )));
            }
        }
        if revocable {
            return Ok(Subject::Issued { sub, scopes });
        }
        active.subjects.insert(
            digest,
            Arc::clone(issuer),
            keys,
            verified.expires_at,
            self.settings.leeway,
            now,
            Proven {
                sub: sub.clone(),
                scopes: scopes.clone(),
            },
        );
        Ok(Subject::Issued { sub, scopes })
    }
}

/// Why a subject token is refused, in words about a subject token (the caller layer's
/// errors speak of a bearer credential).
fn subject_reason(error: IdentityError) -> String {
    match error {
        IdentityError::NotAJwt => "it is not a JWT".into(),
        IdentityError::UnknownIssuer => "its iss is not a trusted [[issuer]]".into(),
        IdentityError::Rejected(reason) => reason,
        IdentityError::Name(reason) => format!("its sub {reason}"),
        other => other.to_string(),
    }
}

/// The scopes of a subject token: `scope` (RFC 8693 section 4.2, space-delimited) or
/// `scp` (a string or an array of strings, as several issuers write it); `None` when it
/// carries neither.
fn subject_scopes(
    scope: Option<&Value>,
    scp: Option<&Value>,
) -> Result<Option<Vec<String>>, &'static str> {
    match (scope, scp) {
        (Some(Value::String(scope)), _) => Ok(Some(split_scope(scope))),
        (Some(_), _) => Err("its scope is not a string"),
        (None, Some(Value::String(scp))) => Ok(Some(split_scope(scp))),
        (None, Some(Value::Array(items))) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or("its scp holds a value that is not a string"),
        (None, Some(_)) => Err("its scp is neither a string nor an array of strings"),
        (None, None) => Ok(None),
    }
}

/// The rule that lets `caller` ask for `request`'s scopes: `unauthorized_client` when no
/// rule names it, `invalid_scope` when none names every scope asked for.
pub(crate) fn decide<'a>(
    policy: &'a TxnPolicy,
    caller: &Caller,
    request: &TxnRequest,
) -> Result<&'a TxnRule, ExchangeError> {
    if caller.name.contains(',') {
        // `req_wl` joins requesters with commas; a name holding one would forge a chain.
        return Err(ExchangeError::new(
            OAuthError::UnauthorizedClient,
            format!(
                "caller {:?} may not request Txn-Tokens: its name holds a comma, which separates the requesters in req_wl",
                caller.name
            ),
        ));
    }
    policy
        .decide(&caller.name, &request.scopes)
        .map_err(|refusal| {
            let error = match refusal {
                TxnRefusal::NoRule(_) => OAuthError::UnauthorizedClient,
                TxnRefusal::Scope { .. } => OAuthError::InvalidScope,
            };
            ExchangeError::new(error, refusal.to_string())
        })
}

/// The Txn-Token `rule` grants `caller` for `request` on `subject`.
pub(crate) fn grant(
    policy: &TxnPolicy,
    rule: &TxnRule,
    caller: &Caller,
    request: &TxnRequest,
    subject: Subject,
) -> Result<TxnGrant, ExchangeError> {
    let wider = |scope: &String, than: &str| {
        ExchangeError::new(
            OAuthError::InvalidScope,
            format!("scope {scope:?} is wider than {than}"),
        )
    };
    let context = match subject {
        Subject::Issued { sub, scopes } => {
            // The draft, "Unknown subject_token scope": never treated as unconstrained.
            let Some(scopes) = scopes else {
                return Err(ExchangeError::new(
                    OAuthError::InvalidScope,
                    "the subject token carries no scope (scope or scp), so a Txn-Token could not be kept within it",
                ));
            };
            if let Some(scope) = request.scopes.iter().find(|s| !scopes.contains(s)) {
                return Err(wider(scope, "the subject token's scope"));
            }
            TxnContext {
                txn: new_txn_id()
                    .map_err(|_| ExchangeError::new(OAuthError::ServerError, "internal error"))?,
                sub,
                scope: request.scopes.clone(),
                req_wl: vec![caller.name.clone()],
                tctx: pick(&request.request_details, &rule.context),
                rctx: pick(&request.request_context, &rule.request_context),
            }
        }
        Subject::Replaced(old) => {
            if let Some(scope) = request.scopes.iter().find(|s| !old.scope.contains(s)) {
                return Err(wider(scope, "the scope of the Txn-Token it would replace"));
            }
            if old.req_wl.len() >= MAX_REQUESTERS {
                return Err(ExchangeError::new(
                    OAuthError::InvalidGrant,
                    format!(
                        "the subject Txn-Token was requested and replaced by {MAX_REQUESTERS} workloads already, the most a transaction may have"
                    ),
                ));
            }
            // Values already asserted never change; the rule may add the ones missing.
            let mut tctx = old.tctx;
            for (key, value) in pick(&request.request_details, &rule.context) {
                tctx.entry(key).or_insert(value);
            }
            let mut req_wl = old.req_wl;
            req_wl.push(caller.name.clone());
            TxnContext {
                txn: old.txn,
                sub: old.sub,
                scope: request.scopes.clone(),
                req_wl,
                tctx,
                rctx: old.rctx,
            }
        }
    };
    Ok(TxnGrant {
        rule: rule.index,
        context,
        ttl: policy.ttl.min(rule.max_ttl),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::subject_scopes;

    #[test]
    fn subject_scopes_come_from_scope_or_scp() {
        let words = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            subject_scopes(Some(&json!("a b")), None),
            Ok(words(&["a", "b"]))
        );
        assert_eq!(
            subject_scopes(None, Some(&json!(["a", "c"]))),
            Ok(words(&["a", "c"]))
        );
        assert_eq!(subject_scopes(None, Some(&json!("a"))), Ok(words(&["a"])));
        assert_eq!(subject_scopes(None, None), Ok(None));
        assert_eq!(
            subject_scopes(Some(&json!(["a"])), None),
            Err("its scope is not a string")
        );
        assert_eq!(
            subject_scopes(None, Some(&json!([1]))),
            Err("its scp holds a value that is not a string")
        );
    }
}
