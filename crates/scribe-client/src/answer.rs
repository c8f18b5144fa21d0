//! What calls return: [`Executed`] for a write, [`Rows`] for a read, read from the API's JSON.

use scribe_core::Position;
use serde::Deserialize;

use crate::value::Value;

/// A committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// One result per statement, in order.
    pub results: Vec<StatementResult>,
    /// The position token of the transaction's record (the last durable one when it changed
    /// nothing).
    pub position: Position,
    /// The durability it actually reached.
    pub durability: Durability,
    /// The URL the client sent it to.
    pub url: String,
    /// The primary a node forwarded it to, when one did.
    pub forwarded_to: Option<String>,
}

impl Executed {
    /// The rowid of the last row inserted by the last statement (SQLite's `last_insert_rowid()`
    /// after it), or `None` without statements.
    pub fn last_insert_id(&self) -> Option<i64> {
        self.results.last().map(|r| r.last_insert_id)
    }

    /// Rows changed by all statements together.
    pub fn rows_affected(&self) -> u64 {
        self.results.iter().map(|r| r.rows_affected).sum()
    }
}

/// The result of one statement of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementResult {
    /// Rows it inserted, updated or deleted.
    pub rows_affected: u64,
    /// SQLite's `last_insert_rowid()` after it.
    pub last_insert_id: i64,
    /// Column names, for a statement that returns rows (`INSERT ... RETURNING`); else empty.
    pub columns: Vec<String>,
    /// The rows it returned; else empty.
    pub rows: Vec<Vec<Value>>,
}

/// The durability a write reached (see the API's `durability`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Durability {
    /// The level reached: `async`, `semi-sync` or `sync`.
    pub mode: String,
    /// The replicas that make up the quorum at that level.
    #[serde(default)]
    pub acked_by: Vec<String>,
    /// Less than the requested mode was reached.
    #[serde(default)]
    pub degraded: bool,
    /// The mode asked for, when degraded.
    #[serde(default)]
    pub requested: Option<String>,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
    /// The applied position the read saw: every record up to it and none after.
    pub position: Option<Position>,
    /// The name of the node that served the read, when it says.
    pub served_by: Option<String>,
    /// The primary the read was forwarded to, when it was.
    pub forwarded_to: Option<String>,
    /// The URL the client sent it to.
    pub url: String,
}

impl Rows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The rows.
    pub fn iter(&self) -> std::slice::Iter<'_, Vec<Value>> {
        self.rows.iter()
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = &'a Vec<Value>;
    type IntoIter = std::slice::Iter<'a, Vec<Value>>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

/// `/v1/execute`'s answer as it arrives.
#[derive(Deserialize)]
struct WireExecuted {
    results: Vec<WireResult>,
    position: Position,
    durability: Durability,
    #[serde(default)]
    forwarded_to: Option<String>,
}

#[derive(Deserialize)]
struct WireResult {
    rows_affected: u64,
    last_insert_id: i64,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    rows: Vec<Vec<serde_json::Value>>,
}

/// `/v1/query`'s answer as it arrives.
#[derive(Deserialize)]
struct WireRows {
    columns: Vec<String>,
    rows: Vec<Vec<serde_json::Value>>,
    #[serde(default)]
    position: Option<Position>,
    #[serde(default)]
    served_by: Option<String>,
    #[serde(default)]
    forwarded_to: Option<String>,
}

fn values(rows: Vec<Vec<serde_json::Value>>) -> Result<Vec<Vec<Value>>, String> {
    rows.iter()
        .map(|row| row.iter().map(Value::from_json).collect())
        .collect()
}

/// Reads `/v1/execute`'s answer; an error says what was wrong with it.
pub(crate) fn executed(body: &[u8], url: &str) -> Result<Executed, String> {
    let w: WireExecuted = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let results = w
        .results
        .into_iter()
        .map(|r| {
            Ok(StatementResult {
                rows_affected: r.rows_affected,
                last_insert_id: r.last_insert_id,
                columns: r.columns,
                rows: values(r.rows)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Executed {
        results,
        position: w.position,
        durability: w.durability,
        url: url.to_string(),
        forwarded_to: w.forwarded_to,
    })
}

/// Reads `/v1/query`'s answer; an error says what was wrong with it.
pub(crate) fn rows(body: &[u8], url: &str) -> Result<Rows, String> {
    let w: WireRows = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(Rows {
        columns: w.columns,
        rows: values(w.rows)?,
        position: w.position,
        served_by: w.served_by,
        forwarded_to: w.forwarded_to,
        url: url.to_string(),
    })
}

/// The API's error body: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorObject,
}

/// The error object of an error body.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorObject {
    pub code: String,
    pub message: String,
    /// `sync_timeout`: where the transaction committed.
    #[serde(default)]
    pub position: Option<Position>,
}

/// Reads an error body, if that is what `body` is.
pub(crate) fn error_body(body: &[u8]) -> Option<ErrorObject> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::{Lsn, Term};

    #[test]
    fn an_execute_answer_reads() {
        let e = executed(
            br#"{"results": [{"rows_affected": 1, "last_insert_id": 7},
                             {"rows_affected": 1, "last_insert_id": 8, "columns": ["id"], "rows": [[8]]}],
                 "position": "1/42",
                 "durability": {"mode": "async", "acked_by": [], "degraded": false},
                 "forwarded_to": "n1"}"#,
            "http://x",
        )
        .unwrap();
        assert_eq!(e.position, Position::new(Term(1), Lsn(42)));
        assert_eq!(e.last_insert_id(), Some(8));
        assert_eq!(e.rows_affected(), 2);
        assert_eq!(e.results[1].rows, vec![vec![Value::Integer(8)]]);
        assert_eq!(e.forwarded_to.as_deref(), Some("n1"));
    }

    #[test]
    fn a_query_answer_reads() {
        let r = rows(
            br#"{"columns": ["id", "b"], "rows": [[1, {"base64": "AAH/"}]], "position": "2/9", "served_by": "n2"}"#,
            "http://x",
        )
        .unwrap();
        assert_eq!(r.column("b"), Some(1));
        assert_eq!(r.rows[0][1], Value::Blob(vec![0, 1, 255]));
        assert_eq!(r.position, Some(Position::new(Term(2), Lsn(9))));
        assert_eq!(r.served_by.as_deref(), Some("n2"));
        assert!(rows(br#"{"columns": [], "rows": [[[1]]]}"#, "u").is_err());
        assert!(rows(br#"{"columns": [], "rows": [], "position": "x"}"#, "u").is_err());
    }

    #[test]
    fn error_bodies_read() {
        let e = error_body(
            br#"{"error": {"code": "sync_timeout", "message": "m", "position": "1/3", "durability": {}}}"#,
        )
        .unwrap();
        assert_eq!(e.code, "sync_timeout");
        assert_eq!(e.position, Some(Position::new(Term(1), Lsn(3))));
        assert!(error_body(b"<html>bad gateway</html>").is_none());
    }
}
