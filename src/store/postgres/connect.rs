//! How a replica reaches the database: the connection settings from the URL, the `PG*`
//! variables and the password file, and TLS (rustls, verifying chain and host name).

use std::{str::FromStr, time::Duration};

use tokio_postgres::Config;

use super::{PgSettings, CONNECT_TIMEOUT, LOCK_TIMEOUT};
use crate::store::{Cause, Context, StoreError};

/// How long the server lets one of our sessions sit idle inside a transaction before it
/// ends the session, and so releases the change lock a frozen replica (stopped, paused,
/// cut off) would otherwise hold for as long as it is frozen. A healthy change is idle only
/// while its plan generates keys (RSA-2048: 110 ms median, 340 ms at most over 40 on the
/// test machine), far below it.
pub(super) const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

/// TCP keepalives, both ways: a replica notices a database host that vanished, and the
/// server a replica's, within about 25 s rather than the kernel's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// The session settings every connection starts with, as startup options (`-c`); any the
/// URL's own `options` give come after, and win.
fn session_options() -> String {
    format!(
        "-c lock_timeout={LOCK_TIMEOUT} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT} \
         -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={KEEPALIVE_RETRIES}",
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
    )
}

/// The connection settings: the URL, then the `PG*` variables for what it leaves out, the
/// password from the URL, the password file or `PGPASSWORD`, in that order.
pub(super) fn client_config(settings: &PgSettings) -> Result<Config, StoreError> {
    let env = &settings.libpq;
    let invalid = |reason: String| StoreError::Unopenable {
        path: "the --store URL".into(),
        reason,
    };
    // libpq's verifying modes: rustls always checks the chain and the host name, so each
    // is `require` to tokio-postgres, which knows only disable/prefer/require.
    let mut url = settings.url.clone();
    for verifying in ["sslmode=verify-full", "sslmode=verify-ca"] {
        url = url.replace(verifying, "sslmode=require");
    }
    let mut config = Config::from_str(&url).map_err(|e| StoreError::Open {
        path: "the --store URL".into(),
        source: e.into(),
    })?;
    if !settings.url.contains("sslmode=") {
        match env.sslmode.as_deref() {
            None | Some("prefer") => {}
            Some("disable") => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            }
            Some("require" | "verify-ca" | "verify-full") => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
            }
            Some(other) => return Err(invalid(format!("PGSSLMODE={other} is not supported"))),
        }
    }
    if config.get_hosts().is_empty() {
        config.host(env.host.as_deref().unwrap_or("localhost"));
    }
    if config.get_ports().is_empty() {
        if let Some(port) = &env.port {
            config.port(
                port.parse()
                    .map_err(|_| invalid(format!("PGPORT={port} is not a port")))?,
            );
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = &env.user {
            config.user(user);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(dbname) = &env.dbname {
            config.dbname(dbname);
        }
    }
    if config.get_password().is_none() {
        if let Some(path) = &settings.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: Context::new("cannot read the store password file", e).into(),
            })?;
            config.password(text.trim_end_matches(['\r', '\n']));
        } else if let Some(password) = &env.password {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("token-authority");
    let options = match config.get_options() {
        Some(own) => format!("{} {own}", session_options()),
        None => session_options(),
    };
    config
        .options(options)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    Ok(config)
}

/// rustls on ring, with the CA file's roots or the public web roots.
pub(super) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let invalid = |source: Cause| StoreError::Open {
                path: path.display().to_string(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(e.into()))? {
                roots
                    .add(cert.map_err(|e| invalid(e.into()))?)
                    .map_err(|e| invalid(e.into()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    rustls::ClientConfig::builder_with_provider(token_authority_jose::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Open {
            path: "TLS to the database".into(),
            source: e.into(),
        })
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PgEnvironment;

    fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: url.into(),
            password_file: None,
            ca_file: None,
            libpq: PgEnvironment::default(),
            host_name: None,
        }
    }

    fn with_env(url: &str, env: impl Fn(&str) -> Option<String>) -> PgSettings {
        PgSettings {
            libpq: PgEnvironment::read(env),
            ..settings(url)
        }
    }

    #[test]
    fn the_url_wins_and_pg_variables_fill_the_gaps() {
        let env = |name: &str| match name {
            "PGHOST" => Some("db.internal".to_owned()),
            "PGPORT" => Some("6432".to_owned()),
            "PGUSER" => Some("authority".to_owned()),
            "PGPASSWORD" => Some("from-env".to_owned()),
            "PGDATABASE" => Some("keys".to_owned()),
            "PGSSLMODE" => Some("verify-full".to_owned()),
            _ => None,
        };
        let config = client_config(&with_env("postgres://", env)).unwrap();
        assert_eq!(config.get_user(), Some("authority"));
        assert_eq!(config.get_dbname(), Some("keys"));
        assert_eq!(config.get_ports(), [6432]);
        assert_eq!(config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let config = client_config(&with_env(
            "postgres://me:secret@h:5432/db?sslmode=verify-full",
            env,
        ))
        .unwrap();
        assert_eq!(config.get_user(), Some("me"));
        assert_eq!(config.get_password(), Some(&b"secret"[..]));
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn the_ca_file_flag_comes_before_pgsslrootcert() {
        let env = |name: &str| (name == "PGSSLROOTCERT").then(|| "/env/ca.pem".to_owned());
        let from_env = with_env("postgres://me@h/db", env);
        assert_eq!(from_env.roots(), Some(std::path::Path::new("/env/ca.pem")));
        let flagged = PgSettings {
            ca_file: Some("/flag/ca.pem".into()),
            ..from_env
        };
        assert_eq!(flagged.roots(), Some(std::path::Path::new("/flag/ca.pem")));
        assert_eq!(settings("postgres://me@h/db").roots(), None);
    }

    #[test]
    fn a_password_file_comes_before_pgpassword() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let env = |name: &str| (name == "PGPASSWORD").then(|| "from-env".to_owned());
        let config = client_config(&PgSettings {
            password_file: Some(file),
            ..with_env("postgres://me@h/db", env)
        })
        .unwrap();
        assert_eq!(config.get_password(), Some(&b"from-file"[..]));
    }

    #[test]
    fn sessions_end_idle_transactions_and_the_urls_options_win() {
        let config = client_config(&settings("postgres://me@h/db")).unwrap();
        let options = config.get_options().unwrap();
        assert!(
            options.contains("-c idle_in_transaction_session_timeout=5s"),
            "{options}"
        );
        assert!(options.contains("-c lock_timeout=8s"), "{options}");
        assert!(config.get_keepalives());
        let config = client_config(&settings(
            "postgres://me@h/db?options=-c%20lock_timeout%3D1s",
        ))
        .unwrap();
        assert!(
            config
                .get_options()
                .unwrap()
                .ends_with(" -c lock_timeout=1s"),
            "{:?}",
            config.get_options()
        );
    }
}
