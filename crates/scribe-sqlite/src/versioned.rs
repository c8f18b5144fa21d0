//! `versioned` multi-master tables in SQLite (issue 12): each row's versions — every write no
//! other write has seen and replaced, [`scribe_core::multi_master::Versions`] — are kept in
//! `_scribe_mm_versions` beside it; the table shows the winner (the greatest stamp), and the
//! losers are listed in `_scribe_conflicts` (and the view `scribe_conflicts`) for the
//! application, which resolves them with a write that has seen them all. Because the versions
//! merge as a join, every node that has the same writes lists the same conflicts, each once,
//! under the same id.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use scribe_core::multi_master::{Context, Stamp, Version, Versions};
use serde::{Deserialize, Serialize};

use crate::multi_master::{cached, key_text, MmError, MmTable, Ordered};
use crate::value::Value;

/// Each versioned row's versions.
pub const VERSIONS_TABLE: &str = "_scribe_mm_versions";
/// The conflicts the application reads: one row per losing version.
pub const CONFLICTS_TABLE: &str = "_scribe_conflicts";

/// A row's non-key columns, as a version holds them.
pub type Cols = BTreeMap<String, Ordered>;

/// One write of a versioned row, as it replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionChange {
    /// The table.
    pub table: String,
    /// The row's primary key (exact).
    pub key: Vec<Ordered>,
    /// The write: its dot, stamp and row (`None`: a delete).
    pub version: Version<Cols>,
    /// What its writer had seen of the row.
    pub seen: Context,
}

/// Creates the versions and conflicts tables, and the view over the conflicts.
pub fn ensure_tables(conn: &Connection) -> Result<(), MmError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
            tbl TEXT NOT NULL, pk TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (tbl, pk)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {CONFLICTS_TABLE} (
            id TEXT PRIMARY KEY,
            tbl TEXT NOT NULL,
            pk TEXT NOT NULL,
            node TEXT NOT NULL,
            hlc TEXT NOT NULL,
            row TEXT,
            winner_node TEXT NOT NULL,
            winner_row TEXT
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS {CONFLICTS_TABLE}_row ON {CONFLICTS_TABLE} (tbl, pk);
         CREATE VIEW IF NOT EXISTS scribe_conflicts AS
            SELECT id, tbl AS table_name, pk AS key, node, hlc, row, winner_node, winner_row
            FROM {CONFLICTS_TABLE};"
    ))?;
    Ok(())
}

/// The versions of the row of `t` keyed `key`.
pub fn load(conn: &Connection, t: &MmTable, key: &[Value]) -> Result<Versions<Cols>, MmError> {
    let found: Option<String> = cached(
        conn,
        &format!("SELECT state FROM {VERSIONS_TABLE} WHERE tbl = ?1 AND pk = ?2"),
    )?
    .query_row(params![t.name, key_text(key)], |r| r.get(0))
    .optional()?;
    match found {
        None => Ok(Versions::default()),
        Some(s) => serde_json::from_str(&s).map_err(|e| MmError::Damaged {
            table: t.name.clone(),
            why: e.to_string(),
        }),
    }
}

/// A conflict's id: the same on every node for the same losing version.
pub fn conflict_id(table: &str, pk: &str, node: &str, n: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table
        .bytes()
        .chain([0])
        .chain(pk.bytes())
        .chain([0])
        .chain(node.bytes())
        .chain([0])
        .chain(n.to_le_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn row_json(cols: &Option<Cols>) -> Option<String> {
    cols.as_ref().map(|c| {
        let plain: BTreeMap<&String, &Value> = c.iter().map(|(k, v)| (k, &v.0)).collect();
        serde_json::to_string(&plain).unwrap_or_default()
    })
}

fn hlc_text(s: &Stamp) -> String {
    format!("{}.{}", s.hlc.wall_ms, s.hlc.logical)
}

/// Stores `versions` as the row's, shows its winner in the table (or no row), and lists its
/// losers in the conflicts table.
pub fn store(
    conn: &Connection,
    t: &MmTable,
    key: &[Value],
    versions: &Versions<Cols>,
    show: bool,
) -> Result<(), MmError> {
    let pk = key_text(key);
    let state = serde_json::to_string(versions).map_err(|e| MmError::Invalid(e.to_string()))?;
    cached(
        conn,
        &format!(
            "INSERT INTO {VERSIONS_TABLE} (tbl, pk, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (tbl, pk) DO UPDATE SET state = excluded.state"
        ),
    )?
    .execute(params![t.name, pk, state])?;
    cached(
        conn,
        &format!("DELETE FROM {CONFLICTS_TABLE} WHERE tbl = ?1 AND pk = ?2"),
    )?
    .execute(params![t.name, pk])?;
    let winner = versions.winner();
    if let Some(w) = winner {
        for c in versions.conflicts() {
            cached(
                conn,
                &format!(
                    "INSERT INTO {CONFLICTS_TABLE} (id, tbl, pk, node, hlc, row, winner_node, winner_row)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
            )?
            .execute(params![
                conflict_id(&t.name, &pk, &c.dot.node, c.dot.n),
                t.name,
                pk,
                c.dot.node,
                hlc_text(&c.stamp),
                row_json(&c.value),
                w.dot.node,
                row_json(&w.value),
            ])?;
        }
    }
    if !show {
        return Ok(());
    }
    let shown = winner.and_then(|w| w.value.clone());
    crate::multi_master::show_row(conn, t, key, shown.as_ref())
}

/// Takes a write of another node (or this node's, replayed) into its row.
pub fn apply(conn: &Connection, t: &MmTable, change: &VersionChange) -> Result<(), MmError> {
    let key: Vec<Value> = change.key.iter().map(|o| o.0.clone()).collect();
    crate::multi_master::check_key(t, &key)?;
    let mut versions = load(conn, t, &key)?;
    versions.apply(change.version.clone(), &change.seen);
    store(conn, t, &key, &versions, true)
}

/// The non-key columns of the row of `t` keyed `key` as the table holds it now (`None`: no
/// such row).
pub fn current(conn: &Connection, t: &MmTable, key: &[Value]) -> Result<Option<Cols>, MmError> {
    let others: Vec<&String> = t.columns.iter().filter(|c| !t.key.contains(c)).collect();
    let names = if others.is_empty() {
        "1".to_string()
    } else {
        others
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "SELECT {names} FROM \"{}\" WHERE {}",
        t.name.replace('"', "\"\""),
        crate::multi_master::key_match(t)
    );
    let found: Option<Vec<Value>> = cached(conn, &sql)?
        .query_row(rusqlite::params_from_iter(key.iter()), |r| {
            (0..others.len().max(1))
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect()
        })
        .optional()?;
    Ok(found.map(|vals| {
        others
            .iter()
            .zip(vals)
            .map(|(c, v)| ((*c).clone(), Ordered(v)))
            .collect()
    }))
}
