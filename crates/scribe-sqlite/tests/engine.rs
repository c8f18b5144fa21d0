//! The engine against real files: transactions, change capture, replay from the log alone,
//! refusals, and group commit.

use std::path::Path;
use std::sync::atomic::Ordering;

use scribe_core::Lsn;
use scribe_sqlite::{Engine, EngineError, EngineOptions, Params, Statement, Value, WriteGate};

fn open(dir: &Path) -> Engine {
    Engine::open(EngineOptions::new(dir)).unwrap().0
}

fn st(sql: &str) -> Statement {
    Statement::new(sql)
}

async fn rows(e: &Engine, sql: &str) -> Vec<Vec<Value>> {
    e.query(st(sql)).await.unwrap().rows.rows
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[tokio::test]
async fn the_classic_example_commits_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = e
        .execute(vec![st(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        )])
        .await
        .unwrap();
    assert_eq!(c.position.lsn, Lsn(1));
    let c = e
        .execute(vec![st("INSERT INTO users (name) VALUES ('Alice')")])
        .await
        .unwrap();
    assert_eq!(c.position.lsn, Lsn(2));
    assert_eq!(c.results[0].rows_affected, 1);
    assert_eq!(c.results[0].last_insert_id, 1);
    let q = e.query(st("SELECT * FROM users")).await.unwrap();
    assert_eq!(q.rows.columns, vec!["id", "name"]);
    assert_eq!(q.rows.rows, vec![vec![Value::Integer(1), text("Alice")]]);
    assert_eq!(q.position.lsn, Lsn(2));
    assert_eq!(e.progress().applied.lsn, Lsn(2));
    e.shutdown().await;
}

#[tokio::test]
async fn a_database_rebuilt_from_the_log_alone_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![
        st("CREATE TABLE k (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)"),
        st("CREATE TABLE nokey (a, b)"),
        st("INSERT INTO k (v) VALUES ('one'), ('two')"),
        st("INSERT INTO nokey VALUES (1, x'00ff'), (2, NULL)"),
    ])
    .await
    .unwrap();
    e.execute(vec![
        st("ALTER TABLE k ADD COLUMN extra INTEGER DEFAULT 7"),
        st("UPDATE k SET extra = 9 WHERE id = 2"),
    ])
    .await
    .unwrap();
    e.execute(vec![
        st("DELETE FROM nokey WHERE a = 1"),
        st("CREATE INDEX k_v ON k (v)"),
        st("INSERT INTO k (v) VALUES ('three')"),
    ])
    .await
    .unwrap();
    e.execute(vec![st("CREATE TABLE copy AS SELECT * FROM k")])
        .await
        .unwrap();
    let dump = |e: Engine| async move {
        let mut out = vec![];
        for t in ["k", "nokey", "copy"] {
            out.push(rows(&e, &format!("SELECT rowid, * FROM {t} ORDER BY rowid")).await);
        }
        out.push(rows(&e, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '_scribe%' ORDER BY name").await);
        out
    };
    let before = dump(e.clone()).await;
    assert_eq!(before[2].len(), 3, "CREATE TABLE AS copies rows once");
    e.shutdown().await;
    drop(e);
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let (e, report) = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert_eq!(report.replayed, 4);
    assert_eq!(dump(e.clone()).await, before);
    e.shutdown().await;
}

#[tokio::test]
async fn a_failed_transaction_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![st(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    )])
    .await
    .unwrap();
    let before = e.progress();
    let err = e
        .execute(vec![
            st("INSERT INTO t VALUES (1, 'a')"),
            st("INSERT INTO t VALUES (2, 'b')"),
            st("INSERT INTO t VALUES (3, NULL)"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Constraint(_)), "{err}");
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    let err = e
        .execute(vec![st("INSERT INTO t VALUES (4, 'd')"), st("SELEC 1")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Sql(ref m) if m.contains("syntax error")),
        "{err}"
    );
    assert_eq!(e.progress(), before);
    assert!(rows(&e, "SELECT * FROM t").await.is_empty());
    e.execute(vec![st("INSERT INTO t VALUES (1, 'a')")])
        .await
        .unwrap();
    assert_eq!(e.progress().last.lsn, Lsn(before.last.lsn.0 + 1));
    e.shutdown().await;
    drop(e);
    // Nothing of the failures reached the log either: a rebuild holds only the good row.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let e = open(dir.path());
    assert_eq!(
        rows(&e, "SELECT id FROM t").await,
        vec![vec![Value::Integer(1)]]
    );
    e.shutdown().await;
}

