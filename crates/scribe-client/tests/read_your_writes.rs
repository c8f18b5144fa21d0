//! Read-your-writes through the client, against real nodes: a primary and a replica made to lag
//! (it pauses between fsync and apply), async commits. Each pair inserts a row through
//! `execute` (the primary) and reads it back right away through `query` (the replica). With the
//! client's session token no read misses its write; the same pairs as stale reads do miss, which
//! shows the test can fail.

mod common;

use std::time::Instant;

use common::Pair;
use scribe_client::{Cluster, Consistency, Error, Statement, Value};

/// Write-then-read pairs per run.
const PAIRS: usize = 1000;
/// How long the replica pauses between fsync and apply.
const APPLY_DELAY_MS: u64 = 25;

/// What a run of pairs found.
#[derive(Debug, Default)]
struct Tally {
    /// Reads that did not see the row just inserted.
    misses: usize,
    /// Reads the lagging replica answered itself (not forwarded).
    on_replica: usize,
}

/// Runs `PAIRS` write-then-read pairs; `read` reads back the row with the given id.
async fn pairs<F, Fut>(cluster: &Cluster, tag: &str, read: F) -> Result<Tally, Error>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<scribe_client::Rows, Error>>,
{
    let mut tally = Tally::default();
    for i in 0..PAIRS {
        let v = format!("{tag} {i}");
        let written = cluster
            .execute([Statement::new("INSERT INTO t (v) VALUES (?)").param(v.as_str())])
            .await?;
        let id = written.last_insert_id().expect("one statement");
        let rows = read(id).await?;
        if rows.rows != vec![vec![Value::Text(v)]] {
            tally.misses += 1;
        }
        if rows.served_by.as_deref() == Some("n2") && rows.forwarded_to.is_none() {
            tally.on_replica += 1;
        }
    }
    Ok(tally)
}

async fn connect(pair: &Pair) -> Cluster {
    let cluster = Cluster::connect([&pair.primary.url, &pair.replica.url])
        .await
        .expect("connect");
    assert_eq!(
        cluster.primary_url().as_deref(),
        Some(pair.primary.url.as_str())
    );
    let replicas = cluster.replicas();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert!(replicas[0].healthy, "{replicas:?}");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_on_a_lagging_replica_see_every_write() {
    let pair = Pair::start_with_table(APPLY_DELAY_MS).await;
    let cluster = connect(&pair).await;
    let started = Instant::now();
    let tally = pairs(&cluster, "session", |id| {
        let cluster = cluster.clone();
        async move { cluster.query("SELECT v FROM t WHERE id = ?", [id]).await }
    })
    .await
    .expect("pairs");
    eprintln!(
        "session: {PAIRS} pairs, {} stale reads, {} served by the lagging replica itself, in {:?}",
        tally.misses,
        tally.on_replica,
        started.elapsed()
    );
    assert_eq!(tally.misses, 0, "{tally:?}");
    // The reads went to the lagging replica, which waited for the write: not a test that passes
    // because everything was read on the primary.
    assert!(tally.on_replica >= PAIRS * 9 / 10, "{tally:?}");
    // The handle's token is the last write's (or a later read's) position.
    assert!(cluster.position().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_on_a_lagging_replica_miss_writes() {
    let pair = Pair::start_with_table(APPLY_DELAY_MS).await;
    let cluster = connect(&pair).await;
    let tally = pairs(&cluster, "stale", |id| {
        let cluster = cluster.clone();
        async move {
            cluster
                .query_with(
                    "SELECT v FROM t WHERE id = ?",
                    [id],
                    Consistency::Stale { max_lag: None },
                )
                .await
        }
    })
    .await
    .expect("pairs");
    eprintln!(
        "stale: {PAIRS} pairs, {} stale reads, {} served by the lagging replica",
        tally.misses, tally.on_replica
    );
    assert!(tally.misses > 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_its_own_writes_and_not_necessarily_others() {
    // A long pause, so that a read right after a write surely comes before the replica applies.
    let pair = Pair::start_with_table(400).await;
    let cluster = connect(&pair).await;
    let (alice, bob) = (cluster.session(), cluster.session());
    assert_eq!(alice.position(), None);

    let a = alice
        .execute([Statement::new("INSERT INTO t (v) VALUES (?)").param("alice's")])
        .await
        .expect("alice writes");
    assert_eq!(alice.position(), Some(a.position));
    // Neither the other session's token nor the cluster's moved.
    assert_eq!(bob.position(), None);
    assert_eq!(cluster.position(), None);

    let q = "SELECT v FROM t ORDER BY id";
    let seen_by_bob = bob.query(q, ()).await.expect("bob reads");
    assert_eq!(seen_by_bob.served_by.as_deref(), Some("n2"));
    assert!(
        seen_by_bob.rows.is_empty(),
        "bob's read has no token and the replica lags 400 ms, yet it saw alice's write: {seen_by_bob:?}"
    );
    let seen_by_alice = alice.query(q, ()).await.expect("alice reads");
    assert_eq!(seen_by_alice.rows, vec![vec![Value::from("alice's")]]);
    assert_eq!(seen_by_alice.served_by.as_deref(), Some("n2"));

    // Once bob writes, his token is past alice's write too: he sees both.
    bob.execute([Statement::new("INSERT INTO t (v) VALUES (?)").param("bob's")])
        .await
        .expect("bob writes");
    let seen_by_bob = bob.query(q, ()).await.expect("bob reads again");
    assert_eq!(
        seen_by_bob.rows,
        vec![vec![Value::from("alice's")], vec![Value::from("bob's")]]
    );

    // A token handed over to a new session carries read-your-writes with it.
    let carried = cluster.session();
    carried.advance(bob.position().expect("bob's token"));
    let seen = carried.query(q, ()).await.expect("carried reads");
    assert_eq!(seen.rows.len(), 2);
}
