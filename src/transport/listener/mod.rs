//! The accept loop both listeners run: what a connection may hold and for how long, before
//! and after the protocol takes over. One loop for gRPC (HTTP/2) and HTTP (HTTP/1.1).
//!
//! Each connection goes through, in order:
//! 1. the caps: a place in its peer's share (`--max-connections-per-ip`, see `peers`) and a
//!    semaphore permit, owned by the connection until it closes; at either cap a new
//!    connection is closed at once, so silent sockets cannot use up the process's file
//!    descriptors, and one client cannot take every connection;
//! 2. the handshake deadline (`--handshake-timeout`): the TLS handshake and the protocol's
//!    first bytes (the whole HTTP/2 preface, the first byte of an HTTP/1 request);
//! 3. the protocol, served here with hyper (not tonic's `Server`, whose connections cannot be
//!    watched): HTTP/2 with bounded streams, send buffers and keepalive, each stream a task
//!    its handler can end at once (`StreamReset`), or HTTP/1.1 with a bounded request head;
//! 4. the idle deadline (`--idle-timeout`): a connection with no request in flight is closed
//!    (GOAWAY, then close), and one whose client has stopped reading a response (a zero
//!    HTTP/2 window holds the response in the server) is cut;
//! 5. the age limit (`--max-connection-age`): an older connection is told to finish
//!    (GOAWAY), and is dropped `MAX_AGE_GRACE` later if its requests have not;
//! 6. shutdown: every connection is told to finish at once, so an idle one closes now and
//!    one with a request in flight closes after its response.
//!
//! Every request carries the connection's [`ConnectionInfo`] in its extensions.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{body::Body, Router};
use hyper::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;

use crate::{
    config::ListenerLimits,
    metrics::ListenerMetrics,
    telemetry::chain,
    transport::{
        connection::{ClientCertificate, ConnectionInfo},
        peers::{PeerSlot, Peers},
        tls::SharedTlsConfigs,
    },
};

mod lifetime;
mod state;
mod stream;
mod stream_task;
mod tracked;

pub(crate) use self::stream_task::StreamReset;
pub(crate) use self::tracked::call_deadline;
use self::{
    lifetime::jittered_age,
    state::ConnState,
    stream::{Io, Stream},
    stream_task::StreamExecutor,
    tracked::Tracked,
};

