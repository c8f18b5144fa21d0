//! PostgreSQL-SQL compatibility for Scribe: turns the SQL that PostgreSQL tools send (psql,
//! pgbench, psycopg, a user following a tutorial) into SQLite SQL and commands for the
//! session layer.
//!
//! This crate owns the translation only: it does no I/O, speaks no wire protocol and does not
//! link SQLite. The session layer (the pgwire server) [`split`]s a simple-query string, calls
//! [`translate`] on each statement and acts on the [`Command`]: runs [`Command::Sql`] on a read
//! connection or the writer according to its [`Kind`], keeps `SET`/`SHOW` state, starts and
//! ends transactions, and loads `COPY` data with [`parse_copy_rows`] / [`CopyDecoder`] and
//! [`copy_insert_sql`]. Errors carry the SQLSTATE to send ([`CompatError`]).
//!
//! Modules:
//! - `lexer`: PostgreSQL tokens (quotes, dollar quotes, comments, parameters) and [`split`].
//! - `rewrite`: expression rewrites applied to every statement (parameters, casts, functions).
//! - `types`: PostgreSQL types → SQLite declared and cast types; [`pg_type_name`] back.
//! - `ddl`: CREATE/DROP/ALTER TABLE, CREATE INDEX/VIEW, TRUNCATE.
//! - `session`: BEGIN/COMMIT/ROLLBACK, SET/RESET/SHOW, statements accepted and ignored.
//! - `catalog`: psql's and pgbench's `pg_catalog` queries answered from `sqlite_schema`.
//! - `copy`: COPY FROM STDIN statements and their text/CSV data.
//! - `command`: [`Command`] and [`Kind`]; `translate`: the entry point; `error`: [`CompatError`].

mod catalog;
mod command;
mod copy;
mod cursor;
mod ddl;
pub mod error;
mod lexer;
mod rewrite;
mod session;
mod translate;
mod types;

pub use command::{Command, Kind};
pub use copy::{copy_insert_sql, parse_copy_rows, CopyDecoder, CopyFormat, CopyIn, CopyRow};
pub use error::CompatError;
pub use lexer::split;
pub use rewrite::param_count;
pub use translate::{translate, translate_for};
pub use types::pg_type_name;

/// The PostgreSQL version Scribe reports (`server_version` in ParameterStatus, `SHOW`).
pub const SERVER_VERSION: &str = "15.0";

/// What a session's SQL functions return: `current_database()`, `current_user`,
/// `pg_backend_pid()`, and the owner shown by psql's `\dt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The database the client connected to.
    pub database: String,
    /// The user the client connected as.
    pub user: String,
    /// The id the session reports as its backend process id.
    pub backend_pid: i32,
    /// Whether the node is a multi-master one: the catalog then shows each table's conflict
    /// policy (as the table's options, `\d+`).
    pub multi_master: bool,
}

impl Default for SessionInfo {
    /// Database and user `scribe`, backend pid 0.
    fn default() -> Self {
        SessionInfo {
            database: "scribe".into(),
            user: "scribe".into(),
            backend_pid: 0,
            multi_master: false,
        }
    }
}

/// The string `SELECT version()` returns: `PostgreSQL 15.0 (Scribe 0.1.0)`.
pub fn version() -> String {
    rewrite::version_string()
}
