//! Topology parsing and validation: the model a valid file gives, and the
//! exact place and message of every kind of problem.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_core::topology::{
    App, Cardinality, Check, CheckKind, Cluster, Diagnostic, Endpoint, FenceDevice, Fencing,
    HaMode, Hook, Host, Instance, Link, LinkProbe, LinkProbeKind, RestartPolicy, Site, TlsCheck,
    Topology, expand, expand_all, fence_command, format_duration, parse, parse_duration,
    parse_with,
};

const FULL: &str = include_str!("fixtures/topology/full.toml");
const MANY_ERRORS: &str = include_str!("fixtures/topology/many_errors.toml");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ports(items: &[(&str, u16)]) -> BTreeMap<String, u16> {
    items.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn instance(id: &str, host: &str, priority: i64, p: &[(&str, u16)]) -> Instance {
    Instance {
        id: id.into(),
        host: host.into(),
        priority,
        ports: ports(p),
    }
}

/// A stand-in for the CLI's look at the machine: these programs cannot
/// run, every other one can.
fn programs(program: &str) -> Result<(), String> {
    match program {
        "/nonexistent/tandem-fence" => Err("not found".into()),
        "/" => Err("not a file".into()),
        "tandem-no-such-fence-program" => Err("not found on $PATH".into()),
        _ => Ok(()),
    }
}

fn expect_errors(file: &str, text: &str) -> Vec<Diagnostic> {
    match parse_with(file, text, &programs) {
        Ok(t) => panic!("expected errors, got a topology: {t:#?}"),
        Err(d) => d.0,
    }
}

#[test]
fn full_file_parses_into_the_expected_model() {
    let topology = parse("fixtures/full.toml", FULL).unwrap_or_else(|d| panic!("{d}"));
    let expected = Topology {
        name: "quickstart".into(),
        cluster: Cluster {
            lease_ttl: ms(3000),
            renew_interval: ms(500),
            fence_margin: ms(1000),
            agent_port: 7500,
            failsafe: false,
            heartbeat_interval: ms(5),
            missed_heartbeats: 20,
        },
        sites: vec![
            Site {
                name: "dc1".into(),
                role: Default::default(),
                fence: None,
            },
            Site {
                name: "dc2".into(),
                role: Default::default(),
                fence: Some(FenceDevice {
                    command: strings(&["sh", "-c", "fence-site {site} {host}"]),
                    timeout: FenceDevice::DEFAULT_TIMEOUT,
                }),
            },
        ],
        hosts: vec![
            Host {
                name: "local".into(),
                site: "dc1".into(),
                address: "127.0.0.1".parse().unwrap(),
                fence: Some(FenceDevice {
                    command: strings(&[
                        "/bin/sh",
                        "-c",
                        "fence_ipmilan --ip {address} -o off # {{literal}}",
                    ]),
                    timeout: ms(10_000),
                }),
            },
            Host {
                name: "remote".into(),
                site: "dc2".into(),
                address: "::1".parse().unwrap(),
                fence: None,
            },
        ],
        apps: vec![
            App {
                name: "web".into(),
                ha: HaMode::WarmStandby,
                command: strings(&[
                    "tandem",
                    "demo-app",
                    "--port",
                    "{ports.http}",
                    "--name",
                    "{app}/{instance}@{host}",
                ]),
                env: [("LOG", "info"), ("LISTEN", "{address}:{ports.http}")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                workdir: Some(".".into()),
                checks: vec![
                    Check {
                        kind: CheckKind::Http {
                            port: "http".into(),
                            path: "/health".into(),
                        },
                        interval: ms(200),
                        timeout: ms(150),
                        failures_before_unhealthy: 2,
                        successes_before_healthy: 2,
                    },
                    Check {
                        kind: CheckKind::Tcp {
                            port: "admin".into(),
                        },
                        interval: ms(1000),
                        timeout: ms(500),
                        failures_before_unhealthy: 3,
                        successes_before_healthy: 2,
                    },
                    Check {
                        kind: CheckKind::Exec {
                            command: strings(&[
                                "curl",
                                "-sf",
                                "http://{address}:{ports.admin}/ready",
                            ]),
                        },
                        interval: ms(1000),
                        timeout: ms(500),
                        failures_before_unhealthy: 3,
                        successes_before_healthy: 2,
                    },
                ],
                hook: Some(Hook::Http {
                    port: "http".into(),
                    path: "/tandem/role".into(),
                    timeout: ms(500),
                }),
                restart: RestartPolicy {
                    initial_backoff: ms(50),
                    max_backoff: ms(5000),
                    stable_after: ms(60_000),
                    crashloop_after: 5,
                },
                stop_timeout: ms(2000),
                drain: std::time::Duration::ZERO,
                link_failover: Default::default(),
                admin_dir: None,
                pinned: false,
                fencing: Fencing::Token,
                replicas: 2,
                min_healthy: 2,
                instances: vec![
                    instance("a", "local", 100, &[("http", 8081), ("admin", 9081)]),
                    instance("b", "remote", 0, &[("http", 8081), ("admin", 9082)]),
                ],
            },
            App {
                name: "db".into(),
                ha: HaMode::None,
                command: strings(&["tandem", "demo-db", "--listen", "{address}:{ports.pg}"]),
                env: BTreeMap::new(),
                workdir: None,
                checks: vec![],
                hook: Some(Hook::Signal {
                    signal: "SIGHUP".into(),
                    number: 1,
                    timeout: ms(500),
                }),
                restart: RestartPolicy::default(),
                stop_timeout: ms(5000),
                drain: std::time::Duration::ZERO,
                link_failover: Default::default(),
                admin_dir: None,
                pinned: false,
                fencing: Fencing::Lease,
                replicas: 1,
                min_healthy: 1,
                instances: vec![instance("main", "local", 0, &[("pg", 5432)])],
            },
            App {
                name: "cache".into(),
                ha: HaMode::None,
                command: strings(&["tandem", "demo-cache"]),
                env: BTreeMap::new(),
                workdir: None,
                checks: vec![],
                hook: Some(Hook::Command {
                    command: strings(&["notify-role", "{instance}"]),
                    timeout: ms(200),
                }),
                restart: RestartPolicy::default(),
                stop_timeout: ms(5000),
                drain: std::time::Duration::ZERO,
                link_failover: Default::default(),
                admin_dir: None,
                pinned: false,
                fencing: Default::default(),
                replicas: 1,
                min_healthy: 1,
                instances: vec![instance("c1", "remote", 0, &[])],
            },
        ],
        links: vec![
            Link {
                name: "web->db".into(),
                from: "web".into(),
                to: "db".into(),
                cardinality: Cardinality::One,
                tls: true,
                tls_check: Some(TlsCheck {
                    ca: "/etc/tandem/db-ca.pem".into(),
                    server_name: None,
                    expiry_warning: TlsCheck::DEFAULT_EXPIRY_WARNING,
                }),
                port: None,
                probe: LinkProbe::default(),
                exclusive: None,
                hook: None,
            },
            Link {
                name: "web->cache".into(),
                from: "web".into(),
                to: "cache".into(),
                cardinality: Cardinality::Optional,
                tls: false,
                tls_check: None,
                port: None,
                probe: LinkProbe::default(),
                exclusive: None,
                hook: None,
            },
            Link {
                name: "cache->db".into(),
                from: "cache".into(),
                to: "db".into(),
                cardinality: Cardinality::OneOrMore,
                tls: false,
                tls_check: None,
                port: None,
                probe: LinkProbe::default(),
                exclusive: None,
                hook: None,
            },
        ],
        endpoints: Vec::new(),
        webhooks: Vec::new(),
    };
    assert_eq!(topology, expected);
}

#[test]
fn defaults_apply_and_name_comes_from_the_file_stem() {
    let text = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"

[apps.svc]
ha = "none"
command = ["svc"]

[[apps.svc.instances]]
id = "a"
host = "h1"
"#;
    let t = parse("examples/quickstart.toml", text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(t.name, "quickstart");
    assert_eq!(
        t.cluster,
        Cluster {
            lease_ttl: ms(3000),
            renew_interval: ms(500),
            fence_margin: ms(1000),
            agent_port: 7400,
            failsafe: true,
            heartbeat_interval: ms(2),
            missed_heartbeats: 15,
        }
    );
    assert_eq!(t.cluster.suspect_after(), ms(30));
    assert!(t.sites.iter().all(|s| s.fence.is_none()));
    assert!(t.hosts.iter().all(|h| h.fence.is_none()));
    assert_eq!(t.fence_device("h1"), None);
    let app = t.app("svc").unwrap();
    assert_eq!(app.fencing, Fencing::Lease);
    assert_eq!(
        app.restart,
        RestartPolicy {
            initial_backoff: ms(100),
            max_backoff: ms(10_000),
            stable_after: ms(10_000),
            crashloop_after: 3
        }
    );
    assert_eq!(app.stop_timeout, ms(5000));
    assert_eq!(app.instance("a").unwrap().priority, 0);
    assert!(app.instance("a").unwrap().ports.is_empty());
    assert!(
        app.hook.is_none() && app.checks.is_empty() && app.env.is_empty() && app.workdir.is_none()
    );
    assert_eq!(t.host("h1").unwrap().site, "dc1");
    assert!(t.links.is_empty());
}

#[test]
fn check_and_hook_defaults() {
    let text = r#"
[[sites]]
name = "dc1"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[apps.svc]
ha = "none"
command = ["svc"]
[[apps.svc.checks]]
kind = "http"
port = "http"
[apps.svc.hook]
kind = "signal"
signal = "sigusr1"
[[apps.svc.instances]]
id = "a"
host = "h1"
ports = { http = 80 }
"#;
    let t = parse("t.toml", text).unwrap_or_else(|d| panic!("{d}"));
    let app = t.app("svc").unwrap();
    assert_eq!(
        app.checks,
        vec![Check {
            kind: CheckKind::Http {
                port: "http".into(),
                path: "/".into()
            },
            interval: ms(1000),
            timeout: ms(500),
            failures_before_unhealthy: 3,
            successes_before_healthy: 2,
        }]
    );
    assert_eq!(
        app.hook,
        Some(Hook::Signal {
            signal: "SIGUSR1".into(),
            number: 10,
            timeout: ms(500)
        })
    );
}

#[test]
fn apps_keep_file_order() {
    let mut text = String::from(
        "[[sites]]\nname = \"s\"\n[[hosts]]\nname = \"h\"\nsite = \"s\"\naddress = \"10.0.0.1\"\n",
    );
    for name in ["zeta", "alpha", "mid"] {
        text.push_str(&format!(
            "[apps.{name}]\nha = \"none\"\ncommand = [\"x\"]\n[[apps.{name}.instances]]\nid = \"a\"\nhost = \"h\"\n"
        ));
    }
    let t = parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let names: Vec<&str> = t.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
}

#[test]
fn helpers_find_instances_and_links() {
    let t = parse("t.toml", FULL).unwrap();
    let on_local: Vec<(&str, &str)> = t
        .instances_on("local")
        .map(|(a, i)| (a.name.as_str(), i.id.as_str()))
        .collect();
    assert_eq!(on_local, [("web", "a"), ("db", "main")]);
    assert_eq!(t.app("web").unwrap().instances_on("remote").count(), 1);
    assert_eq!(t.links_from("web").count(), 2);
    assert_eq!(t.links_to("db").count(), 2);
    assert_eq!(
        t.app("web").unwrap().instance("b").unwrap().port("admin"),
        Some(9082)
    );
    assert!(t.app("nope").is_none() && t.host("nope").is_none());
    assert_eq!(HaMode::WarmStandby.to_string(), "warm-standby");
    assert_eq!(HaMode::NPlus1.to_string(), "n-plus-1");
    assert_eq!(Cardinality::OneOrMore.to_string(), "one-or-more");
}

#[test]
fn fence_device_is_the_hosts_own_else_its_sites_with_placeholders_expanded() {
    let t = parse("fixtures/full.toml", FULL).unwrap_or_else(|d| panic!("{d}"));
    let local = t.host("local").unwrap();
    let remote = t.host("remote").unwrap();
    let own = t.fence_device("local").expect("local's own device");
    assert_eq!(own.timeout, ms(10_000));
    assert_eq!(
        fence_command(own, local),
        strings(&[
            "/bin/sh",
            "-c",
            "fence_ipmilan --ip 127.0.0.1 -o off # {literal}"
        ])
    );
    let site = t.fence_device("remote").expect("dc2's device");
    assert_eq!(site, t.site("dc2").unwrap().fence.as_ref().unwrap());
    assert_eq!(
        fence_command(site, remote),
        strings(&["sh", "-c", "fence-site dc2 remote"])
    );
    assert_eq!(t.fence_device("nowhere"), None);
}

#[test]
fn fence_written_inline_or_as_a_sub_table_is_the_same() {
    let head = "[[sites]]\nname = \"dc1\"\n[[hosts]]\nname = \"h1\"\nsite = \"dc1\"\naddress = \"10.0.0.1\"\n";
    let tail = "[[hosts]]\nname = \"h2\"\nsite = \"dc1\"\naddress = \"10.0.0.2\"\n";
    let inline = format!(
        "{head}fence = {{ command = [\"/bin/sh\", \"{{address}}\"], timeout = \"10s\" }}\n{tail}"
    );
    let sub_table = format!(
        "{head}[hosts.fence]\ncommand = [\"/bin/sh\", \"{{address}}\"]\ntimeout = \"10s\"\n{tail}"
    );
    let a = parse("t.toml", &inline).unwrap_or_else(|d| panic!("{d}"));
    let b = parse("t.toml", &sub_table).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(a, b);
    assert_eq!(
        a.host("h1").unwrap().fence,
        Some(FenceDevice {
            command: strings(&["/bin/sh", "{address}"]),
            timeout: ms(10_000),
        })
    );
    assert_eq!(a.host("h2").unwrap().fence, None);
}

#[test]
fn fence_program_holding_a_placeholder_is_not_checked_for_being_executable() {
    let text = format!(
        "{}{BASE}",
        "[[sites]]\nname = \"dc2\"\nfence = { command = [\"/opt/{site}/fence-{host}\", \"{address}\"] }\n"
    );
    let refuse_all = |p: &str| Err(format!("{p} was looked for"));
    let t = parse_with("t.toml", &text, &refuse_all).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        t.site("dc2").unwrap().fence.as_ref().unwrap().command,
        strings(&["/opt/{site}/fence-{host}", "{address}"])
    );
}

/// A fence program is looked for only through the check the caller gives
/// (core reads no files): plain `parse` accepts any program.
#[test]
fn fence_programs_are_looked_for_only_through_the_callers_check() {
    let text = format!(
        "{}{BASE}",
        "[[sites]]\nname = \"dc2\"\nfence = { command = [\"/nonexistent/tandem-fence\"] }\n"
    );
    parse("t.toml", &text).unwrap_or_else(|d| panic!("{d}"));
    let shown: Vec<String> = expect_errors("t.toml", &text)
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        shown,
        [r#"t.toml:3:22: fence program "/nonexistent/tandem-fence" of site "dc2": not found"#]
    );
}

/// Lines 1.. of each case are the case's own text; this base follows it so
/// that the case can refer to sites dc1 and hosts h1, h2.
const BASE: &str = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"

[[hosts]]
name = "h2"
site = "dc1"
address = "10.0.0.2"
"#;

/// (what, toml, line, column, message substring)
const ERROR_CASES: &[(&str, &str, usize, usize, &str)] = &[
    (
        "toml syntax error",
        r#"[apps.web]
ha = "none
"#,
        2,
        11,
        "invalid TOML: invalid basic string",
    ),
    (
        "unknown top-level key",
        r#"colour = "red"
"#,
        1,
        1,
        r#"unknown key "colour" in the top level (expected one of: cluster, sites, hosts, apps, endpoints, links, webhooks)"#,
    ),
    (
        "unknown key in instance",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
prio = 1
"#,
        7,
        1,
        r#"unknown key "prio" in instance of app "web" (expected one of: id, host, priority, ports) (did you mean "priority"?)"#,
    ),
    (
        "unknown key in cluster",
        r#"[cluster]
lease = "3s"
"#,
        2,
        1,
        r#"unknown key "lease" in [cluster] (expected one of: name, lease_ttl, renew_interval, fence_margin, agent_port, failsafe, heartbeat_interval, missed_heartbeats)"#,
    ),
    (
        "unknown key in check",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "tcp"
port = "p"
retries = 3
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { p = 1000 }
"#,
        7,
        1,
        r#"unknown key "retries" in check of app "web""#,
    ),
    (
        "command of the wrong type",
        r#"[apps.web]
ha = "none"
command = "run --fast"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        3,
        11,
        r#"expected an array of strings (e.g. ["program", "arg"]) for "command" in app "web", found a string"#,
    ),
    (
        "priority of the wrong type",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
priority = "high"
"#,
        7,
        12,
        r#"expected an integer for "priority" in instance of app "web", found a string"#,
    ),
    (
        "links written as a table",
        r#"[links]
from = "web"
"#,
        1,
        1,
        r#"expected an array of tables (write [[links]]) for "links" in the top level, found a table"#,
    ),
    (
        "missing host on an instance points at its table",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
"#,
        4,
        1,
        r#"missing key "host" in instance of app "web""#,
    ),
    (
        "missing ha mode points at the app",
        r#"[apps.web]
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        1,
        1,
        r#"missing key "ha" in app "web" (one of: hot-standby, warm-standby"#,
    ),
    (
        "missing command",
        r#"[apps.web]
ha = "none"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        1,
        1,
        r#"missing key "command" in app "web""#,
    ),
    (
        "unknown host on an instance",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h3"
"#,
        6,
        8,
        r#"unknown host "h3" for instance "a" of app "web" (known hosts: h1, h2)"#,
    ),
    (
        "unknown site on a host",
        r#"[[hosts]]
name = "h9"
site = "dc2"
address = "10.0.0.9"
"#,
        3,
        8,
        r#"unknown site "dc2" of host "h9" (known sites: dc1) (did you mean "dc1"?)"#,
    ),
    (
        "duplicate site",
        r#"[[sites]]
name = "dc2"
[[sites]]
name = "dc2"
"#,
        4,
        8,
        r#"duplicate site "dc2" (first defined at line 2, column 8)"#,
    ),
    (
        "duplicate host",
        r#"[[hosts]]
name = "x"
site = "dc1"
address = "10.0.1.1"
[[hosts]]
name = "x"
site = "dc1"
address = "10.0.1.2"
"#,
        6,
        8,
        r#"duplicate host "x" (first defined at line 2, column 8)"#,
    ),
    (
        "duplicate instance id within an app",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[apps.web.instances]]
id = "a"
host = "h2"
"#,
        8,
        6,
        r#"duplicate instance id "a" in app "web" (first defined at line 5, column 6)"#,
    ),
    (
        "duplicate port on one host, across apps",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[apps.api]
ha = "none"
command = ["run"]
[[apps.api.instances]]
id = "b"
host = "h1"
ports = { admin = 8080 }
"#,
        14,
        19,
        r#"duplicate port 8080 on host "h1": instance "a" of app "web" (port "http") and instance "b" of app "api" (port "admin") both use it"#,
    ),
    (
        "link to an unknown app",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[links]]
from = "web"
to = "dbb"
cardinality = "one"
"#,
        9,
        6,
        r#"link to unknown app or endpoint "dbb" (known apps and endpoints: web)"#,
    ),
    (
        "link from an unknown app",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[links]]
from = "client"
to = "web"
cardinality = "one"
"#,
        8,
        8,
        r#"link from unknown app "client" (known apps: web)"#,
    ),
    (
        "link to an unknown endpoint",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "swich"
cardinality = "one"
"#,
        14,
        6,
        "link to unknown app or endpoint \"swich\" (known apps and endpoints: switch, web) (did you mean \"switch\"?)",
    ),
    (
        "an unknown site role",
        r#"[[sites]]
name = "dr"
role = "standby"
"#,
        3,
        8,
        "unknown site role \"standby\" in site (expected one of: active, spare)",
    ),
    (
        "admin data of an app without a primary",
        r#"[apps.web]
ha = "none"
command = ["run"]
admin_dir = "/var/lib/web"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        13,
        "app \"web\": \"admin_dir\" applies to warm-standby and hot-standby, not \"none\"",
    ),
    (
        "an exclusive group across apps",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[apps.rep]
ha = "none"
command = ["run"]
[[apps.rep.instances]]
id = "r"
host = "h2"
ports = { http = 8080 }
[[links]]
from = "cms"
to = "main"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "http", path = "/link" }
[[links]]
from = "rep"
to = "surv"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "http", path = "/link" }
"#,
        33,
        13,
        "exclusive group \"acd\" spans apps \"cms\" and \"rep\" (first declared at line 27, column 13): a group's links all go from one app",
    ),
    (
        "an exclusive group of one link",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
from = "cms"
to = "main"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "http", path = "/link" }
"#,
        20,
        13,
        "exclusive group \"acd\" has a single link: a group needs two or more",
    ),
    (
        "an exclusive link without a hook",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
from = "cms"
to = "main"
cardinality = "one"
exclusive = "acd"
[[links]]
from = "cms"
to = "surv"
cardinality = "one"
exclusive = "acd"
hook = { kind = "command", command = ["switch-link"] }
"#,
        20,
        13,
        "link \"cms->main\" is in exclusive group \"acd\" but has no hook",
    ),
    (
        "a link hook without a group",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
from = "cms"
to = "main"
cardinality = "one"
hook = { kind = "http", port = "http", path = "/link" }
"#,
        20,
        8,
        "link \"cms->main\" has a hook but no exclusive group",
    ),
    (
        "a signal link hook",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
from = "cms"
to = "main"
cardinality = "one"
exclusive = "acd"
hook = { kind = "signal", signal = "HUP" }
[[links]]
from = "cms"
to = "surv"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "http", path = "/link" }
"#,
        21,
        8,
        "a signal hook cannot enable or disable a link",
    ),
    (
        "a link hook on a port the instances lack",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
from = "cms"
to = "main"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "admin", path = "/link" }
[[links]]
from = "cms"
to = "surv"
cardinality = "one"
exclusive = "acd"
hook = { kind = "http", port = "http", path = "/link" }
"#,
        21,
        32,
        "app \"cms\": link hook port \"admin\" is not a port of instance \"a\" (its ports: http)",
    ),
    (
        "a link named with a leading dot",
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "surv"
address = "10.0.0.9"
port = 7001
[[links]]
name = ".active"
from = "cms"
to = "main"
cardinality = "one"
"#,
        17,
        8,
        "invalid link name \".active\"",
    ),
    (
        "link from an endpoint",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "switch"
to = "web"
cardinality = "one"
"#,
        13,
        8,
        "link from endpoint \"switch\": a link goes from an app",
    ),
    (
        "endpoint named like an app",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "web"
address = "10.0.0.9"
port = 5022
"#,
        9,
        8,
        "endpoint \"web\" has the name of an app",
    ),
    (
        "endpoint with a bad address",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "switch.example"
port = 5022
"#,
        10,
        11,
        "invalid address \"switch.example\" of endpoint \"switch\"",
    ),
    (
        "endpoint without a port",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
"#,
        8,
        1,
        "\"port\"",
    ),
    (
        "endpoint in an unknown site",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
site = "dc9"
"#,
        12,
        8,
        "unknown site \"dc9\" of endpoint switch",
    ),
    (
        "link port on an endpoint",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
port = "http"
"#,
        16,
        8,
        "\"port\" does not apply to a link to endpoint \"switch\"",
    ),
    (
        "link port the target lacks",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[apps.db]
ha = "none"
command = ["run"]
[[apps.db.instances]]
id = "a"
host = "h2"
ports = { pg = 5432 }
[[links]]
from = "web"
to = "db"
cardinality = "one"
port = "sql"
"#,
        19,
        8,
        "link port \"sql\": instance db/a has no port of that name",
    ),
    (
        "duplicate link name",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "s1"
address = "10.0.0.9"
port = 5022
[[endpoints]]
name = "s2"
address = "10.0.0.9"
port = 5023
[[links]]
name = "uplink"
from = "web"
to = "s1"
cardinality = "one"
[[links]]
name = "uplink"
from = "web"
to = "s2"
cardinality = "one"
"#,
        22,
        8,
        "duplicate link name \"uplink\" (first declared at line 16, column 1)",
    ),
    (
        "unknown link probe",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
probe = "icmp"
"#,
        16,
        9,
        "unknown link probe \"icmp\" in link (expected one of: tcp, http, reported)",
    ),
    (
        "link probe timeout above its interval",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
interval = "100ms"
timeout = "200ms"
"#,
        17,
        11,
        "link probe timeout (200ms) must be less than its interval (100ms)",
    ),
    (
        "path on a tcp link probe",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
path = "/x"
"#,
        16,
        1,
        "key \"path\" does not apply to a tcp link probe",
    ),
    (
        "link failover settings on an app without a standby",
        r#"[apps.web]
ha = "none"
command = ["run"]
link_hold_down = "2s"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        1,
        "app \"web\": \"link_hold_down\" applies to warm-standby and hot-standby, not \"none\"",
    ),
    (
        "tls link without a CA",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
tls = true
"#,
        12,
        1,
        "link has tls = true but no tls_ca",
    ),
    (
        "tls_ca without tls",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
tls_ca = "/x.pem"
"#,
        16,
        1,
        "key \"tls_ca\" does not apply to a link without tls = true",
    ),
    (
        "tls expiry warning of too many days",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
tls = true
tls_ca = "/x.pem"
tls_expiry_warning = "400d"
"#,
        18,
        22,
        "\"tls_expiry_warning\" in link must be 1d to 365d, found 400d",
    ),
    (
        "http probe of a tls link",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
from = "web"
to = "switch"
cardinality = "one"
tls = true
tls_ca = "/x.pem"
probe = "http"
"#,
        18,
        9,
        "a TLS link is probed by a TLS handshake",
    ),
    (
        "bad cardinality",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[apps.db]
ha = "none"
command = ["run"]
[[apps.db.instances]]
id = "a"
host = "h2"
[[links]]
from = "web"
to = "db"
cardinality = "many"
"#,
        16,
        15,
        r#"unknown cardinality "many" in link (expected one of: one, one-or-more, optional)"#,
    ),
    (
        "warm standby with one instance",
        r#"[apps.web]
ha = "warm-standby"
command = ["run"]
[apps.web.hook]
kind = "command"
command = ["notify"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        2,
        6,
        r#"app "web": ha mode "warm-standby" needs at least two instances, found 1"#,
    ),
    (
        "warm standby without a role hook",
        r#"[apps.web]
ha = "warm-standby"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[apps.web.instances]]
id = "b"
host = "h1"
"#,
        2,
        6,
        r#"app "web": a warm-standby app needs a role hook ([apps.web.hook])"#,
    ),
    (
        "hot standby without a role hook",
        r#"[apps.web]
ha = "hot-standby"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[apps.web.instances]]
id = "b"
host = "h1"
"#,
        2,
        6,
        r#"app "web": a hot-standby app needs a role hook ([apps.web.hook])"#,
    ),
    (
        "app without instances",
        r#"[apps.web]
ha = "none"
command = ["run"]
"#,
        1,
        1,
        r#"app "web" has no instances: add at least one [[apps.web.instances]]"#,
    ),
    (
        "empty command",
        r#"[apps.web]
ha = "none"
command = []
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        3,
        11,
        r#"empty command in app "web""#,
    ),
    (
        "empty program",
        r#"[apps.web]
ha = "none"
command = ["", "--flag"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        3,
        12,
        r#"empty program in command of app "web""#,
    ),
    (
        "bad duration",
        r#"[apps.web]
ha = "none"
command = ["run"]
stop_timeout = "5 s"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        16,
        r#"bad duration "5 s": expected a positive whole number followed by ms, s or m (e.g. "500ms", "2s", "1m") for "stop_timeout" in app "web""#,
    ),
    (
        "drain on a mode without a primary",
        r#"[apps.web]
ha = "n-plus-1"
command = ["run"]
drain = "300ms"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        9,
        r#"app "web": "drain" applies to the modes with a primary (hot-standby, warm-standby, cold-standby, singleton), not "n-plus-1""#,
    ),
    (
        "drain too long",
        r#"[apps.web]
ha = "singleton"
command = ["run"]
drain = "6m"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        9,
        r#"drain = "6m" in app "web" is too long: at most 5m"#,
    ),
    (
        "drain not a duration",
        r#"[apps.web]
ha = "singleton"
command = ["run"]
drain = 300
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        9,
        r#"for "drain" in app "web""#,
    ),
    (
        "agent port out of range",
        r#"[cluster]
agent_port = 70000
"#,
        2,
        14,
        r#""agent_port" in [cluster] must be between 1 and 65535, found 70000"#,
    ),
    (
        "agent port zero",
        r#"[cluster]
agent_port = 0
"#,
        2,
        14,
        r#""agent_port" in [cluster] must be between 1 and 65535, found 0"#,
    ),
    (
        "failsafe not a boolean",
        r#"[cluster]
failsafe = "yes"
"#,
        2,
        12,
        r#"expected a boolean for "failsafe" in [cluster], found a string"#,
    ),
    (
        "duration given as a number",
        r#"[cluster]
lease_ttl = 3
"#,
        2,
        13,
        r#"expected a duration string such as "500ms", "2s" or "1m" for "lease_ttl" in [cluster], found an integer"#,
    ),
    (
        "check timeout not below its interval",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "tcp"
port = "p"
interval = "1s"
timeout = "1s"
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { p = 1000 }
"#,
        8,
        11,
        r#"check timeout (1s) must be less than its interval (1s) in check of app "web""#,
    ),
    (
        "check interval below the default timeout",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "tcp"
port = "p"
interval = "300ms"
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { p = 1000 }
"#,
        7,
        12,
        r#"check timeout (500ms) must be less than its interval (300ms)"#,
    ),
    (
        "failures_before_unhealthy zero",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "exec"
command = ["true"]
failures_before_unhealthy = 0
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        7,
        29,
        r#""failures_before_unhealthy" in check of app "web" must be at least 1, found 0"#,
    ),
    (
        "successes_before_healthy negative",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "exec"
command = ["true"]
successes_before_healthy = -2
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        7,
        28,
        r#""successes_before_healthy" in check of app "web" must be at least 1, found -2"#,
    ),
    (
        "check port missing on an instance",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "http"
port = "http"
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 80 }
[[apps.web.instances]]
id = "b"
host = "h2"
ports = { admin = 81 }
"#,
        6,
        8,
        r#"app "web": check port "http" is not a port of instance "b" (its ports: admin)"#,
    ),
    (
        "hook port missing on an instance",
        r#"[apps.web]
ha = "none"
command = ["run"]
[apps.web.hook]
kind = "http"
port = "ctl"
path = "/role"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        6,
        8,
        r#"app "web": hook port "ctl" is not a port of instance "a" (it has no ports)"#,
    ),
    (
        "unknown placeholder, pointed at precisely",
        r#"[apps.web]
ha = "none"
command = ["run", "--id={instance}-{epoch}"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        3,
        36,
        r#"unknown placeholder "{epoch}" in command of app "web" (expected one of: {app}, {instance}, {host}, {site}, {address}, {ports.NAME}"#,
    ),
    (
        "unknown placeholder in env",
        r#"[apps.web]
ha = "none"
command = ["run"]
env = { URL = "http://{hostname}/" }
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        23,
        r#"unknown placeholder "{hostname}" in env URL of app "web""#,
    ),
    (
        "unclosed placeholder",
        r#"[apps.web]
ha = "none"
command = ["run", "{app"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        3,
        20,
        r#"unclosed "{" in command of app "web""#,
    ),
    (
        "port placeholder missing on an instance",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "exec"
command = ["probe", "{address}:{ports.admin}"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { admin = 9000 }
[[apps.web.instances]]
id = "b"
host = "h2"
"#,
        6,
        32,
        r#"placeholder "{ports.admin}" in check command of app "web": instance "b" has no port "admin""#,
    ),
    (
        "invalid host address",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "localhost"
"#,
        4,
        11,
        r#"invalid address "localhost" of host "h3": expected an IP address such as "127.0.0.1" or "::1""#,
    ),
    (
        "unknown ha mode",
        r#"[apps.web]
ha = "warm"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        2,
        6,
        r#"unknown ha mode "warm" in app "web" (expected one of: hot-standby, warm-standby, cold-standby, n-plus-1, singleton, pool, none)"#,
    ),
    (
        "unknown check kind",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "grpc"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        5,
        8,
        r#"unknown check kind "grpc" in check of app "web" (expected one of: tcp, http, exec)"#,
    ),
    (
        "key of another check kind",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.checks]]
kind = "tcp"
port = "p"
path = "/health"
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { p = 1000 }
"#,
        7,
        1,
        r#"key "path" does not apply to a tcp check (its keys: port)"#,
    ),
    (
        "unknown hook kind",
        r#"[apps.web]
ha = "none"
command = ["run"]
[apps.web.hook]
kind = "webhook"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        5,
        8,
        r#"unknown hook kind "webhook" in hook of app "web" (expected one of: http, command, signal)"#,
    ),
    (
        "unknown signal",
        r#"[apps.web]
ha = "none"
command = ["run"]
[apps.web.hook]
kind = "signal"
signal = "SIGKILL"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        6,
        10,
        r#"unknown signal "SIGKILL" in hook of app "web" (expected one of: SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGCONT, SIGWINCH"#,
    ),
    (
        "invalid app name",
        r#"[apps.Web]
ha = "none"
command = ["run"]
[[apps.Web.instances]]
id = "a"
host = "h1"
"#,
        1,
        7,
        r#"invalid app name "Web": use 1 to 63 characters from a-z, 0-9, "-" and "_", starting with a letter or digit"#,
    ),
    (
        "invalid instance id",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "_a"
host = "h1"
"#,
        5,
        6,
        r#"invalid instance name "_a""#,
    ),
    (
        "invalid port name",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { "web.http" = 80 }
"#,
        7,
        11,
        r#"invalid port name "web.http""#,
    ),
    (
        "invalid site name",
        r#"[[sites]]
name = "DC 2"
"#,
        2,
        8,
        r#"invalid site name "DC 2""#,
    ),
    (
        "port out of range",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
ports = { http = 70000 }
"#,
        7,
        18,
        r#"port "http" in instance of app "web" must be between 1 and 65535"#,
    ),
    (
        "renew interval not below the lease ttl",
        r#"[cluster]
lease_ttl = "2s"
renew_interval = "2s"
fence_margin = "500ms"
"#,
        3,
        18,
        r#"renew_interval (2s) must be less than lease_ttl (2s) in [cluster]"#,
    ),
    (
        "fence margin not below the lease ttl",
        r#"[cluster]
fence_margin = "3s"
"#,
        2,
        16,
        r#"fence_margin (3s) must be less than lease_ttl (3s) in [cluster]"#,
    ),
    (
        "no renew attempt before fencing",
        r#"[cluster]
lease_ttl = "3s"
renew_interval = "1s"
fence_margin = "2s"
"#,
        4,
        16,
        r#"renew_interval (1s) + fence_margin (2s) must be less than lease_ttl (3s) in [cluster]: the agent must get at least one renew attempt before it fences itself"#,
    ),
    (
        "hook timeout not below the fence margin",
        r#"[apps.web]
ha = "none"
command = ["run"]
[apps.web.hook]
kind = "command"
command = ["on-role"]
timeout = "1s"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        7,
        11,
        r#"hook timeout (1s) of app "web" must be less than the cluster's fence_margin (1s): self-fencing, this hook included, must finish before the lease can expire"#,
    ),
    (
        "default hook timeout not below a small fence margin",
        r#"[cluster]
fence_margin = "300ms"
[apps.web]
ha = "none"
command = ["run"]
[apps.web.hook]
kind = "signal"
signal = "TERM"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        6,
        1,
        r#"hook timeout (default 500ms) of app "web" must be less than the cluster's fence_margin (300ms)"#,
    ),
    (
        "duplicate link",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[apps.db]
ha = "none"
command = ["run"]
[[apps.db.instances]]
id = "a"
host = "h2"
[[links]]
from = "web"
to = "db"
cardinality = "one"
[[links]]
from = "web"
to = "db"
cardinality = "optional"
"#,
        17,
        1,
        r#"duplicate link from "web" to "db" (first declared at line 13, column 1)"#,
    ),
    (
        "link to itself",
        r#"[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[links]]
from = "web"
to = "web"
cardinality = "one"
"#,
        8,
        8,
        r#"link from app "web" to itself"#,
    ),
    (
        "env value of the wrong type",
        r#"[apps.web]
ha = "none"
command = ["run"]
env = { WORKERS = 4 }
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        19,
        r#"expected a string for env "WORKERS" in app "web", found an integer"#,
    ),
    (
        "restart crashloop_after zero",
        r#"[apps.web]
ha = "none"
command = ["run"]
[apps.web.restart]
crashloop_after = 0
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        5,
        19,
        r#""crashloop_after" in restart policy of app "web" must be at least 1, found 0"#,
    ),
    // fencing and heartbeat settings, fence devices
    (
        "unknown key in site",
        r#"[[sites]]
name = "dc2"
power = "off"
"#,
        3,
        1,
        r#"unknown key "power" in site (expected one of: name, role, fence)"#,
    ),
    (
        "unknown key in host",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "10.0.0.3"
fencing = "token"
"#,
        5,
        1,
        r#"unknown key "fencing" in host (expected one of: name, site, address, fence)"#,
    ),
    (
        "unknown fencing",
        r#"[apps.web]
ha = "cold-standby"
command = ["run"]
fencing = "tokn"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        11,
        r#"unknown fencing "tokn" in app "web" (expected one of: lease, token) (did you mean "token"?)"#,
    ),
    (
        "token fencing on a singleton",
        r#"[apps.web]
ha = "singleton"
command = ["run"]
fencing = "token"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        11,
        r#"app "web": fencing = "token" needs ha mode hot-standby, warm-standby or cold-standby, not "singleton": a singleton promises never to run two instances at once, and token fencing replaces a primary that may still be running"#,
    ),
    (
        "token fencing on n-plus-1",
        r#"[apps.web]
ha = "n-plus-1"
command = ["run"]
fencing = "token"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        11,
        r#"app "web": fencing = "token" needs ha mode hot-standby, warm-standby or cold-standby, not "n-plus-1": it has no primary and no epoch for downstream services to check"#,
    ),
    (
        "token fencing on a pool",
        r#"[apps.web]
ha = "pool"
command = ["run"]
fencing = "token"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        11,
        r#"app "web": fencing = "token" needs ha mode hot-standby, warm-standby or cold-standby, not "pool": it has no primary and no epoch"#,
    ),
    (
        "token fencing without ha",
        r#"[apps.web]
ha = "none"
command = ["run"]
fencing = "token"
[[apps.web.instances]]
id = "a"
host = "h1"
"#,
        4,
        11,
        r#"not "none": it has no primary and no epoch"#,
    ),
    (
        "zero heartbeat interval",
        r#"[cluster]
heartbeat_interval = "0ms"
"#,
        2,
        22,
        r#"bad duration "0ms": expected a positive whole number followed by ms, s or m (e.g. "500ms", "2s", "1m") for "heartbeat_interval" in [cluster]"#,
    ),
    (
        "sub-millisecond heartbeat interval",
        r#"[cluster]
heartbeat_interval = "500us"
"#,
        2,
        22,
        r#"bad duration "500us""#,
    ),
    (
        "one missed heartbeat",
        r#"[cluster]
missed_heartbeats = 1
"#,
        2,
        21,
        r#""missed_heartbeats" in [cluster] must be at least 2, found 1: one lost heartbeat must never make a host suspected"#,
    ),
    (
        "too many missed heartbeats",
        r#"[cluster]
heartbeat_interval = "1ms"
missed_heartbeats = 10001
"#,
        3,
        21,
        r#""missed_heartbeats" in [cluster] must be at most 10000, found 10001"#,
    ),
    (
        "heartbeats too slow for the lease",
        r#"[cluster]
missed_heartbeats = 25
heartbeat_interval = "100ms"
"#,
        3,
        22,
        "heartbeat_interval (100ms) × missed_heartbeats (25) = 2500ms must be less than lease_ttl (3s) − renew_interval (500ms) = 2500ms in [cluster]: a silent host must be suspected before its lease can expire",
    ),
    (
        "lease too short for the default heartbeats",
        r#"[cluster]
lease_ttl = "40ms"
renew_interval = "20ms"
fence_margin = "10ms"
"#,
        2,
        13,
        "heartbeat_interval (2ms) × missed_heartbeats (15) = 30ms must be less than lease_ttl (40ms) − renew_interval (20ms) = 20ms in [cluster]",
    ),
    (
        "fence not a table",
        r#"[[sites]]
name = "dc2"
fence = "ipmi"
"#,
        3,
        9,
        r#"expected a table for fence device of site "dc2", found a string"#,
    ),
    (
        "unknown key in fence",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/bin/sh"], timout = "5s" }
"#,
        3,
        34,
        r#"unknown key "timout" in fence device of site "dc2" (expected one of: command, timeout) (did you mean "timeout"?)"#,
    ),
    (
        "fence without command",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "10.0.0.3"
fence = { timeout = "10s" }
"#,
        5,
        9,
        r#"missing key "command" in fence device of host "h3""#,
    ),
    (
        "fence sub-table without command",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "10.0.0.3"
[hosts.fence]
timeout = "10s"
"#,
        5,
        1,
        r#"missing key "command" in fence device of host "h3""#,
    ),
    (
        "empty fence command",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "10.0.0.3"
[hosts.fence]
command = []
"#,
        6,
        11,
        r#"empty command in fence device of host "h3": give the program and its arguments"#,
    ),
    (
        "zero fence timeout",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/bin/sh"], timeout = "0s" }
"#,
        3,
        44,
        r#"bad duration "0s": expected a positive whole number followed by ms, s or m (e.g. "500ms", "2s", "1m") for "timeout" in fence device of site "dc2""#,
    ),
    (
        "unparseable fence timeout",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/bin/sh"], timeout = "soon" }
"#,
        3,
        44,
        r#"bad duration "soon""#,
    ),
    (
        "unknown placeholder in fence command",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/bin/sh", "-c", "fence {app} {host}"] }
"#,
        3,
        46,
        r#"unknown placeholder "{app}" in the fence command of site "dc2" (expected one of: {host}, {address}, {site}; write "{{" for a literal brace)"#,
    ),
    (
        "unclosed brace in fence command",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/bin/sh", "{host"] }
"#,
        3,
        34,
        r#"unclosed "{" in the fence command of site "dc2""#,
    ),
    (
        "fence program not found",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/nonexistent/tandem-fence", "{host}"] }
"#,
        3,
        22,
        r#"fence program "/nonexistent/tandem-fence" of site "dc2": not found"#,
    ),
    (
        "fence program a directory",
        r#"[[sites]]
name = "dc2"
fence = { command = ["/"] }
"#,
        3,
        22,
        r#"fence program "/" of site "dc2": not a file"#,
    ),
    (
        "fence program not on PATH",
        r#"[[hosts]]
name = "h3"
site = "dc1"
address = "10.0.0.3"
fence = { command = ["tandem-no-such-fence-program"] }
"#,
        5,
        22,
        r#"fence program "tandem-no-such-fence-program" of host "h3": not found on $PATH"#,
    ),
];

#[test]
fn each_problem_is_reported_once_at_its_place() {
    assert!(ERROR_CASES.len() >= 25);
    let mut failures = Vec::new();
    for (what, snippet, line, column, needle) in ERROR_CASES {
        let text = format!("{snippet}{BASE}");
        let diags = match parse_with("case.toml", &text, &programs) {
            Ok(_) => {
                failures.push(format!("{what}: parsed without error"));
                continue;
            }
            Err(d) => d.0,
        };
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let ok = diags.len() == 1
            && diags[0].file == "case.toml"
            && (diags[0].line, diags[0].column) == (*line, *column)
            && diags[0].message.contains(needle);
        if !ok {
            failures.push(format!("{what}: expected exactly one case.toml:{line}:{column}: ...{needle}...\n  got:\n    {}", shown.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let diags = expect_errors("many_errors.toml", MANY_ERRORS);
    let got: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        got,
        [
            (2, 13),
            (9, 8),
            (13, 6),
            (13, 6),
            (14, 11),
            (19, 1),
            (24, 6)
        ],
        "{diags:#?}"
    );
    let needles = [
        "bad duration \"2\"",
        "unknown site \"dc9\"",
        "needs a role hook",
        "needs at least two instances",
        "empty command",
        "unknown key \"prio\"",
        "link to unknown app or endpoint \"nope\"",
    ];
    for (d, needle) in diags.iter().zip(needles) {
        assert!(d.message.contains(needle), "{d} should contain {needle}");
    }
}

#[test]
fn diagnostics_display_one_line_each() {
    let err = parse("bad.toml", MANY_ERRORS).unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), err.0.len());
    assert!(
        text.starts_with("bad.toml:2:13: bad duration \"2\""),
        "{text}"
    );
    let _: &dyn std::error::Error = &err;
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[[sites]]\nname = \"é\" # é\n[[sites]]\nname = \"dc\"\nnom = \"ü\"\n";
    let diags = expect_errors("t.toml", text);
    let got: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, [(2, 8), (5, 1)], "{diags:#?}");
}

#[test]
fn drain_is_zero_unless_given_and_may_be_written_as_zero() {
    let app = |drain: &str| {
        let text = format!(
            "[apps.web]\nha = \"singleton\"\ncommand = [\"run\"]\n{drain}\n[[apps.web.instances]]\nid = \"a\"\nhost = \"h1\"\n{BASE}"
        );
        let t = parse("t.toml", &text).unwrap_or_else(|d| panic!("{drain}: {d}"));
        t.apps[0].drain
    };
    assert_eq!(app(""), Duration::ZERO);
    assert_eq!(app("drain = \"0ms\""), Duration::ZERO);
    assert_eq!(app("drain = \"0\""), Duration::ZERO);
    assert_eq!(app("drain = \"300ms\""), ms(300));
    assert_eq!(app("drain = \"5m\""), ms(300_000));
}

#[test]
fn duration_parsing() {
    let valid = [
        ("1ms", 1),
        ("500ms", 500),
        ("2s", 2000),
        ("1m", 60_000),
        ("90s", 90_000),
        ("007s", 7000),
        ("1440m", 86_400_000),
    ];
    for (s, millis) in valid {
        assert_eq!(parse_duration(s), Ok(ms(millis)), "{s}");
    }
    let invalid = [
        "",
        "2",
        "2 s",
        " 2s",
        "2s ",
        "-1s",
        "+1s",
        "1.5s",
        "0s",
        "0ms",
        "2sec",
        "2S",
        "1h",
        "s",
        "ms",
        "2ms5",
        "1441m",
        "99999999999999999999s",
    ];
    for s in invalid {
        let err = parse_duration(s).expect_err(s);
        assert!(err.starts_with(&format!("bad duration \"{s}\"")), "{err}");
    }
    assert!(
        parse_duration("2")
            .unwrap_err()
            .contains("a positive whole number followed by ms, s or m")
    );
    for (d, s) in [
        (ms(500), "500ms"),
        (ms(2000), "2s"),
        (ms(120_000), "2m"),
        (ms(1500), "1500ms"),
    ] {
        assert_eq!(format_duration(d), s);
    }
}

#[test]
fn expand_fills_placeholders_for_an_instance() {
    let t = parse("t.toml", FULL).unwrap();
    let web = t.app("web").unwrap();
    let b = web.instance("b").unwrap();
    let host = t.host(&b.host).unwrap();
    assert_eq!(
        expand(
            "{app}/{instance}@{host} {address}:{ports.http} {{literal}} {ports.nope}",
            web,
            b,
            host
        ),
        "web/b@remote ::1:8081 {literal} {ports.nope}"
    );
    assert_eq!(
        expand_all(&web.command, web, b, host),
        strings(&[
            "tandem",
            "demo-app",
            "--port",
            "8081",
            "--name",
            "web/b@remote"
        ])
    );
    assert_eq!(expand(&web.env["LISTEN"], web, b, host), "::1:8081");
}

#[test]
fn json_round_trip_keeps_the_topology() {
    let t = parse("t.toml", FULL).unwrap();
    let json = serde_json::to_string(&t).unwrap();
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["cluster"]["lease_ttl_ms"], 3000);
    assert_eq!(v["apps"][0]["ha"], "warm-standby");
    assert_eq!(v["apps"][0]["checks"][0]["timeout_ms"], 150);
    assert_eq!(v["apps"][0]["hook"]["kind"], "http");
    assert_eq!(v["links"][2]["cardinality"], "one-or-more");
}

