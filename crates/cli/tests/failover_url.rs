//! Failover URLs end to end: a client built with
//! `failover:(tcp://127.0.0.1:PA,tcp://127.0.0.2:PB)?...` on
//! `tandem_failover::Connector::run`, against the real `tandem up`, real
//! demo components on two local hosts, and real SIGKILLs.
//!
//! The client speaks HTTP/1.1 over the connector's stream (one keep-alive
//! connection, `GET /` in a loop): every answer names the instance, its
//! pid, its role and its epoch, so what the client saw is checked against
//! what tandem and the components' own journals say.
#![allow(clippy::disallowed_methods)]

mod common;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Up, alive, free_port, signal};
use serde_json::Value;
use tandem_api::types::{AppDoc, Health, Role};
use tandem_failover::{ConnectError, Connector, FailoverUrl, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request on the connected stream may take before the
/// client counts the connection as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a response's head and body.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Two hosts on this machine, 127.0.0.1 and 127.0.0.2, and an app
/// `broker` of demo components: `a` (priority 100) on the first, `b`
/// (priority 50) on the second, each listening on its host's address
/// only and journaling to the working directory; the agents listen on a
/// free port.
fn topology(ha: &str, extra: &str, initial_backoff_ms: u64, ports: [u16; 2]) -> String {
    let [pa, pb] = ports;
    let agent_port = free_port();
    format!(
        r#"
[cluster]
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

[apps.broker]
ha = "{ha}"
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}", "--journal", "broker.{{instance}}.jsonl", "--acting-every-ms", "10"]
stop_timeout = "1s"
{extra}

[apps.broker.restart]
initial_backoff = "{initial_backoff_ms}ms"
stable_after = "300ms"

[[apps.broker.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
failures_before_unhealthy = 2
successes_before_healthy = 1

[[apps.broker.instances]]
id = "a"
host = "h1"
priority = 100
ports = {{ http = {pa} }}

[[apps.broker.instances]]
id = "b"
host = "h2"
priority = 50
ports = {{ http = {pb} }}
"#
    )
}

/// One answer to `GET /`, with the connection it came over.
#[derive(Debug, Clone)]
struct Answer {
    /// Which connection of the client (0 is the first).
    conn: usize,
    /// The endpoint's position in the failover URL, as the connector says.
    index: usize,
    /// The demo component's own answer: app, instance, role, epoch, pid.
    doc: Value,
}

impl Answer {
    fn instance(&self) -> &str {
        self.doc["instance"].as_str().unwrap_or("")
    }
    fn pid(&self) -> u64 {
        self.doc["pid"].as_u64().unwrap_or(0)
    }
    fn epoch(&self) -> u64 {
        self.doc["epoch"].as_u64().unwrap_or(0)
    }
}

/// What a client saw: the endpoint index of each connection, in order,
/// and every answer.
#[derive(Debug, Default)]
struct Seen {
    connections: Vec<usize>,
    answers: Vec<Answer>,
}

/// A client running on a failover URL in its own task.
struct Client {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), ConnectError>>,
}

impl Client {
    /// Connects with `url` and sends `GET /` every 5 ms on the connection,
    /// reconnecting (through `Connector::run`) whenever it is lost or the
    /// priority endpoint is back.
    fn spawn(url: &str) -> Client {
        let url: FailoverUrl = url.parse().expect("a valid failover URL");
        let mut connector = Connector::new(url).with_connect_timeout(Duration::from_secs(1));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            connector
                .run(|mut conn| {
                    let (seen, stop) = (s.clone(), st.clone());
                    async move {
                        let n = {
                            let mut seen = seen.lock().expect("lock");
                            seen.connections.push(conn.index);
                            seen.connections.len() - 1
                        };
                        loop {
                            if stop.load(Ordering::SeqCst) {
                                return ControlFlow::Break(());
                            }
                            match tokio::time::timeout(REQUEST_TIMEOUT, get_root(&mut conn.stream))
                                .await
                            {
                                Ok(Ok(doc)) => seen.lock().expect("lock").answers.push(Answer {
                                    conn: n,
                                    index: conn.index,
                                    doc,
                                }),
                                // Lost (closed, reset, or silent): reconnect.
                                _ => return ControlFlow::Continue(()),
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
                .await
        });
        Client { seen, stop, task }
    }

    /// A copy of what the client saw so far.
    fn seen(&self) -> (Vec<usize>, Vec<Answer>) {
        let seen = self.seen.lock().expect("lock");
        (seen.connections.clone(), seen.answers.clone())
    }

    /// Waits until `pred` holds for what the client saw, or panics.
    async fn wait(
        &self,
        up: &Up,
        what: &str,
        secs: u64,
        pred: impl Fn(&[usize], &[Answer]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (connections, answers) = self.seen();
            if pred(&connections, &answers) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for the client to {what}\nclient task finished: {}\n\
                     connections (endpoint index each): {connections:?}\nlast answers: {:#?}\n\
                     --- tandem up log ---\n{}",
                    self.task.is_finished(),
                    &answers[answers.len().saturating_sub(3)..],
                    up.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the client and returns what it saw; the connector must not
    /// have given up.
    async fn finish(self) -> (Vec<usize>, Vec<Answer>) {
        self.stop.store(true, Ordering::SeqCst);
        let ended = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the client stops within 5 s")
            .expect("the client task did not panic");
        ended.expect("the connector never gave up");
        let seen = self.seen.lock().expect("lock");
        (seen.connections.clone(), seen.answers.clone())
    }
}

/// `GET /` over an open HTTP/1.1 connection (kept alive): the JSON body.
async fn get_root(stream: &mut Stream) -> std::io::Result<Value> {
    use std::io::{Error, ErrorKind};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(Error::new(ErrorKind::InvalidData, "response head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Error::other(format!("not a 200: {head}")));
    }
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .filter(|n| *n <= MAX_RESPONSE_BYTES)
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("no length: {head}")))?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&buf[head_end..head_end + length])
        .map_err(|e| Error::new(ErrorKind::InvalidData, e))
}

/// `GET /` on a fresh plain connection to `addr`.
async fn get_direct(addr: &str) -> Option<Value> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut stream = Stream::Tcp(tcp);
    tokio::time::timeout(REQUEST_TIMEOUT, get_root(&mut stream))
        .await
        .ok()?
        .ok()
}

/// One line per connection: its endpoint, and how many answers from which
/// instance, pid and epoch.
fn summary(connections: &[usize], answers: &[Answer]) -> String {
    let mut out = String::new();
    for (n, index) in connections.iter().enumerate() {
        let on: Vec<&Answer> = answers.iter().filter(|a| a.conn == n).collect();
        let first = on.first().map(|a| (a.instance(), a.pid(), a.epoch()));
        out.push_str(&format!(
            "\n  connection {n} to endpoint {index}: {} answers, first from {first:?}",
            on.len()
        ));
    }
    out
}

fn instance<'a>(doc: &'a AppDoc, id: &str) -> &'a tandem_api::types::InstanceDoc {
    doc.instances
        .iter()
        .find(|i| i.id == id)
        .expect("the instance is in the app")
}

/// The (pid, epoch) pairs of the `acting` lines in `broker.{id}.jsonl`:
/// when each process journaled that it acted as primary, at which epoch.
fn acting_in_journal(up: &Up, id: &str) -> Vec<(u64, u64)> {
    let path = up.dir.path().join(format!("broker.{id}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "acting")
        .filter_map(|v| Some((v["pid"].as_u64()?, v["epoch"].as_u64()?)))
        .collect()
}

/// Master/slave brokers: the standby does not accept client connections
/// until it is primary. Modelled honestly by a cold-standby pair: the spare
/// is not running (its port is closed) until tandem starts it as primary.
/// The client, on `failover:(a,b)?randomize=false`, is on `a`; `a` is
/// killed with SIGKILL; the client reconnects to `b` once tandem has
/// started it and resumes; then `b` is killed and the client is back on a
/// fresh `a`. Every answer it ever got came from a primary, over the
/// endpoint the connector says it is on, with an epoch that never goes
/// down and that each process journaled acting as primary at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_url_client_follows_the_primary_through_kills() {
    let ports = [free_port(), free_port()];
    let up = Up::topology(&topology("cold-standby", "", 100, ports));
    let doc = up
        .wait_for_app("broker", "a primary, b a stopped spare", 30, |a| {
            a.primary.as_deref() == Some("a")
                && instance(a, "a").health == Health::Healthy
                && instance(a, "b").role == Role::Standby
                && instance(a, "b").pid.is_none()
        })
        .await;
    let epoch0 = doc.epoch;
    let pid_a = instance(&doc, "a").pid.expect("a runs");

    let client = Client::spawn(&format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.2:{})?initialReconnectDelay=10&maxReconnectDelay=100&randomize=false",
        ports[0], ports[1]
    ));
    client
        .wait(&up, "get 10 answers from a", 10, |_, answers| {
            answers.len() >= 10
        })
        .await;

    // Killing a primary sooner than `stable_after` would count as a quick
    // exit (a crash loop in the making), not the failure under test.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(pid_a, "KILL");
    client
        .wait(&up, "resume on b", 20, |_, answers| {
            answers.iter().filter(|a| a.instance() == "b").count() >= 10
        })
        .await;
    let doc = up
        .wait_for_app("broker", "b primary, a a stopped spare", 20, |a| {
            a.primary.as_deref() == Some("b")
                && instance(a, "b").health == Health::Healthy
                && instance(a, "a").pid.is_none()
        })
        .await;
    let epoch1 = doc.epoch;
    let pid_b = instance(&doc, "b").pid.expect("b runs");

    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(pid_b, "KILL");
    client
        .wait(&up, "resume on a fresh a", 20, |connections, answers| {
            connections.len() >= 3
                && answers
                    .iter()
                    .filter(|a| a.conn == 2 && a.instance() == "a")
                    .count()
                    >= 10
        })
        .await;
    let doc = up
        .wait_for_app("broker", "a primary again", 20, |a| {
            a.primary.as_deref() == Some("a")
        })
        .await;
    let epoch2 = doc.epoch;
    let (connections, answers) = client.finish().await;
    eprintln!("{}", summary(&connections, &answers));

    // One reconnection per failover, each to the endpoint now serving.
    assert_eq!(
        connections,
        vec![0, 1, 0],
        "endpoint of each connection (a is 0, b is 1)"
    );
    assert!(
        epoch0 < epoch1 && epoch1 < epoch2,
        "{epoch0} {epoch1} {epoch2}"
    );
    let mut last_epoch = 0;
    for a in &answers {
        assert_eq!(
            a.doc["role"], "primary",
            "an answer from a non-primary: {a:?}"
        );
        assert_eq!(a.doc["app"], "broker", "{a:?}");
        let expected = ["a", "b"][a.index];
        assert_eq!(
            a.instance(),
            expected,
            "the answer did not come from the endpoint the connector reports: {a:?}"
        );
        assert!(
            a.epoch() >= last_epoch,
            "the epoch went down from {last_epoch}: {a:?}"
        );
        last_epoch = a.epoch();
        // Each connection is to one process, at the epoch tandem gave it.
        let (pid, epoch) = match a.conn {
            0 => (u64::from(pid_a), epoch0),
            1 => (u64::from(pid_b), epoch1),
            _ => (a.pid(), epoch2),
        };
        assert_eq!((a.pid(), a.epoch()), (pid, epoch), "{a:?}");
    }
    let fresh_a = answers.last().expect("answers").pid();
    assert_ne!(fresh_a, u64::from(pid_a), "a was started anew");
    // What the client was told matches what the processes journaled:
    // each one acted as primary at the epoch it answered with.
    for (id, pid, epoch) in [
        ("a", u64::from(pid_a), epoch0),
        ("b", u64::from(pid_b), epoch1),
        ("a", fresh_a, epoch2),
    ] {
        assert!(
            acting_in_journal(&up, id).contains(&(pid, epoch)),
            "{id} (pid {pid}) never journaled acting as primary at epoch {epoch}"
        );
    }
}

/// `priorityBackup=true` (ActiveMQ's failover transport): the first
/// endpoint is the priority one; the client connects to it first, falls
/// back to another endpoint when it is lost, keeps probing it, and
/// reconnects to it as soon as it accepts connections again, although the
/// connection it has is fine. That is for brokers that all accept clients
/// (a network of brokers, local and remote), so both demo components here
/// serve (`n-plus-1` with two replicas): `a` (priority) is killed with
/// SIGKILL, the client goes to `b`, tandem restarts `a` a second later, and
/// the client moves back to the new `a` while `b` is still up and
/// untouched. A client with the same URL without `priorityBackup` stays
/// on `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_backup_moves_back_to_the_first_endpoint_once_it_is_restarted() {
    let ports = [free_port(), free_port()];
    let up = Up::topology(&topology(
        "n-plus-1",
        "replicas = 2\nmin_healthy = 1",
        1000,
        ports,
    ));
    let doc = up
        .wait_for_app("broker", "two healthy active members", 30, |a| {
            a.instances
                .iter()
                .all(|i| i.role == Role::Active && i.health == Health::Healthy && i.pid.is_some())
        })
        .await;
    let pid_a = instance(&doc, "a").pid.expect("a runs");
    let pid_b = instance(&doc, "b").pid.expect("b runs");

    let endpoints = format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.2:{})?initialReconnectDelay=10&maxReconnectDelay=100&randomize=false",
        ports[0], ports[1]
    );
    let priority = Client::spawn(&format!("{endpoints}&priorityBackup=true"));
    let plain = Client::spawn(&endpoints);
    for client in [&priority, &plain] {
        client
            .wait(&up, "get 5 answers from a", 10, |_, answers| {
                answers.len() >= 5
            })
            .await;
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(pid_a, "KILL");
    for client in [&priority, &plain] {
        client
            .wait(&up, "be on b", 10, |connections, answers| {
                connections.len() >= 2 && answers.iter().filter(|a| a.conn == 1).count() >= 3
            })
            .await;
    }
    priority
        .wait(&up, "move back to a", 20, |connections, answers| {
            connections.len() >= 3 && answers.iter().filter(|a| a.conn == 2).count() >= 5
        })
        .await;
    // b is still up: the same process, alive, answering on its endpoint.
    assert!(alive(pid_b), "b was not killed");
    let b_now = get_direct(&format!("127.0.0.2:{}", ports[1]))
        .await
        .expect("b still answers");
    assert_eq!(b_now["pid"].as_u64(), Some(u64::from(pid_b)));
    let doc = up.app("broker").await;
    let pid_a2 = instance(&doc, "a").pid.expect("a runs again");
    assert_ne!(pid_a2, pid_a, "tandem restarted a");
    assert_eq!(instance(&doc, "b").pid, Some(pid_b), "b never restarted");

    // Settled: the priority client stays on a; the plain one is still on b.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (connections, answers) = priority.finish().await;
    let (plain_connections, plain_answers) = plain.finish().await;
    eprintln!("priorityBackup=true: {}", summary(&connections, &answers));
    eprintln!(
        "priorityBackup=false: {}",
        summary(&plain_connections, &plain_answers)
    );

    assert_eq!(
        connections,
        vec![0, 1, 0],
        "with priorityBackup: endpoint of each connection (a is 0, b is 1)"
    );
    for a in &answers {
        assert_eq!(a.doc["role"], "active", "{a:?}");
        let (instance, pid) = match a.conn {
            0 => ("a", pid_a),
            1 => ("b", pid_b),
            _ => ("a", pid_a2),
        };
        assert_eq!(
            (a.instance(), a.pid()),
            (instance, u64::from(pid)),
            "connection {} answered by the wrong process: {a:?}",
            a.conn
        );
        assert_eq!(["a", "b"][a.index], instance, "{a:?}");
    }
    assert_eq!(
        plain_connections,
        vec![0, 1],
        "without priorityBackup the client stays where it is"
    );
    let last = plain_answers.last().expect("answers");
    assert_eq!((last.instance(), last.pid()), ("b", u64::from(pid_b)));
}
