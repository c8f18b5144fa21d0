//! The classic users service on Scribe: `POST /users` writes through the primary, `GET /users`
//! reads through the replicas, and the [`scribe_client::Cluster`] handle carries the position
//! token between them, so a user created and listed right away is always in the list — with no
//! code here to make it so.
//!
//! What it owns: the `users` table and its two routes. What it does not: authentication,
//! pagination, or read-your-writes across several instances of the service (each instance has
//! its own token; for that, hand the position of a write to the client and read through a
//! [`scribe_client::Session`] advanced to it).
//!
//! Modules: this one only — [`prepare`] the schema, [`router`] the routes, [`AppError`] the one
//! mapping of failures to HTTP statuses.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use scribe_client::{Cluster, Statement, Value};
use serde::{Deserialize, Serialize};

/// The schema, created if missing.
pub const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)";

/// Creates the `users` table if it is missing.
pub async fn prepare(cluster: &Cluster) -> Result<(), scribe_client::Error> {
    cluster.execute([SCHEMA]).await.map(|_| ())
}

/// The routes: `POST /users`, `GET /users`.
pub fn router(cluster: Cluster) -> Router {
    Router::new()
        .route("/users", get(list).post(create))
        .with_state(cluster)
}

/// The body of `POST /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The user's name: not empty.
    pub name: String,
}

/// A user, as the routes answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Assigned by the database.
    pub id: i64,
    /// The name given.
    pub name: String,
}

/// Why a request failed.
#[derive(Debug)]
pub enum AppError {
    /// The request is wrong; the message says how.
    BadRequest(String),
    /// The database call failed.
    Scribe(scribe_client::Error),
    /// The database answered rows this service cannot read.
    BadRow(String),
}

impl From<scribe_client::Error> for AppError {
    fn from(e: scribe_client::Error) -> Self {
        AppError::Scribe(e)
    }
}

impl AppError {
    /// The status of this error: the one place it is decided.
    pub fn status(&self) -> StatusCode {
        use scribe_client::Error as E;
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Scribe(E::NoPrimary(_) | E::Unreachable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Scribe(E::Server { status: 503, .. }) => StatusCode::SERVICE_UNAVAILABLE,
            // The user may or may not exist now; the client must look before trying again.
            AppError::Scribe(E::OutcomeUnknown { .. }) => StatusCode::GATEWAY_TIMEOUT,
            AppError::Scribe(E::BadAnswer { .. }) | AppError::BadRow(_) => StatusCode::BAD_GATEWAY,
            // The SQL here is fixed, and so are the service's database credentials: anything else
            // the database refuses (a bad statement, a wrong password, a role too weak) is this
            // service's bug or misconfiguration.
            AppError::Scribe(
                E::Server { .. } | E::Usage(_) | E::Unauthenticated(_) | E::Forbidden(_),
            ) => StatusCode::INTERNAL_SERVER_ERROR,
            // A kind of failure newer than this service.
            AppError::Scribe(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match self {
            AppError::BadRequest(m) | AppError::BadRow(m) => m,
            AppError::Scribe(e) => e.to_string(),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

async fn create(
    State(cluster): State<Cluster>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), AppError> {
    let Json(new) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let name = new.name.trim().to_string();
    if name.is_empty() {
        return Err(AppError::BadRequest("name must not be empty".to_string()));
    }
    let done = cluster
        .execute([Statement::new("INSERT INTO users (name) VALUES (?)").param(name.as_str())])
        .await?;
    let id = done
        .last_insert_id()
        .ok_or_else(|| AppError::BadRow("the insert answered no result".to_string()))?;
    Ok((StatusCode::CREATED, Json(User { id, name })))
}

async fn list(State(cluster): State<Cluster>) -> Result<Json<Vec<User>>, AppError> {
    let rows = cluster
        .query("SELECT id, name FROM users ORDER BY id", ())
        .await?;
    let users = rows
        .iter()
        .map(|row| match row.as_slice() {
            [Value::Integer(id), Value::Text(name)] => Ok(User {
                id: *id,
                name: name.clone(),
            }),
            other => Err(AppError::BadRow(format!("unexpected users row {other:?}"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(users))
}
