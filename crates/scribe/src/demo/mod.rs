//! `scribe demo`: starts a local three-node cluster — n1, n2 and n3, each a child process of
//! this executable with a data directory and a log file of its own, all members of one cluster
//! (`--cluster`) whose control plane elects the primary — and walks through the classic example
//! and then automatic failover, step by step: create a table and insert a row on the primary,
//! read it back on a replica, see a replica refuse a write, look at the replication status; kill
//! the primary with SIGKILL and see another node promoted with nothing lost; restart the old
//! primary and see it rejoin as a replica. Then it keeps the cluster up until Ctrl-C, and stops
//! the nodes (SIGTERM, then SIGKILL after a grace period) on every way out.
//!
//! Modules:
//! - `nodes`: the plan (ports, flags) and the child processes.
//! - `roles`: finding the primary and its replicas from the nodes' `/v1/status`.
//! - `walkthrough`: steps 1 to 5, the classic example, and the helpers the steps share.
//! - `failover`: steps 6 and 7, the failover and the old primary's return.

mod failover;
mod nodes;
mod roles;
mod walkthrough;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;

use nodes::{Cluster, COMMIT_MODE, SYNC_REPLICAS};
use roles::{wait_following, wait_for_primary};

/// Flags of `scribe demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo nodes' data (DIR/n1, DIR/n2, DIR/n3) and logs (DIR/n1.log, ...);
    /// wiped at start, and refused if it holds anything else
    #[arg(long, env = "SCRIBE_DEMO_DIR", default_value = "scribe-demo")]
    pub dir: PathBuf,
    /// Base port: the nodes' HTTP APIs listen on PORT, PORT+1 and PORT+2 (n1, n2, n3), and their
    /// peer (replication and control plane) ports on PORT+1000, PORT+1001 and PORT+1002
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

/// How long the demo waits, after starting the nodes, for the first primary to be elected and
/// for the other two to follow it.
const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// Waits for the control plane to elect the first primary and for the other nodes to follow it;
/// answers the primary's index.
async fn first_primary(cluster: &Cluster, since: Instant) -> anyhow::Result<usize> {
    println!("   Waiting for the control plane to elect the first primary...");
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let elected = wait_for_primary(cluster, &all, since, ELECTION_WAIT)
        .await
        .context("wait for the first primary")?;
    let p = elected.index;
    let others: Vec<usize> = all.into_iter().filter(|&i| i != p).collect();
    for &i in &others {
        wait_following(cluster, i, p, ELECTION_WAIT)
            .await
            .with_context(|| format!("wait for {} to follow the primary", cluster.name(i)))?;
    }
    let names: Vec<&str> = others.iter().map(|&i| cluster.name(i)).collect();
    println!(
        "   {} is the primary (term {}), {:.1} s after the nodes were started; {} follow it.",
        cluster.name(p),
        elected.term,
        elected.took.as_secs_f64(),
        names.join(" and ")
    );
    Ok(p)
}

/// Starts the nodes and runs the seven steps; answers the primary's index at the end.
async fn walk(cluster: &mut Cluster, specs: &[nodes::NodeSpec]) -> anyhow::Result<usize> {
    let started = Instant::now();
    for spec in specs {
        let node = cluster.start(spec).await?;
        println!(
            "   {} at {}, peer {}, log {}",
            spec.name,
            node.url,
            spec.peer,
            node.log.display()
        );
    }
    let p = first_primary(cluster, started).await?;
    let r = (0..cluster.nodes.len())
        .find(|&i| i != p)
        .ok_or_else(|| anyhow!("the demo needs more than one node"))?;
    walkthrough::classic_example(cluster, p, r).await?;
    let new = failover::kill_the_primary(cluster, p).await?;
    failover::rejoin(cluster, p, new).await?;
    Ok(new)
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let specs = nodes::plan(args.port, args.pg_port)?;
    nodes::prepare_dir(&args.dir, &specs)?;
    let dir = args.dir.display();
    println!("Scribe demo: a cluster of three nodes under {dir}/, automatic failover included.");
    println!(
        "The nodes commit {COMMIT_MODE} (\"{SYNC_REPLICAS}\"): the primary answers once a replica has the"
    );
    println!("transaction fsynced too, so a failover loses no acknowledged write.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut cluster = Cluster::new(&args.dir);
    rt.block_on(async {
        // Listening from the start, so Ctrl-C at any step still stops the nodes.
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let primary = tokio::select! {
            _ = &mut ctrl_c => {
                println!("\nInterrupted; stopping the nodes.");
                return Ok(130);
            }
            r = walk(&mut cluster, &specs) => r.map_err(|e| anyhow!("demo failed: {e:#}\n(the nodes' logs are in {dir}/)"))?,
        };
        if args.no_wait {
            println!("\nDone; stopping the nodes.");
            return Ok(0);
        }
        println!("\nThe cluster keeps running:");
        for (i, node) in cluster.nodes.iter().enumerate() {
            let role = if i == primary { "primary" } else { "replica" };
            println!(
                "   {} ({role})  {}   log {}",
                node.spec.name,
                node.url,
                node.log.display()
            );
        }
        let replica = (0..cluster.nodes.len()).find(|&i| i != primary).unwrap_or(0);
        let (p_url, r_url) = (&cluster.nodes[primary].url, &cluster.nodes[replica].url);
        let (pn, rn) = (cluster.name(primary), cluster.name(replica));
        println!("Try:");
        println!("   scribe sql --url {p_url}      # {pn}, the primary: reads and writes");
        println!("   scribe sql --url {r_url}      # {rn}, a replica: reads; writes go to {pn}");
        println!("   scribe status --url {p_url}   # the replicas, their lag, the failovers");
        println!("   scribe switchover --url {p_url} --to {rn}   # a planned hand-over");
        if let (Some(pp), Some(rp)) = (specs[primary].pg, specs[replica].pg) {
            println!(
                "   psql -h 127.0.0.1 -p {} -U scribe -c \"SELECT * FROM users\"   # PostgreSQL clients: {pn}",
                pp.port()
            );
            println!(
                "   psql -h 127.0.0.1 -p {} -U scribe   # {rn}, a replica: writes go to {pn}, reads see them",
                rp.port()
            );
        }
        println!("   curl -s {p_url}/metrics");
        println!("Press Ctrl-C to stop.");
        let _ = ctrl_c.await;
        println!("\nStopping the nodes.");
        Ok(0)
    })
}
