//! Who is calling, for the handlers: the credentials of a call checked against the caller
//! layer, the admin check, and the audit and log lines of refusals and admin actions.

use tonic::{Request, Status};

use super::GrpcService;
use crate::{
    callers::{
        audit::{Entry, Outcome},
        CallerError, Principal,
    },
    metrics::{DecidedMethod, DecisionOutcome},
    transport::{authenticate::authenticate, connection::ConnectionInfo},
};

impl GrpcService {
    /// Checks the credentials of a call: the `authorization` metadata and the client
    /// certificate the TLS listener saw.
    pub(super) async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Principal, CallerError> {
        // A value that is not visible ASCII is a malformed credential, not an absent one.
        let values = request
            .metadata()
            .get_all("authorization")
            .iter()
            .map(|value| value.to_str().unwrap_or(""));
        let info = request.extensions().get::<ConnectionInfo>();
        authenticate(&self.callers, self.authority.clock(), values, info).await
    }

    /// Authenticates an admin RPC and asks the policy; a refusal is counted and audited.
    pub(super) async fn check_admin<T>(
        &self,
        request: &Request<T>,
        method: DecidedMethod,
    ) -> Result<Principal, Status> {
        let (principal, error) = match self.authenticate(request).await {
            Ok(principal) => match self.callers.authorize_admin(&principal) {
                Ok(()) => return Ok(principal),
                Err(error) => (Some(principal), error),
            },
            Err(error) => (None, error),
        };
        // Refused either way: a refusal that cannot be recorded is still a refusal.
        let _ = self
            .callers
            .record(&Entry {
                at: self.now(),
                method,
                caller: principal.as_ref().map_or("", Principal::name),
                via: principal.as_ref().map_or("", Principal::via),
                outcome: Some(Outcome::Refused),
                reason: Some(&error.to_string()),
                reason_label: error.label(),
                ..Entry::default()
            })
            .await;
        Err(Status::from(error))
    }

    /// Audits an admin action before it is carried out (`Allowed`), or its result after
    /// (`Done`, `Failed`). The action waits for its `Allowed` line: one that cannot be
    /// written is not carried out (UNAVAILABLE).
    pub(super) async fn admin_line(
        &self,
        principal: &Principal,
        method: DecidedMethod,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), Status> {
        self.callers
            .record(&Entry {
                at: self.now(),
                method,
                caller: principal.name(),
                via: principal.via(),
                outcome: Some(outcome),
                detail: Some(detail),
                ..Entry::default()
            })
            .await
            .map_err(Status::from)
    }

    /// Audits a refused or malformed IssueToken.
    pub(super) async fn issue_refused(
        &self,
        principal: Option<&Principal>,
        outcome: Outcome,
        label: Option<DecisionOutcome>,
        status: &Status,
    ) {
        let _ = self
            .callers
            .record(&Entry {
                at: self.now(),
                method: DecidedMethod::IssueToken,
                caller: principal.map_or("", Principal::name),
                via: principal.map_or("", Principal::via),
                outcome: Some(outcome),
                reason: Some(status.message()),
                reason_label: label,
                ..Entry::default()
            })
            .await;
    }
}
