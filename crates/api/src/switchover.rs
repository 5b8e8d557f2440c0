//! `POST /v1/apps/{app}/switchover`: validate, record the intent, wait for
//! the controller's outcome.
//!
//! The API never changes roles itself: it records an [`Intent`] at
//! `/tandem/intents/{app}` (creating it, or replacing a resolved one, by
//! compare-and-swap) and watches that key until the controller marks it
//! done or refused, or the caller's timeout passes.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tandem_core::model::{AppRoles, InstanceStatus, Intent, IntentKind, IntentState, keys};
use tandem_core::topology::{App, HaMode};
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{Compare, EventKind, Op, Revision, Txn};
use tokio::time::Instant;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::handlers::path_app;
use crate::params::Params;
use crate::types::{SwitchoverProgress, SwitchoverRequest, SwitchoverResponse};

/// How long a switchover request waits for the outcome by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The longest a switchover request may wait.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// How often recording the intent is retried when a concurrent write moved
/// the key between our read and our compare-and-swap.
const RECORD_ATTEMPTS: usize = 3;
/// Pause before re-reading after the watch broke without delivering
/// anything (a watch that delivered changes re-reads at once).
const REWATCH_PAUSE: Duration = Duration::from_millis(100);

/// True for HA modes whose apps have a primary to switch over.
fn has_primary(ha: HaMode) -> bool {
    matches!(
        ha,
        HaMode::HotStandby | HaMode::WarmStandby | HaMode::ColdStandby | HaMode::Singleton
    )
}

