//! The API end to end over HTTP, through `tandem-client`, against an
//! embedded store that the tests fill as agents and the controller would.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem_api::{ApiState, serve};
use tandem_client::{ApiClient, ClientError, SwitchoverOutcome, SwitchoverProgress};
use tandem_core::model::{
    AppRoles, Event, EventKind, Health, InstanceStatus, Intent, IntentKind, IntentState,
    PrimaryGrant, ProcessState, Role, keys,
};
use tandem_core::topology::{HaMode, Topology};
use tandem_store::{
    EmbeddedStore, Lease, LeaseId, Listing, Revision, Store, StoreError, Txn, TxnResponse,
    WatchStream,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOPOLOGY: &str = r#"
[cluster]
name = "apitest"

[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[apps.web]
ha = "warm-standby"
command = ["demo", "--port", "{ports.http}"]

[apps.web.hook]
kind = "http"
port = "http"
path = "/tandem/role"

[[apps.web.instances]]
id = "a"
host = "local"
priority = 100
ports = { http = 18081 }

[[apps.web.instances]]
id = "b"
host = "local"
ports = { http = 18082 }

[apps.db]
ha = "none"
command = ["demo-db"]

[[apps.db.instances]]
id = "a"
host = "local"
ports = { pg = 15432 }
"#;

/// Generous bound on anything a test waits for.
const WAIT: Duration = Duration::from_secs(10);

fn topology() -> Arc<Topology> {
    match tandem_core::topology::parse("t.toml", TOPOLOGY) {
        Ok(t) => Arc::new(t),
        Err(d) => panic!("test topology is invalid:\n{d}"),
    }
}

/// A served API and a client of it.
struct Harness {
    store: Arc<dyn Store>,
    client: ApiClient,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::with_store(EmbeddedStore::in_memory()).await
    }

    async fn with_store(store: Arc<dyn Store>) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let state = ApiState::new(store.clone(), topology());
        let server = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let client = ApiClient::new(&addr.to_string()).expect("valid address");
        Harness {
            store,
            client,
            base: format!("http://{addr}"),
            stop: Some(stop),
            server,
        }
    }

    async fn put_json(&self, key: &str, value: &impl serde::Serialize) -> Revision {
        self.store
            .put(key, serde_json::to_vec(value).expect("json"), None)
            .await
            .expect("store put")
    }

    async fn set_status(&self, app: &str, instance: &str, status: &InstanceStatus) {
        self.put_json(&keys::status(app, instance), status).await;
    }

    async fn set_roles(&self, app: &str, roles: &AppRoles) {
        self.put_json(&keys::roles(app), roles).await;
    }

    async fn add_event(&self, seq: u64) {
        self.put_json(&keys::event(seq), &event(seq)).await;
    }

    async fn intent(&self, app: &str) -> Option<Intent> {
        let kv = self
            .store
            .get(&keys::intent(app))
            .await
            .expect("store get")?;
        Some(serde_json::from_slice(&kv.value).expect("intent json"))
    }

    /// Everything tandem keeps, with the store revision.
    async fn snapshot(&self) -> Listing {
        self.store.list(keys::ROOT).await.expect("store list")
    }

    async fn raw_get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("raw GET")
    }

    async fn raw_post(&self, path: &str, body: &'static str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .expect("raw POST")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(WAIT, self.server)
            .await
            .expect("server stops in time")
            .expect("server task");
        served.expect("serve returns Ok");
    }
}

fn status(acting: Role, epoch: u64) -> InstanceStatus {
    InstanceStatus {
        host: "local".into(),
        process: ProcessState::Running,
        pid: Some(1234),
        session: 77,
        incarnation: 1,
        seen_generation: 1,
        health: Health::Healthy,
        health_detail: None,
        acting,
        acting_epoch: epoch,
        promoting: false,
        drained: 0,
        links: Default::default(),
        active_links: Default::default(),
        admin: Default::default(),
        crash_looping: false,
        restarts: 0,
        last_exit: None,
    }
}

fn roles(primary: &str, epoch: u64) -> AppRoles {
    AppRoles {
        generation: 1,
        epoch,
        primary: Some(PrimaryGrant {
            instance: primary.into(),
            epoch,
            incarnation: 1,
            session: 77,
        }),
        roles: [(primary.to_owned(), Role::Primary)].into_iter().collect(),
        reason: format!("promoted web/{primary} (epoch {epoch}): highest priority"),
        ..AppRoles::default()
    }
}

