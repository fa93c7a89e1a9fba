//! What a database failure means for the replica: transient (the database is down,
//! restarting, failing over, or another replica holds the change lock: wait and retry) or
//! permanent (the database refuses this replica for what it is: a wrong password, an
//! unknown role or database, missing grants or schema objects; no retry can help, so a
//! replica stops at start rather than retry forever). Every message says which, and carries
//! PostgreSQL's own message and detail (`DbFailure`): tokio-postgres shows a server error as
//! "db error".

use std::{error::Error, fmt};

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use super::LOCK_TIMEOUT;
use crate::store::StoreError;

/// Why a database call failed, on one line: for a server error, PostgreSQL's own message,
/// SQLSTATE, detail and hint (tokio-postgres shows one as "db error", PostgreSQL's words in
/// its source over several lines); for any other, the error, its causes following in the
/// chain. The driver's error itself is kept (`postgres`).
#[derive(Debug)]
pub struct DbFailure(Failure);

#[derive(Debug)]
enum Failure {
    Postgres(tokio_postgres::Error),
    Pool(PoolError),
    /// What the driver does not report as an error (the notification connection closed).
    Other(&'static str),
}

impl DbFailure {
    /// The driver's error, when there is one (also inside the pool's).
    pub(super) fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match &self.0 {
            Failure::Postgres(error) | Failure::Pool(PoolError::Backend(error)) => Some(error),
            Failure::Pool(_) | Failure::Other(_) => None,
        }
    }
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(error: tokio_postgres::Error) -> DbFailure {
        DbFailure(Failure::Postgres(error))
    }
}

impl From<PoolError> for DbFailure {
    fn from(error: PoolError) -> DbFailure {
        DbFailure(Failure::Pool(error))
    }
}

impl From<&'static str> for DbFailure {
    fn from(text: &'static str) -> DbFailure {
        DbFailure(Failure::Other(text))
    }
}

impl fmt::Display for DbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Failure::Postgres(error) | Failure::Pool(PoolError::Backend(error)) => {
                let Some(db) = error.as_db_error() else {
                    return write!(f, "{error}");
                };
                write!(f, "{} (SQLSTATE {})", db.message(), db.code().code())?;
                if let Some(detail) = db.detail() {
                    write!(f, "; {detail}")?;
                }
                if let Some(hint) = db.hint() {
                    write!(f, "; hint: {hint}")?;
                }
                Ok(())
            }
            Failure::Pool(error) => write!(f, "{error}"),
            Failure::Other(text) => f.write_str(text),
        }
    }
}

impl Error for DbFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.0 {
            Failure::Postgres(error) | Failure::Pool(PoolError::Backend(error)) => {
                // A server error is shown whole above; its source would say it again.
                match error.as_db_error() {
                    Some(_) => None,
                    None => error.source(),
                }
            }
            Failure::Pool(error) => error.source(),
            Failure::Other(_) => None,
        }
    }
}

/// The error a failed database call becomes; `database` names the database.
pub(super) fn classify(database: &str, failure: DbFailure) -> StoreError {
    let database = database.to_owned();
    match failure.postgres().map(class) {
        Some(Class::Permanent) => StoreError::Refused {
            database,
            source: failure,
        },
        Some(Class::LockBusy) => StoreError::ChangeLockBusy {
            waited: LOCK_TIMEOUT,
            database,
            source: failure,
        },
        Some(Class::Transient) | None => StoreError::Unavailable {
            database,
            source: failure,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Transient,
    Permanent,
    /// `lock_timeout` ran out: another session holds the lock.
    LockBusy,
}

fn class(error: &tokio_postgres::Error) -> Class {
    if let Some(code) = error.code() {
        return class_of(code);
    }
    // tokio-postgres names no error kind but through its text: these two are the client's
    // own configuration (the server asked for a password none was given for; a setting it
    // cannot use), which no retry changes.
    match error.to_string().as_str() {
        "authentication error" | "invalid configuration" => Class::Permanent,
        // Closed connections, I/O, TLS, time-outs: the database or the path to it.
        _ => Class::Transient,
    }
}

fn class_of(code: &SqlState) -> Class {
    if *code == SqlState::LOCK_NOT_AVAILABLE {
        return Class::LockBusy;
    }
    match &code.code()[..2] {
        // Authentication and authorization (28P01 wrong password, 28000 unknown role or no
        // pg_hba.conf entry), an unknown database (3D000) or schema (3F000), privileges and
        // missing objects (42501, 42P01, 42703, and the rest of class 42).
        "28" | "3D" | "3F" | "42" => Class::Permanent,
        // Everything else passes: a shutdown or restart (57P01, 57P03), too many
        // connections (53300), a read-only standby during a fail-over (25006), a session
        // the server ended (25P03), serialization failures and deadlocks (40xxx).
        _ => Class::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::chain;

    #[test]
    fn sqlstates_are_classified() {
        for (code, expected) in [
            (SqlState::INVALID_PASSWORD, Class::Permanent),
            (
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                Class::Permanent,
            ),
            (SqlState::INVALID_CATALOG_NAME, Class::Permanent),
            (SqlState::INSUFFICIENT_PRIVILEGE, Class::Permanent),
            (SqlState::UNDEFINED_TABLE, Class::Permanent),
            (SqlState::UNDEFINED_COLUMN, Class::Permanent),
            (SqlState::LOCK_NOT_AVAILABLE, Class::LockBusy),
            (SqlState::ADMIN_SHUTDOWN, Class::Transient),
            (SqlState::CANNOT_CONNECT_NOW, Class::Transient),
            (SqlState::TOO_MANY_CONNECTIONS, Class::Transient),
            (SqlState::READ_ONLY_SQL_TRANSACTION, Class::Transient),
            (
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                Class::Transient,
            ),
            (SqlState::T_R_SERIALIZATION_FAILURE, Class::Transient),
        ] {
            assert_eq!(class_of(&code), expected, "{}", code.code());
        }
    }

    #[test]
    fn other_failures_keep_their_text() {
        let classified = classify(
            "postgres database \"ta\" on db",
            DbFailure::from("the notification connection closed"),
        );
        assert!(matches!(classified, StoreError::Unavailable { .. }));
        let shown = chain(&classified).to_string();
        assert!(
            shown.ends_with("postgres database \"ta\" on db: the notification connection closed"),
            "{shown}"
        );
    }

    /// A client-side failure keeps the driver's error, and its causes reach the line.
    #[test]
    fn the_drivers_error_is_kept_with_its_causes() {
        use std::str::FromStr as _;
        let error = tokio_postgres::Config::from_str("host=h port=not-a-port").unwrap_err();
        let expected = format!("{error}: {}", error.source().unwrap());
        let classified = classify("postgres database \"ta\" on h", DbFailure::from(error));
        let StoreError::Unavailable { source, .. } = &classified else {
            panic!("{classified:?}");
        };
        assert!(source.postgres().is_some());
        assert_eq!(
            chain(&classified).to_string(),
            format!("the keystore database is unavailable (transient, retried): postgres database \"ta\" on h: {expected}")
        );
    }
}
