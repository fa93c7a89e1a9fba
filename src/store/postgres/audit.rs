//! The audit chain's heads in PostgreSQL: one row per audit file (every replica writes its
//! own files), kept apart from the keys. The audit layer gives and takes them as opaque
//! text.

use super::{connect::client_config, connect::tls_config, shown, PgSettings, PgStore};
use crate::store::StoreError;

impl PgStore {
    /// Records the head of audit file `file`.
    pub(crate) async fn record_audit_head(&self, file: &str, head: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO ta_audit_heads (file, head) VALUES ($1, $2)
                 ON CONFLICT (file) DO UPDATE SET head = EXCLUDED.head",
                &[&file, &head],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }
}

/// The recorded head of audit file `file` in the database `settings` names. Needs no KEK:
/// heads are not secret, only authenticated by the audit key.
pub(crate) async fn read_audit_head(
    settings: &PgSettings,
    file: &str,
) -> Result<Option<String>, StoreError> {
    let config = client_config(settings)?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(settings.roots())?);
    let database = shown(&config);
    let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable {
        database: database.clone(),
        source: e.into(),
    };
    let (client, connection) = config.connect(tls).await.map_err(unavailable)?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_opt("SELECT head FROM ta_audit_heads WHERE file = $1", &[&file])
        .await
        .map_err(unavailable);
    driver.abort();
    Ok(row?.map(|row| row.get(0)))
}
