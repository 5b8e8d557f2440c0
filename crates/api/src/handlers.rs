//! The read endpoints: liveness, status, one app, an app's primary; and the
//! JSON answers for unknown paths and methods.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tandem_core::model::{AppRoles, Health, InstanceStatus, Intent, ProcessState, Role, keys};
use tandem_core::topology::App;

use crate::ApiState;
use crate::error::{ApiError, unknown_app};
use crate::params::Params;
use crate::status::{Observed, acknowledged_primary, app_document, primary_document};
use crate::types::{ErrorDoc, HealthzDoc, MemberDoc, MembersDoc, StatusDoc};

/// `GET /healthz`.
pub(crate) async fn healthz() -> Json<HealthzDoc> {
    Json(HealthzDoc {
        status: "ok".to_owned(),
    })
}

/// `GET /v1/status`.
pub(crate) async fn status(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<StatusDoc>, ApiError> {
    Params::parse(query, &[])?;
    let read = tokio::try_join!(
        state.store.list(keys::STATUS),
        state.store.list(keys::ROLES),
        state.store.list(keys::HOSTS),
        state.store.get(keys::SITES)
    );
    let cache = || state.last_status.lock().unwrap_or_else(|e| e.into_inner());
    match read {
        Ok((statuses, roles, hosts, sites)) => {
            let mut doc =
                crate::status_document(&state.topology, state.store.backend(), &statuses, &roles);
            doc.hosts = crate::status::hosts_document(&state.topology, &hosts);
            let record = crate::status::sites_record(sites.as_ref());
            doc.sites = crate::status::sites_document(&state.topology, &record, &doc.hosts);
            *cache() = Some((doc.clone(), now_ms()));
            Ok(Json(doc))
        }
        // No quorum: the last state this API saw, marked stale.
        Err(e) if e.is_unavailable() => match cache().clone() {
            Some((mut doc, at_ms)) => {
                doc.stale = true;
                doc.stale_reason = Some(format!(
                    "{e}; this is the last state read, {} ms ago: roles may have changed since",
                    now_ms().saturating_sub(at_ms)
                ));
                Ok(Json(doc))
            }
            None => Err(ApiError::read(e)),
        },
        Err(e) => Err(ApiError::read(e)),
    }
}

/// `GET /v1/links`: every link, judged for each instance of its `from` app.
pub(crate) async fn links(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<crate::types::LinksDoc>, ApiError> {
    Params::parse(query, &[])?;
    let (statuses, roles) = tokio::try_join!(
        state.store.list(keys::STATUS),
        state.store.list(keys::ROLES)
    )
    .map_err(ApiError::read)?;
    Ok(Json(crate::status::links_document(
        &state.topology,
        &statuses,
        &roles,
    )))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves the `{app}` path segment to an app of the topology.
pub(crate) fn path_app(
    state: &ApiState,
    path: Result<Path<String>, PathRejection>,
) -> Result<App, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .topology
        .app(&name)
        .cloned()
        .ok_or_else(|| unknown_app(&state.topology, &name))
}

/// `GET /v1/apps/{app}`: the app as in `/v1/status`, with `switchover` and
/// `intent` always present (`null` when none).
pub(crate) async fn app(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let app = path_app(&state, path)?;
    Params::parse(query, &[])?;
    let status_prefix = format!("{}{}/", keys::STATUS, app.name);
    let (roles_key, intent_key) = (keys::roles(&app.name), keys::intent(&app.name));
    let (statuses, roles, intent) = tokio::try_join!(
        state.store.list(&status_prefix),
        state.store.get(&roles_key),
        state.store.get(&intent_key),
    )
    .map_err(ApiError::read)?;
    let observed = Observed::from_kvs(&statuses.kvs, roles.as_slice());
    let mut doc = app_document(&state.topology, &app, &observed);
    doc.intent = intent.and_then(|kv| match serde_json::from_slice::<Intent>(&kv.value) {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable intent");
            None
        }
    });
    let mut value = serde_json::to_value(&doc)
        .map_err(|e| ApiError::internal(format!("cannot encode the app document: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        for field in ["switchover", "intent"] {
            object.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    Ok(Json(value))
}

/// `GET /v1/apps/{app}/members`: the instances that serve now — running,
/// healthy, in a serving role (primary, active, free, busy) — with their
/// addresses, for a load balancer or a client.
pub(crate) async fn members(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let app = path_app(&state, path)?;
    Params::parse(query, &[])?;
    let status_prefix = format!("{}{}/", keys::STATUS, app.name);
    let roles_key = keys::roles(&app.name);
    let (statuses, roles) = tokio::try_join!(
        state.store.list(&status_prefix),
        state.store.get(&roles_key),
    )
    .map_err(ApiError::read)?;
    let observed = Observed::from_kvs(&statuses.kvs, roles.as_slice());
    let doc = app_document(&state.topology, &app, &observed);
    let members: Vec<MemberDoc> = doc
        .instances
        .iter()
        .filter(|i| {
            i.health == Health::Healthy
                && i.process == Some(ProcessState::Running)
                && matches!(
                    i.role,
                    Role::Primary | Role::Active | Role::Free | Role::Busy
                )
        })
        .filter_map(|i| {
            let inst = app.instance(&i.id)?;
            Some(MemberDoc {
                instance: i.id.clone(),
                host: i.host.clone(),
                address: i.address.clone(),
                port: crate::status::main_port(inst),
                ports: i.ports.clone(),
                role: i.role,
                epoch: i.epoch,
            })
        })
        .collect();
    let mut response = Json(MembersDoc {
        app: app.name.clone(),
        healthy: members.len() as u32,
        min_healthy: app.min_healthy,
        members,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/apps/{app}/primary`: 200 with the acknowledged primary, else
/// 503 with the controller's reason. Never cached.
pub(crate) async fn primary(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let mut response = match primary_inner(&state, path, query).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn primary_inner(
    state: &ApiState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let app = path_app(state, path)?;
    Params::parse(query, &[])?;
    let roles_kv = state
        .store
        .get(&keys::roles(&app.name))
        .await
        .map_err(ApiError::read)?;
    let roles = match roles_kv {
        None => None,
        Some(kv) => match serde_json::from_slice::<AppRoles>(&kv.value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable role assignment");
                None
            }
        },
    };
    let holder_status = match roles.as_ref().and_then(|r| r.primary.as_ref()) {
        None => None,
        Some(grant) => {
            let kv = state
                .store
                .get(&keys::status(&app.name, &grant.instance))
                .await
                .map_err(ApiError::read)?;
            kv.and_then(|kv| serde_json::from_slice::<InstanceStatus>(&kv.value).ok())
        }
    };
    let grant = acknowledged_primary(&app, roles.as_ref(), |_| holder_status.as_ref());
    // A primary draining before a planned switchover gets no new work:
    // clients wait for the next primary, as while there is none.
    let draining = roles
        .as_ref()
        .and_then(|r| r.switchover.as_ref())
        .and_then(|sw| Some((sw, sw.drain.as_ref()?)));
    if let (Some(g), Some((sw, drain))) = (grant, draining) {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no primary for {}", app.name),
        );
        error.doc.reason = Some(format!(
            "draining: {}/{} drains for {} ms before a planned switchover to {}; ask again",
            app.name, g.instance, drain.ms, sw.to
        ));
        error.doc.draining = primary_document(&state.topology, &app, g).map(Box::new);
        return Ok(error.into_response());
    }
    if let Some(doc) = grant.and_then(|g| primary_document(&state.topology, &app, g)) {
        return Ok(Json(doc).into_response());
    }
    if let Some(ro) = roles.as_ref().and_then(|r| r.read_only.clone()) {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no primary for {}: read-only: {}", app.name, ro.reason),
        );
        error.doc.reason = roles.as_ref().map(|r| r.reason.clone());
        error.doc.read_only = Some(Box::new(ro));
        return Ok(error.into_response());
    }
    let reason = match &roles {
        None => "the controller has not assigned roles yet".to_owned(),
        Some(r) if r.reason.is_empty() => "no reason recorded".to_owned(),
        Some(r) => r.reason.clone(),
    };
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no primary for {}", app.name),
    );
    error.doc.reason = Some(reason);
    Ok(error.into_response())
}

/// Any path the API does not serve.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// A known path with a method it does not accept.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorDoc::new(format!(
            "{} does not accept {method}",
            uri.path()
        ))),
    )
        .into_response()
}
