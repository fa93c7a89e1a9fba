//! [`RequireBearerLayer`]: bearer-token authentication as a tower layer over any
//! `http::Request<B>` service (plain hyper, axum, tonic's server), for services that do not
//! go through tonic's interceptors.
//!
//! A request whose `authorization: Bearer` token the [`Verifier`] accepts reaches the inner
//! service with the [`Verified`] token in its extensions, as with
//! [`crate::interceptor::VerifyBearer`]. Any other request is answered here and the inner
//! service is never called: a gRPC request (`content-type: application/grpc*`) gets a
//! trailers-only UNAUTHENTICATED with the reason as its message, so gRPC clients see a status
//! rather than an HTTP error; anything else gets `401` with a `WWW-Authenticate: Bearer`
//! challenge (RFC 6750) and the reason as a line of text. As RFC 6750 section 3.1 asks, a
//! request with no bearer credential at all gets the bare challenge; a refused token gets
//! `error="invalid_token"` and the reason as `error_description`.
//!
//! ```no_run
//! # async fn run(verifier: token_authority_client::Verifier) {
//! use tower_layer::Layer as _;
//! let handler = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
//!     let verified = request.extensions().get::<token_authority_client::Verified>();
//!     let caller = verified.map(|v| v.subject.clone()).unwrap_or_default();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!         bytes::Bytes::from(format!("hello {caller}\n")),
//!     )))
//! });
//! let service = token_authority_client::RequireBearerLayer::new(verifier).layer(handler);
//! // Serve `service` with hyper (`hyper_util::service::TowerToHyperService`) or axum.
//! # }
//! ```

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::{
    bearer::{authenticate, Refusal},
    verifier::Verifier,
    Verified,
};

/// The longest `error_description` sent: enough for any reason, and a bound on what a
/// hostile token can make the answer carry.
const MAX_DESCRIPTION: usize = 256;

/// A tower layer that lets through only requests with a bearer token the [`Verifier`]
/// accepts, and puts the [`Verified`] token in their extensions.
#[derive(Clone, Debug)]
pub struct RequireBearerLayer {
    verifier: Verifier,
}

impl RequireBearerLayer {
    /// The layer for `ServiceBuilder::layer`, axum's `Router::layer` or tonic's
    /// `Server::builder().layer`.
    pub fn new(verifier: Verifier) -> RequireBearerLayer {
        RequireBearerLayer { verifier }
    }
}

impl<S> tower_layer::Layer<S> for RequireBearerLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> RequireBearer<S> {
        RequireBearer {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`RequireBearerLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct RequireBearer<S> {
    inner: S,
    verifier: Verifier,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RequireBearer<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().map_err(|_| ()));
        let kind = match authenticate(header, &self.verifier) {
            Ok(verified) => {
                request.extensions_mut().insert::<Verified>(verified);
                FutureKind::Called {
                    future: self.inner.call(request),
                }
            }
            Err(refusal) => FutureKind::Refused {
                response: Some(refuse(&refusal, is_grpc(request.headers()))),
            },
        };
        ResponseFuture { kind }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a refused request.
fn refuse<B>(refusal: &Refusal, grpc: bool) -> Response<ResponseBody<B>> {
    let message = refusal.to_string();
    if grpc {
        return tonic::Status::unauthenticated(message)
            .into_http::<()>()
            .map(|()| ResponseBody::refusal(Bytes::new()));
    }
    let challenge = match refusal {
        Refusal::Missing | Refusal::NotBearer => "Bearer".to_owned(),
        Refusal::Rejected(rejection) => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            quotable(&rejection.to_string())
        ),
    };
    let mut response = Response::new(ResponseBody::refusal(Bytes::from(message + "\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // `quotable` leaves only visible ASCII and spaces, which a header value always takes.
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `text` with only the characters RFC 6750 allows in `error_description` (visible ASCII
/// and space, but no `"` or `\`), the others as `?`, and at most `MAX_DESCRIPTION` of them.
fn quotable(text: &str) -> String {
    text.chars()
        .take(MAX_DESCRIPTION)
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

pin_project! {
    /// The future of [`RequireBearer`]: the inner service's answer, or the refusal.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: FutureKind<F, B>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, B> {
        Called { #[pin] future: F },
        Refused { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureProj::Called { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(ResponseBody::inner))),
            FutureProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after it completed"))),
        }
    }
}

pin_project! {
    /// The body of [`RequireBearer`]'s responses: the inner service's, or the short text
    /// of a refusal.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Refusal { body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> ResponseBody<B> {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    pub(crate) fn refusal(text: Bytes) -> ResponseBody<B> {
        ResponseBody {
            kind: BodyKind::Refusal {
                body: Full::new(text),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Refusal { body } => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|result| result.map_err(|never: Infallible| match never {}))
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Refusal { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Refusal { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quotable;

    #[test]
    fn descriptions_keep_only_what_a_quoted_string_allows() {
        assert_eq!(
            quotable("Expired: at 12 (now 13)"),
            "Expired: at 12 (now 13)"
        );
        assert_eq!(quotable("kid \"x\\y\"\n\u{e9}"), "kid ?x?y???");
        assert_eq!(quotable(&"a".repeat(1000)).len(), 256);
    }
}
