//! Reading, merging and inverting changesets (SQLite's session-extension format).
//!
//! [`Changes`] walks the row changes of a changeset, [`Group`] merges changesets into one that
//! holds each row's net change, and [`invert`] gives the changeset that undoes one. They borrow
//! the bytes they read; nothing here touches a database.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_int, c_void};
use std::ptr;

use rusqlite::ffi;
use rusqlite::types::ValueRef;

use crate::session_ffi as s;
use crate::EngineError;

/// What a row change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// An error reading or merging a changeset: SQLite's result code and what was being done.
fn failed(what: &str, rc: c_int) -> EngineError {
    EngineError::Internal(format!("{what}: SQLite error code {rc}"))
}

fn len_of(bytes: &[u8]) -> Result<c_int, EngineError> {
    c_int::try_from(bytes.len())
        .map_err(|_| EngineError::Internal("a changeset of 2 GiB or more".into()))
}

/// Copies SQLite-allocated output (`n` bytes at `p`) into a vector and frees it.
///
/// # Safety
/// `p` is null or points to `n` bytes allocated by SQLite.
unsafe fn take_output(p: *mut c_void, n: c_int) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract, `p` holds `n` readable bytes, freed once here.
    unsafe {
        let out = if n > 0 {
            std::slice::from_raw_parts(p as *const u8, n as usize).to_vec()
        } else {
            Vec::new()
        };
        ffi::sqlite3_free(p);
        out
    }
}

/// The row changes of a changeset, one at a time.
pub struct Changes<'a> {
    iter: *mut s::sqlite3_changeset_iter,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> Changes<'a> {
    /// Starts reading `bytes`; a malformed changeset is reported by [`Changes::next_change`].
    pub fn new(bytes: &'a [u8]) -> Result<Changes<'a>, EngineError> {
        let n = len_of(bytes)?;
        let mut iter = ptr::null_mut();
        // SAFETY: SQLite only reads the buffer (the parameter is not const in C for historical
        // reasons); `bytes` outlives the iterator through 'a, and the iterator is finalized once.
        let rc = unsafe { s::sqlite3changeset_start(&mut iter, n, bytes.as_ptr() as *mut c_void) };
        if rc != ffi::SQLITE_OK {
            return Err(failed("read a changeset", rc));
        }
        Ok(Changes {
            iter,
            _bytes: PhantomData,
        })
    }

    /// The next row change, or `None` at the end.
    pub fn next_change(&mut self) -> Result<Option<Change<'_>>, EngineError> {
        // SAFETY: the iterator is live until Drop.
        let rc = unsafe { s::sqlite3changeset_next(self.iter) };
        match rc {
            ffi::SQLITE_ROW => Change::at(self.iter).map(Some),
            ffi::SQLITE_DONE => Ok(None),
            rc => Err(failed("read a changeset (malformed or truncated)", rc)),
        }
    }

    /// How many row changes the changeset holds (0 for a malformed one).
    pub fn count(bytes: &[u8]) -> u64 {
        let Ok(mut it) = Changes::new(bytes) else {
            return 0;
        };
        let mut n = 0;
        while let Ok(Some(_)) = it.next_change() {
            n += 1;
        }
        n
    }
}

impl Drop for Changes<'_> {
    fn drop(&mut self) {
        // SAFETY: started by sqlite3changeset_start and finalized exactly once.
        unsafe {
            s::sqlite3changeset_finalize(self.iter);
        }
    }
}

/// One row change, valid until the iterator moves on.
pub struct Change<'i> {
    iter: *mut s::sqlite3_changeset_iter,
    table: &'i str,
    columns: usize,
    op: Op,
    _iter: PhantomData<&'i mut s::sqlite3_changeset_iter>,
}

