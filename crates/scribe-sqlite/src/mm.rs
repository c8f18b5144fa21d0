//! The multi-master write path (issue 12, DESIGN.md §6): what a record of a multi-master node
//! holds, how a local transaction becomes one, and how one (local after a crash, or from another
//! master) is applied.
//!
//! A record is stamped with its origin node, the origin's own sequence number and the hybrid
//! logical clock of its write; it holds the transaction's steps in order: schema changes as SQL
//! text, row changes as the deltas of their replicated states ([`crate::multi_master`]). It
//! travels in the change log as a step of its own kind ([`crate::payload::Step::MultiMaster`]),
//! so group commit, fsync, replay and streaming are the ones every node has. Each node's log
//! holds the records it wrote and the ones it applied from others, in the order it applied them,
//! which is a causal order: a peer that streams it in order from anywhere delivers every record
//! after the records its writer had seen.
//!
//! What a node has applied from each origin is its version vector, kept in `_scribe_mm_vv` in
//! the same SQLite transaction as the rows; where it has read each peer's log up to is kept in
//! `_scribe_mm_peers`, so a restart resumes both exactly.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use scribe_core::multi_master::{Hlc, Seq, TablePolicy, VersionVector};
use serde::{Deserialize, Serialize};

use crate::multi_master::{self as rows, MmSchema, RowChange};
use crate::EngineError;

/// The version of [`Record`]'s encoding: 2 for a record that sets a table's policy
/// ([`Item::Policy`]), 1 for every other (which a node of version 1 still reads).
const RECORD_VERSION: u8 = 2;
/// The version vector: origin → the last sequence number applied from it.
pub const VV_TABLE: &str = "_scribe_mm_vv";
/// Where this node has read each peer's log up to (the peer's LSN).
pub const PEERS_TABLE: &str = "_scribe_mm_peers";
/// Each table's conflict policy (absent: `lww`).
pub const POLICY_TABLE: &str = "_scribe_mm_policy";
/// The id of this node's log: new when the node's data directory is made, and again when it is
/// seeded from a peer's snapshot (its log then starts over at the snapshot's position). A peer
/// keeps it with its position in this log, and reads from this log's start when it changes.
pub const LOG_TABLE: &str = "_scribe_mm_log";

/// How a node takes part in a multi-master cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiMaster {
    /// This node's name: the origin of its records.
    pub node: String,
    /// The node that runs schema changes, so every node applies them in one order.
    pub ddl_node: String,
    /// Conflict policies by table name (a table not named is `lww`).
    pub policies: BTreeMap<String, TablePolicy>,
    /// How far ahead of this node's clock a remote timestamp may be before it is refused.
    pub max_offset_ms: u64,
}

/// One step of a multi-master transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// A schema change, as SQL text.
    Ddl(String),
    /// Row changes of multi-master tables.
    Rows(Vec<RowChange>),
    /// Writes of rows of `versioned` tables.
    Versions(Vec<crate::versioned::VersionChange>),
    /// A table's conflict policy, set through SQL (`ALTER TABLE ... SET POLICY ...`).
    Policy {
        /// The table.
        table: String,
        /// Its policy's text.
        policy: String,
    },
}

/// A multi-master record: one transaction of `origin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Encoding version.
    pub v: u8,
    /// The node that wrote it.
    pub origin: String,
    /// Its sequence number among `origin`'s records (1, 2, ...).
    pub seq: u64,
    /// The hybrid logical clock of its write.
    pub hlc: Hlc,
    /// What it did, in order.
    pub items: Vec<Item>,
}

impl Record {
    /// Encodes the record (the bytes of its payload step).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record serialises")
    }

    /// Decodes what [`Record::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<Record, EngineError> {
        let r: Record = serde_json::from_slice(b).map_err(|e| {
            // A newer node's record may hold what this one cannot read: say so.
            #[derive(Deserialize)]
            struct Version {
                v: u8,
            }
            match serde_json::from_slice::<Version>(b) {
                Ok(Version { v }) if v > RECORD_VERSION => EngineError::Corrupt(format!(
                    "multi-master record of version {v}, this node reads up to version {RECORD_VERSION}: upgrade it"
                )),
                _ => EngineError::Corrupt(format!("multi-master record: {e}")),
            }
        })?;
        if r.v == 0 || r.v > RECORD_VERSION {
            return Err(EngineError::Corrupt(format!(
                "multi-master record of version {}, this node reads version {RECORD_VERSION}",
                r.v
            )));
        }
        Ok(r)
    }

    /// A record of `origin`.
    pub fn new(origin: &str, seq: u64, hlc: Hlc, items: Vec<Item>) -> Record {
        let sets_policy = items.iter().any(|i| matches!(i, Item::Policy { .. }));
        Record {
            v: if sets_policy { RECORD_VERSION } else { 1 },
            origin: origin.to_string(),
            seq,
            hlc,
            items,
        }
    }
}

fn mm_err(e: rows::MmError) -> EngineError {
    match e {
        rows::MmError::Sqlite(e) => EngineError::from_sqlite(e, None),
        rows::MmError::Damaged { .. } => EngineError::Corrupt(e.to_string()),
        rows::MmError::Invalid(m) => EngineError::BadRequest(m),
    }
}

fn sql_err(what: &str) -> impl Fn(rusqlite::Error) -> EngineError + '_ {
    move |e| EngineError::Internal(format!("{what}: {e}"))
}

/// Creates the multi-master tables and stores the configured policies (before replay, which
/// applies records by them).
pub fn prepare(conn: &Connection, mm: &MultiMaster) -> Result<(), EngineError> {
    rows::ensure_tables(conn).map_err(mm_err)?;
    crate::versioned::ensure_tables(conn).map_err(mm_err)?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {VV_TABLE} (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {PEERS_TABLE} (peer TEXT PRIMARY KEY, lsn INTEGER NOT NULL, log_id INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {POLICY_TABLE} (tbl TEXT PRIMARY KEY, policy TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'config') WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS {LOG_TABLE} (id INTEGER NOT NULL);
         CREATE VIEW IF NOT EXISTS scribe_policies AS
            SELECT tbl AS table_name, policy, source FROM {POLICY_TABLE};"
    ))
    .map_err(sql_err("create the multi-master tables"))?;
    // Data directories written before these columns were kept.
    add_column(conn, PEERS_TABLE, "log_id", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(
        conn,
        POLICY_TABLE,
        "source",
        "TEXT NOT NULL DEFAULT 'config'",
    )?;
    if log_id(conn)? == 0 {
        conn.execute(
            &format!("INSERT INTO {LOG_TABLE} (id) VALUES (?1)"),
            [new_log_id() as i64],
        )
        .map_err(sql_err("store the log id"))?;
    }
    configure_policies(conn, &mm.policies)
}

fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<(), EngineError> {
    let has = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql_err("read the multi-master tables"))?;
    if has == 0 {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
            .map_err(sql_err("add a column to the multi-master tables"))?;
    }
    Ok(())
}

