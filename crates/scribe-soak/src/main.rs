//! `scribe-soak`: a soak of a real Scribe cluster. A program, not a test.
//!
//! It starts a primary (`--commit semi-sync --sync-replicas "ANY 1 (*)"`) and two replicas as
//! `scribe node` processes from `--scribe`, each with its data directory and log file under
//! `--dir`, on free loopback ports; runs `--clients` concurrent clients for `--minutes` (writes:
//! inserts of uniquely identified rows with a few hundred bytes of payload, updates of a client's
//! own rows, multi-statement transactions, a fifth of them through a replica; reads: point
//! selects of acknowledged rows with the read-your-writes position on every node, small range
//! and aggregate queries); SIGKILLs a replica every `--kill-every` (alternating) and restarts it
//! on its data directory a few seconds later; sends a runaway write and a runaway read every
//! `--runaway-every`; samples the primary's memory, descriptors, log and database size every
//! `--sample-every`. At the end it waits for the replicas to catch up and checks on every node
//! that every acknowledged write is there with its last acknowledged value, that writes of
//! unknown outcome are there or not the same way on every node, that no failed write left a
//! row, and that the runaway table is empty; it prints a report (Markdown to `--report`) and
//! exits 1 if any of that failed (2 if the soak could not run).
//!
//! ```text
//! scripts/soak.sh                                  # release build, 20 minutes, 32 clients
//! scripts/soak.sh --minutes 3 --kill-every 40s --runaway-every 60s --report soak.md
//! scribe-soak --scribe target/release/scribe --user soak --password secret \
//!     --node-arg=--users=/etc/scribe/users.toml
//! ```
//!
//! Modules: `api` (HTTP client, outcome of an answer), `cluster` (the node processes), `client`
//! (one client's loop), `ledger` (what a client knows of its rows; the check), `runaway`,
//! `sample` (the primary over time), `report`.

mod api;
mod client;
mod cluster;
mod ledger;
mod report;
mod runaway;
mod sample;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use api::{Api, Outcome};
use client::Client;
use cluster::{Cluster, Launch};
use ledger::Ledger;
use report::{Report, Verdict};
use sample::{Counters, Sample};

/// Soak a real three-node Scribe cluster: mixed load from many clients, a replica SIGKILLed and
/// restarted every minute, runaway statements every few minutes, and at the end every
/// acknowledged write checked on every node. Exits 0 if all held, 1 if not, 2 if it could not
/// run.
#[derive(Parser, Debug)]
#[command(name = "scribe-soak", version)]
struct Args {
    /// The scribe binary to start the nodes from
    #[arg(
        long,
        env = "SCRIBE_SOAK_SCRIBE",
        default_value = "target/release/scribe"
    )]
    scribe: PathBuf,

    /// Directory for the nodes' data directories and log files (kept afterwards) [default: a new
    /// directory under the system's temporary directory]
    #[arg(long, env = "SCRIBE_SOAK_DIR")]
    dir: Option<PathBuf>,

    /// Concurrent clients
    #[arg(long, env = "SCRIBE_SOAK_CLIENTS", default_value_t = 32)]
    clients: usize,

    /// How long the load runs, in minutes (fractions allowed: 0.5)
    #[arg(long, env = "SCRIBE_SOAK_MINUTES", default_value_t = 20.0)]
    minutes: f64,

    /// SIGKILL one replica (alternating) this often, and restart it a few seconds later
    #[arg(long, env = "SCRIBE_SOAK_KILL_EVERY", default_value = "60s", value_parser = humantime::parse_duration)]
    kill_every: Duration,

    /// How long a killed replica stays down
    #[arg(long, env = "SCRIBE_SOAK_DOWN_FOR", default_value = "3s", value_parser = humantime::parse_duration)]
    down_for: Duration,

    /// Send a runaway write and a runaway read to the primary this often
    #[arg(long, env = "SCRIBE_SOAK_RUNAWAY_EVERY", default_value = "180s", value_parser = humantime::parse_duration)]
    runaway_every: Duration,

    /// The nodes' --statement-timeout; a runaway must end within it plus --runaway-slack
    #[arg(long, env = "SCRIBE_SOAK_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    statement_timeout: Duration,

    /// How much past the statement timeout a runaway's answer may come (a busy machine)
    #[arg(long, env = "SCRIBE_SOAK_RUNAWAY_SLACK", default_value = "2s", value_parser = humantime::parse_duration)]
    runaway_slack: Duration,

    /// Sample the primary this often
    #[arg(long, env = "SCRIBE_SOAK_SAMPLE_EVERY", default_value = "10s", value_parser = humantime::parse_duration)]
    sample_every: Duration,

    /// User name for HTTP Basic authentication (nodes started with --users) [default: none]
    #[arg(long, env = "SCRIBE_SOAK_USER", requires = "password")]
    user: Option<String>,

    /// Password for HTTP Basic authentication; prefer the environment variable [default: none]
    #[arg(
        long,
        env = "SCRIBE_SOAK_PASSWORD",
        requires = "user",
        hide_env_values = true
    )]
    password: Option<String>,

    /// An extra flag for every node, repeatable: --node-arg=--insecure [default: none]
    #[arg(
        long = "node-arg",
        env = "SCRIBE_SOAK_NODE_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    node_args: Vec<String>,

    /// Also write the final report as Markdown to this file [default: only printed]
    #[arg(long, env = "SCRIBE_SOAK_REPORT")]
    report: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cluster::kill_all_children();
        default_hook(info);
    }));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scribe-soak: start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            r = soak(args) => match r {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("scribe-soak: {e:#}");
                    2
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("scribe-soak: interrupted; stopping the nodes");
                130
            }
        }
    });
    cluster::kill_all_children();
    std::process::exit(code);
}

