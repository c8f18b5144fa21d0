//! Every error a PostgreSQL client sees, mapped to its SQLSTATE in one place: the engine's errors,
//! the node's (routing, sync waits), the compatibility layer's, and errors a replica's primary
//! answered over HTTP (by their code and message).

use pgwire::error::{ErrorInfo, PgWireError};
use scribe_sqlite::EngineError;

use crate::ApiError;

/// An error for a PostgreSQL client: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// The five-character SQLSTATE.
    pub sqlstate: &'static str,
    /// The message.
    pub message: String,
}

/// `25P02`: in_failed_sql_transaction.
pub const IN_FAILED_TRANSACTION: &str = "25P02";
/// `3B001`: invalid_savepoint_specification.
pub const INVALID_SAVEPOINT: &str = "3B001";
/// `08006`: connection_failure (the primary could not be reached from a replica).
pub const CONNECTION_FAILURE: &str = "08006";
/// `22P02`: invalid_text_representation (a parameter that does not decode).
pub const INVALID_TEXT: &str = "22P02";
/// `0A000`: feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `22023`: invalid_parameter_value.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `57014`: query_canceled.
pub const QUERY_CANCELED: &str = "57014";
/// The user's role does not allow the statement.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";

impl PgError {
    /// An error with this SQLSTATE.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            sqlstate,
            message: message.into(),
        }
    }

    /// The error of a statement sent inside a transaction that already failed.
    pub fn aborted() -> PgError {
        PgError::new(
            IN_FAILED_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    }
}

/// SQLite reports what went wrong in its message only; these are its stable phrasings.
fn from_sqlite_message(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("unique constraint failed") || m.contains("primary key must be unique") {
        "23505"
    } else if m.contains("not null constraint failed") {
        "23502"
    } else if m.contains("check constraint failed") {
        "23514"
    } else if m.contains("foreign key constraint failed") {
        "23503"
    } else if m.contains("no such table") {
        "42P01"
    } else if m.contains("no such column") || m.contains("has no column named") {
        "42703"
    } else if m.contains("no such function") {
        "42883"
    } else if m.contains("syntax error")
        || m.contains("incomplete input")
        || m.contains("unrecognized token")
    {
        "42601"
    } else if m.contains("already exists") {
        "42P07"
    } else if m.contains("datatype mismatch") {
        "42804"
    } else if m.contains("too big") || m.contains("string or blob too big") {
        "54000"
    } else if m.contains("parameters but") || m.contains("no parameter named") {
        "08P01"
    } else {
        "42000"
    }
}

/// The SQLSTATE of a node error code (the `code` of the HTTP API's error body) and its message.
fn from_code(code: &str, message: &str) -> &'static str {
    match code {
        "sql_error" | "constraint_violation" => from_sqlite_message(message),
        "bad_request" => {
            let s = from_sqlite_message(message);
            if s == "42000" {
                FEATURE_NOT_SUPPORTED
            } else {
                s
            }
        }
        "not_read_only" => "25006",
        "transaction_ended" => "25P03",
        "serialization_failure" => "40001",
        "deadlock" => "40P01",
        "lock_timeout" => "55P03",
        "disk_full" => "53100",
        "unavailable" | "not_primary" | "lagging" | "not_caught_up" | "lease_expired"
        | "witness" => "57P03",
        // The outcome of a commit is not known (PostgreSQL's own phrase for it is 08007,
        // transaction_resolution_unknown).
        "outcome_unknown" => "08007",
        // query_canceled, as PostgreSQL answers a statement timeout.
        "sync_timeout" | "statement_timeout" | "abandoned" => "57014",
        // program_limit_exceeded.
        "too_large" => "54000",
        "payload_too_large" => "54000",
        // The primary did not accept this node's assertion of the session's user (their users
        // files differ), or the user's role does not allow it.
        "unauthorized" => "28000",
        "forbidden" => INSUFFICIENT_PRIVILEGE,
        _ => "XX000",
    }
}

