//! Answering while the server starts. Both listeners serve from the start, before the keys
//! are loaded, so a probe of a replica still reaching its database gets an answer (gRPC
//! health NOT_SERVING, HTTP 503) rather than hanging in the accept queue; once the keys are
//! loaded the full routers take over on the same listeners, and connections opened before
//! that are served by them too.

use std::sync::{Arc, OnceLock};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Router,
};
use tonic::server::NamedService;
use tower::ServiceExt as _;

/// What every request gets before the keys are loaded, but a health check.
const STARTING: &str = "starting: the keys are not loaded yet";

/// A router that serves `starting` until the full router is installed in the returned
/// cell, then that one.
pub(super) fn switch(starting: Router) -> (Router, Arc<OnceLock<Router>>) {
    let installed: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let full = Arc::clone(&installed);
    let service = tower::service_fn(move |request: axum::extract::Request| {
        let router = full.get().unwrap_or(&starting).clone();
        router.oneshot(request)
    });
    (Router::new().fallback_service(service), installed)
}

/// The gRPC side while starting: the health service (NOT_SERVING until the keys are
/// loaded), UNAVAILABLE for anything else.
pub(super) fn grpc<H>(health: H) -> Router
where
    H: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    Router::new()
        .route_service(&format!("/{}/{{*rest}}", H::NAME), health)
        .fallback(|| async { tonic::Status::unavailable(STARTING).into_http::<axum::body::Body>() })
}

/// The HTTP side while starting: 503 for everything, the health endpoints included.
pub(super) fn http() -> Router {
    Router::new().fallback(|| async {
        let response: Response =
            (StatusCode::SERVICE_UNAVAILABLE, format!("{STARTING}\n")).into_response();
        response
    })
}
