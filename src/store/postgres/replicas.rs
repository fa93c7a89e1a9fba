//! Which replicas run and what they serve: each acknowledges, in `ta_replicas`, the position
//! of the key set it serves whenever it serves a new one and at every sync, so a replica that
//! revoked a key can wait until every live replica has dropped it.

use std::time::Duration;

use super::{history::Position, PgStore};
use crate::store::StoreError;

/// Rows not refreshed for this long are of replicas long gone: removed.
const FORGOTTEN_AFTER: &str = "1 hour";

/// How many other live replicas serve a given generation or a later one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmations {
    /// Replicas, other than this one, that reported within the liveness window.
    pub(crate) live: u32,
    /// Of those, the ones serving the generation asked about, or a later one.
    pub(crate) confirmed: u32,
}

impl Confirmations {
    pub(crate) fn all(&self) -> bool {
        self.confirmed >= self.live
    }
}

impl PgStore {
    /// Records that this replica serves `position`, now.
    pub(crate) async fn acknowledge(&self, position: &Position) -> Result<(), StoreError> {
        let client = self.client().await?;
        let generation = i64::try_from(position.generation).unwrap_or(i64::MAX);
        client
            .execute(
                "INSERT INTO ta_replicas (replica, generation, lineage, seen_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (replica) DO UPDATE SET generation = EXCLUDED.generation,
                     lineage = EXCLUDED.lineage, seen_at = EXCLUDED.seen_at",
                &[&self.replica, &generation, &position.lineage],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        client
            .execute(
                &format!(
                    "DELETE FROM ta_replicas WHERE seen_at < now() - interval '{FORGOTTEN_AFTER}'"
                ),
                &[],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    /// The other replicas that reported within `live_within`, and how many of them serve
    /// `generation` or later.
    pub(crate) async fn confirmations(
        &self,
        generation: u64,
        live_within: Duration,
    ) -> Result<Confirmations, StoreError> {
        let client = self.client().await?;
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        let window = i64::try_from(live_within.as_millis()).unwrap_or(i64::MAX);
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE generation >= $2)
                 FROM ta_replicas
                 WHERE replica <> $1 AND seen_at > now() - $3 * interval '1 millisecond'",
                &[&self.replica, &generation, &(window as f64)],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        let count = |index| u32::try_from(row.get::<_, i64>(index)).unwrap_or(u32::MAX);
        Ok(Confirmations {
            live: count(0),
            confirmed: count(1),
        })
    }

    /// Removes this replica's row: it stops, and nobody should wait for it.
    pub(crate) async fn leave(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM ta_replicas WHERE replica = $1",
                &[&self.replica],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }
}
