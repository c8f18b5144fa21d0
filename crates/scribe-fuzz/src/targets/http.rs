//! HTTP request bodies (`http_body`): the JSON of `/v1/execute`, `/v1/query`, `/v1/tx` and the
//! transaction routes, parsed with the node's own request types as the node parses them
//! (`serde_json::from_slice`), then validated as the node does: the `statement_timeout`,
//! `max_lag` and `wait` durations, the node's limits, the commit mode and position token, the
//! parameters. Whatever parses must serialize and parse back to the same value.
//!
//! Also `core_tokens`: the strings operators and clients hand the node — position tokens, commit
//! modes, sync sets (`FIRST 2 (a, b)`), sync-timeout policies, durations.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;

use scribe_core::{CommitMode, OnSyncTimeout, Position, SyncSet};
use scribe_node::api::{ExecuteRequest, QueryRequest};
use scribe_node::tx_api::{BeginRequest, CommitRequest, SavepointRequest, TxStatement};
use scribe_node::NodeConfig;
use scribe_sqlite::{Params, Statement, Value};

fn config() -> &'static NodeConfig {
    static CONFIG: OnceLock<NodeConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        NodeConfig::new(
            "fuzz",
            "/nonexistent/scribe-fuzz",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        )
    })
}

/// `http_body`: the input is a request body.
pub fn body(input: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(r) = serde_json::from_slice::<ExecuteRequest>(input) {
        accepted = true;
        timeout(&r.statement_timeout);
        for s in &r.statements {
            statement(s);
        }
        if let Some(mode) = r.commit {
            commit_mode(mode);
        }
    }
    if let Ok(r) = serde_json::from_slice::<QueryRequest>(input) {
        accepted = true;
        timeout(&r.statement_timeout);
        let _ = r.max_lag.as_deref().map(humantime::parse_duration);
        let _ = r.wait.as_deref().map(humantime::parse_duration);
        params(&r.params);
        if let Some(p) = r.position {
            position(p);
        }
    }
    if let Ok(r) = serde_json::from_slice::<BeginRequest>(input) {
        accepted = true;
        timeout(&r.statement_timeout);
    }
    if let Ok(r) = serde_json::from_slice::<TxStatement>(input) {
        accepted = true;
        params(&r.params);
        let again = round_trip_json(&r);
        assert_eq!(again.sql, r.sql);
    }
    if let Ok(r) = serde_json::from_slice::<CommitRequest>(input) {
        accepted = true;
        let again = round_trip_json(&r);
        assert_eq!(
            again.commit, r.commit,
            "a commit request does not survive serializing"
        );
    }
    if let Ok(r) = serde_json::from_slice::<SavepointRequest>(input) {
        accepted = true;
        let again = round_trip_json(&r);
        assert_eq!((again.op, again.name), (r.op, r.name));
    }
    accepted
}

fn round_trip_json<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    let json = match serde_json::to_vec(v) {
        Ok(j) => j,
        Err(e) => panic!("a parsed request does not serialize: {e}"),
    };
    match serde_json::from_slice(&json) {
        Ok(again) => again,
        Err(e) => panic!("a serialized request does not parse: {e}"),
    }
}

/// What `api::limits` does with a request's `statement_timeout`.
fn timeout(t: &Option<String>) {
    if let Some(Ok(d)) = t.as_deref().map(humantime::parse_duration) {
        if let Ok(limits) = config().limits(Some(d)) {
            if let Some(t) = limits.timeout {
                assert!(!t.is_zero(), "a zero timeout is no timeout");
            }
        }
    }
}

fn statement(s: &Statement) {
    params(&s.params);
}

fn params(p: &Params) {
    let again: Params = round_trip_json(p);
    let same = match (p, &again) {
        (Params::None, Params::None) => true,
        (Params::Positional(a), Params::Positional(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
        }
        (Params::Named(a), Params::Named(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((k, x), (l, y))| k == l && same_value(x, y))
        }
        _ => false,
    };
    assert!(same, "parameters {p:?} come back as {again:?}");
}

/// Equal, with reals allowed the last-digit difference of a decimal round trip.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x == y || (x - y).abs() <= x.abs() * 1e-15,
        _ => a == b,
    }
}

