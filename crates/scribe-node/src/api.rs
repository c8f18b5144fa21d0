//! The HTTP JSON API: `POST /v1/execute`, `POST /v1/query`, `GET /v1/status`, `GET /metrics`.
//! Request bodies are parsed strictly (unknown fields are errors) and limited in size; every
//! error answers with [`ApiError`]'s JSON body.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
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
    /// HTTP client for forwarding to the primary.
    pub http: reqwest::Client,
    /// Interactive transactions held for HTTP clients.
    pub txns: crate::txns::TxnTable,
}

/// The longest a session read may wait for its position.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

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

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Whatever this node has applied (optionally within `max_lag`).
    #[default]
    Stale,
    /// At least the given position: read-your-writes.
    Session,
    /// Served by the primary.
    Strong,
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
pub fn router(state: Arc<AppState>) -> Router {
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

/// Sends the request, as it came, to the primary and answers with the primary's answer, adding
/// `forwarded_to` to a successful one.
pub(crate) async fn forward(
    state: &AppState,
    follower: &crate::replication::follower::Follower,
    path: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some((primary, url)) = follower.primary() else {
        return Err(ApiError::Forward(format!(
            "{} has not reached its primary yet",
            state.identity.name
        )));
    };
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
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: ExecuteRequest = parse_bytes(&body)?;
    let registry = match &state.role {
        Role::Primary(r) => r,
        Role::Replica(f) => {
            if may_forward(&headers, req.forward) {
                return forward(&state, f, "/v1/execute", body).await;
            }
            return Err(ApiError::NotPrimary {
                node: state.identity.name.clone(),
                primary: f.primary(),
            });
        }
    };
    let mode = req.commit.unwrap_or(state.config.commit);
    let committed = state.engine.execute(req.statements).await?;
    let durability = wait_durability(&state, registry, mode, &committed).await?;
    Ok(Json(ExecuteResponse {
        results: committed.results,
        position: committed.position,
        durability,
    })
    .into_response())
}

/// Waits until the commit mode `mode` holds for a committed transaction (semi-sync, sync: its
/// sync replicas confirmed it, bounded by `--sync-timeout`), and answers the durability reached;
/// on timeout, by `--on-sync-timeout`: an error saying it is committed but not confirmed, or the
/// durability reached, marked degraded.
pub async fn wait_durability(
    state: &AppState,
    registry: &crate::replication::registry::Registry,
    mode: CommitMode,
    committed: &scribe_sqlite::Committed,
) -> Result<Durability, ApiError> {
    if !committed.logged || mode == CommitMode::Async {
        // Nothing written means nothing to replicate: the mode holds trivially.
        return Ok(Durability::local(mode));
    }
    match commit_wait::wait(
        registry,
        mode,
        committed.position.lsn,
        state.config.sync_timeout,
    )
    .await
    {
        Ok(d) => Ok(d),
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
                OnSyncTimeout::Degrade => Ok(timed_out.reached),
                OnSyncTimeout::Error => Err(ApiError::SyncTimeout {
                    position: committed.position,
                    durability: timed_out.reached,
                    sync_set: registry.sync_set().to_string(),
                }),
            }
        }
    }
}

/// Waits until this node has applied `position`, at most `wait`; answers what it has applied.
pub async fn wait_applied(
    engine: &scribe_sqlite::Engine,
    position: Position,
    wait: Duration,
) -> Result<(), Position> {
    let mut rx = engine.watch_progress();
    // The term too: a node holding a higher LSN of an older term does not hold this position.
    let reached = tokio::time::timeout(
        wait,
        rx.wait_for(|p| p.applied.lsn >= position.lsn && p.applied.term >= position.term),
    )
    .await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(engine.progress().applied),
    }
}

async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: QueryRequest = parse_bytes(&body)?;
    let max_lag = duration("max_lag", &req.max_lag)?;
    let wait = duration("wait", &req.wait)?
        .unwrap_or(Duration::from_secs(1))
        .min(MAX_WAIT);
    let forward_ok = may_forward(&headers, req.forward);
    let node = state.identity.name.clone();
    match (&state.role, req.consistency) {
        (Role::Primary(_), Consistency::Stale | Consistency::Strong) => {}
        (Role::Replica(f), Consistency::Strong) => {
            if forward_ok {
                return forward(&state, f, "/v1/query", body).await;
            }
            return Err(ApiError::NotPrimary {
                node,
                primary: f.primary(),
            });
        }
        (Role::Replica(f), Consistency::Stale) => {
            if let Some(max_lag) = max_lag {
                let lag = f.lag().unwrap_or(Duration::MAX);
                if lag > max_lag {
                    if forward_ok {
                        return forward(&state, f, "/v1/query", body).await;
                    }
                    return Err(ApiError::Lagging { node, lag, max_lag });
                }
            }
        }
        (role, Consistency::Session) => {
            let position = req.position.ok_or_else(|| {
                ApiError::BadJson(
                    "a session read needs the \"position\" token of the session's last write"
                        .into(),
                )
            })?;
            if let Err(applied) = wait_applied(&state.engine, position, wait).await {
                if let (Role::Replica(f), true) = (role, forward_ok) {
                    return forward(&state, f, "/v1/query", body).await;
                }
                return Err(ApiError::NotCaughtUp {
                    node,
                    position,
                    applied,
                    waited: wait,
                });
            }
        }
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
        served_by: node,
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
