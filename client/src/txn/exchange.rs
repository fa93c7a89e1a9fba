//! The edge's side: [`TxnExchanger`] asks the authority for a Txn-Token (ExchangeToken)
//! in exchange for the access token a request came with, and [`ExchangeTxnTokenLayer`]
//! does so once per incoming request, before the handler runs, which then finds the
//! Txn-Token in its extensions and current for [`super::ForwardTxnToken`].

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, request::Parts, Request, Response};
use tonic::{metadata::MetadataValue, transport::Channel};
use tracing::{field, Instrument as _};

use super::{
    layer::{is_grpc, refuse, unavailable, BoxFuture},
    TxnToken, CURRENT,
};
use crate::{
    bearer::bearer, error::ClientError, layer::ResponseBody, pb,
    pb::token_authority_client::TokenAuthorityClient, telemetry, token_source::CALL_TIMEOUT,
    Credentials, Verifier,
};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What the edge asks a Txn-Token for: the transaction's scope, and the details the
/// authority's policy may copy into `tctx` (`request_details`) and `rctx`
/// (`request_context`).
#[derive(Clone, Debug, Default)]
pub struct TxnRequest {
    /// Space-delimited scopes, within the access token's and the edge's `[[txn_rule]]`.
    pub scope: String,
    /// A JSON object: the request's parameters (`order_id`, ...).
    pub request_details: Option<serde_json::Value>,
    /// A JSON object: the requester's environment (`req_ip`, `authn`).
    pub request_context: Option<serde_json::Value>,
}

/// Exchanges access tokens for Txn-Tokens with the authority, and verifies what it gets
/// back before handing it out (a Txn-Token from anyone but the authority is refused).
#[derive(Clone, Debug)]
pub struct TxnExchanger {
    client: TokenAuthorityClient<Channel>,
    credentials: Credentials,
    verifier: Verifier,
    trust_domain: String,
}

impl TxnExchanger {
    /// Asks the authority on `channel`, proving the edge's identity with `credentials`
    /// (as a `TokenSource` does), for Txn-Tokens of `trust_domain`, verified by `verifier`.
    pub fn new(
        channel: Channel,
        credentials: Credentials,
        verifier: Verifier,
        trust_domain: impl Into<String>,
    ) -> TxnExchanger {
        TxnExchanger {
            client: TokenAuthorityClient::new(channel),
            credentials,
            verifier,
            trust_domain: trust_domain.into(),
        }
    }

    /// A Txn-Token for `access_token`'s subject, with `asked`'s scope and details. The
    /// call is a `txn_exchange` span (a child of the caller's), whose trace context the
    /// ExchangeToken call carries.
    pub async fn exchange(
        &self,
        access_token: &str,
        asked: &TxnRequest,
    ) -> Result<TxnToken, ClientError> {
        // How it ended only: never the access token, the Txn-Token, the credential, or the
        // scope and details asked for.
        let span = tracing::info_span!(
            "txn_exchange",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = telemetry::SERVICE,
            rpc.method = "ExchangeToken",
            outcome = field::Empty,
            error = field::Empty,
            rpc.grpc.status_code = field::Empty,
            otel.status_code = field::Empty,
        );
        let result = self.ask(access_token, asked).instrument(span.clone()).await;
        telemetry::record_call(&span, &result, "exchanged");
        result
    }

    /// One ExchangeToken call and the check of its answer, inside the `txn_exchange` span.
    async fn ask(&self, access_token: &str, asked: &TxnRequest) -> Result<TxnToken, ClientError> {
        let text = |value: &Option<serde_json::Value>| {
            value.as_ref().map(ToString::to_string).unwrap_or_default()
        };
        let mut request = tonic::Request::new(pb::ExchangeTokenRequest {
            grant_type: GRANT_TYPE.into(),
            requested_token_type: TXN_TOKEN_TYPE.into(),
            audience: self.trust_domain.clone(),
            scope: asked.scope.clone(),
            subject_token: access_token.into(),
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            request_context: text(&asked.request_context),
            request_details: text(&asked.request_details),
        });
        if let Some(authorization) = self.credentials.authorization().await? {
            let value: MetadataValue<_> = authorization
                .parse()
                .map_err(|_| ClientError::BadCredential)?;
            request.metadata_mut().insert("authorization", value);
        }
        telemetry::inject(&tracing::Span::current(), request.metadata_mut());
        request.set_timeout(CALL_TIMEOUT);
        let mut client = self.client.clone();
        let call = client.exchange_token(request);
        let answer = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => answer?.into_inner(),
            Err(_) => {
                return Err(ClientError::Rpc(tonic::Status::deadline_exceeded(format!(
                    "ExchangeToken did not answer within {CALL_TIMEOUT:?}"
                ))))
            }
        };
        self.verifier
            .verify_txn(&answer.access_token, &self.trust_domain)
            .map_err(ClientError::TxnToken)
    }
}

