//! The audit log's place in the server: its upkeep (the suppressed-lines summary and the
//! chain's head in the keystore, once a second and at shutdown), SIGHUP to reopen it after
//! log rotation, and its state in health: while it cannot be written, the TokenAuthority
//! service reports NOT_SERVING and `/readyz` 503 (liveness is untouched: a restart would
//! not free the disk), and both recover with the first write that succeeds.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    callers::audit::{self, AuditLog},
    pb::token_authority_server::TokenAuthorityServer,
    store::KeyStore,
    telemetry::chain,
    transport::grpc::GrpcService,
};

/// The audit log's tasks, stopped after the servers have drained.
pub(super) struct AuditTasks {
    stop: CancellationToken,
    upkeep: JoinHandle<()>,
}

impl AuditTasks {
    pub(super) fn start(
        log: Arc<AuditLog>,
        store: KeyStore,
        health: HealthReporter,
        ready: Arc<AtomicBool>,
        server_stop: CancellationToken,
    ) -> AuditTasks {
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(audit::upkeep(Arc::clone(&log), store, stop.clone()));
        tokio::spawn(audit::watch_stalls(Arc::clone(&log), server_stop.clone()));
        tokio::spawn(follow_state(
            Arc::clone(&log),
            health,
            ready,
            server_stop.clone(),
        ));
        tokio::spawn(reopen_on_hangup(log, server_stop));
        AuditTasks { stop, upkeep }
    }

    /// Writes the last summary, waits for every queued line and records the final head.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.upkeep.await;
    }
}

async fn follow_state(
    log: Arc<AuditLog>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut writable = log.writable();
    loop {
        tokio::select! {
            changed = writable.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let ok = *writable.borrow_and_update();
        if stop.is_cancelled() {
            return;
        }
        ready.store(ok, Ordering::Release);
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health
            .set_service_status(
                <TokenAuthorityServer<GrpcService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        if ok {
            tracing::info!("the audit log takes lines again: serving");
        } else {
            tracing::error!("the audit log cannot be written: IssueToken and admin RPCs answer UNAVAILABLE, the service reports NOT_SERVING");
        }
    }
}

#[cfg(unix)]
async fn reopen_on_hangup(log: Arc<AuditLog>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(error = %chain(&error), "cannot install the SIGHUP handler; the audit log is still reopened when its file is rotated away");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reopening the audit log if it was rotated");
                log.reopen().await;
            }
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(not(unix))]
async fn reopen_on_hangup(_log: Arc<AuditLog>, _stop: CancellationToken) {}
