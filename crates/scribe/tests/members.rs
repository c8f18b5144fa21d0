//! Membership at run time: a fourth node started with `--join` (through a replica's URL) is
//! added to the running cluster by itself — a Raft voter, seeded with the data, following the
//! primary — and takes part in a failover; `scribe members remove` takes a member out again;
//! the mistakes (removing the primary, adding a name twice, adding a node that is not running)
//! are refused with a clear error and change nothing.

mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::*;
use common::*;
use serde_json::{json, Value};

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m.as_str().or(m["name"].as_str()).unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

async fn wait_for(api: &Api, what: &str, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let st = api.status().await;
        if f(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_a_running_cluster_takes_part_in_a_failover_and_is_removed() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let primary = c.api(p).unwrap();
    for k in 0..50 {
        insert(&primary, &format!("before-{k}")).await;
    }
    let replica = (0..3).find(|&i| i != p).unwrap();
    let via = c.api(replica).unwrap().url;

    // n4 joins through a replica.
    let peer4 = format!("127.0.0.1:{}", scribe_testkit::free_port());
    let n4 = NodeProc::start(
        "n4",
        &c.dir.path().join("n4"),
        &["--peer", &peer4, "--join", &via, "--commit", "async"],
    );
    let n4_api = Api::new(&n4.url);
    let st = wait_for(
        &primary,
        "n4 a voting member",
        Duration::from_secs(30),
        |s| {
            names(&s["cluster"]["raft"]["voters"]).contains(&"n4".to_string())
                && names(&s["cluster"]["members"]).contains(&"n4".to_string())
        },
    )
    .await;
    assert_eq!(names(&st["cluster"]["raft"]["voters"]).len(), 4, "{st}");
    let flushed = primary.status().await["flushed_lsn"].as_u64().unwrap();
    wait_for(
        &n4_api,
        "n4 follows the primary with the data",
        Duration::from_secs(30),
        |s| {
            s["role"] == "replica"
                && s["replication"]["primary"] == c.names[p].as_str()
                && s["applied_lsn"].as_u64() >= Some(flushed)
        },
    )
    .await;
    assert_eq!(keys_on(&n4_api).await, keys_on(&primary).await);

    // Asked again, the add is done already.
    let url = primary.url.clone();
    let (code, out, err) = scribe_cli(&["members", "add", &format!("n4={peer4}"), "--url", &url]);
    assert_eq!(code, 0, "a repeated add: {out}{err}");

    // Mistakes, each refused and changing nothing.
    let (code, out, err) = scribe_cli(&["members", "remove", &c.names[p], "--url", &url]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("membership change refused") && err.contains("primary"),
        "{err}"
    );
    let (code, _, err) = scribe_cli(&["members", "add", &format!("n2={peer4}"), "--url", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("membership change refused"), "{err}");
    let nobody = format!("127.0.0.1:{}", scribe_testkit::free_port());
    let (code, _, err) = scribe_cli(&["members", "add", &format!("n5={nobody}"), "--url", &via]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("start it first") && err.contains("--join"),
        "{err}"
    );
    let st = primary.status().await;
    assert_eq!(
        names(&st["cluster"]["members"]),
        vec!["n1", "n2", "n3", "n4"],
        "{st}"
    );
    assert_eq!(names(&st["cluster"]["raft"]["voters"]).len(), 4, "{st}");

    // A failover with four voters: the primary dies, one of the other three takes over.
    c.kill(p);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_url = loop {
        let mut found = None;
        for api in (0..3)
            .filter_map(|i| c.api(i))
            .chain(std::iter::once(Api::new(&n4.url)))
        {
            let st = api.status().await;
            if st["role"] == "primary" && st["accepting_writes"] == true {
                found = Some(api.url.clone());
            }
        }
        if let Some(u) = found {
            break u;
        }
        assert!(Instant::now() < deadline, "no new primary among n2, n3, n4");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_api = Api::new(&new_url);
    let (code, body) = new_api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES ('after')"}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    // Remove a member that is not the primary (n4, unless it became the primary).
    let st = new_api.status().await;
    let victim = if st["node"] == "n4" {
        c.names[replica].clone()
    } else {
        "n4".to_string()
    };
    let (code, out, err) = scribe_cli(&["members", "remove", &victim, "--url", &new_url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("removed {victim}")), "{out}");
    let st = wait_for(
        &new_api,
        "the removal in the status",
        Duration::from_secs(10),
        |s| {
            !names(&s["cluster"]["members"]).contains(&victim)
                && !names(&s["cluster"]["raft"]["voters"]).contains(&victim)
        },
    )
    .await;
    assert_eq!(names(&st["cluster"]["raft"]["voters"]).len(), 3, "{st}");
    // The removed member keeps running, but no longer streams from the primary, so it can
    // never count for a `*` sync set.
    wait_for(
        &new_api,
        "the removed member's stream ends",
        Duration::from_secs(10),
        |s| {
            !s["replicas"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["name"] == victim.as_str() && r["state"] != "disconnected")
            })
        },
    )
    .await;
    drop(n4);
}
