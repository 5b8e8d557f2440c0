//! Agents authenticate each other on the agent port: real `tandem agent`
//! processes on a real etcd member, each started with
//! `--cluster-secret-file`, hosts h1 (127.0.0.1) and h2 (127.0.0.2), a
//! warm-standby pair `web` (a on h1, b on h2). Each agent reaches etcd
//! through a TCP link of the test's that can be cut.
//!
//! - A forged failsafe request (unsigned, signed with another secret,
//!   stale, replayed) to an agent that cannot reach the store is refused
//!   with 401 and makes no promise: when the primary dies afterwards, the
//!   backup there is promoted as usual, never held back.
//! - A forged failsafe answer (unsigned, another secret, or a valid
//!   answer to another request) from a fake peer at h2's address is not
//!   counted: the primary on h1, cut off from the store, steps down as if
//!   nobody had answered. The same fake peer answering with the right
//!   secret keeps it primary (the check that the test can see the
//!   difference).
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "../../store-etcd/tests/common/mod.rs"]
mod etcd;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{demo_get, free_port, tandem};
use serde_json::Value;
use tandem_agent::sign::{
    self, ClusterSecret, Message, SIGNATURE_HEADER, Signature, new_nonce, sign_answer, sign_request,
};
use tandem_api::types::{AppDoc, Health, Role};
use tandem_client::ApiClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// One cluster at a time: they share the machine's cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE_TTL: Duration = Duration::from_secs(2);

