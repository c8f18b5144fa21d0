//! The node's public HTTP API as the soak uses it (`/v1/execute`, `/v1/query`, `/v1/status`),
//! with HTTP Basic credentials when given, and the classification of every answer into what the
//! soak must remember about it: done, failed leaving no trace, or outcome unknown.

use std::time::Duration;

use serde_json::{json, Value};

/// What became of a request, as the soak must account for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// HTTP 200: the body.
    Done(Value),
    /// The request failed and left no trace (the API promises it for every error but the
    /// unknown-outcome ones); the error kind.
    Failed(String),
    /// The transaction may or may not be committed: a timeout, a connection lost after sending,
    /// `504 sync_timeout` (committed on the primary, replication unconfirmed), `500`/`502
    /// outcome_unknown`; the error kind.
    Unknown(String),
}

/// Classifies an HTTP answer that is not a transport error: its status and error `code`.
pub fn classify(status: u16, body: Value) -> Outcome {
    if status == 200 {
        return Outcome::Done(body);
    }
    let code = body["error"]["code"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("http_{status}"));
    match code.as_str() {
        "sync_timeout" | "outcome_unknown" | "internal" => Outcome::Unknown(code),
        _ => Outcome::Failed(code),
    }
}

/// Classifies a transport error: one where no connection was made sent nothing; any other may
/// have reached the node.
pub fn classify_transport(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Failed("connect".into())
    } else if e.is_timeout() {
        Outcome::Unknown("client_timeout".into())
    } else {
        Outcome::Unknown("connection_lost".into())
    }
}

/// A client of one node's HTTP API.
#[derive(Clone)]
pub struct Api {
    /// The node's base URL (`http://127.0.0.1:5480`).
    pub url: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl Api {
    /// A client of `url`, sending `auth` as HTTP Basic credentials when given, giving up on a
    /// request after `timeout`.
    pub fn new(
        url: &str,
        auth: Option<(String, String)>,
        timeout: Duration,
    ) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Api {
            url: url.to_string(),
            http,
            auth,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.auth {
            Some((user, password)) => r.basic_auth(user, Some(password)),
            None => r,
        }
    }

    /// POSTs `body` to `path` (with a request timeout of `timeout` when given) and classifies
    /// the answer.
    pub async fn post(&self, path: &str, body: &Value, timeout: Option<Duration>) -> Outcome {
        let mut r = self.request(reqwest::Method::POST, path).json(body);
        if let Some(t) = timeout {
            r = r.timeout(t);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.json::<Value>().await {
                    Ok(body) => classify(status, body),
                    // The status says what happened; a body that cannot be read only loses
                    // the error code.
                    Err(_) if status != 200 => classify(status, Value::Null),
                    Err(e) => classify_transport(&e),
                }
            }
            Err(e) => classify_transport(&e),
        }
    }

    /// `POST /v1/execute` of `statements` (`(sql, params)`) as one transaction.
    pub async fn execute(&self, statements: &[(&str, Value)]) -> Outcome {
        let st: Vec<Value> = statements
            .iter()
            .map(|(sql, params)| json!({"sql": sql, "params": params}))
            .collect();
        self.post("/v1/execute", &json!({ "statements": st }), None)
            .await
    }

    /// `POST /v1/query` with `body` (`sql`, `params`, `consistency`...).
    pub async fn query(&self, body: &Value) -> Outcome {
        self.post("/v1/query", body, None).await
    }

    /// The rows of a query that must succeed on this node, served from its own data.
    pub async fn rows(&self, sql: &str, params: Value) -> anyhow::Result<Vec<Vec<Value>>> {
        let body = json!({"sql": sql, "params": params, "forward": false});
        match self.query(&body).await {
            Outcome::Done(b) => Ok(serde_json::from_value(b["rows"].clone())?),
            other => anyhow::bail!("{sql} on {}: {other:?}", self.url),
        }
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let resp = self
            .request(reqwest::Method::GET, "/v1/status")
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "status of {}: HTTP {status}", self.url);
        Ok(resp.json().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_errors_the_api_calls_uncertain_are_unknown() {
        let err = |code: &str| json!({"error": {"code": code, "message": "m"}});
        assert_eq!(
            classify(504, err("sync_timeout")),
            Outcome::Unknown("sync_timeout".into())
        );
        assert_eq!(
            classify(502, err("outcome_unknown")),
            Outcome::Unknown("outcome_unknown".into())
        );
        assert_eq!(
            classify(408, err("statement_timeout")),
            Outcome::Failed("statement_timeout".into())
        );
        assert_eq!(
            classify(503, err("unavailable")),
            Outcome::Failed("unavailable".into())
        );
        assert_eq!(
            classify(503, Value::Null),
            Outcome::Failed("http_503".into())
        );
        assert_eq!(
            classify(200, json!({"a": 1})),
            Outcome::Done(json!({"a": 1}))
        );
    }
}
