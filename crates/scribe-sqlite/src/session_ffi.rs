//! The C declarations of SQLite's session extension that Scribe uses.
//!
//! The bundled SQLite is compiled with `SQLITE_ENABLE_SESSION` and `SQLITE_ENABLE_PREUPDATE_HOOK`
//! (`LIBSQLITE3_FLAGS` in `.cargo/config.toml`), but `libsqlite3-sys` ships pre-generated
//! bindings without the session API and would generate them with bindgen — which needs libclang —
//! if its `session` feature were on. These few declarations, copied by hand from `sqlite3.h`
//! (3.51), keep the build free of libclang. Were the flags missing, linking would fail naming
//! `sqlite3session_create`.

use std::os::raw::{c_char, c_int, c_void};

use rusqlite::ffi::{sqlite3, sqlite3_value};

#[repr(C)]
pub(crate) struct sqlite3_session {
    _private: [u8; 0],
}

#[repr(C)]
pub(crate) struct sqlite3_changeset_iter {
    _private: [u8; 0],
}

#[repr(C)]
pub(crate) struct sqlite3_changegroup {
    _private: [u8; 0],
}

pub(crate) const SQLITE_SESSION_OBJCONFIG_ROWID: c_int = 2;

pub(crate) const SQLITE_CHANGESET_DATA: c_int = 1;
pub(crate) const SQLITE_CHANGESET_NOTFOUND: c_int = 2;
pub(crate) const SQLITE_CHANGESET_CONFLICT: c_int = 3;
pub(crate) const SQLITE_CHANGESET_CONSTRAINT: c_int = 4;
pub(crate) const SQLITE_CHANGESET_FOREIGN_KEY: c_int = 5;

pub(crate) const SQLITE_CHANGESET_ABORT: c_int = 2;

pub(crate) type FilterFn = unsafe extern "C" fn(ctx: *mut c_void, table: *const c_char) -> c_int;
pub(crate) type ConflictFn =
    unsafe extern "C" fn(ctx: *mut c_void, kind: c_int, iter: *mut sqlite3_changeset_iter) -> c_int;

extern "C" {
    pub(crate) fn sqlite3session_create(
        db: *mut sqlite3,
        db_name: *const c_char,
        session: *mut *mut sqlite3_session,
    ) -> c_int;
    pub(crate) fn sqlite3session_object_config(
        session: *mut sqlite3_session,
        op: c_int,
        arg: *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3session_attach(
        session: *mut sqlite3_session,
        table: *const c_char,
    ) -> c_int;
    pub(crate) fn sqlite3session_changeset(
        session: *mut sqlite3_session,
        n: *mut c_int,
        changeset: *mut *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3session_memory_used(session: *mut sqlite3_session) -> i64;
    pub(crate) fn sqlite3session_delete(session: *mut sqlite3_session);

    pub(crate) fn sqlite3changeset_start(
        iter: *mut *mut sqlite3_changeset_iter,
        n: c_int,
        changeset: *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_next(iter: *mut sqlite3_changeset_iter) -> c_int;
    pub(crate) fn sqlite3changeset_op(
        iter: *mut sqlite3_changeset_iter,
        table: *mut *const c_char,
        columns: *mut c_int,
        op: *mut c_int,
        indirect: *mut c_int,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_pk(
        iter: *mut sqlite3_changeset_iter,
        pk: *mut *mut u8,
        columns: *mut c_int,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_old(
        iter: *mut sqlite3_changeset_iter,
        column: c_int,
        value: *mut *mut sqlite3_value,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_new(
        iter: *mut sqlite3_changeset_iter,
        column: c_int,
        value: *mut *mut sqlite3_value,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_finalize(iter: *mut sqlite3_changeset_iter) -> c_int;
    pub(crate) fn sqlite3changeset_invert(
        n_in: c_int,
        input: *const c_void,
        n_out: *mut c_int,
        output: *mut *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3changeset_apply(
        db: *mut sqlite3,
        n: c_int,
        changeset: *mut c_void,
        filter: Option<FilterFn>,
        conflict: Option<ConflictFn>,
        ctx: *mut c_void,
    ) -> c_int;

    pub(crate) fn sqlite3changegroup_new(group: *mut *mut sqlite3_changegroup) -> c_int;
    pub(crate) fn sqlite3changegroup_add(
        group: *mut sqlite3_changegroup,
        n: c_int,
        data: *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3changegroup_output(
        group: *mut sqlite3_changegroup,
        n: *mut c_int,
        output: *mut *mut c_void,
    ) -> c_int;
    pub(crate) fn sqlite3changegroup_delete(group: *mut sqlite3_changegroup);
}
