//! token-authority: a gRPC token authority. It mints signed JWTs, verifies them, rotates its
//! signing keys without breaking verifiers, and publishes the public keys as a JWKS over
//! gRPC and at `/.well-known/jwks.json`.
//!
//! # Layout
//! - `cli`: each command run to its exit code (`cli::keys`: `keys list/import/rewrap/migrate`
//!   on a stopped data directory or the replicas' database); `config`: the command line and
//!   its checks; `server`: wiring and shutdown.
//! - `transport`: gRPC and HTTP, their listeners, connections, TLS and the WatchKeys stream.
//! - `callers`: who is calling (mTLS, issuer JWTs, client secrets, the admin token), the
//!   deny-by-default policy, the audit log.
//! - `authority`: issue, verify, rotate over one key set; its core: `domain` (validated
//!   requests), `keys` (key records), `keyset` (the snapshot the hot paths read),
//!   `lifecycle` (rotation rules as pure functions of records and time), `signing_pool`
//!   (the threads that compute RSA signatures).
//! - `store`: the keystore interface and its error; sled, PostgreSQL, KEK sealing, data
//!   keys, and the owner-only modes of the files at rest.
//! - `metrics`: Prometheus metrics; `telemetry`: logging, and errors shown with their
//!   causes (`telemetry::chain`).
//! - `bench`: the load generator behind `token-authority bench`.
//! - `pb`: generated protobuf and gRPC code.
//!
//! The JOSE rules (JWS, JWK, base64url, the crypto provider and the rustls provider choice)
//! are the `token_authority_jose` crate, shared with the client.
#![deny(clippy::unwrap_used)]
pub mod authority;
pub mod bench;
pub mod callers;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
