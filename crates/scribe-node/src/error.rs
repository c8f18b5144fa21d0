//! [`ApiError`]: every error a client can get, with its one mapping to an HTTP status and a
//! stable machine-readable code. The body is always `{"error": {"code": ..., "message": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scribe_core::Position;
use scribe_sqlite::EngineError;

use crate::replication::commit_wait::Durability;

/// An error answered to a client.
#[derive(Debug)]
pub enum ApiError {
    /// The request body is not the JSON the endpoint takes.
    BadJson(String),
    /// The request body is larger than the node accepts.
    TooLarge(usize),
    /// No such route.
    NotFound(String),
    /// The HTTP port has `--max-connections` (this many) connections open already.
    TooManyConnections(usize),
    /// The request body did not arrive within `--http-body-timeout` (this long).
    BodyTimeout(std::time::Duration),
    /// An error of the storage engine.
    Engine(EngineError),
    /// A write reached a replica; it names the primary (name, HTTP URL) when known.
    NotPrimary {
        /// This node's name.
        node: String,
        /// The primary, when known.
        primary: Option<(String, String)>,
    },
    /// A data request (a write, a read, a transaction) reached a witness, which holds no data;
    /// it names the primary (name, and HTTP URL when known) when known. Nothing was done.
    Witness {
        /// This node's name.
        node: String,
        /// The primary's name and HTTP URL, when known.
        primary: Option<(String, Option<String>)>,
    },
    /// A stale read's `max_lag` is exceeded on this replica and forwarding was not allowed.
    Lagging {
        /// This node.
        node: String,
        /// How far behind it may be.
        lag: std::time::Duration,
        /// The bound asked for.
        max_lag: std::time::Duration,
    },
    /// A session read's position was not applied here within its wait, and forwarding was not
    /// allowed (or this is the primary).
    NotCaughtUp {
        /// This node.
        node: String,
        /// The position asked for.
        position: Position,
        /// What this node has applied.
        applied: Position,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A strong read reached a primary whose lease ran out: it may no longer be the primary.
    LeaseLost {
        /// This node.
        node: String,
        /// The term it was primary of.
        term: scribe_core::Term,
    },
    /// A switchover was refused or cancelled; the message says why. Nothing changed (a
    /// cancelled one resumed writes on the old primary).
    Switchover(String),
    /// A forced promotion was refused; the message says why. Nothing changed.
    Promotion(String),
    /// A membership change was refused; the message says why. Nothing changed.
    Membership(String),
    /// A session read's position token names a write that was lost in a failover: this node's
    /// history gives that LSN to another term.
    PositionLost {
        /// This node.
        node: String,
        /// The token.
        position: Position,
        /// The term this node's history has at that LSN.
        ours: scribe_core::Term,
    },
    /// Missing or bad credentials (401), or a role too weak for the request (403).
    Auth(crate::auth::AuthError),
    /// Forwarding to the primary failed before anything was sent.
    Forward(String),
    /// Forwarding to the primary failed after the request may have reached it.
    ForwardUnknown(String),
    /// A semi-sync or sync commit was not confirmed in time (`--on-sync-timeout error`): the
    /// transaction is committed on the primary, not confirmed replicated.
    SyncTimeout {
        /// Its position.
        position: Position,
        /// What it reached.
        durability: Durability,
        /// The sync set it waited for.
        sync_set: String,
    },
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::Engine(e)
    }
}

