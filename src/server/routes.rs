//! The gRPC routes: health and reflection (v1, and v1alpha for grpcurl 1.8.x) built before
//! anything is served, the TokenAuthority service added once the keys are loaded.

use tonic::service::Routes;

use super::{health::Health, ServerError, GRPC_MAX_MESSAGE_BYTES};
use crate::{
    pb::{self, token_authority_server::TokenAuthorityServer},
    transport::grpc::GrpcService,
};

/// Health and both reflection versions, which know the API's and health's descriptors.
pub(super) fn grpc_base(health: &Health) -> Result<Routes, ServerError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().map_err(ServerError::Reflection)?;
    // grpcurl 1.8.x asks for v1alpha only.
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServerError::Reflection)?;
    Ok(Routes::new(health.service.clone())
        .add_service(v1)
        .add_service(v1alpha))
}

/// The full gRPC router: `base` and the API, whose requests are refused past
/// `GRPC_MAX_MESSAGE_BYTES` before they are decoded.
pub(super) fn grpc_full(base: Routes, service: GrpcService) -> axum::Router {
    base.add_service(
        TokenAuthorityServer::new(service).max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES),
    )
    .prepare()
    .into_axum_router()
}
