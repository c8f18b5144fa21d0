//! The runaway statements: a write that would insert rows forever (into its own table `t`) and a
//! read that would count forever, and how each ended.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{Api, Outcome};

/// The runaway's table: nothing may ever be in it.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS t (v INTEGER)";
/// The runaway write.
pub const WRITE: &str = "INSERT INTO t (v) SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c)";
/// The runaway read.
pub const READ: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

/// How one runaway ended.
#[derive(Debug, Clone)]
pub struct Runaway {
    /// `write` or `read`.
    pub kind: &'static str,
    /// Since the load started, when it was sent.
    pub at: Duration,
    /// How it ended: the error code (`statement_timeout`), `ok`, or the transport error.
    pub ended: String,
    /// How long it took.
    pub took: Duration,
    /// Whether it ended as it must: refused by a limit (`statement_timeout`, or `too_large` for
    /// the write) within the statement timeout plus `slack`.
    pub in_time: bool,
}

/// Whether an answer `ended` after `took` is a runaway stopped by the node's limits in time.
pub fn judged(kind: &str, ended: &str, took: Duration, limit: Duration) -> bool {
    let by_limit = ended == "statement_timeout" || (kind == "write" && ended == "too_large");
    by_limit && took <= limit
}

/// Sends one runaway of `kind` to `api`; `limit` is the statement timeout plus the slack allowed.
pub async fn run(api: &Api, kind: &'static str, at: Duration, limit: Duration) -> Runaway {
    let sent = Instant::now();
    // Well past the limit, so a runaway that is not stopped shows as such.
    let wait = Some(limit * 4);
    let outcome = match kind {
        "write" => {
            api.post(
                "/v1/execute",
                &json!({"statements": [{"sql": WRITE}]}),
                wait,
            )
            .await
        }
        _ => api.post("/v1/query", &json!({"sql": READ}), wait).await,
    };
    let took = sent.elapsed();
    let ended = match outcome {
        Outcome::Done(_) => "ok".to_string(),
        Outcome::Failed(k) | Outcome::Unknown(k) => k,
    };
    Runaway {
        kind,
        at,
        in_time: judged(kind, &ended, took, limit),
        ended,
        took,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runaway_must_be_stopped_by_a_limit_in_time() {
        let limit = Duration::from_secs(7);
        let s = Duration::from_secs;
        assert!(judged("write", "statement_timeout", s(5), limit));
        assert!(judged("write", "too_large", s(3), limit));
        assert!(!judged("read", "too_large", s(3), limit));
        assert!(!judged("read", "statement_timeout", s(8), limit));
        assert!(!judged("write", "client_timeout", s(28), limit));
        assert!(!judged("read", "ok", s(1), limit));
    }
}
