//! The HTTP routes of interactive transactions (see [`crate::txns`]): served by the primary only;
//! a replica answers `not_primary` naming it (clients, and replicas' PostgreSQL sessions, then go
//! to the primary directly, since a transaction's requests must all reach the node holding it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use scribe_core::CommitMode;
use scribe_sqlite::{Params, Statement, StatementResult};
use serde::{Deserialize, Serialize};

use crate::api::{body_bytes, parse_bytes, ExecuteResponse};
use crate::service;
use crate::state::NodeState;
use crate::ApiError;

/// `POST /v1/tx`: opens a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginRequest {
    /// How long each statement of the transaction may run (for example `"30s"`; `"0s"`: the
    /// longest the node allows); the node's `--statement-timeout` when absent. A statement past
    /// it rolls the whole transaction back.
    #[serde(default)]
    pub statement_timeout: Option<String>,
}

/// The answer to `POST /v1/tx`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BeginResponse {
    /// The transaction's id, for the requests that follow.
    pub tx: String,
    /// How long it may stay idle between requests before it is rolled back, in milliseconds.
    pub idle_timeout_ms: u64,
}

/// `POST /v1/tx/{id}/execute`: one statement.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxStatement {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Params,
}

/// `POST /v1/tx/{id}/commit`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Commit mode for this transaction; the node's `--commit` when absent.
    #[serde(default)]
    pub commit: Option<CommitMode>,
}

/// Transactions are held by the primary only: a replica answers `not_primary`, naming it.
fn primary(state: &NodeState) -> Result<(), ApiError> {
    service::route_write(state, false).map(|_| ())
}

/// The transaction `id` held on this primary, marked used now.
fn held(state: &NodeState, id: &str) -> Result<Arc<crate::txns::Held>, ApiError> {
    primary(state)?;
    let held = state.txns.get(id)?;
    held.touch();
    Ok(held)
}

/// `POST /v1/tx`.
pub async fn begin(
    State(state): State<Arc<NodeState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BeginResponse>, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: BeginRequest = if body.is_empty() {
        BeginRequest::default()
    } else {
        parse_bytes(&body)?
    };
    let limits = crate::api::limits(&state, &req.statement_timeout)?;
    primary(&state)?;
    let idle = state.config.txn_idle_timeout;
    let mut txn = state.engine.begin(idle).await?;
    txn.set_limits(limits);
    let tx = state.txns.insert(txn, idle);
    Ok(Json(BeginResponse {
        tx,
        idle_timeout_ms: idle.as_millis() as u64,
    }))
}

/// `POST /v1/tx/{id}/execute`.
pub async fn execute(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatementResult>, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: TxStatement = parse_bytes(&body)?;
    let held = held(&state, &id)?;
    let mut guard = held.txn.lock().await;
    let txn = guard
        .as_mut()
        .ok_or_else(|| ApiError::from(crate::txns::ended(&id)))?;
    let result = txn
        .execute(Statement {
            sql: req.sql,
            params: req.params,
        })
        .await;
    // A failed statement leaves the transaction open (as in PostgreSQL, the client rolls back).
    held.touch();
    Ok(Json(result?))
}

/// `POST /v1/tx/{id}/commit`.
pub async fn commit(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: CommitRequest = if body.is_empty() {
        CommitRequest::default()
    } else {
        parse_bytes(&body)?
    };
    primary(&state)?;
    let held = state.txns.get(&id)?;
    let txn = held.txn.lock().await.take();
    state.txns.remove(&id);
    let Some(txn) = txn else {
        return Err(crate::txns::ended(&id).into());
    };
    let written = service::confirm(&state, txn.commit().await?, req.commit).await;
    Ok(Json(ExecuteResponse {
        results: written.results,
        position: written.position,
        durability: written.durability?,
    }))
}

/// `POST /v1/tx/{id}/rollback`: always succeeds (rolling back what is gone is a no-op).
pub async fn rollback(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    primary(&state)?;
    if let Ok(held) = state.txns.get(&id) {
        let txn = held.txn.lock().await.take();
        state.txns.remove(&id);
        if let Some(txn) = txn {
            txn.rollback().await;
        }
    }
    Ok(Json(serde_json::json!({ "rolled_back": true })))
}

/// `POST /v1/tx/{id}/savepoint`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// `create`, `release` or `rollback_to`.
    pub op: String,
    /// The savepoint's name.
    pub name: String,
}

/// `POST /v1/tx/{id}/savepoint`.
pub async fn savepoint(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: SavepointRequest = parse_bytes(&body)?;
    let op = match req.op.as_str() {
        "create" => scribe_sqlite::SavepointOp::Create,
        "release" => scribe_sqlite::SavepointOp::Release,
        "rollback_to" => scribe_sqlite::SavepointOp::RollbackTo,
        other => {
            return Err(ApiError::BadJson(format!(
                "op {other:?}: expected create, release or rollback_to"
            )))
        }
    };
    let held = held(&state, &id)?;
    let mut guard = held.txn.lock().await;
    let txn = guard
        .as_mut()
        .ok_or_else(|| ApiError::from(crate::txns::ended(&id)))?;
    txn.savepoint(op, &req.name).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
