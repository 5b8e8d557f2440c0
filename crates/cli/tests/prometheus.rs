//! tandem under a real Prometheus: the shipped configuration and alerting
//! rules (examples/prometheus) pass promtool's checks and unit tests and
//! scrape every host of the examples, and a Prometheus scraping `tandem up`
//! (its API and its agent) sees a kill -9 failover: the failover counted
//! with its reason, the app's primary back, the agent's count of processes
//! killed by a signal, and the TandemFailover alert firing.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Up, free_port, signal};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// examples/prometheus, absolute.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/prometheus")
        .canonicalize()
        .expect("examples/prometheus")
}

fn require(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: apt-get install prometheus (scripts/test.sh does)"
    );
}

/// Runs `promtool ARGS` in examples/prometheus; panics with its output
/// unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(examples_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PROMTOOL}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn shipped_prometheus_config_and_alert_rules_pass_promtool() {
    require(PROMTOOL);
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("1 rule files found"), "{config}");
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    // Every alert has unit tests.
    let read = |f: &str| std::fs::read_to_string(examples_dir().join(f)).expect(f);
    let (alerts, tests) = (read("alerts.yml"), read("alerts_test.yml"));
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(
        rules.contains(&format!("SUCCESS: {} rules found", names.len())),
        "alerts {names:?}; promtool: {rules}"
    );
    for alert in &names {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts_test.yml does not test {alert}"
        );
    }
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn prometheus_example_scrapes_the_api_and_every_host_of_the_examples() {
    let config =
        std::fs::read_to_string(examples_dir().join("prometheus.yml")).expect("prometheus.yml");
    let target = |addr: String| {
        assert!(
            config.contains(&format!("\"{addr}\"")),
            "examples/prometheus/prometheus.yml does not scrape {addr}"
        );
    };
    target(format!("127.0.0.1:{}", tandem_client::DEFAULT_PORT));
    let examples = examples_dir().join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let topology = tandem_core::topology::parse(&path.display().to_string(), &text)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        for host in &topology.hosts {
            target(format!("{}:{}", host.address, topology.cluster.agent_port));
            checked += 1;
        }
    }
    assert!(checked > 0, "no example topology in {}", examples.display());
}

