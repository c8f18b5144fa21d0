//! `scribe status`: a node's status as aligned `key: value` lines, each list of objects (the
//! replicas) as a table, or the JSON itself with `--json`. Fields keep the order the node sent
//! them in, so new fields show up without changes here.

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

/// A value on one line: scalars as text, lists of scalars comma-separated, anything else as JSON.
fn inline(key: &str, v: &Json) -> String {
    match v {
        Json::Scalar(Value::Number(n)) if key.ends_with("_seconds") => match n.as_u64() {
            Some(s) if s >= 60 => format!(
                "{s} ({})",
                humantime::format_duration(std::time::Duration::from_secs(s))
            ),
            _ => n.to_string(),
        },
        Json::Scalar(s) => scalar(s),
        Json::List(l) if l.is_empty() => "none".into(),
        Json::List(l) if l.iter().all(|x| matches!(x, Json::Scalar(_))) => l
            .iter()
            .map(|x| inline("", x))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_value().to_string(),
    }
}

/// Formats a status object: scalar fields (and nested objects, as `outer.inner`) as aligned
/// `key: value` lines, then every non-empty list of objects as a titled table.
pub fn format(status: &Json) -> String {
    let Json::Object(fields) = status else {
        return format!("{}\n", status.to_value());
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut tables = String::new();
    for (k, v) in fields {
        match v {
            Json::Object(inner) => {
                for (k2, v2) in inner {
                    lines.push((format!("{k}.{k2}"), inline(k2, v2)));
                }
            }
            Json::List(l) if !l.is_empty() && l.iter().all(|x| matches!(x, Json::Object(_))) => {
                tables.push_str(&format!("\n{k}:\n"));
                tables.push_str(&list_table(l));
            }
            _ => lines.push((k.clone(), inline(k, v))),
        }
    }
    let width = lines
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out.push_str(&tables);
    out
}

/// A table of objects: columns are the keys of the first object in its order, then any keys
/// only later objects have.
fn list_table(objects: &[Json]) -> String {
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
    let rows: Vec<Vec<Value>> =
        objects
            .iter()
            .map(|o| {
                columns
                    .iter()
                    .map(|c| match o {
                        Json::Object(fields) => fields.iter().find(|(k, _)| k == c).map_or(
                            Value::Null,
                            |(_, v)| match v {
                                Json::Scalar(s) => s.clone(),
                                other => Value::String(other.to_value().to_string()),
                            },
                        ),
                        _ => Value::Null,
                    })
                    .collect()
            })
            .collect();
    table::render(&columns, &rows)
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
    let client = Client::new(&args.url)?;
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
}
