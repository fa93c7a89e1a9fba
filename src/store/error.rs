//! The keystore's error, and the cause and context it keeps.

use super::{kek::UnsealError, DbFailure};
use crate::telemetry::chain;

/// A cause kept whole, for the chain and for a downcast. Boxed because the errors of
/// several crates reach the same variant (sled's, PostgreSQL's, the file system's, the
/// crypto's) and only each backend's module names its database crate.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the store was doing when its cause happened, where the cause alone would not say
/// ("erasing data keys", then the I/O error): a link of the chain of its own.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub(crate) struct Context {
    doing: String,
    #[source]
    source: Cause,
}

impl Context {
    pub(crate) fn new(doing: impl Into<String>, source: impl Into<Cause>) -> Context {
        Context {
            doing: doing.into(),
            source: source.into(),
        }
    }
}

/// Why the keystore failed. A variant caused by another error keeps it as its `source()`:
/// where the cause ended the message, the message stops before it and the chain
/// (`telemetry::chain`, how errors are logged and printed) adds it, so the line reads as
/// before; where it sat inside the message (`Unreadable`, `DamagedFile`, `Unknown`,
/// `CommitUnknown`), the message still shows it there, whole, and the chain does not repeat
/// it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the keystore {path} is in use by another process (sled holds an exclusive lock); stop the other token-authority first")]
    Locked { path: String },
    /// sled, a file beside it, or the database's connection settings failed.
    #[error("cannot open the keystore {path}")]
    Open {
        path: String,
        #[source]
        source: Cause,
    },
    /// As `Open`, for a reason that is no error of its own (nothing at the path, a setting
    /// the store does not support).
    #[error("cannot open the keystore {path}: {reason}")]
    Unopenable { path: String, reason: String },
    #[error("the keystore {path} is not a token-authority keystore ({reason}); refusing to create new keys over it")]
    Foreign { path: String, reason: String },
    /// A record whose content is wrong (filed under another kid, a bad nonce).
    #[error("the keystore {path} is unreadable: key record {kid:?}: {reason}; refusing to start with new keys")]
    Corrupt {
        path: String,
        kid: String,
        reason: String,
    },
    /// A record (or the manifest) that does not parse or authenticate.
    #[error("the keystore {path} is unreadable: key record {kid:?}: {}; refusing to start with new keys", chain(.source.as_ref()))]
    Unreadable {
        path: String,
        kid: String,
        #[source]
        source: Cause,
    },
    #[error("the keystore {path} holds encrypted private keys but no --kek-file was given")]
    KekRequired { path: String },
    #[error("the keystore {path}: key {kid}: {source}")]
    Unseal {
        path: String,
        kid: String,
        source: UnsealError,
    },
    /// What the store finds contradicts itself (the guard ahead of sled).
    #[error("the keystore {path} is damaged: {reason}; refusing to start (restore the data directory from a backup)")]
    Damaged { path: String, reason: String },
    /// A file beside sled (the guard, the data keys) cannot be read or parsed.
    #[error("the keystore {path} is damaged: {}; refusing to start (restore the data directory from a backup)", chain(.source.as_ref()))]
    DamagedFile {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("keystore write failed")]
    Write(#[source] Cause),
    /// A lifecycle write failed and was undone: disk and memory hold the state from before.
    #[error("the keystore write failed and nothing changed (a retry is safe)")]
    NotApplied(#[source] Cause),
    /// A lifecycle write failed after sled had it, and undoing it failed too.
    #[error("the keystore write failed ({}) and could not be undone ({}): whether the change is on disk is known only after a restart, so the keystore refuses further changes until then", chain(.failure.as_ref()), chain(.undo.as_ref()))]
    Unknown {
        #[source]
        failure: Cause,
        undo: Cause,
    },
    /// A write after one that could not be undone.
    #[error("an earlier keystore write could not be undone; the keystore refuses changes until the server restarts")]
    Poisoned,
    #[error("a keystore task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The database cannot be reached or failed a statement before the commit, for a
    /// reason that passes (down, restarting, failing over): nothing changed.
    #[error("the keystore database is unavailable (transient, retried): {database}")]
    Unavailable {
        database: String,
        #[source]
        source: DbFailure,
    },
    /// The database refuses this replica for what it is (its password, role, database,
    /// grants, schema objects): no retry helps, so a replica stops at start.
    #[error("the keystore database refuses this replica (permanent, not retried; fix the settings or grants): {database}")]
    Refused {
        database: String,
        #[source]
        source: DbFailure,
    },
    /// A change waited `waited` for the change lock, which another replica (or `keys`
    /// command) held all along: nothing changed.
    #[error(
        "another replica holds the change lock (transient: waited {waited} for it): {database}"
    )]
    ChangeLockBusy {
        waited: &'static str,
        database: String,
        #[source]
        source: DbFailure,
    },
    /// The connection failed while the commit was in flight.
    #[error("the keystore database failed during a commit ({database}: {}); whether the change was made shows at the next sync", chain(.source))]
    CommitUnknown {
        database: String,
        #[source]
        source: DbFailure,
    },
    #[error("the keystore {path} has schema version {found}, newer than the {known} this token-authority knows; upgrade the binary (a database is never migrated backwards)")]
    SchemaTooNew {
        path: String,
        found: i32,
        known: i32,
    },
    #[error("the keystore {0} is shared by replicas and changes only through a running server")]
    SharedStore(String),
}

impl StoreError {
    /// Whether waiting may cure it: the shared database down or busy, not refusing.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::ChangeLockBusy { .. }
        )
    }

    /// Whether it is a fault of the settings, which a start refuses with exit code 2: the
    /// database refusing the replica, or holding a schema newer than the binary.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::Refused { .. } | StoreError::SchemaTooNew { .. }
        )
    }

    /// Whether a failed change is known to have left the store as it was.
    pub(crate) fn changed_nothing(&self) -> bool {
        matches!(
            self,
            StoreError::NotApplied(_)
                | StoreError::Unavailable { .. }
                | StoreError::ChangeLockBusy { .. }
                | StoreError::Refused { .. }
        )
    }

    /// For a failed lifecycle write: what a client may be told about its effect, without
    /// the cause (which goes to the log). `None` for errors that are not write outcomes.
    pub(crate) fn outcome(&self) -> Option<&'static str> {
        match self {
            StoreError::NotApplied(_) => Some(
                "internal error: the keystore write failed and was undone; nothing changed, and a retry is safe",
            ),
            StoreError::Unavailable { .. } => Some(
                "unavailable: the keystore database cannot be reached; nothing changed, and a retry is safe",
            ),
            StoreError::ChangeLockBusy { .. } => Some(
                "unavailable: another replica holds the change lock; nothing changed, and a retry is safe",
            ),
            StoreError::Refused { .. } => Some(
                "internal error: the keystore database refuses this replica (see its log); nothing changed",
            ),
            StoreError::CommitUnknown { .. } => Some(
                "internal error: the keystore database failed during the commit; list the keys to see whether it took effect",
            ),
            StoreError::Unknown { .. } | StoreError::Poisoned => Some(
                "internal error: the keystore write failed and could not be undone; whether it took effect is known after a restart, and changes are refused until then",
            ),
            _ => None,
        }
    }
}
