//! The generated gRPC client and messages of `tokenauthority.v1`, kept in their own module
//! so the crate's lints do not fire on generated code.
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

tonic::include_proto!("tokenauthority.v1");
