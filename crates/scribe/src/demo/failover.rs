//! Steps 6 and 7 of the demo, automatic failover: kill the primary with SIGKILL, wait for the
//! control plane to promote one of the two others, write through the new primary and see that
//! what was written before is still there; then restart the old primary on its own data and
//! watch it rejoin as a replica of the new one and catch up.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::nodes::Cluster;
use super::roles::{self, wait_following, wait_for_primary};
use super::walkthrough::{execute_json, position_lsn, show_query, show_replicas, step};
use crate::client::Client;

/// How long step 6 waits for another node to be primary and take writes.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// How long step 7 waits for the restarted node to follow the new primary and catch up.
const REJOIN_WAIT: Duration = Duration::from_secs(30);

/// Seconds with one decimal: `1.2 s`.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The newest failover the control plane recorded, from a node's status: what happened
/// (`"n1 → n2 in term 2 (automatic)"`) and why, in the proposer's words (if it gave any);
/// `None` when the status has none.
fn last_failover(status: &Value) -> Option<(String, Option<String>)> {
    let f = status["cluster"]["failovers"].as_array()?.last()?;
    let from = f["from"].as_str().unwrap_or("nobody");
    let what = format!(
        "{from} → {} in term {} ({})",
        f["to"].as_str()?,
        f["term"],
        f["kind"].as_str().unwrap_or("?")
    );
    let why = f["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    Some((what, why))
}

/// What a rejoined node undid to follow the new primary, from its status
/// (`replication.rollbacks`).
fn rollback_summary(name: &str, status: &Value) -> String {
    let undone: Vec<&Value> = status["replication"]["rollbacks"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    if undone.is_empty() {
        return format!(
            "{name} had nothing to undo: every transaction in its log is in the new primary's too."
        );
    }
    let transactions: u64 = undone
        .iter()
        .filter_map(|r| r["transactions"].as_u64())
        .sum();
    let files: Vec<&str> = undone.iter().filter_map(|r| r["file"].as_str()).collect();
    format!(
        "{name} undid {transactions} transaction(s) the new primary never had (listed in {}).",
        files.join(", ")
    )
}

/// Step 6: kills the primary, node `old`, and waits for a new one. Answers the new primary's
/// index.
pub(super) async fn kill_the_primary(cluster: &mut Cluster, old: usize) -> anyhow::Result<usize> {
    let on = cluster.name(old);
    let rest: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != old).collect();
    let rest_names: Vec<&str> = rest.iter().map(|&i| cluster.name(i)).collect();
    let rest_names = rest_names.join(" and ");

    step(6, "kill the primary (SIGKILL)");
    println!(
        "   kill -9 {}   ({on}, the primary: no shutdown, no hand-over)",
        cluster.nodes[old].pid()
    );
    cluster.kill(old)?;
    let died = Instant::now();
    println!(
        "   {rest_names} stop hearing from {on}. Once {on}'s lease has run out, the control plane"
    );
    println!(
        "   (the Raft group, a majority of which is still up) promotes one of them. Polling their"
    );
    println!("   /v1/status until one says \"role\": \"primary\", \"accepting_writes\": true...");
    let elected = wait_for_primary(cluster, &rest, died, FAILOVER_WAIT)
        .await
        .with_context(|| format!("wait for a new primary after killing {on}"))?;
    let new = elected.index;
    let nn = cluster.name(new);
    println!(
        "   {nn} is the primary now (term {}), {} after {on} died.",
        elected.term,
        seconds(elected.took)
    );
    let primary = Client::new(&cluster.nodes[new].url)?;
    let status: Value = primary
        .status()
        .await
        .with_context(|| format!("read the status of {nn}"))?;
    if let Some((what, why)) = last_failover(&status) {
        println!("   The control plane recorded: {what}");
        if let Some(why) = why {
            println!("   why: {why}");
        }
    }

    let http = reqwest::Client::new();
    let insert = "INSERT INTO users (name) VALUES ('Bob')";
    println!("   {insert}   (on {nn})");
    let v = execute_json(&http, &cluster.nodes[new].url, insert)
        .await
        .with_context(|| format!("insert Bob on {nn}"))?;
    println!(
        "   1 row, id {}, at position {} (the new term)",
        v["results"][0]["last_insert_id"],
        v["position"].as_str().unwrap_or("?")
    );
    println!(
        "   Alice and Carol were committed through {on} before it died; semi-sync had each on a"
    );
    println!("   replica's disk before {on} answered, so the new primary has them:");
    show_query(&primary, nn, "SELECT id, name FROM users ORDER BY id").await?;
    Ok(new)
}

/// Step 7: restarts node `old` and waits until it follows `new` and has caught up; reads Bob
/// back from it and shows the new primary's replicas.
pub(super) async fn rejoin(cluster: &mut Cluster, old: usize, new: usize) -> anyhow::Result<()> {
    let (on, nn) = (cluster.name(old), cluster.name(new));
    step(7, "restart the old primary: it rejoins as a replica");
    println!("   {on} starts again with the same arguments and data directory. It learns from the");
    println!("   control plane that {nn} is primary now, and follows it.");
    let started = Instant::now();
    let node = cluster
        .restart(old)
        .await
        .with_context(|| format!("restart {on}"))?;
    println!(
        "   {on} at {}, log {} (appended)",
        node.url,
        node.log.display()
    );
    let status = wait_following(cluster, old, new, REJOIN_WAIT)
        .await
        .with_context(|| format!("wait for {on} to rejoin"))?;
    println!(
        "   {on} is a replica of {nn} now, and has applied everything {nn} has flushed (LSN {}),",
        status["applied_lsn"]
    );
    println!("   {} after it was started.", seconds(started.elapsed()));
    println!("   {}", rollback_summary(on, &status));
    let rejoined = Client::new(&cluster.nodes[old].url)?;
    show_query(
        &rejoined,
        on,
        "SELECT id, name FROM users WHERE name = 'Bob'",
    )
    .await?;

    println!();
    let primary = Client::new(&cluster.nodes[new].url)?;
    let lsn = position_lsn(&status["position"]).unwrap_or(0);
    show_replicas(&primary, nn, cluster.nodes.len() - 1, lsn, false).await?;
    if let Ok(s) = roles::status_of(&cluster.nodes[new].url).await {
        println!(
            "   {nn}: role {}, term {}, accepting writes {}",
            s["role"].as_str().unwrap_or("?"),
            s["term"],
            s["accepting_writes"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_read_in_seconds_with_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(1234)), "1.2 s");
        assert_eq!(seconds(Duration::from_millis(40)), "0.0 s");
        assert_eq!(seconds(Duration::from_secs(3)), "3.0 s");
    }

    #[test]
    fn the_failover_record_names_both_primaries_and_the_term() {
        let status = json!({"cluster": {"failovers": [
            {"from": null, "to": "n1", "term": 1, "kind": "bootstrap", "reason": ""},
            {"from": "n1", "to": "n2", "term": 2, "kind": "automatic",
             "reason": "n1's lease expired"},
        ]}});
        assert_eq!(
            last_failover(&status),
            Some((
                "n1 → n2 in term 2 (automatic)".to_string(),
                Some("n1's lease expired".to_string())
            ))
        );
        let bootstrap = json!({"cluster": {"failovers": [
            {"from": null, "to": "n1", "term": 1, "kind": "bootstrap", "reason": ""},
        ]}});
        assert_eq!(
            last_failover(&bootstrap),
            Some(("nobody → n1 in term 1 (bootstrap)".to_string(), None))
        );
        assert_eq!(last_failover(&json!({"role": "primary"})), None);
        assert_eq!(last_failover(&json!({"cluster": {"failovers": []}})), None);
    }

    #[test]
    fn a_rejoined_node_says_what_it_undid() {
        assert_eq!(
            rollback_summary("n1", &json!({"replication": {"primary": "n2"}})),
            "n1 had nothing to undo: every transaction in its log is in the new primary's too."
        );
        let undone = json!({"replication": {"rollbacks": [
            {"transactions": 2, "rows": 2, "file": "n1/rollback-1.json"},
        ]}});
        assert_eq!(
            rollback_summary("n1", &undone),
            "n1 undid 2 transaction(s) the new primary never had (listed in n1/rollback-1.json)."
        );
    }
}
