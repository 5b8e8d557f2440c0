//! Webhooks: the events of the log POSTed to the receivers the topology
//! names (`[[webhooks]]`), so that someone outside learns a failover
//! happened.
//!
//! # Who delivers
//!
//! The elected controller, in tasks of their own beside its decision loop
//! ([`start`] is called by the leader once it has read the store; the tasks
//! end when it stops leading). The controller is already the one process
//! that writes the event log, and the election makes it exactly one at a
//! time; a per-agent sender would deliver every event once per host.
//!
//! Each webhook keeps a **cursor** in the store, `webhooks/{name}`: the seq
//! of the last event it is done with (delivered, or given up). A cursor is
//! written only by the controller that holds the controller key (a
//! transaction guarded by the key's revision, like every write of the
//! leader), so a deposed controller moves nothing. A new controller resumes
//! after the cursor: nothing is replayed from the start, nothing dropped.
//! A webhook seen for the first time (no cursor) starts after the newest
//! event when its first controller took office: adding a webhook to a
//! running platform does not send it the history.
//!
//! Delivery is at least once: an event whose delivery was under way when
//! the controller changed is sent again by the next one, with the same
//! `X-Tandem-Delivery` id (derived from the topology, the webhook and the
//! event), so a receiver can drop the repeat.
//!
//! # Never in the way
//!
//! Each webhook has its own task and reads the log from the store one event
//! at a time, so its memory is bounded whatever the backlog: a receiver that
//! is down or slow only delays its own webhook, never the controller or
//! another webhook. Each attempt has the webhook's `timeout`; after
//! `retries` more attempts, waiting [`Webhook::backoff`] between them, the
//! delivery is given up. A given-up delivery is written to the log as a
//! `webhook` event (reason `delivery_failed`, with the event's app,
//! instance and epoch), through the leader (a bounded channel: the
//! webhook's task waits, the leader does not), and counted in
//! `tandem_webhook_deliveries_total{webhook,outcome="failed"}`. Events of
//! kind `webhook` are never delivered, so a failing receiver cannot feed a
//! loop. Events trimmed from the log before a webhook reached them are
//! reported as one `webhook` event (reason `events_skipped`).
//!
//! # What is sent
//!
//! `POST url` with `Content-Type: application/json` and the event as
//! `GET /v1/events` shows it, plus `"topology"` (its name). Headers:
//! `X-Tandem-Event: <kind>`, `X-Tandem-Delivery: <id>` and, when the
//! webhook has a `secret_file`, `X-Tandem-Signature:
//! t=<unix ms>,sha256=<hex HMAC-SHA256(secret, "<t>.<body>")>` (see
//! [`signature`]). Any 2xx answer is a success.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_core::model::{Event, EventDraft, EventKind, keys};
use tandem_core::topology::{Topology, Webhook};
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{Compare, EventKind as StoreEventKind, Op, Revision, Store, Txn};
use tandem_telemetry::controller::{ControllerEvent, ControllerMetrics};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most events waiting for the leader to write them (given-up deliveries).
pub const EVENT_QUEUE: usize = 64;
/// Pause before reading the store again after it failed.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The most characters of a receiver's error kept in a log entry.
const MAX_ERROR_CHARS: usize = 200;

/// The secret of each webhook that has a `secret_file`, read at start.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, Arc<[u8]>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// The secret of webhook `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|s| &s[..])
    }
}

