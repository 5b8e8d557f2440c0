//! An etcd watch as a [`tandem_store::WatchStream`]: one [`WatchEvent`]
//! per etcd event, in order; the stream yields one error and ends when the
//! etcd watch breaks, or when its member leaves any other request of this
//! store unanswered, and never restarts by itself.

use std::collections::VecDeque;

use etcd_client::proto::PbEvent;
use futures::StreamExt;
use tandem_store::{EventKind, KeyValue, Revision, StoreError, WatchEvent, WatchStream};

use crate::convert::{key_string, revision};

/// etcd's event type numbers (`mvccpb.Event.EventType`).
const PUT: i32 = 0;
const DELETE: i32 = 1;

/// Converts one etcd event.
pub(crate) fn event(e: PbEvent) -> Result<WatchEvent, String> {
    let Some(kv) = e.kv else {
        return Err("an etcd watch event without a key".to_owned());
    };
    let key = key_string(kv.key);
    let mod_revision = revision(kv.mod_revision).map_err(|m| format!("event of {key:?}: {m}"))?;
    match e.r#type {
        PUT => Ok(WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                create_revision: revision(kv.create_revision)
                    .map_err(|m| format!("event of {key:?}: {m}"))?,
                mod_revision,
                version: u64::try_from(kv.version)
                    .map_err(|_| format!("event of {key:?}: negative version {}", kv.version))?,
                lease: (kv.lease != 0).then_some(kv.lease),
                key,
                value: kv.value,
            },
        }),
        DELETE => Ok(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision,
                version: 0,
                lease: None,
            },
        }),
        other => Err(format!("an etcd watch event of unknown type {other}")),
    }
}

struct State {
    stream: etcd_client::WatchStream,
    /// Events of the last response not yet handed out.
    pending: VecDeque<WatchEvent>,
    /// The revision the next event must have at least.
    next: Revision,
    /// Where a new watch would resume: the start, or the last revision
    /// handed out + 1.
    resume: Revision,
    endpoint: String,
    prefix: String,
    /// Set once the stream yielded its error: it ends next.
    ended: bool,
    /// Its member's unanswered requests ([`crate::pool::Member::silence`]);
    /// `None` once the pool is gone.
    silence: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Wraps an established etcd watch (its `created` answer already read)
/// that delivers changes from revision `start` on.
pub(crate) fn stream(
    stream: etcd_client::WatchStream,
    start: Revision,
    endpoint: String,
    prefix: String,
    silence: tokio::sync::watch::Receiver<u64>,
) -> WatchStream {
    let state = State {
        stream,
        pending: VecDeque::new(),
        next: start,
        resume: start,
        endpoint,
        prefix,
        ended: false,
        silence: Some(silence),
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        if s.ended {
            return None;
        }
        let item = next(&mut s).await;
        if item.is_err() {
            s.ended = true;
        }
        Some((item, s))
    }))
}

fn lost(s: &State, why: impl std::fmt::Display) -> StoreError {
    StoreError::WatchLost(format!(
        "watch of {:?} on {} broke: {why}; resume from the last revision seen + 1",
        s.prefix, s.endpoint
    ))
}

async fn next(s: &mut State) -> Result<WatchEvent, StoreError> {
    loop {
        if let Some(e) = s.pending.pop_front() {
            s.resume = e.revision() + 1;
            return Ok(e);
        }
        let message = loop {
            let silence = async {
                match s.silence.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = s.stream.next() => break m,
                found = silence => {
                    if found {
                        return Err(lost(s, "the member left another request unanswered (it is cut off or stopped)"));
                    }
                    s.silence = None;
                }
            }
        };
        let response = match message {
            Some(Ok(r)) => r.0,
            Some(Err(e)) => return Err(lost(s, e)),
            None => return Err(lost(s, "the stream ended")),
        };
        if response.canceled {
            if response.compact_revision > 0 {
                return Err(StoreError::Compacted {
                    requested: s.resume,
                    oldest: revision(response.compact_revision).unwrap_or_default(),
                });
            }
            let reason = if response.cancel_reason.is_empty() {
                "etcd canceled it".to_owned()
            } else {
                format!("etcd canceled it: {}", response.cancel_reason)
            };
            return Err(lost(s, reason));
        }
        for e in response.events {
            let e = event(e).map_err(|m| lost(s, m))?;
            if e.revision() < s.next {
                return Err(lost(
                    s,
                    format_args!(
                        "event at revision {} arrived after revision {}",
                        e.revision(),
                        s.next
                    ),
                ));
            }
            s.next = e.revision();
            s.pending.push_back(e);
        }
    }
}