/// A table's stored policy and where it was set (`config` or `sql`).
fn stored_policies(conn: &Connection) -> Result<BTreeMap<String, (String, String)>, EngineError> {
    let mut st = conn
        .prepare(&format!("SELECT tbl, policy, source FROM {POLICY_TABLE}"))
        .map_err(sql_err("read the table policies"))?;
    let found = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?.to_ascii_lowercase(),
                (r.get::<_, String>(1)?, r.get::<_, String>(2)?),
            ))
        })
        .map_err(sql_err("read the table policies"))?;
    found
        .collect::<Result<_, _>>()
        .map_err(sql_err("read the table policies"))
}

/// Whether client table `name` exists.
fn table_exists(conn: &Connection, name: &str) -> Result<bool, EngineError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|f| f.is_some())
    .map_err(sql_err("read the schema"))
}

/// Stores the `--table-policy` flags. A policy set through SQL (`ALTER TABLE ... SET POLICY`,
/// replicated to every node) is kept over a flag. A table that exists keeps its policy: its rows
/// and the records still on their way were merged by it; a flag that would change it is refused.
fn configure_policies(
    conn: &Connection,
    configured: &BTreeMap<String, TablePolicy>,
) -> Result<(), EngineError> {
    let stored = stored_policies(conn)?;
    let effective = |t: &str| {
        stored
            .get(t)
            .and_then(|(p, _)| p.parse::<TablePolicy>().ok())
            .unwrap_or_default()
    };
    let mut wanted: BTreeMap<String, TablePolicy> = configured
        .iter()
        .map(|(t, p)| (t.to_ascii_lowercase(), p.clone()))
        .collect();
    // A flag removed: the table goes back to lww.
    for (t, (_, source)) in &stored {
        if source == "config" && !wanted.contains_key(t) {
            wanted.insert(t.clone(), TablePolicy::Lww);
        }
    }
    for (t, p) in wanted {
        match stored.get(&t) {
            Some((sp, source)) if source == "sql" => {
                if sp.parse::<TablePolicy>().ok().as_ref() != Some(&p)
                    && configured.contains_key(&t)
                {
                    tracing::warn!(table = %t, flag = %p, policy = %sp, "--table-policy is ignored for a table whose policy was set through SQL");
                }
                continue;
            }
            _ => {}
        }
        if effective(&t) != p && table_exists(conn, &t)? {
            return Err(EngineError::BadRequest(format!(
                "--table-policy {t}={p}: table {t} exists with policy {}; a table's policy is fixed once it exists (its rows, and records still on their way from other nodes, were merged by it) — keep the flag as it was",
                effective(&t)
            )));
        }
        if p == TablePolicy::Lww && !configured.contains_key(&t) {
            conn.execute(&format!("DELETE FROM {POLICY_TABLE} WHERE tbl = ?1"), [&t])
                .map_err(sql_err("store the table policies"))?;
        } else {
            set_policy(conn, &t, &p, "config")?;
        }
    }
    Ok(())
}

/// Stores table `table`'s policy, set by `source` (`config` or `sql`).
pub(crate) fn set_policy(
    conn: &Connection,
    table: &str,
    policy: &TablePolicy,
    source: &str,
) -> Result<(), EngineError> {
    conn.execute(
        &format!(
            "INSERT INTO {POLICY_TABLE} (tbl, policy, source) VALUES (?1, ?2, ?3)
             ON CONFLICT (tbl) DO UPDATE SET policy = excluded.policy, source = excluded.source"
        ),
        params![table.to_ascii_lowercase(), policy.to_string(), source],
    )
    .map(|_| ())
    .map_err(sql_err("store a table's policy"))
}

/// Every table's stored policy, by table (a table not listed is `lww`).
pub fn policies(conn: &Connection) -> Result<BTreeMap<String, String>, EngineError> {
    let mut st =
        crate::multi_master::cached(conn, &format!("SELECT tbl, policy FROM {POLICY_TABLE}"))
            .map_err(sql_err("read the table policies"))?;
    let found = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql_err("read the table policies"))?;
    found
        .collect::<Result<_, _>>()
        .map_err(sql_err("read the table policies"))
}

/// The id of this node's log (0 before [`prepare`]).
pub fn log_id(conn: &Connection) -> Result<u64, EngineError> {
    conn.query_row(&format!("SELECT id FROM {LOG_TABLE}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|id| id.unwrap_or(0) as u64)
    .map_err(sql_err("read the log id"))
}

/// A log id no other log has had: random, never 0.
fn new_log_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::writer::now_us());
    h.write_u32(std::process::id());
    (h.finish() >> 1).max(1)
}

/// Makes the snapshot of `peer`'s database at `path` this node's own before it is installed:
/// where `peer` had read each other peer's log up to holds for the copy too (it is the same
/// data), `peer`'s own log is read up to the snapshot's position (`at`, in the log whose id is
/// `peer_log_id`), this node does not read its own log, and the copy's log gets a new id — this
/// node's log starts over at `at`.
pub fn adopt_snapshot(
    path: &std::path::Path,
    node: &str,
    peer: &str,
    peer_log_id: u64,
) -> Result<scribe_core::Position, EngineError> {
    let ctx = |what: &'static str| {
        move |e: rusqlite::Error| {
            EngineError::Internal(format!("{what} of snapshot {}: {e}", path.display()))
        }
    };
    let mut copy = Connection::open(path).map_err(ctx("open"))?;
    if !is_multi_master(&copy) {
        return Err(EngineError::Diverged(format!(
            "{peer}'s snapshot is not of a multi-master database"
        )));
    }
    let at = crate::meta::applied(&copy).map_err(ctx("read the position"))?;
    let tx = copy.transaction().map_err(ctx("begin adopting"))?;
    tx.execute(
        &format!("DELETE FROM {PEERS_TABLE} WHERE peer = ?1"),
        [node],
    )
    .map_err(ctx("drop this node's own position"))?;
    set_peer_cursor(&tx, peer, at.lsn.0, peer_log_id)?;
    tx.execute(&format!("DELETE FROM {LOG_TABLE}"), [])
        .and_then(|_| {
            tx.execute(
                &format!("INSERT INTO {LOG_TABLE} (id) VALUES (?1)"),
                [new_log_id() as i64],
            )
        })
        .map_err(ctx("give the log a new id"))?;
    tx.commit().map_err(ctx("commit adopting"))?;
    drop(copy);
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::Internal(format!("fsync snapshot {}: {e}", path.display())))?;
    Ok(at)
}

