//! The `authorization` metadata: which scheme a caller presents, and the client a Basic
//! credential proves.

use std::collections::HashMap;

use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::{Caller, CallerKind, IdentityError};
use crate::callers::policy::Client;
use token_authority_jose::crypto;

/// The credential in the `authorization` metadata.
pub(crate) enum Presented<'a> {
    Nothing,
    Bearer(&'a str),
    Basic {
        id: String,
        secret: Zeroizing<String>,
    },
}

/// Reads `authorization` (schemes are case-insensitive, RFC 7235).
pub(crate) fn parse_authorization(value: Option<&str>) -> Result<Presented<'_>, IdentityError> {
    let Some(value) = value else {
        return Ok(Presented::Nothing);
    };
    let (scheme, credentials) = value.split_once(' ').ok_or(IdentityError::Scheme)?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Presented::Bearer(credentials));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(IdentityError::Scheme);
    }
    use base64::Engine as _;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .map_err(|_| IdentityError::BasicMalformed)?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| IdentityError::BasicMalformed)?;
    let (id, secret) = text.split_once(':').ok_or(IdentityError::BasicMalformed)?;
    if id.is_empty() {
        return Err(IdentityError::BasicMalformed);
    }
    Ok(Presented::Basic {
        id: id.to_owned(),
        secret: Zeroizing::new(secret.to_owned()),
    })
}

/// The caller a Basic credential proves: its id and secret as sent, else (when that fails
/// and they hold a `+` or a `%`) each form-urlencoded, as RFC 6749 section 2.3.1 has OAuth
/// clients send them (`+` a space, `%2B` a plus): OAuth libraries encode, `curl -u` and
/// grpcurl do not, and a secret is the same secret either way.
pub(crate) fn basic_caller(
    clients: &HashMap<String, Client>,
    id: &str,
    secret: &str,
) -> Result<Caller, IdentityError> {
    let error = match client_caller(clients, id, secret) {
        Ok(caller) => return Ok(caller),
        Err(error) => error,
    };
    let decode = |text: &str| -> Option<Zeroizing<String>> {
        if !text.contains(['+', '%']) {
            return None;
        }
        let spaced = Zeroizing::new(text.replace('+', " "));
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|decoded| Zeroizing::new(decoded.into_owned()))
    };
    match (decode(id), decode(secret)) {
        (None, None) => Err(error),
        (decoded_id, decoded_secret) => client_caller(
            clients,
            decoded_id.as_deref().map_or(id, String::as_str),
            decoded_secret.as_deref().map_or(secret, String::as_str),
        ),
    }
}

/// The caller a client secret proves. Unknown ids cost the same comparison as known ones.
pub(crate) fn client_caller(
    clients: &HashMap<String, Client>,
    id: &str,
    secret: &str,
) -> Result<Caller, IdentityError> {
    let presented = crypto::sha256(secret.as_bytes());
    let (expected, known) = match clients.get(id) {
        Some(client) => (client.secret_sha256, true),
        None => ([0u8; 32], false),
    };
    let matches: bool = expected.ct_eq(&presented).into();
    if !(known && matches) {
        return Err(IdentityError::BadSecret);
    }
    Ok(Caller {
        name: format!("client:{id}"),
        kind: CallerKind::ClientSecret,
        certificate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_header_table() {
        use base64::Engine as _;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(matches!(parse_authorization(None), Ok(Presented::Nothing)));
        assert!(matches!(
            parse_authorization(Some("bearer abc")),
            Ok(Presented::Bearer("abc"))
        ));
        match parse_authorization(Some(&basic("legacy-batch:s3:cret"))) {
            Ok(Presented::Basic { id, secret }) => {
                assert_eq!((id.as_str(), secret.as_str()), ("legacy-batch", "s3:cret"))
            }
            _ => panic!("basic credentials"),
        }
        for (value, expected) in [
            ("Token abc".to_owned(), IdentityError::Scheme),
            ("Bearer".to_owned(), IdentityError::Scheme),
            ("Basic !!!".to_owned(), IdentityError::BasicMalformed),
            (basic("no-colon"), IdentityError::BasicMalformed),
            (basic(":secret"), IdentityError::BasicMalformed),
        ] {
            assert_eq!(
                parse_authorization(Some(&value)).err(),
                Some(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn client_secrets_compare_digests() {
        let clients = HashMap::from([(
            "batch".to_owned(),
            Client {
                secret_sha256: crypto::sha256(b"right"),
            },
        )]);
        assert_eq!(
            client_caller(&clients, "batch", "right").unwrap().name,
            "client:batch"
        );
        for (id, secret) in [("batch", "wrong"), ("batch", ""), ("other", "right")] {
            assert_eq!(
                client_caller(&clients, id, secret).unwrap_err(),
                IdentityError::BadSecret
            );
        }
    }

    /// RFC 6749 section 2.3.1: OAuth clients form-urlencode the id and the secret inside
    /// Basic; others send them as they are. Both prove the client, nothing else does.
    #[test]
    fn basic_credentials_are_read_as_sent_or_form_urlencoded() {
        let secret = "a+b/c=d%e:f g";
        let clients = HashMap::from([
            (
                "special".to_owned(),
                Client {
                    secret_sha256: crypto::sha256(secret.as_bytes()),
                },
            ),
            (
                "batch job".to_owned(),
                Client {
                    secret_sha256: crypto::sha256(b"plain"),
                },
            ),
        ]);
        let encoded = "a%2Bb%2Fc%3Dd%25e%3Af+g";
        for (id, presented) in [
            ("special", secret),
            ("special", encoded),
            ("special", "a%2Bb%2Fc%3Dd%25e%3Af%20g"),
            ("batch+job", "plain"),
            ("batch%20job", "plain"),
        ] {
            assert!(
                basic_caller(&clients, id, presented).is_ok(),
                "{id}:{presented}"
            );
        }
        for (id, presented) in [
            ("special", "a b/c=d%e:f g"),
            ("special", "a%2Bb%2Fc%3Dd%25e%3Af"),
            ("special", "%FF"),
            ("special", "wrong"),
            ("batch", "plain"),
        ] {
            assert_eq!(
                basic_caller(&clients, id, presented).unwrap_err(),
                IdentityError::BadSecret,
                "{id}:{presented}"
            );
        }
    }
}
