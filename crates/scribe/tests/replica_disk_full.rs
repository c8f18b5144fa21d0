//! A replica whose disk fills: it stops applying, says so in its status and in the primary's,
//! keeps what it had (and serves reads from it), and catches up by itself once there is room;
//! meanwhile the primary's sync waits end at their timeout. Runs on a small tmpfs (needs root to
//! mount; the test says so and does nothing elsewhere).

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, start_primary, start_replica, wait_status, Api, Mount};
use serde_json::json;

async fn count(api: &Api) -> u64 {
    api.rows("SELECT count(*) FROM big").await[0][0]
        .as_u64()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_full_disk_stalls_says_so_and_catches_up_when_there_is_room() {
    let outer = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&outer.path().join("small"), "12m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); the full-disk test needs one");
        return;
    };
    let ballast = mount.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 4 << 20]).unwrap();

    let peer = format!("127.0.0.1:{}", free_port());
    let primary = start_primary(
        "p1",
        &outer.path().join("p1"),
        &peer,
        &["--sync-timeout", "2s", "--sync-replicas", "ANY 1 (*)"],
    );
    let replica = start_replica(
        "r1",
        &mount.0.join("r1"),
        &peer,
        &["--segment-bytes", "1048576"],
    );
    let p = Api::new(&primary.url);
    let r = Api::new(&replica.url);
    let (s, b) = p
        .execute(&["CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB)"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");

    // Write on the primary until the replica says it stopped applying.
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 64 << 10]);
    let mut written = 0u64;
    let started = Instant::now();
    let stalled = loop {
        let body = json!({"statements": [{"sql": "INSERT INTO big (id, data) VALUES (?, ?)", "params": [written, {"base64": blob}]}], "commit": "async"});
        let (s, b) = p.post("/v1/execute", &body).await.unwrap();
        assert_eq!(s, 200, "the primary's disk has room: {b}");
        written += 1;
        let st = r.status().await;
        if st["replication"]["state"] == "stalled" {
            break st;
        }
        assert!(
            written < 2000 && started.elapsed() < Duration::from_secs(120),
            "a 12 MiB disk must fill up; replica status {st}"
        );
    };
    let why = stalled["replication"]["stalled"].as_str().unwrap_or("");
    eprintln!("the replica stalled after {written} rows: {why}");
    assert!(
        why.to_lowercase().contains("full") || why.contains("space"),
        "{stalled}"
    );
    // The primary says so too.
    let pst = wait_status(
        &p,
        Duration::from_secs(10),
        "the primary shows r1 stalled",
        |st| {
            st["replicas"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|x| x["name"] == "r1" && x["stalled"].is_string())
            })
        },
    )
    .await;
    eprintln!("primary's view: {}", pst["replicas"]);

    // The replica keeps serving reads from what it had.
    let had = count(&r).await;
    assert!(
        had < written,
        "it cannot have everything: {had} of {written}"
    );

    // A sync write ends at its timeout (2 s), with what it reached, instead of waiting on.
    let asked = Instant::now();
    let body = json!({"statements": [{"sql": "INSERT INTO big (id, data) VALUES (?, x'01')", "params": [written]}], "commit": "sync"});
    let (s, b) = p.post("/v1/execute", &body).await.unwrap();
    let took = asked.elapsed();
    eprintln!("sync write while the replica is stalled: {s} after {took:?}: {b}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert_ne!(b["durability"], "sync", "{b}");
    written += 1;

    // Room again: it catches up by itself and streams.
    std::fs::remove_file(&ballast).unwrap();
    wait_status(
        &r,
        Duration::from_secs(60),
        "the replica applies again",
        |st| st["replication"]["state"] == "streaming" && st["replication"]["stalled"].is_null(),
    )
    .await;
    common::wait_caught_up(&p, &[&r], Duration::from_secs(60)).await;
    assert_eq!(count(&p).await, written);
    assert_eq!(count(&r).await, written);
    assert_eq!(common::checksum(&r).await, common::checksum(&p).await);
    wait_status(
        &p,
        Duration::from_secs(10),
        "the primary no longer shows r1 stalled",
        |st| {
            st["replicas"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|x| x["name"] == "r1" && x["stalled"].is_null())
            })
        },
    )
    .await;
    drop(replica);
    drop(primary);
}
