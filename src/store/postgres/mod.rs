//! The PostgreSQL keystore: one key set shared by several replicas, the only module that
//! names tokio-postgres, deadpool-postgres and their TLS.
//!
//! The database is the source of truth and every replica holds a copy in memory. A change is
//! one transaction that first takes a transaction-scoped advisory lock, then re-reads the
//! records and plans from them, so two replicas never plan from the same state: the second
//! waits, re-reads what the first committed, and finds nothing left to do. Every commit bumps
//! a generation counter and sends a notification carrying it; replicas LISTEN on a dedicated
//! connection (a pooled one drops notifications) and re-read the generation periodically in
//! case one is lost.
//!
//! Private keys are sealed under the KEK before they leave the process, the kid and
//! algorithm bound in, so the database never holds a usable private key. There are no
//! per-key data keys here: a data key stored in the same database as its ciphertext adds
//! nothing, because every copy of one (dead tuples, WAL, backups) sits next to a copy of the
//! other. A revocation overwrites the sealed key with NULL and a deletion removes the row;
//! PostgreSQL drops the old tuple versions at VACUUM, while WAL archives and backups keep
//! them as long as they are retained, still sealed under the KEK. Retiring a KEK from the
//! KEK file once everything is rewrapped is what shreds them.

use std::{path::PathBuf, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

pub(crate) mod audit;
mod connect;
mod errors;
mod history;
mod listen;
mod read;
mod record;
mod replicas;
mod schema;
pub(crate) mod status;

use self::connect::{client_config, tls_config};
pub use self::errors::DbFailure;
use self::history::{new_lineage, Manifest, HISTORY_KEPT};
pub use self::history::{Position, RefusedRow};
use self::read::Read;
pub use self::replicas::Confirmations;
use super::{kek::Keks, Change, StoreError};
use crate::authority::keys::KeyRecord;

/// Advisory lock ids: one serialises schema migrations, one serialises key-set changes.
/// Transaction-scoped, so a pooled connection never keeps one after its transaction.
pub(super) const MIGRATION_LOCK: i64 = 0x7461_6d69_6772_0001;
pub const CHANGE_LOCK: i64 = 0x7461_6b65_7973_0001;

/// The channel every commit notifies, with the new generation as payload.
pub(crate) const CHANNEL: &str = "ta_keys";
/// The channel every status list change notifies (a new block, a status set, a purge).
pub(crate) const STATUS_CHANNEL: &str = "ta_status";
/// Serialises status list changes: block reservations and status writes.
pub(crate) const STATUS_LOCK: i64 = 0x7461_7374_6174_0001;

/// How long a change waits for another replica's change before giving up: the bound on an
/// emergency RevokeKey's wait. Above the session's idle-in-transaction timeout
/// (`connect::IDLE_IN_TRANSACTION_TIMEOUT`), so a change queued behind a frozen holder gets
/// the lock once the server has ended that holder's transaction.
const LOCK_TIMEOUT: &str = "8s";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the database. The configuration builds it (flags, then libpq's
/// environment); the store reads no environment of its own.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// A `postgres://` URL; `sslmode=verify-full` (or `verify-ca`, `require`) asks for TLS.
    pub url: String,
    /// A file holding the password, when the URL has none.
    pub password_file: Option<PathBuf>,
    /// PEM roots for the server's certificate; the public web roots when absent.
    pub ca_file: Option<PathBuf>,
    /// What the `PG*` variables say, for what the URL leaves out.
    pub libpq: PgEnvironment,
    /// This process's host name (`HOSTNAME`: the pod's), naming it among the replicas.
    pub host_name: Option<String>,
}

/// libpq's environment variables the store follows (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGDATABASE`, `PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`), empty ones as unset.
#[derive(Clone, Default)]
pub struct PgEnvironment {
    pub(crate) host: Option<String>,
    pub(crate) port: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) dbname: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<PathBuf>,
}

impl PgSettings {
    /// The CA file that signs the server's certificate: `--store-ca-file`, else
    /// `PGSSLROOTCERT`; `None` for the public web roots.
    pub(crate) fn roots(&self) -> Option<&std::path::Path> {
        self.ca_file
            .as_deref()
            .or(self.libpq.sslrootcert.as_deref())
    }
}

impl PgEnvironment {
    /// Reads the variables through `var` (the process environment, or a test's).
    pub(crate) fn read(var: impl Fn(&str) -> Option<String>) -> PgEnvironment {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        PgEnvironment {
            host: var("PGHOST"),
            port: var("PGPORT"),
            user: var("PGUSER"),
            dbname: var("PGDATABASE"),
            password: var("PGPASSWORD"),
            sslmode: var("PGSSLMODE"),
            sslrootcert: var("PGSSLROOTCERT").map(PathBuf::from),
        }
    }
}

/// Never the password.
impl std::fmt::Debug for PgEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEnvironment")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "..."))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

pub struct PgStore {
    pool: Pool,
    config: Config,
    tls: MakeRustlsConnect,
    keks: Keks,
    /// The database as shown in messages: host, port and name, never the password.
    shown: String,
    /// This process among the replicas (`ta_replicas`): its host name and a random part.
    replica: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.shown)
            .field("keks", &self.keks)
            .finish_non_exhaustive()
    }
}

