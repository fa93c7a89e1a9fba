//! Generated gRPC and protobuf code, quarantined here so crate lints do not fire on it.
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

tonic::include_proto!("tokenauthority.v1");

/// The encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/token_authority_descriptor.bin"));
