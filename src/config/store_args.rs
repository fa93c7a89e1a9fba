//! Where the keys live, as `serve` and the `keys` commands take it: the sled store in the
//! data directory, or a shared PostgreSQL store and its `PG*` environment.

use std::path::{Path, PathBuf};

use clap::Args;

use super::ConfigError;
use crate::store::{PgEnvironment, PgSettings};

/// Where the keys live, as `serve` and the `keys` commands take it.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Where the keys live: `sled` (the embedded store in --data-dir, the default) or a
    /// `postgres://user@host:5432/db?sslmode=verify-full` URL shared by several replicas
    /// (needs --kek-file; the PG* environment variables fill what the URL leaves out).
    #[arg(long, env = "TA_STORE", default_value = "sled")]
    pub(crate) store: String,

    /// File holding the PostgreSQL password, when the --store URL has none (else PGPASSWORD).
    #[arg(long, env = "TA_STORE_PASSWORD_FILE")]
    pub(crate) store_password_file: Option<PathBuf>,

    /// PEM file of the CAs that sign the PostgreSQL server's certificate (else PGSSLROOTCERT,
    /// else the public web roots).
    #[arg(long, env = "TA_STORE_CA_FILE")]
    pub(crate) store_ca_file: Option<PathBuf>,
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
    pub(crate) fn shared(
        &self,
        kek_file: Option<&Path>,
    ) -> Result<Option<PgSettings>, ConfigError> {
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
                Ok(Some(pg_settings(
                    url,
                    self.store_password_file.as_ref(),
                    self.store_ca_file.as_ref(),
                )))
            }
            _ => Err(ConfigError(
                "--store must be `sled` or a postgres:// URL".into(),
            )),
        }
    }
}

/// A shared store's settings: the flags, then what this process's `PG*` environment
/// variables say (the one place they are read).
pub(crate) fn pg_settings(
    url: &str,
    password_file: Option<&PathBuf>,
    ca_file: Option<&PathBuf>,
) -> PgSettings {
    PgSettings {
        url: url.to_owned(),
        password_file: password_file.cloned(),
        ca_file: ca_file.cloned(),
        libpq: PgEnvironment::read(|name| std::env::var(name).ok()),
        host_name: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
    }
}
