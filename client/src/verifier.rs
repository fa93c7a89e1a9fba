//! Local verification: the authority's own rules (`token-authority-jose`), over a key set
//! the authority pushes with WatchKeys.
//!
//! A background task (`watch`) holds one WatchKeys stream. Every key set it receives
//! replaces the one in use through an atomic pointer swap, so `verify` never waits and never
//! makes a request. When the stream breaks, or stays silent for twice the keepalive interval
//! the authority announced, the task reconnects, to the next replica when it was given
//! several, with capped, jittered backoff, and the last good set stays in use meanwhile:
//! tokens signed by known keys keep verifying while the authority is down. A revocation
//! reaches the verifier as soon as the authority pushes it.
//!
//! While no stream is up, an optional HTTP JWKS URL is the fallback: fetched at once, then
//! polled every `jwks_poll_interval` with the last ETag (a `304` when nothing changed), and
//! fetched at once (at most once per cooldown) when a token names a kid the set lacks. A set
//! fetched over HTTP keeps the kids an earlier push reported revoked. Over anything but
//! loopback, give both the channel and the JWKS URL TLS: the keys they carry decide which
//! tokens are accepted.
//!
//! Every verification is a `verify_token` span (`crate::telemetry`): the token type, the
//! key's algorithm and kid (a kid the key set knows only), the outcome and the reason, never
//! the token. With no subscriber interested it costs a check of a static flag, and nothing
//! is read for it.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use token_authority_jose::{
    clock::Clock,
    jwt::{
        verify::{self, Expectations, Policy, Reason, Rejection, Verified},
        TokenType,
    },
};
use tonic::transport::Channel;

use crate::{
    error::ClientError,
    jwks_http::JwksFetcher,
    keys::KeySet,
    pb::token_authority_client::TokenAuthorityClient,
    status::{HeldLists, NO_COPY},
    telemetry,
};

mod watch;

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
    /// The authority's `/.well-known/jwks.json`, fetched while WatchKeys is unavailable:
    /// at once when the stream goes down, then every `jwks_poll_interval` (conditional GETs),
    /// and at once, at most once per `unknown_kid_cooldown`, when a token names a kid the
    /// set lacks. Point it at an address that reaches a live replica (the Service, not one
    /// pod). `None`: no fallback; the last pushed set stays in use while the stream is down.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again while no WatchKeys stream is up (at least 1 s;
    /// sooner when its `max-age` is shorter; up to a quarter more, at random): the longest
    /// a revocation takes to reach the verifier then. Each poll is a conditional GET, a
    /// `304` when nothing changed; none is made while a stream is up.
    pub jwks_poll_interval: Duration,
    /// TLS for an `https://` JWKS URL (a private CA); `None`: the web PKI roots.
    pub jwks_tls: Option<rustls::ClientConfig>,
    /// The least time between two fetches caused by unknown kids: a flood of made-up kids
    /// must not become a flood of requests.
    pub unknown_kid_cooldown: Duration,
    /// What `verify` reads the time from (`exp`, `nbf`, `iat`): the system clock; in tests,
    /// `Clock::tokio`, so expiry can be checked on paused time.
    pub clock: Clock,
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
            jwks_poll_interval: Duration::from_secs(2),
            jwks_tls: None,
            unknown_kid_cooldown: Duration::from_secs(10),
            clock: Clock::system(),
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
    /// The status lists WatchKeys pushed, verified.
    lists: Arc<ArcSwap<HeldLists>>,
    /// Held by every writer of `keys` and `lists` while it reads and replaces them.
    writes: Arc<std::sync::Mutex<()>>,
    policy: Policy,
    audience: Option<String>,
    clock: Clock,
    /// The background task keeping the set fresh; `None` for a fixed set.
    watcher: Option<tokio::task::AbortHandle>,
    /// Wakes the background task to fetch the HTTP JWKS (an unknown kid while the stream
    /// is down).
    refetch: Arc<tokio::sync::Notify>,
    /// Lists tokens named that no copy is held of, for the background task to fetch.
    wanted: Arc<std::sync::Mutex<Vec<String>>>,
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

impl Verifier {
    /// Starts watching the authority's keys on `channel` and returns once the first key
    /// set has arrived (an error after `first_key_set_timeout`: a verifier with no keys
    /// could only refuse every token).
    pub async fn connect(
        channel: Channel,
        settings: VerifierSettings,
    ) -> Result<Verifier, ClientError> {
        Verifier::connect_replicas([channel], settings).await
    }

