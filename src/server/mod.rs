//! Wiring: opens the keystore, builds the authority, serves gRPC and HTTP on listeners the
//! caller has bound, and shuts down in order when the shutdown future completes.
//!
//! Production passes the SIGTERM|SIGINT future; tests pass a oneshot receiver. Shutdown:
//! health goes NOT_SERVING, both servers stop accepting and drain within the grace period,
//! the keystore is flushed. What it opens first is in `open`, its background tasks in `tasks`,
//! the audit log's in `audit`.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    authority::signing_pool::SigningPool,
    authority::Settings,
    callers::admin::{AdminToken, AdminTokenSource},
    callers::reload,
    config::Config,
    metrics::Metrics,
    pb::{self, token_authority_server::TokenAuthorityServer},
    store::kek::Keks,
    transport::{
        grpc::GrpcService,
        http::{self, HttpState},
        listener::{Listener, Protocol},
        tls::TlsReloader,
        watch::Watchers,
    },
};

mod audit;
mod error;
mod open;
mod starting;
mod tasks;
#[cfg(test)]
mod tests;

pub use error::ServerError;
pub use open::keystore_path;
use open::{check_files, open_callers, open_shared, open_sled};
pub use tasks::KEYSTORE_HEALTH;
use tasks::{report_keystore_health, run_schedule, run_sync};

