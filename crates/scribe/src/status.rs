//! `scribe status`: a node's status as aligned `key: value` lines, each list of objects (the
//! replicas; in a cluster its members, failovers, a replica's roll-backs) as a table, or the
//! JSON itself with `--json`. Fields keep the order the node sent them in, so new fields show up
//! without changes here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::table;

/// Flags of `scribe status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// URL of the node's HTTP API
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
    /// Print the status as JSON instead of lines and tables
    #[arg(long, env = "SCRIBE_STATUS_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// A JSON value whose objects keep their keys in the order they arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// null, a boolean, a number or a string.
    Scalar(Value),
    /// An array.
    List(Vec<Json>),
    /// An object, its fields in order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value as plain JSON (key order is then serde_json's).
    fn to_value(&self) -> Value {
        match self {
            Json::Scalar(v) => v.clone(),
            Json::List(l) => Value::Array(l.iter().map(Json::to_value).collect()),
            Json::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Scalar(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Scalar(Value::Null))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Scalar(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Scalar(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Scalar(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                Ok(Json::Scalar(n.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Scalar(Value::String(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Scalar(Value::String(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut l = Vec::new();
                while let Some(x) = seq.next_element()? {
                    l.push(x);
                }
                Ok(Json::List(l))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut o = Vec::new();
                while let Some(entry) = map.next_entry::<String, Json>()? {
                    o.push(entry);
                }
                Ok(Json::Object(o))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Scalar(v) => v.serialize(s),
            Json::List(l) => {
                let mut seq = s.serialize_seq(Some(l.len()))?;
                for x in l {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Json::Object(o) => {
                let mut m = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Failover events the lines and tables show (the newest); `--json` shows them all.
const FAILOVERS_SHOWN: usize = 5;

/// Suffix of fields holding a wall-clock time, milliseconds since the epoch.
const UNIX_MS: &str = "_unix_ms";

/// The label of a field: a time's without its `_unix_ms`.
fn label(key: &str) -> &str {
    key.strip_suffix(UNIX_MS).unwrap_or(key)
}

/// A time as `2024-05-01T10:00:00Z (3m 2s ago)`, judged against `now`.
fn when(ms: u64, now: SystemTime) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let stamp = humantime::format_rfc3339_seconds(at);
    let rough = |d: Duration| {
        let text = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        text.split(' ').take(2).collect::<Vec<_>>().join(" ")
    };
    match now.duration_since(at) {
        Ok(d) if d.as_secs() == 0 => format!("{stamp} (just now)"),
        Ok(d) => format!("{stamp} ({} ago)", rough(d)),
        Err(e) => format!("{stamp} (in {})", rough(e.duration())),
    }
}

/// A value on one line: scalars as text, lists of scalars comma-separated, anything else as JSON.
fn inline(key: &str, v: &Json, now: SystemTime) -> String {
    match v {
        Json::Scalar(Value::Number(n)) if key.ends_with("_seconds") => match n.as_u64() {
            Some(s) if s >= 60 => format!(
                "{s} ({})",
                humantime::format_duration(Duration::from_secs(s))
            ),
            _ => n.to_string(),
        },
        Json::Scalar(Value::Number(n)) if key.ends_with(UNIX_MS) => match n.as_u64() {
            Some(ms) => when(ms, now),
            None => n.to_string(),
        },
        Json::Scalar(s) => scalar(s),
        Json::List(l) if l.is_empty() => "none".into(),
        Json::List(l) if l.iter().all(|x| matches!(x, Json::Scalar(_))) => l
            .iter()
            .map(|x| inline("", x, now))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_value().to_string(),
    }
}

/// Formats a status object: scalar fields (and those of nested objects, as `outer.inner`) as
/// aligned `key: value` lines, then every non-empty list of objects as a table titled by its
/// path (`replicas`, `cluster.members`). Times (`*_unix_ms`) read as dates with their age; of
/// the failover history only the last few are shown.
pub fn format(status: &Json) -> String {
    format_at(status, SystemTime::now())
}

/// [`format`], judging the age of times against `now`.
pub fn format_at(status: &Json, now: SystemTime) -> String {
    let Json::Object(fields) = status else {
        return format!("{}\n", status.to_value());
    };
    let mut page = Page {
        now,
        lines: Vec::new(),
        tables: String::new(),
    };
    page.object("", fields);
    let width = page
        .lines
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in page.lines {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out.push_str(&page.tables);
    out
}

/// The lines and tables of a status page, as they are gathered.
struct Page {
    now: SystemTime,
    lines: Vec<(String, String)>,
    tables: String,
}

impl Page {
    fn object(&mut self, prefix: &str, fields: &[(String, Json)]) {
        for (k, v) in fields {
            let path = if prefix.is_empty() {
                label(k).to_string()
            } else {
                format!("{prefix}.{}", label(k))
            };
            match v {
                Json::Object(inner) => self.object(&path, inner),
                Json::List(l)
                    if !l.is_empty() && l.iter().all(|x| matches!(x, Json::Object(_))) =>
                {
                    let shown = if k == "failovers" && l.len() > FAILOVERS_SHOWN {
                        self.tables.push_str(&format!(
                            "\n{path} (the last {FAILOVERS_SHOWN} of {}):\n",
                            l.len()
                        ));
                        &l[l.len() - FAILOVERS_SHOWN..]
                    } else {
                        self.tables.push_str(&format!("\n{path}:\n"));
                        &l[..]
                    };
                    let t = list_table(shown, self.now);
                    self.tables.push_str(&t);
                }
                _ => self.lines.push((path, inline(k, v, self.now))),
            }
        }
    }
}

/// A table of objects: columns are the keys of the first object in its order, then any keys
/// only later objects have.
fn list_table(objects: &[Json], now: SystemTime) -> String {
    let mut columns: Vec<String> = Vec::new();
    for o in objects {
        if let Json::Object(fields) = o {
            for (k, _) in fields {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let rows: Vec<Vec<Value>> = objects
        .iter()
        .map(|o| {
            columns
                .iter()
                .map(|c| {
                    let Json::Object(fields) = o else {
                        return Value::Null;
                    };
                    match fields.iter().find(|(k, _)| k == c).map(|(_, v)| v) {
                        None => Value::Null,
                        Some(Json::Scalar(Value::Number(n))) if c.ends_with(UNIX_MS) => n
                            .as_u64()
                            .map_or(Value::Number(n.clone()), |ms| Value::String(when(ms, now))),
                        Some(Json::Scalar(s)) => s.clone(),
                        Some(other) => Value::String(other.to_value().to_string()),
                    }
                })
                .collect()
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| label(c).to_string()).collect();
    table::render(&headers, &rows)
}

/// Fetches the node's status and prints it.
pub async fn fetch_and_print(client: &Client) -> Result<(), ClientError> {
    let status: Json = client.status().await?;
    print!("{}", format(&status));
    Ok(())
}

/// Runs `scribe status`.
pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = args.access.client(&args.url, 8)?;
    let result = rt.block_on(async {
        let status: Json = client.status().await?;
        Ok::<_, ClientError>(status)
    });
    match result {
        Ok(status) if args.json => {
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(0)
        }
        Ok(status) => {
            print!("{}", format(&status));
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Json {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn fields_keep_their_order_and_align() {
        let s = parse(
            r#"{"node": "n1", "role": "primary", "term": 1, "position": "1/42", "accepting_writes": true,
                "uptime_seconds": 3723, "write_failure": null, "replicas": []}"#,
        );
        assert_eq!(
            format(&s),
            "node:             n1\n\
             role:             primary\n\
             term:             1\n\
             position:         1/42\n\
             accepting_writes: yes\n\
             uptime_seconds:   3723 (1h 2m 3s)\n\
             write_failure:    -\n\
             replicas:         none\n"
        );
    }

    #[test]
    fn replicas_become_a_table_in_the_first_objects_order() {
        let s = parse(
            r#"{"node": "n1", "replicas": [{"name": "n2", "lag": 0, "state": "streaming"},
                                           {"name": "n3", "lag": 12, "state": "catchup", "extra": true}]}"#,
        );
        assert_eq!(
            format(&s),
            "node: n1\n\
             \nreplicas:\n \
             name | lag | state     | extra\n\
             ------+-----+-----------+-------\n \
             n2   |   0 | streaming | NULL\n \
             n3   |  12 | catchup   | true\n\
             (2 rows)\n"
        );
    }

    #[test]
    fn nested_objects_flatten_and_json_round_trips_in_order() {
        let text = r#"{"z": 1, "a": {"y": "b", "x": [1, 2]}}"#;
        let s = parse(text);
        assert_eq!(format(&s), "z:   1\na.y: b\na.x: 1, 2\n");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"z":1,"a":{"y":"b","x":[1,2]}}"#
        );
    }

    /// 2024-05-01T10:00:00Z, the clock of the cluster samples.
    const NOW_MS: u64 = 1_714_557_600_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A primary's status in cluster mode, as `GET /v1/status` answers it (trimmed).
    const CLUSTER_PRIMARY: &str = r#"{"node": "n2", "role": "primary", "term": 7, "primary": "n2",
        "lease": {"held": true, "remaining_ms": 1840}, "accepting_writes": true,
        "replicas": [{"name": "n1", "state": "catching_up", "lag_records": 4},
                     {"name": "n3", "state": "streaming", "lag_records": 0}],
        "cluster": {
          "raft": {"role": "leader", "leader": "n2", "raft_term": 9, "last_log_index": 120,
                   "last_applied_index": 120, "voters": ["n1", "n2", "n3", "w"]},
          "members": [
            {"name": "n1", "peer_addr": "10.0.0.1:6480", "http_url": "http://10.0.0.1:5480", "witness": false,
             "role": "replica", "health": "catching_up", "lag_records": 4, "lag_ms": 12.5},
            {"name": "n2", "peer_addr": "10.0.0.2:6480", "http_url": "http://10.0.0.2:5480", "witness": false,
             "role": "primary", "health": "up", "lag_records": null, "lag_ms": null},
            {"name": "n3", "peer_addr": "10.0.0.3:6480", "http_url": "http://10.0.0.3:5480", "witness": false,
             "role": "replica", "health": "streaming", "lag_records": 0, "lag_ms": 0.0},
            {"name": "w", "peer_addr": "10.0.0.4:6480", "http_url": null, "witness": true,
             "role": "witness", "health": "unknown", "lag_records": null, "lag_ms": null}],
          "lease": {"holder": "n2", "term": 7, "renewals": 42, "renewed_at_unix_ms": 1714557599500},
          "failovers": [
            {"at_unix_ms": 1714550000000, "from": null, "to": "n1", "term": 1, "reason": "cluster bootstrapped", "kind": "bootstrap", "rolled_back": null},
            {"at_unix_ms": 1714551000000, "from": "n1", "to": "n2", "term": 2, "reason": "a", "kind": "automatic", "rolled_back": null},
            {"at_unix_ms": 1714552000000, "from": "n2", "to": "n1", "term": 3, "reason": "b", "kind": "switchover", "rolled_back": null},
            {"at_unix_ms": 1714553000000, "from": "n1", "to": "n2", "term": 4, "reason": "c", "kind": "automatic", "rolled_back": 0},
            {"at_unix_ms": 1714554000000, "from": "n2", "to": "n3", "term": 5, "reason": "d", "kind": "forced", "rolled_back": null},
            {"at_unix_ms": 1714555000000, "from": "n3", "to": "n1", "term": 6, "reason": "e", "kind": "switchover", "rolled_back": null},
            {"at_unix_ms": 1714557480000, "from": "n1", "to": "n2", "term": 7, "reason": "n1 stopped renewing its lease", "kind": "automatic", "rolled_back": 3}],
          "switchover": null,
          "commit": {"mode": "semi-sync", "sync_set": "ANY 1 (*)"}}}"#;

    #[test]
    fn a_cluster_primary_shows_raft_lease_members_and_the_last_failovers() {
        let out = format_at(&parse(CLUSTER_PRIMARY), at(NOW_MS));
        for line in [
            "term:                            7\n\
             primary:                         n2\n\
             lease.held:                      yes\n\
             lease.remaining_ms:              1840\n",
            "cluster.raft.role:               leader\n\
             cluster.raft.leader:             n2\n",
            "cluster.raft.voters:             n1, n2, n3, w\n",
            "cluster.lease.renewed_at:        2024-05-01T09:59:59Z (just now)\n",
            "cluster.switchover:              -\n",
            "cluster.commit.sync_set:         ANY 1 (*)\n",
        ] {
            assert!(out.contains(line), "lacks {line:?}:\n{out}");
        }
        let members = "\ncluster.members:\n \
            name | peer_addr     | http_url             | witness | role    | health      | lag_records | lag_ms\n\
            ------+---------------+----------------------+---------+---------+-------------+-------------+--------\n \
            n1   | 10.0.0.1:6480 | http://10.0.0.1:5480 | false   | replica | catching_up |           4 |   12.5\n \
            n2   | 10.0.0.2:6480 | http://10.0.0.2:5480 | false   | primary | up          |        NULL |   NULL\n \
            n3   | 10.0.0.3:6480 | http://10.0.0.3:5480 | false   | replica | streaming   |           0 |    0.0\n \
            w    | 10.0.0.4:6480 | NULL                 | true    | witness | unknown     |        NULL |   NULL\n\
            (4 rows)\n";
        assert!(out.contains(members), "members:\n{out}");
        // Only the newest five of seven failovers, oldest first, with when, from, to and why.
        let failovers = "\ncluster.failovers (the last 5 of 7):\n \
            at                                 | from | to | term | reason                        | kind       | rolled_back\n\
            ------------------------------------+------+----+------+-------------------------------+------------+-------------\n \
            2024-05-01T08:26:40Z (1h 33m ago)  | n2   | n1 |    3 | b                             | switchover |        NULL\n \
            2024-05-01T08:43:20Z (1h 16m ago)  | n1   | n2 |    4 | c                             | automatic  |           0\n \
            2024-05-01T09:00:00Z (1h ago)      | n2   | n3 |    5 | d                             | forced     |        NULL\n \
            2024-05-01T09:16:40Z (43m 20s ago) | n3   | n1 |    6 | e                             | switchover |        NULL\n \
            2024-05-01T09:58:00Z (2m ago)      | n1   | n2 |    7 | n1 stopped renewing its lease | automatic  |           3\n\
            (5 rows)\n";
        assert!(out.ends_with(failovers), "failovers:\n{out}");
        assert!(!out.contains("cluster bootstrapped"), "{out}");
        // The replicas' table stays where it was, before the cluster's.
        assert!(out.find("\nreplicas:\n") < out.find("\ncluster.members:\n"));
    }

    /// An old primary that rolled back to rejoin, now a replica.
    const ROLLED_BACK_REPLICA: &str = r#"{"node": "n1", "role": "replica", "term": 7, "primary": "n2",
        "accepting_writes": false,
        "replication": {"state": "streaming", "follow": "10.0.0.2:6480", "primary": "n2", "lag_records": 0,
          "rollbacks": [{"at_unix_ms": 1714557540000, "from": "6/310", "to": "6/307", "transactions": 3,
                         "rows": 5, "file": "/data/n1/rollbacks/rollback-6-307.sql"}]},
        "replicas": [],
        "cluster": {"raft": {"role": "follower", "leader": "n2", "raft_term": 9, "last_log_index": 120,
                   "last_applied_index": 119, "voters": ["n1", "n2", "n3"]},
          "members": [], "lease": null, "failovers": [], "switchover": {"to": "n3", "term": 7, "since_unix_ms": 1714557603000},
          "commit": {"mode": "async", "sync_set": "ANY 1 (*)"}}}"#;

    #[test]
    fn a_replica_shows_its_rollbacks_with_their_files() {
        let out = format_at(&parse(ROLLED_BACK_REPLICA), at(NOW_MS));
        for line in [
            "primary:                         n2\naccepting_writes:                no\n",
            "replication.state:               streaming\n",
            "cluster.raft.role:               follower\n",
            "cluster.lease:                   -\n",
            "cluster.failovers:               none\n",
            "cluster.switchover.to:           n3\n",
            "cluster.switchover.since:        2024-05-01T10:00:03Z (in 3s)\n",
        ] {
            assert!(out.contains(line), "lacks {line:?}:\n{out}");
        }
        assert!(!out.contains("lease.held"), "a replica has no lease: {out}");
        let rollbacks = "\nreplication.rollbacks:\n \
            at                            | from  | to    | transactions | rows | file\n\
            -------------------------------+-------+-------+--------------+------+---------------------------------------\n \
            2024-05-01T09:59:00Z (1m ago) | 6/310 | 6/307 |            3 |    5 | /data/n1/rollbacks/rollback-6-307.sql\n\
            (1 row)\n";
        assert!(out.ends_with(rollbacks), "rollbacks:\n{out}");
    }
}
