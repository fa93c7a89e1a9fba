//! The schema: its migrations, applied at start by the first replica to take the migration
//! lock, and the manifest a database migrated from before the manifest gets.

use super::{history::Manifest, DbFailure, PgStore, MIGRATION_LOCK};
use crate::store::{Context, StoreError};

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
    // The database's identity, its history and the manifest that authenticates the rows
    // (`history`). The manifest of a database migrated from version 2 is made at once,
    // from the rows as they are (`PgStore::migrate`).
    "
    ALTER TABLE ta_generation
        ADD COLUMN database_id text,
        ADD COLUMN lineage text,
        ADD COLUMN manifest text;
    UPDATE ta_generation
        SET database_id = gen_random_uuid()::text, lineage = gen_random_uuid()::text;
    ALTER TABLE ta_generation
        ALTER COLUMN database_id SET NOT NULL,
        ALTER COLUMN lineage SET NOT NULL;
    CREATE TABLE ta_history (
        generation bigint PRIMARY KEY,
        lineage text NOT NULL
    );
    INSERT INTO ta_history (generation, lineage) SELECT generation, lineage FROM ta_generation;
",
    // Each running replica's acknowledgement of the position it serves (`replicas`).
    "
    CREATE TABLE ta_replicas (
        replica text PRIMARY KEY,
        generation bigint NOT NULL,
        lineage text NOT NULL,
        seen_at timestamptz NOT NULL
    );
",
    // Status lists (`status`): the lists and the one being filled, the statuses other than
    // VALID (each change numbered from a sequence, drawn under the status lock, so replicas
    // follow them in order), and each token's list and index by jti.
    "
    CREATE TABLE ta_status_lists (
        id bigint PRIMARY KEY,
        size bigint NOT NULL,
        allocated bigint NOT NULL,
        valid_until bigint NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE TABLE ta_status_cursor (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        list_id bigint NOT NULL
    );
    CREATE SEQUENCE ta_status_seq;
    CREATE TABLE ta_token_status (
        list_id bigint NOT NULL,
        idx bigint NOT NULL,
        status smallint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (list_id, idx)
    );
    CREATE INDEX ta_token_status_seq ON ta_token_status (seq);
    CREATE TABLE ta_status_jti (
        jti text PRIMARY KEY,
        list_id bigint NOT NULL,
        idx bigint NOT NULL,
        exp bigint NOT NULL
    );
    CREATE INDEX ta_status_jti_exp ON ta_status_jti (exp);
",
    // A token's jti carries its list and index under a MAC (`authority::status::jti`):
    // the per-token records go, the key the replicas share comes.
    "
    DROP TABLE ta_status_jti;
    CREATE TABLE ta_status_jti_key (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        mac_key bytea NOT NULL CHECK (length(mac_key) = 32)
    );
",
];

impl PgStore {
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
                source: Context::new(format!("schema migration {version}"), DbFailure::from(e))
                    .into(),
            })?;
            tx.execute(
                "INSERT INTO ta_schema_version (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
            tracing::info!(version, database = %self.shown, "keystore schema migrated");
        }
        self.make_first_manifest(&tx).await?;
        tx.commit().await.map_err(|e| self.unavailable(e))
    }

    /// A database migrated from a schema without a manifest gets one made from its rows as
    /// they are: from then on, a row that changes other than through a replica is refused.
    async fn make_first_manifest(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let (position, manifest) = self.read_position(tx).await?;
        if manifest.is_some() {
            return Ok(());
        }
        let rows = tx
            .query("SELECT kid, record FROM ta_keys", &[])
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut made = Manifest::default();
        for row in rows {
            let text: String = row.get(1);
            made.rows.insert(row.get(0), Manifest::digest(&text));
        }
        let sealed = made
            .seal(&self.keks, &position)
            .map_err(|e| StoreError::NotApplied(e.into()))?;
        tx.execute("UPDATE ta_generation SET manifest = $1", &[&sealed])
            .await
            .map_err(|e| self.unavailable(e))?;
        tracing::info!(rows = made.rows.len(), database = %self.shown, "keystore manifest made from the rows as they are");
        Ok(())
    }
}
