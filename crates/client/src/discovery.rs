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
use tandem_wire::{Event, EventKind, PrimaryDoc};

use crate::{ApiClient, ClientError, ClientOptions, PrimaryState};

/// Longest wait between two reconnections of the event stream.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Follows where an app's primary is, through one API or several (most
/// preferred first: when one is unreachable, the next is used).
#[derive(Debug, Clone)]
pub struct Discovery {
    clients: Vec<ApiClient>,
}

/// An item of [`Discovery::watch`]: the app's primary now (`None`: no
/// primary at the moment), or a transient error (the watch goes on).
pub type Update = Result<Option<PrimaryDoc>, ClientError>;

/// An item of [`Discovery::watch_state`]: where the app's primary stands
/// now (serving, draining before a planned switchover, none), or a
/// transient error (the watch goes on).
pub type StateUpdate = Result<PrimaryState, ClientError>;

fn concerns(event: &Event, app: &str) -> bool {
    event.app.as_deref() == Some(app)
        && matches!(
            event.kind,
            EventKind::Promoted
                | EventKind::Serving
                | EventKind::PrimaryFailed
                | EventKind::Demoted
                | EventKind::Maintenance
                | EventKind::Site
        )
}

impl Discovery {
    /// Discovery through the API at `client`.
    pub fn new(client: ApiClient) -> Discovery {
        Discovery {
            clients: vec![client],
        }
    }

    /// Discovery through several APIs, most preferred first.
    pub fn with_apis(clients: Vec<ApiClient>) -> Discovery {
        Discovery { clients }
    }

    /// Discovery for a `tandem://` endpoint (see [`crate::endpoint`]);
    /// returns it with the app to watch.
    pub fn from_url(url: &str) -> Result<(Discovery, String), ClientError> {
        Discovery::from_url_with(url, &ClientOptions::default())
    }

    /// As [`Discovery::from_url`], with a token (and the other
    /// [`ClientOptions`]) for every API of the endpoint.
    pub fn from_url_with(
        url: &str,
        options: &ClientOptions,
    ) -> Result<(Discovery, String), ClientError> {
        let parsed =
            crate::endpoint::parse(url).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let clients = parsed
            .apis
            .iter()
            .map(|a| ApiClient::with_options(a, options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Discovery { clients }, parsed.app))
    }

    /// The app's primary now, then every change of it, as it happens.
    /// Consecutive equal answers are not repeated. A primary draining
    /// before a planned switchover is `None` (it takes no new work).
    pub fn watch(&self, app: &str) -> impl Stream<Item = Update> + Send + 'static {
        let mut last: Option<Option<PrimaryDoc>> = None;
        self.watch_state(app).filter_map(move |update| {
            let item = match update {
                Err(e) => Some(Err(e)),
                Ok(state) => {
                    let now = state.serving();
                    if last.as_ref() == Some(&now) {
                        None
                    } else {
                        last = Some(now.clone());
                        Some(Ok(now))
                    }
                }
            };
            futures::future::ready(item)
        })
    }

    /// As [`Discovery::watch`], telling a primary that drains before a
    /// planned switchover from none at all (a proxy keeps the connections
    /// already open to a draining primary, and sends it no new one).
    pub fn watch_state(&self, app: &str) -> impl Stream<Item = StateUpdate> + Send + 'static {
        async_stream(self.clients.clone(), app.to_string())
    }
}

struct State {
    clients: Vec<ApiClient>,
    current: usize,
    client: ApiClient,
    app: String,
    last_seq: Option<u64>,
    last: Option<PrimaryState>,
    events: Option<crate::EventStream>,
    need_lookup: bool,
    delay: Duration,
}

fn async_stream(
    clients: Vec<ApiClient>,
    app: String,
) -> impl Stream<Item = StateUpdate> + Send + 'static {
    let client = clients[0].clone();
    let state = State {
        clients,
        current: 0,
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
                            s.next_api();
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
                match s.client.primary_state(&s.app).await {
                    Ok(now) => {
                        s.delay = Duration::from_millis(50);
                        if s.last.as_ref() != Some(&now) {
                            s.last = Some(now.clone());
                            return Some((Ok(now), s));
                        }
                    }
                    Err(e) => {
                        s.need_lookup = true;
                        s.next_api();
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
                    s.next_api();
                    tokio::time::sleep(s.delay).await;
                    s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                    return Some((Err(e), s));
                }
                None => {
                    s.next_api();
                    tokio::time::sleep(s.delay).await;
                    s.delay = (s.delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    })
}

impl State {
    /// Moves on to the next API (wrapping around), starting a new event
    /// stream there. Event sequence numbers are the store's, shared by
    /// every API of one cluster, so resuming after `last_seq` holds.
    fn next_api(&mut self) {
        if self.clients.len() > 1 {
            self.current = (self.current + 1) % self.clients.len();
            self.client = self.clients[self.current].clone();
        }
        self.events = None;
        self.need_lookup = true;
    }
}
