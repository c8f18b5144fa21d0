//! Multi-master rows in SQLite (issue 12, DESIGN.md §6): each row of a multi-master table has its
//! replicated state — its life and its columns' cells, [`scribe_core::multi_master::Row`] — in
//! the `_scribe_mm_rows` table beside it, and the table itself holds what that state shows.
//! [`apply_delta`] is the one way a change reaches such a row, local or remote: merge the change
//! into the stored state, store it, and write the row the merged state shows (insert, update or
//! delete). Because the merge is a join, two databases given the same changes in any order end
//! identical.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use scribe_core::multi_master::{Cell, ColumnRule, Hlc, Row, Stamp, TablePolicy, Write};
use serde::{Deserialize, Serialize};

use crate::changeset::{Changes, Op};
use crate::value::Value;

/// The table of replicated row states.
pub const ROWS_TABLE: &str = "_scribe_mm_rows";

/// A SQL value in a total order close to SQLite's (NULL, then numbers, then text, then blobs),
/// so that the `max` and `min` rules and the last-writer tie-break order values the same on
/// every node. Unlike SQLite, an integer and a real of the same magnitude are different values
/// (the integer sorts first), and text compares by bytes whatever the column's collation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Ordered(pub Value);

/// How an [`Ordered`] is stored: exactly (a real keeps its bits, a blob its bytes).
#[derive(Serialize, Deserialize)]
enum Stored {
    N,
    I(i64),
    R(u64),
    T(String),
    B(Vec<u8>),
}

impl From<Stored> for Ordered {
    fn from(s: Stored) -> Ordered {
        Ordered(match s {
            Stored::N => Value::Null,
            Stored::I(i) => Value::Integer(i),
            Stored::R(bits) => Value::Real(f64::from_bits(bits)),
            Stored::T(t) => Value::Text(t),
            Stored::B(b) => Value::Blob(b),
        })
    }
}

impl From<Ordered> for Stored {
    fn from(o: Ordered) -> Stored {
        match o.0 {
            Value::Null => Stored::N,
            Value::Integer(i) => Stored::I(i),
            Value::Real(f) => Stored::R(f.to_bits()),
            Value::Text(t) => Stored::T(t),
            Value::Blob(b) => Stored::B(b),
        }
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Ordered) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        use Value::*;
        let rank = |v: &Value| match v {
            Null => 0,
            Integer(_) | Real(_) => 1,
            Text(_) => 2,
            Blob(_) => 3,
        };
        match (&self.0, &other.0) {
            (Integer(a), Integer(b)) => a.cmp(b),
            (Real(a), Real(b)) => a.total_cmp(b),
            (Integer(a), Real(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
            (Real(a), Integer(b)) => a.total_cmp(&(*b as f64)).then(Ordering::Greater),
            (Text(a), Text(b)) => a.cmp(b),
            (Blob(a), Blob(b)) => a.cmp(b),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Ordered) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ordered {
    fn eq(&self, other: &Ordered) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ordered {}

/// A multi-master table: its name, its primary key's columns and all its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmTable {
    /// The table's name.
    pub name: String,
    /// Its primary key's columns, in key order.
    pub key: Vec<String>,
    /// Every column, in declared order (the order of a changeset's values).
    pub columns: Vec<String>,
    /// The columns' DEFAULT expressions, as SQL text (a column without one is absent).
    pub defaults: BTreeMap<String, String>,
}

/// Why a multi-master change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row state that does not decode: the database is damaged.
    #[error("the replicated state of a row of {table} does not decode: {why}")]
    Damaged {
        /// The table.
        table: String,
        /// What was wrong.
        why: String,
    },
    /// A change that does not fit the table.
    #[error("{0}")]
    Invalid(String),
}

/// `sql` prepared once and cached, marked as Scribe's own: a client's statement of the same text
/// never finds it in the cache (it was prepared without the client's SQL policy).
pub(crate) fn cached<'c>(
    conn: &'c Connection,
    sql: &str,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    conn.prepare_cached(&format!("{}{sql}", crate::exec::INTERNAL_MARK))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Creates the table of replicated row states if it is not there.
pub fn ensure_tables(conn: &Connection) -> Result<(), MmError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {ROWS_TABLE} (
            tbl TEXT NOT NULL,
            pk TEXT NOT NULL,
            life INTEGER NOT NULL,
            cells TEXT NOT NULL,
            PRIMARY KEY (tbl, pk)
        ) WITHOUT ROWID"
    ))?;
    Ok(())
}

