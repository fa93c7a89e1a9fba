//! Key objects in the token: generating a pair, reading its public half, finding and
//! destroying the objects of a key by their shared CKA_ID.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use token_authority_jose::crypto::{Algorithm, PublicComponents, VerifyingKey};
use token_authority_jose::jwk::thumbprint;

use super::error::{failed, rv, Pkcs11Error};
use super::mechanisms::{keygen_mechanism, sign_mechanism_type, RSA_BITS};
use super::TokenKey;

/// Bytes of a new key's CKA_ID.
pub(super) const OBJECT_ID_BYTES: usize = 16;

/// CKA_EC_PARAMS of P-256: the DER OID 1.2.840.10045.3.1.7.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// CKA_EC_PARAMS of Ed25519: the DER OID 1.3.101.112 (RFC 8410), which most tokens take,
/// then the PKCS#11 3.0 curve name as a DER PrintableString.
const ED25519_PARAMS: [&[u8]; 2] = [&[0x06, 0x03, 0x2b, 0x65, 0x70], b"\x13\x0cedwards25519"];
const RSA_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// The CKA_KEY_TYPE of `alg`'s keys.
fn key_type(alg: Algorithm) -> KeyType {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => KeyType::RSA,
        Algorithm::ES256 => KeyType::EC,
        Algorithm::EdDSA => KeyType::EC_EDWARDS,
    }
}

/// Generates a key pair for `alg` with CKA_ID `id`, reads its public key back, and labels
/// both objects with its kid. What it made is destroyed if a later step fails.
pub(super) fn generate(
    session: &Session,
    label: &str,
    alg: Algorithm,
    id: &[u8],
) -> Result<TokenKey, Pkcs11Error> {
    let (public, private) =
        generate_pair(session, alg, id).map_err(failed(label, "generating a key pair"))?;
    let finish = || {
        let components = read_public(session, label, alg, public)?;
        VerifyingKey::from_components(alg, components.clone()).map_err(|error| {
            Pkcs11Error::BadPublicKey {
                label: label.to_owned(),
                alg,
                reason: error.to_string(),
            }
        })?;
        let kid = thumbprint(&components);
        for object in [public, private] {
            session
                .update_attributes(object, &[Attribute::Label(kid.clone().into_bytes())])
                .map_err(failed(label, "labelling a key"))?;
        }
        Ok(TokenKey {
            kid,
            alg,
            object_id: object_id(id),
            public: components,
        })
    };
    finish().inspect_err(|_| {
        let _ = destroy_all(session, id);
    })
}

/// The private key `key` records, after checking the token's objects against the record:
/// one private key with its CKA_ID, of its algorithm's key type, allowed its mechanism, and
/// beside it one public key, the one recorded.
pub(super) fn find_recorded(
    session: &Session,
    label: &str,
    key: &TokenKey,
    id: &[u8],
) -> Result<ObjectHandle, Pkcs11Error> {
    let mismatch = |reason: String| Pkcs11Error::KeyMismatch {
        label: label.to_owned(),
        object_id: key.object_id.clone(),
        reason,
    };
    let private = find_private(session, label, id)?;
    let attributes = session
        .get_attributes(
            private,
            &[AttributeType::KeyType, AttributeType::AllowedMechanisms],
        )
        .map_err(failed(label, "reading a key's type"))?;
    if !attributes.contains(&Attribute::KeyType(key_type(key.alg))) {
        return Err(mismatch(format!("it is not a {} key", key.alg)));
    }
    let mechanism = sign_mechanism_type(key.alg);
    for attribute in &attributes {
        if let Attribute::AllowedMechanisms(allowed) = attribute {
            if !allowed.is_empty() && !allowed.contains(&mechanism) {
                return Err(mismatch(format!(
                    "the token allows it no {mechanism}, which {} needs",
                    key.alg
                )));
            }
        }
    }
    let publics = find(session, ObjectClass::PUBLIC_KEY, id)
        .map_err(failed(label, "finding a public key"))?;
    let [public] = publics.as_slice() else {
        return Err(mismatch(format!(
            "{} public key objects carry its CKA_ID, not one",
            publics.len()
        )));
    };
    if read_public(session, label, key.alg, *public)? != key.public {
        return Err(mismatch(
            "its public key differs from the stored one".to_owned(),
        ));
    }
    Ok(private)
}

