//! Tokens for the service itself: fetched with IssueToken, cached, refreshed ahead of expiry.
//!
//! The cached token sits in a `watch` channel: `token()` reads it without a request while
//! it is fresh. A background task refreshes it at 80% of its life (minus up to 5% of jitter,
//! so a fleet started together does not refresh in step), retrying with capped backoff
//! while the authority is down; the cached token is served until it expires. Every fetch,
//! whether a cold `token()` or the background refresh, goes through one async mutex and
//! re-checks the cache once inside it, so concurrent callers share a single IssueToken.
//!
//! A token a callee refused can be dropped with `invalidate`: only if it is still the cached
//! one, so a burst of refusals of one token costs one IssueToken, and the background task
//! fetches the replacement at once, so interceptors reading `cached_token` recover by
//! themselves.
//!
//! Credentials (`credentials`): mTLS comes with the `Channel` (its TLS identity); a bearer
//! token file (a projected service-account token) is re-read at every fetch, so a rotated
//! file is used as soon as it changes; a client secret is sent as HTTP Basic. When the
//! authority refuses the credential (UNAUTHENTICATED), it is read again at once and, if it
//! changed meanwhile (the file was rotated between the read and the answer), sent once more.
//!
//! Each fetch is one `token_refresh` span (`crate::telemetry`): a child of the caller's span
//! for a fetch a caller waits on, a root for the background refresh. Its IssueToken calls
//! carry its trace context.

mod credentials;

use std::{sync::Arc, time::Duration};

use token_authority_jose::backoff::{jitter, Backoff};
use tokio::time::Instant;
use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};
use tracing::{field, Instrument as _};

pub use credentials::Credentials;

use crate::{
    error::ClientError,
    pb::{self, token_authority_client::TokenAuthorityClient},
    telemetry,
};

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
    /// `None` when the last attempt succeeded.
    last_failure: Option<String>,
    /// When the last attempt began: the next waits until `MIN_REFRESH_INTERVAL` after it, so
    /// that neither request-driven callers of an authority that is down nor a callee that
    /// refuses every token (its clock behind, a wrong audience) can make more than one
    /// IssueToken a second. Callers waiting meanwhile share the attempt's answer.
    last_started: Option<Instant>,
}

/// A token and when to replace it, on this process's monotonic clock: measured from when
/// the answer arrived plus the token's own lifetime (`exp - iat`), never by comparing the
/// server's timestamps with the local wall clock, which may disagree by any amount.
#[derive(Clone)]
struct Cached {
    token: String,
    expires_at: Instant,
    refresh_at: Instant,
}

/// Never the token itself: a source printed with `{:?}` (in an application's state, say)
/// must not put a bearer token in its logs.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
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
/// The least time between two refreshes of a token that lives long enough: a short-lived
/// token is refreshed at half its life at the earliest, never in a loop.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an IssueToken (or ExchangeToken) call may take before the client gives up on it:
/// an authority that accepts the connection and never answers must not hold the callers,
/// who queue behind the one call in flight, for good.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
        self.inner.fresh(Instant::now())
    }

    /// Forgets `token` if it is still the cached one: call it when a callee refused the
    /// token (UNAUTHENTICATED, 401), so the next `token()` gets a new one rather than the
    /// same. A token already replaced is left alone, so any number of callers invalidating
    /// the same token cause one IssueToken. The background task fetches the replacement at
    /// once, so `cached_token` (and `AttachToken`) recover without a `token().await`.
    pub fn invalidate(&self, token: &str) {
        self.inner.cached.send_if_modified(|cached| {
            let still = cached.as_ref().is_some_and(|c| c.token == token);
            if still {
                *cached = None;
            }
            still
        });
    }
}

impl Inner {
    /// The cached token while it has not expired: served even past its refresh time, so a
    /// refresh that fails while the authority is down does not stop the service.
    fn fresh(&self, now: Instant) -> Option<String> {
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
        if let Some(token) = self.fresh(Instant::now()) {
            return Ok(token);
        }
        if attempts.ended != seen {
            // An attempt failed while this caller waited: its answer is this caller's too.
            // (One that succeeded left a token since invalidated: fetch anew.)
            if let Some(failure) = &attempts.last_failure {
                return Err(ClientError::Shared(failure.clone()));
            }
        }
        self.attempt(&mut attempts, "caller").await
    }

    /// The background refresh: one IssueToken unless the token in the cache is not due (a
    /// caller fetched one while this task waited for the mutex).
    async fn refresh_if_due(&self) -> Result<(), ClientError> {
        let mut attempts = self.fetching.lock().await;
        let due = self
            .cached
            .borrow()
            .as_ref()
            .is_none_or(|cached| Instant::now() >= cached.refresh_at);
        if !due {
            return Ok(());
        }
        self.attempt(&mut attempts, "background").await.map(drop)
    }

