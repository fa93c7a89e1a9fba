//! The gRPC API (`tokenauthority.v1.TokenAuthority`): turns requests into domain values,
//! calls the authority, and maps its answers and errors to the wire. The only module besides
//! the server wiring that sees generated `pb` types.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use crate::{
    authority::signing_pool::SigningPool,
    authority::Authority,
    callers::{
        audit::{Limiter, Outcome},
        Callers, Principal,
    },
    metrics::{DecidedMethod, LabelValue, Method, Metrics},
    pb::{self, token_authority_server::TokenAuthority},
    telemetry::traces,
    transport::{
        connection::ConnectionInfo,
        listener::StreamReset,
        watch::{StatusFeed, WatchStream, WatcherPeer, Watchers},
    },
};

mod access;
mod exchange;
mod issue;
mod observe;
mod token_status;
mod verify;
pub(super) mod wire;

use self::observe::{observe, CallContext};
use self::wire::{jwks_response, key_infos, parse_algorithm};

/// Log lines of refused or malformed calls per second at most (a flood of bad calls must
/// not become a flood of log); the rest are counted and summed up in the next line.
const FAILED_CALL_LOG_LINES_PER_SECOND: u32 = 20;

/// The gRPC face of the authority.
#[derive(Debug, Clone)]
pub struct GrpcService {
    authority: Arc<Authority>,
    /// Who is calling and what they may get.
    callers: Arc<Callers>,
    metrics: Arc<Metrics>,
    /// Where RSA signatures run, off the reactor.
    signing_pool: Arc<SigningPool>,
    /// WatchKeys streams: their cap and limits.
    watchers: Arc<Watchers>,
    log_limiter: Arc<Limiter>,
}

impl GrpcService {
    pub fn new(
        authority: Arc<Authority>,
        callers: Arc<Callers>,
        metrics: Arc<Metrics>,
        signing_pool: Arc<SigningPool>,
        watchers: Arc<Watchers>,
    ) -> GrpcService {
        GrpcService {
            authority,
            callers,
            metrics,
            signing_pool,
            watchers,
            log_limiter: Arc::new(Limiter::new(FAILED_CALL_LOG_LINES_PER_SECOND)),
        }
    }
}

impl GrpcService {
    /// Unix seconds by the authority's clock: the only place the gRPC API reads the time,
    /// which the authority, the callers and the audit lines are then handed.
    fn now(&self) -> u64 {
        self.authority.clock().unix_now()
    }

    /// Audits the result of an admin change whose decision line was written before it. The
    /// change stands either way: a result line that cannot be written is in the server log
    /// and the audit metrics, and the caller still gets the result.
    async fn admin_result(
        &self,
        principal: &Principal,
        method: DecidedMethod,
        outcome: Outcome,
        detail: &str,
    ) {
        if let Err(status) = self.admin_line(principal, method, outcome, detail).await {
            tracing::error!(method = method.as_str(), detail, %status, "the result of an admin change could not be audited");
        }
    }
}

impl GrpcService {
    /// The trust domain of the policy's `[txn]`: Txn-Tokens are verified only when there
    /// is one.
    fn trust_domain(&self) -> Result<String, Status> {
        self.callers
            .active()
            .and_then(|active| {
                active
                    .policy
                    .txn
                    .as_ref()
                    .map(|txn| txn.trust_domain.clone())
            })
            .ok_or_else(|| {
                Status::failed_precondition("Txn-Tokens are off: the policy has no [txn] table")
            })
    }
}

