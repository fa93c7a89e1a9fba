//! The flags of `serve` as clap parses them (where the keys live is `store_args`, which
//! the `keys` commands take too).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{store_args::StoreArgs, ConfigError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// What makes the keys and signs with them: the process, with the crypto provider (private
/// keys sealed at rest by the store); or a PKCS#11 token (an HSM, a cloud HSM's library,
/// SoftHSM), where keys are generated, non-extractable, and only asked to sign. (No doc
/// comment on the variants: clap would switch the whole `--help` to its long layout.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SignerKind {
    Process,
    Pkcs11,
}

#[derive(Clone, Debug, Args)]
pub struct SignerArgs {
    /// Where keys are made and what signs with them: `process` or `pkcs11`.
    #[arg(long, env = "TA_SIGNER", value_enum, default_value = "process")]
    pub(crate) signer: SignerKind,

    /// The token vendor's PKCS#11 library (with --signer pkcs11).
    #[arg(long, env = "TA_PKCS11_MODULE")]
    pub(crate) pkcs11_module: Option<PathBuf>,

    /// The label of the token to use (with --signer pkcs11).
    #[arg(long, env = "TA_PKCS11_TOKEN_LABEL")]
    pub(crate) pkcs11_token_label: Option<String>,

    /// File holding the token's user PIN, owner-only (with --signer pkcs11).
    #[arg(long, env = "TA_PKCS11_PIN_FILE")]
    pub(crate) pkcs11_pin_file: Option<PathBuf>,
}

/// Where the PKCS#11 token is, as the flags name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Files {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_file: PathBuf,
}