impl<'i> Change<'i> {
    /// Reads the current change of a live iterator. Also used inside a conflict handler, where
    /// SQLite hands over its own iterator.
    pub(crate) fn at(iter: *mut s::sqlite3_changeset_iter) -> Result<Change<'i>, EngineError> {
        let mut table = ptr::null();
        let mut columns: c_int = 0;
        let mut op: c_int = 0;
        let mut indirect: c_int = 0;
        // SAFETY: the iterator points at a change; the table name SQLite answers lives as long
        // as the current change, which 'i ties to the iterator's borrow.
        unsafe {
            let rc = s::sqlite3changeset_op(iter, &mut table, &mut columns, &mut op, &mut indirect);
            if rc != ffi::SQLITE_OK || table.is_null() {
                return Err(failed("read a change's table", rc));
            }
            let table = CStr::from_ptr(table)
                .to_str()
                .map_err(|_| EngineError::Internal("a table name that is not UTF-8".into()))?;
            let op = match op {
                ffi::SQLITE_INSERT => Op::Insert,
                ffi::SQLITE_UPDATE => Op::Update,
                ffi::SQLITE_DELETE => Op::Delete,
                other => return Err(failed("read a change's operation", other)),
            };
            Ok(Change {
                iter,
                table,
                columns: columns.max(0) as usize,
                op,
                _iter: PhantomData,
            })
        }
    }

    pub fn table(&self) -> &'i str {
        self.table
    }

    /// The number of columns of the table as captured (a rowid table has its rowid first).
    pub fn columns(&self) -> usize {
        self.columns
    }

    pub fn op(&self) -> Op {
        self.op
    }

    /// For each column, its place in the primary key (1 for the first key column; 0 for a
    /// column outside the key).
    pub fn pk(&self) -> Result<Vec<u8>, EngineError> {
        let mut flags: *mut u8 = ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: the iterator points at this change; SQLite answers `n` flag bytes it owns.
        unsafe {
            let rc = s::sqlite3changeset_pk(self.iter, &mut flags, &mut n);
            if rc != ffi::SQLITE_OK || flags.is_null() {
                return Err(failed("read a change's primary key", rc));
            }
            Ok(std::slice::from_raw_parts(flags, n.max(0) as usize).to_vec())
        }
    }

    /// A column's value before the change (updates and deletes; in an update, `None` for a
    /// column the update did not change and that is not part of the key).
    pub fn before(&self, column: usize) -> Option<ValueRef<'_>> {
        if self.op == Op::Insert {
            return None;
        }
        self.value(column, s::sqlite3changeset_old)
    }

    /// A column's value after the change (inserts and updates; in an update, `None` for a
    /// column the update did not change).
    pub fn after(&self, column: usize) -> Option<ValueRef<'_>> {
        if self.op == Op::Delete {
            return None;
        }
        self.value(column, s::sqlite3changeset_new)
    }

    fn value(
        &self,
        column: usize,
        read: unsafe extern "C" fn(
            *mut s::sqlite3_changeset_iter,
            c_int,
            *mut *mut ffi::sqlite3_value,
        ) -> c_int,
    ) -> Option<ValueRef<'_>> {
        if column >= self.columns {
            return None;
        }
        let mut v: *mut ffi::sqlite3_value = ptr::null_mut();
        // SAFETY: the column is in range and the operation has this side (checked by callers);
        // the value lives as long as the current change.
        unsafe {
            let rc = read(self.iter, column as c_int, &mut v);
            if rc != ffi::SQLITE_OK || v.is_null() {
                return None;
            }
            Some(value_ref(v))
        }
    }
}

/// Reads an SQLite value without copying.
///
/// # Safety
/// `v` is a live protected value that outlives the answer.
unsafe fn value_ref<'v>(v: *mut ffi::sqlite3_value) -> ValueRef<'v> {
    // SAFETY: per the contract; text and blob pointers are read after their type is known and
    // their length is taken after the pointer, as SQLite's documentation asks.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let n = ffi::sqlite3_value_bytes(v);
                if p.is_null() || n <= 0 {
                    ValueRef::Text(&[])
                } else {
                    ValueRef::Text(std::slice::from_raw_parts(p, n as usize))
                }
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v) as *const u8;
                let n = ffi::sqlite3_value_bytes(v);
                if p.is_null() || n <= 0 {
                    ValueRef::Blob(&[])
                } else {
                    ValueRef::Blob(std::slice::from_raw_parts(p, n as usize))
                }
            }
            _ => ValueRef::Null,
        }
    }
}

/// The changeset that undoes `bytes`.
pub fn invert(bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
    let n = len_of(bytes)?;
    let mut out_n: c_int = 0;
    let mut out: *mut c_void = ptr::null_mut();
    // SAFETY: SQLite reads `n` bytes and allocates the output, which take_output frees.
    unsafe {
        let rc =
            s::sqlite3changeset_invert(n, bytes.as_ptr() as *const c_void, &mut out_n, &mut out);
        if rc != ffi::SQLITE_OK {
            if !out.is_null() {
                ffi::sqlite3_free(out);
            }
            return Err(failed("invert a changeset", rc));
        }
        Ok(take_output(out, out_n))
    }
}

/// Changesets merged into one holding each row's net change.
pub struct Group {
    group: *mut s::sqlite3_changegroup,
}

impl Group {
    pub fn new() -> Result<Group, EngineError> {
        let mut group = ptr::null_mut();
        // SAFETY: SQLite allocates the group, deleted once in Drop.
        let rc = unsafe { s::sqlite3changegroup_new(&mut group) };
        if rc != ffi::SQLITE_OK {
            return Err(failed("start a changegroup", rc));
        }
        Ok(Group { group })
    }

