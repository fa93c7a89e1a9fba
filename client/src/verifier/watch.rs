//! The verifier's background tasks: one WatchKeys stream at a time over the replicas it was
//! given, and the HTTP JWKS polled while no stream is up.
//!
//! A broken stream (or one that cannot be opened) hands over to the next replica in the
//! list, so a replica that dies costs one reconnect, not the backoff of a dead address; the
//! backoff doubles only once every replica has failed in turn. While no stream is up, the
//! JWKS is polled every `poll_interval` (sooner if its `max-age` says so), with the last
//! ETag: a revocation made on a live replica reaches the verifier within that interval,
//! where the `max-age` alone (minutes) would keep the revoked key in use. The polling stops
//! as soon as a stream is back: a stream pushes every change itself.
//!
//! The polling is a task of its own (`Fallback`): an HTTP endpoint that hangs (each fetch
//! may take its full timeout) must not hold up the stream's reconnect, which would keep
//! revocations from arriving. Once a stream is up, what the polling fetched is not stored:
//! the stream's set is the newer. Whatever either stores, a key once reported revoked stays
//! revoked (`KeySet::keep_revoked`).
//!
//! Opening a stream is a `watch_keys` span, whose WatchKeys call carries its trace context:
//! a child of the span `Verifier::connect` was called in until the verifier is ready (the
//! caller is waiting for it), a root after that (a reconnect in the background). The span
//! ends once the stream is open, not with the stream, which may last for days.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use token_authority_jose::backoff::{jitter, Backoff};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{field, Instrument as _};

use token_authority_jose::{clock::Clock, jwt::verify::Policy};

use crate::{
    jwks_http::{Fetched, JwksFetcher},
    keys::KeySet,
    pb::{self, token_authority_client::TokenAuthorityClient, watch_keys_response::Event},
    status::HeldLists,
    telemetry,
};

/// How long a stream may stay silent: twice the keepalive interval the authority announced,
/// within 200 ms and 2 hours whatever it sent (a value out of range, or so large that
/// doubling it would overflow, must not stop the task).
fn silence_after(interval: &prost_types::Duration) -> Duration {
    let interval = Duration::new(
        u64::try_from(interval.seconds.clamp(0, 3600)).unwrap_or(0),
        u32::try_from(interval.nanos.clamp(0, 999_999_999)).unwrap_or(0),
    );
    (interval * 2).max(Duration::from_millis(200))
}

/// The first delay before reconnecting a broken stream, and the cap it doubles up to.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything the background tasks own.
pub(super) struct Watch {
    /// One client per replica, tried in turn; never empty.
    pub(super) replicas: Vec<TokenAuthorityClient<Channel>>,
    pub(super) open_timeout: Duration,
    pub(super) poll_interval: Duration,
    pub(super) keys: Arc<ArcSwap<KeySet>>,
    /// The status lists pushed after the key set, verified against it.
    pub(super) lists: Arc<ArcSwap<HeldLists>>,
    /// Held while the key set or the lists are read and replaced, by every writer (the
    /// stream, the polling, `Verifier::hold_status_list`), so none undoes another's change.
    pub(super) writes: Arc<std::sync::Mutex<()>>,
    /// What a list token must satisfy (the issuer, the leeway), and the time.
    pub(super) policy: Policy,
    pub(super) clock: Clock,
    /// Turns true at the first key set (`ready`).
    pub(super) first: tokio::sync::watch::Sender<bool>,
    /// The span `Verifier::connect` was called in, the parent of the `watch_keys` spans
    /// until the verifier is ready; then dropped, so the caller's span can end.
    pub(super) caller: Option<tracing::Span>,
    pub(super) fetcher: Option<JwksFetcher>,
    /// An unknown kid (or a list not held) asks for a fetch at once.
    pub(super) refetch: Arc<tokio::sync::Notify>,
    /// Lists tokens named that no copy is held of: fetched over HTTP with the JWKS.
    pub(super) wanted: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Where the stream stands, as the polling reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// No attempt has ended yet: the polling waits for the first one.
    Starting,
    /// A key set arrived on the stream in use.
    Up,
    Down,
}

/// The polling task: the HTTP JWKS and status lists while no stream is up.
struct Fallback {
    fetcher: JwksFetcher,
    poll_interval: Duration,
    keys: Arc<ArcSwap<KeySet>>,
    lists: Arc<ArcSwap<HeldLists>>,
    writes: Arc<std::sync::Mutex<()>>,
    policy: Policy,
    clock: Clock,
    stream: tokio::sync::watch::Receiver<Stream>,
    /// Turned true once a key set and the lists came over HTTP (the verifier is ready).
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    refetch: Arc<tokio::sync::Notify>,
    wanted: Arc<std::sync::Mutex<Vec<String>>>,
    http_keys: bool,
}

