//! Steps 1 to 5 of the demo, the classic example on the cluster as elected: create a table and
//! insert a row on the primary, read it back on a replica once the replica has applied it, see a
//! replica refuse a write (and forward one), and look at the replication status as the primary
//! sees it. With the helpers the failover steps share: printing a step, sending a statement,
//! waiting for a replica to apply a position, and the replication status table.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use scribe_core::Position;
use serde_json::{json, Value};

use super::nodes::{Cluster, COMMIT_MODE, SYNC_REPLICAS};
use crate::client::Client;
use crate::table;

/// How long step 3 waits for the replica to apply the insert.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// How long the status steps wait for the primary to hear that its replicas applied a write.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

pub(super) fn step(n: u32, text: &str) {
    println!("\n── step {n}: {text}");
}

pub(super) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

/// POSTs one statement to `/v1/execute` and returns the whole answer: the shared client keeps
/// only the fields it knows, and the demo shows `durability` too.
pub(super) async fn execute_json(
    http: &reqwest::Client,
    url: &str,
    sql: &str,
) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{url}/v1/execute"))
        .json(&json!({"statements": [{"sql": sql}]}))
        .send()
        .await
        .with_context(|| format!("reach {url}"))?;
    let status = r.status();
    let v: Value = r
        .json()
        .await
        .with_context(|| format!("read the answer of {url}"))?;
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            v["error"]["message"].as_str().unwrap_or("request failed")
        );
    }
    Ok(v)
}

/// Runs `select` on `node` and prints it as a table, after the line `SQL   (on NAME)`.
pub(super) async fn show_query(node: &Client, name: &str, select: &str) -> anyhow::Result<()> {
    println!("   {select}   (on {name})");
    let rows = node
        .query(select, &Value::Null)
        .await
        .with_context(|| format!("query {name}"))?;
    print!("{}", indent(&table::render(&rows.columns, &rows.rows)));
    Ok(())
}

/// The LSN in a position token (`"term/lsn"`), as an answer carries it.
pub(super) fn position_lsn(v: &Value) -> Option<u64> {
    v.as_str()?.parse::<Position>().ok().map(|p| p.lsn.0)
}

