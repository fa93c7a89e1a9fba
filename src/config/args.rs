//! The command line as clap parses it: every subcommand and flag, each with its `TA_*`
//! environment fallback and the help text users read.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::ConfigError;
use crate::store::PgSettings;

#[derive(Debug, Parser)]
#[command(
    name = "token-authority",
    version,
    about = "A gRPC token authority: mints and verifies signed JWTs, rotates its keys, publishes a JWKS."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing, and boxing it would
// change every `Command::Serve(args)` match in main and the tests.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the authority: gRPC API and HTTP JWKS endpoint.
    Serve(ServeArgs),
    /// Work on the keys of a stopped authority's data directory.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Drive a running authority with load and report requests/s and latency percentiles.
    Bench(BenchArgs),
    /// Work on a caller policy file.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work on an audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file as the server would load it, and try each issuer's JWKS source.
    /// Exit 0 with a summary; exit 1 with every problem.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log's hash chain. Exit 0 with the line count; exit 1 naming the
    /// first line where the chain breaks.
    Verify {
        /// The audit log.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// IssueToken.
    Issue,
    /// VerifyToken over a pool of tokens minted first.
    Verify,
    /// GET /.well-known/jwks.json.
    Jwks,
    /// GET /.well-known/jwks.json with a matching If-None-Match (304).
    Jwks304,
    /// grpc.health.v1.Health/Check: what a trivial unary RPC costs here.
    Health,
    /// GET /healthz: what a trivial HTTP request costs here (the JWKS modes' ceiling).
    Healthz,
    /// 70% verify, 20% issue, 10% JWKS.
    Mixed,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// The authority's gRPC address; repeat (or separate with commas) to spread the load
    /// over several replicas, connection by connection.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub target: Vec<String>,
    /// The authority's HTTP address (JWKS modes).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_target: String,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before measuring, not recorded.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// gRPC connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Signing algorithm for issue/verify (default: the server's first).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Also measure, in the same run, the raw crypto ceiling of this mode (sign for issue,
    /// verify for verify) on every core with no server, and report the ratio to it.
    #[arg(long)]
    pub reference: bool,
    /// How long the reference measurement runs.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub reference_duration: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Force a key rotation (RotateKeys with force, of --algorithm or the default) this
    /// often during the measured phase, and report the latency of the requests in flight
    /// across each rotation separately. Needs --admin-token-file.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rotate_every: Option<Duration>,
    /// The file holding the admin token, for --rotate-every.
    #[arg(long, env = "TA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the server's certificate, for https:// targets.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, with --tls-key (a server with --client-ca).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The subject IssueToken asks for (a caller under a policy may need its own name).
    #[arg(long, default_value = "bench")]
    pub subject: String,
    /// The audience IssueToken asks for and VerifyToken expects.
    #[arg(long, default_value = "bench")]
    pub audience: String,
    /// A file holding a caller token of a trusted issuer (e.g. a projected service-account
    /// token), sent as `authorization: Bearer` on the data-plane calls.
    #[arg(long, conflicts_with = "client_id")]
    pub bearer_token_file: Option<PathBuf>,
    /// A client id of the policy: with --client-secret-file, sent as `authorization: Basic`.
    #[arg(long, requires = "client_secret_file")]
    pub client_id: Option<String>,
    /// The file holding the secret of --client-id.
    #[arg(long, requires = "client_id")]
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print every key with its state and times (what ListKeys answers).
    List(ListArgs),
    /// Add an existing PKCS#8 private key (PEM, as `openssl genpkey` writes) as the next key;
    /// it then rotates in under the usual rules.
    Import(ImportArgs),
    /// Re-seal every private key under the first KEK of --kek-file (after putting a new KEK
    /// first), or seal a keystore that was written without one.
    Rewrap(RewrapArgs),
    /// Copy a stopped authority's sled keystore into an empty PostgreSQL database, with the
    /// same kids, states and times, so tokens already issued keep verifying after the move.
    Migrate(MigrateArgs),
}