/// A Prometheus of this test, killed when dropped (and by the kernel if
/// the thread that started it ends first).
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with `config` (YAML),
    /// its database in a fresh directory; waits until it is ready.
    async fn start(config: &str) -> Prometheus {
        require(PROMETHEUS);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the
        // child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start prometheus");
        let mut prom = Prometheus {
            child,
            url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prom
                .http
                .get(format!("{}/-/ready", prom.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prom;
            }
            let exited = prom.child.try_wait().expect("prometheus");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "Prometheus did not become ready ({exited:?}):\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The answer of `GET /api/v1/query?query=q` (JSON), or why there is none.
    async fn query(&self, q: &str) -> Result<Value, String> {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", q)])
                .map_err(|e| e.to_string())?;
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() || v["status"] != "success" {
            return Err(format!("{status}: {v}"));
        }
        Ok(v)
    }

    /// The samples of an instant vector: (labels, value).
    async fn samples(&self, q: &str) -> Result<Vec<(Value, f64)>, String> {
        let v = self.query(q).await?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("not a vector: {v}"))?;
        result
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value in {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }

    /// Waits until the samples of `q` satisfy `pred`; returns them. Panics
    /// after `secs` seconds with `what`, Prometheus's last answer and both
    /// logs.
    async fn wait_for(
        &self,
        up: &Up,
        what: &str,
        q: &str,
        secs: u64,
        pred: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.samples(q).await;
            if let Ok(s) = &got
                && pred(s)
            {
                return s.clone();
            }
            if Instant::now() > deadline {
                let targets = self
                    .http
                    .get(format!("{}/api/v1/targets", self.url))
                    .send()
                    .await
                    .ok();
                let targets = match targets {
                    Some(r) => r.text().await.unwrap_or_default(),
                    None => String::new(),
                };
                panic!(
                    "timed out after {secs} s waiting for {what}\nquery: {q}\nPrometheus answered: {got:?}\n\
                     targets: {targets}\n--- prometheus log ---\n{}\n--- tandem up log ---\n{}",
                    self.log(),
                    up.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// True if `samples` is exactly one sample, of value `v`.
fn one(samples: &[(Value, f64)], v: f64) -> bool {
    matches!(samples, [(_, x)] if *x == v)
}

/// The agent port of the topology `up` runs.
fn agent_port(up: &Up) -> u16 {
    let text = std::fs::read_to_string(&up.topology).expect("read topology");
    tandem_core::topology::parse("topology", &text)
        .expect("the test's topology parses")
        .cluster
        .agent_port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_kill_9_failover_through_the_api_and_agent_metrics() {
    require(PROMETHEUS);
    let started = Instant::now();
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let epoch_before = up.app("web").await.epoch;

    // Scrape this test's API and agent every 200 ms, with the shipped
    // alerting rules.
    let config = format!(
        r#"global:
  scrape_interval: 200ms
  scrape_timeout: 150ms
  evaluation_interval: 200ms
rule_files:
  - {rules}
scrape_configs:
  - job_name: tandem-api
    static_configs:
      - targets: ["{api}"]
  - job_name: tandem-agents
    static_configs:
      - targets: ["127.0.0.1:{agent}"]
"#,
        rules = examples_dir().join("alerts.yml").display(),
        api = up.api,
        agent = agent_port(&up),
    );
    let prom = Prometheus::start(&config).await;

    prom.wait_for(&up, "both targets scraped and up", "up", 20, |s| {
        s.len() == 2 && s.iter().all(|(_, v)| *v == 1.0)
    })
    .await;
    prom.wait_for(
        &up,
        "web's primary before the kill",
        r#"tandem_app_primary{job="tandem-api",app="web"}"#,
        10,
        |s| one(s, 1.0),
    )
    .await;
    prom.wait_for(
        &up,
        "the agent's store_reachable",
        r#"tandem_store_reachable{job="tandem-agents",host="local"}"#,
        10,
        |s| one(s, 1.0),
    )
    .await;
    // The first primary (reason no_primary) is not a failover: a few rule
    // evaluations later, no alert.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts = prom.samples(r#"ALERTS{alertname="TandemFailover"}"#).await;
    assert!(
        alerts.as_ref().is_ok_and(|a| a.is_empty()),
        "TandemFailover before any failover: {alerts:?}"
    );

    signal(p.pid.expect("pid"), "KILL");

    prom.wait_for(
        &up,
        "the failover counted with reason not_running",
        r#"tandem_failovers_total{job="tandem-api",app="web",reason="not_running"}"#,
        20,
        |s| one(s, 1.0),
    )
    .await;
    let doc = up
        .wait_for("the new primary", 10, |a| {
            a.primary.as_deref() == Some(b.id.as_str())
        })
        .await;
    assert!(doc.epoch > epoch_before, "{doc:#?}");
    // The app has a primary again: the one with the new epoch.
    prom.wait_for(
        &up,
        "web's primary again, at the new epoch",
        &format!(
            r#"tandem_app_primary{{job="tandem-api",app="web"}} and on(app) tandem_app_epoch{{app="web"}} >= {}"#,
            doc.epoch
        ),
        20,
        |s| one(s, 1.0),
    )
    .await;
    // The instance is labelled `id` (Prometheus's `instance` is the
    // scrape target).
    prom.wait_for(
        &up,
        "the backup's role as primary",
        &format!(
            r#"tandem_instance_role{{app="web",id="{}",role="primary"}}"#,
            b.id
        ),
        20,
        |s| one(s, 1.0),
    )
    .await;
    prom.wait_for(
        &up,
        "one failover duration observed",
        r#"tandem_failover_seconds_count{job="tandem-api",app="web"}"#,
        20,
        |s| one(s, 1.0),
    )
    .await;
    prom.wait_for(
        &up,
        "the agent's count of the kill",
        r#"tandem_processes_exited_total{job="tandem-agents",host="local",app="web",cause="signal"}"#,
        20,
        |s| one(s, 1.0),
    )
    .await;
    prom.wait_for(
        &up,
        "the TandemFailover alert firing for web (not_running)",
        r#"ALERTS{alertname="TandemFailover",alertstate="firing"}"#,
        20,
        |s| {
            matches!(s, [(m, v)] if *v == 1.0
                && m["app"] == "web"
                && m["reason"] == "not_running"
                && m["severity"] == "warning")
        },
    )
    .await;
    eprintln!(
        "Prometheus saw the failover; the test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
