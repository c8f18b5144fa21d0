//! [`ApiError`]: every error a client can get, with its one mapping to an HTTP status and a
//! stable machine-readable code. The body is always `{"error": {"code": ..., "message": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scribe_sqlite::EngineError;

/// An error answered to a client.
#[derive(Debug)]
pub enum ApiError {
    /// The request body is not the JSON the endpoint takes.
    BadJson(String),
    /// The request body is larger than the node accepts.
    TooLarge(usize),
    /// No such route.
    NotFound(String),
    /// An error of the storage engine.
    Engine(EngineError),
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
            ApiError::Engine(e) => match e {
                EngineError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                EngineError::Sql(_) => (StatusCode::BAD_REQUEST, "sql_error"),
                EngineError::NotReadOnly(_) => (StatusCode::BAD_REQUEST, "not_read_only"),
                EngineError::Constraint(_) => (StatusCode::CONFLICT, "constraint_violation"),
                EngineError::DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
                EngineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                EngineError::Corrupt(_)
                | EngineError::Diverged(_)
                | EngineError::Internal(_)
                | EngineError::Log(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadJson(m) => format!("invalid request body: {m}"),
            ApiError::TooLarge(limit) => {
                format!("request body is larger than the {limit} byte limit (--max-request-bytes)")
            }
            ApiError::NotFound(path) => format!("no such endpoint: {path}"),
            ApiError::Engine(e) => e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self.message(), "request failed");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": self.message() } });
        (status, axum::Json(body)).into_response()
    }
}
