//! Tokens for the service itself: fetched with IssueToken, cached, refreshed ahead of expiry.
//!
//! The cached token sits in a `watch` channel: `token()` reads it without a request while
//! it is fresh. A background task refreshes it at 80% of its life (minus up to 5% of jitter,
//! so a fleet started together does not refresh in step), retrying with capped backoff
//! while the authority is down; the cached token is served until it expires. Every fetch,
//! whether a cold `token()` or the background refresh, goes through one async mutex and
//! re-checks the cache once inside it, so concurrent callers share a single IssueToken.
//!
//! Credentials: mTLS comes with the `Channel` (its TLS identity); a bearer token file (a
//! projected service-account token) is re-read at every fetch, so a rotated file is used as
//! soon as it changes; a client secret is sent as HTTP Basic.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use token_authority_jose::crypto;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

use crate::{
    error::ClientError,
    pb::{self, token_authority_client::TokenAuthorityClient},
};

/// How the service proves who it is to the authority, beyond its connection.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Nothing beyond the channel: mTLS (the channel's TLS identity), or an open authority.
    Channel,
    /// A JWT read from this file at every fetch (a Kubernetes projected service-account
    /// token, a SPIRE JWT-SVID), sent as `authorization: Bearer`.
    BearerFile(PathBuf),
    /// A client id and secret from the authority's policy, sent as HTTP Basic.
    ClientSecret {
        /// The `[[client]]` id.
        id: String,
        /// Its secret.
        secret: String,
    },
}

/// What the service asks for: IssueToken's fields.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// The `sub` claim.
    pub subject: String,
    /// The `aud` claim.
    pub audience: Vec<String>,
    /// The lifetime asked for; `None`: the authority's default.
    pub ttl: Option<Duration>,
    /// Extra claims, a JSON object text.
    pub claims_json: String,
    /// The algorithm; empty: the authority's default.
    pub algorithm: String,
}

/// The outcome of the attempts so far.
#[derive(Debug, Default)]
struct Attempts {
    ended: u64,
    last_failure: String,
}

/// A token and when to replace it.
#[derive(Clone, Debug)]
struct Cached {
    token: String,
    expires_at: SystemTime,
    refresh_at: SystemTime,
}

