//! The small HTTP client the CLI commands share: execute, query, status and metrics over the
//! node's JSON API, with errors that tell a node's refusal ([`ClientError::Server`]) apart from a
//! node that cannot be reached ([`ClientError::Unreachable`]). The full client library, with
//! routing and retries, is the `scribe-client` crate's job; this one only serves the CLI.

use std::time::Duration;

use scribe_core::Position;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status.
    #[error("{message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Stable error code (`sql_error`, `not_read_only`, ...), or `http_<status>` when the
        /// answer carried none.
        code: String,
        /// What the node said.
        message: String,
        /// The transaction's position, when the error carries one (`sync_timeout`: the
        /// transaction is committed on the primary, its replication unconfirmed).
        position: Option<Position>,
    },
    /// The node could not be reached, or the connection failed before its answer was read.
    #[error("could not reach the node at {url}: {message}")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The node answered success with a body this client cannot read.
    #[error("unexpected answer from the node at {url}: {message}")]
    BadAnswer {
        /// The node's URL.
        url: String,
        /// What was wrong with it.
        message: String,
    },
}

impl ClientError {
    /// The node's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            ClientError::Unreachable { .. } | ClientError::BadAnswer { .. } => None,
        }
    }
}

/// One statement of a transaction sent to `/v1/execute`.
#[derive(Debug, Clone, Serialize)]
pub struct Statement<'a> {
    /// The SQL text: exactly one statement.
    pub sql: &'a str,
    /// Positional (array) or named (object) parameters; `null` for none.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl<'a> Statement<'a> {
    /// A statement without parameters.
    pub fn new(sql: &'a str) -> Statement<'a> {
        Statement {
            sql,
            params: Value::Null,
        }
    }

    /// A statement with parameters (a JSON array or object).
    pub fn with_params(sql: &'a str, params: Value) -> Statement<'a> {
        Statement { sql, params }
    }
}

/// One statement's result from `/v1/execute`.
#[derive(Debug, Clone, Deserialize)]
pub struct StatementResult {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// The last inserted rowid after the statement.
    pub last_insert_id: i64,
    /// Column names, when the statement returned rows.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// The rows, when the statement returned rows.
    #[serde(default)]
    pub rows: Option<Vec<Vec<Value>>>,
}

/// The answer to `/v1/execute`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecuteResponse {
    /// One result per statement, in order.
    pub results: Vec<StatementResult>,
    /// Position token of the transaction's record.
    pub position: Position,
}

/// The answer to `/v1/query`.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryResponse {
    /// Column names.
    pub columns: Vec<String>,
    /// The rows; each holds one value per column.
    pub rows: Vec<Vec<Value>>,
    /// The applied position the read saw.
    pub position: Position,
}

#[derive(Serialize)]
struct ExecuteBody<'a> {
    statements: &'a [Statement<'a>],
}

#[derive(Serialize)]
struct QueryBody<'a> {
    sql: &'a str,
    #[serde(skip_serializing_if = "Value::is_null")]
    params: &'a Value,
    /// `session` once this client has written, so it reads its own writes on any node.
    #[serde(skip_serializing_if = "Option::is_none")]
    consistency: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    position: Option<Position>,
}

/// A client of one node. Cloning is cheap and shares the connection pool and the session.
///
/// The client is a session: it keeps the position token of its newest write and sends it with
/// every read (`"consistency": "session"`), so a read on a replica sees this client's own writes
/// (the replica waits until it has applied them, or forwards the read to the primary).
#[derive(Clone)]
pub struct Client {
    url: String,
    execute_url: reqwest::Url,
    http: reqwest::Client,
    last_write: std::sync::Arc<std::sync::Mutex<Option<Position>>>,
}

impl Client {
    /// A client of the node at `url` (for example `http://127.0.0.1:5480`).
    pub fn new(url: &str) -> anyhow::Result<Client> {
        Client::with_pool(url, 8)
    }

    /// A client keeping up to `idle` idle connections to the node, for `idle` concurrent users.
    pub fn with_pool(url: &str, idle: usize) -> anyhow::Result<Client> {
        Client::connect(url, idle, None, None)
    }

