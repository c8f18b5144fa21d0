//! `scribe demo`: starts a local cluster — a primary (n1) and two replicas following it (n2, n3),
//! each a child process of this executable with a data directory and a log file of its own — and
//! walks through the classic example step by step: create a table and insert a row on the
//! primary, read it back on a replica once the replica has applied it, see a replica refuse a
//! write, and look at the replication status as the primary sees it. Then it keeps the cluster
//! up until Ctrl-C, and stops the nodes (SIGTERM, then SIGKILL after a grace period) on every
//! way out.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use scribe_core::Position;
use serde_json::{json, Value};

use crate::client::Client;
use crate::table;

/// Flags of `scribe demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo nodes' data (DIR/n1, DIR/n2, DIR/n3) and logs (DIR/n1.log, ...);
    /// wiped at start, and refused if it holds anything else
    #[arg(long, env = "SCRIBE_DEMO_DIR", default_value = "scribe-demo")]
    pub dir: PathBuf,
    /// Base port: the nodes' HTTP APIs listen on PORT, PORT+1 and PORT+2 (n1, n2, n3), and their
    /// peer (replication) ports on PORT+1000, PORT+1001 and PORT+1002
    #[arg(long, env = "SCRIBE_DEMO_PORT", default_value_t = 5480)]
    pub port: u16,
    /// Base port of the PostgreSQL protocol: n1, n2 and n3 serve psql, pgbench and other
    /// PostgreSQL clients on PG_PORT, PG_PORT+1 and PG_PORT+2; 0: not served
    #[arg(long, env = "SCRIBE_DEMO_PG_PORT", default_value_t = 5433)]
    pub pg_port: u16,
    /// Run the walkthrough and stop the nodes, instead of keeping the cluster up until Ctrl-C
    #[arg(long, env = "SCRIBE_DEMO_NO_WAIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_wait: bool,
}

/// How long a node may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping node gets after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long step 3 waits for the replica to apply the insert.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// How long step 5 waits for the primary to hear that both replicas applied the insert.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// Offset of a node's peer port from its HTTP port.
const PEER_PORT_OFFSET: u16 = 1000;
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 15;

/// One node of the demo cluster: its name, role and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSpec {
    name: &'static str,
    /// The primary follows nobody; a replica follows the primary's peer address.
    follow: Option<SocketAddr>,
    http: SocketAddr,
    peer: SocketAddr,
    /// Where it serves the PostgreSQL protocol, if it does.
    pg: Option<SocketAddr>,
}

impl NodeSpec {
    fn role(&self) -> &'static str {
        if self.follow.is_some() {
            "replica"
        } else {
            "primary"
        }
    }

    /// The arguments of `scribe node` for this node with its data under `data`.
    fn node_args(&self, data: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "node".into(),
            "--name".into(),
            self.name.into(),
            "--data".into(),
            data.into(),
            "--http".into(),
            self.http.to_string().into(),
            "--peer".into(),
            self.peer.to_string().into(),
        ];
        if let Some(primary) = self.follow {
            a.extend(["--follow".into(), primary.to_string().into()]);
        }
        if let Some(pg) = self.pg {
            a.extend(["--pg".into(), pg.to_string().into()]);
        }
        a.extend(["--log".into(), "info".into()]);
        a
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The cluster on base port `port`: n1 the primary, n2 and n3 replicas following it.
fn plan(port: u16, pg_port: u16) -> anyhow::Result<Vec<NodeSpec>> {
    if pg_port > u16::MAX - 2 {
        bail!("--pg-port must be at most {}", u16::MAX - 2);
    }
    let highest = port.checked_add(PEER_PORT_OFFSET + 2);
    if port == 0 || highest.is_none() {
        bail!(
            "--port must be between 1 and {}: the nodes use PORT to PORT+2 for HTTP and PORT+{PEER_PORT_OFFSET} to PORT+{} for replication",
            u16::MAX - PEER_PORT_OFFSET - 2,
            PEER_PORT_OFFSET + 2
        );
    }
    let primary_peer = local(port + PEER_PORT_OFFSET);
    Ok(["n1", "n2", "n3"]
        .into_iter()
        .zip(0u16..)
        .map(|(name, i)| NodeSpec {
            name,
            follow: (i > 0).then_some(primary_peer),
            http: local(port + i),
            peer: local(port + PEER_PORT_OFFSET + i),
            pg: (pg_port != 0).then(|| local(pg_port + i)),
        })
        .collect())
}