fn topology(ports: [u16; 2], agent_port: u16, lease_ttl: Duration) -> String {
    format!(
        r#"
[cluster]
lease_ttl = "{ttl}ms"
renew_interval = "300ms"
fence_margin = "800ms"
agent_port = {agent_port}

[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[[hosts]]
name = "h2"
site = "dc1"
address = "127.0.0.2"

[apps.web]
ha = "warm-standby"
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}",
           "--journal", "journal.{{instance}}.jsonl", "--acting-every-ms", "5"]

[[apps.web.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
failures_before_unhealthy = 2
successes_before_healthy = 1

[apps.web.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "300ms"

[[apps.web.instances]]
id = "a"
host = "h1"
priority = 10
ports = {{ http = {pa} }}

[[apps.web.instances]]
id = "b"
host = "h2"
ports = {{ http = {pb} }}
"#,
        ttl = lease_ttl.as_millis(),
        pa = ports[0],
        pb = ports[1],
    )
}

/// A TCP link from a local port to etcd that the test can cut: while cut,
/// open connections are closed and new ones refused at once.
struct Link {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Link {
    async fn start(to: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Link { port, cut }
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}

/// A `tandem agent` process, killed when dropped.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_secret(dir: &Path, name: &str) -> (std::path::PathBuf, ClusterSecret) {
    let path = dir.join(name);
    let out = Command::new(tandem())
        .args(["secret", "new"])
        .arg(&path)
        .output()
        .expect("tandem secret new");
    assert!(
        out.status.success(),
        "tandem secret new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&path)
        .expect("secret")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "a new secret file is private");
    let secret = ClusterSecret::load(&path).expect("the secret loads");
    (path, secret)
}

fn start_agent(dir: &Path, store: &str, host: &str, secret: &Path, api: Option<&str>) -> AgentProc {
    let log = std::fs::File::create(dir.join(format!("agent-{host}.log"))).expect("log");
    let mut cmd = Command::new(tandem());
    cmd.args(["agent", "--store", store, "--host", host])
        .arg("--cluster-secret-file")
        .arg(secret)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if let Some(api) = api {
        cmd.args(["--api", api]);
    }
    AgentProc(cmd.spawn().expect("spawn tandem agent"))
}

fn apply(dir: &Path, store: &str, text: &str) {
    let file = dir.join("topology.toml");
    std::fs::write(&file, text).expect("write topology");
    let out = Command::new(tandem())
        .args(["topology", "apply"])
        .arg(&file)
        .args(["--store", store])
        .output()
        .expect("tandem topology apply");
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// The sum of an agent's `tandem_host_decisions_total` for `reason`.
async fn decisions(agent: SocketAddr, reason: &str) -> u64 {
    let text = http()
        .get(format!("http://{agent}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("tandem_host_decisions_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The agent's `tandem_store_reachable` gauge.
async fn store_reachable(agent: SocketAddr) -> Option<bool> {
    let text = http()
        .get(format!("http://{agent}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("tandem_store_reachable"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.trim() == "1")
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_app(api: &ApiClient, what: &str, secs: u64, pred: impl Fn(&AppDoc) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(app) = api.app("web").await
            && pred(&app)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            api.app("web").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ask_body(app: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"from": "h1", "app": app, "hold_ms": 60_000}))
        .expect("json")
}

fn failsafe_msg(body: &[u8]) -> Message<'_> {
    Message {
        method: "POST",
        path: "/v1/failsafe",
        body,
    }
}

/// Posts a failsafe request with `signature` (if any); (status, body).
async fn post_ask(agent: SocketAddr, body: &[u8], signature: Option<String>) -> (u16, String) {
    let mut req = http()
        .post(format!("http://{agent}/v1/failsafe"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header(SIGNATURE_HEADER, s);
    }
    let resp = req.send().await.expect("the agent answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// GET / of a demo component at `ip:port`.
async fn demo_at(ip: &str, port: u16) -> Option<Value> {
    http()
        .get(format!("http://{ip}:{port}/"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn log_of(dir: &Path, host: &str) -> String {
    std::fs::read_to_string(dir.join(format!("agent-{host}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_failsafe_requests_are_refused_and_promise_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(1))
        .await
        .expect("etcd");
    let etcd_addr: SocketAddr = cluster.endpoint(0)["http://".len()..]
        .parse()
        .expect("etcd address");
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret_file, secret) = write_secret(dir.path(), "cluster.secret");
    let (_, wrong) = write_secret(dir.path(), "other.secret");
    let ports = [free_port(), free_port()];
    let agent_port = free_port();
    // A long lease: a promise (one lease at most) would outlast the whole
    // failover below.
    let ttl = Duration::from_secs(10);
    apply(
        dir.path(),
        &format!("etcd://{etcd_addr}"),
        &topology(ports, agent_port, ttl),
    );
    let link1 = Link::start(etcd_addr).await;
    let link2 = Link::start(etcd_addr).await;
    let api_addr = format!("127.0.0.1:{}", free_port());
    let _h1 = start_agent(
        dir.path(),
        &link1.url(),
        "h1",
        &secret_file,
        Some(&api_addr),
    );
    let api = ApiClient::new(&api_addr).expect("client");
    wait_app(&api, "a primary", 30, |a| a.primary.as_deref() == Some("a")).await;
    let _h2 = start_agent(dir.path(), &link2.url(), "h2", &secret_file, None);
    wait_app(&api, "a primary, b healthy backup", 30, |a| {
        a.primary.as_deref() == Some("a")
            && a.instances.iter().all(|i| i.health == Health::Healthy)
            && a.instances
                .iter()
                .any(|i| i.id == "b" && i.role == Role::Backup)
    })
    .await;
    let h2: SocketAddr = format!("127.0.0.2:{agent_port}").parse().expect("addr");
    assert!(
        !log_of(dir.path(), "h2").contains("is unauthenticated"),
        "an agent with a secret does not warn"
    );

    // h2 loses the store: it would now promise a primary's host to hold
    // back web's promotions.
    link2.set_cut(true);
    wait_until("h2 to lose the store", 20, || async {
        store_reachable(h2).await == Some(false)
    })
    .await;

    // A genuine request, for an app h2 does not run: answered, promised
    // (the test can see a promise), and not accepted twice.
    let body = ask_body("unrelated");
    let sig = sign_request(
        &secret,
        failsafe_msg(&body),
        tandem_agent::peer::wall_ms(),
        new_nonce().expect("nonce"),
    )
    .header();
    let (status, answer) = post_ask(h2, &body, Some(sig.clone())).await;
    assert_eq!(status, 200, "a signed request is answered: {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json answer");
    assert!(answer["promised_ms"].as_u64().is_some(), "{answer}");
    assert_eq!(decisions(h2, "failsafe_promised").await, 1);
    let (status, why) = post_ask(h2, &body, Some(sig)).await;
    assert_eq!(status, 401, "a replayed request is refused: {why}");
    assert!(why.contains("replayed"), "{why}");

    // Forged requests for web: none is taken.
    let body = ask_body("web");
    let now = tandem_agent::peer::wall_ms();
    let nonce = || new_nonce().expect("nonce");
    let forged = [
        ("unsigned", None, "not signed"),
        (
            "another secret",
            Some(sign_request(&wrong, failsafe_msg(&body), now, nonce()).header()),
            "does not match",
        ),
        (
            "stale",
            Some(
                sign_request(
                    &secret,
                    failsafe_msg(&body),
                    now - sign::MAX_SKEW_MS - 5_000,
                    nonce(),
                )
                .header(),
            ),
            "stale",
        ),
        (
            "for another body",
            Some(sign_request(&secret, failsafe_msg(&ask_body("x")), now, nonce()).header()),
            "does not match",
        ),
        ("garbage", Some("t=1,n=zz,s=00".to_string()), "malformed"),
    ];
    for (what, signature, says) in forged {
        let (status, why) = post_ask(h2, &body, signature).await;
        assert_eq!(status, 401, "{what}: {why}");
        assert!(why.contains(says), "{what}: {why}");
    }
    assert_eq!(
        decisions(h2, "failsafe_promised").await,
        1,
        "a forged request made h2 promise"
    );

    // The store comes back to h2, then web's primary dies: b is promoted
    // as usual, never held back by a promise.
    link2.set_cut(false);
    wait_until("h2 to reach the store again", 30, || async {
        store_reachable(h2).await == Some(true)
    })
    .await;
    let a_pid = api
        .app("web")
        .await
        .expect("web")
        .instances
        .iter()
        .find(|i| i.id == "a")
        .and_then(|i| i.pid)
        .expect("a's pid");
    common::signal(a_pid, "KILL");
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !demo_at("127.0.0.2", ports[1])
        .await
        .is_some_and(|v| v["role"] == "primary")
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for b to act as primary: {:?}\n--- h1 ---\n{}\n--- h2 ---\n{}",
            api.app("web").await,
            log_of(dir.path(), "h1"),
            log_of(dir.path(), "h2")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        decisions(h2, "promotion_held").await,
        0,
        "b's promotion was held back by a forged promise"
    );
    assert!(
        killed.elapsed() < ttl,
        "b was promoted {:?} after a died: held back for a lease",
        killed.elapsed()
    );
    let log = log_of(dir.path(), "h2");
    assert!(
        log.contains("refused a failsafe request"),
        "h2 logs what it refused: {log}"
    );
    drop(link1);
}

/// How the fake peer at h2's address answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fake {
    Unsigned,
    OtherSecret,
    AnotherRequest,
    RightSecret,
}

/// A fake h2 agent: answers every failsafe request "cannot reach the
/// store, promised", signed as `how` says; counts the signed requests.
async fn fake_peer(addr: SocketAddr, secret: ClusterSecret, how: Fake, asked: Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the fake peer at h2's agent port");
    let wrong = ClusterSecret::generate().expect("secret");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (secret, wrong, asked) = (secret.clone(), wrong.clone(), asked.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, head) = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (i + 4, String::from_utf8_lossy(&buf[..i]).to_lowercase());
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .map(|v| v.trim().to_string())
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                if !head.starts_with("post /v1/failsafe ") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let request = header(SIGNATURE_HEADER).and_then(|h| Signature::parse(&h).ok());
                if request.is_some() {
                    asked.fetch_add(1, Ordering::SeqCst);
                }
                let body = serde_json::to_vec(&serde_json::json!({
                    "host": "h2",
                    "store_reachable": false,
                    "promised_ms": 600_000,
                    "refused": null,
                }))
                .expect("json");
                let msg = failsafe_msg(&body);
                let now = tandem_agent::peer::wall_ms();
                let request_nonce = request.map(|r| r.nonce).unwrap_or_default();
                let signature = match how {
                    Fake::Unsigned => None,
                    Fake::OtherSecret => Some(sign_answer(
                        &wrong,
                        msg,
                        &request_nonce,
                        now,
                        new_nonce().expect("nonce"),
                    )),
                    Fake::AnotherRequest => Some(sign_answer(
                        &secret,
                        msg,
                        &new_nonce().expect("nonce"),
                        now,
                        new_nonce().expect("nonce"),
                    )),
                    Fake::RightSecret => Some(sign_answer(
                        &secret,
                        msg,
                        &request_nonce,
                        now,
                        new_nonce().expect("nonce"),
                    )),
                };
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                if let Some(s) = signature {
                    resp.push_str(&format!("{SIGNATURE_HEADER}: {}\r\n", s.header()));
                }
                resp.push_str("\r\n");
                let mut out = resp.into_bytes();
                out.extend_from_slice(&body);
                let _ = conn.write_all(&out).await;
                let _ = conn.shutdown().await;
            });
        }
    });
}

/// h1 alone runs (a primary); a fake peer answers at h2's agent port as
/// `how` says; h1 is cut off from the store. Returns whether a still
/// acts as primary well past its lease, and h1's failsafe decisions.
async fn cut_off_primary_with_fake_peer(how: Fake) -> (bool, u64, u64) {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(1))
        .await
        .expect("etcd");
    let etcd_addr: SocketAddr = cluster.endpoint(0)["http://".len()..]
        .parse()
        .expect("etcd address");
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret_file, secret) = write_secret(dir.path(), "cluster.secret");
    let ports = [free_port(), free_port()];
    let agent_port = free_port();
    apply(
        dir.path(),
        &format!("etcd://{etcd_addr}"),
        &topology(ports, agent_port, LEASE_TTL),
    );
    let link1 = Link::start(etcd_addr).await;
    let api_addr = format!("127.0.0.1:{}", free_port());
    let _h1 = start_agent(
        dir.path(),
        &link1.url(),
        "h1",
        &secret_file,
        Some(&api_addr),
    );
    let api = ApiClient::new(&api_addr).expect("client");
    wait_app(&api, "a primary", 30, |a| a.primary.as_deref() == Some("a")).await;
    wait_until("a to act as primary", 20, || async {
        demo_get(ports[0])
            .await
            .is_some_and(|v| v["role"] == "primary")
    })
    .await;
    let asked = Arc::new(AtomicUsize::new(0));
    let h2: SocketAddr = format!("127.0.0.2:{agent_port}").parse().expect("addr");
    fake_peer(h2, secret, how, asked.clone()).await;

    link1.set_cut(true);
    // Well past the lease (and the fencing margin before it).
    tokio::time::sleep(LEASE_TTL * 2).await;
    let role = demo_get(ports[0]).await;
    let h1: SocketAddr = format!("127.0.0.1:{agent_port}").parse().expect("addr");
    let kept = decisions(h1, "failsafe_kept").await;
    let not_confirmed = decisions(h1, "failsafe_not_confirmed").await;
    assert!(
        asked.load(Ordering::SeqCst) > 0,
        "{how:?}: h1 never sent the fake peer a signed failsafe request"
    );
    let log = log_of(dir.path(), "h1");
    if how != Fake::RightSecret {
        assert!(
            log.contains("ignored a failsafe answer that is not signed with the cluster secret"),
            "{how:?}: h1 logs the answer it ignored:\n{log}"
        );
    }
    let primary = role.as_ref().is_some_and(|v| v["role"] == "primary");
    println!("{how:?}: a answers {role:?}; failsafe kept {kept}, not confirmed {not_confirmed}");
    (primary, kept, not_confirmed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_failsafe_answer_is_not_counted() {
    let (primary, kept, not_confirmed) = cut_off_primary_with_fake_peer(Fake::Unsigned).await;
    assert!(!primary, "a kept acting on an unsigned answer");
    assert_eq!(kept, 0);
    assert!(not_confirmed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failsafe_answer_signed_with_another_secret_is_not_counted() {
    let (primary, kept, not_confirmed) = cut_off_primary_with_fake_peer(Fake::OtherSecret).await;
    assert!(!primary, "a kept acting on an answer of another secret");
    assert_eq!(kept, 0);
    assert!(not_confirmed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failsafe_answer_to_another_request_is_not_counted() {
    let (primary, kept, not_confirmed) = cut_off_primary_with_fake_peer(Fake::AnotherRequest).await;
    assert!(!primary, "a kept acting on an answer to another request");
    assert_eq!(kept, 0);
    assert!(not_confirmed > 0);
}

/// The control: the same fake peer, answering with the right secret,
/// keeps the primary (so the tests above can see a counted answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failsafe_answer_signed_with_the_cluster_secret_keeps_the_primary() {
    let (primary, kept, _) = cut_off_primary_with_fake_peer(Fake::RightSecret).await;
    assert!(primary, "a stepped down although its peer confirmed");
    assert!(kept > 0);
}