/// The state a read or a change left the store in.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) position: Position,
    /// The rows that load, in the order every replica keeps.
    pub(crate) records: Vec<KeyRecord>,
    /// The rows that do not (each named, with why), left as they are.
    pub(crate) refused: Vec<RefusedRow>,
    /// Whether the database's history passes through the position the reader held: false
    /// when it went back (a restore) or is another database's. `None` when not asked.
    pub(crate) follows_held: Option<bool>,
}

/// Where a change left the store (also when it wrote nothing): its position, and the rows
/// its read refused.
#[derive(Debug)]
pub struct Settled {
    pub(crate) position: Position,
    pub(crate) refused: Vec<RefusedRow>,
}

impl PgStore {
    /// Builds the pool (no connection yet) from the settings.
    pub fn new(settings: &PgSettings, keks: Keks) -> Result<PgStore, StoreError> {
        let config = client_config(settings)?;
        let shown = shown(&config);
        let tls = MakeRustlsConnect::new(tls_config(settings.roots())?);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: e.into(),
            })?;
        let host = settings.host_name.as_deref().unwrap_or("replica");
        let random =
            token_authority_jose::crypto::random_bytes(6).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: e.into(),
            })?;
        Ok(PgStore {
            pool,
            config,
            tls,
            keks,
            shown,
            replica: format!("{host}/{}", token_authority_jose::b64::encode(random)),
        })
    }

    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// A failed database call, classified (`errors`): transient, permanent, or the change
    /// lock held elsewhere.
    fn unavailable(&self, error: impl Into<DbFailure>) -> StoreError {
        errors::classify(&self.shown, error.into())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.unavailable(e))
    }

    /// One change: lock, re-read, plan from what was read, write, move the position on
    /// (generation, lineage, manifest), notify, commit. Returns the plan's value and the
    /// position now current (the new one if something was written). The plan runs on a blocking thread (it may generate keys)
    /// while the transaction waits.
    pub(crate) async fn transact<T, E, P>(&self, plan: P) -> Result<(T, Settled), E>
    where
        P: FnOnce(&[KeyRecord]) -> Result<(T, Change), E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGE_LOCK])
            .await
            .map_err(|e| self.unavailable(e))?;
        // The plan sees the rows that load; refused ones stay as they are, still listed
        // in the manifest as what they should be, so they stay refused until replaced.
        let Read {
            snapshot:
                Snapshot {
                    position,
                    records,
                    refused,
                    ..
                },
            mut manifest,
            present,
        } = self.read(&tx).await?;
        let (value, change) = tokio::task::spawn_blocking(move || plan(&records))
            .await
            .map_err(StoreError::Task)??;
        if change.is_empty() {
            // Dropping the transaction rolls it back and releases the lock.
            return Ok((value, Settled { position, refused }));
        }
        // What a row deleted by hand was is of no use any more.
        manifest.rows.retain(|kid, _| present.contains(kid));
        let mut encoded = Vec::with_capacity(change.changed.len());
        for record in &change.changed {
            let text = self.encode(record)?;
            manifest
                .rows
                .insert(record.kid.clone(), Manifest::digest(&text));
            encoded.push((record.kid.as_str(), text));
        }
        for (kid, text) in &encoded {
            tx.execute(
                "INSERT INTO ta_keys (kid, record) VALUES ($1, $2)
                 ON CONFLICT (kid) DO UPDATE SET record = EXCLUDED.record",
                &[kid, text],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        for kid in &change.deleted {
            manifest.rows.remove(kid);
            tx.execute("DELETE FROM ta_keys WHERE kid = $1", &[kid])
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        let not_applied =
            |e: token_authority_jose::crypto::CryptoError| StoreError::NotApplied(e.into());
        let next = Position {
            database_id: position.database_id,
            generation: position.generation + 1,
            lineage: new_lineage().map_err(not_applied)?,
        };
        let sealed = manifest.seal(&self.keks, &next).map_err(not_applied)?;
        let generation = i64::try_from(next.generation).unwrap_or(i64::MAX);
        tx.execute(
            "UPDATE ta_generation SET generation = $1, lineage = $2, manifest = $3",
            &[&generation, &next.lineage, &sealed],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        tx.execute(
            "INSERT INTO ta_history (generation, lineage) VALUES ($1, $2)
             ON CONFLICT (generation) DO UPDATE SET lineage = EXCLUDED.lineage",
            &[&generation, &next.lineage],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        tx.execute(
            "DELETE FROM ta_history WHERE generation <= $1",
            &[&(generation - HISTORY_KEPT)],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        // Delivered to listeners only when (and if) the transaction commits.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &next.generation.to_string()],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        tx.commit().await.map_err(|e| StoreError::CommitUnknown {
            database: self.shown.clone(),
            source: e.into(),
        })?;
        Ok((
            value,
            Settled {
                position: next,
                refused,
            },
        ))
    }
}

/// The database as messages show it: its name and hosts, never the password.
fn shown(config: &Config) -> String {
    format!(
        "postgres database {:?} on {}",
        config.get_dbname().unwrap_or(""),
        config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    )
}
