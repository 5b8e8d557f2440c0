//! The HTTP API: state, health, the role hook and the fault switches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::role::Role;
use crate::state::{HookBody, HookError, Shared};

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    /// Becomes `true` when the app shuts down; releases hung requests.
    shutdown: watch::Receiver<bool>,
}

/// The router of the demo app.
pub(crate) fn router(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Router {
    let ctx = Ctx { shared, shutdown };
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/tandem/role", post(role_hook))
        .route("/crash", post(crash))
        .route("/hang", post(hang))
        .route("/unhealthy", post(unhealthy))
        .route("/healthy", post(healthy))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .with_state(ctx)
}

/// Runs before every request: the freeze check first, then the hang switch.
async fn guard(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    ctx.shared.check_tick("request");
    if ctx.shared.hung.load(Ordering::SeqCst) {
        // Never answer; only a shutdown releases the request.
        let mut shutdown = ctx.shutdown.clone();
        let _ = shutdown.wait_for(|down| *down).await;
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    next.run(request).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn root(State(ctx): State<Ctx>) -> Response {
    Json(ctx.shared.snapshot_checked()).into_response()
}

async fn health(State(ctx): State<Ctx>) -> Response {
    let snapshot = ctx.shared.snapshot_checked();
    if snapshot.role == Role::Fenced {
        let body = json!({ "status": "fenced", "role": snapshot.role, "epoch": snapshot.epoch });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if ctx.shared.unhealthy.load(Ordering::SeqCst) {
        let body = json!({ "status": "unhealthy" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

async fn role_hook(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let hook: HookBody = match serde_json::from_slice(&body) {
        Ok(hook) => hook,
        Err(err) => {
            let err = HookError::BadBody(format!(
                "{err} (expected JSON {{\"role\": \"primary\", \"epoch\": 7}})"
            ));
            return hook_error(err);
        }
    };
    match ctx.shared.apply_hook(&hook, "http") {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(err) => hook_error(err),
    }
}

fn hook_error(err: HookError) -> Response {
    tracing::warn!("refused role hook: {err}");
    let message = err.to_string();
    match err {
        HookError::Stale { current, .. } => (
            StatusCode::CONFLICT,
            Json(json!({ "error": message, "current": current })),
        )
            .into_response(),
        HookError::BadBody(_) | HookError::UnknownRole(_) | HookError::WrongTarget { .. } => {
            error(StatusCode::BAD_REQUEST, message)
        }
    }
}

async fn crash() -> Response {
    tracing::warn!("POST /crash: exiting with code 1 now");
    std::process::exit(1)
}

async fn hang(State(ctx): State<Ctx>) -> Response {
    tracing::warn!("POST /hang: no request will be answered from now on");
    ctx.shared.hung.store(true, Ordering::SeqCst);
    Json(json!({ "hung": true })).into_response()
}

async fn unhealthy(State(ctx): State<Ctx>) -> Response {
    ctx.shared.unhealthy.store(true, Ordering::SeqCst);
    Json(json!({ "healthy": false })).into_response()
}

async fn healthy(State(ctx): State<Ctx>) -> Response {
    ctx.shared.unhealthy.store(false, Ordering::SeqCst);
    Json(json!({ "healthy": true })).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint".into())
}
