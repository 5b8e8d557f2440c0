//! `tandem bench site-loss`: the active site is cut off, measured from the
//! spare site, on a cluster the bench builds for itself out of network
//! namespaces (`tandem-testnet`), the layout of `crates/cli/tests/sites.rs`:
//!
//! - three etcd members, one per site plus a witness: e1 in dc1, e2 in
//!   dc2, e3 the witness (no agent);
//! - `tandem agent` processes (this executable, each serving the API):
//!   h1 in dc1 (active), h2 and h3 in dc2 (spare), dc2's started first so
//!   the controller is there;
//! - `conf`, a cold-standby pair of demo components pinned to the active
//!   site (`pinned = true`): a on h1, its standby b on h2;
//! - `confproxy`, a `tandem proxy` per site (p1 on h1, p2 on h2) that
//!   follows conf through its own host's API (the configuration proxy),
//!   with an optional link to conf whose hook is told read-only/read-write;
//! - `web`, n-plus-1 with a member in each site;
//! - a control namespace (`ctl`) from which the bench drives and times
//!   everything, on a thread of its own.
//!
//! Each trial runs on a fresh cluster (a promoted dc2 and a failed dc1
//! would otherwise need restoring): once conf/a serves and the dc2 proxy
//! forwards to it, dc1 (h1 and e1) is cut from h2, h3, e2, e3 and ctl
//! (iptables in dc1's namespaces: TCP stalls both ways), and the bench
//! times, from the moment every rule is in:
//!
//! - `lost`: until `GET /v1/status` from h2's API shows site dc1 `lost`;
//! - `read_only`: until `primary_for_write("conf")` through h2's API
//!   fails with `ClientError::ReadOnly` (polled beside `lost`, not after
//!   it: the controller's read-only record and the API's site state are
//!   separate paths);
//!
//! then it asks `POST /v1/sites/dc2/promote` through h2's API and times,
//! from just before the request:
//!
//! - `serving`: until `primary_for_write("conf")` returns instance b;
//! - `proxy`: then until `GET /` through the dc2 proxy is answered by b.
//!
//! Every wait is bounded; on error the agents' log tails are printed and
//! the directory is kept. It needs root (namespaces, iptables), `ip`,
//! `iptables` and `etcd`.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tandem_api::types::{Health, Role, SiteRequest, StatusDoc};
use tandem_client::{ApiClient, ClientError, SwitchoverOutcome};
use tandem_demo::topology::{WarmPair, app_block};
use tandem_testnet::default_subnet;
use tokio::time::Instant;

use crate::Connect;
use crate::figures::{percentile, stats};
use crate::netrig::{AGENT_PORT, ETCD_CLIENT_PORT, ETCD_MEMBERS, NetRig, Spec, timings};

/// Each agent serves the API on its host's address at this port.
const API_PORT: u16 = 7420;
/// conf's port on h1 and h2.
const CONF_PORT: u16 = 8401;
/// The configuration proxies' port on h1 and h2.
const PROXY_PORT: u16 = 8402;
/// web's port on h1 and h2.
const WEB_PORT: u16 = 8403;
/// The pinned app.
const APP: &str = "conf";
/// The agent hosts and their sites; dc2's first (the order they start in).
const AGENT_HOSTS: [(&str, &str); 3] = [("h2", "dc2"), ("h3", "dc2"), ("h1", "dc1")];
/// The agent hosts' names, in [`AGENT_HOSTS`]' order.
const AGENT_NAMES: [&str; 3] = [AGENT_HOSTS[0].0, AGENT_HOSTS[1].0, AGENT_HOSTS[2].0];
/// The agent whose API the bench asks (in dc2, the site that survives).
const VIA: &str = "h2";
/// The longest wait for a controller, and for conf/a serving through the
/// dc2 proxy, on a fresh cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest wait for each timed figure, beyond three lease TTLs (a
/// site is lost a lease TTL after its last renewal at the earliest, more
/// if etcd elects a new leader meanwhile: see [`figure_timeout`]).
const FIGURE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the bench lets the controller answer the promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one request of a poll may take (the API's own limit is
/// longer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two polls of one figure.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Lines of each agent's log printed on error.
const LOG_TAIL_LINES: usize = 20;

/// What [`site_loss`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteLoss {
    /// Number of trials (each on a fresh cluster), at least 1.
    pub trials: usize,
    /// The agents' lease TTL in ms (1000..=60000; etcd grants whole
    /// seconds); the renew interval is a sixth of it and the fence margin
    /// a third, as with the topology defaults (3 s, 500 ms, 1 s).
    pub lease_ttl_ms: u64,
    /// Print the figures as JSON.
    pub json: bool,
    /// Keep the agents' and etcd's logs (their directories are printed)
    /// even when the run succeeds.
    pub keep_logs: bool,
}

