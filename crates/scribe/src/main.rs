//! The `scribe` command: run a node, the demo, an SQL shell, cluster status and benchmarks.
//!
//! Modules:
//! - `node_cmd`: `scribe node`, its flags, environment variables and TOML config file.
//! - `demo`: `scribe demo`, the classic walkthrough and automatic failover on a local cluster.
//! - `client`: the small HTTP client the other commands share.
//! - `sql`: `scribe sql`, the interactive shell and one-shot mode.
//! - `table`: aligned table output.
//! - `status`: `scribe status`.
//! - `switchover`: `scribe switchover`, a planned hand-over of the primary role, and
//!   `scribe promote --force`, the override when automatic failover will not promote.
//! - `members`: `scribe members add|remove`, membership changes at run time.
//! - `bench`: `scribe bench`, the insert benchmark.
//! - `bench_reads`: `scribe bench --workload point-select`, the read benchmark.

mod access;
mod bench;
mod bench_reads;
mod client;
mod demo;
mod members;
mod node_cmd;
mod sql;
mod status;
mod switchover;
mod table;
mod user;

use clap::{Parser, Subcommand};

/// Scribe: a replicated SQL database built on SQLite.
#[derive(Parser)]
#[command(name = "scribe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Scribe node.
    Node(Box<node_cmd::NodeArgs>),
    /// Start a local three-node cluster, walk through the classic example, then kill the primary and watch it fail over.
    Demo(demo::DemoArgs),
    /// Run SQL against a node: an interactive shell, or one command with -c.
    Sql(sql::SqlArgs),
    /// Print a node's status.
    Status(status::StatusArgs),
    /// Hand the primary role over to another member of a cluster, losing nothing.
    Switchover(switchover::SwitchoverArgs),
    /// Force a member to become primary when the old one is gone and automatic failover will not promote (may lose acknowledged writes).
    Promote(switchover::PromoteArgs),
    /// Add a member to a cluster or remove one, at run time.
    Members(members::MembersArgs),
    /// Measure insert throughput and latency against a node.
    Bench(bench::BenchArgs),
    /// Manage a users file: add, remove, list users, print a token.
    User(user::UserArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Node(args) => node_cmd::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Sql(args) => sql::run(args),
        Command::Status(args) => status::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Promote(args) => switchover::run_promote(args),
        Command::Members(args) => members::run(args),
        Command::Bench(args) => bench::run(args),
        Command::User(args) => user::run(args),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
