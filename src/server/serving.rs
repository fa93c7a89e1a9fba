//! The two listeners from the first moment of the start to the end of the drain: they
//! answer "starting" (see `starting`) until the full routers are installed, then serve
//! those, and at shutdown drain within the grace period.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{health::Health, starting, Listeners, ServerError};
use crate::{
    config::Config,
    metrics::Metrics,
    transport::{
        listener::{Listener, Protocol},
        tls::TlsReloader,
    },
};

pub(super) struct Serving {
    grpc_full: Arc<OnceLock<Router>>,
    http_full: Arc<OnceLock<Router>>,
    grpc: JoinHandle<()>,
    http: JoinHandle<()>,
}

impl Serving {
    /// Both listeners answer from here on: "starting" until `install`.
    pub(super) fn start(
        listeners: Listeners,
        config: &Config,
        tls: Option<&TlsReloader>,
        health: &Health,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Serving {
        let tls_configs = tls.map(TlsReloader::configs);
        let (grpc_router, grpc_full) = starting::switch(starting::grpc(health.service.clone()));
        let (http_router, http_full) = starting::switch(starting::http());
        let grpc = tokio::spawn(
            Listener {
                tcp: listeners.grpc,
                protocol: Protocol::Grpc,
                tls: tls_configs.clone(),
                limits: config.limits,
                metrics: metrics.grpc_listener.clone(),
            }
            .serve(grpc_router, stop.clone()),
        );
        let http = tokio::spawn(
            Listener {
                tcp: listeners.http,
                protocol: Protocol::Http,
                tls: tls_configs,
                limits: config.limits,
                metrics: metrics.http_listener.clone(),
            }
            .serve(http_router, stop.clone()),
        );
        Serving {
            grpc_full,
            http_full,
            grpc,
            http,
        }
    }

    /// The full routers take over, for connections already open too.
    pub(super) fn install(&self, grpc: Router, http: Router) {
        let _ = self.grpc_full.set(grpc);
        let _ = self.http_full.set(http);
    }

    /// Waits for the listeners, stopped by the server's stop token, to drain; past `grace`
    /// the remaining connections are closed.
    pub(super) async fn drain(self, grace: Duration) -> Result<(), ServerError> {
        let aborts = [self.grpc.abort_handle(), self.http.abort_handle()];
        let drained = tokio::time::timeout(grace, async {
            let grpc = self.grpc.await;
            let http = self.http.await;
            (grpc, http)
        })
        .await;
        match drained {
            Ok((grpc, http)) => grpc.and(http).map_err(ServerError::Task),
            Err(_) => {
                tracing::warn!(?grace, "drain took longer than the grace period; closing");
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                Ok(())
            }
        }
    }
}