impl SiteLoss {
    /// Refuses what cannot run, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.trials == 0 {
            bail!("--trials must be at least 1 (each trial runs on a fresh cluster)");
        }
        if !(1000..=60_000).contains(&self.lease_ttl_ms) {
            bail!(
                "--lease-ttl-ms must be between 1000 and 60000 (etcd grants whole seconds), not {}",
                self.lease_ttl_ms
            );
        }
        Ok(())
    }
}

/// The figures, in the order they happen.
const FIGURES: [(&str, &str); 4] = [
    (
        "lost",
        "cut → site dc1 \"lost\" in GET /v1/status (h2's API)",
    ),
    (
        "read_only",
        "cut → primary_for_write(\"conf\") fails with ReadOnly (h2's API)",
    ),
    (
        "serving",
        "promote dc2 asked → primary_for_write(\"conf\") is conf/b",
    ),
    (
        "proxy",
        "promote dc2 asked → GET / through the dc2 proxy answered by conf/b",
    ),
];

/// One trial's figures (ms).
#[derive(Debug, Clone)]
struct Sample {
    lost: f64,
    read_only: f64,
    serving: f64,
    proxy: f64,
    /// How long the promote request took to answer.
    promote_answer: f64,
    /// The lease TTL h2's API says etcd granted its agent (ms).
    granted_ttl_ms: Option<u64>,
    /// conf's epoch once b serves.
    epoch: u64,
    /// The etcd member that was raft leader just before the cut, if one
    /// said so: when it is dc1's (e1), the others elect a new leader, which
    /// extends every lease (etcd's rule), so dc1 is lost later.
    etcd_leader: Option<String>,
}

impl Sample {
    fn figure(&self, name: &str) -> f64 {
        match name {
            "lost" => self.lost,
            "read_only" => self.read_only,
            "serving" => self.serving,
            _ => self.proxy,
        }
    }
}

/// `tandem bench site-loss`: the active site is cut off → it is reported
/// lost and the pinned app read-only; `site promote` of the spare → the
/// pinned app serves there, and through the spare site's proxy.
pub async fn site_loss(args: &SiteLoss, connect: &impl Connect) -> anyhow::Result<()> {
    args.check()?;
    // The namespaces are entered from a thread of their own: keep the
    // runtime's other workers going meanwhile.
    tokio::task::block_in_place(|| namespaced(args, connect))
}

/// Runs each trial on a fresh cluster, prints.
fn namespaced(args: &SiteLoss, connect: &impl Connect) -> anyhow::Result<()> {
    let (ttl, renew, margin) = timings(args.lease_ttl_ms);
    if !args.json {
        println!(
            "bench site-loss: {}, {} trials (each on a fresh cluster)",
            layout(),
            args.trials
        );
        println!(
            "  asked lease TTL {ttl} ms, renew interval {renew} ms, fence margin {margin} ms; heartbeats and suspicion: the topology defaults"
        );
    }
    let mut samples = Vec::with_capacity(args.trials);
    for trial in 1..=args.trials {
        samples.push(session(args, connect, trial)?);
    }
    report(args, &samples);
    Ok(())
}