/// The primary key and the columns of `table`, from SQLite's schema. Its key must not admit
/// NULL: SQLite lets a rowid table's key column hold NULL unless it is declared NOT NULL, and
/// rows keyed by NULL are never the same row, so a change could not find its row again.
pub fn table(conn: &Connection, name: &str) -> Result<MmTable, MmError> {
    let mut stmt = conn.prepare(
        "SELECT name, pk, \"notnull\", dflt_value FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let rows = stmt
        .query_map([name], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                ),
                r.get::<_, Option<String>>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let defaults: BTreeMap<String, String> = rows
        .iter()
        .filter_map(|((c, _, _), d)| d.clone().map(|d| (c.clone(), d)))
        .collect();
    let info: Vec<(String, i64, bool)> = rows.into_iter().map(|(i, _)| i).collect();
    let mut keyed: Vec<&(String, i64, bool)> = info.iter().filter(|c| c.1 > 0).collect();
    keyed.sort_by_key(|c| c.1);
    if keyed.is_empty() {
        return Err(MmError::Invalid(format!(
            "table {name:?} has no PRIMARY KEY (or does not exist): a multi-master table needs one"
        )));
    }
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if !without_rowid {
        if let Some(c) = keyed.iter().find(|c| !c.2) {
            return Err(MmError::Invalid(format!(
                "table {name:?}: its key column {:?} admits NULL; declare the key columns NOT NULL (or the table WITHOUT ROWID)",
                c.0
            )));
        }
    }
    Ok(MmTable {
        name: name.to_string(),
        key: keyed.iter().map(|c| c.0.clone()).collect(),
        columns: info.iter().map(|c| c.0.clone()).collect(),
        defaults,
    })
}

/// `"k1" IS ?1 AND "k2" IS ?2 ...`: the row of `t` whose key is bound as parameters 1, 2...
pub(crate) fn key_match(t: &MmTable) -> String {
    t.key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS ?{}", quote(c), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(crate) fn key_text(key: &[Value]) -> String {
    let stored: Vec<Stored> = key.iter().cloned().map(|v| Ordered(v).into()).collect();
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The stored state of the row with primary key `key` (a default row if it has none).
pub fn load(conn: &Connection, t: &MmTable, key: &[Value]) -> Result<Row<Ordered>, MmError> {
    let found: Option<(i64, String)> = crate::multi_master::cached(
        conn,
        &format!("SELECT life, cells FROM {ROWS_TABLE} WHERE tbl = ?1 AND pk = ?2"),
    )?
    .query_row(params![t.name, key_text(key)], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()?;
    let Some((life, cells)) = found else {
        return Ok(Row::default());
    };
    let cells = serde_json::from_str(&cells).map_err(|e| MmError::Damaged {
        table: t.name.clone(),
        why: e.to_string(),
    })?;
    Ok(Row {
        life: life as u64,
        cells,
    })
}

/// The greatest HLC among the stamps stored in every row state: a node's clock starts past it
/// ([`scribe_core::multi_master::Clock::new`]), so that no local write after a restart is
/// stamped before a write it already holds, from itself or from another node.
pub fn max_stamp(conn: &Connection) -> Result<Hlc, MmError> {
    let mut stmt = conn.prepare(&format!("SELECT tbl, cells FROM {ROWS_TABLE}"))?;
    let mut rows = stmt.query([])?;
    let mut max = Hlc::default();
    while let Some(r) = rows.next()? {
        let (tbl, cells): (String, String) = (r.get(0)?, r.get(1)?);
        let cells: BTreeMap<String, Cell<Ordered>> =
            serde_json::from_str(&cells).map_err(|e| MmError::Damaged {
                table: tbl,
                why: e.to_string(),
            })?;
        for cell in cells.values() {
            if let Cell::Register { stamp, .. } = cell {
                max = max.max(stamp.hlc);
            }
        }
    }
    Ok(max)
}

/// What a cell shows in its column.
fn shown(cell: &Cell<Ordered>) -> Value {
    match cell {
        Cell::Counter(_) => {
            let n = cell.count().unwrap_or(0);
            Value::Integer(n.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        }
        other => other.value().map(|v| v.0.clone()).unwrap_or(Value::Null),
    }
}

/// Merges `delta` (a change made here or on another node) into the row with primary key `key`,
/// stores the merged state and writes the row it shows. Answers the merged state.
pub fn apply_delta(
    conn: &Connection,
    t: &MmTable,
    key: &[Value],
    delta: &Row<Ordered>,
) -> Result<Row<Ordered>, MmError> {
    check_key(t, key)?;
    let before = load(conn, t, key)?;
    let merged = before.merge(delta);
    let cells =
        serde_json::to_string(&merged.cells).map_err(|e| MmError::Invalid(e.to_string()))?;
    // Prepared once per text: these run for every row of every transaction.
    crate::multi_master::cached(
        conn,
        &format!(
            "INSERT INTO {ROWS_TABLE} (tbl, pk, life, cells) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tbl, pk) DO UPDATE SET life = excluded.life, cells = excluded.cells"
        ),
    )?
    .execute(params![t.name, key_text(key), merged.life as i64, cells])?;
    let table = quote(&t.name);
    let key_match = key_match(t);
    if !merged.exists() {
        crate::multi_master::cached(conn, &format!("DELETE FROM {table} WHERE {key_match}"))?
            .execute(rusqlite::params_from_iter(key.iter()))?;
        return Ok(merged);
    }
    // The key's columns, then every column the state has a cell for — and, in a new life, every
    // other column too (NULL): nothing of the life before may stay in the row.
    let new_life = merged.life != before.life;
    let mut given: Vec<(&String, Value)> = Vec::new();
    // Columns the new life has no cell for (added after its write, on some node) take their
    // DEFAULT, as ALTER TABLE gives a row that exists when it runs: the same on every node
    // whichever came first.
    let mut defaulted: Vec<&String> = Vec::new();
    for col in &t.columns {
        if t.key.iter().any(|k| k.eq_ignore_ascii_case(col)) {
            continue;
        }
        match merged.cells.get(col) {
            Some(cell) => given.push((col, shown(cell))),
            None if new_life && t.defaults.contains_key(col) => defaulted.push(col),
            None if new_life => given.push((col, Value::Null)),
            None => {}
        }
    }
    upsert(conn, t, key, given, &defaulted)?;
    Ok(merged)
}

/// Refuses a key of another length than `t`'s primary key.
pub(crate) fn check_key(t: &MmTable, key: &[Value]) -> Result<(), MmError> {
    if key.len() != t.key.len() {
        return Err(MmError::Invalid(format!(
            "a key of {} values for table {:?}, whose primary key has {}",
            key.len(),
            t.name,
            t.key.len()
        )));
    }
    Ok(())
}

/// Writes the row of `t` keyed `key` as `cols` shows it, every non-key column (NULL for one
/// `cols` lacks), or deletes it for `None`: what a `versioned` row's winner shows.
pub(crate) fn show_row(
    conn: &Connection,
    t: &MmTable,
    key: &[Value],
    cols: Option<&BTreeMap<String, Ordered>>,
) -> Result<(), MmError> {
    let table = quote(&t.name);
    let Some(cols) = cols else {
        cached(conn, &format!("DELETE FROM {table} WHERE {}", key_match(t)))?
            .execute(rusqlite::params_from_iter(key.iter()))?;
        return Ok(());
    };
    // A column the version has no value for (added after it was written) takes its DEFAULT.
    let (given, defaulted): (Vec<&String>, Vec<&String>) = t
        .columns
        .iter()
        .filter(|c| !t.key.contains(c))
        .partition(|c| cols.contains_key(*c) || !t.defaults.contains_key(*c));
    let given = given
        .into_iter()
        .map(|c| (c, cols.get(c).map(|o| o.0.clone()).unwrap_or(Value::Null)))
        .collect();
    upsert(conn, t, key, given, &defaulted)
}

/// Inserts the row of `t` keyed `key` with the `given` columns' values, or, if it is there,
/// sets them and sets the `defaulted` columns to their DEFAULT (a new row gets those anyway).
fn upsert(
    conn: &Connection,
    t: &MmTable,
    key: &[Value],
    given: Vec<(&String, Value)>,
    defaulted: &[&String],
) -> Result<(), MmError> {
    let names: Vec<String> = t
        .key
        .iter()
        .chain(given.iter().map(|(c, _)| *c))
        .map(|c| quote(c))
        .collect();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let conflict: Vec<String> = t.key.iter().map(|c| quote(c)).collect();
    let set: Vec<String> = given
        .iter()
        .map(|(c, _)| format!("{0} = excluded.{0}", quote(c)))
        .chain(
            defaulted
                .iter()
                .map(|c| format!("{} = ({})", quote(c), t.defaults[*c])),
        )
        .collect();
    let upsert = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    let values: Vec<Value> = key
        .iter()
        .cloned()
        .chain(given.into_iter().map(|(_, v)| v))
        .collect();
    cached(
        conn,
        &format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {upsert}",
            quote(&t.name),
            names.join(", "),
            marks.join(", "),
            conflict.join(", ")
        ),
    )?
    .execute(rusqlite::params_from_iter(values.iter()))?;
    Ok(())
}

/// A multi-master table and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmSchema {
    /// The table, its key and its columns.
    pub table: MmTable,
    /// How its concurrent writes merge (`lww`, `merge`), or are kept as versions (`versioned`,
    /// see [`crate::versioned`]).
    pub policy: TablePolicy,
}

/// The schema of table `name` under `policy`.
pub fn schema(conn: &Connection, name: &str, policy: TablePolicy) -> Result<MmSchema, MmError> {
    let table = table(conn, name)?;
    if policy == TablePolicy::Versioned {
        return Ok(MmSchema { table, policy });
    }
    policy
        .check_columns(table.columns.iter().map(String::as_str))
        .map_err(MmError::Invalid)?;
    Ok(MmSchema { table, policy })
}

/// One changed row of a multi-master table, as it replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// The table.
    pub table: String,
    /// The row's primary key (stored exactly: a real keeps its bits).
    #[serde(with = "exact_values")]
    pub key: Vec<Value>,
    /// What the change did to the row's replicated state (the merge takes it in).
    pub delta: Row<Ordered>,
}

/// Values as [`Ordered`] stores them, so that a key crosses the network unchanged.
mod exact_values {
    use super::{Ordered, Value};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Value], s: S) -> Result<S::Ok, S::Error> {
        let o: Vec<Ordered> = v.iter().cloned().map(Ordered).collect();
        o.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
        Ok(Vec::<Ordered>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

fn integer(v: &Value, col: &str) -> Result<i64, MmError> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Null => Ok(0),
        _ => Err(MmError::Invalid(format!(
            "column {col:?} is a sum counter: its values must be integers"
        ))),
    }
}

