//! `GET /v1/conflicts` and `POST /v1/conflicts/{id}/resolve`: the conflicts of a multi-master
//! node's `versioned` tables — every version that lost to a concurrent write, listed the same on
//! every node under the same id — and their resolution, a write of the chosen (or merged) row
//! that replicates like any other (docs/MULTI_MASTER.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use scribe_sqlite::{EngineError, Statement, Value};
use serde::Deserialize;
use serde_json::json;

use crate::api::{body_bytes, parse_bytes};
use crate::error::ApiError;
use crate::state::NodeState;

fn multi_master_only(state: &NodeState) -> Result<(), ApiError> {
    if state.mm.is_none() {
        return Err(ApiError::Engine(EngineError::BadRequest(
            "conflicts exist only on a multi-master node (started with --multi-master)".into(),
        )));
    }
    Ok(())
}

/// A stored row (JSON of column → value) as the API shows it.
fn row(v: &Value) -> serde_json::Value {
    match v {
        Value::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

/// A stored key (the exact encoding) as a list of values.
fn key(v: &Value) -> serde_json::Value {
    let Value::Text(t) = v else {
        return serde_json::Value::Null;
    };
    match serde_json::from_str::<Vec<scribe_sqlite::multi_master::Ordered>>(t) {
        Ok(k) => serde_json::to_value(k.into_iter().map(|o| o.0).collect::<Vec<Value>>())
            .unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// `GET /v1/conflicts`: every unresolved conflict on this node, by table and key.
pub async fn list(State(state): State<Arc<NodeState>>) -> Result<Response, ApiError> {
    multi_master_only(&state)?;
    let q = state
        .engine
        .query(Statement::new(
            "SELECT id, tbl, pk, node, hlc, row, winner_node, winner_row FROM _scribe_conflicts ORDER BY tbl, pk, id",
        ))
        .await?;
    let mut by_table: BTreeMap<String, u64> = BTreeMap::new();
    let conflicts: Vec<serde_json::Value> = q
        .rows
        .rows
        .iter()
        .map(|r| {
            let table = match &r[1] {
                Value::Text(t) => t.clone(),
                _ => String::new(),
            };
            *by_table.entry(table.clone()).or_default() += 1;
            json!({
                "id": r[0],
                "table": table,
                "key": key(&r[2]),
                "node": r[3],
                "hlc": r[4],
                "row": row(&r[5]),
                "winner_node": r[6],
                "winner_row": row(&r[7]),
            })
        })
        .collect();
    Ok(Json(json!({
        "node": state.identity.name,
        "conflicts": conflicts,
        "by_table": by_table,
        "position": q.position,
    }))
    .into_response())
}

/// The body of `POST /v1/conflicts/{id}/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The row to keep (column → value); `null` deletes the row.
    pub row: Option<BTreeMap<String, Value>>,
    /// The ids of the row's conflicts the application read; when given, the resolution is
    /// refused (409) if the row's conflicts are others now.
    #[serde(default)]
    pub expect: Option<Vec<String>>,
}

/// `POST /v1/conflicts/{id}/resolve`: resolves every conflict of the row conflict `id` belongs to.
pub async fn resolve(
    State(state): State<Arc<NodeState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    multi_master_only(&state)?;
    let body = body_bytes(body, state.config.max_request_bytes)?;
    let req: ResolveRequest = parse_bytes(&body)?;
    let position = state
        .engine
        .mm_resolve(scribe_sqlite::mm::Resolution {
            id,
            row: req.row,
            expect: req.expect,
        })
        .await?;
    Ok(Json(json!({ "resolved": true, "position": position })).into_response())
}