/// Writes the marker file that says a snapshot install is under way, durably.
fn write_marker(marker: &std::path::Path) -> Result<(), EngineError> {
    let dir = marker.parent().unwrap_or(std::path::Path::new("."));
    let fail =
        |e: std::io::Error| EngineError::Internal(format!("write {}: {e}", marker.display()));
    let tmp = marker.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(
            b"a snapshot is being installed; this data directory is incomplete until it is done\n",
        )
        .and_then(|_| f.sync_all())
        .map_err(fail)?;
    }
    std::fs::rename(&tmp, marker).map_err(fail)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// Removes the marker once the install is whole and durable.
fn remove_marker(marker: &std::path::Path) -> Result<(), EngineError> {
    let dir = marker.parent().unwrap_or(std::path::Path::new("."));
    std::fs::remove_file(marker)
        .and_then(|_| std::fs::File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::Internal(format!("remove {}: {e}", marker.display())))
}

/// Whether `conn`'s database is a multi-master one.
pub fn is_multi_master(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [VV_TABLE],
        |_| Ok(()),
    )
    .optional()
    .ok()
    .flatten()
    .is_some()
}

/// The schemas of every client table under its policy, or why a table cannot be multi-master.
pub type Schemas = BTreeMap<String, Result<MmSchema, String>>;

/// The schemas split by how their tables replicate, as the write path uses them.
#[derive(Debug)]
pub(crate) struct SchemaSets {
    /// Every client table, or why it cannot replicate.
    pub all: Schemas,
    /// The `lww` and `merge` tables.
    pub merged: BTreeMap<String, MmSchema>,
    /// The `versioned` tables.
    pub versioned: BTreeMap<String, MmSchema>,
}

impl SchemaSets {
    fn of(all: Schemas) -> SchemaSets {
        let (versioned, merged) = all
            .iter()
            .filter_map(|(t, s)| s.as_ref().ok().map(|s| (t.clone(), s.clone())))
            .partition(|(_, s)| s.policy == TablePolicy::Versioned);
        SchemaSets {
            all,
            merged,
            versioned,
        }
    }
}

/// Reads the schemas of every client table (not `sqlite_*` nor `_scribe_*`).
pub fn schemas(conn: &Connection) -> Result<Schemas, EngineError> {
    let policies: BTreeMap<String, String> = policies(conn)?
        .into_iter()
        .map(|(t, p)| (t.to_ascii_lowercase(), p))
        .collect();
    let names: Vec<String> = {
        let mut st = crate::multi_master::cached(conn,
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_scribe\\_%' ESCAPE '\\'",
            )
            .map_err(sql_err("read the schema"))?;
        let found = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql_err("read the schema"))?;
        found
            .collect::<Result<_, _>>()
            .map_err(sql_err("read the schema"))?
    };
    let mut out = BTreeMap::new();
    for name in names {
        let policy = match policies.get(&name.to_ascii_lowercase()) {
            None => Ok(TablePolicy::default()),
            Some(p) => p
                .parse::<TablePolicy>()
                .map_err(|e| format!("table {name:?}: {e}")),
        };
        let schema = policy.and_then(|p| rows::schema(conn, &name, p).map_err(|e| e.to_string()));
        out.insert(name, schema);
    }
    Ok(out)
}

/// The schema of `table`, or why its changes cannot be taken.
pub(crate) fn schema_of<'a>(schemas: &'a Schemas, table: &str) -> Result<&'a MmSchema, String> {
    match schemas.get(table) {
        Some(Ok(s)) => Ok(s),
        Some(Err(why)) => Err(why.clone()),
        None => Err(format!("table {table:?} is not in this node's schema")),
    }
}

/// This node's version vector, as stored.
pub fn version_vector(conn: &Connection) -> Result<VersionVector, EngineError> {
    let mut st = crate::multi_master::cached(conn, &format!("SELECT origin, seq FROM {VV_TABLE}"))
        .map_err(sql_err("read the version vector"))?;
    let found = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, Seq(r.get::<_, i64>(1)? as u64)))
        })
        .map_err(sql_err("read the version vector"))?;
    // Recorded in order, so each origin's sequence numbers 1..=seq are all applied.
    let entries: Vec<(String, Seq)> = found
        .collect::<Result<_, _>>()
        .map_err(sql_err("read the version vector"))?;
    Ok(VersionVector::from_entries(entries))
}

/// The last sequence number applied from `origin` (0 for none).
pub(crate) fn applied_seq(conn: &Connection, origin: &str) -> Result<u64, EngineError> {
    crate::multi_master::cached(
        conn,
        &format!("SELECT seq FROM {VV_TABLE} WHERE origin = ?1"),
    )
    .and_then(|mut st| st.query_row([origin], |r| r.get::<_, i64>(0)).optional())
    .map(|s| s.unwrap_or(0) as u64)
    .map_err(sql_err("read the version vector"))
}

pub(crate) fn set_applied_seq(
    conn: &Connection,
    origin: &str,
    seq: u64,
) -> Result<(), EngineError> {
    crate::multi_master::cached(
        conn,
        &format!(
            "INSERT INTO {VV_TABLE} (origin, seq) VALUES (?1, ?2)
         ON CONFLICT (origin) DO UPDATE SET seq = max(seq, excluded.seq)"
        ),
    )
    .and_then(|mut st| st.execute(params![origin, seq as i64]))
    .map(|_| ())
    .map_err(sql_err("store the version vector"))
}

/// Where this node has read a peer's log up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The peer's LSN.
    pub lsn: u64,
    /// The id of the peer's log that LSN is in.
    pub log_id: u64,
}

/// Where this node has read each peer's log up to.
pub fn peer_cursors(conn: &Connection) -> Result<BTreeMap<String, Cursor>, EngineError> {
    let mut st = crate::multi_master::cached(
        conn,
        &format!("SELECT peer, lsn, log_id FROM {PEERS_TABLE}"),
    )
    .map_err(sql_err("read the peers' positions"))?;
    let found = st
        .query_map([], |r| {
            let cursor = Cursor {
                lsn: r.get::<_, i64>(1)? as u64,
                log_id: r.get::<_, i64>(2)? as u64,
            };
            Ok((r.get::<_, String>(0)?, cursor))
        })
        .map_err(sql_err("read the peers' positions"))?;
    found
        .collect::<Result<_, _>>()
        .map_err(sql_err("read the peers' positions"))
}

/// Stores where this node has read `peer`'s log (the one of id `log_id`) up to: a position in
/// the same log (or one kept before logs had ids) only moves forward; one in another log (the
/// peer was seeded anew) replaces it.
pub(crate) fn set_peer_cursor(
    conn: &Connection,
    peer: &str,
    lsn: u64,
    log_id: u64,
) -> Result<(), EngineError> {
    crate::multi_master::cached(
        conn,
        &format!(
            "INSERT INTO {PEERS_TABLE} (peer, lsn, log_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer) DO UPDATE SET
           lsn = CASE WHEN log_id = excluded.log_id OR log_id = 0 THEN max(lsn, excluded.lsn) ELSE excluded.lsn END,
           log_id = excluded.log_id"
        ),
    )
    .and_then(|mut st| st.execute(params![peer, lsn as i64, log_id as i64]))
    .map(|_| ())
    .map_err(sql_err("store a peer's position"))
}