/// The soak; whether it passed.
async fn soak(args: Args) -> anyhow::Result<bool> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "scribe-soak-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    anyhow::ensure!(
        args.scribe.exists(),
        "no scribe binary at {} (build it: cargo build --release -p scribe, or give --scribe)",
        args.scribe.display()
    );
    let auth = args.user.clone().zip(args.password.clone());
    let launch = Launch {
        scribe: args.scribe.clone(),
        node_args: args.node_args.clone(),
        statement_timeout: args.statement_timeout,
        auth: auth.clone(),
    };
    println!("scribe-soak: nodes in {}", dir.display());
    let cluster = Cluster::start(&dir, &launch).await?;
    for n in std::iter::once(&cluster.primary).chain(&cluster.replicas) {
        println!("  {} {} (log {})", n.name, n.api.url, n.log.display());
    }
    for sql in [client::CREATE_TABLE, runaway::CREATE_TABLE] {
        match cluster.primary.api.execute(&[(sql, json!([]))]).await {
            Outcome::Done(_) => {}
            other => anyhow::bail!("{sql}: {other:?}"),
        }
    }
    cluster.wait_caught_up(Duration::from_secs(60)).await?;

    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load_for = Duration::from_secs_f64((args.minutes * 60.0).max(1.0));
    let started = Instant::now();
    let (primary, replicas, primary_pid, primary_data) = {
        let c = cluster.lock().await;
        let apis = c.apis();
        (
            apis[0].clone(),
            apis[1..].to_vec(),
            c.primary.pid(),
            c.primary.data.clone(),
        )
    };
    println!(
        "scribe-soak: {} clients for {:.1} min; a replica killed every {}, runaways every {}",
        args.clients,
        args.minutes,
        humantime::format_duration(args.kill_every),
        humantime::format_duration(args.runaway_every)
    );

    let clients: Vec<_> = (0..args.clients)
        .map(|id| {
            tokio::spawn(
                Client {
                    id: id as i64 + 1,
                    primary: primary.clone(),
                    replicas: replicas.clone(),
                    counters: counters.clone(),
                    stop: stop.clone(),
                }
                .run(),
            )
        })
        .collect();

    // Replica kills.
    let kills = Arc::new(Mutex::new(Vec::<String>::new()));
    let killer = {
        let (cluster, stop, kills, scribe) = (
            cluster.clone(),
            stop.clone(),
            kills.clone(),
            args.scribe.clone(),
        );
        let (every, down) = (args.kill_every, args.down_for);
        tokio::spawn(async move {
            let mut which = 0;
            loop {
                if sleep_unless_stopped(every, &stop).await {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut c = cluster.lock().await;
                let n = which % c.replicas.len();
                which += 1;
                let at = started.elapsed();
                c.replicas[n].kill9();
                let name = c.replicas[n].name.clone();
                println!("[{:>6.0}s] SIGKILL {name}", at.as_secs_f64());
                tokio::time::sleep(down).await;
                let t = Instant::now();
                c.replicas[n].start(&scribe).await?;
                let line = format!(
                    "{:.0} s: {name} SIGKILLed, restarted after {:.1} s down, answering {:.1} s after its start",
                    at.as_secs_f64(),
                    down.as_secs_f64(),
                    t.elapsed().as_secs_f64()
                );
                println!(
                    "[{:>6.0}s] restarted {name}",
                    started.elapsed().as_secs_f64()
                );
                if let Ok(mut k) = kills.lock() {
                    k.push(line);
                }
            }
        })
    };

    // Runaways.
    let runaways = Arc::new(Mutex::new(Vec::new()));
    let runner = {
        let (stop, runaways, primary) = (stop.clone(), runaways.clone(), primary.clone());
        let (every, limit) = (
            args.runaway_every,
            args.statement_timeout + args.runaway_slack,
        );
        tokio::spawn(async move {
            loop {
                if sleep_unless_stopped(every, &stop).await {
                    return;
                }
                let at = started.elapsed();
                let (w, r) = tokio::join!(
                    runaway::run(&primary, "write", at, limit),
                    runaway::run(&primary, "read", at, limit)
                );
                for x in [w, r] {
                    println!(
                        "[{:>6.0}s] runaway {} ended {} after {:.2} s{}",
                        started.elapsed().as_secs_f64(),
                        x.kind,
                        x.ended,
                        x.took.as_secs_f64(),
                        if x.in_time { "" } else { "  <-- NOT IN TIME" }
                    );
                    if let Ok(mut v) = runaways.lock() {
                        v.push(x);
                    }
                }
            }
        })
    };

    // Samples, until the load's end.
    let mut samples = Vec::new();
    loop {
        let s = Sample::take(started.elapsed(), primary_pid, &primary_data, &counters);
        println!("{}", s.line());
        samples.push(s);
        let left = load_for.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(args.sample_every)).await;
    }
    let duration = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    println!("scribe-soak: load stopped; waiting for the clients, kills and runaways to finish");
    let mut ledgers = Vec::new();
    for c in clients {
        ledgers.push(c.await.context("a client task failed")?);
    }
    let killer = killer.await.context("the kill task failed")?;
    runner.await.context("the runaway task failed")?;
    let mut cluster = Arc::try_unwrap(cluster)
        .map_err(|_| anyhow::anyhow!("the cluster is still shared"))?
        .into_inner();
    if let Err(e) = killer {
        // A replica that did not come back: the check below names it.
        eprintln!("scribe-soak: restarting a replica failed: {e:#}");
    }

    println!("scribe-soak: waiting for the replicas to catch up");
    let not_caught_up = cluster
        .wait_caught_up(Duration::from_secs(180))
        .await
        .err()
        .map(|e| format!("{e:#}"));
    println!("scribe-soak: checking every node");
    let verdicts = verify(&cluster.apis(), &ledgers).await;
    cluster.stop().await;

    let report = Report {
        duration,
        clients: args.clients,
        writes: counters.writes.load(Ordering::Relaxed),
        reads: counters.reads.load(Ordering::Relaxed),
        stale_reads: counters.stale_reads.load(Ordering::Relaxed),
        acked_rows: ledgers.iter().map(Ledger::acked).sum(),
        unknown_rows: ledgers
            .iter()
            .map(|l| l.rows.len() as u64 - l.acked())
            .sum(),
        errors: counters.errors(),
        kills: kills.lock().map(|k| k.clone()).unwrap_or_default(),
        runaways: runaways.lock().map(|r| r.clone()).unwrap_or_default(),
        samples,
        not_caught_up,
        verdicts,
        statement_timeout: args.statement_timeout,
    };
    let md = report.markdown();
    println!("\n{md}");
    if let Some(path) = &args.report {
        std::fs::write(path, &md).with_context(|| format!("write {}", path.display()))?;
        println!("scribe-soak: report written to {}", path.display());
    }
    println!(
        "scribe-soak: nodes' data and logs kept in {}",
        dir.display()
    );
    Ok(report.passed())
}

