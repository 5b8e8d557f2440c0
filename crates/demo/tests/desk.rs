//! Tests of the agent desktop's server (`tandem demo-desk`), in process,
//! over real HTTP on 127.0.0.1: password and token logins across two sites
//! sharing a single-sign-on secret (and refusals: another secret, an
//! expired or tampered token, a wrong password, malformed bodies), the
//! real-time channel and what it carries (hello, pings, voice changes,
//! unregistered), and the fault switches.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tandem_demo::desk::token::{self, Claims, Secret};
use tandem_demo::desk::{DeskArgs, serve_desk};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Bound on every wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(5);
/// The demo password of every desk here.
const PASSWORD: &str = "s3cret-demo";
/// The secret both sites share.
const SHARED: &str = "a shared single-sign-on secret, 32+";

/// A desk served in a task, stopped when dropped.
struct Desk {
    addr: SocketAddr,
    journal: PathBuf,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Desk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn args(dir: &Path, site: &str, secret: &str, voice: Option<String>) -> DeskArgs {
    let secret_file = dir.join(format!("secret-{site}"));
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write the secret");
    DeskArgs {
        port: 0,
        bind: [127, 0, 0, 1].into(),
        site: site.into(),
        sso_secret_file: Some(secret_file),
        sso_secret: None,
        password: PASSWORD.into(),
        voice,
        hysteresis_ms: 1500,
        min_dwell_ms: 30_000,
        journal: Some(dir.join(format!("journal-{site}.log"))),
    }
}

impl Desk {
    async fn start(dir: &Path, site: &str, secret: &str, voice: Option<String>) -> Desk {
        let args = args(dir, site, secret, voice);
        let journal = args.journal.clone().expect("a journal");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(serve_desk(
            args,
            listener,
            || Ok(()),
            std::future::pending(),
        ));
        Desk {
            addr,
            journal,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn journal(&self) -> Vec<String> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("HTTP client")
}

/// An answer: status, JSON body (Null if none), the session cookie set.
struct Answer {
    status: u16,
    body: Value,
    cookie: Option<String>,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the desk answers");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        body,
        cookie,
    }
}

async fn login(desk: &Desk, body: &str) -> Answer {
    send(
        http()
            .post(desk.url("/login"))
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

async fn password_login(desk: &Desk, user: &str) -> Answer {
    let answer = login(
        desk,
        &json!({ "user": user, "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "password login: {}", answer.body);
    answer
}

fn token_of(answer: &Answer) -> String {
    answer.body["token"].as_str().expect("a token").to_owned()
}

fn cookie(token: &str) -> String {
    format!("tandem_desk_session={token}")
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn error_of(answer: &Answer) -> String {
    answer.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error sentence in {}", answer.body))
        .to_owned()
}

/// An open channel, read event by event.
struct Channel {
    response: reqwest::Response,
    buf: String,
}

impl Channel {
    async fn open(desk: &Desk, token: &str) -> Channel {
        let response = http()
            .get(desk.url("/rt"))
            .header("cookie", cookie(token))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the desk answers /rt");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Channel {
            response,
            buf: String::new(),
        }
    }

    /// The next event (name, JSON data), within `PATIENCE`.
    async fn next(&mut self) -> (String, Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(name) = name {
                    let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                    return (name, data);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("no event within {PATIENCE:?}; got so far {:?}", self.buf)
                })
                .expect("the channel reads")
                .expect("the channel stays open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one named `name` whose data satisfies `pred`.
    async fn wait_for(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let (got, data) = self.next().await;
            if got == name && pred(&data) {
                return data;
            }
            if got != "ping" {
                seen.push(format!("{got} {data}"));
            }
            assert!(
                Instant::now() < deadline,
                "no matching {name} event within {PATIENCE:?}; other events: {seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_password_login_gives_a_token_the_other_site_accepts_with_the_same_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let dc2 = Desk::start(dir.path(), "dc2", SHARED, None).await;

    let first = password_login(&dc1, "alice").await;
    assert_eq!(first.body["user"], "alice");
    assert_eq!(first.body["site"], "dc1");
    let session = first.body["session"]
        .as_str()
        .expect("a session")
        .to_owned();
    assert!(token::check_session(&session).is_ok(), "{session}");
    let token = token_of(&first);
    let set = first.cookie.clone().expect("a session cookie");
    assert!(
        set.starts_with(&format!("tandem_desk_session={token};"))
            && set.contains("HttpOnly")
            && set.contains("SameSite=Strict"),
        "{set}"
    );

    // The other site accepts the token: same user, same session.
    let second = login(&dc2, &json!({ "token": token }).to_string()).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["user"], "alice");
    assert_eq!(second.body["session"], session.as_str());
    assert_eq!(second.body["site"], "dc2");
    assert!(second.cookie.is_some(), "dc2 sets its cookie");

    // Each site's journal says how.
    assert_eq!(
        dc1.journal(),
        vec![format!(
            "login user=alice session={session} site=dc1 via=password"
        )]
    );
    assert_eq!(
        dc2.journal(),
        vec![format!(
            "login user=alice session={session} site=dc2 via=token"
        )]
    );

    // A second password login is a new session.
    let again = password_login(&dc1, "alice").await;
    assert_ne!(again.body["session"], session.as_str());
}

#[tokio::test]
async fn a_token_of_another_secret_an_expired_or_a_tampered_one_is_refused_401() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let other = Desk::start(dir.path(), "other", "another secret, not shared!", None).await;
    let token = token_of(&password_login(&dc1, "bob").await);

    let refused = login(&other, &json!({ "token": token }).to_string()).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(error_of(&refused).contains("signature"), "{}", refused.body);
    assert!(refused.cookie.is_none());

    let secret = Secret::new(SHARED.as_bytes()).expect("secret");
    let expired = token::sign(
        &secret,
        &Claims {
            user: "bob".into(),
            session: token::new_session().expect("session"),
            expiry_unix_s: unix_now_s() - 10,
        },
    );
    let refused = login(&dc1, &json!({ "token": expired }).to_string()).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(error_of(&refused).contains("expired"), "{}", refused.body);

    let (payload, tag) = token.split_once('.').expect("PAYLOAD.SIGNATURE");
    let mut forged_tag = tag.to_owned();
    forged_tag.replace_range(..1, if tag.starts_with('A') { "B" } else { "A" });
    for bad in [
        format!("{payload}.{forged_tag}"),
        "garbage".to_owned(),
        String::new(),
        "x".repeat(5000),
    ] {
        let refused = login(&dc1, &json!({ "token": bad }).to_string()).await;
        assert_eq!(refused.status, 401, "{bad:?}: {}", refused.body);
        assert!(error_of(&refused).contains("refused at site dc1"));
    }
    // Nothing refused reached a journal.
    assert_eq!(other.journal(), Vec::<String>::new());
    assert_eq!(dc1.journal().len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_401_and_malformed_logins_are_400_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let wrong = login(&dc1, r#"{"user":"alice","password":"nope"}"#).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(error_of(&wrong), "wrong user name or password");

    for (body, says) in [
        ("", "no body"),
        ("{", "invalid login body"),
        ("[1]", "invalid login body"),
        ("null", "invalid login body"),
        (r#"{"user":1,"password":"x"}"#, "invalid type"),
        (
            r#"{"user":"a","password":"x","admin":true}"#,
            "unknown field `admin`",
        ),
        (r#"{"user":"alice"}"#, "missing field \"password\""),
        (r#"{"password":"x"}"#, "missing field \"user\""),
        ("{}", "missing fields"),
        (r#"{"user":"a","password":"x","token":"t"}"#, "not both"),
        (r#"{"user":"al ice","password":"x"}"#, "is not a user name"),
        (r#"{"user":"a|b","password":"x"}"#, "is not a user name"),
    ] {
        let answer = login(&dc1, body).await;
        assert_eq!(answer.status, 400, "{body:?}: {}", answer.body);
        let error = error_of(&answer);
        assert!(error.contains(says), "{body:?}: {error}");
    }
    let huge = format!(r#"{{"user":"alice","password":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(login(&dc1, &huge).await.status, 413);
    assert!(dc1.journal().is_empty());
}

#[tokio::test]
async fn the_channel_register_and_init_need_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let other = Desk::start(dir.path(), "other", "another secret, not shared!", None).await;
    let foreign = token_of(&password_login(&other, "eve").await);
    for (method, path) in [("GET", "/rt"), ("POST", "/register"), ("GET", "/init")] {
        let request = |c: Option<String>| {
            let r = match method {
                "GET" => http().get(dc1.url(path)),
                _ => http().post(dc1.url(path)),
            };
            match c {
                Some(c) => r.header("cookie", c),
                None => r,
            }
        };
        let none = send(request(None)).await;
        assert_eq!(none.status, 401, "{method} {path}");
        assert!(error_of(&none).contains("log in first"), "{}", none.body);
        let bad = send(request(Some(cookie(&foreign)))).await;
        assert_eq!(bad.status, 401, "{method} {path}");
        assert!(
            error_of(&bad).contains("not valid at site dc1"),
            "{}",
            bad.body
        );
    }

    // With a session: hello (the site, the user, the session), then pings.
    let alice = password_login(&dc1, "alice").await;
    let token = token_of(&alice);
    let mut channel = Channel::open(&dc1, &token).await;
    let (name, hello) = channel.next().await;
    assert_eq!(name, "hello");
    assert_eq!(
        hello,
        json!({ "site": "dc1", "user": "alice", "session": alice.body["session"] })
    );
    let start = Instant::now();
    for _ in 0..3 {
        channel.wait_for("ping", |_| true).await;
    }
    let three = start.elapsed();
    assert!(
        three >= Duration::from_millis(600) && three < Duration::from_millis(2000),
        "three pings took {three:?} (one every 250 ms)"
    );
    // A token from the other site with the same secret opens it too.
    let dc2 = Desk::start(dir.path(), "dc2", SHARED, None).await;
    let mut there = Channel::open(&dc2, &token).await;
    assert_eq!(there.next().await.1["site"], "dc2");
}

/// A stand-in for the voice service: `/health` answers 200 or 503.
async fn voice_service(healthy: Arc<AtomicBool>) -> (SocketAddr, JoinHandle<()>) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            let healthy = Arc::clone(&healthy);
            async move {
                if healthy.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test]
async fn voice_state_changes_reach_every_open_channel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = Arc::new(AtomicBool::new(true));
    let (voice, voice_task) = voice_service(Arc::clone(&healthy)).await;
    let dc1 = Desk::start(
        dir.path(),
        "dc1",
        SHARED,
        Some(format!("http://{voice}/health")),
    )
    .await;
    let token = token_of(&password_login(&dc1, "alice").await);
    let mut a = Channel::open(&dc1, &token).await;
    let mut b = Channel::open(&dc1, &token).await;
    let is =
        |available: bool| move |d: &Value| d["service"] == "voice" && d["available"] == available;
    for channel in [&mut a, &mut b] {
        channel.wait_for("service", is(true)).await;
    }

    healthy.store(false, Ordering::SeqCst);
    for channel in [&mut a, &mut b] {
        let down = channel.wait_for("service", is(false)).await;
        assert!(
            down["detail"].as_str().is_some_and(|d| d.contains("503")),
            "{down}"
        );
    }
    // A channel opened now hears the current state at once.
    let mut late = Channel::open(&dc1, &token).await;
    assert_eq!(late.next().await.0, "hello");
    let (name, state) = late.next().await;
    assert_eq!(
        (name.as_str(), &state["available"]),
        ("service", &json!(false))
    );
    // /init says it too.
    let init = send(
        http()
            .get(dc1.url("/init"))
            .header("cookie", cookie(&token)),
    )
    .await;
    assert_eq!(init.status, 200);
    assert_eq!(
        init.body["services"][0]["available"], false,
        "{}",
        init.body
    );

    healthy.store(true, Ordering::SeqCst);
    for channel in [&mut a, &mut b, &mut late] {
        channel.wait_for("service", is(true)).await;
    }
    // The service gone altogether: unavailable, with the cause.
    voice_task.abort();
    let gone = a.wait_for("service", is(false)).await;
    assert!(
        gone["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed")),
        "{gone}"
    );
}

#[tokio::test]
async fn fault_switches_fail_register_and_init_until_cleared_and_unregister_reaches_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let token = token_of(&password_login(&dc1, "alice").await);
    let register = || {
        send(
            http()
                .post(dc1.url("/register"))
                .header("cookie", cookie(&token)),
        )
    };
    let init = || {
        send(
            http()
                .get(dc1.url("/init"))
                .header("cookie", cookie(&token)),
        )
    };
    let fault = |name: &str| send(http().post(dc1.url(&format!("/fault/{name}"))));

    let ok = register().await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["registered"], true);
    assert_eq!(init().await.status, 200);

    assert_eq!(fault("register").await.status, 200);
    for _ in 0..2 {
        let refused = register().await;
        assert_eq!(refused.status, 503);
        assert!(error_of(&refused).contains("register fault"));
    }
    assert_eq!(init().await.status, 200, "only registration fails");
    let both = fault("init").await;
    assert_eq!(
        both.body,
        json!({"faults": {"register": true, "init": true}})
    );
    let refused = init().await;
    assert_eq!(refused.status, 503);
    assert!(error_of(&refused).contains("initialisation failed at site dc1"));

    let cleared = fault("clear").await;
    assert_eq!(
        cleared.body,
        json!({"faults": {"register": false, "init": false}})
    );
    assert_eq!(register().await.status, 200);
    assert_eq!(init().await.status, 200);

    let mut a = Channel::open(&dc1, &token).await;
    let mut b = Channel::open(&dc1, &token).await;
    a.wait_for("hello", |_| true).await;
    b.wait_for("hello", |_| true).await;
    let sent = fault("unregister").await;
    assert_eq!(sent.body, json!({ "channels": 2 }));
    for channel in [&mut a, &mut b] {
        let said = channel.wait_for("unregistered", |_| true).await;
        assert!(
            said["detail"]
                .as_str()
                .is_some_and(|d| d.contains("site dc1")),
            "{said}"
        );
    }
}

#[tokio::test]
async fn the_page_the_library_and_health_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc1 = Desk::start(dir.path(), "dc1", SHARED, None).await;
    let page = http().get(dc1.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().await.expect("page");
    for needle in [
        "TandemSite.start(",
        "hysteresisMs: 1500,",
        "minDwellMs: 30000,",
        r#"<b id="page-site">dc1</b>"#,
        r#"id="login""#,
        r#"id="banner""#,
        r#"id="return""#,
    ] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }
    let js = http()
        .get(dc1.url("/tandem-site.js"))
        .send()
        .await
        .expect("GET /tandem-site.js");
    assert_eq!(
        js.headers()["content-type"],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(
        js.text().await.expect("js"),
        tandem_client::browser::SITE_JS
    );
    let health = send(http().get(dc1.url("/healthz"))).await;
    assert_eq!(
        (health.status, health.body),
        (200, json!({"status": "ok", "site": "dc1"}))
    );
    let missing = send(http().get(dc1.url("/nope"))).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body["error"].is_string());
}

#[tokio::test]
async fn a_desk_refuses_to_start_with_a_short_secret_a_bad_site_or_voice_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |args: DeskArgs| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        serve_desk(args, listener, || Ok(()), std::future::pending())
            .await
            .expect_err("refused")
            .to_string()
    };
    let short = start(args(dir.path(), "dc1", "short", None)).await;
    assert!(short.contains("at least 16"), "{short}");
    let mut missing = args(dir.path(), "dc1", SHARED, None);
    missing.sso_secret_file = Some(dir.path().join("absent"));
    assert!(start(missing).await.contains("cannot open"));
    let mut bad_site = args(dir.path(), "dc1", SHARED, None);
    bad_site.site = "<script>".into();
    assert!(start(bad_site).await.contains("not a site name"));
    let voice = start(args(dir.path(), "dc1", SHARED, Some("ftp://x/y".into()))).await;
    assert!(voice.contains("only http"), "{voice}");
    let voice = start(args(dir.path(), "dc1", SHARED, Some("not a url".into()))).await;
    assert!(voice.contains("not a URL"), "{voice}");
}
