//! What a call asks for: a [`Statement`] of a transaction, the [`CommitMode`] of a write and the
//! [`Consistency`] of a read.

use std::fmt;
use std::time::Duration;

use crate::value::{Params, Value};

/// One SQL statement with its parameters. All statements of one `execute` call form one
/// transaction.
///
/// ```
/// use scribe_client::Statement;
/// let insert = Statement::new("INSERT INTO users (name, age) VALUES (?, ?)")
///     .param("Ada")
///     .param(36);
/// let update = Statement::new("UPDATE users SET age = :age WHERE name = :name")
///     .named(":age", 37)
///     .named(":name", "Ada");
/// # let _ = (insert, update);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    sql: String,
    params: Params,
}

impl Statement {
    /// A statement without parameters (yet). `sql` must be exactly one statement.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Params::new(),
        }
    }

    /// Appends a positional parameter (bound to the next `?`).
    pub fn param(mut self, v: impl Into<Value>) -> Statement {
        self.params = self.params.push(v);
        self
    }

    /// Adds a named parameter (bound to `:name`; the `:` may be left out).
    pub fn named(mut self, name: impl Into<String>, v: impl Into<Value>) -> Statement {
        self.params = self.params.named(name, v);
        self
    }

    /// Replaces the parameters.
    pub fn params(mut self, params: impl Into<Params>) -> Statement {
        self.params = params.into();
        self
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The statement as the API's JSON.
    pub(crate) fn to_json(&self) -> Result<serde_json::Value, crate::Error> {
        let mut o = serde_json::Map::new();
        o.insert("sql".into(), self.sql.clone().into());
        if let Some(p) = self.params.to_json()? {
            o.insert("params".into(), p);
        }
        Ok(serde_json::Value::Object(o))
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::new(sql)
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Self {
        Statement::new(sql)
    }
}

/// When the primary answers a write (DESIGN.md §3); without one, the node's `--commit` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitMode {
    /// After the primary's own log fsync.
    Async,
    /// After the sync set's quorum has the record fsynced in their logs.
    SemiSync,
    /// After the sync set's quorum has applied it.
    Sync,
}

impl CommitMode {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitMode::Async => "async",
            CommitMode::SemiSync => "semi-sync",
            CommitMode::Sync => "sync",
        }
    }
}

impl fmt::Display for CommitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fresh a read must be (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Whatever the serving node has applied. With `max_lag`, a node further behind its primary
    /// refuses (`503 lagging`) and the client tries the next node, the primary last.
    Stale {
        /// How far behind the primary the serving node may be.
        max_lag: Option<Duration>,
    },
    /// Read-your-writes: the read sees every write whose position the token holds (the
    /// cluster's or the [`Session`](crate::Session)'s). The serving node waits until it has
    /// applied that position or forwards the read to the primary. Without a token yet, the same
    /// as `Stale { max_lag: None }`.
    Session,
    /// Served by the primary while it holds its lease: sees every committed write.
    Strong,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statements_serialize_as_the_api_takes_them() {
        assert_eq!(
            Statement::new("SELECT 1").to_json().unwrap(),
            json!({"sql": "SELECT 1"})
        );
        assert_eq!(
            Statement::new("INSERT INTO t VALUES (?, ?)")
                .param(1)
                .param("a")
                .to_json()
                .unwrap(),
            json!({"sql": "INSERT INTO t VALUES (?, ?)", "params": [1, "a"]})
        );
        assert_eq!(
            Statement::new("x")
                .named("n", Value::Null)
                .to_json()
                .unwrap(),
            json!({"sql": "x", "params": {"n": null}})
        );
    }
}
