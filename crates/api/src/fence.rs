//! `POST /v1/hosts/{host}/fence`: an operator asks the controller to fence
//! a host with its fence device. The request is recorded at
//! `fence-intents/{host}`; the controller runs the device and, once it
//! confirms, revokes the host's lease (everything it held is promoted
//! elsewhere). The answer waits for the outcome like a switchover's.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tandem_core::model::{FenceIntent, IntentState, keys};
use tandem_store::{Compare, Op, Txn};
use tokio::time::Instant;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::Params;
use crate::switchover::{DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, new_intent_id};
use crate::types::{FenceResponse, SwitchoverProgress};

/// The handler.
pub(crate) async fn fence(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(host) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params = Params::parse(query, &["timeout_ms"])?;
    let timeout_ms = params
        .number("timeout_ms", 0, MAX_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let topology = &state.topology;
    if topology.host(&host).is_none() {
        let names: Vec<&str> = topology.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "no host named {host:?} in topology {:?} (its hosts: {})",
            topology.name,
            names.join(", ")
        )));
    }
    if topology.fence_device(&host).is_none() {
        return Err(ApiError::conflict(format!(
            "host {host} has no fence device: declare fence = {{ command = [...] }} on the host or its site"
        )));
    }
    let key = keys::fence_intent(&host);
    let intent = FenceIntent {
        id: new_intent_id(&state),
        host: host.clone(),
        outcome: IntentState::Pending,
        by: crate::switchover::by(caller),
    };
    let value = serde_json::to_vec(&intent)
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
    let current = state.store.get(&key).await.map_err(ApiError::write)?;
    let expected = match &current {
        None => 0,
        Some(kv) => {
            if let Ok(existing) = serde_json::from_slice::<FenceIntent>(&kv.value)
                && matches!(
                    existing.outcome,
                    IntentState::Pending | IntentState::Running
                )
            {
                return Err(ApiError::conflict(format!(
                    "a fence request for host {host} is already in progress (intent {})",
                    existing.id
                )));
            }
            kv.mod_revision
        }
    };
    let written = state
        .store
        .txn(Txn {
            compares: vec![Compare::ModRevision(key.clone(), expected)],
            success: vec![Op::put(key.clone(), value)],
            failure: vec![],
        })
        .await
        .map_err(ApiError::write)?;
    if !written.succeeded {
        return Err(ApiError::conflict(format!(
            "another fence request for host {host} was recorded at the same time"
        )));
    }
    tracing::warn!(host = %host, intent = %intent.id, "fence requested by an operator");
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let respond = |status, outcome, message| {
        (
            status,
            Json(FenceResponse {
                host: host.clone(),
                intent: intent.id.clone(),
                outcome,
                message,
            }),
        )
            .into_response()
    };
    let what = format!("fence request {} for host {host}", intent.id);
    Ok(
        match crate::outcome::await_outcome::<FenceIntent>(
            &state, &key, &intent.id, &what, deadline,
        )
        .await?
        {
            Some(message) => respond(StatusCode::OK, SwitchoverProgress::Done, Some(message)),
            None => respond(StatusCode::ACCEPTED, SwitchoverProgress::Pending, None),
        },
    )
}
