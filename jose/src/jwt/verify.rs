//! Token verification: RFC 7515/7519 with the RFC 8725 best practices.
//!
//! The algorithm comes from our key record, never from the token: the header's `alg` must
//! equal the key's exactly, so `none`, `HS256` signed with a public key, or any other
//! algorithm confusion cannot verify. Every rejection carries its own reason.
//!
//! The keys come through `KeyLookup`: the server's own key set for VerifyToken, a trusted
//! issuer's cached JWKS for a caller's token. Both get the same rules; caller tokens add
//! `Expectations` (several accepted audiences, allowed algorithms, a lifetime cap).

use std::fmt;

use serde_json::{Map, Value};

use super::json::parse_object;
use crate::{
    b64,
    crypto::{Algorithm, VerifyingKey},
};

/// Where the verifier finds the key a token names.
pub trait KeyLookup {
    /// The published key with this kid, if any.
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey>;
    /// Whether this kid was withdrawn: its tokens are refused with their own reason.
    fn is_revoked(&self, kid: &str) -> bool;
}

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
    /// `exp - iat` is longer than the verifier accepts (caller tokens only).
    LifetimeTooLong,
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

/// What a caller's token must satisfy beyond `Policy`. VerifyToken sets none of these.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expectations<'a> {
    /// `aud` must contain at least one of these; empty: `aud` is not checked.
    pub audiences: &'a [&'a str],
    /// The longest `exp - iat` accepted, in seconds; `iat` is then required.
    pub max_lifetime: Option<u64>,
    /// The algorithms accepted; `None`: any the key supports.
    pub algorithms: Option<&'a [Algorithm]>,
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

/// Verifies `token` against `keys` at time `now` (unix seconds): VerifyToken's rules.
pub fn verify<K: KeyLookup + ?Sized>(
    token: &str,
    keys: &K,
    policy: &Policy,
    expected_audience: Option<&str>,
    now: u64,
) -> Result<Verified, Rejection> {
    let single: [&str; 1];
    let audiences: &[&str] = match expected_audience {
        Some(audience) => {
            single = [audience];
            &single
        }
        None => &[],
    };
    verify_with(
        token,
        keys,
        policy,
        &Expectations {
            audiences,
            ..Expectations::default()
        },
        now,
    )
}

/// Verifies `token` with the same rules as `verify`, plus `expect`.
pub fn verify_with<K: KeyLookup + ?Sized>(
    token: &str,
    keys: &K,
    policy: &Policy,
    expect: &Expectations<'_>,
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
    let Some(key) = keys.verifying_key(kid) else {
        return reject(Reason::UnknownKey, "the kid is not a key of this authority");
    };
    let expected_alg = key.algorithm().name();
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
    if let Some(allowed) = expect.algorithms {
        if !allowed.contains(&key.algorithm()) {
            return reject(
                Reason::AlgorithmNotAllowed,
                format!("{expected_alg} is not an algorithm this verifier accepts"),
            );
        }
    }

    let Ok(signature) = b64::decode(signature_b64) else {
        return reject(
            Reason::Malformed,
            "the signature is not base64url without padding",
        );
    };
    if signature.len() != key.signature_len() {
        return reject(
            Reason::BadSignature,
            format!("the signature is not {} bytes long", key.signature_len()),
        );
    }
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    if !key.verify(&token.as_bytes()[..signing_input_len], &signature) {
        return reject(Reason::BadSignature, "the signature does not verify");
    }

    let claims = decode_object(payload_b64, "payload")?;
    let expires_at = check_times(&claims, policy.leeway, now)?;
    if let Some(max) = expect.max_lifetime {
        check_lifetime(&claims, max)?;
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == policy.issuer => {}
        Some(Value::String(_)) => {
            return reject(Reason::IssuerMismatch, "iss is not this authority")
        }
        Some(_) => return reject(Reason::Malformed, "iss is not a string"),
        None => return reject(Reason::MissingClaim, "iss is required"),
    }
    check_audience(claims.get("aud"), expect.audiences)?;
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
    // Each claim read once, and checked in this order.
    let mut times = [None; 3];
    for (slot, name) in times.iter_mut().zip(["exp", "nbf", "iat"]) {
        *slot = number(name)?;
        if let Some(time) = *slot {
            if !(EARLIEST..=LATEST).contains(&time) {
                return reject(
                    Reason::Malformed,
                    format!("{name} is outside the years 0001 to 9999"),
                );
            }
        }
    }
    let [exp, nbf, iat] = times;
    let now = now as f64;
    let leeway = leeway as f64;
    let Some(exp) = exp else {
        return reject(Reason::MissingClaim, "exp is required");
    };
    if now >= exp + leeway {
        return reject(Reason::Expired, "the token has expired");
    }
    if let Some(nbf) = nbf {
        if nbf > now + leeway {
            return reject(Reason::NotYetValid, "nbf is in the future");
        }
    }
    if let Some(iat) = iat {
        if iat > now + leeway {
            return reject(Reason::NotYetValid, "iat is in the future");
        }
    }
    Ok(exp.floor() as i64)
}

