//! Rewind: undoing this node's own records after a position, so that its database and its log
//! both end there (DESIGN.md §4: a returning old primary undoes its records after the last
//! position it shares with the new primary, then rejoins as a replica).
//!
//! The records after the target are undone newest first by applying their changesets inverted;
//! a record holding DDL cannot be undone that way, so such a rewind is refused
//! ([`EngineError::NeedSnapshot`]: re-seed from a snapshot instead), as is one that reaches below
//! the records the log still holds. The steps, each durable before the next:
//!
//! 1. The rollback file: what was undone, for the operator (its layout is on `rollback_json`).
//! 2. The [`Marker`] in the data directory, naming the target.
//! 3. One SQLite transaction: every inverse applied, conflicts being errors (the database is
//!    exactly the log's view, so an inverse applies cleanly or something is wrong), the applied
//!    position set to the target; COMMIT, then an fsync of SQLite's WAL.
//! 4. The log cut after the target ([`scribe_log::Log::truncate_after`]).
//! 5. The marker removed.
//!
//! At open, a marker left by a crash is finished before replay (`recover`): if SQLite's applied
//! position is still past the target, the undo is done again from the log (its records are still
//! there), then the log is cut and the marker removed. So after a crash at any point the database
//! and the log both end at the target, or, if the crash came before the marker, both are as they
//! were.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use scribe_core::{Lsn, Position, Term};
use scribe_log::{Log, Record};
use serde_json::{json, Map};

use crate::changeset::{self, Changes, Op};
use crate::payload::{self, Step};
use crate::policy::Policy;
use crate::writer::Writer;
use crate::{capture, meta, EngineError, Progress, Value};

/// What a rewind did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindReport {
    /// Where the database and the log end now.
    pub to: Position,
    /// Transactions (records) undone.
    pub undone: u64,
    /// Row changes undone.
    pub rows: u64,
    /// The rollback file listing the undone transactions (not written when nothing was undone).
    pub file: PathBuf,
}

/// The marker of a rewind in progress: a file in the data directory naming the target, present
/// from before the SQLite transaction that undoes the records until the log is cut.
///
/// ```text
/// marker := magic "SCRIBRWD" | version u32 | term u64 | lsn u64 | crc32c(preceding 28 bytes) u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker;

const MARKER_FILE: &str = "rewind.marker";
const MARKER_MAGIC: &[u8; 8] = b"SCRIBRWD";
const MARKER_VERSION: u32 = 1;
const MARKER_LEN: usize = 8 + 4 + 8 + 8 + 4;

impl Marker {
    /// The marker's path in the data directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MARKER_FILE)
    }

    /// Writes the marker of a rewind to `to`, atomically and durably.
    pub fn write(dir: &Path, to: Position) -> Result<(), EngineError> {
        let mut b = Vec::with_capacity(MARKER_LEN);
        b.extend_from_slice(MARKER_MAGIC);
        b.extend_from_slice(&MARKER_VERSION.to_le_bytes());
        b.extend_from_slice(&to.term.0.to_le_bytes());
        b.extend_from_slice(&to.lsn.0.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        write_atomically(&Marker::path(dir), &b)
    }

    /// The target of an unfinished rewind, if the marker is there. A damaged marker is
    /// [`EngineError::Corrupt`], naming it.
    pub fn read(dir: &Path) -> Result<Option<Position>, EngineError> {
        let path = Marker::path(dir);
        let b = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(EngineError::Internal(format!(
                    "read rewind marker {}: {e}",
                    path.display()
                )))
            }
        };
        let bad = |why: &str| {
            EngineError::Corrupt(format!(
                "rewind marker {}: {why}; an interrupted rewind cannot be finished without its target",
                path.display()
            ))
        };
        if b.len() != MARKER_LEN || &b[0..8] != MARKER_MAGIC {
            return Err(bad("not a Scribe rewind marker"));
        }
        let crc = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..28]) {
            return Err(bad("checksum mismatch"));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != MARKER_VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Some(Position::new(Term(u64_at(12)), Lsn(u64_at(20)))))
    }

    /// Removes the marker, durably.
    pub fn remove(dir: &Path) -> Result<(), EngineError> {
        let path = Marker::path(dir);
        std::fs::remove_file(&path).map_err(|e| {
            EngineError::Internal(format!("remove rewind marker {}: {e}", path.display()))
        })?;
        sync_dir(dir)
    }
}

