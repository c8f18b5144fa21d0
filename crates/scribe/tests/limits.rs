//! Bounded work, end to end: a runaway statement (the recursive CTE that never ends) against a
//! real node while others work normally. Their writes and reads are answered again within the
//! statement timeout plus a second, the runaway gets a clear error, the node's memory stays
//! bounded, and nothing of the runaway reaches the log or the database — over HTTP, inside a
//! PostgreSQL block, and when its client disconnects.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{have_tool, psql_command, Api, NodeProc, PgNode};
use serde_json::{json, Value};

const RUNAWAY_WRITE: &str = "INSERT INTO t (v) SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c)";
const RUNAWAY_READ: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c";
const TIMEOUT: Duration = Duration::from_secs(2);
const MEMORY_LIMIT: u64 = 512 << 20;

/// The peak resident memory of a process, sampled every 50 ms until stopped.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_of(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// What the normal writers saw: every write's latency, and the values acknowledged.
#[derive(Default)]
struct Seen {
    worst: Duration,
    acked: Vec<String>,
    failed: Vec<String>,
}

/// Eight clients inserting one row at a time until `stop`.
fn writers(
    api: &Api,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|w| {
            let (api, stop, seen) = (api.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let v = format!("w{w}-{n}");
                    let body = json!({"statements": [{"sql": "INSERT INTO t (v) VALUES (?)", "params": [v]}]});
                    let sent = Instant::now();
                    let r = api.post("/v1/execute", &body).await;
                    let took = sent.elapsed();
                    let mut s = seen.lock().unwrap();
                    s.worst = s.worst.max(took);
                    match r {
                        Ok((200, _)) => s.acked.push(v),
                        Ok((code, b)) => s.failed.push(format!("{code} {b}")),
                        Err(e) => s.failed.push(e.to_string()),
                    }
                }
            })
        })
        .collect()
}

async fn values(api: &Api) -> Vec<Value> {
    api.rows("SELECT v FROM t ORDER BY v")
        .await
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect()
}

