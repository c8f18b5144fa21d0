//! The HTTP JSON API: `POST /v1/execute`, `POST /v1/query`, `GET /v1/status`, `GET /metrics`.
//! Request bodies are parsed strictly (unknown fields are errors) and limited in size; every
//! error answers with [`ApiError`]'s JSON body.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use scribe_core::{CommitMode, OnSyncTimeout, Position};
use scribe_sqlite::{Engine, Params, Statement, StatementResult, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::replication::commit_wait::{self, Durability};
use crate::replication::follower::FollowView;
use crate::replication::registry::ReplicaView;
use crate::replication::Role;
use crate::{metrics, ApiError, NodeConfig};

/// What the handlers share.
pub struct AppState {
    /// The storage engine.
    pub engine: Engine,
    /// Who this node is.
    pub identity: Identity,
    /// How it was configured.
    pub config: NodeConfig,
    /// When it started.
    pub started: Instant,
    /// Requests answered, by route and status code.
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Primary (with its replicas) or replica (with its follower).
    pub role: Role,
    /// Where the peer protocol listens, if it does.
    pub peer_addr: Option<std::net::SocketAddr>,
}

/// `POST /v1/execute`: statements run as one transaction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The statements, in order.
    pub statements: Vec<Statement>,
    /// Commit mode for this transaction; the node's `--commit` when absent.
    #[serde(default)]
    pub commit: Option<CommitMode>,
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
}

/// The routes, with the body limit and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_request_bytes;
    Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/query", post(query))
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
async fn count_and_limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
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

fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadJson(r.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadJson(e.to_string()))
}

async fn execute(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let req: ExecuteRequest = parse(body, state.config.max_request_bytes)?;
    let registry = match &state.role {
        Role::Primary(r) => r,
        Role::Replica(f) => {
            return Err(ApiError::NotPrimary {
                node: state.identity.name.clone(),
                primary: f.primary(),
            })
        }
    };
    let mode = req.commit.unwrap_or(state.config.commit);
    let committed = state.engine.execute(req.statements).await?;
    let durability = if !committed.logged || mode == CommitMode::Async {
        // Nothing written means nothing to replicate: the mode holds trivially.
        Durability::local(mode)
    } else {
        match commit_wait::wait(
            registry,
            mode,
            committed.position.lsn,
            state.config.sync_timeout,
        )
        .await
        {
            Ok(d) => d,
            Err(timed_out) => {
                tracing::warn!(
                    position = %committed.position,
                    requested = %mode,
                    reached = %timed_out.reached.mode,
                    waited = ?timed_out.waited,
                    policy = %state.config.on_sync_timeout,
                    "a commit was not confirmed by the sync set in time"
                );
                match state.config.on_sync_timeout {
                    OnSyncTimeout::Degrade => timed_out.reached,
                    OnSyncTimeout::Error => {
                        return Err(ApiError::SyncTimeout {
                            position: committed.position,
                            durability: timed_out.reached,
                            sync_set: registry.sync_set().to_string(),
                        })
                    }
                }
            }
        }
    };
    Ok(Json(ExecuteResponse {
        results: committed.results,
        position: committed.position,
        durability,
    }))
}

async fn query(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<QueryResponse>, ApiError> {
    let req: QueryRequest = parse(body, state.config.max_request_bytes)?;
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
    }))
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

async fn status(State(state): State<Arc<AppState>>) -> Json<Status> {
    let p = state.engine.progress();
    let failure = state.engine.write_failure();
    Json(Status {
        node: state.identity.name.clone(),
        cluster_id: match &state.role {
            Role::Replica(f) => f.cluster_id(),
            Role::Primary(_) => state.identity.cluster_id.clone(),
        },
        role: state.role.name(),
        term: p.last.term.0,
        position: p.flushed,
        last_lsn: p.last.lsn.0,
        flushed_lsn: p.flushed.lsn.0,
        applied_lsn: p.applied.lsn.0,
        accepting_writes: failure.is_none() && matches!(state.role, Role::Primary(_)),
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
        commit: match &state.role {
            Role::Primary(_) => Some(CommitSettings {
                mode: state.config.commit,
                sync_replicas: state.config.sync_replicas.to_string(),
                sync_timeout_ms: state.config.sync_timeout.as_millis() as u64,
                on_sync_timeout: state.config.on_sync_timeout.to_string(),
            }),
            Role::Replica(_) => None,
        },
        replication: match &state.role {
            Role::Replica(f) => Some(f.view()),
            Role::Primary(_) => None,
        },
        replicas: match &state.role {
            Role::Primary(r) => r.views(p.flushed.lsn).into_iter().map(|m| m.view).collect(),
            Role::Replica(_) => Vec::new(),
        },
    })
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let text = metrics::render(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
