//! The gRPC API (`tokenauthority.v1.TokenAuthority`): turns requests into domain values,
//! calls the authority, and maps its answers and errors to the wire. The only module besides
//! the server wiring that sees generated `pb` types.

use std::{
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tonic::{Request, Response, Status};
use tracing::{field, Instrument as _};

use crate::{
    admin::AdminToken,
    authority::{Authority, AuthorityError},
    crypto::Algorithm,
    domain::{InvalidArgument, IssueRequest, RequestedTtl, TtlPolicy},
    jwt::verify::Reason,
    keys::KeyState,
    keyset::KeySet,
    lifecycle::LifecycleError,
    metrics::Metrics,
    pb::{self, token_authority_server::TokenAuthority},
    signing_pool::SigningPool,
};

/// The gRPC face of the authority.
#[derive(Debug, Clone)]
pub struct GrpcService {
    authority: Arc<Authority>,
    admin: Arc<AdminToken>,
    metrics: Arc<Metrics>,
    /// Where RSA signatures run, off the reactor.
    signing_pool: Arc<SigningPool>,
}

impl GrpcService {
    pub fn new(
        authority: Arc<Authority>,
        admin: Arc<AdminToken>,
        metrics: Arc<Metrics>,
        signing_pool: Arc<SigningPool>,
    ) -> GrpcService {
        GrpcService {
            authority,
            admin,
            metrics,
            signing_pool,
        }
    }

    fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            // RFC 7235: the scheme is case-insensitive.
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            });
        match presented {
            Some(token) if self.admin.matches(token.trim()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("the admin token is not valid")),
            None => Err(Status::unauthenticated(
                "admin RPCs need metadata `authorization: Bearer <admin token>`",
            )),
        }
    }
}

