//! The agent's own port: every agent listens at its host's address on the
//! cluster's `agent_port`, for its peers and for load balancers.
//!
//! - `POST /v1/failsafe`: a primary that cannot renew its lease asks every
//!   other agent running an instance of its app whether that agent can
//!   reach the store, and to promise that it will refuse any promotion of
//!   the app for a while (see [`FailsafeAsk`] and the agent's docs).
//! - `GET /v1/liveness`: never answered while this agent runs, so that a
//!   peer holding it open learns at once, from its kernel closing the
//!   connection, that this agent's process ended (see [`crate::heartbeat`]).
//!   Answered 503 once the agent has stopped.
//! - load-balancer checks (see [`crate::checks`]), answered from what this
//!   agent knows of its own instances, so they keep answering while the
//!   store is unreachable.
//!
//! The handlers never touch the agent's state directly: they read the
//! [`HostView`] the agent publishes after every change, and send
//! [`PeerRequest`]s to its loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use tandem_core::model::{AppRoles, InstanceStatus};
use tandem_core::topology::HaMode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What the agent knows of its host, published after every change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostView {
    /// The host's name.
    pub host: String,
    /// True while the host lease is renewed in time (the store answers).
    pub store_reachable: bool,
    /// Every local instance, in topology order.
    pub instances: Vec<InstanceView>,
    /// The last role assignment applied, per app with a local instance.
    pub roles: BTreeMap<String, AppRoles>,
}

/// One local instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// Its app.
    pub app: String,
    /// Its id within the app.
    pub instance: String,
    /// The app's HA mode.
    pub ha: HaMode,
    /// Its status, as the agent's state machine has it.
    pub status: InstanceStatus,
    /// Told to step down because its host's lease (or failsafe extension)
    /// may end: no longer to be sent work as a primary.
    pub fenced: bool,
}

pub use tandem_core::host::{FailsafeAnswer, FailsafeAsk};

/// What the handlers ask of the agent's loop.
#[derive(Debug)]
pub enum PeerRequest {
    /// A failsafe confirmation.
    Failsafe(FailsafeAsk, oneshot::Sender<FailsafeAnswer>),
}

/// What the handlers share.
#[derive(Clone)]
pub struct PeerState {
    /// The agent's published view.
    pub view: watch::Receiver<HostView>,
    /// The agent's inbox for requests.
    pub requests: mpsc::Sender<PeerRequest>,
    /// The agent's metrics.
    pub metrics: std::sync::Arc<tandem_telemetry::host::HostMetrics>,
}

/// The agent port's routes.
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route("/v1/failsafe", post(failsafe))
        .route("/v1/liveness", axum::routing::get(liveness))
        .route("/metrics", axum::routing::get(metrics))
        .merge(crate::checks::router())
        .with_state(state)
}

async fn failsafe(State(state): State<PeerState>, Json(ask): Json<FailsafeAsk>) -> Response {
    let (tx, rx) = oneshot::channel();
    if state
        .requests
        .send(PeerRequest::Failsafe(ask, tx))
        .await
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response();
    }
    match rx.await {
        Ok(answer) => Json(answer).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response(),
    }
}

/// `GET /v1/liveness`: held open, silent, until the agent's loop has
/// stopped (a peer that closes it first ends it: hyper drops the request).
async fn liveness(State(state): State<PeerState>) -> Response {
    state.requests.closed().await;
    (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response()
}

/// `GET /metrics`: the agent's metrics, in the OpenMetrics text format.
async fn metrics(State(state): State<PeerState>) -> Response {
    let body = tandem_telemetry::encode(&[state.metrics.registry()]);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            tandem_telemetry::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// Binds the agent port (a clear error if it is taken).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on the agent port {addr} (set [cluster] agent_port to a free port)")
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot set up the agent port {addr}"))?;
    Ok(listener)
}

/// Serves the agent port until `cancel`.
pub async fn serve(listener: std::net::TcpListener, state: PeerState, cancel: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot serve the agent port");
            return;
        }
    };
    // HTTP for the routes, HAProxy agent-checks answered beside it.
    let listener = crate::checks::CheckListener::new(listener, state.view.clone());
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(error = %e, "the agent port stopped");
    }
}

/// Asks one peer agent for a failsafe confirmation; `None` if it did not
/// answer within `timeout` or answered something unreadable.
pub async fn ask(
    http: &reqwest::Client,
    peer: SocketAddr,
    ask: &FailsafeAsk,
    timeout: Duration,
) -> Option<FailsafeAnswer> {
    let url = format!("http://{peer}/v1/failsafe");
    let resp = http
        .post(url)
        .json(ask)
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}