/// What a multi-master node publishes, read from its database. `kept` is the log id and the
/// policies it published last, when they cannot have changed since.
fn read_status(
    conn: &Connection,
    kept: Option<(u64, BTreeMap<String, String>)>,
) -> Result<MmStatus, EngineError> {
    if let Some((log_id, policies)) = kept {
        return Ok(MmStatus {
            vv: version_vector(conn)?,
            cursors: peer_cursors(conn)?,
            conflicts: conflict_counts(conn)?,
            log_id,
            policies,
        });
    }
    Ok(MmStatus {
        vv: version_vector(conn)?,
        cursors: peer_cursors(conn)?,
        conflicts: conflict_counts(conn)?,
        log_id: log_id(conn)?,
        policies: policies(conn)?,
    })
}

/// Applies `record` to the database inside the caller's transaction: its schema changes and row
/// deltas in order (merged into the rows' states, which makes a second application change
/// nothing), and its sequence number into the version vector.
pub(crate) fn apply(conn: &Connection, record: &Record) -> Result<(), EngineError> {
    let mut schemas: Option<Schemas> = None;
    for item in &record.items {
        match item {
            Item::Ddl(sql) => {
                conn.execute_batch(sql).map_err(|e| {
                    if EngineError::sqlite_full(&e) {
                        EngineError::DiskFull(format!("apply DDL {sql:?}: {e}"))
                    } else {
                        EngineError::Diverged(format!(
                            "apply DDL {sql:?} of {}'s record {}: {e}",
                            record.origin, record.seq
                        ))
                    }
                })?;
                schemas = None;
            }
            Item::Rows(changes) => {
                if schemas.is_none() {
                    schemas = Some(self::schemas(conn)?);
                }
                let s = schemas.as_ref().expect("just read");
                for c in changes {
                    let sc = schema_of(s, &c.table).map_err(|why| {
                        EngineError::Diverged(format!(
                            "a change of {}'s record {} to {:?}: {why}",
                            record.origin, record.seq, c.table
                        ))
                    })?;
                    rows::apply_delta(conn, &sc.table, &c.key, &c.delta).map_err(mm_err)?;
                }
            }
            Item::Versions(changes) => {
                if schemas.is_none() {
                    schemas = Some(self::schemas(conn)?);
                }
                let s = schemas.as_ref().expect("just read");
                for c in changes {
                    let sc = schema_of(s, &c.table)
                        .ok()
                        .filter(|sc| sc.policy == TablePolicy::Versioned)
                        .ok_or_else(|| {
                            EngineError::Diverged(format!(
                                "a versioned write of {}'s record {} to {:?}, which is not a versioned table here",
                                record.origin, record.seq, c.table
                            ))
                        })?;
                    crate::versioned::apply(conn, &sc.table, c).map_err(mm_err)?;
                }
            }
            Item::Policy { table, policy } => {
                let p = policy.parse::<TablePolicy>().map_err(|e| {
                    EngineError::Diverged(format!(
                        "{}'s record {} sets a policy this node cannot read: {e}",
                        record.origin, record.seq
                    ))
                })?;
                // Set before the table exists or with it (the DDL node checked): a table that
                // exists here by another policy would change how rows it holds merge.
                let created_here = record.items.iter().any(|i| {
                    matches!(i, Item::Ddl(sql) if scribe_core::multi_master::created_table(sql)
                        .is_some_and(|t| t.to_uppercase() == table.to_uppercase()))
                });
                if !created_here && table_exists(conn, table)? {
                    let now = policies(conn)?
                        .get(&table.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_else(|| "lww".into());
                    if now.parse::<TablePolicy>().ok() != Some(p.clone()) {
                        return Err(EngineError::Diverged(format!(
                            "{}'s record {} sets table {table}'s policy to {p}, but the table exists here with policy {now}: the masters' schemas differ (were they started with the same --peers?)",
                            record.origin, record.seq
                        )));
                    }
                }
                set_policy(conn, table, &p, "sql")?;
                schemas = None;
            }
        }
    }
    set_applied_seq(conn, &record.origin, record.seq)
}

/// The writes a local changeset makes to rows of `versioned` tables, each taken into its row's
/// versions as an ordinary write: it replaces the version shown and this node's own, and keeps
/// the conflicts other nodes wrote.
fn capture_versioned(
    conn: &Connection,
    versioned: &BTreeMap<String, MmSchema>,
    changeset: &[u8],
    stamp: &scribe_core::multi_master::Stamp,
) -> Result<Vec<crate::versioned::VersionChange>, EngineError> {
    use crate::changeset::{Changes, Op};
    let bad = |e: String| EngineError::Internal(format!("read a changeset: {e}"));
    let mut out = Vec::new();
    let mut changes = Changes::new(changeset).map_err(|e| bad(e.to_string()))?;
    while let Some(c) = changes.next_change().map_err(|e| bad(e.to_string()))? {
        let Some(sc) = versioned.get(c.table()) else {
            continue;
        };
        let t = &sc.table;
        let after = c.op() == Op::Insert;
        let key: Vec<crate::Value> = t
            .key
            .iter()
            .map(|k| {
                let i = t.columns.iter().position(|c| c == k).unwrap_or(0);
                let v = if after { c.after(i) } else { c.before(i) };
                v.map(crate::Value::from_ref).unwrap_or(crate::Value::Null)
            })
            .collect();
        let value = crate::versioned::current(conn, t, &key).map_err(mm_err)?;
        let mut versions = crate::versioned::load(conn, t, &key).map_err(mm_err)?;
        let seen = versions.ordinary_context(&stamp.node);
        let (dot, seen) = versions
            .write(&stamp.node, stamp.clone(), value.clone(), &seen)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        crate::versioned::store(conn, t, &key, &versions, false).map_err(mm_err)?;
        out.push(crate::versioned::VersionChange {
            table: t.name.clone(),
            key: key.into_iter().map(rows::Ordered).collect(),
            version: scribe_core::multi_master::Version {
                dot,
                stamp: stamp.clone(),
                value,
            },
            seen,
        });
    }
    Ok(out)
}

/// How the application resolves a conflict of a `versioned` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The conflict's id (any conflict of the row: the resolution is the row's).
    pub id: String,
    /// The row to keep, column → value (key columns may be left out; they must match if
    /// given); `None` deletes the row.
    pub row: Option<BTreeMap<String, crate::Value>>,
    /// The row's conflicts the application read; when given, they must be the row's conflicts
    /// now, or the resolution is refused (another version arrived meanwhile: read them again).
    pub expect: Option<Vec<String>>,
}

