//! The command line: flags with `TA_*` environment fallbacks, parsed by clap and then
//! checked as a whole, so a bad value stops the process with one clear line before any
//! port is bound. The flags are in `args`; the checked `Config` of `serve` is here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod args;
pub(crate) mod read;
mod serve_args;
mod store_args;

pub use self::{args::*, serve_args::*, store_args::*};
use crate::{
    store::PgSettings,
    telemetry::{
        traces::{CollectorHeaders, DEFAULT_QUEUE_CAPACITY, MAX_QUEUE_CAPACITY},
        TraceSettings,
    },
};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

/// The TLS files of `serve`; both listeners use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
}

/// What each listener enforces on its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerLimits {
    pub(crate) max_connections: usize,
    /// Open connections one client address may hold (an IPv6 client: its /64).
    pub(crate) max_connections_per_ip: usize,
    /// Failed authentications one client address may have in a burst; 0: no limit.
    pub(crate) auth_failures_per_ip: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// A connection older than this is asked to close (GOAWAY); the client reconnects.
    pub(crate) max_connection_age: Duration,
}

/// The checked configuration of `serve`. Durations are whole seconds.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub issuer: Option<String>,
    pub(crate) admin_token_file: Option<PathBuf>,
    pub(crate) kek_file: Option<PathBuf>,
    /// The PKCS#11 token that makes and holds the keys; `None` for the in-process signer.
    pub(crate) pkcs11: Option<Pkcs11Files>,
    /// `None`: sled in the data directory.
    pub(crate) store: Option<PgSettings>,
    pub(crate) store_sync_interval: Duration,
    pub(crate) allow_group_readable_files: bool,
    pub(crate) default_ttl: u64,
    pub(crate) max_ttl: u64,
    pub(crate) leeway: u64,
    pub(crate) jwks_max_age: u64,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) publish_lead: u64,
    pub(crate) rotation_period: u64,
    pub(crate) shutdown_grace: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) log_format: LogFormat,
    /// Where spans are exported; `None`: no traces.
    pub(crate) traces: Option<TraceSettings>,
    pub(crate) max_token_bytes: usize,
    /// TLS on both listeners; `None` serves plaintext.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) tls_reload_interval: Duration,
    pub(crate) limits: ListenerLimits,
    pub(crate) policy_file: Option<PathBuf>,
    pub(crate) policy_reload_interval: Duration,
    pub(crate) audit_log: Option<PathBuf>,
    pub(crate) audit_key_file: Option<PathBuf>,
    pub(crate) audit_sync: bool,
    pub(crate) watch: WatchSettings,
    pub(crate) status: StatusConfig,
    /// What the server reads the time from: the system clock; tests that run the server
    /// on paused time set a `Clock::tokio`.
    pub(crate) clock: Clock,
}

/// The status lists' flags, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// `None`: `--status-min-ttl off`, no new token gets a status.
    pub min_ttl: Option<u64>,
    pub list_size: u64,
    pub list_ttl: u64,
}

/// The largest list: 16,777,216 statuses are 4 MiB in memory and on the wire at worst.
const MAX_STATUS_LIST_SIZE: u64 = 1 << 24;

/// The limits of WatchKeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchSettings {
    /// Concurrent watchers; beyond it a new one gets RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// Concurrent watchers from one client address (an IPv6 client: its /64).
    pub max_watchers_per_ip: usize,
    /// A keepalive is sent when nothing else was for this long.
    pub keepalive: Duration,
    /// How long a message may wait for a watcher to take it before the watcher is dropped.
    pub send_timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Far above any file-descriptor limit; keeps the listener's permit count in range.
pub(crate) const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

/// The longest `--max-ttl` (`serve` and `keys import`): 366 days.
pub(crate) const MAX_TTL_CEILING: u64 = 366 * 24 * 3600;

/// The longest rotation period, publish lead and JWKS max-age: 10 years.
pub(crate) const LONG_DURATION_CEILING: u64 = 10 * 366 * 24 * 3600;

