//! The credentials of a request, checked the same way whichever listener it came to (a
//! gRPC call's metadata, an HTTP request's headers): the `authorization` values and the
//! client certificate the TLS listener saw, after the peer's failed-authentication budget.

use crate::{
    callers::{identity::IdentityError, CallerError, Callers, Principal},
    transport::{connection::ConnectionInfo, peers::Peer},
};
use token_authority_jose::clock::Clock;

/// Checks `authorizations` (every `authorization` value of the request, in order; one
/// that is not visible ASCII as "") and the connection's client certificate.
pub(crate) async fn authenticate<'a>(
    callers: &Callers,
    clock: Clock,
    mut authorizations: impl Iterator<Item = &'a str>,
    info: Option<&ConnectionInfo>,
) -> Result<Principal, CallerError> {
    let authorization = authorizations.next();
    // A peer that failed too often is refused before its credentials cost anything.
    let peer = info.and_then(|info| info.peer.as_ref());
    peer.map(Peer::check).transpose()?;
    let authenticated = async {
        // Which of several would count is a guess an attacker could steer (a good Basic
        // credential followed by `Bearer garbage`): more than one is refused.
        if authorizations.next().is_some() {
            return Err(IdentityError::SeveralAuthorizations.into());
        }
        // Checked against the client CA bundle in use now, not only at the handshake.
        let certificate = info.and_then(|info| info.client_certificate.as_ref());
        let now = clock.since_epoch();
        let certificate = certificate.map(|c| c.current(now)).transpose()?;
        callers
            .authenticate(authorization, certificate, now.as_secs())
            .await
    }
    .await;
    if let Some(peer) = peer {
        peer.judged(&authenticated);
    }
    authenticated
}