/// Reads the secret file of every webhook of `topology` that has one. A
/// file that is missing, unreadable, empty, not a regular file, or readable
/// by its group or by others is an error that names the webhook and the
/// file. The secret is the file's content without its trailing newline.
///
/// `https://` URLs are verified against the system's CAs (the platform's
/// verifier, rustls).
pub fn load_secrets(topology: &Topology) -> anyhow::Result<Secrets> {
    let mut out = BTreeMap::new();
    for w in &topology.webhooks {
        let Some(path) = &w.secret_file else {
            continue;
        };
        let what = || format!("webhook {:?}: secret_file {path}", w.name);
        let meta =
            std::fs::metadata(path).with_context(|| format!("{}: cannot read it", what()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file", what());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{}: readable by its group or others (mode {mode:04o}); make it private: chmod 600 {path}",
                what()
            );
        }
        let mut secret =
            std::fs::read(path).with_context(|| format!("{}: cannot read it", what()))?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.is_empty() {
            bail!("{}: the file is empty", what());
        }
        out.insert(w.name.clone(), Arc::from(secret));
    }
    Ok(Secrets(out))
}

/// `sha256=<hex>`: the HMAC-SHA256, keyed with `secret`, of `"<t_ms>.<body>"`
/// — the part of `X-Tandem-Signature` after `t=<t_ms>,`. A receiver
/// recomputes it over the raw body it got and the `t` of the header,
/// compares in constant time, and rejects a `t` too far from its clock.
pub fn signature(secret: &[u8], t_ms: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(t_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// The `X-Tandem-Delivery` id of `event` for webhook `name` of topology
/// `topology`: the same for every attempt and every controller.
pub fn delivery_id(topology: &str, name: &str, event: &Event) -> String {
    let mut h = Sha256::new();
    for part in [
        topology,
        name,
        &event.seq.to_string(),
        &event.t_ms.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The JSON body of a delivery: the event as `GET /v1/events` shows it,
/// plus the topology's name.
#[derive(Serialize)]
struct Payload<'a> {
    topology: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

/// A webhook's cursor, stored at `webhooks/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last event seq the webhook is done with.
    pub seq: u64,
}

/// What the webhook tasks of one leader share.
pub struct Context {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The topology (its webhooks and its name).
    pub topology: Arc<Topology>,
    /// The webhooks' secrets.
    pub secrets: Secrets,
    /// The revision of the leader's controller key: every cursor write is
    /// guarded by it.
    pub key_revision: Revision,
    /// The newest event seq when the leader took office: where a webhook
    /// without a cursor starts.
    pub newest_seq: u64,
    /// Where given-up deliveries go, for the leader to write to the log.
    pub events: mpsc::Sender<EventDraft>,
    /// The controller's metrics.
    pub metrics: Arc<ControllerMetrics>,
}

/// Starts one task per webhook of `ctx.topology` (none if it has none),
/// and one that follows the newest event seq. They end when `cancel`
/// fires (the leader stops leading).
pub fn start(ctx: Context, cancel: CancellationToken) {
    if ctx.topology.webhooks.is_empty() {
        return;
    }
    let (newest_tx, newest_rx) = watch::channel(None);
    tokio::spawn(follow_newest(ctx.store.clone(), newest_tx, cancel.clone()));
    let ctx = Arc::new(ctx);
    for (i, w) in ctx.topology.webhooks.iter().enumerate() {
        if w.secret_file.is_some() && ctx.secrets.get(&w.name).is_none() {
            warn!(
                webhook = %w.name,
                "webhook not delivered: its secret file was not read at start (restart to read it)"
            );
            continue;
        }
        let worker = Worker {
            ctx: ctx.clone(),
            index: i,
            newest: newest_rx.clone(),
            cancel: cancel.clone(),
        };
        tokio::spawn(worker.run());
    }
}

/// Keeps `newest` at the highest event seq in the store.
async fn follow_newest(
    store: Arc<dyn Store>,
    newest: watch::Sender<Option<u64>>,
    cancel: CancellationToken,
) {
    let mut log = follow(store, keys::EVENTS, Start::Listing, AfterBreak::Relist)
        .retry_delay(RETRY_DELAY, Duration::from_secs(2));
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            item = log.next() => item,
        };
        let seen = match item {
            FollowItem::Snapshot(listing) => listing
                .kvs
                .iter()
                .filter_map(|kv| keys::parse_event(&kv.key))
                .max()
                .unwrap_or(0),
            FollowItem::Change(ev) if ev.kind == StoreEventKind::Put => {
                let Some(seq) = keys::parse_event(&ev.kv.key) else {
                    continue;
                };
                seq
            }
            FollowItem::Change(_) => continue,
            FollowItem::Interrupted(e) => {
                debug!(error = %e, "webhooks: the event watch broke; resuming");
                continue;
            }
        };
        newest.send_if_modified(|n| {
            let higher = n.is_none_or(|n| seen > n);
            if higher {
                *n = Some(seen);
            }
            higher
        });
    }
}

/// How one delivery ended.
enum Outcome {
    Delivered,
    GaveUp {
        attempts: u32,
        error: String,
    },
    /// The leader stopped leading meanwhile.
    Cancelled,
}

/// The task of one webhook.
struct Worker {
    ctx: Arc<Context>,
    index: usize,
    newest: watch::Receiver<Option<u64>>,
    cancel: CancellationToken,
}

impl Worker {
    fn hook(&self) -> &Webhook {
        &self.ctx.topology.webhooks[self.index]
    }

    async fn run(mut self) {
        let name = self.hook().name.clone();
        let client = match reqwest::Client::builder()
            .timeout(self.hook().timeout)
            .connect_timeout(self.hook().timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(webhook = %name, error = %e, "webhook not delivered: cannot set up its HTTP client");
                return;
            }
        };
        let Some(mut cursor) = self.cursor().await else {
            return;
        };
        debug!(webhook = %name, cursor, "webhook follows the event log");
        loop {
            let seq = cursor + 1;
            let newest = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.newest.wait_for(|n| n.is_some_and(|n| n >= seq)) => match r {
                    Ok(n) => n.unwrap_or(seq),
                    Err(_) => return,
                },
            };
            let key = keys::event(seq);
            let got = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.ctx.store.get(&key) => r,
            };
            let kv = match got {
                Ok(Some(kv)) => kv,
                Ok(None) => {
                    // Trimmed (or never written): go on from the oldest
                    // event after the cursor.
                    let Some(next) = self.skip_gap(cursor, newest).await else {
                        return;
                    };
                    cursor = next;
                    if !self.save(cursor).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    debug!(webhook = %name, error = %e, "webhook cannot read the event log; retrying");
                    if !self.pause(RETRY_DELAY).await {
                        return;
                    }
                    continue;
                }
            };
            let event = match serde_json::from_slice::<Event>(&kv.value) {
                Ok(ev) => ev,
                Err(e) => {
                    warn!(webhook = %name, seq, error = %e, "webhook skips an unreadable event");
                    cursor = seq;
                    continue;
                }
            };
            if !self.hook().wants(event.kind) {
                // Not saved: passing over it again after a controller change
                // costs one read.
                cursor = seq;
                continue;
            }
            match self.deliver(&client, &event).await {
                Outcome::Cancelled => return,
                Outcome::Delivered => {}
                Outcome::GaveUp { attempts, error } => {
                    let message = format!(
                        "webhook {name} gave up delivering event {seq} ({} {}) after {attempts} attempt(s): {error}",
                        event.kind,
                        subject(&event),
                    );
                    let draft = EventDraft {
                        kind: EventKind::Webhook,
                        app: event.app.clone(),
                        instance: event.instance.clone(),
                        epoch: event.epoch,
                        message,
                        reason: Some("delivery_failed"),
                    };
                    if !self.report(draft).await {
                        return;
                    }
                }
            }
            cursor = seq;
            if !self.save(cursor).await {
                return;
            }
        }
    }

    /// The stored cursor, or (first time) the newest seq when the leader
    /// took office, stored. None if cancelled or deposed.
    async fn cursor(&self) -> Option<u64> {
        let key = keys::webhook(&self.hook().name);
        loop {
            let got = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.ctx.store.get(&key) => r,
            };
            match got {
                Ok(Some(kv)) => match serde_json::from_slice::<Cursor>(&kv.value) {
                    Ok(c) => return Some(c.seq),
                    Err(e) => {
                        warn!(key, error = %e, "unreadable webhook cursor; starting after the newest event");
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    debug!(key, error = %e, "cannot read the webhook cursor; retrying");
                    if !self.pause(RETRY_DELAY).await {
                        return None;
                    }
                    continue;
                }
            }
            let start = self.ctx.newest_seq;
            return self.save(start).await.then_some(start);
        }
    }

    /// Stores the cursor, guarded by the controller key. False if the
    /// leader was deposed (or cancelled).
    async fn save(&self, seq: u64) -> bool {
        let Ok(value) = serde_json::to_vec(&Cursor { seq }) else {
            return false;
        };
        loop {
            let txn = Txn {
                compares: vec![Compare::ModRevision(
                    keys::CONTROLLER.into(),
                    self.ctx.key_revision,
                )],
                success: vec![Op::put(keys::webhook(&self.hook().name), value.clone())],
                failure: vec![],
            };
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = self.ctx.store.txn(txn) => r,
            };
            match r {
                Ok(r) if r.succeeded => return true,
                Ok(_) => {
                    debug!(webhook = %self.hook().name, "no longer the controller: webhook stops");
                    return false;
                }
                Err(e) => {
                    debug!(error = %e, "cannot store the webhook cursor; retrying");
                    if !self.pause(RETRY_DELAY).await {
                        return false;
                    }
                }
            }
        }
    }

    /// After event `cursor + 1` was found missing while `newest` exists:
    /// the seq just before the oldest event after `cursor`, reporting the
    /// events skipped. None if cancelled.
    async fn skip_gap(&self, cursor: u64, newest: u64) -> Option<u64> {
        let listing = loop {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.ctx.store.list(keys::EVENTS) => r,
            };
            match r {
                Ok(l) => break l,
                Err(e) => {
                    debug!(error = %e, "cannot list the event log; retrying");
                    if !self.pause(RETRY_DELAY).await {
                        return None;
                    }
                }
            }
        };
        let oldest = listing
            .kvs
            .iter()
            .filter_map(|kv| keys::parse_event(&kv.key))
            .filter(|s| *s > cursor)
            .min()
            .unwrap_or(newest + 1);
        let skipped = oldest - cursor - 1;
        let name = &self.hook().name;
        let message = format!(
            "webhook {name} skipped {skipped} event(s) ({} to {}): trimmed from the log before they could be delivered",
            cursor + 1,
            oldest - 1
        );
        warn!(webhook = %name, "{message}");
        let draft = EventDraft {
            kind: EventKind::Webhook,
            app: None,
            instance: None,
            epoch: None,
            message,
            reason: Some("events_skipped"),
        };
        self.report(draft).await.then_some(oldest - 1)
    }

    /// Hands a log entry to the leader. False if cancelled or the leader
    /// is gone.
    async fn report(&self, draft: EventDraft) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            r = self.ctx.events.send(draft) => r.is_ok(),
        }
    }

    /// Sleeps `d`; false if cancelled meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Sends `event`, retrying with backoff; counts and times the delivery.
    async fn deliver(&self, client: &reqwest::Client, event: &Event) -> Outcome {
        let hook = self.hook();
        let topology = &self.ctx.topology.name;
        let body = match serde_json::to_vec(&Payload { topology, event }) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::GaveUp {
                    attempts: 0,
                    error: format!("cannot encode the event: {e}"),
                };
            }
        };
        let id = delivery_id(topology, &hook.name, event);
        let secret = self.ctx.secrets.get(&hook.name);
        let started = Instant::now();
        let mut error = String::new();
        let mut attempts = 0;
        for attempt in 0..=hook.retries {
            if attempt > 0 && !self.pause(Webhook::backoff(attempt)).await {
                return Outcome::Cancelled;
            }
            attempts += 1;
            let mut request = client
                .post(&hook.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Tandem-Event", event.kind.as_str())
                .header("X-Tandem-Delivery", &id)
                .body(body.clone());
            if let Some(secret) = secret {
                let t = now_ms();
                request = request.header(
                    "X-Tandem-Signature",
                    format!("t={t},{}", signature(secret, t, &body)),
                );
            }
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return Outcome::Cancelled,
                r = request.send() => r,
            };
            error = match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.ctx.metrics.emit(ControllerEvent::WebhookDelivery {
                        webhook: &hook.name,
                        seq: event.seq,
                        outcome: "delivered",
                        attempts,
                        latency: started.elapsed(),
                    });
                    return Outcome::Delivered;
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => describe(&e),
            };
            debug!(webhook = %hook.name, seq = event.seq, attempt = attempts, error = %error, "webhook attempt failed");
        }
        self.ctx.metrics.emit(ControllerEvent::WebhookDelivery {
            webhook: &hook.name,
            seq: event.seq,
            outcome: "failed",
            attempts,
            latency: started.elapsed(),
        });
        Outcome::GaveUp { attempts, error }
    }
}

