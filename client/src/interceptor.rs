//! tonic integrations: [`AttachToken`] puts the service's token on outgoing calls;
//! [`VerifyBearer`] (or [`verify_bearer_layer`], the same as a tower layer) checks
//! `authorization: Bearer` on incoming ones and hands the verified token to the handler in
//! the request extensions (`request.extensions().get::<Verified>()`).
//!
//! Interceptors are synchronous: `AttachToken` uses the token the `TokenSource` keeps
//! cached and refreshed, so call `TokenSource::token().await` once at start-up; `VerifyBearer`
//! verifies in process, which needs no wait.

use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

use crate::{token_source::TokenSource, verifier::Verifier, Verified};

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
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("authorization: Bearer <token> is required"))?;
        let verified = self.verifier.verify(token).map_err(|rejection| {
            Status::unauthenticated(format!(
                "the bearer token is refused: {:?}: {}",
                rejection.reason, rejection.detail
            ))
        })?;
        request.extensions_mut().insert::<Verified>(verified);
        Ok(request)
    }
}

/// The token of a `Bearer` credential; the scheme name is case-insensitive (RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

/// [`VerifyBearer`] as a tower layer, for `Server::builder().layer(..)`.
pub type VerifyBearerLayer = tonic::service::InterceptorLayer<VerifyBearer>;

/// A tower layer that verifies incoming bearer tokens, as [`VerifyBearer`] does.
pub fn verify_bearer_layer(verifier: Verifier) -> VerifyBearerLayer {
    tonic::service::InterceptorLayer::new(VerifyBearer::new(verifier))
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }
}
