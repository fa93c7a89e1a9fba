//! tonic integrations: [`AttachToken`] puts the service's token on outgoing calls;
//! [`VerifyBearer`] (or [`verify_bearer_layer`], the same as a tower layer) checks
//! `authorization: Bearer` on incoming ones and hands the verified token to the handler in
//! the request extensions (`request.extensions().get::<Verified>()`). For services that are
//! not tonic's (hyper, axum), [`crate::layer::RequireBearerLayer`] does the same on any
//! `http::Request`.
//!
//! Interceptors are synchronous: `AttachToken` uses the token the `TokenSource` keeps
//! cached and refreshed, so call `TokenSource::token().await` once at start-up; `VerifyBearer`
//! verifies in process, which needs no wait.

use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

use crate::{bearer::authenticate, token_source::TokenSource, verifier::Verifier, Verified};

/// Attaches the `TokenSource`'s token as `authorization: Bearer` to every outgoing call.
#[derive(Clone, Debug)]
pub struct AttachToken {
    source: TokenSource,
}

impl AttachToken {
    /// An interceptor for `Client::with_interceptor(channel, AttachToken::new(source))`.
    pub fn new(source: TokenSource) -> AttachToken {
        AttachToken { source }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = self.source.cached_token().ok_or_else(|| {
            Status::unauthenticated(
                "no token from the authority yet (or it expired while the authority was down)",
            )
        })?;
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("the token is not valid metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Verifies `authorization: Bearer <token>` on incoming calls; refuses with
/// UNAUTHENTICATED and the reason (never the token), or passes the call on with the
/// [`Verified`] token in its extensions.
#[derive(Clone, Debug)]
pub struct VerifyBearer {
    verifier: Verifier,
}

impl VerifyBearer {
    /// An interceptor for `Server::with_interceptor(service, VerifyBearer::new(verifier))`.
    pub fn new(verifier: Verifier) -> VerifyBearer {
        VerifyBearer { verifier }
    }
}

impl Interceptor for VerifyBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().map_err(|_| ()));
        let verified = authenticate(header, &self.verifier)
            .map_err(|refusal| Status::unauthenticated(refusal.to_string()))?;
        request.extensions_mut().insert::<Verified>(verified);
        Ok(request)
    }
}

/// [`VerifyBearer`] as a tower layer, for `Server::builder().layer(..)`.
pub type VerifyBearerLayer = tonic::service::InterceptorLayer<VerifyBearer>;

/// A tower layer that verifies incoming bearer tokens, as [`VerifyBearer`] does.
pub fn verify_bearer_layer(verifier: Verifier) -> VerifyBearerLayer {
    tonic::service::InterceptorLayer::new(VerifyBearer::new(verifier))
}
