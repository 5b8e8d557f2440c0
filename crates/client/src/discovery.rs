//! Discovery: where an app's primary is, pushed to the client as it
//! changes — no periodic polling.
//!
//! [`Discovery::watch`] asks the API once for the app's primary, then
//! follows the event stream (server-sent events) and asks again only when
//! an event about that app's primary arrives (promoted, serving, failed,
//! demoted). A client that reconnects on every item it receives talks to
//! the new primary within the time the event takes to reach it.
//!
//! When the event stream breaks, the watcher reconnects with backoff,
//! resuming after the last event it saw, and asks for the primary again (a
//! change may have happened while it was away).

use std::time::Duration;

use futures::{Stream, StreamExt};
use tandem_api::types::{Event, EventKind, PrimaryDoc};

use crate::{ApiClient, ClientError};

/// Longest wait between two reconnections of the event stream.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Follows where an app's primary is.
#[derive(Debug, Clone)]
pub struct Discovery {
    client: ApiClient,
}

/// An item of [`Discovery::watch`]: the app's primary now (`None`: no
/// primary at the moment), or a transient error (the watch goes on).
pub type Update = Result<Option<PrimaryDoc>, ClientError>;

fn concerns(event: &Event, app: &str) -> bool {
    event.app.as_deref() == Some(app)
        && matches!(
            event.kind,
            EventKind::Promoted
                | EventKind::Serving
                | EventKind::PrimaryFailed
                | EventKind::Demoted
                | EventKind::Maintenance
        )
}

impl Discovery {
    /// Discovery through the API at `client`.
    pub fn new(client: ApiClient) -> Discovery {
        Discovery { client }
    }

    /// The app's primary now, then every change of it, as it happens.
    /// Consecutive equal answers are not repeated.
    pub fn watch(&self, app: &str) -> impl Stream<Item = Update> + Send + 'static {
        let client = self.client.clone();
        let app = app.to_string();
        async_stream(client, app)
    }
}

struct State {
    client: ApiClient,
    app: String,
    last_seq: Option<u64>,
    last: Option<Option<PrimaryDoc>>,
    events: Option<crate::EventStream>,
    need_lookup: bool,
    delay: Duration,
}

fn async_stream(client: ApiClient, app: String) -> impl Stream<Item = Update> + Send + 'static {
    let state = State {
        client,
        app,
        last_seq: None,
        last: None,
        events: None,
        need_lookup: true,
        delay: Duration::from_millis(50),
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.events.is_none() {
                // Start following before the lookup, so nothing is missed
                // between the two.
                let since = match s.last_seq {
                    Some(seq) => Some(seq),
                    None => match s.client.events(None, Some(1)).await {
                        Ok(evs) => Some(evs.last().map_or(0, |e| e.seq)),
                        Err(e) => {
                            tokio::time::sleep(s.delay).await;
                            s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                            return Some((Err(e), s));
                        }
                    },
                };
                s.last_seq = since;
                s.events = Some(s.client.follow_events(since));
                s.need_lookup = true;
            }
            if s.need_lookup {
                s.need_lookup = false;
                match s.client.primary(&s.app).await {
                    Ok(now) => {
                        s.delay = Duration::from_millis(50);
                        if s.last.as_ref() != Some(&now) {
                            s.last = Some(now.clone());
                            return Some((Ok(now), s));
                        }
                    }
                    Err(e) => {
                        s.need_lookup = true;
                        tokio::time::sleep(s.delay).await;
                        s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                        return Some((Err(e), s));
                    }
                }
            }
            let Some(events) = s.events.as_mut() else {
                continue;
            };
            match events.next().await {
                Some(Ok(event)) => {
                    s.last_seq = Some(event.seq);
                    if concerns(&event, &s.app) {
                        s.need_lookup = true;
                    }
                }
                Some(Err(e)) => {
                    s.events = None;
                    tokio::time::sleep(s.delay).await;
                    s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                    return Some((Err(e), s));
                }
                None => {
                    s.events = None;
                    tokio::time::sleep(s.delay).await;
                    s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    })
}