/// The handler.
pub(crate) async fn switchover(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Validate everything before writing anything.
    let app = path_app(&state, path)?;
    let params = Params::parse(query, &["timeout_ms"])?;
    let timeout_ms = params
        .number("timeout_ms", 0, MAX_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let request = parse_body(&body)?;
    if !has_primary(app.ha) {
        return Err(ApiError::conflict(format!(
            "app {} (ha = {}) has no primary to switch over",
            app.name, app.ha
        )));
    }
    if let Some(to) = &request.to {
        check_target(&app, to)?;
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);

    let (intent, revision) = record(
        &state,
        &app,
        IntentKind::Switchover { to: request.to },
        by(caller),
    )
    .await?;
    tracing::info!(
        app = %app.name,
        intent = %intent.id,
        to = intent_target(&intent).unwrap_or("(best backup)"),
        "switchover requested"
    );

    let key = keys::intent(&app.name);
    let mut waited = wait_for_outcome(&state, &key, &intent.id, revision + 1, deadline).await;
    // The controller marks the intent done when it grants the target;
    // "done" to the caller means the new primary serves (acknowledged its
    // role), which is one hook later.
    if matches!(waited, Waited::Resolved(IntentState::Done { .. }))
        && !wait_serving(&state, &app, deadline).await
    {
        waited = Waited::Timeout(SwitchoverProgress::Running);
    }
    state
        .metrics
        .intent_answered(&app.name, "switchover", waited.outcome());
    Ok(match waited {
        Waited::Resolved(IntentState::Done { message }) => (
            StatusCode::OK,
            Json(SwitchoverResponse {
                app: app.name.clone(),
                intent: intent.id,
                outcome: SwitchoverProgress::Done,
                message: Some(message),
            }),
        )
            .into_response(),
        Waited::Resolved(IntentState::Refused { reason }) => {
            let mut e = ApiError::conflict(reason);
            e.doc.intent = Some(intent.id);
            e.into_response()
        }
        Waited::Resolved(IntentState::Running) | Waited::Timeout(SwitchoverProgress::Running) => {
            accepted(&app, intent.id, SwitchoverProgress::Running)
        }
        Waited::Resolved(IntentState::Pending) | Waited::Timeout(_) => {
            accepted(&app, intent.id, SwitchoverProgress::Pending)
        }
        Waited::Gone => {
            let mut e = ApiError::conflict(format!(
                "intent {} of {} was replaced or removed before the controller resolved it",
                intent.id, app.name
            ));
            e.doc.intent = Some(intent.id);
            e.into_response()
        }
    })
}

/// Waits until `app` has an acknowledged primary (its grant's holder
/// acknowledged the role at the grant's epoch), until `deadline`.
async fn wait_serving(state: &ApiState, app: &App, deadline: Instant) -> bool {
    loop {
        if let Ok(Some(kv)) = state.store.get(&keys::roles(&app.name)).await
            && let Ok(roles) = serde_json::from_slice::<AppRoles>(&kv.value)
            && let Some(grant) = &roles.primary
            && let Ok(Some(status)) = state
                .store
                .get(&keys::status(&app.name, &grant.instance))
                .await
            && serde_json::from_slice::<InstanceStatus>(&status.value)
                .is_ok_and(|s| s.has_acknowledged(grant))
        {
            return true;
        }
        if Instant::now() >= deadline || state.shutdown.is_cancelled() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn accepted(app: &App, intent: String, outcome: SwitchoverProgress) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(SwitchoverResponse {
            app: app.name.clone(),
            intent,
            outcome,
            message: None,
        }),
    )
        .into_response()
}

fn intent_target(intent: &Intent) -> Option<&str> {
    match &intent.kind {
        IntentKind::Switchover { to } => to.as_deref(),
        IntentKind::Maintenance { .. } => None,
    }
}

/// An empty (or blank) body means "no target".
fn parse_body(body: &[u8]) -> Result<SwitchoverRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SwitchoverRequest::default());
    }
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "invalid switchover request: {e} (expected {{\"to\": \"INSTANCE\"}} or an empty body)"
        ))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    if !value.is_object() {
        return Err(invalid(&"the body is not a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| invalid(&e))
}

fn check_target(app: &App, to: &str) -> Result<(), ApiError> {
    if app.instance(to).is_some() {
        return Ok(());
    }
    let ids: Vec<&str> = app.instances.iter().map(|i| i.id.as_str()).collect();
    Err(ApiError::bad_request(format!(
        "app {} has no instance {to:?} (its instances: {})",
        app.name,
        ids.join(", ")
    )))
}

/// The name of the token that made a request, to record in its intent.
pub(crate) fn by(caller: Option<Extension<Caller>>) -> Option<String> {
    caller.and_then(|Extension(c)| c.token)
}

/// Records a new intent unless one is pending or running. Returns it and
/// the revision of the write.
pub(crate) async fn record(
    state: &ApiState,
    app: &App,
    kind: IntentKind,
    by: Option<String>,
) -> Result<(Intent, Revision), ApiError> {
    let key = keys::intent(&app.name);
    let intent = Intent {
        id: new_intent_id(state),
        app: app.name.clone(),
        kind,
        outcome: IntentState::Pending,
        by,
    };
    let value = serde_json::to_vec(&intent)
        .map_err(|e| ApiError::internal(format!("cannot encode the intent: {e}")))?;
    for _ in 0..RECORD_ATTEMPTS {
        // A write request: without quorum it is refused as read-only.
        let current = state.store.get(&key).await.map_err(ApiError::write)?;
        let expected = match &current {
            None => 0,
            Some(kv) => {
                let existing: Intent = serde_json::from_slice(&kv.value).map_err(|e| {
                    ApiError::internal(format!(
                        "the recorded intent of {} is unreadable ({e}); remove {key} to clear it",
                        app.name
                    ))
                })?;
                if matches!(
                    existing.outcome,
                    IntentState::Pending | IntentState::Running
                ) {
                    return Err(in_progress(app, &existing));
                }
                kv.mod_revision
            }
        };
        let response = state
            .store
            .txn(Txn {
                compares: vec![Compare::ModRevision(key.clone(), expected)],
                success: vec![Op::put(key.clone(), value.clone())],
                failure: vec![],
            })
            .await
            .map_err(ApiError::write)?;
        if response.succeeded {
            return Ok((intent, response.revision));
        }
    }
    Err(ApiError::conflict(format!(
        "an operator request on {} is already in progress",
        app.name
    )))
}

/// The 409 of a second switchover. It carries no `intent` field: that field
/// marks a refusal of the caller's own intent.
fn in_progress(app: &App, existing: &Intent) -> ApiError {
    let what = match existing.kind {
        IntentKind::Switchover { .. } => "a switchover",
        IntentKind::Maintenance { .. } => "a maintenance request",
    };
    ApiError::conflict(format!(
        "{what} of {} is already in progress (intent {})",
        app.name, existing.id
    ))
}

/// A unique intent id: milliseconds since the Unix epoch, a per-process
/// counter, and random bits (so two API processes do not collide).
pub(crate) fn new_intent_id(state: &ApiState) -> String {
    let t_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let n = state.intent_counter.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.write_u128(t_ms);
    let salt = hasher.finish() as u32;
    format!("{t_ms}-{n}-{salt:08x}")
}

/// How waiting for the controller ended.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The intent reached this state (done or refused).
    Resolved(IntentState),
    /// The deadline (or server shutdown) came first; the last state seen.
    Timeout(SwitchoverProgress),
    /// The intent was deleted or replaced by another one.
    Gone,
}

impl Waited {
    /// How the request ends, as a metric label.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Waited::Resolved(IntentState::Done { .. }) => "done",
            Waited::Resolved(IntentState::Refused { .. }) | Waited::Gone => "refused",
            Waited::Resolved(_) | Waited::Timeout(_) => "accepted",
        }
    }
}

