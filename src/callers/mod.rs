//! Who is calling, and what they may get: the authority's security boundary. The gRPC
//! handlers hand this layer the request's `authorization` metadata and client certificate,
//! and ask it two questions: may this caller have this token (and with which added claims),
//! and may it call the admin RPCs. Only this layer knows about policies and callers.
//!
//! # Layout
//! - `identity`: the caller and how each credential (mTLS, issuer JWT, client secret)
//!   proves its name.
//! - `issuers`: trusted issuers' JWKS: fetched, cached, refetched on an unknown kid.
//! - `names`: the syntax of SPIFFE IDs and host names in client certificates.
//! - `policy`: the TOML policy, checked whole, and the deny-by-default decision.
//! - `audit`: the hash-chained audit log and its verification.
//! - `reload`: loading the policy file, and reloading it when its content changes.
//! - `commands`: `policy check` and `audit verify`.
//! - `txn`: who may have which Transaction Token, and its context; `subject_cache`: the
//!   subject tokens it verified, kept while their verdict holds.

pub mod admin;
pub mod audit;
pub(crate) mod commands;
pub(crate) mod identity;
pub(crate) mod issuers;
pub(crate) mod names;
pub(crate) mod policy;
pub(crate) mod reload;
pub(crate) mod subject_cache;
pub(crate) mod txn;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde_json::Map;

use self::{
    audit::{AuditLog, Entry, Outcome},
    identity::{Caller, IdentityError, Presented},
    issuers::TrustedIssuer,
    policy::{Grant, Policy, Refusal, StatusRule},
};
use crate::{
    authority::{domain::IssueRequest, status::StatusLists},
    callers::admin::AdminToken,
    metrics::{DecisionOutcome, Metrics},
};

/// Why a call is refused by this layer. Mapped to gRPC codes in one place
/// (`impl From<CallerError> for Status` in the transport).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallerError {
    /// No credentials at all: UNAUTHENTICATED, saying what would do.
    #[error("{0}")]
    NoCredentials(&'static str),
    /// Credentials that prove nothing: UNAUTHENTICATED.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A certificate and an authorization header at once: UNAUTHENTICATED.
    #[error("present one credential: the call carries both a client certificate and an authorization header")]
    TwoCredentials,
    /// The policy refuses: PERMISSION_DENIED, naming the field.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Without a policy on a non-loopback listener only the admin token issues:
    /// PERMISSION_DENIED.
    #[error("IssueToken needs the admin token: there is no --policy-file and the gRPC listener is not loopback")]
    AdminOnly,
    /// The peer's address failed authentication too often: RESOURCE_EXHAUSTED, before its
    /// credentials are read.
    #[error("too many failed authentications from this address; retry in {retry_after_secs}s")]
    Throttled { retry_after_secs: u64 },
    /// The admin token under a policy: PERMISSION_DENIED.
    #[error("the admin token is for admin RPCs; IssueToken needs a caller the policy names")]
    AdminIsNotACaller,
    /// The decision's audit line could not be written, so it is not carried out:
    /// UNAVAILABLE (the client may retry once the log takes lines again).
    #[error(transparent)]
    NotRecorded(#[from] audit::NotRecorded),
}

impl CallerError {
    /// The metrics and audit label of the refusal. None for `NotRecorded`: no decision
    /// but a failure to record one, which `audit_unrecorded_decisions` counts.
    pub(crate) fn label(&self) -> Option<DecisionOutcome> {
        Some(match self {
            CallerError::NoCredentials(_) => DecisionOutcome::NoCredentials,
            CallerError::Identity(_) | CallerError::TwoCredentials => {
                DecisionOutcome::BadCredentials
            }
            CallerError::Refused(refusal) => refusal.label(),
            CallerError::AdminOnly | CallerError::AdminIsNotACaller => DecisionOutcome::AdminOnly,
            CallerError::Throttled { .. } => DecisionOutcome::Throttled,
            CallerError::NotRecorded(_) => return None,
        })
    }

    /// UNAUTHENTICATED (true) or PERMISSION_DENIED (false).
    pub(crate) fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            CallerError::NoCredentials(_) | CallerError::Identity(_) | CallerError::TwoCredentials
        )
    }
}

