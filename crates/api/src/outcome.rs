//! Waiting for the controller to resolve a recorded request (a fence
//! request, a site action): the request's key is read until its outcome
//! is there, the request was replaced, or the deadline passed.

use std::time::Duration;

use serde::de::DeserializeOwned;
use tandem_core::model::{FenceIntent, IntentState, SiteIntent};
use tokio::time::Instant;

use crate::ApiState;
use crate::error::ApiError;

/// How often the request's key is read while waiting for the outcome.
const POLL: Duration = Duration::from_millis(20);

/// A request the controller resolves, as recorded in the store.
pub(crate) trait Recorded: DeserializeOwned {
    /// Its id.
    fn id(&self) -> &str;
    /// Where it stands.
    fn outcome(&self) -> &IntentState;
}

impl Recorded for FenceIntent {
    fn id(&self) -> &str {
        &self.id
    }
    fn outcome(&self) -> &IntentState {
        &self.outcome
    }
}

impl Recorded for SiteIntent {
    fn id(&self) -> &str {
        &self.id
    }
    fn outcome(&self) -> &IntentState {
        &self.outcome
    }
}

/// Waits until the request `id` recorded at `key` is resolved: `Ok(Some)`
/// with what the controller did, `Ok(None)` at `deadline` (or shutdown),
/// a 409 carrying the id when refused, a 409 when `what` (e.g. "fence
/// request 12 for host h1") was replaced meanwhile.
pub(crate) async fn await_outcome<T: Recorded>(
    state: &ApiState,
    key: &str,
    id: &str,
    what: &str,
    deadline: Instant,
) -> Result<Option<String>, ApiError> {
    loop {
        if let Ok(Some(kv)) = state.store.get(key).await
            && let Ok(now) = serde_json::from_slice::<T>(&kv.value)
        {
            if now.id() != id {
                return Err(ApiError::conflict(format!(
                    "{what} was replaced before the controller resolved it"
                )));
            }
            match now.outcome() {
                IntentState::Done { message } => return Ok(Some(message.clone())),
                IntentState::Refused { reason } => {
                    let mut e = ApiError::conflict(reason.clone());
                    e.doc.intent = Some(id.to_owned());
                    return Err(e);
                }
                IntentState::Pending | IntentState::Running => {}
            }
        }
        if Instant::now() >= deadline || state.shutdown.is_cancelled() {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}
