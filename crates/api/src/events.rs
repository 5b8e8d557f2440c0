//! `GET /v1/events`: the event log, as a page or as a live stream
//! (server-sent events).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tandem_core::model::{Event, keys};
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EventKind, KeyValue, Revision, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::ApiState;
use crate::error::ApiError;
use crate::params::Params;
use crate::types::EventsDoc;

/// Events returned when the caller gives no `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: u64 = 10_000;
/// Interval of the keep-alive comments of a followed stream.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Events buffered per follower before the follower's watch waits.
const FOLLOW_BUFFER: usize = 256;
/// Retry delay bounds when the store cannot be watched.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The handler.
pub(crate) async fn events(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["since", "limit", "follow"])?;
    let mut since = params.number("since", 0, u64::MAX)?;
    let limit = params
        .number("limit", 1, MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT);
    let follow = params.flag("follow")?.unwrap_or(false);
    if follow && let Some(raw) = headers.get("last-event-id") {
        // A reconnecting EventSource resumes after the last event it got.
        let seq = raw
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Last-Event-ID must be an event sequence number, got {raw:?}"
                ))
            })?;
        since = Some(seq);
    }

    let listing = state
        .store
        .list(keys::EVENTS)
        .await
        .map_err(ApiError::read)?;
    let all = parse_events(&listing.kvs);
    let newest = all.last().map(|e| e.seq);
    let backlog = select_backlog(all, since, limit);
    if !follow {
        return Ok(Json(EventsDoc { events: backlog }).into_response());
    }

    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    let last_seq = match (since, newest) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    tokio::spawn(feed_follower(
        state.store.clone(),
        listing.revision + 1,
        last_seq,
        tx,
        state.shutdown.clone(),
    ));
    let stream = futures::stream::iter(backlog)
        .chain(ReceiverStream::new(rx))
        .map(|e| Ok::<_, Infallible>(sse_event(&e)))
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
        .into_response())
}

fn sse_event(event: &Event) -> sse::Event {
    let data = serde_json::to_string(event).unwrap_or_else(|e| {
        // Event holds only strings and numbers: this cannot fail.
        tracing::error!(error = %e, "cannot encode an event");
        "{}".to_owned()
    });
    sse::Event::default()
        .id(event.seq.to_string())
        .event("event")
        .data(data)
}

/// Parses event values, in sequence order; unreadable ones are logged and
/// skipped.
fn parse_events(kvs: &[KeyValue]) -> Vec<Event> {
    let mut events: Vec<Event> = kvs.iter().filter_map(parse_event).collect();
    events.sort_by_key(|e| e.seq);
    events
}

fn parse_event(kv: &KeyValue) -> Option<Event> {
    keys::parse_event(&kv.key)?;
    match serde_json::from_slice::<Event>(&kv.value) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "skipping unreadable event");
            None
        }
    }
}

/// With `since`: the first `limit` events after it. Without: the last
/// `limit` events. Oldest first either way.
fn select_backlog(events: Vec<Event>, since: Option<u64>, limit: u64) -> Vec<Event> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match since {
        Some(since) => events
            .into_iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .collect(),
        None => {
            let skip = events.len().saturating_sub(limit);
            events.into_iter().skip(skip).collect()
        }
    }
}

/// Feeds one follower: follows the event log from `from` and sends every
/// event newer than `last_seq`, in order, until the follower goes away or
/// the server shuts down. A broken watch resumes from the last revision
/// seen plus one; if that history is gone, the log is listed again.
async fn feed_follower(
    store: std::sync::Arc<dyn Store>,
    from: Revision,
    mut last_seq: Option<u64>,
    tx: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let send = |event: Event, last_seq: &mut Option<u64>| {
        let fresh = last_seq.is_none_or(|l| event.seq > l);
        if fresh {
            *last_seq = Some(event.seq);
        }
        let tx = tx.clone();
        let shutdown = shutdown.clone();
        async move {
            if !fresh {
                return true;
            }
            tokio::select! {
                r = tx.send(event) => r.is_ok(),
                _ = shutdown.cancelled() => false,
            }
        }
    };
    let mut log = follow(store, keys::EVENTS, Start::At(from), AfterBreak::Resume)
        .retry_delay(RETRY_MIN, RETRY_MAX);
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            item = log.next() => item,
        };
        let events = match item {
            FollowItem::Change(change) if change.kind == EventKind::Put => {
                parse_event(&change.kv).into_iter().collect()
            }
            FollowItem::Change(_) => continue, // the log being trimmed
            // The history to resume from is gone: the log as it is now.
            FollowItem::Snapshot(listing) => parse_events(&listing.kvs),
            FollowItem::Interrupted(e) => {
                tracing::debug!(error = %e, "event watch broke; resuming");
                continue;
            }
        };
        for event in events {
            if !send(event, &mut last_seq).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::model::EventKind as Kind;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            t_ms: 1000 + seq,
            kind: Kind::Promoted,
            app: Some("web".into()),
            instance: Some("a".into()),
            epoch: Some(seq),
            message: format!("event {seq}"),
            reason: None,
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn backlog_without_since_is_the_last_limit_events() {
        let all: Vec<_> = (1..=10).map(event).collect();
        assert_eq!(seqs(&select_backlog(all.clone(), None, 3)), [8, 9, 10]);
        assert_eq!(seqs(&select_backlog(all, None, 100)).len(), 10);
    }

    #[test]
    fn backlog_with_since_is_the_first_limit_events_after_it() {
        let all: Vec<_> = (1..=10).map(event).collect();
        assert_eq!(seqs(&select_backlog(all.clone(), Some(4), 3)), [5, 6, 7]);
        assert!(select_backlog(all.clone(), Some(10), 3).is_empty());
        assert_eq!(seqs(&select_backlog(all, Some(0), 2)), [1, 2]);
    }

    #[test]
    fn unreadable_and_foreign_keys_are_skipped() {
        let kv = |key: String, value: Vec<u8>| KeyValue {
            key,
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        };
        let good = |seq| {
            kv(
                keys::event(seq),
                serde_json::to_vec(&event(seq)).expect("json"),
            )
        };
        let kvs = vec![
            good(2),
            kv(keys::event(3), b"nope".to_vec()),
            kv(format!("{}counter", keys::EVENTS), b"7".to_vec()),
            good(1),
        ];
        assert_eq!(seqs(&parse_events(&kvs)), [1, 2]);
    }
}
