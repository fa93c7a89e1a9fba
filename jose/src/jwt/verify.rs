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

pub use super::claims::Claims;
pub use super::TokenType;
use super::{
    claims,
    header::{Header, Member},
    json::parse_object,
};
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
    /// `exp - iat` is longer than the verifier accepts (caller tokens and Txn-Tokens).
    LifetimeTooLong,
    /// A Txn-Token where an access token is expected, or the reverse (by `typ`).
    WrongTokenType,
    /// The token's status list says it is revoked (INVALID): final.
    RevokedToken,
    /// The token's status list says it is suspended: it may be reinstated.
    SuspendedToken,
    /// The token names a status list (or an index in one) that cannot be read: refused
    /// rather than taken as valid.
    StatusUnavailable,
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

pub(super) fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejection> {
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
    /// The kind of token accepted: an access token unless told otherwise. A Txn-Token also
    /// needs `txn`, and `max_lifetime` should then be set (`TXN_TOKEN_MAX_LIFETIME`).
    pub token_type: TokenType,
}

/// The longest life a Txn-Token verifier accepts (`exp - iat`): the authority issues none
/// longer (the draft's tokens live "on the order of minutes or less").
pub const TXN_TOKEN_MAX_LIFETIME: u64 = 300;

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    pub kid: String,
    pub subject: String,
    /// Every claim, parsed into a map on first use.
    pub claims: Claims,
    /// Unix seconds.
    pub expires_at: i64,
}

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

/// The longest header decoded on the stack; a longer one (legal, if odd) goes to the heap.
const HEADER_ON_STACK: usize = 256;
/// The longest signature decoded on the stack: RSA-4096, the largest key the authority
/// holds (a trusted issuer's RSA-8192 key has its signatures decoded to the heap).
const SIGNATURE_ON_STACK: usize = 512;

/// Verifies `token` with the same rules as `verify`, plus `expect`.
///
/// The header and the signature are decoded on the stack and the header is read in
/// place; the payload is decoded only once the signature has verified, and its claims are
/// checked in place too. What is allocated is what the answer keeps: the kid, the
/// subject and the payload text.
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
    let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
    let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
        return reject(
            Reason::Malformed,
            "a compact JWS has exactly three segments",
        );
    };
    let (header_b64, payload_b64, signature_b64) = (
        &token[..first],
        &token[first + 1..second],
        &token[second + 1..],
    );

    let mut header_buf = [0u8; HEADER_ON_STACK];
    let header_heap;
    let header_bytes = match b64::decode_into(header_b64, &mut header_buf) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            header_heap = decode_segment(header_b64, "header")?;
            &header_heap[..]
        }
        Err(_) => return not_base64("header"),
    };
    let mut header_map = None;
    let header = Header::read(header_bytes, &mut header_map)?;
    header.check_members(expect.token_type)?;
    let kid = match &header.kid {
        Member::Absent => return reject(Reason::UnknownKey, "the header names no kid"),
        Member::NotText => return reject(Reason::Malformed, "the header's kid is not a string"),
        Member::Text(kid) => &**kid,
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
    match &header.alg {
        Member::Text(alg) if alg == expected_alg => {}
        Member::Text(_) => {
            return reject(
                Reason::AlgorithmNotAllowed,
                format!("the header's alg is not {expected_alg}, the algorithm of this key"),
            )
        }
        _ => return reject(Reason::Malformed, "the header has no alg string"),
    }
    if let Some(allowed) = expect.algorithms {
        if !allowed.contains(&key.algorithm()) {
            return reject(
                Reason::AlgorithmNotAllowed,
                format!("{expected_alg} is not an algorithm this verifier accepts"),
            );
        }
    }

    let mut signature_buf = [0u8; SIGNATURE_ON_STACK];
    let signature_heap;
    let signature = match b64::decode_into(signature_b64, &mut signature_buf) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            signature_heap = b64::decode(signature_b64).or_else(|_| not_base64("signature"))?;
            &signature_heap[..]
        }
        Err(_) => return not_base64("signature"),
    };
    if signature.len() != key.signature_len() {
        return reject(
            Reason::BadSignature,
            format!("the signature is not {} bytes long", key.signature_len()),
        );
    }
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    if !key.verify(&token.as_bytes()[..signing_input_len], signature) {
        return reject(Reason::BadSignature, "the signature does not verify");
    }

    let payload = decode_segment(payload_b64, "payload")?;
    let ((subject, expires_at), claims) = claims::read(payload, |registered| {
        let expires_at = registered.check_times(policy.leeway, now)?;
        if let Some(max) = expect.max_lifetime {
            registered.check_lifetime(max)?;
        }
        registered.check_issuer(&policy.issuer)?;
        registered.check_audience(expect.audiences)?;
        if expect.token_type == TokenType::Txn {
            registered.check_txn()?;
        }
        Ok((registered.subject()?.to_owned(), expires_at))
    })?;
    Ok(Verified {
        kid: kid.to_owned(),
        subject,
        claims,
        expires_at,
    })
}

fn not_base64<T>(what: &str) -> Result<T, Rejection> {
    reject(
        Reason::Malformed,
        format!("the {what} is not base64url without padding"),
    )
}

fn decode_segment(segment: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    b64::decode(segment).or_else(|_| not_base64(what))
}

/// The reference parse of a decoded header or payload, and its rejection.
pub(super) fn parse_segment(bytes: &[u8], what: &str) -> Result<Map<String, Value>, Rejection> {
    parse_object(bytes).or_else(|e| reject(Reason::Malformed, format!("the {what}: {e}")))
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
            token_type: TokenType::Access,
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