/// The only place errors become gRPC codes. Client mistakes say what is wrong; our own
/// failures say "internal error" while the cause goes to the log.
impl From<AuthorityError> for Status {
    fn from(error: AuthorityError) -> Status {
        match error {
            AuthorityError::InvalidArgument(invalid) => {
                Status::invalid_argument(invalid.to_string())
            }
            AuthorityError::Lifecycle(
                error @ (LifecycleError::NotYetSafe { .. } | LifecycleError::LastUsableKey(..)),
            ) => Status::failed_precondition(error.to_string()),
            AuthorityError::Lifecycle(error @ LifecycleError::UnknownKey(_)) => {
                Status::not_found(error.to_string())
            }
            // A failed lifecycle write says whether it took effect, never why.
            AuthorityError::Store(error) if error.outcome().is_some() => {
                tracing::error!(%error, "request failed");
                Status::internal(error.outcome().unwrap_or("internal error"))
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Wall-clock unix seconds: the only place the gRPC API reads the clock.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn timestamp(unix_seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Runs one RPC inside a span carrying its method, and logs its outcome and latency: at
/// `info` for failures and admin RPCs, at `debug` for the data plane's successful calls.
/// An info line per IssueToken/VerifyToken is megabytes a second at full load, and cost
/// the service measurable throughput (see the README's Performance section); metrics
/// count and time every call whatever the log level.
async fn observe<T>(
    metrics: &Metrics,
    method: &'static str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let span = tracing::info_span!(
        "rpc",
        method,
        outcome = field::Empty,
        latency_us = field::Empty
    );
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    };
    span.record("outcome", outcome.as_str());
    let latency = started.elapsed();
    metrics.rpc(method, latency);
    span.record("latency_us", latency.as_micros() as u64);
    let data_plane = matches!(method, "IssueToken" | "VerifyToken" | "GetJwks");
    if data_plane && result.is_ok() {
        span.in_scope(|| tracing::debug!("rpc finished"));
    } else {
        span.in_scope(|| tracing::info!("rpc finished"));
    }
    result
}

fn reason_to_pb(reason: Reason) -> pb::VerifyFailureReason {
    use pb::VerifyFailureReason as R;
    match reason {
        Reason::Malformed => R::Malformed,
        Reason::UnknownKey => R::UnknownKey,
        Reason::BadSignature => R::BadSignature,
        Reason::AlgorithmNotAllowed => R::AlgorithmNotAllowed,
        Reason::Expired => R::Expired,
        Reason::NotYetValid => R::NotYetValid,
        Reason::IssuerMismatch => R::IssuerMismatch,
        Reason::AudienceMismatch => R::AudienceMismatch,
        Reason::RevokedKey => R::RevokedKey,
        Reason::MissingClaim => R::MissingClaim,
        Reason::UnsupportedHeader => R::UnsupportedHeader,
    }
}

fn state_to_pb(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Next => pb::KeyState::Next,
        KeyState::Current => pb::KeyState::Current,
        KeyState::Retired => pb::KeyState::Retired,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

fn key_infos(keys: &KeySet) -> Vec<pb::KeyInfo> {
    let timing = keys.timing();
    keys.records()
        .iter()
        .map(|record| pb::KeyInfo {
            key_id: record.kid.clone(),
            algorithm: record.alg.name().to_owned(),
            state: state_to_pb(record.state) as i32,
            created_at: Some(timestamp(record.created_at)),
            activated_at: record.activated_at.map(timestamp),
            retired_at: record.retired_at.map(timestamp),
            encrypted_at_rest: keys.encrypted_at_rest(),
            published_at: Some(timestamp(record.published_at)),
            activates_at: (record.state == KeyState::Next)
                .then(|| timestamp(record.published_at + timing.publish_lead)),
            delete_after: record.delete_after.map(timestamp),
            revoked_at: record.revoked_at.map(timestamp),
            revoked_reason: record.revoked_reason.clone().unwrap_or_default(),
        })
        .collect()
}

/// An optional algorithm name from a request: empty means the default; names are exact.
fn parse_algorithm(name: &str) -> Result<Option<Algorithm>, AuthorityError> {
    if name.is_empty() {
        return Ok(None);
    }
    Algorithm::from_name(name).map(Some).ok_or_else(|| {
        AuthorityError::InvalidArgument(InvalidArgument {
            field: "algorithm",
            reason: format!("{name:?} is not a supported algorithm (RS256, PS256, ES256, EdDSA)"),
        })
    })
}

fn jwks_response(keys: &KeySet) -> pb::GetJwksResponse {
    let jwks = keys.jwks();
    pb::GetJwksResponse {
        jwks_json: String::from_utf8_lossy(&jwks.body).into_owned(),
        keys: jwks
            .keys
            .iter()
            .map(|jwk| pb::Jwk {
                kty: jwk.kty.to_owned(),
                kid: jwk.kid.clone(),
                r#use: jwk.use_.to_owned(),
                alg: jwk.alg.to_owned(),
                n: jwk.n.clone().unwrap_or_default(),
                e: jwk.e.clone().unwrap_or_default(),
                crv: jwk.crv.unwrap_or_default().to_owned(),
                x: jwk.x.clone().unwrap_or_default(),
                y: jwk.y.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl TokenAuthority for GrpcService {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        observe(&self.metrics, "IssueToken", async {
            let request = request.into_inner();
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
            .map_err(AuthorityError::from)?;
            let alg = parse_algorithm(&request.algorithm)?;
            let sign = {
                let authority = Arc::clone(&self.authority);
                move || {
                    let started = Instant::now();
                    let issued = authority.issue(&parsed, alg, now());
                    (issued, started.elapsed())
                }
            };
            let resolved = self
                .authority
                .settings()
                .algorithm(alg)
                .map_err(AuthorityError::from)?;
            // An RSA signature is hundreds of microseconds of CPU: it runs on the signing
            // pool, in arrival order. ECDSA and Ed25519 sign in tens of microseconds, less
            // than any hand-off costs, so they sign inline (measured: README, Performance).
            let (issued, signing) = if resolved.is_slow_to_sign() {
                self.signing_pool
                    .run(sign)
                    .await
                    .map_err(|e| AuthorityError::Task(e.to_string()))?
            } else {
                sign()
            };
            let issued = issued?;
            self.metrics.token_issued(issued.alg, signing);
            tracing::debug!(kid = %issued.kid, jti = %issued.jti, "token issued");
            Ok(Response::new(pb::IssueTokenResponse {
                token: issued.token,
                key_id: issued.kid,
                jti: issued.jti,
                issued_at: Some(timestamp(issued.issued_at)),
                expires_at: Some(timestamp(issued.expires_at)),
            }))
        })
        .await
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        observe(&self.metrics, "VerifyToken", async {
            let request = request.into_inner();
            let audience = Some(request.audience.as_str()).filter(|a| !a.is_empty());
            let verdict = self.authority.verify(&request.token, audience, now());
            self.metrics.verified(verdict.as_ref().err().map(|rejection| rejection.reason));
            let response = match verdict {
                Ok(verified) => pb::VerifyTokenResponse {
                    valid: true,
                    reason: pb::VerifyFailureReason::Unspecified as i32,
                    subject: verified.subject,
                    key_id: verified.kid,
                    claims_json: serde_json::Value::Object(verified.claims).to_string(),
                    expires_at: Some(prost_types::Timestamp {
                        seconds: verified.expires_at,
                        nanos: 0,
                    }),
                    detail: String::new(),
                },
                Err(rejection) => {
                    // A verdict, not a failure of the RPC; counted by reason in the metrics.
                    tracing::debug!(reason = ?rejection.reason, detail = %rejection.detail, "token rejected");
                    pb::VerifyTokenResponse {
                        valid: false,
                        reason: reason_to_pb(rejection.reason) as i32,
                        detail: rejection.detail,
                        ..Default::default()
                    }
                }
            };
            Ok(Response::new(response))
        })
        .await
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        observe(&self.metrics, "GetJwks", async {
            Ok(Response::new(jwks_response(&self.authority.keys())))
        })
        .await
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        observe(&self.metrics, "RotateKeys", async {
            self.check_admin(&request)?;
            let request = request.into_inner();
            let alg = parse_algorithm(&request.algorithm)?;
            let outcome = self.authority.rotate(alg, request.force, now()).await?;
            self.metrics.key_events(1, 0, 0);
            tracing::info!(current = %outcome.current_kid, previous = %outcome.previous_kid, "keys rotated");
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
        observe(&self.metrics, "RevokeKey", async {
            self.check_admin(&request)?;
            let request = request.into_inner();
            if request.key_id.is_empty() {
                return Err(Status::invalid_argument("key_id: is required"));
            }
            let reason = request.reason.trim();
            if reason.len() > 512 {
                return Err(Status::invalid_argument("reason: is longer than 512 bytes"));
            }
            let (current, keys) = self
                .authority
                .revoke(&request.key_id, reason, now())
                .await?;
            self.metrics.key_events(0, 1, 0);
            tracing::warn!(kid = %request.key_id, reason, current = %current, "key revoked");
            Ok(Response::new(pb::RevokeKeyResponse {
                current_key_id: current,
                keys: key_infos(&keys),
            }))
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        observe(&self.metrics, "ListKeys", async {
            self.check_admin(&request)?;
            Ok(Response::new(pb::ListKeysResponse {
                keys: key_infos(&self.authority.keys()),
            }))
        })
        .await
    }
}
