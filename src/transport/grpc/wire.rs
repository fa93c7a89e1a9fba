//! Between the authority's types and the wire's: errors to gRPC statuses (in one place),
//! and keys, reasons and times to their protobuf messages.

use tonic::Status;

use crate::{
    authority::domain::InvalidArgument,
    authority::keys::KeyState,
    authority::keyset::KeySet,
    authority::signing_pool::PoolError,
    authority::{status::StatusError, AuthorityError, ErrorKind},
    callers::CallerError,
    pb,
    telemetry::chain,
};
use token_authority_jose::{crypto::Algorithm, jwt::verify::Reason};

/// UNAUTHENTICATED when the credentials prove nobody, RESOURCE_EXHAUSTED when the peer
/// failed too often to be heard now, PERMISSION_DENIED when the policy refuses, UNAVAILABLE
/// when the decision could not be recorded (and so was not carried out); the message names
/// what was wrong or refused, never a credential.
impl From<CallerError> for Status {
    fn from(error: CallerError) -> Status {
        if let CallerError::NotRecorded(_) = error {
            Status::unavailable(error.to_string())
        } else if matches!(error, CallerError::Throttled { .. }) {
            Status::resource_exhausted(error.to_string())
        } else if error.is_unauthenticated() {
            Status::unauthenticated(error.to_string())
        } else {
            Status::permission_denied(error.to_string())
        }
    }
}

/// A full signing queue is back-pressure the client can act on (retry with backoff); a
/// stopped pool is a server going away; a signer past its deadline is out of reach for now.
impl From<PoolError> for Status {
    fn from(error: PoolError) -> Status {
        match error {
            PoolError::Busy(_) => Status::resource_exhausted(error.to_string()),
            PoolError::Stopped => Status::unavailable("the server is shutting down"),
            PoolError::TimedOut(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// The only place errors become gRPC codes. Client mistakes say what is wrong; our own
/// failures say "internal error" while the cause goes to the log.
impl From<AuthorityError> for Status {
    fn from(error: AuthorityError) -> Status {
        let message = error.public_message();
        match error.kind() {
            ErrorKind::InvalidArgument => Status::invalid_argument(message),
            ErrorKind::FailedPrecondition => Status::failed_precondition(message),
            ErrorKind::NotFound => Status::not_found(message),
            // Nothing changed, and the client may retry.
            ErrorKind::Unavailable => {
                tracing::error!(error = %chain(&error), "request failed");
                Status::unavailable(message)
            }
            ErrorKind::Internal => {
                tracing::error!(error = %chain(&error), "request failed");
                Status::internal(message)
            }
        }
    }
}

/// Status list errors, the same way.
impl From<StatusError> for Status {
    fn from(error: StatusError) -> Status {
        let message = error.to_string();
        match error {
            StatusError::UnknownJti
            | StatusError::UnknownList(_)
            | StatusError::NotHandedOut { .. }
            | StatusError::NotYetHandedOut { .. } => Status::not_found(message),
            StatusError::Final { .. } | StatusError::Off => Status::failed_precondition(message),
            StatusError::Store(_) | StatusError::Exhausted => {
                tracing::error!(error = %chain(&error), "status list request failed");
                Status::unavailable("the status lists cannot be written now; nothing changed")
            }
            StatusError::Damaged(_) | StatusError::Poisoned | StatusError::Sign(_) => {
                tracing::error!(error = %chain(&error), "status list request failed");
                Status::internal("internal error")
            }
        }
    }
}

pub(in crate::transport) fn timestamp(unix_seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

pub(super) fn reason_to_pb(reason: Reason) -> pb::VerifyFailureReason {
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
        Reason::LifetimeTooLong => R::LifetimeTooLong,
        Reason::WrongTokenType => R::WrongTokenType,
        Reason::RevokedToken => R::RevokedToken,
        Reason::SuspendedToken => R::SuspendedToken,
        Reason::StatusUnavailable => R::StatusUnavailable,
    }
}

pub(in crate::transport) fn state_to_pb(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Next => pb::KeyState::Next,
        KeyState::Current => pb::KeyState::Current,
        KeyState::Retired => pb::KeyState::Retired,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

pub(super) fn key_infos(keys: &KeySet) -> Vec<pb::KeyInfo> {
    let timing = keys.timing();
    keys.infos()
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
            location: match record.token_object_id {
                Some(_) => pb::KeyLocation::Pkcs11Token,
                None => pb::KeyLocation::Process,
            } as i32,
            token_object_id: record.token_object_id.clone().unwrap_or_default(),
        })
        .collect()
}

/// An optional algorithm name from a request: empty means the default; names are exact.
pub(super) fn parse_algorithm(name: &str) -> Result<Option<Algorithm>, AuthorityError> {
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

pub(super) fn jwks_response(keys: &KeySet) -> pb::GetJwksResponse {
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
