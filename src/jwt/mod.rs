//! JSON Web Tokens: signing compact JWS tokens and verifying them (RFC 7515, 7519, 8725).
//!
//! # Layout
//! - `json`: strict JSON object parsing (duplicate members rejected, depth bounded).
//! - `verify`: the verification rules and their rejection reasons.

pub mod json;
pub mod verify;

use serde_json::{Map, Value};

use crate::{b64, crypto::CryptoError, keyset::Signer};

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