impl ApiError {
    /// The status code and stable error code of this error: the one place they are decided.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooManyConnections(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections")
            }
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::NotPrimary { .. } => (StatusCode::CONFLICT, "not_primary"),
            ApiError::Witness { .. } => (StatusCode::MISDIRECTED_REQUEST, "witness"),
            ApiError::Lagging { .. } => (StatusCode::SERVICE_UNAVAILABLE, "lagging"),
            ApiError::NotCaughtUp { .. } => (StatusCode::GATEWAY_TIMEOUT, "not_caught_up"),
            ApiError::LeaseLost { .. } => (StatusCode::SERVICE_UNAVAILABLE, "lease_expired"),
            ApiError::Switchover(_) => (StatusCode::CONFLICT, "switchover_refused"),
            ApiError::Promotion(_) => (StatusCode::CONFLICT, "promotion_refused"),
            ApiError::Membership(_) => (StatusCode::CONFLICT, "membership_refused"),
            ApiError::PositionLost { .. } => (StatusCode::GONE, "position_lost"),
            ApiError::Auth(crate::auth::AuthError::Unauthenticated(_)) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::Auth(crate::auth::AuthError::Forbidden { .. }) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            ApiError::Forward(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::ForwardUnknown(_) => (StatusCode::BAD_GATEWAY, "outcome_unknown"),
            ApiError::SyncTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "sync_timeout"),
            ApiError::Engine(e) => engine_status_and_code(e),
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadJson(m) => format!("invalid request body: {m}"),
            ApiError::Auth(e) => e.to_string(),
            ApiError::TooLarge(limit) => {
                format!("request body is larger than the {limit} byte limit (--max-request-bytes)")
            }
            ApiError::NotFound(path) => format!("no such endpoint: {path}"),
            ApiError::TooManyConnections(limit) => format!(
                "this node has {limit} HTTP connections open already (--max-connections); retry later, or reuse connections"
            ),
            ApiError::BodyTimeout(t) => format!(
                "the request body did not arrive within {} ms (--http-body-timeout)",
                t.as_millis()
            ),
            ApiError::Engine(e) => e.to_string(),
            ApiError::NotPrimary { node, primary } => match primary {
                Some((name, url)) => format!(
                    "{node} is a read-only replica; send writes to the primary {name} at {url}"
                ),
                None => format!(
                    "{node} is a read-only replica and has not reached its primary yet; send writes to the primary"
                ),
            },
            ApiError::Witness { node, primary } => {
                let to = match primary {
                    Some((name, Some(url))) => format!("send this to the primary {name} at {url}"),
                    Some((name, None)) => format!("send this to the primary {name}"),
                    None => "send this to the primary (not known here yet)".to_string(),
                };
                format!(
                    "{node} is a witness: it votes in the control plane but holds no data; {to}"
                )
            }
            ApiError::Lagging { node, lag, max_lag } => {
                let lag = if *lag == std::time::Duration::MAX {
                    "an unknown time".to_string()
                } else {
                    format!("{} ms", lag.as_millis())
                };
                format!(
                    "{node} may be {lag} behind its primary, more than the max_lag of {} ms asked for; allow forwarding to read from the primary",
                    max_lag.as_millis()
                )
            }
            ApiError::NotCaughtUp {
                node,
                position,
                applied,
                waited,
            } => format!(
                "{node} had not applied position {position} after waiting {} ms (it has applied {applied}); allow forwarding to read from the primary",
                waited.as_millis()
            ),
            ApiError::LeaseLost { node, term } => format!(
                "{node} was the primary of term {term} but could not renew its lease: another node may be primary now, so it serves no strong read and takes no write; retry on the current primary"
            ),
            ApiError::Switchover(why) => format!("switchover refused: {why}"),
            ApiError::Promotion(why) => format!("promotion refused: {why}"),
            ApiError::Membership(why) => format!("membership change refused: {why}"),
            ApiError::PositionLost { node, position, ours } => format!(
                "the write of position token {position} was lost in a failover: {node}'s history has lsn {} in term {ours}, not term {}; \
                 the data it wrote is not in the cluster (in async mode, see the old primary's rollback file); read without that token",
                position.lsn, position.term
            ),
            ApiError::Forward(why) => {
                format!("could not forward to the primary: {why}; nothing was sent")
            }
            ApiError::ForwardUnknown(why) => format!(
                "forwarded to the primary but got no answer ({why}): a write may or may not have been committed; read before retrying"
            ),
            ApiError::SyncTimeout {
                position,
                durability,
                sync_set,
            } => {
                let requested = durability.requested.unwrap_or(durability.mode);
                format!(
                    "the transaction is committed on the primary at {position} but was not confirmed {requested} by the sync set {sync_set} in time; \
                     it reached {} (acknowledged by {}); it will replicate when replicas catch up, but it is not known to be replicated — do not retry it blindly",
                    durability.mode,
                    if durability.acked_by.is_empty() { "no replica".to_string() } else { durability.acked_by.join(", ") }
                )
            }
        }
    }

    /// Extra fields of the error object.
    fn details(&self) -> Option<serde_json::Value> {
        match self {
            ApiError::NotPrimary {
                primary: Some((name, url)),
                ..
            } => Some(serde_json::json!({ "primary": { "name": name, "url": url } })),
            ApiError::Witness {
                primary: Some((name, url)),
                ..
            } => Some(serde_json::json!({ "primary": { "name": name, "url": url } })),
            ApiError::SyncTimeout {
                position,
                durability,
                ..
            } => Some(serde_json::json!({ "position": position, "durability": durability })),
            _ => None,
        }
    }
}

/// The status code and stable error code of an engine error (part of
/// [`ApiError::status_and_code`]; the PostgreSQL front end maps SQLSTATEs from the same codes).
pub fn engine_status_and_code(e: &EngineError) -> (StatusCode, &'static str) {
    match e {
        EngineError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        EngineError::Sql(_) => (StatusCode::BAD_REQUEST, "sql_error"),
        EngineError::NotReadOnly(_) => (StatusCode::BAD_REQUEST, "not_read_only"),
        EngineError::TxnEnded(_) => (StatusCode::CONFLICT, "transaction_ended"),
        EngineError::SerializationFailure(_) => (StatusCode::CONFLICT, "serialization_failure"),
        EngineError::Deadlock(_) => (StatusCode::CONFLICT, "deadlock"),
        EngineError::LockTimeout(_) => (StatusCode::CONFLICT, "lock_timeout"),
        EngineError::Constraint(_) => (StatusCode::CONFLICT, "constraint_violation"),
        EngineError::DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
        EngineError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "statement_timeout"),
        EngineError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        // Nobody reads it: the client has gone.
        EngineError::Abandoned(_) => (StatusCode::REQUEST_TIMEOUT, "abandoned"),
        EngineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        EngineError::NotPrimary(_) => (StatusCode::CONFLICT, "not_primary"),
        EngineError::NeedSnapshot(_) => (StatusCode::CONFLICT, "need_snapshot"),
        EngineError::OutcomeUnknown(_) => (StatusCode::INTERNAL_SERVER_ERROR, "outcome_unknown"),
        EngineError::Corrupt(_)
        | EngineError::Diverged(_)
        | EngineError::Internal(_)
        | EngineError::Log(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self.message(), "request failed");
        }
        let mut error = serde_json::json!({ "code": code, "message": self.message() });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details(), error.as_object_mut())
        {
            obj.extend(extra);
        }
        let body = serde_json::json!({ "error": error });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"scribe\", Bearer"),
            );
        }
        resp
    }
}
