//! Fetching a JSON document (a JWKS, an OIDC discovery document) over HTTPS: the one HTTP
//! client the server's trusted issuers and the client's JWKS fallback share.
//!
//! A fetch is bounded in time (the request and the body each) and in size, and trusts
//! either the public web PKI roots or the caller's own roots, on the crypto provider of
//! [`crate::tls`]. Redirects are not followed. What to ask for (credentials, an ETag) and
//! what to make of the answer stay with the caller.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// How long the request, and then the body, may each take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest document accepted: key sets and discovery documents are a few kilobytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a fetch failed. Each variant's text includes its cause's (hyper's own "client error
/// (Connect)" says too little), so the causes are not repeated as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not a URL")]
    NotUrl,
    #[error("cannot build the request: {0}")]
    Request(http::Error),
    #[error("timed out")]
    TimedOut,
    #[error("{}", with_causes(.0))]
    Connect(hyper_util::client::legacy::Error),
    #[error("timed out reading the body")]
    BodyTimedOut,
    #[error("{0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
}

/// A fetched document: `NotModified` when the caller's `If-None-Match` still holds.
#[derive(Debug)]
pub enum Fetched {
    Document {
        body: Bytes,
        etag: Option<String>,
        max_age: Option<Duration>,
    },
    NotModified {
        max_age: Option<Duration>,
    },
}

/// An HTTPS (and loopback HTTP) client for documents; cheap to clone.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    /// Trusting the public web PKI roots.
    pub fn with_webpki_roots() -> Result<Fetcher, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Fetcher::with_roots(roots)
    }

    /// Trusting only `roots` (a cluster's private CA).
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<Fetcher, FetchError> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(FetchError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher::with_tls(tls))
    }

    /// With a TLS configuration of the caller's (a client certificate, custom roots).
    pub fn with_tls(tls: rustls::ClientConfig) -> Fetcher {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// One GET of `url` with `headers` (`accept: application/json` is added). A `2xx` is a
    /// document, `304` is `NotModified`, anything else an error.
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<Fetched, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::NotUrl)?;
        let mut request = http::Request::get(uri)
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .body(Empty::new())
            .map_err(FetchError::Request)?;
        request.headers_mut().extend(headers);
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| FetchError::TimedOut)?
            .map_err(FetchError::Connect)?;
        let max_age = max_age(response.headers());
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified { max_age }),
            status if status.is_success() => {
                let etag = response
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect(),
                )
                .await
                .map_err(|_| FetchError::BodyTimedOut)?
                .map_err(FetchError::Body)?
                .to_bytes();
                Ok(Fetched::Document {
                    body,
                    etag,
                    max_age,
                })
            }
            status => Err(FetchError::Status(status)),
        }
    }
}

/// `max-age` from `Cache-Control`; `no-store`/`no-cache` mean zero.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, seconds)) = directive.split_once('=') {
            if name.trim().eq_ignore_ascii_case("max-age") {
                age = seconds.trim().parse().ok().map(Duration::from_secs);
            }
        }
    }
    age
}

/// An error with its causes: hyper's "client error (Connect)" alone says too little.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_reads_cache_control() {
        let mut headers = HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300, stale-while-revalidate=60"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(300)));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, max-age=300"),
        );
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn a_url_that_is_not_one_is_refused_before_any_connection() {
        let fetcher = Fetcher::with_webpki_roots().unwrap();
        assert!(matches!(
            fetcher.get("not a url", HeaderMap::new()).await,
            Err(FetchError::NotUrl)
        ));
    }
}
