//! Primary/replica replication with real `scribe node` processes over real TCP: commit modes,
//! replicas killed and restarted under load, a primary restarted, snapshot seeding, retention,
//! and refusals (another cluster, an older term, garbage on the peer port).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    checksum, free_port, start_primary, start_replica, start_replica_env, wait_caught_up,
    wait_status, Api, NodeProc,
};
use serde_json::{json, Value};

fn peer() -> String {
    format!("127.0.0.1:{}", free_port())
}

async fn insert(api: &Api, table: &str, v: i64, commit: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "statements": [
        { "sql": format!("INSERT INTO {table} (v) VALUES (?)"), "params": [v] }
    ]});
    if let Some(c) = commit {
        body["commit"] = json!(c);
    }
    api.post("/v1/execute", &body).await.expect("execute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_commits_are_visible_on_every_sync_replica_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1 = start_primary(
        "n1",
        &dir.path().join("n1"),
        &peer,
        &["--commit", "sync", "--sync-replicas", "FIRST 2 (n2, n3)"],
    );
    // Replicas that pause 3 ms between fsyncing records and applying them, so that answering on
    // `flushed` instead of `applied` would show up as misses.
    let lag = [("SCRIBE_TEST_APPLY_DELAY_MS", "3")];
    let n2 = start_replica_env("n2", &dir.path().join("n2"), &peer, &[], &lag);
    let n3 = start_replica_env("n3", &dir.path().join("n3"), &peer, &[], &lag);
    let (p, r2, r3) = (Api::new(&n1.url), Api::new(&n2.url), Api::new(&n3.url));
    wait_status(
        &p,
        Duration::from_secs(20),
        "both replicas connecting",
        |s| s["replicas"].as_array().is_some_and(|r| r.len() == 2),
    )
    .await;
    let (status, body) = p
        .execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut misses = 0;
    for i in 0..1000 {
        let (status, body) = insert(&p, "t", i, None).await;
        assert_eq!(status, 200, "{body}");
        let d = &body["durability"];
        assert_eq!(d["mode"], "sync", "{body}");
        assert_eq!(d["degraded"], false, "{body}");
        assert_eq!(d["acked_by"], json!(["n2", "n3"]), "{body}");
        let id = body["results"][0]["last_insert_id"].as_i64().unwrap();
        for r in [&r2, &r3] {
            let rows = r.rows(&format!("SELECT v FROM t WHERE id = {id}")).await;
            if rows != vec![vec![json!(i)]] {
                misses += 1;
            }
        }
    }
    assert_eq!(
        misses, 0,
        "reads on sync replicas right after the answer missed the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semi_sync_goes_on_with_one_replica_and_times_out_without_any() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1_dir = dir.path().join("n1");
    let args = [
        "--commit",
        "semi-sync",
        "--sync-replicas",
        "ANY 1 (*)",
        "--sync-timeout",
        "1s",
    ];
    let mut with_error = args.to_vec();
    with_error.extend(["--on-sync-timeout", "error"]);
    let n1 = start_primary("n1", &n1_dir, &peer, &with_error);
    let n2 = start_replica("n2", &dir.path().join("n2"), &peer, &[]);
    let n3 = start_replica("n3", &dir.path().join("n3"), &peer, &[]);
    let p = Api::new(&n1.url);
    let (status, body) = p
        .execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_caught_up(
        &p,
        &[&Api::new(&n2.url), &Api::new(&n3.url)],
        Duration::from_secs(20),
    )
    .await;

    // One replica killed: writes go on, acknowledged by the other.
    n2.kill9();
    for i in 0..50 {
        let (status, body) = insert(&p, "t", i, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["durability"]["mode"], "semi-sync", "{body}");
        assert_eq!(body["durability"]["acked_by"], json!(["n3"]), "{body}");
    }
    // Both killed: the write waits the timeout, then errors saying what happened.
    n3.kill9();
    let started = Instant::now();
    let (status, body) = insert(&p, "t", 1000, None).await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "sync_timeout", "{body}");
    assert_eq!(body["error"]["durability"]["mode"], "async", "{body}");
    assert_eq!(body["error"]["durability"]["degraded"], true, "{body}");
    assert_eq!(
        body["error"]["durability"]["requested"], "semi-sync",
        "{body}"
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("committed on the primary"), "{msg}");
    assert!(
        waited >= Duration::from_millis(950),
        "answered after {waited:?}, before the timeout"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    // It is committed on the primary, as the error says.
    assert_eq!(
        p.rows("SELECT count(*) FROM t WHERE v = 1000").await,
        vec![vec![json!(1)]]
    );
    // An async write is not held up.
    let (status, body) = insert(&p, "t", 1001, Some("async")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["durability"]["mode"], "async", "{body}");

    // The same with --on-sync-timeout degrade: success, saying it degraded.
    let (code, _) = n1.terminate();
    assert!(code.success());
    let mut with_degrade = args.to_vec();
    with_degrade.extend(["--on-sync-timeout", "degrade"]);
    let n1 = start_primary("n1", &n1_dir, &peer, &with_degrade);
    let p = Api::new(&n1.url);
    let started = Instant::now();
    let (status, body) = insert(&p, "t", 2000, None).await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["durability"],
        json!({ "mode": "async", "acked_by": [], "degraded": true, "requested": "semi-sync" }),
        "{body}"
    );
}

