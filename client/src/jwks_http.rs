//! The HTTP JWKS, the verifier's fallback while WatchKeys is unavailable (the watcher cap
//! reached, a proxy that does not carry streams, the authority restarting).
//!
//! A conditional GET: the ETag of the last answer goes back as `If-None-Match`, so an
//! unchanged set costs a `304` and no parsing, which is what lets the verifier poll it every
//! few seconds while the stream is down; a `Cache-Control: max-age` shorter than that
//! interval brings the next poll forward. The body is parsed with the same JWK rules as the
//! pushed set, and limited in size.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tonic::codegen::{http, Bytes};

use crate::{error::ClientError, keys::KeySet};

/// The largest JWKS accepted: our sets are a few kilobytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a fetch found.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// A new set (its ETag is kept for the next request).
    Changed(KeySet),
    /// `304`: the set the last fetch returned is still current.
    NotModified,
}

/// A conditional fetcher of one JWKS URL.
#[derive(Debug)]
pub(crate) struct JwksFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: http::Uri,
    etag: Option<String>,
}

impl JwksFetcher {
    /// `https://` URLs are checked against the public web PKI roots unless `tls` is given
    /// (a cluster's private CA).
    pub(crate) fn new(
        url: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<JwksFetcher, ClientError> {
        let url: http::Uri = url
            .parse()
            .map_err(|_| ClientError::Jwks(format!("{url:?} is not a URL")))?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match tls {
            Some(config) => builder.with_tls_config(config),
            // The provider named, not the process default: both may be compiled in.
            None => builder
                .with_provider_and_webpki_roots(token_authority_jose::tls::provider())
                .map_err(|e| ClientError::Jwks(e.to_string()))?,
        }
        .https_or_http()
        .enable_http1()
        .build();
        Ok(JwksFetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            etag: None,
        })
    }

    /// One conditional GET; returns what changed and the `max-age` the answer allows.
    pub(crate) async fn fetch(&mut self) -> Result<(Fetched, Option<Duration>), ClientError> {
        let mut request = http::Request::get(self.url.clone());
        if let Some(etag) = &self.etag {
            request = request.header(http::header::IF_NONE_MATCH, etag.as_str());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ClientError::Jwks(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| ClientError::Jwks("the JWKS request timed out".into()))?
            .map_err(|e| ClientError::Jwks(e.to_string()))?;
        let max_age = max_age(response.headers());
        match response.status() {
            http::StatusCode::NOT_MODIFIED => Ok((Fetched::NotModified, max_age)),
            http::StatusCode::OK => {
                let etag = response
                    .headers()
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
                )
                .await
                .map_err(|_| ClientError::Jwks("the JWKS body timed out".into()))?
                .map_err(|e| ClientError::Jwks(e.to_string()))?
                .to_bytes();
                let set = KeySet::from_jwks(&body, etag.clone().unwrap_or_default())
                    .map_err(|e| ClientError::Jwks(e.to_string()))?;
                self.etag = etag;
                Ok((Fetched::Changed(set), max_age))
            }
            status => Err(ClientError::Jwks(format!("the JWKS answered {status}"))),
        }
    }
}

/// `max-age` from `Cache-Control`; `no-store`/`no-cache` mean zero.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_reads_cache_control() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=300, stale-while-revalidate=60"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(300)));
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache, max-age=300"),
        );
        assert_eq!(max_age(&headers), Some(Duration::ZERO));
    }
}
