//! Local verification: the authority's own rules (`token-authority-jose`), over a key set
//! the authority pushes with WatchKeys.
//!
//! A background task holds one WatchKeys stream. Every key set it receives replaces the one
//! in use through an atomic pointer swap, so `verify` never waits and never makes a request.
//! When the stream breaks, or stays silent for twice the keepalive interval the authority
//! announced, the task reconnects with capped, jittered backoff and the last good set stays
//! in use meanwhile: tokens signed by known keys keep verifying while the authority is down.
//! A revocation reaches the verifier as soon as the authority pushes it.
//!
//! While the stream is down, an optional HTTP JWKS URL is the fallback: fetched with the
//! last ETag, again when its `Cache-Control: max-age` runs out, and at once (at most once per
//! cooldown) when a token names a kid the set lacks. A set fetched over HTTP keeps the kids
//! an earlier push reported revoked. Over anything but loopback, give both the channel and
//! the JWKS URL TLS: the keys they carry decide which tokens are accepted.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use token_authority_jose::{
    crypto,
    jwt::verify::{self, Policy, Reason, Rejection, Verified},
};
use tonic::transport::Channel;

use crate::{
    error::ClientError,
    jwks_http::{Fetched, JwksFetcher},
    keys::KeySet,
    pb::{self, token_authority_client::TokenAuthorityClient, watch_keys_response::Event},
};

/// What the verifier checks beyond the signature: the same settings as the authority's.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// The authority's `iss` (its `--issuer`).
    pub issuer: String,
    /// When set, a token's `aud` must contain it.
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat` (the authority's default: 60).
    pub leeway: u64,
    /// Longer tokens are rejected before any parsing (the authority's limit: 8 KiB).
    pub max_token_bytes: usize,
    /// How long `Verifier::connect` waits for the first key set.
    pub first_key_set_timeout: Duration,
    /// How long opening a WatchKeys stream may take (connection, TLS, the answer's headers)
    /// before the attempt counts as failed and the HTTP fallback is consulted: an address
    /// that swallows packets must not hold the verifier on a connect that never ends.
    pub watch_open_timeout: Duration,
    /// The authority's `/.well-known/jwks.json`, fetched while WatchKeys is unavailable
    /// (conditional GETs, as often as its `Cache-Control` allows, and at once, at most once
    /// per `unknown_kid_cooldown`, when a token names a kid the set lacks). `None`: no
    /// fallback; the last pushed set stays in use while the stream is down.
    pub jwks_url: Option<String>,
    /// TLS for an `https://` JWKS URL (a private CA); `None`: the web PKI roots.
    pub jwks_tls: Option<rustls::ClientConfig>,
    /// The least time between two fetches caused by unknown kids: a flood of made-up kids
    /// must not become a flood of requests.
    pub unknown_kid_cooldown: Duration,
}

impl VerifierSettings {
    /// The authority's defaults for `issuer`, with no audience required.
    pub fn new(issuer: impl Into<String>) -> VerifierSettings {
        VerifierSettings {
            issuer: issuer.into(),
            audience: None,
            leeway: 60,
            max_token_bytes: 8 * 1024,
            first_key_set_timeout: Duration::from_secs(10),
            watch_open_timeout: Duration::from_secs(5),
            jwks_url: None,
            jwks_tls: None,
            unknown_kid_cooldown: Duration::from_secs(10),
        }
    }
}

