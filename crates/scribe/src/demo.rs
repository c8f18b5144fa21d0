//! `scribe demo`: starts a local node as a child process under a directory of its own, walks
//! through the classic example step by step, prints the node's status, then keeps the node
//! running until Ctrl-C and stops it on exit.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};

/// Flags of `scribe demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo nodes' data; wiped at start
    #[arg(long, env = "SCRIBE_DEMO_DIR", default_value = "scribe-demo")]
    pub dir: PathBuf,
    /// First HTTP port; node n1 listens on it
    #[arg(long, env = "SCRIBE_DEMO_PORT", default_value_t = 5480)]
    pub port: u16,
    /// Run the walkthrough and stop, instead of keeping the cluster up until Ctrl-C
    #[arg(long)]
    pub no_wait: bool,
}

/// A child `scribe node` that is stopped (SIGTERM, then SIGKILL) when dropped.
struct ChildNode {
    name: String,
    url: String,
    child: Child,
}

impl ChildNode {
    fn start(name: &str, dir: PathBuf, port: u16) -> anyhow::Result<ChildNode> {
        let exe = std::env::current_exe().context("find the scribe executable")?;
        let mut child = Command::new(exe)
            .args([
                "node",
                "--name",
                name,
                "--http",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
                "--data",
            ])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start node {name}"))?;
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        out.read_line(&mut line)
            .with_context(|| format!("read the start line of node {name}"))?;
        if line.is_empty() {
            let status = child.wait()?;
            bail!("node {name} exited at start ({status}); see its messages above");
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(ChildNode {
            name: name.to_string(),
            url,
            child,
        })
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let r = http
        .post(url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("reach {url}"))?;
    let status = r.status();
    let v: Value = r.json().await.context("read answer")?;
    if !status.is_success() {
        bail!(
            "{}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    Ok(v)
}

fn step(n: u32, text: &str) {
    println!("\n── step {n}: {text}");
}

fn print_rows(v: &Value) {
    let cols: Vec<String> = v["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let cell = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".into(),
        other => other.to_string(),
    };
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (i, x) in r.as_array().into_iter().flatten().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell(x).chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        println!("   |{}|", parts.join("|"));
    };
    line(cols.clone());
    println!(
        "   |{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    for r in &rows {
        line(r.as_array().into_iter().flatten().map(cell).collect());
    }
    println!(
        "   ({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("clear demo directory {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create demo directory {}", args.dir.display()))?;
    println!("Scribe demo: a local node under {}/", args.dir.display());
    let n1 = ChildNode::start("n1", args.dir.join("n1"), args.port)?;
    println!("   node {} (primary) at {}", n1.name, n1.url);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        let exec = format!("{}/v1/execute", n1.url);
        let query = format!("{}/v1/query", n1.url);

        step(1, "create the users table on the primary");
        println!("   CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)");
        let v = post(&http, &exec, json!({"statements": [{"sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"}]})).await?;
        println!("   ok, durable in the change log at position {}", v["position"]);

        step(2, "insert Alice");
        println!("   INSERT INTO users (name) VALUES ('Alice')");
        let v = post(&http, &exec, json!({"statements": [{"sql": "INSERT INTO users (name) VALUES (?)", "params": ["Alice"]}]})).await?;
        println!("   1 row, id {}, position {}", v["results"][0]["last_insert_id"], v["position"]);

        step(3, "read her back");
        println!("   SELECT * FROM users");
        let v = post(&http, &query, json!({"sql": "SELECT * FROM users"})).await?;
        print_rows(&v);

        step(4, "the node's status");
        let s: Value = http.get(format!("{}/v1/status", n1.url)).send().await?.json().await?;
        for k in ["node", "role", "term", "last_lsn", "flushed_lsn", "applied_lsn", "accepting_writes"] {
            println!("   {k:<17} {}", s[k]);
        }
        Ok::<(), anyhow::Error>(())
    })
    .map_err(|e| anyhow!("demo failed: {e:#}"))?;

    if args.no_wait {
        println!("\nDone; stopping the node.");
        return Ok(0);
    }
    println!("\nThe node keeps running. Try:");
    println!("   scribe sql --url {}", n1.url);
    println!("   scribe status --url {}", n1.url);
    println!("   curl -s {}/metrics", n1.url);
    println!("Press Ctrl-C to stop.");
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    println!("\nStopping the node.");
    Ok(0)
}
