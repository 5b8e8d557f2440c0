//! tandem's HTTP/JSON API: how operators, the CLI, dashboards, load
//! balancers and client libraries see and steer the cluster.
//!
//! The API sits beside the controller and the agents on top of the
//! coordination store (see DESIGN.md, "Architecture"). It only *reads* what
//! they wrote (instance statuses, role assignments, the event log) and
//! *records intents*; it never changes a role itself. A switchover is an
//! [`Intent`](tandem_core::model::Intent) written to `/tandem/intents/{app}`
//! that the controller carries out; the request waits for its outcome.
//!
//! Endpoints (all JSON; every error is `{"error": "one clear sentence"}`):
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /` | the live web dashboard (HTML; no token needed): status, events, failover timeline, operator actions |
//! | `GET /ui/{file}` | the dashboard's embedded files (`app.js`, `style.css`, `views/*.js`; no token needed); 404 for any other |
//! | `GET /healthz` | 200 `{"status":"ok"}`: the API itself is alive |
//! | `GET /v1/client.js` | the browser client a web page embeds to fail over between sites by itself (`TandemSite`; no token needed) |
//! | `GET /v1/status` | [`StatusDoc`](types::StatusDoc): every app and instance, roles, health, epochs |
//! | `GET /v1/links` | [`LinksDoc`](types::LinksDoc): every link judged for each instance of the app it goes from (`up`, `down`, `unknown`, why), with what its host sees of each target |
//! | `GET /v1/apps/{app}` | [`AppDoc`](types::AppDoc) with its `switchover` and `intent` |
//! | `GET /v1/apps/{app}/primary` | 200 [`PrimaryDoc`](types::PrimaryDoc) once the grant's holder acknowledged it, else 503 with the reason (`Retry-After: 1`; while the primary drains before a planned switchover, `draining` holds it; while a pinned app's active site is lost, `read_only` says which and why); never cached |
//! | `POST /v1/apps/{app}/switchover[?timeout_ms=N]` | body `{"to": "b"}` or empty: 200 done (the new primary acknowledged its role), 409 refused or already in progress, 202 still under way at the timeout (default 10 s, at most 60 s) |
//! | `POST /v1/hosts/{host}/fence[?timeout_ms=N]` | runs the host's fence device through the controller: 200 [`FenceResponse`](types::FenceResponse) once it confirmed (the host's lease is revoked, its primaries replaced), 409 refused (no device, no lease, the device failed three times) or already in progress, 404 unknown host, 202 still under way at the timeout |
//! | `POST /v1/sites/{site}/{fail,promote,restore}[?timeout_ms=N]` | body `{"force": true, "confirm": "SITE"}` or empty: the controller declares the site failed, promotes a spare site to active (the pinned apps start there with a new epoch), or restores a failed site that returned; 200 [`SiteResponse`](types::SiteResponse) done, 409 refused (nothing changed: a site still holding leases, promoting an active site, ...) or already in progress, 404 unknown site or action, 400 a bad body, 202 still under way at the timeout |
//! | `GET /v1/events[?since=SEQ][&limit=N]` | [`EventsDoc`](types::EventsDoc), oldest first (default: the last 100; at most 10000) |
//! | `GET /v1/events?follow=true[&since=SEQ]` | `text/event-stream`: the same backlog, then each new event (`id:` seq, `event: event`, `data:` the event's JSON); honours `Last-Event-ID` |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text): failovers by app and reason, failover duration, intents by outcome, every instance's role and epoch, and this process's controller metrics |
//!
//! Access: with a token file ([`Tokens`], `--tokens FILE`), every
//! mutation needs an `operate` token and every read a `read` one (unless
//! the file opens reads), presented as `Authorization: Bearer TOKEN`; 401
//! for a missing or unknown token, 403 for a `read` token on a mutation
//! (see the `auth` module). Without one the API is open to all. With a
//! certificate ([`ApiState::with_tls`]) it serves HTTPS only; [`Tls`]
//! reloads its files while it runs.
//!
//! Store failures: without quorum, reads answer 503 "coordination store
//! unavailable: ..." and writes 503 "read-only: the coordination store has
//! no quorum"; other store failures answer 500.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // the API keeps time: request timeouts, intent ids

mod auth;
mod error;
mod events;
mod fence;
mod handlers;
mod maintenance;
mod metrics;
mod outcome;
mod params;
mod sites;
mod status;
mod switchover;
mod tls;
mod ui;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::routing::{get, post};
use tandem_core::topology::Topology;
use tandem_store::Store;
use tandem_telemetry::cluster::ClusterMetrics;
use tandem_telemetry::controller::ControllerMetrics;
use tokio_util::sync::CancellationToken;

pub use auth::{Access, Caller, Reads, Role, Tokens, hash_token};
pub use events::{DEFAULT_LIMIT, KEEP_ALIVE_INTERVAL, MAX_LIMIT};
pub use status::status_document;
pub use switchover::{DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS};
/// The documents the API answers with and the requests it accepts: the
/// `tandem-wire` crate, which clients share without this server.
pub use tandem_wire as types;
pub use tandem_wire::MaintenanceRequest;
pub use tls::{HANDSHAKE_TIMEOUT, Tls, TlsFiles, read_certs};

/// What every handler shares: the store, the topology, and the server's
/// shutdown signal (which ends event streams and switchover waits).
#[derive(Clone)]
pub struct ApiState {
    /// The coordination store.
    pub store: Arc<dyn Store>,
    /// The topology the cluster runs.
    pub topology: Arc<Topology>,
    /// Cancelled when [`serve`]'s shutdown future resolves.
    shutdown: CancellationToken,
    /// Makes intent ids unique within this process.
    intent_counter: Arc<AtomicU64>,
    /// The last status document read, with its wall-clock time (ms): what
    /// `GET /v1/status` answers, marked stale, while the store has no
    /// quorum.
    pub(crate) last_status: Arc<std::sync::Mutex<Option<(types::StatusDoc, u64)>>>,
    /// What `GET /metrics` counts: events of the log since the API started,
    /// and the requests it answered.
    pub(crate) metrics: Arc<ClusterMetrics>,
    /// The metrics of this process's controller candidates, if it runs any.
    pub(crate) controller: Option<Arc<ControllerMetrics>>,
    /// The tokens requests need (none: the API is open to all).
    pub(crate) access: Access,
    /// HTTPS: the certificate and key (none: plain HTTP).
    pub(crate) tls: Option<Tls>,
}

impl ApiState {
    /// State for serving `topology` from `store`.
    pub fn new(store: Arc<dyn Store>, topology: Arc<Topology>) -> ApiState {
        ApiState {
            store,
            topology,
            shutdown: CancellationToken::new(),
            intent_counter: Arc::new(AtomicU64::new(0)),
            last_status: Arc::new(std::sync::Mutex::new(None)),
            metrics: Arc::new(ClusterMetrics::new()),
            controller: None,
            access: Access::default(),
            tls: None,
        }
    }

    /// Serves HTTPS with `tls` (keep a clone to reload its files).
    pub fn with_tls(mut self, tls: Tls) -> ApiState {
        self.tls = Some(tls);
        self
    }

    /// Requires tokens: `access` says which (see [`Tokens`]). Keep a clone
    /// of `access` to replace them while the API runs.
    pub fn with_access(mut self, access: Access) -> ApiState {
        self.access = access;
        self
    }

    /// Also serves the metrics of the controller candidates running in
    /// this process (`tandem up`, `tandem agent --api`).
    pub fn with_controller_metrics(mut self, metrics: Arc<ControllerMetrics>) -> ApiState {
        self.controller = Some(metrics);
        self
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store.backend())
            .field("topology", &self.topology.name)
            .finish_non_exhaustive()
    }
}

/// The API's routes, ready to serve (or to embed in a larger router).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{*file}", get(ui::asset))
        .route("/v1/client.js", get(ui::site_js))
        .route("/healthz", get(handlers::healthz))
        .route("/v1/status", get(handlers::status))
        .route("/v1/apps/{app}", get(handlers::app))
        .route("/v1/apps/{app}/primary", get(handlers::primary))
        .route("/v1/apps/{app}/switchover", post(switchover::switchover))
        .route("/v1/apps/{app}/maintenance", post(maintenance::maintenance))
        .route("/v1/apps/{app}/members", get(handlers::members))
        .route("/v1/hosts/{host}/fence", post(fence::fence))
        .route("/v1/sites/{site}/{action}", post(sites::site_action))
        .route("/v1/links", get(handlers::links))
        .route("/v1/events", get(events::events))
        .route("/metrics", get(metrics::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves. The caller binds
/// (tests bind port 0). On shutdown the API stops accepting connections,
/// ends event streams, answers waiting switchovers with where they stand
/// (202), and returns once every connection is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    tokio::spawn(metrics::count_events(state.clone()));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, topology = %state.topology.name, store = state.store.backend(), "API listening");
    }
    match state.access.current() {
        Some(tokens) => tracing::info!(tokens = %tokens.summary(), "API requires tokens"),
        None => tracing::warn!(
            "the API needs no token: anyone who reaches it can steer the cluster (give --tokens FILE)"
        ),
    }
    let tls = state.tls.clone();
    let app = router(state);
    let shutdown = async move {
        shutdown.await;
        token.cancel();
    };
    match tls {
        Some(tls) => {
            tracing::info!(cert = %tls.files().cert.display(), "API serves HTTPS");
            let listener = tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    tracing::info!("API stopped");
    Ok(())
}
