//! token-authority-jose: the JOSE rules the token authority and its client library share,
//! so a token verified in a service passes or fails exactly as `VerifyToken` would say.
//!
//! It stands alone: nothing here knows the server's key set, storage or transport. The
//! verifier asks a small `jwt::verify::KeyLookup` for keys, which the server's key set and
//! a client's cached key set both implement.
//!
//! # Layout
//! - `b64`: strict base64url without padding.
//! - `backoff`: retry pacing with jitter, for the server and the client alike.
//! - `clock`: where the time comes from: the system clock, or in tests one that follows
//!   tokio's (paused) time.
//! - `jwt`: signing compact JWS tokens and verifying them (RFC 7515, 7519, 8725);
//!   `jwt::json` the strict JSON object parser.
//! - `fetch` (feature `fetch`): the HTTPS client for JWKS and discovery documents.
//! - `status_list`: the Token Status List: its packed statuses, `lst`, the `status` claim.
//! - `jwk`: public JWKs, RFC 7638 thumbprints, and the JWKS document.
//! - `crypto`: the crypto provider (ring by default, aws-lc-rs by feature), the only module
//!   that names a cryptography library; `tls`: rustls on that same provider.
#![deny(clippy::unwrap_used)]

pub mod b64;
pub mod backoff;
pub mod clock;
pub mod crypto;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod jwk;
pub mod jwt;
pub mod status_list;
pub mod tls;
