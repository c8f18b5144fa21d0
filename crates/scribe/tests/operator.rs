//! An operator's mistakes on a healthy three-node cluster: each gets a clear error and changes
//! nothing — the same primary in the same term keeps taking writes. A switchover to a node that
//! does not exist, to the primary itself, or to a replica that is not keeping up; a forced
//! promotion while the primary is alive; a node started with a `--cluster` list that disagrees
//! with the others.

mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::*;
use common::*;
use serde_json::{json, Value};

/// The primary's name and term as `api` reports them, and whether it takes writes.
async fn who(c: &Cluster) -> (String, u64) {
    let (p, term) = c.primary(Duration::from_secs(10)).await;
    (c.names[p].clone(), term)
}

async fn unchanged(c: &Cluster, before: &(String, u64), what: &str) {
    let now = who(c).await;
    assert_eq!(&now, before, "{what} changed the primary or the term");
    let (p, _) = c.primary(Duration::from_secs(5)).await;
    let st = c.api(p).unwrap().status().await;
    assert!(
        st["cluster"]["switchover"].is_null(),
        "{what} left a switchover pending: {st}"
    );
    insert(&c.api(p).unwrap(), &format!("after {what}")).await;
}

fn expect_refusal(code: u16, body: &Value, error: &str, says: &str) {
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], error, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "the message should say {says:?}: {msg}");
}