impl SignerArgs {
    /// `None` for the in-process signer; the token's module, label and PIN file otherwise,
    /// all three needed.
    pub(crate) fn pkcs11(&self) -> Result<Option<Pkcs11Files>, ConfigError> {
        let given = self.pkcs11_module.is_some()
            || self.pkcs11_token_label.is_some()
            || self.pkcs11_pin_file.is_some();
        match self.signer {
            SignerKind::Process if given => Err(ConfigError(
                "--pkcs11-module, --pkcs11-token-label and --pkcs11-pin-file need --signer pkcs11"
                    .into(),
            )),
            SignerKind::Process => Ok(None),
            SignerKind::Pkcs11 => match (
                &self.pkcs11_module,
                &self.pkcs11_token_label,
                &self.pkcs11_pin_file,
            ) {
                (Some(module), Some(token_label), Some(pin_file)) => Ok(Some(Pkcs11Files {
                    module: module.clone(),
                    token_label: token_label.clone(),
                    pin_file: pin_file.clone(),
                })),
                _ => Err(ConfigError(
                    "--signer pkcs11 needs --pkcs11-module, --pkcs11-token-label and --pkcs11-pin-file"
                        .into(),
                )),
            },
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Directory for the keystore and the generated admin token.
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub(crate) data_dir: PathBuf,

    /// Address of the gRPC API (also serves gRPC health and reflection).
    #[arg(long, env = "TA_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub(crate) grpc_listen: SocketAddr,

    /// Address of the HTTP endpoints (JWKS, OpenID discovery, health).
    #[arg(long, env = "TA_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) http_listen: SocketAddr,

    /// The `iss` of every token, and the base of the JWKS URL in the discovery document.
    /// Default: http://<the bound HTTP address> (https:// with --tls-cert).
    #[arg(long, env = "TA_ISSUER")]
    pub(crate) issuer: Option<String>,

    /// File holding the admin bearer token. Default: <data-dir>/admin-token, generated
    /// (mode 0600) on the first start.
    #[arg(long, env = "TA_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,

    /// File of key-encryption keys, one base64 line of 32 bytes each; the first seals
    /// private keys at rest, all of them unseal. Without it keys are stored unencrypted.
    #[arg(long, env = "TA_KEK_FILE")]
    pub(crate) kek_file: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) store: StoreArgs,

    #[command(flatten)]
    pub(crate) signer: SignerArgs,

    /// How often a replica re-reads the shared store's generation, in case a change
    /// notification was lost.
    #[arg(long, env = "TA_STORE_SYNC_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) store_sync_interval: Duration,

    /// Accept a data directory, admin token file or KEK file that group or others may
    /// access (refused otherwise, naming the chmod that fixes it). For volumes whose modes
    /// the platform sets, such as Kubernetes Secrets and volumes with fsGroup.
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub(crate) allow_group_readable_files: bool,

    /// Signing algorithms, comma-separated, from RS256, PS256, ES256, EdDSA. Each keeps its
    /// own keys; the first is the default for IssueToken.
    #[arg(
        long,
        env = "TA_ALGORITHMS",
        default_value = "RS256",
        value_delimiter = ','
    )]
    pub(crate) algorithms: Vec<String>,

    /// Lifetime of a token when the request sets none.
    #[arg(long, env = "TA_DEFAULT_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub(crate) default_ttl: Duration,

    /// Longest lifetime a request may ask for.
    #[arg(long, env = "TA_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) max_ttl: Duration,

    /// Clock skew tolerated when checking exp, nbf and iat.
    #[arg(long, env = "TA_LEEWAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) leeway: Duration,

    /// How long a new key is published in the JWKS before it may sign. Longer than the JWKS
    /// max-age and the refresh intervals of common clients (jwks-rsa 10 min, PyJWKClient 5).
    #[arg(long, env = "TA_PUBLISH_LEAD", default_value = "15m", value_parser = humantime::parse_duration)]
    pub(crate) publish_lead: Duration,

    /// How long a key signs before the scheduled rotation replaces it.
    #[arg(long, env = "TA_ROTATION_PERIOD", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) rotation_period: Duration,

    /// Longest Cache-Control max-age of the JWKS response (shorter when the key set is
    /// about to change).
    #[arg(long, env = "TA_JWKS_MAX_AGE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub(crate) jwks_max_age: Duration,

    /// Tokens that live at least this long get a status in a status list (revocable one
    /// by one with SetTokenStatus); `off` issues none.
    #[arg(long, env = "TA_STATUS_MIN_TTL", default_value = "10m", value_parser = parse_status_min_ttl)]
    pub(crate) status_min_ttl: StatusMinTtl,

    /// Statuses per status list (a multiple of 4); a full list rolls over to the next.
    #[arg(long, env = "TA_STATUS_LIST_SIZE", default_value_t = 1_048_576)]
    pub(crate) status_list_size: u64,

    /// How long verifiers may cache a status list (its `ttl` claim and Cache-Control).
    #[arg(long, env = "TA_STATUS_LIST_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) status_list_ttl: Duration,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TA_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_grace: Duration,

    /// How long to keep accepting new connections and calls after SIGTERM/SIGINT, with
    /// readiness already failing, before the drain: the time a load balancer (a Kubernetes
    /// Service's endpoints) takes to stop sending new connections here.
    #[arg(long, env = "TA_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_delay: Duration,

    /// Log line format.
    #[arg(long, env = "TA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector (`http://host:4317`, or `https://`
    /// with --otlp-ca-file or the public web roots). Else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    /// or OTEL_EXPORTER_OTLP_ENDPOINT; without any, no traces.
    #[arg(long, env = "TA_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,

    /// PEM file of the CAs that sign the collector's certificate (else
    /// OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE or OTEL_EXPORTER_OTLP_CERTIFICATE).
    #[arg(long, env = "TA_OTLP_CA_FILE")]
    pub(crate) otlp_ca_file: Option<PathBuf>,

    /// Server certificate chain (PEM, leaf first). With --tls-key, both listeners speak TLS
    /// only (ALPN h2 on gRPC, http/1.1 on HTTP). Re-read when it changes on disk.
    #[arg(long, env = "TA_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TA_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,

    /// CA bundle (PEM) for client certificates. A client may connect without one (token and
    /// secret callers); one it presents must chain to this bundle and be valid, at the
    /// handshake and at every request (the bundle in use then, the server's clock).
    #[arg(long, env = "TA_CLIENT_CA")]
    pub(crate) client_ca: Option<PathBuf>,

    /// Serve plaintext on a non-loopback address (behind a mesh that terminates mTLS).
    /// Without TLS, only loopback addresses are allowed otherwise.
    #[arg(long, env = "TA_ALLOW_PLAINTEXT")]
    pub(crate) allow_plaintext: bool,

    /// Concurrent WatchKeys streams; beyond it a new watcher gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "TA_MAX_WATCHERS", default_value_t = 1024)]
    pub(crate) max_watchers: usize,

    /// Concurrent WatchKeys streams from one client address (an IPv6 client: its /64), so
    /// that one client cannot take every --max-watchers place; beyond it RESOURCE_EXHAUSTED.
    /// Default: a quarter of --max-watchers. Behind a sidecar proxy every watcher comes from
    /// its one address: raise it there, up to --max-watchers.
    #[arg(long, env = "TA_MAX_WATCHERS_PER_IP")]
    pub(crate) max_watchers_per_ip: Option<usize>,

    /// A WatchKeys stream with nothing to send sends a keepalive this often, so watchers
    /// notice a dead stream.
    #[arg(long, env = "TA_WATCH_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) watch_keepalive: Duration,

    /// A watcher that leaves a message untaken this long is dropped (it reconnects) rather
    /// than holding the server's memory.
    #[arg(long, env = "TA_WATCH_SEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) watch_send_timeout: Duration,

    /// Open connections per listener; beyond it new ones are closed at once. 1024 keeps
    /// both listeners (2 x 1024) under a container's usual file limit with room to spare,
    /// and is far above what gRPC clients need (one multiplexed connection each).
    #[arg(long, env = "TA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub(crate) max_connections: usize,

    /// Open connections per listener from one client address (an IPv6 client: its /64), so
    /// that one client cannot fill --max-connections; beyond it new ones are closed at once.
    /// Default: a quarter of --max-connections. Clients behind one NAT or proxy address share
    /// it: raise it there.
    #[arg(long, env = "TA_MAX_CONNECTIONS_PER_IP")]
    pub(crate) max_connections_per_ip: Option<usize>,

    /// Failed authentications one client address may have in a burst (then one a second)
    /// before its calls are refused RESOURCE_EXHAUSTED without their credentials being read.
    /// 0 turns this off: behind a sidecar proxy every call comes from its one address, and a
    /// single misconfigured client would lock out every other.
    #[arg(long, env = "TA_AUTH_FAILURES_PER_IP", default_value_t = crate::transport::peers::AUTH_FAILURE_BURST)]
    pub(crate) auth_failures_per_ip: u32,

    /// A connection older than this is sent GOAWAY and closed once its requests finish (at
    /// most 30 s later), as gRPC servers' MAX_CONNECTION_AGE: gRPC clients reconnect
    /// transparently, and a fresh handshake checks the client certificate and the TLS files
    /// in use again. Each connection's age is shortened by up to 10 % so that clients that
    /// connected together do not all reconnect together.
    #[arg(long, env = "TA_MAX_CONNECTION_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) max_connection_age: Duration,

    /// How long a new connection has to finish the TLS handshake and send its first
    /// protocol bytes (HTTP/2 preface, HTTP/1 request). Long enough for a slow network, short
    /// enough that sockets opened and left silent cannot pile up.
    #[arg(long, env = "TA_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Duration,

    /// A connection with no request in flight, or whose client stopped reading its
    /// responses, is closed after this long. 5 min frees what departed clients hold, while a
    /// client refreshing a token every few minutes keeps its connection (and gRPC clients
    /// reconnect transparently anyway).
    #[arg(long, env = "TA_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,

    /// How often the TLS files are read and compared for a change. 10 s is small next to
    /// how early cert-manager renews, and reading three small files costs nothing.
    #[arg(long, env = "TA_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) tls_reload_interval: Duration,

    /// The caller policy (TOML): who may get which tokens, and who may call admin RPCs.
    /// Reloaded when its content changes. Without it, IssueToken is open only while the
    /// gRPC listener is a loopback address; otherwise only the admin token may issue.
    #[arg(long, env = "TA_POLICY_FILE")]
    pub(crate) policy_file: Option<PathBuf>,

    /// How often the policy file is read to notice a new content.
    #[arg(long, env = "TA_POLICY_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) policy_reload_interval: Duration,

    /// The audit log: one hash-chained JSON line per decision and admin action, appended
    /// (`-`: stderr). Check it with `token-authority audit verify PATH`.
    #[arg(long, env = "TA_AUDIT_LOG")]
    pub(crate) audit_log: Option<PathBuf>,

    /// File holding the audit chain's key: one standard-base64 line of 32 random bytes
    /// (`openssl rand -base64 32`), owner-only. Lines then carry an HMAC-SHA-256, so a chain
    /// recomputed without the key is detected; without it they carry a plain SHA-256.
    #[arg(long, env = "TA_AUDIT_KEY_FILE", requires = "audit_log")]
    pub(crate) audit_key_file: Option<PathBuf>,

    /// fsync each batch of audit lines before the calls it records are answered.
    #[arg(long, env = "TA_AUDIT_SYNC", requires = "audit_log")]
    pub(crate) audit_sync: bool,
}

/// `--status-min-ttl`: a duration, or `off` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatusMinTtl(pub(crate) Option<Duration>);

fn parse_status_min_ttl(text: &str) -> Result<StatusMinTtl, String> {
    if text == "off" {
        return Ok(StatusMinTtl(None));
    }
    humantime::parse_duration(text)
        .map(|ttl| StatusMinTtl(Some(ttl)))
        .map_err(|e| format!("{e} (a duration such as 10m, or off)"))
}
