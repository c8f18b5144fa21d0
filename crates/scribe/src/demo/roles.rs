//! Who is primary and who follows it, as the demo learns it: from each node's `/v1/status`,
//! never from the order the nodes were started in. The control plane elects the primary (at
//! start and after a failover), so the demo polls until a node says it is primary and takes
//! writes, or a restarted node says it is a replica of that primary and has caught up — with a
//! time limit and an error that says what the nodes reported instead.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use super::nodes::Cluster;
use crate::client::Client;

/// Longest a status request may take: a node that does not answer in this time is reported as
/// not answering, and polling goes on.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of status requests.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Whether a status says the node is primary and takes writes (it holds its lease and its log
/// is healthy): `"role": "primary"` and `"accepting_writes": true`.
pub(super) fn takes_writes(status: &Value) -> bool {
    status["role"] == "primary" && status["accepting_writes"] == true
}

/// Whether a status says the node is a replica of `primary` that has applied everything up to
/// `flushed` (the primary's flushed LSN).
pub(super) fn follows(status: &Value, primary: &str, flushed: u64) -> bool {
    status["role"] == "replica"
        && status["replication"]["primary"] == primary
        && status["applied_lsn"].as_u64().is_some_and(|a| a >= flushed)
}

/// A status in a few words, for a timeout error: `role replica, term 1, following n1,
/// applied 7`, or why there is none.
fn summary(status: &Result<Value, String>) -> String {
    let s = match status {
        Ok(s) => s,
        Err(e) => return format!("not answering ({e})"),
    };
    let role = s["role"].as_str().unwrap_or("?");
    let mut out = format!("role {role}, term {}", s["term"]);
    if role == "primary" {
        out.push_str(&format!(", accepting writes {}", s["accepting_writes"]));
        if let Some(why) = s["write_failure"].as_str() {
            out.push_str(&format!(" ({why})"));
        }
    } else if let Some(p) = s["replication"]["primary"].as_str() {
        out.push_str(&format!(", following {p}"));
    }
    out.push_str(&format!(", applied {}", s["applied_lsn"]));
    out
}

/// The status of the node at `url`, or why it gave none (not started, killed, or too slow).
pub(super) async fn status_of(url: &str) -> Result<Value, String> {
    let client = Client::new(url).map_err(|e| format!("{e:#}"))?;
    match tokio::time::timeout(STATUS_TIMEOUT, client.status::<Value>()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", STATUS_TIMEOUT.as_secs())),
    }
}

/// A node that became primary: its index in the cluster, its term, and how long the wait took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elected {
    pub(super) index: usize,
    pub(super) term: u64,
    pub(super) took: Duration,
}

/// Polls the nodes `among` until one is primary and takes writes, for at most `limit`. The
/// time taken is counted from `since`.
pub(super) async fn wait_for_primary(
    cluster: &Cluster,
    among: &[usize],
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Elected> {
    let deadline = Instant::now() + limit;
    loop {
        let mut seen = Vec::new();
        for &i in among {
            let status = status_of(&cluster.nodes[i].url).await;
            if let Some(s) = status.as_ref().ok().filter(|s| takes_writes(s)) {
                return Ok(Elected {
                    index: i,
                    term: s["term"].as_u64().unwrap_or(0),
                    took: since.elapsed(),
                });
            }
            seen.push(format!("{}: {}", cluster.name(i), summary(&status)));
        }
        if Instant::now() >= deadline {
            bail!(
                "no node became primary and took writes within {} s; last seen: {}",
                limit.as_secs(),
                seen.join("; ")
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls node `replica` until it is a replica of node `primary` and has applied the primary's
/// flushed position (read anew each round), for at most `limit`. Answers the replica's last
/// status.
pub(super) async fn wait_following(
    cluster: &Cluster,
    replica: usize,
    primary: usize,
    limit: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    let name = cluster.name(primary);
    loop {
        let p = status_of(&cluster.nodes[primary].url).await;
        let flushed = p.as_ref().ok().and_then(|p| p["flushed_lsn"].as_u64());
        let r = status_of(&cluster.nodes[replica].url).await;
        if let (Some(flushed), Ok(r)) = (flushed, &r) {
            if follows(r, name, flushed) {
                return Ok(r.clone());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not follow {name} and catch up with it within {} s; last seen: {}: {}; {name}: {}",
                cluster.name(replica),
                limit.as_secs(),
                cluster.name(replica),
                summary(&r),
                summary(&p),
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_primary_counts_once_it_takes_writes() {
        assert!(takes_writes(
            &json!({"role": "primary", "accepting_writes": true})
        ));
        // Elected but its lease not yet held, or its log failing: not yet.
        assert!(!takes_writes(
            &json!({"role": "primary", "accepting_writes": false})
        ));
        assert!(!takes_writes(
            &json!({"role": "replica", "accepting_writes": false})
        ));
        assert!(!takes_writes(&json!({"role": "primary"})));
    }

    #[test]
    fn a_replica_follows_once_it_names_the_primary_and_has_applied_its_flushed_position() {
        let r = |primary: &str, applied: u64| json!({"role": "replica", "applied_lsn": applied, "replication": {"primary": primary}});
        assert!(follows(&r("n2", 9), "n2", 9));
        assert!(follows(&r("n2", 10), "n2", 9));
        assert!(!follows(&r("n2", 8), "n2", 9), "behind");
        assert!(
            !follows(&r("n1", 9), "n2", 9),
            "still following the old primary"
        );
        assert!(!follows(
            &json!({"role": "replica", "applied_lsn": 9, "replication": {"primary": null}}),
            "n2",
            9
        ));
        assert!(!follows(
            &json!({"role": "primary", "applied_lsn": 9}),
            "n2",
            9
        ));
    }

    #[test]
    fn a_timeout_says_what_each_node_reported() {
        assert_eq!(
            summary(&Err("connection refused".into())),
            "not answering (connection refused)"
        );
        let replica = json!({"role": "replica", "term": 1, "applied_lsn": 7,
            "replication": {"primary": "n1"}});
        assert_eq!(
            summary(&Ok(replica)),
            "role replica, term 1, following n1, applied 7"
        );
        let failing = json!({"role": "primary", "term": 2, "applied_lsn": 7,
            "accepting_writes": false, "write_failure": "disk full"});
        assert_eq!(
            summary(&Ok(failing)),
            "role primary, term 2, accepting writes false (disk full), applied 7"
        );
    }
}