/// `scribe ARGS...`: exit code and stderr.
fn scribe(args: &[&str]) -> (i32, String) {
    let (code, _, err) = scribe_cli(args);
    (code, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_switchovers_and_promotions_are_refused_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let (c, p) = Cluster::with_table(&["--commit", "async"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let before = who(&c).await;
    let api = c.api(p).unwrap();
    let replica = (0..3).find(|&i| i != p).unwrap();
    let replica_name = c.names[replica].clone();

    // A switchover to a member that does not exist, and to the primary itself.
    let (code, body) = api
        .post("/v1/switchover", &json!({"to": "n9"}))
        .await
        .unwrap();
    expect_refusal(
        code,
        &body,
        "switchover_refused",
        "no member is called \"n9\"",
    );
    unchanged(&c, &before, "a switchover to an unknown node").await;
    let (code, body) = api
        .post("/v1/switchover", &json!({"to": before.0}))
        .await
        .unwrap();
    expect_refusal(code, &body, "switchover_refused", "is the primary already");
    unchanged(&c, &before, "a switchover to the primary").await;

    // A forced promotion while the primary is alive: refused by the CLI without --force, and by
    // every node with it.
    let (code, err) = scribe(&["promote", &replica_name, "--url", &api.url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    for i in 0..3 {
        let url = c.api(i).unwrap().url;
        let (code, err) = scribe(&["promote", &replica_name, "--force", "--url", &url]);
        assert_eq!(code, 1, "promote --force through {}: {err}", c.names[i]);
        assert!(
            err.contains("the cluster is healthy") && err.contains("scribe switchover"),
            "{err}"
        );
    }
    let (code, body) = api
        .post("/v1/promote", &json!({"to": replica_name}))
        .await
        .unwrap();
    expect_refusal(code, &body, "promotion_refused", "\"force\": true");
    unchanged(&c, &before, "promote --force on a healthy cluster").await;

    // A switchover to a replica that is not keeping up (frozen, with writes it has not got):
    // refused after a bounded wait, during which writes keep flowing.
    signal(c.nodes[replica].as_ref().unwrap(), libc::SIGSTOP);
    for k in 0..5 {
        insert(&api, &format!("lagging-{k}")).await;
    }
    let started = Instant::now();
    let switch = tokio::spawn({
        let api = Api::new(&api.url);
        let to = replica_name.clone();
        async move {
            api.post("/v1/switchover", &json!({"to": to}))
                .await
                .unwrap()
        }
    });
    // Writes are not paused while the switchover waits for the lagging replica.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let (code, body) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES ('during')"}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a write waited {:?} while the switchover checked the lagging replica",
        t.elapsed()
    );
    let (code, body) = switch.await.unwrap();
    expect_refusal(code, &body, "switchover_refused", "is lagging");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    signal(c.nodes[replica].as_ref().unwrap(), libc::SIGCONT);
    unchanged(&c, &before, "a switchover to a lagging replica").await;
}

/// A node started with a `--cluster` list that disagrees with the others (another member, so
/// another cluster) is refused by them, says so in its log naming both lists, and the cluster
/// goes on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_disagreeing_cluster_list_is_refused() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let before = who(&c).await;
    let other = (0..3).find(|&i| i != p).unwrap();
    c.kill(other);
    // The same node, restarted on a fresh directory with a list naming a fourth member.
    let list = format!("{},n4=127.0.0.1:{}", c.list(), scribe_testkit::free_port());
    let dir = c.dir.path().join("stranger");
    let stranger = NodeProc::start(
        &c.names[other],
        &dir,
        &["--peer", &c.peers[other], "--cluster", &list],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = Api::new(&stranger.url).status().await;
    assert_ne!(st["role"], "primary", "{st}");
    let (_, stderr) = stranger.terminate();
    assert!(
        stderr.contains("disagrees with the others"),
        "the refused node's log should say why: {stderr}"
    );
    unchanged(&c, &before, "a node with another --cluster list").await;
}

/// When automatic failover will not promote — here the sync set names a member that is gone
/// (`FIRST 1 (n2, n9)` needs both to be asked), so after the primary dies nobody provably holds
/// every acknowledged write — the cluster stays without a primary until an operator forces one:
/// `scribe promote --force` promotes the named node, says loudly what may be lost, and writes
/// resume there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_force_replaces_a_dead_primary_that_failover_will_not() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&[
        "--commit",
        "semi-sync",
        "--sync-replicas",
        "FIRST 1 (n2, n9)",
        "--sync-timeout",
        "1s",
    ])
    .await;
    assert_eq!(c.names[p], "n1", "the first primary");
    c.caught_up(p, Duration::from_secs(20)).await;
    let (_, term) = who(&c).await;
    c.kill(p);
    // Automatic failover refuses (n9 cannot be asked): still no primary after 4 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for i in [1, 2] {
        let st = c.api(i).unwrap().status().await;
        assert_ne!(st["role"], "primary", "{st}");
        assert_eq!(st["term"].as_u64(), Some(term), "{st}");
    }
    let url = c.api(2).unwrap().url;
    let (code, stdout, stderr) = scribe_cli(&["promote", "n2", "--force", "--url", &url]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("n2 is the primary now"), "{stdout}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("n9 could not be asked"),
        "the warning says what may be lost: {stderr}"
    );
    let (new, new_term) = c.primary(Duration::from_secs(10)).await;
    assert_eq!(c.names[new], "n2");
    assert_eq!(new_term, term + 1);
    let st = c.api(new).unwrap().status().await;
    let failovers = st["cluster"]["failovers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        failovers.iter().any(|f| f["kind"] == "forced"),
        "the failover history records a forced promotion: {st}"
    );
}

