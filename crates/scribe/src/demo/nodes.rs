//! The demo's three nodes as child processes: which ports and flags each gets (all three are
//! members of one cluster, `--cluster`, so the control plane elects the primary and fails over),
//! the demo directory they live in, and [`Cluster`], which starts them, kills one with SIGKILL,
//! restarts it on the same data, and stops them all (SIGTERM, then SIGKILL after a grace period)
//! when it is dropped, on every way out of the demo.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How long a node may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping node gets after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Offset of a node's peer port from its HTTP port.
const PEER_PORT_OFFSET: u16 = 1000;
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 15;
/// The default commit mode the nodes run with: the primary answers once a replica has the
/// transaction fsynced, so a failover loses no acknowledged write.
pub(super) const COMMIT_MODE: &str = "semi-sync";
/// Which replicas count for [`COMMIT_MODE`]: any one of them.
pub(super) const SYNC_REPLICAS: &str = "ANY 1 (*)";

/// One node of the demo cluster: its name and addresses, and the member list it shares with
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeSpec {
    pub(super) name: &'static str,
    pub(super) http: SocketAddr,
    pub(super) peer: SocketAddr,
    /// Where it serves the PostgreSQL protocol, if it does.
    pub(super) pg: Option<SocketAddr>,
    /// The `--cluster` list, `n1=PEER1,n2=PEER2,n3=PEER3`: the same on every node.
    pub(super) members: String,
}

impl NodeSpec {
    /// The arguments of `scribe node` for this node with its data under `data`.
    pub(super) fn node_args(&self, data: &Path) -> Vec<OsString> {
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
            "--cluster".into(),
            self.members.clone().into(),
            "--commit".into(),
            COMMIT_MODE.into(),
            "--sync-replicas".into(),
            SYNC_REPLICAS.into(),
        ];
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

/// The cluster on base port `port`: n1, n2 and n3, members of one cluster, on HTTP ports
/// PORT..PORT+2 and peer ports PORT+1000..PORT+1002.
pub(super) fn plan(port: u16, pg_port: u16) -> anyhow::Result<Vec<NodeSpec>> {
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
    let names = ["n1", "n2", "n3"];
    let peer = |i: u16| local(port + PEER_PORT_OFFSET + i);
    let members = names
        .iter()
        .zip(0u16..)
        .map(|(name, i)| format!("{name}={}", peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    Ok(names
        .into_iter()
        .zip(0u16..)
        .map(|(name, i)| NodeSpec {
            name,
            http: local(port + i),
            peer: peer(i),
            pg: (pg_port != 0).then(|| local(pg_port + i)),
            members: members.clone(),
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
pub(super) fn prepare_dir(dir: &Path, specs: &[NodeSpec]) -> anyhow::Result<()> {
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
pub(super) struct ChildNode {
    pub(super) spec: NodeSpec,
    pub(super) url: String,
    pub(super) log: PathBuf,
    child: Child,
    signalled: bool,
}

impl ChildNode {
    /// Starts the node with its data in `dir/NAME` and its messages appended to `dir/NAME.log`
    /// (a restart keeps the earlier run's messages), and waits for the line on its standard
    /// output that says it is listening.
    async fn start(spec: &NodeSpec, dir: &Path) -> anyhow::Result<ChildNode> {
        let name = spec.name;
        let exe = std::env::current_exe().context("find the scribe executable")?;
        let log = dir.join(format!("{name}.log"));
        let log_file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open log file {}", log.display()))?;
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

    /// The child's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
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

    /// Kills the node at once (SIGKILL: no shutdown, no hand-over) and reaps it.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.signalled = true;
        self.child
            .kill()
            .with_context(|| format!("kill node {}", self.spec.name))?;
        self.child
            .wait()
            .with_context(|| format!("reap node {}", self.spec.name))?;
        Ok(())
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

/// The demo's nodes, in the order of the plan, with their data and logs under `dir`. A killed
/// node keeps its place (and its [`NodeSpec`]) until it is restarted. Dropping the cluster stops
/// the running nodes all at once: SIGTERM to each, then one shared grace period.
pub(super) struct Cluster {
    dir: PathBuf,
    pub(super) nodes: Vec<ChildNode>,
}

impl Cluster {
    /// No nodes yet; they will live under `dir`.
    pub(super) fn new(dir: &Path) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
        }
    }

    /// Starts the node of `spec` and adds it.
    pub(super) async fn start(&mut self, spec: &NodeSpec) -> anyhow::Result<&ChildNode> {
        let node = ChildNode::start(spec, &self.dir).await?;
        self.nodes.push(node);
        Ok(&self.nodes[self.nodes.len() - 1])
    }

    /// Kills node `i` with SIGKILL.
    pub(super) fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill()
    }

    /// Starts node `i` again, with the same arguments and data directory.
    pub(super) async fn restart(&mut self, i: usize) -> anyhow::Result<&ChildNode> {
        let node = ChildNode::start(&self.nodes[i].spec, &self.dir).await?;
        // Replacing the old, dead child: dropping it finds it already reaped.
        self.nodes[i] = node;
        Ok(&self.nodes[i])
    }

    /// The name of node `i`.
    pub(super) fn name(&self, i: usize) -> &'static str {
        self.nodes[i].spec.name
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_are_three_members_of_one_cluster_committing_semi_sync() {
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
        let cluster = "--cluster n1=127.0.0.1:6480,n2=127.0.0.1:6481,n3=127.0.0.1:6482";
        let commit = "--commit semi-sync --sync-replicas ANY 1 (*)";
        assert_eq!(
            args,
            [
                format!("node --name n1 --data d --http 127.0.0.1:5480 --peer 127.0.0.1:6480 {cluster} {commit} --pg 127.0.0.1:5433 --log info"),
                format!("node --name n2 --data d --http 127.0.0.1:5481 --peer 127.0.0.1:6481 {cluster} {commit} --pg 127.0.0.1:5434 --log info"),
                format!("node --name n3 --data d --http 127.0.0.1:5482 --peer 127.0.0.1:6482 {cluster} {commit} --pg 127.0.0.1:5435 --log info"),
            ]
        );
        // No node is told to follow another: the control plane decides who is primary.
        assert!(args.iter().all(|a| !a.contains("--follow")));
        // Without PostgreSQL, no --pg.
        let plain = plan(5480, 0).unwrap();
        assert!(plain.iter().all(|s| s.pg.is_none()));
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
}