/// Watches the intent key from `from` until our intent is resolved, the
/// deadline passes or the server shuts down. A broken watch is resumed
/// after re-reading the key; errors never end the wait early (the intent is
/// recorded: the caller learns where it stands).
pub(crate) async fn wait_for_outcome(
    state: &ApiState,
    key: &str,
    id: &str,
    from: Revision,
    deadline: Instant,
) -> Waited {
    let mut last = SwitchoverProgress::Pending;
    let timeout = async {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
    };
    let wait = async {
        let mut intent = follow(
            state.store.clone(),
            key,
            Start::At(from),
            AfterBreak::Relist,
        )
        .retry_delay(REWATCH_PAUSE, REWATCH_PAUSE);
        loop {
            match intent.next().await {
                FollowItem::Change(event) => {
                    if event.kv.key != key {
                        continue; // another app whose name starts with ours
                    }
                    if event.kind == EventKind::Delete {
                        return Waited::Gone;
                    }
                    if let Some(done) = check(&event.kv.value, id, &mut last) {
                        return done;
                    }
                }
                // The watch broke (or its history is compacted): the key as
                // it is now, then the changes after that read.
                FollowItem::Snapshot(listing) => {
                    match listing.kvs.iter().find(|kv| kv.key == key) {
                        None => return Waited::Gone,
                        Some(kv) => {
                            if let Some(done) = check(&kv.value, id, &mut last) {
                                return done;
                            }
                        }
                    }
                }
                FollowItem::Interrupted(e) => {
                    tracing::debug!(error = %e, "intent watch broke; re-reading");
                }
            }
        }
    };
    tokio::select! {
        waited = wait => waited,
        _ = timeout => Waited::Timeout(last),
    }
}

/// Looks at one value of the intent key: `Some` ends the wait.
fn check(value: &[u8], id: &str, last: &mut SwitchoverProgress) -> Option<Waited> {
    let intent: Intent = match serde_json::from_slice(value) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable intent while waiting for its outcome");
            return None;
        }
    };
    if intent.id != id {
        return Some(Waited::Gone);
    }
    match intent.outcome {
        IntentState::Pending => {
            *last = SwitchoverProgress::Pending;
            None
        }
        IntentState::Running => {
            *last = SwitchoverProgress::Running;
            None
        }
        resolved => Some(Waited::Resolved(resolved)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_or_empty_bodies_name_no_target() {
        assert_eq!(parse_body(b"").ok(), Some(SwitchoverRequest::default()));
        assert_eq!(parse_body(b" \n").ok(), Some(SwitchoverRequest::default()));
        assert_eq!(parse_body(b"{}").ok(), Some(SwitchoverRequest::default()));
        assert_eq!(
            parse_body(br#"{"to":"b"}"#).ok().and_then(|r| r.to),
            Some("b".to_owned())
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        for (body, needle) in [
            (&br#"{"target":"b"}"#[..], "unknown field `target`"),
            (b"{", "EOF"),
            (br#"{"to": 3}"#, "invalid type"),
            (b"[]", "not a JSON object"),
            (br#"["b"]"#, "not a JSON object"),
        ] {
            match parse_body(body) {
                Ok(r) => panic!("{body:?} parsed as {r:?}"),
                Err(e) => assert!(e.doc.error.contains(needle), "{}", e.doc.error),
            }
        }
    }

    #[test]
    fn only_modes_with_a_primary_can_switch_over() {
        assert!(has_primary(HaMode::WarmStandby));
        assert!(!has_primary(HaMode::None));
        assert!(!has_primary(HaMode::NPlus1));
        assert!(!has_primary(HaMode::Pool));
    }

    #[test]
    fn the_wait_ends_on_a_resolution_of_our_intent_only() {
        let intent = |id: &str, outcome: IntentState| {
            serde_json::to_vec(&Intent {
                by: None,
                id: id.into(),
                app: "web".into(),
                kind: IntentKind::Switchover { to: None },
                outcome,
            })
            .expect("serializable")
        };
        let mut last = SwitchoverProgress::Pending;
        assert!(check(&intent("x", IntentState::Running), "x", &mut last).is_none());
        assert_eq!(last, SwitchoverProgress::Running);
        assert!(matches!(
            check(
                &intent(
                    "x",
                    IntentState::Done {
                        message: "ok".into()
                    }
                ),
                "x",
                &mut last
            ),
            Some(Waited::Resolved(IntentState::Done { .. }))
        ));
        assert!(matches!(
            check(&intent("y", IntentState::Pending), "x", &mut last),
            Some(Waited::Gone)
        ));
        assert!(check(b"garbage", "x", &mut last).is_none());
    }
}
