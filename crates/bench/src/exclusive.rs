//! `tandem bench exclusive-switch`: how long an exclusive link group takes
//! to move to its other link when the preferred one's switch goes away.
//!
//! A demo CMS (`tandem demo-cms`, run by a real agent with a controller on
//! the embedded store, in this process) has two links, `acd-main` and
//! `acd-survivable`, of one exclusive group, to two demo switches
//! (`tandem demo-switch`, main and survivable) that the bench runs itself.
//! The CMS reports each link's reachability (`probe = "reported"`) and
//! tandem enables one link at a time through the CMS's link hook. Each
//! trial takes the main switch down (`POST /down`: it closes its sessions
//! and its listener) and times until the CMS has the survivable link
//! active; then brings it up again (`POST /up`) and times, apart, until
//! the CMS is back on the main link.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tandem_agent::local::Local;
use tandem_store::{EmbeddedStore, Store};
use tokio::process::Child;
use tokio::time::Instant;

use crate::admin_sync::report_range;
use crate::free_port;

/// The CMS's reachability probe (`--probe-ms`) and the links' probe
/// interval, in ms.
const PROBE_MS: u64 = 20;
/// The links' probe timeout, in ms.
const PROBE_TIMEOUT_MS: u64 = 15;
/// How often the CMS is asked which link it has active.
const POLL: Duration = Duration::from_micros(200);
/// The longest a move to the other link may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the CMS may take to be on its main link at first.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the CMS stays on its main link before a trial, so that every
/// link has been probed (and judged up) again.
const SETTLE: Duration = Duration::from_millis(150);
const MAIN: &str = "acd-main";
const SURVIVABLE: &str = "acd-survivable";
/// Who the CMS is to the switches.
const WHO: &str = "cms/a";

/// Exclusive link group switch: the main switch goes down → the CMS has
/// its survivable link active; and the main switch back up → the CMS back
/// on its main link.
pub async fn exclusive_switch(trials: usize, as_json: bool) -> anyhow::Result<()> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(500))
        .build()
        .context("cannot build an HTTP client")?;

    // Killed when dropped, whatever happens below.
    let mut switches = Switches::default();
    let (main_link, main_control) = switches
        .start(&exe, dir.path(), "main", None, &http)
        .await?;
    let (surv_link, _) = switches
        .start(&exe, dir.path(), "survivable", Some(main_link), &http)
        .await?;
    let (cms_port, agent_port) = (free_port()?, free_port()?);

    let text = topology(
        agent_port,
        cms_port,
        main_link,
        surv_link,
        &dir.path().join("cms.jsonl"),
    );
    let topology = Arc::new(
        tandem_core::topology::parse("bench.toml", &text)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))?,
    );
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("store")).context("cannot open the embedded store")?;
    let local = Local::start(
        store,
        topology,
        &["local".to_string()],
        dir.path().to_path_buf(),
    )
    .context("cannot start the agent and controller")?;

    let cms = format!("http://127.0.0.1:{cms_port}/");
    let main = format!("http://127.0.0.1:{main_control}");
    if !as_json {
        println!(
            "bench exclusive-switch: one demo CMS, links {MAIN} and {SURVIVABLE} (exclusive group acd, probe = \"reported\": CMS --probe-ms {PROBE_MS}, link interval {PROBE_MS} ms, timeout {PROBE_TIMEOUT_MS} ms, failures_before_down 1, successes_before_up 1, HTTP link hook) to two demo switches, agent + controller on the embedded store, {trials} trials"
        );
    }
    let mut away_ms = Vec::with_capacity(trials);
    let mut back_ms = Vec::with_capacity(trials);
    let result: anyhow::Result<()> = async {
        let first = wait_active(&http, &cms, MAIN, SETUP_TIMEOUT)
            .await
            .context("the CMS never had its main link active")?;
        let pid = first["pid"].as_u64();
        for trial in 1..=trials {
            tokio::time::sleep(SETTLE).await;
            let sessions = get(&http, &main).await?;
            if !sessions["sessions"]
                .as_array()
                .is_some_and(|s| s.iter().any(|w| w == WHO))
            {
                bail!("trial {trial}: the main switch has no session of {WHO}: {sessions}");
            }
            let t0 = Instant::now();
            post(&http, &format!("{main}/down")).await?;
            let state = wait_active(&http, &cms, SURVIVABLE, TRIAL_TIMEOUT)
                .await
                .with_context(|| format!("trial {trial}: the CMS did not move to {SURVIVABLE}"))?;
            let away = t0.elapsed().as_secs_f64() * 1000.0;
            if state["pid"].as_u64() != pid {
                bail!(
                    "trial {trial}: the CMS was restarted (pid {:?}, then {}): tandem fenced it?",
                    pid,
                    state["pid"]
                );
            }
            let t1 = Instant::now();
            post(&http, &format!("{main}/up")).await?;
            wait_active(&http, &cms, MAIN, TRIAL_TIMEOUT)
                .await
                .with_context(|| format!("trial {trial}: the CMS did not move back to {MAIN}"))?;
            let back = t1.elapsed().as_secs_f64() * 1000.0;
            away_ms.push(away);
            back_ms.push(back);
            if !as_json {
                println!(
                    "  trial {trial:>3}: on {SURVIVABLE} {away:.2} ms after the main switch went down; back on {MAIN} {back:.2} ms after it came up"
                );
            }
        }
        Ok(())
    }
    .await;
    let stopped = local.stop().await;
    switches.stop().await;
    result?;
    stopped.context("the agent did not stop cleanly")?;

    let extra = json!({"probe_ms": PROBE_MS, "link_interval_ms": PROBE_MS,
                       "link_timeout_ms": PROBE_TIMEOUT_MS, "failures_before_down": 1,
                       "successes_before_up": 1, "store": "embedded"});
    report_range(
        &format!(
            "exclusive-switch: POST /down of the main switch → CMS active == [{SURVIVABLE}] (probe {PROBE_MS} ms, timeout {PROBE_TIMEOUT_MS} ms, down after 1 failure)"
        ),
        &away_ms,
        as_json,
        extra.clone(),
    );
    report_range(
        &format!(
            "exclusive-switch move back: POST /up of the main switch → CMS active == [{MAIN}] (up after 1 success)"
        ),
        &back_ms,
        as_json,
        extra,
    );
    Ok(())
}

