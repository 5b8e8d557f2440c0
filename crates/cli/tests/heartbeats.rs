//! Heartbeats between real agents: three `tandem agent` processes (h1, h2,
//! h3 on 127.0.0.1, .2 and .3) on a real 3-member etcd cluster. Left alone,
//! nobody suspects anybody; h1's agent killed, h2 and h3 suspect it at once
//! because its liveness connection closed, and clear it once it runs
//! again; h1's agent frozen (SIGSTOP), they suspect it because it went
//! silent, and clear it once thawed.
//!
//! Every agent is started with the same cluster secret, so heartbeats are
//! authenticated: at the end, forged "h1 is alive" datagrams sent by the
//! test from h1's address (untagged, tagged with another secret, or
//! replayed from an older session) are dropped and counted, and do not
//! keep the frozen h1 from being suspected; the same datagrams tagged
//! with the cluster's key (the check that the test can see the
//! difference) clear it.
//!
//! What each agent decides is read from its log and its `/metrics` on the
//! agent port. Nothing here asserts a duration; the times from the signal to
//! the suspicion are printed (from the log's timestamps) for the record.
#![allow(clippy::disallowed_methods)]

mod common;
// The etcd crate's test cluster (real etcd members on free loopback ports).
#[path = "../../store-etcd/tests/common/mod.rs"]
mod etcd;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, signal, tandem};
use tandem_agent::heartbeat::auth::HeartbeatKey;
use tandem_agent::heartbeat::{Heartbeat, MAX_DATAGRAM};
use tandem_agent::sign::ClusterSecret;

const HOSTS: [(&str, &str); 3] = [
    ("h1", "127.0.0.1"),
    ("h2", "127.0.0.2"),
    ("h3", "127.0.0.3"),
];

fn topology(agent_port: u16, app_port: u16) -> String {
    let mut text = format!(
        r#"
[cluster]
lease_ttl = "2s"
renew_interval = "300ms"
fence_margin = "800ms"
agent_port = {agent_port}

[[sites]]
name = "dc1"
"#
    );
    for (name, address) in HOSTS {
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{name}\"\nsite = \"dc1\"\naddress = \"{address}\"\n"
        ));
    }
    text.push_str(&format!(
        r#"
[apps.helper]
ha = "none"
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}"]

[[apps.helper.instances]]
id = "x"
host = "h3"
ports = {{ http = {app_port} }}
"#
    ));
    text
}