/// The largest request message: a token (8 KiB) or claims (16 KiB) with room to spare.
/// Larger ones are refused before they are decoded.
pub const GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024;

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

    check_files(&config)?;
    let (admin, admin_source) =
        AdminToken::load(config.admin_token_file.as_deref(), &config.data_dir)?;
    match &admin_source {
        AdminTokenSource::Generated(path) => {
            tracing::warn!(path = %path.display(), "generated a new admin token; read it from this file")
        }
        AdminTokenSource::Existing(path) | AdminTokenSource::Configured(path) => {
            tracing::info!(path = %path.display(), "admin token loaded")
        }
    }
    let keks = config.kek_file.as_deref().map(Keks::load).transpose()?;
    match &keks {
        Some(keks) => tracing::info!(
            sealing_kek = keks.sealing_id(),
            "private keys are encrypted at rest"
        ),
        None => tracing::warn!(
            "no --kek-file: private keys are stored UNENCRYPTED in the data directory; \
             give a key-encryption key in production"
        ),
    }

    let settings = Settings {
        issuer: issuer.clone(),
        default_ttl: config.default_ttl,
        max_ttl: config.max_ttl,
        leeway: config.leeway,
        max_token_bytes: config.max_token_bytes,
        algorithms: config.algorithms.clone(),
        publish_lead: config.publish_lead,
        rotation_period: config.rotation_period,
        clock: config.clock,
    };

    // NOT_SERVING (and /readyz 503) until the keys are loaded.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<TokenAuthorityServer<GrpcService>>()
        .await;
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let ready = Arc::new(AtomicBool::new(false));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServerError::Reflection)?;
    // grpcurl 1.8.x asks for v1alpha only.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(ServerError::Reflection)?;

    let stop = CancellationToken::new();

    let metrics = Arc::new(Metrics::new(&config.algorithms));
    let signing_pool = SigningPool::per_core().map_err(ServerError::SigningPool)?;
    let callers = Arc::new(open_callers(&config, &issuer, grpc_addr, admin, &metrics).await?);

    // Both listeners answer from here on: "starting" until the keys are loaded.
    let tls_configs = tls.as_ref().map(TlsReloader::configs);
    let (grpc_router, grpc_full) = starting::switch(starting::grpc(health_service.clone()));
    let (http_router, http_full) = starting::switch(starting::http());
    let grpc_task = tokio::spawn(
        Listener {
            tcp: listeners.grpc,
            protocol: Protocol::Grpc,
            tls: tls_configs.clone(),
            limits: config.limits,
            metrics: metrics.grpc_listener.clone(),
        }
        .serve(grpc_router, stop.clone()),
    );
    let http_task = tokio::spawn(
        Listener {
            tcp: listeners.http,
            protocol: Protocol::Http,
            tls: tls_configs,
            limits: config.limits,
            metrics: metrics.http_listener.clone(),
        }
        .serve(http_router, stop.clone()),
    );
    let aborts = [grpc_task.abort_handle(), http_task.abort_handle()];

    let mut shutdown = std::pin::pin!(shutdown);
    let opened = match &config.store {
        None => open_sled(&config, keks, settings).await.map(Some),
        Some(pg) => match keks {
            Some(keks) => open_shared(pg, keks, settings, shutdown.as_mut()).await,
            None => Err(ServerError::KekRequired),
        },
    };
    let authority = match opened {
        Ok(Some(authority)) => Arc::new(authority),
        // Asked to stop before the database could be reached, or the start failed: the
        // listeners close before the answer.
        other => {
            stop.cancel();
            let _ = tokio::time::timeout(config.shutdown_grace, async {
                let _ = grpc_task.await;
                let _ = http_task.await;
            })
            .await;
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            return other.map(|_| ());
        }
    };
    authority.report_key_ages(metrics.key_ages());
    let current: Vec<String> = authority
        .keys()
        .records()
        .iter()
        .filter(|r| r.state == crate::authority::keys::KeyState::Current)
        .map(|r| format!("{}:{}", r.alg, r.kid))
        .collect();
    tracing::info!(
        ?current,
        keys = authority.keys().records().len(),
        "keys loaded"
    );

    let service = GrpcService::new(
        Arc::clone(&authority),
        Arc::clone(&callers),
        Arc::clone(&metrics),
        Arc::new(signing_pool),
        Arc::new(Watchers::new(
            config.watch,
            stop.clone(),
            metrics.watchers.clone(),
        )),
    );
    let _ = grpc_full.set(
        tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                TokenAuthorityServer::new(service)
                    .max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES),
            )
            .prepare()
            .into_axum_router(),
    );
    let _ = http_full.set(http::router(HttpState {
        authority: Arc::clone(&authority),
        ready: Arc::clone(&ready),
        jwks_max_age: config.jwks_max_age,
        metrics: Arc::clone(&metrics),
    }));
    health_reporter
        .set_serving::<TokenAuthorityServer<GrpcService>>()
        .await;
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    ready.store(true, Ordering::Release);

    // startup_ms: from opening the data directory to answering; the operator's figure for
    // how long a restarted pod is out of its Service.
    let tls_mode = match &config.tls {
        None => "off: plaintext on both listeners",
        Some(files) if files.client_ca.is_some() => {
            "on for gRPC and HTTP, client certificates optional, checked against --client-ca"
        }
        Some(_) => "on for gRPC and HTTP, no client certificates",
    };
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls_mode,
        issuer = %issuer,
        crypto = token_authority_jose::crypto::PROVIDER,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    // The sync task tells the schedule when a shared store answers again.
    let store_back = Arc::new(tokio::sync::Notify::new());
    let lifecycle_task = tokio::spawn(run_schedule(
        Arc::clone(&authority),
        Arc::clone(&metrics),
        Arc::clone(&store_back),
        stop.clone(),
    ));
    let sync_task = tokio::spawn(run_sync(
        Arc::clone(&authority),
        config.store_sync_interval,
        store_back,
        stop.clone(),
    ));
    tokio::spawn(report_keystore_health(
        Arc::clone(&authority),
        health_reporter.clone(),
        stop.clone(),
    ));
    let reload_task = config.policy_file.clone().map(|path| {
        tokio::spawn(reload::watch(
            Arc::clone(&callers),
            path,
            config.policy_reload_interval,
            stop.clone(),
        ))
    });
    if let Some(reloader) = tls {
        tokio::spawn(reloader.watch(
            config.tls_reload_interval,
            Arc::clone(&metrics),
            stop.clone(),
        ));
    }
    let audit_tasks = callers.audit().map(|log| {
        audit::AuditTasks::start(
            Arc::clone(log),
            authority.store().clone(),
            health_reporter.clone(),
            Arc::clone(&ready),
            stop.clone(),
        )
    });

    shutdown.await;
    tracing::info!("shutting down: health NOT_SERVING, draining");
    ready.store(false, Ordering::Release);
    health_reporter
        .set_not_serving::<TokenAuthorityServer<GrpcService>>()
        .await;
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    stop.cancel();
    let _ = sync_task.await;
    // A transition in progress completes (it is one transaction); no new one starts.
    let _ = lifecycle_task.await;
    if let Some(task) = reload_task {
        let _ = task.await;
    }

    let drained = tokio::time::timeout(config.shutdown_grace, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    let result = match drained {
        Ok((grpc, http)) => grpc.and(http).map_err(ServerError::Task),
        Err(_) => {
            tracing::warn!(grace = ?config.shutdown_grace, "drain took longer than the grace period; closing");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            Ok(())
        }
    };
    // After the drain: the last calls' lines are written, then the final head recorded.
    if let Some(tasks) = audit_tasks {
        tasks.stop().await;
    }
    authority.flush().await?;
    tracing::info!("keystore flushed; stopped");
    result
}
