//! Readiness as probes see it: the gRPC health of the whole server and of the
//! TokenAuthority service, and the flag behind `/readyz`, always moved together.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
    ServingStatus,
};

use crate::{pb::token_authority_server::TokenAuthorityServer, transport::grpc::GrpcService};

pub(super) struct Health {
    pub(super) reporter: HealthReporter,
    /// The gRPC health service, served from the first moment of the start.
    pub(super) service: HealthServer<HealthService>,
    /// What `/readyz` answers.
    pub(super) ready: Arc<AtomicBool>,
}

impl Health {
    /// NOT_SERVING (and `/readyz` 503): until the keys are loaded.
    pub(super) async fn starting() -> Health {
        let reporter = HealthReporter::new();
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Health {
            reporter,
            service,
            ready: Arc::new(AtomicBool::new(false)),
        };
        health.set(ServingStatus::NotServing).await;
        health
    }

    /// SERVING: the keys are loaded and the full routers installed.
    pub(super) async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// NOT_SERVING again: the server is shutting down.
    pub(super) async fn stopping(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        let serving = status == ServingStatus::Serving;
        if !serving {
            self.ready.store(false, Ordering::Release);
        }
        self.reporter
            .set_service_status(
                <TokenAuthorityServer<GrpcService> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        self.reporter.set_service_status("", status).await;
        if serving {
            self.ready.store(true, Ordering::Release);
        }
    }
}