fn log_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checks what the runaway left: only the acknowledged rows in the database (also after a
/// restart, replayed from the log), one record each in the log, and a small log.
async fn check_nothing_of_the_runaway(node: NodeProc, acked: &[String]) {
    let api = Api::new(&node.url);
    let mut want: Vec<Value> = acked.iter().map(|v| Value::String(v.clone())).collect();
    want.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(
        values(&api).await,
        want,
        "the database holds exactly the acknowledged rows"
    );
    let status = api.status().await;
    // One record for the table, one per acknowledged write.
    assert_eq!(
        status["last_lsn"].as_u64(),
        Some(1 + acked.len() as u64),
        "{status}"
    );
    let dir = node.dir.clone();
    let log = log_bytes(&dir);
    assert!(log < 8 << 20, "the log grew to {log} bytes");
    let name = node.name.clone();
    drop(node);
    let node = NodeProc::start(&name, &dir, &[]);
    let api = Api::new(&node.url);
    assert_eq!(values(&api).await, want, "after a restart too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runaway_write_gets_a_clear_error_while_eight_writers_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", &dir.path().join("n1"), &["--statement-timeout", "2s"]);
    let api = Api::new(&node.url);
    let (s, b) = api.execute(&["CREATE TABLE t (v)"]).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let rss = RssSampler::start(node.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = writers(&api, stop.clone(), seen.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let (code, body) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": RUNAWAY_WRITE}]}),
        )
        .await
        .unwrap();
    let took = sent.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let peak = rss.peak();
    // Stopped by the timeout or, earlier, by the size of its changes; either way clearly.
    let code_name = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        (code == 408 && code_name == "statement_timeout")
            || (code == 413 && code_name == "too_large"),
        "{code} {body}"
    );
    assert!(
        took < TIMEOUT + Duration::from_secs(1),
        "the runaway was answered after {took:?}"
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failed.is_empty(),
        "normal writes failed: {:?}",
        seen.failed
    );
    assert!(
        seen.worst < TIMEOUT + Duration::from_secs(1),
        "a normal write waited {:?}",
        seen.worst
    );
    assert!(seen.acked.len() > 16, "{}", seen.acked.len());
    assert!(
        peak < MEMORY_LIMIT,
        "the node's memory reached {} MiB",
        peak >> 20
    );
    eprintln!(
        "runaway write: answered {code} after {took:?}; {} normal writes, the slowest {:?}; peak RSS {} MiB",
        seen.acked.len(),
        seen.worst,
        peak >> 20
    );
    check_nothing_of_the_runaway(node, &seen.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_runaway_reads_time_out_and_a_normal_read_is_served_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", &dir.path().join("n1"), &["--statement-timeout", "2s"]);
    let api = Api::new(&node.url);
    let (s, b) = api
        .execute(&["CREATE TABLE t (v)", "INSERT INTO t (v) VALUES ('x')"])
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let rss = RssSampler::start(node.child.id());
    let runaways: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = api.post("/v1/query", &json!({"sql": RUNAWAY_READ})).await;
                (r, sent.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let (code, body) = api
        .post("/v1/query", &json!({"sql": "SELECT count(*) FROM t"}))
        .await
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rows"], json!([[1]]));
    assert!(
        took < TIMEOUT + Duration::from_secs(1),
        "the normal read waited {took:?}"
    );
    for r in runaways {
        let (r, took) = r.await.unwrap();
        let (code, body) = r.unwrap();
        let name = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            (code == 408 && name == "statement_timeout") || (code == 413 && name == "too_large"),
            "{code} {body}"
        );
        // The second four waited for a read connection: their timeout counts from arrival.
        assert!(
            took < TIMEOUT + Duration::from_secs(1),
            "a runaway read was answered after {took:?}"
        );
    }
    let peak = rss.peak();
    assert!(
        peak < MEMORY_LIMIT,
        "the node's memory reached {} MiB",
        peak >> 20
    );
    eprintln!(
        "eight runaway reads: a normal read served in {took:?}; peak RSS {} MiB",
        peak >> 20
    );
}

fn have_psql() -> bool {
    have_tool("psql", &["--version"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runaway_inside_a_postgresql_block_is_canceled_while_writers_go_on() {
    if !have_psql() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let PgNode { node, pg } = PgNode::start("n1", dir.path(), &["--statement-timeout", "2s"]);
    let api = Api::new(&node.url);
    let (s, b) = api.execute(&["CREATE TABLE t (v)"]).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let rss = RssSampler::start(node.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = writers(&api, stop.clone(), seen.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    // BEGIN; a first write (the block takes the writer); the runaway. Then what a client does
    // after an error in a block: it is aborted, so ROLLBACK.
    let out = tokio::task::spawn_blocking(move || {
        psql_command(pg, "scribe", None)
            .args(["-v", "VERBOSITY=verbose"])
            .args(["-c", "BEGIN"])
            .args(["-c", "INSERT INTO t (v) VALUES ('in the block')"])
            .args(["-c", RUNAWAY_WRITE])
            .args(["-c", "SELECT 1"])
            .args(["-c", "ROLLBACK"])
            .output()
            .expect("run psql")
    })
    .await
    .unwrap();
    let took = sent.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let peak = rss.peak();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("57014") || stderr.contains("54000"),
        "psql said: {stderr}"
    );
    assert!(
        stderr.contains("statement timeout") || stderr.contains("--max-txn-bytes"),
        "{stderr}"
    );
    // After the error the block is aborted, as in PostgreSQL.
    assert!(
        stderr.contains("25P02") || stderr.contains("aborted"),
        "{stderr}"
    );
    assert!(
        took < TIMEOUT + Duration::from_secs(2),
        "psql finished after {took:?}"
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failed.is_empty(),
        "normal writes failed: {:?}",
        seen.failed
    );
    assert!(
        seen.worst < TIMEOUT + Duration::from_secs(1),
        "a normal write waited {:?}",
        seen.worst
    );
    assert!(
        peak < MEMORY_LIMIT,
        "the node's memory reached {} MiB",
        peak >> 20
    );
    // `SET statement_timeout` is the session's own: a block with a longer one commits a
    // statement the default would stop.
    let (ok, stdout, stderr) = {
        let out = psql_command(pg, "scribe", None)
            .args(["-v", "ON_ERROR_STOP=1", "-Atq"])
            .args(["-c", "SET statement_timeout = 1"])
            .args(["-c", "SHOW statement_timeout"])
            .args(["-c", "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000000) SELECT x FROM c)"])
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok, "a 1 ms timeout stops a long read: {stdout}");
    assert!(stderr.contains("statement timeout"), "{stderr}");
    assert_eq!(stdout.trim(), "1ms");
    check_nothing_of_the_runaway(node, &seen.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_client_disconnects_is_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    // No timeout at all: only the client's leaving can end it.
    let node = NodeProc::start(
        "n1",
        &dir.path().join("n1"),
        &[
            "--statement-timeout",
            "0",
            "--max-statement-timeout",
            "0",
            "--max-txn-bytes",
            "0",
        ],
    );
    let api = Api::new(&node.url);
    let (s, b) = api.execute(&["CREATE TABLE t (v)"]).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/execute", node.url))
        .json(&json!({"statements": [{"sql": RUNAWAY_WRITE}]}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    let gone = Instant::now();
    let (s, b) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (v) VALUES ('after')"}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(
        gone.elapsed() < Duration::from_secs(2),
        "the writer was free again only {:?} after the client left",
        gone.elapsed()
    );
    check_nothing_of_the_runaway(node, &["after".to_string()]).await;
}

/// A psql session held open on stdin, as an idle client would; returns once it is in (it has
/// answered a first query).
fn open_psql(pg: u16) -> std::process::Child {
    use std::io::{BufRead, Write};
    let mut child = psql_command(pg, "scribe", None)
        .arg("-At")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    let stdin = child.stdin.as_mut().expect("psql's stdin");
    stdin.write_all(b"SELECT 1;\n").expect("write to psql");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("psql's stdout"))
        .read_line(&mut line)
        .expect("read psql's answer");
    assert_eq!(line.trim(), "1", "a held client did not get in");
    child
}

fn psql_once(pg: u16) -> (bool, String) {
    let out = psql_command(pg, "scribe", None)
        .args(["-At", "-c", "SELECT 41 + 1"])
        .output()
        .expect("run psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_clients_past_max_connections_are_told_too_many_clients() {
    if !have_psql() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = PgNode::start("n1", dir.path(), &["--max-connections", "2"]);
    let pg = server.pg;
    let mut held: Vec<_> = (0..2).map(|_| open_psql(pg)).collect();
    // Both are in: a third client is refused as PostgreSQL refuses it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (ok, text) = psql_once(pg);
        if !ok {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "a third client was let in past --max-connections 2: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("too many clients"), "{text}");
    // One goes: a new client gets its slot.
    let mut gone = held.remove(0);
    drop(gone.stdin.take());
    let _ = gone.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, text) = psql_once(pg);
        if ok {
            assert_eq!(text.trim(), "42");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot after a client left: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut c in held {
        drop(c.stdin.take());
        let _ = c.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_is_served_past_max_connections() {
    if !have_psql() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = PgNode::start("n1", dir.path(), &["--max-connections", "1"]);
    let pg = server.pg;
    // The only slot runs a runaway read with a long timeout; Ctrl-C makes psql send a cancel
    // request on a second connection, past the limit: it must still be carried out.
    let psql = psql_command(pg, "scribe", None)
        .args([
            "-At",
            "-c",
            "SET statement_timeout = '60s'",
            "-c",
            // Counting forever: no rows, so no result limit ends it first.
            &format!("SELECT count(*) FROM ({RUNAWAY_READ})"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(psql.id() as i32, libc::SIGINT);
    }
    let out = psql.wait_with_output().expect("psql");
    let took = sent.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "the cancel took {took:?}");
}

/// How long until the server closes `stream` (EOF or reset), reading what it sends; and whether
/// it asked for a password (an `R` message) first.
fn until_closed(mut stream: std::net::TcpStream, since: Instant) -> (Duration, bool) {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let (mut sink, mut asked) = ([0u8; 1024], false);
    loop {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return (since.elapsed(), asked),
            Ok(n) => asked |= sink[..n].first() == Some(&b'R'),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_client_that_does_not_log_in_is_closed_and_its_slot_freed() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = PgNode::start(
        "n1",
        dir.path(),
        &[
            "--max-connections",
            "1",
            "--pg-login-timeout",
            "1s",
            "--pg-password",
            "secret",
        ],
    );
    let (pg, pg_addr) = (server.pg, server.addr());
    // One connects and says nothing; one sends its startup and never answers the password
    // request. Each holds the only slot until the login timeout closes it.
    let silent = std::net::TcpStream::connect(&pg_addr).expect("connect");
    let (took, _) = until_closed(silent, Instant::now());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a silent client was closed after {took:?}"
    );
    let mut stalled = std::net::TcpStream::connect(&pg_addr).expect("connect");
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0scribe\0database\0scribe\0\0");
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stalled.write_all(&packet).expect("startup");
    let (took, asked) = until_closed(stalled, Instant::now());
    assert!(asked, "the node asked for the password");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a client stalled in its login was closed after {took:?}"
    );
    // The slot is free again: a client that logs in is served, and stays past the timeout.
    if have_psql() {
        let mut psql = psql_command(pg, "scribe", Some("secret"))
            .args(["-At", "-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        let mut stdin = psql.stdin.take().expect("stdin");
        stdin.write_all(b"SELECT 41;\n").expect("write");
        std::thread::sleep(Duration::from_millis(1500));
        stdin.write_all(b"SELECT 42;\n").expect("write");
        drop(stdin);
        let out = psql.wait_with_output().expect("psql");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.trim(), "41\n42");
    }
}

/// Answers a normal write and how long it took.
async fn timed_write(api: &Api, v: &str) -> Duration {
    let started = Instant::now();
    let (s, b) = api
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t (v) VALUES (?)", "params": [v]}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_transactions_past_the_idle_timeout_are_rolled_back_on_every_path() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(1);
    let PgNode { node, pg } = PgNode::start("n1", dir.path(), &["--txn-idle-timeout", "1s"]);
    let api = Api::new(&node.url);
    let (s, b) = api.execute(&["CREATE TABLE t (v)"]).await.unwrap();
    assert_eq!(s, 200, "{b}");

    // HTTP: a transaction that writes, then its client goes quiet.
    let (s, b) = api.post("/v1/tx", &json!({})).await.unwrap();
    assert_eq!(s, 200, "{b}");
    let tx = b["tx"].as_str().unwrap().to_string();
    let (s, b) = api
        .post(
            &format!("/v1/tx/{tx}/execute"),
            &json!({"sql": "INSERT INTO t (v) VALUES ('http-held')"}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let took = timed_write(&api, "after-http").await;
    assert!(
        took < idle + Duration::from_secs(1),
        "a write waited {took:?} behind an idle /v1/tx"
    );
    let (s, b) = api
        .post(&format!("/v1/tx/{tx}/commit"), &json!({}))
        .await
        .unwrap();
    assert_ne!(
        s, 200,
        "the idle transaction committed after it was rolled back: {b}"
    );
    eprintln!("commit of the idle /v1/tx: {s} {b}");

    // PostgreSQL: a block that writes, then its client goes quiet.
    if have_psql() {
        let mut psql = psql_command(pg, "scribe", None)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = psql.stdin.take().expect("psql's stdin");
        stdin
            .write_all(b"BEGIN;\nINSERT INTO t (v) VALUES ('pg-held');\n")
            .unwrap();
        stdin.flush().unwrap();
        // Let the block take the writer, then write beside it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = timed_write(&api, "after-pg").await;
        assert!(
            took < idle + Duration::from_secs(1),
            "a write waited {took:?} behind an idle PostgreSQL block"
        );
        // Past the idle timeout, whether the block held the writer or ran optimistically.
        tokio::time::sleep(idle + Duration::from_millis(700)).await;
        stdin.write_all(b"COMMIT;\n").unwrap();
        drop(stdin);
        let out = psql.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("psql: {text}");
        assert!(
            text.contains("ERROR") || text.contains("ROLLBACK"),
            "{text}"
        );
    }
    let vs = values(&api).await;
    let held: Vec<_> = vs
        .iter()
        .filter(|v| v.as_str().is_some_and(|s| s.ends_with("-held")))
        .collect();
    assert!(
        held.is_empty(),
        "an idle transaction's write was kept: {held:?}"
    );
    assert!(vs.contains(&json!("after-http")), "{vs:?}");
    drop(node);
}
