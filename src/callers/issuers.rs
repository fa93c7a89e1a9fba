//! Trusted issuers: the JWKS of each issuer whose tokens callers may present, fetched and
//! cached so that a caller's token is verified offline, with the same rules as VerifyToken.
//!
//! The set of keys is a snapshot behind an atomic pointer (the request path never waits on
//! the network unless a token names a kid the snapshot lacks). A kid it lacks triggers one
//! refetch, at most once per cooldown whatever the number of such tokens, so a flood of
//! forged kids cannot turn the authority into a load generator against the issuer. A
//! failed fetch keeps the last good set: an issuer that is down does not lock its callers
//! out while their keys are known.
//!
//! A fetch runs in a task of its own and no lock is held across it: the caller whose
//! unknown kid started it waits for it (at most `FETCH_TIMEOUT`), any other caller of that
//! issuer that needs a fetch meanwhile waits at most `JOIN_WAIT` and then goes on with the
//! last good set. A caller that goes away does not cancel a fetch half done.
//!
//! Sources: `jwks_uri` (HTTPS; plain HTTP only to a loopback host), OIDC discovery
//! (`{issuer}/.well-known/openid-configuration`), or `jwks_file`. HTTPS trusts the
//! `ca_file` when one is given (an in-cluster API server's CA), otherwise the Mozilla
//! roots compiled into the binary (`webpki-roots`): the image is static and may have no
//! system store. A `bearer_token_file` is read at each fetch (projected tokens rotate) and
//! sent only to the origin (scheme, host, port) of the configured URL: the `jwks_uri`, or
//! for discovery the issuer. A discovered `jwks_uri` on another origin (EKS, GKE) is fetched
//! without it. Redirects are not followed: a 3xx answer is a failed fetch.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

mod fetch;

pub(crate) use fetch::check_fetch_url;

use self::fetch::https_client;
use crate::{metrics::Metrics, telemetry::chain};
use token_authority_jose::{
    crypto::{Algorithm, VerifyingKey},
    fetch::Fetcher,
    jwk,
    jwt::verify::KeyLookup,
};

/// How long the caller whose unknown kid started a fetch waits for it: as long as one
/// request of the fetch may take.
const FETCH_TIMEOUT: Duration = token_authority_jose::fetch::FETCH_TIMEOUT;
/// How long a caller waits for a fetch another task started before it goes on with the
/// last good set: a stalled issuer must not hold every caller of it for `FETCH_TIMEOUT`.
pub(crate) const JOIN_WAIT: Duration = Duration::from_millis(250);
/// Least time between two fetches caused by unknown kids.
pub(crate) const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// A cached set older than this is refreshed by the background task.
pub(crate) const REFRESH_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA file {0} holds no usable certificate")]
    CaFile(String),
    #[error("{url}: {source}")]
    Http {
        url: String,
        source: Box<token_authority_jose::fetch::FetchError>,
    },
    #[error("cannot build the HTTPS client: {0}")]
    Client(token_authority_jose::fetch::FetchError),
    #[error("the fetch task ended without an answer")]
    Vanished,
    #[error("the discovery document has no usable jwks_uri: {0}")]
    Discovery(String),
    #[error(transparent)]
    Jwks(#[from] jwk::JwksError),
}

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JwksSource {
    Uri(String),
    Discovery,
    File(PathBuf),
}

/// One `[[issuer]]` of the policy, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IssuerConfig {
    pub(crate) name: String,
    pub(crate) issuer: String,
    pub(crate) source: JwksSource,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) bearer_token_file: Option<PathBuf>,
    pub(crate) audiences: Vec<String>,
    /// Seconds.
    pub(crate) max_token_lifetime: u64,
    pub(crate) algorithms: Vec<Algorithm>,
    /// The `sub` values this issuer may assert; `None`: any.
    pub(crate) subjects: Option<SubjectBound>,
    /// Whether a token with `act` (a delegation, RFC 8693) proves a caller: its `sub`, with
    /// the `act` chain kept for the tokens it gets.
    pub(crate) allow_delegation: bool,
    /// Whether this entry may name the authority's own `--issuer`: its tokens, minted for
    /// any subject a rule allows, then become callers.
    pub(crate) allow_own_issuer: bool,
}

/// The names an issuer may assert as a caller (Vault's `bound_subject`): a Kubernetes API
/// server speaks for `system:serviceaccount:*`, a SPIRE server for its trust domain. Without
/// one, a trusted issuer could mint any `sub`, such as a SPIFFE ID that rules grant to
/// certificate callers.
#[derive(Clone)]
pub(crate) struct SubjectBound {
    patterns: Vec<String>,
    set: globset::GlobSet,
}

impl SubjectBound {
    pub(crate) fn new(patterns: Vec<String>, set: globset::GlobSet) -> SubjectBound {
        SubjectBound { patterns, set }
    }

    pub(crate) fn allows(&self, subject: &str) -> bool {
        self.set.is_match(subject)
    }
}

