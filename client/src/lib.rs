//! token-authority-client: what a service needs from the token authority.
//!
//! - [`TokenSource`] gets a token for the service with IssueToken, caches it and refreshes
//!   it in the background at 80% of its life, so `token().await` costs no request at
//!   steady state and keeps working while the authority is briefly down.
//! - [`Verifier`] verifies tokens in process with the very rules `VerifyToken` applies
//!   (they live in `token-authority-jose`, shared with the server), from a key set the
//!   authority pushes with WatchKeys: a rotation or a revocation reaches it at once.
//! - [`interceptor`]: tonic interceptors that attach a `TokenSource` token to outgoing
//!   calls and verify `authorization: Bearer` on incoming ones (also as a tower layer).
//! - [`txn`]: Transaction Tokens along a call chain: the edge exchanges its request's
//!   access token for a Txn-Token once ([`txn::ExchangeTxnTokenLayer`]), the services behind
//!   it verify it locally ([`txn::RequireTxnTokenLayer`]) and forward it unchanged
//!   ([`txn::ForwardTxnToken`]).
//! - [`layer::RequireBearerLayer`]: the same verification as a tower layer over any
//!   `http::Request` service (hyper, axum), answering refusals itself (401, or
//!   UNAUTHENTICATED to gRPC requests).
//! - Tracing: IssueToken and WatchKeys carry the trace context of the application (through
//!   the OpenTelemetry propagator it installed), and the client records `token_refresh`,
//!   `watch_keys` and `verify_token` spans with `tracing`, never a token, a credential or a
//!   claim (the README's Tracing paragraph).
//!
//! # Layout
//! - `jwks_http`: the HTTP JWKS the verifier falls back on while WatchKeys is unavailable.
//! - `keys`: the client's copy of the public key set, as the verifier looks keys up.
//! - `status`: the client's copies of the status lists, as the verifier checks a token's
//!   status.
//! - `verifier`, `token_source`, `interceptor`, `layer`: the things above; `bearer`: the
//!   check of an `authorization` header that `interceptor` and `layer` share.
//!   `verifier::watch` is the verifier's background task: the stream over the replicas, and
//!   the JWKS polled while it is down.
//! - `error`: this crate's error type. `pb`: the generated client.
//! - `telemetry`: the trace context sent with IssueToken and WatchKeys, and what the
//!   client's spans (`token_refresh`, `watch_keys`, `verify_token`) record.
//!
//! # Example
//! Two services, `orders` calling `ledger` with a token (`examples/two_services.rs`,
//! compiled here as a doctest):
//!
#![doc = concat!("```no_run\n", include_str!("../examples/two_services.rs"), "\n```")]
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

mod bearer;
pub mod error;
pub mod interceptor;
mod jwks_http;
pub mod keys;
pub mod layer;
pub mod pb;
pub mod status;
mod telemetry;
pub mod token_source;
pub mod txn;
pub mod verifier;

pub use error::ClientError;
pub use layer::RequireBearerLayer;
/// The clock `VerifierSettings::clock` takes: the system clock, or in tests one that
/// follows tokio's paused time.
pub use token_authority_jose::clock::Clock;
pub use token_authority_jose::jwt::verify::{Reason, Rejection, Verified};
pub use token_source::{Credentials, TokenRequest, TokenSource};
pub use txn::TxnToken;
pub use verifier::{Verifier, VerifierSettings};
