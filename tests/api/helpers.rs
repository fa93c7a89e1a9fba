//! Test helpers: start the real server on ephemeral ports with its own data directory,
//! talk to it over real gRPC and HTTP, and stop it through its shutdown future.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use std::os::unix::fs::DirBuilderExt as _;

use clap::Parser as _;
use token_authority::{
    authority::keys::{self, KeyRecord, KeyState},
    config::{Cli, Command, Config},
    pb::{self, token_authority_client::TokenAuthorityClient},
    server::{self, Listeners, ServerError},
    store::KeyStore,
};
use token_authority_jose::{
    b64,
    crypto::{Algorithm, SigningKey},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Request,
};

use crate::pki::{Identity, Pki};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn now() -> u64 {
    wall_clock().as_secs()
}

/// Wall-clock time since the unix epoch, to the nanosecond.
pub fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// A data directory that outlives the servers started on it.
pub struct DataDir {
    _temp: tempfile::TempDir,
    pub path: PathBuf,
    pub admin_token_file: PathBuf,
}

impl DataDir {
    pub fn new() -> DataDir {
        let temp = tempfile::tempdir().unwrap();
        let admin_token_file = temp.path().join("admin-token-secret");
        write_private(&admin_token_file, format!("{ADMIN_TOKEN}\n"));
        DataDir {
            path: temp.path().join("data"),
            admin_token_file,
            _temp: temp,
        }
    }

    /// Creates the data directory owner-only, as the server requires of one that exists.
    pub fn create(&self) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .unwrap();
    }
}

/// A key the test holds the private half of, stored as the current key of a data
/// directory before the server starts: lets tests forge tokens the server must judge.
pub struct KnownKey {
    pub kid: String,
    pub signer: SigningKey,
}

impl KnownKey {
    /// Writes the JWKS of this key alone to `path`: a `jwks_file` for an `[[issuer]]` that
    /// trusts the authority's own tokens.
    pub fn write_jwks(&self, path: &std::path::Path) {
        let public = self.signer.verifying_key().unwrap();
        let jwks =
            token_authority_jose::jwk::render_jwks(&[token_authority_jose::jwk::PublicJwk::new(
                &self.kid,
                Algorithm::RS256,
                public.components(),
            )]);
        std::fs::write(path, jwks).unwrap();
    }

    /// Writes a fresh current RS256 key into `dir`'s keystore.
    pub fn seed(dir: &DataDir) -> KnownKey {
        KnownKey::seed_activated(dir, now() - 10)
    }

    /// Like `seed`, with the key current since `activated_at`.
    pub fn seed_activated(dir: &DataDir, activated_at: u64) -> KnownKey {
        token_authority::store::file_modes::create_private_dir(&dir.path).unwrap();
        let generated = keys::generate(Algorithm::RS256).unwrap();
        let signer =
            SigningKey::from_pkcs8(Algorithm::RS256, generated.private_key.as_bytes()).unwrap();
        let kid = generated.kid.clone();
        let record = KeyRecord {
            kid: generated.kid,
            alg: generated.alg,
            state: KeyState::Current,
            created_at: activated_at,
            published_at: activated_at,
            activated_at: Some(activated_at),
            retired_at: None,
            delete_after: None,
            revoked_at: None,
            revoked_reason: None,
            max_token_ttl: 86400,
            private_key: generated.private_key,
            token: None,
        };
        let (store, existing) = KeyStore::open(&dir.path.join("keystore"), None).unwrap();
        assert!(existing.is_empty(), "seed only a new data directory");
        store.write(&[record]).unwrap();
        drop(store);
        wait_for_sled_release(&dir.path.join("keystore"));
        KnownKey { kid, signer }
    }

    /// Signs arbitrary header and payload JSON texts.
    pub fn forge(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
        let signature = self.signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(signature))
    }

    pub fn header(&self) -> String {
        format!(r#"{{"alg":"RS256","kid":"{}","typ":"JWT"}}"#, self.kid)
    }
}

pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub issuer: String,
    pub client: TokenAuthorityClient<Channel>,
    pub http: reqwest::Client,
    /// How the test's clients reach a TLS server; `None` for plaintext.
    pub tls: Option<ClientTls>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Parses `serve` flags as the binary would, with test defaults for the data directory,
/// the admin token and ports.
pub fn config(dir: &DataDir, extra: &[&str]) -> Config {
    let data_dir = dir.path.display().to_string();
    let admin = dir.admin_token_file.display().to_string();
    let mut argv = vec![
        "token-authority",
        "serve",
        "--data-dir",
        &data_dir,
        "--admin-token-file",
        &admin,
    ];
    for flag in ["--grpc-listen", "--http-listen"] {
        if !extra.contains(&flag) {
            argv.extend_from_slice(&[flag, "127.0.0.1:0"]);
        }
    }
    // A fixed issuer: the default follows the HTTP port, which changes across restarts here.
    if !extra.contains(&"--issuer") {
        argv.extend_from_slice(&["--issuer", "http://token-authority.test"]);
    }
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!("serve was parsed")
    };
    Config::try_from(args).unwrap()
}

