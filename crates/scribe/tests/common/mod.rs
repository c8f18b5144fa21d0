//! Test harness: the real `scribe` binary as a child process, driven over HTTP as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `scribe` binary under test.
pub fn scribe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scribe"))
}

/// Runs `scribe ARGS...` to the end: its exit code, stdout and stderr.
pub fn scribe_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(scribe_bin())
        .args(args)
        .output()
        .expect("run scribe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `scribe node` process.
pub struct NodeProc {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub name: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl NodeProc {
    /// Starts `scribe node` on a free port and waits until it answers.
    pub fn start(name: &str, dir: &Path, extra: &[&str]) -> NodeProc {
        Self::try_start(name, dir, extra)
            .unwrap_or_else(|e| panic!("node {name} did not start: {e}"))
    }

    /// Starts `scribe node`; on failure returns what it printed.
    pub fn try_start(name: &str, dir: &Path, extra: &[&str]) -> Result<NodeProc, String> {
        Self::try_start_env(name, dir, extra, &[])
    }

    /// Starts `scribe node` with extra environment variables; on failure returns what it printed.
    pub fn try_start_env(
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProc, String> {
        Self::try_start_with(&[], "127.0.0.1:0", name, dir, extra, env)
    }

    /// Starts `scribe node` through `wrapper` (as `ip netns exec NS`) with `--http http`.
    pub fn try_start_with(
        wrapper: &[String],
        http: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProc, String> {
        let scribe_testkit::Spawned { child, url, stderr } =
            scribe_testkit::spawn_node_with(wrapper, http, &scribe_bin(), name, dir, extra, env)?;
        Ok(NodeProc {
            child,
            url,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            stderr: Some(stderr),
        })
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit status and what the node printed on stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let err = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default();
                return (status, err);
            }
            assert!(
                Instant::now() < deadline,
                "node did not stop within 20s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `scribe node` that serves PostgreSQL too, on a port of its own.
pub struct PgNode {
    pub node: NodeProc,
    /// Its PostgreSQL port on 127.0.0.1.
    pub pg: u16,
}

impl PgNode {
    /// Starts node `name` in `dir/name` with `--pg 127.0.0.1:<a free port>` and `extra`.
    pub fn start(name: &str, dir: &Path, extra: &[&str]) -> PgNode {
        let pg = scribe_testkit::free_port();
        let addr = format!("127.0.0.1:{pg}");
        let mut args = vec!["--pg", addr.as_str()];
        args.extend_from_slice(extra);
        PgNode {
            node: NodeProc::start(name, &dir.join(name), &args),
            pg,
        }
    }

    /// Where its PostgreSQL port listens.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg)
    }
}

/// A plain HTTP client for the node's API.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str) -> Api {
        Self::with_headers(url, reqwest::header::HeaderMap::new())
    }

    /// An `Api` whose every request carries HTTP Basic credentials (a node with `--users`).
    pub fn with_basic_auth(url: &str, user: &str, password: &str) -> Api {
        let credentials = scribe_client::Credentials::Basic {
            user: user.into(),
            password: password.into(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            credentials.header().expect("header value"),
        );
        Self::with_headers(url, headers)
    }

    fn with_headers(url: &str, headers: reqwest::header::HeaderMap) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .expect("client");
        Api {
            url: url.to_string(),
            http,
        }
    }

    /// POSTs JSON; returns the status and the parsed body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// POSTs raw bytes.
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    pub async fn execute(&self, statements: &[&str]) -> Result<(u16, Value), reqwest::Error> {
        let st: Vec<Value> = statements.iter().map(|s| json!({ "sql": s })).collect();
        self.post("/v1/execute", &json!({ "statements": st })).await
    }

    /// Runs a query that must succeed; returns its rows.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let (status, body) = self
            .post("/v1/query", &json!({ "sql": sql }))
            .await
            .expect("query");
        assert_eq!(status, 200, "{sql}: {body}");
        serde_json::from_value(body["rows"].clone()).expect("rows")
    }

    pub async fn status(&self) -> Value {
        self.http
            .get(format!("{}/v1/status", self.url))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// A seed from `SCRIBE_TEST_SEED`, or a fresh one; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SCRIBE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: SCRIBE_TEST_SEED={seed}");
    seed
}

#[allow(unused_imports)]
pub use scribe_testkit::free_port;

/// Starts a primary with a peer listener on `peer` (HOST:PORT).
pub fn start_primary(name: &str, dir: &Path, peer: &str, extra: &[&str]) -> NodeProc {
    let mut args = vec!["--peer", peer];
    args.extend_from_slice(extra);
    NodeProc::start(name, dir, &args)
}

/// Starts a replica following the primary's peer address.
pub fn start_replica(name: &str, dir: &Path, follow: &str, extra: &[&str]) -> NodeProc {
    start_replica_env(name, dir, follow, extra, &[])
}

/// Starts a replica with extra environment variables (test-only fault injection).
pub fn start_replica_env(
    name: &str,
    dir: &Path,
    follow: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> NodeProc {
    let mut args = vec!["--follow", follow];
    args.extend_from_slice(extra);
    NodeProc::try_start_env(name, dir, &args, env)
        .unwrap_or_else(|e| panic!("replica {name} did not start: {e}"))
}

/// Waits until every replica has applied everything the primary has flushed, and the primary
/// sees them streaming; panics after `within`.
pub async fn wait_caught_up(primary: &Api, replicas: &[&Api], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let p = primary.status().await;
        let target = p["flushed_lsn"].as_u64().expect("flushed_lsn");
        let mut behind = Vec::new();
        for r in replicas {
            let s = r.status().await;
            let applied = s["applied_lsn"].as_u64().unwrap_or(0);
            if applied < target {
                behind.push(format!("{} at {applied}", s["node"]));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not catch up to lsn {target} within {within:?}: {behind:?}; primary status {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A checksum over every user table's contents, read through the node's API.
pub async fn checksum(api: &Api) -> (u64, usize) {
    let tables = api
        .rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_scribe_%' ORDER BY name")
        .await;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut rows_seen = 0;
    for t in tables {
        let name = t[0].as_str().expect("table name").to_string();
        let rows = api
            .rows(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .await;
        rows_seen += rows.len();
        let text = format!("{name}:{}", serde_json::to_string(&rows).expect("json"));
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (h, rows_seen)
}

/// Waits until `f` holds for the node's status, or panics after `within`.
pub async fn wait_status(
    api: &Api,
    within: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    scribe_testkit::wait_status(&api.url, within, what, f).await
}

/// A small tmpfs mounted for a test (needs root), unmounted when dropped.
pub struct Mount(pub PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None` where it cannot.
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?
            .success();
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Whether `tool ARGS` runs; says SKIPPED when it does not, and panics instead when
/// `SCRIBE_REQUIRE_PG_TOOLS=1` (set by CI, which installs the PostgreSQL tools).
pub fn have_tool(tool: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("SCRIBE_REQUIRE_PG_TOOLS").as_deref() == Ok("1") {
            panic!(
                "{tool} is required (SCRIBE_REQUIRE_PG_TOOLS=1) but `{tool} {}` failed",
                args.join(" ")
            );
        }
        eprintln!("SKIPPED: {tool} is not installed (see .ci/run for what to install)");
    }
    found
}

/// `psql` to 127.0.0.1:`port` as `user`, database `scribe`, no psqlrc; with `password` in
/// `PGPASSWORD`, or none at all.
pub fn psql_command(port: u16, user: &str, password: Option<&str>) -> std::process::Command {
    let mut cmd = std::process::Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-d", "scribe", "-X", "-w"]);
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    cmd
}

/// Runs `psql ARGS` (stopping at the first error) as `user`: success, stdout, stderr.
pub fn psql_as(
    port: u16,
    user: &str,
    password: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let out = psql_command(port, user, password)
        .args(["-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