/// Tokens longer than this are rejected before parsing.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Config, ConfigError> {
        let seconds = |flag: &str, value: Duration, min: u64| -> Result<u64, ConfigError> {
            if value.subsec_nanos() != 0 {
                return Err(ConfigError(format!(
                    "{flag} must be a whole number of seconds"
                )));
            }
            if value.as_secs() < min {
                return Err(ConfigError(format!("{flag} must be at least {min}s")));
            }
            Ok(value.as_secs())
        };
        let default_ttl = seconds("--default-ttl", args.default_ttl, 1)?;
        let max_ttl = seconds("--max-ttl", args.max_ttl, 1)?;
        let leeway = seconds("--leeway", args.leeway, 0)?;
        let jwks_max_age = seconds("--jwks-max-age", args.jwks_max_age, 0)?;
        let publish_lead = seconds("--publish-lead", args.publish_lead, 0)?;
        let rotation_period = seconds("--rotation-period", args.rotation_period, 1)?;
        if publish_lead > 0 && publish_lead < jwks_max_age {
            return Err(ConfigError(format!(
                "--publish-lead ({publish_lead}s) is shorter than --jwks-max-age ({jwks_max_age}s): verifiers could miss a new key"
            )));
        }
        if args.max_watchers == 0 || args.max_watchers > MAX_CONNECTIONS_CEILING {
            return Err(ConfigError(format!(
                "--max-watchers must be between 1 and {MAX_CONNECTIONS_CEILING}"
            )));
        }
        if args
            .max_watchers_per_ip
            .is_some_and(|per_ip| !(1..=args.max_watchers).contains(&per_ip))
        {
            return Err(ConfigError(
                "--max-watchers-per-ip must be between 1 and --max-watchers".into(),
            ));
        }
        if args.watch_keepalive < Duration::from_millis(100)
            || args.watch_send_timeout < Duration::from_millis(100)
        {
            return Err(ConfigError(
                "--watch-keepalive and --watch-send-timeout must be at least 100ms".into(),
            ));
        }
        if args.policy_reload_interval < Duration::from_millis(100) {
            return Err(ConfigError(
                "--policy-reload-interval must be at least 100ms".into(),
            ));
        }
        if default_ttl > max_ttl {
            return Err(ConfigError(format!(
                "--default-ttl ({default_ttl}s) is above --max-ttl ({max_ttl}s)"
            )));
        }
        if max_ttl > MAX_TTL_CEILING {
            return Err(ConfigError("--max-ttl must be at most 366 days".into()));
        }
        // Far beyond any sensible setting, and far enough below u64 seconds that times worked
        // out from them (an activation, a deletion, a list's `exp`) cannot overflow.
        for (flag, value) in [
            ("--rotation-period", rotation_period),
            ("--publish-lead", publish_lead),
            ("--jwks-max-age", jwks_max_age),
        ] {
            if value > LONG_DURATION_CEILING {
                return Err(ConfigError(format!("{flag} must be at most 10 years")));
            }
        }
        if leeway > 3600 {
            return Err(ConfigError("--leeway must be at most 1h".into()));
        }
        let mut algorithms = Vec::new();
        for name in &args.algorithms {
            let name = name.trim();
            let alg = Algorithm::from_name(name).ok_or_else(|| {
                ConfigError(format!(
                    "--algorithms: {name:?} is not one of RS256, PS256, ES256, EdDSA (names are case-sensitive)"
                ))
            })?;
            if algorithms.contains(&alg) {
                return Err(ConfigError(format!("--algorithms names {name} twice")));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(ConfigError("--algorithms names no algorithm".into()));
        }
        if let Some(issuer) = &args.issuer {
            let scheme_ok = issuer.starts_with("https://") || issuer.starts_with("http://");
            if !scheme_ok || issuer.chars().any(char::is_whitespace) || issuer.ends_with('/') {
                return Err(ConfigError(format!(
                    "--issuer {issuer:?} must be an http(s) URL without whitespace or a trailing slash"
                )));
            }
        }
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.client_ca,
            }),
            (Some(_), None) => return Err(ConfigError("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => return Err(ConfigError("--tls-key needs --tls-cert".into())),
            (None, None) if args.client_ca.is_some() => {
                return Err(ConfigError(
                    "--client-ca needs --tls-cert and --tls-key".into(),
                ))
            }
            (None, None) => None,
        };
        if tls.is_none() && !args.allow_plaintext {
            for (flag, addr) in [
                ("--grpc-listen", args.grpc_listen),
                ("--http-listen", args.http_listen),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError(format!(
                        "{flag} {addr} is not a loopback address: give --tls-cert and --tls-key, \
                         or --allow-plaintext when a proxy or mesh terminates TLS"
                    )));
                }
            }
        }
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&args.max_connections) {
            return Err(ConfigError(format!(
                "--max-connections must be between 1 and {MAX_CONNECTIONS_CEILING}"
            )));
        }
        if args
            .max_connections_per_ip
            .is_some_and(|per_ip| !(1..=args.max_connections).contains(&per_ip))
        {
            return Err(ConfigError(
                "--max-connections-per-ip must be between 1 and --max-connections".into(),
            ));
        }
        for (flag, value) in [
            ("--handshake-timeout", args.handshake_timeout),
            ("--idle-timeout", args.idle_timeout),
            ("--max-connection-age", args.max_connection_age),
            ("--tls-reload-interval", args.tls_reload_interval),
        ] {
            if value < Duration::from_millis(100) {
                return Err(ConfigError(format!("{flag} must be at least 100ms")));
            }
        }
        let store = args.store.shared(args.kek_file.as_deref())?;
        if store.is_some() && args.admin_token_file.is_none() {
            return Err(ConfigError(
                "--store postgres://... needs --admin-token-file: every replica must accept the same admin token, and a replica keeps nothing on disk to generate one into".into(),
            ));
        }
        let size = args.status_list_size;
        if !(16..=MAX_STATUS_LIST_SIZE).contains(&size) || !size.is_multiple_of(4) {
            return Err(ConfigError(format!(
                "--status-list-size must be a multiple of 4 between 16 and {MAX_STATUS_LIST_SIZE}"
            )));
        }
        let status = StatusConfig {
            min_ttl: args
                .status_min_ttl
                .0
                .map(|min| seconds("--status-min-ttl", min, 0))
                .transpose()?,
            list_size: size,
            list_ttl: seconds("--status-list-ttl", args.status_list_ttl, 1)?,
        };
        if status.list_ttl > 7 * 24 * 3600 {
            return Err(ConfigError(
                "--status-list-ttl must be at most 7 days: a revoked token would be accepted for as long by verifiers holding the list".into(),
            ));
        }
        if args.store_sync_interval < Duration::from_millis(100) {
            return Err(ConfigError(
                "--store-sync-interval must be at least 100ms".into(),
            ));
        }
        Ok(Config {
            data_dir: args.data_dir,
            store,
            store_sync_interval: args.store_sync_interval,
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            issuer: args.issuer,
            admin_token_file: args.admin_token_file,
            kek_file: args.kek_file,
            pkcs11: args.signer.pkcs11()?,
            allow_group_readable_files: args.allow_group_readable_files,
            default_ttl,
            max_ttl,
            leeway,
            jwks_max_age,
            algorithms,
            publish_lead,
            rotation_period,
            shutdown_grace: args.shutdown_grace,
            shutdown_delay: args.shutdown_delay,
            log_format: args.log_format,
            traces: trace_settings(args.otlp_endpoint, args.otlp_ca_file, |name| {
                std::env::var(name).ok()
            })?,
            max_token_bytes: MAX_TOKEN_BYTES,
            tls,
            tls_reload_interval: args.tls_reload_interval,
            limits: ListenerLimits {
                max_connections: args.max_connections,
                max_connections_per_ip: args
                    .max_connections_per_ip
                    .unwrap_or(args.max_connections.div_ceil(4)),
                auth_failures_per_ip: args.auth_failures_per_ip,
                handshake_timeout: args.handshake_timeout,
                idle_timeout: args.idle_timeout,
                max_connection_age: args.max_connection_age,
            },
            policy_file: args.policy_file,
            policy_reload_interval: args.policy_reload_interval,
            audit_log: args.audit_log,
            audit_key_file: args.audit_key_file,
            audit_sync: args.audit_sync,
            watch: WatchSettings {
                max_watchers: args.max_watchers,
                max_watchers_per_ip: args
                    .max_watchers_per_ip
                    .unwrap_or(args.max_watchers.div_ceil(4)),
                keepalive: args.watch_keepalive,
                send_timeout: args.watch_send_timeout,
            },
            status,
            clock: Clock::system(),
        })
    }
}

