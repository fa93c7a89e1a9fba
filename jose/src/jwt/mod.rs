//! JSON Web Tokens: signing compact JWS tokens and verifying them (RFC 7515, 7519, 8725).
//!
//! # Layout
//! - `json`: strict JSON object parsing (duplicate members rejected, depth bounded).
//! - `verify`: the verification rules and their rejection reasons, over any key source
//!   (`verify::KeyLookup`: the server's key set, or a trusted issuer's JWKS).
//! - `header`, `claims`: what those rules read of a token's header and payload, read in
//!   place by `borrowed` (strings borrowed, nothing else kept), with `json` as the
//!   reference that words every rejection; `sorted` writes a claim set back as its map
//!   would be written.
//!
//! Nothing here knows the server's key set or its storage: this module is meant to be
//! shared with a client library.

mod borrowed;
mod claims;
mod header;
pub mod json;
#[cfg(test)]
mod read_tests;
mod sorted;
pub mod verify;

use std::{fmt, sync::Arc};

use serde_json::{Map, Value};

use crate::{
    b64,
    crypto::{Algorithm, CryptoError, SigningKey, VerifyingKey},
};

/// What computes a key's signatures: a key held in the process (`SigningKey`), or one that
/// never leaves a hardware token, which is only asked to sign.
pub trait SignatureSource: Send + Sync + fmt::Debug {
    fn algorithm(&self) -> Algorithm;
    /// Every signature of the key has this length, so a token's size is known before it
    /// is signed.
    fn signature_len(&self) -> usize;
    /// The JWS signature of `message` (for ES256, raw r||s).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// The public half, to verify what it signs.
    fn verifying_key(&self) -> Result<VerifyingKey, CryptoError>;
}

impl SignatureSource for SigningKey {
    fn algorithm(&self) -> Algorithm {
        SigningKey::algorithm(self)
    }

    fn signature_len(&self) -> usize {
        SigningKey::signature_len(self)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        SigningKey::sign(self, message)
    }

    fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        SigningKey::verifying_key(self)
    }
}

/// The `typ` of a Transaction Token (draft-ietf-oauth-transaction-tokens, "JWT Header").
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";

/// Which kind of token is signed or expected: each is refused where the other is wanted
/// (`Reason::WrongTokenType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// An access token: `typ` absent or `JWT` (as the authority's own are).
    #[default]
    Access,
    /// Another issuer's access token (a caller's credential, a Txn-Token's subject token):
    /// `typ` absent, `JWT`, or RFC 9068's `at+jwt`. Never signed here.
    IssuerAccess,
    /// A Transaction Token: `typ` `txntoken+jwt`, a `txn` claim, a short life.
    Txn,
    /// A Status List Token: `typ` `statuslist+jwt`, its `sub` the list's URI.
    StatusList,
}

/// The key that signs for one algorithm, with its constant JWS headers already encoded.
#[derive(Debug)]
pub struct Signer {
    /// Shared, not copied, with what records the key a token was signed with.
    pub kid: Arc<str>,
    pub key: Arc<dyn SignatureSource>,
    /// base64url of `{"alg":..,"kid":..,"typ":"JWT"}`: the same for every token of this key.
    pub header_segment: String,
    /// The same with `"typ":"txntoken+jwt"`, for Transaction Tokens.
    pub txn_header_segment: String,
    /// The same with `"typ":"statuslist+jwt"`, for Status List Tokens.
    pub status_list_header_segment: String,
}

impl Signer {
    /// A signer of a key held in the process.
    pub fn new(kid: String, key: SigningKey) -> Signer {
        Signer::with_source(kid, Arc::new(key))
    }

    /// A signer of a key whose signatures come from elsewhere (a hardware token).
    pub fn with_source(kid: String, key: Arc<dyn SignatureSource>) -> Signer {
        Signer {
            header_segment: header_segment(key.algorithm(), &kid, "JWT"),
            txn_header_segment: header_segment(key.algorithm(), &kid, TXN_TOKEN_TYP),
            status_list_header_segment: header_segment(
                key.algorithm(),
                &kid,
                crate::status_list::TYP,
            ),
            kid: kid.into(),
            key,
        }
    }

    fn header(&self, token_type: TokenType) -> &str {
        match token_type {
            TokenType::Access | TokenType::IssuerAccess => &self.header_segment,
            TokenType::Txn => &self.txn_header_segment,
            TokenType::StatusList => &self.status_list_header_segment,
        }
    }
}

fn header_segment(alg: Algorithm, kid: &str, typ: &str) -> String {
    let header = serde_json::json!({ "alg": alg.name(), "kid": kid, "typ": typ });
    b64::encode(header.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the token would be {size} bytes, over the {limit}-byte limit of VerifyToken (and of many proxies' headers); make the claims smaller")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The length of `n` bytes in unpadded base64url.
fn b64_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// Signs `claims` with `signer`, returning the compact serialisation, unless the token would
/// be longer than `max_bytes` (what VerifyToken accepts): its length is known before
/// signing, as every signature of a key has the same length.
pub fn sign(
    signer: &Signer,
    claims: &Map<String, Value>,
    max_bytes: usize,
) -> Result<String, SignError> {
    sign_as(signer, TokenType::Access, claims, max_bytes)
}

/// Signs as `sign` does, with the header of `token_type`.
pub fn sign_as(
    signer: &Signer,
    token_type: TokenType,
    claims: &Map<String, Value>,
    max_bytes: usize,
) -> Result<String, SignError> {
    let header = signer.header(token_type);
    let payload = serde_json::to_vec(claims).map_err(|_| CryptoError::Signing)?;
    let size = header.len() + 1 + b64_len(payload.len()) + 1 + b64_len(signer.key.signature_len());
    if size > max_bytes {
        return Err(SignError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 360);
    token.push_str(header);
    token.push('.');
    token.push_str(&b64::encode(payload));
    let signature = signer.key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64::encode(signature));
    debug_assert_eq!(token.len(), size);
    Ok(token)
}

#[cfg(test)]
mod tests {
    #[test]
    fn b64_len_is_the_unpadded_length() {
        for n in 0..100 {
            assert_eq!(super::b64_len(n), crate::b64::encode(vec![0u8; n]).len());
        }
    }
}
