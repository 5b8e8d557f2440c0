//! `POST /v1/sites/{site}/{fail|promote|restore}`: an operator's request
//! about a site, recorded at `site-intents/{site}` and resolved by the
//! controller ([`tandem_core::sites::resolve`]). The answer waits for the
//! outcome like a switchover's: 200 done, 409 refused (nothing changed),
//! 202 still pending at the timeout.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tandem_core::model::{IntentState, SiteAction, SiteIntent, keys};
use tandem_store::{Compare, Op, Txn};
use tokio::time::Instant;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::Params;
use crate::switchover::{DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, new_intent_id};
use crate::types::{SiteRequest, SiteResponse, SwitchoverProgress};

/// The handler.
pub(crate) async fn site_action(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Validate everything before writing anything.
    let Path((site, action)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params = Params::parse(query, &["timeout_ms"])?;
    let timeout_ms = params
        .number("timeout_ms", 0, MAX_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let topology = &state.topology;
    let site_names: Vec<&str> = topology.sites.iter().map(|s| s.name.as_str()).collect();
    if !site_names.contains(&site.as_str()) {
        return Err(ApiError::not_found(format!(
            "no site named {site:?} in topology {:?} (its sites: {})",
            topology.name,
            site_names.join(", ")
        )));
    }
    let Some(action) = SiteAction::parse(&action) else {
        let known: Vec<&str> = SiteAction::ALL.iter().map(|a| a.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "no site action {action:?} (actions: {})",
            known.join(", ")
        )));
    };
    let request = parse_body(&body)?;
    let forced = forced(&request, action, &site, &site_names)?;
    let key = keys::site_intent(&site);
    let intent = SiteIntent {
        id: new_intent_id(&state),
        site: site.clone(),
        action,
        forced,
        outcome: IntentState::Pending,
        by: crate::switchover::by(caller),
    };
    let value = serde_json::to_vec(&intent)
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
    let current = state.store.get(&key).await.map_err(ApiError::write)?;
    let expected = match &current {
        None => 0,
        Some(kv) => {
            if let Ok(existing) = serde_json::from_slice::<SiteIntent>(&kv.value)
                && matches!(
                    existing.outcome,
                    IntentState::Pending | IntentState::Running
                )
            {
                return Err(ApiError::conflict(format!(
                    "a request about site {site} is already in progress ({} {site}, intent {})",
                    existing.action, existing.id
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
            "another request about site {site} was recorded at the same time"
        )));
    }
    tracing::warn!(site = %site, action = %action, intent = %intent.id, "site action requested by an operator");
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let respond = |status, outcome, message| {
        (
            status,
            Json(SiteResponse {
                site: site.clone(),
                action: action.as_str().to_owned(),
                intent: intent.id.clone(),
                outcome,
                message,
            }),
        )
            .into_response()
    };
    let what = format!("request {} about site {site}", intent.id);
    Ok(
        match crate::outcome::await_outcome::<SiteIntent>(&state, &key, &intent.id, &what, deadline)
            .await?
        {
            Some(message) => respond(StatusCode::OK, SwitchoverProgress::Done, Some(message)),
            None => respond(StatusCode::ACCEPTED, SwitchoverProgress::Pending, None),
        },
    )
}

/// An empty (or blank) body asks without force.
fn parse_body(body: &[u8]) -> Result<SiteRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SiteRequest::default());
    }
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "invalid site request: {e} (expected {{\"force\": true, \"confirm\": \"SITE\"}}, {{}} or an empty body)"
        ))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    if !value.is_object() {
        return Err(invalid(&"the body is not a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| invalid(&e))
}

/// The site the operator confirmed may be treated as gone, if forced.
fn forced(
    request: &SiteRequest,
    action: SiteAction,
    site: &str,
    sites: &[&str],
) -> Result<Option<String>, ApiError> {
    match (request.force, &request.confirm) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::bad_request(
            "\"confirm\" goes with \"force\": true; without force nothing needs confirming",
        )),
        (true, _) if action == SiteAction::Restore => Err(ApiError::bad_request(
            "restore cannot be forced: a site is restored only once its hosts hold leases again",
        )),
        (true, None) => Err(ApiError::bad_request(format!(
            "\"force\" needs \"confirm\": the name of the site that may be treated as gone although its hosts hold leases ({})",
            if action == SiteAction::Fail {
                format!("\"{site}\"")
            } else {
                "the active site it replaces".to_owned()
            }
        ))),
        (true, Some(c)) if !sites.contains(&c.as_str()) => Err(ApiError::bad_request(format!(
            "\"confirm\" names no site of the topology: {c:?} (its sites: {})",
            sites.join(", ")
        ))),
        (true, Some(c)) if action == SiteAction::Fail && c != site => {
            Err(ApiError::bad_request(format!(
                "to force `fail {site}`, confirm with the same site's name, \"{site}\" (not {c:?})"
            )))
        }
        (true, Some(c)) if action == SiteAction::Promote && c == site => {
            Err(ApiError::bad_request(format!(
                "to force `promote {site}`, confirm with the name of the active site it replaces, not {site} itself"
            )))
        }
        (true, Some(c)) => Ok(Some(c.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(parse_body(b"").ok(), Some(SiteRequest::default()));
        assert_eq!(parse_body(b" {} ").ok(), Some(SiteRequest::default()));
        let forced = parse_body(br#"{"force": true, "confirm": "dc1"}"#).ok();
        assert_eq!(
            forced,
            Some(SiteRequest {
                force: true,
                confirm: Some("dc1".into())
            })
        );
        for bad in [&b"[]"[..], b"{\"forse\": true}", b"{\"force\": 1}", b"nope"] {
            let e = parse_body(bad).expect_err("bad body");
            assert!(
                e.doc.error.contains("invalid site request"),
                "{}",
                e.doc.error
            );
        }
    }

    #[test]
    fn force_needs_the_right_confirmation() {
        let sites = ["dc1", "dc2"];
        let req = |force, confirm: Option<&str>| SiteRequest {
            force,
            confirm: confirm.map(str::to_owned),
        };
        let f = |r: &SiteRequest, a, s| forced(r, a, s, &sites);
        assert_eq!(
            f(&req(false, None), SiteAction::Fail, "dc1").ok(),
            Some(None)
        );
        assert_eq!(
            f(&req(true, Some("dc1")), SiteAction::Fail, "dc1").ok(),
            Some(Some("dc1".into()))
        );
        assert_eq!(
            f(&req(true, Some("dc1")), SiteAction::Promote, "dc2").ok(),
            Some(Some("dc1".into()))
        );
        for (r, a, s, says) in [
            (
                req(true, None),
                SiteAction::Fail,
                "dc1",
                "needs \"confirm\"",
            ),
            (
                req(false, Some("dc1")),
                SiteAction::Fail,
                "dc1",
                "goes with",
            ),
            (
                req(true, Some("dc2")),
                SiteAction::Fail,
                "dc1",
                "same site's name",
            ),
            (
                req(true, Some("dc3")),
                SiteAction::Fail,
                "dc1",
                "names no site",
            ),
            (
                req(true, Some("dc2")),
                SiteAction::Promote,
                "dc2",
                "not dc2 itself",
            ),
            (
                req(true, Some("dc1")),
                SiteAction::Restore,
                "dc1",
                "cannot be forced",
            ),
        ] {
            let e = f(&r, a, s).expect_err("refused");
            assert!(e.doc.error.contains(says), "{}", e.doc.error);
        }
    }
}
