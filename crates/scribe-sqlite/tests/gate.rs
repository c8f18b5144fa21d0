//! The write gate against real files and SQLite: a closed gate refuses every client write and
//! leaves the log alone, records carry the term the gate was opened in, older terms are refused,
//! a lease that runs out (before a batch or in the middle of one) refuses writes, a gate closed
//! under many concurrent writers is a clean cut, a held transaction's commit is refused after the
//! gate closed, and records from elsewhere are refused while the gate is open.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scribe_core::{Lsn, Position, Term};
use scribe_sqlite::{Engine, EngineError, EngineOptions, Statement, Value, WriteGate};

fn open(dir: &Path) -> Engine {
    Engine::open(EngineOptions::new(dir)).unwrap().0
}

fn open_with(dir: &Path, gate: WriteGate) -> Engine {
    let mut opts = EngineOptions::new(dir);
    opts.gate = gate;
    Engine::open(opts).unwrap().0
}

fn st(sql: &str) -> Statement {
    Statement::new(sql)
}

fn insert(id: i64) -> Statement {
    Statement::with_params("INSERT INTO t (id) VALUES (?)", vec![Value::Integer(id)])
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
        other => panic!("not a count: {other:?}"),
    }
}

async fn ids(e: &Engine) -> BTreeSet<i64> {
    e.query(st("SELECT id FROM t"))
        .await
        .unwrap()
        .rows
        .rows
        .into_iter()
        .map(|r| match r[0] {
            Value::Integer(n) => n,
            ref other => panic!("not an id: {other:?}"),
        })
        .collect()
}

/// `(term, lsn)` of every durable record in the log.
fn log_positions(e: &Engine) -> Vec<Position> {
    e.read_log(Lsn(1))
        .unwrap()
        .map(|r| r.unwrap().position())
        .collect()
}

async fn setup(e: &Engine) {
    e.execute(vec![st("CREATE TABLE t (id INTEGER PRIMARY KEY)")])
        .await
        .unwrap();
}

fn refusals(e: &Engine) -> u64 {
    e.metrics().gate_refusals.load(Ordering::Relaxed)
}

#[track_caller]
fn assert_not_primary<T: std::fmt::Debug>(r: Result<T, EngineError>, why: &str) {
    match r {
        Err(EngineError::NotPrimary(m)) => assert!(m.contains(why), "{m}"),
        other => panic!("expected NotPrimary ({why}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_gate_refuses_every_client_write_and_nothing_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let before = e.progress();
    let log_before = log_positions(&e);
    e.set_gate(WriteGate::closed("this node is a replica of b"))
        .unwrap();
    assert_eq!(e.gate(), WriteGate::closed("this node is a replica of b"));

    assert_not_primary(
        e.execute(vec![insert(1)]).await,
        "this node is a replica of b",
    );
    assert_not_primary(
        e.begin(Duration::from_secs(10)).await.map(|_| ()),
        "replica of b",
    );
    let mut o = e.begin_optimistic(Duration::from_secs(1));
    assert_not_primary(o.execute(insert(2)).await, "replica of b");
    assert_eq!(refusals(&e), 3);

    // Reads go on; nothing was written.
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), before);
    assert_eq!(log_positions(&e), log_before);

    // Opened again, the same writes go through.
    e.set_gate(WriteGate::primary(Term::FIRST)).unwrap();
    e.execute(vec![insert(1)]).await.unwrap();
    assert_eq!(count(&e).await, 1);
    e.shutdown().await;
}

