//! `GET /metrics`: the cluster as Prometheus sees it.
//!
//! Counters come from the event log, followed from when the API started
//! ([`count_events`]); gauges (each instance's role and epoch, whether each
//! app has an acknowledged primary) are read from the store at each scrape.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tandem_core::mode::{Style, style};
use tandem_core::model::{AppRoles, Event, InstanceStatus, keys};
use tandem_store::EventKind;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_telemetry::cluster::{state_registry, unreachable_registry};

use crate::ApiState;

/// The handler.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let live = match read_state(&state).await {
        Some((statuses, primaries)) => state_registry(&state.topology, &statuses, &primaries),
        None => unreachable_registry(),
    };
    let mut registries = vec![state.metrics.registry(), &live];
    if let Some(c) = &state.controller {
        registries.push(c.registry());
    }
    (
        [(header::CONTENT_TYPE, tandem_telemetry::CONTENT_TYPE)],
        tandem_telemetry::encode(&registries),
    )
        .into_response()
}

type Statuses = BTreeMap<(String, String), InstanceStatus>;

/// Every instance's status, and each app's acknowledged primary's epoch
/// (`None`: no acknowledged primary) for the apps with a primary mode.
async fn read_state(state: &ApiState) -> Option<(Statuses, BTreeMap<String, Option<u64>>)> {
    let statuses = state.store.list(keys::STATUS).await.ok()?;
    let roles = state.store.list(keys::ROLES).await.ok()?;
    let statuses: Statuses = statuses
        .kvs
        .iter()
        .filter_map(|kv| {
            let (app, instance) = keys::parse_status(&kv.key)?;
            let s = serde_json::from_slice(&kv.value).ok()?;
            Some(((app.to_string(), instance.to_string()), s))
        })
        .collect();
    let roles: BTreeMap<String, AppRoles> = roles
        .kvs
        .iter()
        .filter_map(|kv| {
            let app = kv.key.strip_prefix(keys::ROLES)?;
            Some((app.to_string(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    let primaries = state
        .topology
        .apps
        .iter()
        .filter(|a| matches!(style(a.ha), Style::Hooked | Style::OnGrant))
        .map(|a| {
            let acknowledged = roles
                .get(&a.name)
                .and_then(|r| r.primary.as_ref())
                .filter(|g| {
                    statuses
                        .get(&(a.name.clone(), g.instance.clone()))
                        .is_some_and(|s| s.has_acknowledged(g))
                })
                .map(|g| g.epoch);
            (a.name.clone(), acknowledged)
        })
        .collect();
    Some((statuses, primaries))
}

/// Counts every event written to the log from now on, until the API stops.
pub(crate) async fn count_events(state: ApiState) {
    let mut events = follow(
        state.store.clone(),
        keys::EVENTS,
        Start::At(0),
        AfterBreak::Resume,
    );
    loop {
        let item = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            item = events.next() => item,
        };
        match item {
            FollowItem::Change(ev) if ev.kind == EventKind::Put => {
                if let Ok(event) = serde_json::from_slice::<Event>(&ev.kv.value) {
                    state.metrics.observe(&event);
                }
            }
            FollowItem::Change(_) | FollowItem::Snapshot(_) => {}
            FollowItem::Interrupted(e) => {
                tracing::debug!(error = %e, "event count: watch broke; resuming")
            }
        }
    }
}
