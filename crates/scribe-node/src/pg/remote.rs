//! A replica's PostgreSQL sessions run their writes and transactions on the primary, over the
//! primary's HTTP API (`/v1/execute`, `/v1/tx/...`, `/v1/query`); answers come back as the
//! engine's types, errors with the primary's code mapped to SQLSTATE.

use scribe_core::{CommitMode, Position};
use scribe_sqlite::{Statement, StatementResult, Value};
use serde::Deserialize;

use super::sqlstate::{PgError, CONNECTION_FAILURE};
use crate::api::FORWARDED_BY;

/// Where the primary is and who asks.
#[derive(Clone)]
pub struct Primary {
    /// The HTTP client.
    pub http: crate::node_http::NodeHttp,
    /// The session's user (with `--users`): the primary applies its role.
    pub who: Option<crate::auth::Principal>,
    /// The primary's HTTP URL.
    pub url: String,
    /// This replica's name (sent as the forwarding header).
    pub via: String,
    /// The session's own statement timeout, sent with each request (`None`: the primary's).
    pub statement_timeout: Option<std::time::Duration>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    /// With `sync_timeout`: where the committed transaction is.
    #[serde(default)]
    position: Option<Position>,
}

/// A commit the primary answered: its results (empty when only a warning came back), position,
/// and a warning to pass on (committed, but its sync replicas did not confirm it in time).
pub struct RemoteCommit {
    /// The statements' results.
    pub results: Vec<StatementResult>,
    /// The transaction's position.
    pub position: Position,
    /// A warning for the client.
    pub warning: Option<String>,
}

#[derive(Deserialize)]
struct ExecuteJson {
    results: Vec<StatementResult>,
    position: Position,
}

#[derive(Deserialize)]
struct BeginJson {
    tx: String,
}

#[derive(Deserialize)]
struct QueryJson {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Primary {
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
        writes: bool,
    ) -> Result<T, PgError> {
        let (ok, bytes) = self.send(path, body, writes).await?;
        decode(ok, &bytes).map_err(|(e, _)| e)
    }

    /// A commit: a `sync_timeout` answer is a committed transaction, passed on as a warning
    /// (as the primary's own sessions get it), not an error.
    async fn post_commit(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<RemoteCommit, PgError> {
        let (ok, bytes) = self.send(path, body, true).await?;
        match decode::<ExecuteJson>(ok, &bytes) {
            Ok(r) => Ok(RemoteCommit {
                results: r.results,
                position: r.position,
                warning: None,
            }),
            Err((
                _,
                Some(ErrorFields {
                    code,
                    message,
                    position: Some(position),
                }),
            )) if code == "sync_timeout" => Ok(RemoteCommit {
                results: Vec::new(),
                position,
                warning: Some(message),
            }),
            Err((e, _)) => Err(e),
        }
    }

    async fn send(
        &self,
        path: &str,
        body: serde_json::Value,
        writes: bool,
    ) -> Result<(bool, bytes::Bytes), PgError> {
        let r = self
            .http
            .request_for(
                reqwest::Method::POST,
                &format!("{}{path}", self.url),
                self.who.as_ref(),
            )
            .header(FORWARDED_BY, self.via.as_str())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || !writes {
                    PgError::new(CONNECTION_FAILURE, format!("could not reach the primary at {}: {e}", self.url))
                } else {
                    PgError::new("08007", format!("sent to the primary at {} but got no answer ({e}): the write may or may not have been committed", self.url))
                }
            })?;
        let ok = r.status().is_success();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| PgError::new("08007", format!("the primary's answer was lost: {e}")))?;
        Ok((ok, bytes))
    }

    /// This primary, asked to bound the requests' statements by `timeout` (`None`: its own).
    pub fn with_timeout(mut self, timeout: Option<std::time::Duration>) -> Primary {
        self.statement_timeout = timeout;
        self
    }

    fn add_timeout(&self, body: &mut serde_json::Value) {
        if let Some(t) = self.statement_timeout {
            // Whole milliseconds, rounded up: "0ms" would ask for the longest allowed.
            let ms = t.as_micros().div_ceil(1000);
            body["statement_timeout"] = format!("{ms}ms").into();
        }
    }

    /// Runs `statements` as one transaction on the primary.
    pub async fn execute(
        &self,
        statements: Vec<Statement>,
        commit: Option<CommitMode>,
    ) -> Result<RemoteCommit, PgError> {
        let mut body = serde_json::json!({ "statements": statements, "forward": false });
        if let Some(c) = commit {
            body["commit"] = serde_json::to_value(c).expect("a commit mode is JSON");
        }
        self.add_timeout(&mut body);
        self.post_commit("/v1/execute", body).await
    }

    /// Reads on the primary (a replica that could not catch up with the session in time).
    pub async fn query(
        &self,
        statement: Statement,
    ) -> Result<(Vec<String>, Vec<Vec<Value>>), PgError> {
        let mut body = serde_json::json!({ "sql": statement.sql, "params": statement.params, "consistency": "strong", "forward": false });
        self.add_timeout(&mut body);
        let r: QueryJson = self.post("/v1/query", body, false).await?;
        Ok((r.columns, r.rows))
    }

    /// Opens a transaction on the primary.
    pub async fn begin(&self) -> Result<RemoteTxn, PgError> {
        let mut body = serde_json::json!({});
        self.add_timeout(&mut body);
        let r: BeginJson = self.post("/v1/tx", body, false).await?;
        Ok(RemoteTxn {
            primary: self.clone(),
            id: r.tx,
            open: true,
        })
    }
}

