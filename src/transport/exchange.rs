//! A Txn-Token request from credentials to signed, audited token: the one flow behind
//! `POST /token` and ExchangeToken, which only carry the form and the answer.
//!
//! In order: the requester's credentials (`invalid_client`), the request's parameters
//! (`invalid_request`, `unsupported_grant_type`, `invalid_target`), the requester's
//! `[[txn_rule]]` for the scopes (`unauthorized_client`, `invalid_scope`), the subject
//! token (`invalid_grant`), the scope against the subject token's (`invalid_scope`), the
//! signature, and the audit line, before the token leaves. Every refusal is audited too.
//! No line, log or metric ever carries the token: lines name its `txn` and its SHA-256.

use std::sync::Arc;

use crate::{
    authority::{
        signing_pool::SigningPool,
        txn::{ExchangeError, ExchangeForm, OAuthError, Replaced, SubjectKind, TxnRequest},
        Authority, AuthorityError, ErrorKind,
    },
    callers::{
        audit::{Entry, Outcome},
        policy::txn::TxnPolicy,
        txn::{self, Subject},
        Active, CallerError, Callers, Principal,
    },
    metrics::{DecidedMethod, DecisionOutcome, Metrics},
    telemetry::traces,
    transport::{authenticate::authenticate, connection::ConnectionInfo},
};
use token_authority_jose::{crypto, jwt::verify::Reason};

/// A Txn-Token handed out.
#[derive(Clone, Debug)]
pub(crate) struct Exchanged {
    pub(crate) token: String,
    pub(crate) txn: String,
    /// Unix seconds.
    pub(crate) expires_at: u64,
}

/// What both transports share to answer Txn-Token requests.
#[derive(Clone, Debug)]
pub(crate) struct Exchanger {
    pub(crate) authority: Arc<Authority>,
    pub(crate) callers: Arc<Callers>,
    pub(crate) signing_pool: Arc<SigningPool>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Exchanger {
    /// The policy in force when it has a `[txn]` table; `None`: Txn-Tokens are off.
    pub(crate) fn enabled(&self) -> Option<Arc<Active>> {
        self.callers
            .active()
            .filter(|active| active.policy.txn.is_some())
    }

    /// Answers one request under `active` (from `enabled`). `form` is the request's
    /// parameters, or why the transport could not read them: refused once the credentials
    /// are checked, and audited.
    pub(crate) async fn exchange<'a>(
        &self,
        active: &Active,
        authorizations: impl Iterator<Item = &'a str>,
        connection: Option<&ConnectionInfo>,
        form: Result<ExchangeForm, ExchangeError>,
    ) -> Result<Exchanged, ExchangeError> {
        let Some(policy) = active.policy.txn.as_ref() else {
            return Err(ExchangeError::new(
                OAuthError::ServerError,
                "internal error",
            ));
        };
        let clock = self.authority.clock();
        let principal = authenticate(&self.callers, clock, authorizations, connection).await;
        let principal = match principal {
            Ok(principal) => principal,
            Err(error) => return Err(self.refused(None, client_error(&error)).await),
        };
        let caller = match &principal {
            Principal::Caller(caller) => caller,
            Principal::Anonymous => {
                let error = ExchangeError::new(
                    OAuthError::InvalidClient,
                    "the token endpoint needs the requesting workload's credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`",
                );
                return Err(self.refused(Some(&principal), error).await);
            }
            Principal::Admin => {
                let error = ExchangeError::new(
                    OAuthError::UnauthorizedClient,
                    "the admin token is for admin RPCs; Txn-Tokens go to workloads a [[txn_rule]] names",
                );
                return Err(self.refused(Some(&principal), error).await);
            }
        };
        let form = match form {
            Ok(form) => form,
            Err(error) => return Err(self.refused(Some(&principal), error).await),
        };
        let decided = self.decide(active, policy, caller, form).await;
        let grant = match decided {
            Ok(decided) => decided,
            Err(error) => return Err(self.refused(Some(&principal), error).await),
        };
        let issued = match self.sign(policy, &grant).await {
            Ok(issued) => issued,
            Err(error) => {
                // Allowed, then not signed: counted `allowed` (as a signed one is when its
                // line is written), so allowed decisions outrunning tokens issued show it;
                // its line says `failed`, whatever the error, and counts nothing more.
                self.metrics
                    .decision(DecidedMethod::ExchangeToken, DecisionOutcome::Allowed);
                return Err(self
                    .audited(Some(&principal), error, Outcome::Failed, None)
                    .await);
            }
        };
        traces::record_signing_key(&issued.kid, issued.alg.name());
        let hash = hex::encode(crypto::sha256(issued.token.as_bytes()));
        let scope = format!("scope {}", grant.context.scope.join(" "));
        let recorded = self
            .callers
            .record(&Entry {
                at: issued.issued_at,
                method: DecidedMethod::ExchangeToken,
                caller: principal.name(),
                via: principal.via(),
                outcome: Some(Outcome::Allowed),
                subject: Some(&grant.context.sub),
                audiences: std::slice::from_ref(&policy.trust_domain),
                ttl: Some(issued.expires_at - issued.issued_at),
                kid: Some(&issued.kid),
                rule: Some(grant.rule),
                detail: Some(&scope),
                txn: Some(&grant.context.txn),
                token_sha256: Some(&hash),
                ..Entry::default()
            })
            .await;
        if let Err(error) = recorded {
            // Not recorded, not handed out.
            return Err(client_error(&error));
        }
        tracing::debug!(txn = %grant.context.txn, kid = %issued.kid, "Txn-Token issued");
        Ok(Exchanged {
            token: issued.token,
            txn: grant.context.txn,
            expires_at: issued.expires_at,
        })
    }

