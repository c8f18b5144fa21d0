//! Test harness: the real `scribe` binary as a child process, driven over HTTP as a user would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `scribe` binary under test.
pub fn scribe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scribe"))
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
        let mut child = Command::new(scribe_bin())
            .args(["node", "--name", name, "--http", "127.0.0.1:0", "--data"])
            .arg(dir)
            .args(extra)
            .env("SCRIBE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scribe node");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            let status = child.wait().expect("wait");
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
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        assert!(url.starts_with("http://"), "unexpected first line {line:?}");
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

/// A plain HTTP client for the node's API.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
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