fn event(seq: u64) -> Event {
    Event {
        seq,
        t_ms: 1_700_000_000_000 + seq,
        kind: EventKind::Promoted,
        app: Some("web".into()),
        instance: Some("a".into()),
        epoch: Some(seq),
        message: format!("event number {seq}"),
        reason: None,
    }
}

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A fake controller: resolves every pending intent it sees by writing the
/// states `resolve` returns, in order.
fn fake_controller(
    store: Arc<dyn Store>,
    resolve: impl Fn(&Intent) -> Vec<IntentState> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = store.watch(keys::INTENTS, 0).await.expect("watch intents");
        while let Some(Ok(change)) = watch.next().await {
            let Ok(intent) = serde_json::from_slice::<Intent>(&change.kv.value) else {
                continue;
            };
            if intent.outcome != IntentState::Pending {
                continue;
            }
            for outcome in resolve(&intent) {
                let next = Intent {
                    outcome,
                    ..intent.clone()
                };
                let value = serde_json::to_vec(&next).expect("json");
                store
                    .put(&change.kv.key, value, None)
                    .await
                    .expect("controller put");
            }
        }
    })
}

#[tokio::test]
async fn healthz_answers_ok() {
    let h = Harness::start().await;
    let r = h.raw_get("/healthz").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v, serde_json::json!({"status": "ok"}));
    h.stop().await;
}

#[tokio::test]
async fn status_shows_acknowledged_roles_in_topology_order() {
    let h = Harness::start().await;
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    h.set_status("web", "b", &status(Role::Backup, 0)).await;
    h.set_roles("web", &roles("a", 3)).await;

    let doc = h.client.status().await.expect("status");
    assert_eq!(doc.topology, "apitest");
    assert_eq!(doc.store, "embedded");
    let names: Vec<_> = doc.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);

    let web = &doc.apps[0];
    assert_eq!(web.ha, HaMode::WarmStandby);
    assert_eq!((web.epoch, web.primary.as_deref()), (3, Some("a")));
    assert_eq!(web.reason, "promoted web/a (epoch 3): highest priority");
    let a = &web.instances[0];
    assert_eq!(
        (a.id.as_str(), a.role, a.epoch),
        ("a", Role::Primary, Some(3))
    );
    assert_eq!(
        (a.host.as_str(), a.address.as_str()),
        ("local", "127.0.0.1")
    );
    assert_eq!((a.priority, a.ports.get("http")), (100, Some(&18081)));
    assert_eq!(
        (a.pid, a.health, a.process),
        (Some(1234), Health::Healthy, Some(ProcessState::Running))
    );
    assert_eq!(web.instances[1].role, Role::Backup);

    // No status: the host is lost or its agent is not running.
    let db = &doc.apps[1];
    assert_eq!(db.ha, HaMode::None);
    assert_eq!(db.primary, None);
    let dba = &db.instances[0];
    assert_eq!(
        (dba.role, dba.health, dba.pid, dba.epoch),
        (Role::Stopped, Health::Unknown, None, None)
    );

    // The JSON spelling the CLI and dashboards rely on.
    let v: serde_json::Value = h.raw_get("/v1/status").await.json().await.expect("json");
    assert_eq!(v["apps"][0]["instances"][0]["role"], "primary");
    assert_eq!(v["apps"][0]["instances"][1]["role"], "backup");
    assert_eq!(v["apps"][1]["instances"][0]["role"], "stopped");
    assert_eq!(v["apps"][1]["instances"][0]["health"], "unknown");
    assert_eq!(v["apps"][0]["ha"], "warm-standby");
    h.stop().await;
}

#[tokio::test]
async fn app_endpoint_adds_switchover_and_intent_and_404s_unknown_apps() {
    let h = Harness::start().await;
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    h.set_roles("web", &roles("a", 3)).await;

    let web = h.client.app("web").await.expect("app");
    assert_eq!(web.name, "web");
    assert_eq!(web.primary.as_deref(), Some("a"));
    assert_eq!((web.switchover.clone(), web.intent.clone()), (None, None));
    let v: serde_json::Value = h.raw_get("/v1/apps/web").await.json().await.expect("json");
    assert!(v["switchover"].is_null() && v.get("switchover").is_some());
    assert!(v["intent"].is_null() && v.get("intent").is_some());

    let recorded = Intent {
        by: None,
        id: "i-1".into(),
        app: "web".into(),
        kind: IntentKind::Switchover {
            to: Some("b".into()),
        },
        outcome: IntentState::Done {
            message: "promoted web/b".into(),
        },
    };
    h.put_json(&keys::intent("web"), &recorded).await;
    let web = h.client.app("web").await.expect("app");
    assert_eq!(web.intent, Some(recorded));

    let (code, message) = api_error(h.client.app("nope").await);
    assert_eq!(code, 404);
    assert!(message.contains("\"nope\""), "{message}");
    // Names are encoded, never interpreted as a path.
    let (code, _) = api_error(h.client.app("../status").await);
    assert_eq!(code, 404);
    h.stop().await;
}