impl TestServer {
    pub async fn start(dir: &DataDir) -> TestServer {
        TestServer::start_with(config(dir, &[])).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let (server, ready) = TestServer::try_start(config).await;
        ready.expect("the server failed to start");
        server.expect("server handle")
    }

    /// Starts a TLS server; its `client` and `http` trust `tls`'s CA and present its identity.
    pub async fn start_tls(config: Config, tls: ClientTls) -> TestServer {
        let (server, ready) = TestServer::try_start_with(config, Some(tls)).await;
        ready.expect("the server failed to start");
        server.expect("server handle")
    }

    /// Starts the server; when start-up fails, returns the error it stopped with.
    pub async fn try_start(config: Config) -> (Option<TestServer>, Result<(), ServerError>) {
        TestServer::try_start_with(config, None).await
    }

    /// Starts the server, reaching it over TLS when `tls` is given.
    pub async fn try_start_with(
        config: Config,
        tls: Option<ClientTls>,
    ) -> (Option<TestServer>, Result<(), ServerError>) {
        let listeners = Listeners::bind(config.grpc_listen, config.http_listen)
            .await
            .unwrap();
        let grpc_addr = listeners.grpc.local_addr().unwrap();
        let http_addr = listeners.http.local_addr().unwrap();
        let issuer = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        let (shutdown, stop) = oneshot::channel::<()>();
        let mut handle = tokio::spawn(server::run(config, listeners, async {
            let _ = stop.await;
        }));
        let channel = endpoint(grpc_addr, tls.as_ref()).connect_lazy();
        // The server answers health checks from its start, NOT_SERVING until the keys are
        // loaded: asked until it is SERVING; if start-up fails instead, the handle says why.
        let serving = serving(channel.clone());
        tokio::select! {
            result = serving => {
                if let Err(status) = result {
                    let stopped = handle.await.unwrap();
                    assert!(stopped.is_err(), "health check failed ({status}) on a running server");
                    return (None, stopped);
                }
            }
            stopped = &mut handle => return (None, stopped.unwrap()),
        }
        (
            Some(TestServer {
                grpc_addr,
                http_addr,
                issuer,
                client: TokenAuthorityClient::new(channel),
                http: tls.as_ref().map_or_else(reqwest::Client::new, https_client),
                tls,
                shutdown: Some(shutdown),
                handle: Some(handle),
            }),
            Ok(()),
        )
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.http_addr, path)
    }

    /// Triggers shutdown and returns the server's task, to be awaited by the test.
    pub fn begin_stop(&mut self) -> JoinHandle<Result<(), ServerError>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.handle.take().expect("the server was already stopped")
    }

    /// Stops the server through its shutdown future and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    pub async fn issue(&self, subject: &str, audience: &[&str]) -> pb::IssueTokenResponse {
        self.client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: subject.into(),
                audience: audience.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn verify(&self, token: &str, audience: &str) -> pb::VerifyTokenResponse {
        self.client
            .clone()
            .verify_token(pb::VerifyTokenRequest {
                token: token.into(),
                audience: audience.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A forced rotation: the published next key signs at once.
    pub async fn rotate(&self) -> pb::RotateKeysResponse {
        self.client
            .clone()
            .rotate_keys(admin(pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// GetJwks over gRPC.
    pub async fn grpc_jwks(&self) -> pb::GetJwksResponse {
        self.client
            .clone()
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// The kid of the current key of `alg`.
    pub async fn current_kid(&self, alg: &str) -> String {
        let keys = self.list_keys().await.keys;
        keys.iter()
            .find(|k| k.state == pb::KeyState::Current as i32 && k.algorithm == alg)
            .map(|k| k.key_id.clone())
            .expect("a current key")
    }

    pub async fn list_keys(&self) -> pb::ListKeysResponse {
        self.client
            .clone()
            .list_keys(admin(pb::ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    /// GET `path` on the HTTP port and parse the body as JSON.
    pub async fn http_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn http_jwks(&self) -> serde_json::Value {
        self.http
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Waits until the server on `channel` says it is SERVING; the first failed call ends it.
pub async fn serving(channel: Channel) -> Result<(), tonic::Status> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client on a connection of its own.
pub async fn connect(addr: impl std::fmt::Display) -> TokenAuthorityClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TokenAuthorityClient::new(channel)
}

/// How a test client reaches a TLS server: the CA it trusts and, for mTLS, its certificate.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: String,
    pub identity: Option<Identity>,
}

/// The gRPC endpoint of `addr`, over TLS when `tls` is given (the server certificate must
/// name 127.0.0.1).
pub fn endpoint(addr: SocketAddr, tls: Option<&ClientTls>) -> Endpoint {
    let Some(tls) = tls else {
        return Channel::from_shared(format!("http://{addr}")).unwrap();
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
    if let Some(identity) = &tls.identity {
        config = config.identity(tonic::transport::Identity::from_pem(
            &identity.cert_pem,
            &identity.key_pem,
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
}

/// A client on a TLS connection of its own; the handshake's outcome is the result.
pub async fn connect_tls(
    addr: SocketAddr,
    tls: &ClientTls,
) -> Result<TokenAuthorityClient<Channel>, tonic::transport::Error> {
    Ok(TokenAuthorityClient::new(
        endpoint(addr, Some(tls)).connect().await?,
    ))
}

/// An HTTPS client that trusts `tls`'s CA and presents its identity, if any.
pub fn https_client(tls: &ClientTls) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap());
    if let Some(identity) = &tls.identity {
        let pem = format!("{}{}", identity.key_pem, identity.cert_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// A test PKI with a server certificate for 127.0.0.1 and localhost written to a temp dir,
/// ready to be given to `serve`.
pub struct TlsSetup {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's certificate, as the server's `--client-ca` bundle.
    pub ca: PathBuf,
}

impl TlsSetup {
    pub fn new() -> TlsSetup {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let server = pki.server(&["localhost", "127.0.0.1"]);
        let (cert, key) = server.write(dir.path(), "server");
        let ca = pki.write_ca(dir.path(), "client-ca");
        TlsSetup {
            dir,
            pki,
            cert,
            key,
            ca,
        }
    }

    /// `--tls-cert` and `--tls-key`, and `--client-ca` when `client_ca`.
    pub fn args(&self, client_ca: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ];
        if client_ca {
            args.extend(["--client-ca".to_owned(), self.ca.display().to_string()]);
        }
        args
    }

    /// A client that trusts this PKI's CA, presenting `identity` if given.
    pub fn client(&self, identity: Option<Identity>) -> ClientTls {
        ClientTls {
            ca_pem: self.pki.ca_pem(),
            identity,
        }
    }

    /// A TLS server with these extra flags, reached by a client without a certificate.
    pub async fn start(&self, dir: &DataDir, client_ca: bool, extra: &[&str]) -> TestServer {
        let mut args: Vec<String> = self.args(client_ca);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_tls(config(dir, &args), self.client(None)).await
    }
}

/// Waits (bounded, 20 s) until the metric `name` reaches `value`, and asserts it did not
/// pass it: what a background task counts arrives on its own schedule.
pub async fn wait_for_metric(server: &TestServer, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = metric(server, name).await;
        if now >= value {
            assert_eq!(now, value, "{name}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {now}, expected {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of one sample of the server's /metrics, `name` with its labels as rendered.
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    metric_sample(server, name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Like `metric`, or `None` before the sample's first value.
pub async fn metric_sample(server: &TestServer, name: &str) -> Option<f64> {
    // A pooled keep-alive connection the server closes (idle timeout, --max-connection-age)
    // just as a request goes out fails that request: a GET is tried again on a new one, as
    // any HTTP client does with an idempotent request.
    let mut attempts = 0;
    let text = loop {
        attempts += 1;
        match server.http.get(server.url("/metrics")).send().await {
            Ok(response) => break response.text().await.unwrap(),
            Err(error) if attempts < 3 && error.is_request() => continue,
            Err(error) => panic!("GET /metrics: {error:?}"),
        }
    };
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Wraps `message` with the admin bearer token.
pub fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Verifies `token` with the `jsonwebtoken` crate from a JWKS document: an implementation
/// independent of ours.
pub fn verify_independently(
    jwks: &serde_json::Value,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    // The algorithm the JWK names, as a careful verifier pins it (never the token's header).
    let alg: jsonwebtoken::Algorithm = jwk
        .common
        .key_algorithm
        .ok_or("the JWK has no alg")?
        .to_string()
        .parse()
        .map_err(|e: jsonwebtoken::errors::Error| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

/// The kids in a JWKS document.
pub fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until no sled handle of this process holds the keystore's lock: a dropped store's
/// background thread lets go of it a moment later, and a server started on the directory
/// before then finds it locked. sled locks its `db` file with `flock`; so does this probe.
pub fn wait_for_sled_release(keystore: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = std::fs::File::open(keystore.join("db")).unwrap();
    while rustix::fs::flock(&db, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(std::time::Instant::now() < deadline, "sled kept its lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Closing the file releases the probe's own lock.
}

/// Opens a stopped server's keystore. sled's background threads can hold its lock for a
/// moment after the server let go: wait for that, never for anything else.
pub fn open_keystore(
    dir: &Path,
    keks: impl Fn() -> Option<token_authority::store::kek::Keks>,
) -> (KeyStore, Vec<KeyRecord>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match KeyStore::open(&dir.join("keystore"), keks()) {
            Err(token_authority::store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => return result.unwrap(),
        }
    }
}

/// Writes a secret the way an operator should: owner-only (the server refuses anything
/// group or others can read).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::io::Write as _;
    token_authority::store::file_modes::create_private_file(path)
        .unwrap()
        .write_all(contents.as_ref())
        .unwrap();
}

pub fn keystore_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}
