//! What a hostile or careless client can hold of a listener: connections beyond the cap,
//! sockets that never finish a handshake, idle connections, responses never read, and
//! connections that would hold up a shutdown. Each test fails without its mechanism.

use std::time::Duration;

use bytes::Bytes;
use token_authority::pb;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{timeout, Instant},
};

use crate::helpers::{config, connect, metric, DataDir, TestServer, TlsSetup};

/// Reads until the server closes the connection; returns how long that took.
async fn closed_after(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    timeout(within, async {
        // An error (reset) is a close too.
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection was held for {within:?}"));
    started.elapsed()
}

fn closed_by(listener: &str, reason: &str) -> String {
    format!(
        r#"token_authority_connections_closed_by_server_total{{listener="{listener}",reason="{reason}"}}"#
    )
}

/// A gRPC request as raw HTTP/2, for clients tonic will not imitate.
fn grpc_request(method: &str) -> hyper::Request<()> {
    hyper::Request::post(format!(
        "http://127.0.0.1/tokenauthority.v1.TokenAuthority/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap()
}

/// An empty protobuf message in gRPC framing (GetJwksRequest has no fields).
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_at_once() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(
        &dir,
        &["--max-connections", "3", "--max-connections-per-ip", "3"],
    ))
    .await;
    // The server's own client holds one gRPC connection; two more reach the cap.
    let mut second = connect(server.grpc_addr).await;
    let mut third = connect(server.grpc_addr).await;
    second.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    third.get_jwks(pb::GetJwksRequest {}).await.unwrap();

    // The fourth is closed at once, not after a handshake deadline (10 s here).
    let mut fourth = TcpStream::connect(server.grpc_addr).await.unwrap();
    let waited = closed_after(&mut fourth, Duration::from_secs(5)).await;
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    assert_eq!(metric(&server, &closed_by("grpc", "limit")).await, 1.0);
    // Those within the cap go on, and the HTTP listener has its own cap.
    second.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    let healthz = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    // Once two have gone, a new client is served again.
    drop(second);
    drop(third);
    let served = timeout(Duration::from_secs(10), async {
        loop {
            let channel =
                tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
                    .unwrap()
                    .connect()
                    .await;
            if let Ok(channel) = channel {
                let mut client = pb::token_authority_client::TokenAuthorityClient::new(channel);
                if client.get_jwks(pb::GetJwksRequest {}).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "no connection was served after the others closed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_finish_their_handshake_are_closed_at_the_deadline() {
    let dir = DataDir::new();
    let plain = TestServer::start_with(config(&dir, &["--handshake-timeout", "1s"])).await;
    let tls_dir = DataDir::new();
    let tls = TlsSetup::new();
    let secure = tls
        .start(&tls_dir, false, &["--handshake-timeout", "1s"])
        .await;
    let deadline = Duration::from_secs(1);

    // (case, server, which listener, bytes sent, closed at the deadline or at once)
    let cases: Vec<(&str, &TestServer, &str, &[u8], bool)> = vec![
        ("plaintext gRPC, nothing sent", &plain, "grpc", b"", true),
        (
            "plaintext gRPC, half a preface",
            &plain,
            "grpc",
            b"PRI * HTTP/2.0\r\n",
            true,
        ),
        (
            "plaintext gRPC, not a preface",
            &plain,
            "grpc",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
        ),
        ("plaintext HTTP, nothing sent", &plain, "http", b"", true),
        ("TLS gRPC, nothing sent", &secure, "grpc", b"", true),
        (
            "TLS gRPC, a ClientHello cut short",
            &secure,
            "grpc",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            true,
        ),
        ("TLS HTTP, nothing sent", &secure, "http", b"", true),
        (
            "TLS gRPC, plaintext preface",
            &secure,
            "grpc",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            false,
        ),
    ];
    for (name, server, listener, sent, at_deadline) in cases {
        let addr = if listener == "grpc" {
            server.grpc_addr
        } else {
            server.http_addr
        };
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let waited = closed_after(&mut stream, Duration::from_secs(10)).await;
        if at_deadline {
            assert!(
                waited >= deadline - Duration::from_millis(100) && waited < deadline * 4,
                "{name}: closed after {waited:?}"
            );
        } else {
            assert!(waited < deadline, "{name}: closed after {waited:?}");
        }
    }
    // A TLS client that completes the handshake but never sends the HTTP/2 preface.
    let config = {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls_pki_types::pem::PemObject::from_pem_slice(tls.pki.ca_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    };
    let tcp = TcpStream::connect(secure.grpc_addr).await.unwrap();
    let mut silent = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let waited = closed_after(&mut silent, Duration::from_secs(10)).await;
    assert!(
        waited < deadline * 4,
        "TLS without a preface: closed after {waited:?}"
    );

    assert_eq!(
        metric(&plain, &closed_by("grpc", "handshake_timeout")).await,
        2.0
    );
    assert_eq!(
        metric(&plain, &closed_by("grpc", "handshake_failed")).await,
        1.0
    );
    assert_eq!(
        metric(&secure, &closed_by("grpc", "handshake_timeout")).await,
        3.0
    );
    // Real clients are served all along.
    assert!(!plain.issue("after", &[]).await.token.is_empty());
    assert!(!secure.issue("after", &[]).await.token.is_empty());
    plain.stop().await;
    secure.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_not_while_a_request_is_in_flight() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--idle-timeout", "1s"])).await;
    let idle = Duration::from_secs(1);

    // HTTP/1.1 keep-alive: answered, then closed once idle.
    let mut http = TcpStream::connect(server.http_addr).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 512];
    let n = http.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let waited = closed_after(&mut http, Duration::from_secs(10)).await;
    assert!(
        waited >= idle - Duration::from_millis(200),
        "HTTP closed after {waited:?}"
    );

    // HTTP/2: a request whose body the client holds for twice the idle timeout is in
    // flight, so the connection stays; once answered, the idle connection is closed.
    let tcp = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send.send_request(grpc_request("GetJwks"), false).unwrap();
    tokio::time::sleep(idle * 2).await;
    body.send_data(Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let answered = Instant::now();
    timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection was held")
        .unwrap()
        .unwrap();
    assert!(answered.elapsed() >= idle - Duration::from_millis(200));
    // A client that never reads again (so never acknowledges the GOAWAY) is dropped one
    // second after it.
    let mut deaf = TcpStream::connect(server.grpc_addr).await.unwrap();
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let waited = closed_after(&mut deaf, Duration::from_secs(10)).await;
    assert!(
        waited >= idle + Duration::from_millis(800) && waited < idle * 5,
        "a deaf idle client was closed after {waited:?}"
    );
    // These two, and the test server's own client, idle since its start-up health check.
    assert_eq!(metric(&server, &closed_by("grpc", "idle")).await, 3.0);
    // That client reconnects transparently.
    assert!(!server.issue("after", &[]).await.token.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_a_client_never_reads_are_bounded_and_released() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--idle-timeout", "2s"])).await;
    // A client that opens streams with a zero receive window: no response body can be sent.
    let tcp = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let streams = 300;
    let mut responses = Vec::new();
    for _ in 0..streams {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, mut body) = ready.send_request(grpc_request("GetJwks"), false).unwrap();
        body.send_data(Bytes::from_static(EMPTY_MESSAGE), true)
            .unwrap();
        responses.push((response, body));
    }
    let mut refused = 0;
    let mut stalled = 0;
    for (response, _body) in &mut responses {
        let response = timeout(Duration::from_secs(10), response)
            .await
            .expect("no response head")
            .unwrap();
        match response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap())
        {
            // RESOURCE_EXHAUSTED in a trailers-only response.
            Some("8") => refused += 1,
            None => stalled += 1,
            Some(other) => panic!("grpc-status {other}"),
        }
    }
    // Responses held for this client count as requests in flight: no more than the
    // per-connection limit are held, the rest are refused at once.
    assert_eq!(stalled, 256, "{refused} refused");
    assert_eq!(refused, streams - 256);
    // Another client is served meanwhile.
    assert!(!server.issue("bystander", &[]).await.token.is_empty());
    // After the idle timeout with nothing read, the connection is cut and all is released.
    let cut = timeout(Duration::from_secs(15), connection).await;
    assert!(cut.is_ok(), "the stalled connection was held");
    assert_eq!(metric(&server, &closed_by("grpc", "stalled")).await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once_and_lets_requests_in_flight_finish() {
    let dir = DataDir::new();
    let mut server = TestServer::start_with(config(&dir, &["--shutdown-grace", "60s"])).await;
    // An idle gRPC connection, an idle HTTP keep-alive connection...
    let mut idle = connect(server.grpc_addr).await;
    idle.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    let mut http = TcpStream::connect(server.http_addr).await.unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 512];
    let n = http.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    // ...an HTTP/2 client that never reads again, so never acknowledges a GOAWAY...
    let mut deaf = TcpStream::connect(server.grpc_addr).await.unwrap();
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // ...and a request in flight: its body is still being sent.
    let tcp = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let (in_flight, mut body) = send.send_request(grpc_request("GetJwks"), false).unwrap();
    // The server answers a PING after reading what came before it: once the pong is back,
    // the request's HEADERS have arrived and the stream is the server's to finish. (Without
    // this the shutdown can win the race, and a GOAWAY refuses a stream it never saw.)
    ping_pong.ping(h2::Ping::opaque()).await.unwrap();

    let started = Instant::now();
    let stopped = server.begin_stop();
    // The idle HTTP connection is closed at once.
    closed_after(&mut http, Duration::from_secs(5)).await;
    // The request in flight is still answered, even when its client takes longer than the
    // second a closing connection is given once quiet, and its response is flushed whole.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    body.send_data(Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    let response = timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the request in flight got no answer")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    timeout(Duration::from_secs(10), stopped)
        .await
        .expect("shutdown waited for idle connections")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}
