//! Interactive transactions against real files: commit, rollback, a failing statement, a handle
//! dropped mid-transaction (a client that disconnected), the idle limit, writes queued behind one,
//! and replay of committed interactive transactions from the log alone.

use std::path::Path;
use std::time::Duration;

use scribe_sqlite::{Engine, EngineError, EngineOptions, Statement, Value};

fn open(dir: &Path) -> Engine {
    Engine::open(EngineOptions::new(dir)).unwrap().0
}

fn st(sql: &str) -> Statement {
    Statement::new(sql)
}

async fn count(e: &Engine, sql: &str) -> i64 {
    match &e.query(st(sql)).await.unwrap().rows.rows[0][0] {
        Value::Integer(n) => *n,
        other => panic!("not a count: {other:?}"),
    }
}

const IDLE: Duration = Duration::from_secs(10);

async fn setup(e: &Engine) {
    e.execute(vec![st("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_committed_transaction_sees_its_own_writes_and_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin(IDLE).await.unwrap();
    let r = t
        .execute(st("INSERT INTO t (v) VALUES ('a'), ('b')"))
        .await
        .unwrap();
    assert_eq!(r.rows_affected, 2);
    let r = t.execute(st("SELECT count(*) FROM t")).await.unwrap();
    assert_eq!(r.rows.unwrap()[0][0], Value::Integer(2));
    // Not visible outside before commit.
    assert_eq!(count(&e, "SELECT count(*) FROM t").await, 0);
    t.execute(st("UPDATE t SET v = 'c' WHERE id = 1"))
        .await
        .unwrap();
    let c = t.commit().await.unwrap();
    assert!(c.logged);
    assert_eq!(e.progress().applied, c.position);
    assert_eq!(
        count(&e, "SELECT count(*) FROM t WHERE v IN ('b', 'c')").await,
        2
    );
    e.shutdown().await;
    drop(e);
    // The log alone rebuilds it: remove SQLite's files and replay.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let e = open(dir.path());
    assert_eq!(
        count(&e, "SELECT count(*) FROM t WHERE v IN ('b', 'c')").await,
        2
    );
    e.shutdown().await;
}

#[tokio::test]
async fn rollback_a_failing_statement_and_a_dropped_handle_keep_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let before = e.progress();

    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("INSERT INTO t (v) VALUES ('x')"))
        .await
        .unwrap();
    t.rollback().await;

    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("INSERT INTO t (id, v) VALUES (7, 'y')"))
        .await
        .unwrap();
    let err = t
        .execute(st("INSERT INTO t (id, v) VALUES (7, 'dup')"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Constraint(_)), "{err:?}");
    // The failed statement left nothing; the transaction is still open and is rolled back.
    assert!(t.is_open());
    let r = t.execute(st("SELECT count(*) FROM t")).await.unwrap();
    assert_eq!(r.rows.unwrap()[0][0], Value::Integer(1));
    t.rollback().await;

    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("INSERT INTO t (v) VALUES ('z')"))
        .await
        .unwrap();
    drop(t);

    // The writer is free again and nothing above was kept.
    e.execute(vec![st("INSERT INTO t (v) VALUES ('after')")])
        .await
        .unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM t").await, 1);
    assert_eq!(e.progress().applied.lsn.0, before.applied.lsn.0 + 1);
    e.shutdown().await;
}

#[tokio::test]
async fn an_idle_transaction_is_rolled_back_and_frees_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin(Duration::from_millis(200)).await.unwrap();
    t.execute(st("INSERT INTO t (v) VALUES ('held')"))
        .await
        .unwrap();
    // A write queued behind the idle transaction goes through once it is rolled back.
    let started = std::time::Instant::now();
    e.execute(vec![st("INSERT INTO t (v) VALUES ('queued')")])
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    let err = t.commit().await.unwrap_err();
    assert!(matches!(err, EngineError::TxnEnded(_)), "{err:?}");
    assert_eq!(
        count(&e, "SELECT count(*) FROM t WHERE v = 'held'").await,
        0
    );
    assert_eq!(
        count(&e, "SELECT count(*) FROM t WHERE v = 'queued'").await,
        1
    );
    e.shutdown().await;
}

#[tokio::test]
async fn writes_queued_behind_a_transaction_commit_with_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("INSERT INTO t (id, v) VALUES (1, 'txn')"))
        .await
        .unwrap();
    let mut queued = Vec::new();
    for i in 0..20 {
        let e = e.clone();
        queued.push(tokio::spawn(async move {
            e.execute(vec![Statement::with_params(
                "INSERT INTO t (v) VALUES (?1)",
                vec![Value::Text(format!("q{i}"))],
            )])
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = t.commit().await.unwrap();
    for q in queued {
        let q = q.await.unwrap().unwrap();
        assert!(q.position.lsn > c.position.lsn);
    }
    assert_eq!(count(&e, "SELECT count(*) FROM t").await, 21);
    e.shutdown().await;
}

#[tokio::test]
async fn a_read_only_transaction_writes_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let at = e.progress();
    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("SELECT * FROM t")).await.unwrap();
    let c = t.commit().await.unwrap();
    assert!(!c.logged);
    assert_eq!(e.progress(), at);
    e.shutdown().await;
}

#[tokio::test]
async fn savepoints_drop_exactly_the_changes_after_them_in_the_record() {
    use scribe_sqlite::SavepointOp::*;
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin(IDLE).await.unwrap();
    t.execute(st("INSERT INTO t (id, v) VALUES (1, 'kept')"))
        .await
        .unwrap();
    t.savepoint(Create, "a").await.unwrap();
    t.execute(st("INSERT INTO t (id, v) VALUES (2, 'undone')"))
        .await
        .unwrap();
    t.execute(st("CREATE TABLE gone (x)")).await.unwrap();
    t.savepoint(RollbackTo, "a").await.unwrap();
    t.execute(st("INSERT INTO t (id, v) VALUES (3, 'after')"))
        .await
        .unwrap();
    t.savepoint(Create, "b").await.unwrap();
    t.execute(st("UPDATE t SET v = 'released' WHERE id = 3"))
        .await
        .unwrap();
    t.savepoint(Release, "b").await.unwrap();
    assert!(t.savepoint(RollbackTo, "b").await.is_err());
    t.commit().await.unwrap();
    let want = "SELECT group_concat(id || v, ',') FROM (SELECT * FROM t ORDER BY id)";
    let q = e.query(st(want)).await.unwrap().rows.rows;
    assert_eq!(q[0][0], Value::Text("1kept,3released".into()));
    e.shutdown().await;
    drop(e);
    // The record holds exactly that: replay from the log alone gives the same rows, no table gone.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let e = open(dir.path());
    let q = e.query(st(want)).await.unwrap().rows.rows;
    assert_eq!(q[0][0], Value::Text("1kept,3released".into()));
    assert!(e.query(st("SELECT * FROM gone")).await.is_err());
    e.shutdown().await;
}
