//! Optimistic transactions against real files: concurrent increments of one hot row all commit
//! and add up (row locks make them wait, not fail); a commit whose client saw a value another
//! transaction has since changed fails with a serialization failure and keeps nothing; two
//! transactions that wait for each other get a deadlock error; a rollback to a savepoint drops
//! the statements after it from what is committed.

use std::path::Path;
use std::time::Duration;

use scribe_sqlite::{Engine, EngineError, EngineOptions, SavepointOp, Statement, Value};

fn open(dir: &Path) -> Engine {
    Engine::open(EngineOptions::new(dir)).unwrap().0
}

fn st(sql: &str) -> Statement {
    Statement::new(sql)
}

async fn one(e: &Engine, sql: &str) -> Value {
    e.query(st(sql)).await.unwrap().rows.rows[0][0].clone()
}

const WAIT: Duration = Duration::from_secs(10);

async fn setup(e: &Engine) {
    e.execute(vec![
        st("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)"),
        st("INSERT INTO acct VALUES (1, 0), (2, 0)"),
        st("CREATE TABLE hist (delta INTEGER)"),
    ])
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_of_a_hot_row_wait_for_each_other_and_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut tasks = Vec::new();
    // Every increment changes the row (an UPDATE that leaves a row as it was records no change,
    // so it takes no lock).
    for i in 1..=16i64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = e.begin_optimistic(WAIT);
            for _ in 0..5 {
                t.execute(Statement::with_params(
                    "UPDATE acct SET bal = bal + ?1 WHERE id = 1",
                    vec![Value::Integer(i)],
                ))
                .await?;
                // A read of the row it changed: stable, since the row is locked.
                t.execute(st("SELECT bal FROM acct WHERE id = 1")).await?;
                t.execute(Statement::with_params(
                    "INSERT INTO hist VALUES (?1)",
                    vec![Value::Integer(i)],
                ))
                .await?;
                tokio::task::yield_now().await;
            }
            t.commit().await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let want: i64 = (1..=16).sum::<i64>() * 5;
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 1").await,
        Value::Integer(want)
    );
    assert_eq!(
        one(&e, "SELECT sum(delta) FROM hist").await,
        Value::Integer(want)
    );
    e.shutdown().await;
    drop(e);
    // What was committed is in the log: rebuilt from it alone, the same.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let e = open(dir.path());
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 1").await,
        Value::Integer(want)
    );
    e.shutdown().await;
}

#[tokio::test]
async fn a_commit_whose_reads_changed_fails_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin_optimistic(WAIT);
    t.execute(st("UPDATE acct SET bal = 10 WHERE id = 1"))
        .await
        .unwrap();
    // After its first write the transaction reads row 2, which it does not lock.
    let r = t
        .execute(st("SELECT bal FROM acct WHERE id = 2"))
        .await
        .unwrap();
    assert_eq!(r.result.rows.unwrap()[0][0], Value::Integer(0));
    e.execute(vec![st("UPDATE acct SET bal = 99 WHERE id = 2")])
        .await
        .unwrap();
    let err = t.commit().await.unwrap_err();
    assert!(
        matches!(err, EngineError::SerializationFailure(_)),
        "{err:?}"
    );
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 1").await,
        Value::Integer(0)
    );
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 2").await,
        Value::Integer(99)
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_waiting_for_each_other_get_a_deadlock_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut a = e.begin_optimistic(WAIT);
    let mut b = e.begin_optimistic(WAIT);
    a.execute(st("UPDATE acct SET bal = bal + 1 WHERE id = 1"))
        .await
        .unwrap();
    b.execute(st("UPDATE acct SET bal = bal + 1 WHERE id = 2"))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let r = a
            .execute(st("UPDATE acct SET bal = bal + 1 WHERE id = 2"))
            .await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = b
        .execute(st("UPDATE acct SET bal = bal + 1 WHERE id = 1"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Deadlock(_)), "{err:?}");
    b.rollback();
    let (a, r) = waiting.await.unwrap();
    r.unwrap();
    a.commit().await.unwrap();
    assert_eq!(
        one(&e, "SELECT sum(bal) FROM acct").await,
        Value::Integer(2)
    );
    e.shutdown().await;
}

#[tokio::test]
async fn a_rollback_to_a_savepoint_drops_what_followed_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let mut t = e.begin_optimistic(WAIT);
    t.execute(st("INSERT INTO hist VALUES (1)")).await.unwrap();
    t.savepoint(SavepointOp::Create, "s").unwrap();
    t.execute(st("INSERT INTO hist VALUES (2)")).await.unwrap();
    let r = t.execute(st("SELECT count(*) FROM hist")).await.unwrap();
    assert_eq!(r.result.rows.unwrap()[0][0], Value::Integer(2));
    t.savepoint(SavepointOp::RollbackTo, "s").unwrap();
    let r = t.execute(st("SELECT count(*) FROM hist")).await.unwrap();
    assert_eq!(r.result.rows.unwrap()[0][0], Value::Integer(1));
    t.commit().await.unwrap();
    assert_eq!(
        one(&e, "SELECT group_concat(delta) FROM hist").await,
        Value::Text("1".into())
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_idle_past_its_limit_loses_its_rows_to_a_waiter_and_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let idle = Duration::from_millis(300);
    // A takes row 1, then its client goes quiet.
    let mut a = e.begin_optimistic(idle);
    a.execute(st("UPDATE acct SET bal = 100 WHERE id = 1"))
        .await
        .unwrap();
    // B wants row 1: it waits only until A has been idle too long, then goes ahead.
    let mut b = e.begin_optimistic(Duration::from_secs(5));
    let started = std::time::Instant::now();
    b.execute(st("UPDATE acct SET bal = 7 WHERE id = 1"))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "B waited {waited:?}"
    );
    b.commit().await.unwrap();
    // A comes back: it is over, and nothing of it is kept.
    let err = a
        .execute(st("UPDATE acct SET bal = bal + 1 WHERE id = 2"))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TxnEnded(_)), "{err:?}");
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 1").await,
        Value::Integer(7)
    );
    // Idle past the limit with nobody waiting: its commit is refused too.
    let mut c = e.begin_optimistic(idle);
    c.execute(st("UPDATE acct SET bal = 55 WHERE id = 2"))
        .await
        .unwrap();
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    let err = c.commit().await.unwrap_err();
    assert!(matches!(err, EngineError::TxnEnded(_)), "{err:?}");
    assert_eq!(
        one(&e, "SELECT bal FROM acct WHERE id = 2").await,
        Value::Integer(0)
    );
    // Nor can it be moved onto the writer (a PostgreSQL block escalating) to commit there.
    let mut d = e.begin_optimistic(idle);
    d.execute(st("UPDATE acct SET bal = 66 WHERE id = 2"))
        .await
        .unwrap();
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    let err = d.into_history().unwrap_err();
    assert!(matches!(err, EngineError::TxnEnded(_)), "{err:?}");
    e.shutdown().await;
}