/// The layout, in one line.
fn layout() -> String {
    format!(
        "dc1 active (h1, etcd e1), dc2 spare (h2, h3, etcd e2), witness etcd e3, in network namespaces (subnet {}.0/24); conf cold-standby pinned (a on h1, b on h2), a tandem proxy per site (p1 h1, p2 h2), web n-plus-1 (h1, h2); controller on h2; dc1 cut from dc2, the witness and the bench",
        default_subnet()
    )
}

/// The bound of each timed figure for a lease TTL: [`FIGURE_TIMEOUT`]
/// plus three TTLs.
fn figure_timeout(lease_ttl_ms: u64) -> Duration {
    FIGURE_TIMEOUT + Duration::from_millis(3 * lease_ttl_ms)
}

/// One trial on a fresh cluster.
fn session(args: &SiteLoss, connect: &impl Connect, trial: usize) -> anyhow::Result<Sample> {
    let rig = NetRig::new(Spec {
        bench: "site-loss",
        agent_hosts: &AGENT_NAMES,
        other_hosts: &[],
        api_port: Some(API_PORT),
        log_tail_lines: LOG_TAIL_LINES,
    })?;
    rig.run(args.keep_logs, &format!("trial {trial}"), async |rig| {
        self::trial(rig, args, connect, trial)
            .await
            .with_context(|| format!("bench site-loss, trial {trial}"))
    })
}

/// min, p50, p99, max, mean of `samples`.
fn five(samples: &[f64]) -> (f64, f64, f64, f64, f64) {
    let (p50, p99, max, mean) = stats(samples);
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (percentile(&sorted, 0.0), p50, p99, max, mean)
}

