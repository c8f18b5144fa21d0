//! Reads and writes on any node (DESIGN.md §5), with real processes: writes sent to a replica
//! are forwarded to the primary; reads name their consistency — stale (bounded by `max_lag`),
//! session (a position token: read-your-writes on a replica), strong (the primary).

mod common;

use std::time::{Duration, Instant};

use common::{free_port, start_primary, start_replica_env, wait_status, Api, NodeProc};
use serde_json::{json, Value};

struct Cluster {
    _dir: tempfile::TempDir,
    n1: NodeProc,
    n2: NodeProc,
    p: Api,
    r: Api,
}

/// A primary and one replica that pauses `delay_ms` between fsync and apply.
async fn cluster(delay_ms: u64) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let n1 = start_primary("n1", &dir.path().join("n1"), &peer, &[]);
    let delay = delay_ms.to_string();
    let n2 = start_replica_env(
        "n2",
        &dir.path().join("n2"),
        &peer,
        &[],
        &[("SCRIBE_TEST_APPLY_DELAY_MS", &delay)],
    );
    let (p, r) = (Api::new(&n1.url), Api::new(&n2.url));
    let (status, body) = p
        .execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_status(&r, Duration::from_secs(20), "n2 streaming", |s| {
        s["replication"]["state"] == "streaming" && s["applied_lsn"] == 1
    })
    .await;
    Cluster {
        _dir: dir,
        n1,
        n2,
        p,
        r,
    }
}

async fn write(api: &Api, v: &str, extra: Value) -> (u16, Value) {
    let mut body =
        json!({ "statements": [{ "sql": "INSERT INTO t (v) VALUES (?)", "params": [v] }] });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    api.post("/v1/execute", &body).await.unwrap()
}

async fn read(api: &Api, body: Value) -> (u16, Value) {
    api.post("/v1/query", &body).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_replica_is_forwarded_unless_asked_not_to() {
    let c = cluster(0).await;
    let (status, body) = write(&c.r, "via n2", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forwarded_to"], "n1", "{body}");
    assert_eq!(body["durability"]["mode"], "async", "{body}");
    let pos = body["position"].as_str().unwrap().to_string();
    // It is on the primary, at the position the answer gave.
    let (status, rows) = read(
        &c.p,
        json!({ "sql": "SELECT v FROM t", "consistency": "strong" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rows["rows"], json!([["via n2"]]));
    assert_eq!(rows["served_by"], "n1");
    assert_eq!(rows["position"], json!(pos));

    let (status, body) = write(&c.r, "refused", json!({ "forward": false })).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_primary");
    assert_eq!(body["error"]["primary"]["name"], "n1");
    assert_eq!(body["error"]["primary"]["url"], json!(c.n1.url));
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("read-only replica") && msg.contains("n1"),
        "{msg}"
    );
    // Errors of the primary come back as they are.
    let (status, body) =
        c.r.post(
            "/v1/execute",
            &json!({ "statements": [{ "sql": "INSERT INTO nope VALUES (1)" }] }),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "sql_error");
    assert_eq!(c.r.status().await["accepting_writes"], false);
    drop(c.n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_on_a_lagging_replica_waits_for_its_write_or_is_forwarded() {
    let c = cluster(300).await;
    let (status, body) = write(&c.p, "mine", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let pos = body["position"].clone();
    let q = "SELECT count(*) FROM t WHERE v = 'mine'";
    // Stale: the lagging replica does not have it yet.
    let (status, stale) = read(&c.r, json!({ "sql": q })).await;
    assert_eq!(status, 200);
    assert_eq!(
        stale["rows"],
        json!([[0]]),
        "the replica should still lag: {stale}"
    );
    assert_eq!(stale["served_by"], "n2");
    // Session with a short wait and no forwarding: a clear error.
    let (status, err) = read(
        &c.r,
        json!({ "sql": q, "consistency": "session", "position": pos, "wait": "10ms", "forward": false }),
    )
    .await;
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "not_caught_up");
    // Session, default wait: the replica waits until it applied the write, then answers itself.
    let started = Instant::now();
    let (status, fresh) = read(
        &c.r,
        json!({ "sql": q, "consistency": "session", "position": pos }),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["rows"], json!([[1]]), "{fresh}");
    assert_eq!(fresh["served_by"], "n2");
    assert!(fresh.get("forwarded_to").is_none(), "{fresh}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Session, a wait shorter than the lag: forwarded to the primary, which has it.
    let (_, body) = write(&c.p, "mine", json!({})).await;
    let pos = body["position"].clone();
    let (status, fwd) = read(
        &c.r,
        json!({ "sql": q, "consistency": "session", "position": pos, "wait": "5ms" }),
    )
    .await;
    assert_eq!(status, 200, "{fwd}");
    assert_eq!(fwd["rows"], json!([[2]]), "{fwd}");
    assert_eq!(fwd["forwarded_to"], "n1");
    assert_eq!(fwd["served_by"], "n1");
    // A session read needs its token.
    let (status, err) = read(&c.r, json!({ "sql": q, "consistency": "session" })).await;
    assert_eq!(status, 400, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_respect_max_lag_and_strong_reads_go_to_the_primary() {
    let c = cluster(400).await;
    // Caught up and idle: lag 0, max_lag is met on the replica itself.
    let (status, body) = read(&c.r, json!({ "sql": "SELECT 1", "max_lag": "100ms" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["served_by"], "n2");
    // A write the replica takes 400 ms to apply: past 100 ms it is too far behind.
    write(&c.p, "x", json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, err) = read(
        &c.r,
        json!({ "sql": "SELECT count(*) FROM t", "max_lag": "100ms", "forward": false }),
    )
    .await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "lagging");
    let (status, body) = read(
        &c.r,
        json!({ "sql": "SELECT count(*) FROM t", "max_lag": "100ms" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["forwarded_to"], "n1", "{body}");
    assert_eq!(body["rows"], json!([[1]]));
    // Strong: the primary, always.
    let (status, body) = read(
        &c.r,
        json!({ "sql": "SELECT count(*) FROM t", "consistency": "strong" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["served_by"], "n1");
    let (status, err) = read(
        &c.r,
        json!({ "sql": "SELECT 1", "consistency": "strong", "forward": false }),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "not_primary");
    // A bad duration or consistency is a bad request.
    let (status, _) = read(&c.r, json!({ "sql": "SELECT 1", "max_lag": "soon" })).await;
    assert_eq!(status, 400);
    let (status, _) = read(
        &c.r,
        json!({ "sql": "SELECT 1", "consistency": "eventual" }),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scribe_sql_on_a_lagging_replica_forwards_writes_and_reads_them_back() {
    let c = cluster(300).await;
    let out = std::process::Command::new(common::scribe_bin())
        .args([
            "sql",
            "--url",
            &c.n2.url,
            "-c",
            "INSERT INTO t (v) VALUES ('from the shell'); SELECT v FROM t WHERE v = 'from the shell';",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("from the shell"))
            .count(),
        1,
        "the shell reads its own write on the replica:\n{stdout}"
    );
    // Without the session token the replica would not have had it yet.
    let (_, body) = read(&c.r, json!({ "sql": "SELECT count(*) FROM t" })).await;
    assert!(body["rows"][0][0].as_i64().unwrap() <= 1);
}
