//! The HTTP API of a real node process, driven as a client would: the classic example, bad input
//! of every kind (each a clear error, the node keeps serving, a failed transaction leaves no
//! trace), status, metrics and a clean shutdown.

mod common;

use common::{Api, NodeProc};
use serde_json::{json, Value};

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or("?"),
        body["error"]["message"].as_str().unwrap_or("?"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_example_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &[]);
    let api = Api::new(&node.url);
    let (s, b) = api
        .execute(&["CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = api
        .post("/v1/execute", &json!({"statements": [{"sql": "INSERT INTO users (name) VALUES (?)", "params": ["Alice"]}]}))
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][0]["rows_affected"], 1);
    assert_eq!(b["results"][0]["last_insert_id"], 1);
    assert_eq!(b["position"], "1/2");
    let (s, b) = api
        .post(
            "/v1/query",
            &json!({"sql": "SELECT * FROM users WHERE name = :n", "params": {":n": "Alice"}}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["columns"], json!(["id", "name"]));
    assert_eq!(b["rows"], json!([[1, "Alice"]]));
    assert_eq!(b["position"], "1/2");
    // Blobs travel as base64.
    api.execute(&["CREATE TABLE files (data BLOB)"])
        .await
        .unwrap();
    let (s, _) = api.post("/v1/execute", &json!({"statements": [{"sql": "INSERT INTO files VALUES (?)", "params": [{"base64": "AAH/"}]}]})).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        api.rows("SELECT data FROM files").await,
        vec![vec![json!({"base64": "AAH/"})]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--max-request-bytes", "1048576"]);
    let api = Api::new(&node.url);
    api.execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"])
        .await
        .unwrap();
    api.execute(&["INSERT INTO t VALUES (1, 'one')"])
        .await
        .unwrap();
    let before = api.status().await;

    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("malformed JSON", b"{\"statements\": [".to_vec(), 400, "bad_request", "EOF"),
        ("not JSON at all", b"hello".to_vec(), 400, "bad_request", "expected"),
        ("unknown field", br#"{"statements": [], "colour": "red"}"#.to_vec(), 400, "bad_request", "unknown field `colour`"),
        ("unknown field in a statement", br#"{"statements": [{"sql": "SELECT 1", "parms": []}]}"#.to_vec(), 400, "bad_request", "unknown field `parms`"),
        ("a syntax error", br#"{"statements": [{"sql": "INSRT INTO t VALUES (2, 'x')"}]}"#.to_vec(), 400, "sql_error", "syntax error"),
        ("an unknown table", br#"{"statements": [{"sql": "INSERT INTO nope VALUES (1)"}]}"#.to_vec(), 400, "sql_error", "no such table: nope"),
        ("a constraint violation", br#"{"statements": [{"sql": "INSERT INTO t VALUES (2, 'one')"}]}"#.to_vec(), 409, "constraint_violation", "UNIQUE constraint failed: t.v"),
        (
            "a transaction whose third statement fails",
            br#"{"statements": [{"sql": "INSERT INTO t VALUES (10, 'a')"}, {"sql": "UPDATE t SET v = 'changed' WHERE id = 1"}, {"sql": "INSERT INTO t VALUES (11, NULL)"}]}"#.to_vec(),
            409,
            "constraint_violation",
            "NOT NULL constraint failed: t.v",
        ),
        ("no statements", br#"{"statements": []}"#.to_vec(), 400, "bad_request", "at least one statement"),
        ("a wrong parameter count", br#"{"statements": [{"sql": "INSERT INTO t VALUES (?, ?)", "params": [1]}]}"#.to_vec(), 400, "bad_request", "takes 2 parameters"),
        ("BEGIN inside a request", br#"{"statements": [{"sql": "BEGIN"}]}"#.to_vec(), 400, "bad_request", "transaction control"),
        ("an array as a value", br#"{"statements": [{"sql": "SELECT ?", "params": [[1]]}]}"#.to_vec(), 400, "bad_request", "array"),
    ];
    for (what, body, status, code, needle) in cases {
        let (s, b) = api.post_raw("/v1/execute", body).await.unwrap();
        let (c, m) = error_of(&b);
        assert_eq!((s, c), (status, code), "{what}: {b}");
        assert!(m.contains(needle), "{what}: message {m:?} lacks {needle:?}");
    }
    // A write sent to the read endpoint.
    let (s, b) = api
        .post("/v1/query", &json!({"sql": "DELETE FROM t"}))
        .await
        .unwrap();
    assert_eq!((s, error_of(&b).0), (400, "not_read_only"), "{b}");
    // An unknown endpoint.
    let r = api
        .http
        .get(format!("{}/v2/nothing", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // A 100 MB body is refused with 413 as soon as its length is announced, without the node
    // waiting for or reading the body.
    let addr = api.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || oversized_request(&addr, 100 << 20))
        .await
        .unwrap();
    let status_line = answer.lines().next().unwrap_or_default().to_string();
    assert!(
        status_line.contains(" 413 "),
        "100 MB body: {status_line:?}\n{answer}"
    );
    assert!(answer.contains("payload_too_large"), "{answer}");

    // The node still serves, and nothing of the failures is there.
    assert_eq!(
        api.rows("SELECT id, v FROM t ORDER BY id").await,
        vec![vec![json!(1), json!("one")]]
    );
    let after = api.status().await;
    assert_eq!(
        after["last_lsn"], before["last_lsn"],
        "a failed request reached the log"
    );
    let (s, _) = api
        .execute(&["INSERT INTO t VALUES (2, 'two')"])
        .await
        .unwrap();
    assert_eq!(s, 200);
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("scribe_transaction_errors_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &[]);
    let api = Api::new(&node.url);
    api.execute(&["CREATE TABLE t (x)"]).await.unwrap();
    for _ in 0..5 {
        api.execute(&["INSERT INTO t VALUES (1)"]).await.unwrap();
    }
    let s = api.status().await;
    assert_eq!(s["node"], "n1");
    assert_eq!(s["role"], "primary");
    assert_eq!(s["term"], 1);
    assert_eq!(
        (
            s["last_lsn"].as_u64(),
            s["flushed_lsn"].as_u64(),
            s["applied_lsn"].as_u64()
        ),
        (Some(6), Some(6), Some(6))
    );
    assert_eq!(s["position"], "1/6");
    assert_eq!(s["accepting_writes"], true);
    let m = api.metrics().await;
    for needle in [
        "scribe_commits_total 6",
        "scribe_commit_batches_total 6",
        "scribe_log_fsync_seconds_bucket{le=\"+Inf\"} 6",
        "scribe_commit_batch_size_count 6",
        "scribe_log_size_bytes ",
        "scribe_http_requests_total{route=\"/v1/execute\",code=\"200\"} 6",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    let (status, _) = node.terminate();
    assert!(
        status.success(),
        "SIGTERM should stop the node cleanly, got {status}"
    );
    // After a clean stop SQLite holds everything: nothing to replay.
    let node = NodeProc::start("n1", dir.path(), &[]);
    let api = Api::new(&node.url);
    assert!(api.metrics().await.contains("scribe_replayed_records 0"));
    assert_eq!(
        api.rows("SELECT count(*) FROM t").await,
        vec![vec![json!(5)]]
    );
    // The directory belongs to n1: another name is refused.
    drop(node);
    let err = NodeProc::try_start("n2", dir.path(), &[])
        .err()
        .expect("a directory of another node must be refused");
    assert!(err.contains("belongs to node \"n1\""), "{err}");
}

/// Sends the headers of a POST announcing `len` bytes and returns the raw answer.
fn oversized_request(addr: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /v1/execute HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).expect("send headers");
    // No body byte is sent: the node must answer from the announced length alone. (Sending
    // bytes the node never reads would make its close a reset, which can swallow the answer.)
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