#[tokio::test]
async fn primary_answers_only_once_the_grant_holder_acknowledged_it() {
    let h = Harness::start().await;

    // No role assignment yet.
    assert_eq!(h.client.primary("web").await.expect("primary"), None);

    // Granted to a, which still acts as backup.
    h.set_status("web", "a", &status(Role::Backup, 0)).await;
    h.set_roles("web", &roles("a", 3)).await;
    assert_eq!(h.client.primary("web").await.expect("primary"), None);
    let r = h.raw_get("/v1/apps/web/primary").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "no primary for web");
    assert_eq!(v["reason"], "promoted web/a (epoch 3): highest priority");

    // Acting as primary, but with an older epoch.
    h.set_status("web", "a", &status(Role::Primary, 2)).await;
    assert_eq!(h.client.primary("web").await.expect("primary"), None);

    // Acknowledged.
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    let p = h
        .client
        .primary("web")
        .await
        .expect("primary")
        .expect("a primary");
    assert_eq!((p.app.as_str(), p.instance.as_str()), ("web", "a"));
    assert_eq!(
        (p.host.as_str(), p.address.as_str()),
        ("local", "127.0.0.1")
    );
    assert_eq!((p.port, p.epoch), (Some(18081), 3));
    let r = h.raw_get("/v1/apps/web/primary").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");

    // Its host is lost: the status vanishes with the lease.
    h.store
        .delete(&keys::status("web", "a"))
        .await
        .expect("delete");
    assert_eq!(h.client.primary("web").await.expect("primary"), None);

    let (code, message) = api_error(h.client.primary("nope").await);
    assert_eq!(code, 404);
    assert!(message.contains("nope"), "{message}");
    h.stop().await;
}

