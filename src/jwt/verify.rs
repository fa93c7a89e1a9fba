//! Token verification: RFC 7515/7519 with the RFC 8725 best practices.
//!
//! The algorithm comes from our key record, never from the token: the header's `alg` must
//! equal the key's exactly, so `none`, `HS256` signed with a public key, or any other
//! algorithm confusion cannot verify. Every rejection carries its own reason.

use std::fmt;

use serde_json::{Map, Value};

use super::json::parse_object;
use crate::{b64, keyset::KeySet};

/// Why a token was rejected. Each reason is distinct so callers and metrics can tell them
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Malformed,
    UnknownKey,
    BadSignature,
    AlgorithmNotAllowed,
    Expired,
    NotYetValid,
    IssuerMismatch,
    AudienceMismatch,
    RevokedKey,
    MissingClaim,
    UnsupportedHeader,
}

/// A rejection: its reason and a detail for humans (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.reason, self.detail)
    }
}

fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        detail: detail.into(),
    })
}

/// What the verifier checks beyond the signature.
#[derive(Clone, Debug)]
pub struct Policy {
    pub issuer: String,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Longer tokens are rejected before any parsing.
    pub max_token_bytes: usize,
}

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    pub kid: String,
    pub subject: String,
    pub claims: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Header members that point at keys outside our key set: following them would let the
/// token choose its own key.
const KEY_REFERENCE_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// Verifies `token` against `keys` at time `now` (unix seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    expected_audience: Option<&str>,
    now: u64,
) -> Result<Verified, Rejection> {
    if token.is_empty() {
        return reject(Reason::Malformed, "the token is empty");
    }
    if token.len() > policy.max_token_bytes {
        return reject(
            Reason::Malformed,
            format!("the token is longer than {} bytes", policy.max_token_bytes),
        );
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return reject(
            Reason::Malformed,
            "a compact JWS has exactly three segments",
        );
    };

    let header = decode_object(header_b64, "header")?;
    check_header_members(&header)?;
    let Some(kid) = header.get("kid") else {
        return reject(Reason::UnknownKey, "the header names no kid");
    };
    let Some(kid) = kid.as_str() else {
        return reject(Reason::Malformed, "the header's kid is not a string");
    };
    if keys.is_revoked(kid) {
        return reject(
            Reason::RevokedKey,
            "the key that signed this token was revoked",
        );
    }
    let Some(known) = keys.known(kid) else {
        return reject(Reason::UnknownKey, "the kid is not a key of this authority");
    };
    let expected_alg = known.key.algorithm().name();
    match header.get("alg").and_then(Value::as_str) {
        Some(alg) if alg == expected_alg => {}
        Some(_) => {
            return reject(
                Reason::AlgorithmNotAllowed,
                format!("the header's alg is not {expected_alg}, the algorithm of this key"),
            )
        }
        None => return reject(Reason::Malformed, "the header has no alg string"),
    }

    let Ok(signature) = b64::decode(signature_b64) else {
        return reject(
            Reason::Malformed,
            "the signature is not base64url without padding",
        );
    };
    if signature.len() != known.key.signature_len() {
        return reject(
            Reason::BadSignature,
            format!(
                "the signature is not {} bytes long",
                known.key.signature_len()
            ),
        );
    }
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    if !known
        .key
        .verify(&token.as_bytes()[..signing_input_len], &signature)
    {
        return reject(Reason::BadSignature, "the signature does not verify");
    }

    let claims = decode_object(payload_b64, "payload")?;
    let expires_at = check_times(&claims, policy.leeway, now)?;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == policy.issuer => {}
        Some(Value::String(_)) => {
            return reject(Reason::IssuerMismatch, "iss is not this authority")
        }
        Some(_) => return reject(Reason::Malformed, "iss is not a string"),
        None => return reject(Reason::MissingClaim, "iss is required"),
    }
    check_audience(claims.get("aud"), expected_audience)?;
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) => sub.clone(),
        Some(_) => return reject(Reason::Malformed, "sub is not a string"),
        None => return reject(Reason::MissingClaim, "sub is required"),
    };
    Ok(Verified {
        kid: kid.to_owned(),
        subject,
        claims,
        expires_at,
    })
}

fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    let Ok(bytes) = b64::decode(segment) else {
        return reject(
            Reason::Malformed,
            format!("the {what} is not base64url without padding"),
        );
    };
    parse_object(&bytes).or_else(|e| reject(Reason::Malformed, format!("the {what}: {e}")))
}

fn check_header_members(header: &Map<String, Value>) -> Result<(), Rejection> {
    if header.contains_key("crit") {
        return reject(
            Reason::UnsupportedHeader,
            "crit names extensions this authority does not understand",
        );
    }
    if let Some(name) = KEY_REFERENCE_HEADERS
        .iter()
        .find(|name| header.contains_key(**name))
    {
        return reject(
            Reason::UnsupportedHeader,
            format!("the header carries {name}: keys named inside a token are never trusted"),
        );
    }
    match header.get("typ") {
        None => Ok(()),
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => Ok(()),
        Some(_) => reject(Reason::UnsupportedHeader, "typ, when present, must be JWT"),
    }
}

/// Checks `exp` (required), `nbf` and `iat`; returns `exp`.
fn check_times(claims: &Map<String, Value>, leeway: u64, now: u64) -> Result<i64, Rejection> {
    let number = |name: &str| -> Result<Option<f64>, Rejection> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => reject(Reason::Malformed, format!("{name} is not a number")),
        }
    };
    // What a protobuf Timestamp can carry (0001-01-01 to 9999-12-31), the range every
    // time the authority answers with must fit.
    const EARLIEST: f64 = -62_135_596_800.0;
    const LATEST: f64 = 253_402_300_799.0;
    for name in ["exp", "nbf", "iat"] {
        if let Some(time) = number(name)? {
            if !(EARLIEST..=LATEST).contains(&time) {
                return reject(
                    Reason::Malformed,
                    format!("{name} is outside the years 0001 to 9999"),
                );
            }
        }
    }
    let now = now as f64;
    let leeway = leeway as f64;
    let Some(exp) = number("exp")? else {
        return reject(Reason::MissingClaim, "exp is required");
    };
    if now >= exp + leeway {
        return reject(Reason::Expired, "the token has expired");
    }
    if let Some(nbf) = number("nbf")? {
        if nbf > now + leeway {
            return reject(Reason::NotYetValid, "nbf is in the future");
        }
    }
    if let Some(iat) = number("iat")? {
        if iat > now + leeway {
            return reject(Reason::NotYetValid, "iat is in the future");
        }
    }
    Ok(exp.floor() as i64)
}

fn check_audience(aud: Option<&Value>, expected: Option<&str>) -> Result<(), Rejection> {
    let audiences: Vec<&str> = match aud {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => {
            let strings: Option<Vec<&str>> = many.iter().map(Value::as_str).collect();
            match strings {
                Some(strings) => strings,
                None => return reject(Reason::Malformed, "aud holds a value that is not a string"),
            }
        }
        Some(_) => {
            return reject(
                Reason::Malformed,
                "aud is neither a string nor an array of strings",
            )
        }
    };
    match expected {
        Some(expected) if !audiences.contains(&expected) => reject(
            Reason::AudienceMismatch,
            "aud does not contain the expected audience",
        ),
        _ => Ok(()),
    }
}
