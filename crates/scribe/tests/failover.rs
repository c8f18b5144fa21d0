//! Automatic failover, end to end: three `scribe node` processes in cluster mode (`--cluster`),
//! writes from 8 clients spread over every node, the primary SIGKILLed again and again. After each
//! kill a new primary must take writes, every acknowledged write must be on it, and the killed
//! node, restarted, must follow the new primary (rolling back what only it had).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CLIENTS: usize = 8;

/// A cluster of three data nodes on loopback.
struct Cluster {
    dir: tempfile::TempDir,
    names: Vec<String>,
    peers: Vec<String>,
    extra: Vec<String>,
    nodes: Vec<Option<NodeProc>>,
    /// Every node's HTTP URL while it runs (what the clients spread their writes over).
    urls: Arc<Mutex<Vec<Option<String>>>>,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let names: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let peers: Vec<String> = names
            .iter()
            .map(|_| format!("127.0.0.1:{}", scribe_testkit::free_port()))
            .collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            names,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::new(),
            urls: Arc::new(Mutex::new(vec![None, None, None])),
        };
        for i in 0..3 {
            let n = c.spawn(i);
            c.nodes.push(Some(n));
        }
        c
    }

    fn list(&self) -> String {
        self.names
            .iter()
            .zip(&self.peers)
            .map(|(n, p)| format!("{n}={p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize) -> NodeProc {
        let list = self.list();
        let mut args = vec!["--peer", &self.peers[i], "--cluster", &list];
        args.extend(self.extra.iter().map(String::as_str));
        let n = NodeProc::start(&self.names[i], &self.dir.path().join(&self.names[i]), &args);
        self.urls.lock().unwrap()[i] = Some(n.url.clone());
        n
    }

    fn kill(&mut self, i: usize) {
        self.urls.lock().unwrap()[i] = None;
        if let Some(n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    fn restart(&mut self, i: usize) {
        let n = self.spawn(i);
        self.nodes[i] = Some(n);
    }

    fn api(&self, i: usize) -> Option<Api> {
        self.nodes[i].as_ref().map(|n| Api::new(&n.url))
    }

    /// The node that is primary and takes writes, among the running ones, within `within`.
    async fn primary(&self, within: Duration) -> (usize, u64) {
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

    /// Waits until every running node other than `primary` streams from it and has applied
    /// everything it has flushed.
    async fn caught_up(&self, primary: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let p = self.api(primary).unwrap();
        loop {
            let flushed = p.status().await["flushed_lsn"].as_u64().unwrap();
            let mut all = true;
            for i in (0..3).filter(|&i| i != primary) {
                let Some(api) = self.api(i) else { continue };
                let st = api.status().await;
                let ok = st["role"] == "replica"
                    && st["replication"]["primary"] == self.names[primary].as_str()
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
struct Seen {
    acked: BTreeSet<String>,
    /// Start times of successful writes.
    ok_at: Vec<Instant>,
}

async fn client(
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
                let mut s = seen.lock().unwrap();
                s.acked.insert(key);
                s.ok_at.push(started);
            }
            // Refused, not confirmed, or the node died under it: not acknowledged.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn keys_on(api: &Api) -> BTreeSet<String> {
    api.rows("SELECT k FROM t")
        .await
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Kill rounds in a commit mode: returns the failover times (kill → first successful write that
/// was sent after the kill).
async fn kill_rounds(mode: &[&str], rounds: usize) -> Vec<Duration> {
    let mut c = Cluster::start(mode);
    let (p, _) = c.primary(Duration::from_secs(20)).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let (code, body) = c
        .api(p)
        .unwrap()
        .execute(&["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    c.caught_up(p, Duration::from_secs(20)).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut times = Vec::new();
    for round in 0..rounds {
        let (old, term) = c.primary(Duration::from_secs(10)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(client(c.urls.clone(), i, round, stop.clone(), seen.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..500))).await;
        let killed_at = Instant::now();
        c.kill(old);
        let (new, new_term) = c.primary(Duration::from_secs(10)).await;
        assert_ne!(new, old);
        assert!(new_term > term, "term {term} → {new_term}");
        // Let the clients find it and write.
        let deadline = Instant::now() + Duration::from_secs(5);
        let first_ok = loop {
            let first = seen
                .lock()
                .unwrap()
                .ok_at
                .iter()
                .filter(|t| **t > killed_at)
                .min()
                .copied();
            if let Some(t) = first {
                break t;
            }
            if Instant::now() > deadline {
                for i in 0..3 {
                    if let Some(api) = c.api(i) {
                        eprintln!("{}: {}", c.names[i], api.status().await);
                    }
                }
                let s = seen.lock().unwrap();
                panic!(
                    "round {round}: no write succeeded within 5 s of the new primary {} ({} acknowledged before)",
                    c.names[new],
                    s.acked.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        times.push(first_ok.saturating_duration_since(killed_at));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for cl in clients {
            cl.await.unwrap();
        }
        let on_new = keys_on(&c.api(new).unwrap()).await;
        let acked = seen.lock().unwrap().acked.clone();
        let lost: Vec<&String> = acked.difference(&on_new).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged writes are not on the new primary {}: {:?}",
            lost.len(),
            c.names[new],
            lost.iter().take(5).collect::<Vec<_>>()
        );
        c.restart(old);
        c.caught_up(new, Duration::from_secs(30)).await;
    }
    // Every node ends with the same rows.
    let (p, _) = c.primary(Duration::from_secs(10)).await;
    c.caught_up(p, Duration::from_secs(30)).await;
    let want = keys_on(&c.api(p).unwrap()).await;
    for i in 0..3 {
        let got = keys_on(&c.api(i).unwrap()).await;
        assert_eq!(got.len(), want.len(), "{} differs", c.names[i]);
        assert!(got == want, "{} differs from the primary", c.names[i]);
    }
    let acked = seen.lock().unwrap().acked.len();
    times.sort();
    eprintln!(
        "{} rounds ({}): {acked} acknowledged writes, none lost; kill to first write p50 {:?}, max {:?}",
        rounds,
        mode.join(" "),
        percentile(&times, 0.5),
        times.last().unwrap()
    );
    times
}

fn rounds() -> usize {
    std::env::var("SCRIBE_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semi_sync_kill_rounds_lose_no_acknowledged_write() {
    let times = kill_rounds(
        &["--commit", "semi-sync", "--sync-replicas", "ANY 1 (*)"],
        rounds(),
    )
    .await;
    assert!(*times.last().unwrap() < Duration::from_secs(3), "{times:?}");
}