// Equal when the patterns are: what a reload compares to keep an issuer's cached keys.
impl PartialEq for SubjectBound {
    fn eq(&self, other: &SubjectBound) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for SubjectBound {}

impl std::fmt::Debug for SubjectBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

/// The keys of one issuer at one time.
#[derive(Debug, Default)]
pub(crate) struct IssuerKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl IssuerKeys {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

impl KeyLookup for IssuerKeys {
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// An issuer withdraws a key by dropping it from its JWKS: it is then unknown.
    fn is_revoked(&self, _kid: &str) -> bool {
        false
    }
}

/// How a fetch ended, for every task waiting on it: the number of keys, or why not.
type FetchOutcome = Result<usize, Arc<FetchError>>;

/// The fetch bookkeeping of one issuer. Behind a std mutex that is never held across an
/// await: the network happens in the fetch's own task.
#[derive(Default)]
struct Fetches {
    /// The fetch in flight: `Some` outcome once it ended.
    in_flight: Option<watch::Receiver<Option<FetchOutcome>>>,
    /// When a fetch caused by an unknown kid last started, for the cooldown.
    unknown_kid_at: Option<Instant>,
    /// When the cached set was last fetched successfully.
    succeeded_at: Option<Instant>,
    /// When any fetch last started.
    attempted_at: Option<Instant>,
}

/// A trusted issuer with its cached keys.
pub(crate) struct TrustedIssuer {
    pub(crate) config: IssuerConfig,
    keys: ArcSwap<IssuerKeys>,
    fetches: std::sync::Mutex<Fetches>,
    client: Fetcher,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("name", &self.config.name)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl TrustedIssuer {
    /// Prepares the issuer (reads its CA file); fetches nothing yet.
    pub(crate) fn new(
        config: IssuerConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<TrustedIssuer, FetchError> {
        let client = https_client(config.ca_file.as_ref())?;
        Ok(TrustedIssuer {
            config,
            keys: ArcSwap::from_pointee(IssuerKeys::default()),
            fetches: std::sync::Mutex::new(Fetches::default()),
            client,
            metrics,
        })
    }

    /// The cached keys.
    pub(crate) fn keys(&self) -> Arc<IssuerKeys> {
        self.keys.load_full()
    }

    /// Fetches now (or joins the fetch in flight) and replaces the cache; on failure the
    /// cache is kept. Scheduled refreshes do not count toward the unknown-kid cooldown: a key
    /// the issuer publishes just after one is still fetched when its first token arrives.
    pub(crate) async fn refresh(self: &Arc<Self>) -> FetchOutcome {
        let mut done = {
            let mut fetches = self.fetches();
            match &fetches.in_flight {
                Some(done) => done.clone(),
                None => self.start_fetch(&mut fetches),
            }
        };
        wait_outcome(&mut done).await
    }

    /// Refetches because a token named `kid`, unless the keys hold it by now or the cooldown
    /// since the last such attempt has not passed (`None`). Returns the keys to retry with:
    /// the fetched set, or the last good one when the fetch failed or, for a caller that
    /// joined a fetch another task started, did not end within `JOIN_WAIT`.
    pub(crate) async fn refetch_for_unknown_kid(
        self: &Arc<Self>,
        kid: &str,
    ) -> Option<Arc<IssuerKeys>> {
        let (mut done, wait) = {
            let mut fetches = self.fetches();
            let current = self.keys.load_full();
            if current.verifying_key(kid).is_some() {
                return Some(current);
            }
            match &fetches.in_flight {
                Some(done) => (done.clone(), JOIN_WAIT),
                None if fetches
                    .unknown_kid_at
                    .is_some_and(|at| at.elapsed() < REFETCH_COOLDOWN) =>
                {
                    return None
                }
                None => {
                    fetches.unknown_kid_at = Some(Instant::now());
                    (self.start_fetch(&mut fetches), FETCH_TIMEOUT)
                }
            }
        };
        // Timed out: the fetch goes on in its task; this caller goes on with what is known.
        let _ = tokio::time::timeout(wait, wait_outcome(&mut done)).await;
        Some(self.keys.load_full())
    }

    /// Whether the background task should refresh this issuer now: the cache is older than
    /// `REFRESH_AFTER` (or was never filled), and no fetch started within the cooldown (an
    /// issuer that is down is not retried at every tick).
    pub(crate) fn is_stale(&self) -> bool {
        let fetches = self.fetches();
        fetches
            .succeeded_at
            .is_none_or(|at| at.elapsed() >= REFRESH_AFTER)
            && fetches
                .attempted_at
                .is_none_or(|at| at.elapsed() >= REFETCH_COOLDOWN)
    }

    /// The bookkeeping; a panic elsewhere while it was held leaves plain timestamps, still
    /// good to read.
    fn fetches(&self) -> MutexGuard<'_, Fetches> {
        self.fetches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a fetch in a task of its own and records it as the one in flight.
    fn start_fetch(
        self: &Arc<Self>,
        fetches: &mut Fetches,
    ) -> watch::Receiver<Option<FetchOutcome>> {
        let (sender, done) = watch::channel(None);
        fetches.in_flight = Some(done.clone());
        fetches.attempted_at = Some(Instant::now());
        let issuer = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = issuer.fetch_and_store().await.map_err(Arc::new);
            let mut fetches = issuer.fetches();
            if outcome.is_ok() {
                fetches.succeeded_at = Some(Instant::now());
            }
            fetches.in_flight = None;
            drop(fetches);
            // Nobody waiting is fine.
            let _ = sender.send(Some(outcome));
        });
        done
    }

    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let result = self.fetch().await;
        match &result {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(IssuerKeys {
                    keys: keys.iter().cloned().collect(),
                }));
                tracing::info!(issuer = %self.config.name, keys = count, "caller issuer keys fetched");
            }
            Err(error) => {
                if let Some(metrics) = &self.metrics {
                    metrics.caller_jwks_fetch_failed(&self.config.name);
                }
                tracing::warn!(issuer = %self.config.name, error = %chain(&error), "caller issuer keys could not be fetched; keeping the last good set");
            }
        }
        result.map(|keys| keys.len())
    }
}

/// Waits until the fetch behind `done` ended; a fetch task that vanished counts as failed.
async fn wait_outcome(done: &mut watch::Receiver<Option<FetchOutcome>>) -> FetchOutcome {
    match done.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or_else(|| Err(Arc::new(FetchError::Vanished))),
        Err(_) => Err(Arc::new(FetchError::Vanished)),
    }
}
