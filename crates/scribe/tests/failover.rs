//! Automatic failover, end to end: three `scribe node` processes in cluster mode (`--cluster`),
//! writes from 8 clients spread over every node, the primary SIGKILLed again and again. After each
//! kill a new primary must take writes, every acknowledged write must be on it, and the killed
//! node, restarted, must follow the new primary (rolling back what only it had).

mod cluster;
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::*;
use serde_json::json;

/// Kill rounds in a commit mode: returns the failover times (kill → first successful write that
/// was sent after the kill).
async fn kill_rounds(mode: &[&str], rounds: usize) -> Vec<Duration> {
    let (mut c, p) = Cluster::with_table(mode).await;
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
        c.kill(old);
        // Once it is reaped: nothing sent from here can have reached it.
        let killed_at = Instant::now();
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
    let _serial = SERIAL.lock().await;
    let times = kill_rounds(
        &["--commit", "semi-sync", "--sync-replicas", "ANY 1 (*)"],
        rounds(),
    )
    .await;
    // The bound: the first write on the new primary within 3 s of the old one's death (the aim,
    // p50 under 1.5 s, is met in release builds; a debug build on a loaded machine is slower).
    assert!(*times.last().unwrap() < Duration::from_secs(3), "{times:?}");
    assert!(
        percentile(&times, 0.5) < Duration::from_secs(2),
        "{times:?}"
    );
}

