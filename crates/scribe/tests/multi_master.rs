//! Multi-master with real processes: three `scribe node --multi-master` processes that each take
//! writes, stream their logs to one another and converge — while one of them is SIGKILLed and
//! restarted, and across a real network partition (network namespaces) for the counter and
//! last-writer-wins checks.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use scribe_testkit::netns::Net;
use serde_json::{json, Value};

/// netns tests of this binary one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POLICY: &str = "counters=merge(hits=sum, best=max)";

/// Three masters n1, n2, n3.
struct Masters {
    dir: tempfile::TempDir,
    peers: Vec<String>,
    nodes: Vec<Option<NodeProc>>,
    net: Option<Net>,
    extra: Vec<String>,
}

impl Masters {
    fn start(net: Option<Net>, extra: &[&str]) -> Masters {
        Masters::start_first(3, net, extra)
    }

    /// The three masters' settings, with only the first `count` started.
    fn start_first(count: usize, net: Option<Net>, extra: &[&str]) -> Masters {
        let peers = (0..3)
            .map(|i| match &net {
                Some(net) => format!("{}:6480", net.addr(i)),
                None => format!("127.0.0.1:{}", free_port()),
            })
            .collect();
        let mut m = Masters {
            dir: tempfile::tempdir().unwrap(),
            peers,
            nodes: Vec::new(),
            net,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..3 {
            let n = (i < count).then(|| m.spawn(i));
            m.nodes.push(n);
        }
        m
    }

    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(Self::name(i))
    }