    /// Like `connect`, over several replicas of the authority (one `Channel` each, e.g. the
    /// pods of a headless Service): the stream is opened on the first, and when it breaks or
    /// cannot be opened the next one is tried, so a replica that dies hands the stream to a
    /// live one at the first reconnect. The backoff grows only once every replica has failed
    /// in turn. An error when `replicas` is empty.
    pub async fn connect_replicas(
        replicas: impl IntoIterator<Item = Channel>,
        settings: VerifierSettings,
    ) -> Result<Verifier, ClientError> {
        let replicas: Vec<_> = replicas
            .into_iter()
            .map(TokenAuthorityClient::new)
            .collect();
        if replicas.is_empty() {
            return Err(ClientError::NoReplica);
        }
        let keys = Arc::new(ArcSwap::from_pointee(KeySet::default()));
        let lists = Arc::new(ArcSwap::from_pointee(HeldLists::default()));
        let policy = Policy {
            issuer: settings.issuer,
            leeway: settings.leeway,
            max_token_bytes: settings.max_token_bytes,
        };
        let (first_tx, mut first_rx) = tokio::sync::watch::channel(false);
        let fetcher = settings
            .jwks_url
            .as_deref()
            .map(|url| JwksFetcher::new(url, settings.jwks_tls.clone()))
            .transpose()?;
        let refetch = Arc::new(tokio::sync::Notify::new());
        let wanted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writes = Arc::new(std::sync::Mutex::new(()));
        let task = tokio::spawn(
            watch::Watch {
                replicas,
                open_timeout: settings.watch_open_timeout,
                poll_interval: settings.jwks_poll_interval,
                keys: Arc::clone(&keys),
                lists: Arc::clone(&lists),
                writes: Arc::clone(&writes),
                policy: policy.clone(),
                clock: settings.clock,
                first: first_tx,
                caller: Some(tracing::Span::current()),
                fetcher,
                refetch: Arc::clone(&refetch),
                wanted: Arc::clone(&wanted),
            }
            .run(),
        );
        let verifier = Verifier {
            inner: Arc::new(Inner {
                keys,
                lists,
                writes,
                policy,
                audience: settings.audience,
                clock: settings.clock,
                watcher: Some(task.abort_handle()),
                refetch,
                wanted,
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
                lists: Arc::new(ArcSwap::from_pointee(HeldLists::default())),
                writes: Arc::new(std::sync::Mutex::new(())),
                policy: Policy {
                    issuer: settings.issuer,
                    leeway: settings.leeway,
                    max_token_bytes: settings.max_token_bytes,
                },
                audience: settings.audience,
                clock: settings.clock,
                watcher: None,
                refetch: Arc::new(tokio::sync::Notify::new()),
                wanted: Arc::new(std::sync::Mutex::new(Vec::new())),
                last_refetch: std::sync::Mutex::new(None),
                cooldown: settings.unknown_kid_cooldown,
            }),
        }
    }

    /// Verifies `token` now (by the settings' clock), with the configured audience.
    pub fn verify(&self, token: &str) -> Result<Verified, Rejection> {
        let now = self.inner.clock.unix_now();
        self.verify_at(token, self.inner.audience.as_deref(), now)
    }

    /// Verifies `token` at `now` (unix seconds), requiring `audience` when given: the same
    /// verdicts and reasons VerifyToken gives.
    pub fn verify_at(
        &self,
        token: &str,
        audience: Option<&str>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        let single: [&str; 1];
        let audiences: &[&str] = match audience {
            Some(audience) => {
                single = [audience];
                &single
            }
            None => &[],
        };
        self.verify_with(
            token,
            &Expectations {
                audiences,
                ..Expectations::default()
            },
            now,
        )
    }

    /// Verifies with `expect` against the key set in use, asking for a fetch on an
    /// unknown kid, in a `verify_token` span.
    pub(crate) fn verify_with(
        &self,
        token: &str,
        expect: &Expectations<'_>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        // Not entered: nothing inside logs, and its fields are recorded at the end, only
        // when someone records the span.
        let span = tracing::info_span!(
            "verify_token",
            token_type = match expect.token_type {
                TokenType::Access | TokenType::IssuerAccess => "access",
                TokenType::Txn => "txn",
                TokenType::StatusList => "statuslist",
            },
            alg = tracing::field::Empty,
            kid = tracing::field::Empty,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
        );
        let keys = self.inner.keys.load();
        let verdict = self.verify_against(&keys, token, expect, now);
        if !span.is_disabled() {
            telemetry::record_verdict(&span, &**keys, token, &verdict);
        }
        verdict
    }

