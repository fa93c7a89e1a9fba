//! What a database failure means for the replica: transient (the database is down,
//! restarting, failing over, or another replica holds the change lock: wait and retry) or
//! permanent (the database refuses this replica for what it is: a wrong password, an
//! unknown role or database, missing grants or schema objects; no retry can help, so a
//! replica stops at start rather than retry forever). Every message says which, and carries
//! PostgreSQL's own message and detail: tokio-postgres shows a server error as "db error".

use std::{any::Any, error::Error as _};

use tokio_postgres::error::SqlState;

use super::LOCK_TIMEOUT;
use crate::store::StoreError;

/// The error a failed database call becomes: `error` is what the call failed with, `text`
/// its display; `shown` names the database.
pub(super) fn classify(shown: &str, error: &(dyn Any + Send), text: String) -> StoreError {
    let postgres =
        error
            .downcast_ref::<tokio_postgres::Error>()
            .or_else(
                || match error.downcast_ref::<deadpool_postgres::PoolError>() {
                    Some(deadpool_postgres::PoolError::Backend(error)) => Some(error),
                    _ => None,
                },
            );
    let cause = match postgres {
        Some(error) => describe(error),
        None => text,
    };
    let cause = format!("{shown}: {cause}");
    match postgres.map(class) {
        Some(Class::Permanent) => StoreError::Refused(cause),
        Some(Class::LockBusy) => StoreError::ChangeLockBusy {
            waited: LOCK_TIMEOUT,
            cause,
        },
        Some(Class::Transient) | None => StoreError::Unavailable(cause),
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

/// The whole cause: PostgreSQL's own message, detail, hint and SQLSTATE for a server
/// error; the error and its sources otherwise.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let error: &'static str = "the notification connection closed";
        let classified = classify("postgres database \"ta\" on db", &error, error.into());
        assert!(matches!(classified, StoreError::Unavailable(_)));
        assert!(
            classified
                .to_string()
                .ends_with("postgres database \"ta\" on db: the notification connection closed"),
            "{classified}"
        );
    }
}