#[tokio::test]
async fn invalid_switchovers_are_refused_and_change_nothing() {
    let h = Harness::start().await;
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    h.set_roles("web", &roles("a", 3)).await;
    let before = h.snapshot().await;
    let t = Duration::from_secs(1);

    let (code, message) = api_error(h.client.switchover("nope", None, t).await);
    assert_eq!(code, 404);
    assert!(message.contains("\"nope\""), "{message}");

    let (code, message) = api_error(h.client.switchover("web", Some("z"), t).await);
    assert_eq!(code, 400);
    assert!(
        message.contains("\"z\"") && message.contains("a, b"),
        "{message}"
    );

    let (code, message) = api_error(h.client.switchover("db", None, t).await);
    assert_eq!(code, 409);
    assert!(
        message.contains("has no primary to switch over"),
        "{message}"
    );

    // Longer than the API allows.
    let (code, message) = api_error(
        h.client
            .switchover("web", None, Duration::from_secs(61))
            .await,
    );
    assert_eq!(code, 400);
    assert!(message.contains("timeout_ms"), "{message}");

    for (path, body, needle) in [
        (
            "/v1/apps/web/switchover",
            r#"{"target":"b"}"#,
            "unknown field `target`",
        ),
        ("/v1/apps/web/switchover", "{", "invalid switchover request"),
        ("/v1/apps/web/switchover", r#"{"to": 2}"#, "invalid type"),
        (
            "/v1/apps/web/switchover?timeout_ms=soon",
            "",
            "timeout_ms must be a whole number",
        ),
        (
            "/v1/apps/web/switchover?wait=1",
            "",
            "unknown query parameter \"wait\"",
        ),
    ] {
        let r = h.raw_post(path, body).await;
        assert_eq!(r.status(), 400, "{path} {body}");
        let v: serde_json::Value = r.json().await.expect("json error");
        let error = v["error"].as_str().expect("error string");
        assert!(error.contains(needle), "{path} {body}: {error}");
    }

    assert_eq!(
        h.snapshot().await,
        before,
        "a refused request wrote something"
    );

    // A switchover already under way.
    let pending = Intent {
        by: None,
        id: "earlier".into(),
        app: "web".into(),
        kind: IntentKind::Switchover { to: None },
        outcome: IntentState::Running,
    };
    h.put_json(&keys::intent("web"), &pending).await;
    let before = h.snapshot().await;
    let (code, message) = api_error(h.client.switchover("web", Some("b"), t).await);
    assert_eq!(code, 409);
    assert!(
        message.contains("a switchover of web is already in progress"),
        "{message}"
    );
    assert_eq!(h.snapshot().await, before);
    assert_eq!(h.intent("web").await, Some(pending));
    h.stop().await;
}

#[tokio::test]
async fn a_switchover_is_done_only_once_the_new_primary_serves() {
    let h = Harness::start().await;
    // The controller says done, but the new primary never acknowledges
    // its role: still under way at the request's timeout.
    h.set_roles("web", &roles("b", 4)).await;
    h.set_status("web", "b", &status(Role::Backup, 3)).await;
    let controller = fake_controller(h.store.clone(), |_| {
        vec![IntentState::Done {
            message: "promoted web/b (epoch 4)".into(),
        }]
    });
    let outcome = h
        .client
        .switchover("web", Some("b"), Duration::from_millis(300))
        .await
        .expect("switchover");
    assert!(
        matches!(outcome, SwitchoverOutcome::InProgress { .. }),
        "{outcome:?}"
    );
    // Once it acknowledges, a request answers done.
    h.set_status("web", "b", &status(Role::Primary, 4)).await;
    let outcome = h
        .client
        .switchover("web", Some("b"), WAIT)
        .await
        .expect("switchover");
    assert!(
        matches!(outcome, SwitchoverOutcome::Done { .. }),
        "{outcome:?}"
    );
    controller.abort();
    h.stop().await;
}

#[tokio::test]
async fn switchover_done_by_the_controller_answers_200() {
    let h = Harness::start().await;
    // What the controller's promotion leaves: b granted, and serving (its
    // agent acknowledged the role): "done" waits for that.
    h.set_roles("web", &roles("b", 4)).await;
    h.set_status("web", "b", &status(Role::Primary, 4)).await;
    let controller = fake_controller(h.store.clone(), |intent| {
        let to = match &intent.kind {
            IntentKind::Switchover { to } => to.clone(),
            IntentKind::Maintenance { .. } => panic!("unexpected maintenance intent"),
        };
        vec![
            IntentState::Running,
            IntentState::Done {
                message: format!("promoted web/{} (epoch 4)", to.as_deref().unwrap_or("b")),
            },
        ]
    });
    let outcome = h
        .client
        .switchover("web", Some("b"), WAIT)
        .await
        .expect("switchover");
    let SwitchoverOutcome::Done { intent, message } = outcome else {
        panic!("expected done, got {outcome:?}");
    };
    assert_eq!(message, "promoted web/b (epoch 4)");
    let recorded = h.intent("web").await.expect("intent recorded");
    assert_eq!(recorded.id, intent);
    assert_eq!(
        recorded.kind,
        IntentKind::Switchover {
            to: Some("b".into())
        }
    );

    // A resolved intent is replaced by the next one; no target is fine.
    let outcome = h
        .client
        .switchover("web", None, WAIT)
        .await
        .expect("switchover");
    let SwitchoverOutcome::Done { intent: second, .. } = outcome else {
        panic!("expected done, got {outcome:?}");
    };
    assert_ne!(second, intent, "intent ids are unique");
    let recorded = h.intent("web").await.expect("intent recorded");
    assert_eq!(recorded.kind, IntentKind::Switchover { to: None });

    // The raw answer, for clients in other languages.
    let r = h.raw_post("/v1/apps/web/switchover", "").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        (v["app"].as_str(), v["outcome"].as_str()),
        (Some("web"), Some("done"))
    );
    assert!(v["intent"].is_string() && v["message"].is_string());
    controller.abort();
    h.stop().await;
}

#[tokio::test]
async fn switchover_refused_by_the_controller_answers_409_with_the_reason() {
    let h = Harness::start().await;
    let controller = fake_controller(h.store.clone(), |_| {
        vec![IntentState::Refused {
            reason: "web/b is not healthy".into(),
        }]
    });
    let outcome = h
        .client
        .switchover("web", Some("b"), WAIT)
        .await
        .expect("switchover");
    let SwitchoverOutcome::Refused { intent, reason } = outcome else {
        panic!("expected refused, got {outcome:?}");
    };
    assert_eq!(reason, "web/b is not healthy");
    assert_eq!(h.intent("web").await.map(|i| i.id), Some(intent));

    let r = h.raw_post("/v1/apps/web/switchover", r#"{"to":"b"}"#).await;
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "web/b is not healthy");
    assert!(v["intent"].is_string());
    controller.abort();
    h.stop().await;
}