    /// `verify_with`'s verdict, against `keys`.
    fn verify_against(
        &self,
        keys: &KeySet,
        token: &str,
        expect: &Expectations<'_>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        let verdict = verify::verify_with(token, keys, &self.inner.policy, expect, now);
        if matches!(&verdict, Err(rejection) if rejection.reason == Reason::UnknownKey) {
            self.unknown_kid();
        }
        let verified = verdict?;
        // The token's status last, as VerifyToken checks it: from the lists held. Most
        // tokens have no `status` claim, and then the claims are not parsed here.
        if !verified.claims.has_status() {
            return Ok(verified);
        }
        let checked =
            self.inner
                .lists
                .load()
                .check(&verified.claims, self.inner.policy.leeway, now);
        if let Err(rejection) = &checked {
            if let Some(uri) = rejection.detail.strip_prefix(NO_COPY) {
                self.unknown_list(uri);
            }
        }
        checked.map(|()| verified)
    }

    /// Holds a Status List Token the caller fetched itself (a copy pinned beside a pinned key
    /// set, tests, benchmarks), verified against the key set in use as a pushed one is: a
    /// token naming `uri` is then checked against it.
    pub fn hold_status_list(&self, uri: &str, token: &str) -> Result<(), ClientError> {
        // A list pushed or fetched meanwhile is not lost to this one's store.
        let _writing = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = self.inner.keys.load();
        let held = self
            .inner
            .lists
            .load()
            .with_fetched(
                uri,
                token,
                None,
                &**keys,
                &self.inner.policy,
                self.inner.clock.unix_now(),
            )
            .map_err(|refused| ClientError::StatusList(refused.to_string()))?;
        self.inner.lists.store(Arc::new(held));
        Ok(())
    }

    /// How many status lists the verifier holds a verified copy of.
    pub fn status_lists_held(&self) -> usize {
        self.inner.lists.load().len()
    }

    /// The clock `verify` reads.
    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
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

    /// Asks for a list no copy is held of (fetched over HTTP while no stream is up), within
    /// the same cooldown as unknown kids.
    fn unknown_list(&self, uri: &str) {
        {
            let mut wanted = self
                .inner
                .wanted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if wanted.iter().any(|held| held == uri) || wanted.len() >= 64 {
                return;
            }
            wanted.push(uri.to_owned());
        }
        self.unknown_kid();
    }

    /// The key set in use now.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.inner.keys.load_full()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use token_authority_jose::{
        crypto::{generate_pkcs8, Algorithm, SigningKey},
        jwk::{render_jwks, PublicJwk},
        jwt::{sign, Signer},
    };

    use super::*;

    const T0: u64 = 1_700_000_000;

    /// The verifier reads the time from its settings' clock: on paused time, a token not
    /// yet valid becomes valid once the clock is within the leeway of its `nbf`, stays
    /// valid to the last second before `exp` plus the leeway, and is refused from then on.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_nbf_and_exp_are_checked_against_the_settings_clock() {
        let clock = Clock::tokio(UNIX_EPOCH + Duration::from_secs(T0));
        let key = generate_pkcs8(Algorithm::ES256).unwrap();
        let key = SigningKey::from_pkcs8(Algorithm::ES256, &key).unwrap();
        let public = key.verifying_key().unwrap();
        let jwks = render_jwks(&[PublicJwk::new("k", Algorithm::ES256, public.components())]);
        let settings = VerifierSettings {
            leeway: 60,
            clock,
            ..VerifierSettings::new("https://token-authority.test")
        };
        let verifier =
            Verifier::with_keys(KeySet::from_jwks(&jwks, String::new()).unwrap(), settings);
        let claims = serde_json::json!({
            "iss": "https://token-authority.test", "sub": "orders", "iat": T0,
            "nbf": T0 + 600, "exp": T0 + 3600, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        });
        let token = sign(
            &Signer::new("k".into(), key),
            claims.as_object().unwrap(),
            8192,
        )
        .unwrap();
        let at = |unix: u64| {
            let verifier = verifier.clone();
            let token = token.clone();
            async move {
                tokio::time::sleep(clock.until(unix)).await;
                assert_eq!(clock.unix_now(), unix);
                verifier
                    .verify(&token)
                    .map_err(|rejection| rejection.reason)
            }
        };
        assert_eq!(at(T0).await.unwrap_err(), Reason::NotYetValid);
        assert_eq!(at(T0 + 539).await.unwrap_err(), Reason::NotYetValid);
        assert_eq!(at(T0 + 540).await.unwrap().subject, "orders");
        assert!(at(T0 + 3659).await.is_ok());
        assert_eq!(at(T0 + 3660).await.unwrap_err(), Reason::Expired);
    }

    #[tokio::test]
    async fn an_empty_list_of_replicas_is_refused_at_once() {
        let refused =
            Verifier::connect_replicas(Vec::<Channel>::new(), VerifierSettings::new("iss")).await;
        assert!(
            matches!(refused, Err(ClientError::NoReplica)),
            "{refused:?}"
        );
    }
}