/// Requests in flight on one gRPC connection (until their response is fully sent); beyond
/// it they are refused at once with RESOURCE_EXHAUSTED, so one client cannot take the server.
pub(crate) const GRPC_REQUESTS_PER_CONNECTION: usize = 256;
/// HTTP/2 streams one gRPC connection may open; above the request limit, so that a flood
/// is shed with a gRPC status rather than queued by the client.
pub(crate) const GRPC_STREAMS_PER_CONNECTION: u32 = 512;
pub(crate) const GRPC_MAX_HEADER_BYTES: u32 = 16 * 1024;
/// What the server buffers per stream for a client that does not read: our responses are a
/// few KiB, so 64 KiB bounds a stalled connection to 256 x 64 KiB at worst.
pub(crate) const GRPC_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// A handler that takes longer is answered CANCELLED (what tonic's server did).
pub(crate) const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most an HTTP/1 request head may take. hyper's floor is 8 KiB.
pub(crate) const HTTP_MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long an HTTP/1 client may take to send the rest of a request head.
pub(crate) const HTTP_HEAD_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead peers that vanished without a FIN are noticed by the kernel.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Every HTTP/2 client must open with these bytes (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// gRPC over HTTP/2.
    Grpc,
    /// The HTTP endpoints over HTTP/1.1.
    Http,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
        }
    }

    /// The answer to a request refused before its handler ran.
    fn refusal(self, refusal: Refusal) -> Response<Body> {
        match (self, refusal) {
            (Protocol::Grpc, Refusal::Overloaded) => {
                tonic::Status::resource_exhausted("Too many active requests for the connection")
                    .into_http()
            }
            (Protocol::Grpc, Refusal::Timeout) => {
                tonic::Status::deadline_exceeded("the call did not end within its deadline")
                    .into_http()
            }
            (Protocol::Http, _) => {
                let mut response = Response::new(Body::from("overloaded\n"));
                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                response
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Refusal {
    Overloaded,
    Timeout,
}

/// One bound listener and what it enforces.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) tcp: TcpListener,
    pub(crate) protocol: Protocol,
    /// `None`: plaintext.
    pub(crate) tls: Option<SharedTlsConfigs>,
    pub(crate) limits: ListenerLimits,
    pub(crate) metrics: ListenerMetrics,
}

/// Why a connection did not get past its handshake.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("reading the first bytes: {0}")]
    Read(io::Error),
    #[error("the first bytes are not an HTTP/2 preface")]
    NotHttp2,
}

/// What every connection task shares.
struct Shared {
    protocol: Protocol,
    tls: Option<SharedTlsConfigs>,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    peers: Arc<Peers>,
    router: Router,
    shutdown: CancellationToken,
    http2: hyper::server::conn::http2::Builder<StreamExecutor>,
    http1: hyper::server::conn::http1::Builder,
}

impl Listener {
    /// Accepts connections until `shutdown` is cancelled, then tells every open connection to
    /// finish and returns once all have closed. The caller bounds that wait.
    pub(crate) async fn serve(self, router: Router, shutdown: CancellationToken) {
        let mut http2 = hyper::server::conn::http2::Builder::new(StreamExecutor);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION)
            .max_header_list_size(GRPC_MAX_HEADER_BYTES)
            .max_send_buf_size(GRPC_SEND_BUFFER_BYTES)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HTTP_HEAD_READ_TIMEOUT)
            .max_buf_size(HTTP_MAX_HEAD_BYTES);
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let shared = Arc::new(Shared {
            protocol: self.protocol,
            tls: self.tls,
            limits: self.limits,
            peers: Peers::new(
                self.limits.max_connections_per_ip,
                self.limits.auth_failures_per_ip,
                self.metrics.clone(),
            ),
            metrics: self.metrics,
            router,
            shutdown: shutdown.clone(),
            http2,
            http1,
        });
        // Owned here, so that when the server gives up waiting (after --shutdown-grace) and
        // drops this future, every connection is dropped with it.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (tcp, remote) = tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %chain(&error), listener = shared.protocol.name(), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                // Closed at once: a client at the cap learns it now, not after a timeout.
                shared.metrics.refused_at_limit.inc();
                tracing::debug!(%remote, listener = shared.protocol.name(), "connection limit reached; closed");
                continue;
            };
            let Some(peer) = shared.peers.admit(remote.ip()) else {
                tracing::debug!(%remote, listener = shared.protocol.name(), "connection limit of the address reached; closed");
                continue;
            };
            connections.spawn(Arc::clone(&shared).connection(tcp, remote, permit, peer));
        }
        drop(self.tcp);
        while connections.join_next().await.is_some() {}
    }
}

impl Shared {
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
        peer: PeerSlot,
    ) {
        let started = Instant::now();
        let _ = tcp.set_nodelay(true);
        let local_addr = tcp.local_addr().ok();
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        self.metrics.open.inc();
        let _open = OpenGauge(&self.metrics.open);
        let shutdown = self.shutdown.clone();
        let handshake = tokio::time::timeout(self.limits.handshake_timeout, self.handshake(tcp));
        let handshake = tokio::select! {
            result = handshake => result,
            () = shutdown.cancelled() => return,
        };
        let (stream, prefix, client_certificate) = match handshake {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                self.metrics.handshake_failures.inc();
                tracing::debug!(%remote, error = %chain(&error), listener = self.protocol.name(), "handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.handshake_timeouts.inc();
                tracing::debug!(%remote, listener = self.protocol.name(), "no handshake within the deadline; closed");
                return;
            }
        };
        let info = ConnectionInfo {
            remote_addr: Some(remote),
            client_certificate,
            peer: Some(peer.peer()),
        };
        let io = TokioIo::new(Io {
            prefix,
            read: 0,
            stream,
            _permit: permit,
            _peer: peer,
        });
        let state = Arc::new(ConnState::default());
        let service = Tracked {
            router: self.router.clone(),
            state: Arc::clone(&state),
            info,
            tcp_info: TcpConnectInfo {
                local_addr,
                remote_addr: Some(remote),
            },
            protocol: self.protocol,
        };
        let retire_at = started + jittered_age(self.limits.max_connection_age, remote);
        match self.protocol {
            Protocol::Grpc => {
                let connection = self.http2.serve_connection(io, service);
                self.drive(connection, &state, shutdown, retire_at).await;
            }
            Protocol::Http => {
                let connection = self.http1.serve_connection(io, service);
                self.drive(connection, &state, shutdown, retire_at).await;
            }
        }
    }

    /// TLS (when configured), then the protocol's first bytes, kept to be replayed to hyper.
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<(Stream, Vec<u8>, Option<Arc<ClientCertificate>>), HandshakeError> {
        let (mut stream, client_certificate) = match &self.tls {
            None => (Stream::Plain(tcp), None),
            Some(shared) => {
                let configs = shared.load_full();
                let config = match self.protocol {
                    Protocol::Grpc => Arc::clone(&configs.grpc),
                    Protocol::Http => Arc::clone(&configs.http),
                };
                let tls = TlsAcceptor::from(config)
                    .accept(tcp)
                    .await
                    .map_err(HandshakeError::Tls)?;
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
                let certificate = chain
                    .and_then(|chain| ClientCertificate::new(chain, Arc::clone(shared), configs))
                    .map(Arc::new);
                (Stream::Tls(Box::new(tls)), certificate)
            }
        };
        let mut prefix = match self.protocol {
            Protocol::Grpc => vec![0; HTTP2_PREFACE.len()],
            // hyper's own head deadline takes over once the request has begun.
            Protocol::Http => vec![0; 1],
        };
        stream
            .read_exact(&mut prefix)
            .await
            .map_err(HandshakeError::Read)?;
        if self.protocol == Protocol::Grpc && prefix != HTTP2_PREFACE {
            return Err(HandshakeError::NotHttp2);
        }
        Ok((stream, prefix, client_certificate))
    }
}

