//! The cluster under soak: a primary and two replicas as real `scribe node` processes, each with
//! its data directory and log file under the soak's directory, on loopback ports chosen free once
//! (a restarted replica keeps its ports). Every child's pid is registered so that
//! [`kill_all_children`] can stop them on Ctrl-C or a panic.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::Api;

/// Pids of the running children, for the Ctrl-C and panic paths.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// SIGKILLs every registered child (from a signal handler's task or a panic hook).
pub fn kill_all_children() {
    let pids = match CHILDREN.lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for pid in pids {
        // SAFETY: signalling a process this program started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn register(pid: i32) {
    if let Ok(mut g) = CHILDREN.lock() {
        g.push(pid);
    }
}

fn unregister(pid: i32) {
    if let Ok(mut g) = CHILDREN.lock() {
        g.retain(|p| *p != pid);
    }
}

/// A free loopback port (bound and released; nothing else on this machine is expected to take
/// it in between).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start every node.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `scribe` binary.
    pub scribe: PathBuf,
    /// Extra flags for every node.
    pub node_args: Vec<String>,
    /// The nodes' `--statement-timeout`.
    pub statement_timeout: Duration,
    /// Credentials for the API.
    pub auth: Option<(String, String)>,
}

/// One `scribe node` process (or its place while it is down).
pub struct Node {
    /// Its name (`n1`...).
    pub name: String,
    /// Its data directory.
    pub data: PathBuf,
    /// Its log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// Its API.
    pub api: Api,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn new(
        name: &str,
        dir: &Path,
        http_port: u16,
        role_args: Vec<String>,
        launch: &Launch,
    ) -> anyhow::Result<Node> {
        let data = dir.join(name);
        let url = format!("http://127.0.0.1:{http_port}");
        let mut args = vec![
            "node".to_string(),
            "--name".into(),
            name.into(),
            "--data".into(),
            data.display().to_string(),
            "--http".into(),
            format!("127.0.0.1:{http_port}"),
            "--statement-timeout".into(),
            humantime::format_duration(launch.statement_timeout).to_string(),
        ];
        args.extend(role_args);
        args.extend(launch.node_args.iter().cloned());
        Ok(Node {
            name: name.to_string(),
            log: dir.join(format!("{name}.log")),
            data,
            api: Api::new(&url, launch.auth.clone(), Duration::from_secs(30))?,
            args,
            child: None,
        })
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits (up to 60 s) until its API answers.
    pub async fn start(&mut self, scribe: &Path) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(scribe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} from {}", self.name, scribe.display()))?;
        register(child.id() as i32);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.api.status().await.is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(exit) = c.try_wait()? {
                    unregister(c.id() as i32);
                    self.child = None;
                    anyhow::bail!(
                        "{} exited with {exit} at start; see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not answer within 60 s; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister(c.id() as i32);
        }
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
            unregister(c.id() as i32);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The primary and its two replicas.
pub struct Cluster {
    pub primary: Node,
    pub replicas: Vec<Node>,
}

impl Cluster {
    /// Starts the primary (`--commit semi-sync --sync-replicas "ANY 1 (*)"`) and two replicas
    /// following it, in `dir`.
    pub async fn start(dir: &Path, launch: &Launch) -> anyhow::Result<Cluster> {
        let peer = format!("127.0.0.1:{}", free_port()?);
        let mut primary = Node::new(
            "n1",
            dir,
            free_port()?,
            vec![
                "--peer".into(),
                peer.clone(),
                "--commit".into(),
                "semi-sync".into(),
                "--sync-replicas".into(),
                "ANY 1 (*)".into(),
            ],
            launch,
        )?;
        primary.start(&launch.scribe).await?;
        let mut replicas = Vec::new();
        for name in ["n2", "n3"] {
            let mut r = Node::new(
                name,
                dir,
                free_port()?,
                vec!["--follow".into(), peer.clone()],
                launch,
            )?;
            r.start(&launch.scribe).await?;
            replicas.push(r);
        }
        Ok(Cluster { primary, replicas })
    }

    /// Every node's API, primary first.
    pub fn apis(&self) -> Vec<Api> {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .map(|n| n.api.clone())
            .collect()
    }

    /// Waits until every replica has applied what the primary has flushed; the positions last
    /// seen on failure.
    pub async fn wait_caught_up(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(p) = self.primary.api.status().await {
                let flushed = p["flushed_lsn"].as_u64().unwrap_or(u64::MAX);
                let mut behind = Vec::new();
                for r in &self.replicas {
                    let applied = match r.api.status().await {
                        Ok(s) => s["applied_lsn"].as_u64(),
                        Err(_) => None,
                    };
                    if applied.is_none_or(|a| a < flushed) {
                        behind.push(format!("{} applied {applied:?}", r.name));
                    }
                }
                if behind.is_empty() {
                    return Ok(());
                }
                last = format!("primary flushed {flushed}; {}", behind.join(", "));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replicas did not catch up within {within:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every node (SIGTERM).
    pub async fn stop(&mut self) {
        for r in &mut self.replicas {
            r.stop().await;
        }
        self.primary.stop().await;
    }
}