/// The bench's topology: one CMS (`ha = "none"`) with the exclusive group
/// of examples/cms.toml, probed fast.
fn topology(agent_port: u16, cms: u16, main: u16, survivable: u16, journal: &Path) -> String {
    let link = |name: &str, to: &str| {
        format!(
            r#"
[[links]]
name = "{name}"
from = "cms"
to = "{to}"
cardinality = "one"
exclusive = "acd"
probe = "reported"
interval = "{PROBE_MS}ms"
timeout = "{PROBE_TIMEOUT_MS}ms"
failures_before_down = 1
successes_before_up = 1

[links.hook]
kind = "http"
port = "http"
path = "/tandem/link"
timeout = "3s"
"#
        )
    };
    format!(
        r#"[cluster]
lease_ttl = "3s"
renew_interval = "500ms"
fence_margin = "1s"
agent_port = {agent_port}

[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[apps.cms]
ha = "none"
command = ["tandem", "demo-cms", "--listen", "{{address}}:{{ports.http}}",
           "--link", "{MAIN}=127.0.0.1:{main}",
           "--link", "{SURVIVABLE}=127.0.0.1:{survivable}",
           "--probe-ms", "{PROBE_MS}", "--journal", {journal:?}]

[[apps.cms.instances]]
id = "a"
host = "local"
ports = {{ http = {cms} }}

[[endpoints]]
name = "switch-main"
address = "127.0.0.1"
port = {main}
site = "dc1"

[[endpoints]]
name = "switch-survivable"
address = "127.0.0.1"
port = {survivable}
site = "dc1"
{main_link}{survivable_link}"#,
        journal = journal.display().to_string(),
        main_link = link(MAIN, "switch-main"),
        survivable_link = link(SURVIVABLE, "switch-survivable"),
    )
}

/// The demo switches the bench runs: killed (SIGKILL) when dropped.
#[derive(Default)]
struct Switches {
    children: Vec<(String, Child)>,
}

impl Switches {
    /// How many times a switch is started on new ports when another
    /// process took one of the free ports it was given.
    const ATTEMPTS: usize = 3;

    /// Starts `tandem demo-switch --name NAME` on 127.0.0.1 (a survivable
    /// one if `main`, the main switch's line port, is given) on free ports
    /// and waits until its control API answers: its (line, control) ports.
    async fn start(
        &mut self,
        exe: &Path,
        dir: &Path,
        name: &str,
        main: Option<u16>,
        http: &reqwest::Client,
    ) -> anyhow::Result<(u16, u16)> {
        let log = dir.join(format!("switch-{name}.log"));
        let mut attempt = 1;
        loop {
            let (link, control) = (free_port()?, free_port()?);
            match self
                .try_start(exe, dir, name, (link, control), main, http, &log)
                .await?
            {
                Ok(()) => return Ok((link, control)),
                Err(why) => {
                    // Dropped: killed if it still runs.
                    self.children.pop();
                    let taken = why.contains("Address already in use");
                    if !taken || attempt == Self::ATTEMPTS {
                        bail!("the {name} switch could not start: {why}");
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// One start on the `ports` (line, control): `Ok(Err(why))` if the
    /// switch exited or did not answer.
    #[allow(clippy::too_many_arguments)]
    async fn try_start(
        &mut self,
        exe: &Path,
        dir: &Path,
        name: &str,
        (link, control): (u16, u16),
        main: Option<u16>,
        http: &reqwest::Client,
        log: &Path,
    ) -> anyhow::Result<Result<(), String>> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = tokio::process::Command::new(exe);
        command.args([
            "demo-switch",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{link}"),
            "--control",
            &format!("127.0.0.1:{control}"),
            "--journal",
            &dir.join(format!("switch-{name}.jsonl"))
                .display()
                .to_string(),
        ]);
        if let Some(main) = main {
            command.args(["--main", &format!("127.0.0.1:{main}")]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} demo-switch", exe.display()))?;
        self.children.push((name.to_string(), child));
        let url = format!("http://127.0.0.1:{control}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(state) = get(http, &url).await
                && state["up"] == true
            {
                return Ok(Ok(()));
            }
            if let Some((_, child)) = self.children.last_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Ok(Err(format!("it exited ({status}): {}", tail(log))));
            }
            if Instant::now() > deadline {
                // Killed when dropped by the caller.
                return Ok(Err(format!(
                    "its control API (127.0.0.1:{control}) did not answer within 10 s: {}",
                    tail(log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills every switch and waits for it.
    async fn stop(mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill().await;
        }
        self.children.clear();
    }
}

/// The end of a switch's log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "nothing on its stderr".into()
    } else {
        tail
    }
}

/// Polls the CMS until its only active link is `link`; its state then.
async fn wait_active(
    http: &reqwest::Client,
    cms: &str,
    link: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    let want = json!([link]);
    loop {
        let last = match get(http, cms).await {
            Ok(state) if state["active"] == want => return Ok(state),
            Ok(state) => state.to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "not [{link}] after {} s; last answer of the CMS: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

async fn post(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    http.post(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("POST {url}"))?;
    Ok(())
}