    /// The request checked, the rule that grants it, and the Txn-Token's context.
    async fn decide(
        &self,
        active: &Active,
        policy: &TxnPolicy,
        caller: &crate::callers::identity::Caller,
        form: ExchangeForm,
    ) -> Result<txn::TxnGrant, ExchangeError> {
        let request = TxnRequest::parse(form, &policy.trust_domain)?;
        let rule = txn::decide(policy, caller, &request)?;
        let now = self.authority.clock().unix_now();
        let subject = match request.subject_kind {
            SubjectKind::IssuerToken => {
                self.callers
                    .verify_subject_token(active, &request.subject_token, now)
                    .await?
            }
            SubjectKind::TxnToken => {
                let verified = self
                    .authority
                    .verify_txn(&request.subject_token, &policy.trust_domain, now)
                    .map_err(|rejection| {
                        let detail = match rejection.reason {
                            Reason::UnknownKey => "its kid is not a key of this authority".into(),
                            _ => rejection.detail,
                        };
                        ExchangeError::new(
                            OAuthError::InvalidGrant,
                            format!("the subject Txn-Token is refused: {detail}"),
                        )
                    })?;
                // The leeway is for other issuers' clocks. The draft: a Txn-Token that has
                // expired MUST NOT be replaced, and this one is ours.
                if verified.expires_at <= now as i64 {
                    return Err(ExchangeError::new(
                        OAuthError::InvalidGrant,
                        "the subject Txn-Token is refused: the token has expired",
                    ));
                }
                Subject::Replaced(Replaced::from_claims(&verified.claims)?)
            }
        };
        txn::grant(policy, rule, caller, &request, subject)
    }

