//! Fetching an issuer's JWKS: from its file, its `jwks_uri`, or by OIDC discovery, over
//! HTTPS (plain HTTP only to a loopback host) with a client of the issuer's own that trusts
//! its `ca_file` or the built-in roots. The `bearer_token_file` credential goes only to the
//! configured URL's origin; redirects are not followed.

use std::path::PathBuf;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

use super::{FetchError, JwksSource, TrustedIssuer, FETCH_TIMEOUT};
use crate::telemetry::chain;
use token_authority_jose::{crypto::VerifyingKey, jwk};

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub(super) type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

impl TrustedIssuer {
    /// Fetches and parses the issuer's JWKS, without touching the cache.
    pub async fn fetch(&self) -> Result<Vec<(String, VerifyingKey)>, FetchError> {
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
        let http = |reason: String| FetchError::Http {
            url: url.to_owned(),
            reason,
        };
        let mut request = hyper::Request::get(url).header("accept", "application/json");
        let credential = self
            .config
            .bearer_token_file
            .as_ref()
            .filter(|_| Origin::of(url).is_some_and(|o| Some(o) == self.credential_origin()));
        if let Some(path) = credential {
            let token = String::from_utf8(read(path)?).map_err(|_| FetchError::Read {
                path: path.display().to_string(),
                source: std::io::Error::other("not UTF-8"),
            })?;
            request = request.header("authorization", format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| http(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| http("timed out".into()))?
            // hyper's "client error (Connect)" alone says too little: its causes too.
            .map_err(|e| http(chain(&e).to_string()))?;
        if !response.status().is_success() {
            return Err(http(format!("HTTP {}", response.status())));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect(),
        )
        .await
        .map_err(|_| http("timed out reading the body".into()))?
        .map_err(|e| http(e.to_string()))?;
        Ok(body.to_bytes().to_vec())
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

fn read(path: &PathBuf) -> Result<Vec<u8>, FetchError> {
    std::fs::read(path).map_err(|source| FetchError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A URL keys may be fetched from: HTTPS, or HTTP to a loopback host (tests, a sidecar).
pub fn check_fetch_url(url: &str) -> Result<(), String> {
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

pub(super) fn https_client(ca_file: Option<&PathBuf>) -> Result<HttpsClient, FetchError> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read(path)?;
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                // A certificate the store cannot use is skipped; none usable is an error.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(FetchError::CaFile(path.display().to_string()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(token_authority_jose::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Http {
            url: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
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
