//! The HTTP JSON API: `POST /v1/execute`, `POST /v1/query`, `GET /v1/status`, `GET /metrics`.
//! Request bodies are parsed strictly (unknown fields are errors) and limited in size; every
//! error answers with [`ApiError`]'s JSON body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use scribe_core::{CommitMode, Position};
use scribe_sqlite::{Params, Statement, StatementResult, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::leadership::NodeRole;
use crate::replication::commit_wait::Durability;
use crate::replication::follower::FollowView;
use crate::replication::registry::ReplicaView;
use crate::service::{self, Consistency, ReadAsk, ReadRoute, WriteRoute};
use crate::state::NodeState;
use crate::{metrics, ApiError};

/// Header marking a request forwarded by a replica: it is never forwarded again.
pub const FORWARDED_BY: &str = "x-scribe-forwarded-by";

/// `POST /v1/execute`: statements run as one transaction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The statements, in order.
    pub statements: Vec<Statement>,
    /// Commit mode for this transaction; the node's `--commit` when absent.
    #[serde(default)]
    pub commit: Option<CommitMode>,
    /// On a replica: forward to the primary (default) or answer `not_primary`.
    #[serde(default)]
    pub forward: Option<bool>,
}

/// The answer to `/v1/execute`.
#[derive(Debug, Serialize)]
pub struct ExecuteResponse {
    /// One result per statement.
    pub results: Vec<StatementResult>,
    /// Position token of the transaction's record.
    pub position: Position,
    /// The durability it reached.
    pub durability: Durability,
}

/// `POST /v1/query`: one read-only statement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Params,
    /// How fresh the answer must be.
    #[serde(default)]
    pub consistency: Consistency,
    /// `stale`: the most this node may be behind its primary (for example `"500ms"`).
    #[serde(default)]
    pub max_lag: Option<String>,
    /// `session`: the position token the read must see.
    #[serde(default)]
    pub position: Option<Position>,
    /// `session`: how long this node may wait to apply the position (default 1s).
    #[serde(default)]
    pub wait: Option<String>,
    /// Forward to the primary when this node cannot answer as asked (default true).
    #[serde(default)]
    pub forward: Option<bool>,
}

/// The answer to `/v1/query`.
#[derive(Debug, Serialize)]
pub struct QueryResponse {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<Value>>,
    /// The applied position the read saw.
    pub position: Position,
    /// The node that served it.
    pub served_by: String,
}

/// The routes, with the body limit and request counting.
pub fn router(state: Arc<NodeState>) -> Router {
    let limit = state.config.max_request_bytes;
    Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/query", post(query))
        .route("/v1/tx", post(crate::tx_api::begin))
        .route("/v1/tx/{id}/execute", post(crate::tx_api::execute))
        .route("/v1/tx/{id}/commit", post(crate::tx_api::commit))
        .route("/v1/tx/{id}/rollback", post(crate::tx_api::rollback))
        .route("/v1/tx/{id}/savepoint", post(crate::tx_api::savepoint))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_page))
        .fallback(|req: Request| async move { ApiError::NotFound(req.uri().path().to_string()) })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_and_limit,
        ))
        .with_state(state)
}

/// Refuses a body announced larger than the limit before reading it, and counts every answer.
async fn count_and_limit(
    State(state): State<Arc<NodeState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = match announced {
        Some(n) if n > state.config.max_request_bytes as u64 => {
            ApiError::TooLarge(state.config.max_request_bytes).into_response()
        }
        _ => next.run(req).await,
    };
    let code = response.status().as_u16();
    *state
        .requests
        .lock()
        .expect("request counts")
        .entry((route, code))
        .or_default() += 1;
    response
}

pub(crate) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadJson(r.body_text())
        }
    })
}

pub(crate) fn parse_bytes<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn duration(field: &str, v: &Option<String>) -> Result<Option<Duration>, ApiError> {
    v.as_deref()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| ApiError::BadJson(format!("{field} {s:?}: {e}")))
        })
        .transpose()
}

/// Sends the request, as it came, to the primary `primary` at `url` and answers with the
/// primary's answer, adding `forwarded_to` to a successful one.
pub(crate) async fn forward(
    state: &NodeState,
    (primary, url): (String, String),
    path: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = state
        .http
        .post(format!("{url}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(FORWARDED_BY, state.identity.name.as_str())
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                ApiError::Forward(format!("{primary} at {url}: {e}"))
            } else {
                ApiError::ForwardUnknown(format!("{primary} at {url}: {e}"))
            }
        })?;
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer: serde_json::Value = r
        .json()
        .await
        .map_err(|e| ApiError::ForwardUnknown(format!("{primary} at {url} answered: {e}")))?;
    if status.is_success() {
        if let Some(obj) = answer.as_object_mut() {
            obj.insert("forwarded_to".into(), serde_json::Value::String(primary));
        }
    }
    Ok((status, Json(answer)).into_response())
}