/// Sleeps `d` in short steps; true if `stop` was set meanwhile.
async fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
    }
    stop.load(Ordering::Relaxed)
}

/// One client's rows on one node, `(seq, v)`, read in pages from the node's own data.
async fn client_rows(api: &Api, client: i64) -> anyhow::Result<BTreeMap<i64, i64>> {
    let mut rows = BTreeMap::new();
    let mut after = 0i64;
    loop {
        let page = api
            .rows(
                "SELECT seq, v FROM soak WHERE client = ? AND seq > ? ORDER BY seq LIMIT 2000",
                json!([client, after]),
            )
            .await?;
        let n = page.len();
        for r in page {
            let (Some(seq), Some(v)) = (
                r.first().and_then(|x| x.as_i64()),
                r.get(1).and_then(|x| x.as_i64()),
            ) else {
                anyhow::bail!("a row that is not (seq, v): {r:?}");
            };
            rows.insert(seq, v);
            after = seq;
        }
        if n < 2000 {
            return Ok(rows);
        }
    }
}

/// Checks every node (primary first) against the clients' ledgers; an unknown-outcome row must
/// be in the same state on every node as on the primary.
async fn verify(apis: &[Api], ledgers: &[Ledger]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let mut primary_unknown: Vec<BTreeMap<i64, Option<i64>>> = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let mut v = Verdict {
            node: if i == 0 {
                format!("n1 (primary) {}", api.url)
            } else {
                format!("n{} (replica) {}", i + 1, api.url)
            },
            ..Verdict::default()
        };
        let result: anyhow::Result<()> = async {
            for (c, ledger) in ledgers.iter().enumerate() {
                let seen = client_rows(api, c as i64 + 1).await?;
                let f = ledger.check(&seen);
                v.acked_checked += f.acked_checked;
                v.missing += f.missing;
                v.wrong += f.wrong;
                v.impossible += f.impossible;
                v.phantom += f.phantom;
                for got in f.unknown_seen.values() {
                    if got.is_some() {
                        v.unknown_present += 1;
                    } else {
                        v.unknown_absent += 1;
                    }
                }
                if i == 0 {
                    primary_unknown.push(f.unknown_seen);
                } else if let Some(p) = primary_unknown.get(c) {
                    v.unknown_inconsistent += f
                        .unknown_seen
                        .iter()
                        .filter(|(seq, got)| p.get(seq) != Some(got))
                        .count() as u64;
                }
                if f.missing + f.wrong > 0 {
                    eprintln!(
                        "{}: client {}: {} acknowledged rows missing, {} with a wrong value",
                        v.node,
                        c + 1,
                        f.missing,
                        f.wrong
                    );
                }
            }
            let runaway = api.rows("SELECT count(*) FROM t", json!([])).await?;
            v.runaway_rows = runaway
                .first()
                .and_then(|r| r.first())
                .and_then(|x| x.as_i64())
                .unwrap_or(-1);
            Ok(())
        }
        .await;
        if let Err(e) = result {
            v.error = Some(format!("{e:#}"));
        }
        verdicts.push(v);
    }
    verdicts
}
