//! Change capture and replay with SQLite's session extension.
//!
//! [`Capture`] records the row changes of the statements run while it lives, for every table of
//! the `main` database — tables without an explicit PRIMARY KEY included, keyed by their rowid
//! (`SQLITE_SESSION_OBJCONFIG_ROWID`), so every ordinary table replicates. [`apply`] replays a
//! changeset; any conflict (a row that is not as the changeset expects) aborts it, because on a
//! replica or during recovery a conflict means the copy has diverged.
//!
//! The session is driven through the C API ([`crate::session_ffi`]): rusqlite's session type
//! cannot set the rowid option, and its bindings would need libclang to build.

use std::marker::PhantomData;
use std::ptr;

use std::os::raw::{c_int, c_void};

use rusqlite::{ffi, Connection};

use crate::changeset::Change;
use crate::session_ffi as s;
use crate::EngineError;

/// A live session recording the changes made through one connection.
pub struct Capture<'c> {
    session: *mut s::sqlite3_session,
    _conn: PhantomData<&'c Connection>,
}

impl<'c> Capture<'c> {
    /// Starts recording changes to every table of `main` made through `conn`.
    pub fn start(conn: &'c Connection) -> Result<Capture<'c>, EngineError> {
        let mut session: *mut s::sqlite3_session = ptr::null_mut();
        // SAFETY: `conn.handle()` is a valid open connection that outlives the session (the
        // lifetime 'c ties them); the session pointer is checked before use and deleted in Drop.
        unsafe {
            let rc = s::sqlite3session_create(conn.handle(), c"main".as_ptr(), &mut session);
            if rc != ffi::SQLITE_OK {
                return Err(EngineError::Internal(format!(
                    "create SQLite session: error code {rc}"
                )));
            }
            let capture = Capture {
                session,
                _conn: PhantomData,
            };
            let mut on: std::os::raw::c_int = 1;
            let rc = s::sqlite3session_object_config(
                session,
                s::SQLITE_SESSION_OBJCONFIG_ROWID,
                &mut on as *mut std::os::raw::c_int as *mut std::os::raw::c_void,
            );
            if rc != ffi::SQLITE_OK {
                return Err(EngineError::Internal(format!(
                    "enable rowid tables in SQLite session: error code {rc}"
                )));
            }
            let rc = s::sqlite3session_attach(session, ptr::null());
            if rc != ffi::SQLITE_OK {
                return Err(EngineError::Internal(format!(
                    "attach SQLite session: error code {rc}"
                )));
            }
            Ok(capture)
        }
    }

    /// The net changes recorded so far, as a changeset (empty when nothing changed).
    pub fn changeset(&self) -> Result<Vec<u8>, EngineError> {
        let mut n: std::os::raw::c_int = 0;
        let mut p: *mut std::os::raw::c_void = ptr::null_mut();
        // SAFETY: the session is live; SQLite allocates `p` (n bytes) which we copy and free.
        unsafe {
            let rc = s::sqlite3session_changeset(self.session, &mut n, &mut p);
            if rc != ffi::SQLITE_OK {
                return Err(EngineError::Internal(format!(
                    "read SQLite session changeset: error code {rc}"
                )));
            }
            if p.is_null() || n <= 0 {
                return Ok(Vec::new());
            }
            let bytes = std::slice::from_raw_parts(p as *const u8, n as usize).to_vec();
            ffi::sqlite3_free(p);
            Ok(bytes)
        }
    }

    /// The session itself, for the progress handler that watches its size.
    pub(crate) fn raw(&self) -> *mut s::sqlite3_session {
        self.session
    }

    /// The heap memory the session holds for the changes recorded so far: what a transaction's
    /// captured changes cost before they are turned into a changeset.
    pub fn memory_used(&self) -> u64 {
        // SAFETY: the session is live.
        unsafe { s::sqlite3session_memory_used(self.session) }.max(0) as u64
    }
}

impl Drop for Capture<'_> {
    fn drop(&mut self) {
        // SAFETY: created by sqlite3session_create and deleted exactly once, before the connection.
        unsafe { s::sqlite3session_delete(self.session) }
    }
}

/// Replays a changeset on `conn`; any conflict aborts it with an error naming the table.
///
/// Triggers are off while it runs: the changeset already holds every row a trigger changed on
/// the node that wrote it, so firing them again would apply their effects twice.
pub fn apply(conn: &Connection, changeset: &[u8]) -> Result<(), EngineError> {
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER as TRIGGERS;
    conn.set_db_config(TRIGGERS, false).map_err(|e| {
        EngineError::Internal(format!("turn triggers off to apply a changeset: {e}"))
    })?;
    let applied = apply_changeset(conn, changeset);
    conn.set_db_config(TRIGGERS, true)
        .map_err(|e| EngineError::Internal(format!("turn triggers back on: {e}")))?;
    applied
}

