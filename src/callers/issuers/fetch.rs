//! Fetching an issuer's JWKS: from its file, its `jwks_uri`, or by OIDC discovery, over
//! HTTPS (plain HTTP only to a loopback host) with a client of the issuer's own that trusts
//! its `ca_file` or the built-in roots. The `bearer_token_file` credential goes only to the
//! configured URL's origin; redirects are not followed.

use std::path::PathBuf;

use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::Value;

use super::{FetchError, JwksSource, TrustedIssuer};
use token_authority_jose::{
    crypto::VerifyingKey,
    fetch::{Fetched, Fetcher},
    jwk,
};

impl TrustedIssuer {
    /// Fetches and parses the issuer's JWKS, without touching the cache.
    pub(crate) async fn fetch(&self) -> Result<Vec<(String, VerifyingKey)>, FetchError> {
        let body = match &self.config.source {
            JwksSource::File(path) => read(path)?,
            JwksSource::Uri(uri) => self.get(uri).await?,
            JwksSource::Discovery => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let document = self.get(&url).await?;
                let jwks_uri = serde_json::from_slice::<Value>(&document)
                    .ok()
                    .and_then(|doc| doc.get("jwks_uri")?.as_str().map(str::to_owned))
                    .ok_or_else(|| FetchError::Discovery(url.clone()))?;
                if let Err(reason) = check_fetch_url(&jwks_uri) {
                    return Err(FetchError::Discovery(format!("{jwks_uri}: {reason}")));
                }
                self.get(&jwks_uri).await?
            }
        };
        Ok(jwk::parse_jwks(&body)?)
    }

    /// The origin the `bearer_token_file` credential belongs to: the configured URL's.
    fn credential_origin(&self) -> Option<Origin> {
        match &self.config.source {
            JwksSource::Uri(uri) => Origin::of(uri),
            JwksSource::Discovery => Origin::of(&self.config.issuer),
            JwksSource::File(_) => None,
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let mut headers = HeaderMap::new();
        let credential = self
            .config
            .bearer_token_file
            .as_ref()
            .filter(|_| Origin::of(url).is_some_and(|o| Some(o) == self.credential_origin()));
        if let Some(path) = credential {
            let unreadable = |path: &PathBuf, why: &str| FetchError::Read {
                path: path.display().to_string(),
                source: std::io::Error::other(why.to_owned()),
            };
            let token =
                String::from_utf8(read(path)?).map_err(|_| unreadable(path, "not UTF-8"))?;
            let value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| unreadable(path, "not a valid header value"))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let http = |source| FetchError::Http {
            url: url.to_owned(),
            source: Box::new(source),
        };
        match self.client.get(url, headers).await.map_err(http)? {
            Fetched::Document { body, .. } => Ok(body.to_vec()),
            // Nothing asked for a conditional answer: a 304 here is the server's mistake.
            Fetched::NotModified { .. } => Err(http(
                token_authority_jose::fetch::FetchError::Status(hyper::StatusCode::NOT_MODIFIED),
            )),
        }
    }
}

/// The origin of a URL (RFC 6454): scheme, host and port, the port made explicit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &str) -> Option<Origin> {
        let uri = url.parse::<hyper::Uri>().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri.port_u16().or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        })?;
        Some(Origin {
            host: uri.host()?.to_ascii_lowercase(),
            scheme,
            port,
        })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, FetchError> {
    crate::config::read::regular_file(path, crate::config::read::DOCUMENT_MAX).map_err(|source| {
        FetchError::Read {
            path: path.display().to_string(),
            source,
        }
    })
}

/// A URL keys may be fetched from: HTTPS, or HTTP to a loopback host (tests, a sidecar).
pub(crate) fn check_fetch_url(url: &str) -> Result<(), String> {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Err("not a URL".into());
    };
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err("plain http is allowed only to a loopback host; use https".into()),
        _ => Err("not an https URL".into()),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The issuer's client: trusting its `ca_file` alone, or the public web PKI roots.
pub(super) fn https_client(ca_file: Option<&PathBuf>) -> Result<Fetcher, FetchError> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};

    let fetcher = match ca_file {
        Some(path) => {
            let pem = read(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                // A certificate the store cannot use is skipped; none usable is an error.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(FetchError::CaFile(path.display().to_string()));
            }
            Fetcher::with_roots(roots)
        }
        None => Fetcher::with_webpki_roots(),
    };
    fetcher.map_err(FetchError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_urls_are_https_or_loopback_http() {
        for ok in [
            "https://kubernetes.default.svc/openid/v1/jwks",
            "http://127.0.0.1:8080/.well-known/jwks.json",
            "http://[::1]:80/jwks",
            "http://localhost/jwks",
        ] {
            assert_eq!(check_fetch_url(ok), Ok(()), "{ok}");
        }
        for (bad, reason) in [
            (
                "http://issuer.example/jwks",
                "plain http is allowed only to a loopback host; use https",
            ),
            ("ftp://issuer.example/jwks", "not an https URL"),
            ("jwks.json", "not an https URL"),
        ] {
            assert_eq!(check_fetch_url(bad), Err(reason.to_owned()), "{bad}");
        }
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        let same = [
            ("https://Issuer.example/a", "https://issuer.example:443/b?c"),
            ("http://127.0.0.1/x", "http://127.0.0.1:80/y"),
        ];
        for (a, b) in same {
            assert_eq!(Origin::of(a), Origin::of(b), "{a} {b}");
            assert!(Origin::of(a).is_some());
        }
        let different = [
            ("https://issuer.example/a", "http://issuer.example/a"),
            ("https://issuer.example/a", "https://issuer.example:8443/a"),
            ("https://issuer.example/a", "https://keys.issuer.example/a"),
            ("https://issuer.example/a", "https://issuer.example.evil/a"),
        ];
        for (a, b) in different {
            assert_ne!(Origin::of(a), Origin::of(b), "{a} {b}");
        }
        assert_eq!(Origin::of("not a url"), None);
    }
}
