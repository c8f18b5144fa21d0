//! The meta table `_scribe_meta`: one row holding the `(term, lsn)` of the last record applied to
//! this SQLite database. It is written in the same SQLite transaction as the changes it covers,
//! so after any crash it says exactly which records the database holds.

use rusqlite::{Connection, OptionalExtension};
use scribe_core::{Lsn, Position, Term};

/// Creates the meta table and its row if missing (identical on every node; never logged).
pub fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _scribe_meta (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             applied_term INTEGER NOT NULL,
             applied_lsn INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO _scribe_meta (id, applied_term, applied_lsn) VALUES (1, 0, 0);",
    )
}

/// The last applied position.
pub fn applied(conn: &Connection) -> rusqlite::Result<Position> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(concat!(
            "/*scribe-internal*/ ",
            "SELECT applied_term, applied_lsn FROM _scribe_meta WHERE id = 1"
        ))?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (term, lsn) = row.unwrap_or((0, 0));
    Ok(Position::new(Term(term as u64), Lsn(lsn as u64)))
}

/// Records `pos` as applied, inside the caller's transaction.
pub fn set_applied(conn: &Connection, pos: Position) -> rusqlite::Result<()> {
    conn.prepare_cached(
        // Marked like every cached internal statement (see `exec::INTERNAL_MARK`).
        "/*scribe-internal*/ UPDATE _scribe_meta SET applied_term = ?1, applied_lsn = ?2 WHERE id = 1",
    )?
    .execute([pos.term.0 as i64, pos.lsn.0 as i64])?;
    Ok(())
}
