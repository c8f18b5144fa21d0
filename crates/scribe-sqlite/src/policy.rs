//! What clients' SQL may do, enforced by SQLite's authorizer when a statement is prepared.
//!
//! Every request is one transaction that Scribe opens and closes, so transaction control and
//! savepoints are refused; ATTACH would reach files outside the database, temporary objects
//! would live on the shared writer connection without replicating, virtual tables cannot be
//! captured as changesets, and `_scribe_*` tables are Scribe's own. Pragmas that only read are
//! served on read connections. Scribe's own statements run with the policy switched off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// Pragmas that take an argument yet only read.
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// Which connection a policy guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The single writer connection.
    Writer,
    /// A read-only connection of the read pool.
    Reader,
}

/// The authorizer installed on one connection, with the reason of its last refusal.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    internal: Arc<AtomicBool>,
    /// The statement being prepared drops a table (set by the authorizer, cleared before each).
    dropping: Arc<AtomicBool>,
    denied: Arc<Mutex<Option<String>>>,
}

impl Policy {
    /// Installs the policy for `role` on `conn`.
    pub fn install(conn: &mut Connection, role: Role) -> rusqlite::Result<Policy> {
        let policy = Policy::default();
        let (internal, denied) = (policy.internal.clone(), policy.denied.clone());
        let dropping = policy.dropping.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if internal.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            if matches!(
                ctx.action,
                AuthAction::DropTable { .. }
                    | AuthAction::DropTempTable { .. }
                    | AuthAction::DropView { .. }
                    | AuthAction::DropTempView { .. }
            ) {
                dropping.store(true, Ordering::Relaxed);
            }
            match refusal(role, &ctx.action) {
                // A DELETE without WHERE would be compiled as one "clear the table" step that
                // change capture never sees (SQLite's truncate optimization); answering IGNORE for
                // the delete action keeps the DELETE but makes SQLite delete row by row. Not
                // for SQLite's own tables nor inside a DROP TABLE, which check the same action
                // (on the schema table, then on the table) and would skip the drop.
                None if role == Role::Writer
                    && matches!(ctx.action, AuthAction::Delete { table_name } if !table_name.to_ascii_lowercase().starts_with("sqlite_"))
                    && !dropping.load(Ordering::Relaxed) =>
                {
                    Authorization::Ignore
                }
                None => Authorization::Allow,
                Some(reason) => {
                    *denied.lock().expect("policy note") = Some(reason);
                    Authorization::Deny
                }
            }
        }))?;
        Ok(policy)
    }

    /// Runs Scribe's own statements with the policy off.
    pub fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        self.internal.store(true, Ordering::Relaxed);
        let out = f();
        self.internal.store(false, Ordering::Relaxed);
        out
    }

    /// Forgets the last refusal; call before preparing a client's statement.
    pub fn clear(&self) {
        self.dropping.store(false, Ordering::Relaxed);
        *self.denied.lock().expect("policy note") = None;
    }

    /// The reason of the last refusal, if any.
    pub fn take_denied(&self) -> Option<String> {
        self.denied.lock().expect("policy note").take()
    }
}

fn is_own(table: &str) -> bool {
    table.len() >= 7 && table[..7].eq_ignore_ascii_case("_scribe")
}

fn refusal(role: Role, action: &AuthAction<'_>) -> Option<String> {
    use AuthAction::*;
    match action {
        Transaction { .. } => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK) is not allowed here: every request is one transaction; \
             send all its statements in one request"
                .into(),
        ),
        Savepoint { .. } => Some("SAVEPOINT and RELEASE are not allowed: every request is one transaction".into()),
        Attach { .. } | Detach { .. } => Some("ATTACH and DETACH are not allowed".into()),
        CreateVtable { .. } | DropVtable { .. } => {
            Some("virtual tables are not supported: their changes cannot be replicated as changesets".into())
        }
        CreateTempTable { .. } | CreateTempIndex { .. } | CreateTempTrigger { .. } | CreateTempView { .. }
            if role == Role::Writer =>
        {
            Some("temporary tables, indexes, triggers and views are not allowed in writes: they would not replicate".into())
        }
        Insert { table_name } | Delete { table_name } | Update { table_name, .. } | DropTable { table_name }
            if is_own(table_name) =>
        {
            Some(format!("table {table_name} belongs to Scribe and cannot be changed"))
        }
        AlterTable { table_name, .. } if is_own(table_name) => {
            Some(format!("table {table_name} belongs to Scribe and cannot be changed"))
        }
        CreateTable { table_name } if is_own(table_name) => {
            Some("names starting with _scribe are reserved for Scribe".into())
        }
        Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            let reads = READ_PRAGMAS.contains(&name.as_str());
            match (role, pragma_value) {
                (_, Some(_)) if reads => None,
                (Role::Reader, None) => None,
                (Role::Writer, _) => Some(format!(
                    "PRAGMA {pragma_name} is not allowed in a write; pragmas that read are served by /v1/query"
                )),
                (Role::Reader, Some(_)) => {
                    Some(format!("PRAGMA {pragma_name} with a value is not allowed: Scribe manages connection settings"))
                }
            }
        }
        _ => None,
    }
}