fn apply_changeset(conn: &Connection, changeset: &[u8]) -> Result<(), EngineError> {
    let n = c_int::try_from(changeset.len())
        .map_err(|_| EngineError::Internal("a changeset of 2 GiB or more".into()))?;
    let mut conflict: Option<String> = None;
    // SAFETY: the connection is open and not used elsewhere during the call (we hold `&conn` and
    // rusqlite connections are not shared across threads); SQLite only reads the changeset; the
    // context pointer is the `conflict` slot, live for the whole call and touched only by
    // `on_conflict` on this thread.
    let rc = unsafe {
        s::sqlite3changeset_apply(
            conn.handle(),
            n,
            changeset.as_ptr() as *mut c_void,
            None,
            Some(on_conflict),
            &mut conflict as *mut Option<String> as *mut c_void,
        )
    };
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    if rc & 0xff == ffi::SQLITE_FULL {
        return Err(EngineError::DiskFull(
            "apply changeset: database or disk is full".into(),
        ));
    }
    match conflict {
        Some(what) => Err(EngineError::Diverged(format!(
            "changeset conflict {what}: the local copy differs from the log"
        ))),
        None => Err(EngineError::Internal(format!(
            "apply changeset: {}",
            rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None)
        ))),
    }
}

/// Any conflict aborts the apply; it notes which and where first.
unsafe extern "C" fn on_conflict(
    ctx: *mut c_void,
    kind: c_int,
    iter: *mut s::sqlite3_changeset_iter,
) -> c_int {
    let kind = match kind {
        s::SQLITE_CHANGESET_DATA => "Data",
        s::SQLITE_CHANGESET_NOTFOUND => "NotFound",
        s::SQLITE_CHANGESET_CONFLICT => "Conflict",
        s::SQLITE_CHANGESET_CONSTRAINT => "Constraint",
        s::SQLITE_CHANGESET_FOREIGN_KEY => "ForeignKey",
        _ => "Unknown",
    };
    // A foreign-key conflict is reported once for the whole changeset, with no current change.
    let table = if kind == "ForeignKey" {
        String::new()
    } else {
        Change::at(iter)
            .map(|c| c.table().to_string())
            .unwrap_or_default()
    };
    // SAFETY: `ctx` is the `Option<String>` apply_changeset passed, live for the call.
    let slot = unsafe { &mut *(ctx as *mut Option<String>) };
    slot.get_or_insert_with(|| format!("{kind} on table {table:?}"));
    s::SQLITE_CHANGESET_ABORT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_dbs(schema: &str) -> (Connection, Connection) {
        let a = Connection::open_in_memory().unwrap();
        let b = Connection::open_in_memory().unwrap();
        a.execute_batch(schema).unwrap();
        b.execute_batch(schema).unwrap();
        (a, b)
    }

    fn dump(c: &Connection, table: &str) -> Vec<(i64, String)> {
        let mut s = c
            .prepare(&format!("SELECT rowid, * FROM {table} ORDER BY rowid"))
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, format!("{:?}", r.get_ref(1)?))))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn changes_to_rowid_and_keyed_tables_replay_identically() {
        let (a, b) = two_dbs("CREATE TABLE h (x INTEGER, y TEXT); CREATE TABLE k (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)");
        let cs = {
            let cap = Capture::start(&a).unwrap();
            a.execute_batch("INSERT INTO h VALUES (1,'a'),(2,'b'),(3,'c'); DELETE FROM h WHERE x = 2; UPDATE h SET y = 'z'; INSERT INTO k (v) VALUES ('p'), ('q')").unwrap();
            cap.changeset().unwrap()
        };
        apply(&b, &cs).unwrap();
        assert_eq!(dump(&a, "h"), dump(&b, "h"));
        assert_eq!(dump(&a, "k"), dump(&b, "k"));
        // A delete of every row (which SQLite may otherwise do as a truncate) is captured too.
        let cs = {
            let cap = Capture::start(&a).unwrap();
            a.execute_batch("DELETE FROM h").unwrap();
            cap.changeset().unwrap()
        };
        apply(&b, &cs).unwrap();
        assert!(dump(&b, "h").is_empty());
    }

    #[test]
    fn nothing_changed_means_an_empty_changeset() {
        let (a, _) = two_dbs("CREATE TABLE h (x)");
        let cap = Capture::start(&a).unwrap();
        a.execute_batch("UPDATE h SET x = 1 WHERE 0").unwrap();
        assert!(cap.changeset().unwrap().is_empty());
    }

    #[test]
    fn a_conflict_is_reported_as_divergence() {
        let (a, b) = two_dbs("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT)");
        b.execute("INSERT INTO k VALUES (1, 'already here')", [])
            .unwrap();
        let cs = {
            let cap = Capture::start(&a).unwrap();
            a.execute("INSERT INTO k VALUES (1, 'new')", []).unwrap();
            cap.changeset().unwrap()
        };
        let e = apply(&b, &cs).unwrap_err();
        assert!(matches!(e, EngineError::Diverged(_)), "{e}");
        assert_eq!(dump(&b, "k").len(), 1);
    }

    #[test]
    fn triggers_do_not_fire_again_when_changes_are_applied() {
        let schema = "CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT);
                      CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
                      CREATE TRIGGER k_audit AFTER INSERT ON k BEGIN
                          INSERT INTO audit (what) VALUES ('insert ' || NEW.v);
                      END;";
        let (a, b) = two_dbs(schema);
        let cs = {
            let cap = Capture::start(&a).unwrap();
            a.execute("INSERT INTO k (v) VALUES ('x')", []).unwrap();
            cap.changeset().unwrap()
        };
        apply(&b, &cs).unwrap();
        assert_eq!(dump(&a, "audit"), dump(&b, "audit"));
        assert_eq!(dump(&b, "audit").len(), 1);
    }
}