#[tokio::test]
async fn forbidden_statements_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    for (sql, needle) in [
        ("BEGIN", "transaction control"),
        ("COMMIT", "transaction control"),
        ("SAVEPOINT x", "SAVEPOINT"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA"),
        (
            "UPDATE _scribe_meta SET applied_lsn = 0",
            "belongs to Scribe",
        ),
        ("CREATE TEMP TABLE tt (x)", "temporary"),
        ("", "empty statement"),
        ("SELECT 1; SELECT 2", "one statement per entry"),
        ("/*scribe-internal*/ COMMIT", "internal marker"),
    ] {
        let err = e.execute(vec![st(sql)]).await.unwrap_err();
        assert!(matches!(err, EngineError::BadRequest(_)), "{sql}: {err:?}");
        assert!(err.to_string().contains(needle), "{sql}: {err}");
    }
    assert_eq!(e.progress().last.lsn, Lsn(0));
    let err = e.query(st("CREATE TABLE q (x)")).await.unwrap_err();
    assert!(matches!(err, EngineError::NotReadOnly(_)), "{err:?}");
    let err = e.query(st("BEGIN")).await.unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
    // Reading pragmas is fine on the read side.
    e.execute(vec![st(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
    )])
    .await
    .unwrap();
    assert_eq!(rows(&e, "PRAGMA table_info(users)").await.len(), 2);
    e.shutdown().await;
}