/// Eight clients inserting until `stop`; counts acknowledged writes.
fn load(
    api: &Api,
    stop: &Arc<AtomicBool>,
    acked: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|c| {
            let (api, stop, acked) = (api.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "statements": [
                        { "sql": "INSERT INTO t (c, v, pad) VALUES (?, ?, randomblob(64))", "params": [c, i] },
                        { "sql": "UPDATE counters SET n = n + 1 WHERE id = ?", "params": [c] },
                    ]});
                    match api.post("/v1/execute", &body).await {
                        Ok((200, _)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => panic!("write failed with {status}: {body}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

async fn setup_load_tables(p: &Api) {
    let (status, body) = p
        .execute(&[
            "CREATE TABLE t (id INTEGER PRIMARY KEY, c INTEGER, v INTEGER, pad BLOB)",
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
            "INSERT INTO counters (id, n) VALUES (0,0),(1,0),(2,0),(3,0),(4,0),(5,0),(6,0),(7,0)",
            // A trigger's rows are in the changeset: applying must not fire it a second time.
            "CREATE TABLE audit (id INTEGER PRIMARY KEY, c INTEGER, v INTEGER)",
            "CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit (c, v) VALUES (NEW.c, NEW.v); END",
        ])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

async fn assert_identical(p: &Api, replicas: &[&Api]) {
    wait_caught_up(p, replicas, Duration::from_secs(60)).await;
    let want = checksum(p).await;
    assert!(want.1 > 0);
    for r in replicas {
        let got = checksum(r).await;
        assert_eq!(got, want, "replica {} differs from the primary", r.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_catches_up_and_so_do_replicas_of_a_restarted_primary() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1_dir = dir.path().join("n1");
    let n2_dir = dir.path().join("n2");
    let n1 = start_primary("n1", &n1_dir, &peer, &["--segment-bytes", "65536"]);
    let n2 = start_replica("n2", &n2_dir, &peer, &["--segment-bytes", "65536"]);
    let n3 = start_replica("n3", &dir.path().join("n3"), &peer, &[]);
    let p = Api::new(&n1.url);
    let r3 = Api::new(&n3.url);
    setup_load_tables(&p).await;

    // SIGKILL a replica under write load, several times, restarting it each time.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers = load(&p, &stop, &acked);
    let mut n2 = Some(n2);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400 + 200 * round)).await;
        n2.take().unwrap().kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        n2 = Some(start_replica(
            "n2",
            &n2_dir,
            &peer,
            &["--segment-bytes", "65536"],
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        acked.load(Ordering::Relaxed) > 100,
        "too little load to mean anything"
    );
    let r2 = Api::new(&n2.as_ref().unwrap().url);
    assert_identical(&p, &[&r2, &r3]).await;

    // Lag reads zero when nothing happens, and the primary shows both replicas streaming.
    let s = wait_status(
        &p,
        Duration::from_secs(5),
        "replicas streaming with zero lag",
        |s| {
            s["replicas"].as_array().is_some_and(|rs| {
                rs.len() == 2
                    && rs.iter().all(|r| {
                        r["state"] == "streaming"
                            && r["lag_records"] == 0
                            && r["apply_lag_ms"] == 0.0
                    })
            })
        },
    )
    .await;
    assert_eq!(s["role"], "primary");

    // The primary killed under load and restarted on the same addresses: replicas reconnect.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = load(&p, &stop, &acked);
    tokio::time::sleep(Duration::from_millis(700)).await;
    n1.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let n1 = start_primary("n1", &n1_dir, &peer, &["--segment-bytes", "65536"]);
    let p = Api::new(&n1.url);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = load(&p, &stop, &acked);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_identical(&p, &[&r2, &r3]).await;
    let s = r2.status().await;
    assert_eq!(s["role"], "replica");
    assert_eq!(s["replication"]["primary"], "n1", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_is_seeded_from_a_snapshot_of_a_million_rows_then_streams() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
    let p = Api::new(&n1.url);
    let (status, body) = p
        .execute(&["CREATE TABLE big (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for chunk in 0..10 {
        let sql = format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) \
             INSERT INTO big (id, name) SELECT x + {base}, 'row ' || (x + {base}) FROM c",
            base = chunk * 100_000
        );
        let (status, body) = p.execute(&[&sql]).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        p.rows("SELECT count(*) FROM big").await,
        vec![vec![json!(1_000_000)]]
    );

    let n2 = start_replica("n2", &dir.path().join("n2"), &peer, &[]);
    let r2 = Api::new(&n2.url);
    wait_caught_up(&p, &[&r2], Duration::from_secs(120)).await;
    let sum = "SELECT count(*), sum(id), sum(length(name)), max(name) FROM big";
    assert_eq!(r2.rows(sum).await, p.rows(sum).await);
    let s = r2.status().await;
    assert_eq!(
        s["cluster_id"],
        p.status().await["cluster_id"],
        "the replica joined the cluster"
    );
    // It was seeded, not replayed: its log starts after the snapshot.
    assert!(s["log_first_lsn"].as_u64().unwrap() > 1, "{s}");

    // Then it streams.
    let (status, body) = p
        .execute(&["INSERT INTO big (id, name) VALUES (2000001, 'after the snapshot')"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_caught_up(&p, &[&r2], Duration::from_secs(20)).await;
    assert_eq!(
        r2.rows("SELECT name FROM big WHERE id = 2000001").await,
        vec![vec![json!("after the snapshot")]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_far_behind_the_retained_log_is_reseeded() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let small = ["--segment-bytes", "16384", "--max-log-size", "65536"];
    let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &small);
    let n2_dir = dir.path().join("n2");
    let n2 = start_replica("n2", &n2_dir, &peer, &[]);
    let p = Api::new(&n1.url);
    let (status, body) = p
        .execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, pad BLOB)"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_caught_up(&p, &[&Api::new(&n2.url)], Duration::from_secs(20)).await;
    let behind_at = Api::new(&n2.url).status().await["applied_lsn"]
        .as_u64()
        .unwrap();
    n2.kill9();
    // About 1 MB of records while it is away: far more than the 64 KiB kept.
    for i in 0..400 {
        let (status, body) = p
            .post(
                "/v1/execute",
                &json!({ "statements": [{ "sql": "INSERT INTO t (v, pad) VALUES (?, randomblob(2500))", "params": [i] }] }),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let s = wait_status(
        &p,
        Duration::from_secs(20),
        "retention deleting old segments",
        |s| s["log_first_lsn"].as_u64().unwrap_or(0) > behind_at + 1,
    )
    .await;
    assert!(
        s["log_bytes"].as_u64().unwrap() <= 65536 + 16384 + 4096,
        "{s}"
    );
    let n2 = start_replica("n2", &n2_dir, &peer, &[]);
    let r2 = Api::new(&n2.url);
    assert_identical(&p, &[&r2]).await;
    assert!(r2.status().await["log_first_lsn"].as_u64().unwrap() > behind_at + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_cluster_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
    let p = Api::new(&n1.url);
    p.execute(&["CREATE TABLE a (x)"]).await.unwrap();
    // n9 starts life as the primary of a cluster of its own, with data.
    let n9_dir = dir.path().join("n9");
    let n9 = NodeProc::start("n9", &n9_dir, &[]);
    let (status, _) = Api::new(&n9.url)
        .execute(&["CREATE TABLE mine (y)"])
        .await
        .unwrap();
    assert_eq!(status, 200);
    n9.terminate();
    let n9 = start_replica("n9", &n9_dir, &peer, &[]);
    let r9 = Api::new(&n9.url);
    let s = wait_status(&r9, Duration::from_secs(20), "the refusal", |s| {
        s["replication"]["state"] == "refused"
    })
    .await;
    let err = s["replication"]["error"].as_str().unwrap();
    assert!(err.contains("this primary's cluster is"), "{err}");
    assert!(err.contains("empty data directory"), "{err}");
    // Nothing of the primary reached it.
    let tables = r9
        .rows("SELECT name FROM sqlite_master WHERE name = 'a'")
        .await;
    assert!(tables.is_empty());
}

mod fake_peer {
    //! A test double of the other side of the peer protocol, over real TCP.

    use scribe_core::{Lsn, Position, Term};
    use scribe_wire::{read_message, write_message, Hello, Message, RefusalCode, Start, Welcome};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_has_seen_a_newer_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let peer = peer();
        let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
        let cluster = Api::new(&n1.url).status().await["cluster_id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut s = TcpStream::connect(&peer).await.unwrap();
        let hello = Message::Hello(Hello {
            cluster_id: cluster,
            name: "n7".into(),
            term: Term(7),
            last: Position::new(Term(7), Lsn(3)),
            http_url: String::new(),
            history: vec![(Term(7), Lsn(1))],
        });
        write_message(&mut s, &hello).await.unwrap();
        s.flush().await.unwrap();
        match read_message(&mut s).await.unwrap() {
            Message::Refused(r) => {
                assert_eq!(r.code, RefusalCode::StaleTerm);
                assert!(r.message.contains("term 7"), "{}", r.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_only_says_hello_confirms_no_sync_write() {
        let dir = tempfile::tempdir().unwrap();
        let peer = peer();
        let n1 = start_primary(
            "n1",
            &dir.path().join("n1"),
            &peer,
            &["--commit", "sync", "--sync-timeout", "1s"],
        );
        let p = Api::new(&n1.url);
        p.execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"])
            .await
            .unwrap();
        let st = p.status().await;
        let flushed = st["flushed_lsn"].as_u64().unwrap();
        // It claims, in its hello, to have everything; it never reports or applies anything.
        let mut s = TcpStream::connect(&peer).await.unwrap();
        let hello = Message::Hello(Hello {
            cluster_id: st["cluster_id"].as_str().unwrap().into(),
            name: "fake".into(),
            term: Term(1),
            last: Position::new(Term(1), Lsn(flushed)),
            http_url: String::new(),
            history: vec![(Term(1), Lsn(1))],
        });
        write_message(&mut s, &hello).await.unwrap();
        s.flush().await.unwrap();
        assert!(matches!(
            read_message(&mut s).await.unwrap(),
            Message::Welcome(_)
        ));
        let (status, body) = insert(&p, "t", 1, None).await;
        assert_eq!(status, 504, "{body}");
        assert_eq!(body["error"]["durability"]["acked_by"], json!([]), "{body}");
        drop(s);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_on_the_peer_port_is_refused_and_the_primary_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let peer = peer();
        let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
        let mut s = TcpStream::connect(&peer).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        match read_message(&mut s).await.unwrap() {
            Message::Refused(r) => {
                assert_eq!(r.code, RefusalCode::Protocol);
                assert!(r.message.contains("peer port"), "{}", r.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let (status, body) = Api::new(&n1.url)
            .execute(&["CREATE TABLE ok (a)"])
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        // And a real replica still joins.
        let n2 = start_replica("n2", &dir.path().join("n2"), &peer, &[]);
        wait_caught_up(
            &Api::new(&n1.url),
            &[&Api::new(&n2.url)],
            Duration::from_secs(20),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_an_older_term_is_refused_by_the_replica() {
        let dir = tempfile::tempdir().unwrap();
        let peer = peer();
        // A real replica that has records of term 1 from a real primary.
        let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
        let p = Api::new(&n1.url);
        p.execute(&["CREATE TABLE a (x)"]).await.unwrap();
        let n2_dir = dir.path().join("n2");
        let n2 = start_replica("n2", &n2_dir, &peer, &[]);
        wait_caught_up(&p, &[&Api::new(&n2.url)], Duration::from_secs(20)).await;
        n2.terminate();
        drop(n1);
        // A "primary" of term 0 offers it a stream.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = listener.local_addr().unwrap().to_string();
        let n2 = start_replica("n2", &n2_dir, &fake, &[]);
        let (mut s, _) = listener.accept().await.unwrap();
        let hello = match read_message(&mut s).await.unwrap() {
            Message::Hello(h) => h,
            other => panic!("expected hello, got {other:?}"),
        };
        assert_eq!(hello.term, Term(1));
        write_message(
            &mut s,
            &Message::Welcome(Welcome {
                cluster_id: hello.cluster_id.clone(),
                primary: "old".into(),
                term: Term(0),
                http_url: String::new(),
                start: Start::Stream {
                    from: hello.last.lsn.next(),
                },
            }),
        )
        .await
        .unwrap();
        s.flush().await.unwrap();
        match read_message(&mut s).await.unwrap() {
            Message::Refused(r) => assert_eq!(r.code, RefusalCode::StaleTerm, "{}", r.message),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let st = wait_status(
            &Api::new(&n2.url),
            Duration::from_secs(10),
            "the refusal",
            |s| s["replication"]["state"] == "refused",
        )
        .await;
        let err = st["replication"]["error"].as_str().unwrap();
        assert!(err.contains("older than term 1"), "{err}");
    }
}

/// A TCP proxy between a replica and its primary that can cut the link without closing it, as a
/// network partition does: while cut it neither reads nor writes (data waits in the kernel's
/// buffers, then the peers' timeouts fire) and closes new connections at once.
struct Partition {
    addr: String,
    cut: Arc<AtomicBool>,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(Self::pipe(dr, uw, flag.clone()));
                tokio::spawn(Self::pipe(ur, dw, flag.clone()));
            }
        });
        Partition { addr, cut }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_replica_is_dropped_and_catches_up_when_the_partition_heals() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer();
    let n1 = start_primary(
        "n1",
        &dir.path().join("n1"),
        &peer,
        &[
            "--commit",
            "semi-sync",
            "--sync-timeout",
            "1s",
            "--on-sync-timeout",
            "degrade",
            "--peer-timeout",
            "2s",
        ],
    );
    let link = Partition::start(peer.clone()).await;
    let n2 = start_replica(
        "n2",
        &dir.path().join("n2"),
        &link.addr,
        &["--peer-timeout", "2s"],
    );
    let (p, r2) = (Api::new(&n1.url), Api::new(&n2.url));
    setup_load_tables(&p).await;
    wait_caught_up(&p, &[&r2], Duration::from_secs(20)).await;
    let (status, body) = insert(&p, "t", 1, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["durability"]["acked_by"], json!(["n2"]), "{body}");

    link.set(true);
    // Semi-sync writes wait their timeout and say they degraded; nothing is refused.
    for i in 0..3 {
        let (status, body) = insert(&p, "t", 100 + i, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["durability"]["degraded"], true, "{body}");
        assert_eq!(body["durability"]["mode"], "async", "{body}");
    }
    // Both sides notice the silence and drop the connection.
    let s = wait_status(
        &p,
        Duration::from_secs(10),
        "n2 disconnected on the primary",
        |s| s["replicas"][0]["state"] == "disconnected",
    )
    .await;
    let why = s["replicas"][0]["error"].as_str().unwrap_or_default();
    assert!(why.contains("no word from the replica"), "{s}");
    let s = wait_status(
        &r2,
        Duration::from_secs(10),
        "the replica losing its primary",
        |s| s["replication"]["state"] == "connecting",
    )
    .await;
    assert!(
        s["replication"]["error"].as_str().is_some(),
        "the replica says why: {s}"
    );
    // Writes go on meanwhile (async ones do not wait at all).
    for i in 0..200 {
        let (status, body) = insert(&p, "t", 1000 + i, Some("async")).await;
        assert_eq!(status, 200, "{body}");
    }

    link.set(false);
    assert_identical(&p, &[&r2]).await;
    let (status, body) = insert(&p, "t", 2, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["durability"]["acked_by"], json!(["n2"]), "{body}");
    assert_eq!(body["durability"]["degraded"], false, "{body}");
}
