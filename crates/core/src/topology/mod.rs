//! The topology file: what an operator writes to describe a platform (sites,
//! hosts, apps and their instances, links), parsed and validated into a
//! [`Topology`].
//!
//! [`parse`] takes the file's name and text (core reads no files) and either
//! returns the model or [`Diagnostics`] listing *every* problem, each as
//! `file:line:column: message`. Only a TOML syntax error stops the check
//! early. The model is what the controller and the agents share: it is stored
//! as JSON in the coordination store (durations as integer milliseconds, in
//! fields named `..._ms`).
//!
//! # Format
//!
//! ```toml
//! [cluster]                 # optional
//! name = "quickstart"       # optional, default: the file name's stem
//! lease_ttl = "3s"          # agent lease TTL (default 3s)
//! renew_interval = "500ms"  # default 500ms
//! fence_margin = "1s"       # default 1s: a primary whose lease cannot be renewed
//!                           # is demoted this long before the lease can expire
//! agent_port = 7400         # default 7400: each agent listens on its host's
//!                           # address for peers and load-balancer checks
//! failsafe = true           # default true: without a store, a primary stays
//!                           # while every peer of its app confirms the outage
//! heartbeat_interval = "2ms"  # default 2ms: every agent sends a UDP heartbeat to
//!                           # every other agent this often (at least 1ms)
//! missed_heartbeats = 15    # default 15, from 2 to 10000: a host silent for
//!                           # heartbeat_interval × missed_heartbeats is suspected;
//!                           # that must be less than lease_ttl − renew_interval
//!
//! [[sites]]
//! name = "dc1"
//! fence = { command = ["/usr/local/bin/fence-site", "{host}"], timeout = "5s" }
//!                           # optional: the fence device of every host of the
//!                           # site that has none of its own (see [hosts.fence])
//!
//! [[hosts]]
//! name = "local"
//! site = "dc1"
//! address = "127.0.0.1"     # an IP address (v4 or v6)
//!
//! [hosts.fence]             # optional, this host's fence device (or inline:
//!                           # fence = { command = [...], timeout = "10s" })
//! command = ["/usr/sbin/fence_ipmilan", "--ip", "{address}", "-o", "off"]
//!                           # run by the controller; exit status 0 confirms the host
//!                           # is off. Placeholders: {host}, {address}, {site}. The
//!                           # program (unless it holds a placeholder) must be
//!                           # executable where the file is validated (`tandem
//!                           # validate`, `up`, `topology apply`: see [`parse_with`])
//! timeout = "10s"           # default 5s: a longer run is killed and counts as failed
//!
//! [apps.web]                # the app's name is its key
//! ha = "warm-standby"       # hot-standby | warm-standby | cold-standby | n-plus-1
//!                           # | singleton | pool | none
//! fencing = "lease"         # default "lease": a deposed primary is replaced once its
//!                           # host's lease expired (or a fence device confirmed).
//!                           # "token" (hot-, warm- and cold-standby only): downstream
//!                           # checks the primary's epoch, so a suspected host's
//!                           # primary is replaced at once
//! command = ["tandem", "demo-app", "--port", "{ports.http}"]
//! env = { LOG = "info" }    # optional
//! workdir = "."             # optional, default: the agent's
//! stop_timeout = "5s"       # optional: SIGTERM, then SIGKILL after this long
//! drain = "300ms"           # optional, default 0 (modes with a primary, at most 5m): in a
//!                           # planned switchover the primary first drains this long (its
//!                           # load-balancer checks say drain, `GET /v1/apps/{app}/primary`
//!                           # and `tandem proxy` send it no new work), then steps down.
//!                           # Set it above the load balancer's check interval
//!
//! [apps.web.restart]        # optional, every key optional (defaults shown)
//! initial_backoff = "100ms"
//! max_backoff = "10s"
//! stable_after = "10s"      # running this long resets the backoff
//! crashloop_after = 3       # this many quick exits in a row = crash-looping
//!
//! [[apps.web.checks]]       # zero or more, all must pass
//! kind = "http"             # "tcp" (port) | "http" (port, path = "/") | "exec" (command)
//! port = "http"             # the name of one of each instance's ports
//! path = "/health"
//! interval = "200ms"        # default 1s
//! timeout = "150ms"         # default 500ms, less than interval
//! failures_before_unhealthy = 2   # default 3
//! successes_before_healthy = 2    # default 2
//!
//! [apps.web.hook]           # optional: how an instance learns its role changed
//! kind = "http"             # "http" (port, path): POST {app, instance, role, epoch}
//!                           # "command" (command): ROLE and EPOCH appended as arguments
//!                           # "signal" (signal): role written to $TANDEM_ROLE_FILE, then
//!                           #   SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM,
//!                           #   SIGCONT or SIGWINCH (the SIG prefix is optional)
//! port = "http"
//! path = "/tandem/role"
//! timeout = "500ms"         # default 500ms; must be less than fence_margin
//!
//! [[apps.web.instances]]
//! id = "a"                  # unique within the app
//! host = "local"
//! priority = 100            # default 0, higher wins the primary role
//! ports = { http = 8081 }   # named ports; a port number is used once per host
//!
//! [[apps.web.instances]]
//! id = "b"
//! host = "local"
//! ports = { http = 8082 }
//!
//! [apps.db]
//! ha = "none"
//! command = ["tandem", "demo-db", "--listen", "{address}:{ports.pg}"]
//!
//! [[apps.db.instances]]
//! id = "a"
//! host = "local"
//! ports = { pg = 5432 }
//!
//! [[endpoints]]             # optional, zero or more: services tandem does not run
//! name = "switch"           # unique, shared with no app
//! address = "10.0.0.5"      # an IP address
//! port = 5022
//! site = "dc1"              # optional
//!
//! [[links]]
//! from = "web"
//! to = "db"                 # an app or an endpoint
//! cardinality = "one"       # "one" | "one-or-more" | "optional"
//! tls = false               # optional, default false; true: probed by a TLS handshake
//! tls_ca = "/etc/tandem/switch-ca.pem"  # with tls: the CA (PEM, on each agent's host)
//! tls_server_name = "cm1"   # optional: the name the certificate must carry
//!                           # (default: the target's IP address)
//! tls_expiry_warning = "14d" # optional (1d to 365d, or "30m" etc.): an event when it expires within this;
//!                           # an expired or untrusted certificate is a down link
//! name = "web->db"          # optional, unique; default "FROM->TO"
//! port = "pg"               # optional (links to apps): the target instances' port
//!                           # probed; default "main", else the alphabetically first
//! probe = "tcp"             # optional: "tcp" (connect, the default), "http", or
//!                           # "reported": the instance writes the link's state to
//!                           # $TANDEM_LINKS_DIR/LINK ("up", "down WHY", or per target
//!                           # "TARGET up" / "TARGET down WHY"), read every interval
//! path = "/"                # http only: GET it; any answer below 500 is up
//! interval = "1s"           # optional: time between probes
//! timeout = "500ms"         # optional: less than interval
//! failures_before_down = 3  # optional
//! successes_before_up = 2   # optional
//!
//! [[webhooks]]              # optional, zero or more: events POSTed as JSON
//! name = "oncall"           # unique
//! url = "http://hooks.internal:8080/tandem"   # absolute http:// or https:// URL
//!                           # (the runtime sends plain http only for now)
//! events = ["promoted", "primary-failed", "fence"]
//!                           # event kinds (as in the event log); default:
//!                           # promoted, primary-failed, no-candidate, crash-loop,
//!                           # host, fence. "webhook" (failed deliveries) is never sent
//! secret_file = "/etc/tandem/oncall.secret"
//!                           # optional: signs every delivery (X-Tandem-Signature);
//!                           # read at start, must not be group- or world-readable
//! timeout = "2s"            # default 2s, at most 1m: per attempt
//! retries = 5               # default 5, at most 20: attempts after the first,
//!                           # waiting 0.5s, 1s, 2s, ... (at most 30s) between them
//! ```
//!
//! Durations are a positive whole number followed by `ms`, `s` or `m`
//! (`500ms`, `2s`, `1m`), at most one day. Names of sites, hosts, apps,
//! instances and ports match `[a-z0-9][a-z0-9_-]{0,62}`: they end up in
//! store keys and URLs.
//!
//! Commands (of apps, exec checks and command hooks) and env values may hold
//! placeholders, kept unexpanded in the model and expanded per instance by
//! [`expand`]: `{app}`, `{instance}`, `{host}`, `{address}` and
//! `{ports.NAME}` (which every instance of the app must have). `{{` and `}}`
//! stand for literal braces; any other `{...}` is an error. Fence commands
//! take `{host}`, `{address}` and `{site}` of the fenced host instead
//! (expanded by [`fence_command`]).