#[tokio::test]
async fn parameters_bind_by_position_and_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![st("CREATE TABLE p (a, b, c)")])
        .await
        .unwrap();
    e.execute(vec![
        Statement::with_params(
            "INSERT INTO p VALUES (?, ?, ?)",
            vec![Value::Integer(1), text("x"), Value::Blob(vec![1, 2])],
        ),
        Statement::with_params(
            "INSERT INTO p VALUES (?2, ?1, ?2)",
            vec![Value::Real(2.5), Value::Null],
        ),
        Statement {
            sql: "INSERT INTO p VALUES (:a, :b, @c)".into(),
            params: Params::Named(vec![
                (":a".into(), Value::Integer(3)),
                ("b".into(), text("y")),
                ("@c".into(), Value::Null),
            ]),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        rows(&e, "SELECT * FROM p ORDER BY rowid").await,
        vec![
            vec![Value::Integer(1), text("x"), Value::Blob(vec![1, 2])],
            vec![Value::Null, Value::Real(2.5), Value::Null],
            vec![Value::Integer(3), text("y"), Value::Null],
        ]
    );
    for (stmt, needle) in [
        (
            Statement::with_params("INSERT INTO p VALUES (?, ?, ?)", vec![Value::Integer(1)]),
            "takes 3 parameters but 1",
        ),
        (
            Statement::new("INSERT INTO p VALUES (?, ?, ?)"),
            "none were given",
        ),
        (
            Statement {
                sql: "INSERT INTO p VALUES (:a, 1, 1)".into(),
                params: Params::Named(vec![(":zz".into(), Value::Null)]),
            },
            "no parameter named :zz",
        ),
        (
            Statement {
                sql: "INSERT INTO p VALUES (:a, :b, 1)".into(),
                params: Params::Named(vec![(":a".into(), Value::Null)]),
            },
            "no value given for parameter :b",
        ),
    ] {
        let err = e.execute(vec![stmt]).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    e.shutdown().await;
}

#[tokio::test]
async fn returning_rows_come_back_from_execute() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![st("CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT)")])
        .await
        .unwrap();
    let c = e
        .execute(vec![st(
            "INSERT INTO r (v) VALUES ('a'), ('b') RETURNING id",
        )])
        .await
        .unwrap();
    assert_eq!(
        c.results[0].rows,
        Some(vec![vec![Value::Integer(1)], vec![Value::Integer(2)]])
    );
    assert_eq!(c.results[0].rows_affected, 2);
    // A transaction that changes nothing writes no record.
    let before = e.progress().last;
    let c = e
        .execute(vec![
            st("SELECT count(*) FROM r"),
            st("UPDATE r SET v = 'z' WHERE id = 99"),
        ])
        .await
        .unwrap();
    assert_eq!(c.results[0].rows, Some(vec![vec![Value::Integer(2)]]));
    assert_eq!(c.results[0].rows_affected, 0);
    assert_eq!(c.results[1].rows_affected, 0);
    assert_eq!(c.position, before);
    assert_eq!(e.progress().last, before);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![st(
        "CREATE TABLE g (id INTEGER PRIMARY KEY, c INTEGER)",
    )])
    .await
    .unwrap();
    let mut tasks = vec![];
    for c in 0..32 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                e.execute(vec![Statement::with_params(
                    "INSERT INTO g (c) VALUES (?)",
                    vec![Value::Integer(c)],
                )])
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        rows(&e, "SELECT count(*) FROM g").await,
        vec![vec![Value::Integer(1600)]]
    );
    let m = e.metrics();
    let commits = m.commits.load(Ordering::Relaxed);
    let batches = m.batches.load(Ordering::Relaxed);
    assert_eq!(commits, 1601);
    assert!(
        batches < commits / 2,
        "{commits} commits in {batches} batches: no group commit"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_fed_the_primarys_records_ends_identical_and_refuses_stale_ones() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    a.execute(vec![
        st("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT)"),
        st("CREATE TABLE h (x, y)"),
    ])
    .await
    .unwrap();
    for i in 0..20 {
        a.execute(vec![
            Statement::with_params("INSERT INTO k (v) VALUES (?)", vec![text(&format!("v{i}"))]),
            Statement::with_params(
                "INSERT INTO h VALUES (?, ?)",
                vec![Value::Integer(i), Value::Null],
            ),
        ])
        .await
        .unwrap();
    }
    a.execute(vec![
        st("UPDATE k SET v = 'changed' WHERE id % 3 = 0"),
        st("DELETE FROM h WHERE x > 15"),
    ])
    .await
    .unwrap();
    let records: Vec<_> = a.read_log(Lsn(1)).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 22);
    // Fed in two chunks, as a stream would.
    let (first, second) = records.split_at(10);
    b.set_gate(WriteGate::closed("a replica")).unwrap();
    b.apply(first.to_vec()).await.unwrap();
    // A gap is refused and nothing of it kept.
    let err = b.apply(second[1..].to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    let p = b.apply(second.to_vec()).await.unwrap();
    assert_eq!(p.applied, a.progress().applied);
    assert_eq!(p.flushed, a.progress().flushed);
    for t in ["k", "h"] {
        let sql = format!("SELECT rowid, * FROM {t} ORDER BY rowid");
        assert_eq!(rows(&a, &sql).await, rows(&b, &sql).await, "table {t}");
    }
    // Fencing: a record of an older term than the copy's newest is refused.
    let mut stale = records.last().unwrap().clone();
    stale.lsn = Lsn(23);
    stale.term = scribe_core::Term(0);
    let err = b.apply(vec![stale]).await.unwrap_err();
    assert!(err.to_string().contains("stale term"), "{err}");
    assert_eq!(b.progress().applied.lsn, Lsn(22));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_elsewhere_continues_with_the_next_records_and_survives_restart() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    // b has data of its own that the snapshot replaces.
    b.execute(vec![st("CREATE TABLE mine (z)")]).await.unwrap();
    a.execute(vec![st("CREATE TABLE k (id INTEGER PRIMARY KEY, v TEXT)")])
        .await
        .unwrap();
    for i in 0..30 {
        a.execute(vec![Statement::with_params(
            "INSERT INTO k (v) VALUES (?)",
            vec![text(&format!("v{i}"))],
        )])
        .await
        .unwrap();
    }
    let snap = a_dir.path().join("snap.db");
    let at = a.snapshot(snap.clone()).await.unwrap();
    assert_eq!(at, a.progress().applied);
    // Writes after the snapshot reach b through the log.
    a.execute(vec![st("UPDATE k SET v = 'late' WHERE id > 25")])
        .await
        .unwrap();
    b.set_gate(WriteGate::closed("a replica")).unwrap();
    let installed = b.install_snapshot(snap).await.unwrap();
    assert_eq!(installed, at);
    assert_eq!(b.progress().applied, at);
    assert_eq!(b.log_first_lsn(), at.lsn.next());
    let tail: Vec<_> = a
        .read_log(at.lsn.next())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tail.len(), 1);
    b.apply(tail).await.unwrap();
    let sql = "SELECT id, v FROM k ORDER BY id";
    assert_eq!(rows(&a, sql).await, rows(&b, sql).await);
    assert!(
        rows(&b, "SELECT name FROM sqlite_master WHERE name = 'mine'")
            .await
            .is_empty()
    );
    // After a restart b knows where it is, term included.
    let want = b.progress();
    b.shutdown().await;
    let b = open(b_dir.path());
    assert_eq!(b.progress(), want);
    assert_eq!(rows(&a, sql).await, rows(&b, sql).await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_is_needed_and_trims_to_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = EngineOptions::new(dir.path());
    opts.log.segment_bytes = 8192;
    let e = Engine::open(opts).unwrap().0;
    e.execute(vec![st("CREATE TABLE t (pad)")]).await.unwrap();
    for _ in 0..100 {
        e.execute(vec![st("INSERT INTO t VALUES (randomblob(1000))")])
            .await
            .unwrap();
    }
    let size = || e.metrics().log_size_bytes.load(Ordering::Relaxed);
    let before = size();
    assert!(before > 100_000, "{before}");
    // A replica still needs lsn 1, and the limit is generous: nothing goes.
    let r = scribe_sqlite::Retention {
        keep_from: Lsn(1),
        max_bytes: 1 << 30,
        pinned_from: None,
    };
    assert_eq!(e.retain(r).await.unwrap(), 0);
    // Everyone is past lsn 50: the segments wholly before it go.
    let n = e
        .retain(scribe_sqlite::Retention {
            keep_from: Lsn(50),
            max_bytes: 1 << 30,
            pinned_from: None,
        })
        .await
        .unwrap();
    assert!(n > 0);
    assert!(e.log_first_lsn() <= Lsn(50) && e.log_first_lsn() > Lsn(1));
    e.read_log(Lsn(50)).unwrap().for_each(|r| {
        r.unwrap();
    });
    // A replica being seeded pins what it will stream from, whatever the size.
    e.retain(scribe_sqlite::Retention {
        keep_from: Lsn(1),
        max_bytes: 8192,
        pinned_from: Some(Lsn(60)),
    })
    .await
    .unwrap();
    assert!(e.log_first_lsn() <= Lsn(60));
    e.read_log(Lsn(60)).unwrap().for_each(|r| {
        r.unwrap();
    });
    // Otherwise the size limit wins over a replica that is far behind.
    e.retain(scribe_sqlite::Retention {
        keep_from: Lsn(1),
        max_bytes: 20_000,
        pinned_from: None,
    })
    .await
    .unwrap();
    assert!(size() <= 20_000 + 8192 + 2048, "{}", size());
    let first = e.log_first_lsn();
    assert!(first > Lsn(50));
    // Recovery after a restart replays nothing and reads from the first kept record.
    e.shutdown().await;
    let (e, report) = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert_eq!(report.replayed, 0);
    assert_eq!(e.log_first_lsn(), first);
    assert_eq!(
        rows(&e, "SELECT count(*) FROM t").await,
        vec![vec![Value::Integer(100)]]
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_applied_as_one_batch_give_the_same_rows_as_one_by_one() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    let txns: &[&[&str]] = &[
        &[
            "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INTEGER)",
            "CREATE TABLE r (x, y)",
        ],
        &[
            "INSERT INTO u VALUES (1, 'a@x', 0), (2, 'b@x', 0)",
            "INSERT INTO r VALUES (1, 1), (2, 2)",
        ],
        // A unique value moves from one row to another across transactions.
        &["UPDATE u SET email = 'tmp@x' WHERE id = 1"],
        &["UPDATE u SET email = 'a@x' WHERE id = 2"],
        &["UPDATE u SET email = 'b@x' WHERE id = 1"],
        // Inserted, then deleted; deleted, then inserted again with the same key.
        &["INSERT INTO u VALUES (3, 'c@x', 0)"],
        &["DELETE FROM u WHERE id = 3"],
        &["DELETE FROM u WHERE id = 2"],
        &["INSERT INTO u VALUES (2, 'again@x', 5)"],
        // An update chain on one row, and rowid-table churn.
        &["UPDATE u SET n = n + 1 WHERE id = 1"],
        &["UPDATE u SET n = n + 1 WHERE id = 1"],
        &["DELETE FROM r WHERE x = 1", "INSERT INTO r VALUES (3, 3)"],
        &["UPDATE r SET y = y * 10"],
        // A schema change in the middle of the run, then rows with the new column.
        &["ALTER TABLE u ADD COLUMN note TEXT"],
        &["UPDATE u SET note = 'late' WHERE id = 2"],
        &["INSERT INTO u VALUES (4, 'd@x', 1, 'new')"],
    ];
    for t in txns {
        a.execute(t.iter().map(|s| st(s)).collect()).await.unwrap();
    }
    let records: Vec<_> = a.read_log(Lsn(1)).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), txns.len());
    b.set_gate(WriteGate::closed("a replica")).unwrap();
    b.apply(records).await.unwrap();
    for t in ["u", "r"] {
        let sql = format!("SELECT rowid, * FROM {t} ORDER BY rowid");
        assert_eq!(rows(&a, &sql).await, rows(&b, &sql).await, "table {t}");
    }
    // And the same through start-up replay of the log alone.
    let want = rows(&a, "SELECT * FROM u ORDER BY id").await;
    a.shutdown().await;
    std::fs::remove_dir_all(a_dir.path().join("db")).unwrap();
    let a = open(a_dir.path());
    assert_eq!(rows(&a, "SELECT * FROM u ORDER BY id").await, want);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_delete_without_where_is_captured_row_by_row() {
    // SQLite compiles `DELETE FROM t` as one "clear the table" step that change capture cannot
    // see; the record must still hold every deleted row, or replicas keep them.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.execute(vec![
        st("CREATE TABLE nokey (a, b)"),
        st("CREATE TABLE keyed (id INTEGER PRIMARY KEY, v)"),
    ])
    .await
    .unwrap();
    for round in 0..3 {
        e.execute(vec![
            st("INSERT INTO nokey VALUES (1, 'x'), (2, 'y')"),
            st("INSERT INTO keyed (v) VALUES ('x'), ('y')"),
        ])
        .await
        .unwrap();
        let c = e
            .execute(vec![st("DELETE FROM nokey"), st("DELETE FROM keyed")])
            .await
            .unwrap();
        assert_eq!(c.results[0].rows_affected, 2, "round {round}");
        assert_eq!(c.results[1].rows_affected, 2, "round {round}");
    }
    e.execute(vec![st("INSERT INTO nokey VALUES (3, 'z')")])
        .await
        .unwrap();
    e.shutdown().await;
    drop(e);
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let e = open(dir.path());
    assert_eq!(
        rows(&e, "SELECT rowid, a, b FROM nokey").await,
        vec![vec![Value::Integer(1), Value::Integer(3), text("z")]]
    );
    assert_eq!(
        rows(&e, "SELECT count(*) FROM keyed").await,
        vec![vec![Value::Integer(0)]]
    );
    // Dropping a table still drops it (its schema rows are SQLite's own deletes).
    e.execute(vec![st("DROP TABLE keyed")]).await.unwrap();
    e.execute(vec![st("DROP TABLE IF EXISTS nokey")])
        .await
        .unwrap();
    assert_eq!(
        rows(
            &e,
            "SELECT count(*) FROM sqlite_master WHERE name IN ('keyed', 'nokey')"
        )
        .await,
        vec![vec![Value::Integer(0)]]
    );
    e.execute(vec![st("CREATE TABLE keyed (id INTEGER PRIMARY KEY)")])
        .await
        .unwrap();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_caller_stops_waiting_is_interrupted_and_its_connection_comes_back() {
    // One read connection: losing it would leave the pool empty (a panic or a hang next time).
    let dir = tempfile::tempdir().unwrap();
    let mut opts = EngineOptions::new(dir.path());
    opts.readers = 1;
    let e = Engine::open(opts).unwrap().0;
    let long = st("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000000) SELECT count(*) FROM c");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(std::time::Duration::from_millis(200), e.query(long.clone()))
            .await;
        assert!(r.is_err(), "the long read should still be running");
        // The next read gets the connection back promptly: the long one was interrupted.
        let q = tokio::time::timeout(std::time::Duration::from_secs(10), e.query(st("SELECT 1")))
            .await
            .expect("the connection came back")
            .unwrap();
        assert_eq!(q.rows.rows, vec![vec![Value::Integer(1)]]);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    e.shutdown().await;
}