/// Keeps the open-connections gauge right however the connection task ends.
struct OpenGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    //! The seam to the caller-identity layer: every request, over HTTP/2 with TLS and over
    //! plaintext HTTP/1.1, carries the connection's address and client certificate.

    use std::sync::Arc;

    use axum::{routing::get, Extension, Router};
    use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::tracked::grpc_timeout;
    use super::*;
    use crate::{config::TlsFiles, metrics::Metrics, transport::tls::TlsReloader};
    use hyper::Request;
    use token_authority_jose::crypto::Algorithm;

    async fn peer(
        Extension(info): Extension<ConnectionInfo>,
        Extension(tcp): Extension<TcpConnectInfo>,
    ) -> String {
        // tonic's `Request::remote_addr()` reads the same address.
        assert_eq!(tcp.remote_addr, info.remote_addr);
        let addr = info.remote_addr.map(|a| a.to_string()).unwrap_or_default();
        let cert = info.client_certificate.map_or(0, |c| c.der().len());
        format!("{addr} {cert}")
    }

    fn listener(tcp: TcpListener, protocol: Protocol, tls: Option<SharedTlsConfigs>) -> Listener {
        let metrics = Metrics::new(&[Algorithm::RS256]);
        Listener {
            tcp,
            protocol,
            tls,
            limits: ListenerLimits {
                max_connections: 8,
                max_connections_per_ip: 8,
                auth_failures_per_ip: 20,
                handshake_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(5),
                max_connection_age: Duration::from_secs(3600),
            },
            metrics: metrics.grpc_listener.clone(),
        }
    }

    #[test]
    fn grpc_timeout_headers() {
        let cases = [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5M", Some(Duration::from_secs(300))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("123456789S", None),
            ("S", None),
            ("", None),
            ("10x", None),
            ("-1S", None),
            ("1.5S", None),
        ];
        for (value, expected) in cases {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&headers), expected, "{value:?}");
        }
        assert_eq!(grpc_timeout(&hyper::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn every_request_carries_the_connection_info() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let issue = |params: rcgen::CertificateParams| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        };
        let (server_cert, server_key, _) =
            issue(rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap());
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        )];
        let (client_cert, client_key, client_der) = issue(client_params);
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        std::fs::write(&files.cert, &server_cert).unwrap();
        std::fs::write(&files.key, &server_key).unwrap();
        std::fs::write(files.client_ca.as_ref().unwrap(), ca.pem()).unwrap();
        let configs = TlsReloader::load(&files).unwrap().configs();
        let router = Router::new().route("/peer", get(peer));
        let stop = CancellationToken::new();

        // HTTP/2 over TLS with a client certificate.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(
            listener(tcp, Protocol::Grpc, Some(configs)).serve(router.clone(), stop.clone()),
        );
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
            .unwrap();
        let mut client =
            rustls::ClientConfig::builder_with_provider(token_authority_jose::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap(),
                )
                .unwrap();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (send, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let mut send = send.ready().await.unwrap();
        let request = Request::get("https://127.0.0.1/peer").body(()).unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            String::from_utf8(text).unwrap(),
            format!("{local} {}", client_der.len())
        );

        // HTTP/1.1 in plaintext: the address, no certificate.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(listener(tcp, Protocol::Http, None).serve(router, stop));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.ends_with(&format!("\r\n\r\n{local} 0")),
            "{response}"
        );
    }
}
