//! Reading the key set: where the database's history stands, every row checked against
//! the manifest (a refused row named, the others loaded), and whether the history passes
//! through the position a replica held.

use std::collections::BTreeSet;

use super::{
    history::{Manifest, Position, RefusedRow},
    PgStore, Snapshot,
};
use crate::{
    store::{kek::UnsealError, StoreError},
    telemetry::chain,
};

/// The manifest, where a refusal names the record.
const MANIFEST: &str = "(the key set's manifest, in ta_generation)";

/// What a read inside a change transaction found, for the write that follows it.
pub(super) struct Read {
    pub(crate) snapshot: Snapshot,
    pub(crate) manifest: Manifest,
    /// Every kid with a row, refused ones included.
    pub(crate) present: BTreeSet<String>,
}

impl PgStore {
    pub(super) async fn read_position(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(Position, Option<String>), StoreError> {
        let row = tx
            .query_one(
                "SELECT database_id, generation, lineage, manifest FROM ta_generation",
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        let position = Position {
            database_id: row.get(0),
            generation: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            lineage: row.get(2),
        };
        Ok((position, row.get(3)))
    }

    /// Where the database's history stands: cheap, for the periodic check.
    pub(crate) async fn position(&self) -> Result<Position, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT database_id, generation, lineage FROM ta_generation",
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(Position {
            database_id: row.get(0),
            generation: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            lineage: row.get(2),
        })
    }

    /// Every record and the position they are at, read from one snapshot; with `held`,
    /// also whether the database's history passes through it.
    pub(crate) async fn load(&self, held: Option<&Position>) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut snapshot = self.read(&tx).await?.snapshot;
        if let Some(held) = held {
            snapshot.follows_held = Some(self.follows(&tx, &snapshot.position, held).await?);
        }
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        Ok(snapshot)
    }

    /// Whether the history at `now` passes through `held`.
    async fn follows(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        now: &Position,
        held: &Position,
    ) -> Result<bool, StoreError> {
        if now.database_id != held.database_id || now.generation < held.generation {
            return Ok(false);
        }
        let generation = i64::try_from(held.generation).unwrap_or(i64::MAX);
        let row = tx
            .query_opt(
                "SELECT lineage FROM ta_history WHERE generation = $1",
                &[&generation],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(row.is_some_and(|row| row.get::<_, String>(0) == held.lineage))
    }

    pub(super) async fn read(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<Read, StoreError> {
        let (position, manifest) = self.read_position(tx).await?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.shown.clone(),
            kid: MANIFEST.into(),
            reason,
        };
        let manifest = manifest
            .ok_or_else(|| corrupt("missing: the schema migration did not complete".into()))?;
        let manifest = Manifest::open(&manifest, &self.keks, &position).map_err(|source| {
            StoreError::Unreadable {
                path: self.shown.clone(),
                kid: MANIFEST.into(),
                source: source.into(),
            }
        })?;
        let rows = tx
            .query("SELECT kid, record FROM ta_keys", &[])
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut records = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for row in rows {
            let kid: String = row.get(0);
            let text: String = row.get(1);
            present.insert(kid.clone());
            let checked = match manifest.check(&kid, &text) {
                Err(reason) => Err(reason),
                Ok(()) => match self.decode(&kid, &text) {
                    Ok(record) => Ok(record),
                    // The KEK file lacks a KEK the rows were sealed with: a configuration
                    // error for the whole store, not one row's.
                    Err(
                        error @ StoreError::Unseal {
                            source: UnsealError::UnknownKek(_),
                            ..
                        },
                    ) => return Err(error),
                    Err(error) => Err(chain(&error).to_string()),
                },
            };
            match checked {
                Ok(record) => records.push(record),
                Err(reason) => refused.push(RefusedRow { kid, reason }),
            }
        }
        for kid in manifest.rows.keys().filter(|kid| !present.contains(*kid)) {
            refused.push(RefusedRow {
                kid: kid.clone(),
                reason: "in the key set's manifest but missing from ta_keys: deleted by hand"
                    .into(),
            });
        }
        // The order the lifecycle keeps (`Plan::apply_to`), so every replica builds the
        // same JWKS bytes and ETag from the same records.
        records.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        Ok(Read {
            snapshot: Snapshot {
                position,
                records,
                refused,
                follows_held: None,
            },
            manifest,
            present,
        })
    }
}