/// What the edge's caller hears when its access token was refused.
const NOT_ACCEPTED: &str = "the access token is not accepted for this request";
/// What it hears when the authority could not be asked, or failed.
const UNAVAILABLE: &str = "the transaction token service is unavailable; retry later";

/// Why an exchange gave no Txn-Token, as the edge's caller is told.
#[derive(Debug, PartialEq, Eq)]
enum NotExchanged {
    /// The authority refused the request (the access token, the scope): 401, not retried.
    Refused,
    /// The authority was out of reach, too slow or failing, or its answer did not verify:
    /// 503, which a client retries.
    Unavailable,
}

fn not_exchanged(error: &ClientError) -> NotExchanged {
    use tonic::Code;
    match error {
        ClientError::Rpc(status)
            if matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::NotFound
            ) =>
        {
            NotExchanged::Refused
        }
        _ => NotExchanged::Unavailable,
    }
}

/// How the edge describes a request to the authority: its scope and details.
pub type Describe = Arc<dyn Fn(&Parts) -> TxnRequest + Send + Sync>;

/// A tower layer for the edge: one ExchangeToken per incoming request, on its
/// `authorization: Bearer` access token, before the inner service runs.
#[derive(Clone)]
pub struct ExchangeTxnTokenLayer {
    exchanger: TxnExchanger,
    describe: Describe,
}

impl fmt::Debug for ExchangeTxnTokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeTxnTokenLayer")
            .field("exchanger", &self.exchanger)
            .finish_non_exhaustive()
    }
}

impl ExchangeTxnTokenLayer {
    /// Exchanges with `exchanger`, asking what `describe` says of each request.
    pub fn new(
        exchanger: TxnExchanger,
        describe: impl Fn(&Parts) -> TxnRequest + Send + Sync + 'static,
    ) -> ExchangeTxnTokenLayer {
        ExchangeTxnTokenLayer {
            exchanger,
            describe: Arc::new(describe),
        }
    }
}

impl<S> tower_layer::Layer<S> for ExchangeTxnTokenLayer {
    type Service = ExchangeTxnToken<S>;

    fn layer(&self, inner: S) -> ExchangeTxnToken<S> {
        ExchangeTxnToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ExchangeTxnTokenLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct ExchangeTxnToken<S> {
    inner: S,
    layer: ExchangeTxnTokenLayer,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for ExchangeTxnToken<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let grpc = is_grpc(&parts.headers);
            let access_token = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(bearer)
                .map(str::to_owned);
            let Some(access_token) = access_token else {
                return Ok(refuse(
                    "authorization: Bearer <access token> is required".into(),
                    grpc,
                ));
            };
            let asked = (layer.describe)(&parts);
            let token = match layer.exchanger.exchange(&access_token, &asked).await {
                Ok(token) => token,
                Err(error) => {
                    // The authority's own words name the edge's policy and the authority's
                    // addresses: they go to the edge's log, not to the outside caller.
                    tracing::warn!(%error, "no Txn-Token for the request");
                    return Ok(match not_exchanged(&error) {
                        NotExchanged::Refused => refuse(NOT_ACCEPTED.into(), grpc),
                        NotExchanged::Unavailable => unavailable(UNAVAILABLE.into(), grpc),
                    });
                }
            };
            parts.extensions.insert(token.clone());
            let future = inner.call(Request::from_parts(parts, body));
            CURRENT
                .scope(token, async move {
                    future
                        .await
                        .map(|response| response.map(ResponseBody::inner))
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edges_caller_is_told_whether_to_retry_and_nothing_of_the_authority() {
        let rpc = |code| ClientError::Rpc(tonic::Status::new(code, "internal detail"));
        for (error, expected) in [
            (rpc(tonic::Code::InvalidArgument), NotExchanged::Refused),
            (rpc(tonic::Code::PermissionDenied), NotExchanged::Refused),
            (rpc(tonic::Code::Unauthenticated), NotExchanged::Refused),
            (rpc(tonic::Code::Unavailable), NotExchanged::Unavailable),
            (
                rpc(tonic::Code::DeadlineExceeded),
                NotExchanged::Unavailable,
            ),
            (rpc(tonic::Code::Cancelled), NotExchanged::Unavailable),
            (
                rpc(tonic::Code::ResourceExhausted),
                NotExchanged::Unavailable,
            ),
            (rpc(tonic::Code::Internal), NotExchanged::Unavailable),
            (ClientError::BadCredential, NotExchanged::Unavailable),
            (
                ClientError::BadAnswer("expires_at"),
                NotExchanged::Unavailable,
            ),
        ] {
            assert_eq!(not_exchanged(&error), expected, "{error}");
        }
    }
}