#[test]
fn endpoints_and_link_probes_parse_with_their_defaults() {
    let text = format!(
        r#"[apps.cms]
ha = "none"
command = ["run"]
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = {{ http = 8080, admin = 8081 }}
[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "a"
host = "h2"
[[endpoints]]
name = "cm1"
address = "10.0.0.9"
port = 5022
site = "dc1"
[[links]]
name = "acd-main"
from = "cms"
to = "cm1"
cardinality = "one"
probe = "http"
path = "/ping"
interval = "200ms"
timeout = "100ms"
failures_before_down = 2
successes_before_up = 1
[[links]]
from = "web"
to = "cms"
cardinality = "one-or-more"
port = "admin"
[[links]]
name = "secure"
from = "web"
to = "cm1"
cardinality = "optional"
tls = true
tls_ca = "/etc/tandem/ca.pem"
tls_server_name = "cm1.example"
tls_expiry_warning = "30d"
{BASE}"#
    );
    let t = parse_with("t.toml", &text, &programs).expect("parses");
    assert_eq!(
        t.endpoints,
        vec![Endpoint {
            name: "cm1".into(),
            address: "10.0.0.9".parse().expect("ip"),
            port: 5022,
            site: Some("dc1".into()),
        }]
    );
    let acd = t.link("acd-main").expect("acd-main");
    assert_eq!(
        acd.probe,
        LinkProbe {
            kind: LinkProbeKind::Http {
                path: "/ping".into()
            },
            interval: ms(200),
            timeout: ms(100),
            failures_before_down: 2,
            successes_before_up: 1,
        }
    );
    let targets = t.link_targets(acd);
    assert_eq!(targets.len(), 1);
    assert_eq!((targets[0].name.as_str(), targets[0].port), ("cm1", 5022));
    assert_eq!(
        t.link("secure").and_then(|l| l.tls_check.clone()),
        Some(TlsCheck {
            ca: "/etc/tandem/ca.pem".into(),
            server_name: Some("cm1.example".into()),
            expiry_warning: Duration::from_secs(30 * 24 * 3600),
        })
    );
    let web = t.link("web->cms").expect("the default name");
    assert_eq!(web.probe, LinkProbe::default());
    let targets = t.link_targets(web);
    assert_eq!(
        targets
            .iter()
            .map(|x| (x.name.as_str(), x.address.to_string(), x.port))
            .collect::<Vec<_>>(),
        vec![("a", "10.0.0.1".to_string(), 8081)]
    );
}

#[test]
fn an_admin_directory_that_is_a_file_is_refused_at_its_place() {
    let text = format!(
        r#"[apps.cms]
ha = "warm-standby"
command = ["run"]
admin_dir = "/srv/cms-{{instance}}"
[apps.cms.hook]
kind = "command"
command = ["role"]
[[apps.cms.instances]]
id = "a"
host = "h1"
[[apps.cms.instances]]
id = "b"
host = "h2"
{BASE}"#
    );
    let dirs = |p: &str| {
        if p == "/srv/cms-b" {
            Err("is a file, not a directory".to_string())
        } else {
            Ok(())
        }
    };
    let checks = tandem_core::topology::LocalChecks {
        programs: &programs,
        directories: &dirs,
    };
    let d = tandem_core::topology::parse_checked("t.toml", &text, checks)
        .expect_err("a file as admin directory is refused");
    let all: Vec<String> = d.0.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        all,
        ["t.toml:4:13: admin directory \"/srv/cms-b\" of cms/b: is a file, not a directory"]
    );
    // Without the check (or with directories that can serve) it parses.
    let t = parse_with("t.toml", &text, &programs).expect("parses");
    assert_eq!(
        t.app("cms").and_then(|a| a.admin_dir.as_deref()),
        Some("/srv/cms-{instance}")
    );
}
