//! Why a Txn-Token request is refused, as RFC 6749 section 5.2 words it: an error code
//! and a description. The transports map the code to an HTTP status (`transport::token`)
//! and to a gRPC code (`transport::grpc::exchange`), each in one place.

/// The RFC 6749 / RFC 8693 error codes a token endpoint answers with, and the two this
/// server adds for its own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OAuthError {
    /// A parameter is missing, repeated, malformed or of an unsupported value.
    InvalidRequest,
    /// The requester's credentials prove nothing, or there are none.
    InvalidClient,
    /// The subject token is invalid, expired, or not one this server accepts.
    InvalidGrant,
    /// The requester may not get Txn-Tokens.
    UnauthorizedClient,
    /// `grant_type` is not the token exchange.
    UnsupportedGrantType,
    /// A scope is malformed, not the rule's, or wider than the subject token's.
    InvalidScope,
    /// `audience` is not the trust domain.
    InvalidTarget,
    /// Too many failed authentications from the requester's address.
    SlowDown,
    /// Nothing was issued, and a retry may succeed (the audit log or the signer).
    TemporarilyUnavailable,
    /// Our own failure.
    ServerError,
}

impl OAuthError {
    /// The `error` member of the response.
    pub(crate) fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidTarget => "invalid_target",
            OAuthError::SlowDown => "slow_down",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthError::ServerError => "server_error",
        }
    }
}

/// A refused Txn-Token request. The description never carries a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", error.code())]
pub(crate) struct ExchangeError {
    pub(crate) error: OAuthError,
    pub(crate) description: String,
    /// Seconds until a throttled address is heard again (HTTP's `Retry-After`).
    pub(crate) retry_after_secs: Option<u64>,
}

impl ExchangeError {
    pub(crate) fn new(error: OAuthError, description: impl Into<String>) -> ExchangeError {
        ExchangeError {
            error,
            description: description.into(),
            retry_after_secs: None,
        }
    }
}