#[cfg(test)]
mod tests;

/// The collector from the flags, else the standard `OTEL_*` variables (the traces-specific
/// one first); `OTEL_SDK_DISABLED=true` turns traces off. `OTEL_BSP_MAX_QUEUE_SIZE` bounds
/// the spans waiting for export.
pub(crate) fn trace_settings(
    endpoint: Option<String>,
    ca_file: Option<PathBuf>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TraceSettings>, ConfigError> {
    // The first of `names` set (the traces-specific one first), with its name.
    let from_env = |names: [&'static str; 2]| {
        names.into_iter().find_map(|name| {
            env(name)
                .filter(|value| !value.is_empty())
                .map(|value| (name, value))
        })
    };
    if env("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let Some(endpoint) = endpoint.or_else(|| {
        from_env([
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ])
        .map(|(_, value)| value)
    }) else {
        return Ok(None);
    };
    // Credentials in the URL would be logged with it (and gRPC sends none from there): they
    // go in OTEL_EXPORTER_OTLP_HEADERS. Said without echoing the URL.
    let authority = endpoint.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if authority.contains('@') {
        return Err(ConfigError(
            "--otlp-endpoint carries credentials (user:password@): give the collector as http(s)://host:port, and its credentials in OTEL_EXPORTER_OTLP_HEADERS".into(),
        ));
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(ConfigError(format!(
            "--otlp-endpoint {endpoint:?}: give the collector as http://host:port or https://host:port"
        )));
    }
    // The variables may be set for every signal and every exporter at once: a certificate
    // from them means nothing to an http:// collector, while the flag asks for TLS.
    let ca_file = ca_file.or_else(|| {
        from_env([
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ])
        .filter(|_| endpoint.starts_with("https://"))
        .map(|(_, value)| PathBuf::from(value))
    });
    if ca_file.is_some() && !endpoint.starts_with("https://") {
        return Err(ConfigError(format!(
            "--otlp-ca-file needs an https:// collector, not {endpoint:?}"
        )));
    }
    let queue_capacity = match env("OTEL_BSP_MAX_QUEUE_SIZE").filter(|value| !value.is_empty()) {
        None => DEFAULT_QUEUE_CAPACITY,
        Some(value) => value
            .parse()
            .ok()
            .filter(|capacity| (1..=MAX_QUEUE_CAPACITY).contains(capacity))
            .ok_or_else(|| {
                ConfigError(format!(
                    "OTEL_BSP_MAX_QUEUE_SIZE {value:?}: give a number of spans from 1 to {MAX_QUEUE_CAPACITY}"
                ))
            })?,
    };
    let headers = match from_env([
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ]) {
        None => CollectorHeaders::default(),
        Some((name, value)) => CollectorHeaders::parse(name, &value).map_err(ConfigError)?,
    };
    // Spans go uncompressed: a collector on the cluster's network gains little from gzip,
    // and the server's CPU would pay for it on every batch.
    if let Some((name, value)) = from_env([
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ])
    .filter(|(_, value)| !value.eq_ignore_ascii_case("none"))
    {
        return Err(ConfigError(format!(
            "{name} {value:?}: spans are sent uncompressed; set it to none or unset it"
        )));
    }
    check_sdk_variables(&env)?;
    Ok(Some(TraceSettings {
        endpoint,
        ca_file,
        queue_capacity,
        headers,
    }))
}

