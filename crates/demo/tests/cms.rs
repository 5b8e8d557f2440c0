//! Tests of the CMS deployment's demo components (`tandem demo-switch`,
//! `tandem demo-cms`), in process, over real TCP on 127.0.0.1: the link
//! hook answers only once the switch's journal has what it claims, the
//! link reports say whether a CMS could use each link, and a cut takes the
//! link of one CMS only.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tandem_demo::Role;
use tandem_demo::cms::{CmsArgs, LinkSpec, SwitchArgs, serve_cms, serve_switch};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The liveness of every switch and CMS here.
const LIVENESS_MS: u64 = 300;
/// How often every CMS here probes its links' reachability.
const PROBE_MS: u64 = 100;
/// Bound on every wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// A switch served in a task, stopped when dropped.
struct Switch {
    addr: SocketAddr,
    control: SocketAddr,
    journal: PathBuf,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

impl Switch {
    async fn start(dir: &Path, name: &str, main: Option<SocketAddr>) -> Switch {
        let listener = bind().await;
        let control = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let control_addr = control.local_addr().expect("local addr");
        let journal = dir.join(format!("switch-{name}.jsonl"));
        let args = SwitchArgs {
            listen: addr,
            name: name.into(),
            main,
            journal: Some(journal.clone()),
            control: Some(control_addr),
            liveness_ms: LIVENESS_MS,
        };
        let task = tokio::spawn(serve_switch(
            args,
            listener,
            Some(control),
            std::future::pending(),
        ));
        Switch {
            addr,
            control: control_addr,
            journal,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }

    fn journal(&self) -> Vec<Value> {
        read_lines(&self.journal)
    }

    /// The journal's lines of `event` for `who`.
    fn events(&self, event: &str, who: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|l| l["event"] == event && l["who"] == who)
            .collect()
    }
}

/// A CMS served in a task, stopped when dropped.
struct Cms {
    url: String,
    instance: String,
    links_dir: PathBuf,
    admin_dir: PathBuf,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Cms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cms {
    async fn start(
        dir: &Path,
        instance: &str,
        links: &[(&str, SocketAddr)],
        role: Role,
        edits_every_ms: Option<u64>,
    ) -> Cms {
        let listener = bind().await;
        let addr = listener.local_addr().expect("local addr");
        let links_dir = dir.join(format!("links-{instance}"));
        let admin_dir = dir.join(format!("admin-{instance}"));
        let args = CmsArgs {
            listen: addr,
            links: links
                .iter()
                .map(|(name, addr)| LinkSpec {
                    name: (*name).into(),
                    addr: *addr,
                })
                .collect(),
            admin_dir: Some(admin_dir.clone()),
            journal: Some(dir.join(format!("cms-{instance}.jsonl"))),
            liveness_ms: LIVENESS_MS,
            probe_ms: PROBE_MS,
            edits_every_ms,
            app: "cms".into(),
            instance: instance.into(),
            role,
            epoch: 3,
            links_dir: Some(links_dir.clone()),
        };
        let task = tokio::spawn(serve_cms(args, listener, || Ok(()), std::future::pending()));
        Cms {
            url: format!("http://{addr}"),
            instance: instance.into(),
            links_dir,
            admin_dir,
            task,
        }
    }

    async fn get(&self) -> Value {
        let (status, body) = get(&format!("{}/", self.url)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn link(&self, link: &str, action: &str) -> (u16, Value) {
        let body =
            json!({ "app": "cms", "instance": self.instance, "link": link, "action": action });
        post(&format!("{}/tandem/link", self.url), &body.to_string()).await
    }

    async fn role(&self, role: &str, epoch: u64) -> (u16, Value) {
        let body = json!({ "role": role, "epoch": epoch });
        post(&format!("{}/tandem/role", self.url), &body.to_string()).await
    }

    fn active_file(&self) -> String {
        std::fs::read_to_string(self.links_dir.join(".active")).expect("read .active")
    }

    /// `$TANDEM_LINKS_DIR/<link>`, empty while not written yet.
    fn report(&self, link: &str) -> String {
        std::fs::read_to_string(self.links_dir.join(link)).unwrap_or_default()
    }

    /// Waits until the report of `link` satisfies `check`.
    async fn report_until(&self, link: &str, what: &str, check: impl Fn(&str) -> bool) {
        eventually(
            &format!("{}'s report of {link}: {what}", self.instance),
            || check(&self.report(link)),
        )
        .await;
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
        .collect()
}

fn now_ns() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(since.as_nanos()).expect("fits")
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .timeout(PATIENCE)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("HTTP body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn get(url: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(url)).await
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    send(
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

/// Waits until `check` holds, for at most [`PATIENCE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw client of the switch's line protocol.
struct LineClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl LineClient {
    async fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, writer) = stream.into_split();
        LineClient {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send a line");
    }

    /// The next line, `None` at end of stream.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("a line in time");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// The next line that is not `DATA`.
    async fn answer(&mut self) -> Option<String> {
        loop {
            match self.line().await {
                Some(line) if line.starts_with("DATA ") => continue,
                other => return other,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_is_journaled_before_ok_and_disable_closes_before_the_200() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Primary,
        None,
    )
    .await;

    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);
    // The switch journaled the open before it said OK.
    assert_eq!(
        main.events("open", "cms/a").len(),
        1,
        "{:?}",
        main.journal()
    );
    assert_eq!(cms.get().await["active"], json!(["acd-main"]));
    assert_eq!(cms.active_file(), "acd-main\n");
    cms.report_until("acd-main", "up", |r| r == "up\n").await;
    let (_, state) = get(&main.url("/")).await;
    assert_eq!(state["sessions"], json!(["cms/a"]));

    // Enabling again is a no-op; the session lives on ALIVE and DATA.
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(3 * LIVENESS_MS)).await;
    let state = cms.get().await;
    assert_eq!(state["active"], json!(["acd-main"]));
    assert!(
        state["links"]["acd-main"]["data_lines"].as_u64() > Some(3),
        "{state}"
    );
    assert_eq!(main.events("open", "cms/a").len(), 1);
    assert!(
        main.events("close", "cms/a").is_empty(),
        "{:?}",
        main.journal()
    );

    let (status, body) = cms.link("acd-main", "disable").await;
    assert_eq!(status, 200, "{body}");
    // The close was journaled before the BYE-OK that confirmed it.
    let closes = main.events("close", "cms/a");
    assert_eq!(closes.len(), 1, "{:?}", main.journal());
    assert_eq!(closes[0]["reason"], "bye");
    assert_eq!(closes[0]["switch"], "main");
    assert!(
        body["confirmed"]
            .as_str()
            .is_some_and(|c| c.contains("BYE-OK")),
        "{body}"
    );
    assert_eq!(cms.get().await["active"], json!([]));
    assert_eq!(cms.active_file(), "");
    // Inactive, but the switch answers its probes: the CMS could use it.
    cms.report_until("acd-main", "up", |r| r == "up\n").await;

    let (status, body) = cms.link("acd-main", "disable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], false);

    let kinds: Vec<_> = read_lines(&dir.path().join("cms-a.jsonl"))
        .into_iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["link-active", "link-inactive"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivable_refuses_a_cms_on_main_and_accepts_when_main_is_free_or_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let survivable = Switch::start(dir.path(), "survivable", Some(main.addr)).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr), ("acd-survivable", survivable.addr)],
        Role::Primary,
        None,
    )
    .await;

    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cms.link("acd-survivable", "enable").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cms/a is connected to the main switch")),
        "{body}"
    );
    assert_eq!(survivable.events("refused", "cms/a").len(), 1);
    assert!(survivable.events("open", "cms/a").is_empty());
    assert_eq!(cms.get().await["active"], json!(["acd-main"]));

    // Main says FREE once the CMS left it.
    let (status, body) = cms.link("acd-main", "disable").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cms.link("acd-survivable", "enable").await;
    assert_eq!(status, 200, "{body}");
    let opens = survivable.events("open", "cms/a");
    assert_eq!(opens.len(), 1);
    assert!(
        opens[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("FREE")),
        "{opens:?}"
    );
    assert_eq!(cms.get().await["active"], json!(["acd-survivable"]));
    assert_eq!(cms.active_file(), "acd-survivable\n");
    let (status, body) = cms.link("acd-survivable", "disable").await;
    assert_eq!(status, 200, "{body}");

    // Main down: the survivable accepts without asking.
    let (status, body) = post(&main.url("/down"), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cms.link("acd-survivable", "enable").await;
    assert_eq!(status, 200, "{body}");
    let opens = survivable.events("open", "cms/a");
    assert_eq!(opens.len(), 2);
    assert!(
        opens[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without the main switch")),
        "{opens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_down_closes_the_session_and_the_cms_reports_the_link_inactive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Primary,
        None,
    )
    .await;
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = post(&main.url("/down"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], json!(["cms/a"]));
    assert_eq!(body["up"], false);
    let closes = main.events("close", "cms/a");
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0]["reason"], "switch down");
    let refused = TcpStream::connect(main.addr).await;
    assert!(refused.is_err(), "a down switch accepted a connection");

    let started = Instant::now();
    eventually("the CMS to report no active link", || {
        cms.active_file().is_empty()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(LIVENESS_MS + 500),
        "noticed after {:?}",
        started.elapsed()
    );
    assert_eq!(cms.get().await["active"], json!([]));
    cms.report_until("acd-main", "down", |r| r.starts_with("down "))
        .await;
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 503, "{body}");

    let (status, body) = post(&main.url("/up"), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(main.events("open", "cms/a").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_during_a_stall_confirms_only_after_the_switch_closed_the_silent_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Primary,
        None,
    )
    .await;
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, body) = post(&main.url("/stall"), "").await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let (status, body) = cms.link("acd-main", "disable").await;
    let answered_ns = now_ns();
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(LIVENESS_MS * 2 / 3),
        "confirmed after only {:?}: {body}",
        started.elapsed()
    );
    let closes = main.events("close", "cms/a");
    assert_eq!(
        closes.len(),
        1,
        "the 200 came before the switch closed: {body}"
    );
    assert!(
        closes[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("silent for")),
        "{closes:?}"
    );
    assert!(
        closes[0]["at_ns"]
            .as_u64()
            .is_some_and(|at| at <= answered_ns)
    );
    assert!(
        body["confirmed"]
            .as_str()
            .is_some_and(|c| c.contains("liveness timer")),
        "{body}"
    );
    assert_eq!(cms.active_file(), "");

    let (status, _) = post(&main.url("/unstall"), "").await;
    assert_eq!(status, 200);
    let (_, state) = get(&main.url("/")).await;
    assert_eq!(state["sessions"], json!([]));
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehave_both_enables_every_link_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    // Not told about main: it cannot refuse.
    let other = Switch::start(dir.path(), "other", None).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr), ("acd-other", other.addr)],
        Role::Primary,
        None,
    )
    .await;
    let (status, body) = post(&format!("{}/misbehave/both", cms.url), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["acd-main"]["status"], 200, "{body}");
    assert_eq!(body["results"]["acd-other"]["status"], 200, "{body}");
    assert_eq!(cms.get().await["active"], json!(["acd-main", "acd-other"]));
    assert_eq!(cms.active_file(), "acd-main\nacd-other\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Backup,
        None,
    )
    .await;
    let edit = format!("{}/admin/edit", cms.url);