/// Aborts the polling task when the stream's task ends (the verifier was dropped).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The stream's half of `Watch`.
struct Streaming {
    replicas: Vec<TokenAuthorityClient<Channel>>,
    open_timeout: Duration,
    keys: Arc<ArcSwap<KeySet>>,
    lists: Arc<ArcSwap<HeldLists>>,
    writes: Arc<std::sync::Mutex<()>>,
    policy: Policy,
    clock: Clock,
    stream: tokio::sync::watch::Sender<Stream>,
    first: Arc<tokio::sync::watch::Sender<bool>>,
    caller: Option<tracing::Span>,
}

impl Watch {
    /// Holds a WatchKeys stream for as long as the verifier lives, reconnecting when it
    /// breaks, with the HTTP polling in a task of its own beside it.
    pub(super) async fn run(self) {
        let (stream, watching) = tokio::sync::watch::channel(Stream::Starting);
        let first = Arc::new(self.first);
        let _polling = self.fetcher.map(|fetcher| {
            let fallback = Fallback {
                fetcher,
                poll_interval: self.poll_interval,
                keys: Arc::clone(&self.keys),
                lists: Arc::clone(&self.lists),
                writes: Arc::clone(&self.writes),
                policy: self.policy.clone(),
                clock: self.clock,
                stream: watching,
                ready: Arc::clone(&first),
                refetch: self.refetch,
                wanted: self.wanted,
                http_keys: false,
            };
            AbortOnDrop(tokio::spawn(fallback.run()).abort_handle())
        });
        Streaming {
            replicas: self.replicas,
            open_timeout: self.open_timeout,
            keys: self.keys,
            lists: self.lists,
            writes: self.writes,
            policy: self.policy,
            clock: self.clock,
            stream,
            first,
            caller: self.caller,
        }
        .run()
        .await;
    }
}