    /// Signs the Txn-Token, on the signing pool when the algorithm or the signer is slow.
    async fn sign(
        &self,
        policy: &TxnPolicy,
        grant: &txn::TxnGrant,
    ) -> Result<crate::authority::Issued, ExchangeError> {
        let settings = self.authority.settings();
        let resolved = settings
            .algorithm(None)
            .map_err(|e| authority_error(&e.into()))?;
        let sign = {
            let authority = Arc::clone(&self.authority);
            let context = grant.context.clone();
            let trust_domain = policy.trust_domain.clone();
            let ttl = grant.ttl;
            let rpc = traces::Trace::current();
            move || {
                let started = std::time::Instant::now();
                let now = authority.clock().unix_now();
                let issued = traces::signing(&rpc, || {
                    authority.issue_txn(&context, &trust_domain, None, now, ttl)
                });
                (issued, started.elapsed())
            }
        };
        if settings.signers.is_stalled() {
            return Err(authority_error(&AuthorityError::SignerUnavailable(
                crypto::CryptoError::Signing,
            )));
        }
        let (issued, signing) = if resolved.is_slow_to_sign() || settings.signers.blocks() {
            self.signing_pool.run(sign).await.map_err(|error| {
                ExchangeError::new(OAuthError::TemporarilyUnavailable, error.to_string())
            })?
        } else {
            sign()
        };
        let issued = issued.map_err(|error| authority_error(&error))?;
        // Counted with IssueToken's: every token the authority mints.
        self.metrics.token_issued(issued.alg, signing);
        Ok(issued)
    }

    /// Audits a refusal and hands it back. A refusal that cannot be recorded is still a
    /// refusal.
    async fn refused(&self, principal: Option<&Principal>, error: ExchangeError) -> ExchangeError {
        let (outcome, label) = match error.error {
            OAuthError::InvalidRequest
            | OAuthError::UnsupportedGrantType
            | OAuthError::InvalidTarget => (Outcome::Malformed, Some(DecisionOutcome::Malformed)),
            OAuthError::InvalidClient => (Outcome::Refused, Some(DecisionOutcome::BadCredentials)),
            OAuthError::UnauthorizedClient => (Outcome::Refused, Some(DecisionOutcome::NoRule)),
            OAuthError::InvalidScope => (Outcome::Refused, Some(DecisionOutcome::Scope)),
            OAuthError::InvalidGrant => (Outcome::Refused, Some(DecisionOutcome::SubjectToken)),
            OAuthError::SlowDown => (Outcome::Refused, Some(DecisionOutcome::Throttled)),
            OAuthError::TemporarilyUnavailable | OAuthError::ServerError => (Outcome::Failed, None),
        };
        self.audited(principal, error, outcome, label).await
    }

    /// Writes the line of a call that issued nothing (counted by its `label`, if any), and
    /// hands the error back.
    async fn audited(
        &self,
        principal: Option<&Principal>,
        error: ExchangeError,
        outcome: Outcome,
        label: Option<DecisionOutcome>,
    ) -> ExchangeError {
        let _ = self
            .callers
            .record(&Entry {
                at: self.authority.clock().unix_now(),
                method: DecidedMethod::ExchangeToken,
                caller: principal.map_or("", Principal::name),
                via: principal.map_or("", Principal::via),
                outcome: Some(outcome),
                reason: Some(&error.to_string()),
                reason_label: label,
                ..Entry::default()
            })
            .await;
        error
    }
}

/// A failure to authenticate or to record, as the token endpoint words it.
fn client_error(error: &CallerError) -> ExchangeError {
    let code = match error {
        CallerError::Throttled { .. } => OAuthError::SlowDown,
        CallerError::NotRecorded(_) => OAuthError::TemporarilyUnavailable,
        error if error.is_unauthenticated() => OAuthError::InvalidClient,
        _ => OAuthError::UnauthorizedClient,
    };
    let mut refused = ExchangeError::new(code, error.to_string());
    if let CallerError::Throttled { retry_after_secs } = error {
        refused.retry_after_secs = Some(*retry_after_secs);
    }
    refused
}

fn authority_error(error: &AuthorityError) -> ExchangeError {
    let code = match error.kind() {
        ErrorKind::InvalidArgument => OAuthError::InvalidRequest,
        ErrorKind::Unavailable => OAuthError::TemporarilyUnavailable,
        _ => OAuthError::ServerError,
    };
    if code == OAuthError::ServerError {
        tracing::error!(%error, "a Txn-Token could not be signed");
    }
    ExchangeError::new(code, error.public_message())
}
