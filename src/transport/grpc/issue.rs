//! IssueToken: who is asking, what they ask, whether the policy grants it, the signature
//! (on the signing pool for RSA), and the audit line before the token leaves. Each refusal
//! is audited and answered with its own status.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{Request, Status};

use super::{
    wire::{parse_algorithm, timestamp},
    GrpcService,
};
use crate::{
    authority::domain::{IssueRequest, RequestedTtl, TtlPolicy},
    authority::{status::Slot, AuthorityError, Issued},
    callers::{
        audit::Entry,
        audit::Outcome,
        policy::{Grant, StatusRule},
        Principal,
    },
    metrics::{DecidedMethod, DecisionOutcome},
    pb,
    telemetry::traces,
};
use token_authority_jose::crypto::Algorithm;

impl GrpcService {
    pub(super) async fn issue(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<pb::IssueTokenResponse, Status> {
        let principal = self.issuing_principal(&request).await?;
        let (mut parsed, alg) = self
            .parse_issue(request.into_inner(), principal.as_ref())
            .await?;
        let principal = principal.unwrap_or(Principal::Anonymous);
        let Grant {
            rule,
            ttl,
            claims,
            expires_by,
            status,
        } = self.grant(&principal, &parsed).await?;
        parsed.ttl = ttl;
        let parsed = Arc::new(parsed);
        let slot = match self.status_slot(ttl, status).await {
            Ok(slot) => slot,
            Err(status) => {
                self.granted_but_failed();
                self.issue_refused(Some(&principal), Outcome::Failed, None, &status)
                    .await;
                return Err(status);
            }
        };
        let (issued, signed_at) = match self.sign(&parsed, claims, expires_by, alg, slot).await {
            Ok(signed) => signed,
            Err(status) => {
                // Allowed, then nothing issued: its line says so (`failed`).
                self.granted_but_failed();
                self.issue_refused(Some(&principal), Outcome::Failed, None, &status)
                    .await;
                return Err(status);
            }
        };
        self.record_issued(&principal, &parsed, rule, &issued)
            .await?;
        tracing::debug!(kid = %issued.kid, jti = %issued.jti, "token issued");
        Ok(issued_response(issued, signed_at))
    }

    /// The caller, or `None` when the authority is open (no policy, loopback listener):
    /// then credentials are not even read.
    async fn issuing_principal(
        &self,
        request: &Request<pb::IssueTokenRequest>,
    ) -> Result<Option<Principal>, Status> {
        if self.callers.is_open() {
            return Ok(None);
        }
        match self.authenticate(request).await {
            Ok(principal) => Ok(Some(principal)),
            Err(error) => {
                let label = error.label();
                let status = Status::from(error);
                self.issue_refused(None, Outcome::Refused, label, &status)
                    .await;
                Err(status)
            }
        }
    }

    /// The request as the domain takes it, and the algorithm asked for (the default when
    /// none), which this server must sign with.
    async fn parse_issue(
        &self,
        request: pb::IssueTokenRequest,
        principal: Option<&Principal>,
    ) -> Result<(IssueRequest, Option<Algorithm>), Status> {
        let settings = self.authority.settings();
        let parsed = IssueRequest::parse(
            request.subject,
            request.audience,
            request.ttl.map(|d| RequestedTtl {
                seconds: d.seconds,
                nanos: d.nanos,
            }),
            &request.claims_json,
            TtlPolicy {
                default: settings.default_ttl,
                max: settings.max_ttl,
            },
        )
        .map_err(AuthorityError::from)
        .and_then(|parsed| Ok((parsed, parse_algorithm(&request.algorithm)?)))
        .and_then(|(parsed, alg)| {
            settings.algorithm(alg).map_err(AuthorityError::from)?;
            Ok((parsed, alg))
        });
        match parsed {
            Ok(parsed) => Ok(parsed),
            Err(error) => {
                let status = Status::from(error);
                self.issue_refused(
                    principal,
                    Outcome::Malformed,
                    Some(DecisionOutcome::Malformed),
                    &status,
                )
                .await;
                Err(status)
            }
        }
    }

    /// What the policy grants `principal` for `parsed`: the rule, the ttl, the claims it
    /// adds and the latest `exp`.
    async fn grant(&self, principal: &Principal, parsed: &IssueRequest) -> Result<Grant, Status> {
        match self.callers.authorize_issue(principal, parsed) {
            Ok(grant) => Ok(grant),
            Err(error) => {
                let label = error.label();
                let status = Status::from(error);
                self.issue_refused(Some(principal), Outcome::Refused, label, &status)
                    .await;
                Err(status)
            }
        }
    }

    /// The place in a list the token gets, if it gets one: by its rule, else when it
    /// lives at least `--status-min-ttl`.
    async fn status_slot(&self, ttl: u64, rule: StatusRule) -> Result<Option<Slot>, Status> {
        let lists = self.authority.status_lists();
        let wanted = match rule {
            StatusRule::Forbidden => false,
            StatusRule::Required => true,
            StatusRule::ByTtl => lists.is_some_and(|lists| lists.applies_to(ttl)),
        };
        let Some(lists) = lists.filter(|_| wanted) else {
            if wanted {
                return Err(Status::failed_precondition(
                    "the caller's rule requires a status, and this authority keeps no status lists",
                ));
            }
            return Ok(None);
        };
        match lists.allocate(self.now()).await {
            Ok(slot) => Ok(Some(slot)),
            // The store is down: IssueToken stays up (the keys are in memory), its tokens
            // without a status, unless the rule requires one.
            Err(error) if error.is_unavailable() && rule != StatusRule::Required => {
                lists.issued_without_status(&error, self.now());
                Ok(None)
            }
            Err(error) => Err(Status::from(error)),
        }
    }

    /// The signed token and the instant it was signed at (to the nanosecond).
    ///
    /// An RSA signature is hundreds of microseconds of CPU: it runs on the signing pool, in
    /// arrival order. ECDSA and Ed25519 sign in tens of microseconds, less than any hand-off
    /// costs, so they sign inline (measured: README, Performance).
    async fn sign(
        &self,
        parsed: &Arc<IssueRequest>,
        claims: serde_json::Map<String, serde_json::Value>,
        expires_by: Option<u64>,
        alg: Option<Algorithm>,
        slot: Option<Slot>,
    ) -> Result<(Issued, Duration), Status> {
        let resolved = self
            .authority
            .settings()
            .algorithm(alg)
            .map_err(AuthorityError::from)?;
        let sign = {
            let authority = Arc::clone(&self.authority);
            let parsed = Arc::clone(parsed);
            let clock = self.authority.clock();
            // The signing pool's threads have no span of their own: the signature's span
            // is made under the RPC's, wherever it runs.
            let rpc = traces::Trace::current();
            move || {
                let started = Instant::now();
                let signed_at = clock.since_epoch();
                let issued = traces::signing(&rpc, || {
                    authority.issue_by(&parsed, &claims, alg, signed_at.as_secs(), expires_by, slot)
                });
                (issued.map(|issued| (issued, signed_at)), started.elapsed())
            }
        };
        let signers = &self.authority.settings().signers;
        // A token holding a call past the deadline has every signing thread waiting on it
        // soon: refused here, the call does not queue behind them for the deadline.
        if signers.is_stalled() {
            return Err(AuthorityError::SignerUnavailable(
                token_authority_jose::crypto::CryptoError::Signing,
            )
            .into());
        }
        let (issued, signing) = if resolved.is_slow_to_sign() || signers.blocks() {
            self.signing_pool.run(sign).await?
        } else {
            sign()
        };
        let (issued, signed_at) = issued?;
        traces::record_signing_key(&issued.kid, issued.alg.name());
        self.metrics.token_issued(issued.alg, signing);
        Ok((issued, signed_at))
    }

    /// A call the policy allowed that then issued nothing (no status index, no signature):
    /// counted `allowed` all the same, as `record_issued` counts the calls that issue, so
    /// that allowed decisions outrunning tokens issued say that issuing fails, and an outage
    /// does not read as a jump in the share of refusals.
    fn granted_but_failed(&self) {
        self.metrics
            .decision(DecidedMethod::IssueToken, DecisionOutcome::Allowed);
        if traces::enabled() {
            traces::Trace::current().set("decision", "allowed");
        }
    }

    /// The token leaves only once its line is written (else UNAVAILABLE).
    async fn record_issued(
        &self,
        principal: &Principal,
        parsed: &IssueRequest,
        rule: Option<usize>,
        issued: &Issued,
    ) -> Result<(), Status> {
        self.callers
            .record(&Entry {
                at: issued.issued_at,
                method: DecidedMethod::IssueToken,
                caller: principal.name(),
                via: if self.callers.is_open() {
                    "open"
                } else {
                    principal.via()
                },
                outcome: Some(Outcome::Allowed),
                subject: Some(&parsed.subject),
                audiences: &parsed.audiences,
                ttl: Some(parsed.ttl),
                jti: Some(&issued.jti),
                kid: Some(&issued.kid),
                rule,
                ..Entry::default()
            })
            .await?;
        Ok(())
    }
}

fn issued_response(issued: Issued, signed_at: Duration) -> pb::IssueTokenResponse {
    pb::IssueTokenResponse {
        token: issued.token,
        key_id: issued.kid.to_string(),
        jti: issued.jti,
        // To the nanosecond (the `iat` claim is its whole seconds): a client measures the
        // token's life as expires_at - issued_at, and whole seconds would overstate it by up
        // to one.
        issued_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(issued.issued_at).unwrap_or(i64::MAX),
            nanos: i32::try_from(signed_at.subsec_nanos()).unwrap_or(0),
        }),
        expires_at: Some(timestamp(issued.expires_at)),
    }
}
