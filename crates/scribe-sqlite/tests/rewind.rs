//! Rewinding a node's own records, against real files and real SQLite: the database and the log
//! end exactly at the target (the same rows as a copy that only ever applied the prefix), the
//! rollback file lists what was undone, the node then takes a newer term's records as a
//! replica; refusals (DDL, records no longer held, an open write gate) change nothing; crashes
//! between the steps are finished at the next open.

use std::path::{Path, PathBuf};

use scribe_core::{Lsn, Position, Term};
use scribe_sqlite::rewind::Marker;
use scribe_sqlite::{Engine, EngineError, EngineOptions, Retention, Statement, Value, WriteGate};
use serde_json::json;

fn open(dir: &Path) -> Engine {
    Engine::open(EngineOptions::new(dir)).unwrap().0
}

/// Opened as a replica (gate closed), as a returning old primary is before it rewinds.
fn open_closed(dir: &Path) -> Engine {
    let e = open(dir);
    e.set_gate(WriteGate::closed("rejoining")).unwrap();
    e
}

async fn exec(e: &Engine, sqls: &[&str]) -> Position {
    let c = e
        .execute(sqls.iter().map(|s| Statement::new(*s)).collect())
        .await
        .unwrap();
    c.position
}

/// Every user table's rows and the schema: what replicates, so rowids only of tables keyed by
/// them (a table with a declared primary key replicates by that key, not by its rowid).
async fn dump(e: &Engine) -> Vec<(String, Vec<Vec<Value>>)> {
    let q = |sql: String| async move { e.query(Statement::new(sql)).await.unwrap().rows.rows };
    let tables = q("SELECT name, (SELECT count(*) FROM pragma_table_info(m.name) WHERE pk > 0) FROM sqlite_master m WHERE type = 'table' AND name NOT LIKE '\\_scribe%' ESCAPE '\\' ORDER BY name".into()).await;
    let mut out = vec![(
        "schema".to_string(),
        q("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '\\_scribe%' ESCAPE '\\' ORDER BY name".into()).await,
    )];
    for t in tables {
        let (Value::Text(name), Value::Integer(keys)) = (&t[0], &t[1]) else {
            panic!("table {t:?}")
        };
        let sql = if *keys == 0 {
            format!("SELECT rowid, * FROM \"{name}\" ORDER BY rowid")
        } else {
            format!("SELECT * FROM \"{name}\" ORDER BY 1, 2")
        };
        out.push((name.clone(), q(sql).await));
    }
    out
}

fn lsns(e: &Engine) -> Vec<u64> {
    e.read_log(Lsn(1))
        .unwrap()
        .map(|r| r.unwrap().lsn.0)
        .collect()
}

const PREFIX: &[&[&str]] = &[
    &[
        "CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
        "CREATE TABLE nokey (a, b)",
        "CREATE TABLE pair (x, y, z, PRIMARY KEY (x, y))",
    ],
    &["INSERT INTO k VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0)"],
    &["INSERT INTO nokey VALUES (1, 'one'), (2, 'two')"],
    &["INSERT INTO pair VALUES ('p', 1, 'first'), ('p', 2, 'second')"],
];

/// The old primary's unreplicated tail: updates, deletes, inserts, one row changed by several
/// transactions, a table without a primary key, one with a composite key. 10 row changes.
const TAIL: &[&[&str]] = &[
    &["UPDATE k SET v = 'a2' WHERE id = 1"],
    &[
        "UPDATE k SET n = 5 WHERE id = 1",
        "DELETE FROM k WHERE id = 2",
    ],
    &[
        "INSERT INTO k VALUES (10, 'new', 1)",
        "UPDATE nokey SET b = 'uno' WHERE a = 1",
    ],
    &[
        "DELETE FROM nokey WHERE a = 2",
        "INSERT INTO nokey VALUES (3, x'00ff')",
    ],
    &[
        "UPDATE pair SET z = 'changed' WHERE x = 'p' AND y = 1",
        "INSERT INTO pair VALUES ('q', 1, NULL)",
        "UPDATE k SET v = 'a3' WHERE id = 1",
    ],
];

/// Writes the prefix and then the tail; answers the last position of the prefix.
async fn prefix_and_tail(e: &Engine) -> Position {
    let mut to = Position::ZERO;
    for t in PREFIX {
        to = exec(e, t).await;
    }
    for t in TAIL {
        exec(e, t).await;
    }
    to
}

