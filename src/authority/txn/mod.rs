//! Transaction Tokens (draft-ietf-oauth-transaction-tokens-10): the RFC 8693 token
//! exchange request as the draft profiles it, checked field by field; the claims of the
//! Txn-Token it yields; and signing and verifying Txn-Tokens with the served key set.
//!
//! Who may ask, for which scopes and context, is the caller layer's (`callers::txn`);
//! the transports (`POST /token`, `ExchangeToken`) only carry the request and the answer.

mod claims;
mod error;

use serde_json::{Map, Value};

pub(crate) use self::{
    claims::{new_txn_id, pick, split_scope, Replaced, TxnContext, MAX_REQUESTERS},
    error::{ExchangeError, OAuthError},
};
use super::{issue::Issued, Authority, AuthorityError};
use crate::authority::domain::InvalidArgument;
use token_authority_jose::{
    crypto::Algorithm,
    jwt::{
        self,
        verify::{self, Expectations, Rejection, TokenType, Verified, TXN_TOKEN_MAX_LIFETIME},
    },
};

/// The draft implemented; the README and `policy check` name it.
pub(crate) const DRAFT: &str = "draft-ietf-oauth-transaction-tokens-10";
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// The longest `request_context` or `request_details` accepted, as JSON text.
pub(crate) const MAX_CONTEXT_BYTES: usize = 4096;

/// The request's parameters as they came (form fields or the gRPC message); an absent
/// parameter is `None` (RFC 6749 section 3.2: an empty one counts as absent).
#[derive(Clone, Debug, Default)]
pub(crate) struct ExchangeForm {
    pub(crate) grant_type: Option<String>,
    pub(crate) requested_token_type: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) subject_token: Option<String>,
    pub(crate) subject_token_type: Option<String>,
    pub(crate) request_context: Option<String>,
    pub(crate) request_details: Option<String>,
}

/// What the subject token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubjectKind {
    /// A JWT of a trusted `[[issuer]]` (an access token, an ID token or another JWT).
    IssuerToken,
    /// A Txn-Token of this authority: the request asks for its replacement.
    TxnToken,
}

/// A Txn-Token request, checked.
#[derive(Clone, Debug)]
pub(crate) struct TxnRequest {
    pub(crate) scopes: Vec<String>,
    pub(crate) subject_token: String,
    pub(crate) subject_kind: SubjectKind,
    pub(crate) request_context: Map<String, Value>,
    pub(crate) request_details: Map<String, Value>,
}

fn invalid_request(description: impl Into<String>) -> ExchangeError {
    ExchangeError::new(OAuthError::InvalidRequest, description)
}

impl TxnRequest {
    /// Checks `form` for the trust domain `trust_domain`, in the order RFC 6749 and RFC 8693
    /// list the parameters, so a request with several problems hears of the first.
    pub(crate) fn parse(
        form: ExchangeForm,
        trust_domain: &str,
    ) -> Result<TxnRequest, ExchangeError> {
        match form.grant_type.as_deref() {
            None => return Err(invalid_request("grant_type is required")),
            Some(GRANT_TYPE) => {}
            Some(_) => {
                return Err(ExchangeError::new(
                    OAuthError::UnsupportedGrantType,
                    format!("grant_type must be {GRANT_TYPE}"),
                ))
            }
        }
        match form.requested_token_type.as_deref() {
            Some(TXN_TOKEN_TYPE) => {}
            None => return Err(invalid_request("requested_token_type is required")),
            Some(_) => {
                return Err(invalid_request(format!(
                    "requested_token_type must be {TXN_TOKEN_TYPE}: this endpoint issues Txn-Tokens only"
                )))
            }
        }
        match form.audience.as_deref() {
            None => return Err(invalid_request("audience is required: the trust domain")),
            Some(audience) if audience == trust_domain => {}
            Some(_) => {
                return Err(ExchangeError::new(
                    OAuthError::InvalidTarget,
                    "audience is not the trust domain of this Transaction Token Service",
                ))
            }
        }
        let scope = form
            .scope
            .ok_or_else(|| invalid_request("scope is required"))?;
        let scopes = split_scope(&scope);
        if scopes.is_empty()
            || scope
                .chars()
                .any(|c| !(c == ' ' || c.is_ascii_graphic()) || c == '"' || c == '\\')
        {
            return Err(ExchangeError::new(
                OAuthError::InvalidScope,
                "scope must be space-delimited scope tokens (RFC 6749 section 3.3)",
            ));
        }
        let subject_token = form
            .subject_token
            .ok_or_else(|| invalid_request("subject_token is required"))?;
        let subject_kind = match form.subject_token_type.as_deref() {
            None => return Err(invalid_request("subject_token_type is required")),
            Some(ACCESS_TOKEN_TYPE | JWT_TYPE | ID_TOKEN_TYPE) => SubjectKind::IssuerToken,
            Some(TXN_TOKEN_TYPE) => SubjectKind::TxnToken,
            Some(REFRESH_TOKEN_TYPE) => {
                return Err(invalid_request(
                    "a refresh token is never exchanged for a Txn-Token",
                ))
            }
            Some(_) => return Err(invalid_request(
                "subject_token_type is not one this service accepts: access_token, jwt, id_token or txn_token (urn:ietf:params:oauth:token-type:...)",
            )),
        };
        Ok(TxnRequest {
            scopes,
            subject_token,
            subject_kind,
            request_context: json_object("request_context", form.request_context)?,
            request_details: json_object("request_details", form.request_details)?,
        })
    }
}

