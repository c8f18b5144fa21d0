//! Bounded work in the engine: a runaway statement is stopped by its timeout or by the size of
//! its changes, its client leaving abandons it, and the writer goes on with everyone else's
//! transactions; nothing of a stopped transaction reaches the log or the database.

use std::path::Path;
use std::time::{Duration, Instant};

use scribe_core::Lsn;
use scribe_sqlite::{Engine, EngineError, EngineOptions, Limits, Statement, Value};

const RUNAWAY_INSERT: &str = "INSERT INTO t (v) SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c)";
const RUNAWAY_READ: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c";
const RUNAWAY_COUNT: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

fn open(dir: &Path, limits: Limits) -> Engine {
    let mut opts = EngineOptions::new(dir);
    opts.limits = limits;
    Engine::open(opts).unwrap().0
}

fn st(sql: &str) -> Statement {
    Statement::new(sql)
}

fn timeout(ms: u64) -> Limits {
    Limits::NONE.with_timeout(Some(Duration::from_millis(ms)))
}

async fn count(e: &Engine) -> i64 {
    match &e
        .query(st("SELECT count(*) FROM t"))
        .await
        .unwrap()
        .rows
        .rows[0][0]
    {
        Value::Integer(n) => *n,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_runaway_write_times_out_and_the_writes_queued_behind_it_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), timeout(500));
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    let before = e.progress().flushed;
    let runaway = {
        let e = e.clone();
        tokio::spawn(async move { e.execute(vec![st(RUNAWAY_INSERT)]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    for i in 0..8 {
        let e = e.clone();
        writers.push(tokio::spawn(async move {
            e.execute(vec![Statement::with_params(
                "INSERT INTO t (v) VALUES (?)",
                vec![Value::Integer(-i)],
            )])
            .await
            .map(|_| Instant::now())
        }));
    }
    let err = runaway.await.unwrap().unwrap_err();
    assert!(matches!(err, EngineError::Timeout(_)), "{err}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    for w in writers {
        let at = w.await.unwrap().expect("a normal write commits");
        assert!(
            at - started < Duration::from_millis(1500),
            "{:?}",
            at - started
        );
    }
    // Only the eight normal rows, and only their eight records after the table's.
    assert_eq!(count(&e).await, 8);
    let after = e.progress().flushed;
    assert!(after.lsn.0 - before.lsn.0 <= 8, "{before} → {after}");
    drop(e);
    // After a restart (replay from the log) still only those rows.
    let e = open(dir.path(), Limits::NONE);
    assert_eq!(count(&e).await, 8);
    assert!(e.progress().applied.lsn <= Lsn(before.lsn.0 + 8));
}

#[tokio::test]
async fn a_transaction_whose_changes_outgrow_the_limit_is_rolled_back_early() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        Limits {
            max_txn_bytes: Some(4 << 20),
            ..Limits::NONE
        },
    );
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    let started = Instant::now();
    let err = e.execute(vec![st(RUNAWAY_INSERT)]).await.unwrap_err();
    assert!(matches!(err, EngineError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("--max-txn-bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(count(&e).await, 0);
    // Many statements each under the limit add up in one transaction.
    let mut statements = Vec::new();
    for _ in 0..8 {
        statements.push(st(
            "INSERT INTO t (v) SELECT randomblob(1000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1000) SELECT x FROM c)",
        ));
    }
    let err = e.execute(statements).await.unwrap_err();
    assert!(matches!(err, EngineError::TooLarge(_)), "{err}");
    assert_eq!(count(&e).await, 0);
    // A transaction under it commits.
    e.execute(vec![st("INSERT INTO t (v) VALUES (1)")])
        .await
        .unwrap();
    assert_eq!(count(&e).await, 1);
}

#[tokio::test]
async fn a_write_whose_client_leaves_is_abandoned_and_frees_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    // No timeout: only the client's leaving can stop it.
    let e = open(dir.path(), Limits::NONE);
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    let runaway = {
        let e = e.clone();
        tokio::spawn(async move { e.execute(vec![st(RUNAWAY_INSERT)]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    runaway.abort();
    let started = Instant::now();
    e.execute(vec![st("INSERT INTO t (v) VALUES (1)")])
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count(&e).await, 1);
}

#[tokio::test]
async fn a_runaway_statement_in_a_held_transaction_times_out_and_ends_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), timeout(300));
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    let mut txn = e.begin(Duration::from_secs(30)).await.unwrap();
    txn.execute(st("INSERT INTO t (v) VALUES (1)"))
        .await
        .unwrap();
    // Writes queued meanwhile wait for the transaction, then commit.
    let queued = {
        let e = e.clone();
        tokio::spawn(async move { e.execute(vec![st("INSERT INTO t (v) VALUES (10)")]).await })
    };
    let err = txn.execute(st(RUNAWAY_INSERT)).await.unwrap_err();
    assert!(matches!(err, EngineError::Timeout(_)), "{err}");
    // As in PostgreSQL, a statement timeout aborts the transaction: nothing of it is kept and
    // what follows is refused.
    let err = txn
        .execute(st("INSERT INTO t (v) VALUES (2)"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TxnEnded(_)), "{err}");
    queued.await.unwrap().unwrap();
    assert_eq!(count(&e).await, 1);
    // With a longer timeout for what follows (`SET statement_timeout`), the block commits.
    let mut txn = e.begin(Duration::from_secs(30)).await.unwrap();
    txn.set_limits(Limits::NONE);
    txn.execute(st("INSERT INTO t (v) SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 200000) SELECT x FROM c)")).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(count(&e).await, 200001);
    // Optimistic transactions too.
    let mut occ = e.begin_optimistic(Duration::from_secs(1));
    let err = occ.execute(st(RUNAWAY_INSERT)).await.unwrap_err();
    assert!(matches!(err, EngineError::Timeout(_)), "{err}");
    // The writer's speculative run goes on: the next statement works.
    occ.execute(st("INSERT INTO t (v) VALUES (3)"))
        .await
        .unwrap();
    occ.commit().await.unwrap();
    assert_eq!(count(&e).await, 200002);
}

#[tokio::test]
async fn runaway_reads_time_out_and_a_normal_read_is_served_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), timeout(700));
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    // Twice as many runaway reads as read connections (4).
    let mut runaways = Vec::new();
    for _ in 0..8 {
        let e = e.clone();
        runaways.push(tokio::spawn(
            async move { e.query(st(RUNAWAY_COUNT)).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(count(&e).await, 0);
    assert!(
        started.elapsed() < Duration::from_millis(1700),
        "{:?}",
        started.elapsed()
    );
    for r in runaways {
        let err = r.await.unwrap().unwrap_err();
        assert!(matches!(err, EngineError::Timeout(_)), "{err}");
    }
}

#[tokio::test]
async fn a_result_past_the_limit_is_refused_not_collected() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        Limits {
            max_result_bytes: Some(1 << 20),
            ..Limits::NONE
        },
    );
    let err = e.query(st(RUNAWAY_READ)).await.unwrap_err();
    assert!(matches!(err, EngineError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("--max-result-bytes"), "{err}");
    // A per-request limit overrides the default.
    let r = e
        .query_with(
            st("SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100000) SELECT x FROM c)"),
            Limits::NONE,
        )
        .await
        .unwrap();
    assert_eq!(r.rows.rows.len(), 100000);
}

#[tokio::test]
async fn the_results_of_a_requests_statements_count_together() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(
        dir.path(),
        Limits {
            max_result_bytes: Some(1 << 20),
            ..Limits::NONE
        },
    );
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    // Each statement's rows take ~0.4 MiB: one is under the limit, eight together are not.
    let half = "SELECT randomblob(400) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1000) SELECT x FROM c)";
    e.execute(vec![st(half)])
        .await
        .expect("one is under the limit");
    let mut statements = vec![st("INSERT INTO t (v) VALUES (1)")];
    statements.extend((0..8).map(|_| st(half)));
    let err = e.execute(statements).await.unwrap_err();
    assert!(matches!(err, EngineError::TooLarge(_)), "{err}");
    assert!(
        err.to_string().contains("all the statements of a request"),
        "{err}"
    );
    assert_eq!(count(&e).await, 0, "the transaction was rolled back");
}

#[tokio::test]
async fn a_runaway_in_the_middle_of_a_batch_leaves_the_batch_s_other_transactions_committed() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), timeout(300));
    e.execute(vec![st("CREATE TABLE t (v)")]).await.unwrap();
    // A held transaction keeps the writer while the batch queues behind it: its commit takes
    // everything queued into one batch — four writes, the runaway, four more.
    let mut txn = e.begin(Duration::from_secs(30)).await.unwrap();
    txn.execute(st("INSERT INTO t (v) VALUES (0)"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 1..=9 {
        let e = e.clone();
        let sql = if i == 5 {
            RUNAWAY_INSERT.to_string()
        } else {
            format!("INSERT INTO t (v) VALUES ({i})")
        };
        tasks.push(tokio::spawn(async move {
            e.execute(vec![Statement::new(sql)]).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = e.progress().flushed;
    txn.commit().await.unwrap();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i == 4 {
            assert!(matches!(r, Err(EngineError::Timeout(_))), "{:?}", r.err());
        } else {
            r.unwrap_or_else(|e| panic!("write {} failed: {e}", i + 1));
        }
    }
    let rows = e
        .query(st("SELECT v FROM t ORDER BY v"))
        .await
        .unwrap()
        .rows
        .rows;
    let want: Vec<Vec<Value>> = [0, 1, 2, 3, 4, 6, 7, 8, 9]
        .iter()
        .map(|v| vec![Value::Integer(*v)])
        .collect();
    assert_eq!(rows, want);
    assert_eq!(e.progress().flushed.lsn.0 - before.lsn.0, 9);
    // The log says the same after a restart.
    drop(e);
    let e = open(dir.path(), Limits::NONE);
    let again = e
        .query(st("SELECT v FROM t ORDER BY v"))
        .await
        .unwrap()
        .rows
        .rows;
    assert_eq!(again, want);
}