const ISSUE_NEEDS_CREDENTIALS: &str = "IssueToken needs credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`";
const ISSUE_NEEDS_ADMIN: &str = "IssueToken needs metadata `authorization: Bearer <admin token>`: there is no --policy-file and the gRPC listener is not loopback";
const ADMIN_NEEDS_TOKEN: &str = "admin RPCs need metadata `authorization: Bearer <admin token>`";

/// Who a call comes from, once its credentials were checked.
#[derive(Clone, Debug)]
pub(crate) enum Principal {
    Anonymous,
    Admin,
    Caller(Caller),
}

impl Principal {
    pub(crate) fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::Admin => "admin",
            Principal::Caller(caller) => &caller.name,
        }
    }

    pub(crate) fn via(&self) -> &'static str {
        match self {
            Principal::Anonymous => "none",
            Principal::Admin => "admin-token",
            Principal::Caller(caller) => caller.kind.label(),
        }
    }
}

/// A policy in force, with its issuers' key caches.
#[derive(Debug)]
pub struct Active {
    pub(crate) policy: Policy,
    pub(crate) issuers: Vec<Arc<TrustedIssuer>>,
    /// SHA-256 of the file content it came from, to notice changes.
    pub(crate) digest: [u8; 32],
    /// Txn-Token subject tokens verified under this policy.
    pub(crate) subjects: subject_cache::SubjectCache,
}

/// Settings of this layer that come from the server's configuration.
#[derive(Clone, Debug)]
pub struct CallerSettings {
    /// Whether the gRPC listener is a loopback address: without a policy, IssueToken is
    /// then open (local development).
    pub loopback: bool,
    /// The server's leeway and token size limit, applied to caller tokens too.
    pub leeway: u64,
    pub max_token_bytes: usize,
    /// The authority's own `--issuer`: trusting it as an `[[issuer]]` needs that entry's
    /// `allow_own_issuer`.
    pub own_issuer: Arc<str>,
}

/// What the gRPC handlers ask.
pub struct Callers {
    active: ArcSwapOption<Active>,
    /// The authority's status lists, once open: a token of its own presented as a caller's
    /// credential or a subject token is checked against them, as VerifyToken checks it.
    own_status: std::sync::OnceLock<Arc<StatusLists>>,
    admin: Arc<AdminToken>,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<Metrics>,
    settings: CallerSettings,
}

