//! Error answers: every failure becomes `{"error": "one clear sentence"}`
//! with a fitting status code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tandem_store::StoreError;

use crate::types::ErrorDoc;

/// A failed request: its status code and body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) doc: ErrorDoc,
    /// Adds `Retry-After: 1` (the condition is expected to clear soon).
    pub(crate) retry_after: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            doc: ErrorDoc::new(message),
            retry_after: status == StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A store failure while reading.
    pub(crate) fn read(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            // StoreError's Display already reads "coordination store unavailable: ...".
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        } else {
            tracing::error!(error = %e, "store read failed");
            ApiError::internal(e.to_string())
        }
    }

    /// A store failure while writing: the API is read-only without quorum.
    pub(crate) fn write(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "store write refused: no quorum");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read-only: the coordination store has no quorum",
            )
        } else {
            tracing::error!(error = %e, "store write failed");
            ApiError::internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.doc)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The 404 of a path that names an app the topology does not have.
pub(crate) fn unknown_app(topology: &tandem_core::topology::Topology, app: &str) -> ApiError {
    let names: Vec<&str> = topology.apps.iter().map(|a| a.name.as_str()).collect();
    ApiError::not_found(format!(
        "no app named {app:?} in topology {:?} (its apps: {})",
        topology.name,
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    ))
}
