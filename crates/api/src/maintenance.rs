//! `POST /v1/apps/{app}/maintenance` `{"on": true|false}`: record the
//! intent, wait for the controller. While an app is in maintenance the
//! controller changes none of its roles, and says so in status and events.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tandem_core::model::{IntentKind, IntentState, keys};
use tokio::time::Instant;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::path_app;
use crate::params::Params;
use crate::switchover::{DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, Waited, by, record, wait_for_outcome};
use crate::types::{MaintenanceRequest, SwitchoverProgress, SwitchoverResponse};

/// The handler.
pub(crate) async fn maintenance(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = path_app(&state, path)?;
    let params = Params::parse(query, &["timeout_ms"])?;
    let timeout_ms = params
        .number("timeout_ms", 0, MAX_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let request: MaintenanceRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid maintenance request: {e} (expected {{\"on\": true}} or {{\"on\": false}})"
        ))
    })?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let (intent, revision) = record(
        &state,
        &app,
        IntentKind::Maintenance { on: request.on },
        by(caller),
    )
    .await?;
    tracing::info!(app = %app.name, intent = %intent.id, on = request.on, "maintenance requested");
    let key = keys::intent(&app.name);
    let respond = |outcome, message| {
        Json(SwitchoverResponse {
            app: app.name.clone(),
            intent: intent.id.clone(),
            outcome,
            message,
        })
    };
    let waited = wait_for_outcome(&state, &key, &intent.id, revision + 1, deadline).await;
    state
        .metrics
        .intent_answered(&app.name, "maintenance", waited.outcome());
    Ok(match waited {
        Waited::Resolved(IntentState::Done { message }) => (
            StatusCode::OK,
            respond(SwitchoverProgress::Done, Some(message)),
        )
            .into_response(),
        Waited::Resolved(IntentState::Refused { reason }) => {
            let mut e = ApiError::conflict(reason);
            e.doc.intent = Some(intent.id.clone());
            e.into_response()
        }
        Waited::Gone => ApiError::conflict(format!(
            "intent {} of {} was replaced or removed before the controller resolved it",
            intent.id, app.name
        ))
        .into_response(),
        Waited::Resolved(_) | Waited::Timeout(_) => (
            StatusCode::ACCEPTED,
            respond(SwitchoverProgress::Pending, None),
        )
            .into_response(),
    })
}