    /// A client keeping up to `idle` idle connections to the node, trusting the CA certificates
    /// of the PEM file `ca` (`--ca`) for an `https://` URL, and sending `authorization` (the
    /// `Authorization` header, [`crate::access::Access`]) with every request.
    pub fn connect(
        url: &str,
        idle: usize,
        ca: Option<&std::path::Path>,
        authorization: Option<reqwest::header::HeaderValue>,
    ) -> anyhow::Result<Client> {
        let url = url.trim_end_matches('/').to_string();
        let execute_url = reqwest::Url::parse(&format!("{url}/v1/execute"))
            .map_err(|e| anyhow::anyhow!("invalid node URL {url:?}: {e}"))?;
        let mut http = reqwest::Client::builder()
            .pool_max_idle_per_host(idle)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = ca {
            for cert in scribe_node::tls::ca_certificates(ca).map_err(|e| anyhow::anyhow!(e))? {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(value) = authorization {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            http = http.default_headers(headers);
        }
        let http = http
            .build()
            .map_err(|e| anyhow::anyhow!("build the HTTP client: {e}"))?;
        Ok(Client {
            url,
            execute_url,
            http,
            last_write: Default::default(),
        })
    }

    /// The node's URL, without a trailing `/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs statements as one transaction.
    pub async fn execute(
        &self,
        statements: &[Statement<'_>],
    ) -> Result<ExecuteResponse, ClientError> {
        let body =
            serde_json::to_vec(&ExecuteBody { statements }).map_err(|e| self.bad_answer(e))?;
        let bytes = self
            .send(
                self.http
                    .post(self.execute_url.clone())
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
            .inspect_err(|e| {
                // A transaction committed on the primary but not confirmed replicated is this
                // session's write all the same: its reads must see it.
                if let ClientError::Server {
                    position: Some(p), ..
                } = e
                {
                    self.advance(*p);
                }
            })?;
        let answer: ExecuteResponse = self.decode(&bytes)?;
        self.advance(answer.position);
        Ok(answer)
    }

    fn advance(&self, position: Position) {
        let mut last = self.last_write.lock().expect("session token");
        if last.is_none_or(|p| p < position) {
            *last = Some(position);
        }
    }

    /// The position token of this client's newest write, if it wrote.
    pub fn last_write(&self) -> Option<Position> {
        *self.last_write.lock().expect("session token")
    }

    /// POSTs an already serialized `/v1/execute` body and discards a successful answer: the
    /// benchmark's lean path.
    pub async fn execute_raw(&self, body: Vec<u8>) -> Result<(), ClientError> {
        self.send(
            self.http
                .post(self.execute_url.clone())
                .header("content-type", "application/json")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// Runs one read-only statement; `params` is a JSON array, object, or `null` for none.
    pub async fn query(&self, sql: &str, params: &Value) -> Result<QueryResponse, ClientError> {
        let position = self.last_write();
        let body = serde_json::to_vec(&QueryBody {
            sql,
            params,
            consistency: position.map(|_| "session"),
            position,
        })
        .map_err(|e| self.bad_answer(e))?;
        let req = self
            .http
            .post(format!("{}/v1/query", self.url))
            .header("content-type", "application/json")
            .body(body);
        let bytes = self.send(req).await?;
        self.decode(&bytes)
    }

    /// `GET /v1/status`, decoded as `T` (a [`Value`], or any type that keeps what it needs).
    pub async fn status<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        let bytes = self
            .send(self.http.get(format!("{}/v1/status", self.url)))
            .await?;
        self.decode(&bytes)
    }

    /// `POST /v1/switchover`: hands the primary role over to `to` (any node forwards it to the
    /// primary); answers the primary's JSON account of it.
    pub async fn switchover(&self, to: &str) -> Result<Value, ClientError> {
        let bytes = self
            .send(
                self.http
                    .post(format!("{}/v1/switchover", self.url))
                    .json(&serde_json::json!({ "to": to })),
            )
            .await?;
        self.decode(&bytes)
    }

    /// `POST /v1/promote` with `"force": true`.
    pub async fn promote(&self, to: &str) -> Result<Value, ClientError> {
        let bytes = self
            .send(
                self.http
                    .post(format!("{}/v1/promote", self.url))
                    .json(&serde_json::json!({ "to": to, "force": true })),
            )
            .await?;
        self.decode(&bytes)
    }

    /// `POST /v1/members` with `body` (`{"add": {...}}` or `{"remove": NAME}`).
    pub async fn members(&self, body: &Value) -> Result<Value, ClientError> {
        let bytes = self
            .send(
                self.http
                    .post(format!("{}/v1/members", self.url))
                    .json(body),
            )
            .await?;
        self.decode(&bytes)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let bytes = self
            .send(self.http.get(format!("{}/metrics", self.url)))
            .await?;
        std::str::from_utf8(&bytes)
            .map(str::to_owned)
            .map_err(|e| self.bad_answer(e))
    }

    /// Sends a request and reads the whole answer; a non-2xx answer becomes [`ClientError::Server`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<impl std::ops::Deref<Target = [u8]>, ClientError> {
        let r = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(server_error(status, &bytes))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| self.bad_answer(e))
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            message: describe(e),
        }
    }

    fn bad_answer(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::BadAnswer {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }
}

/// The error of a non-2xx answer: the node's `{"error": {...}}` body, or its raw text.
fn server_error(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        let message = if status == reqwest::StatusCode::UNAUTHORIZED {
            format!(
                "{} (log in with --user NAME, its password from SCRIBE_PASSWORD, --password-stdin or the terminal; or --token TOKEN)",
                error.message
            )
        } else {
            error.message
        };
        return ClientError::Server {
            status: status.as_u16(),
            code: error.code,
            message,
            position: error.position,
        };
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    let message = if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    };
    ClientError::Server {
        status: status.as_u16(),
        code: format!("http_{}", status.as_u16()),
        message,
        position: None,
    }
}

/// A reqwest error's causes, without the wrapper that repeats the URL.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        // hyper's "client error (Connect)" wrapper says nothing its cause does not.
        if !causes.contains(&text) && !text.starts_with("client error (") {
            causes.push(text);
        }
        source = s.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

/// The value of the metric `name` in Prometheus text: the sum over its series (labelled or not),
/// or `None` when it is absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.find('}') {
                Some(end) => &labelled[end + 1..],
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            continue; // a longer name sharing the prefix
        };
        // The value, optionally followed by a timestamp.
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name() {
        let text =
            "# HELP scribe_commits_total Transactions.\n# TYPE scribe_commits_total counter\n\
                    scribe_commits_total 42\nscribe_commits_total_other 1\nscribe_x{a=\"b\"} 3\n";
        assert_eq!(metric(text, "scribe_commits_total"), Some(42.0));
        assert_eq!(metric(text, "scribe_commits"), None);
        assert_eq!(metric(text, "scribe_missing"), None);
    }

