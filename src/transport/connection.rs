//! What the transport knows about the peer of a connection. The listener puts one
//! `ConnectionInfo` into the extensions of every request it serves, so the layers above
//! (caller identity) read the peer without seeing any TLS type.

use std::{net::SocketAddr, sync::Arc};

/// The peer of one connection.
#[derive(Clone, Debug, Default)]
pub struct ConnectionInfo {
    /// The client's address, when the connection is TCP.
    pub remote_addr: Option<SocketAddr>,
    /// The DER of the client certificate's leaf, when the client presented one. It chained
    /// to the `--client-ca` bundle and was valid at the handshake: the TLS layer refuses the
    /// handshake otherwise.
    pub client_certificate: Option<Arc<[u8]>>,
}
