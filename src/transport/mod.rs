//! The only layer that sees generated `pb` types and HTTP types.
//!
//! # Layout
//! - `authenticate`: a request's credentials, checked alike for both listeners.
//! - `exchange`: a Txn-Token request from credentials to signed and audited token, shared
//!   by `POST /token` and ExchangeToken.
//! - `codec`: prost's codec, with undecodable requests answered `INVALID_ARGUMENT`.
//! - `connection`: what is known of a connection's peer, handed to the layers above.
//! - `grpc`: the `tokenauthority.v1.TokenAuthority` service.
//! - `http`: the JWKS, discovery, health and metrics endpoints, and `POST /token`.
//! - `listener`: the accept loop of both listeners: connection cap, handshake and idle
//!   deadlines, stalled-response bound, TLS, graceful close.
//! - `watch`: WatchKeys, the key set streamed to watchers at every change.
//! - `peers`: what one client address may take: its connections, its failed
//!   authentications (its watchers are counted by `watch`).
//! - `status_lists`: `GET /statuslists/{id}`, each status list as a signed token.
//! - `token`: `POST /token` on the HTTP listener, the RFC 8693 form and RFC 6749 answers.
//! - `tls`: loading and reloading the certificate, key and client CA bundle.

pub(crate) mod authenticate;
pub(crate) mod codec;
pub(crate) mod connection;
pub(crate) mod exchange;
pub mod grpc;
pub(crate) mod http;
pub(crate) mod listener;
pub(crate) mod peers;
pub(crate) mod status_lists;
pub(crate) mod tls;
pub(crate) mod token;
pub mod watch;
