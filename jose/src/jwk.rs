//! Public JWKs (RFC 7517), their RFC 7638 thumbprints (our key ids), and the JWKS document.
//!
//! Only public members can be expressed here: the type has no field for `d`, `p`, `q`, `dp`,
//! `dq` or `qi`, so no code path can publish private material by accident.

use serde::Serialize;

use crate::{
    b64,
    crypto::{sha256, Algorithm, PublicComponents, VerifyingKey},
};

/// One public key as the JWKS publishes it. Field order is the order of the JSON members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    pub kty: &'static str,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl PublicJwk {
    pub fn new(kid: &str, alg: Algorithm, public: &PublicComponents) -> PublicJwk {
        let base = PublicJwk {
            kty: "",
            kid: kid.to_owned(),
            use_: "sig",
            alg: alg.name(),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        match public {
            PublicComponents::Rsa { n, e } => PublicJwk {
                kty: "RSA",
                n: Some(b64::encode(n)),
                e: Some(b64::encode(e)),
                ..base
            },
            PublicComponents::EcP256 { x, y } => PublicJwk {
                kty: "EC",
                crv: Some("P-256"),
                x: Some(b64::encode(x)),
                y: Some(b64::encode(y)),
                ..base
            },
            PublicComponents::Ed25519 { x } => PublicJwk {
                kty: "OKP",
                crv: Some("Ed25519"),
                x: Some(b64::encode(x)),
                ..base
            },
        }
    }
}

/// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order with
/// no whitespace, base64url. Stable for a key, unique across keys, and recomputable by anyone
/// holding the JWK.
pub fn thumbprint(public: &PublicComponents) -> String {
    let canonical = match public {
        PublicComponents::Rsa { n, e } => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            b64::encode(e),
            b64::encode(n)
        ),
        PublicComponents::EcP256 { x, y } => format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64::encode(x),
            b64::encode(y)
        ),
        PublicComponents::Ed25519 { x } => {
            format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64::encode(x)
            )
        }
    };
    b64::encode(sha256(canonical.as_bytes()))
}

/// Renders `{"keys":[...]}`. Called once per key-set change, never per request.
pub fn render_jwks(keys: &[PublicJwk]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Jwks<'a> {
        keys: &'a [PublicJwk],
    }
    // Serialising plain strings and options cannot fail.
    serde_json::to_vec(&Jwks { keys }).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a keys array")]
    NotAJwks,
    #[error("the JWKS holds no key this authority can verify with ({0})")]
    NoUsableKey(String),
}

/// Reads someone else's JWKS (a trusted issuer's): every signing key with a kid that this
/// authority can verify with, ready to verify. Keys it cannot use (encryption keys, other
/// curves, symmetric keys, malformed members) are skipped, not fatal: issuers publish
/// mixed sets. A key without `alg` gets its type's algorithm (RSA: RS256; P-256: ES256;
/// Ed25519: EdDSA): the algorithm is fixed by the key, never chosen by a token.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<(String, VerifyingKey)>, JwksError> {
    let document: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| JwksError::NotAJwks)?;
    let Some(keys) = document.get("keys").and_then(serde_json::Value::as_array) else {
        return Err(JwksError::NotAJwks);
    };
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        match parse_jwk(key) {
            Ok(parsed) => usable.push(parsed),
            Err(reason) => skipped.push(format!("key {index}: {reason}")),
        }
    }
    if usable.is_empty() {
        let reasons = if skipped.is_empty() {
            "it is empty".to_owned()
        } else {
            skipped.join("; ")
        };
        return Err(JwksError::NoUsableKey(reasons));
    }
    Ok(usable)
}

fn parse_jwk(key: &serde_json::Value) -> Result<(String, VerifyingKey), String> {
    let member = |name: &str| key.get(name).and_then(serde_json::Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = member(name).ok_or_else(|| format!("no {name}"))?;
        b64::decode(text).map_err(|_| format!("{name} is not base64url"))
    };
    let kid = member("kid").ok_or("no kid")?.to_owned();
    if member("use").is_some_and(|use_| use_ != "sig") {
        return Err("not a signing key".into());
    }
    let (default_alg, components) = match (member("kty"), member("crv")) {
        (Some("RSA"), _) => (
            Algorithm::RS256,
            PublicComponents::Rsa {
                n: bytes("n")?,
                e: bytes("e")?,
            },
        ),
        (Some("EC"), Some("P-256")) => (
            Algorithm::ES256,
            PublicComponents::EcP256 {
                x: bytes("x")?,
                y: bytes("y")?,
            },
        ),
        (Some("OKP"), Some("Ed25519")) => (
            Algorithm::EdDSA,
            PublicComponents::Ed25519 { x: bytes("x")? },
        ),
        (kty, crv) => {
            return Err(format!(
                "unsupported key type {} {}",
                kty.unwrap_or("?"),
                crv.unwrap_or("")
            ))
        }
    };
    let alg = match member("alg") {
        None => default_alg,
        Some(name) => {
            Algorithm::from_name(name).ok_or_else(|| format!("unsupported alg {name}"))?
        }
    };
    let key = VerifyingKey::from_components(alg, components).map_err(|e| e.to_string())?;
    Ok((kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 7638 section 3.1.
    #[test]
    fn thumbprint_matches_rfc7638_example() {
        let n = b64::decode("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw").unwrap();
        let e = b64::decode("AQAB").unwrap();
        assert_eq!(
            thumbprint(&PublicComponents::Rsa { n, e }),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// Our own JWKS reads back into keys that verify our signatures; unusable members are
    /// skipped and an empty or unusable set is an error.
    #[test]
    fn parse_jwks_reads_usable_keys_and_skips_the_rest() {
        let mut published = Vec::new();
        let mut signers = Vec::new();
        for &alg in Algorithm::ALL {
            let key = crate::crypto::SigningKey::from_pkcs8(
                alg,
                &crate::crypto::generate_pkcs8(alg).unwrap(),
            )
            .unwrap();
            published.push(PublicJwk::new(alg.name(), alg, &key.public_components()));
            signers.push(key);
        }
        let body = render_jwks(&published);
        let mut document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let keys = document["keys"].as_array_mut().unwrap();
        keys.push(serde_json::json!({"kty":"oct","kid":"hmac","k":"AAAA"}));
        keys.push(serde_json::json!({"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"}));
        keys.push(serde_json::json!({"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}));
        let parsed = parse_jwks(document.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.len(), Algorithm::ALL.len());
        for ((kid, key), signer) in parsed.iter().zip(&signers) {
            assert_eq!(kid, signer.algorithm().name());
            assert_eq!(key.algorithm(), signer.algorithm());
            assert!(key.verify(b"m", &signer.sign(b"m").unwrap()));
        }
        assert_eq!(parse_jwks(b"[]").unwrap_err(), JwksError::NotAJwks);
        assert_eq!(
            parse_jwks(br#"{"keys":[]}"#).unwrap_err(),
            JwksError::NoUsableKey("it is empty".into())
        );
        assert_eq!(
            parse_jwks(br#"{"keys":[{"kty":"oct","kid":"h"}]}"#).unwrap_err().to_string(),
            "the JWKS holds no key this authority can verify with (key 0: unsupported key type oct )"
        );
    }

    /// RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    #[test]
    fn thumbprint_matches_rfc8037_example() {
        let x = b64::decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert_eq!(
            thumbprint(&PublicComponents::Ed25519 { x }),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