/// The state of a row that exists in `sc`'s table without a stored state (it was written before
/// the table was multi-master): each column's value — `before`'s for the columns it names,
/// the table's for the others — with the zero stamp, in life 1.
fn backfill(
    conn: &Connection,
    sc: &MmSchema,
    key: &[Value],
    before: &BTreeMap<String, Value>,
) -> Result<Row<Ordered>, MmError> {
    let t = &sc.table;
    let others: Vec<&String> = t
        .columns
        .iter()
        .filter(|c| !t.key.contains(c) && !before.contains_key(*c))
        .collect();
    let mut current: BTreeMap<String, Value> = BTreeMap::new();
    if !others.is_empty() {
        let names = others
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {names} FROM {} WHERE {}",
            quote(&t.name),
            key_match(t)
        );
        let found: Option<Vec<Value>> = conn
            .query_row(&sql, rusqlite::params_from_iter(key.iter()), |r| {
                (0..others.len())
                    .map(|i| r.get_ref(i).map(Value::from_ref))
                    .collect()
            })
            .optional()?;
        for (c, v) in others.iter().zip(found.unwrap_or_default()) {
            current.insert((*c).clone(), v);
        }
    }
    let zero = Stamp {
        hlc: scribe_core::multi_master::Hlc::default(),
        node: String::new(),
    };
    let mut row = Row {
        life: 1,
        cells: BTreeMap::new(),
    };
    for col in t.columns.iter().filter(|c| !t.key.contains(c)) {
        let Some(v) = before.get(col).or_else(|| current.get(col)).cloned() else {
            continue;
        };
        let cell = match sc.policy.rule(&col.to_ascii_lowercase()) {
            ColumnRule::Lww => Cell::Register {
                value: Ordered(v),
                stamp: zero.clone(),
            },
            ColumnRule::Max | ColumnRule::Min if v == Value::Null => continue,
            ColumnRule::Max => Cell::Max(Ordered(v)),
            ColumnRule::Min => Cell::Min(Ordered(v)),
            ColumnRule::Sum => {
                let n = integer(&v, col)?;
                let mut m = BTreeMap::new();
                m.insert(String::new(), (n.max(0) as u64, n.min(0).unsigned_abs()));
                Cell::Counter(m)
            }
        };
        row.cells.insert(col.clone(), cell);
    }
    Ok(row)
}