/// Prints the figures of every trial.
fn report(args: &SiteLoss, samples: &[Sample]) {
    let (ttl, renew, margin) = timings(args.lease_ttl_ms);
    let granted: BTreeSet<u64> = samples.iter().filter_map(|s| s.granted_ttl_ms).collect();
    // What etcd granted (the API's hosts say), if every trial agrees;
    // else, or if none said, the asked one.
    let (lease_ttl_ms, ttl_source) = match granted.iter().collect::<Vec<_>>()[..] {
        [one] => (*one, "granted by etcd"),
        [] => (ttl, "asked (the API did not say what etcd granted)"),
        _ => (ttl, "asked (etcd granted different TTLs across trials)"),
    };
    let promote_answer: Vec<f64> = samples.iter().map(|s| s.promote_answer).collect();
    let leaders: Vec<&str> = samples
        .iter()
        .map(|s| s.etcd_leader.as_deref().unwrap_or("unknown"))
        .collect();
    let leader_in_dc1 = leaders.iter().filter(|l| **l == ETCD_MEMBERS[0]).count();
    if args.json {
        let mut figures = serde_json::Map::new();
        for (name, what) in FIGURES {
            let ms: Vec<f64> = samples.iter().map(|s| s.figure(name)).collect();
            let (min, p50, p99, max, mean) = five(&ms);
            figures.insert(
                name.to_string(),
                json!({"what": what, "min_ms": min, "p50_ms": p50, "p99_ms": p99,
                       "max_ms": max, "mean_ms": mean, "samples_ms": ms}),
            );
        }
        let (_, pa50, _, pamax, _) = five(&promote_answer);
        println!(
            "{}",
            json!({"bench": "site-loss", "trials": samples.len(), "layout": layout(),
                   "lease_ttl_ms": lease_ttl_ms, "lease_ttl_source": ttl_source,
                   "asked_lease_ttl_ms": ttl, "renew_interval_ms": renew, "fence_margin_ms": margin,
                   "figures": figures,
                   "promote_answer_p50_ms": pa50, "promote_answer_max_ms": pamax,
                   "epochs_after_promotion": samples.iter().map(|s| s.epoch).collect::<Vec<_>>(),
                   "etcd_leader_at_cut": leaders, "etcd_leader_in_dc1": leader_in_dc1})
        );
        return;
    }
    println!();
    println!(
        "site-loss ({} trials; lease TTL {lease_ttl_ms} ms {ttl_source}, asked {ttl} ms, renew {renew} ms, fence margin {margin} ms)",
        samples.len()
    );
    println!("  layout: {}", layout());
    let width = FIGURES
        .iter()
        .map(|(_, w)| w.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "  {:<10} {:<width$} {:>9} {:>9} {:>9} {:>9}",
        "figure", "from → until", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    for (name, what) in FIGURES {
        let ms: Vec<f64> = samples.iter().map(|s| s.figure(name)).collect();
        let (min, p50, p99, max, _) = five(&ms);
        // `{:<width$}` pads by chars; the arrows are one char each.
        println!("  {name:<10} {what:<width$} {min:>9.0} {p50:>9.0} {p99:>9.0} {max:>9.0}");
    }
    let (pamin, pa50, _, pamax, _) = five(&promote_answer);
    println!(
        "  (the promote request itself answered in {pamin:.0}–{pamax:.0} ms, p50 {pa50:.0} ms; p99 is the max below 100 trials)"
    );
    println!(
        "  etcd's leader was dc1's member e1 at the cut in {leader_in_dc1} of {} trials (a new leader extends every lease, so dc1 is lost later then)",
        samples.len()
    );
}

/// `fut`, or `None` once [`REQUEST_TIMEOUT`] passed.
async fn bounded<T>(fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.ok()
}

/// Polls `check` until it says `Ok(Some(_))`, every [`POLL_INTERVAL`],
/// for at most `limit` after `t0`; `Err` keeps the last observation for
/// the message. Returns the value and the ms since `t0` at which it was
/// seen.
async fn poll<T>(
    t0: Instant,
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> anyhow::Result<(T, f64)> {
    loop {
        match check().await {
            Ok(v) => return Ok((v, t0.elapsed().as_secs_f64() * 1000.0)),
            Err(last) => {
                if t0.elapsed() > limit {
                    bail!(
                        "{what} did not happen within {} s (last seen: {last})",
                        limit.as_secs()
                    );
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A client of `name`'s API.
fn api(rig: &NetRig, name: &str) -> anyhow::Result<ApiClient> {
    let addr = format!("{}:{API_PORT}", rig.host(name)?.addr);
    ApiClient::new(&addr).with_context(|| format!("no API client for {addr}"))
}

/// The bench's topology: two sites, conf pinned to dc1, a proxy per site,
/// web in both.
fn topology(rig: &NetRig, args: &SiteLoss) -> anyhow::Result<String> {
    let (ttl, renew, margin) = timings(args.lease_ttl_ms);
    let mut text = format!(
        r#"[cluster]
lease_ttl = "{ttl}ms"
renew_interval = "{renew}ms"
fence_margin = "{margin}ms"
agent_port = {AGENT_PORT}

[[sites]]
name = "dc1"

[[sites]]
name = "dc2"
role = "spare"
"#
    );
    for name in ["h1", "h2", "h3"] {
        let site = AGENT_HOSTS
            .iter()
            .find(|(h, _)| *h == name)
            .map(|(_, s)| *s)
            .with_context(|| format!("no site for {name}"))?;
        text.push_str(&format!(
            "\n[[hosts]]\nname = \"{name}\"\nsite = \"{site}\"\naddress = \"{}\"\n",
            rig.host(name)?.addr
        ));
    }
    let conf = WarmPair {
        app: APP.into(),
        mode: "cold-standby".into(),
        ports: [CONF_PORT, CONF_PORT],
        check_interval_ms: 200,
        check_timeout_ms: 150,
        failures_before_unhealthy: 3,
        successes_before_healthy: 1,
        stable_after_ms: 1000,
        stop_timeout_ms: Some(1000),
        extra_args: vec!["--bind".into(), "{address}".into()],
        agent_port: AGENT_PORT,
        ..WarmPair::default()
    };
    let block = app_block(&conf, ["h1", "h2"]);
    let mode = "ha = \"cold-standby\"\n";
    anyhow::ensure!(block.contains(mode), "unexpected app block: {block}");
    text.push('\n');
    text.push_str(&block.replacen(mode, &format!("{mode}pinned = true\n"), 1));
    let notices = rig.dir().display().to_string();
    text.push_str(&format!(
        r#"
[apps.confproxy]
ha = "n-plus-1"
command = ["tandem", "proxy", "--listen", "{{address}}:{{ports.main}}", "--app", "{APP}",
       "--api", "{{address}}:{API_PORT}"]

[[apps.confproxy.instances]]
id = "p1"
host = "h1"
ports = {{ main = {PROXY_PORT} }}

[[apps.confproxy.instances]]
id = "p2"
host = "h2"
ports = {{ main = {PROXY_PORT} }}

[[links]]
from = "confproxy"
to = "{APP}"
cardinality = "optional"
hook = {{ kind = "command", command = ["sh", "-c", "echo \"$1 $2\" >> {notices}/notices.{{instance}}", "notice"], timeout = "2s" }}

[apps.web]
ha = "n-plus-1"
replicas = 2
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}"]

[[apps.web.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "200ms"
timeout = "150ms"

[[apps.web.instances]]
id = "w1"
host = "h1"
ports = {{ http = {WEB_PORT} }}

[[apps.web.instances]]
id = "w2"
host = "h2"
ports = {{ http = {WEB_PORT} }}
"#
    ));
    Ok(text)
}
/// The instance that answered `GET /` through host `h`'s proxy.
async fn through_proxy(rig: &NetRig, http: &reqwest::Client, h: &str) -> Result<String, String> {
    let url = format!(
        "http://{}:{PROXY_PORT}/",
        rig.host(h).map_err(|e| e.to_string())?.addr
    );
    let answer = bounded(async {
        let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
        let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        v["instance"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("an answer without \"instance\": {v}"))
    })
    .await;
    answer.unwrap_or_else(|| Err("no answer in time".into()))
}

/// Waits until h2's API shows conf/a as primary, every host up, both
/// sites up, both web members serving, and the dc2 proxy forwarding to
/// conf/a. Returns the lease TTL h2's API says etcd granted h2.
async fn wait_ready(
    rig: &NetRig,
    api: &ApiClient,
    http: &reqwest::Client,
) -> anyhow::Result<Option<u64>> {
    let t0 = Instant::now();
    let (doc, _) = poll(
        t0,
        READY_TIMEOUT,
        "conf/a primary with every host and site up and both web members serving (h2's API)",
        async || match bounded(api.status()).await {
            Some(Ok(d)) if ready(&d) => Ok(d),
            Some(Ok(d)) => Err(summary(&d)),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer in time".into()),
        },
    )
    .await?;
    poll(
        t0,
        READY_TIMEOUT,
        "GET / through the dc2 proxy (h2) answered by conf/a",
        async || match through_proxy(rig, http, VIA).await {
            Ok(i) if i == "a" => Ok(()),
            Ok(i) => Err(format!("answered by {i}")),
            Err(e) => Err(e),
        },
    )
    .await?;
    Ok(doc
        .hosts
        .iter()
        .find(|h| h.name == VIA)
        .and_then(|h| h.lease_ttl_ms))
}

/// The etcd member that says it is the raft leader.
async fn etcd_leader(rig: &NetRig, http: &reqwest::Client) -> Option<String> {
    for m in rig.etcd() {
        let url = format!("http://{}:{ETCD_CLIENT_PORT}/metrics", m.addr);
        let metrics = bounded(async { http.get(&url).send().await?.text().await })
            .await
            .and_then(Result::ok);
        if metrics.is_some_and(|t| t.lines().any(|l| l == "etcd_server_is_leader 1")) {
            return Some(m.name.clone());
        }
    }
    None
}

/// Cuts dc1 (h1 and e1) from everything outside it; returns once
/// every rule is in.
fn cut_dc1(rig: &NetRig) -> anyhow::Result<()> {
    let dc1 = [rig.host("h1")?.clone(), rig.etcd()[0].clone()];
    let outside = [
        rig.host("h2")?.clone(),
        rig.host("h3")?.clone(),
        rig.etcd()[1].clone(),
        rig.etcd()[2].clone(),
        rig.ctl().clone(),
    ];
    for a in &dc1 {
        for b in &outside {
            rig.net()
                .cut(a, b)
                .with_context(|| format!("cannot cut {} from {}", a.name, b.name))?;
        }
    }
    Ok(())
}

/// Starts the cluster (etcd, the agents, dc2's first), waits until it is
/// ready, cuts dc1, promotes dc2 and times each figure.
async fn trial(
    rig: &mut NetRig,
    args: &SiteLoss,
    connect: &impl Connect,
    trial: usize,
) -> anyhow::Result<Sample> {
    let setup = Instant::now();
    let text = topology(rig, args)?;
    let topology = rig.write_topology("bench-site-loss.toml", &text)?;
    rig.start_etcd()?;
    rig.wait_etcd().await?;
    rig.connect(connect, &topology).await?;
    // dc2's agents first: the controller is elected there.
    let (first, _) = AGENT_HOSTS[0];
    rig.start_agent(first)?;
    rig.wait_controller(first, READY_TIMEOUT).await?;
    for (name, _) in &AGENT_HOSTS[1..] {
        rig.start_agent(name)?;
    }
    let api = api(rig, VIA)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(1))
        .build()?;
    let granted_ttl_ms = wait_ready(rig, &api, &http)
        .await
        .context("the cluster did not get ready")?;
    let ready_s = setup.elapsed().as_secs_f64();
    let limit = figure_timeout(args.lease_ttl_ms);
    let etcd_leader = etcd_leader(rig, &http).await;

    // Cut dc1: time from the moment every rule is in.
    let cutting = Instant::now();
    cut_dc1(rig)?;
    let t0 = Instant::now();
    let cut_ms = (t0 - cutting).as_secs_f64() * 1000.0;
    let lost = poll(
        t0,
        limit,
        "site dc1 \"lost\" in GET /v1/status of h2's API after the cut",
        async || match bounded(api.status()).await {
            Some(Ok(d)) => match d.sites.iter().find(|s| s.name == "dc1") {
                Some(s) if s.state == "lost" => Ok(()),
                Some(s) => Err(format!(
                    "dc1 {} (hosts up: {:?}){}",
                    s.state,
                    s.hosts_up,
                    if d.stale { ", stale" } else { "" }
                )),
                None => Err("no site dc1 in the status".into()),
            },
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer in time".into()),
        },
    );
    let read_only = poll(
        t0,
        limit,
        "primary_for_write(\"conf\") failing with ReadOnly through h2's API after the cut",
        async || match bounded(api.primary_for_write(APP)).await {
            Some(Err(ClientError::ReadOnly { site, .. })) => Ok(site),
            Some(Ok(p)) => Err(format!("{APP}/{} serving", p.instance)),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer in time".into()),
        },
    );
    let (lost, read_only) = tokio::join!(lost, read_only);
    let ((), lost_ms) = lost?;
    let (ro_site, read_only_ms) = read_only?;
    anyhow::ensure!(
        ro_site == "dc1",
        "{APP} is read-only because of site {ro_site}, not dc1"
    );

    // Promote dc2: time from just before the request.
    let asked = Instant::now();
    let outcome = api
        .site_action("dc2", "promote", &SiteRequest::default(), PROMOTE_TIMEOUT)
        .await
        .context("POST /v1/sites/dc2/promote through h2's API")?;
    let promote_answer_ms = asked.elapsed().as_secs_f64() * 1000.0;
    let promoted = match outcome {
        SwitchoverOutcome::Done { message, .. } => message,
        SwitchoverOutcome::Refused { reason, .. } => {
            bail!("site promote dc2 was refused: {reason}")
        }
        SwitchoverOutcome::InProgress { progress, .. } => bail!(
            "site promote dc2 not carried out within {} s ({progress:?})",
            PROMOTE_TIMEOUT.as_secs()
        ),
    };
    let (epoch, serving_ms) = poll(
        asked,
        limit,
        "primary_for_write(\"conf\") returning conf/b through h2's API after the promotion",
        async || match bounded(api.primary_for_write(APP)).await {
            Some(Ok(p)) if p.instance == "b" => Ok(p.epoch),
            Some(Ok(p)) => Err(format!("{APP}/{} serving", p.instance)),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer in time".into()),
        },
    )
    .await?;
    let ((), proxy_ms) = poll(
        asked,
        limit,
        "GET / through the dc2 proxy (h2) answered by conf/b after the promotion",
        async || match through_proxy(rig, &http, VIA).await {
            Ok(i) if i == "b" => Ok(()),
            Ok(i) => Err(format!("answered by {i}")),
            Err(e) => Err(e),
        },
    )
    .await?;
    if !args.json {
        println!(
            "  trial {trial:>3}: ready after {ready_s:.1} s; etcd leader {}; dc1 cut ({cut_ms:.0} ms to add the rules) → lost {lost_ms:.0} ms, read-only {read_only_ms:.0} ms; promote dc2 (answered in {promote_answer_ms:.0} ms: {promoted}) → conf/b serving at epoch {epoch} {serving_ms:.0} ms, through the dc2 proxy {proxy_ms:.0} ms; granted lease TTL {}",
            etcd_leader.as_deref().unwrap_or("unknown"),
            granted_ttl_ms.map_or("unknown".to_string(), |t| format!("{t} ms"))
        );
    }
    Ok(Sample {
        lost: lost_ms,
        read_only: read_only_ms,
        serving: serving_ms,
        proxy: proxy_ms,
        promote_answer: promote_answer_ms,
        granted_ttl_ms,
        epoch,
        etcd_leader,
    })
}
/// conf/a is the acknowledged primary, every host holds a lease, every
/// site is up, both web members serve, and the state is fresh.
fn ready(d: &StatusDoc) -> bool {
    let serving = |app: &str, id: &str| {
        d.apps.iter().any(|a| {
            a.name == app
                && a.instances
                    .iter()
                    .any(|i| i.id == id && i.role == Role::Active && i.health == Health::Healthy)
        })
    };
    !d.stale
        && d.apps
            .iter()
            .any(|a| a.name == APP && a.primary.as_deref() == Some("a"))
        && d.hosts.len() == AGENT_HOSTS.len()
        && d.hosts.iter().all(|h| h.up)
        && !d.sites.is_empty()
        && d.sites.iter().all(|s| s.state == "up")
        && serving("web", "w1")
        && serving("web", "w2")
}

/// What [`ready`] looks at, for the timeout's message.
fn summary(d: &StatusDoc) -> String {
    let conf = d
        .apps
        .iter()
        .find(|a| a.name == APP)
        .map_or("no conf".to_string(), |a| {
            format!("conf primary {:?}", a.primary)
        });
    let hosts: Vec<String> = d
        .hosts
        .iter()
        .map(|h| format!("{} {}", h.name, if h.up { "up" } else { "down" }))
        .collect();
    let sites: Vec<String> = d
        .sites
        .iter()
        .map(|s| format!("{} {}", s.name, s.state))
        .collect();
    let web: Vec<String> = d
        .apps
        .iter()
        .filter(|a| a.name == "web")
        .flat_map(|a| a.instances.iter())
        .map(|i| format!("{} {:?}/{:?}", i.id, i.role, i.health))
        .collect();
    format!(
        "{conf}; hosts {}; sites {}; web {}{}",
        hosts.join(", "),
        sites.join(", "),
        web.join(", "),
        if d.stale { "; stale" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_are_refused_before_anything_starts() {
        let ok = SiteLoss {
            trials: 5,
            lease_ttl_ms: 2000,
            json: false,
            keep_logs: false,
        };
        assert!(ok.check().is_ok());
        let e = SiteLoss {
            trials: 0,
            ..ok.clone()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().contains("--trials must be at least 1"), "{e}");
        for ttl in [999, 60_001] {
            let e = SiteLoss {
                lease_ttl_ms: ttl,
                ..ok.clone()
            }
            .check()
            .unwrap_err();
            assert!(e.to_string().contains("between 1000 and 60000"), "{e}");
        }
    }

    #[test]
    fn five_figures_are_min_p50_p99_max_mean() {
        assert_eq!(five(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0, 3.0, 2.0));
    }
}
