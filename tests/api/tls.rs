//! TLS on both listeners, against the real server with a test PKI: round trips, ALPN,
//! optional and refused client certificates, and reloading the certificate and the client
//! CA bundle from disk the way Kubernetes updates a Secret volume.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use token_authority::pb;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::{
    helpers::{
        config, connect, connect_tls, https_client, kids, metric, metric_sample, now,
        verify_independently, wait_for_metric, ClientTls, DataDir, TestServer, TlsSetup,
    },
    pki::{Identity, Pki},
};

/// A rustls client configuration trusting `ca_pem`, offering `alpn`, presenting `identity`.
fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS handshake with `addr` as 127.0.0.1.
async fn handshake(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate a new connection to `addr` is served.
async fn served_certificate(addr: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
    let tls = handshake(addr, client_config(ca_pem, &[b"h2"], None))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// With TLS 1.3 the server judges the client certificate after the client has sent its
/// Finished: a refused certificate shows as an alert on the first read.
async fn mtls_outcome(addr: std::net::SocketAddr, ca_pem: &str, identity: &Identity) -> String {
    let mut tls = match handshake(addr, client_config(ca_pem, &[b"h2"], Some(identity))).await {
        Ok(tls) => tls,
        Err(error) => return error.to_string(),
    };
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buffer = [0u8; 9];
    match tls.read_exact(&mut buffer).await {
        // The server's SETTINGS frame header: type 4.
        Ok(_) if buffer[3] == 4 => "accepted".to_owned(),
        Ok(_) => format!("unexpected frame {buffer:?}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_over_tls_verify_with_the_jwks_fetched_over_https() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = tls.start(&dir, false, &[]).await;
    let issued = server.issue("svc-a", &["aud-1"]).await;
    let verdict = server.verify(&issued.token, "aud-1").await;
    assert!(verdict.valid, "{verdict:?}");
    // The JWKS over HTTPS, checked by an independent JWT library.
    assert!(server.url("/").starts_with("https://"));
    let jwks = server.http_jwks().await;
    let claims = verify_independently(&jwks, &issued.token, &server.issuer, "aud-1").unwrap();
    assert_eq!(claims["sub"], "svc-a");
    // GetJwks over TLS publishes the same keys.
    let grpc_jwks: serde_json::Value =
        serde_json::from_str(&server.grpc_jwks().await.jwks_json).unwrap();
    assert_eq!(kids(&grpc_jwks), kids(&jwks));
    // Plaintext is not spoken on either port. The TLS alert the server answers with, before
    // closing, is no HTTP/2 frame: a plaintext gRPC client reads it as a malformed one, sees
    // the connection close first, or writes into the closed connection; a plaintext HTTP
    // client finds no status line in it.
    let plaintext = tokio::time::timeout(Duration::from_secs(10), async {
        plain_rpc(server.grpc_addr).await
    })
    .await
    .expect("a plaintext client was held instead of refused")
    .expect_err("a plaintext gRPC call succeeded");
    // Which one depends on timing; each is the client's own transport failure (never a
    // status the server sent), with the words tonic gives it.
    let from_transport = std::error::Error::source(&plaintext)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    assert!(
        from_transport
            && [
                (tonic::Code::Internal, "h2 protocol error: http2 error"),
                (tonic::Code::Cancelled, "operation was canceled"),
                (tonic::Code::Unknown, "transport error"),
            ]
            .contains(&(plaintext.code(), plaintext.message())),
        "{plaintext:?}"
    );
    let http = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.http_addr))
        .send()
        .await
        .expect_err("plaintext HTTP was answered");
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(&http);
    while let Some(error) = cause {
        causes.push(error.to_string());
        cause = error.source();
    }
    assert_eq!(
        causes,
        ["client error (SendRequest)", "invalid HTTP version parsed"]
    );
    server.stop().await;
}

async fn plain_rpc(addr: std::net::SocketAddr) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the TCP connection was refused");
    pb::token_authority_client::TokenAuthorityClient::new(channel)
        .get_jwks(pb::GetJwksRequest {})
        .await
        .map(|_| ())
}

#[tokio::test]
async fn alpn_is_h2_on_grpc_and_http1_on_http() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = tls.start(&dir, false, &[]).await;
    let ca = tls.pki.ca_pem();
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    type Case<'a> = (
        &'a str,
        std::net::SocketAddr,
        &'a [&'a [u8]],
        Result<&'a [u8], &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "gRPC, client offers both",
            server.grpc_addr,
            both,
            Ok(b"h2"),
        ),
        (
            "HTTP, client offers both",
            server.http_addr,
            both,
            Ok(b"http/1.1"),
        ),
        (
            "gRPC, client offers only http/1.1",
            server.grpc_addr,
            &[b"http/1.1"],
            Err("NoApplicationProtocol"),
        ),
    ];
    for (name, addr, alpn, expected) in cases {
        let outcome = handshake(addr, client_config(&ca, alpn, None)).await;
        match (outcome, expected) {
            (Ok(tls), Ok(protocol)) => {
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(protocol), "{name}")
            }
            (Err(error), Err(alert)) => {
                assert!(error.to_string().contains(alert), "{name}: {error}")
            }
            (Ok(tls), Err(_)) => panic!("{name}: negotiated {:?}", tls.get_ref().1.alpn_protocol()),
            (Err(error), Ok(_)) => panic!("{name}: {error}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn client_certificates_are_optional_but_checked_when_presented() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = tls.start(&dir, true, &[]).await;
    let ca = tls.pki.ca_pem();
    // The server's own client presents no certificate and is served.
    assert!(!server.issue("no-cert", &[]).await.token.is_empty());
    let stranger = Pki::named("untrusted CA");
    let cases = [
        (
            "trusted, URI SAN",
            tls.pki
                .client(Some("spiffe://cluster.local/ns/a/sa/b"), None),
            "accepted",
        ),
        (
            "trusted, DNS SAN",
            tls.pki.client(None, Some("svc.example")),
            "accepted",
        ),
        (
            "another CA",
            stranger.client(Some("spiffe://cluster.local/ns/a/sa/b"), None),
            "received fatal alert: UnknownCA",
        ),
        (
            "expired",
            tls.pki
                .client_expired(Some("spiffe://cluster.local/ns/a/sa/b"), None),
            "received fatal alert: CertificateExpired",
        ),
    ];
    for (name, identity, expected) in cases {
        let outcome = mtls_outcome(server.grpc_addr, &ca, &identity).await;
        assert_eq!(outcome, expected, "{name}");
    }
    // A trusted certificate works end to end over gRPC and HTTPS.
    let mtls = tls.client(Some(
        tls.pki
            .client(Some("spiffe://cluster.local/ns/a/sa/b"), None),
    ));
    let mut client = connect_tls(server.grpc_addr, &mtls).await.unwrap();
    client.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    let healthz = https_client(&mtls)
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn allow_plaintext_starts_on_a_non_loopback_address() {
    let dir = DataDir::new();
    let config = config(
        &dir,
        &[
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "0.0.0.0:0",
            "--allow-plaintext",
        ],
    );
    let server = TestServer::start_with(config).await;
    let port = server.grpc_addr.port();
    let mut client = connect(format!("127.0.0.1:{port}")).await;
    client.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    server.stop().await;
}

/// A Secret volume as the kubelet writes it: files are symlinks through `..data`, which is
/// re-pointed atomically at a new timestamped directory on each update.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: &Path, files: &[(&str, &str)]) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: dir.to_owned(),
            version: 0,
        };
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        volume
    }

    /// Writes a new version and swaps `..data` to it in one rename.
    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..2026_11_25_{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.join(&version).join(name), content).unwrap();
        }
        let temporary = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &temporary).unwrap();
        std::fs::rename(&temporary, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A server whose certificate and key come from a Kubernetes-style secret volume,
/// re-read every 100 ms, and what the tests change it with.
struct Reloadable {
    pki: Pki,
    ca: String,
    first: Identity,
    volume: SecretVolume,
    client_tls: ClientTls,
    server: TestServer,
    _secret: tempfile::TempDir,
}

impl Reloadable {
    async fn start(dir: &DataDir) -> Reloadable {
        let pki = Pki::new();
        let ca = pki.ca_pem();
        let secret = tempfile::tempdir().unwrap();
        let first = pki.server(&["localhost", "127.0.0.1"]);
        let volume = SecretVolume::new(
            secret.path(),
            &[("tls.crt", &first.cert_pem), ("tls.key", &first.key_pem)],
        );
        let args = [
            "--tls-cert",
            &volume.path("tls.crt"),
            "--tls-key",
            &volume.path("tls.key"),
            "--tls-reload-interval",
            "100ms",
        ];
        let client_tls = ClientTls {
            ca_pem: ca.clone(),
            identity: None,
        };
        let server = TestServer::start_tls(config(dir, &args), client_tls.clone()).await;
        Reloadable {
            pki,
            ca,
            first,
            volume,
            client_tls,
            server,
            _secret: secret,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections_while_load_runs_on_open_ones() {
    let dir = DataDir::new();
    let Reloadable {
        pki,
        ca,
        first,
        mut volume,
        client_tls,
        server,
        _secret,
    } = Reloadable::start(&dir).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, first.der);

    // Load on open connections, gRPC and HTTPS, for the whole swap.
    let open = connect_tls(server.grpc_addr, &client_tls).await.unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let mut client = open.clone();
        let http = server.http.clone();
        let jwks_url = server.url("/.well-known/jwks.json");
        let running = Arc::clone(&running);
        let served = Arc::clone(&served);
        load.spawn(async move {
            while running.load(Ordering::Relaxed) {
                if worker % 2 == 0 {
                    client
                        .issue_token(pb::IssueTokenRequest {
                            subject: format!("load-{worker}"),
                            ..Default::default()
                        })
                        .await
                        .map_err(|status| format!("IssueToken: {status}"))?;
                } else {
                    let response = http
                        .get(&jwks_url)
                        .send()
                        .await
                        .map_err(|e| format!("JWKS: {e}"))?;
                    if response.status() != 200 {
                        return Err(format!("JWKS: {}", response.status()));
                    }
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }

    let second = pki.server(&["localhost", "127.0.0.1"]);
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)]);
    wait_for_metric(&server, "token_authority_tls_reloads_total", 1.0).await;
    // A new connection, on both listeners, is served the new certificate.
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, second.der);
    let http = handshake(server.http_addr, client_config(&ca, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(
        http.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        second.der
    );
    let before_stop = served.load(Ordering::Relaxed);

    running.store(false, Ordering::Relaxed);
    while let Some(worker) = load.join_next().await {
        worker.unwrap().unwrap();
    }
    assert!(before_stop > 0, "no request was served during the swap");
    // The connection opened under the first certificate still works.
    open.clone().get_jwks(pb::GetJwksRequest {}).await.unwrap();
    assert_eq!(
        metric(&server, "token_authority_tls_reload_failures_total").await,
        0.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_mismatched_change_keeps_the_previous_certificate() {
    let dir = DataDir::new();
    let Reloadable {
        pki,
        ca,
        first,
        mut volume,
        server,
        _secret,
        ..
    } = Reloadable::start(&dir).await;
    let failures = "token_authority_tls_reload_failures_total";
    let refused = r#"token_authority_config_refused{file="tls"}"#;
    assert_eq!(metric(&server, refused).await, 0.0);

    // A certificate file that does not parse.
    volume.update(&[
        (
            "tls.crt",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ),
        ("tls.key", &first.key_pem),
    ]);
    wait_for_metric(&server, failures, 1.0).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, first.der);
    assert_eq!(metric(&server, refused).await, 1.0);

    // A renewed certificate whose key has not arrived yet: not half-applied.
    let second = pki.server(&["localhost", "127.0.0.1"]);
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &first.key_pem)]);
    wait_for_metric(&server, failures, 2.0).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, first.der);
    // The bad set is counted once, not at every check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&server, failures).await, 2.0);

    // A "renewal" already expired: refused, as at start; the set in use stays.
    let expired = pki.server_until(&["localhost", "127.0.0.1"], now() - 3600);
    volume.update(&[
        ("tls.crt", &expired.cert_pem),
        ("tls.key", &expired.key_pem),
    ]);
    wait_for_metric(&server, failures, 3.0).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, first.der);

    // The key arrives: the pair is applied.
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)]);
    wait_for_metric(&server, "token_authority_tls_reloads_total", 1.0).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, second.der);
    assert_eq!(metric(&server, refused).await, 0.0);

    // A bad set again, then the files back to the set in use: nothing to refuse any more.
    volume.update(&[("tls.crt", &first.cert_pem), ("tls.key", &second.key_pem)]);
    wait_for_metric(&server, failures, 4.0).await;
    assert_eq!(metric(&server, refused).await, 1.0);
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &second.key_pem)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&server, refused).await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the set in use put back is still counted as refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, second.der);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_client_ca_bundle_is_applied_to_new_handshakes() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server_ca = tls.pki.ca_pem();
    let old_ca = Pki::named("old client CA");
    let new_ca = Pki::named("new client CA");
    let bundle = tls.dir.path().join("bundle.pem");
    std::fs::write(&bundle, old_ca.ca_pem()).unwrap();
    let args = [
        "--tls-cert",
        tls.cert.to_str().unwrap(),
        "--tls-key",
        tls.key.to_str().unwrap(),
        "--client-ca",
        bundle.to_str().unwrap(),
        "--tls-reload-interval",
        "100ms",
    ];
    let server = TestServer::start_tls(config(&dir, &args), tls.client(None)).await;
    let old_client = old_ca.client(Some("spiffe://cluster.local/old"), None);
    let new_client = new_ca.client(Some("spiffe://cluster.local/new"), None);
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &old_client).await,
        "accepted"
    );
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &new_client).await,
        "received fatal alert: UnknownCA"
    );

    // The new CA is added, then the old one removed.
    std::fs::write(&bundle, format!("{}{}", old_ca.ca_pem(), new_ca.ca_pem())).unwrap();
    wait_for_metric(&server, "token_authority_tls_reloads_total", 1.0).await;
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &new_client).await,
        "accepted"
    );
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &old_client).await,
        "accepted"
    );
    std::fs::write(&bundle, new_ca.ca_pem()).unwrap();
    wait_for_metric(&server, "token_authority_tls_reloads_total", 2.0).await;
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &new_client).await,
        "accepted"
    );
    assert_eq!(
        mtls_outcome(server.grpc_addr, &server_ca, &old_client).await,
        "received fatal alert: UnknownCA"
    );
    server.stop().await;
}