/// Verifies tokens in process. Cheap to clone; the key set is kept fresh by one background
/// task, which stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: Arc<ArcSwap<KeySet>>,
    policy: Policy,
    audience: Option<String>,
    /// The background task keeping the set fresh; `None` for a fixed set.
    watcher: Option<tokio::task::AbortHandle>,
    /// Wakes the background task to fetch the HTTP JWKS (an unknown kid while the stream
    /// is down).
    refetch: Arc<tokio::sync::Notify>,
    /// When an unknown kid last asked for a fetch. Taken only on that failure path.
    last_refetch: std::sync::Mutex<Option<std::time::Instant>>,
    cooldown: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// The first delay before reconnecting a broken stream, and the cap it doubles up to.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Verifier {
    /// Starts watching the authority's keys on `channel` and returns once the first key
    /// set has arrived (an error after `first_key_set_timeout`: a verifier with no keys
    /// could only refuse every token).
    pub async fn connect(
        channel: Channel,
        settings: VerifierSettings,
    ) -> Result<Verifier, ClientError> {
        let keys = Arc::new(ArcSwap::from_pointee(KeySet::default()));
        let (first_tx, mut first_rx) = tokio::sync::watch::channel(false);
        let fetcher = settings
            .jwks_url
            .as_deref()
            .map(|url| JwksFetcher::new(url, settings.jwks_tls.clone()))
            .transpose()?;
        let refetch = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(watch(
            TokenAuthorityClient::new(channel),
            settings.watch_open_timeout,
            Arc::clone(&keys),
            first_tx,
            fetcher,
            Arc::clone(&refetch),
        ));
        let verifier = Verifier {
            inner: Arc::new(Inner {
                keys,
                policy: Policy {
                    issuer: settings.issuer,
                    leeway: settings.leeway,
                    max_token_bytes: settings.max_token_bytes,
                },
                audience: settings.audience,
                watcher: Some(task.abort_handle()),
                refetch,
                last_refetch: std::sync::Mutex::new(None),
                cooldown: settings.unknown_kid_cooldown,
            }),
        };
        let wait = settings.first_key_set_timeout;
        let arrived = tokio::time::timeout(wait, first_rx.wait_for(|got| *got))
            .await
            .is_ok_and(|result| result.is_ok());
        if arrived {
            Ok(verifier)
        } else {
            Err(ClientError::NoKeySet(wait))
        }
    }

    /// A verifier over a fixed key set, never refreshed (a JWKS pinned in a file, tests,
    /// benchmarks). `jwks_url` and the timeouts of `settings` are not used.
    pub fn with_keys(keys: KeySet, settings: VerifierSettings) -> Verifier {
        Verifier {
            inner: Arc::new(Inner {
                keys: Arc::new(ArcSwap::from_pointee(keys)),
                policy: Policy {
                    issuer: settings.issuer,
                    leeway: settings.leeway,
                    max_token_bytes: settings.max_token_bytes,
                },
                audience: settings.audience,
                watcher: None,
                refetch: Arc::new(tokio::sync::Notify::new()),
                last_refetch: std::sync::Mutex::new(None),
                cooldown: settings.unknown_kid_cooldown,
            }),
        }
    }

    /// Verifies `token` now, with the configured audience.
    pub fn verify(&self, token: &str) -> Result<Verified, Rejection> {
        self.verify_at(token, self.inner.audience.as_deref(), unix_now())
    }

    /// Verifies `token` at `now` (unix seconds), requiring `audience` when given: the same
    /// verdicts and reasons VerifyToken gives.
    pub fn verify_at(
        &self,
        token: &str,
        audience: Option<&str>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        let verdict = verify::verify(
            token,
            &**self.inner.keys.load(),
            &self.inner.policy,
            audience,
            now,
        );
        if matches!(&verdict, Err(rejection) if rejection.reason == Reason::UnknownKey) {
            self.unknown_kid();
        }
        verdict
    }

    /// Asks for a JWKS fetch, unless one was asked for within the cooldown. The task only
    /// acts on it while the stream is down: a live stream already has the newest set.
    fn unknown_kid(&self) {
        let mut last = self
            .inner
            .last_refetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now < at + self.inner.cooldown) {
            return;
        }
        *last = Some(now);
        self.inner.refetch.notify_one();
    }

    /// The key set in use now.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.inner.keys.load_full()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Up to a quarter of `base` added at random, so a fleet does not reconnect in step.
