//! What the transport knows about the peer of a connection. The listener puts one
//! `ConnectionInfo` into the extensions of every request it serves, so the layers above
//! (caller identity) read the peer without seeing any TLS type.
//!
//! A client certificate was checked at the handshake, but a connection outlives both the
//! certificate and the CA bundle it was checked against: each request asks
//! [`ClientCertificate::current`], which checks the chain again whenever the bundle in use
//! is not the one it last passed (its validity period is checked per request by the caller
//! layer, with the request's time).

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{
    callers::identity::IdentityError,
    transport::{
        peers::Peer,
        tls::{SharedTlsConfigs, TlsConfigs},
    },
};

/// The peer of one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionInfo {
    /// The client's address, when the connection is TCP.
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The certificate chain the client presented, when it presented one.
    pub(crate) client_certificate: Option<Arc<ClientCertificate>>,
    /// The peer's failure budget, on the gRPC listener.
    pub(crate) peer: Option<Peer>,
}

/// A client's certificate chain as presented at the handshake, and the trust bundle it
/// was last found to chain to.
pub(crate) struct ClientCertificate {
    /// The leaf first, then the intermediates the client sent.
    chain: Vec<CertificateDer<'static>>,
    leaf: Arc<[u8]>,
    tls: SharedTlsConfigs,
    /// The configurations whose client CA bundle the chain passed last; `None` once it
    /// failed.
    passed: Mutex<Option<Arc<TlsConfigs>>>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("leaf_bytes", &self.leaf.len())
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// A chain that passed the handshake under `verified_by`.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        tls: SharedTlsConfigs,
        verified_by: Arc<TlsConfigs>,
    ) -> Option<ClientCertificate> {
        let leaf = Arc::from(chain.first()?.as_ref());
        Some(ClientCertificate {
            chain,
            leaf,
            tls,
            passed: Mutex::new(Some(verified_by)),
        })
    }

    /// The leaf's DER, as presented.
    #[cfg(test)]
    pub(crate) fn der(&self) -> &Arc<[u8]> {
        &self.leaf
    }

    /// The leaf's DER while the chain still chains to the client CA bundle in use. Checked
    /// again (at `now`, since the unix epoch) only when the bundle changed since the last
    /// pass, so a request normally pays one pointer comparison.
    pub(crate) fn current(&self, now: Duration) -> Result<Arc<[u8]>, IdentityError> {
        let configs = self.tls.load_full();
        let mut passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
        if passed
            .as_ref()
            .is_some_and(|passed| Arc::ptr_eq(passed, &configs))
        {
            return Ok(Arc::clone(&self.leaf));
        }
        let refused = |detail: String| {
            IdentityError::Certificate(format!(
                "no longer accepted by the --client-ca bundle in use (it changed since this connection's handshake): {detail}"
            ))
        };
        let Some(verifier) = &configs.client_verifier else {
            *passed = None;
            return Err(refused("no client CA bundle is configured".into()));
        };
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| refused(String::new()))?;
        match verifier.verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(now)) {
            Ok(_) => {
                *passed = Some(configs);
                Ok(Arc::clone(&self.leaf))
            }
            Err(error) => {
                *passed = None;
                Err(refused(error.to_string()))
            }
        }
    }
}