/// Waits until the node's `applied_lsn` reaches `lsn`, for at most `limit`. Returns how long
/// after `since` it saw that, or `Err` with the last applied LSN it saw when time ran out.
async fn wait_applied(
    node: &Client,
    lsn: u64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Result<Duration, u64>> {
    let deadline = Instant::now() + limit;
    loop {
        let s: Value = node
            .status()
            .await
            .with_context(|| format!("read the status of {}", node.url()))?;
        let applied = s["applied_lsn"].as_u64().unwrap_or(0);
        if applied >= lsn {
            return Ok(Ok(since.elapsed()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(applied));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `replicas` of a primary's status, or none.
fn replicas(status: &Value) -> &[Value] {
    status["replicas"].as_array().map_or(&[], Vec::as_slice)
}

/// Whether the primary knows of `count` replicas that all applied `lsn`.
fn all_applied(status: &Value, count: usize, lsn: u64) -> bool {
    let r = replicas(status);
    r.len() >= count
        && r.iter()
            .all(|x| x["applied_lsn"].as_u64().is_some_and(|a| a >= lsn))
}

/// The columns of the replication status table: the field of each replica object, and its
/// header.
const REPLICA_COLUMNS: [(&str, &str); 11] = [
    ("name", "replica"),
    ("state", "state"),
    ("written_lsn", "written"),
    ("flushed_lsn", "flushed"),
    ("applied_lsn", "applied"),
    ("lag_records", "lag rec"),
    ("lag_bytes", "lag bytes"),
    ("write_lag_ms", "write ms"),
    ("flush_lag_ms", "flush ms"),
    ("apply_lag_ms", "apply ms"),
    ("last_contact_ms_ago", "contact ms ago"),
];

/// What the columns of the replication status table mean.
const REPLICA_LEGEND: [&str; 4] = [
    "written / flushed / applied: the last LSN the replica has received, fsynced in its log,",
    "  and applied to its SQLite; lag rec / lag bytes: what the primary has that it has not",
    "  applied; write / flush / apply ms: age of the oldest record it has not yet received,",
    "  fsynced, applied (0 when caught up); contact ms ago: since the primary last heard from it.",
];

/// The replication status table of a primary's status: headers and one row per replica.
/// Fractions are cut to two decimals; a missing or null field shows as `-`.
fn replica_table(status: &Value) -> (Vec<String>, Vec<Vec<Value>>) {
    let columns = REPLICA_COLUMNS.iter().map(|(_, h)| h.to_string()).collect();
    let rows = replicas(status)
        .iter()
        .map(|r| {
            REPLICA_COLUMNS
                .iter()
                .map(|(field, _)| match r.get(*field) {
                    None | Some(Value::Null) => Value::from("-"),
                    Some(Value::Number(n)) if n.is_f64() => {
                        let x = n.as_f64().unwrap_or(0.0);
                        json!((x * 100.0).round() / 100.0)
                    }
                    Some(v) => v.clone(),
                })
                .collect()
        })
        .collect();
    (columns, rows)
}

/// Prints the replication status of the primary `name` at `primary`: a table of its replicas.
/// Waits a moment first (at most [`CATCH_UP_WAIT`]) for `count` replicas' acknowledgements of
/// `lsn` to reach it, so the table shows them caught up rather than a report in flight. With
/// `legend`, says what the columns mean.
pub(super) async fn show_replicas(
    primary: &Client,
    name: &str,
    count: usize,
    lsn: u64,
    legend: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let status = loop {
        let s: Value = primary
            .status()
            .await
            .with_context(|| format!("read the status of {name}"))?;
        if all_applied(&s, count, lsn) || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("   GET {}/v1/status   ({name}'s replicas)", primary.url());
    if replicas(&status).is_empty() {
        println!("   {name} lists no replicas.");
    } else {
        let (columns, rows) = replica_table(&status);
        print!("{}", indent(&table::render(&columns, &rows)));
        for line in REPLICA_LEGEND.iter().filter(|_| legend) {
            println!("   {line}");
        }
    }
    Ok(())
}

/// Steps 1 to 5 against the running cluster, whose primary is node `p` and which has a replica
/// `r`.
pub(super) async fn classic_example(cluster: &Cluster, p: usize, r: usize) -> anyhow::Result<()> {
    let (pn, rn) = (cluster.name(p), cluster.name(r));
    let (p_url, r_url) = (&cluster.nodes[p].url, &cluster.nodes[r].url);
    let others: Vec<&str> = (0..cluster.nodes.len())
        .filter(|&i| i != p)
        .map(|i| cluster.name(i))
        .collect();
    let others = others.join(" and ");
    let http = reqwest::Client::new();
    let primary = Client::new(p_url)?;
    let replica = Client::new(r_url)?;

    step(1, "create a table on the primary");
    let exists = primary
        .query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'",
            &Value::Null,
        )
        .await
        .with_context(|| format!("look for the users table on {pn}"))?;
    let create = if exists.rows.is_empty() {
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)"
    } else {
        println!("   The users table is already there from an earlier run, so:");
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)"
    };
    println!("   {create}   (on {pn})");
    let v = execute_json(&http, p_url, create)
        .await
        .with_context(|| format!("create the users table on {pn}"))?;
    println!(
        "   ok at position {}: the change is durable in {pn}'s change log, which {others} follow.",
        v["position"].as_str().unwrap_or("?")
    );

    step(2, "insert Alice on the primary");
    let insert = "INSERT INTO users (name) VALUES ('Alice')";
    println!("   {insert}   (on {pn})");
    let v = execute_json(&http, p_url, insert)
        .await
        .with_context(|| format!("insert Alice on {pn}"))?;
    let committed_at = Instant::now();
    let position = v["position"].as_str().unwrap_or("?");
    let lsn = position_lsn(&v["position"])
        .ok_or_else(|| anyhow!("{pn} answered without a position token: {v}"))?;
    println!("   1 row, id {}", v["results"][0]["last_insert_id"]);
    println!(
        "   position   {position}   the position token \"term/lsn\" of the transaction's record"
    );
    match v.get("durability") {
        Some(d) => {
            println!("   durability {d}");
            println!("              what the commit reached before {pn} answered: the nodes run");
            println!(
                "              --commit {COMMIT_MODE} --sync-replicas \"{SYNC_REPLICAS}\", so {pn} waited"
            );
            println!("              for a replica to have the record fsynced in its own log");
        }
        None => println!("   ({pn}'s answer carries no durability object)"),
    }

    step(3, &format!("read her back from the replica {rn}"));
    println!(
        "   Semi-sync waits for one replica's fsync, not for every replica to apply: {rn} may"
    );
    println!(
        "   apply the record a moment after {pn} answered. Waiting for {rn}'s applied_lsn to reach {lsn}..."
    );
    match wait_applied(&replica, lsn, committed_at, APPLY_WAIT).await? {
        Ok(took) => println!(
            "   {rn} applied it {} ms after the commit.",
            took.as_millis()
        ),
        Err(applied) => println!(
            "   {rn} had not applied it after {} s (its applied_lsn is {applied}); reading anyway.",
            APPLY_WAIT.as_secs()
        ),
    }
    show_query(
        &replica,
        rn,
        "SELECT id, name FROM users WHERE name = 'Alice'",
    )
    .await?;

    step(4, "send writes to the replica");
    println!("   Replicas are read-only. A write sent to one is forwarded to the primary, and the");
    println!("   answer says so; with \"forward\": false it is refused, naming the primary.");
    let write = "INSERT INTO users (name) VALUES ('Carol')";
    println!("   {write}   (on {rn}, \"forward\": false)");
    let answer = http
        .post(format!("{r_url}/v1/execute"))
        .json(&json!({"statements": [{"sql": write}], "forward": false}))
        .send()
        .await
        .with_context(|| format!("write on {rn}"))?;
    let v: Value = answer
        .json()
        .await
        .with_context(|| format!("read the answer of {rn}"))?;
    match v["error"]["message"].as_str() {
        Some(message) => println!("   {rn} refused it: {message}"),
        None => println!("   {rn} answered {v}, which a replica should not do."),
    }
    println!("   {write}   (on {rn})");
    let v = execute_json(&http, r_url, write)
        .await
        .with_context(|| format!("forwarded write on {rn}"))?;
    println!(
        "   forwarded to {}: committed at position {}, id {}",
        v["forwarded_to"].as_str().unwrap_or("?"),
        v["position"].as_str().unwrap_or("?"),
        v["results"][0]["last_insert_id"]
    );
    let lsn = position_lsn(&v["position"]).unwrap_or(lsn);

    step(5, "replication status, as the primary sees it");
    show_replicas(&primary, pn, cluster.nodes.len() - 1, lsn, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_give_their_lsn() {
        assert_eq!(position_lsn(&json!("1/42")), Some(42));
        assert_eq!(position_lsn(&json!("42")), None);
        assert_eq!(position_lsn(&json!(42)), None);
    }

    #[test]
    fn the_replica_table_has_a_row_per_replica() {
        let status = json!({"replicas": [
            {"name": "n2", "state": "streaming", "written_lsn": 7, "flushed_lsn": 7, "applied_lsn": 6,
             "lag_records": 1, "lag_bytes": 120, "write_lag_ms": 0.1234, "flush_lag_ms": 0.5,
             "apply_lag_ms": null, "last_contact_ms_ago": 12, "extra": true},
            {"name": "n3", "state": "connecting"},
        ]});
        let (columns, rows) = replica_table(&status);
        assert_eq!(columns.len(), REPLICA_COLUMNS.len());
        assert_eq!(columns[0], "replica");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            vec![
                json!("n2"),
                json!("streaming"),
                json!(7),
                json!(7),
                json!(6),
                json!(1),
                json!(120),
                json!(0.12),
                json!(0.5),
                json!("-"),
                json!(12)
            ]
        );
        assert_eq!(rows[1][0], json!("n3"));
        assert!(rows[1][2..].iter().all(|v| v == "-"));
        assert!(!all_applied(&status, 2, 7));
        assert!(!all_applied(&status, 2, 6));
        assert!(all_applied(
            &json!({"replicas": [{"applied_lsn": 6}, {"applied_lsn": 9}]}),
            2,
            6
        ));
        assert!(!all_applied(
            &json!({"replicas": [{"applied_lsn": 9}]}),
            2,
            6
        ));
        assert!(replica_table(&json!({"role": "primary"})).1.is_empty());
    }
}
