//! The HTTP JSON API: `POST /v1/execute`, `POST /v1/query`, the cluster operations
//! (`/v1/switchover`, `/v1/promote`, `/v1/members`), `GET /v1/status` (in [`crate::status`]),
//! `GET /metrics`.
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
use axum::{Extension, Json, Router};
use scribe_core::{CommitMode, Position};
use scribe_sqlite::{Params, Statement, StatementResult, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::replication::commit_wait::Durability;
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
    /// How long the transaction may run (for example `"30s"`; `"0s"`: the longest the node
    /// allows); the node's `--statement-timeout` when absent.
    #[serde(default)]
    pub statement_timeout: Option<String>,
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
    /// How long the query may run, its wait for a read connection included (for example
    /// `"30s"`; `"0s"`: the longest the node allows); the node's `--statement-timeout` when absent.
    #[serde(default)]
    pub statement_timeout: Option<String>,
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
        .route("/v1/status", get(crate::status::status))
        .route("/v1/conflicts", get(crate::conflicts::list))
        .route(
            "/v1/conflicts/{id}/resolve",
            post(crate::conflicts::resolve),
        )
        .route("/v1/switchover", post(switchover))
        .route("/v1/promote", post(promote))
        .route("/v1/members", post(members))
        .route("/metrics", get(metrics_page))
        .fallback(|req: Request| async move { ApiError::NotFound(req.uri().path().to_string()) })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http_server::read_body,
        ))
        // Outside the body reader: a request without the credentials its route needs is
        // refused before its body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credentials,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_and_limit,
        ))
        .with_state(state)
}

/// Password derivations (PBKDF2) running at once for HTTP Basic logins not remembered yet.
static DERIVATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// With `--users`: checks the request's credentials and the role its route needs
/// ([`crate::auth::required_role`]); 401 or 403 otherwise.
async fn require_credentials(
    State(state): State<Arc<NodeState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(store) = &state.config.users else {
        return next.run(req).await;
    };
    let Some(needed) = crate::auth::required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let result = {
        let headers = req.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (authorization, assertion) = (
            header("authorization"),
            header(crate::auth::ASSERTION_HEADER),
        );
        let asked = crate::auth::Asked {
            method: req.method().as_str(),
            path: req.uri().path(),
        };
        // With an assertion no password is checked.
        let remembered = assertion
            .is_none()
            .then(|| crate::auth::remembered_basic(store, authorization))
            .flatten();
        let checked = match remembered {
            Some(p) => Ok(p),
            None if assertion.is_none() && crate::auth::is_basic(authorization) => {
                // A password derivation (a first login, or a wrong password): off the async
                // threads, two at a time. The permit goes with the derivation, not with this
                // request: a client that hangs up does not free it while the derivation runs.
                let (store, authorization) = (store.clone(), authorization.map(str::to_string));
                let (method, path) = (asked.method.to_string(), asked.path.to_string());
                let permit = DERIVATIONS
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let asked = crate::auth::Asked {
                        method: &method,
                        path: &path,
                    };
                    let now = crate::auth::now_unix();
                    crate::auth::authenticate(&store, authorization.as_deref(), None, asked, now)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(crate::auth::AuthError::Unauthenticated(
                        "the credentials check failed".into(),
                    ))
                })
            }
            None => crate::auth::authenticate(
                store,
                authorization,
                assertion,
                asked,
                crate::auth::now_unix(),
            ),
        };
        checked.and_then(|p| crate::auth::authorize(&p, needed).map(|()| p))
    };
    match result {
        Ok(p) => {
            let mut req = req;
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            if let crate::auth::AuthError::Unauthenticated(why) = &e {
                let peer = req
                    .extensions()
                    .get::<crate::http_server::ClientAddr>()
                    .map(|a| a.0.to_string())
                    .unwrap_or_default();
                let user = crate::auth::basic_user(
                    req.headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok()),
                );
                // `?user`: quoted and escaped, so a name cannot forge a log line.
                tracing::warn!(%peer, user = ?user, reason = %why, path = %req.uri().path(), "HTTP authentication failed");
            }
            ApiError::Auth(e).into_response()
        }
    }
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

