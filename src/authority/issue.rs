//! Issuing and verifying: the claims of a token (the caller's, then what the policy
//! grants, then the registered ones the authority alone sets), signed by the current key of
//! its algorithm; and verification against the key set served.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{status::Slot, Authority, AuthorityError};
use crate::authority::domain::{InvalidArgument, IssueRequest};
use token_authority_jose::{
    b64,
    crypto::{self, Algorithm},
    jwt::{
        self,
        verify::{Rejection, Verified},
    },
};

/// A minted token and the facts a caller needs about it.
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    pub(crate) token: String,
    pub(crate) alg: Algorithm,
    /// The signer's own, shared.
    pub(crate) kid: Arc<str>,
    pub(crate) jti: String,
    /// Unix seconds.
    pub(crate) issued_at: u64,
    pub(crate) expires_at: u64,
}

impl Authority {
    /// Mints a token. CPU-bound (an RSA signature costs about a millisecond).
    /// `granted` are the claims the caller policy adds (fixed claims, `act`, `cnf`): set
    /// after the caller's own, so a caller cannot override them.
    /// Issues as `issue` does, with `exp` at most `expires_by` (a bound token's certificate's
    /// notAfter). The ttl was capped when the request was decided; it is capped again here,
    /// at signing time, which comes later for a request that waited for a signing thread.
    pub(crate) fn issue_by(
        &self,
        request: &IssueRequest,
        granted: &Map<String, Value>,
        alg: Option<Algorithm>,
        now: u64,
        expires_by: Option<u64>,
        status: Option<Slot>,
    ) -> Result<Issued, AuthorityError> {
        match expires_by {
            Some(by) if now + request.ttl > by => match by.checked_sub(now) {
                Some(left) if left > 0 => {
                    let capped = IssueRequest {
                        ttl: left,
                        ..request.clone()
                    };
                    self.issue(&capped, granted, alg, now, status)
                }
                _ => Err(AuthorityError::from(InvalidArgument {
                    field: "ttl",
                    reason: "the client certificate expired before the token could be signed"
                        .into(),
                })),
            },
            _ => self.issue(request, granted, alg, now, status),
        }
    }

    /// A token given a `status` holds that place in a list: its `status` claim names it,
    /// and its `jti` carries it (for SetTokenStatus).
    pub(crate) fn issue(
        &self,
        request: &IssueRequest,
        granted: &Map<String, Value>,
        alg: Option<Algorithm>,
        now: u64,
        status: Option<Slot>,
    ) -> Result<Issued, AuthorityError> {
        let alg = self.settings.algorithm(alg)?;
        let keys = self.keys.load();
        let signer = keys.signer(alg).ok_or_else(|| InvalidArgument {
            field: "algorithm",
            reason: format!("{alg} is not configured on this authority"),
        })?;
        let expires_at = now + request.ttl;
        let status = status.and_then(|slot| Some((slot, self.status_lists()?)));
        let jti = match status {
            Some((slot, lists)) => lists.jti(slot, expires_at),
            None => b64::encode(crypto::random_bytes(16)?),
        };
        let mut claims = Map::with_capacity(request.claims.len() + granted.len() + 8);
        claims.insert("iss".into(), Value::String(self.settings.issuer.clone()));
        claims.insert("sub".into(), Value::String(request.subject.clone()));
        match request.audiences.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), Value::String(one.clone()));
            }
            many => {
                claims.insert(
                    "aud".into(),
                    many.iter().cloned().map(Value::String).collect(),
                );
            }
        }
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), expires_at.into());
        claims.insert("jti".into(), Value::String(jti.clone()));
        for (name, value) in request.claims.iter().chain(granted) {
            claims.insert(name.clone(), value.clone());
        }
        if let Some((slot, lists)) = status {
            claims.insert("status".into(), lists.reference(slot).to_claim());
        }
        let token = jwt::sign(signer, &claims, self.settings.max_token_bytes)
            .map_err(|error| self.sign_error(error, "claims_json"))?;
        Ok(Issued {
            token,
            alg,
            kid: signer.kid.clone(),
            jti,
            issued_at: now,
            expires_at,
        })
    }

    /// What a failed signature means to the caller: a token too large for `field`, the
    /// signer out of reach, or our failure.
    pub(super) fn sign_error(&self, error: jwt::SignError, field: &'static str) -> AuthorityError {
        match error {
            too_large @ jwt::SignError::TooLarge { .. } => {
                AuthorityError::InvalidArgument(InvalidArgument {
                    field,
                    reason: too_large.to_string(),
                })
            }
            jwt::SignError::Crypto(error) if !self.settings.signers.is_available() => {
                AuthorityError::SignerUnavailable(error)
            }
            jwt::SignError::Crypto(error) => error.into(),
        }
    }

    pub fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        jwt::verify::verify(token, &**self.keys.load(), &self.policy, audience, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{authority::Settings, store::KeyStore};
    use token_authority_jose::clock::Clock;

    const T0: u64 = 1_700_000_000;

    /// A token issued later than its request was decided is capped again at signing time:
    /// its exp never passes `expires_by`, and past it nothing is issued.
    #[test]
    fn issue_by_never_passes_expires_by() {
        let dir = tempfile::tempdir().unwrap();
        let (store, records) = KeyStore::open(&dir.path().join("keystore"), None).unwrap();
        let settings = Settings {
            issuer: "http://token-authority.test".into(),
            default_ttl: 60,
            max_ttl: 3600,
            leeway: 60,
            max_token_bytes: 8192,
            algorithms: vec![Algorithm::ES256],
            publish_lead: 900,
            rotation_period: 86_400,
            clock: Clock::system(),
            signers: Default::default(),
        };
        let authority = Authority::open(store, records, settings, T0).unwrap();
        let request = IssueRequest {
            subject: "svc".into(),
            audiences: vec!["ledger".into()],
            ttl: 600,
            ttl_is_default: false,
            claims: Map::new(),
        };
        let claims = Map::new();
        let issue = |now, by| authority.issue_by(&request, &claims, None, now, by, None);
        // Decided with 600 s left on the certificate, signed 20 s later: 580 s.
        let late = issue(T0 + 20, Some(T0 + 600)).unwrap();
        assert_eq!((late.issued_at, late.expires_at), (T0 + 20, T0 + 600));
        // Room to spare, or no certificate: the ttl asked for.
        assert_eq!(issue(T0, Some(T0 + 900)).unwrap().expires_at, T0 + 600);
        assert_eq!(issue(T0, None).unwrap().expires_at, T0 + 600);
        // The certificate expired while the request waited.
        for now in [T0 + 600, T0 + 700] {
            let error = issue(now, Some(T0 + 600)).unwrap_err();
            assert_eq!(
                error.to_string(),
                "ttl: the client certificate expired before the token could be signed"
            );
        }
    }
}
