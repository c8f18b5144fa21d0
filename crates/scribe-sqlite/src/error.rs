//! [`EngineError`]: what went wrong, shaped by what the caller does next — fix the request
//! (`BadRequest`, `Sql`, `Constraint`, `NotReadOnly`), try again later or elsewhere
//! (`Unavailable`, `DiskFull`, `NotPrimary`), or stop and call an operator (`Corrupt`, `Diverged`, `Internal`).

use scribe_log::LogError;

/// An error of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or asks for something Scribe does not allow.
    #[error("{0}")]
    BadRequest(String),
    /// SQLite refused the SQL (syntax error, unknown table, type mismatch...).
    #[error("{0}")]
    Sql(String),
    /// A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) refused the change.
    #[error("{0}")]
    Constraint(String),
    /// An interactive transaction is no longer open (rolled back after an error or after it
    /// stayed idle too long); nothing of it was kept.
    #[error("{0}")]
    TxnEnded(String),
    /// An optimistic transaction's commit found that a statement gives another result than its
    /// client was given (a concurrent transaction changed what it read): nothing was kept; retry.
    #[error("{0}")]
    SerializationFailure(String),
    /// Two transactions wait for each other's rows; this statement was refused.
    #[error("{0}")]
    Deadlock(String),
    /// A statement waited too long for a row another transaction holds; it was refused.
    #[error("{0}")]
    LockTimeout(String),
    /// A statement ran past its statement timeout and was interrupted; nothing of its transaction
    /// (of the statement, inside an interactive transaction) was kept.
    #[error("{0}")]
    Timeout(String),
    /// A transaction's changes or a statement's result grew past their limit; nothing was kept.
    #[error("{0}")]
    TooLarge(String),
    /// The client stopped waiting before its transaction committed; nothing of it was kept.
    #[error("{0}")]
    Abandoned(String),
    /// A statement that writes was sent where only reads are served.
    #[error("{0}")]
    NotReadOnly(String),
    /// The disk is full: nothing of the failed transactions was kept; retry when there is room.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The node cannot take this request now (stopped writing after a fatal error, shutting down).
    /// Nothing of the request was kept.
    #[error("{0}")]
    Unavailable(String),
    /// This node does not take client writes now (a replica, a primary whose lease ran out, a node
    /// closed for a switchover; see [`crate::WriteGate`]); the message says why. Nothing of the
    /// transaction was kept: clients may safely retry it on the real primary.
    #[error("not the primary: {0}")]
    NotPrimary(String),
    /// The transaction may or may not have been committed (a failed fsync, a failed COMMIT after
    /// the log was made durable, a writer that stopped mid-batch): only a later read can tell.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Stored data is damaged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The local database does not match the change log.
    #[error("diverged: {0}")]
    Diverged(String),
    /// A bug or an unexpected failure of SQLite or the OS.
    #[error("internal error: {0}")]
    Internal(String),
    /// The change log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// What was asked needs this node re-seeded from a snapshot instead (a rewind over a schema
    /// change, or over records the log no longer holds). Nothing was changed.
    #[error("{0}")]
    NeedSnapshot(String),
}

impl EngineError {
    /// Whether SQLite failed for want of space (`SQLITE_FULL`).
    pub(crate) fn sqlite_full(e: &rusqlite::Error) -> bool {
        e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
    }

    /// An error applying or replaying records: a full disk stays itself (the records wait in the
    /// log until there is room), anything else means this copy does not fit the log.
    pub(crate) fn or_diverged(self, context: impl FnOnce() -> String) -> EngineError {
        match self {
            EngineError::DiskFull(m) => EngineError::DiskFull(m),
            e => EngineError::Diverged(format!("{}: {e}", context())),
        }
    }

    /// An internal SQLite failure while applying records (`begin`, `commit`, storing the
    /// position), unless it was for want of space.
    pub(crate) fn applying(what: &str, e: rusqlite::Error) -> EngineError {
        if EngineError::sqlite_full(&e) {
            EngineError::DiskFull(format!("{what}: {e}"))
        } else {
            EngineError::Internal(format!("{what}: {e}"))
        }
    }

    /// Classifies an error SQLite returned while running a client's statement. `denied` is the
    /// reason the authorizer gave, when it refused the statement.
    pub(crate) fn from_sqlite(e: rusqlite::Error, denied: Option<String>) -> EngineError {
        use rusqlite::ErrorCode;
        if let Some(reason) = denied {
            return EngineError::BadRequest(reason);
        }
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let text = msg.clone().unwrap_or_else(|| f.to_string());
                match f.code {
                    ErrorCode::ConstraintViolation => EngineError::Constraint(text),
                    ErrorCode::DiskFull => EngineError::DiskFull(text),
                    ErrorCode::ReadOnly => EngineError::NotReadOnly(text),
                    ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                        EngineError::Corrupt(text)
                    }
                    ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => {
                        EngineError::Internal(text)
                    }
                    _ => EngineError::Sql(text),
                }
            }
            rusqlite::Error::MultipleStatement => EngineError::BadRequest(
                "one statement per entry: put each statement in its own entry of \"statements\""
                    .into(),
            ),
            rusqlite::Error::InvalidParameterCount(given, expected) => EngineError::BadRequest(
                format!("the statement takes {expected} parameters but {given} were given"),
            ),
            rusqlite::Error::InvalidParameterName(name) => {
                EngineError::BadRequest(format!("the statement has no parameter named {name}"))
            }
            rusqlite::Error::ToSqlConversionFailure(e) => {
                EngineError::BadRequest(format!("bad parameter: {e}"))
            }
            _ => EngineError::Sql(e.to_string()),
        }
    }
}
