//! A topology of demo components for benchmarks and tests: a warm-standby
//! pair on one local host, with an HTTP health check and HTTP role hook.

/// How the pair learns its role (the three kinds of role hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoHook {
    /// POST to the component's `/tandem/role`.
    Http,
    /// Run `tandem demo-app-role --port P ROLE EPOCH`.
    Command,
    /// Write `$TANDEM_ROLE_FILE`, then send SIGHUP.
    Signal,
}

/// Settings of [`warm_pair`]; `Default` suits a fast local pair.
#[derive(Debug, Clone)]
pub struct WarmPair {
    /// The app's name.
    pub app: String,
    /// The HA mode ("warm-standby" by default; "cold-standby" and
    /// "singleton" get no hook: their role comes with the start).
    pub mode: String,
    /// HTTP ports of instances `a` (priority 100) and `b` (priority 50).
    pub ports: [u16; 2],
    /// Health check interval.
    pub check_interval_ms: u64,
    /// Health check timeout.
    pub check_timeout_ms: u64,
    /// Failures before unhealthy.
    pub failures_before_unhealthy: u32,
    /// Successes before healthy.
    pub successes_before_healthy: u32,
    /// Role hook kind.
    pub hook: DemoHook,
    /// Role hook timeout.
    pub hook_timeout_ms: u64,
    /// First restart delay.
    pub initial_backoff_ms: u64,
    /// Running this long resets the restart backoff.
    pub stable_after_ms: u64,
    /// Extra arguments of `tandem demo-app` (placeholders allowed).
    pub extra_args: Vec<String>,
    /// The agent port (`Default` picks a free one, so that pairs can run
    /// side by side).
    pub agent_port: u16,
    /// The app's `stop_timeout`, if not the default.
    pub stop_timeout_ms: Option<u64>,
}

impl Default for WarmPair {
    fn default() -> WarmPair {
        WarmPair {
            app: "web".into(),
            mode: "warm-standby".into(),
            ports: [8081, 8082],
            check_interval_ms: 100,
            check_timeout_ms: 80,
            failures_before_unhealthy: 2,
            successes_before_healthy: 2,
            hook: DemoHook::Http,
            hook_timeout_ms: 300,
            initial_backoff_ms: 100,
            stable_after_ms: 1000,
            extra_args: Vec::new(),
            agent_port: std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_or(7400, |a| a.port()),
            stop_timeout_ms: None,
        }
    }
}

/// The topology file (TOML) of a warm-standby pair of demo components.
pub fn warm_pair(p: &WarmPair) -> String {
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

{app}"#,
        agent_port = p.agent_port,
        app = app_block(p, ["local", "local"]),
    )
}

/// The `[apps.NAME]` tables of the pair `p`: instance `a` (priority 100)
/// on `hosts[0]`, `b` (priority 50) on `hosts[1]`, for topologies that
/// place them on hosts of their own.
pub fn app_block(p: &WarmPair, hosts: [&str; 2]) -> String {
    let app = &p.app;
    let mut command = vec![
        "tandem".to_string(),
        "demo-app".into(),
        "--port".into(),
        "{ports.http}".into(),
    ];
    command.extend(p.extra_args.iter().cloned());
    let command = command
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let hooked = matches!(p.mode.as_str(), "warm-standby" | "hot-standby");
    let hook = match p.hook {
        DemoHook::Http => "kind = \"http\"\nport = \"http\"\npath = \"/tandem/role\"".to_string(),
        DemoHook::Command => {
            "kind = \"command\"\ncommand = [\"tandem\", \"demo-app-role\", \"--port\", \"{ports.http}\"]"
                .to_string()
        }
        DemoHook::Signal => "kind = \"signal\"\nsignal = \"SIGHUP\"".to_string(),
    };
    let hook = if hooked {
        format!(
            "[apps.{app}.hook]\n{hook}\ntimeout = \"{}ms\"\n",
            p.hook_timeout_ms
        )
    } else {
        String::new()
    };
    let stop_timeout = p
        .stop_timeout_ms
        .map(|ms| format!("stop_timeout = \"{ms}ms\"\n"))
        .unwrap_or_default();
    format!(
        r#"[apps.{app}]
ha = "{mode}"
command = [{command}]
{stop_timeout}
[apps.{app}.restart]
initial_backoff = "{backoff}ms"
stable_after = "{stable}ms"

[[apps.{app}.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "{interval}ms"
timeout = "{timeout}ms"
failures_before_unhealthy = {failures}
successes_before_healthy = {successes}

{hook}
[[apps.{app}.instances]]
id = "a"
host = "{ha_}"
priority = 100
ports = {{ http = {pa} }}

[[apps.{app}.instances]]
id = "b"
host = "{hb}"
priority = 50
ports = {{ http = {pb} }}
"#,
        backoff = p.initial_backoff_ms,
        stable = p.stable_after_ms,
        interval = p.check_interval_ms,
        timeout = p.check_timeout_ms,
        failures = p.failures_before_unhealthy,
        successes = p.successes_before_healthy,
        mode = p.mode,
        pa = p.ports[0],
        pb = p.ports[1],
        ha_ = hosts[0],
        hb = hosts[1],
    )
}

/// A topology of `apps` warm-standby apps `s0`, `s1`, ... of two `sleep`
/// processes each, with a command hook (`true`) and no health check:
/// instance `a` (priority 2) on the first of `hosts` and `b` (priority 1)
/// on the last; `hosts` are (name, address) in site `dc1`. What costs
/// tandem, and only tandem, something per instance (`tandem bench scale`,
/// soak tests).
pub fn sleepers(apps: usize, hosts: &[(&str, &str)]) -> String {
    use std::fmt::Write as _;
    let mut t = String::from("[[sites]]\nname = \"dc1\"\n");
    for (name, address) in hosts {
        let _ = write!(
            t,
            "\n[[hosts]]\nname = \"{name}\"\nsite = \"dc1\"\naddress = \"{address}\"\n"
        );
    }
    let first = hosts.first().map_or("h1", |h| h.0);
    let last = hosts.last().map_or("h1", |h| h.0);
    for i in 0..apps {
        let _ = write!(
            t,
            "\n[apps.s{i}]\nha = \"warm-standby\"\ncommand = [\"sleep\", \"86400\"]\n\n\
             [apps.s{i}.hook]\nkind = \"command\"\ncommand = [\"true\"]\ntimeout = \"500ms\"\n\n\
             [[apps.s{i}.instances]]\nid = \"a\"\nhost = \"{first}\"\npriority = 2\n\n\
             [[apps.s{i}.instances]]\nid = \"b\"\nhost = \"{last}\"\npriority = 1\n"
        );
    }
    t
}