/// Bounds the token's total lifetime: a verifier that caps it cannot be handed a
/// year-long token (a legacy Kubernetes service-account token) that merely has not expired.
fn check_lifetime(claims: &Map<String, Value>, max: u64) -> Result<(), Rejection> {
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_f64),
        claims.get("exp").and_then(Value::as_f64),
    ) else {
        return reject(
            Reason::MissingClaim,
            "iat is required to bound the token's lifetime",
        );
    };
    if exp - iat > max as f64 {
        return reject(
            Reason::LifetimeTooLong,
            format!("the token lives longer than {max}s (exp - iat)"),
        );
    }
    Ok(())
}

fn check_audience(aud: Option<&Value>, accepted: &[&str]) -> Result<(), Rejection> {
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
    match accepted {
        [] => Ok(()),
        [expected] if !audiences.contains(expected) => reject(
            Reason::AudienceMismatch,
            "aud does not contain the expected audience",
        ),
        many if !many.iter().any(|accepted| audiences.contains(accepted)) => reject(
            Reason::AudienceMismatch,
            "aud contains none of the accepted audiences",
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        crypto::{generate_pkcs8, SigningKey},
        jwt::{sign, Signer},
    };

    /// A key source that is not the server's key set: what a trusted issuer's JWKS is.
    struct Keys(HashMap<String, VerifyingKey>);

    impl KeyLookup for Keys {
        fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
            self.0.get(kid)
        }
        fn is_revoked(&self, _kid: &str) -> bool {
            false
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn policy() -> Policy {
        Policy {
            issuer: "https://issuer.test".into(),
            leeway: 0,
            max_token_bytes: 8192,
        }
    }

    #[test]
    fn expectations_add_audiences_lifetime_and_algorithms() {
        let key =
            SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
                .unwrap();
        let keys = Keys(HashMap::from([(
            "k1".to_owned(),
            key.verifying_key().unwrap(),
        )]));
        let signer = Signer::new("k1".into(), key);
        let token = |aud: &str, iat: Option<u64>, exp: u64| {
            let mut claims = Map::new();
            claims.insert("iss".into(), "https://issuer.test".into());
            claims.insert("sub".into(), "system:serviceaccount:payments:api".into());
            claims.insert("aud".into(), aud.into());
            if let Some(iat) = iat {
                claims.insert("iat".into(), iat.into());
            }
            claims.insert("exp".into(), exp.into());
            sign(&signer, &claims, 8192).unwrap()
        };
        let accepted = ["token-authority", "other"];
        let expect = Expectations {
            audiences: &accepted,
            max_lifetime: Some(3600),
            algorithms: Some(&[Algorithm::ES256]),
        };
        let good = token("other", Some(NOW - 10), NOW + 3000);
        assert!(verify_with(&good, &keys, &policy(), &expect, NOW).is_ok());
        let cases = [
            (
                token("elsewhere", Some(NOW), NOW + 60),
                expect,
                Reason::AudienceMismatch,
                "aud contains none of the accepted audiences",
            ),
            (
                token("other", Some(NOW), NOW + 3601),
                expect,
                Reason::LifetimeTooLong,
                "the token lives longer than 3600s (exp - iat)",
            ),
            (
                token("other", None, NOW + 60),
                expect,
                Reason::MissingClaim,
                "iat is required to bound the token's lifetime",
            ),
            (
                good.clone(),
                Expectations {
                    algorithms: Some(&[Algorithm::RS256]),
                    ..expect
                },
                Reason::AlgorithmNotAllowed,
                "ES256 is not an algorithm this verifier accepts",
            ),
        ];
        for (token, expect, reason, detail) in cases {
            let rejection = verify_with(&token, &keys, &policy(), &expect, NOW).unwrap_err();
            assert_eq!(
                (rejection.reason, rejection.detail.as_str()),
                (reason, detail)
            );
        }
        // VerifyToken's entry point sets no lifetime cap and one optional audience.
        let long = token("other", Some(NOW - 10), NOW + 400 * 86400);
        assert!(verify(&long, &keys, &policy(), Some("other"), NOW).is_ok());
    }
}