/// A source of tokens for one request shape. Cheap to clone; the background refresh stops
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: TokenAuthorityClient<Channel>,
    request: TokenRequest,
    credentials: Credentials,
    cached: tokio::sync::watch::Sender<Option<Cached>>,
    /// Single flight: one IssueToken at a time. Holds how many attempts have ended and
    /// how the last failed, so callers that waited on a failed attempt share its failure
    /// instead of each trying again in turn.
    fetching: tokio::sync::Mutex<Attempts>,
    /// `Attempts::ended`, readable without waiting for the mutex.
    attempts_ended: std::sync::atomic::AtomicU64,
    refresher: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get() {
            task.abort();
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl TokenSource {
    /// A source that fetches on first use and refreshes in the background after that. Must
    /// be called inside a tokio runtime.
    pub fn new(channel: Channel, request: TokenRequest, credentials: Credentials) -> TokenSource {
        let inner = Arc::new(Inner {
            client: TokenAuthorityClient::new(channel),
            request,
            credentials,
            cached: tokio::sync::watch::Sender::new(None),
            fetching: tokio::sync::Mutex::new(Attempts::default()),
            attempts_ended: std::sync::atomic::AtomicU64::new(0),
            refresher: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(refresh(Arc::downgrade(&inner)));
        let _ = inner.refresher.set(task.abort_handle());
        TokenSource { inner }
    }

    /// A token valid now: the cached one while it is fresh (no request), else one fetched
    /// now, shared with every concurrent caller.
    pub async fn token(&self) -> Result<String, ClientError> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        self.inner.fetch_unless_fresh().await
    }

    /// The cached token if it has not expired, without waiting or asking the authority: for
    /// synchronous callers such as interceptors.
    pub fn cached_token(&self) -> Option<String> {
        self.inner.fresh(SystemTime::now())
    }
}

impl Inner {
    /// The cached token while it has not expired: served even past its refresh time, so a
    /// refresh that fails while the authority is down does not stop the service.
    fn fresh(&self, now: SystemTime) -> Option<String> {
        let cached = self.cached.borrow();
        cached
            .as_ref()
            .filter(|cached| now < cached.expires_at)
            .map(|cached| cached.token.clone())
    }

    async fn fetch_unless_fresh(&self) -> Result<String, ClientError> {
        let seen = self
            .attempts_ended
            .load(std::sync::atomic::Ordering::Acquire);
        let mut attempts = self.fetching.lock().await;
        if let Some(token) = self.fresh(SystemTime::now()) {
            return Ok(token);
        }
        if attempts.ended != seen {
            // An attempt ended while this caller waited, and left no token: its answer is
            // this caller's too.
            return Err(ClientError::Shared(attempts.last_failure.clone()));
        }
        self.attempt(&mut attempts).await
    }

    /// One IssueToken, recorded in `attempts` (the guard of `fetching`).
    async fn attempt(&self, attempts: &mut Attempts) -> Result<String, ClientError> {
        let result = self.fetch().await;
        attempts.ended += 1;
        if let Err(error) = &result {
            attempts.last_failure = error.to_string();
        }
        self.attempts_ended
            .store(attempts.ended, std::sync::atomic::Ordering::Release);
        result
    }

    /// One IssueToken. Call through `attempt`, with `fetching` held.
    async fn fetch(&self) -> Result<String, ClientError> {
        let mut request = Request::new(pb::IssueTokenRequest {
            subject: self.request.subject.clone(),
            audience: self.request.audience.clone(),
            ttl: self.request.ttl.map(|ttl| prost_types::Duration {
                seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            claims_json: self.request.claims_json.clone(),
            algorithm: self.request.algorithm.clone(),
        });
        if let Some(authorization) = self.authorization().await? {
            let value: MetadataValue<_> = authorization
                .parse()
                .map_err(|_| ClientError::BadCredential)?;
            request.metadata_mut().insert("authorization", value);
        }
        let issued = self.client.clone().issue_token(request).await?.into_inner();
        let at = |t: Option<prost_types::Timestamp>, what| {
            t.and_then(|t| u64::try_from(t.seconds).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                .ok_or(ClientError::BadAnswer(what))
        };
        let issued_at = at(issued.issued_at, "issued_at")?;
        let expires_at = at(issued.expires_at, "expires_at")?;
        let life = expires_at
            .duration_since(issued_at)
            .unwrap_or(Duration::ZERO);
        let refresh_at = issued_at + life.mul_f64(0.8) - jitter(life / 20);
        self.cached.send_replace(Some(Cached {
            token: issued.token.clone(),
            expires_at,
            refresh_at,
        }));
        Ok(issued.token)
    }

    async fn authorization(&self) -> Result<Option<String>, ClientError> {
        Ok(match &self.credentials {
            Credentials::Channel => None,
            Credentials::BearerFile(path) => {
                let token = tokio_read(path).await?;
                Some(format!("Bearer {}", token.trim()))
            }
            Credentials::ClientSecret { id, secret } => Some(format!(
                "Basic {}",
                standard_base64(format!("{id}:{secret}"))
            )),
        })
    }
}

async fn tokio_read(path: &std::path::Path) -> Result<String, ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(&path).map_err(|source| ClientError::TokenFile {
            path: path.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|_| ClientError::NoToken)?
}

/// Standard base64 with padding, as HTTP Basic wants (base64url differs on `+/`).
fn standard_base64(text: String) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A random duration up to `max`.
fn jitter(max: Duration) -> Duration {
    let random = crypto::random_bytes(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    max.mul_f64(f64::from(random) / f64::from(u16::MAX))
}

/// Refreshes the cached token at its refresh time, retrying with backoff on failure, for as
/// long as the source lives.
async fn refresh(inner: std::sync::Weak<Inner>) {
    let mut changes = match inner.upgrade() {
        Some(inner) => inner.cached.subscribe(),
        None => return,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Nothing to refresh until the first token arrives.
        let refresh_at = changes.borrow_and_update().as_ref().map(|c| c.refresh_at);
        let refresh_at = match refresh_at {
            Some(at) => at,
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let wait = refresh_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // Replaced meanwhile (a cold fetch): wait for the new one's refresh time.
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(source) = inner.upgrade() else {
            return;
        };
        let result = {
            let mut attempts = source.fetching.lock().await;
            source.attempt(&mut attempts).await
        };
        drop(source);
        match result {
            Ok(_) => backoff = FIRST_BACKOFF,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "token refresh failed; serving the cached token until it expires");
                tokio::time::sleep(jitter(backoff / 4) + backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        changes.mark_changed();
    }
}
