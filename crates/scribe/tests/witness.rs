//! The witness (`--witness`), end to end: two data nodes and a witness in cluster mode, the
//! witness marked `w=HOST:PORT/witness` in every node's `--cluster` list. The witness votes in
//! the control plane but holds no data: data requests sent to it get `421 witness` naming the
//! primary, and nothing changes. It gives Raft its majority, so the cluster survives the loss of
//! either data node. A witness flag or mark that disagrees with the list is refused.

mod cluster;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster::*;
use common::*;
use serde_json::{json, Value};

/// Semi-sync with the one other data node as its sync replica; a data node left alone answers
/// its writes after 1 s, reported degraded (a witness never acknowledges, so it cannot help).
const MODE: &[&str] = &[
    "--commit",
    "semi-sync",
    "--sync-replicas",
    "ANY 1 (*)",
    "--on-sync-timeout",
    "degrade",
    "--sync-timeout",
    "1s",
];

const W: usize = 2;

/// Inserts `keys` on the primary `api` with its replica `replica` up: each acknowledged by it.
async fn insert_replicated(
    api: &Api,
    replica: &str,
    keys: &[String],
    acked: &mut BTreeSet<String>,
) {
    for k in keys {
        let d = insert(api, k).await;
        assert_eq!(d["degraded"], false, "{k}: {d}");
        assert_eq!(d["acked_by"], json!([replica]), "{k}: {d}");
        acked.insert(k.clone());
    }
}

/// What a user checks when they run 2 data nodes and a witness: the witness says it is one and
/// refuses data requests naming the primary (nothing written); the primary's loss promotes the
/// other data node with every acknowledged row, the old primary rejoins it, and the loss of that
/// second data node promotes the first again — either data node may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_and_a_witness_survive_the_loss_of_either_data_node() {
    let _serial = SERIAL.lock().await;
    // (a) Bootstrap: a data node is primary, the other catches up.
    let (mut c, p) = Cluster::start_with_witness(MODE).create_table().await;
    assert_ne!(p, W, "the witness was made primary");
    let q = 1 - p;
    let (pn, qn) = (c.names[p].clone(), c.names[q].clone());
    let mut acked = BTreeSet::new();
    let keys: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    insert_replicated(&c.api(p).unwrap(), &qn, &keys, &mut acked).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    assert_eq!(keys_on(&c.api(q).unwrap()).await, acked);

    let witness = c.api(W).unwrap();
    let st = witness.status().await;
    assert_eq!(st["role"], "witness", "{st}");
    assert_eq!(st["primary"], pn.as_str(), "{st}");
    assert_eq!(st["accepting_writes"], false, "{st}");
    assert_eq!(st["applied_lsn"], 0, "the witness holds data: {st}");
    assert!(st.get("replication").is_none(), "the witness follows: {st}");
    let me = st["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "w")
        .cloned()
        .unwrap();
    assert_eq!(me["role"], "witness", "{st}");
    assert_eq!(me["http_url"], witness.url.as_str(), "{st}");
    assert!(
        witness.metrics().await.contains("\nscribe_is_witness 1\n"),
        "metrics"
    );
    assert!(c
        .api(p)
        .unwrap()
        .metrics()
        .await
        .contains("\nscribe_is_witness 0\n"));

    // (b) A write, a read and a transaction sent to the witness: 421 witness, naming the primary.
    let primary_url = c.nodes[p].as_ref().unwrap().url.clone();
    let refused = |what: &str, code: u16, body: &Value| {
        assert_eq!(code, 421, "{what}: {body}");
        let e = &body["error"];
        assert_eq!(e["code"], "witness", "{what}: {body}");
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains("w is a witness")
                && m.contains("holds no data")
                && m.contains(&format!("the primary {pn} at {primary_url}")),
            "{what}: {m}"
        );
        assert_eq!(e["primary"]["url"], primary_url.as_str(), "{what}: {body}");
    };
    let (code, body) = witness
        .execute(&["INSERT INTO t (k) VALUES ('via-witness')"])
        .await
        .unwrap();
    refused("a write", code, &body);
    let (code, body) = witness
        .post("/v1/query", &json!({"sql": "SELECT count(*) FROM t"}))
        .await
        .unwrap();
    refused("a read", code, &body);
    let (code, body) = witness
        .post(
            "/v1/query",
            &json!({"sql": "SELECT count(*) FROM t", "consistency": "strong"}),
        )
        .await
        .unwrap();
    refused("a strong read", code, &body);
    let (code, body) = witness.post("/v1/tx", &json!({})).await.unwrap();
    refused("a transaction", code, &body);
    assert_eq!(keys_on(&c.api(p).unwrap()).await, acked, "nothing changed");

    // (c) SIGKILL the primary: the other data node is promoted with every acknowledged row.
    c.kill(p);
    let (np, term) = c.primary(Duration::from_secs(15)).await;
    assert_eq!(np, q, "the other data node was not promoted");
    assert_eq!(keys_on(&c.api(q).unwrap()).await, acked);
    let d = insert(&c.api(q).unwrap(), "c0").await;
    assert_eq!(
        d["degraded"], true,
        "alone, semi-sync cannot be reached: {d}"
    );
    acked.insert("c0".into());
    let st = witness.status().await;
    assert_eq!(st["primary"], qn.as_str(), "{st}");

    // (d) The old primary restarts and follows the new one.
    c.restart(p);
    c.caught_up(q, Duration::from_secs(30)).await;
    let keys: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    insert_replicated(&c.api(q).unwrap(), &pn, &keys, &mut acked).await;
    c.caught_up(q, Duration::from_secs(20)).await;
    assert_eq!(keys_on(&c.api(p).unwrap()).await, acked);

    // (e) Kill the other data node: the first is promoted again and takes writes.
    c.kill(q);
    let (np, term2) = c.primary(Duration::from_secs(15)).await;
    assert_eq!(np, p, "the first data node was not promoted again");
    assert!(term2 > term, "term {term2} after {term}");
    assert_eq!(keys_on(&c.api(p).unwrap()).await, acked);
    insert(&c.api(p).unwrap(), "e0").await;
    acked.insert("e0".into());
    assert_eq!(keys_on(&c.api(p).unwrap()).await, acked);
    let st = witness.status().await;
    assert_eq!(st["primary"], pn.as_str(), "{st}");
}