/// One record to undo, with its changesets in the order it made them.
struct Undo {
    record: Record,
    changesets: Vec<Vec<u8>>,
}

/// Reads the records `(to.lsn, upto]` and checks that they can be undone: all held, no DDL.
fn load_tail(log: &Log, to: Position, upto: Lsn) -> Result<Vec<Undo>, EngineError> {
    let first = log.first_lsn();
    if to.lsn.next() < first {
        return Err(EngineError::NeedSnapshot(format!(
            "cannot rewind to {to}: the change log no longer holds the records before lsn {first}, so they cannot be undone; re-seed this node from a snapshot"
        )));
    }
    let mut out = Vec::new();
    for r in log.read_from(to.lsn.next())? {
        let record = r?;
        if record.lsn > upto {
            break;
        }
        let mut changesets = Vec::new();
        for step in payload::decode(&record.payload)? {
            match step {
                Step::Changeset(cs) => changesets.push(cs),
                Step::MultiMaster(_) => {
                    return Err(EngineError::NeedSnapshot(format!(
                        "cannot rewind to {to}: the transaction at {} is a multi-master record, which is never undone",
                        record.position()
                    )))
                }
                Step::Sql(sql) => {
                    return Err(EngineError::NeedSnapshot(format!(
                        "cannot rewind to {to}: the transaction at {} changed the schema ({sql:?}), which cannot be undone; re-seed this node from a snapshot",
                        record.position()
                    )))
                }
            }
        }
        out.push(Undo { record, changesets });
    }
    let got = out.last().map_or(to.lsn, |u| u.record.lsn);
    if got != upto {
        return Err(EngineError::Corrupt(format!(
            "cannot rewind to {to}: the change log ends at lsn {got}, expected {upto}"
        )));
    }
    Ok(out)
}

/// Undoes `tail` (newest record first, each record's changesets last first) and sets the
/// applied position to `to`, in one SQLite transaction; on any error nothing is changed.
/// Answers the row changes undone.
fn undo(
    conn: &Connection,
    policy: &Policy,
    tail: &[Undo],
    to: Position,
) -> Result<u64, EngineError> {
    policy.internal(|| {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| EngineError::Internal(format!("begin rewind: {e}")))?;
        let done = (|| {
            for u in tail.iter().rev() {
                for cs in u.changesets.iter().rev() {
                    let inverse = changeset::invert(cs).map_err(|e| {
                        EngineError::Corrupt(format!(
                            "invert the changeset of the transaction at {}: {e}",
                            u.record.position()
                        ))
                    })?;
                    capture::apply(conn, &inverse).map_err(|e| {
                        EngineError::Diverged(format!(
                            "undo the transaction at {}: {e}; nothing was undone",
                            u.record.position()
                        ))
                    })?;
                }
            }
            meta::set_applied(conn, to)
                .map_err(|e| EngineError::Internal(format!("store applied position: {e}")))?;
            conn.execute_batch("COMMIT")
                .map_err(|e| EngineError::Internal(format!("commit rewind: {e}")))
        })();
        if done.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        done
    })?;
    Ok(tail.iter().map(|u| row_count(&u.changesets)).sum())
}

fn row_count(changesets: &[Vec<u8>]) -> u64 {
    changesets.iter().map(|cs| Changes::count(cs)).sum()
}