impl std::fmt::Debug for Callers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callers")
            .field("policy", &self.active.load().is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Callers {
    pub fn new(
        admin: Arc<AdminToken>,
        metrics: Arc<Metrics>,
        settings: CallerSettings,
        policy: Option<Active>,
        audit: Option<Arc<AuditLog>>,
    ) -> Callers {
        Callers {
            active: ArcSwapOption::new(policy.map(Arc::new)),
            own_status: std::sync::OnceLock::new(),
            admin,
            audit,
            metrics,
            settings,
        }
    }

    /// Hands over the authority's status lists (opened after the callers).
    pub(crate) fn attach_own_status(&self, lists: Arc<StatusLists>) {
        let _ = self.own_status.set(lists);
    }

    /// The status lists a token of the authority's own is checked against, once open.
    pub(crate) fn own_status(&self) -> Option<&StatusLists> {
        self.own_status.get().map(Arc::as_ref)
    }

    /// The policy in force, if any.
    pub(crate) fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    /// Puts a new policy in force; calls already deciding finish under the old one.
    pub(crate) fn replace(&self, active: Active) {
        self.active.store(Some(Arc::new(active)));
    }

    pub(crate) fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn metrics_arc(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether IssueToken is open to anyone: no policy and a loopback listener.
    pub(crate) fn is_open(&self) -> bool {
        self.active.load().is_none() && self.settings.loopback
    }

    /// Checks the call's credentials. `now` is unix seconds.
    pub(crate) async fn authenticate(
        &self,
        authorization: Option<&str>,
        certificate: Option<Arc<[u8]>>,
        now: u64,
    ) -> Result<Principal, CallerError> {
        let presented = identity::parse_authorization(authorization)?;
        let active = self.active.load_full();
        match (presented, certificate) {
            // The admin token works over any connection, mTLS included (operator tools).
            (Presented::Bearer(token), _) if self.admin.matches(token) => Ok(Principal::Admin),
            (Presented::Nothing, None) => Ok(Principal::Anonymous),
            (Presented::Nothing, Some(der)) => {
                Ok(Principal::Caller(identity::certificate_caller(der, now)?))
            }
            // A bearer token goes with a certificate only when its cnf binds it to one.
            (Presented::Bearer(token), Some(_)) if !identity::carries_cnf(token) => {
                Err(CallerError::TwoCredentials)
            }
            (Presented::Basic { .. }, Some(_)) => Err(CallerError::TwoCredentials),
            (Presented::Bearer(token), certificate) => {
                let Some(active) = active else {
                    return Err(IdentityError::AdminToken.into());
                };
                let caller = identity::token_caller(
                    &active.issuers,
                    token,
                    certificate,
                    &self.settings,
                    self.own_status(),
                    now,
                )
                .await?;
                Ok(Principal::Caller(caller))
            }
            (Presented::Basic { id, secret }, None) => {
                let clients = active.as_ref().map(|a| &a.policy.clients);
                let empty = Default::default();
                Ok(Principal::Caller(identity::basic_caller(
                    clients.unwrap_or(&empty),
                    &id,
                    &secret,
                )?))
            }
        }
    }

    /// Decides an IssueToken request. Under a policy only a caller it names gets a token,
    /// with the rule's added claims; without one, see `is_open` and the admin token.
    pub(crate) fn authorize_issue(
        &self,
        principal: &Principal,
        request: &IssueRequest,
    ) -> Result<Grant, CallerError> {
        let open = Grant {
            expires_by: None,
            rule: None,
            ttl: request.ttl,
            claims: Map::new(),
            status: StatusRule::ByTtl,
        };
        match (self.active.load_full(), principal) {
            (None, _) if self.settings.loopback => Ok(open),
            (None, Principal::Admin) => Ok(open),
            (None, Principal::Anonymous) => Err(CallerError::NoCredentials(ISSUE_NEEDS_ADMIN)),
            (None, Principal::Caller(_)) => Err(CallerError::AdminOnly),
            (Some(_), Principal::Anonymous) => {
                Err(CallerError::NoCredentials(ISSUE_NEEDS_CREDENTIALS))
            }
            (Some(_), Principal::Admin) => Err(CallerError::AdminIsNotACaller),
            (Some(active), Principal::Caller(caller)) => {
                Ok(active.policy.decide(caller, request)?)
            }
        }
    }

    /// Decides whether `principal` may call the admin RPCs.
    pub(crate) fn authorize_admin(&self, principal: &Principal) -> Result<(), CallerError> {
        match (principal, self.active.load_full()) {
            (Principal::Admin, _) => Ok(()),
            (Principal::Anonymous, _) => Err(CallerError::NoCredentials(ADMIN_NEEDS_TOKEN)),
            (Principal::Caller(caller), Some(active)) => Ok(active.policy.allows_admin(caller)?),
            (Principal::Caller(caller), None) => Err(Refusal::NotAdmin(caller.name.clone()).into()),
        }
    }

    /// Counts the decision and writes its audit line; returns once it is written. An
    /// error means it could not be: a decision to carry something out must then not be.
    pub(crate) async fn record(&self, entry: &Entry<'_>) -> Result<(), CallerError> {
        let counted = match entry.outcome.unwrap_or(Outcome::Allowed) {
            Outcome::Allowed => Some(DecisionOutcome::Allowed),
            Outcome::Malformed => Some(DecisionOutcome::Malformed),
            Outcome::Refused => entry.reason_label,
            // The result of a change was counted with its decision.
            Outcome::Done | Outcome::Failed => None,
        };
        if let Some(outcome) = counted {
            self.metrics.decision(entry.method, outcome);
            // In the call's trace: the caller and what was decided.
            if crate::telemetry::traces::enabled() {
                let span = crate::telemetry::traces::Trace::current();
                if !entry.caller.is_empty() {
                    span.set("caller", entry.caller.to_owned());
                }
                span.set("decision", crate::metrics::LabelValue::as_str(outcome));
            }
        }
        if let Some(audit) = &self.audit {
            if let Err(error) = audit.record(entry).await {
                audit.metrics().unrecorded.inc();
                return Err(error.into());
            }
        }
        Ok(())
    }
}