/// What a user checks after a typo: `--witness` on a node whose `--cluster` entry is not marked
/// (or a marked entry without `--witness`) does not start; it exits with a message that names the
/// fix, and creates nothing in its data directory.
#[test]
fn a_witness_flag_that_disagrees_with_the_list_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let unmarked = format!("n1={},n2={},w={}", peers[0], peers[1], peers[2]);
    let data = dir.path().join("w");
    let e = NodeProc::try_start(
        "w",
        &data,
        &["--peer", &peers[2], "--cluster", &unmarked, "--witness"],
    )
    .err()
    .expect("a node started with --witness on an unmarked entry");
    assert!(
        e.contains("was started with --witness, but its --cluster entry")
            && e.contains(&format!("mark it w={}/witness", peers[2])),
        "{e}"
    );
    assert!(
        !data.exists(),
        "the refused node created its data directory"
    );

    let marked = format!("{unmarked}/witness");
    let e = NodeProc::try_start("w", &data, &["--peer", &peers[2], "--cluster", &marked])
        .err()
        .expect("a node whose entry is marked, started without --witness");
    assert!(
        e.contains("marks this node (w) a witness") && e.contains("add --witness"),
        "{e}"
    );
    assert!(
        !data.exists(),
        "the refused node created its data directory"
    );
}

/// What a user checks when one node's list lacks a witness mark the others have: the others
/// refuse its control-plane connections and log why (the lists disagree on the `/witness`
/// marks), the two that agree form the cluster, and the odd one never joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_lists_disagree_on_witness_marks_refuse_each_other() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let unmarked = format!("n1={},n2={},w={}", peers[0], peers[1], peers[2]);
    let marked = format!("{unmarked}/witness");
    let start = |name: &str, i: usize, list: &str, extra: &[&str]| {
        let mut args = vec!["--peer", &peers[i], "--cluster", list];
        args.extend_from_slice(extra);
        NodeProc::start(name, &dir.path().join(name), &args)
    };
    let n1 = start("n1", 0, &marked, &[]);
    let w = start("w", 2, &marked, &["--witness"]);
    // n2 thinks w holds data.
    let n2 = start("n2", 1, &unmarked, &[]);
    let st = wait_status(
        &Api::new(&n1.url),
        Duration::from_secs(20),
        "n1 primary",
        |s| s["role"] == "primary" && s["accepting_writes"] == true,
    )
    .await;
    assert_eq!(st["cluster"]["raft"]["leader"], "n1", "{st}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n2_status = Api::new(&n2.url).status().await;
    assert_eq!(n2_status["role"], "replica", "{n2_status}");
    assert!(
        n2_status["primary"].is_null(),
        "n2 joined a cluster: {n2_status}"
    );
    assert_ne!(n2_status["cluster_id"], st["cluster_id"], "{n2_status}");
    drop(w);
    drop(n2);
    let (_, log) = n1.terminate();
    // n2 refuses n1's connections (and n1 n2's, once n2 stands for election): n1 logs why.
    assert!(
        log.contains("disagree on which members are witnesses") && log.contains("(n2)"),
        "n1's log does not say why n2 and it refuse each other:\n{log}"
    );
}