/// Whether a directory entry is something an earlier demo run left: a node's data directory or
/// its log file. Anything else makes the demo refuse to wipe the directory.
fn is_demo_leftover(entry: &str, specs: &[NodeSpec]) -> bool {
    specs
        .iter()
        .any(|s| entry == s.name || entry.strip_suffix(".log") == Some(s.name))
}

/// Empties `dir` of an earlier run's nodes, or creates it.
fn prepare_dir(dir: &Path, specs: &[NodeSpec]) -> anyhow::Result<()> {
    if dir.exists() {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("list directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("list directory {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_demo_leftover(&name, specs) {
                bail!(
                    "{} holds {name:?}, which the demo did not make; give the demo a directory of its own with --dir",
                    dir.display()
                );
            }
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("clear demo directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create demo directory {}", dir.display()))
}

/// The URL in a node's start line `scribe node NAME listening on http://ADDR`.
fn listening_url(line: &str, name: &str) -> Option<String> {
    let url = line
        .trim()
        .strip_prefix(&format!("scribe node {name} listening on "))?;
    url.starts_with("http://").then(|| url.to_string())
}

/// The last `n` lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("   | {l}\n"))
        .collect()
}

/// A child `scribe node`. Dropping it stops it: SIGTERM, then SIGKILL after [`STOP_GRACE`].
struct ChildNode {
    spec: NodeSpec,
    url: String,
    log: PathBuf,
    child: Child,
    signalled: bool,
}

impl ChildNode {
    /// Starts the node with its data in `dir/NAME` and its messages in `dir/NAME.log`, and waits
    /// for the line on its standard output that says it is listening.
    async fn start(spec: &NodeSpec, dir: &Path) -> anyhow::Result<ChildNode> {
        let name = spec.name;
        let exe = std::env::current_exe().context("find the scribe executable")?;
        let log = dir.join(format!("{name}.log"));
        let log_file =
            File::create(&log).with_context(|| format!("create log file {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(spec.node_args(&dir.join(name)))
            // Plain text in the log file, not terminal colours.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start node {name}"))?;
        let out = child
            .stdout
            .take()
            .context("take the node's standard output")?;
        // From here on, dropping `node` stops the child.
        let mut node = ChildNode {
            spec: spec.clone(),
            url: String::new(),
            log,
            child,
            signalled: false,
        };
        let first_line = read_first_line(out);
        let line = match tokio::time::timeout(START_TIMEOUT, first_line).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = node.wait_for_exit(Duration::from_secs(2)).await;
                bail!(
                    "node {name} exited at start ({}); the end of its log {}:\n{}",
                    status.map_or_else(|| "still running".to_string(), |s| s.to_string()),
                    node.log.display(),
                    tail(&node.read_log(), LOG_TAIL_LINES)
                );
            }
            Err(_) => bail!(
                "node {name} did not say it was listening within {}s; see its log {}",
                START_TIMEOUT.as_secs(),
                node.log.display()
            ),
        };
        node.url = listening_url(&line, name)
            .ok_or_else(|| anyhow!("node {name} started with an unexpected line {line:?}"))?;
        Ok(node)
    }

    fn read_log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    async fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => return None,
            }
        }
    }

    /// Asks the node to stop (SIGTERM), once, if it is still running.
    fn terminate(&mut self) {
        if self.signalled || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signalled = true;
        // SAFETY: signalling our own child process, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the node to exit until `deadline`, then kills it.
    fn wait_or_kill(&mut self, deadline: Instant) {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        eprintln!(
            "node {} did not stop within {}s of SIGTERM; killing it",
            self.spec.name,
            STOP_GRACE.as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.terminate();
        self.wait_or_kill(Instant::now() + STOP_GRACE);
    }
}

/// Reads the first line a child prints on `out` (an error at end of output), then keeps draining
/// it on the same thread so the child never blocks on a full pipe.
fn read_first_line(out: std::process::ChildStdout) -> tokio::sync::oneshot::Receiver<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        if !matches!(out.read_line(&mut line), Ok(n) if n > 0) {
            return; // dropping `tx` says the output ended
        }
        let _ = tx.send(line);
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    rx
}