impl Streaming {
    async fn run(mut self) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).with_jitter(0.25);
        let mut replica = 0;
        loop {
            if *self.first.borrow() {
                // Ready over HTTP meanwhile: the caller of `connect` has moved on.
                self.caller = None;
            }
            if self.hold_stream(replica).await {
                backoff.reset();
            }
            self.stream.send_replace(Stream::Down);
            replica = (replica + 1) % self.replicas.len();
            tokio::time::sleep(backoff.delay()).await;
            if replica == 0 {
                backoff.double();
            }
        }
    }

    /// Opens a stream on `replica` and applies what it pushes until it breaks; whether a
    /// key set arrived.
    async fn hold_stream(&mut self, replica: usize) -> bool {
        let span = tracing::info_span!(
            parent: self.caller.as_ref().and_then(tracing::Span::id),
            "watch_keys",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = telemetry::SERVICE,
            rpc.method = "WatchKeys",
            replica,
            outcome = field::Empty,
            rpc.grpc.status_code = field::Empty,
            otel.status_code = field::Empty,
        );
        let mut request = tonic::Request::new(pb::WatchKeysRequest {});
        telemetry::inject(&span, request.metadata_mut());
        let client = &mut self.replicas[replica];
        let opened = tokio::time::timeout(
            self.open_timeout,
            client.watch_keys(request).instrument(span.clone()),
        )
        .await;
        let (outcome, code) = match &opened {
            Ok(Ok(_)) => ("opened", Some(tonic::Code::Ok)),
            Ok(Err(status)) => ("refused", Some(status.code())),
            Err(_) => ("timed_out", None),
        };
        span.record("outcome", outcome);
        if let Some(code) = code {
            span.record("rpc.grpc.status_code", code as i64);
        }
        if code != Some(tonic::Code::Ok) {
            span.record("otel.status_code", "error");
        }
        drop(span);
        let mut stream = match opened {
            Ok(Ok(stream)) => stream.into_inner(),
            Ok(Err(status)) => {
                tracing::info!(%status, replica, "cannot watch the authority's keys");
                return false;
            }
            Err(_) => {
                tracing::warn!(
                    open_timeout = ?self.open_timeout,
                    replica,
                    "opening the key watch timed out; trying again after the HTTP JWKS"
                );
                return false;
            }
        };
        let mut received = false;
        // Until the first message says otherwise, the authority's default.
        let mut silence = Duration::from_secs(60);
        loop {
            let message = match tokio::time::timeout(silence, stream.message()).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => return received,
                Ok(Err(status)) => {
                    tracing::info!(%status, replica, "key watch ended; reconnecting");
                    return received;
                }
                Err(_) => {
                    tracing::warn!(?silence, replica, "key watch silent; reconnecting");
                    return received;
                }
            };
            let watched = match message.event {
                Some(Event::KeySet(watched)) => watched,
                Some(Event::StatusLists(lists)) => {
                    self.take_lists(&lists);
                    // Ready once the lists announced with the first key set are held too.
                    if received {
                        self.ready();
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(interval) = &watched.keepalive_interval {
                silence = silence_after(interval);
            }
            match KeySet::from_watched(&watched) {
                Ok(set) => {
                    {
                        let _writing = self
                            .writes
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        self.stream.send_replace(Stream::Up);
                        // A replica behind the one that revoked a key (or one restored from
                        // before) still lists it: the revocation stands.
                        let set = set.keep_revoked(&self.keys.load());
                        self.keys.store(Arc::new(set));
                    }
                    // A key set that announces status lists is ready with them.
                    if !watched.status_lists {
                        self.ready();
                    }
                    received = true;
                }
                // Keep the last good set; a bad one must not empty the verifier.
                Err(error) => tracing::error!(%error, "key set refused"),
            }
        }
    }

    /// Keeps the pushed status lists that verify against the key set held.
    fn take_lists(&self, watched: &pb::WatchedStatusLists) {
        let _writing = self
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = self.keys.load();
        let (held, refused) =
            self.lists
                .load()
                .apply(watched, &**keys, &self.policy, self.clock.unix_now());
        for refusal in refused {
            // The copy held before (if any) stays in use until it expires.
            tracing::error!(%refusal, "status list refused");
        }
        self.lists.store(Arc::new(held));
    }

    /// The verifier holds what it needs: `Verifier::connect` returns, and what comes next
    /// is no longer part of its caller's work.
    fn ready(&mut self) {
        self.first.send_replace(true);
        self.caller = None;
    }
}

impl Fallback {
    /// While no stream is up: the JWKS when due (or at once for an unknown kid) and the
    /// status lists after it; nothing while a stream is up.
    async fn run(mut self) {
        let mut next_fetch = Instant::now();
        loop {
            if self.stream.wait_for(|s| *s == Stream::Down).await.is_err() {
                return;
            }
            if Instant::now() < next_fetch {
                tokio::select! {
                    up = self.stream.wait_for(|s| *s == Stream::Up) => {
                        if up.is_err() {
                            return;
                        }
                        continue;
                    }
                    () = self.refetch.notified() => {}
                    () = tokio::time::sleep_until(next_fetch) => {}
                }
            }
            next_fetch = self.fetch_jwks().await;
            self.fetch_lists().await;
        }
    }

    /// While no stream is up: every list held, and every list a token named that none is
    /// held of, fetched over HTTP (conditionally) and kept once it verifies.
    async fn fetch_lists(&mut self) {
        let fetcher = &self.fetcher;
        let mut uris = self.lists.load().held();
        match fetcher.fetch_aggregation().await {
            Ok(served) => {
                for uri in served {
                    if !uris.iter().any(|(held, _)| *held == uri) {
                        uris.push((uri, None));
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "status list aggregation fetch failed"),
        }
        let wanted = std::mem::take(
            &mut *self
                .wanted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for uri in wanted {
            if !uris.iter().any(|(held, _)| *held == uri) {
                uris.push((uri, None));
            }
        }
        for (uri, etag) in uris {
            let fetched = fetcher.fetch_list(&uri, etag.as_deref()).await;
            match fetched {
                Ok(Some((token, etag))) => {
                    let _writing = self
                        .writes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let keys = self.keys.load();
                    let now = self.clock.unix_now();
                    match self.lists.load().with_fetched(
                        &uri,
                        &token,
                        etag,
                        &**keys,
                        &self.policy,
                        now,
                    ) {
                        Ok(held) => self.lists.store(Arc::new(held)),
                        Err(refusal) => tracing::error!(%refusal, "status list refused"),
                    }
                }
                Ok(None) => {}
                // The copy held (if any) stays in use until it expires.
                Err(error) => tracing::warn!(%error, "status list fetch failed"),
            }
        }
        if self.http_keys {
            self.ready.send_replace(true);
        }
    }

    /// Fetches the HTTP JWKS and swaps in a changed set (unless a stream came up meanwhile:
    /// its set is the newer); returns when
    /// to fetch again: after the poll interval, or the answer's `max-age` when that is
    /// shorter, never sooner than 1 s, with jitter so a fleet whose streams broke together does not
    /// poll in step.
    async fn fetch_jwks(&mut self) -> Instant {
        let max_age = match self.fetcher.fetch().await {
            Ok((Fetched::Changed(set), max_age)) => {
                let _writing = self
                    .writes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *self.stream.borrow() != Stream::Up {
                    let set = set.keep_revoked(&self.keys.load());
                    self.keys.store(Arc::new(set));
                    // Ready once the lists are fetched too (`fetch_lists`, next).
                    self.http_keys = true;
                }
                max_age
            }
            Ok((Fetched::NotModified, max_age)) => max_age,
            Err(error) => {
                // Keep the last good set.
                tracing::warn!(%error, "JWKS fallback fetch failed");
                None
            }
        };
        let again = max_age
            .unwrap_or(self.poll_interval)
            .min(self.poll_interval)
            .max(Duration::from_secs(1));
        Instant::now() + again + jitter(again / 4)
    }
}
