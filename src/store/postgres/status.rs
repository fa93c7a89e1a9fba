//! Status lists in PostgreSQL, shared by the replicas. Block reservations and status writes
//! take the status lock (transaction-scoped), so two replicas never reserve the same block
//! and a revoked status is final whoever asks; each status write draws its number from a
//! sequence under that lock, so numbers commit in order and a replica that has seen number
//! N has seen every change before it. Every change notifies `ta_status`.

use deadpool_postgres::Transaction;

use super::{PgStore, STATUS_CHANNEL, STATUS_LOCK};
use crate::store::{
    status::{Block, Exported, ListRecord, Reservation, SetOutcome, StoredLists},
    StoreError,
};

/// Ids, indexes and times are below 2^63 in practice; a value past it is stored as the
/// largest bigint rather than wrapping.
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn small(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn list_record(row: &tokio_postgres::Row) -> ListRecord {
    ListRecord {
        id: small(row.get(0)),
        size: small(row.get(1)),
        allocated: small(row.get(2)),
        valid_until: small(row.get(3)),
        created_at: small(row.get(4)),
    }
}

const LISTS: &str = "SELECT id, size, allocated, valid_until, created_at FROM ta_status_lists";

impl PgStore {
    async fn locked<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
    ) -> Result<Transaction<'c>, StoreError> {
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&STATUS_LOCK])
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(tx)
    }

    async fn notify_status(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        tx.execute("SELECT pg_notify($1, '0')", &[&STATUS_CHANNEL])
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    async fn commit(&self, tx: Transaction<'_>) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| StoreError::CommitUnknown {
            database: self.shown.clone(),
            source: e.into(),
        })
    }

    /// Every list, every status other than VALID, and the number of the last change.
    pub(crate) async fn load_status_lists(&self) -> Result<(StoredLists, u64), StoreError> {
        self.status_changes_since(0).await
    }

    /// Every list, the statuses changed after change `seen`, and the last change's number.
    pub(crate) async fn status_changes_since(
        &self,
        seen: u64,
    ) -> Result<(StoredLists, u64), StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the lists and the statuses.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.unavailable(e))?;
        let lists = tx
            .query(LISTS, &[])
            .await
            .map_err(|e| self.unavailable(e))?
            .iter()
            .map(list_record)
            .collect();
        let rows = tx
            .query(
                "SELECT list_id, idx, status, seq FROM ta_token_status WHERE seq > $1 ORDER BY seq",
                &[&big(seen)],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut last = seen;
        let mut statuses = Vec::with_capacity(rows.len());
        for row in rows {
            let status: i16 = row.get(2);
            statuses.push((
                small(row.get(0)),
                small(row.get(1)),
                u8::try_from(status).unwrap_or(u8::MAX),
            ));
            last = last.max(small(row.get(3)));
        }
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        Ok((StoredLists { lists, statuses }, last))
    }

    pub(crate) async fn reserve_status_block(
        &self,
        reservation: Reservation,
    ) -> Result<(Vec<ListRecord>, Block), StoreError> {
        let mut client = self.client().await?;
        let tx = self.locked(&mut client).await?;
        let current: Option<i64> = tx
            .query_opt("SELECT list_id FROM ta_status_cursor", &[])
            .await
            .map_err(|e| self.unavailable(e))?
            .map(|row| row.get(0));
        let filling = match current {
            Some(id) => tx
                .query_opt(&format!("{LISTS} WHERE id = $1"), &[&id])
                .await
                .map_err(|e| self.unavailable(e))?
                .map(|row| list_record(&row)),
            None => None,
        };
        let record = match Reservation::list_to_fill(current.map(small), filling) {
            Ok(record) => record,
            Err(id) => self
                .list_record(&tx, id)
                .await?
                .unwrap_or_else(|| reservation.fresh(id)),
        };
        let (record, block) = reservation.take_from(record);
        tx.execute(
            "INSERT INTO ta_status_lists (id, size, allocated, valid_until, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET allocated = EXCLUDED.allocated,
                 valid_until = EXCLUDED.valid_until",
            &[
                &big(record.id),
                &big(record.size),
                &big(record.allocated),
                &big(record.valid_until),
                &big(record.created_at),
            ],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        tx.execute(
            "INSERT INTO ta_status_cursor (singleton, list_id) VALUES (true, $1)
             ON CONFLICT (singleton) DO UPDATE SET list_id = EXCLUDED.list_id",
            &[&big(record.id)],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        // The next list exists before its first index is needed, so watchers hold it
        // before any token names it.
        let next = reservation.fresh(record.id + 1);
        tx.execute(
            "INSERT INTO ta_status_lists (id, size, allocated, valid_until, created_at)
             VALUES ($1, $2, 0, 0, $3) ON CONFLICT (id) DO NOTHING",
            &[&big(next.id), &big(next.size), &big(next.created_at)],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        let next = self.list_record(&tx, next.id).await?.unwrap_or(next);
        self.notify_status(&tx).await?;
        self.commit(tx).await?;
        Ok((vec![record, next], block))
    }

    async fn list_record(
        &self,
        tx: &Transaction<'_>,
        id: u64,
    ) -> Result<Option<ListRecord>, StoreError> {
        Ok(tx
            .query_opt(&format!("{LISTS} WHERE id = $1"), &[&big(id)])
            .await
            .map_err(|e| self.unavailable(e))?
            .map(|row| list_record(&row)))
    }

    pub(crate) async fn set_token_status(
        &self,
        list: u64,
        idx: u64,
        value: u8,
    ) -> Result<SetOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = self.locked(&mut client).await?;
        let previous: i16 = tx
            .query_opt(
                "SELECT status FROM ta_token_status WHERE list_id = $1 AND idx = $2",
                &[&big(list), &big(idx)],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .map_or(0, |row| row.get(0));
        let previous = u8::try_from(previous).unwrap_or(u8::MAX);
        if previous == value {
            return Ok(SetOutcome::Set { previous });
        }
        if previous == 1 {
            return Ok(SetOutcome::Final);
        }
        // A row stays when set back to VALID: its number tells the replicas.
        tx.execute(
            "INSERT INTO ta_token_status (list_id, idx, status, seq)
             VALUES ($1, $2, $3, nextval('ta_status_seq'))
             ON CONFLICT (list_id, idx) DO UPDATE SET status = EXCLUDED.status, seq = EXCLUDED.seq",
            &[&big(list), &big(idx), &i16::from(value)],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        self.notify_status(&tx).await?;
        self.commit(tx).await?;
        Ok(SetOutcome::Set { previous })
    }

    /// The key status jtis are minted under: `made` when there is none yet. Replicas
    /// starting together agree: the first insert wins and every one reads it back.
    pub(crate) async fn status_jti_key(&self, made: [u8; 32]) -> Result<[u8; 32], StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO ta_status_jti_key (singleton, mac_key) VALUES (true, $1)
                 ON CONFLICT (singleton) DO NOTHING",
                &[&&made[..]],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        let key: Vec<u8> = client
            .query_one("SELECT mac_key FROM ta_status_jti_key", &[])
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        key.try_into().map_err(|_| {
            StoreError::Write(format!("{}: the status jti key is damaged", self.shown).into())
        })
    }

    /// Drops lists past their `valid_until` (but the one being filled) with their
    /// statuses.
    pub(crate) async fn purge_status_lists(&self, now: u64) -> Result<Vec<u64>, StoreError> {
        let mut client = self.client().await?;
        let tx = self.locked(&mut client).await?;
        let dropped: Vec<i64> = tx
            .query(
                "DELETE FROM ta_status_lists
                 WHERE valid_until < $1
                   AND allocated > 0
                   AND id <> coalesce((SELECT list_id FROM ta_status_cursor), 0)
                 RETURNING id",
                &[&big(now)],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        tx.execute(
            "DELETE FROM ta_token_status WHERE list_id = ANY($1)",
            &[&dropped],
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        if !dropped.is_empty() {
            self.notify_status(&tx).await?;
        }
        self.commit(tx).await?;
        Ok(dropped.into_iter().map(small).collect())
    }

    /// Copies a sled keystore's status lists into this database, which must hold none.
    pub(crate) async fn import_status_lists(
        &self,
        exported: &Exported,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = self.locked(&mut client).await?;
        let held: i64 = tx
            .query_one("SELECT count(*) FROM ta_status_lists", &[])
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        if held > 0 {
            return Err(StoreError::NotApplied(
                format!("{} already holds {held} status lists", self.shown).into(),
            ));
        }
        for record in &exported.lists {
            tx.execute(
                "INSERT INTO ta_status_lists (id, size, allocated, valid_until, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &big(record.id),
                    &big(record.size),
                    &big(record.allocated),
                    &big(record.valid_until),
                    &big(record.created_at),
                ],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        if let Some(cursor) = exported.cursor {
            tx.execute(
                "INSERT INTO ta_status_cursor (singleton, list_id) VALUES (true, $1)",
                &[&big(cursor)],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        for (list, idx, value) in &exported.statuses {
            tx.execute(
                "INSERT INTO ta_token_status (list_id, idx, status, seq)
                 VALUES ($1, $2, $3, nextval('ta_status_seq'))",
                &[&big(*list), &big(*idx), &i16::from(*value)],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        if let Some(key) = exported.jti_key {
            // The lists' tokens keep being named by their jtis.
            tx.execute(
                "INSERT INTO ta_status_jti_key (singleton, mac_key) VALUES (true, $1)
                 ON CONFLICT (singleton) DO UPDATE SET mac_key = EXCLUDED.mac_key",
                &[&&key[..]],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        self.commit(tx).await?;
        Ok(exported.lists.len())
    }
}