#[tokio::test]
async fn switchover_still_under_way_at_the_timeout_answers_202() {
    let h = Harness::start().await;
    // No controller: the intent stays pending.
    let outcome = h
        .client
        .switchover("web", None, Duration::from_millis(200))
        .await
        .expect("switchover");
    let SwitchoverOutcome::InProgress { intent, progress } = outcome else {
        panic!("expected in progress, got {outcome:?}");
    };
    assert_eq!(progress, SwitchoverProgress::Pending);
    let recorded = h.intent("web").await.expect("recorded");
    assert_eq!(
        (recorded.id.as_str(), &recorded.outcome),
        (intent.as_str(), &IntentState::Pending)
    );

    // It blocks the next one.
    let (code, _) = api_error(
        h.client
            .switchover("web", None, Duration::from_millis(50))
            .await,
    );
    assert_eq!(code, 409);

    // The controller starts it but does not finish in time.
    h.put_json(
        &keys::intent("web"),
        &Intent {
            outcome: IntentState::Done {
                message: "ok".into(),
            },
            ..recorded
        },
    )
    .await;
    let controller = fake_controller(h.store.clone(), |_| vec![IntentState::Running]);
    let r = h
        .raw_post("/v1/apps/web/switchover?timeout_ms=300", "{}")
        .await;
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["outcome"], "running");
    assert!(v["intent"].is_string());
    controller.abort();
    h.stop().await;
}

#[tokio::test]
async fn events_are_listed_oldest_first_after_since() {
    let h = Harness::start().await;
    assert!(
        h.client
            .events(None, None)
            .await
            .expect("events")
            .is_empty()
    );
    for seq in 1..=5 {
        h.add_event(seq).await;
    }
    let seqs = |events: Vec<Event>| events.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(h.client.events(None, None).await.expect("events")),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(h.client.events(Some(2), None).await.expect("events")),
        [3, 4, 5]
    );
    assert_eq!(
        seqs(h.client.events(None, Some(2)).await.expect("events")),
        [4, 5]
    );
    assert_eq!(
        seqs(h.client.events(Some(1), Some(2)).await.expect("events")),
        [2, 3]
    );
    assert_eq!(
        h.client.events(None, None).await.expect("events")[0],
        event(1)
    );

    let (code, message) = api_error(h.client.events(None, Some(0)).await);
    assert_eq!(code, 400);
    assert!(message.contains("limit"), "{message}");
    let (code, _) = api_error(h.client.events(None, Some(10_001)).await);
    assert_eq!(code, 400);
    let r = h.raw_get("/v1/events?since=-1").await;
    assert_eq!(r.status(), 400);
    h.stop().await;
}

async fn next_seq(
    stream: &mut (impl futures::Stream<Item = Result<Event, ClientError>> + Unpin),
) -> u64 {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(e))) => e.seq,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn follow_sends_the_backlog_then_new_events_in_order() {
    let h = Harness::start().await;
    h.add_event(1).await;
    h.add_event(2).await;

    let mut all = h.client.follow_events(None);
    let mut after_one = h.client.follow_events(Some(1));
    assert_eq!(next_seq(&mut all).await, 1);
    assert_eq!(next_seq(&mut all).await, 2);
    assert_eq!(next_seq(&mut after_one).await, 2);

    for seq in 3..=20 {
        h.add_event(seq).await;
    }
    for seq in 3..=20 {
        assert_eq!(next_seq(&mut all).await, seq);
        assert_eq!(next_seq(&mut after_one).await, seq);
    }

    // The stream ends when the server shuts down.
    h.stop().await;
    let end = tokio::time::timeout(WAIT, all.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "expected the end, got {end:?}");
}

#[tokio::test]
async fn follow_honours_last_event_id() {
    let h = Harness::start().await;
    for seq in 1..=3 {
        h.add_event(seq).await;
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/events?follow=true", h.base))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("a chunk in time")
            .expect("a chunk")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("id: 3\n") || text.contains("id:3\n"),
        "{text}"
    );
    assert!(
        text.contains("event: event") || text.contains("event:event"),
        "{text}"
    );
    assert!(!text.contains("\"seq\":2"), "{text}");
    drop(body);

    let r = reqwest::Client::new()
        .get(format!("{}/v1/events?follow=true", h.base))
        .header("Last-Event-ID", "two")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 400);
    h.stop().await;
}

/// Every call fails as a store without quorum does.
struct NoQuorum;

fn no_quorum<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("no leader".into()))
}

