//! Public JWKs (RFC 7517), their RFC 7638 thumbprints (our key ids), and the JWKS document.
//!
//! Only public members can be expressed here: the type has no field for `d`, `p`, `q`, `dp`,
//! `dq` or `qi`, so no code path can publish private material by accident.

use serde::Serialize;

use crate::{
    b64,
    crypto::{sha256, Algorithm, PublicComponents},
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
