//! `scribe members add NAME=PEER_ADDR` / `scribe members remove NAME`: changes a cluster's
//! membership at run time, through any member (the control plane's leader carries it out). A
//! node to add is started first with `scribe node --join URL` — which asks to be added by itself,
//! so `members add` is for a node started that way that gave up, or to add one by hand.

use anyhow::anyhow;
use clap::{Args, Subcommand};

/// Flags of `scribe members`.
#[derive(Args, Debug)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub action: MembersAction,
    /// URL of any member's HTTP API (the request is forwarded to the control plane's leader)
    #[arg(
        long,
        env = "SCRIBE_URL",
        default_value = "http://127.0.0.1:5480",
        global = true
    )]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
}

/// What to change.
#[derive(Subcommand, Debug)]
pub enum MembersAction {
    /// Add a member, NAME=PEER_ADDR; it must be running (started with --join) to catch up
    Add {
        /// NAME=HOST:PORT, the new member's name and peer address
        member: String,
        /// The new member is a witness (votes, holds no data)
        #[arg(long)]
        witness: bool,
    },
    /// Remove a member (not the primary, nor one the sync set names); stop its process after
    Remove {
        /// The member's name
        name: String,
    },
}

/// Runs `scribe members`; exit code 1 when it was refused.
pub fn run(args: MembersArgs) -> anyhow::Result<i32> {
    let body = match &args.action {
        MembersAction::Add { member, witness } => {
            let (name, peer_addr) = member
                .split_once('=')
                .ok_or_else(|| anyhow!("{member:?} must be NAME=HOST:PORT"))?;
            serde_json::json!({"add": {"name": name.trim(), "peer_addr": peer_addr.trim(), "witness": witness}})
        }
        MembersAction::Remove { name } => serde_json::json!({ "remove": name }),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = args.access.client(&args.url, 8)?;
    match rt.block_on(client.members(&body)) {
        Ok(done) => {
            let members: Vec<&str> = done["members"]
                .as_array()
                .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            println!(
                "{}; members: {}",
                done["done"].as_str().unwrap_or("done"),
                members.join(", ")
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}