fn store_url(cluster: &etcd::Cluster) -> String {
    let hosts: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// A `tandem agent` process, killed when dropped.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        // A frozen agent must be thawed to die cleanly.
        signal(self.0.id(), "CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_path(dir: &Path, host: &str, run: u32) -> PathBuf {
    dir.join(format!("agent-{host}.{run}.log"))
}

/// The cluster secret's file (made with `tandem secret new`) and its key.
fn write_secret(dir: &Path) -> (PathBuf, ClusterSecret) {
    let path = dir.join("cluster.secret");
    let out = Command::new(tandem())
        .args(["secret", "new"])
        .arg(&path)
        .output()
        .expect("tandem secret new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = ClusterSecret::load(&path).expect("the secret loads");
    (path, secret)
}

fn start_agent(dir: &Path, store: &str, host: &str, run: u32) -> AgentProc {
    let log = std::fs::File::create(log_path(dir, host, run)).expect("log");
    let child = Command::new(tandem())
        .args(["agent", "--store", store, "--host", host])
        .arg("--cluster-secret-file")
        .arg(dir.join("cluster.secret"))
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info,tandem_agent::heartbeat=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn tandem agent");
    AgentProc(child)
}

fn apply(dir: &Path, store: &str, text: &str) {
    let file = dir.join("prod.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(tandem())
        .args(["topology", "apply"])
        .arg(&file)
        .args(["--store", store])
        .output()
        .expect("topology apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent's metrics, as `name{labels} value` lines (none if it does not
/// answer).
async fn metrics(address: &str, port: u16) -> Option<String> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?
        .get(format!("http://{address}:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of the sample whose line starts with `prefix` (0 if absent).
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Every line of every log of `host` (all its runs).
fn logs(dir: &Path, host: &str) -> String {
    (0..4)
        .filter_map(|run| std::fs::read_to_string(log_path(dir, host, run)).ok())
        .collect::<Vec<_>>()
        .join("")
}

/// The lines of `host`'s logs that say `needle`.
fn lines_with(dir: &Path, host: &str, needle: &str) -> Vec<String> {
    logs(dir, host)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Waits until `pred` holds (at most `secs`).
async fn wait_until(what: &str, secs: u64, mut pred: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds since midnight UTC of a log line's timestamp
/// (`2026-01-01T12:34:56.123456Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of a process's heartbeat threads (`tandem-hb-*`), in ticks.
fn heartbeat_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("tandem-hb"))
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Waits until `observer` logged `peer` suspected (or cleared, per
/// `needle`) for the `nth` time (1-based), and returns the line.
async fn wait_for_line(dir: &Path, observer: &str, needle: &str, nth: usize, secs: u64) -> String {
    let what = format!("{observer} to log {needle:?} ({nth})");
    wait_until(&what, secs, async || {
        lines_with(dir, observer, needle).len() >= nth
    })
    .await;
    lines_with(dir, observer, needle)
        .into_iter()
        .nth(nth - 1)
        .expect("the line")
}

/// The count of heartbeats dropped for `why` in an agent's metrics.
fn dropped(metrics: &str, why: &str) -> f64 {
    let label = format!("why=\"{why}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("tandem_heartbeats_dropped_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// What the forger sends.
#[derive(Clone, Copy)]
enum Forgery {
    /// In turn: untagged, another secret's tag, the right tag on an old
    /// session.
    Bad = 0,
    /// The right tag on a newer session than h1's.
    Keyed = 1,
}

/// Sends forged heartbeats of h1 from h1's address to h2 and h3 every
/// 2 ms, on a thread, until stopped.
struct Forger {
    stop: Arc<AtomicBool>,
    kind: Arc<AtomicU8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forger {
    fn start(agent_port: u16, secret: ClusterSecret) -> Forger {
        let stop = Arc::new(AtomicBool::new(false));
        let kind = Arc::new(AtomicU8::new(Forgery::Bad as u8));
        let socket = UdpSocket::bind((HOSTS[0].1, 0)).expect("bind at h1's address");
        let key = HeartbeatKey::derive(&secret);
        let other =
            HeartbeatKey::derive(&ClusterSecret::from_bytes(&[0x5a; 32]).expect("another secret"));
        let targets: Vec<String> = HOSTS[1..]
            .iter()
            .map(|(_, a)| format!("{a}:{agent_port}"))
            .collect();
        let thread = std::thread::spawn({
            let (stop, kind) = (stop.clone(), kind.clone());
            move || {
                let now_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("after 1970")
                    .as_nanos() as u64;
                let mut buf = [0u8; MAX_DATAGRAM];
                let mut seq = 1_000_000_000u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let (session, key) = if kind.load(Ordering::Relaxed) == Forgery::Keyed as u8 {
                        // 1000 s after now: newer than h1's session.
                        (now_ns + 1_000_000_000_000, Some(&key))
                    } else {
                        match seq % 3 {
                            0 => (u64::MAX, None),
                            1 => (u64::MAX, Some(&other)),
                            // Older than any session h1 ran.
                            _ => (1, Some(&key)),
                        }
                    };
                    let len = Heartbeat {
                        host: "h1",
                        session,
                        seq,
                        suspects: u64::MAX,
                    }
                    .encode(&mut buf, key)
                    .expect("encodes");
                    for t in &targets {
                        let _ = socket.send_to(&buf[..len], t);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Forger {
            stop,
            kind,
            thread: Some(thread),
        }
    }

    fn set_kind(&self, kind: Forgery) {
        self.kind.store(kind as u8, Ordering::Relaxed);
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_suspect_a_killed_or_frozen_peer_and_only_then() {
    let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(3))
        .await
        .expect("etcd cluster");
    let store = store_url(&cluster);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let agent_port = free_port();
    let (_, secret) = write_secret(dir);
    apply(dir, &store, &topology(agent_port, free_port()));
    let mut h1 = start_agent(dir, &store, "h1", 0);
    let h2 = start_agent(dir, &store, "h2", 0);
    let h3 = start_agent(dir, &store, "h3", 0);

    // Every agent hears the two others and holds a liveness connection to
    // each.
    for (host, address) in HOSTS {
        wait_until(&format!("{host} to hear both peers"), 60, async || {
            let Some(m) = metrics(address, agent_port).await else {
                return false;
            };
            sample(&m, "tandem_heartbeats_received_total") > 0.0
                && sample(&m, "tandem_liveness_connections{") == 2.0
        })
        .await;
    }

    // (a) Left alone for 20 s, nobody suspects anybody, though every agent
    // keeps hearing heartbeats.
    let received_before: Vec<f64> = {
        let mut v = Vec::new();
        for (_, address) in HOSTS {
            let m = metrics(address, agent_port).await.expect("metrics");
            v.push(sample(&m, "tandem_heartbeats_received_total"));
        }
        v
    };
    let cpu_before: Vec<Option<u64>> = [&h1.0, &h2.0, &h3.0]
        .iter()
        .map(|c| cpu_ticks(c.id()))
        .collect();
    let hb_before: Vec<u64> = [&h1.0, &h2.0, &h3.0]
        .iter()
        .map(|c| heartbeat_ticks(c.id()))
        .collect();
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let quiet = quiet.elapsed();
    for (i, (host, address)) in HOSTS.iter().enumerate() {
        let m = metrics(address, agent_port).await.expect("metrics");
        assert_eq!(
            sample(&m, "tandem_host_suspicions_total"),
            0.0,
            "{host} suspected a peer while all ran:\n{}",
            logs(dir, host)
        );
        assert_eq!(sample(&m, "tandem_hosts_suspected{"), 0.0);
        assert_eq!(sample(&m, "tandem_heartbeats_dropped_total"), 0.0, "{m}");
        let received = sample(&m, "tandem_heartbeats_received_total") - received_before[i];
        assert!(received > 100.0, "{host} heard only {received} heartbeats");
        assert!(lines_with(dir, host, "suspected lost").is_empty());
        println!("{host}: {received} heartbeats heard in {quiet:?}");
    }
    // The agents' CPU while idle (heartbeats on, etcd leases renewed).
    let tick = 100.0; // USER_HZ on Linux
    for (i, c) in [&h1.0, &h2.0, &h3.0].iter().enumerate() {
        if let (Some(a), Some(b)) = (cpu_before[i], cpu_ticks(c.id())) {
            let hb = heartbeat_ticks(c.id()).saturating_sub(hb_before[i]);
            println!(
                "idle CPU of {}'s agent: {:.2}% of one core over {quiet:?}, of which its heartbeat threads {:.2}%",
                HOSTS[i].0,
                (b - a) as f64 / tick / quiet.as_secs_f64() * 100.0,
                hb as f64 / tick / quiet.as_secs_f64() * 100.0
            );
        }
    }

    // (b) kill -9 h1's agent: its kernel closes the liveness connections,
    // and h2 and h3 suspect it for that reason.
    let killed_at = now_of_day();
    signal(h1.0.id(), "KILL");
    let _ = h1.0.wait();
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 suspected lost", 1, 10).await;
        assert!(
            line.contains("connection_closed"),
            "{observer} suspected h1 for another reason: {line}"
        );
        if let Some(t) = log_time(&line) {
            println!(
                "{observer}: h1 suspected {:.1} ms after kill -9 (connection closed)",
                (t - killed_at) * 1000.0
            );
        }
        let (_, address) = HOSTS.iter().find(|(h, _)| *h == observer).expect("host");
        let m = metrics(address, agent_port).await.expect("metrics");
        assert_eq!(
            sample(
                &m,
                &format!(
                    "tandem_host_suspicions_total{{host=\"{observer}\",peer=\"h1\",reason=\"connection_closed\"}}"
                )
            ),
            1.0,
            "{m}"
        );
        assert_eq!(sample(&m, "tandem_hosts_suspected{"), 1.0);
    }
    // Nobody else is suspected.
    assert!(lines_with(dir, "h2", "host h3 suspected").is_empty());
    assert!(lines_with(dir, "h3", "host h2 suspected").is_empty());

    // Started again: cleared, because it is heard again.
    drop(h1);
    let h1 = start_agent(dir, &store, "h1", 1);
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 no longer suspected", 1, 60).await;
        assert!(line.contains("heard_again"), "{line}");
    }

    // (c) SIGSTOP h1's agent: its connections stay open, but it falls
    // silent.
    let stopped_at = now_of_day();
    signal(h1.0.id(), "STOP");
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 suspected lost", 2, 10).await;
        assert!(
            line.contains("reason=\"silent\"") || line.contains("reason=silent"),
            "{observer} suspected the frozen h1 for another reason: {line}"
        );
        if let Some(t) = log_time(&line) {
            println!(
                "{observer}: h1 suspected {:.1} ms after SIGSTOP (silent)",
                (t - stopped_at) * 1000.0
            );
        }
    }
    // SIGCONT: heard again, cleared.
    let thawed_at = now_of_day();
    signal(h1.0.id(), "CONT");
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 no longer suspected", 2, 30).await;
        assert!(line.contains("heard_again"), "{line}");
    }
    // h1 itself never suspected its peers while it ran, not even after
    // its thaw (it drains what they sent before judging).
    let h1_suspicions = lines_with(dir, "h1", "suspected lost");
    assert!(
        h1_suspicions.is_empty(),
        "{h1_suspicions:?}\nstopped at {stopped_at}, thawed at {thawed_at}\n{}",
        logs(dir, "h1")
    );

    // (d) Forgeries: the test sends "h1 is alive" heartbeats from h1's
    // address to h2 and h3 every 2 ms, each claiming h1 suspects everybody:
    // untagged, tagged with another secret, and tagged with the cluster's
    // key but of an older session than h1's (a replay of an earlier run).
    let forger = Forger::start(agent_port, secret.clone());
    for (observer, address) in &HOSTS[1..] {
        wait_until(
            &format!("{observer} to drop every forgery"),
            20,
            async || {
                let Some(m) = metrics(address, agent_port).await else {
                    return false;
                };
                ["untagged", "unauthenticated", "replayed"]
                    .iter()
                    .all(|why| dropped(&m, why) > 0.0)
            },
        )
        .await;
    }
    // Frozen, h1 is suspected all the same: no forgery was heard.
    signal(h1.0.id(), "STOP");
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 suspected lost", 3, 10).await;
        assert!(
            line.contains("reason=\"silent\"") || line.contains("reason=silent"),
            "{observer} suspected the frozen h1 for another reason: {line}"
        );
    }
    for (observer, address) in &HOSTS[1..] {
        let m = metrics(address, agent_port).await.expect("metrics");
        println!(
            "{observer} dropped forgeries: untagged {}, unauthenticated {}, replayed {}",
            dropped(&m, "untagged"),
            dropped(&m, "unauthenticated"),
            dropped(&m, "replayed")
        );
        // The forged suspicions corroborated nothing: h2 and h3 suspect
        // only the frozen h1.
        assert_eq!(sample(&m, "tandem_hosts_suspected{"), 1.0, "{m}");
    }
    assert!(lines_with(dir, "h2", "host h3 suspected").is_empty());
    assert!(lines_with(dir, "h3", "host h2 suspected").is_empty());
    // The check that the forgeries would count if they could: tagged with
    // the cluster's key, of a newer session, they clear the frozen h1.
    // (Then h1's own heartbeats are of an older session: the end.)
    forger.set_kind(Forgery::Keyed);
    for observer in ["h2", "h3"] {
        let line = wait_for_line(dir, observer, "host h1 no longer suspected", 3, 10).await;
        assert!(line.contains("heard_again"), "{line}");
    }
    forger.stop();
    drop((h1, h2, h3));
    drop(cluster);
}
