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