/// `app/instance`, `app`, or nothing: what an event is about.
fn subject(ev: &Event) -> String {
    match (&ev.app, &ev.instance) {
        (Some(a), Some(i)) => format!("of {a}/{i}"),
        (Some(a), None) => format!("of {a}"),
        _ => String::new(),
    }
}

/// A request error in a few words, with its causes (bounded).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s.chars().take(MAX_ERROR_CHARS).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Ours signs "<t>.<body>".
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(b"42.{}");
        let expected = format!("sha256={}", hex(&mac.finalize().into_bytes()));
        assert_eq!(signature(b"k", 42, b"{}"), expected);
        assert_ne!(signature(b"other", 42, b"{}"), expected);
        assert_ne!(signature(b"k", 43, b"{}"), expected);
    }

    #[test]
    fn delivery_ids_are_stable_per_event_and_webhook() {
        let ev = |seq| Event {
            seq,
            t_ms: 1000,
            kind: EventKind::Promoted,
            app: None,
            instance: None,
            epoch: None,
            message: String::new(),
            reason: None,
        };
        let a = delivery_id("t", "w", &ev(1));
        assert_eq!(a, delivery_id("t", "w", &ev(1)));
        assert_eq!(a.len(), 32);
        assert_ne!(a, delivery_id("t", "w", &ev(2)));
        assert_ne!(a, delivery_id("t", "v", &ev(1)));
    }

    #[test]
    fn secret_files_must_exist_be_private_and_not_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let topology = |p: &std::path::Path| {
            let text = format!(
                "[[webhooks]]\nname = \"w\"\nurl = \"http://127.0.0.1:1/\"\nsecret_file = {:?}\n\
                 [[sites]]\nname = \"d\"\n[[hosts]]\nname = \"h\"\nsite = \"d\"\naddress = \"127.0.0.1\"\n",
                p.display().to_string()
            );
            tandem_core::topology::parse("t.toml", &text).unwrap()
        };
        let t = topology(&path);
        let err = load_secrets(&t).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read it"), "{err:#}");

        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_secrets(&t).unwrap_err();
        assert!(
            format!("{err:#}").contains("readable by its group or others (mode 0644)"),
            "{err:#}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secrets = load_secrets(&t).unwrap();
        assert_eq!(secrets.get("w"), Some(&b"s3cret"[..]));
        assert!(!format!("{secrets:?}").contains("s3cret"));

        std::fs::write(&path, "\n").unwrap();
        let err = load_secrets(&t).unwrap_err();
        assert!(format!("{err:#}").contains("empty"), "{err:#}");
    }
}