#[tokio::test]
async fn records_carry_the_term_the_gate_was_opened_in_and_older_terms_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    e.execute(vec![insert(1)]).await.unwrap();
    // A new term reaches the writer as a message, before any record of it.
    e.set_gate(WriteGate::closed("switchover")).unwrap();
    e.set_gate(WriteGate::primary(Term(3))).unwrap();
    let c = e.execute(vec![insert(2)]).await.unwrap();
    assert_eq!(c.position, Position::new(Term(3), Lsn(3)));
    // Going back to an older term is refused and changes nothing.
    let err = e.set_gate(WriteGate::primary(Term(2))).unwrap_err();
    assert!(matches!(err, EngineError::NotPrimary(_)), "{err}");
    assert_eq!(e.gate(), WriteGate::primary(Term(3)));
    let c = e.execute(vec![insert(3)]).await.unwrap();
    assert_eq!(c.position, Position::new(Term(3), Lsn(4)));
    // Records keep the term that wrote them.
    let terms: Vec<Term> = log_positions(&e).iter().map(|p| p.term).collect();
    assert_eq!(terms, vec![Term(1), Term(1), Term(3), Term(3)]);
    e.shutdown().await;

    // After a restart the floor comes from the log: closed at open, term 2 is still refused.
    let e = open_with(dir.path(), WriteGate::closed("starting"));
    let err = e.set_gate(WriteGate::primary(Term(2))).unwrap_err();
    assert!(err.to_string().contains("already knows term 3"), "{err}");
    assert_eq!(e.gate(), WriteGate::closed("starting"));
    assert_not_primary(e.execute(vec![insert(4)]).await, "starting");
    e.set_gate(WriteGate::primary(Term(4))).unwrap();
    let c = e.execute(vec![insert(4)]).await.unwrap();
    assert_eq!(c.position, Position::new(Term(4), Lsn(5)));
    e.shutdown().await;

    // A node primary by configuration (the default gate) goes on in its log's newest term.
    let e = open(dir.path());
    assert_eq!(e.gate(), WriteGate::primary(Term(4)));
    let c = e.execute(vec![insert(5)]).await.unwrap();
    assert_eq!(c.position, Position::new(Term(4), Lsn(6)));
    e.shutdown().await;
}

#[tokio::test]
async fn a_lease_that_ran_out_refuses_writes_until_it_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let until = Instant::now() + Duration::from_millis(300);
    e.set_gate(WriteGate::leased(Term::FIRST, until)).unwrap();
    e.execute(vec![insert(1)]).await.unwrap();
    tokio::time::sleep_until(until.into()).await;
    let at = e.progress();
    assert_not_primary(e.execute(vec![insert(2)]).await, "lease of term 1 ran out");
    assert_not_primary(
        e.begin(Duration::from_secs(10)).await.map(|_| ()),
        "ran out",
    );
    assert_eq!(e.progress(), at);
    assert_eq!(count(&e).await, 1);
    // Renewed, writes go on in the same term.
    e.set_gate(WriteGate::leased(
        Term::FIRST,
        Instant::now() + Duration::from_secs(60),
    ))
    .unwrap();
    let c = e.execute(vec![insert(2)]).await.unwrap();
    assert_eq!(c.position, Position::new(Term::FIRST, Lsn(3)));
    e.shutdown().await;
}

/// A statement that inserts one row after counting `n` rows of a recursive CTE: slow on purpose.
fn slow(n: u64) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
         SELECT count(*) FROM c"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_during_a_batch_rolls_the_whole_batch_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    // How many rows make the statement take a good while here.
    let mut n = 100_000u64;
    let took = loop {
        let started = Instant::now();
        e.query(st(&slow(n))).await.unwrap();
        let took = started.elapsed();
        if took >= Duration::from_millis(300) {
            break took;
        }
        n *= 2;
    };
    let at = e.progress();
    let errors = e.metrics().txn_errors.load(Ordering::Relaxed);
    // The lease runs out well after the batch starts and well before it can be made durable.
    e.set_gate(WriteGate::leased(Term::FIRST, Instant::now() + took / 4))
        .unwrap();
    let r = e
        .execute(vec![
            insert(1),
            st(&format!("INSERT INTO t (id) {}", slow(n))),
        ])
        .await;
    assert_not_primary(r, "lease of term 1 ran out");
    // It was taken up and run, then refused at the last check (which counts a failed
    // transaction; a refusal up front does not).
    assert_eq!(e.metrics().txn_errors.load(Ordering::Relaxed), errors + 1);
    assert_eq!(refusals(&e), 1);
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), at);
    e.shutdown().await;
    let e = open(dir.path());
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), at);
    e.shutdown().await;
}

