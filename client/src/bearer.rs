//! The one check of an incoming `authorization` header, shared by the tonic interceptor and
//! the tower layer so both refuse the same requests with the same words.

use std::fmt;

use crate::{verifier::Verifier, Rejection, Verified};

/// Why a request was not let through.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No `authorization` header at all.
    Missing,
    /// An `authorization` header that is not `Bearer <token>` (another scheme, no token, or
    /// bytes that are not text).
    NotBearer,
    /// A bearer token the verifier refused.
    Rejected(Rejection),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => f.write_str("authorization: Bearer <token> is required"),
            Refusal::NotBearer => f.write_str("the authorization header is not Bearer <token>"),
            // The rejection's reason and detail never contain the token itself.
            Refusal::Rejected(rejection) => write!(f, "the bearer token is refused: {rejection}"),
        }
    }
}

/// Verifies the credential of an `authorization` header: `None` when there is no header,
/// `Some(Err(()))` when its bytes are not text.
pub(crate) fn authenticate(
    header: Option<Result<&str, ()>>,
    verifier: &Verifier,
) -> Result<Verified, Refusal> {
    let value = header
        .ok_or(Refusal::Missing)?
        .map_err(|()| Refusal::NotBearer)?;
    let token = bearer(value).ok_or(Refusal::NotBearer)?;
    verifier.verify(token).map_err(Refusal::Rejected)
}

/// The token of a `Bearer` credential; the scheme name is case-insensitive (RFC 9110).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
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