/// An optional parameter holding a JSON object.
fn json_object(name: &str, text: Option<String>) -> Result<Map<String, Value>, ExchangeError> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    if text.len() > MAX_CONTEXT_BYTES {
        return Err(invalid_request(format!(
            "{name} is longer than {MAX_CONTEXT_BYTES} bytes"
        )));
    }
    let object = jwt::json::parse_object(text.as_bytes())
        .map_err(|e| invalid_request(format!("{name}: {e}")))?;
    // Valid JSON: every literal the scan finds is a number.
    if let Some(integer) = inexact_integer(&text) {
        return Err(invalid_request(format!(
            "{name}: the integer {integer} does not fit in 64 bits, so the Txn-Token could not carry it exactly; send it as a string"
        )));
    }
    Ok(object)
}

/// The first integer literal of the JSON `text` (outside its strings) that neither `i64`
/// nor `u64` holds: the parser would make it the nearest float, and the Txn-Token would
/// assert a value the requester never gave. Numbers with a fraction or an exponent are
/// floats as written, and stay so.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut at, mut in_string, mut escaped) = (0, false, false);
    while at < bytes.len() {
        let byte = bytes[at];
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            at += 1;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let start = at;
            while at < bytes.len()
                && matches!(bytes[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                at += 1;
            }
            let literal = &text[start..at];
            let integral = !literal.contains(['.', 'e', 'E']);
            if integral && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                return Some(literal);
            }
            continue;
        }
        at += 1;
    }
    None
}

impl Authority {
    /// Signs the Txn-Token `context` describes, living `ttl` seconds from `now`.
    pub(crate) fn issue_txn(
        &self,
        context: &TxnContext,
        trust_domain: &str,
        alg: Option<Algorithm>,
        now: u64,
        ttl: u64,
    ) -> Result<Issued, AuthorityError> {
        let alg = self.settings.algorithm(alg)?;
        let keys = self.keys.load();
        let signer = keys.signer(alg).ok_or_else(|| InvalidArgument {
            field: "algorithm",
            reason: format!("{alg} is not configured on this authority"),
        })?;
        let expires_at = now + ttl;
        let claims = context.claims(&self.settings.issuer, trust_domain, now, expires_at);
        let token = jwt::sign_as(
            signer,
            TokenType::Txn,
            &claims,
            self.settings.max_token_bytes,
        )
        .map_err(|error| self.sign_error(error, "request_details"))?;
        Ok(Issued {
            token,
            alg,
            kid: signer.kid.clone(),
            jti: context.txn.clone(),
            issued_at: now,
            expires_at,
        })
    }

    /// Verifies a Txn-Token of this authority for `trust_domain`: `typ`, `aud`, `txn` and
    /// a life of at most five minutes, beyond VerifyToken's rules.
    pub(crate) fn verify_txn(
        &self,
        token: &str,
        trust_domain: &str,
        now: u64,
    ) -> Result<Verified, Rejection> {
        verify::verify_with(
            token,
            &**self.keys.load(),
            &self.policy,
            &Expectations {
                audiences: &[trust_domain],
                max_lifetime: Some(TXN_TOKEN_MAX_LIFETIME),
                algorithms: None,
                token_type: TokenType::Txn,
            },
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::inexact_integer;

    #[test]
    fn integers_beyond_64_bits_are_found_outside_strings() {
        for (text, found) in [
            (
                r#"{"a":123456789012345678901234567890}"#,
                Some("123456789012345678901234567890"),
            ),
            (
                r#"{"a":[1,-9223372036854775809]}"#,
                Some("-9223372036854775809"),
            ),
            (
                r#"{"a":18446744073709551616}"#,
                Some("18446744073709551616"),
            ),
            (
                r#"{"a":18446744073709551615,"b":-9223372036854775808}"#,
                None,
            ),
            (r#"{"a":1.5e300,"b":-0.25,"c":1E400}"#, None),
            (r#"{"a":"123456789012345678901234567890"}"#, None),
            (r#"{"a\"99999999999999999999":1}"#, None),
            (
                r#"{"a":"\\","b":99999999999999999999}"#,
                Some("99999999999999999999"),
            ),
        ] {
            assert_eq!(inexact_integer(text), found, "{text}");
        }
    }
}
