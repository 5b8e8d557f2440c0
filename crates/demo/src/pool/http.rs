//! The builder's HTTP API: IS ALIVE, health, jobs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::state::{Builder, JobState, Submit, check_job_id};

/// Bound on a request body (a job and its payload).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct Ctx {
    builder: Arc<Builder>,
    /// Becomes `true` when the worker shuts down; ends build timers.
    shutdown: watch::Receiver<bool>,
}

/// The body of `POST /jobs`. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct JobRequest {
    id: String,
    #[serde(default)]
    payload: String,
}

/// The router of the builder worker.
pub(crate) fn router(builder: Arc<Builder>, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/alive", get(alive))
        .route("/health", get(health))
        .route("/jobs", post(submit))
        .route("/jobs/{id}", get(job))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Ctx { builder, shutdown })
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn root(State(ctx): State<Ctx>) -> Response {
    let b = &ctx.builder;
    let job = b.current_job();
    Json(json!({
        "app": b.app,
        "instance": b.instance,
        "pid": std::process::id(),
        "busy": job.is_some(),
        "job": job,
        "build_ms": b.build_ms,
        "jobs_done": b.done_count(),
    }))
    .into_response()
}

/// IS ALIVE: only a free worker answers 200.
async fn alive(State(ctx): State<Ctx>) -> Response {
    let instance = &ctx.builder.instance;
    match ctx.builder.current_job() {
        None => Json(json!({ "instance": instance, "free": true })).into_response(),
        Some(job) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "instance": instance, "free": false, "job": job })),
        )
            .into_response(),
    }
}

/// Health for tandem's agent: 200 while the process works, with `busy`.
async fn health(State(ctx): State<Ctx>) -> Response {
    let job = ctx.builder.current_job();
    Json(json!({ "status": "ok", "busy": job.is_some(), "job": job })).into_response()
}

async fn submit(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let request: JobRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid job: {err} (expected JSON {{\"id\": \"j1\", \"payload\": \"...\"}})"
                ),
            );
        }
    };
    if let Err(message) = check_job_id(&request.id) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let b = &ctx.builder;
    let id = request.id;
    match b.submit(&id, &request.payload) {
        Submit::Started => {
            spawn_build(&ctx, id.clone());
            running(&id, &b.instance)
        }
        Submit::AlreadyRunning => running(&id, &b.instance),
        Submit::AlreadyDone(result) => done(&id, &b.instance, &result),
        Submit::Busy(other) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("busy with {other}"),
                "job": other,
                "instance": b.instance,
            })),
        )
            .into_response(),
        Submit::Stopping => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
    }
}

/// The build timer: after `build_ms` the job is done, unless the worker
/// shuts down first (then the build is abandoned).
fn spawn_build(ctx: &Ctx, id: String) {
    let builder = Arc::clone(&ctx.builder);
    let mut shutdown = ctx.shutdown.clone();
    let build = Duration::from_millis(builder.build_ms);
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(build) => builder.finish(&id),
            _ = shutdown.wait_for(|down| *down) => {}
        }
    });
}

fn running(id: &str, instance: &str) -> Response {
    let body = json!({ "id": id, "state": "running", "result": null, "instance": instance });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn done(id: &str, instance: &str, result: &str) -> Response {
    Json(json!({ "id": id, "state": "done", "result": result, "instance": instance }))
        .into_response()
}

async fn job(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    if let Err(message) = check_job_id(&id) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let b = &ctx.builder;
    match b.job(&id) {
        Some(JobState::Running) => {
            let body =
                json!({ "id": id, "state": "running", "result": null, "instance": b.instance });
            Json(body).into_response()
        }
        Some(JobState::Done(result)) => done(&id, &b.instance, &result),
        None => error(
            StatusCode::NOT_FOUND,
            format!("worker {} knows no job {id}", b.instance),
        ),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint".into())
}
