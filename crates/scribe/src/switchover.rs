//! `scribe switchover --to n2`: asks the cluster (through any node) to hand the primary role over
//! to `n2`: the primary drains its writes, waits until `n2` has everything, and the control plane
//! promotes `n2`. Nothing acknowledged is lost in any commit mode; writes pause meanwhile.
//!
//! `scribe promote n2 --force`: the override for a cluster whose primary is gone and that
//! automatic failover will not replace without risking acknowledged writes; refused on a
//! healthy cluster.

use clap::Args;

/// Flags of `scribe switchover`.
#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    /// The member that becomes primary
    #[arg(long)]
    pub to: String,
    /// URL of any node's HTTP API (a replica forwards the request to the primary)
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
}

/// Runs `scribe switchover`; exit code 1 when it was refused.
pub fn run(args: SwitchoverArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = args.access.client(&args.url, 8)?;
    match rt.block_on(client.switchover(&args.to)) {
        Ok(done) => {
            println!(
                "{} is the primary now (term {}); {} handed over at {} with writes paused {:.0} ms",
                done["to"].as_str().unwrap_or("?"),
                done["term"],
                done["from"].as_str().unwrap_or("?"),
                done["position"].as_str().unwrap_or("?"),
                done["paused_ms"].as_f64().unwrap_or(f64::NAN)
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// Flags of `scribe promote`.
#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The member to promote
    pub to: String,
    /// Required: accept that writes acknowledged by the old primary (and, in semi-sync/sync, by
    /// replicas that cannot be reached) may be lost
    #[arg(long)]
    pub force: bool,
    /// URL of any node's HTTP API in the cluster's majority
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
}

/// Runs `scribe promote`; exit code 1 when it was refused.
pub fn run_promote(args: PromoteArgs) -> anyhow::Result<i32> {
    if !args.force {
        eprintln!(
            "error: a promotion by hand may lose acknowledged writes; say so with --force.\n\
             A dead primary is replaced automatically; for a planned hand-over that loses nothing, use scribe switchover --to {}",
            args.to
        );
        return Ok(1);
    }
    eprintln!(
        "WARNING: forcing {} to become primary. Writes the old primary acknowledged that {} does not have are lost from the cluster (the old primary rolls them back into a rollback file when it returns).",
        args.to, args.to
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = args.access.client(&args.url, 8)?;
    match rt.block_on(client.promote(&args.to)) {
        Ok(done) => {
            println!(
                "{} is the primary now (term {})",
                done["to"].as_str().unwrap_or("?"),
                done["term"]
            );
            eprintln!(
                "WARNING: {}",
                done["warning"].as_str().unwrap_or("(no warning given)")
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}
