//! A three-node cluster of `scribe node` processes in cluster mode (`--cluster`), and the write
//! clients the failover and partition tests drive it with. On loopback by default; in network
//! namespaces (one address per node, real partitions) with [`Cluster::start_in`].

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scribe_testkit::netns::Net;
use serde_json::{json, Value};

use crate::common::*;

pub const CLIENTS: usize = 8;

/// One cluster at a time: the tests measure failover times, and two clusters of three nodes and
/// their clients on the same two cores would measure each other.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster of three members: three data nodes, or two and a witness.
pub struct Cluster {
    pub names: Vec<String>,
    pub peers: Vec<String>,
    /// The member started with `--witness` (and marked `/witness` in the list), if any.
    pub witness: Option<usize>,
    pub extra: Vec<String>,
    // Dropped (killed) before the network and the directory go.
    pub nodes: Vec<Option<NodeProc>>,
    /// Every node's HTTP URL while it runs (what the clients spread their writes over).
    pub urls: Arc<Mutex<Vec<Option<String>>>>,
    /// The namespaces the nodes run in, if any.
    pub net: Option<Net>,
    /// Each node's PostgreSQL port, when they serve it.
    pub pg: Option<Vec<u16>>,
    /// The user and password [`Cluster::api`] calls with (nodes started with `--users`).
    pub admin: Option<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes on loopback. A bare `--pg` in `extra` serves PostgreSQL on a port of each
    /// node's own ([`Cluster::pg`]).
    pub fn start(extra: &[&str]) -> Cluster {
        Self::start_on(None, None, extra)
    }

    /// Two data nodes n1, n2 and the witness w (index 2), on loopback.
    pub fn start_with_witness(extra: &[&str]) -> Cluster {
        Self::start_on(None, Some(2), extra)
    }

    /// Three nodes, node `i` in namespace `net.ns(i)` at `net.addr(i)`.
    pub fn start_in(net: Net, extra: &[&str]) -> Cluster {
        Self::start_on(Some(net), None, extra)
    }