/// The running nodes. Dropping it stops them all at once: SIGTERM to each, then one shared
/// grace period.
#[derive(Default)]
struct Cluster {
    nodes: Vec<ChildNode>,
}

impl Cluster {
    fn stop(&mut self) {
        for n in &mut self.nodes {
            n.terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for mut n in self.nodes.drain(..) {
            n.wait_or_kill(deadline);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn step(n: u32, text: &str) {
    println!("\n── step {n}: {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

/// POSTs one statement to `/v1/execute` and returns the whole answer: the shared client keeps
/// only the fields it knows, and the demo shows `durability` too.
async fn execute_json(http: &reqwest::Client, url: &str, sql: &str) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{url}/v1/execute"))
        .json(&json!({"statements": [{"sql": sql}]}))
        .send()
        .await
        .with_context(|| format!("reach {url}"))?;
    let status = r.status();
    let v: Value = r
        .json()
        .await
        .with_context(|| format!("read the answer of {url}"))?;
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    Ok(v)
}

/// The LSN in a position token (`"term/lsn"`), as an answer carries it.
fn position_lsn(v: &Value) -> Option<u64> {
    v.as_str()?.parse::<Position>().ok().map(|p| p.lsn.0)
}

/// Waits until the node's `applied_lsn` reaches `lsn`, for at most `limit`. Returns how long
/// after `since` it saw that, or `Err` with the last applied LSN it saw when time ran out.
async fn wait_applied(
    node: &Client,
    lsn: u64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Result<Duration, u64>> {
    let deadline = Instant::now() + limit;
    loop {
        let s: Value = node
            .status()
            .await
            .with_context(|| format!("read the status of {}", node.url()))?;
        let applied = s["applied_lsn"].as_u64().unwrap_or(0);
        if applied >= lsn {
            return Ok(Ok(since.elapsed()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(applied));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `replicas` of a primary's status, or none.
fn replicas(status: &Value) -> &[Value] {
    status["replicas"].as_array().map_or(&[], Vec::as_slice)
}

/// Whether the primary knows of `count` replicas that all applied `lsn`.
fn all_applied(status: &Value, count: usize, lsn: u64) -> bool {
    let r = replicas(status);
    r.len() >= count
        && r.iter()
            .all(|x| x["applied_lsn"].as_u64().is_some_and(|a| a >= lsn))
}

/// The columns of the replication status table: the field of each replica object, and its
/// header.
const REPLICA_COLUMNS: [(&str, &str); 11] = [
    ("name", "replica"),
    ("state", "state"),
    ("written_lsn", "written"),
    ("flushed_lsn", "flushed"),
    ("applied_lsn", "applied"),
    ("lag_records", "lag rec"),
    ("lag_bytes", "lag bytes"),
    ("write_lag_ms", "write ms"),
    ("flush_lag_ms", "flush ms"),
    ("apply_lag_ms", "apply ms"),
    ("last_contact_ms_ago", "contact ms ago"),
];

/// What the columns of the replication status table mean.
const REPLICA_LEGEND: [&str; 4] = [
    "written / flushed / applied: the last LSN the replica has received, fsynced in its log,",
    "  and applied to its SQLite; lag rec / lag bytes: what n1 has that it has not applied;",
    "write / flush / apply ms: age of the oldest record it has not yet received, fsynced,",
    "  applied (0 when caught up); contact ms ago: since n1 last heard from it.",
];

/// The replication status table of a primary's status: headers and one row per replica.
/// Fractions are cut to two decimals; a missing or null field shows as `-`.
fn replica_table(status: &Value) -> (Vec<String>, Vec<Vec<Value>>) {
    let columns = REPLICA_COLUMNS.iter().map(|(_, h)| h.to_string()).collect();
    let rows = replicas(status)
        .iter()
        .map(|r| {
            REPLICA_COLUMNS
                .iter()
                .map(|(field, _)| match r.get(*field) {
                    None | Some(Value::Null) => Value::from("-"),
                    Some(Value::Number(n)) if n.is_f64() => {
                        let x = n.as_f64().unwrap_or(0.0);
                        json!((x * 100.0).round() / 100.0)
                    }
                    Some(v) => v.clone(),
                })
                .collect()
        })
        .collect();
    (columns, rows)
}

/// Steps 1 to 5 against the running cluster.
async fn walkthrough(cluster: &Cluster) -> anyhow::Result<()> {
    let [n1, n2, _] = &cluster.nodes[..] else {
        bail!("the demo needs three nodes");
    };
    let http = reqwest::Client::new();
    let primary = Client::new(&n1.url)?;
    let replica = Client::new(&n2.url)?;

    step(1, "create a table on the primary");
    let exists = primary
        .query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'",
            &Value::Null,
        )
        .await
        .context("look for the users table on n1")?;
    let create = if exists.rows.is_empty() {
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)"
    } else {
        println!("   The users table is already there from an earlier run, so:");
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)"
    };
    println!("   {create}   (on n1)");
    let v = execute_json(&http, &n1.url, create)
        .await
        .context("create the users table on n1")?;
    println!(
        "   ok at position {}: the change is durable in n1's change log, which n2 and n3 follow.",
        v["position"].as_str().unwrap_or("?")
    );

    step(2, "insert Alice on the primary");
    let insert = "INSERT INTO users (name) VALUES ('Alice')";
    println!("   {insert}   (on n1)");
    let v = execute_json(&http, &n1.url, insert)
        .await
        .context("insert Alice on n1")?;
    let committed_at = Instant::now();
    let position = v["position"].as_str().unwrap_or("?");
    let lsn = position_lsn(&v["position"])
        .ok_or_else(|| anyhow!("n1 answered without a position token: {v}"))?;
    println!("   1 row, id {}", v["results"][0]["last_insert_id"]);
    println!(
        "   position   {position}   the position token \"term/lsn\" of the transaction's record"
    );
    match v.get("durability") {
        Some(d) => {
            println!("   durability {d}");
            println!(
                "              what the commit reached before n1 answered: by default (async)"
            );
            println!("              n1's own log flush; semi-sync and sync also wait for replicas");
        }
        None => println!("   (n1's answer carries no durability object)"),
    }

    step(3, "read her back from the replica n2");
    println!(
        "   Replication is asynchronous by default: n1 answered once the record was in its own"
    );
    println!(
        "   log, and n2 applies it a moment later. Waiting for n2's applied_lsn to reach {lsn}..."
    );
    match wait_applied(&replica, lsn, committed_at, APPLY_WAIT).await? {
        Ok(took) => println!("   n2 applied it {} ms after the commit.", took.as_millis()),
        Err(applied) => println!(
            "   n2 had not applied it after {} s (its applied_lsn is {applied}); reading anyway.",
            APPLY_WAIT.as_secs()
        ),
    }
    let select = "SELECT id, name FROM users WHERE name = 'Alice'";
    println!("   {select}   (on n2)");
    let rows = replica
        .query(select, &Value::Null)
        .await
        .context("read Alice on n2")?;
    print!("{}", indent(&table::render(&rows.columns, &rows.rows)));

    step(4, "send writes to the replica");
    println!("   Replicas are read-only. A write sent to one is forwarded to the primary, and the");
    println!("   answer says so; with \"forward\": false it is refused, naming the primary.");
    let write = "INSERT INTO users (name) VALUES ('Bob')";
    println!("   {write}   (on n2, \"forward\": false)");
    let r = http
        .post(format!("{}/v1/execute", n2.url))
        .json(&json!({"statements": [{"sql": write}], "forward": false}))
        .send()
        .await
        .context("write on n2")?;
    let v: Value = r.json().await.context("read the answer of n2")?;
    match v["error"]["message"].as_str() {
        Some(message) => println!("   n2 refused it: {message}"),
        None => println!("   n2 answered {v}, which a replica should not do."),
    }
    println!("   {write}   (on n2)");
    let v = execute_json(&http, &n2.url, write)
        .await
        .context("forwarded write on n2")?;
    println!(
        "   forwarded to {}: committed at position {}, id {}",
        v["forwarded_to"].as_str().unwrap_or("?"),
        v["position"].as_str().unwrap_or("?"),
        v["results"][0]["last_insert_id"]
    );
    let lsn = position_lsn(&v["position"]).unwrap_or(lsn);

    step(5, "replication status, as the primary sees it");
    // Give the replicas' acknowledgements a moment to reach n1, so the table shows them
    // caught up rather than a report in flight.
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let status = loop {
        let s: Value = primary.status().await.context("read the status of n1")?;
        if all_applied(&s, cluster.nodes.len() - 1, lsn) || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("   GET {}/v1/status   (its replicas)", n1.url);
    if replicas(&status).is_empty() {
        println!("   n1 lists no replicas.");
    } else {
        let (columns, rows) = replica_table(&status);
        print!("{}", indent(&table::render(&columns, &rows)));
        for line in REPLICA_LEGEND {
            println!("   {line}");
        }
    }
    Ok(())
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let specs = plan(args.port, args.pg_port)?;
    prepare_dir(&args.dir, &specs)?;
    let dir = args.dir.display();
    println!("Scribe demo: a primary and two replicas under {dir}/");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut cluster = Cluster::default();
    rt.block_on(async {
        // Listening from the start, so Ctrl-C at any step still stops the nodes.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let demo = async {
            for spec in &specs {
                let node = ChildNode::start(spec, &args.dir).await?;
                println!(
                    "   {} ({}) at {}, peer {}, log {}",
                    spec.name,
                    spec.role(),
                    node.url,
                    spec.peer,
                    node.log.display()
                );
                cluster.nodes.push(node);
            }
            walkthrough(&cluster).await
        };
        tokio::select! {
            _ = &mut ctrl_c => {
                println!("\nInterrupted; stopping the nodes.");
                return Ok(130);
            }
            r = demo => r.map_err(|e| anyhow!("demo failed: {e:#}\n(the nodes' logs are in {dir}/)"))?,
        }
        if args.no_wait {
            println!("\nDone; stopping the nodes.");
            return Ok(0);
        }
        println!("\nThe cluster keeps running:");
        for (spec, node) in specs.iter().zip(&cluster.nodes) {
            println!(
                "   {} ({})  {}   log {}",
                spec.name,
                spec.role(),
                node.url,
                node.log.display()
            );
        }
        let (primary, replica) = (&cluster.nodes[0].url, &cluster.nodes[1].url);
        println!("Try:");
        println!("   scribe sql --url {primary}      # the primary: reads and writes");
        println!("   scribe sql --url {replica}      # a replica: reads");
        println!("   scribe status --url {primary}   # the replicas and their lag");
        if let (Some(p1), Some(p2)) = (specs[0].pg, specs[1].pg) {
            println!(
                "   psql -h 127.0.0.1 -p {} -U scribe -c \"SELECT * FROM users\"   # PostgreSQL clients: n1",
                p1.port()
            );
            println!(
                "   psql -h 127.0.0.1 -p {} -U scribe   # n2, a replica: writes go to n1, reads see them",
                p2.port()
            );
        }
        println!("   curl -s {primary}/metrics");
        println!("Press Ctrl-C to stop.");
        let _ = ctrl_c.await;
        println!("\nStopping the nodes.");
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_a_primary_and_two_replicas_following_it() {
        let specs = plan(5480, 5433).unwrap();
        let args: Vec<String> = specs
            .iter()
            .map(|s| {
                s.node_args(Path::new("d"))
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            args,
            [
                "node --name n1 --data d --http 127.0.0.1:5480 --peer 127.0.0.1:6480 --pg 127.0.0.1:5433 --log info",
                "node --name n2 --data d --http 127.0.0.1:5481 --peer 127.0.0.1:6481 --follow 127.0.0.1:6480 --pg 127.0.0.1:5434 --log info",
                "node --name n3 --data d --http 127.0.0.1:5482 --peer 127.0.0.1:6482 --follow 127.0.0.1:6480 --pg 127.0.0.1:5435 --log info",
            ]
        );
        assert_eq!(
            specs.iter().map(NodeSpec::role).collect::<Vec<_>>(),
            ["primary", "replica", "replica"]
        );
    }

    #[test]
    fn ports_that_do_not_fit_are_refused() {
        assert!(plan(0, 5433).is_err());
        assert!(plan(5480, u16::MAX).is_err());
        assert!(plan(u16::MAX - 1001, 0).is_err());
        let top = plan(u16::MAX - 1002, 0).unwrap();
        assert_eq!(top[2].peer.port(), u16::MAX);
    }

    #[test]
    fn only_an_earlier_runs_files_are_wiped() {
        let specs = plan(5480, 5433).unwrap();
        for ok in ["n1", "n2", "n3", "n1.log", "n3.log"] {
            assert!(is_demo_leftover(ok, &specs), "{ok}");
        }
        for other in ["n4", "notes.txt", ".log", "n1.log.old", "src"] {
            assert!(!is_demo_leftover(other, &specs), "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        let demo = dir.path().join("demo");
        std::fs::create_dir_all(demo.join("n1")).unwrap();
        std::fs::write(demo.join("n1.log"), "old").unwrap();
        prepare_dir(&demo, &specs).unwrap();
        assert_eq!(std::fs::read_dir(&demo).unwrap().count(), 0);
        std::fs::write(demo.join("precious.db"), "keep").unwrap();
        let e = prepare_dir(&demo, &specs).unwrap_err();
        assert!(e.to_string().contains("precious.db"), "{e}");
        assert!(demo.join("precious.db").exists());
    }

    #[test]
    fn the_start_line_gives_the_url() {
        assert_eq!(
            listening_url("scribe node n2 listening on http://127.0.0.1:5481\n", "n2").as_deref(),
            Some("http://127.0.0.1:5481")
        );
        assert_eq!(
            listening_url("scribe node n2 listening on http://127.0.0.1:5481", "n3"),
            None
        );
        assert_eq!(listening_url("error: unexpected argument", "n2"), None);
    }

    #[test]
    fn a_failed_start_shows_the_end_of_the_log() {
        let log: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log, 3);
        assert_eq!(t, "   | line 18\n   | line 19\n   | line 20\n");
        assert_eq!(tail("only\n", 3), "   | only\n");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn positions_give_their_lsn() {
        assert_eq!(position_lsn(&json!("1/42")), Some(42));
        assert_eq!(position_lsn(&json!("42")), None);
        assert_eq!(position_lsn(&json!(42)), None);
    }

    #[test]
    fn the_replica_table_has_a_row_per_replica() {
        let status = json!({"replicas": [
            {"name": "n2", "state": "streaming", "written_lsn": 7, "flushed_lsn": 7, "applied_lsn": 6,
             "lag_records": 1, "lag_bytes": 120, "write_lag_ms": 0.1234, "flush_lag_ms": 0.5,
             "apply_lag_ms": null, "last_contact_ms_ago": 12, "extra": true},
            {"name": "n3", "state": "connecting"},
        ]});
        let (columns, rows) = replica_table(&status);
        assert_eq!(columns.len(), REPLICA_COLUMNS.len());
        assert_eq!(columns[0], "replica");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            vec![
                json!("n2"),
                json!("streaming"),
                json!(7),
                json!(7),
                json!(6),
                json!(1),
                json!(120),
                json!(0.12),
                json!(0.5),
                json!("-"),
                json!(12)
            ]
        );
        assert_eq!(rows[1][0], json!("n3"));
        assert!(rows[1][2..].iter().all(|v| v == "-"));
        assert!(!all_applied(&status, 2, 7));
        assert!(!all_applied(&status, 2, 6));
        assert!(all_applied(
            &json!({"replicas": [{"applied_lsn": 6}, {"applied_lsn": 9}]}),
            2,
            6
        ));
        assert!(!all_applied(
            &json!({"replicas": [{"applied_lsn": 9}]}),
            2,
            6
        ));
        assert!(replica_table(&json!({"role": "primary"})).1.is_empty());
    }
}