fn commit_mode(mode: CommitMode) {
    let text = mode.to_string();
    assert_eq!(CommitMode::from_str(&text).ok(), Some(mode));
}

fn position(p: Position) {
    assert_eq!(Position::from_str(&p.to_string()).ok(), Some(p));
}

/// `core_tokens`: the input is a token or setting as a user writes it.
pub fn tokens(input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input);
    let mut accepted = false;
    if let Ok(p) = Position::from_str(&text) {
        position(p);
        accepted = true;
    }
    if let Ok(m) = CommitMode::from_str(&text) {
        commit_mode(m);
        accepted = true;
    }
    if let Ok(s) = SyncSet::from_str(&text) {
        assert!(s.n >= 1);
        if let Some(m) = &s.members {
            assert!(
                s.n <= m.len(),
                "a sync set asks for more members than it lists"
            );
        }
        let shown = s.to_string();
        match SyncSet::from_str(&shown) {
            Ok(again) => assert_eq!(again, s, "sync set {text:?} shows as {shown:?}"),
            Err(e) => panic!("sync set {text:?} shows as {shown:?}, which does not parse: {e}"),
        }
        let _ = s.quorum_position(&[("a".into(), scribe_core::Lsn(3))]);
        accepted = true;
    }
    if let Ok(o) = OnSyncTimeout::from_str(&text) {
        assert_eq!(OnSyncTimeout::from_str(&o.to_string()).ok(), Some(o));
        accepted = true;
    }
    if let Ok(d) = humantime::parse_duration(&text) {
        let _ = config().limits(Some(d));
        accepted = true;
    }
    accepted
}

/// Seeds for `http_body`: the bodies the client library, the CLI and the docs send.
pub fn body_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"statements":[{"sql":"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}]}"#,
        r#"{"statements":[{"sql":"INSERT INTO t (v) VALUES (?1), (?2)","params":["a",{"base64":"AAEC"}]}],"commit":"semi-sync","statement_timeout":"30s"}"#,
        r#"{"statements":[{"sql":"INSERT INTO t VALUES (:id, :v)","params":{"id":1,"v":null}}],"forward":false,"commit":"SYNC"}"#,
        r#"{"sql":"SELECT * FROM t WHERE id = ?","params":[1.5e3, true, -9223372036854775808]}"#,
        r#"{"sql":"SELECT 1","consistency":"session","position":"3/42","wait":"250ms"}"#,
        r#"{"sql":"SELECT 1","consistency":"stale","max_lag":"500ms","forward":true,"statement_timeout":"0s"}"#,
        r#"{"sql":"SELECT 1","consistency":"strong"}"#,
        r#"{"statement_timeout":"1h 2m 3s"}"#,
        r#"{}"#,
        r#"{"sql":"UPDATE t SET v = ?1","params":["\u00e9\ud83d\ude00"]}"#,
        r#"{"commit":"async"}"#,
        r#"{"op":"create","name":"sp1"}"#,
        r#"{"op":"rollback_to","name":"sp1"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Seeds for `core_tokens`.
pub fn token_seeds() -> Vec<Vec<u8>> {
    [
        "1/42",
        "0/0",
        "18446744073709551615/18446744073709551615",
        "semi-sync",
        "SEMI_SYNC",
        "sync",
        "FIRST 2 (n2, n3, n4)",
        "ANY 1 (*)",
        "1 (n2)",
        "degrade",
        "error",
        "5s",
        "1h 30min",
        "250ms",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// JSON and token words.
pub const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"1e308",
    b"1e-400",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\\u0000",
    b"\\ud800",
    b"\"statements\"",
    b"\"sql\"",
    b"\"params\"",
    b"\"commit\"",
    b"\"forward\"",
    b"\"statement_timeout\"",
    b"\"consistency\"",
    b"\"position\"",
    b"\"wait\"",
    b"\"max_lag\"",
    b"\"base64\"",
    b"\"op\"",
    b"\"name\"",
    b"\"session\"",
    b"\"stale\"",
    b"\"strong\"",
    b"FIRST",
    b"ANY",
    b"(*)",
    b"/",
    b"ms",
    b"s",
    b"min",
    b"h",
    b"d",
    b"y",
    b"ns",
];
