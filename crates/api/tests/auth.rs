//! API tokens over HTTP: every mutation without a token, with an unknown
//! one, a malformed header or a `read` token is refused and changes
//! nothing in the store; an `operate` token's intent names it; reads need
//! a token unless the file opens them; a replaced token file applies at
//! once.

use std::sync::Arc;
use std::time::Duration;

use tandem_api::{Access, ApiState, Tokens, hash_token, serve};
use tandem_client::{ApiClient, ClientOptions};
use tandem_core::model::{FenceIntent, Intent, keys};
use tandem_core::topology::Topology;
use tandem_store::{EmbeddedStore, Store};
use tokio::sync::oneshot;

const TOPOLOGY: &str = r#"
[cluster]
name = "authtest"

[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"
fence = { command = ["/bin/true", "{host}"] }

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
ports = { http = 18081 }

[[apps.web.instances]]
id = "b"
host = "local"
ports = { http = 18082 }
"#;

const OPS: &str = "tdm_ops_secret_0123456789";
const VIEWER: &str = "tdm_viewer_secret_0123456789";

fn token_file(reads: &str, tokens: &[(&str, &str, &str)]) -> Tokens {
    let mut text = format!("reads = {reads:?}\n");
    for (name, role, token) in tokens {
        text.push_str(&format!(
            "[[tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n",
            hash_token(token)
        ));
    }
    Tokens::parse(&text, "tokens.toml").expect("valid token file")
}

struct Served {
    store: Arc<dyn Store>,
    base: String,
    addr: String,
    access: Access,
    _stop: oneshot::Sender<()>,
}

async fn serve_with(tokens: Tokens) -> Served {
    let topology: Arc<Topology> = match tandem_core::topology::parse("t.toml", TOPOLOGY) {
        Ok(t) => Arc::new(t),
        Err(d) => panic!("test topology is invalid:\n{d}"),
    };
    let store = EmbeddedStore::in_memory();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let access = Access::new(Some(tokens));
    let state = ApiState::new(store.clone(), topology).with_access(access.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Served {
        store,
        base: format!("http://{addr}"),
        addr,
        access,
        _stop: stop,
    }
}

/// Every key and value in the store.
async fn everything(store: &Arc<dyn Store>) -> Vec<(String, Vec<u8>)> {
    let listing = store.list("").await.expect("list");
    listing
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// How a request presents itself.
#[derive(Debug, Clone, Copy)]
enum Cred {
    Nothing,
    Bearer(&'static str),
    Raw(&'static str),
}

async fn send(base: &str, method: &str, path: &str, body: &str, cred: Cred) -> (u16, String) {
    let http = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut req = match method {
        "POST" => http.post(url).body(body.to_owned()),
        _ => http.get(url),
    };
    req = req.header("content-type", "application/json");
    match cred {
        Cred::Nothing => {}
        Cred::Bearer(t) => req = req.bearer_auth(t),
        Cred::Raw(h) => req = req.header("authorization", h),
    }
    let resp = req
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The mutations of the API, each with a body it accepts.
const MUTATIONS: &[(&str, &str)] = &[
    ("/v1/apps/web/switchover?timeout_ms=100", r#"{"to": "b"}"#),
    ("/v1/apps/web/maintenance?timeout_ms=100", r#"{"on": true}"#),
    ("/v1/hosts/local/fence?timeout_ms=100", ""),
];

#[tokio::test]
async fn every_mutation_without_an_operate_token_is_refused_and_changes_nothing() {
    let api = serve_with(token_file(
        "token",
        &[("ops", "operate", OPS), ("viewer", "read", VIEWER)],
    ))
    .await;
    let before = everything(&api.store).await;
    let cases: &[(Cred, u16, &str)] = &[
        (Cred::Nothing, 401, "needs a token with the operate role"),
        (Cred::Bearer("tdm_guessed"), 401, "not known"),
        (
            Cred::Bearer(VIEWER),
            403,
            "token \"viewer\" has the read role",
        ),
        (Cred::Raw("Basic b3BzOm9wcw=="), 401, "Bearer TOKEN"),
        (Cred::Raw("Bearer"), 401, "Bearer TOKEN"),
        // The hash itself is not the token.
        (Cred::Bearer("not-a-hash"), 401, "not known"),
    ];
    for (path, body) in MUTATIONS {
        for (cred, status, sentence) in cases {
            let (got, text) = send(&api.base, "POST", path, body, *cred).await;
            assert_eq!(got, *status, "POST {path} with {cred:?}: {text}");
            let doc: serde_json::Value = serde_json::from_str(&text).expect("json error body");
            let error = doc["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(sentence),
                "POST {path} with {cred:?}: {error:?} does not say {sentence:?}"
            );
        }
    }
    // Presenting the stored hash as a token is no better.
    let (got, _) = send(
        &api.base,
        "POST",
        MUTATIONS[0].0,
        MUTATIONS[0].1,
        Cred::Bearer(Box::leak(hash_token(OPS).into_boxed_str())),
    )
    .await;
    assert_eq!(got, 401);
    assert_eq!(
        everything(&api.store).await,
        before,
        "a refused request changed the store"
    );
}

#[tokio::test]
async fn an_operate_tokens_intents_name_it() {
    let api = serve_with(token_file("token", &[("ops", "operate", OPS)])).await;
    // No controller runs: the request is recorded and still pending at
    // its timeout (202); the intent names the token.
    let (status, text) = send(
        &api.base,
        "POST",
        MUTATIONS[0].0,
        MUTATIONS[0].1,
        Cred::Bearer(OPS),
    )
    .await;
    assert!(status == 202 || status == 409, "{status}: {text}");
    let kv = api
        .store
        .get(&keys::intent("web"))
        .await
        .expect("get")
        .expect("the switchover was recorded");
    let intent: Intent = serde_json::from_slice(&kv.value).expect("intent");
    assert_eq!(intent.by.as_deref(), Some("ops"));

    let (status, text) = send(&api.base, "POST", MUTATIONS[2].0, "", Cred::Bearer(OPS)).await;
    assert!(status == 202 || status == 409, "{status}: {text}");
    let kv = api
        .store
        .get(&keys::fence_intent("local"))
        .await
        .expect("get")
        .expect("the fence request was recorded");
    let fence: FenceIntent = serde_json::from_slice(&kv.value).expect("fence intent");
    assert_eq!(fence.by.as_deref(), Some("ops"));
}

#[tokio::test]
async fn reads_need_a_token_unless_the_file_opens_them() {
    let api = serve_with(token_file(
        "token",
        &[("ops", "operate", OPS), ("viewer", "read", VIEWER)],
    ))
    .await;
    for path in ["/v1/status", "/v1/events", "/metrics", "/v1/apps/web"] {
        let (status, text) = send(&api.base, "GET", path, "", Cred::Nothing).await;
        assert_eq!(status, 401, "GET {path}: {text}");
        let (status, text) = send(&api.base, "GET", path, "", Cred::Bearer(VIEWER)).await;
        assert_eq!(status, 200, "GET {path} with a read token: {text}");
        let (status, _) = send(&api.base, "GET", path, "", Cred::Bearer("wrong")).await;
        assert_eq!(status, 401, "GET {path} with an unknown token");
    }
    let (status, _) = send(&api.base, "GET", "/healthz", "", Cred::Nothing).await;
    assert_eq!(status, 200, "/healthz stays open");

    // The client library presents its token.
    let plain = ApiClient::new(&api.addr).expect("client");
    let err = plain.status().await.expect_err("no token");
    assert_eq!(err.status(), Some(401), "{err}");
    let viewer = ApiClient::with_options(
        &api.addr,
        &ClientOptions {
            token: Some(VIEWER.into()),
            ..Default::default()
        },
    )
    .expect("client");
    viewer.status().await.expect("status with a read token");
    let err = viewer
        .switchover("web", None, Duration::from_millis(100))
        .await
        .expect_err("a read token cannot switch over");
    assert_eq!(err.status(), Some(403), "{err}");

    // Open reads: anyone reads, mutations still need operate.
    let open = serve_with(token_file("open", &[("ops", "operate", OPS)])).await;
    let (status, text) = send(&open.base, "GET", "/v1/status", "", Cred::Nothing).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = send(
        &open.base,
        "POST",
        MUTATIONS[1].0,
        MUTATIONS[1].1,
        Cred::Nothing,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_replaced_token_file_applies_at_once() {
    let api = serve_with(token_file("token", &[("viewer", "read", VIEWER)])).await;
    let (status, _) = send(&api.base, "GET", "/v1/status", "", Cred::Bearer(VIEWER)).await;
    assert_eq!(status, 200);
    api.access
        .replace(token_file("token", &[("ops", "operate", OPS)]));
    let (status, _) = send(&api.base, "GET", "/v1/status", "", Cred::Bearer(VIEWER)).await;
    assert_eq!(status, 401, "a removed token still reads");
    let (status, _) = send(&api.base, "GET", "/v1/status", "", Cred::Bearer(OPS)).await;
    assert_eq!(status, 200);
}