/// What one writer of the race was answered.
#[derive(Default)]
struct Answers {
    ok: Vec<i64>,
    refused: Vec<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_gate_under_concurrent_writers_is_a_clean_cut() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..12i64 {
        let e = e.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut answers = Answers::default();
            let mut id = w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let r = if w % 4 == 3 {
                    // Some go through interactive transactions.
                    match e.begin(Duration::from_secs(10)).await {
                        Ok(mut t) => match t.execute(insert(id)).await {
                            Ok(_) => t.commit().await,
                            Err(err) => Err(err),
                        },
                        Err(err) => Err(err),
                    }
                } else {
                    e.execute(vec![insert(id)]).await
                };
                match r {
                    Ok(c) => {
                        assert!(c.logged);
                        answers.ok.push(id);
                    }
                    Err(EngineError::NotPrimary(_)) => {
                        answers.refused.push(id);
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    Err(other) => panic!("writer {w}: {other}"),
                }
            }
            answers
        }));
    }
    // Rounds of open, write, close (from a blocking thread: closing may wait for one fsync).
    let mut at_close = Position::default();
    for _ in 0..25 {
        e.set_gate(WriteGate::primary(Term::FIRST)).unwrap();
        let from = e.progress().flushed.lsn;
        while e.progress().flushed.lsn < Lsn(from.0 + 30) {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let closer = {
            let e = e.clone();
            tokio::task::spawn_blocking(move || {
                e.set_gate(WriteGate::closed("closed for a switchover"))
                    .unwrap();
                e.progress().flushed
            })
        };
        at_close = closer.await.unwrap();
        // The writers go on knocking; the flushed position does not move.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(e.progress().flushed, at_close);
    }
    stop.store(true, Ordering::Relaxed);
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for w in writers {
        let a = w.await.unwrap();
        ok.extend(a.ok);
        refused.extend(a.refused);
    }
    assert_eq!(e.progress().flushed, at_close);
    assert_eq!(log_positions(&e).last().copied(), Some(at_close));
    assert!(ok.len() >= 25 * 30, "{} writes succeeded", ok.len());
    assert!(!refused.is_empty());
    e.shutdown().await;

    // Everything answered Ok is durable; nothing answered NotPrimary is there.
    let e = open(dir.path());
    let have = ids(&e).await;
    let want: BTreeSet<i64> = ok.iter().copied().collect();
    assert_eq!(have, want);
    assert!(refused.iter().all(|id| !have.contains(id)));
    assert_eq!(e.progress().flushed, at_close);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_closed_while_a_transaction_is_held_refuses_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    setup(&e).await;
    let at = e.progress();

    // An interactive transaction, holding the writer.
    let mut t = e.begin(Duration::from_secs(10)).await.unwrap();
    t.execute(insert(1)).await.unwrap();
    // An optimistic one, whose statement ran while the gate was open.
    let mut o = e.begin_optimistic(Duration::from_secs(1));
    let queued = {
        let e = e.clone();
        tokio::spawn(async move { e.execute(vec![insert(3)]).await })
    };
    e.set_gate(WriteGate::closed("closed for a switchover"))
        .unwrap();
    assert_not_primary(t.commit().await, "closed for a switchover");
    // A write queued behind the held transaction is refused too.
    assert_not_primary(queued.await.unwrap(), "closed for a switchover");
    assert_not_primary(o.execute(insert(2)).await, "switchover");
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), at);

    // An optimistic transaction whose statements ran before the close cannot commit after it.
    e.set_gate(WriteGate::primary(Term(2))).unwrap();
    let mut o = e.begin_optimistic(Duration::from_secs(1));
    o.execute(insert(4)).await.unwrap();
    e.set_gate(WriteGate::closed("closed for a switchover"))
        .unwrap();
    assert_not_primary(o.commit().await, "switchover");
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), at);
    e.shutdown().await;
    let e = open(dir.path());
    assert_eq!(count(&e).await, 0);
    assert_eq!(e.progress(), at);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_elsewhere_are_refused_while_the_gate_is_open() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    setup(&a).await;
    a.execute(vec![insert(1)]).await.unwrap();
    let records: Vec<_> = a.read_log(Lsn(1)).unwrap().map(|r| r.unwrap()).collect();
    let snap = a_dir.path().join("snap.db");
    a.snapshot(snap.clone()).await.unwrap();

    let err = b.apply(records.clone()).await.unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err}");
    assert!(err.to_string().contains("primary of term 1"), "{err}");
    let err = b.install_snapshot(snap.clone()).await.unwrap_err();
    assert!(err.to_string().contains("primary of term 1"), "{err}");
    assert_eq!(b.progress(), Default::default());

    b.set_gate(WriteGate::closed("a replica of a")).unwrap();
    let p = b.apply(records).await.unwrap();
    assert_eq!(p.applied, a.progress().applied);
    assert_eq!(count(&b).await, 1);
    a.shutdown().await;
    b.shutdown().await;
}
