//! Test support for crates that drive real `scribe node` processes as an application would: the
//! binary, a node process killed when dropped, a primary with a replica that may be made to lag
//! (the test-only `SCRIBE_TEST_APPLY_DELAY_MS`), and waiting on a node's status. Not published;
//! a dev-dependency only.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod netns;

/// The `scribe` binary: `$SCRIBE_BIN`, else beside this test's target directory (where
/// `cargo build -p scribe` puts it), else under `$CARGO_TARGET_DIR` or the workspace's `target`.
pub fn scribe_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SCRIBE_BIN") {
        return PathBuf::from(bin);
    }
    let mut candidates = Vec::new();
    // target/debug/deps/<test> -> target/debug/scribe
    if let Ok(exe) = std::env::current_exe() {
        if let Some(debug) = exe.parent().and_then(Path::parent) {
            candidates.push(debug.join("scribe"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug/scribe"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/scribe"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no scribe binary at {candidates:?}: build it first (cargo build -p scribe) or set SCRIBE_BIN"
            )
        })
}

/// A `scribe node` process that has said where it listens.
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// Its HTTP API, from its first line on stdout.
    pub url: String,
    /// What it writes on stderr, collected until it exits.
    pub stderr: std::thread::JoinHandle<String>,
}

/// Runs `BIN node --name NAME --http 127.0.0.1:0 --data DIR EXTRA...` with `SCRIBE_LOG=warn` and
/// `env`, and waits for its listening line; keeps draining its stdout. On a node that exits before
/// listening, answers what it printed.
pub fn spawn_node(
    bin: &Path,
    name: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Spawned, String> {
    spawn_node_with(&[], "127.0.0.1:0", bin, name, dir, extra, env)
}

/// [`spawn_node`] run through `wrapper` (a command prefix, as `ip netns exec NS`; empty for
/// none) with `--http http`.
pub fn spawn_node_with(
    wrapper: &[String],
    http: &str,
    bin: &Path,
    name: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Spawned, String> {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["node", "--name", name, "--http", http, "--data"])
        .arg(dir)
        .args(extra)
        .env("SCRIBE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not be spawned from {}: {e}", bin.display()))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    if out.read_line(&mut line).unwrap_or(0) == 0 {
        let status = child.wait().map_err(|e| e.to_string())?;
        let err = stderr.join().unwrap_or_default();
        return Err(format!(
            "exited with {status} before listening; stderr:\n{err}"
        ));
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = out.read_to_string(&mut sink);
    });
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("printed an unexpected first line {line:?}"));
    }
    Ok(Spawned { child, url, stderr })
}

/// A `scribe node` process, killed when dropped.
pub struct NodeProc {
    child: Child,
    /// Its HTTP API.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl NodeProc {
    /// Starts `scribe node` on a free HTTP port with `extra` flags and `env`, and waits for its
    /// listening line.
    pub fn start(name: &str, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let spawned = spawn_node(&scribe_bin(), name, dir, extra, env)
            .unwrap_or_else(|e| panic!("node {name} {e}"));
        NodeProc {
            child: spawned.child,
            url: spawned.url,
            name: name.to_string(),
        }
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on 127.0.0.1 right now, below the kernel's range for outgoing connections
/// (32768 and up by default), so that a node restarted on it later does not find it taken by
/// some client's ephemeral port; spread at random, and handed out once per process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A primary (`n1`) and one replica (`n2`) that pauses `apply_delay_ms` between fsync and apply,
/// with their data in a temporary directory.
pub struct Pair {
    pub primary: NodeProc,
    pub replica: NodeProc,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts both, creates `t (id INTEGER PRIMARY KEY, v TEXT)` on the primary and waits until
    /// the replica streams and has applied it.
    pub async fn start_with_table(apply_delay_ms: u64) -> Pair {
        Self::start_inner(apply_delay_ms, true).await
    }

    /// Starts both and waits until the replica streams from the primary.
    pub async fn start(apply_delay_ms: u64) -> Pair {
        Self::start_inner(apply_delay_ms, false).await
    }

    async fn start_inner(apply_delay_ms: u64, table: bool) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer = format!("127.0.0.1:{}", free_port());
        let primary = NodeProc::start("n1", &dir.path().join("n1"), &["--peer", &peer], &[]);
        let delay = apply_delay_ms.to_string();
        let replica = NodeProc::start(
            "n2",
            &dir.path().join("n2"),
            &["--follow", &peer],
            &[("SCRIBE_TEST_APPLY_DELAY_MS", &delay)],
        );
        if table {
            let http = reqwest::Client::new();
            let r = http
                .post(format!("{}/v1/execute", primary.url))
                .json(&serde_json::json!({"statements": [{"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}]}))
                .send()
                .await
                .expect("create table");
            assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
        }
        let applied = u64::from(table);
        wait_status(
            &replica.url,
            Duration::from_secs(20),
            "n2 streams from n1",
            |s| {
                s["replication"]["state"] == "streaming"
                    && s["applied_lsn"].as_u64() >= Some(applied)
            },
        )
        .await;
        wait_status(
            &primary.url,
            Duration::from_secs(20),
            "n1 sees n2 streaming",
            |s| s["replicas"][0]["state"] == "streaming",
        )
        .await;
        Pair {
            primary,
            replica,
            _dir: dir,
        }
    }
}

/// Polls a node's status until `f` holds; panics after `within`.
pub async fn wait_status(
    url: &str,
    within: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let s: serde_json::Value = match http.get(format!("{url}/v1/status")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}; status {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