/// What a multi-master node publishes for its status: its version vector and where it has
/// read each peer's log up to, as of its last commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MmStatus {
    /// What it has applied from each origin.
    pub vv: VersionVector,
    /// Where it has read each peer's log up to.
    pub cursors: BTreeMap<String, Cursor>,
    /// Unresolved conflicts of `versioned` tables, by table.
    pub conflicts: BTreeMap<String, u64>,
    /// The id of its own log.
    pub log_id: u64,
    /// Each table's stored policy (a table not listed is `lww`).
    pub policies: BTreeMap<String, String>,
}

/// Unresolved conflicts by table.
pub fn conflict_counts(conn: &Connection) -> Result<BTreeMap<String, u64>, EngineError> {
    let mut st = rows::cached(
        conn,
        &format!(
            "SELECT tbl, count(*) FROM {} GROUP BY tbl",
            crate::versioned::CONFLICTS_TABLE
        ),
    )
    .map_err(sql_err("count the conflicts"))?;
    let found = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(sql_err("count the conflicts"))?;
    found
        .collect::<Result<_, _>>()
        .map_err(sql_err("count the conflicts"))
}

/// The status shared between the writer and the engine handle.
pub(crate) type SharedStatus = std::sync::Arc<std::sync::Mutex<MmStatus>>;

/// What applying a batch of a peer's records did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records applied (new to this node).
    pub applied: u64,
    /// Records skipped: this node had them already (from their origin or another peer).
    pub duplicates: u64,
    /// The peer's LSN this node has now read up to.
    pub cursor: u64,
}

/// The writer's multi-master state.
pub(crate) struct MmWriter {
    pub opts: MultiMaster,
    pub clock: scribe_core::multi_master::Clock,
    /// The schemas as of a schema version.
    pub cache: Option<(i64, std::sync::Arc<SchemaSets>)>,
    pub status: SharedStatus,
    /// Whether the next publication reads the log id and the policies again (set whenever the
    /// cached schemas are forgotten).
    pub reread: std::cell::Cell<bool>,
}

impl MmWriter {
    /// The writer's state over `conn`'s database: the clock starts past every stamp it holds.
    pub(crate) fn open(conn: &Connection, opts: MultiMaster) -> Result<MmWriter, EngineError> {
        let last = rows::max_stamp(conn).map_err(mm_err)?;
        let status = read_status(conn, None)?;
        Ok(MmWriter {
            clock: scribe_core::multi_master::Clock::new(last, opts.max_offset_ms),
            opts,
            cache: None,
            status: std::sync::Arc::new(std::sync::Mutex::new(status)),
            reread: std::cell::Cell::new(false),
        })
    }
}

fn now_ms() -> u64 {
    crate::writer::now_us() / 1000
}

impl crate::writer::Writer {
    /// Refuses a statement a multi-master node must not run: an unsafe schema change, or any
    /// schema change on a node other than the one that runs them all.
    pub(crate) fn mm_check_statement(&self, sql: &str) -> Result<(), EngineError> {
        let Some(mm) = &self.mm else { return Ok(()) };
        if scribe_core::multi_master::parse_set_policy(sql).is_some() {
            if mm.opts.node != mm.opts.ddl_node {
                return Err(EngineError::BadRequest(format!(
                    "a table's policy is set where schema changes run, node {:?}, so that every node takes it in one order; run it there (nothing was changed)",
                    mm.opts.ddl_node
                )));
            }
            return Ok(());
        }
        // ANALYZE writes sqlite_stat tables, which changes the schema version: it replicates as
        // a schema change, so it runs where schema changes run.
        let analyze = sql
            .trim_start()
            .get(..7)
            .is_some_and(|w| w.eq_ignore_ascii_case("analyze"));
        let verdict = if analyze {
            scribe_core::multi_master::DdlVerdict::Allowed
        } else {
            scribe_core::multi_master::check_ddl(sql)
        };
        match verdict {
            scribe_core::multi_master::DdlVerdict::NotDdl => Ok(()),
            scribe_core::multi_master::DdlVerdict::Refused(why) => Err(EngineError::BadRequest(why)),
            scribe_core::multi_master::DdlVerdict::Allowed if mm.opts.node != mm.opts.ddl_node => {
                Err(EngineError::BadRequest(format!(
                    "schema changes in multi-master mode run on node {:?}, so that every node applies them in one order; run it there (nothing was changed)",
                    mm.opts.ddl_node
                )))
            }
            scribe_core::multi_master::DdlVerdict::Allowed => Ok(()),
        }
    }

    /// Runs `ALTER TABLE name SET POLICY ...` (already checked by [`Writer::mm_check_statement`])
    /// if `sql` is one: answers `None` if it is not, else whether it changed the policy (a
    /// policy set again as it is changes nothing and replicates nothing). `earlier` are the
    /// steps of the statements before it in the transaction. A table's policy is set before the table exists, or in the
    /// transaction that creates it: no node can then have written a row of it by another policy.
    pub(crate) fn mm_set_policy(
        &self,
        sql: &str,
        earlier: [&[crate::payload::Step]; 2],
    ) -> Result<Option<bool>, EngineError> {
        if self.mm.is_none() {
            return Ok(None);
        }
        let (table, policy) = match scribe_core::multi_master::parse_set_policy(sql) {
            None => return Ok(None),
            Some(Err(why)) => return Err(EngineError::BadRequest(why)),
            Some(Ok(set)) => set,
        };
        let created_here = earlier.iter().flat_map(|e| e.iter()).any(|s| {
            matches!(s, crate::payload::Step::Sql(ddl)
                if scribe_core::multi_master::created_table(ddl).is_some_and(|t| t == table.to_uppercase()))
        });
        let exists = self.policy.internal(|| table_exists(&self.conn, &table))?;
        if exists && !created_here {
            let now = self
                .policy
                .internal(|| policies(&self.conn))?
                .get(&table.to_ascii_lowercase())
                .cloned()
                .unwrap_or_else(|| "lww".into());
            if now == policy.to_string() {
                return Ok(Some(false));
            }
            return Err(EngineError::BadRequest(format!(
                "table {table} exists with policy {now}: a table's policy is set before the table is created, or in the transaction that creates it (CREATE TABLE ...; ALTER TABLE {table} SET POLICY ...) — rows other nodes wrote meanwhile by the old policy could not be merged by the new one (nothing was changed)"
            )));
        }
        if exists {
            let columns = self
                .policy
                .internal(|| crate::multi_master::table(&self.conn, &table))
                .map_err(mm_err)?;
            policy
                .check_columns(columns.columns.iter().map(String::as_str))
                .map_err(|why| EngineError::BadRequest(format!("table {table}: {why}")))?;
        }
        // The schema version does not change: the cached schemas are forgotten when the
        // transaction is sealed.
        self.policy
            .internal(|| set_policy(&self.conn, &table, &policy, "sql"))?;
        Ok(Some(true))
    }

