//! A real HAProxy in front of `tandem up`, both configured from the shipped
//! example (examples/haproxy.cfg and examples/haproxy.toml, with every port
//! replaced by a free one and nothing else changed): requests through
//! HAProxy reach the current primary and never a deposed one across kill -9
//! failovers, and a planned switchover drains the old primary (the
//! agent-check answers `up 0%` and HAProxy gives the server weight 0) so
//! that, under steady traffic, no request fails and none is answered by an
//! instance that is no longer primary.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Up, free_port, signal};
use serde_json::Value;
use tandem_client::SwitchoverOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// Every port the example uses: agents, web a and b, api1-3, HAProxy's
/// frontends and its stats page.
const EXAMPLE_PORTS: [u16; 10] = [7400, 8181, 8182, 8191, 8192, 8193, 8100, 8101, 8102, 8404];

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every number that is a key of `map` (a whole run of digits)
/// replaced by its value.
fn replace_ports(text: &str, map: &BTreeMap<u16, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        match digits.parse::<u16>().ok().and_then(|n| map.get(&n)) {
            Some(port) => out.push_str(&port.to_string()),
            None => out.push_str(digits),
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// True if `text` has `port` as a whole number.
fn has_port(text: &str, port: u16) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|n| n == port.to_string())
}

/// A running HAProxy, killed when dropped.
struct Haproxy {
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tandem up` on the example topology and HAProxy on the example
/// configuration, on free ports.
struct Setup {
    up: Up,
    haproxy: Haproxy,
    ports: BTreeMap<u16, u16>,
    http: reqwest::Client,
}

impl Setup {
    fn start() -> Setup {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: apt-get install haproxy (scripts/test.sh does)"
        );
        let (toml, cfg) = (example("haproxy.toml"), example("haproxy.cfg"));
        let ports: BTreeMap<u16, u16> = EXAMPLE_PORTS.iter().map(|p| (*p, free_port())).collect();
        for p in EXAMPLE_PORTS {
            assert!(
                has_port(&toml, p) || has_port(&cfg, p),
                "the example no longer uses port {p}: update EXAMPLE_PORTS"
            );
        }
        let (toml, cfg) = (replace_ports(&toml, &ports), replace_ports(&cfg, &ports));
        // The example's Lua helper, where the example says to install it.
        let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/haproxy-wait.lua");
        assert!(
            cfg.contains("/etc/haproxy/tandem-wait.lua"),
            "the example no longer loads its Lua helper"
        );
        let cfg = cfg.replace("/etc/haproxy/tandem-wait.lua", &lua.display().to_string());
        for p in EXAMPLE_PORTS {
            assert!(!has_port(&cfg, p) && !has_port(&toml, p), "port {p} left");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let topology = dir.path().join("haproxy.toml");
        std::fs::write(&topology, toml).expect("write topology");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, cfg).expect("write haproxy.cfg");
        // HAProxy first, so that its ports are taken right after being
        // found free; its checks fail until the agents listen.
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).expect("haproxy log");
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy { child, log };
        let stats = format!("127.0.0.1:{}", ports[&8404]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&stats).is_err() {
            let exited = haproxy.child.try_wait().expect("haproxy");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "HAProxy did not start ({exited:?}):\n{}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let up = Up::start_in(dir, topology, [ports[&8181], ports[&8182]]);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_millis(1000))
            .build()
            .expect("client");
        Setup {
            up,
            haproxy,
            ports,
            http,
        }
    }

    /// The free port that stands for the example's `port`.
    fn port(&self, port: u16) -> u16 {
        self.ports[&port]
    }

    fn frontend(&self, port: u16) -> String {
        format!("http://127.0.0.1:{}/", self.port(port))
    }

    fn agent(&self, address: &str) -> String {
        format!("{address}:{}", self.port(7400))
    }

    /// The JSON of a 2xx answer to GET `url`.
    async fn get(&self, url: &str) -> Option<Value> {
        let r = self.http.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The status code and JSON of GET `url`.
    async fn get_any(&self, url: &str) -> (u16, Value) {
        let r = self.http.get(url).send().await.expect(url);
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until GET `url` answers JSON that `pred` accepts; returns it.
    async fn wait_answer(&self, what: &str, url: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        loop {
            if let Some(v) = self.get(url).await {
                if pred(&v) {
                    return v;
                }
                last = Some(v);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} at {url}; last answer: {last:?}\n--- haproxy ---\n{}\n--- tandem up ---\n{}",
                self.haproxy.log(),
                self.up.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// HAProxy's view of `backend/server`, from its stats page: status and
    /// weight, e.g. `UP/1`, `UP/0` (draining: no new requests), `DOWN/1`.
    async fn haproxy_view(&self, backend: &str, server: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/;csv", self.port(8404));
        let csv = self.http.get(url).send().await.ok()?.text().await.ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let status = header.iter().position(|h| *h == "status")?;
        let weight = header.iter().position(|h| *h == "weight")?;
        let fields = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&server))?;
        Some(format!("{}/{}", fields.get(status)?, fields.get(weight)?))
    }
}

/// Speaks HAProxy's agent-check protocol: sends `line`, returns the answer.
async fn agent_check(addr: &str, line: &str) -> String {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(line.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(3), exchange).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: no answer within 3 s".into(),
    }
}

/// Waits until a request through HAProxy was answered at `epoch`.
async fn answered_at(s: &Setup, answers: &Mutex<Vec<Value>>, epoch: u64, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers
        .lock()
        .expect("answers")
        .iter()
        .any(|v| v["epoch"] == epoch)
    {
        assert!(
            Instant::now() < deadline,
            "HAProxy never sent a request to the primary {who} (epoch {epoch})\n--- haproxy ---\n{}",
            s.haproxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_haproxy_reach_the_current_primary_never_a_deposed_one() {
    let s = Setup::start();
    let (p, b) = s.up.wait_pair().await;
    let app = s.up.app("web").await;
    // Which instance holds each epoch, as tandem's API tells it.
    let mut holders = BTreeMap::from([(app.epoch, p.id.clone())]);

    let front = s.frontend(8100);
    s.wait_answer("the primary through HAProxy", &front, |v| {
        v["role"] == "primary" && v["instance"] == p.id.as_str()
    })
    .await;
    s.wait_answer(
        "the backup through HAProxy's read-only frontend",
        &s.frontend(8101),
        |v| v["role"] == "backup" && v["instance"] == b.id.as_str(),
    )
    .await;
    let api = s
        .wait_answer("an api member through HAProxy", &s.frontend(8102), |v| {
            v["app"] == "api"
        })
        .await;
    assert_eq!(api["role"], "active", "a non-member served api: {api}");

    // Requests one after another, each on a new connection, while the
    // primary is killed twice.
    let answers: Arc<Mutex<Vec<Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (http, front, answers, stop) =
            (s.http.clone(), front.clone(), answers.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = http.get(&front).send().await
                    && r.status().is_success()
                    && let Ok(v) = r.json::<Value>().await
                {
                    answers.lock().expect("answers").push(v);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..2 {
        let (p, _) = s.up.wait_pair().await;
        let before = s.up.app("web").await.epoch;
        answered_at(&s, &answers, before, &p.id).await;
        signal(p.pid.expect("pid"), "KILL");
        let doc =
            s.up.wait_for("a failover", 20, |a| {
                a.primary.is_some() && a.epoch > before
            })
            .await;
        let new = doc.primary.clone().expect("primary");
        assert_ne!(new, p.id);
        holders.insert(doc.epoch, new.clone());
        answered_at(&s, &answers, doc.epoch, &new).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    hammer.await.expect("hammer");
    let answers = answers.lock().expect("answers").clone();

    assert!(answers.len() > 50, "too few answers: {}", answers.len());
    let mut last_epoch = 0;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(
            a["role"], "primary",
            "answer {i} came from a non-primary: {a}"
        );
        let epoch = a["epoch"].as_u64().expect("epoch");
        assert!(
            epoch >= last_epoch,
            "answer {i} came from a deposed primary (epoch {epoch} after {last_epoch}): {a}"
        );
        last_epoch = epoch;
        assert_eq!(
            holders.get(&epoch).map(String::as_str),
            a["instance"].as_str(),
            "answer {i} is not from the primary tandem named for epoch {epoch}: {a}; holders {holders:?}"
        );
    }
    let seen: std::collections::BTreeSet<u64> =
        answers.iter().filter_map(|a| a["epoch"].as_u64()).collect();
    assert_eq!(
        seen.len(),
        3,
        "answers came from {seen:?}, not from each of the three primaries {holders:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_answers_for_its_host_and_a_planned_switchover_drains_the_old_primary() {
    let s = Setup::start();
    let (p, b) = s.up.wait_pair().await;
    s.wait_answer("the primary through HAProxy", &s.frontend(8100), |v| {
        v["instance"] == p.id.as_str()
    })
    .await;
    let (pa, ba) = (s.agent(&p.address), s.agent(&b.address));
    assert_ne!(pa, ba, "the example puts web's instances on two hosts");

    // The same path, sent to each host's agent, answers for that host's
    // instance: what lets a balancer with one fixed check path tell them apart.
    let (code, v) = s.get_any(&format!("http://{pa}/lb/web/primary")).await;
    assert_eq!(
        (code, &v["instance"], &v["state"]),
        (200, &p.id.as_str().into(), &"up".into()),
        "{v}"
    );
    let (code, v) = s.get_any(&format!("http://{ba}/lb/web/primary")).await;
    assert_eq!(
        (code, &v["instance"], &v["role"]),
        (503, &b.id.as_str().into(), &"backup".into()),
        "{v}"
    );
    let (code, v) = s
        .get_any(&format!("http://{ba}/lb/web/{}/backup", b.id))
        .await;
    assert_eq!(code, 200, "{v}");
    // node1 runs api1 and api3: the instance must be named.
    let node1 = s.agent("127.0.0.1");
    let (code, v) = s.get_any(&format!("http://{node1}/lb/api/member")).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = s
        .get_any(&format!("http://{node1}/lb/api/api1/member"))
        .await;
    assert_eq!((code, &v["role"]), (200, &"active".into()), "{v}");
    let (code, _) = s.get_any(&format!("http://{node1}/lb/web/leader")).await;
    assert_eq!(code, 404);

    // The agent-check protocol on the same port.
    let primary_line = format!("web/{} primary\n", p.id);
    assert_eq!(agent_check(&pa, &primary_line).await, "up 100%\n");
    let other = agent_check(&ba, &format!("web/{} primary\n", b.id)).await;
    assert!(other.starts_with("down#not primary: backup"), "{other}");
    // Bad lines get a "down" answer, never a crash (an upper-case first
    // byte goes to the HTTP server, which refuses it).
    let bad = agent_check(&pa, "web/a primary please\n").await;
    assert!(bad.starts_with("down#too many words"), "{bad}");
    let bad = agent_check(&pa, "\u{1}\u{7f}\n").await;
    assert!(bad.starts_with("down#bad app or instance name"), "{bad}");
    let bad = agent_check(&pa, "GARBAGE\n").await;
    assert!(!bad.starts_with("up"), "{bad}");

    // A planned switchover: the old primary first drains for the app's
    // drain period (still the only instance acting), then steps down.
    let before = s.up.app("web").await.epoch;
    let switchover = {
        let (client, to) = (s.up.client(), b.id.clone());
        tokio::spawn(async move {
            client
                .switchover("web", Some(&to), Duration::from_secs(20))
                .await
        })
    };
    let mut replies: Vec<String> = Vec::new();
    let mut haproxy_seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut done_at = None;
    loop {
        let reply = agent_check(&pa, &primary_line).await;
        if replies.last() != Some(&reply) {
            replies.push(reply);
        }
        if let Some(st) = s.haproxy_view("web_primary", &p.id).await
            && haproxy_seen.last() != Some(&st)
        {
            haproxy_seen.push(st);
        }
        if done_at.is_none() && switchover.is_finished() {
            done_at = Some(Instant::now());
        }
        // Watch a little longer once it is done: HAProxy's next checks.
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_millis(600)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the switchover did not finish; agent replies {replies:?}\n{}",
            s.up.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = switchover.await.expect("task").expect("switchover");
    assert!(
        matches!(outcome, SwitchoverOutcome::Done { .. }),
        "{outcome:?}"
    );

    eprintln!("agent replies {replies:?}; HAProxy's view {haproxy_seen:?}");
    let drain = replies.iter().position(|r| r == "up 0%\n");
    let Some(drain) = drain else {
        panic!("the old primary never drained; agent replies {replies:?}");
    };
    assert_eq!(replies[0], "up 100%\n", "{replies:?}");
    assert!(
        replies[drain + 1..].iter().all(|r| r.starts_with("down#")),
        "after draining, the old primary must only be down: {replies:?}"
    );
    assert!(
        replies.len() > drain + 1,
        "the old primary never went down: {replies:?}"
    );
    assert!(
        haproxy_seen.iter().any(|st| st == "UP/0"),
        "HAProxy never drained web_primary/{} (status/weight {haproxy_seen:?}; agent replies {replies:?})",
        p.id
    );

    // Requests now reach the new primary, at a higher epoch.
    let v = s
        .wait_answer("the new primary through HAProxy", &s.frontend(8100), |v| {
            v["instance"] == b.id.as_str()
        })
        .await;
    assert_eq!(v["role"], "primary", "{v}");
    assert!(v["epoch"].as_u64().expect("epoch") > before, "{v}");
}

/// One request of the steady traffic through HAProxy.
#[derive(Debug)]
struct Sent {
    /// Which client sent it.
    client: usize,
    /// The highest epoch among the answers received before it was sent:
    /// an answer at a lower epoch would come from a deposed primary.
    floor: u64,
    /// The instance's own answer, or why there is none.
    answer: Result<Value, String>,
}

/// Requests through HAProxy, from `clients` concurrent clients in a loop,
/// each on a new connection, until `stop`.
fn steady_traffic(
    front: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sent>>>, Vec<tokio::task::JoinHandle<()>>) {
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let highest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Longer than HAProxy holds a request while no server is usable.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let tasks = (0..clients)
        .map(|client| {
            let (http, front, sent, stop, highest) = (
                http.clone(),
                front.to_string(),
                sent.clone(),
                stop.clone(),
                highest.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let floor = highest.load(Ordering::SeqCst);
                    let answer = match http.get(&front).send().await {
                        Err(e) => Err(format!("request failed: {e}")),
                        Ok(r) if !r.status().is_success() => {
                            let code = r.status();
                            Err(format!("{code}: {}", r.text().await.unwrap_or_default()))
                        }
                        Ok(r) => r
                            .json::<Value>()
                            .await
                            .map_err(|e| format!("unreadable answer: {e}")),
                    };
                    if let Ok(v) = &answer
                        && let Some(epoch) = v["epoch"].as_u64()
                    {
                        highest.fetch_max(epoch, Ordering::SeqCst);
                    }
                    sent.lock().expect("sent").push(Sent {
                        client,
                        floor,
                        answer,
                    });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    (sent, tasks)
}

/// Waits until a request of the steady traffic was answered at `epoch`.
async fn traffic_reached(s: &Setup, sent: &Mutex<Vec<Sent>>, epoch: u64, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reached = sent.lock().expect("sent").iter().any(|r| {
            r.answer
                .as_ref()
                .is_ok_and(|v| v["epoch"].as_u64() == Some(epoch))
        });
        if reached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never sent a request to the primary {who} (epoch {epoch})\n--- haproxy ---\n{}",
            s.haproxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Steady traffic through the shipped HAProxy example across planned
/// switchovers (drained first, `drain = "300ms"`): no request fails and no
/// answer comes from an instance that is no longer primary. Between the
/// drain taking the old primary's weight and the new one's first good
/// check no server is usable; the example's Lua helper
/// (examples/haproxy-wait.lua) holds requests through that window instead
/// of HAProxy's immediate 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_traffic_planned_switchovers_fail_no_request_and_none_reaches_a_deposed_primary()
 {
    const SWITCHOVERS: usize = 4;
    const CLIENTS: usize = 4;
    let s = Setup::start();
    let (p, _) = s.up.wait_pair().await;
    let front = s.frontend(8100);
    s.wait_answer("the primary through HAProxy", &front, |v| {
        v["role"] == "primary" && v["instance"] == p.id.as_str()
    })
    .await;
    let app = s.up.app("web").await;
    // Which instance holds each epoch, as tandem's API tells it.
    let mut holders = BTreeMap::from([(app.epoch, p.id.clone())]);

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, tasks) = steady_traffic(&front, CLIENTS, &stop);
    for round in 0..SWITCHOVERS {
        let (p, b) = s.up.wait_pair().await;
        let before = s.up.app("web").await.epoch;
        traffic_reached(&s, &sent, before, &p.id).await;
        let outcome =
            s.up.client()
                .switchover("web", Some(&b.id), Duration::from_secs(20))
                .await
                .expect("switchover");
        assert!(
            matches!(outcome, SwitchoverOutcome::Done { .. }),
            "switchover {round}: {outcome:?}"
        );
        let doc =
            s.up.wait_for("the switchover's new primary", 20, |a| {
                a.primary.as_deref() == Some(b.id.as_str()) && a.epoch > before
            })
            .await;
        holders.insert(doc.epoch, b.id.clone());
        traffic_reached(&s, &sent, doc.epoch, &b.id).await;
    }
    // A little more traffic on the last primary.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client");
    }
    let sent = std::mem::take(&mut *sent.lock().expect("sent"));

    let failed: Vec<&Sent> = sent.iter().filter(|r| r.answer.is_err()).collect();
    let mut wrong = Vec::new();
    let mut last_epoch = [0u64; CLIENTS];
    for r in &sent {
        let Ok(a) = &r.answer else { continue };
        let epoch = a["epoch"].as_u64().unwrap_or(0);
        let holder = holders.get(&epoch).map(String::as_str);
        if a["role"] != "primary" {
            wrong.push(format!("not a primary: {a}"));
        } else if holder != a["instance"].as_str() {
            wrong.push(format!(
                "not the primary tandem named for epoch {epoch} ({holder:?}): {a}"
            ));
        } else if epoch < r.floor {
            wrong.push(format!(
                "a deposed primary: epoch {epoch} after an answer at {} was received: {a}",
                r.floor
            ));
        } else if epoch < last_epoch[r.client] {
            wrong.push(format!(
                "a deposed primary: epoch {epoch} after {} on client {}: {a}",
                last_epoch[r.client], r.client
            ));
        }
        last_epoch[r.client] = last_epoch[r.client].max(epoch);
    }
    let answered = sent.len() - failed.len();
    eprintln!(
        "{} requests through HAProxy across {SWITCHOVERS} planned switchovers: {answered} answered, {} failed, {} from a non-primary; primaries {holders:?}",
        sent.len(),
        failed.len(),
        wrong.len()
    );
    assert!(
        failed.is_empty() && wrong.is_empty(),
        "{} of {} requests failed: {:?}\n{} answered by an instance that was not primary: {:?}\n--- haproxy ---\n{}",
        failed.len(),
        sent.len(),
        failed.iter().take(10).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(10).collect::<Vec<_>>(),
        s.haproxy.log()
    );
    assert!(answered > 100, "too few answers: {answered}");
    let seen: std::collections::BTreeSet<u64> = sent
        .iter()
        .filter_map(|r| r.answer.as_ref().ok()?["epoch"].as_u64())
        .collect();
    assert_eq!(
        seen.len(),
        SWITCHOVERS + 1,
        "answers came from epochs {seen:?}, not from each primary {holders:?}"
    );
}
