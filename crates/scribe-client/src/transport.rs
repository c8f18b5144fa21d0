//! The HTTP round trip: one request to one node, and what became of it ([`Delivery`]) — an answer,
//! a request that never left, or one whose answer was lost.

use std::error::Error as _;
use std::time::Duration;

use crate::answer::{self, ErrorObject};
use crate::retry::Attempt;
use crate::topology::StatusView;

/// What became of one request.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The node answered.
    Answer {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Vec<u8>,
        /// The error body, when the status is not a success and the body is the API's error.
        error: Option<ErrorObject>,
    },
    /// The connection could not be made; the request never left.
    NotSent(String),
    /// Sent (or maybe sent) and no complete answer came back.
    Lost(String),
}

impl Delivery {
    /// The attempt as the retry rules see it.
    pub(crate) fn attempt(&self) -> Attempt<'_> {
        match self {
            Delivery::NotSent(_) => Attempt::NotSent,
            Delivery::Lost(_) => Attempt::Lost,
            Delivery::Answer { status, error, .. } => Attempt::Answered {
                status: *status,
                code: error.as_ref().map(|e| e.code.as_str()),
            },
        }
    }
}

/// Everything a reqwest error says, its causes included.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Sorts a failed send into "never left" and "lost".
fn failed(e: &reqwest::Error) -> Delivery {
    if e.is_connect() {
        Delivery::NotSent(describe(e))
    } else {
        Delivery::Lost(describe(e))
    }
}

/// POSTs `body` as JSON to `url` + `path`.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> Delivery {
    let response = match http.post(format!("{url}{path}")).json(body).send().await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(b) => Delivery::Answer {
            status,
            error: if (200..300).contains(&status) {
                None
            } else {
                answer::error_body(&b)
            },
            body: b.to_vec(),
        },
        Err(e) => Delivery::Lost(describe(&e)),
    }
}

/// Why a node gave no status: its HTTP status when it answered one.
#[derive(Debug)]
pub(crate) struct StatusFailure {
    pub status: Option<u16>,
    pub reason: String,
}

/// GETs a node's `/v1/status` within `timeout`; an error says why there is none.
pub(crate) async fn status(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<StatusView, StatusFailure> {
    let failure = |status: Option<u16>, reason: String| StatusFailure { status, reason };
    let response = http
        .get(format!("{url}/v1/status"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failure(None, describe(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| failure(None, describe(&e)))?;
    if !status.is_success() {
        let said = match answer::error_body(&body) {
            Some(e) => e.message,
            None => String::from_utf8_lossy(&body).chars().take(500).collect(),
        };
        return Err(failure(
            Some(status.as_u16()),
            format!("status answered HTTP {}: {said}", status.as_u16()),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| failure(None, format!("status is not a node's status: {e}")))
}
