//! JSON Web Tokens: signing compact JWS tokens and verifying them (RFC 7515, 7519, 8725).
//!
//! # Layout
//! - `json`: strict JSON object parsing (duplicate members rejected, depth bounded).
//! - `verify`: the verification rules and their rejection reasons, over any key source
//!   (`verify::KeyLookup`: the server's key set, or a trusted issuer's JWKS).
//!
//! Nothing here knows the server's key set or its storage: this module is meant to be
//! shared with a client library.

pub mod json;
pub mod verify;

use serde_json::{Map, Value};

use crate::{
    b64,
    crypto::{Algorithm, CryptoError, SigningKey},
};

/// The key that signs for one algorithm, with its constant JWS header already encoded.
#[derive(Debug)]
pub struct Signer {
    pub kid: String,
    pub key: SigningKey,
    /// base64url of `{"alg":..,"kid":..,"typ":"JWT"}`: the same for every token of this key.
    pub header_segment: String,
}

impl Signer {
    pub fn new(kid: String, key: SigningKey) -> Signer {
        Signer {
            header_segment: header_segment(key.algorithm(), &kid),
            kid,
            key,
        }
    }
}

fn header_segment(alg: Algorithm, kid: &str) -> String {
    let header = serde_json::json!({ "alg": alg.name(), "kid": kid, "typ": "JWT" });
    b64::encode(header.to_string())
}

/// Signs `claims` with `signer`, returning the compact serialisation.
pub fn sign(signer: &Signer, claims: &Map<String, Value>) -> Result<String, CryptoError> {
    let payload = serde_json::to_vec(claims).map_err(|_| CryptoError::Signing)?;
    let mut token =
        String::with_capacity(signer.header_segment.len() + payload.len() * 4 / 3 + 360);
    token.push_str(&signer.header_segment);
    token.push('.');
    token.push_str(&b64::encode(payload));
    let signature = signer.key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64::encode(signature));
    Ok(token)
}