fn may_forward(headers: &HeaderMap, asked: Option<bool>) -> bool {
    asked.unwrap_or(true) && !headers.contains_key(FORWARDED_BY)
}

async fn execute(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: ExecuteRequest = parse_bytes(&body)?;
    match service::route_write(&state, may_forward(&headers, req.forward))? {
        WriteRoute::Forward { primary, url } => {
            forward(&state, (primary, url), "/v1/execute", body).await
        }
        WriteRoute::Local => {
            let written = service::execute(&state, req.statements, req.commit).await?;
            Ok(Json(ExecuteResponse {
                results: written.results,
                position: written.position,
                durability: written.durability?,
            })
            .into_response())
        }
    }
}

async fn query(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: QueryRequest = parse_bytes(&body)?;
    let ask = ReadAsk {
        consistency: req.consistency,
        max_lag: duration("max_lag", &req.max_lag)?,
        position: req.position,
        wait: duration("wait", &req.wait)?.unwrap_or(service::DEFAULT_SESSION_WAIT),
        may_forward: may_forward(&headers, req.forward),
    };
    if let ReadRoute::Forward { primary, url } = service::plan_read(&state, ask).await? {
        return forward(&state, (primary, url), "/v1/query", body).await;
    }
    let r = state
        .engine
        .query(Statement {
            sql: req.sql,
            params: req.params,
        })
        .await?;
    Ok(Json(QueryResponse {
        columns: r.rows.columns,
        rows: r.rows.rows,
        position: r.position,
        served_by: state.identity.name.clone(),
    })
    .into_response())
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Cluster id.
    pub cluster_id: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Position token of the last durable record.
    pub position: Position,
    /// Last record appended to the log.
    pub last_lsn: u64,
    /// Last record fsynced in the log.
    pub flushed_lsn: u64,
    /// Last record applied to SQLite.
    pub applied_lsn: u64,
    /// Whether the node takes writes.
    pub accepting_writes: bool,
    /// Why it does not, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_failure: Option<String>,
    /// Bytes of change log on disk.
    pub log_bytes: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Scribe's version.
    pub version: &'static str,
    /// Oldest record still held in the change log.
    pub log_first_lsn: u64,
    /// Where the peer protocol listens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Commit settings (on a primary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSettings>,
    /// The replication of this replica (on a replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<FollowView>,
    /// Replicas following this node (on a primary).
    pub replicas: Vec<ReplicaView>,
}

/// The commit settings a primary runs with.
#[derive(Debug, Serialize)]
pub struct CommitSettings {
    /// Default mode.
    pub mode: CommitMode,
    /// Sync set.
    pub sync_replicas: String,
    /// Wait bound, milliseconds.
    pub sync_timeout_ms: u64,
    /// `error` or `degrade`.
    pub on_sync_timeout: String,
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Status> {
    let p = state.engine.progress();
    let failure = state.engine.write_failure();
    let view = state.leadership.view();
    let primary = view.role == NodeRole::Primary;
    Json(Status {
        node: state.identity.name.clone(),
        cluster_id: state.cluster_id(),
        role: view.role.name(),
        term: view.term.max(p.last.term).0,
        position: p.flushed,
        last_lsn: p.last.lsn.0,
        flushed_lsn: p.flushed.lsn.0,
        applied_lsn: p.applied.lsn.0,
        accepting_writes: failure.is_none() && view.is_serving_primary(std::time::Instant::now()),
        write_failure: failure,
        log_bytes: state
            .engine
            .metrics()
            .log_size_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        log_first_lsn: state.engine.log_first_lsn().0,
        peer_addr: state.peer_addr.map(|a| a.to_string()),
        commit: primary.then(|| CommitSettings {
            mode: state.config.commit,
            sync_replicas: state.config.sync_replicas.to_string(),
            sync_timeout_ms: state.config.sync_timeout.as_millis() as u64,
            on_sync_timeout: state.config.on_sync_timeout.to_string(),
        }),
        replication: (!primary).then(|| state.follower.view()),
        replicas: if primary {
            state
                .registry
                .views(p.flushed.lsn)
                .into_iter()
                .map(|m| m.view)
                .collect()
        } else {
            Vec::new()
        },
    })
}

async fn metrics_page(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let text = metrics::render(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
