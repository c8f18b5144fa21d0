//! Crash safety of the real `scribe node` process: SIGKILL at random moments under concurrent
//! writes, then a restart; nothing acknowledged may be missing and no transaction half-applied.
//! Also: a damaged log stops start-up with a clear error.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{seed, Api, NodeProc};
use serde_json::json;

const CLIENTS: i64 = 8;

/// One acknowledged transaction: (round, client, seq).
type Acked = Arc<Mutex<BTreeSet<(i64, i64, i64)>>>;

async fn write_until_killed(api: Api, round: i64, client: i64, acked: Acked) {
    for seq in 0.. {
        // Three statements, one transaction: a row in `acked` and two in `parts` with its key.
        let key = format!("{round}-{client}-{seq}");
        let body = json!({ "statements": [
            { "sql": "INSERT INTO acked (key, round, client, seq) VALUES (?, ?, ?, ?)", "params": [key, round, client, seq] },
            { "sql": "INSERT INTO parts (key, part) VALUES (?, 1)", "params": [key] },
            { "sql": "INSERT INTO parts (key, part) VALUES (?, 2)", "params": [key] },
        ]});
        match api.post("/v1/execute", &body).await {
            Ok((200, _)) => {
                acked.lock().unwrap().insert((round, client, seq));
            }
            Ok((status, body)) => panic!("write refused with {status}: {body}"),
            Err(_) => return, // the node died under us
        }
    }
}

async fn check(api: &Api, acked: &BTreeSet<(i64, i64, i64)>, round: i64) {
    let rows = api.rows("SELECT round, client, seq FROM acked").await;
    let present: BTreeSet<(i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].as_i64().unwrap(),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    let missing: Vec<_> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} acknowledged transactions lost, first {:?}",
        missing.len(),
        missing.first()
    );
    // Atomicity: every transaction present has both its parts, and no part exists without it.
    let half = api
        .rows(
            "SELECT a.key, count(p.part) FROM acked a LEFT JOIN parts p ON p.key = a.key \
             GROUP BY a.key HAVING count(p.part) != 2",
        )
        .await;
    assert!(
        half.is_empty(),
        "round {round}: half-applied transactions {half:?}"
    );
    let orphans = api
        .rows("SELECT count(*) FROM parts p WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.key = p.key)")
        .await;
    assert_eq!(
        orphans[0][0], 0,
        "round {round}: parts without their transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_writes_loses_nothing_acknowledged() {
    let rounds: i64 = std::env::var("SCRIBE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut rng = fastrand::Rng::with_seed(seed("crash"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    // Small segments so that kills also land around segment rotation.
    let extra = ["--segment-bytes", "65536"];
    let node = NodeProc::start("n1", &data, &extra);
    let api = Api::new(&node.url);
    let (status, body) = api
        .execute(&[
            "CREATE TABLE acked (key TEXT PRIMARY KEY, round INTEGER, client INTEGER, seq INTEGER)",
            "CREATE TABLE parts (key TEXT NOT NULL, part INTEGER NOT NULL)",
            "CREATE INDEX parts_key ON parts (key)",
        ])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut node = Some(node);
    let acked: Acked = Arc::default();
    let mut total_before = 0;
    for round in 0..rounds {
        let api = Api::new(&node.as_ref().unwrap().url);
        let writers: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(write_until_killed(api.clone(), round, c, acked.clone())))
            .collect();
        let kill_after = Duration::from_millis(rng.u64(20..500));
        tokio::time::sleep(kill_after).await;
        // On a loaded machine the first writes of a round can take longer than a short kill
        // delay: kill only once this round has had a write acknowledged, so that every round
        // checks something.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() <= total_before && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.take().unwrap().kill9();
        for w in writers {
            w.await.unwrap();
        }
        let restarted = NodeProc::start("n1", &data, &extra);
        let api = Api::new(&restarted.url);
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            acked_now.len() > total_before,
            "round {round}: no write was acknowledged in 10 s"
        );
        total_before = acked_now.len();
        check(&api, &acked_now, round).await;
        node = Some(restarted);
    }
    eprintln!("{rounds} rounds, {total_before} acknowledged transactions, none lost");
}

/// Creates `t` and inserts rows `0..rows` one transaction each, stops the node cleanly and
/// returns its last log segment.
async fn fill_and_stop(data: &std::path::Path, rows: i64) -> std::path::PathBuf {
    let node = NodeProc::start("n1", data, &[]);
    let api = Api::new(&node.url);
    let (status, _) = api
        .execute(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
        .await
        .unwrap();
    assert_eq!(status, 200);
    for i in 0..rows {
        let body = json!({"statements": [{"sql": "INSERT INTO t (id, v) VALUES (?, 'x')", "params": [i]}]});
        let (status, _) = api.post("/v1/execute", &body).await.unwrap();
        assert_eq!(status, 200);
    }
    let (status, _) = node.terminate();
    assert!(status.success(), "clean stop: {status}");
    std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_of_the_log_stops_start_up_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let seg = fill_and_stop(&data, 50).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    // Start-up must refuse, even though SQLite itself is intact: the log is the source of truth.
    let err = NodeProc::try_start("n1", &data, &[])
        .err()
        .expect("start-up must fail on a corrupt log");
    assert!(
        err.contains(&seg.display().to_string()),
        "error does not name the segment: {err}"
    );
    assert!(
        err.contains("offset"),
        "error does not name the offset: {err}"
    );
    assert!(err.contains("corrupt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_truncated_at_a_random_byte_recovers_to_its_last_whole_record() {
    let mut rng = fastrand::Rng::with_seed(seed("truncate"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let seg = fill_and_stop(&data, 100).await;
    // Simulate a crash that cut the log: drop SQLite too, so the log alone decides what exists.
    std::fs::remove_dir_all(data.join("db")).unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let cut = rng.usize(bytes.len() / 2..bytes.len());
    std::fs::write(&seg, &bytes[..cut]).unwrap();
    let node = NodeProc::start("n1", &data, &[]);
    let api = Api::new(&node.url);
    let ids: Vec<i64> = api
        .rows("SELECT id FROM t ORDER BY id")
        .await
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    // A prefix of the inserts survives, in order, with no gap; the status agrees.
    assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<_>>());
    assert!(ids.len() < 100);
    let status = api.status().await;
    assert_eq!(status["applied_lsn"], ids.len() as u64 + 1);
    // And the node takes writes again from there.
    let (code, body) = api
        .execute(&["INSERT INTO t (id, v) VALUES (1000, 'after')"])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
}
