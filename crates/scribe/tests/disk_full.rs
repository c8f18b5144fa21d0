//! A full disk: the node answers a clear error, keeps what it acknowledged, keeps serving reads,
//! and takes writes again once there is room. Runs on a small tmpfs (needs root to mount; the
//! test says so and does nothing elsewhere).

mod common;

use base64::Engine as _;
use common::{Api, Mount, NodeProc};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let outer = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&outer.path().join("small"), "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); the full-disk test needs one");
        return;
    };
    // Ballast to delete later, to make room again.
    let ballast = mount.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();
    let data = mount.0.join("n1");
    let node = NodeProc::start("n1", &data, &["--segment-bytes", "1048576"]);
    let api = Api::new(&node.url);
    let (s, b) = api
        .execute(&["CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB)"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 64 << 10]);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..400 {
        let body = json!({"statements": [{"sql": "INSERT INTO big (id, data) VALUES (?, ?)", "params": [i, {"base64": blob}]}]});
        let (s, b) = api.post("/v1/execute", &body).await.unwrap();
        if s == 200 {
            acked.push(i);
        } else {
            failure = Some((s, b, i));
            break;
        }
    }
    let (status, body, failed_id) = failure.expect("an 8 MiB disk must fill up");
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        (status == 507 && code == "disk_full")
            || (status == 500 && code == "outcome_unknown")
            || (status == 503 && code == "unavailable"),
        "a full disk should answer 507 disk_full (or, if the fsync failed and writes had to stop, 500 outcome_unknown): {status} {body}"
    );
    assert!(
        message.to_lowercase().contains("full") || message.contains("space"),
        "{message}"
    );
    eprintln!("disk full after {} rows: {status} {message}", acked.len());
    // Reads go on.
    let n = api.rows("SELECT count(*) FROM big").await[0][0]
        .as_u64()
        .unwrap();
    assert_eq!(n, acked.len() as u64);

    // Make room; writes work again (after a restart, if the node had stopped taking writes).
    std::fs::remove_file(&ballast).unwrap();
    let st = api.status().await;
    let node = if st["accepting_writes"] == true {
        node
    } else {
        node.kill9();
        NodeProc::start("n1", &data, &["--segment-bytes", "1048576"])
    };
    let api = Api::new(&node.url);
    let (s, b) = api
        .execute(&["INSERT INTO big (id, data) VALUES (100000, x'00')"])
        .await
        .unwrap();
    assert_eq!(s, 200, "after making room: {b}");
    // And after a crash every acknowledged row is there.
    node.kill9();
    let node = NodeProc::start("n1", &data, &["--segment-bytes", "1048576"]);
    let api = Api::new(&node.url);
    let ids: Vec<i64> = api
        .rows("SELECT id FROM big ORDER BY id")
        .await
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    // Every acknowledged row, the one written after making room, and — only when its answer was
    // "outcome unknown" (the log had it durable when SQLite's commit failed) — the failed one.
    let mut expected = acked.clone();
    if code == "outcome_unknown" && ids.contains(&failed_id) {
        expected.push(failed_id);
    } else {
        assert!(
            !ids.contains(&failed_id),
            "a write refused as {code} was kept"
        );
    }
    expected.push(100000);
    assert_eq!(ids, expected);
    drop(node);
}