/// The samplers `OTEL_TRACES_SAMPLER` may name (the SDK's, but for remote ones).
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The variables the SDK reads for itself, checked first: it would take a wrong value
/// without a word (a sampler mistyped samples every trace; a schedule delay of 0 has the
/// export thread spin on a core).
fn check_sdk_variables(env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some(value) = set("OTEL_BSP_SCHEDULE_DELAY") {
        if !value.parse::<u64>().is_ok_and(|ms| ms >= 1) {
            return Err(ConfigError(format!(
                "OTEL_BSP_SCHEDULE_DELAY {value:?}: give the milliseconds between exports, at least 1"
            )));
        }
    }
    let sampler = set("OTEL_TRACES_SAMPLER");
    if let Some(value) = &sampler {
        if !SAMPLERS.contains(&value.as_str()) {
            return Err(ConfigError(format!(
                "OTEL_TRACES_SAMPLER {value:?}: give one of {}",
                SAMPLERS.join(", ")
            )));
        }
    }
    if sampler
        .as_deref()
        .is_some_and(|s| s.ends_with("traceidratio"))
    {
        if let Some(value) = set("OTEL_TRACES_SAMPLER_ARG") {
            if !value
                .parse::<f64>()
                .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
            {
                return Err(ConfigError(format!(
                    "OTEL_TRACES_SAMPLER_ARG {value:?}: give the share of traces to sample, from 0 to 1"
                )));
            }
        }
    }
    Ok(())
}