/// A transaction held on the primary. Dropping it while open rolls it back (in the background).
pub struct RemoteTxn {
    primary: Primary,
    id: String,
    open: bool,
}

impl RemoteTxn {
    /// Runs one statement in it.
    pub async fn execute(&mut self, statement: Statement) -> Result<StatementResult, PgError> {
        let body = serde_json::json!({ "sql": statement.sql, "params": statement.params });
        let r: StatementResult = self
            .primary
            .post(&format!("/v1/tx/{}/execute", self.id), body, true)
            .await?;
        Ok(r)
    }

    /// A savepoint operation (`create`, `release`, `rollback_to`).
    pub async fn savepoint(&mut self, op: &str, name: &str) -> Result<(), PgError> {
        let body = serde_json::json!({ "op": op, "name": name });
        let _: serde_json::Value = self
            .primary
            .post(&format!("/v1/tx/{}/savepoint", self.id), body, true)
            .await?;
        Ok(())
    }

    /// Commits it; answers its position.
    pub async fn commit(mut self, commit: Option<CommitMode>) -> Result<RemoteCommit, PgError> {
        self.open = false;
        let mut body = serde_json::json!({});
        if let Some(c) = commit {
            body["commit"] = serde_json::to_value(c).expect("a commit mode is JSON");
        }
        self.primary
            .post_commit(&format!("/v1/tx/{}/commit", self.id), body)
            .await
    }

    /// Rolls it back.
    pub async fn rollback(mut self) {
        self.open = false;
        let _: Result<serde_json::Value, _> = self
            .primary
            .post(
                &format!("/v1/tx/{}/rollback", self.id),
                serde_json::json!({}),
                false,
            )
            .await;
    }
}

impl Drop for RemoteTxn {
    fn drop(&mut self) {
        if self.open {
            let primary = self.primary.clone();
            let id = std::mem::take(&mut self.id);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _: Result<serde_json::Value, _> = primary
                        .post(
                            &format!("/v1/tx/{id}/rollback"),
                            serde_json::json!({}),
                            false,
                        )
                        .await;
                });
            }
        }
    }
}

/// Decodes an answer of the primary; an error answer also gives its fields.
fn decode<T: serde::de::DeserializeOwned>(
    ok: bool,
    bytes: &[u8],
) -> Result<T, (PgError, Option<ErrorFields>)> {
    if ok {
        return serde_json::from_slice(bytes).map_err(|e| {
            (
                PgError::new("XX000", format!("unexpected answer from the primary: {e}")),
                None,
            )
        });
    }
    let body: ErrorBody = serde_json::from_slice(bytes).map_err(|e| {
        (
            PgError::new(
                "XX000",
                format!("unexpected error answer from the primary: {e}"),
            ),
            None,
        )
    })?;
    Err((
        PgError::remote(&body.error.code, &body.error.message),
        Some(body.error),
    ))
}
