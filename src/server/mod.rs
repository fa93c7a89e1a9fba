//! Wiring: opens the keystore, builds the authority, serves gRPC and HTTP on listeners the
//! caller has bound, and shuts down in order when the shutdown future completes.
//!
//! Production passes the SIGTERM|SIGINT future; tests pass a oneshot receiver. Shutdown:
//! health goes NOT_SERVING, the servers keep serving for `--shutdown-delay` (while load
//! balancers take the pod out), then stop accepting and drain within the grace period, and
//! the keystore is flushed. What it opens first is in `open`, its background tasks in `tasks`,
//! the audit log's in `audit`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    authority::{keys::KeyState, signing_pool::SigningPool, Authority},
    config::Config,
    metrics::Metrics,
    transport::{
        exchange::Exchanger,
        grpc::GrpcService,
        http::{self, HttpState},
        tls::TlsReloader,
        watch::Watchers,
    },
};

mod audit;
mod error;
mod health;
mod open;
mod routes;
mod serving;
mod starting;
mod tasks;
#[cfg(test)]
mod tests;

pub use error::ServerError;
use health::Health;
pub use open::open_status_lists;
use open::{authority_settings, open_authority, open_callers, open_secrets, open_signers};
use serving::Serving;
use tasks::Tasks;

/// The largest request message: a token (8 KiB) or claims (16 KiB) with room to spare.
/// Larger ones are refused before they are decoded.
pub(crate) const GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The two bound listeners the server runs on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(grpc).await?,
            http: TcpListener::bind(http).await?,
        })
    }
}

/// Runs the authority until `shutdown` completes, then drains and flushes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let started = std::time::Instant::now();
    let http_addr = listeners.http.local_addr().map_err(ServerError::Listener)?;
    let grpc_addr = listeners.grpc.local_addr().map_err(ServerError::Listener)?;
    // TLS first: a certificate that does not load stops the start before anything else.
    let tls = config.tls.as_ref().map(TlsReloader::load).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{http_addr}"));
    let (admin, keks) = open_secrets(&config)?;
    let signers = open_signers(&config).await?;
    let health = Health::starting().await;
    let grpc_routes = routes::grpc_base(&health)?;
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new(&config.algorithms));
    if let Some(tls) = &tls {
        metrics.tls_in_use(tls.expiry());
    }
    let signing_pool = SigningPool::per_core().map_err(ServerError::SigningPool)?;
    let callers = Arc::new(open_callers(&config, &issuer, grpc_addr, admin, &metrics).await?);
    let serving = Serving::start(listeners, &config, tls.as_ref(), &health, &metrics, &stop);

    let mut shutdown = std::pin::pin!(shutdown);
    let settings = authority_settings(&config, issuer.clone(), signers);
    let authority = match open_authority(&config, keks, settings, shutdown.as_mut()).await {
        Ok(Some(authority)) => Arc::new(authority),
        // Asked to stop before the database could be reached, or the start failed: the
        // listeners close before the answer.
        other => {
            stop.cancel();
            let _ = serving.drain(config.shutdown_grace).await;
            return other.map(|_| ());
        }
    };
    authority.report_key_ages(metrics.key_ages());
    log_keys_loaded(&authority);
    let opened_lists = open::open_status_lists(config.status, &authority, &issuer).await;
    if let Some(lists) = authority.status_lists() {
        callers.attach_own_status(Arc::clone(lists));
    }
    if let Err(error) = opened_lists {
        stop.cancel();
        let _ = serving.drain(config.shutdown_grace).await;
        return Err(error);
    }

    let signing_pool = Arc::new(signing_pool);
    let service = GrpcService::new(
        Arc::clone(&authority),
        Arc::clone(&callers),
        Arc::clone(&metrics),
        Arc::clone(&signing_pool),
        Arc::new(Watchers::new(
            config.watch,
            stop.clone(),
            metrics.watchers.clone(),
        )),
    );
    serving.install(
        routes::grpc_full(grpc_routes, service),
        http::router(HttpState {
            authority: Arc::clone(&authority),
            ready: Arc::clone(&health.ready),
            jwks_max_age: config.jwks_max_age,
            metrics: Arc::clone(&metrics),
            exchanger: Exchanger {
                authority: Arc::clone(&authority),
                callers: Arc::clone(&callers),
                signing_pool,
                metrics: Arc::clone(&metrics),
            },
        }),
    );
    tasks::report_initial_health(&authority, &health.reporter).await;
    health.serving().await;
    // startup_ms: from opening the data directory to answering; the operator's figure for
    // how long a restarted pod is out of its Service.
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls_mode(&config),
        issuer = %issuer,
        crypto = token_authority_jose::crypto::PROVIDER,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    let tasks = Tasks::spawn(
        &authority,
        &callers,
        &metrics,
        &config,
        tls,
        &health.reporter,
        &stop,
    );
    let audit_tasks = callers.audit().map(|log| {
        audit::AuditTasks::start(
            Arc::clone(log),
            authority.store().clone(),
            health.reporter.clone(),
            Arc::clone(&health.ready),
            stop.clone(),
        )
    });

    shutdown.await;
    health.stopping().await;
    if !config.shutdown_delay.is_zero() {
        // Readiness fails from now on, but the endpoints that still list this pod take a
        // moment to learn it: new connections are served meanwhile, not refused.
        tracing::info!(delay = ?config.shutdown_delay, "shutting down: health NOT_SERVING, still serving until the delay ends");
        tokio::time::sleep(config.shutdown_delay).await;
    }
    tracing::info!("shutting down: health NOT_SERVING, draining");
    stop.cancel();
    tasks.join().await;
    let result = serving.drain(config.shutdown_grace).await;
    // After the drain: the last calls' lines are written, then the final head recorded.
    if let Some(tasks) = audit_tasks {
        tasks.stop().await;
    }
    authority.flush().await?;
    tracing::info!("keystore flushed; stopped");
    result
}

fn log_keys_loaded(authority: &Authority) {
    let current: Vec<String> = authority
        .keys()
        .infos()
        .iter()
        .filter(|r| r.state == KeyState::Current)
        .map(|r| format!("{}:{}", r.alg, r.kid))
        .collect();
    tracing::info!(
        ?current,
        keys = authority.keys().infos().len(),
        "keys loaded"
    );
}

fn tls_mode(config: &Config) -> &'static str {
    match &config.tls {
        None => "off: plaintext on both listeners",
        Some(files) if files.client_ca.is_some() => {
            "on for gRPC and HTTP, client certificates optional, checked against --client-ca"
        }
        Some(_) => "on for gRPC and HTTP, no client certificates",
    }
}