impl From<&EngineError> for PgError {
    fn from(e: &EngineError) -> PgError {
        let message = e.to_string();
        let (_, code) = crate::error::engine_status_and_code(e);
        PgError {
            sqlstate: from_code(code, &message),
            message,
        }
    }
}

impl From<EngineError> for PgError {
    fn from(e: EngineError) -> PgError {
        PgError::from(&e)
    }
}

impl From<ApiError> for PgError {
    fn from(e: ApiError) -> PgError {
        match &e {
            ApiError::Engine(inner) => PgError::from(inner),
            other => {
                let (_, code) = other.status_and_code();
                let message = other.message();
                PgError {
                    sqlstate: from_code(code, &message),
                    message,
                }
            }
        }
    }
}

impl From<scribe_pgsql::CompatError> for PgError {
    fn from(e: scribe_pgsql::CompatError) -> PgError {
        PgError {
            sqlstate: e.sqlstate,
            message: e.message,
        }
    }
}

impl PgError {
    /// An error the primary answered over HTTP (`{"error": {"code", "message"}}`).
    pub fn remote(code: &str, message: &str) -> PgError {
        PgError {
            sqlstate: from_code(code, message),
            message: message.to_string(),
        }
    }
}

impl From<PgError> for PgWireError {
    fn from(e: PgError) -> PgWireError {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_string(),
            e.sqlstate.to_string(),
            e.message,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_messages_map_to_postgres_codes() {
        let e = |m: &str| PgError::from(EngineError::Constraint(m.into())).sqlstate;
        assert_eq!(e("UNIQUE constraint failed: t.id"), "23505");
        assert_eq!(e("NOT NULL constraint failed: t.name"), "23502");
        assert_eq!(e("CHECK constraint failed: x > 0"), "23514");
        let s = |m: &str| PgError::from(EngineError::Sql(m.into())).sqlstate;
        assert_eq!(s("no such table: nope"), "42P01");
        assert_eq!(s("no such column: nope"), "42703");
        assert_eq!(s("table t has no column named nope"), "42703");
        assert_eq!(s("near \"SELEC\": syntax error"), "42601");
        assert_eq!(s("table t already exists"), "42P07");
        assert_eq!(
            PgError::remote("constraint_violation", "UNIQUE constraint failed: t.id").sqlstate,
            "23505"
        );
        assert_eq!(PgError::remote("outcome_unknown", "x").sqlstate, "08007");
        // Every engine and node error goes through the HTTP codes: one mapping for both.
        let code = |e: EngineError| PgError::from(e).sqlstate;
        assert_eq!(code(EngineError::SerializationFailure("x".into())), "40001");
        assert_eq!(code(EngineError::Deadlock("x".into())), "40P01");
        assert_eq!(code(EngineError::LockTimeout("x".into())), "55P03");
        assert_eq!(code(EngineError::TxnEnded("x".into())), "25P03");
        assert_eq!(code(EngineError::DiskFull("x".into())), "53100");
        assert_eq!(code(EngineError::OutcomeUnknown("x".into())), "08007");
        assert_eq!(
            code(EngineError::BadRequest("ATTACH is not allowed".into())),
            "0A000"
        );
        assert_eq!(PgError::from(ApiError::TooLarge(1024)).sqlstate, "54000");
    }

    #[test]
    fn a_witness_refuses_postgresql_statements_naming_the_primary() {
        let e = PgError::from(ApiError::Witness {
            node: "w".into(),
            primary: Some(("n1".into(), Some("http://10.0.0.1:5480".into()))),
        });
        assert_eq!(e.sqlstate, "57P03");
        assert_eq!(
            e.message,
            "w is a witness: it votes in the control plane but holds no data; send this to the primary n1 at http://10.0.0.1:5480"
        );
        let (status, code) = ApiError::Witness {
            node: "w".into(),
            primary: None,
        }
        .status_and_code();
        assert_eq!((status.as_u16(), code), (421, "witness"));
    }
}
