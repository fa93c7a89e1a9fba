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

pub mod audit;
mod connect;
mod errors;
mod listen;
mod record;

use self::connect::{client_config, tls_config};
use super::{kek::Keks, Change, StoreError};
use crate::keys::KeyRecord;

/// The schema this binary knows, in order; the version of a migration is its index + 1.
/// Applied at start, each in the same transaction as its row in `ta_schema_version`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE ta_generation (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        generation bigint NOT NULL
    );
    INSERT INTO ta_generation (singleton, generation) VALUES (true, 0);
    CREATE TABLE ta_keys (
        kid text PRIMARY KEY,
        record text NOT NULL
    );
",
    "
    CREATE TABLE ta_audit_heads (
        file text PRIMARY KEY,
        head text NOT NULL
    );
",
];

/// Advisory lock ids: one serialises schema migrations, one serialises key-set changes.
/// Transaction-scoped, so a pooled connection never keeps one after its transaction.
const MIGRATION_LOCK: i64 = 0x7461_6d69_6772_0001;
pub const CHANGE_LOCK: i64 = 0x7461_6b65_7973_0001;

/// The channel every commit notifies, with the new generation as payload.
pub const CHANNEL: &str = "ta_keys";

/// How long a change waits for another replica's change before giving up: the bound on an
/// emergency RevokeKey's wait. Above the session's idle-in-transaction timeout
/// (`connect::IDLE_IN_TRANSACTION_TIMEOUT`), so a change queued behind a frozen holder gets
/// the lock once the server has ended that holder's transaction.
const LOCK_TIMEOUT: &str = "8s";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the database.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// A `postgres://` URL; `sslmode=verify-full` (or `verify-ca`, `require`) asks for TLS.
    pub url: String,
    /// A file holding the password, when the URL has none.
    pub password_file: Option<PathBuf>,
    /// PEM roots for the server's certificate; the public web roots when absent.
    pub ca_file: Option<PathBuf>,
}

pub struct PgStore {
    pool: Pool,
    config: Config,
    tls: MakeRustlsConnect,
    keks: Keks,
    /// The database as shown in messages: host, port and name, never the password.
    shown: String,
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
    pub generation: u64,
    pub records: Vec<KeyRecord>,
}

impl PgStore {
    /// Builds the pool (no connection yet) from the settings and the `PG*` environment.
    pub fn new(settings: &PgSettings, keks: Keks) -> Result<PgStore, StoreError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let config = client_config(settings, &env)?;
        let shown = format!(
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
        );
        let ca = settings
            .ca_file
            .clone()
            .or_else(|| env("PGSSLROOTCERT").map(PathBuf::from));
        let tls = MakeRustlsConnect::new(tls_config(ca.as_deref())?);
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
                reason: e.to_string(),
            })?;
        Ok(PgStore {
            pool,
            config,
            tls,
            keks,
            shown,
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A failed database call, classified (`errors`): transient, permanent, or the change
    /// lock held elsewhere.
    fn unavailable(&self, error: impl std::fmt::Display + Send + 'static) -> StoreError {
        let text = error.to_string();
        errors::classify(&self.shown, &error, text)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.unavailable(e))
    }

    /// Creates or migrates the schema: one replica at a time (an advisory lock), all of it
    /// in one transaction. A schema newer than this binary is refused, never touched.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ta_schema_version (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        let found: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM ta_schema_version",
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if found > known {
            return Err(StoreError::SchemaTooNew {
                path: self.shown.clone(),
                found,
                known,
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tx.batch_execute(sql).await.map_err(|e| StoreError::Open {
                path: self.shown.clone(),
                reason: format!("schema migration {version}: {e}"),
            })?;
            tx.execute(
                "INSERT INTO ta_schema_version (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
            tracing::info!(version, database = %self.shown, "keystore schema migrated");
        }
        tx.commit().await.map_err(|e| self.unavailable(e))
    }

    /// The generation the database is at: cheap, for the periodic check.
    pub async fn generation(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT generation FROM ta_generation", &[])
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Every record and the generation they are at, read from one snapshot.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.unavailable(e))?;
        let snapshot = self.read(&tx).await?;
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        Ok(snapshot)
    }

    async fn read(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<Snapshot, StoreError> {
        let generation: i64 = tx
            .query_one("SELECT generation FROM ta_generation", &[])
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        let rows = tx
            .query("SELECT kid, record FROM ta_keys", &[])
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let kid: String = row.get(0);
            let text: String = row.get(1);
            records.push(self.decode(&kid, &text)?);
        }
        // The order the lifecycle keeps (`Plan::apply_to`), so every replica builds the
        // same JWKS bytes and ETag from the same records.
        records.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        Ok(Snapshot {
            generation: u64::try_from(generation).unwrap_or(0),
            records,
        })
    }

    /// One change: lock, re-read, plan from what was read, write, bump the generation,
    /// notify, commit. Returns the plan's value and the generation now current (the new one
    /// if something was written). The plan runs on a blocking thread (it may generate keys)
    /// while the transaction waits.
    pub async fn transact<T, E, P>(&self, plan: P) -> Result<(T, u64), E>
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
        let Snapshot {
            generation,
            records,
        } = self.read(&tx).await?;
        let (value, change) = tokio::task::spawn_blocking(move || plan(&records))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if change.is_empty() {
            // Dropping the transaction rolls it back and releases the lock.
            return Ok((value, generation));
        }
        let mut encoded = Vec::with_capacity(change.changed.len());
        for record in &change.changed {
            encoded.push((record.kid.as_str(), self.encode(record)?));
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
            tx.execute("DELETE FROM ta_keys WHERE kid = $1", &[kid])
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        let next: i64 = tx
            .query_one(
                "UPDATE ta_generation SET generation = generation + 1 RETURNING generation",
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        // Delivered to listeners only when (and if) the transaction commits.
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.commit()
            .await
            .map_err(|e| StoreError::CommitUnknown(format!("{}: {e}", self.shown)))?;
        Ok((value, u64::try_from(next).unwrap_or(0)))
    }
}
