//! The rustls crypto provider on the same library as signing and verifying: every TLS
//! endpoint of the server and the client (listeners, PostgreSQL, trusted issuers' and the
//! client's JWKS fetches, the bench) takes it from here, so a build uses one library.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// aws-lc-rs with the `aws-lc-rs` feature, ring otherwise.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(not(feature = "aws-lc-rs"))]
    Arc::new(rustls::crypto::ring::default_provider())
}