fn jittered(base: Duration) -> Duration {
    let random = crypto::random_bytes(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    base + base.mul_f64(f64::from(random) / f64::from(u16::MAX) / 4.0)
}

/// Holds a WatchKeys stream for as long as the verifier lives, reconnecting when it
/// breaks; `first` turns true at the first key set.
async fn watch(
    mut client: TokenAuthorityClient<Channel>,
    open_timeout: Duration,
    keys: Arc<ArcSwap<KeySet>>,
    first: tokio::sync::watch::Sender<bool>,
    mut fetcher: Option<JwksFetcher>,
    refetch: Arc<tokio::sync::Notify>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut next_fetch = tokio::time::Instant::now();
    loop {
        let opened =
            tokio::time::timeout(open_timeout, client.watch_keys(pb::WatchKeysRequest {})).await;
        match opened {
            Ok(Ok(stream)) => {
                let mut stream = stream.into_inner();
                // Until the first message says otherwise, the authority's default.
                let mut silence = Duration::from_secs(60);
                loop {
                    let message = match tokio::time::timeout(silence, stream.message()).await {
                        Ok(Ok(Some(message))) => message,
                        Ok(Ok(None)) => break,
                        Ok(Err(status)) => {
                            tracing::info!(%status, "key watch ended; reconnecting");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(?silence, "key watch silent; reconnecting");
                            break;
                        }
                    };
                    if let Some(Event::KeySet(watched)) = message.event {
                        if let Some(interval) = &watched.keepalive_interval {
                            let interval = Duration::new(
                                u64::try_from(interval.seconds).unwrap_or(30),
                                u32::try_from(interval.nanos).unwrap_or(0),
                            );
                            silence = (interval * 2).max(Duration::from_millis(200));
                        }
                        match KeySet::from_watched(&watched) {
                            Ok(set) => {
                                keys.store(Arc::new(set));
                                first.send_replace(true);
                                backoff = FIRST_BACKOFF;
                            }
                            // Keep the last good set; a bad one must not empty the verifier.
                            Err(error) => tracing::error!(%error, "key set refused"),
                        }
                    }
                }
            }
            Ok(Err(status)) => tracing::info!(%status, "cannot watch the authority's keys"),
            Err(_) => tracing::warn!(
                ?open_timeout,
                "opening the key watch timed out; trying again after the HTTP JWKS"
            ),
        }
        // The stream is down: the HTTP JWKS, when due, then wait to reconnect (or fetch at
        // once for an unknown kid).
        if let Some(fetcher) = &mut fetcher {
            if tokio::time::Instant::now() >= next_fetch {
                next_fetch = fetch_jwks(fetcher, &keys, &first).await;
            }
        }
        let pause = tokio::time::sleep(jittered(backoff));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                () = refetch.notified() => {}
                // The last answer's max-age runs out before the next reconnect (whose
                // backoff grows to seconds): fetch on time, not at the next attempt.
                () = tokio::time::sleep_until(next_fetch), if fetcher.is_some() => {}
            }
            if let Some(fetcher) = &mut fetcher {
                next_fetch = fetch_jwks(fetcher, &keys, &first).await;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Fetches the HTTP JWKS and swaps in a changed set; returns when to fetch again: after the
/// answer's `max-age` (within 1 s to 1 h), or a minute after a failure.
async fn fetch_jwks(
    fetcher: &mut JwksFetcher,
    keys: &ArcSwap<KeySet>,
    first: &tokio::sync::watch::Sender<bool>,
) -> tokio::time::Instant {
    let again = match fetcher.fetch().await {
        Ok((Fetched::Changed(set), max_age)) => {
            let set = set.keep_revoked(&keys.load());
            keys.store(Arc::new(set));
            first.send_replace(true);
            max_age
        }
        Ok((Fetched::NotModified, max_age)) => max_age,
        Err(error) => {
            // Keep the last good set.
            tracing::warn!(%error, "JWKS fallback fetch failed");
            None
        }
    };
    tokio::time::Instant::now()
        + again
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_secs(1), Duration::from_secs(3600))
}