/// Turns the changeset of a local transaction into the row changes it replicates as, stamped
/// `stamp`, and takes each into the rows' stored states ([`apply_delta`]). Changes of tables not
/// in `schemas` are left out (they are not multi-master tables).
pub fn capture_local(
    conn: &Connection,
    schemas: &BTreeMap<String, MmSchema>,
    changeset: &[u8],
    stamp: &Stamp,
) -> Result<Vec<RowChange>, MmError> {
    let mut out = Vec::new();
    let mut changes = Changes::new(changeset).map_err(|e| MmError::Invalid(e.to_string()))?;
    while let Some(c) = changes
        .next_change()
        .map_err(|e| MmError::Invalid(e.to_string()))?
    {
        let Some(sc) = schemas.get(c.table()) else {
            continue;
        };
        let side = |i: usize, after: bool| {
            let v = if after { c.after(i) } else { c.before(i) };
            v.map(Value::from_ref)
        };
        let key_after = c.op() == Op::Insert;
        let key: Vec<Value> = sc
            .table
            .key
            .iter()
            .map(|k| {
                let i = sc.table.columns.iter().position(|c| c == k).unwrap_or(0);
                side(i, key_after).unwrap_or(Value::Null)
            })
            .collect();
        let mut state = load(conn, &sc.table, &key)?;
        if state.life == 0 && c.op() != Op::Insert {
            // A row from before the table was multi-master: its state is what it held before
            // this change, stamped with the zero stamp (every node that has the row from the
            // same snapshot makes the same one), stored before the change goes on top.
            let mut before = BTreeMap::new();
            for (i, col) in sc.table.columns.iter().enumerate() {
                if let Some(v) = side(i, false) {
                    before.insert(col.clone(), v);
                }
            }
            state = backfill(conn, sc, &key, &before)?;
            apply_delta(conn, &sc.table, &key, &state)?;
        }
        let rule = |col: &str| sc.policy.rule(&col.to_ascii_lowercase());
        let delta = match c.op() {
            Op::Insert => {
                let mut values = Vec::new();
                for (i, col) in sc.table.columns.iter().enumerate() {
                    if sc.table.key.contains(col) {
                        continue;
                    }
                    let v = side(i, true).unwrap_or(Value::Null);
                    let w = match rule(col) {
                        ColumnRule::Sum => Write::Add(integer(&v, col)?),
                        // NULL is no value for `max` and `min`: it does not take part.
                        ColumnRule::Max | ColumnRule::Min if v == Value::Null => continue,
                        _ => Write::Set(Ordered(v)),
                    };
                    values.push((col.clone(), rule(col), w));
                }
                state
                    .insert(values, stamp)
                    .map_err(|e| MmError::Invalid(e.to_string()))?;
                state.clone()
            }
            Op::Update => {
                let mut delta = Row {
                    life: state.life,
                    cells: BTreeMap::new(),
                };
                for (i, col) in sc.table.columns.iter().enumerate() {
                    let Some(new) = side(i, true) else { continue };
                    if sc.table.key.contains(col) {
                        continue;
                    }
                    let w = match rule(col) {
                        ColumnRule::Sum => {
                            let old = side(i, false).unwrap_or(Value::Null);
                            let delta = integer(&new, col)?
                                .checked_sub(integer(&old, col)?)
                                .ok_or_else(|| {
                                    MmError::Invalid(format!(
                                        "column {col:?}: the counter's change does not fit 64 bits"
                                    ))
                                })?;
                            Write::Add(delta)
                        }
                        ColumnRule::Max | ColumnRule::Min if new == Value::Null => continue,
                        _ => Write::Set(Ordered(new)),
                    };
                    state
                        .update(col, rule(col), w, stamp)
                        .map_err(|e| MmError::Invalid(e.to_string()))?;
                    delta.cells.insert(col.clone(), state.cells[col].clone());
                }
                delta
            }
            Op::Delete => {
                state
                    .delete()
                    .map_err(|e| MmError::Invalid(e.to_string()))?;
                state.clone()
            }
        };
        apply_delta(conn, &sc.table, &key, &delta)?;
        out.push(RowChange {
            table: sc.table.name.clone(),
            key,
            delta,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::multi_master::{ColumnRule, Stamp, Write};

    fn db() -> Connection {
        let c = Connection::open_in_memory().expect("open");
        c.execute_batch(
            "CREATE TABLE item (id TEXT NOT NULL PRIMARY KEY, name TEXT, views INTEGER, best REAL)",
        )
        .expect("schema");
        ensure_tables(&c).expect("mm tables");
        c
    }

    fn at(ms: u64, node: &str) -> Stamp {
        Stamp {
            hlc: Hlc {
                wall_ms: ms,
                logical: 0,
            },
            node: node.into(),
        }
    }

    fn text(s: &str) -> Ordered {
        Ordered(Value::Text(s.into()))
    }

    fn real(f: f64) -> Ordered {
        Ordered(Value::Real(f))
    }

    /// `(id, name, views, best)`.
    type ItemRow = (String, Option<String>, Option<i64>, Option<f64>);

    fn rows(c: &Connection) -> Vec<ItemRow> {
        let mut s = c
            .prepare("SELECT id, name, views, best FROM item ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Deltas as two nodes would make them: an insert on n1, then concurrent writes.
    fn deltas() -> Vec<Row<Ordered>> {
        let mut base = Row::default();
        base.insert(
            vec![
                ("name".into(), ColumnRule::Lww, Write::Set(text("lamp"))),
                ("views".into(), ColumnRule::Sum, Write::Add(1)),
                ("best".into(), ColumnRule::Max, Write::Set(real(2.5))),
            ],
            &at(1, "n1"),
        )
        .unwrap();
        let (mut x, mut y) = (base.clone(), base.clone());
        x.update(
            "name",
            ColumnRule::Lww,
            Write::Set(text("desk lamp")),
            &at(5, "n1"),
        )
        .unwrap();
        x.update("views", ColumnRule::Sum, Write::Add(2), &at(5, "n1"))
            .unwrap();
        y.update("views", ColumnRule::Sum, Write::Add(10), &at(6, "n2"))
            .unwrap();
        y.update("best", ColumnRule::Max, Write::Set(real(9.0)), &at(6, "n2"))
            .unwrap();
        vec![base, x, y]
    }

    #[test]
    fn two_databases_given_the_same_changes_in_any_order_end_identical() {
        let key = [Value::Text("i1".into())];
        let (a, b) = (db(), db());
        let t = table(&a, "item").unwrap();
        let d = deltas();
        for delta in &d {
            apply_delta(&a, &t, &key, delta).unwrap();
        }
        for delta in d.iter().rev().chain(d.iter()) {
            apply_delta(&b, &t, &key, delta).unwrap();
        }
        let want = vec![(
            "i1".to_string(),
            Some("desk lamp".to_string()),
            Some(13),
            Some(9.0),
        )];
        assert_eq!(rows(&a), want);
        assert_eq!(rows(&b), want, "another order, and every change twice");
        assert_eq!(load(&a, &t, &key).unwrap(), load(&b, &t, &key).unwrap());
    }

    #[test]
    fn a_delete_removes_the_row_and_a_later_insert_brings_it_back() {
        let key = [Value::Text("i1".into())];
        let c = db();
        let t = table(&c, "item").unwrap();
        let d = deltas();
        apply_delta(&c, &t, &key, &d[0]).unwrap();
        let mut gone = d[0].clone();
        gone.delete().unwrap();
        apply_delta(&c, &t, &key, &gone).unwrap();
        // A concurrent update of the deleted life arrives late: the row stays deleted.
        apply_delta(&c, &t, &key, &d[2]).unwrap();
        assert!(rows(&c).is_empty());
        let mut again = gone.clone();
        again
            .insert(
                vec![("name".into(), ColumnRule::Lww, Write::Set(text("chair")))],
                &at(9, "n2"),
            )
            .unwrap();
        apply_delta(&c, &t, &key, &again).unwrap();
        assert_eq!(
            rows(&c),
            vec![("i1".to_string(), Some("chair".to_string()), None, None)]
        );
    }

    #[test]
    fn values_order_as_sqlite_orders_them_and_store_exactly() {
        let mut all = vec![
            Ordered(Value::Blob(vec![1])),
            text("b"),
            real(2.5),
            Ordered(Value::Integer(2)),
            Ordered(Value::Null),
            real(-1.0),
            real(2.0),
        ];
        all.sort();
        let shown: Vec<Value> = all.iter().map(|o| o.0.clone()).collect();
        assert_eq!(
            shown,
            vec![
                Value::Null,
                Value::Real(-1.0),
                Value::Integer(2),
                Value::Real(2.0),
                Value::Real(2.5),
                Value::Text("b".into()),
                Value::Blob(vec![1]),
            ]
        );
        let text = serde_json::to_string(&all).unwrap();
        let back: Vec<Ordered> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, all);
        assert!(matches!(back[3].0, Value::Real(_)), "a real stays a real");
    }

    /// Runs `sql` on `c` as a local transaction at `stamp`, `item` under `policy`: the changes
    /// it replicates as, or why they could not be captured.
    fn capture(
        c: &Connection,
        policy: &str,
        sql: &str,
        stamp: &Stamp,
    ) -> Result<Vec<RowChange>, MmError> {
        let mut schemas = BTreeMap::new();
        schemas.insert(
            "item".to_string(),
            schema(c, "item", policy.parse().unwrap()).unwrap(),
        );
        let bytes = {
            let capture = crate::capture::Capture::start(c).unwrap();
            c.execute_batch(sql).unwrap();
            capture.changeset().unwrap()
        };
        capture_local(c, &schemas, &bytes, stamp)
    }

    /// [`capture`] with `views` a counter and `best` a maximum.
    fn local(c: &Connection, sql: &str, stamp: &Stamp) -> Vec<RowChange> {
        capture(c, "merge(views = sum, best = max)", sql, stamp).unwrap()
    }

    fn apply_all(c: &Connection, changes: &[RowChange]) {
        let t = table(c, "item").unwrap();
        for ch in changes {
            apply_delta(c, &t, &ch.key, &ch.delta).unwrap();
        }
    }

    #[test]
    fn local_writes_replicate_as_row_changes_and_concurrent_ones_merge() {
        let (a, b) = (db(), db());
        let first = local(
            &a,
            "INSERT INTO item VALUES ('i1', 'lamp', 1, 2.5)",
            &at(1, "n1"),
        );
        apply_all(&b, &first);
        assert_eq!(rows(&a), rows(&b));
        // Concurrently: n1 renames and counts 2 views; n2 counts 10 and sets a better score.
        let on_a = local(
            &a,
            "UPDATE item SET name = 'desk lamp', views = views + 2",
            &at(5, "n1"),
        );
        let on_b = local(
            &b,
            "UPDATE item SET views = views + 10, best = 9.0",
            &at(6, "n2"),
        );
        assert_eq!(on_a.len(), 1);
        assert_eq!(
            on_a[0].delta.cells.len(),
            2,
            "only the columns the update changed"
        );
        apply_all(&a, &on_b);
        apply_all(&b, &on_a);
        let want = vec![(
            "i1".to_string(),
            Some("desk lamp".to_string()),
            Some(13),
            Some(9.0),
        )];
        assert_eq!(rows(&a), want);
        assert_eq!(rows(&b), want);
        // A delete on one side wins over a concurrent update on the other.
        let del = local(&a, "DELETE FROM item WHERE id = 'i1'", &at(7, "n1"));
        let upd = local(&b, "UPDATE item SET name = 'lost'", &at(8, "n2"));
        apply_all(&a, &upd);
        apply_all(&b, &del);
        assert!(rows(&a).is_empty() && rows(&b).is_empty());
    }

    #[test]
    fn a_counter_column_must_hold_integers() {
        let c = db();
        let insert = "INSERT INTO item VALUES ('i1', 'x', 'many', 1.0)";
        let e = capture(&c, "merge(views = sum)", insert, &at(1, "n1")).unwrap_err();
        assert!(e.to_string().contains("integers"), "{e}");
        assert!(schema(&c, "item", "merge(nope = sum)".parse().unwrap()).is_err());
        assert!(schema(&c, "item", TablePolicy::Versioned).is_ok());
    }

    #[test]
    fn rows_from_before_overflowing_counters_and_null_bounds() {
        let c = db();
        c.execute_batch("INSERT INTO item VALUES ('old', 'kept', 1, NULL)")
            .unwrap();
        // A row written before the table was multi-master updates and deletes.
        let ch = local(
            &c,
            "UPDATE item SET name = 'renamed', best = 3.0 WHERE id = 'old'",
            &at(1, "n1"),
        );
        assert_eq!(ch[0].delta.life, 1);
        assert_eq!(
            rows(&c),
            vec![(
                "old".to_string(),
                Some("renamed".to_string()),
                Some(1),
                Some(3.0)
            )]
        );
        // NULL is no value for max: a later NULL does not lower it.
        local(
            &c,
            "UPDATE item SET best = NULL WHERE id = 'old'",
            &at(2, "n1"),
        );
        assert_eq!(rows(&c)[0].3, Some(3.0));
        // A counter change that does not fit 64 bits is refused, not wrapped.
        let set = |v: i64| format!("UPDATE item SET views = {v} WHERE id = 'old'");
        c.execute_batch(&set(i64::MAX)).unwrap();
        let e = capture(&c, "merge(views = sum)", &set(i64::MIN), &at(3, "n1")).unwrap_err();
        assert!(e.to_string().contains("64 bits"), "{e}");
    }

    #[test]
    fn a_new_life_leaves_nothing_of_the_old_one() {
        let key = [Value::Text("i1".into())];
        let c = db();
        let t = table(&c, "item").unwrap();
        apply_delta(&c, &t, &key, &deltas()[0]).unwrap();
        // Life 3, as a change carrying only `name` (a merge of whole states could bring one):
        // the old life's columns go.
        let mut life3 = Row {
            life: 3,
            cells: BTreeMap::new(),
        };
        life3.cells.insert(
            "name".into(),
            Cell::Register {
                value: text("new"),
                stamp: at(9, "n2"),
            },
        );
        apply_delta(&c, &t, &key, &life3).unwrap();
        assert_eq!(
            rows(&c),
            vec![("i1".to_string(), Some("new".to_string()), None, None)]
        );
    }

    #[test]
    fn the_clock_starts_past_every_stored_stamp() {
        let (a, b) = (db(), db());
        assert_eq!(max_stamp(&a).unwrap(), Hlc::default());
        let on_b = local(
            &b,
            "INSERT INTO item VALUES ('i1', 'far', 1, 1.0)",
            &at(90_000, "n2"),
        );
        local(
            &a,
            "INSERT INTO item VALUES ('i2', 'near', 1, 1.0)",
            &at(5, "n1"),
        );
        apply_all(&a, &on_b);
        assert_eq!(max_stamp(&a).unwrap().wall_ms, 90_000);
    }

    #[test]
    fn a_key_that_admits_null_is_refused() {
        let c = db();
        c.execute_batch("CREATE TABLE nullable (k TEXT PRIMARY KEY, v)")
            .unwrap();
        assert!(table(&c, "nullable")
            .unwrap_err()
            .to_string()
            .contains("NOT NULL"));
        c.execute_batch("CREATE TABLE wr (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
            .unwrap();
        assert!(table(&c, "wr").is_ok(), "a WITHOUT ROWID key is never NULL");
    }

    #[test]
    fn a_table_without_a_primary_key_is_refused() {
        let c = db();
        c.execute_batch("CREATE TABLE loose (a, b)").unwrap();
        assert!(table(&c, "loose")
            .unwrap_err()
            .to_string()
            .contains("PRIMARY KEY"));
        let t = table(&c, "item").unwrap();
        assert_eq!(t.key, vec!["id".to_string()]);
        let e = apply_delta(&c, &t, &[], &Row::default()).unwrap_err();
        assert!(e.to_string().contains("key of 0 values"), "{e}");
    }
}