mod diagnostic;
mod duration;
mod model;
mod placeholder;
mod validate;
mod walk;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::{DURATION_FORM, MAX_DURATION, duration_ms, format_duration, parse_duration};
pub use model::{
    App, Cardinality, Check, CheckKind, Cluster, Endpoint, FenceDevice, Fencing, HOOK_SIGNALS,
    HaMode, Hook, Host, Instance, Link, LinkAction, LinkProbe, LinkProbeKind, LinkTarget,
    RestartPolicy, SUPPORTED_HA_MODES, Site, SiteRole, TlsCheck, Topology, Webhook, hook_signal,
};
pub use placeholder::{expand, expand_all, fence_command};
pub use walk::is_valid_name;

use diagnostic::Sink;
use toml::de::DeTable;

/// Each instance's admin directory, asked of `directories`.
fn check_admin_dirs(
    topology: &Topology,
    facts: &walk::Facts,
    sink: &mut Sink,
    directories: ProgramCheck<'_>,
) {
    for (app, f) in topology.apps.iter().zip(&facts.apps) {
        let (Some(dir), Some((_, span))) = (&app.admin_dir, &f.admin_dir) else {
            continue;
        };
        for inst in &app.instances {
            let Some(host) = topology.host(&inst.host) else {
                continue;
            };
            let path = expand(dir, app, inst, host);
            if let Err(why) = directories(&path) {
                sink.error(
                    span,
                    format!(
                        "admin directory \"{path}\" of {}/{}: {why}",
                        app.name, inst.id
                    ),
                );
            }
        }
    }
}