/// A cluster that lost its majority for good: two of three members are gone, the survivor
/// cannot commit anything — `promote --force` says so and names the way out — and is re-formed
/// around itself with `--reform-cluster`: primary again, in a term above its log's, with its
/// data, its history recording the forced re-formation; an old member started again with its old
/// list and data is not let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_of_a_lost_majority_is_reformed_into_a_cluster_of_its_own() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    let api = c.api(p).unwrap();
    for k in 0..20 {
        insert(&api, &format!("kept-{k}")).await;
    }
    c.caught_up(p, Duration::from_secs(20)).await;
    let (_, term) = who(&c).await;
    let old_id = api.status().await["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = (0..3).find(|&i| i != p).unwrap();
    let q = (0..3).find(|&i| i != p && i != s).unwrap();
    c.kill(p);
    c.kill(q);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let name = c.names[s].clone();
    let url = c.api(s).unwrap().url;
    let (code, err) = scribe(&["promote", &name, "--force", "--url", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("needs its majority") && err.contains("--reform-cluster"),
        "{err}"
    );

    // Re-form it around the survivor: the flag must name the cluster it re-forms.
    let (_, _) = c.nodes[s].take().unwrap().terminate();
    let one = format!("{name}={}", c.peers[s]);
    let dir = c.dir.path().join(&name);
    let args = |id: &str| {
        vec![
            "--peer".to_string(),
            c.peers[s].clone(),
            "--cluster".into(),
            one.clone(),
            "--reform-cluster".into(),
            id.to_string(),
            "--commit".into(),
            "async".into(),
        ]
    };
    let wrong: Vec<String> = args("not-this-cluster");
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let e = NodeProc::try_start(&name, &dir, &wrong)
        .err()
        .expect("refused");
    assert!(
        e.contains("belongs to cluster") && e.contains(&old_id),
        "{e}"
    );
    let right: Vec<String> = args(&old_id);
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let reformed = NodeProc::start(&name, &dir, &right);
    let reformed_api = Api::new(&reformed.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = reformed_api.status().await;
        if st["role"] == "primary" && st["accepting_writes"] == true {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the re-formed node is not primary: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(st["term"].as_u64().unwrap() > term, "{st}");
    let events = st["cluster"]["failovers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.last().unwrap()["kind"], "forced", "{st}");
    let keys = keys_on(&reformed_api).await;
    assert!(
        (0..20).all(|k| keys.contains(&format!("kept-{k}"))),
        "{keys:?}"
    );
    let (code, body) = reformed_api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES ('after-reform')"}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(c.dir.path().join(&name).read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("control.before-reform-")));
    let new_term = st["term"].as_u64().unwrap();
    // Started again with the flag still given: nothing more happens.
    let (_, _) = reformed.terminate();
    let reformed = NodeProc::start(&name, &dir, &right);
    let reformed_api = Api::new(&reformed.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = reformed_api.status().await;
        if st["role"] == "primary" && st["accepting_writes"] == true {
            assert_eq!(st["term"].as_u64(), Some(new_term), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not primary after a restart: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(keys_on(&reformed_api).await.contains("after-reform"));
    assert!(!dir.join("reform.pending").exists());

    // The old primary, back with its old list and data, is not let in.
    c.restart(p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = reformed_api.status().await;
    assert_eq!(st["role"], "primary", "{st}");
    assert!(
        !st["replicas"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["name"] == c.names[p].as_str() && r["state"] != "disconnected")),
        "the old primary streams from the re-formed cluster: {st}"
    );
    let old = c.api(p).unwrap().status().await;
    assert_ne!(old["accepting_writes"], true, "{old}");
}

/// A re-formation interrupted right after its first step (the marker written, nothing else
/// changed — as a crash there leaves it) is finished by the next start: the node comes up as the
/// primary of the new cluster, in the marker's term and under its id, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_reformation_resumes_at_the_next_start() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    let api = c.api(p).unwrap();
    insert(&api, "kept").await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let old_id = api.status().await["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = (0..3).find(|&i| i != p).unwrap();
    for i in (0..3).filter(|&i| i != s) {
        c.kill(i);
    }
    let (_, _) = c.nodes[s].take().unwrap().terminate();
    let name = c.names[s].clone();
    let one = vec![(name.clone(), c.peers[s].clone())];
    let derived =
        scribe_node::control::ControlConfig::derived_cluster_id(&one, &Default::default());
    let new_id = format!("{derived}.r40");
    let dir = c.dir.path().join(&name);
    std::fs::write(dir.join("reform.pending"), format!("{new_id} 40\n")).unwrap();
    let list = format!("{name}={}", c.peers[s]);
    let node = NodeProc::start(
        &name,
        &dir,
        &[
            "--peer",
            &c.peers[s],
            "--cluster",
            &list,
            "--reform-cluster",
            &old_id,
            "--commit",
            "async",
        ],
    );
    let node_api = Api::new(&node.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = node_api.status().await;
        if st["role"] == "primary" && st["accepting_writes"] == true {
            break st;
        }
        assert!(Instant::now() < deadline, "not primary: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st["term"].as_u64(), Some(40), "{st}");
    assert_eq!(st["cluster_id"].as_str(), Some(new_id.as_str()), "{st}");
    assert!(keys_on(&node_api).await.contains("kept"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.join("reform.pending").exists() {
        assert!(
            Instant::now() < deadline,
            "the marker outlived the re-formation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
