//! [`RequireTxnTokenLayer`]: the incoming side. A request whose `Txn-Token` header the
//! verifier accepts for the trust domain reaches the inner service with the [`TxnToken`]
//! in its extensions and current (`txn::current`) while the service's future runs; any
//! other is answered here: a gRPC request with UNAUTHENTICATED, anything else with `401`
//! and the reason as a line of text. The `authorization` header is never read: a
//! Txn-Token is not a credential, and an access token is not a Txn-Token.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};

use super::{TxnToken, CURRENT, TXN_TOKEN_HEADER};
use crate::{layer::ResponseBody, Rejection, Verifier};

/// A tower layer that lets through only requests with a valid Txn-Token.
#[derive(Clone, Debug)]
pub struct RequireTxnTokenLayer {
    verifier: Verifier,
    trust_domain: String,
}

impl RequireTxnTokenLayer {
    /// Txn-Tokens of `trust_domain` (the authority's `[txn] trust_domain`), verified by
    /// `verifier`.
    pub fn new(verifier: Verifier, trust_domain: impl Into<String>) -> RequireTxnTokenLayer {
        RequireTxnTokenLayer {
            verifier,
            trust_domain: trust_domain.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for RequireTxnTokenLayer {
    type Service = RequireTxnToken<S>;

    fn layer(&self, inner: S) -> RequireTxnToken<S> {
        RequireTxnToken {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireTxnTokenLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct RequireTxnToken<S> {
    inner: S,
    layer: RequireTxnTokenLayer,
}

/// Why a request was not let through.
#[derive(Debug)]
pub(super) enum Refusal {
    Missing,
    Several,
    NotText,
    Rejected(Rejection),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str("a Txn-Token header is required"),
            Refusal::Several => f.write_str("the request carries more than one Txn-Token header"),
            Refusal::NotText => f.write_str("the Txn-Token header is not text"),
            // Never the token itself.
            Refusal::Rejected(rejection) => write!(f, "the Txn-Token is refused: {rejection}"),
        }
    }
}

/// The one check of an incoming request's `Txn-Token` header.
pub(super) fn check(
    headers: &HeaderMap,
    verifier: &Verifier,
    trust_domain: &str,
) -> Result<TxnToken, Refusal> {
    let mut values = headers.get_all(TXN_TOKEN_HEADER).iter();
    let value = values.next().ok_or(Refusal::Missing)?;
    // The draft: "The value of this header MUST be exactly one Txn-Token."
    if values.next().is_some() {
        return Err(Refusal::Several);
    }
    let token = value.to_str().map_err(|_| Refusal::NotText)?.trim();
    verifier
        .verify_txn(token, trust_domain)
        .map_err(Refusal::Rejected)
}

pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a refused request: UNAUTHENTICATED to gRPC, `401` to anything else.
pub(super) fn refuse<B>(message: String, grpc: bool) -> Response<ResponseBody<B>> {
    answer(
        tonic::Code::Unauthenticated,
        StatusCode::UNAUTHORIZED,
        message,
        grpc,
    )
}

/// The answer to a request that could not be served for now (the authority out of reach):
/// UNAVAILABLE to gRPC, `503` to anything else, both of which clients retry.
pub(super) fn unavailable<B>(message: String, grpc: bool) -> Response<ResponseBody<B>> {
    answer(
        tonic::Code::Unavailable,
        StatusCode::SERVICE_UNAVAILABLE,
        message,
        grpc,
    )
}

fn answer<B>(
    code: tonic::Code,
    http: StatusCode,
    message: String,
    grpc: bool,
) -> Response<ResponseBody<B>> {
    if grpc {
        return tonic::Status::new(code, message)
            .into_http::<()>()
            .map(|()| ResponseBody::refusal(Bytes::new()));
    }
    let mut response = Response::new(ResponseBody::refusal(Bytes::from(message + "\n")));
    *response.status_mut() = http;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The boxed future of the layers of this module.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RequireTxnToken<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let checked = check(
            request.headers(),
            &self.layer.verifier,
            &self.layer.trust_domain,
        );
        match checked {
            Ok(token) => {
                request.extensions_mut().insert(token.clone());
                let future = self.inner.call(request);
                Box::pin(CURRENT.scope(token, async move {
                    future
                        .await
                        .map(|response| response.map(ResponseBody::inner))
                }))
            }
            Err(refusal) => {
                let response = refuse(refusal.to_string(), is_grpc(request.headers()));
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
