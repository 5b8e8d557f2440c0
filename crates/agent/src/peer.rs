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
//! With a cluster secret (see [`crate::sign`]), `POST /v1/failsafe` takes
//! only requests signed with it (401 and the reason otherwise) and signs
//! its answers; [`ask`] signs its requests and counts no answer that is
//! not signed with it. Without one, the port is unauthenticated (for
//! development): the agent warns at start.
//!
//! The handlers never touch the agent's state directly: they read the
//! [`HostView`] the agent publishes after every change, and send
//! [`PeerRequest`]s to its loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use tandem_core::model::{AppRoles, InstanceStatus};
use tandem_core::topology::HaMode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::sign::{
    ClusterSecret, Message, SIGNATURE_HEADER, Verifier, new_nonce, sign_answer, sign_request,
    verify_answer,
};

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
    /// Checks signed requests; `None`: the port is unauthenticated.
    pub auth: Option<std::sync::Arc<Verifier>>,
}

/// The failsafe route's path (signatures bind it).
pub const FAILSAFE_PATH: &str = "/v1/failsafe";

/// Milliseconds since the Unix epoch: signatures' clock (hosts' wall
/// clocks, which differ a little; see [`crate::sign::MAX_SKEW_MS`]).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The agent port's routes.
pub fn router(state: PeerState) -> Router {
    Router::new()
        .route(FAILSAFE_PATH, post(failsafe))
        .route("/v1/liveness", axum::routing::get(liveness))
        .route("/metrics", axum::routing::get(metrics))
        .merge(crate::checks::router())
        .with_state(state)
}

async fn failsafe(State(state): State<PeerState>, headers: HeaderMap, body: Bytes) -> Response {
    let msg = Message {
        method: "POST",
        path: FAILSAFE_PATH,
        body: &body,
    };
    // Authenticate before reading anything: a refused request changes
    // nothing.
    let nonce = match &state.auth {
        None => None,
        Some(auth) => {
            let header = headers
                .get(SIGNATURE_HEADER)
                .map(|v| v.to_str().unwrap_or("(not text)"));
            match auth.verify_request(msg, header, wall_ms()) {
                Ok(nonce) => Some(nonce),
                Err(e) => {
                    warn!(error = %e, "refused a failsafe request on the agent port");
                    return (
                        StatusCode::UNAUTHORIZED,
                        format!("failsafe request refused: {e}\n"),
                    )
                        .into_response();
                }
            }
        }
    };
    let ask: FailsafeAsk = match serde_json::from_slice(&body) {
        Ok(ask) => ask,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unreadable failsafe request: {e}\n"),
            )
                .into_response();
        }
    };
    let (tx, rx) = oneshot::channel();
    if state
        .requests
        .send(PeerRequest::Failsafe(ask, tx))
        .await
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response();
    }
    let Ok(answer) = rx.await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping").into_response();
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the answer: {e}"),
            )
                .into_response();
        }
    };
    let mut response = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response();
    if let (Some(auth), Some(request)) = (&state.auth, nonce) {
        let own = match new_nonce() {
            Ok(n) => n,
            Err(e) => {
                return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
            }
        };
        let msg = Message { body: &body, ..msg };
        let sig = sign_answer(auth.secret(), msg, &request, wall_ms(), own);
        if let Ok(v) = axum::http::HeaderValue::from_str(&sig.header()) {
            response.headers_mut().insert(SIGNATURE_HEADER, v);
        }
    }
    response
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
pub async fn serve(
    listener: std::net::TcpListener,
    state: PeerState,
    extra: Router,
    cancel: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot serve the agent port");
            return;
        }
    };
    // HTTP for the routes, HAProxy agent-checks answered beside it.
    let listener = crate::checks::CheckListener::new(listener, state.view.clone());
    let app = router(state).merge(extra);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(error = %e, "the agent port stopped");
    }
}

/// Asks one peer agent for a failsafe confirmation; `None` if it did not
/// answer within `timeout`, answered something unreadable, or (with a
/// `secret`) refused our signature or answered without a valid one.
pub async fn ask(
    http: &reqwest::Client,
    peer: SocketAddr,
    ask: &FailsafeAsk,
    timeout: Duration,
    secret: Option<&ClusterSecret>,
) -> Option<FailsafeAnswer> {
    let url = format!("http://{peer}{FAILSAFE_PATH}");
    let body = serde_json::to_vec(ask).ok()?;
    let msg = Message {
        method: "POST",
        path: FAILSAFE_PATH,
        body: &body,
    };
    let mut req = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(timeout);
    let mut request_nonce = None;
    if let Some(secret) = secret {
        let nonce = match new_nonce() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot sign a failsafe request");
                return None;
            }
        };
        let sig = sign_request(secret, msg, wall_ms(), nonce);
        req = req.header(SIGNATURE_HEADER, sig.header());
        request_nonce = Some(nonce);
    }
    let resp = req.body(body.clone()).send().await.ok()?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        let why = resp.text().await.unwrap_or_default();
        warn!(%peer, reason = %why.trim(), "a peer agent refused our failsafe request: does it have the same cluster secret?");
        return None;
    }
    if !status.is_success() {
        return None;
    }
    let header = resp
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = resp.bytes().await.ok()?;
    if let (Some(secret), Some(request)) = (secret, request_nonce) {
        let msg = Message {
            body: &answer,
            ..msg
        };
        if let Err(e) = verify_answer(secret, msg, &request, header.as_deref(), wall_ms()) {
            warn!(%peer, error = %e, "ignored a failsafe answer that is not signed with the cluster secret");
            return None;
        }
    }
    serde_json::from_slice(&answer).ok()
}