#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// The data directory of a stopped authority.
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The KEK file: unseals the sled keystore if it is sealed, and seals every private key
    /// written to the database (the replicas then use the same file).
    #[arg(long, env = "TA_KEK_FILE")]
    pub kek_file: PathBuf,
    /// The database: a postgres:// URL, as for `serve --store`.
    #[arg(long)]
    pub to: String,
    /// File holding the PostgreSQL password, when the URL has none (else PGPASSWORD).
    #[arg(long, env = "TA_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// PEM file of the CAs that sign the PostgreSQL server's certificate.
    #[arg(long, env = "TA_STORE_CA_FILE")]
    pub store_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct RewrapArgs {
    /// The data directory of a stopped authority (with the sled store).
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The keystore: sled in --data-dir, or the replicas' database (a running one: the
    /// change is a transaction the replicas pick up, as if made through the API).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The KEK file: the first KEK seals; every KEK listed may unseal the current records.
    #[arg(long, env = "TA_KEK_FILE")]
    pub kek_file: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// The data directory of a stopped authority (with the sled store).
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The keystore: sled in --data-dir, or the replicas' database (a running one: the
    /// change is a transaction the replicas pick up, as if made through the API).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The KEK file the server uses (needed when the keystore is encrypted).
    #[arg(long, env = "TA_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// The server's publish lead, to show when the next key may sign.
    #[arg(long, env = "TA_PUBLISH_LEAD", default_value = "15m", value_parser = humantime::parse_duration)]
    pub publish_lead: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct ImportArgs {
    /// The data directory of a stopped authority (with the sled store).
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The keystore: sled in --data-dir, or the replicas' database (a running one: the
    /// change is a transaction the replicas pick up, as if made through the API).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The KEK file the server uses (the imported key is sealed under its first KEK).
    #[arg(long, env = "TA_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// The private key: a PEM "PRIVATE KEY" (PKCS#8) block, RSA, P-256 or Ed25519.
    #[arg(long)]
    pub pem: PathBuf,
    /// Keep an existing key id (so tokens already issued under it still verify).
    /// Default: the RFC 7638 thumbprint.
    #[arg(long)]
    pub kid: Option<String>,
    /// For an RSA key: RS256 (default) or PS256.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// The server's max ttl: the retention bound recorded with the key.
    #[arg(long, env = "TA_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the keys live, as `serve` and the `keys` commands take it.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Where the keys live: `sled` (the embedded store in --data-dir, the default) or a
    /// `postgres://user@host:5432/db?sslmode=verify-full` URL shared by several replicas
    /// (needs --kek-file; the PG* environment variables fill what the URL leaves out).
    #[arg(long, env = "TA_STORE", default_value = "sled")]
    pub store: String,

    /// File holding the PostgreSQL password, when the --store URL has none (else PGPASSWORD).
    #[arg(long, env = "TA_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,

    /// PEM file of the CAs that sign the PostgreSQL server's certificate (else PGSSLROOTCERT,
    /// else the public web roots).
    #[arg(long, env = "TA_STORE_CA_FILE")]
    pub store_ca_file: Option<PathBuf>,
}

impl Default for StoreArgs {
    /// The embedded sled store, as without the flags.
    fn default() -> StoreArgs {
        StoreArgs {
            store: "sled".into(),
            store_password_file: None,
            store_ca_file: None,
        }
    }
}

impl StoreArgs {
    /// `None` for the embedded sled store; the shared store's settings for a postgres URL,
    /// which needs a KEK file (private keys reach the database only sealed).
    pub fn shared(&self, kek_file: Option<&Path>) -> Result<Option<PgSettings>, ConfigError> {
        match self.store.as_str() {
            "sled" => {
                if self.store_password_file.is_some() || self.store_ca_file.is_some() {
                    return Err(ConfigError(
                        "--store-password-file and --store-ca-file need a postgres:// --store"
                            .into(),
                    ));
                }
                Ok(None)
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if kek_file.is_none() {
                    return Err(ConfigError(
                        "--store postgres://... needs --kek-file: private keys reach the database only sealed".into(),
                    ));
                }
                Ok(Some(PgSettings {
                    url: url.to_owned(),
                    password_file: self.store_password_file.clone(),
                    ca_file: self.store_ca_file.clone(),
                }))
            }
            _ => Err(ConfigError(
                "--store must be `sled` or a postgres:// URL".into(),
            )),
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Directory for the keystore and the generated admin token.
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Address of the gRPC API (also serves gRPC health and reflection).
    #[arg(long, env = "TA_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,

    /// Address of the HTTP endpoints (JWKS, OpenID discovery, health).
    #[arg(long, env = "TA_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,

    /// The `iss` of every token, and the base of the JWKS URL in the discovery document.
    /// Default: http://<the bound HTTP address> (https:// with --tls-cert).
    #[arg(long, env = "TA_ISSUER")]
    pub issuer: Option<String>,

    /// File holding the admin bearer token. Default: <data-dir>/admin-token, generated
    /// (mode 0600) on the first start.
    #[arg(long, env = "TA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// File of key-encryption keys, one base64 line of 32 bytes each; the first seals
    /// private keys at rest, all of them unseal. Without it keys are stored unencrypted.
    #[arg(long, env = "TA_KEK_FILE")]
    pub kek_file: Option<PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// How often a replica re-reads the shared store's generation, in case a change
    /// notification was lost.
    #[arg(long, env = "TA_STORE_SYNC_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_sync_interval: Duration,

    /// Accept a data directory, admin token file or KEK file that group or others may
    /// access (refused otherwise, naming the chmod that fixes it). For volumes whose modes
    /// the platform sets, such as Kubernetes Secrets and volumes with fsGroup.
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub allow_group_readable_files: bool,

    /// Signing algorithms, comma-separated, from RS256, PS256, ES256, EdDSA. Each keeps its
    /// own keys; the first is the default for IssueToken.
    #[arg(
        long,
        env = "TA_ALGORITHMS",
        default_value = "RS256",
        value_delimiter = ','
    )]
    pub algorithms: Vec<String>,

    /// Lifetime of a token when the request sets none.
    #[arg(long, env = "TA_DEFAULT_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Longest lifetime a request may ask for.
    #[arg(long, env = "TA_MAX_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// Clock skew tolerated when checking exp, nbf and iat.
    #[arg(long, env = "TA_LEEWAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub leeway: Duration,

    /// How long a new key is published in the JWKS before it may sign. Longer than the JWKS
    /// max-age and the refresh intervals of common clients (jwks-rsa 10 min, PyJWKClient 5).
    #[arg(long, env = "TA_PUBLISH_LEAD", default_value = "15m", value_parser = humantime::parse_duration)]
    pub publish_lead: Duration,

    /// How long a key signs before the scheduled rotation replaces it.
    #[arg(long, env = "TA_ROTATION_PERIOD", default_value = "24h", value_parser = humantime::parse_duration)]
    pub rotation_period: Duration,

    /// Longest Cache-Control max-age of the JWKS response (shorter when the key set is
    /// about to change).
    #[arg(long, env = "TA_JWKS_MAX_AGE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub jwks_max_age: Duration,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TA_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log line format.
    #[arg(long, env = "TA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Server certificate chain (PEM, leaf first). With --tls-key, both listeners speak TLS
    /// only (ALPN h2 on gRPC, http/1.1 on HTTP). Re-read when it changes on disk.
    #[arg(long, env = "TA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) for client certificates. A client may connect without one (token and
    /// secret callers); one it presents must chain to this bundle and be valid now.
    #[arg(long, env = "TA_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Serve plaintext on a non-loopback address (behind a mesh that terminates mTLS).
    /// Without TLS, only loopback addresses are allowed otherwise.
    #[arg(long, env = "TA_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,

    /// Concurrent WatchKeys streams; beyond it a new watcher gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "TA_MAX_WATCHERS", default_value_t = 1024)]
    pub max_watchers: usize,

    /// A WatchKeys stream with nothing to send sends a keepalive this often, so watchers
    /// notice a dead stream.
    #[arg(long, env = "TA_WATCH_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub watch_keepalive: Duration,

    /// A watcher that leaves a message untaken this long is dropped (it reconnects) rather
    /// than holding the server's memory.
    #[arg(long, env = "TA_WATCH_SEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub watch_send_timeout: Duration,

    /// Open connections per listener; beyond it new ones are closed at once. 1024 keeps
    /// both listeners (2 x 1024) under a container's usual file limit with room to spare,
    /// and is far above what gRPC clients need (one multiplexed connection each).
    #[arg(long, env = "TA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long a new connection has to finish the TLS handshake and send its first
    /// protocol bytes (HTTP/2 preface, HTTP/1 request). Long enough for a slow network, short
    /// enough that sockets opened and left silent cannot pile up.
    #[arg(long, env = "TA_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// A connection with no request in flight, or whose client stopped reading its
    /// responses, is closed after this long. 5 min frees what departed clients hold, while a
    /// client refreshing a token every few minutes keeps its connection (and gRPC clients
    /// reconnect transparently anyway).
    #[arg(long, env = "TA_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How often the TLS files are read and compared for a change. 10 s is small next to
    /// how early cert-manager renews, and reading three small files costs nothing.
    #[arg(long, env = "TA_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// The caller policy (TOML): who may get which tokens, and who may call admin RPCs.
    /// Reloaded when its content changes. Without it, IssueToken is open only while the
    /// gRPC listener is a loopback address; otherwise only the admin token may issue.
    #[arg(long, env = "TA_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// How often the policy file is read to notice a new content.
    #[arg(long, env = "TA_POLICY_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub policy_reload_interval: Duration,

    /// The audit log: one hash-chained JSON line per decision and admin action, appended
    /// (`-`: stderr). Check it with `token-authority audit verify PATH`.
    #[arg(long, env = "TA_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
}