    /// Adds a changeset (SQLite copies what it needs).
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let n = len_of(bytes)?;
        // SAFETY: the group is live; SQLite only reads the buffer.
        let rc = unsafe { s::sqlite3changegroup_add(self.group, n, bytes.as_ptr() as *mut c_void) };
        if rc != ffi::SQLITE_OK {
            return Err(failed(
                "merge a changeset (malformed, or its schema differs)",
                rc,
            ));
        }
        Ok(())
    }

    /// The merged changeset.
    pub fn output(&self) -> Result<Vec<u8>, EngineError> {
        let mut n: c_int = 0;
        let mut out: *mut c_void = ptr::null_mut();
        // SAFETY: the group is live; SQLite allocates the output, which take_output frees.
        unsafe {
            let rc = s::sqlite3changegroup_output(self.group, &mut n, &mut out);
            if rc != ffi::SQLITE_OK {
                if !out.is_null() {
                    ffi::sqlite3_free(out);
                }
                return Err(failed("output merged changesets", rc));
            }
            Ok(take_output(out, n))
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by sqlite3changegroup_new and deleted exactly once.
        unsafe { s::sqlite3changegroup_delete(self.group) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Capture;
    use rusqlite::Connection;

    fn changeset_of(conn: &Connection, sql: &str) -> Vec<u8> {
        let cap = Capture::start(conn).unwrap();
        conn.execute_batch(sql).unwrap();
        cap.changeset().unwrap()
    }

    #[test]
    fn changes_name_table_operation_key_and_values() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO k VALUES (1, 'one', x'01')").unwrap();
        let cs = changeset_of(
            &c,
            "INSERT INTO k VALUES (2, 'two', NULL); UPDATE k SET v = 'uno' WHERE id = 1; DELETE FROM k WHERE id = 2 AND 0",
        );
        let mut it = Changes::new(&cs).unwrap();
        let mut seen = Vec::new();
        while let Some(ch) = it.next_change().unwrap() {
            assert_eq!(ch.table(), "k");
            assert_eq!(ch.columns(), 3);
            assert_eq!(ch.pk().unwrap(), vec![1, 0, 0]);
            let id = match ch.op() {
                Op::Insert => ch.after(0),
                _ => ch.before(0),
            };
            let id = id.unwrap().as_i64().unwrap();
            match ch.op() {
                Op::Insert => {
                    assert_eq!(id, 2);
                    assert_eq!(ch.after(1), Some(ValueRef::Text(b"two")));
                    assert_eq!(ch.after(2), Some(ValueRef::Null));
                    assert_eq!(ch.before(1), None);
                }
                Op::Update => {
                    assert_eq!(id, 1);
                    assert_eq!(ch.before(1), Some(ValueRef::Text(b"one")));
                    assert_eq!(ch.after(1), Some(ValueRef::Text(b"uno")));
                    // Unchanged, not part of the key: absent on both sides.
                    assert_eq!(ch.after(2), None);
                }
                Op::Delete => panic!("nothing was deleted"),
            }
            seen.push(ch.op());
        }
        seen.sort_by_key(|o| *o as u8);
        assert_eq!(seen, vec![Op::Insert, Op::Update]);
        assert_eq!(Changes::count(&cs), 2);
    }

    #[test]
    fn an_inverted_changeset_undoes_it_and_a_group_nets_changes() {
        let a = Connection::open_in_memory().unwrap();
        a.execute_batch("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        let first = changeset_of(&a, "INSERT INTO k VALUES (1, 'a'), (2, 'b')");
        let second = changeset_of(
            &a,
            "UPDATE k SET v = 'c' WHERE id = 1; DELETE FROM k WHERE id = 2",
        );
        let mut g = Group::new().unwrap();
        g.add(&first).unwrap();
        g.add(&second).unwrap();
        let net = g.output().unwrap();
        // Row 2 was inserted and deleted: only row 1's insert remains, with its last value.
        assert_eq!(Changes::count(&net), 1);
        let undo = invert(&net).unwrap();
        crate::capture::apply(&a, &undo).unwrap();
        let n: i64 = a
            .query_row("SELECT count(*) FROM k", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_crash() {
        for bytes in [&b"\x54\x03garbage"[..], b"T", &[0xff; 64][..]] {
            if let Ok(mut it) = Changes::new(bytes) {
                while let Ok(Some(_)) = it.next_change() {}
            }
            let _ = invert(bytes);
            let mut g = Group::new().unwrap();
            let _ = g.add(bytes);
        }
    }
}
