//! How a key held in a PKCS#11 token is stored, by sled and PostgreSQL alike: its objects'
//! CKA_ID and its public key as JWK members (base64url). Nothing secret: the private half
//! never leaves the token.

use serde::{Deserialize, Serialize};

use crate::authority::keys::TokenObject;
use token_authority_jose::{b64, crypto::PublicComponents};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredToken {
    object_id: String,
    public: StoredPublic,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kty", deny_unknown_fields)]
enum StoredPublic {
    #[serde(rename = "RSA")]
    Rsa { n: String, e: String },
    #[serde(rename = "EC")]
    Ec { x: String, y: String },
    #[serde(rename = "OKP")]
    Okp { x: String },
}

impl StoredToken {
    pub(crate) fn from_object(object: &TokenObject) -> StoredToken {
        let public = match &object.public {
            PublicComponents::Rsa { n, e } => StoredPublic::Rsa {
                n: b64::encode(n),
                e: b64::encode(e),
            },
            PublicComponents::EcP256 { x, y } => StoredPublic::Ec {
                x: b64::encode(x),
                y: b64::encode(y),
            },
            PublicComponents::Ed25519 { x } => StoredPublic::Okp { x: b64::encode(x) },
        };
        StoredToken {
            object_id: object.object_id.clone(),
            public,
        }
    }

    /// The object, or which member does not decode.
    pub(crate) fn into_object(self) -> Result<TokenObject, &'static str> {
        let decode = |text: &str, member: &'static str| b64::decode(text).map_err(|_| member);
        let public = match self.public {
            StoredPublic::Rsa { n, e } => PublicComponents::Rsa {
                n: decode(&n, "n")?,
                e: decode(&e, "e")?,
            },
            StoredPublic::Ec { x, y } => PublicComponents::EcP256 {
                x: decode(&x, "x")?,
                y: decode(&y, "y")?,
            },
            StoredPublic::Okp { x } => PublicComponents::Ed25519 {
                x: decode(&x, "x")?,
            },
        };
        if self.object_id.is_empty() || !self.object_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("object_id");
        }
        Ok(TokenObject {
            object_id: self.object_id,
            public,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_public_key_comes_back_as_it_was_stored() {
        for public in [
            PublicComponents::Rsa {
                n: vec![0xc1; 256],
                e: vec![1, 0, 1],
            },
            PublicComponents::EcP256 {
                x: vec![7; 32],
                y: vec![9; 32],
            },
            PublicComponents::Ed25519 { x: vec![3; 32] },
        ] {
            let object = TokenObject {
                object_id: "00ff10".into(),
                public,
            };
            let text = serde_json::to_string(&StoredToken::from_object(&object)).unwrap();
            let back: StoredToken = serde_json::from_str(&text).unwrap();
            assert_eq!(back.into_object().unwrap(), object, "{text}");
        }
    }

    #[test]
    fn a_damaged_member_is_named() {
        for (text, member) in [
            (
                r#"{"object_id":"zz","public":{"kty":"OKP","x":"AwMD"}}"#,
                "object_id",
            ),
            (r#"{"object_id":"01","public":{"kty":"OKP","x":"*"}}"#, "x"),
            (
                r#"{"object_id":"01","public":{"kty":"RSA","n":"AQAB","e":"+"}}"#,
                "e",
            ),
        ] {
            let stored: StoredToken = serde_json::from_str(text).unwrap();
            assert_eq!(stored.into_object().unwrap_err(), member, "{text}");
        }
    }
}