/// The rollback file's document: the undone transactions oldest first (commit order; the rewind
/// undid them newest first), each with its position, commit time (`time_us`, microseconds since
/// the Unix epoch, on the node that wrote it) and row changes: table, operation, primary key
/// (a table without one is keyed by `rowid`), and the old and new values the changeset holds (an
/// update holds the key and the columns it changed). Values are in the API's JSON forms.
fn rollback_json(
    conn: &Connection,
    policy: &Policy,
    to: Position,
    end: Position,
    tail: &[Undo],
) -> Result<serde_json::Value, EngineError> {
    let mut columns: HashMap<String, Vec<String>> = HashMap::new();
    let mut txns = Vec::with_capacity(tail.len());
    for Undo { record, changesets } in tail {
        let mut changes = Vec::new();
        for cs in changesets {
            describe_changeset(conn, policy, cs, &mut columns, &mut changes).map_err(|e| {
                EngineError::Corrupt(format!(
                    "read the changeset of the transaction at {}: {e}",
                    record.position()
                ))
            })?;
        }
        txns.push(json!({
            "position": record.position().to_string(),
            "term": record.term.0,
            "lsn": record.lsn.0,
            "time_us": record.time_us,
            "changes": changes,
        }));
    }
    Ok(json!({
        "format": "scribe-rollback",
        "version": 1,
        "rewound_to": to.to_string(),
        "log_end_before": end.to_string(),
        "order": "oldest first (commit order); they were undone newest first",
        "transactions": txns,
    }))
}

