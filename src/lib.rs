//! token-authority: a gRPC token authority. It mints signed JWTs, verifies them, rotates its
//! signing keys without breaking verifiers, and publishes the public keys as a JWKS over
//! gRPC and at `/.well-known/jwks.json`.
//!
//! # Layout
//! - `config`: the command line and its checks; `cli`: each command run to its exit code;
//!   `telemetry`: logging.
//! - `server`: wiring and shutdown; `transport`: gRPC and HTTP, and their connections;
//!   `signing_pool`: the threads that compute RSA signatures.
//! - `callers`: who is calling (mTLS, issuer JWTs, client secrets), the deny-by-default
//!   policy, the audit log.
//! - `authority`: issue, verify, rotate over one key set; `domain`: validated requests.
//! - `keyset`: the in-memory snapshot the hot paths read; `lifecycle`: rotation rules
//!   as pure functions of records and time; `keys`: key records.
//! - `keys_command`: `keys list/import/rewrap/migrate` on a stopped data directory or the
//!   replicas' database.
//! - `store`: the keystore interface and its error; `store::sled` the sled keystore,
//!   `store::guard` its guard file, `store::postgres` the PostgreSQL keystore replicas share,
//!   `store::kek` key-encryption keys sealing private keys at rest.
//! - `jwt`: signing and verifying tokens; `jwk`: public JWKs and thumbprints (re-exported
//!   from `token-authority-jose`, as are `crypto` and `b64`).
//! - `metrics`: Prometheus metrics.
//! - `crypto`: the crypto provider (ring, or aws-lc-rs by feature); `b64`: base64url; `admin`: the admin token.
//! - `file_modes`: owner-only files, and the start-up check of secrets' modes (retry
//!   pacing is `token_authority_jose::backoff`, shared with the client).
//! - `bench`: the load generator behind `token-authority bench`.
//! - `pb`: generated protobuf and gRPC code.
#![deny(clippy::unwrap_used)]

// The JOSE rules live in token-authority-jose, shared with the client crate; re-exported
// under their old paths so the server and its tests name them as before.
pub use token_authority_jose::{b64, crypto, jwk, jwt};

pub mod admin;
pub mod authority;
pub mod bench;
pub mod callers;
pub mod cli;
pub mod config;
pub mod file_modes;
pub mod keys_command;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