    /// One IssueToken, recorded in `attempts` (the guard of `fetching`), in its span:
    /// `trigger` says who asked, a caller ("caller") or the refresh task ("background").
    async fn attempt(
        &self,
        attempts: &mut Attempts,
        trigger: &'static str,
    ) -> Result<String, ClientError> {
        // Counts and kinds only: never the token, the credential, or the subject, audiences
        // and claims asked for.
        let span = tracing::info_span!(
            "token_refresh",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = telemetry::SERVICE,
            rpc.method = "IssueToken",
            trigger,
            audiences = self.request.audience.len(),
            outcome = field::Empty,
            error = field::Empty,
            rpc.grpc.status_code = field::Empty,
            otel.status_code = field::Empty,
        );
        if let Some(floor) = attempts.last_started.map(|at| at + MIN_REFRESH_INTERVAL) {
            tokio::time::sleep_until(floor).await;
        }
        attempts.last_started = Some(Instant::now());
        let result = self.fetch().instrument(span.clone()).await;
        telemetry::record_call(&span, &result, "issued");
        attempts.ended += 1;
        attempts.last_failure = result.as_ref().err().map(ToString::to_string);

        self.attempts_ended
            .store(attempts.ended, std::sync::atomic::Ordering::Release);
        result
    }

    /// One IssueToken (two if the credential was refused and has changed since it was
    /// read). Call through `attempt`, with `fetching` held.
    async fn fetch(&self) -> Result<String, ClientError> {
        let sent = self.credentials.authorization().await?;
        let asked = Instant::now();
        let issued = match self.issue(sent.as_deref()).await {
            Err(ClientError::Rpc(status)) if status.code() == Code::Unauthenticated => {
                // Sending the same credential again would earn the same answer.
                match self.credentials.authorization().await {
                    Ok(again) if again != sent => self.issue(again.as_deref()).await?,
                    _ => return Err(ClientError::Rpc(status)),
                }
            }
            other => other?,
        };
        let at = |t: Option<prost_types::Timestamp>, what| {
            t.and_then(|t| {
                let seconds = u64::try_from(t.seconds).ok()?;
                let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
                Some(Duration::new(seconds, nanos))
            })
            .ok_or(ClientError::BadAnswer(what))
        };
        let issued_at = at(issued.issued_at, "issued_at")?;
        let expires_at = at(issued.expires_at, "expires_at")?;
        // The token's life as the authority counts it, from the moment it was signed
        // (`issued_at` carries the nanoseconds the whole-second `iat` claim drops). Counted
        // from when the call was made (the token cannot have been signed before), so the
        // local deadline is never later than the token's own end, whatever the two clocks
        // say.
        let life = expires_at.saturating_sub(issued_at);
        if life.is_zero() {
            return Err(ClientError::BadAnswer("expires_at"));
        }
        let expires_at = asked + life;
        let refresh_at =
            asked + (life.mul_f64(0.8) - jitter(life / 20)).max(MIN_REFRESH_INTERVAL.min(life / 2));
        self.cached.send_replace(Some(Cached {
            token: issued.token.clone(),
            expires_at,
            refresh_at,
        }));
        Ok(issued.token)
    }

    /// One IssueToken call with `authorization`, carrying the trace context of the current
    /// span (the fetch's `token_refresh`).
    async fn issue(
        &self,
        authorization: Option<&str>,
    ) -> Result<pb::IssueTokenResponse, ClientError> {
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
        if let Some(authorization) = authorization {
            let value: MetadataValue<_> = authorization
                .parse()
                .map_err(|_| ClientError::BadCredential)?;
            request.metadata_mut().insert("authorization", value);
        }
        telemetry::inject(&tracing::Span::current(), request.metadata_mut());
        // The authority ends the call at its deadline too (`grpc-timeout`); the local
        // timeout also covers one that never answers at all.
        request.set_timeout(CALL_TIMEOUT);
        let mut client = self.client.clone();
        let call = client.issue_token(request);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => Ok(answer?.into_inner()),
            Err(_) => Err(ClientError::Rpc(tonic::Status::deadline_exceeded(format!(
                "IssueToken did not answer within {CALL_TIMEOUT:?}"
            )))),
        }
    }
}

/// Refreshes the cached token at its refresh time, retrying with backoff on failure, for as
/// long as the source lives.
async fn refresh(inner: std::sync::Weak<Inner>) {
    let mut changes = match inner.upgrade() {
        Some(inner) => inner.cached.subscribe(),
        None => return,
    };
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).with_jitter(0.25);
    let mut had_token = false;
    loop {
        let refresh_at = changes.borrow_and_update().as_ref().map(|c| c.refresh_at);
        let refresh_at = match refresh_at {
            Some(at) => {
                had_token = true;
                at
            }
            // Invalidated: replace it now.
            None if had_token => Instant::now(),
            // Nothing to refresh until the first token arrives.
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(refresh_at) => {}
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
        let result = source.refresh_if_due().await;
        drop(source);
        match result {
            Ok(_) => backoff.reset(),
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?wait, "token refresh failed; serving the cached token until it expires");
                tokio::time::sleep(wait).await;
            }
        }
        changes.mark_changed();
    }
}
