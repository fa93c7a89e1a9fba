//! The command line as clap parses it: the subcommands, and the flags of all but `serve`
//! (in `serve_args`), each with its `TA_*` environment fallback and the help users read.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::{
    serve_args::{ServeArgs, SignerKind},
    store_args::StoreArgs,
};

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
    /// Verify an audit log's chain. Exit 0 with the line count and what could not be
    /// checked; exit 1 naming the first bad line.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The audit log.
    pub(crate) path: PathBuf,

    /// The audit chain's key (as given to `serve`): checks each line's MAC, so a chain
    /// recomputed without the key is detected.
    #[arg(long, env = "TA_AUDIT_KEY_FILE")]
    pub(crate) audit_key_file: Option<PathBuf>,

    /// Accept an audit key file that group or others may read, as `serve` does with the
    /// same flag (a Kubernetes Secret volume sets such modes).
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub(crate) allow_group_readable_files: bool,

    /// The data directory of the (stopped) authority that wrote the log: its keystore holds
    /// the chain's recorded head, against which a cut tail is detected.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,

    /// The shared store (a postgres:// URL) holding the recorded head instead.
    #[arg(long, conflicts_with = "data_dir")]
    pub(crate) store: Option<String>,

    /// File holding the PostgreSQL password, when the --store URL has none.
    #[arg(long, requires = "store")]
    pub(crate) store_password_file: Option<PathBuf>,

    /// PEM file of the CAs that sign the PostgreSQL server's certificate.
    #[arg(long, requires = "store")]
    pub(crate) store_ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchMode {
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
    /// ExchangeToken: a Txn-Token for a subject token of a trusted issuer (the policy's
    /// `[txn]`), from `--subject-token-file` or, without one, from IssueToken with a
    /// `scope` claim (a policy that trusts the authority's own tokens).
    Exchange,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) mode: BenchMode,
    /// The authority's gRPC address; repeat (or separate with commas) to spread the load
    /// over several replicas, connection by connection.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub(crate) target: Vec<String>,
    /// The authority's HTTP address (JWKS modes).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) http_target: String,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Load before measuring, not recorded.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: Duration,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// gRPC connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Signing algorithm for issue/verify (default: the server's first).
    #[arg(long)]
    pub(crate) algorithm: Option<String>,
    /// Also measure, in the same run, the raw crypto ceiling of this mode (sign for issue,
    /// verify for verify) on every core with no server, and report the ratio to it.
    #[arg(long)]
    pub(crate) reference: bool,
    /// How long the reference measurement runs.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) reference_duration: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Force a key rotation (RotateKeys with force, of --algorithm or the default) this
    /// often during the measured phase, and report the latency of the requests in flight
    /// across each rotation separately. Needs --admin-token-file.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) rotate_every: Option<Duration>,
    /// The file holding the admin token, for --rotate-every.
    #[arg(long, env = "TA_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the server's certificate, for https:// targets.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, with --tls-key (a server with --client-ca).
    #[arg(long)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long)]
    pub(crate) tls_key: Option<PathBuf>,
    /// The subject IssueToken asks for (a caller under a policy may need its own name).
    #[arg(long, default_value = "bench")]
    pub(crate) subject: String,
    /// The audience IssueToken asks for and VerifyToken expects.
    #[arg(long, default_value = "bench")]
    pub(crate) audience: String,
    /// A file holding a caller token of a trusted issuer (e.g. a projected service-account
    /// token), sent as `authorization: Bearer` on the data-plane calls.
    #[arg(long, conflicts_with = "client_id")]
    pub(crate) bearer_token_file: Option<PathBuf>,
    /// A client id of the policy: with --client-secret-file, sent as `authorization: Basic`.
    #[arg(long, requires = "client_secret_file")]
    pub(crate) client_id: Option<String>,
    /// The file holding the secret of --client-id.
    #[arg(long, requires = "client_id")]
    pub(crate) client_secret_file: Option<PathBuf>,
    /// exchange: the scope asked for (and, for a minted subject token, its `scope` claim).
    #[arg(long, default_value = "bench")]
    pub(crate) scope: String,
    /// exchange: the trust domain (the policy's `[txn] trust_domain`).
    #[arg(long, default_value = "bench.internal")]
    pub(crate) trust_domain: String,
    /// exchange: a file holding the subject token (an access token of a trusted issuer).
    #[arg(long, conflicts_with = "subject_tokens")]
    pub(crate) subject_token_file: Option<PathBuf>,
    /// exchange: how many distinct subject tokens to mint and send in turn. The authority
    /// verifies each once and keeps the verdict: a pool larger than the requests of the run
    /// measures exchanges that all verify.
    #[arg(long, default_value_t = 1)]
    pub(crate) subject_tokens: usize,
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
    /// Accept a data directory or KEK file that group or others can access, as `serve
    /// --allow-group-readable-files` does (refused otherwise, naming the chmod that fixes it).
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub allow_group_readable_files: bool,
}

#[derive(Clone, Debug, Args)]
pub struct RewrapArgs {
    /// The data directory of a stopped authority (with the sled store).
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub(crate) data_dir: PathBuf,
    /// The keystore: sled in --data-dir, or the replicas' database (a running one: the
    /// change is a transaction the replicas pick up, as if made through the API).
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The KEK file: the first KEK seals; every KEK listed may unseal the current records.
    #[arg(long, env = "TA_KEK_FILE")]
    pub(crate) kek_file: PathBuf,
    /// Accept a data directory or KEK file that group or others can access, as `serve
    /// --allow-group-readable-files` does (refused otherwise, naming the chmod that fixes it).
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub(crate) allow_group_readable_files: bool,
}

#[derive(Clone, Debug, Args)]
pub struct ListArgs {
    /// The data directory of a stopped authority (with the sled store).
    #[arg(long, env = "TA_DATA_DIR", default_value = "./data")]
    pub(crate) data_dir: PathBuf,
    /// The keystore: sled in --data-dir, or the replicas' database (a running one: the
    /// change is a transaction the replicas pick up, as if made through the API).
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The KEK file the server uses (needed when the keystore is encrypted).
    #[arg(long, env = "TA_KEK_FILE")]
    pub(crate) kek_file: Option<PathBuf>,
    /// The server's publish lead, to show when the next key may sign.
    #[arg(long, env = "TA_PUBLISH_LEAD", default_value = "15m", value_parser = humantime::parse_duration)]
    pub(crate) publish_lead: Duration,
    /// Accept a data directory or KEK file that group or others can access, as `serve
    /// --allow-group-readable-files` does (refused otherwise, naming the chmod that fixes it).
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub(crate) allow_group_readable_files: bool,
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
    /// The server's signer: with `pkcs11` nothing is imported (keys born outside the token
    /// are not non-extractable).
    #[arg(long, env = "TA_SIGNER", value_enum, default_value = "process")]
    pub signer: SignerKind,
    /// Accept a data directory or KEK file that group or others can access, as `serve
    /// --allow-group-readable-files` does (refused otherwise, naming the chmod that fixes it).
    #[arg(long, env = "TA_ALLOW_GROUP_READABLE_FILES")]
    pub allow_group_readable_files: bool,
}