/// A copy that only ever applied the records up to `to`, fed from `from`.
async fn copy_of_prefix(from: &Engine, dir: &Path, to: Position) -> Engine {
    let b = open_closed(dir);
    let records: Vec<_> = from
        .read_log(Lsn(1))
        .unwrap()
        .map(|r| r.unwrap())
        .take_while(|r| r.lsn <= to.lsn)
        .collect();
    b.apply(records).await.unwrap();
    b
}

fn rollback_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("rollback")
        })
        .collect();
    v.sort();
    v
}

fn find<'a>(changes: &'a [serde_json::Value], table: &str, op: &str) -> &'a serde_json::Value {
    changes
        .iter()
        .find(|c| c["table"] == table && c["op"] == op)
        .unwrap_or_else(|| panic!("no {op} on {table} in {changes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_leaves_exactly_the_prefix_lists_the_undone_and_takes_a_newer_term_after() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let to = prefix_and_tail(&a).await;
    assert_eq!(to.lsn, Lsn(4));
    let end = a.progress().last;
    assert_eq!(end.lsn, Lsn(9));
    let b = copy_of_prefix(&a, b_dir.path(), to).await;
    assert_ne!(dump(&a).await, dump(&b).await);

    a.set_gate(WriteGate::closed("rejoining")).unwrap();
    let report = a
        .rewind(to, out.path().join("rollback.json"))
        .await
        .unwrap();
    assert_eq!(report.to, to);
    assert_eq!(report.undone, 5);
    assert_eq!(report.rows, 10);
    assert_eq!(report.file, out.path().join("rollback-1.4-to-1.9.json"));
    assert_eq!(dump(&a).await, dump(&b).await);
    let p = a.progress();
    assert_eq!((p.last, p.flushed, p.applied), (to, to, to));
    assert_eq!(lsns(&a), vec![1, 2, 3, 4]);
    assert!(!Marker::path(a_dir.path()).exists());

    // The rollback file: every undone transaction, oldest first, with its old and new values.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.file).unwrap()).unwrap();
    assert_eq!(doc["rewound_to"], "1/4");
    assert_eq!(doc["log_end_before"], "1/9");
    let txns = doc["transactions"].as_array().unwrap();
    let positions: Vec<_> = txns.iter().map(|t| t["position"].clone()).collect();
    assert_eq!(positions, vec!["1/5", "1/6", "1/7", "1/8", "1/9"]);
    assert!(txns.iter().all(|t| t["time_us"].as_u64().unwrap() > 0));
    let changes = |i: usize| txns[i]["changes"].as_array().unwrap().clone();
    assert_eq!(
        changes(0),
        vec![json!({"table": "k", "op": "update", "pk": {"id": 1},
                    "old": {"id": 1, "v": "a"}, "new": {"v": "a2"}})]
    );
    let c = changes(1);
    assert_eq!(c.len(), 2);
    assert_eq!(
        find(&c, "k", "update"),
        &json!({"table": "k", "op": "update", "pk": {"id": 1}, "old": {"id": 1, "n": 0}, "new": {"n": 5}})
    );
    assert_eq!(
        find(&c, "k", "delete"),
        &json!({"table": "k", "op": "delete", "pk": {"id": 2}, "old": {"id": 2, "v": "b", "n": 0}})
    );
    let c = changes(2);
    assert_eq!(
        find(&c, "k", "insert"),
        &json!({"table": "k", "op": "insert", "pk": {"id": 10}, "new": {"id": 10, "v": "new", "n": 1}})
    );
    assert_eq!(
        find(&c, "nokey", "update"),
        &json!({"table": "nokey", "op": "update", "pk": {"rowid": 1},
                "old": {"rowid": 1, "b": "one"}, "new": {"b": "uno"}})
    );
    // The insert takes the rowid the delete freed: undone newest first, both come back right.
    let c = changes(3);
    assert_eq!(
        find(&c, "nokey", "delete"),
        &json!({"table": "nokey", "op": "delete", "pk": {"rowid": 2},
                "old": {"rowid": 2, "a": 2, "b": "two"}})
    );
    assert_eq!(
        find(&c, "nokey", "insert"),
        &json!({"table": "nokey", "op": "insert", "pk": {"rowid": 2},
                "new": {"rowid": 2, "a": 3, "b": {"base64": "AP8="}}})
    );
    let c = changes(4);
    assert_eq!(c.len(), 3);
    assert_eq!(
        find(&c, "pair", "update"),
        &json!({"table": "pair", "op": "update", "pk": {"x": "p", "y": 1},
                "old": {"x": "p", "y": 1, "z": "first"}, "new": {"z": "changed"}})
    );
    assert_eq!(
        find(&c, "pair", "insert")["new"],
        json!({"x": "q", "y": 1, "z": null})
    );

    // The new primary (b, in term 2) writes on; a takes its records as a replica would.
    b.set_gate(WriteGate::primary(Term(2))).unwrap();
    exec(
        &b,
        &["UPDATE k SET v = 'from the new primary' WHERE id = 2"],
    )
    .await;
    exec(&b, &["INSERT INTO nokey VALUES (9, 'nine')"]).await;
    let newer: Vec<_> = b.read_log(Lsn(5)).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(newer.len(), 2);
    assert!(newer.iter().all(|r| r.term == Term(2)));
    a.apply(newer).await.unwrap();
    assert_eq!(dump(&a).await, dump(&b).await);
    let history = vec![(Term(1), Lsn(1)), (Term(2), Lsn(5))];
    assert_eq!(a.term_history(), history);
    assert_eq!(b.term_history(), history);

    // All of it survives a restart.
    let want = a.progress();
    a.shutdown().await;
    drop(a);
    let (a, report) = Engine::open(EngineOptions::new(a_dir.path())).unwrap();
    assert_eq!(report.replayed, 0);
    assert_eq!(a.progress(), want);
    assert_eq!(a.term_history(), history);
    assert_eq!(dump(&a).await, dump(&b).await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_in_the_tail_refuses_the_rewind_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let to = prefix_and_tail(&a).await;
    exec(&a, &["ALTER TABLE k ADD COLUMN extra"]).await;
    exec(&a, &["UPDATE k SET extra = 1"]).await;
    a.set_gate(WriteGate::closed("rejoining")).unwrap();
    let (before, progress) = (dump(&a).await, a.progress());
    let err = a
        .rewind(to, out.path().join("rollback.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NeedSnapshot(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("ALTER TABLE k ADD COLUMN extra") && msg.contains("1/10"),
        "{msg}"
    );
    assert_eq!(dump(&a).await, before);
    assert_eq!(a.progress(), progress);
    assert_eq!(lsns(&a), (1..=11).collect::<Vec<_>>());
    assert!(rollback_files(out.path()).is_empty());
    assert!(!Marker::path(dir.path()).exists());
    // After the schema change, a rewind that does not reach it is fine.
    exec_closed_tail(&a).await;
    a.shutdown().await;
}

/// Undoing only records after the DDL works.
async fn exec_closed_tail(a: &Engine) {
    let at = a.progress().last;
    let out = tempfile::tempdir().unwrap();
    a.set_gate(WriteGate::primary(at.term)).unwrap();
    exec(a, &["UPDATE k SET extra = 2"]).await;
    a.set_gate(WriteGate::closed("rejoining")).unwrap();
    let before = a.progress().last;
    let r = a.rewind(at, out.path().join("r.json")).await.unwrap();
    assert_eq!(r.undone, 1);
    assert_eq!(a.progress().last, at);
    assert_ne!(before, at);
    let v = a
        .query(Statement::new("SELECT DISTINCT extra FROM k"))
        .await
        .unwrap()
        .rows
        .rows;
    assert_eq!(v, vec![vec![Value::Integer(1)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut opts = EngineOptions::new(dir.path());
    opts.log.segment_bytes = 4096;
    let a = Engine::open(opts).unwrap().0;
    let to = prefix_and_tail(&a).await;
    let file = out.path().join("rollback.json");
    // A primary does not undo its own records.
    let err = a.rewind(to, file.clone()).await.unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
    a.set_gate(WriteGate::closed("rejoining")).unwrap();
    // Past the end, or not in this node's history.
    let err = a
        .rewind(Position::new(Term(1), Lsn(99)), file.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
    let err = a
        .rewind(Position::new(Term(2), to.lsn), file.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
    assert!(
        err.to_string().contains("not part of this node's history"),
        "{err}"
    );
    // Nothing to undo.
    let end = a.progress().last;
    let r = a.rewind(end, file.clone()).await.unwrap();
    assert_eq!((r.undone, r.rows), (0, 0));
    // Records whose segments retention deleted cannot be undone.
    a.set_gate(WriteGate::primary(Term(1))).unwrap();
    for i in 0..200 {
        exec(
            &a,
            &[&format!(
                "INSERT INTO nokey VALUES ({i}, '{}')",
                "x".repeat(50)
            )],
        )
        .await;
    }
    a.set_gate(WriteGate::closed("rejoining")).unwrap();
    let last = a.progress().last;
    let deleted = a
        .retain(Retention {
            keep_from: last.lsn,
            max_bytes: u64::MAX,
            pinned_from: None,
        })
        .await
        .unwrap();
    assert!(deleted > 0);
    let before = dump(&a).await;
    let err = a.rewind(to, file.clone()).await.unwrap_err();
    assert!(matches!(err, EngineError::NeedSnapshot(_)), "{err:?}");
    assert!(err.to_string().contains("no longer holds"), "{err}");
    assert_eq!(dump(&a).await, before);
    assert_eq!(a.progress().last, last);
    assert!(rollback_files(out.path()).is_empty());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverse_that_does_not_apply_cleanly_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let to = prefix_and_tail(&a).await;
    let end = a.progress().last;
    a.shutdown().await;
    drop(a);
    // Someone changed the database behind Scribe's back.
    let db = rusqlite::Connection::open(scribe_sqlite::db_path(dir.path())).unwrap();
    db.execute("UPDATE k SET v = 'tampered' WHERE id = 1", [])
        .unwrap();
    drop(db);
    let a = open_closed(dir.path());
    let before = dump(&a).await;
    let err = a
        .rewind(to, out.path().join("rollback.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Diverged(_)), "{err:?}");
    assert_eq!(dump(&a).await, before);
    assert_eq!(a.progress().last, end);
    assert_eq!(lsns(&a).len() as u64, end.lsn.0);
    assert!(
        !Marker::path(dir.path()).exists(),
        "no retry at the next open"
    );
    a.shutdown().await;
    drop(a);
    let a = open(dir.path());
    assert_eq!(a.progress().last, end);
    a.shutdown().await;
}

/// Copies a directory's files (one level deep, the log directory).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_is_finished_at_the_next_open() {
    let base = tempfile::tempdir().unwrap();
    let prefix_dir = tempfile::tempdir().unwrap();
    let dir = base.path().join("node");
    let a = open(&dir);
    let to = prefix_and_tail(&a).await;
    let end = a.progress().last;
    let b = copy_of_prefix(&a, prefix_dir.path(), to).await;
    let want = dump(&b).await;
    let full = dump(&a).await;
    a.shutdown().await;
    drop(a);
    let full_log = base.path().join("full-log");
    copy_dir(&dir.join("log"), &full_log);
    let full_db = base.path().join("full-db");
    copy_dir(&dir.join("db"), &full_db);

    let reopened_at_to = |dir: &Path| {
        let (e, report) = Engine::open(EngineOptions::new(dir)).unwrap();
        assert!(!Marker::path(dir).exists());
        assert_eq!(e.progress().last, to);
        assert_eq!(report.applied_before, to);
        assert_eq!(lsns(&e), vec![1, 2, 3, 4]);
        e
    };

    // 1. After the marker, before the SQLite transaction committed: everything is undone at
    //    open, from the log.
    Marker::write(&dir, to).unwrap();
    let a = reopened_at_to(&dir);
    assert_eq!(dump(&a).await, want);
    a.shutdown().await;
    drop(a);

    // 2. After the SQLite transaction, before the log was cut: the log is cut at open.
    let restore = |what: &str, from: &Path| {
        std::fs::remove_dir_all(dir.join(what)).unwrap();
        copy_dir(from, &dir.join(what));
    };
    restore("log", &full_log);
    restore("db", &full_db);
    let a = open_closed(&dir);
    assert_eq!(dump(&a).await, full);
    a.rewind(to, base.path().join("rollback.json"))
        .await
        .unwrap();
    a.shutdown().await;
    drop(a);
    restore("log", &full_log);
    Marker::write(&dir, to).unwrap();
    let a = reopened_at_to(&dir);
    assert_eq!(dump(&a).await, want);
    a.shutdown().await;
    drop(a);

    // 3. After the log was cut, before the marker went: nothing left to do but remove it.
    Marker::write(&dir, to).unwrap();
    let a = reopened_at_to(&dir);
    assert_eq!(dump(&a).await, want);
    // And the node goes on as a replica of the new primary's term.
    let records: Vec<_> = {
        b.set_gate(WriteGate::primary(Term(3))).unwrap();
        exec(&b, &["DELETE FROM k WHERE id = 3"]).await;
        b.read_log(Lsn(5)).unwrap().map(|r| r.unwrap()).collect()
    };
    a.set_gate(WriteGate::closed("replica")).unwrap();
    a.apply(records).await.unwrap();
    assert_eq!(dump(&a).await, dump(&b).await);
    assert_eq!(a.term_history(), vec![(Term(1), Lsn(1)), (Term(3), Lsn(5))]);
    assert_ne!(end, a.progress().last);
    a.shutdown().await;
    b.shutdown().await;
}