#[async_trait::async_trait]
impl Store for NoQuorum {
    fn backend(&self) -> &'static str {
        "no-quorum"
    }
    async fn get(&self, _: &str) -> Result<Option<tandem_store::KeyValue>, StoreError> {
        no_quorum()
    }
    async fn list(&self, _: &str) -> Result<Listing, StoreError> {
        no_quorum()
    }
    async fn put(&self, _: &str, _: Vec<u8>, _: Option<LeaseId>) -> Result<Revision, StoreError> {
        no_quorum()
    }
    async fn delete(&self, _: &str) -> Result<bool, StoreError> {
        no_quorum()
    }
    async fn txn(&self, _: Txn) -> Result<TxnResponse, StoreError> {
        no_quorum()
    }
    async fn grant_lease(&self, _: Duration) -> Result<Lease, StoreError> {
        no_quorum()
    }
    async fn keep_alive(&self, _: LeaseId) -> Result<Duration, StoreError> {
        no_quorum()
    }
    async fn revoke_lease(&self, _: LeaseId) -> Result<(), StoreError> {
        no_quorum()
    }
    async fn watch(&self, _: &str, _: Revision) -> Result<WatchStream, StoreError> {
        no_quorum()
    }
}

#[tokio::test]
async fn a_store_without_quorum_makes_reads_unavailable_and_writes_read_only() {
    let h = Harness::with_store(Arc::new(NoQuorum)).await;
    let (code, message) = api_error(h.client.status().await);
    assert_eq!(code, 503);
    assert_eq!(message, "coordination store unavailable: no leader");
    let (code, _) = api_error(h.client.app("web").await);
    assert_eq!(code, 503);
    // Not "no primary": the API cannot know.
    let (code, _) = api_error(h.client.primary("web").await);
    assert_eq!(code, 503);
    let (code, _) = api_error(h.client.events(None, None).await);
    assert_eq!(code, 503);
    let mut follow = h.client.follow_events(None);
    match tokio::time::timeout(WAIT, follow.next()).await {
        Ok(Some(Err(ClientError::Api { status: 503, .. }))) => {}
        other => panic!("expected a 503, got {other:?}"),
    }
    let (code, message) = api_error(
        h.client
            .switchover("web", None, Duration::from_secs(1))
            .await,
    );
    assert_eq!(code, 503);
    assert_eq!(message, "read-only: the coordination store has no quorum");
    // Validation still comes first.
    let (code, _) = api_error(
        h.client
            .switchover("nope", None, Duration::from_secs(1))
            .await,
    );
    assert_eq!(code, 404);
    // The API itself is alive.
    assert_eq!(h.raw_get("/healthz").await.status(), 200);
    h.stop().await;
}

/// The embedded store, losing quorum on demand.
struct Switchable {
    inner: Arc<EmbeddedStore>,
    down: std::sync::atomic::AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            no_quorum()
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Switchable {
    fn backend(&self) -> &'static str {
        "switchable"
    }
    async fn get(&self, k: &str) -> Result<Option<tandem_store::KeyValue>, StoreError> {
        self.check()?;
        self.inner.get(k).await
    }
    async fn list(&self, p: &str) -> Result<Listing, StoreError> {
        self.check()?;
        self.inner.list(p).await
    }
    async fn put(&self, k: &str, v: Vec<u8>, l: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.put(k, v, l).await
    }
    async fn delete(&self, k: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete(k).await
    }
    async fn txn(&self, t: Txn) -> Result<TxnResponse, StoreError> {
        self.check()?;
        self.inner.txn(t).await
    }
    async fn grant_lease(&self, d: Duration) -> Result<Lease, StoreError> {
        self.check()?;
        self.inner.grant_lease(d).await
    }
    async fn keep_alive(&self, l: LeaseId) -> Result<Duration, StoreError> {
        self.check()?;
        self.inner.keep_alive(l).await
    }
    async fn revoke_lease(&self, l: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.revoke_lease(l).await
    }
    async fn watch(&self, p: &str, r: Revision) -> Result<WatchStream, StoreError> {
        self.check()?;
        self.inner.watch(p, r).await
    }
}

