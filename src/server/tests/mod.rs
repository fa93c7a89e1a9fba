//! The server's parts in process, on paused time: an authority over a temporary sled
//! keystore whose clock follows tokio's, its schedule task, and its gRPC service served over
//! in-memory connections, so that the client crate's `TokenSource` and `Verifier` talk to it
//! as to a remote authority. Nothing here waits on the wall clock: tokio's paused time jumps
//! ahead whenever every task waits, so months of the schedule pass in moments. (The binary's
//! own wiring, over the network and on the wall clock, is tested in `tests/api`.)
//!
//! # Layout
//! - `schedule`: rotations, retirements and deletions over months of the schedule.
//! - `client`: the client's refresh before expiry and its verifier's expiry checks.
//! - `status`: status lists kept until their last token has expired, then dropped.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, UNIX_EPOCH},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::{wrappers::UnboundedReceiverStream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{
    transport::{Channel, Endpoint, Uri},
    Status,
};

use super::tasks::run_schedule;
use crate::{
    authority::{signing_pool::SigningPool, Authority, Settings},
    callers::{admin::AdminToken, CallerSettings, Callers},
    config::WatchSettings,
    metrics::{AuthorityState, Metrics},
    pb::token_authority_server::TokenAuthorityServer,
    store::KeyStore,
    transport::{grpc::GrpcService, watch::Watchers},
};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

mod client;
mod schedule;
mod status;

/// Where the test clocks start: 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000;
const ISSUER: &str = "https://token-authority.test";
const AUDIENCE: &str = "ledger";
const HOUR: u64 = 3600;
/// The verifiers' leeway, and the authority's.
const LEEWAY: u64 = 60;

/// A clock at `T0` plus `millis`, following tokio's time.
fn clock_at(millis: u64) -> Clock {
    Clock::tokio(UNIX_EPOCH + Duration::from_millis(T0 * 1000 + millis))
}

/// The authority's settings these tests share: ES256, tokens of an hour at most, a minute's
/// leeway, a monthly rotation published 15 minutes ahead. Each file changes what it is about.
fn settings(clock: Clock) -> Settings {
    Settings {
        issuer: ISSUER.into(),
        default_ttl: HOUR,
        max_ttl: HOUR,
        leeway: LEEWAY,
        max_token_bytes: 8192,
        algorithms: vec![Algorithm::ES256],
        publish_lead: 900,
        rotation_period: 30 * 86_400,
        clock,
        signers: Default::default(),
    }
}

/// An authority, its schedule and its gRPC service, in this process.
struct InProcess {
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    /// While set, every call is answered UNAVAILABLE, as by an authority that is down.
    down: Arc<AtomicBool>,
    /// The server ends of new connections.
    connections: mpsc::UnboundedSender<tokio::io::DuplexStream>,
    stop: CancellationToken,
    schedule: JoinHandle<()>,
    server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Opens the authority on a new sled keystore at its clock's now, and starts its
    /// schedule and its service. No caller policy, as on a loopback listener: anyone may
    /// call IssueToken.
    fn start(settings: Settings) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let (store, records) = KeyStore::open(&dir.path().join("keystore"), None).unwrap();
        let metrics = Arc::new(Metrics::new(&settings.algorithms));
        let callers = Callers::new(
            Arc::new(AdminToken::new("in-process-admin-token")),
            Arc::clone(&metrics),
            CallerSettings {
                loopback: true,
                leeway: settings.leeway,
                max_token_bytes: settings.max_token_bytes,
                own_issuer: settings.issuer.as_str().into(),
            },
            None,
            None,
        );
        let now = settings.clock.unix_now();
        let authority = Arc::new(Authority::open(store, records, settings, now).unwrap());
        let stop = CancellationToken::new();
        let watchers = Watchers::new(
            WatchSettings {
                max_watchers: 8,
                max_watchers_per_ip: 8,
                // Long: a keepalive every 30 s would be a hundred thousand messages over
                // the months these tests run.
                keepalive: Duration::from_secs(6 * 3600),
                send_timeout: Duration::from_secs(10),
            },
            stop.clone(),
            metrics.watchers.clone(),
        );
        let service = GrpcService::new(
            Arc::clone(&authority),
            Arc::new(callers),
            Arc::clone(&metrics),
            Arc::new(SigningPool::per_core().unwrap()),
            Arc::new(watchers),
        );
        let down = Arc::new(AtomicBool::new(false));
        let refusing = Arc::clone(&down);
        let service = TokenAuthorityServer::with_interceptor(service, move |request| {
            if refusing.load(Ordering::Acquire) {
                Err(Status::unavailable("the authority is down"))
            } else {
                Ok(request)
            }
        });
        let (connections, incoming) = mpsc::unbounded_channel();
        let incoming = UnboundedReceiverStream::new(incoming).map(Ok::<_, io::Error>);
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        let schedule = tokio::spawn(run_schedule(
            Arc::clone(&authority),
            Arc::clone(&metrics),
            Arc::new(tokio::sync::Notify::new()),
            stop.clone(),
        ));
        InProcess {
            authority,
            metrics,
            down,
            connections,
            stop,
            schedule,
            server,
            _dir: dir,
        }
    }

    /// A channel to the service; each connection it opens is an in-memory pipe.
    fn channel(&self) -> Channel {
        let connections = self.connections.clone();
        Endpoint::from_static("http://in-process.test").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let (client, server) = tokio::io::duplex(64 * 1024);
                let sent = connections.send(server);
                async move {
                    sent.map_err(|_| io::Error::other("the in-process server stopped"))?;
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(client))
                }
            }),
        )
    }

    /// Tokens issued so far, as the metrics count them.
    fn issued(&self) -> f64 {
        let text = self.metrics.render(
            &AuthorityState {
                sync_age: 0,
                history_rewinds: 0,
                refused_records: 0,
                signer_available: true,
                status: Default::default(),
            },
            self.authority.clock().unix_now(),
        );
        text.lines()
            .filter(|line| line.starts_with("token_authority_tokens_issued_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    /// Stops the schedule (a step in progress completes) and the service.
    async fn stop(self) {
        self.stop.cancel();
        self.schedule.await.unwrap();
        self.server.abort();
    }
}