    let (status, body) = post(&edit, r#"{"key":"agents","value":"x"}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not primary"))
    );
    let (status, body) = cms.role("primary", 4).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["role"].clone(), body["epoch"].clone()),
        (json!("primary"), json!(4))
    );
    for key in ["../x", "a/b", "", ".hidden"] {
        let (status, body) = post(&edit, &json!({ "key": key, "value": "x" }).to_string()).await;
        assert_eq!(status, 400, "{key:?}: {body}");
    }
    assert!(!dir.path().join("x").exists());
    let (status, body) = post(&edit, "{not json").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&edit, r#"{"key":"agents","value":"1 2 3"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "agents");
    assert_eq!(body["bytes"], 5);
    let written = std::fs::read_to_string(cms.admin_dir.join("agents")).expect("edit written");
    assert_eq!(written, "1 2 3");

    let (status, body) = cms.link("acd-nowhere", "enable").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = cms.link("acd-main", "reboot").await;
    assert_eq!(status, 400, "{body}");
    let link = format!("{}/tandem/link", cms.url);
    let (status, body) = post(&link, "garbage").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &link,
        r#"{"app":"cms","instance":"b","link":"acd-main","action":"enable"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&format!("{}/tandem/role", cms.url), "[1,2").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = cms.role("backup", 2).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = cms.role("master", 9).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(&format!("{}/health", cms.url)).await;
    assert_eq!(status, 200);
    assert_eq!(cms.get().await["active"], json!([]));

    // The switch: garbage lines get ERROR and a close, never a panic.
    for garbage in [
        "HELLO",
        "LINK",
        "LINK nobody",
        "QUERY a/b/c",
        "LINK cms/a extra",
        "PROBE",
        "PROBE nobody",
    ] {
        let mut client = LineClient::connect(main.addr).await;
        client.send(garbage).await;
        let answer = client.line().await.unwrap_or_default();
        assert!(answer.starts_with("ERROR "), "{garbage:?} got {answer:?}");
        assert_eq!(client.line().await, None, "{garbage:?}: not closed");
    }
    let mut client = LineClient::connect(main.addr).await;
    client
        .writer
        .write_all(&[0xff, 0xfe, b'\n'])
        .await
        .expect("send");
    assert!(
        client
            .line()
            .await
            .unwrap_or_default()
            .starts_with("ERROR ")
    );

    // A bare probe connects and leaves, a PROBE is answered: nothing
    // journaled either way.
    drop(TcpStream::connect(main.addr).await.expect("probe"));
    let mut client = LineClient::connect(main.addr).await;
    client.send("PROBE cms/z").await;
    assert_eq!(client.line().await.as_deref(), Some("OK"));
    assert_eq!(
        client.line().await,
        None,
        "the PROBE connection was not closed"
    );
    let mut client = LineClient::connect(main.addr).await;
    client.send("QUERY cms/a").await;
    assert_eq!(client.line().await.as_deref(), Some("FREE"));
    assert!(main.journal().is_empty(), "{:?}", main.journal());
    let (status, _) = get(&main.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_sessions_follow_the_line_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;

    let mut first = LineClient::connect(main.addr).await;
    first.send("LINK cms/x").await;
    assert_eq!(first.line().await.as_deref(), Some("OK"));
    assert_eq!(main.events("open", "cms/x").len(), 1);
    assert!(first.line().await.is_some_and(|l| l.starts_with("DATA ")));

    // A second session of the same client is refused.
    let mut second = LineClient::connect(main.addr).await;
    second.send("LINK cms/x").await;
    assert_eq!(
        second.line().await.as_deref(),
        Some("REFUSED cms/x already has a session here")
    );
    assert_eq!(second.line().await, None);
    let mut query = LineClient::connect(main.addr).await;
    query.send("QUERY cms/x").await;
    assert_eq!(query.line().await.as_deref(), Some("CONNECTED"));

    // BYE: the close is journaled before BYE-OK.
    first.send("BYE").await;
    assert_eq!(first.answer().await.as_deref(), Some("BYE-OK"));
    let closes = main.events("close", "cms/x");
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0]["reason"], "bye");
    assert_eq!(first.answer().await, None);

    // A silent client is closed after the liveness.
    let mut silent = LineClient::connect(main.addr).await;
    silent.send("LINK cms/y").await;
    assert_eq!(silent.line().await.as_deref(), Some("OK"));
    assert_eq!(silent.answer().await, None);
    let closes = main.events("close", "cms/y");
    assert_eq!(closes.len(), 1);
    assert!(
        closes[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("silent for")),
        "{closes:?}"
    );

    // A client that goes away is closed too.
    let mut gone = LineClient::connect(main.addr).await;
    gone.send("LINK cms/z").await;
    assert_eq!(gone.line().await.as_deref(), Some("OK"));
    drop(gone);
    eventually("the close of cms/z", || {
        main.events("close", "cms/z").len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_every_ms_numbers_edits_after_the_highest_and_stops_while_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let admin = dir.path().join("admin-a");
    std::fs::create_dir_all(&admin).expect("admin dir");
    std::fs::write(admin.join("edit-4"), "4 1 b\n").expect("an older edit");
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Primary,
        Some(20),
    )
    .await;
    assert_eq!(cms.admin_dir, admin);

    eventually("edit-7", || admin.join("edit-7").exists()).await;
    for seq in 5..=7 {
        let text = std::fs::read_to_string(admin.join(format!("edit-{seq}"))).expect("edit");
        assert_eq!(text, format!("{seq} 3 a\n"));
    }
    assert!(cms.get().await["admin_edits"].as_u64() >= Some(3));

    let (status, body) = cms.role("backup", 3).await;
    assert_eq!(status, 200, "{body}");
    // An edit in flight when the role changed may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let count = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("read admin dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("edit-"))
            .count()
    };
    let while_backup = count(&admin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&admin), while_backup, "edits went on while backup");

    let (status, body) = cms.role("primary", 5).await;
    assert_eq!(status, 200, "{body}");
    let next = while_backup + 4;
    eventually("an edit at epoch 5", || {
        admin.join(format!("edit-{next}")).exists()
    })
    .await;
    let text = std::fs::read_to_string(admin.join(format!("edit-{next}"))).expect("edit");
    assert_eq!(text, format!("{next} 5 a\n"));
    let seqs: Vec<u64> = read_lines(&dir.path().join("cms-a.jsonl"))
        .into_iter()
        .filter(|l| l["event"] == "edit")
        .filter_map(|l| l["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(seqs.first(), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_reports_say_whether_the_cms_could_use_each_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let survivable = Switch::start(dir.path(), "survivable", Some(main.addr)).await;
    let cms = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr), ("acd-survivable", survivable.addr)],
        Role::Primary,
        None,
    )
    .await;

    // Nothing enabled: both switches answer, so both links are up.
    cms.report_until("acd-main", "up", |r| r == "up\n").await;
    cms.report_until("acd-survivable", "up", |r| r == "up\n")
        .await;
    assert_eq!(cms.active_file(), "");
    let state = cms.get().await;
    assert_eq!(state["active"], json!([]));
    assert_eq!(state["links"]["acd-main"]["reported"], "up", "{state}");
    // Probes are journaled nothing.
    assert!(main.journal().is_empty(), "{:?}", main.journal());
    assert!(
        survivable.journal().is_empty(),
        "{:?}",
        survivable.journal()
    );

    // Main down: its listener is closed, the probe cannot connect.
    let (status, body) = post(&main.url("/down"), "").await;
    assert_eq!(status, 200, "{body}");
    cms.report_until("acd-main", "down", |r| r.starts_with("down "))
        .await;
    assert!(
        cms.report("acd-main").contains("cannot connect"),
        "{}",
        cms.report("acd-main")
    );
    // The survivable answers its probes all the same.
    cms.report_until("acd-survivable", "still up", |r| r == "up\n")
        .await;
    let state = cms.get().await;
    assert!(
        state["links"]["acd-main"]["reported"]
            .as_str()
            .is_some_and(|r| r.starts_with("down ")),
        "{state}"
    );
    let (status, body) = post(&main.url("/up"), "").await;
    assert_eq!(status, 200, "{body}");
    cms.report_until("acd-main", "up again", |r| r == "up\n")
        .await;

    // A stalled survivable does not answer: its probe times out.
    let (status, body) = post(&survivable.url("/stall"), "").await;
    assert_eq!(status, 200, "{body}");
    cms.report_until("acd-survivable", "down (no answer)", |r| {
        r.starts_with("down ") && r.contains("no answer")
    })
    .await;
    cms.report_until("acd-main", "still up", |r| r == "up\n")
        .await;
    let (status, body) = post(&survivable.url("/unstall"), "").await;
    assert_eq!(status, 200, "{body}");
    cms.report_until("acd-survivable", "up again", |r| r == "up\n")
        .await;

    // An active link is up; the switch journals only the session.
    let (status, body) = cms.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cms.report("acd-main"), "up\n");
    assert_eq!(cms.active_file(), "acd-main\n");
    tokio::time::sleep(Duration::from_millis(3 * PROBE_MS)).await;
    assert_eq!(cms.report("acd-main"), "up\n");
    let events: Vec<_> = main
        .journal()
        .into_iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, ["open"], "{:?}", main.journal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_takes_the_link_of_one_cms_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let a = Cms::start(
        dir.path(),
        "a",
        &[("acd-main", main.addr)],
        Role::Primary,
        None,
    )
    .await;
    let b = Cms::start(
        dir.path(),
        "b",
        &[("acd-main", main.addr)],
        Role::Backup,
        None,
    )
    .await;
    let (status, body) = a.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = b.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    a.report_until("acd-main", "up", |r| r == "up\n").await;
    b.report_until("acd-main", "up", |r| r == "up\n").await;

    // Bad requests change nothing.
    for path in [
        "/cut",
        "/cut?who=",
        "/cut?who=cms",
        "/cut?who=a/b/c",
        "/uncut",
    ] {
        let (status, body) = post(&main.url(path), "").await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (_, state) = get(&main.url("/")).await;
    assert_eq!(state["cuts"], json!([]));
    assert_eq!(state["sessions"], json!(["cms/a", "cms/b"]));

    // Cut cms/a: its session is closed, journaled with reason "cut".
    let (status, body) = post(&main.url("/cut?who=cms/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], true, "{body}");
    assert_eq!(body["cuts"], json!(["cms/a"]));
    assert_eq!(body["sessions"], json!(["cms/b"]));
    let closes = main.events("close", "cms/a");
    assert_eq!(closes.len(), 1, "{:?}", main.journal());
    assert_eq!(closes[0]["reason"], "cut");
    assert!(main.events("close", "cms/b").is_empty());

    eventually("cms/a to report no active link", || {
        a.active_file().is_empty()
    })
    .await;
    a.report_until("acd-main", "down cut", |r| {
        r.starts_with("down ") && r.contains("cut")
    })
    .await;
    assert_eq!(a.get().await["active"], json!([]));
    // cms/b keeps its session, and its link is up.
    assert_eq!(b.report("acd-main"), "up\n");
    assert_eq!(b.active_file(), "acd-main\n");
    assert_eq!(b.get().await["active"], json!(["acd-main"]));

    // cms/a's LINK is refused (journaled), its PROBE too (not journaled).
    let (status, body) = a.link("acd-main", "enable").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("cut")),
        "{body}"
    );
    let refused = main.events("refused", "cms/a");
    assert_eq!(refused.len(), 1, "{:?}", main.journal());
    assert_eq!(refused[0]["reason"], "cut");
    let mut probe = LineClient::connect(main.addr).await;
    probe.send("PROBE cms/a").await;
    assert_eq!(probe.line().await.as_deref(), Some("REFUSED cut"));
    assert_eq!(probe.line().await, None);
    let mut probe = LineClient::connect(main.addr).await;
    probe.send("PROBE cms/b").await;
    assert_eq!(probe.line().await.as_deref(), Some("OK"));
    // Cutting again closes nothing more.
    let (status, body) = post(&main.url("/cut?who=cms/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], false, "{body}");
    assert_eq!(main.events("close", "cms/a").len(), 1);
    assert_eq!(b.report("acd-main"), "up\n");

    // Uncut: cms/a's link is up again and can be enabled.
    let (status, body) = post(&main.url("/uncut?who=cms/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_cut"], true, "{body}");
    assert_eq!(body["cuts"], json!([]));
    a.report_until("acd-main", "up again", |r| r == "up\n")
        .await;
    let (status, body) = a.link("acd-main", "enable").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.active_file(), "acd-main\n");
    assert_eq!(main.events("open", "cms/a").len(), 2);
    let (_, state) = get(&main.url("/")).await;
    assert_eq!(state["sessions"], json!(["cms/a", "cms/b"]));
    let (status, body) = post(&main.url("/uncut?who=cms/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_cut"], false, "{body}");
    // The switch journaled sessions only: no line for any probe.
    let kinds: Vec<_> = main
        .journal()
        .into_iter()
        .map(|l| {
            format!(
                "{} {}",
                l["event"].as_str().unwrap_or_default(),
                l["who"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "open cms/a",
            "open cms/b",
            "close cms/a",
            "refused cms/a",
            "open cms/a"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_client_is_refused_by_a_survivable_before_it_asks_main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Switch::start(dir.path(), "main", None).await;
    let survivable = Switch::start(dir.path(), "survivable", Some(main.addr)).await;
    let (status, body) = post(&survivable.url("/cut?who=cms/a"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], false, "{body}");

    let mut client = LineClient::connect(survivable.addr).await;
    client.send("LINK cms/a").await;
    assert_eq!(client.line().await.as_deref(), Some("REFUSED cut"));
    assert_eq!(client.line().await, None);
    let refused = survivable.events("refused", "cms/a");
    assert_eq!(refused.len(), 1, "{:?}", survivable.journal());
    assert_eq!(refused[0]["reason"], "cut");
    // Another client is not affected.
    let mut other = LineClient::connect(survivable.addr).await;
    other.send("LINK cms/b").await;
    assert_eq!(other.line().await.as_deref(), Some("OK"));
    assert_eq!(survivable.events("open", "cms/b").len(), 1);
}