/// A request's limits: the node's, with the request's own `statement_timeout` if it gives one.
pub(crate) fn limits(
    state: &NodeState,
    statement_timeout: &Option<String>,
) -> Result<scribe_sqlite::Limits, ApiError> {
    let asked = duration("statement_timeout", statement_timeout)?;
    state.config.limits(asked).map_err(ApiError::BadJson)
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
/// primary's answer, adding `forwarded_to` to a successful one. With `--users` the request
/// carries `who`'s signed assertion: the primary applies the client's role.
pub(crate) async fn forward(
    state: &NodeState,
    (primary, url): (String, String),
    path: &str,
    who: Option<&Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = state
        .http
        .request_for(reqwest::Method::POST, &format!("{url}{path}"), who)
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

/// The principal a request was authenticated as, if the node checks credentials.
fn who(p: &Option<Extension<Principal>>) -> Option<&Principal> {
    p.as_ref().map(|Extension(p)| p)
}

fn may_forward(headers: &HeaderMap, asked: Option<bool>) -> bool {
    asked.unwrap_or(true) && !headers.contains_key(FORWARDED_BY)
}

async fn execute(
    State(state): State<Arc<NodeState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: ExecuteRequest = parse_bytes(&body)?;
    match service::route_write(&state, may_forward(&headers, req.forward))? {
        WriteRoute::Forward { primary, url } => {
            forward(&state, (primary, url), "/v1/execute", who(&principal), body).await
        }
        WriteRoute::Local => {
            let limits = limits(&state, &req.statement_timeout)?;
            let written = service::execute(&state, req.statements, req.commit, limits).await?;
            Ok(Json(ExecuteResponse {
                results: written.results,
                position: written.position,
                durability: written.durability?,
            })
            .into_response())
        }
    }
}

/// `POST /v1/switchover`: run on the primary (a replica forwards it there).
async fn switchover(
    State(state): State<Arc<NodeState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: crate::switchover::SwitchoverRequest = parse_bytes(&body)?;
    if state.control.is_some() && !state.leadership.is_primary() {
        if let WriteRoute::Forward { primary, url } =
            service::route_to_primary(&state, may_forward(&headers, None))?
        {
            return forward(
                &state,
                (primary, url),
                "/v1/switchover",
                who(&principal),
                body,
            )
            .await;
        }
    }
    let done = crate::switchover::run(&state, &req.to).await?;
    Ok(Json(done).into_response())
}

/// `POST /v1/members`: run on the control plane's leader (another member forwards it there).
async fn members(
    State(state): State<Arc<NodeState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: crate::members::MembersRequest = parse_bytes(&body)?;
    match crate::members::route(&state)? {
        crate::members::Route::Leader(name, url) if may_forward(&headers, None) => {
            forward(&state, (name, url), "/v1/members", who(&principal), body).await
        }
        crate::members::Route::Leader(name, _) => Err(ApiError::Forward(format!(
            "this node is not the control plane's leader ({name} is) and the request was forwarded already"
        ))),
        crate::members::Route::Here => {
            let done = crate::members::run(&state, &req).await?;
            Ok(Json(done).into_response())
        }
    }
}

/// `POST /v1/promote`: a forced promotion, run on whichever node is asked.
async fn promote(
    State(state): State<Arc<NodeState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: crate::promote::PromoteRequest = parse_bytes(&body)?;
    let done = crate::promote::run(&state, &req).await?;
    Ok(Json(done).into_response())
}

async fn query(
    State(state): State<Arc<NodeState>>,
    principal: Option<Extension<Principal>>,
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
        return forward(&state, (primary, url), "/v1/query", who(&principal), body).await;
    }
    let limits = limits(&state, &req.statement_timeout)?;
    let r = state
        .engine
        .query_with(
            Statement {
                sql: req.sql,
                params: req.params,
            },
            limits,
        )
        .await?;
    Ok(Json(QueryResponse {
        columns: r.rows.columns,
        rows: r.rows.rows,
        position: r.position,
        served_by: state.identity.name.clone(),
    })
    .into_response())
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
