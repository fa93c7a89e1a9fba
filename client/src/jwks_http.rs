//! The HTTP JWKS, the verifier's fallback while WatchKeys is unavailable (the watcher cap
//! reached, a proxy that does not carry streams, the authority restarting).
//!
//! A conditional GET: the ETag of the last answer goes back as `If-None-Match`, so an
//! unchanged set costs a `304` and no parsing, which is what lets the verifier poll it every
//! few seconds while the stream is down; a `Cache-Control: max-age` shorter than that
//! interval brings the next poll forward. The body is parsed with the same JWK rules as the
//! pushed set, and limited in size.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};
use token_authority_jose::fetch::{self as shared, Fetcher};

use crate::{error::ClientError, keys::KeySet};

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
    client: Fetcher,
    url: String,
    etag: Option<HeaderValue>,
}

impl JwksFetcher {
    /// `https://` URLs are checked against the public web PKI roots unless `tls` is given
    /// (a cluster's private CA).
    pub(crate) fn new(
        url: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<JwksFetcher, ClientError> {
        if url.parse::<http::Uri>().is_err() {
            return Err(ClientError::Jwks(format!("{url:?} is not a URL")));
        }
        let client = match tls {
            Some(config) => Fetcher::with_tls(config),
            None => Fetcher::with_webpki_roots().map_err(|e| ClientError::Jwks(e.to_string()))?,
        };
        Ok(JwksFetcher {
            client,
            url: url.to_owned(),
            etag: None,
        })
    }

    /// A status list over HTTP: its URI's path on the JWKS URL's origin (the issuer's name
    /// may not resolve where the verifier runs; the JWKS URL reaches a replica), fetched
    /// conditionally. `None` when it did not change.
    pub(crate) async fn fetch_list(
        &self,
        uri: &str,
        etag: Option<&str>,
    ) -> Result<Option<(String, Option<String>)>, ClientError> {
        let path = uri
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.path_and_query().map(|p| p.as_str().to_owned()))
            .ok_or_else(|| ClientError::Jwks(format!("{uri:?} is not a URL")))?;
        let url = self.on_origin(&path)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(token_authority_jose::status_list::MEDIA_TYPE),
        );
        if let Some(etag) = etag.and_then(|etag| HeaderValue::try_from(etag).ok()) {
            headers.insert(header::IF_NONE_MATCH, etag);
        }
        match self.client.get(&url, headers).await {
            Ok(shared::Fetched::NotModified { .. }) => Ok(None),
            Ok(shared::Fetched::Document { body, etag, .. }) => {
                let token = String::from_utf8(body.to_vec())
                    .map_err(|_| ClientError::Jwks(format!("{url}: not text")))?;
                Ok(Some((token, etag)))
            }
            Err(e) => Err(ClientError::Jwks(format!("{url}: {e}"))),
        }
    }

    /// `path` on the JWKS URL's origin.
    fn on_origin(&self, path: &str) -> Result<String, ClientError> {
        let base = self
            .url
            .parse::<http::Uri>()
            .map_err(|_| ClientError::Jwks(format!("{:?} is not a URL", self.url)))?;
        Ok(format!(
            "{}://{}{path}",
            base.scheme_str().unwrap_or("https"),
            base.authority().map_or("", |a| a.as_str())
        ))
    }

    /// The Status List Aggregation (`/statuslists` on the JWKS URL's origin): the URI of
    /// every list the authority serves; empty when it keeps none.
    pub(crate) async fn fetch_aggregation(&self) -> Result<Vec<String>, ClientError> {
        let url = self.on_origin("/statuslists")?;
        match self.client.get(&url, HeaderMap::new()).await {
            Ok(shared::Fetched::Document { body, .. }) => {
                let document: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| ClientError::Jwks(format!("{url}: {e}")))?;
                let uris = document["status_lists"]
                    .as_array()
                    .ok_or_else(|| ClientError::Jwks(format!("{url}: no status_lists array")))?;
                Ok(uris
                    .iter()
                    .filter_map(|uri| uri.as_str().map(str::to_owned))
                    .collect())
            }
            Ok(shared::Fetched::NotModified { .. }) => Ok(Vec::new()),
            Err(shared::FetchError::Status(http::StatusCode::NOT_FOUND)) => Ok(Vec::new()),
            Err(e) => Err(ClientError::Jwks(format!("{url}: {e}"))),
        }
    }

    /// One conditional GET; returns what changed and the `max-age` the answer allows.
    pub(crate) async fn fetch(&mut self) -> Result<(Fetched, Option<Duration>), ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(etag) = &self.etag {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        let failed = |e: shared::FetchError| ClientError::Jwks(format!("{}: {e}", self.url));
        match self.client.get(&self.url, headers).await.map_err(failed)? {
            shared::Fetched::NotModified { max_age } => Ok((Fetched::NotModified, max_age)),
            shared::Fetched::Document {
                body,
                etag,
                max_age,
            } => {
                let set = KeySet::from_jwks(&body, etag.clone().unwrap_or_default())
                    .map_err(|e| ClientError::Jwks(e.to_string()))?;
                self.etag = etag.and_then(|etag| HeaderValue::try_from(etag).ok());
                Ok((Fetched::Changed(set), max_age))
            }
        }
    }
}