/// Generates a key pair for `alg` whose two objects carry `id`: the private key a
/// sensitive, never extractable token object that can only sign, tied to `alg`'s
/// mechanism where the token takes CKA_ALLOWED_MECHANISMS. Returns (public, private).
fn generate_pair(
    session: &Session,
    alg: Algorithm,
    id: &[u8],
) -> Result<(ObjectHandle, ObjectHandle), CkError> {
    let params: &[&[u8]] = match alg {
        Algorithm::RS256 | Algorithm::PS256 => &[&[]],
        Algorithm::ES256 => &[P256_PARAMS],
        Algorithm::EdDSA => &ED25519_PARAMS,
    };
    let mut last = None;
    for ec_params in params {
        // The most a token takes: some refuse CKA_ALLOWED_MECHANISMS, or the usage
        // attributes a key type does not have (CKA_DECRYPT on an EC key).
        for (mechanisms, usage) in [(true, true), (false, true), (true, false), (false, false)] {
            match session.generate_key_pair(
                &keygen_mechanism(alg),
                &public_template(alg, id, ec_params),
                &private_template(alg, id, Limits { mechanisms, usage }),
            ) {
                Ok(pair) => {
                    if !mechanisms {
                        tracing::info!(
                            alg = alg.name(),
                            "the PKCS#11 token does not take CKA_ALLOWED_MECHANISMS; the key is not tied to one mechanism"
                        );
                    }
                    if !usage {
                        tracing::info!(
                            alg = alg.name(),
                            "the PKCS#11 token does not take CKA_DECRYPT, CKA_UNWRAP and CKA_DERIVE false; its defaults stand"
                        );
                    }
                    return Ok(pair);
                }
                Err(error) if template_refused(&error) => last = Some(error),
                Err(error) => return Err(error),
            }
        }
    }
    Err(last.unwrap_or(CkError::InvalidValue))
}

/// Whether the token refused a template attribute rather than the operation.
fn template_refused(error: &CkError) -> bool {
    matches!(
        rv(error),
        Some(
            RvError::AttributeTypeInvalid
                | RvError::AttributeValueInvalid
                | RvError::TemplateInconsistent
                | RvError::CurveNotSupported
                | RvError::DomainParamsInvalid
        )
    )
}

fn public_template(alg: Algorithm, id: &[u8], ec_params: &[u8]) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Id(id.to_vec()),
    ];
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            template.push(Attribute::ModulusBits(u64::from(RSA_BITS).into()));
            template.push(Attribute::PublicExponent(RSA_EXPONENT.to_vec()));
        }
        Algorithm::ES256 | Algorithm::EdDSA => {
            template.push(Attribute::EcParams(ec_params.to_vec()));
        }
    }
    template
}

/// What a private key's template limits beyond signing.
#[derive(Clone, Copy)]
struct Limits {
    /// `CKA_ALLOWED_MECHANISMS`: the one signing mechanism.
    mechanisms: bool,
    /// `CKA_DECRYPT`, `CKA_UNWRAP`, `CKA_DERIVE` false.
    usage: bool,
}

fn private_template(alg: Algorithm, id: &[u8], limits: Limits) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Id(id.to_vec()),
    ];
    if limits.usage {
        // Tokens default these to true (SoftHSM does): a signing key does nothing else, even
        // where the allowed-mechanisms list is not honoured.
        template.extend([
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ]);
    }
    if limits.mechanisms {
        template.push(Attribute::AllowedMechanisms(vec![sign_mechanism_type(alg)]));
    }
    template
}

/// Reads the public half of `alg`'s key from its public key object, as a JWK publishes it.
fn read_public(
    session: &Session,
    label: &str,
    alg: Algorithm,
    public: ObjectHandle,
) -> Result<PublicComponents, Pkcs11Error> {
    let bad = |reason: &str| Pkcs11Error::BadPublicKey {
        label: label.to_owned(),
        alg,
        reason: reason.to_owned(),
    };
    let failed = failed(label, "reading a public key");
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            let (mut n, mut e) = (None, None);
            for attribute in session
                .get_attributes(
                    public,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(failed)?
            {
                match attribute {
                    Attribute::Modulus(value) => n = Some(strip_leading_zeros(value)),
                    Attribute::PublicExponent(value) => e = Some(strip_leading_zeros(value)),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => {
                    Ok(PublicComponents::Rsa { n, e })
                }
                _ => Err(bad("no CKA_MODULUS or CKA_PUBLIC_EXPONENT")),
            }
        }
        Algorithm::ES256 | Algorithm::EdDSA => {
            let value = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(failed)?
                .into_iter()
                .find_map(|attribute| match attribute {
                    Attribute::EcPoint(value) => Some(value),
                    _ => None,
                })
                .ok_or_else(|| bad("no CKA_EC_POINT"))?;
            public_from_ec_point(alg, &value)
                .ok_or_else(|| bad("CKA_EC_POINT is not a point of its curve"))
        }
    }
}