#[tokio::test]
async fn without_quorum_status_answers_the_last_known_state_marked_stale() {
    let store = Arc::new(Switchable {
        inner: EmbeddedStore::in_memory(),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let h = Harness::with_store(store.clone()).await;
    let fresh = h.client.status().await.expect("status");
    assert!(!fresh.stale);
    assert!(fresh.stale_reason.is_none());

    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let stale = h
        .client
        .status()
        .await
        .expect("status answers from the last state");
    assert!(stale.stale);
    let reason = stale.stale_reason.clone().expect("a reason");
    assert!(
        reason.contains("no leader") && reason.contains("last state"),
        "{reason}"
    );
    assert_eq!(stale.apps, fresh.apps);
    // Writes stay refused, saying why.
    let (code, message) = api_error(
        h.client
            .switchover("web", None, Duration::from_secs(1))
            .await,
    );
    assert_eq!(code, 503);
    assert_eq!(message, "read-only: the coordination store has no quorum");

    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(!h.client.status().await.expect("status").stale);
    h.stop().await;
}

/// An embedded store whose watches break after a few changes, as a
/// watcher that fell behind or lost its connection does.
struct FlakyWatches(Arc<EmbeddedStore>);

#[async_trait::async_trait]
impl Store for FlakyWatches {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, k: &str) -> Result<Option<tandem_store::KeyValue>, StoreError> {
        self.0.get(k).await
    }
    async fn list(&self, p: &str) -> Result<Listing, StoreError> {
        self.0.list(p).await
    }
    async fn put(&self, k: &str, v: Vec<u8>, l: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.0.put(k, v, l).await
    }
    async fn delete(&self, k: &str) -> Result<bool, StoreError> {
        self.0.delete(k).await
    }
    async fn txn(&self, t: Txn) -> Result<TxnResponse, StoreError> {
        self.0.txn(t).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.0.grant_lease(ttl).await
    }
    async fn keep_alive(&self, l: LeaseId) -> Result<Duration, StoreError> {
        self.0.keep_alive(l).await
    }
    async fn revoke_lease(&self, l: LeaseId) -> Result<(), StoreError> {
        self.0.revoke_lease(l).await
    }
    async fn watch(&self, p: &str, start: Revision) -> Result<WatchStream, StoreError> {
        let inner = self.0.watch(p, start).await?;
        let broken = futures::stream::once(async { Err(StoreError::WatchLost("test".into())) });
        Ok(Box::pin(inner.take(3).chain(broken)))
    }
}

#[tokio::test]
async fn follow_resumes_a_broken_watch_without_gaps_or_duplicates() {
    let store = EmbeddedStore::in_memory();
    let h = Harness::with_store(Arc::new(FlakyWatches(store))).await;
    h.add_event(1).await;
    let mut follow = h.client.follow_events(None);
    assert_eq!(next_seq(&mut follow).await, 1);
    for seq in 2..=30 {
        h.add_event(seq).await;
    }
    for seq in 2..=30 {
        assert_eq!(next_seq(&mut follow).await, seq);
    }
    h.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let h = Harness::start().await;
    let r = h.raw_get("/v2/status").await;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("/v2/status")),
        "{v}"
    );

    let r = h.raw_post("/v1/status", "").await;
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["error"].is_string(), "{v}");

    let r = h.raw_get("/v1/apps/web/switchover").await;
    assert_eq!(r.status(), 405);
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_api_is_reported_in_one_clear_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = ApiClient::new(&addr.to_string()).expect("valid address");
    let err = client.status().await.expect_err("nothing listens");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the tandem API at {addr}: connection refused (is `tandem up` running?)"
        )
    );
    let mut follow = client.follow_events(None);
    assert!(matches!(
        follow.next().await,
        Some(Err(ClientError::Unreachable { .. }))
    ));
    assert!(follow.next().await.is_none());
}