/// The column names of `table` as its changesets number them: a table without a primary key is
/// captured with its rowid first.
fn column_names(
    conn: &Connection,
    policy: &Policy,
    table: &str,
    n: usize,
) -> rusqlite::Result<Vec<String>> {
    let cols: Vec<(String, i64)> = policy.internal(|| {
        let mut st = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
        let rows = st.query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let mut names: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
    if n == names.len() + 1 && cols.iter().all(|c| c.1 == 0) {
        names.insert(0, "rowid".into());
    }
    if names.len() != n {
        // The schema no longer matches the changeset: number the columns.
        names = (0..n).map(|i| format!("column {i}")).collect();
    }
    Ok(names)
}

fn describe_changeset(
    conn: &Connection,
    policy: &Policy,
    cs: &[u8],
    columns: &mut HashMap<String, Vec<String>>,
    out: &mut Vec<serde_json::Value>,
) -> Result<(), EngineError> {
    let mut it = Changes::new(cs)?;
    while let Some(item) = it.next_change()? {
        let table = item.table().to_string();
        let n = item.columns();
        if !columns.contains_key(&table) {
            let names = column_names(conn, policy, &table, n)
                .map_err(|e| EngineError::Internal(format!("read the columns of {table}: {e}")))?;
            columns.insert(table.clone(), names);
        }
        let names = &columns[&table];
        let (kind, has_old, has_new) = match item.op() {
            Op::Insert => ("insert", false, true),
            Op::Delete => ("delete", true, false),
            Op::Update => ("update", true, true),
        };
        let pk_flags = item.pk()?;
        let mut old = Map::new();
        let mut new = Map::new();
        for (i, name) in names.iter().enumerate() {
            if has_old {
                if let Some(v) = item.before(i) {
                    old.insert(name.clone(), json_value(v));
                }
            }
            if has_new {
                if let Some(v) = item.after(i) {
                    new.insert(name.clone(), json_value(v));
                }
            }
        }
        // Key columns in key order, from the row as it was (or, for an insert, as it became).
        let mut key: Vec<(u8, &String)> = names
            .iter()
            .enumerate()
            .filter(|&(i, _)| pk_flags.get(i).is_some_and(|&f| f > 0))
            .map(|(i, name)| (pk_flags[i], name))
            .collect();
        key.sort();
        let row = if has_old { &old } else { &new };
        let pk: Map<String, serde_json::Value> = key
            .into_iter()
            .filter_map(|(_, name)| row.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        let mut change = Map::new();
        change.insert("table".into(), table.into());
        change.insert("op".into(), kind.into());
        change.insert("pk".into(), pk.into());
        if has_old {
            change.insert("old".into(), old.into());
        }
        if has_new {
            change.insert("new".into(), new.into());
        }
        out.push(change.into());
    }
    Ok(())
}

fn json_value(v: rusqlite::types::ValueRef<'_>) -> serde_json::Value {
    serde_json::to_value(Value::from_ref(v)).unwrap_or(serde_json::Value::Null)
}

/// Where the rollback file of a rewind from `end` back to `to` goes: the given path with both
/// positions in its name (`rollback.json` becomes `rollback-1.10-to-1.15.json`, "undoing after
/// 1/10 up to 1/15"), so no earlier rollback file is ever replaced. A file already there with
/// other contents gets a number after it.
fn rollback_path(given: &Path, to: Position, end: Position, contents: &[u8]) -> PathBuf {
    let stem = given
        .file_stem()
        .map_or_else(|| "rollback".into(), |s| s.to_string_lossy().into_owned());
    let ext = given
        .extension()
        .map_or_else(|| "json".into(), |s| s.to_string_lossy().into_owned());
    let base = format!("{stem}-{}.{}-to-{}.{}", to.term, to.lsn, end.term, end.lsn);
    let parent = given.parent().unwrap_or(Path::new(""));
    for n in 1u32.. {
        let name = if n == 1 {
            format!("{base}.{ext}")
        } else {
            format!("{base}-{n}.{ext}")
        };
        let path = parent.join(name);
        match std::fs::read(&path) {
            // The same rewind tried again (after a crash before its marker): the same file.
            Ok(existing) if existing == contents => return path,
            Ok(_) => continue,
            Err(_) => return path,
        }
    }
    unreachable!("some number is free")
}

/// Writes `bytes` to `path` atomically and durably: temporary file, fsync, rename, fsync of the
/// directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let ctx = |what: &str, e: std::io::Error| {
        EngineError::Internal(format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| ctx("create the directory of", e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| ctx("create a temporary file for", e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ctx("write", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ctx("rename into place", e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::Internal(format!("fsync directory {}: {e}", dir.display())))
}

/// Makes every committed SQLite transaction durable: with `synchronous=NORMAL` a COMMIT reaches
/// the WAL file without an fsync (see the writer's `sync_sqlite`).
pub(crate) fn sync_wal(db: &Path) -> Result<(), EngineError> {
    let wal = db.with_extension("db-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f
            .sync_all()
            .map_err(|e| EngineError::Internal(format!("fsync {}: {e}", wal.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::Internal(format!(
            "open {}: {e}",
            wal.display()
        ))),
    }
}

/// At open, before replay: finishes a rewind a crash interrupted (see the module documentation).
/// Answers its target, if there was one.
pub(crate) fn recover(
    dir: &Path,
    db: &Path,
    conn: &Connection,
    policy: &Policy,
    log: &mut Log,
) -> Result<Option<Position>, EngineError> {
    let Some(to) = Marker::read(dir)? else {
        return Ok(None);
    };
    let applied = policy
        .internal(|| meta::applied(conn))
        .map_err(|e| EngineError::Internal(format!("read applied position: {e}")))?;
    let mut undone = 0;
    if applied.lsn > to.lsn {
        // The undo did not commit (or was lost with the WAL): SQLite holds exactly the records
        // up to `applied`, which the log still has.
        let tail = load_tail(log, to, applied.lsn)?;
        undo(conn, policy, &tail, to)?;
        undone = tail.len();
    }
    sync_wal(db)?;
    let end = log.durable_position().lsn;
    if end < to.lsn {
        return Err(EngineError::Corrupt(format!(
            "an interrupted rewind to {to} finds the change log ending at lsn {end}, before its target"
        )));
    }
    log.truncate_after(to.lsn)?;
    Marker::remove(dir)?;
    tracing::warn!(%to, undone, "finished a rewind that a crash interrupted");
    Ok(Some(to))
}

/// The published term history: the log's, as of the writer's last change of it.
pub(crate) type SharedTerms = std::sync::Arc<std::sync::Mutex<Vec<(Term, Lsn)>>>;

/// Publishes the log's term history if it changed (a short lock; readers copy it out).
pub(crate) fn publish_terms(shared: &SharedTerms, log: &Log) {
    let mut cell = shared.lock().unwrap_or_else(|p| p.into_inner());
    if cell.as_slice() != log.term_history() {
        *cell = log.term_history().to_vec();
    }
}

impl Writer {
    /// Rewinds the database and the log to `to` (see the module documentation); `file` names
    /// the rollback file (see [`rollback_path`]).
    pub(crate) fn rewind(
        &mut self,
        to: Position,
        file: &Path,
    ) -> Result<RewindReport, EngineError> {
        if let Some(why) = self.fatal.get() {
            return Err(EngineError::Unavailable(why.clone()));
        }
        crate::gate::lock(&self.fence)
            .take_records()
            .map_err(|why| EngineError::BadRequest(format!("cannot rewind: {why}")))?;
        let end = self.log.durable_position();
        let applied = self.progress.borrow().applied;
        if applied != end || self.log.last_position() != end {
            return Err(EngineError::Internal(format!(
                "cannot rewind: the database has applied {applied} but the log ends at {end}"
            )));
        }
        if to.lsn > end.lsn {
            return Err(EngineError::BadRequest(format!(
                "cannot rewind to {to}: the log ends at {end}"
            )));
        }
        let history = scribe_log::Terms::from_entries(self.log.term_history().to_vec())
            .map_err(|e| EngineError::Internal(format!("term history: {e}")))?;
        let ours = history.term_at(to.lsn);
        if to.lsn > Lsn::ZERO && to.lsn.next() >= self.log.first_lsn() && ours != Some(to.term) {
            return Err(EngineError::BadRequest(format!(
                "cannot rewind to {to}: it is not part of this node's history (lsn {} is of term {})",
                to.lsn,
                ours.map_or("unknown".into(), |t| t.to_string())
            )));
        }
        let report = RewindReport {
            to,
            undone: 0,
            rows: 0,
            file: file.to_path_buf(),
        };
        if to.lsn == end.lsn {
            return Ok(report);
        }
        let tail = load_tail(&self.log, to, end.lsn)?;
        let doc = rollback_json(&self.conn, &self.policy, to, end, &tail)?;
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| EngineError::Internal(format!("encode the rollback file: {e}")))?;
        bytes.push(b'\n');
        let path = rollback_path(file, to, end, &bytes);
        write_atomically(&path, &bytes)?;
        let dir = self.data_dir.clone();
        let undone =
            Marker::write(&dir, to).and_then(|()| undo(&self.conn, &self.policy, &tail, to));
        let rows = match undone {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing changed. A marker left behind would make a later open undo records
                // written after this point: it must go, or this node must stop.
                let path = Marker::path(&dir);
                if path.exists() {
                    if let Err(m) = Marker::remove(&dir) {
                        self.stop(format!("a rewind to {to} failed ({e}) and {m}"));
                    }
                }
                return Err(e);
            }
        };
        let finished = sync_wal(&self.db_path)
            .and_then(|()| self.log.truncate_after(to.lsn).map_err(EngineError::from))
            .and_then(|_| Marker::remove(&dir));
        if let Err(e) = finished {
            // The database is at `to` but the log (or the marker) is not yet: a restart finishes.
            let why =
                format!("a rewind to {to} stopped part way ({e}); restart the node to finish it");
            self.stop(why.clone());
            return Err(EngineError::Unavailable(why));
        }
        self.progress.send_modify(|p| {
            *p = Progress {
                last: to,
                flushed: to,
                applied: to,
            }
        });
        tracing::warn!(%to, from = %end, undone = tail.len(), rows, file = %path.display(), "rewound this node's own records");
        Ok(RewindReport {
            undone: tail.len() as u64,
            rows,
            file: path,
            ..report
        })
    }

    fn stop(&self, why: String) {
        tracing::error!("{why}");
        let _ = self.fatal.set(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips_and_damage_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), None);
        let to = Position::new(Term(3), Lsn(41));
        Marker::write(dir.path(), to).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), Some(to));
        let path = Marker::path(dir.path());
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x08;
            std::fs::write(&path, &b).unwrap();
            let e = Marker::read(dir.path()).unwrap_err();
            assert!(matches!(e, EngineError::Corrupt(_)), "byte {i}: {e}");
            assert!(e.to_string().contains(&path.display().to_string()));
        }
        std::fs::write(&path, &good).unwrap();
        Marker::remove(dir.path()).unwrap();
        assert_eq!(Marker::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn rollback_files_carry_both_positions_and_never_replace_another() {
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("rollback.json");
        let to = Position::new(Term(1), Lsn(10));
        let end = Position::new(Term(1), Lsn(15));
        let first = rollback_path(&given, to, end, b"a");
        assert_eq!(first, dir.path().join("rollback-1.10-to-1.15.json"));
        write_atomically(&first, b"a").unwrap();
        assert_eq!(rollback_path(&given, to, end, b"a"), first);
        let second = rollback_path(&given, to, end, b"b");
        assert_eq!(second, dir.path().join("rollback-1.10-to-1.15-2.json"));
    }
}