/// The key in CKA_EC_POINT, which tokens give as a DER OCTET STRING around the point (as
/// PKCS#11 specifies) or as the bare point. The length tells which: an uncompressed P-256
/// point starts with 0x04, as the OCTET STRING tag does.
fn public_from_ec_point(alg: Algorithm, value: &[u8]) -> Option<PublicComponents> {
    let raw_len = match alg {
        Algorithm::ES256 => 65,
        _ => 32,
    };
    let point = if value.len() == raw_len {
        value
    } else if value.len() == raw_len + 2 && value[0] == 0x04 && usize::from(value[1]) == raw_len {
        &value[2..]
    } else {
        return None;
    };
    match alg {
        Algorithm::ES256 if point[0] == 0x04 => Some(PublicComponents::EcP256 {
            x: point[1..33].to_vec(),
            y: point[33..65].to_vec(),
        }),
        Algorithm::EdDSA => Some(PublicComponents::Ed25519 { x: point.to_vec() }),
        _ => None,
    }
}

fn strip_leading_zeros(mut value: Vec<u8>) -> Vec<u8> {
    let zeros = value.iter().take_while(|&&b| b == 0).count();
    value.drain(..zeros);
    value
}

/// The objects of `class` whose CKA_ID is `id`.
fn find(session: &Session, class: ObjectClass, id: &[u8]) -> Result<Vec<ObjectHandle>, CkError> {
    session.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
}

/// The one private key whose CKA_ID is `id`.
pub(super) fn find_private(
    session: &Session,
    label: &str,
    id: &[u8],
) -> Result<ObjectHandle, Pkcs11Error> {
    let found =
        find(session, ObjectClass::PRIVATE_KEY, id).map_err(|source| Pkcs11Error::Token {
            label: label.to_owned(),
            doing: "finding a key",
            source,
        })?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Pkcs11Error::KeyNotFound {
            label: label.to_owned(),
            object_id: object_id(id),
        }),
        many => Err(Pkcs11Error::KeyMismatch {
            label: label.to_owned(),
            object_id: object_id(id),
            reason: format!("{} private keys carry this CKA_ID", many.len()),
        }),
    }
}

/// Destroys every key object whose CKA_ID is `id`; an object already gone is no error.
pub(super) fn destroy_all(session: &Session, id: &[u8]) -> Result<(), CkError> {
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for object in find(session, class, id)? {
            match session.destroy_object(object) {
                Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// A CKA_ID as the key set stores it: lowercase hex.
pub(super) fn object_id(id: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    id.iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]])
        .map(char::from)
        .collect()
}

/// The CKA_ID written as `object_id` writes it.
pub(super) fn parse_object_id(object_id: &str) -> Result<Vec<u8>, Pkcs11Error> {
    let bad = || Pkcs11Error::BadObjectId {
        object_id: object_id.to_owned(),
    };
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if object_id.is_empty() || !object_id.len().is_multiple_of(2) {
        return Err(bad());
    }
    object_id
        .as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_lowercase_hex_both_ways() {
        let id: Vec<u8> = (0..=255).collect();
        let text = object_id(&id);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 4..], "feff");
        assert_eq!(parse_object_id(&text).unwrap(), id);
        for bad in ["", "a", "0G", "AB", "0x12", "1 "] {
            assert!(
                matches!(parse_object_id(bad), Err(Pkcs11Error::BadObjectId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ec_points_wrapped_or_bare() {
        let mut point = vec![0x04];
        point.extend([0x41; 32]);
        point.extend([0x42; 32]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend(&point);
        let expected = PublicComponents::EcP256 {
            x: vec![0x41; 32],
            y: vec![0x42; 32],
        };
        assert_eq!(
            public_from_ec_point(Algorithm::ES256, &wrapped),
            Some(expected.clone())
        );
        assert_eq!(
            public_from_ec_point(Algorithm::ES256, &point),
            Some(expected)
        );
        assert_eq!(public_from_ec_point(Algorithm::ES256, &point[..64]), None);
        let mut compressed = point.clone();
        compressed[0] = 0x02;
        assert_eq!(public_from_ec_point(Algorithm::ES256, &compressed), None);

        let ed = [0x20u8; 32];
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend(ed);
        let expected = PublicComponents::Ed25519 { x: ed.to_vec() };
        assert_eq!(
            public_from_ec_point(Algorithm::EdDSA, &wrapped),
            Some(expected.clone())
        );
        assert_eq!(public_from_ec_point(Algorithm::EdDSA, &ed), Some(expected));
        assert_eq!(public_from_ec_point(Algorithm::EdDSA, &wrapped[1..]), None);
    }

    #[test]
    fn rsa_components_lose_their_leading_zeros() {
        assert_eq!(strip_leading_zeros(vec![0, 0, 1, 0]), vec![1, 0]);
        assert_eq!(strip_leading_zeros(vec![0]), Vec::<u8>::new());
    }
}
