//! What a verified token's status says: the last step of VerifyToken, against the lists
//! held in memory (read in from the store first when another replica made the list moments
//! ago).

use serde_json::{Map, Value};
use token_authority_jose::{
    jwt::verify::{Claims, Reason, Rejection},
    status_list::{judge, StatusReference},
};

use super::StatusLists;

impl StatusLists {
    /// VerifyToken's last step, for a token whose signature and claims held: what its
    /// status says. A token without a `status` claim has none to check.
    pub(crate) fn check(&self, claims: &Map<String, Value>) -> Result<(), Rejection> {
        let unavailable = |detail: String| Rejection {
            reason: Reason::StatusUnavailable,
            detail,
        };
        let reference = match StatusReference::from_claims(claims) {
            Ok(Some(reference)) => reference,
            Ok(None) => return Ok(()),
            Err(e) => return Err(unavailable(e.to_string())),
        };
        let (list, idx) = self.locate(&reference).ok_or_else(|| {
            unavailable(format!(
                "{} is not a status list of this authority",
                reference.uri
            ))
        })?;
        let lists = self
            .lists
            .read()
            .map_err(|_| unavailable("the status lists cannot be read".into()))?;
        let state = lists
            .get(&list)
            .ok_or_else(|| unavailable(format!("status list {list} does not exist")))?;
        judge(&state.statuses, idx, &list.to_string())
    }
}

impl StatusLists {
    /// `check` for a verified token of this authority, wherever it is presented
    /// (VerifyToken, a caller's credential, a Txn-Token's subject token): nothing to check
    /// without a `status` claim; a list another replica made moments ago is read in before
    /// a refusal.
    pub(crate) async fn check_fresh(&self, claims: &Claims) -> Result<(), Rejection> {
        // Known as the claims were read: a token without one is not parsed into a map here.
        if !claims.has_status() {
            return Ok(());
        }
        match self.check(claims) {
            Err(rejection) if rejection.reason == Reason::StatusUnavailable && self.is_shared() => {
                if let Err(error) = self.refresh().await {
                    tracing::warn!(error = %crate::telemetry::chain(&error), "status lists could not be read in");
                }
                self.check(claims)
            }
            verdict => verdict,
        }
    }
}

impl crate::authority::Authority {
    /// What a verified token's status says: nothing to check without a `status` claim; a
    /// refusal when it names a list this authority does not hold (or holds none). A list
    /// another replica made moments ago is read in before the refusal.
    pub(crate) async fn check_status(&self, claims: &Claims) -> Result<(), Rejection> {
        if !claims.has_status() {
            return Ok(());
        }
        match self.status_lists() {
            Some(lists) => lists.check_fresh(claims).await,
            None => Err(Rejection {
                reason: Reason::StatusUnavailable,
                detail: "the token names a status list, and this authority keeps none".into(),
            }),
        }
    }
}