/// The longest gap between successive successful writes (by their start) within `window`.
fn longest_gap(seen: &Seen, window: (Instant, Instant)) -> Duration {
    let mut at: Vec<Instant> = seen
        .ok_at
        .iter()
        .copied()
        .filter(|t| *t >= window.0 && *t <= window.1)
        .collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_under_load_loses_nothing_even_in_async_mode() {
    let _serial = SERIAL.lock().await;
    let (c, p) = Cluster::with_table(&["--commit", "async"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let target = (p + 1) % 3;
    let via = (p + 2) % 3;
    // Refusals first: each a clear error, nothing changed.
    for (to, why) in [
        ("n9", "no member"),
        (c.names[p].as_str(), "primary already"),
    ] {
        let (code, body) = c
            .api(via)
            .unwrap()
            .post("/v1/switchover", &json!({ "to": to }))
            .await
            .unwrap();
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["error"]["code"], "switchover_refused", "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    assert_eq!(c.primary(Duration::from_secs(1)).await.0, p);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(c.urls.clone(), i, 0, stop.clone(), seen.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let asked = Instant::now();
    // Asked through a replica, which forwards it to the primary.
    let (code, done) = c
        .api(via)
        .unwrap()
        .post("/v1/switchover", &json!({ "to": c.names[target] }))
        .await
        .unwrap();
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["to"], c.names[target].as_str());
    let answered = Instant::now();
    let (now, _) = c.primary(Duration::from_secs(5)).await;
    assert_eq!(now, target);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    c.caught_up(target, Duration::from_secs(20)).await;
    let on_new = keys_on(&c.api(target).unwrap()).await;
    for i in 0..3 {
        assert!(
            keys_on(&c.api(i).unwrap()).await == on_new,
            "{} differs",
            c.names[i]
        );
    }
    let s = seen.lock().unwrap();
    let lost = s.acked.difference(&on_new).count();
    assert_eq!(lost, 0, "{lost} acknowledged writes lost in the switchover");
    let gap = longest_gap(
        &s,
        (
            asked - Duration::from_millis(200),
            answered + Duration::from_millis(500),
        ),
    );
    eprintln!(
        "switchover {} -> {} (async, {CLIENTS} clients): {} acknowledged writes, none lost; gate closed {:.0} ms, longest gap between successful writes {gap:?}, request {:?}",
        c.names[p],
        c.names[target],
        s.acked.len(),
        done["paused_ms"].as_f64().unwrap(),
        answered - asked
    );
    assert!(gap < Duration::from_secs(1), "writes paused {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_kill_rounds_lose_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let rounds = (rounds() / 4).max(3);
    let times = kill_rounds(
        &["--commit", "sync", "--sync-replicas", "ANY 1 (*)"],
        rounds,
    )
    .await;
    assert!(*times.last().unwrap() < Duration::from_secs(3), "{times:?}");
}

/// Async mode promises nothing beyond the primary's disk: a kill can lose acknowledged writes.
/// They must be exactly the acknowledged ones among what the old primary rolled back when it
/// rejoined — found in its rollback files, never silently gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_kill_rounds_report_what_was_lost_in_the_rollback_files() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut lost_total = 0;
    let rounds = (rounds() / 2).max(3);
    for round in 0..rounds {
        let (old, _) = c.primary(Duration::from_secs(10)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(client(c.urls.clone(), i, round, stop.clone(), seen.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..500))).await;
        c.kill(old);
        let (new, _) = c.primary(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for cl in clients {
            cl.await.unwrap();
        }
        let before = rolled_back_keys(&c.dir.path().join(&c.names[old]));
        c.restart(old);
        c.caught_up(new, Duration::from_secs(30)).await;
        let on_new = keys_on(&c.api(new).unwrap()).await;
        let acked = seen.lock().unwrap().acked.clone();
        let lost: BTreeSet<String> = acked.difference(&on_new).cloned().collect();
        let undone: BTreeSet<String> = rolled_back_keys(&c.dir.path().join(&c.names[old]))
            .difference(&before)
            .cloned()
            .collect();
        let undone_acked: BTreeSet<String> = undone.intersection(&acked).cloned().collect();
        // Seen lost this round only (earlier rounds' losses were already counted).
        let lost_now: BTreeSet<String> = lost
            .iter()
            .filter(|k| k.starts_with(&format!("r{round}-")))
            .cloned()
            .collect();
        assert_eq!(
            lost_now, undone_acked,
            "round {round}: the acknowledged writes lost must be exactly the acknowledged ones rolled back"
        );
        // And the rolled-back rows are nowhere in the cluster.
        for k in &undone {
            assert!(
                !on_new.contains(k),
                "round {round}: {k} is rolled back yet present"
            );
        }
        // A session read with the token of a lost write is told so, on every node.
        for k in &lost_now {
            let token = seen.lock().unwrap().tokens[k].clone();
            for i in 0..3 {
                let (code, body) =
                    session_read(&c.api(i).unwrap(), "SELECT count(*) FROM t", &token).await;
                assert_eq!(code, 410, "{}: {body}", c.names[i]);
                assert_eq!(body["error"]["code"], "position_lost", "{body}");
            }
        }
        // And a surviving write's token of the old term is honoured everywhere.
        let survivor = {
            let s = seen.lock().unwrap();
            s.tokens
                .iter()
                .rev()
                .find(|(k, _)| k.starts_with(&format!("r{round}-")) && on_new.contains(*k))
                .map(|(_, t)| t.clone())
        };
        if let Some(token) = survivor {
            for i in 0..3 {
                let (code, body) =
                    session_read(&c.api(i).unwrap(), "SELECT count(*) FROM t", &token).await;
                assert_eq!(code, 200, "{} with {token}: {body}", c.names[i]);
            }
        }
        lost_total += lost_now.len();
    }
    let acked = seen.lock().unwrap().acked.len();
    eprintln!(
        "{rounds} async kill rounds: {acked} acknowledged writes, {lost_total} lost in failovers, every one of them in the old primary's rollback file"
    );
}

/// A deterministic async loss: the replicas are frozen (SIGSTOP) while the primary acknowledges
/// writes they never receive, then the primary dies. The new primary lacks those writes; the old
/// one, restarted, rolls them back into its rollback file; their position tokens are refused on
/// every node as lost, while an older token that survived is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_writes_lost_in_a_failover_are_rolled_back_and_their_tokens_refused() {
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "async"]).await;
    let api = c.api(p).unwrap();
    let (code, kept) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES ('kept')"}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{kept}");
    c.caught_up(p, Duration::from_secs(20)).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    for &i in &others {
        signal(c.nodes[i].as_ref().unwrap(), libc::SIGSTOP);
    }
    // Within the primary's lease: acknowledged by its own disk only.
    let mut lost = Vec::new();
    for k in 0..3 {
        let (code, body) = api
            .post("/v1/execute", &json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": [format!("lost{k}")]}]}))
            .await
            .unwrap();
        if code == 200 {
            lost.push((
                format!("lost{k}"),
                body["position"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        !lost.is_empty(),
        "the primary acknowledged nothing while its replicas were frozen"
    );
    c.kill(p);
    for &i in &others {
        signal(c.nodes[i].as_ref().unwrap(), libc::SIGCONT);
    }
    let (new, _) = c.primary(Duration::from_secs(15)).await;
    c.restart(p);
    c.caught_up(new, Duration::from_secs(30)).await;
    let on_new = keys_on(&c.api(new).unwrap()).await;
    assert!(on_new.contains("kept"));
    let undone = rolled_back_keys(&c.dir.path().join(&c.names[p]));
    for (k, token) in &lost {
        assert!(!on_new.contains(k), "{k} survived");
        assert!(
            undone.contains(k),
            "{k} is not in the rollback file ({undone:?})"
        );
        for i in 0..3 {
            let (code, body) =
                session_read(&c.api(i).unwrap(), "SELECT count(*) FROM t", token).await;
            assert_eq!(code, 410, "{} with {token}: {body}", c.names[i]);
            assert_eq!(body["error"]["code"], "position_lost", "{body}");
        }
    }
    let token = kept["position"].as_str().unwrap();
    for i in 0..3 {
        let (code, body) = session_read(
            &c.api(i).unwrap(),
            "SELECT k FROM t WHERE k = 'kept'",
            token,
        )
        .await;
        assert_eq!(code, 200, "{} with {token}: {body}", c.names[i]);
        assert_eq!(body["rows"], json!([["kept"]]));
    }
    let st = c.api(p).unwrap().status().await;
    assert!(
        st["replication"]["rollbacks"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "the old primary's status lists no roll-back: {st}"
    );
    eprintln!(
        "{} acknowledged async writes lost in the failover, rolled back and refused as tokens",
        lost.len()
    );
}

/// One psql session, held open on a replica that survives, writing without pause while the
/// primary is SIGKILLed: the session is never dropped; its writes (forwarded by the replica to
/// whichever node is primary) fail only while there is none, and resume on the new primary
/// within the failover bound; every write psql reported done is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_psql_session_on_a_replica_keeps_writing_through_a_failover() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    if Command::new("psql").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("SCRIBE_REQUIRE_PG_TOOLS").is_none(),
            "psql is required"
        );
        eprintln!("skipped: no psql");
        return;
    }
    let _serial = SERIAL.lock().await;
    let (mut c, p) = Cluster::with_table(&["--commit", "semi-sync", "--pg"]).await;
    c.caught_up(p, Duration::from_secs(20)).await;
    // Either replica may be promoted: the session's node may become the primary itself.
    let on = (0..3).find(|&i| i != p).unwrap();
    let port = c.pg.as_ref().unwrap()[on];
    let mut psql = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "psql -X -h 127.0.0.1 -p {port} -U scribe -d scribe 2>&1"
        ))
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    let stdout = psql.stdout.take().unwrap();
    // Results arrive in statement order: one "INSERT 0 1" or one error line each.
    let results = Arc::new(Mutex::new(Vec::<(bool, Instant)>::new()));
    let dropped = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = std::thread::spawn({
        let (results, dropped) = (results.clone(), dropped.clone());
        move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let ok = line.starts_with("INSERT 0 1");
                if ok || line.contains("ERROR:") {
                    results.lock().unwrap().push((ok, Instant::now()));
                } else if line.contains("FATAL") || line.contains("connection to the server") {
                    dropped.lock().unwrap().push(line);
                }
            }
        }
    });
    let mut sent = 0usize;
    let send = |stdin: &mut std::process::ChildStdin, sent: &mut usize, n: usize| {
        for _ in 0..n {
            writeln!(stdin, "INSERT INTO t (k) VALUES ('pg-{sent}');").unwrap();
            *sent += 1;
        }
        stdin.flush().unwrap();
    };
    // Paced: a few statements every 20 ms, so psql is never far ahead of the clock.
    let pace = |results: &Arc<Mutex<Vec<(bool, Instant)>>>, sent: usize| {
        results.lock().unwrap().len() + 4 >= sent
    };
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if pace(&results, sent) {
            send(&mut stdin, &mut sent, 2);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill(p);
    let killed_at = Instant::now();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if pace(&results, sent) {
            send(&mut stdin, &mut sent, 2);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stdin);
    let status = psql.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "psql exited with {status}");
    let dropped = dropped.lock().unwrap().clone();
    assert!(dropped.is_empty(), "the session was dropped: {dropped:?}");
    let results = results.lock().unwrap().clone();
    assert_eq!(results.len(), sent, "one result per statement");
    let resumed = results
        .iter()
        .find(|(ok, at)| *ok && *at > killed_at + Duration::from_millis(50))
        .map(|(_, at)| *at - killed_at)
        .expect("writes resumed");
    let failed = results.iter().filter(|(ok, _)| !ok).count();
    // The cluster's bound (3 s) is asserted by the kill rounds; a looser one here, where the
    // client's own retry spacing comes on top, on a loaded machine.
    assert!(
        resumed < Duration::from_secs(5),
        "resumed after {resumed:?}"
    );
    let (new, _) = c.primary(Duration::from_secs(10)).await;
    let have = keys_on(&c.api(new).unwrap()).await;
    for (i, (ok, _)) in results.iter().enumerate() {
        if *ok {
            assert!(
                have.contains(&format!("pg-{i}")),
                "pg-{i} was reported done but is lost"
            );
        }
    }
    eprintln!(
        "psql through a failover: {} statements, {failed} refused while there was no primary, writes resumed {resumed:?} after the kill, nothing reported done was lost",
        results.len()
    );
}