    fn spawn(&self, i: usize) -> NodeProc {
        let list: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| format!("{}={}", Self::name(j), self.peers[j]))
            .collect();
        let list = list.join(",");
        let mut args = vec![
            "--peer",
            &self.peers[i],
            "--multi-master",
            "--peers",
            &list,
            "--table-policy",
            POLICY,
            "--table-policy",
            "addr=versioned",
        ];
        if self.net.is_some() {
            args.push("--insecure");
        }
        for a in &self.extra {
            args.push(a);
        }
        let name = Self::name(i);
        match &self.net {
            None => NodeProc::start(&name, &self.data(i), &args),
            Some(net) => NodeProc::try_start_with(
                &net.wrapper(i),
                &format!("{}:0", net.addr(i)),
                &name,
                &self.data(i),
                &args,
                &[],
            )
            .unwrap_or_else(|e| panic!("node {name} did not start: {e}")),
        }
    }

    fn api(&self, i: usize) -> Api {
        Api::new(&self.nodes[i].as_ref().expect("running").url)
    }

    /// The running nodes' APIs.
    fn apis(&self) -> Vec<Api> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| Api::new(&n.url))
            .collect()
    }

    /// Waits until every running node has applied the same records from every origin.
    async fn converged(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let mut vvs = Vec::new();
            for a in self.apis() {
                vvs.push(a.status().await["multi_master"]["version_vector"].clone());
            }
            if vvs.windows(2).all(|w| w[0] == w[1]) {
                return vvs[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "the masters did not converge within {within:?}: {vvs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn contents(api: &Api) -> Vec<Vec<Vec<Value>>> {
    let mut out = Vec::new();
    for t in ["item", "acked", "counters"] {
        out.push(api.rows(&format!("SELECT * FROM {t} ORDER BY id")).await);
    }
    out
}

async fn create_schema(api: &Api) {
    let (s, b) = api
        .execute(&[
            "CREATE TABLE item (id TEXT NOT NULL PRIMARY KEY, name TEXT, price INTEGER, note TEXT)",
            "CREATE TABLE acked (id TEXT NOT NULL PRIMARY KEY, by TEXT)",
            "CREATE TABLE counters (id TEXT NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, best INTEGER)",
            "CREATE TABLE addr (id TEXT NOT NULL PRIMARY KEY, street TEXT)",
        ])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
}

/// Writes random inserts, updates and deletes of 20 shared keys to the masters in turn, and an
/// insert of a key of its own to `acked` each time; answers the `acked` keys acknowledged.
async fn writer(
    urls: Arc<Mutex<Vec<Option<String>>>>,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    failed: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let target = (next() % 3) as usize;
        let Some(url) = urls.lock().unwrap()[target].clone() else {
            continue;
        };
        let key = format!("k{}", next() % 20);
        let shared = match next() % 4 {
            0 => {
                json!({"sql": "INSERT INTO item (id, name, price) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, price = excluded.price", "params": [key, format!("c{id}-{n}"), n]})
            }
            1 => {
                json!({"sql": "UPDATE item SET name = ? WHERE id = ?", "params": [format!("c{id}-{n}"), key]})
            }
            2 => json!({"sql": "UPDATE item SET price = ? WHERE id = ?", "params": [n, key]}),
            _ => json!({"sql": "DELETE FROM item WHERE id = ?", "params": [key]}),
        };
        let mine = format!("c{id}-{n}");
        let body = json!({"statements": [
            shared,
            {"sql": "INSERT INTO acked (id, by) VALUES (?, ?)", "params": [mine, Masters::name(target)]},
            {"sql": "UPDATE counters SET hits = hits + 1, best = max(coalesce(best, 0), ?) WHERE id = 'c'", "params": [n]},
        ]});
        match http
            .post(format!("{url}/v1/execute"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                acked.lock().unwrap().insert(mine);
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_masters_writing_overlapping_keys_converge_while_one_is_killed_and_restarted() {
    let mut m = Masters::start(None, &[]);
    create_schema(&m.api(0)).await;
    let (s, b) = m
        .api(0)
        .execute(&["INSERT INTO counters (id) VALUES ('c')"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    m.converged(Duration::from_secs(20)).await;

    let urls: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(
        (0..3).map(|i| Some(m.api(i).url.clone())).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(writer(
                urls.clone(),
                i,
                stop.clone(),
                acked.clone(),
                failed.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGKILL n2 under load, keep writing to the others, restart it.
    urls.lock().unwrap()[1] = None;
    m.nodes[1].take().unwrap().kill9();
    let acked_before_restart = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n2 = m.spawn(1);
    urls.lock().unwrap()[1] = Some(n2.url.clone());
    m.nodes[1] = Some(n2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let vv = m.converged(Duration::from_secs(30)).await;

    let acked = acked.lock().unwrap().clone();
    let first = contents(&m.api(0)).await;
    let metrics = m.api(1).metrics().await;
    for want in [
        "scribe_mm_applied_seq{origin=\"n1\"}",
        "scribe_mm_peer_connected{peer=\"n1\"} 1",
        "scribe_mm_peer_lag_records{peer=\"n3\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} not in n2's metrics");
    }
    for i in 1..3 {
        assert_eq!(
            contents(&m.api(i)).await,
            first,
            "n{} holds other rows than n1",
            i + 1
        );
    }
    let have: BTreeSet<String> = first[1]
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.difference(&have).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // Every transaction added one to the counter, exactly once everywhere.
    let hits = first[2][0][1].as_i64().unwrap();
    assert_eq!(
        hits as usize,
        have.len(),
        "the counter counts every transaction once"
    );
    eprintln!(
        "converged: {} transactions acknowledged ({} before n2's restart), {} refused or lost in the kill, {} rows of shared keys, version vector {vv}",
        acked.len(),
        acked_before_restart,
        failed.load(Ordering::Relaxed),
        first[0].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_is_seeded_from_a_peers_snapshot_once_the_logs_no_longer_hold_their_start() {
    // Small segments and log: the masters' logs soon no longer hold their first records.
    let mut m = Masters::start_first(
        2,
        None,
        &["--segment-bytes", "65536", "--max-log-size", "131072"],
    );
    create_schema(&m.api(0)).await;
    m.converged(Duration::from_secs(20)).await;
    let note = "x".repeat(300);
    for batch in 0..60 {
        for (i, who) in [(0, "n1"), (1, "n2")] {
            let sql: Vec<String> = (0..20)
                .map(|k| {
                    format!("INSERT INTO item (id, name, price, note) VALUES ('{who}-{batch}-{k}', '{who}', {k}, '{note}')")
                })
                .collect();
            let sql: Vec<&str> = sql.iter().map(String::as_str).collect();
            let (s, b) = m.api(i).execute(&sql).await.unwrap();
            assert_eq!(s, 200, "{b}");
        }
    }
    m.converged(Duration::from_secs(30)).await;
    // Retention runs every few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut firsts = Vec::new();
        for a in m.apis() {
            firsts.push(a.status().await["log_first_lsn"].as_u64().unwrap());
        }
        if firsts.iter().all(|&f| f > 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the logs still start at their first record: {firsts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // n3 joins with an empty data directory: no peer's log can give it everything, so it is
    // seeded from a snapshot of one of them, then streams both logs on from there.
    let n3 = m.spawn(2);
    m.nodes[2] = Some(n3);
    m.converged(Duration::from_secs(60)).await;
    let want = contents(&m.api(0)).await;
    assert_eq!(want[0].len(), 2400);
    for i in 1..3 {
        assert_eq!(
            contents(&m.api(i)).await,
            want,
            "n{} differs from n1",
            i + 1
        );
    }
    let st = m.api(2).status().await;
    assert!(
        st["log_first_lsn"].as_u64().unwrap() > 1,
        "n3's log starts at the snapshot it was seeded from: {st}"
    );
    // It writes like any master, and its writes reach both.
    let (s, b) = m
        .api(2)
        .execute(&["INSERT INTO item (id, name) VALUES ('from-n3', 'n3')"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let vv = m.converged(Duration::from_secs(20)).await;
    assert_eq!(vv["n3"], 1, "{vv}");
    for a in m.apis() {
        let rows = a.rows("SELECT name FROM item WHERE id = 'from-n3'").await;
        assert_eq!(rows, vec![vec![json!("n3")]]);
        let st = a.status().await;
        for p in st["multi_master"]["peers"].as_array().unwrap() {
            assert_eq!(p["connected"], true, "{p}");
        }
    }
}

fn net_or_skip() -> Option<Net> {
    match Net::create(3) {
        Ok(net) => Some(net),
        Err(e) if std::env::var_os("SCRIBE_REQUIRE_NETNS").is_none() => {
            eprintln!("skipped: {}", e.0);
            None
        }
        Err(e) => panic!("SCRIBE_REQUIRE_NETNS is set but {}", e.0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sum_counter_adds_every_increment_across_a_partition_and_lww_keeps_both_columns() {
    let _serial = SERIAL.lock().await;
    let Some(net) = net_or_skip() else { return };
    let mut m = Masters::start(Some(net), &[]);
    create_schema(&m.api(0)).await;
    let (s, b) = m
        .api(0)
        .execute(&[
            "INSERT INTO counters (id, hits) VALUES ('c', 0)",
            "INSERT INTO item (id, name, price, note) VALUES ('r', 'plain', 1, 'kept')",
            "INSERT INTO item (id, name, price) VALUES ('gone', 'x', 1)",
            "INSERT INTO addr (id, street) VALUES ('u1', 'Main St')",
        ])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    m.converged(Duration::from_secs(20)).await;

    // Each node takes 1,000 increments from 4 clients; n3 is cut off from the others halfway.
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for node in 0..3 {
        for _ in 0..4 {
            let (api, done) = (m.api(node), done.clone());
            clients.push(tokio::spawn(async move {
                for _ in 0..250 {
                    let (s, b) = api
                        .execute(&["UPDATE counters SET hits = hits + 1 WHERE id = 'c'"])
                        .await
                        .unwrap();
                    assert_eq!(s, 200, "{b}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    while done.load(Ordering::Relaxed) < 1500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    m.net.as_mut().unwrap().cut(2);
    let cut_at = done.load(Ordering::Relaxed);
    // The cut takes a moment to reach established connections: wait until n1 and n3 have
    // heard nothing from each other for 600 ms (the statuses show it), so that what follows
    // is concurrent for sure.
    let quiet = |of: &'static str| {
        move |s: &Value| {
            s["multi_master"]["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == of && p["idle_ms"].as_u64().unwrap_or(0) >= 600)
        }
    };
    wait_status(
        &m.api(0),
        Duration::from_secs(10),
        "n1 hears nothing from n3",
        quiet("n3"),
    )
    .await;
    wait_status(
        &m.api(2),
        Duration::from_secs(10),
        "n3 hears nothing from n1",
        quiet("n1"),
    )
    .await;
    // During the partition: n1 and n3 update different columns of one row; n2 deletes a row n3
    // updates (a delete and a concurrent update: the delete wins, the row stays deleted).
    let (s, b) = m
        .api(0)
        .execute(&["UPDATE item SET name = 'renamed on n1' WHERE id = 'r'"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = m
        .api(2)
        .execute(&[
            "UPDATE item SET price = 333 WHERE id = 'r'",
            "UPDATE item SET price = 5 WHERE id = 'gone'",
        ])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = m
        .api(1)
        .execute(&["DELETE FROM item WHERE id = 'gone'"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    // And n1 and n3 write the same row of the versioned table.
    for (i, street) in [(0, "1 Main St"), (2, "1 Main Street")] {
        let (s, b) = m
            .api(i)
            .execute(&[&format!(
                "UPDATE addr SET street = '{street}' WHERE id = 'u1'"
            )])
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // n3 knows nothing of the others' writes meanwhile.
    let on_n3 = m
        .api(2)
        .rows("SELECT name, price FROM item WHERE id = 'r'")
        .await;
    assert_eq!(on_n3, vec![vec![json!("plain"), json!(333)]]);
    let st = m.api(0).status().await;
    let link = st["multi_master"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "n3")
        .cloned()
        .unwrap();
    m.net.as_mut().unwrap().heal(2);
    let healed_at = done.load(Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let vv = m.converged(Duration::from_secs(30)).await;
    for i in 0..3 {
        let api = m.api(i);
        assert_eq!(
            api.rows("SELECT hits FROM counters WHERE id = 'c'").await,
            vec![vec![json!(3000)]],
            "n{} does not hold exactly the 3,000 increments",
            i + 1
        );
        assert_eq!(
            api.rows("SELECT id, name, price, note FROM item ORDER BY id")
                .await,
            vec![vec![
                json!("r"),
                json!("renamed on n1"),
                json!(333),
                json!("kept")
            ]],
            "n{}: both column updates survive, and the deleted row stays deleted",
            i + 1
        );
    }
    // The versioned row: the write that lost is one conflict, the same on every node.
    let mut lists = Vec::new();
    for i in 0..3 {
        let api = m.api(i);
        let r = api
            .http
            .get(format!("{}/v1/conflicts", api.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        lists.push(body["conflicts"].clone());
    }
    assert_eq!(lists[0].as_array().map(Vec::len), Some(1), "{}", lists[0]);
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "{lists:?}");
    let conflict = lists[0][0].clone();
    let shown = m
        .api(0)
        .rows("SELECT street FROM addr WHERE id = 'u1'")
        .await;
    assert_eq!(json!([conflict["winner_row"]["street"]]), json!(shown[0]));
    let st = m.api(1).status().await;
    assert_eq!(
        st["multi_master"]["conflicts"]["addr"], 1,
        "{}",
        st["multi_master"]
    );
    // Resolved on n2, which wrote neither version: the resolution reaches every node.
    let id = conflict["id"].as_str().unwrap().to_string();
    let (s, b) = m
        .api(1)
        .post(
            &format!("/v1/conflicts/{id}/resolve"),
            &json!({"row": {"street": "1 Main Street, Apt 2"}, "expect": [id]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    m.converged(Duration::from_secs(30)).await;
    for i in 0..3 {
        let api = m.api(i);
        assert_eq!(
            api.rows("SELECT street FROM addr WHERE id = 'u1'").await,
            vec![vec![json!("1 Main Street, Apt 2")]]
        );
        assert_eq!(
            api.rows("SELECT count(*) FROM scribe_conflicts").await,
            vec![vec![json!(0)]],
            "n{} still lists a conflict",
            i + 1
        );
    }
    eprintln!(
        "partition: cut after {cut_at} increments, healed after {healed_at}; n1's view of n3 while cut: {link}; version vector after healing {vv}"
    );
}

#[tokio::test]
async fn masters_refuse_a_peer_of_another_cluster_or_other_policies() {
    let m = Masters::start(None, &[]);
    // A fourth node that names n1 as its peer but is not in n1's list: another cluster.
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let list = format!("n1={}", m.peers[0]);
    let stranger = NodeProc::start(
        "n9",
        dir.path(),
        &["--peer", &peer, "--multi-master", "--peers", &list],
    );
    let api = Api::new(&stranger.url);
    let st = wait_status(&api, Duration::from_secs(10), "refused by n1", |s| {
        s["multi_master"]["peers"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused"))
    })
    .await;
    let why = st["multi_master"]["peers"][0]["error"].as_str().unwrap();
    assert!(why.contains("belongs to cluster"), "{why}");
    // Records of n1 never reached it.
    create_schema(&m.api(0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.rows("SELECT count(*) FROM sqlite_master WHERE name = 'item'")
            .await,
        vec![vec![json!(0)]]
    );
    drop(stranger);

    // A flag that would change the policy of a table that exists is refused at start.
    let mut m = m;
    m.nodes[0].take().unwrap().kill9();
    m.extra = vec!["--table-policy".into(), "item=merge(price=max)".into()];
    let err = NodeProc::try_start(
        "n1",
        &m.data(0),
        &[
            "--peer",
            &m.peers[0].clone(),
            "--multi-master",
            "--peers",
            &format!("n2={},n3={}", m.peers[1], m.peers[2]),
            "--table-policy",
            POLICY,
            "--table-policy",
            "addr=versioned",
            "--table-policy",
            "item=merge(price=max)",
        ],
    )
    .err()
    .expect("a changed policy of an existing table is refused");
    assert!(err.contains("table item exists with policy lww"), "{err}");
    // n1 opened with other flags (for a table not created yet): refused by its peers, which
    // say why.
    m.extra = vec!["--table-policy".into(), "later=merge(price=max)".into()];
    let n1 = m.spawn(0);
    m.nodes[0] = Some(n1);
    let st = wait_status(
        &m.api(0),
        Duration::from_secs(10),
        "refused by its peers",
        |s| {
            s["multi_master"]["peers"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("table policies"))
        },
    )
    .await;
    eprintln!("{}", st["multi_master"]["peers"][0]["error"]);
    // n2 wrote a record, then comes back with an empty data directory under its old name: its
    // new records would be taken for the old ones, so its peers refuse it, saying why.
    let (st2, b) = m
        .api(1)
        .execute(&["INSERT INTO acked (id, by) VALUES ('from-n2', 'n2')"])
        .await
        .unwrap();
    assert_eq!(st2, 200, "{b}");
    wait_status(
        &m.api(2),
        Duration::from_secs(10),
        "n3 has n2's record",
        |s| s["multi_master"]["version_vector"]["n2"].as_u64() >= Some(1),
    )
    .await;
    m.nodes[1].take().unwrap().kill9();
    std::fs::remove_dir_all(m.data(1)).unwrap();
    m.extra.clear();
    let n2 = m.spawn(1);
    m.nodes[1] = Some(n2);
    let st = wait_status(
        &m.api(1),
        Duration::from_secs(10),
        "refused as having lost data",
        |s| {
            s["multi_master"]["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["name"] == "n3"
                        && p["error"].as_str().is_some_and(|e| e.contains("lost data"))
                })
        },
    )
    .await;
    eprintln!("{}", st["multi_master"]["peers"]);
    // The primary/replica mode cannot open a master's data.
    m.nodes[0].take().unwrap().kill9();
    let e = NodeProc::try_start("n1", &m.data(0), &[]).err().unwrap();
    assert!(e.contains("--multi-master"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_port_and_the_client_library_write_on_every_master() {
    let pg: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut m = Masters::start(None, &[]);
    // Restart each with its own --pg port (the harness gives extra flags to all alike).
    for (i, port) in pg.iter().enumerate() {
        m.nodes[i].take().unwrap().kill9();
        m.extra = vec!["--pg".into(), format!("127.0.0.1:{port}")];
        let n = m.spawn(i);
        m.nodes[i] = Some(n);
    }
    create_schema(&m.api(0)).await;
    m.converged(Duration::from_secs(20)).await;
    if have_tool("psql", &["--version"]) {
        for (i, port) in pg.iter().enumerate() {
            let (ok, _, err) = psql_as(
                *port,
                "scribe",
                None,
                &[
                    "-c",
                    &format!("INSERT INTO acked (id, by) VALUES ('pg-{i}', 'n{}')", i + 1),
                ],
            );
            assert!(ok, "psql on n{}: {err}", i + 1);
        }
        // A conflict policy set through SQL from psql, on the node that runs schema changes,
        // shows in every node's `\d+`.
        let (ok, _, err) = psql_as(
            pg[0],
            "scribe",
            None,
            &[
                "-c",
                "CREATE TABLE votes (id TEXT NOT NULL PRIMARY KEY, up INTEGER NOT NULL DEFAULT 0); ALTER TABLE votes SET POLICY merge(up = sum)",
            ],
        );
        assert!(ok, "psql: {err}");
        m.converged(Duration::from_secs(20)).await;
        for (i, port) in pg.iter().enumerate() {
            let (ok, out, err) = psql_as(*port, "scribe", None, &["-c", "\\d+ votes"]);
            assert!(ok, "psql on n{}: {err}", i + 1);
            assert!(
                out.contains("Options: conflict_policy=merge(up = sum)"),
                "n{}: {out}",
                i + 1
            );
        }
    }
    // The client library, given one master, writes there and reads its own writes there.
    for i in 0..3 {
        let url = m.api(i).url.clone();
        let c = scribe_client::Cluster::connect([url.as_str()])
            .await
            .unwrap();
        c.execute([format!(
            "INSERT INTO acked (id, by) VALUES ('lib-{i}', 'n{}')",
            i + 1
        )])
        .await
        .unwrap();
        let rows = c
            .query(&format!("SELECT by FROM acked WHERE id = 'lib-{i}'"), ())
            .await
            .unwrap();
        assert_eq!(
            rows.rows,
            vec![vec![scribe_client::Value::Text(format!("n{}", i + 1))]]
        );
        assert_eq!(
            c.primary_url(),
            Some(url.clone()),
            "the client stays on the master it was given"
        );
    }
    // Semi-sync and sync: the answer names the other masters that have the record applied.
    for mode in ["semi-sync", "sync"] {
        let (s, b) = m
            .api(1)
            .post(
                "/v1/execute",
                &json!({"statements": [{"sql": format!("INSERT INTO acked (id, by) VALUES ('{mode}', 'n2')")}], "commit": mode}),
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        let acked_by = b["durability"]["acked_by"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            !acked_by.is_empty() && !acked_by.contains(&json!("n2")),
            "{b}"
        );
        let other = acked_by[0].as_str().unwrap();
        let j = other[1..].parse::<usize>().unwrap() - 1;
        assert_eq!(
            m.api(j)
                .rows(&format!("SELECT by FROM acked WHERE id = '{mode}'"))
                .await,
            vec![vec![json!("n2")]],
            "{other} acknowledged a {mode} write it does not show"
        );
    }
    m.converged(Duration::from_secs(20)).await;
    let want = m.api(0).rows("SELECT id, by FROM acked ORDER BY id").await;
    assert!(want.len() >= 3, "{want:?}");
    for i in 1..3 {
        assert_eq!(
            m.api(i).rows("SELECT id, by FROM acked ORDER BY id").await,
            want
        );
    }
}