/// `token_authority_tls_certificate_expiry_seconds{certificate}` of a server, if served.
async fn expiry_seconds(server: &TestServer, certificate: &str) -> Option<f64> {
    let name =
        format!("token_authority_tls_certificate_expiry_seconds{{certificate=\"{certificate}\"}}");
    metric_sample(server, &name).await
}

/// Asserts that the seconds left until `not_after` (unix seconds), as scraped, are within a
/// few seconds of what this test's clock says.
async fn assert_expires_at(server: &TestServer, certificate: &str, not_after: u64) {
    let before = now();
    let seconds = expiry_seconds(server, certificate)
        .await
        .unwrap_or_else(|| panic!("no {certificate} expiry in /metrics"));
    let expected = not_after as f64 - before as f64;
    assert!(
        (expected - 3.0..=expected + 1.0).contains(&seconds),
        "{certificate}: {seconds} s left, expected {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_expiry_metrics_follow_the_certificates_in_use() {
    let day = 24 * 3600;
    let dir = DataDir::new();
    let pki = Pki::new();
    let ca = pki.ca_pem();
    let first = pki.server_until(&["localhost", "127.0.0.1"], now() + 30 * day);
    // The chain served: its intermediate expires first, and clients refuse the chain then.
    let serving_until = now() + 3 * day;
    let chain = format!(
        "{}{}",
        first.cert_pem,
        Pki::named_until("intermediate", serving_until).ca_pem()
    );
    // The client CA bundle: its latest certificate is the one that counts (a new CA added
    // beside the old one is the rollover the alert asks for).
    let (soon, later) = (now() + 10 * day, now() + 20 * day);
    let bundle = format!(
        "{}{}",
        Pki::named_until("later client CA", later).ca_pem(),
        Pki::named_until("sooner client CA", soon).ca_pem()
    );
    let secret = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(
        secret.path(),
        &[
            ("tls.crt", &chain),
            ("tls.key", &first.key_pem),
            ("ca.crt", &bundle),
        ],
    );
    let args = [
        "--tls-cert",
        &volume.path("tls.crt"),
        "--tls-key",
        &volume.path("tls.key"),
        "--client-ca",
        &volume.path("ca.crt"),
        "--tls-reload-interval",
        "100ms",
    ];
    let client_tls = ClientTls {
        ca_pem: ca.clone(),
        identity: None,
    };
    let server = TestServer::start_tls(config(&dir, &args), client_tls).await;
    assert_expires_at(&server, "serving", serving_until).await;
    assert_expires_at(&server, "client_ca", later).await;

    // Renewed: a certificate with a later notAfter, and a bundle of one CA.
    let renewed_until = now() + 90 * day;
    let second = pki.server_until(&["localhost", "127.0.0.1"], renewed_until);
    let bundle_until = now() + 365 * day;
    volume.update(&[
        ("tls.crt", &second.cert_pem),
        ("tls.key", &second.key_pem),
        (
            "ca.crt",
            &Pki::named_until("renewed client CA", bundle_until).ca_pem(),
        ),
    ]);
    wait_for_metric(&server, "token_authority_tls_reloads_total", 1.0).await;
    assert_eq!(served_certificate(server.grpc_addr, &ca).await, second.der);
    assert_expires_at(&server, "serving", renewed_until).await;
    assert_expires_at(&server, "client_ca", bundle_until).await;
    server.stop().await;

    // Without --client-ca: the serving certificate only.
    let tls = TlsSetup::new();
    let dir = DataDir::new();
    let server = tls.start(&dir, false, &[]).await;
    assert!(expiry_seconds(&server, "serving").await.is_some());
    assert_eq!(expiry_seconds(&server, "client_ca").await, None);
    server.stop().await;

    // Without TLS: neither.
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    assert_eq!(expiry_seconds(&server, "serving").await, None);
    assert_eq!(expiry_seconds(&server, "client_ca").await, None);
    server.stop().await;
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_the_start_with_the_file_named() {
    let tls = TlsSetup::new();
    let other = tls.pki.server(&["127.0.0.1"]);
    let dir_path = tls.dir.path();
    let (_, other_key) = other.write(dir_path, "other");
    let garbage = dir_path.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let bad_base64 = dir_path.join("bad-base64.pem");
    std::fs::write(
        &bad_base64,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir_path.join("missing.pem");
    let expired = tls.pki.server_until(&["127.0.0.1"], now() - 3600);
    let (expired_cert, expired_key) = expired.write(dir_path, "expired");
    let (cert, key, ca) = (&tls.cert, &tls.key, &tls.ca);
    let show = |path: &Path| path.display().to_string();
    let cases: Vec<(&str, [&Path; 3], String)> = vec![
        (
            "certificate file missing",
            [&missing, key, ca],
            format!(
                "cannot load the TLS files: cannot read {}: No such file or directory (os error 2)",
                show(&missing)
            ),
        ),
        (
            "no certificate in the file",
            [&garbage, key, ca],
            format!(
                "cannot load the TLS files: {}: no PEM certificate found",
                show(&garbage)
            ),
        ),
        (
            "key file without a key",
            [cert, &garbage, ca],
            format!(
                "cannot load the TLS files: {}: no well-formed PEM private key (PKCS#8, PKCS#1 or SEC1) found",
                show(&garbage)
            ),
        ),
        (
            "key of another certificate",
            [cert, &other_key, ca],
            format!(
                "cannot load the TLS files: {} and {} do not go together, or the key is not usable: \
                 the private key is not the certificate's",
                show(cert),
                show(&other_key)
            ),
        ),
        (
            "certificate expired",
            [&expired_cert, &expired_key, ca],
            format!(
                "cannot load the TLS files: {}: the certificate expired ",
                show(&expired_cert)
            ),
        ),
        (
            "client CA bundle that does not parse",
            [cert, key, &bad_base64],
            format!(
                "cannot load the TLS files: {}: a PEM certificate is malformed: ",
                show(&bad_base64)
            ),
        ),
    ];
    for (name, [cert, key, ca], expected) in cases {
        let dir = DataDir::new();
        let args = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
        ];
        let (server, result) =
            TestServer::try_start_with(config(&dir, &args), Some(tls.client(None))).await;
        assert!(server.is_none(), "{name}: the server started");
        let error = result.unwrap_err().to_string();
        assert!(error.starts_with(&expected), "{name}: {error}");
        assert!(
            !dir.path.join("keystore").exists(),
            "{name}: keystore opened"
        );
    }
}

/// The error line of a failed reload names the file and carries no key bytes.
#[test]
fn a_failed_reload_logs_one_error_naming_the_file() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let mut args: Vec<String> = tls.args(false);
    args.extend(["--tls-reload-interval".into(), "100ms".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = crate::binary::spawn_binary_logging(&dir, &args, None);
    let key_pem = std::fs::read_to_string(&tls.key).unwrap();
    // A key file whose body is not a key: its bytes must not reach the log.
    let broken = key_pem.replace("PRIVATE KEY", "PRIVATE KEY X");
    std::fs::write(&tls.key, &broken).unwrap();
    let line = loop {
        let line = process
            .log
            .recv_timeout(Duration::from_secs(20))
            .expect("no error was logged");
        if line.contains("\"ERROR\"") {
            break line;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        event["fields"]["message"],
        "TLS files changed but cannot be loaded; the previous set stays in use"
    );
    assert_eq!(
        event["fields"]["error"],
        format!(
            "{}: no well-formed PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            tls.key.display()
        )
    );
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let lines = process.terminate();
    for line in lines.iter().chain([&line]) {
        assert!(!line.contains(&body[..40]), "key bytes in the log: {line}");
    }
    // Logged once, not at every check.
    let errors = lines.iter().filter(|l| l.contains("\"ERROR\"")).count();
    assert_eq!(errors, 0, "{lines:?}");
}