    /// Forgets the cached schemas: a rollback may have undone the schema change they were
    /// read after, and a later change would then have the same schema version.
    pub(crate) fn mm_forget_schemas(&mut self) {
        if let Some(mm) = &mut self.mm {
            mm.cache = None;
            mm.reread.set(true);
        }
    }

    /// This node's name, if it is a multi-master node that still takes writes.
    fn mm_node(&self) -> Result<String, EngineError> {
        if let Some(why) = self.fatal.get() {
            return Err(EngineError::Unavailable(why.clone()));
        }
        self.mm
            .as_ref()
            .map(|m| m.opts.node.clone())
            .ok_or_else(|| EngineError::BadRequest("this node is not a multi-master node".into()))
    }

    /// Seeds this node, which must hold nothing yet, from `peer`'s snapshot at `path` (see
    /// [`crate::Engine::mm_install_snapshot`]).
    pub(crate) fn mm_install_snapshot(
        &mut self,
        path: &std::path::Path,
        peer: &str,
        peer_log_id: u64,
        marker: &std::path::Path,
    ) -> Result<scribe_core::Position, EngineError> {
        let node = self.mm_node()?;
        // A node that holds records would lose the ones the peer lacks.
        let held = self.policy.internal(|| version_vector(&self.conn))?;
        if held.iter().next().is_some() {
            return Err(EngineError::BadRequest(format!(
                "this node holds records already ({}); only a master that holds nothing is seeded from a snapshot",
                held.iter()
                    .map(|(o, s)| format!("{o}:{}", s.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Up to here nothing changed; from the marker on, a failure leaves a database that is
        // neither the old one nor the copy: this node stops writing and, restarted, discards
        // both and is seeded again.
        let at = adopt_snapshot(path, &node, peer, peer_log_id)?;
        let fail = |w: &Self, what: String| {
            let why = format!(
                "a snapshot install failed halfway ({what}): restart the node; it discards the partial copy and is seeded again"
            );
            tracing::error!("{why}");
            let _ = w.fatal.set(why.clone());
            EngineError::Unavailable(why)
        };
        // Once the marker may be on disk, any failure stops this node's writes: a restart finds
        // the marker and discards what is there.
        if let Err(e) = write_marker(marker) {
            return Err(fail(self, e.to_string()));
        }
        let installed = (|| -> Result<scribe_core::Position, EngineError> {
            let installed = self.replace_database(path)?;
            if installed != at {
                return Err(EngineError::Internal(format!(
                    "the snapshot held position {at} but {installed} was installed"
                )));
            }
            let last = self
                .policy
                .internal(|| rows::max_stamp(&self.conn))
                .map_err(mm_err)?;
            self.mm_forget_schemas();
            let mm = self.mm.as_mut().expect("multi-master");
            mm.clock = scribe_core::multi_master::Clock::new(last, mm.opts.max_offset_ms);
            // Before any other write: the marker goes only once the copy is whole and durable.
            remove_marker(marker)?;
            Ok(installed)
        })();
        let installed = match installed {
            Ok(p) => p,
            Err(e) => return Err(fail(self, e.to_string())),
        };
        self.mm_publish();
        Ok(installed)
    }

    /// The schemas, cached by schema version. A transaction that changes the schema reads them
    /// afresh and caches nothing: it may still roll back.
    fn mm_schemas(&mut self, uncached: bool) -> Result<std::sync::Arc<SchemaSets>, EngineError> {
        let read = |w: &Self| -> Result<std::sync::Arc<SchemaSets>, EngineError> {
            let all = w.policy.internal(|| schemas(&w.conn))?;
            Ok(std::sync::Arc::new(SchemaSets::of(all)))
        };
        if uncached {
            return read(self);
        }
        let version = self.schema_version()?;
        if let Some((v, s)) = &self.mm.as_ref().expect("multi-master").cache {
            if *v == version {
                return Ok(s.clone());
            }
        }
        let s = read(self)?;
        self.mm.as_mut().expect("multi-master").cache = Some((version, s.clone()));
        Ok(s)
    }

    /// The payload of a local transaction's record, inside its open savepoint. On a
    /// multi-master node: its changes become deltas of their rows' states, stamped with the next
    /// clock tick, taken into those states, and the record gets this node's next sequence number.
    pub(crate) fn seal(
        &mut self,
        steps: Vec<crate::payload::Step>,
    ) -> Result<Vec<u8>, EngineError> {
        use crate::payload::{self, Step};
        if self.mm.is_none() {
            return Ok(payload::encode(&steps));
        }
        let node = self.mm.as_ref().expect("multi-master").opts.node.clone();
        let mut hlc = scribe_core::multi_master::Hlc::default();
        let mut items = Vec::with_capacity(steps.len());
        let ddl = steps.iter().any(|s| matches!(s, Step::Sql(_)));
        if steps.iter().any(|s| {
            matches!(s, Step::Sql(sql) if scribe_core::multi_master::parse_set_policy(sql).is_some())
        }) {
            // A policy changed: schemas cached by schema version no longer hold.
            self.mm_forget_schemas();
        }
        // Row changes are captured against the schema as it is after the whole transaction; a
        // schema change after them would make that another schema than theirs (and than the
        // one the other nodes apply them with).
        if let Some(first_rows) = steps.iter().position(|s| matches!(s, Step::Changeset(_))) {
            if steps[first_rows..]
                .iter()
                .any(|s| matches!(s, Step::Sql(_)))
            {
                return Err(EngineError::BadRequest(
                    "not allowed in multi-master mode: a schema change after row changes in one transaction; change the schema first, or in a transaction of its own (nothing of the transaction was kept)".into(),
                ));
            }
        }
        for step in steps {
            match step {
                Step::Sql(sql) => match scribe_core::multi_master::parse_set_policy(&sql) {
                    Some(Ok((table, policy))) => items.push(Item::Policy {
                        table: table.to_ascii_lowercase(),
                        policy: policy.to_string(),
                    }),
                    _ => items.push(Item::Ddl(sql)),
                },
                Step::Changeset(cs) => {
                    // Each statement's changes get a stamp of their own, later than the one
                    // before: a column written twice in one transaction keeps the second value.
                    hlc = self.mm.as_mut().expect("multi-master").clock.tick(now_ms());
                    let stamp = scribe_core::multi_master::Stamp {
                        hlc,
                        node: node.clone(),
                    };
                    let sets = self.mm_schemas(ddl)?;
                    let mut changes = crate::changeset::Changes::new(&cs)
                        .map_err(|e| EngineError::Internal(format!("read a changeset: {e}")))?;
                    while let Some(c) = changes
                        .next_change()
                        .map_err(|e| EngineError::Internal(format!("read a changeset: {e}")))?
                    {
                        schema_of(&sets.all, c.table()).map_err(|why| {
                            EngineError::BadRequest(format!(
                                "not allowed in multi-master mode: {why}; nothing of the transaction was kept"
                            ))
                        })?;
                    }
                    let changes = self
                        .policy
                        .internal(|| rows::capture_local(&self.conn, &sets.merged, &cs, &stamp))
                        .map_err(mm_err)?;
                    if !changes.is_empty() {
                        items.push(Item::Rows(changes));
                    }
                    if !sets.versioned.is_empty() {
                        let writes = self.policy.internal(|| {
                            capture_versioned(&self.conn, &sets.versioned, &cs, &stamp)
                        })?;
                        if !writes.is_empty() {
                            items.push(Item::Versions(writes));
                        }
                    }
                }
                Step::MultiMaster(_) => {
                    return Err(EngineError::Internal(
                        "a local transaction captured a multi-master record".into(),
                    ))
                }
            }
        }
        if hlc == scribe_core::multi_master::Hlc::default() {
            hlc = self.mm.as_mut().expect("multi-master").clock.tick(now_ms());
        }
        if ddl {
            // Every table must still be one whose changes can replicate.
            for (t, s) in &self.mm_schemas(true)?.all {
                if let Err(why) = s {
                    return Err(EngineError::BadRequest(format!(
                        "not allowed in multi-master mode: table {t:?}: {why}; nothing was changed"
                    )));
                }
            }
        }
        let seq = self.mm_next_seq(&node)?;
        let record = Record::new(&node, seq, hlc, items);
        Ok(payload::encode(&[Step::MultiMaster(record.encode())]))
    }

    /// Resolves the conflicts of one `versioned` row with `r`: a write that has seen every
    /// version this node holds of the row, which replaces them all here and on every node it
    /// reaches. Answers the position of its record.
    pub(crate) fn mm_resolve(
        &mut self,
        r: Resolution,
    ) -> Result<scribe_core::Position, EngineError> {
        use crate::payload::{self, Step};
        let node = self.mm_node()?;
        self.admit(1)?;
        self.internal("BEGIN IMMEDIATE")
            .map_err(|e| EngineError::Internal(format!("begin the resolution: {e}")))?;
        let result = (|| -> Result<scribe_core::Position, EngineError> {
            let found: Option<(String, String)> = self
                .policy
                .internal(|| {
                    rows::cached(
                        &self.conn,
                        &format!(
                            "SELECT tbl, pk FROM {} WHERE id = ?1",
                            crate::versioned::CONFLICTS_TABLE
                        ),
                    )?
                    .query_row([&r.id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
                })
                .map_err(sql_err("find the conflict"))?;
            let Some((table, pk)) = found else {
                return Err(EngineError::BadRequest(format!(
                    "no conflict {} on this node: resolved already, or not arrived here yet",
                    r.id
                )));
            };
            let sets = self.mm_schemas(false)?;
            let sc = schema_of(&sets.all, &table)
                .map_err(EngineError::Internal)?
                .clone();
            let key: Vec<crate::Value> = serde_json::from_str::<Vec<rows::Ordered>>(&pk)
                .map_err(|e| EngineError::Corrupt(format!("a conflict's key: {e}")))?
                .into_iter()
                .map(|o| o.0)
                .collect();
            if let Some(expect) = &r.expect {
                let now: Vec<String> = self
                    .policy
                    .internal(|| {
                        let mut st = rows::cached(
                            &self.conn,
                            &format!(
                                "SELECT id FROM {} WHERE tbl = ?1 AND pk = ?2 ORDER BY id",
                                crate::versioned::CONFLICTS_TABLE
                            ),
                        )?;
                        let ids = st.query_map([&table, &pk], |row| row.get::<_, String>(0))?;
                        ids.collect::<Result<Vec<String>, _>>()
                    })
                    .map_err(sql_err("read the row's conflicts"))?;
                let mut want = expect.clone();
                want.sort();
                want.dedup();
                if want != now {
                    return Err(EngineError::SerializationFailure(format!(
                        "the row's conflicts are now {now:?}, not the {want:?} the resolution saw: read them again and resolve with what they are now; nothing was changed"
                    )));
                }
            }
            let value = match &r.row {
                None => None,
                Some(cols) => {
                    let mut out = crate::versioned::Cols::new();
                    for (c, v) in cols {
                        let Some(col) = sc.table.columns.iter().find(|x| x.eq_ignore_ascii_case(c))
                        else {
                            return Err(EngineError::BadRequest(format!(
                                "table {table:?} has no column {c:?}"
                            )));
                        };
                        if let Some(i) = sc.table.key.iter().position(|k| k == col) {
                            if !rows::Ordered(v.clone()).eq(&rows::Ordered(key[i].clone())) {
                                return Err(EngineError::BadRequest(format!(
                                    "column {col:?} is the row's key: a resolution cannot change it"
                                )));
                            }
                            continue;
                        }
                        out.insert(col.clone(), rows::Ordered(v.clone()));
                    }
                    Some(out)
                }
            };
            let hlc = self.mm.as_mut().expect("multi-master").clock.tick(now_ms());
            let stamp = scribe_core::multi_master::Stamp {
                hlc,
                node: node.clone(),
            };
            let change = self.policy.internal(
                || -> Result<crate::versioned::VersionChange, EngineError> {
                    let mut versions =
                        crate::versioned::load(&self.conn, &sc.table, &key).map_err(mm_err)?;
                    let seen = versions.context().clone();
                    let (dot, seen) = versions
                        .write(&node, stamp.clone(), value.clone(), &seen)
                        .map_err(|e| EngineError::SerializationFailure(e.to_string()))?;
                    crate::versioned::store(&self.conn, &sc.table, &key, &versions, true)
                        .map_err(mm_err)?;
                    Ok(crate::versioned::VersionChange {
                        table: table.clone(),
                        key: key.iter().cloned().map(rows::Ordered).collect(),
                        version: scribe_core::multi_master::Version {
                            dot,
                            stamp: stamp.clone(),
                            value,
                        },
                        seen,
                    })
                },
            )?;
            let seq = self.mm_next_seq(&node)?;
            let record = Record::new(&node, seq, hlc, vec![Item::Versions(vec![change])]);
            self.log
                .append(
                    self.term,
                    crate::writer::now_us(),
                    payload::encode(&[Step::MultiMaster(record.encode())]),
                )
                .map_err(EngineError::from)
        })();
        let pos = self.mm_finish(result, 1)?;
        Ok(pos)
    }

    /// Ends a multi-master write transaction the writer opened: on `result`'s error nothing of it
    /// is kept; otherwise it is made durable and committed (`records` of them), and the new
    /// positions and version vector are published.
    fn mm_finish<T>(
        &mut self,
        result: Result<T, EngineError>,
        records: u64,
    ) -> Result<T, EngineError> {
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                self.log.discard_pending();
                let _ = self.internal("ROLLBACK");
                return Err(e);
            }
        };
        self.commit_batch()?;
        let at = self.log.durable_position();
        self.progress.send_modify(|p| {
            p.last = at;
            p.flushed = at;
            p.applied = at;
        });
        crate::EngineMetrics::add(&self.metrics.commits, records);
        self.mm_publish();
        Ok(value)
    }

    /// This node's next sequence number, taken (stored in the version vector) inside the open
    /// transaction.
    fn mm_next_seq(&self, node: &str) -> Result<u64, EngineError> {
        self.policy.internal(|| {
            let seq = applied_seq(&self.conn, node)? + 1;
            set_applied_seq(&self.conn, node, seq)?;
            Ok(seq)
        })
    }

    /// Refuses a peer's record that may not have been written: a schema change from a node
    /// other than the one that runs them all, or one that is not allowed.
    fn mm_check_remote(&self, peer: &str, rec: &Record) -> Result<(), EngineError> {
        let ddl_node = &self.mm.as_ref().expect("multi-master").opts.ddl_node;
        for item in &rec.items {
            if let Item::Policy { table, .. } = item {
                if &rec.origin != ddl_node {
                    return Err(EngineError::Diverged(format!(
                        "{peer} sent record {} of {} setting table {table}'s policy, but schema changes run on {ddl_node} only: is {} started with the same --peers list?",
                        rec.seq, rec.origin, rec.origin
                    )));
                }
            }
            let Item::Ddl(sql) = item else { continue };
            if &rec.origin != ddl_node {
                return Err(EngineError::Diverged(format!(
                    "{peer} sent record {} of {} with a schema change, but schema changes run on {ddl_node} only: is {} started with the same --peers list?",
                    rec.seq, rec.origin, rec.origin
                )));
            }
            if let scribe_core::multi_master::DdlVerdict::Refused(why) =
                scribe_core::multi_master::check_ddl(sql)
            {
                return Err(EngineError::Diverged(format!(
                    "{peer} sent record {} of {} with a schema change this node refuses: {why}",
                    rec.seq, rec.origin
                )));
            }
        }
        Ok(())
    }

    /// Publishes the version vector and the peers' positions as committed.
    pub(crate) fn mm_publish(&self) {
        let Some(mm) = &self.mm else { return };
        // The log id and the policies change only with a policy or a snapshot install, both of
        // which forget the cached schemas: otherwise the last status has them.
        let reread = mm.reread.replace(false);
        let kept = (!reread).then(|| {
            let s = mm.status.lock().unwrap_or_else(|p| p.into_inner());
            (s.log_id, s.policies.clone())
        });
        let read = self.policy.internal(|| read_status(&self.conn, kept));
        match read {
            Ok(s) => *mm.status.lock().unwrap_or_else(|p| p.into_inner()) = s,
            Err(e) => tracing::warn!(error = %e, "could not read the version vector to publish it"),
        }
    }

    /// Applies records read from `peer`'s log — `(the peer's LSN, the record's payload)`, in the
    /// peer's order — in one transaction: each record new to this node is applied and appended to
    /// this node's log (so it streams on to others); one it has (from its origin or another
    /// peer) is skipped. Where this node has read `peer`'s log up to is stored with them.
    pub(crate) fn apply_remote(
        &mut self,
        peer: &str,
        log_id: u64,
        records: Vec<(u64, Vec<u8>)>,
    ) -> Result<Applied, EngineError> {
        use crate::payload::{self, Step};
        let node = self.mm_node()?;
        if peer == node {
            return Err(EngineError::BadRequest(format!(
                "records from {peer:?}, which is this node"
            )));
        }
        self.admit(0)?;
        self.internal("BEGIN IMMEDIATE")
            .map_err(|e| EngineError::Internal(format!("begin applying: {e}")))?;
        let mut done = Applied::default();
        let result = (|| -> Result<(), EngineError> {
            for (lsn, bytes) in records {
                done.cursor = done.cursor.max(lsn);
                let mut applied = false;
                for step in payload::decode(&bytes)? {
                    let Step::MultiMaster(b) = step else {
                        return Err(EngineError::Diverged(format!(
                            "{peer} sent a record (its lsn {lsn}) that is not a multi-master record: is it started with --multi-master?"
                        )));
                    };
                    let rec = Record::decode(&b)?;
                    self.mm_check_remote(peer, &rec)?;
                    let have = self
                        .policy
                        .internal(|| applied_seq(&self.conn, &rec.origin))?;
                    if rec.seq <= have {
                        done.duplicates += 1;
                        continue;
                    }
                    if rec.origin == node {
                        return Err(EngineError::Diverged(format!(
                            "{peer} holds record {} of this node, which this node never wrote (it has {have}): this node lost data (an emptied or older data directory); start it with its data, or under a new name",
                            rec.seq
                        )));
                    }
                    if rec.seq != have + 1 {
                        return Err(EngineError::Diverged(format!(
                            "{peer} sent record {} of {} but this node has applied up to {have} of it",
                            rec.seq, rec.origin
                        )));
                    }
                    self.mm
                        .as_mut()
                        .expect("multi-master")
                        .clock
                        .observe(rec.hlc, now_ms())
                        .map_err(|e| {
                            EngineError::Unavailable(format!(
                                "record {} of {} from {peer}: {e}; it is applied once this node's clock catches up",
                                rec.seq, rec.origin
                            ))
                        })?;
                    self.policy.internal(|| apply(&self.conn, &rec))?;
                    if rec.items.iter().any(|i| matches!(i, Item::Policy { .. })) {
                        self.mm_forget_schemas();
                    }
                    applied = true;
                    done.applied += 1;
                }
                // The peer's payload goes into this log as it came: it streams on unchanged.
                if applied {
                    self.log
                        .append(self.term, crate::writer::now_us(), bytes)
                        .map_err(EngineError::from)?;
                }
            }
            self.policy
                .internal(|| set_peer_cursor(&self.conn, peer, done.cursor, log_id))
        })();
        self.mm_finish(result, done.applied)?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damaged_ones_are_refused() {
        let r = Record::new(
            "n1",
            7,
            Hlc {
                wall_ms: 5,
                logical: 2,
            },
            vec![Item::Ddl(
                "CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY)".into(),
            )],
        );
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let b = r.encode();
        assert!(Record::decode(&b[..b.len() - 1]).is_err());
        let mut other = r.clone();
        other.v = 9;
        let e = Record::decode(&other.encode()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
