//! Discovery and routing against real nodes: the primary found through a replica, errors as the
//! caller needs them, and a dead primary — writes fail as not sent, reads go on.

mod common;

use std::time::{Duration, Instant};

use common::Pair;
use scribe_client::{Cluster, CommitMode, Consistency, Error, Options, Statement, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_alone_leads_to_the_primary() {
    let pair = Pair::start_with_table(0).await;
    let cluster = Cluster::connect([format!("{}/", pair.replica.url)])
        .await
        .expect("connect");
    assert_eq!(
        cluster.primary_url().as_deref(),
        Some(pair.primary.url.as_str())
    );
    assert_eq!(cluster.replicas()[0].name, "n2");

    let w = cluster
        .execute_with(
            [Statement::new("INSERT INTO t (v) VALUES (:v)").named(":v", "x")],
            CommitMode::Sync,
        )
        .await
        .expect("write");
    assert_eq!(w.url, pair.primary.url);
    assert_eq!(w.durability.mode, "sync");
    assert_eq!(w.durability.acked_by, vec!["n2".to_string()]);
    // Sync: applied on the replica, so even a stale read there sees it.
    let r = cluster
        .query_with("SELECT v FROM t", (), Consistency::Stale { max_lag: None })
        .await
        .expect("read");
    assert_eq!(r.rows, vec![vec![Value::from("x")]]);
    assert_eq!(r.served_by.as_deref(), Some("n2"));
    let strong = cluster
        .query_with("SELECT count(*) FROM t", (), Consistency::Strong)
        .await
        .expect("strong read");
    assert_eq!(strong.served_by.as_deref(), Some("n1"));
    assert_eq!(strong.rows, vec![vec![Value::Integer(1)]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_next() {
    let pair = Pair::start_with_table(0).await;
    let cluster = Cluster::connect([&pair.primary.url])
        .await
        .expect("connect");
    let e = cluster
        .execute(["INSERT INTO nope VALUES (1)"])
        .await
        .expect_err("no such table");
    assert!(
        matches!(&e, Error::Server { status: 400, code, .. } if code == "sql_error"),
        "{e:?}"
    );
    let e = cluster
        .query("INSERT INTO t (v) VALUES ('w')", ())
        .await
        .expect_err("a write as a read");
    assert_eq!(e.code(), Some("not_read_only"), "{e:?}");
    let e = cluster
        .execute([Statement::new("INSERT INTO t VALUES (?, ?)")
            .param(1)
            .named("a", 2)])
        .await
        .expect_err("mixed parameters");
    assert!(matches!(e, Error::Usage(_)), "{e:?}");
    assert!(matches!(
        Cluster::connect(Vec::<String>::new()).await,
        Err(Error::Usage(_))
    ));
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    assert!(matches!(
        Cluster::connect([nobody]).await,
        Err(Error::Unreachable(_))
    ));
    // Values of every type survive the round trip.
    cluster
        .execute(["CREATE TABLE v (a, b, c, d, e)"])
        .await
        .expect("create");
    let row = vec![
        Value::Null,
        Value::Integer(-3),
        Value::Real(2.5),
        Value::from("é"),
        Value::Blob(vec![0, 255]),
    ];
    cluster
        .execute([Statement::new("INSERT INTO v VALUES (?, ?, ?, ?, ?)").params(row.clone())])
        .await
        .expect("insert");
    let r = cluster.query("SELECT * FROM v", ()).await.expect("read");
    assert_eq!(r.rows, vec![row]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_gone_writes_fail_as_not_sent_and_reads_go_on() {
    let pair = Pair::start_with_table(0).await;
    let cluster = Cluster::connect_with(
        [&pair.primary.url, &pair.replica.url],
        Options::default().write_retries(2),
    )
    .await
    .expect("connect");
    cluster
        .execute([Statement::new("INSERT INTO t (v) VALUES (?)").param("before")])
        .await
        .expect("write");
    common::wait_status(
        &pair.replica.url,
        Duration::from_secs(10),
        "n2 applies",
        |s| s["applied_lsn"].as_u64() >= Some(2),
    )
    .await;
    let primary_url = pair.primary.url.clone();
    pair.primary.kill();
    // Let the client see its kept-alive connection to the primary close. A write that races the
    // crash on that connection is truly of unknown outcome: the client cannot tell a crash just
    // before the request from one while it was being handled.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let e = cluster
        .execute([Statement::new("INSERT INTO t (v) VALUES (?)").param("after")])
        .await
        .expect_err("no primary");
    assert!(
        matches!(e, Error::NoPrimary(_) | Error::Unreachable(_)),
        "a write that never reached a node is not of unknown outcome: {e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(cluster.primary_url(), None, "{primary_url} is gone");

    // Reads go on, on the replica, with the token of the last write.
    let r = cluster.query("SELECT v FROM t", ()).await.expect("read");
    assert_eq!(r.rows, vec![vec![Value::from("before")]]);
    assert_eq!(r.served_by.as_deref(), Some("n2"));
    let e = cluster
        .query_with("SELECT 1", (), Consistency::Strong)
        .await
        .expect_err("no primary for a strong read");
    assert!(
        matches!(e, Error::NoPrimary(_) | Error::Server { .. }),
        "{e:?}"
    );
}