    fn start_on(net: Option<Net>, witness: Option<usize>, extra: &[&str]) -> Cluster {
        let names: Vec<String> = (0..3)
            .map(|i| match witness {
                Some(w) if w == i => "w".to_string(),
                _ => format!("n{}", i + 1),
            })
            .collect();
        let peers: Vec<String> = (0..names.len())
            .map(|i| match &net {
                // Each namespace has its own ports.
                Some(net) => format!("{}:6480", net.addr(i)),
                None => format!("127.0.0.1:{}", scribe_testkit::free_port()),
            })
            .collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            names,
            peers,
            witness,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::new(),
            urls: Arc::new(Mutex::new(vec![None, None, None])),
            pg: extra
                .contains(&"--pg")
                .then(|| (0..3).map(|_| scribe_testkit::free_port()).collect()),
            admin: None,
            net,
        };
        for i in 0..3 {
            let n = c.spawn(i);
            c.nodes.push(Some(n));
        }
        c
    }

    /// A cluster whose primary took `CREATE TABLE t (k TEXT PRIMARY KEY)` and whose replicas
    /// have it; answers it with the primary's index.
    pub async fn with_table(extra: &[&str]) -> (Cluster, usize) {
        Cluster::start(extra).create_table().await
    }

    /// Creates the table `t (k TEXT PRIMARY KEY)` on the primary and waits until the replicas
    /// have it; answers the primary's index.
    pub async fn create_table(self) -> (Cluster, usize) {
        let c = self;
        let (p, _) = c.primary(Duration::from_secs(20)).await;
        c.caught_up(p, Duration::from_secs(20)).await;
        let (code, body) = c
            .api(p)
            .unwrap()
            .execute(&["CREATE TABLE t (k TEXT PRIMARY KEY)"])
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        (c, p)
    }

    pub fn list(&self) -> String {
        self.names
            .iter()
            .zip(&self.peers)
            .enumerate()
            .map(|(i, (n, p))| match self.witness {
                Some(w) if w == i => format!("{n}={p}/witness"),
                _ => format!("{n}={p}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn spawn(&self, i: usize) -> NodeProc {
        let list = self.list();
        let mut args = vec!["--peer", &self.peers[i], "--cluster", &list];
        if self.witness == Some(i) {
            args.push("--witness");
        }
        // Network namespaces use non-loopback addresses, refused without --users.
        if self.net.is_some() {
            args.push("--insecure");
        }
        // `--pg` among the extra flags: each node on its own port.
        let pg = self.pg.as_ref().map(|p| format!("127.0.0.1:{}", p[i]));
        for a in &self.extra {
            args.push(a);
            if a == "--pg" {
                args.push(pg.as_deref().expect("ports chosen"));
            }
        }
        let dir = self.dir.path().join(&self.names[i]);
        let n = match &self.net {
            None => NodeProc::start(&self.names[i], &dir, &args),
            Some(net) => NodeProc::try_start_with(
                &net.wrapper(i),
                &format!("{}:0", net.addr(i)),
                &self.names[i],
                &dir,
                &args,
                &[],
            )
            .unwrap_or_else(|e| panic!("node {} did not start: {e}", self.names[i])),
        };
        self.urls.lock().unwrap()[i] = Some(n.url.clone());
        n
    }

    pub fn kill(&mut self, i: usize) {
        self.urls.lock().unwrap()[i] = None;
        if let Some(n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let n = self.spawn(i);
        self.nodes[i] = Some(n);
    }

    pub fn api(&self, i: usize) -> Option<Api> {
        self.nodes[i].as_ref().map(|n| match &self.admin {
            Some((user, password)) => Api::with_basic_auth(&n.url, user, password),
            None => Api::new(&n.url),
        })
    }

    /// The node that is primary and takes writes, among the running ones, within `within`.
    pub async fn primary(&self, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..3 {
                let Some(api) = self.api(i) else { continue };
                let Ok(r) = api.http.get(format!("{}/v1/status", api.url)).send().await else {
                    continue;
                };
                let Ok(st) = r.json::<Value>().await else {
                    continue;
                };
                if st["role"] == "primary" && st["accepting_writes"] == true {
                    return (i, st["term"].as_u64().unwrap());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no primary took writes within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running data node other than `primary` streams from it and has applied
    /// everything it has flushed.
    pub async fn caught_up(&self, primary: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let p = self.api(primary).unwrap();
        loop {
            let flushed = p.status().await["flushed_lsn"].as_u64().unwrap();
            let mut all = true;
            for i in (0..3).filter(|&i| i != primary && self.witness != Some(i)) {
                let Some(api) = self.api(i) else { continue };
                let st = api.status().await;
                // Streaming, not only past the primary's LSN: a node still rolling back has
                // applied a higher LSN of another history.
                let ok = st["role"] == "replica"
                    && st["replication"]["primary"] == self.names[primary].as_str()
                    && st["replication"]["state"] == "streaming"
                    && st["applied_lsn"].as_u64().unwrap_or(0) >= flushed;
                all &= ok;
                if !ok && Instant::now() > deadline {
                    panic!(
                        "{} did not catch up with {} within {within:?}: {st}",
                        self.names[i], self.names[primary]
                    );
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the clients saw: acknowledged keys, and when writes succeeded.
#[derive(Default)]
pub struct Seen {
    pub acked: BTreeSet<String>,
    /// The position token each acknowledged write was answered with.
    pub tokens: std::collections::BTreeMap<String, String>,
    /// Start times of successful writes.
    pub ok_at: Vec<Instant>,
}

pub async fn client(
    urls: Arc<Mutex<Vec<Option<String>>>>,
    c: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let url = {
            let urls = urls.lock().unwrap();
            let up: Vec<&String> = urls.iter().flatten().collect();
            if up.is_empty() {
                None
            } else {
                Some(up[fastrand::usize(..up.len())].clone())
            }
        };
        let Some(url) = url else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        seq += 1;
        let key = format!("r{round}-c{c}-{seq}");
        let started = Instant::now();
        let r = http
            .post(format!("{url}/v1/execute"))
            .json(
                &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": [key]}]}),
            )
            .send()
            .await;
        match r {
            Ok(r) if r.status().as_u16() == 200 => {
                let body: Value = r.json().await.unwrap_or_default();
                let mut s = seen.lock().unwrap();
                if let Some(t) = body["position"].as_str() {
                    s.tokens.insert(key.clone(), t.to_string());
                }
                s.acked.insert(key);
                s.ok_at.push(started);
            }
            // Refused, not confirmed, or the node died under it: not acknowledged.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// A session read of `sql` that must see `token`: the status and the body.
pub async fn session_read(api: &Api, sql: &str, token: &str) -> (u16, Value) {
    api.post(
        "/v1/query",
        &json!({"sql": sql, "consistency": "session", "position": token}),
    )
    .await
    .unwrap()
}

pub async fn keys_on(api: &Api) -> BTreeSet<String> {
    api.rows("SELECT k FROM t")
        .await
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The keys of the rows that rollback files in `dir` list as undone inserts.
pub fn rolled_back_keys(dir: &std::path::Path) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("rollback") && name.ends_with(".json")) {
            continue;
        }
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for t in doc["transactions"].as_array().unwrap() {
            for ch in t["changes"].as_array().unwrap() {
                if ch["table"] == "t" && ch["op"] == "insert" {
                    keys.insert(ch["new"]["k"].as_str().unwrap().to_string());
                }
            }
        }
    }
    keys
}

pub fn signal(n: &NodeProc, sig: i32) {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(n.child.id() as i32, sig);
    }
}

/// Inserts `key` on `api`; it must be acknowledged. Answers the durability it reached.
pub async fn insert(api: &Api, key: &str) -> Value {
    let (code, body) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": [key]}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "insert {key} on {}: {body}", api.url);
    body["durability"].clone()
}
