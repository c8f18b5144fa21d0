//! What a translated statement asks the session layer to do: [`Command`], and for SQL the
//! [`Kind`] that routes it (read connection or writer) and names its command tag.

use crate::copy::CopyIn;

/// What one PostgreSQL statement becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run `sql` (SQLite's dialect, `?n` parameters) on SQLite.
    Sql {
        /// The SQLite statement.
        sql: String,
        /// What it is, for routing and the command tag.
        kind: Kind,
    },
    /// Several SQLite statements that together do what one PostgreSQL statement does
    /// (`DROP TABLE a, b` → two DROPs; `TRUNCATE a, b` → two `DELETE FROM`s). Run them in order
    /// in one transaction; answer with `tag`, PostgreSQL's command tag (`DROP TABLE`,
    /// `TRUNCATE TABLE`). They are all writes.
    Multi {
        /// The SQLite statements, in order.
        sqls: Vec<String>,
        /// The command tag.
        tag: String,
    },
    /// `BEGIN`, `START TRANSACTION` (isolation and access-mode options are accepted and ignored:
    /// SQLite transactions are serializable).
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`. (`ROLLBACK TO SAVEPOINT x` is [`Command::Sql`].)
    Rollback,
    /// `SET [SESSION|LOCAL] name {=|TO} value[, ...]`, `SET TIME ZONE x` (name `timezone`),
    /// `SET NAMES x` (name `client_encoding`). `name` is lower-cased; `value` is unquoted, list
    /// values are joined with `", "`; `DEFAULT` gives `None`.
    Set {
        /// The parameter name, lower-cased.
        name: String,
        /// The new value; `None` resets it to its default.
        value: Option<String>,
        /// `SET LOCAL`: for the rest of the transaction only.
        local: bool,
    },
    /// `RESET name`; `RESET ALL` is `None`.
    Reset {
        /// The parameter, lower-cased; `None` for all.
        name: Option<String>,
    },
    /// `SHOW name` (lower-cased; `SHOW ALL` is `all`, `SHOW TIME ZONE` is `timezone`,
    /// `SHOW TRANSACTION ISOLATION LEVEL` is `transaction_isolation`); also
    /// `SELECT current_setting('name')`. PostgreSQL answers one text column named after the
    /// parameter (`current_setting` for the SELECT form).
    Show {
        /// The parameter name, lower-cased.
        name: String,
    },
    /// `COPY ... FROM STDIN`: answer `CopyInResponse`, decode the data with
    /// [`crate::parse_copy_rows`] and insert it with [`crate::copy_insert_sql`].
    CopyIn(CopyIn),
    /// Accepted and ignored; answer with `tag` (`VACUUM`, `ANALYZE`, `CHECKPOINT`,
    /// `DISCARD ALL`, `DEALLOCATE`, `DEALLOCATE ALL`, `LISTEN`, `UNLISTEN`, `SET`,
    /// `SET CONSTRAINTS`, `LOCK TABLE`, `COMMENT`, `GRANT`, `REVOKE`, `ALTER TABLE`).
    Noop {
        /// The command tag.
        tag: String,
    },
    /// Only spaces and comments: answer `EmptyQueryResponse`.
    Empty,
}

/// What an SQL statement is: where to run it and how to name its command tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Returns rows and changes nothing (`SELECT`, `VALUES`, `WITH ... SELECT`, `TABLE t`,
    /// `EXPLAIN`, catalog queries): may run on a read connection. Tag `SELECT <rows>`.
    Read,
    /// `INSERT` (also `WITH ... INSERT`). Tag `INSERT 0 <rows>`.
    Insert,
    /// `UPDATE`. Tag `UPDATE <rows>`.
    Update,
    /// `DELETE`. Tag `DELETE <rows>`.
    Delete,
    /// Schema change; the tag is complete (`CREATE TABLE`, `DROP INDEX`, `ALTER TABLE`).
    Ddl {
        /// The command tag.
        tag: String,
    },
    /// Anything else that runs on the writer (`SAVEPOINT`, `RELEASE`, `ROLLBACK` to a
    /// savepoint, `REINDEX`); the tag is complete.
    Other {
        /// The command tag.
        tag: String,
    },
}

impl Kind {
    /// Whether the statement may run on a read connection.
    pub fn is_read(&self) -> bool {
        matches!(self, Kind::Read)
    }

    /// PostgreSQL's command tag for this statement having affected or returned `rows` rows.
    pub fn command_tag(&self, rows: u64) -> String {
        match self {
            Kind::Read => format!("SELECT {rows}"),
            Kind::Insert => format!("INSERT 0 {rows}"),
            Kind::Update => format!("UPDATE {rows}"),
            Kind::Delete => format!("DELETE {rows}"),
            Kind::Ddl { tag } | Kind::Other { tag } => tag.clone(),
        }
    }
}

impl Command {
    /// A [`Command::Noop`] with `tag`.
    pub(crate) fn noop(tag: &str) -> Self {
        Command::Noop { tag: tag.into() }
    }

    /// A [`Command::Sql`] with a DDL tag.
    pub(crate) fn ddl(sql: String, tag: &str) -> Self {
        Command::Sql {
            sql,
            kind: Kind::Ddl { tag: tag.into() },
        }
    }

    /// One SQLite statement as a plain [`Command::Sql`], several as [`Command::Multi`].
    pub(crate) fn ddl_many(mut sqls: Vec<String>, tag: &str) -> Self {
        if sqls.len() == 1 {
            Command::ddl(sqls.remove(0), tag)
        } else {
            Command::Multi {
                sqls,
                tag: tag.into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_follow_postgresql() {
        assert_eq!(Kind::Read.command_tag(3), "SELECT 3");
        assert_eq!(Kind::Insert.command_tag(1), "INSERT 0 1");
        assert_eq!(Kind::Update.command_tag(0), "UPDATE 0");
        assert_eq!(Kind::Delete.command_tag(2), "DELETE 2");
        let ddl = Kind::Ddl {
            tag: "CREATE TABLE".into(),
        };
        assert_eq!(ddl.command_tag(0), "CREATE TABLE");
        assert!(Kind::Read.is_read() && !ddl.is_read());
    }
}
