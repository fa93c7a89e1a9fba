//! A client certificate as a credential: the caller name it carries (a SPIFFE ID, else a
//! DNS SAN, each checked), and its validity at the time of each request, since a connection
//! outlives the handshake that checked it.

use std::sync::Arc;

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

use super::{checked_name, Caller, CallerKind, ClientCertificate, IdentityError};
use crate::callers::names::{check_spiffe_id, is_host_name};

/// The caller a client certificate names, while the certificate is valid at `now` (unix
/// seconds, the server's clock): the handshake checked it once, but a connection outlives
/// it, so every request checks again.
pub(crate) fn certificate_caller(der: Arc<[u8]>, now: u64) -> Result<Caller, IdentityError> {
    let name = certificate_name(&der)?;
    Ok(Caller {
        name: checked_name(name)?,
        kind: CallerKind::Certificate,
        certificate: Some(valid_certificate(der, now)?),
    })
}

/// The client certificate of a call, while it is valid at `now`.
pub(super) fn valid_certificate(
    der: Arc<[u8]>,
    now: u64,
) -> Result<ClientCertificate, IdentityError> {
    let not_after = {
        let certificate = parse_certificate(&der)?;
        let validity = certificate.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
        let not_after = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
        if now < not_before {
            return Err(IdentityError::Certificate(format!(
                "not valid before {} (its notBefore)",
                rfc3339(not_before)
            )));
        }
        if now >= not_after {
            return Err(IdentityError::Certificate(format!(
                "expired at {} (its notAfter); reconnect with a renewed certificate",
                rfc3339(not_after)
            )));
        }
        not_after
    };
    Ok(ClientCertificate {
        der,
        lifetime_left: not_after - now,
        not_after,
    })
}

/// The caller name a certificate carries: its SPIFFE ID when it is an X.509-SVID, else its
/// first DNS SAN.
pub(crate) fn certificate_name(der: &[u8]) -> Result<String, IdentityError> {
    name_of(&parse_certificate(der)?)
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    X509Certificate::from_der(der)
        .map(|(_, certificate)| certificate)
        .map_err(|_| IdentityError::Certificate("does not parse".into()))
}

/// A certificate with a `spiffe:` URI SAN is an X.509-SVID and must have exactly one URI SAN
/// (X509-SVID.md section 2: a validator MUST reject more); a certificate without one is named
/// by its first DNS SAN, which must be a host name, so that no SAN can pass for another kind
/// of name (`system:serviceaccount:...`).
fn name_of(certificate: &X509Certificate<'_>) -> Result<String, IdentityError> {
    let refused = |why: &str| IdentityError::Certificate(why.to_owned());
    let names = certificate
        .subject_alternative_name()
        .map_err(|_| refused("its subjectAltName does not parse"))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let is_spiffe = |uri: &&str| {
        uri.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
    };
    if uris.iter().any(is_spiffe) {
        let [uri] = uris[..] else {
            return Err(refused(
                "an X.509-SVID must have exactly one URI SAN, and this one has several",
            ));
        };
        check_spiffe_id(uri).map_err(|why| refused(&format!("its SPIFFE ID {why}")))?;
        return Ok(uri.to_owned());
    }
    let dns = names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some(*dns),
        _ => None,
    });
    let dns = dns.ok_or_else(|| refused("has no spiffe:// URI SAN nor DNS SAN"))?;
    if !is_host_name(dns) {
        return Err(refused(
            "its DNS SAN is not a host name (labels of a-z, 0-9 and -, joined by dots)",
        ));
    }
    Ok(dns.to_owned())
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}