/// Each pinned app: a mode with a primary, an instance in an active site
/// (where it runs) and one in a spare site (what `tandem site promote`
/// starts), reported at its `pinned`.
fn check_pinned(topology: &Topology, facts: &walk::Facts, sink: &mut Sink) {
    for (app, f) in topology.apps.iter().zip(&facts.apps) {
        let (true, Some(span)) = (app.pinned, &f.pinned) else {
            continue;
        };
        let name = &app.name;
        if !matches!(
            crate::mode::style(app.ha),
            crate::mode::Style::Hooked | crate::mode::Style::OnGrant
        ) {
            sink.error(
                span,
                format!(
                    "app \"{name}\": \"pinned\" applies to the modes with a primary (hot-standby, warm-standby, cold-standby, singleton), not \"{}\": only a primary is kept in the active site",
                    app.ha
                ),
            );
            continue;
        }
        let in_role = |role: SiteRole| {
            app.instances.iter().any(|i| {
                topology
                    .host(&i.host)
                    .and_then(|h| topology.sites.iter().find(|s| s.name == h.site))
                    .is_some_and(|s| s.role == role)
            })
        };
        let sites_of = |role: SiteRole| {
            let names: Vec<&str> = topology
                .sites
                .iter()
                .filter(|s| s.role == role)
                .map(|s| s.name.as_str())
                .collect();
            if names.is_empty() {
                format!("the topology has no {role} site")
            } else {
                format!("{role} sites: {}", names.join(", "))
            }
        };
        if !in_role(SiteRole::Active) {
            sink.error(
                span,
                format!(
                    "app \"{name}\" is pinned but has no instance in an active site ({}): place its live instance on a host of one",
                    sites_of(SiteRole::Active)
                ),
            );
        }
        if !in_role(SiteRole::Spare) {
            sink.error(
                span,
                format!(
                    "app \"{name}\" is pinned but has no instance in a spare site ({}): `tandem site promote` would have nothing to start; place its standby on a host of a spare site",
                    sites_of(SiteRole::Spare)
                ),
            );
        }
    }
}

/// Tells whether a fence device's program can run: `Err(why)` if not
/// ("not found", "not executable (mode 0644)"). Core reads no files: the
/// caller, on the machine that validates, supplies it.
pub type ProgramCheck<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// Parses and validates a topology. `file` is only used in diagnostics and
/// to derive the default name (the file stem). Returns every problem found.
/// Fence programs are not looked for (see [`parse_with`]).
pub fn parse(file: &str, text: &str) -> Result<Topology, Diagnostics> {
    parse_with(file, text, &|_| Ok(()))
}

/// [`parse`], also asking `programs` whether each fence device's program
/// (unless it holds a placeholder) can run, and reporting it at the
/// program's place if not.
pub fn parse_with(
    file: &str,
    text: &str,
    programs: ProgramCheck<'_>,
) -> Result<Topology, Diagnostics> {
    parse_checked(
        file,
        text,
        LocalChecks {
            programs,
            directories: &|_| Ok(()),
        },
    )
}

/// What the validating machine can tell of the paths a topology names
/// (core reads no files): `Err(why)` for a path that cannot serve.
#[derive(Clone, Copy)]
pub struct LocalChecks<'a> {
    /// Whether a fence device's program can run (see [`parse_with`]).
    pub programs: ProgramCheck<'a>,
    /// Whether an app's `admin_dir`, expanded for each instance, can be a
    /// directory ("is a file").
    pub directories: ProgramCheck<'a>,
}

/// [`parse_with`], also asking `checks.directories` about each instance's
/// admin directory, reported at the app's `admin_dir`.
pub fn parse_checked(
    file: &str,
    text: &str,
    checks: LocalChecks<'_>,
) -> Result<Topology, Diagnostics> {
    let programs = checks.programs;
    let mut sink = Sink::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let message = e.message().trim().replace('\n', "; ");
            sink.error(
                &e.span().unwrap_or(0..0),
                format!("invalid TOML: {message}"),
            );
            return Err(sink.finish(file, text));
        }
    };
    let (topology, facts) = walk::walk(file, root.get_ref(), &mut sink);
    validate::validate(text, &facts, &mut sink, programs);
    if sink.is_empty() {
        check_pinned(&topology, &facts, &mut sink);
    }
    if sink.is_empty() {
        check_admin_dirs(&topology, &facts, &mut sink, checks.directories);
    }
    if sink.is_empty() {
        Ok(topology)
    } else {
        Err(sink.finish(file, text))
    }
}