    #[test]
    fn labelled_series_are_summed_and_timestamps_ignored() {
        let text = "req_total{code=\"200\"} 10 1700000000000\nreq_total{code=\"500\",path=\"/a b\"} 2.5\nreq_total_x 7\n";
        assert_eq!(metric(text, "req_total"), Some(12.5));
        assert_eq!(metric("up 1 1700000000000\n", "up"), Some(1.0));
    }

    #[test]
    fn error_answers_carry_the_code_and_message() {
        let e = server_error(
            reqwest::StatusCode::BAD_REQUEST,
            br#"{"error": {"code": "sql_error", "message": "near \"SELEC\": syntax error"}}"#,
        );
        assert_eq!(e.code(), Some("sql_error"));
        assert_eq!(e.to_string(), "near \"SELEC\": syntax error");
        let e = server_error(reqwest::StatusCode::NOT_FOUND, b"no such page");
        assert_eq!(e.code(), Some("http_404"));
        assert_eq!(e.to_string(), "404 Not Found: no such page");
    }

    #[test]
    fn a_sync_timeout_still_moves_the_session_token() {
        let e = server_error(
            reqwest::StatusCode::GATEWAY_TIMEOUT,
            br#"{"error": {"code": "sync_timeout", "message": "committed on the primary", "position": "1/42", "durability": {}}}"#,
        );
        let ClientError::Server { position, .. } = &e else {
            panic!("{e:?}");
        };
        let client = Client::new("http://127.0.0.1:1").unwrap();
        client.advance(position.unwrap());
        assert_eq!(
            client.last_write().map(|p| p.to_string()),
            Some("1/42".into())
        );
        client.advance("1/7".parse().unwrap());
        assert_eq!(
            client.last_write().map(|p| p.to_string()),
            Some("1/42".into())
        );
    }

    #[test]
    fn statements_omit_absent_params() {
        let body = serde_json::to_value(ExecuteBody {
            statements: &[
                Statement::new("SELECT 1"),
                Statement::with_params("SELECT ?", serde_json::json!([1])),
            ],
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT ?", "params": [1]}]})
        );
    }
}
