//! The only layer that sees generated `pb` types and HTTP types.
//!
//! # Layout
//! - `grpc`: the `tokenauthority.v1.TokenAuthority` service.
//! - `http`: the JWKS, discovery, health and metrics endpoints.

pub mod grpc;
pub mod http;
pub mod http_server;
