//! The audit chain's heads in sled: one small record per audit file, by file id, in a tree
//! of its own. The audit layer gives and takes them as opaque text.

use std::path::Path;

use super::{open_error, SledStore, CACHE_CAPACITY};
use crate::store::StoreError;

const AUDIT_HEADS_TREE: &str = "audit_heads";

impl SledStore {
    /// Records the head of audit file `file`, durably.
    pub(crate) fn record_audit_head(&self, file: &str, head: &str) -> Result<(), StoreError> {
        let write = |e: sled::Error| StoreError::Write(e.into());
        let tree = self.db.open_tree(AUDIT_HEADS_TREE).map_err(write)?;
        tree.insert(file.as_bytes(), head.as_bytes())
            .map_err(write)?;
        tree.flush().map(|_| ()).map_err(write)
    }
}

/// The recorded head of audit file `file` in the sled keystore at `path`, which must not be
/// open in a running authority (sled locks its directory).
pub(crate) fn read_audit_head(path: &Path, file: &str) -> Result<Option<String>, StoreError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(StoreError::Unopenable {
            path: shown,
            reason: "no keystore there".into(),
        });
    }
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        .open()
        .map_err(|e| open_error(&shown, e))?;
    let tree = db
        .open_tree(AUDIT_HEADS_TREE)
        .map_err(|e| open_error(&shown, e))?;
    let head = tree
        .get(file.as_bytes())
        .map_err(|e| open_error(&shown, e))?;
    Ok(head.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}
