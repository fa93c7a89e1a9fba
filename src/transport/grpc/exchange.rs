//! ExchangeToken: the gRPC mirror of `POST /token`, with the same flow
//! (`transport::exchange`) and the RFC 6749 error code at the head of each refusal's
//! message.

use tonic::{Request, Status};

use super::{wire::timestamp, GrpcService};
use crate::{
    authority::txn::{ExchangeError, ExchangeForm, OAuthError, TXN_TOKEN_TYPE},
    pb,
    transport::{connection::ConnectionInfo, exchange::Exchanger},
};

impl GrpcService {
    pub(super) fn exchanger(&self) -> Exchanger {
        Exchanger {
            authority: self.authority.clone(),
            callers: self.callers.clone(),
            signing_pool: self.signing_pool.clone(),
            metrics: self.metrics.clone(),
        }
    }

    pub(super) async fn exchange(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<pb::ExchangeTokenResponse, Status> {
        let exchanger = self.exchanger();
        let Some(active) = exchanger.enabled() else {
            return Err(Status::unimplemented(
                "Txn-Tokens are off: the policy has no [txn] table",
            ));
        };
        let authorizations: Vec<&str> = request
            .metadata()
            .get_all("authorization")
            .iter()
            .map(|value| value.to_str().unwrap_or(""))
            .collect();
        let connection = request.extensions().get::<ConnectionInfo>();
        let message = request.get_ref();
        // proto3 cannot tell an empty string from an absent one; RFC 6749 treats both alike.
        let field = |value: &str| Some(value.to_owned()).filter(|value| !value.is_empty());
        let form = ExchangeForm {
            grant_type: field(&message.grant_type),
            requested_token_type: field(&message.requested_token_type),
            audience: field(&message.audience),
            scope: field(&message.scope),
            subject_token: field(&message.subject_token),
            subject_token_type: field(&message.subject_token_type),
            request_context: field(&message.request_context),
            request_details: field(&message.request_details),
        };
        let exchanged = exchanger
            .exchange(&active, authorizations.into_iter(), connection, Ok(form))
            .await
            .map_err(|error| exchange_status(&error))?;
        Ok(pb::ExchangeTokenResponse {
            access_token: exchanged.token,
            issued_token_type: TXN_TOKEN_TYPE.to_owned(),
            token_type: "N_A".to_owned(),
            txn: exchanged.txn,
            expires_at: Some(timestamp(exchanged.expires_at)),
        })
    }
}

/// The only place a Txn-Token refusal becomes a gRPC code; the message keeps the RFC 6749
/// code first, as the HTTP endpoint's `error` member.
pub(super) fn exchange_status(error: &ExchangeError) -> Status {
    let message = error.to_string();
    match error.error {
        OAuthError::InvalidRequest
        | OAuthError::UnsupportedGrantType
        | OAuthError::InvalidGrant
        | OAuthError::InvalidTarget => Status::invalid_argument(message),
        OAuthError::InvalidScope | OAuthError::UnauthorizedClient => {
            Status::permission_denied(message)
        }
        OAuthError::InvalidClient => Status::unauthenticated(message),
        OAuthError::SlowDown => Status::resource_exhausted(message),
        OAuthError::TemporarilyUnavailable => Status::unavailable(message),
        OAuthError::ServerError => Status::internal(message),
    }
}
