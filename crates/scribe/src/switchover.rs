//! `scribe switchover --to n2`: asks the cluster (through any node) to hand the primary role over
//! to `n2`: the primary drains its writes, waits until `n2` has everything, and the control plane
//! promotes `n2`. Nothing acknowledged is lost in any commit mode; writes pause meanwhile.

use clap::Args;

use crate::client::Client;

/// Flags of `scribe switchover`.
#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    /// The member that becomes primary
    #[arg(long)]
    pub to: String,
    /// URL of any node's HTTP API (a replica forwards the request to the primary)
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
}

/// Runs `scribe switchover`; exit code 1 when it was refused.
pub fn run(args: SwitchoverArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(&args.url)?;
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