/// GET /metrics as text, once `pred` holds of it (bounded).
async fn metrics_when(h: &Harness, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = reqwest::get(format!("{}/metrics", h.base))
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = resp.text().await.expect("body");
        if pred(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never matched:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_show_roles_epochs_primaries_and_count_failovers_from_the_log() {
    let h = Harness::start().await;
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    h.set_status("web", "b", &status(Role::Backup, 0)).await;
    h.set_roles("web", &roles("a", 3)).await;
    let text = metrics_when(&h, |_| true).await;
    for line in [
        "tandem_api_store_reachable 1",
        "tandem_instance_role{app=\"web\",id=\"a\",host=\"local\",role=\"primary\"} 1",
        "tandem_instance_role{app=\"web\",id=\"b\",host=\"local\",role=\"backup\"} 1",
        "tandem_instance_epoch{app=\"web\",id=\"a\",host=\"local\"} 3",
        "tandem_instance_crash_looping{app=\"web\",id=\"a\",host=\"local\"} 0",
        "tandem_app_primary{app=\"web\"} 1",
        "tandem_app_epoch{app=\"web\"} 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A failure, then the promotion and the new primary serving, 250 ms
    // later: one failover counted with its reason, and its duration.
    let failed = Event {
        kind: EventKind::PrimaryFailed,
        reason: Some("not_running".into()),
        t_ms: 1_700_000_000_000,
        ..event(1)
    };
    let promoted = Event {
        kind: EventKind::Promoted,
        reason: Some("not_running".into()),
        t_ms: 1_700_000_000_100,
        ..event(2)
    };
    let serving = Event {
        kind: EventKind::Serving,
        t_ms: 1_700_000_000_250,
        ..event(3)
    };
    for e in [&failed, &promoted, &serving] {
        h.put_json(&keys::event(e.seq), e).await;
    }
    let text = metrics_when(&h, |t| t.contains("tandem_failover_seconds_count")).await;
    assert!(
        text.contains("tandem_failovers_total{app=\"web\",reason=\"not_running\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_failover_seconds_count{app=\"web\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_failover_seconds_sum{app=\"web\"} 0.25"),
        "{text}"
    );
    assert!(
        text.contains("tandem_events_total{kind=\"serving\"} 1"),
        "{text}"
    );
    // No acknowledged primary: the app says so.
    h.set_status("web", "a", &status(Role::Backup, 3)).await;
    metrics_when(&h, |t| t.contains("tandem_app_primary{app=\"web\"} 0")).await;
    h.stop().await;
}

#[tokio::test]
async fn the_browser_client_is_served_as_javascript() {
    let h = Harness::start().await;
    let r = h.raw_get("/v1/client.js").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/javascript; charset=utf-8")
    );
    let body = r.text().await.expect("body");
    assert!(
        body.contains("TandemSite"),
        "{}",
        &body[..body.len().min(200)]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_read_only_app_answers_why_and_the_client_library_refuses_writes() {
    let h = Harness::start().await;
    let ro = AppRoles {
        generation: 2,
        epoch: 1,
        read_only: Some(tandem_core::model::ReadOnly {
            site: "dc1".into(),
            reason: "site dc1 is lost".into(),
        }),
        reason: "web is read-only: site dc1 is lost".into(),
        ..AppRoles::default()
    };
    h.set_roles("web", &ro).await;
    let r = h.raw_get("/v1/apps/web/primary").await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["read_only"]["site"], "dc1");
    assert_eq!(v["read_only"]["reason"], "site dc1 is lost");
    match h.client.primary_for_write("web").await {
        Err(e @ ClientError::ReadOnly { .. }) => {
            assert!(
                e.to_string().starts_with("read-only: site dc1 is lost"),
                "{e}"
            )
        }
        other => panic!("expected the read-only error, got {other:?}"),
    }
    let doc = h.client.app("web").await.expect("app");
    assert_eq!(doc.read_only.map(|r| r.site), Some("dc1".into()));
    // Writable again: the primary is answered.
    h.set_status("web", "a", &status(Role::Primary, 3)).await;
    h.set_roles("web", &roles("a", 3)).await;
    let p = h.client.primary_for_write("web").await.expect("writable");
    assert_eq!(p.instance, "a");
    h.stop().await;
}

#[tokio::test]
async fn bad_site_requests_are_refused_and_record_nothing() {
    let h = Harness::start().await;
    for (path, body, code, says) in [
        ("/v1/sites/dc9/fail", "", 404, "no site named \"dc9\""),
        (
            "/v1/sites/dc1/explode",
            "",
            404,
            "no site action \"explode\"",
        ),
        ("/v1/sites/dc1/fail", "[1]", 400, "invalid site request"),
        (
            "/v1/sites/dc1/fail",
            "{\"forse\": true}",
            400,
            "invalid site request",
        ),
        (
            "/v1/sites/dc1/fail",
            "{\"force\": true}",
            400,
            "needs \"confirm\"",
        ),
        (
            "/v1/sites/dc1/fail",
            "{\"force\": true, \"confirm\": \"dc2\"}",
            400,
            "names no site",
        ),
        (
            "/v1/sites/dc1/restore",
            "{\"force\": true, \"confirm\": \"dc1\"}",
            400,
            "cannot be forced",
        ),
    ] {
        let r = h.raw_post(path, body).await;
        assert_eq!(r.status(), code, "{path} {body}");
        let v: serde_json::Value = r.json().await.expect("json");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{path} {body}: {error}");
    }
    let written = h
        .store
        .list(tandem_core::model::keys::SITE_INTENTS)
        .await
        .expect("list");
    assert!(written.kvs.is_empty(), "{:?}", written.kvs);
    h.stop().await;
}