/// How long RevokeKey waits for the other replicas to drop the revoked key.
const REVOCATION_CONFIRMATION_BOUND: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl TokenAuthority for GrpcService {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::IssueToken,
            CallContext::of(request.metadata()),
            async { self.issue(request).await.map(Response::new) },
        )
        .await
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::VerifyToken,
            CallContext::of(request.metadata()),
            async { self.verify(request.into_inner()).await.map(Response::new) },
        )
        .await
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::ExchangeToken,
            CallContext::of(request.metadata()),
            async { self.exchange(request).await.map(Response::new) },
        )
        .await
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::GetJwks,
            CallContext::of(_request.metadata()),
            async { Ok(Response::new(jwks_response(&self.authority.keys()))) },
        )
        .await
    }

    type WatchKeysStream = WatchStream;

    /// Public data, like GetJwks: no credentials are read. The RPC's latency is the time to
    /// open the stream; the stream itself lives in `transport::watch`.
    async fn watch_keys(
        &self,
        request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::WatchKeys,
            CallContext::of(request.metadata()),
            async {
                let peer = WatcherPeer {
                    addr: request
                        .extensions()
                        .get::<ConnectionInfo>()
                        .and_then(|info| info.remote_addr)
                        .map(|addr| addr.ip()),
                    reset: request.extensions().get::<StreamReset>().cloned(),
                };
                self.watchers
                    .open(
                        self.authority.subscribe(),
                        StatusFeed::of(&self.authority),
                        peer,
                    )
                    .map(Response::new)
            },
        )
        .await
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        observe(&self.metrics, &self.log_limiter, Method::RotateKeys, CallContext::of(request.metadata()), async {
            let principal = self.check_admin(&request, DecidedMethod::RotateKeys).await?;
            let request = request.into_inner();
            let alg = parse_algorithm(&request.algorithm)?;
            let asked = format!(
                "rotate algorithm {} force {}",
                alg.map_or("default", |alg| alg.name()),
                request.force
            );
            self.admin_line(&principal, DecidedMethod::RotateKeys, Outcome::Allowed, &asked)
                .await?;
            let outcome = match self.authority.rotate(alg, request.force, self.now()).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    let status = Status::from(error);
                    self.admin_result(&principal, DecidedMethod::RotateKeys, Outcome::Failed, status.message())
                        .await;
                    return Err(status);
                }
            };
            self.metrics.key_events(1, 0, 0);
            tracing::info!(current = %outcome.current_kid, previous = %outcome.previous_kid, "keys rotated");
            self.admin_result(
                &principal,
                DecidedMethod::RotateKeys,
                Outcome::Done,
                &format!("current {} previous {}", outcome.current_kid, outcome.previous_kid),
            )
            .await;
            Ok(Response::new(pb::RotateKeysResponse {
                current_key_id: outcome.current_kid,
                previous_key_id: outcome.previous_kid,
                keys: key_infos(&outcome.keys),
            }))
        })
        .await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::RevokeKey,
            CallContext::of(request.metadata()),
            async {
                let principal = self.check_admin(&request, DecidedMethod::RevokeKey).await?;
                let request = request.into_inner();
                if request.key_id.is_empty() {
                    return Err(Status::invalid_argument("key_id: is required"));
                }
                let reason = request.reason.trim();
                if reason.len() > 512 {
                    return Err(Status::invalid_argument("reason: is longer than 512 bytes"));
                }
                self.admin_line(
                    &principal,
                    DecidedMethod::RevokeKey,
                    Outcome::Allowed,
                    &format!("revoke {}", request.key_id),
                )
                .await?;
                let (current, keys) = match self
                    .authority
                    .revoke(&request.key_id, reason, self.now())
                    .await
                {
                    Ok(done) => done,
                    Err(error) => {
                        let status = Status::from(error);
                        self.admin_result(
                            &principal,
                            DecidedMethod::RevokeKey,
                            Outcome::Failed,
                            status.message(),
                        )
                        .await;
                        return Err(status);
                    }
                };
                self.metrics.key_events(0, 1, 0);
                let replicas = self
                    .authority
                    .await_replicas(REVOCATION_CONFIRMATION_BOUND)
                    .await
                    .unwrap_or_default();
                tracing::warn!(
                    kid = %request.key_id,
                    reason,
                    current = %current,
                    replicas_confirmed = replicas.confirmed,
                    replicas_live = replicas.live,
                    "key revoked"
                );
                self.admin_result(
                    &principal,
                    DecidedMethod::RevokeKey,
                    Outcome::Done,
                    &format!("revoked {} current {current}", request.key_id),
                )
                .await;
                Ok(Response::new(pb::RevokeKeyResponse {
                    current_key_id: current,
                    keys: key_infos(&keys),
                    replicas_confirmed: replicas.confirmed,
                    replicas_live: replicas.live,
                }))
            },
        )
        .await
    }

    async fn set_token_status(
        &self,
        request: Request<pb::SetTokenStatusRequest>,
    ) -> Result<Response<pb::SetTokenStatusResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::SetTokenStatus,
            CallContext::of(request.metadata()),
            async { self.set_status(request).await.map(Response::new) },
        )
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        observe(
            &self.metrics,
            &self.log_limiter,
            Method::ListKeys,
            CallContext::of(request.metadata()),
            async {
                let principal = self.check_admin(&request, DecidedMethod::ListKeys).await?;
                self.admin_line(
                    &principal,
                    DecidedMethod::ListKeys,
                    Outcome::Allowed,
                    "listed",
                )
                .await?;
                Ok(Response::new(pb::ListKeysResponse {
                    keys: key_infos(&self.authority.keys()),
                }))
            },
        )
        .await
    }
}
