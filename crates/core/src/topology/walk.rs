//! First pass: walks the spanned TOML tree, builds the model and reports
//! every problem that one table shows on its own (unknown keys, wrong types,
//! missing keys, bad values). It also gathers, with their spans, the facts
//! the second pass ([`super::validate`]) needs to check references between
//! tables.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::diagnostic::Sink;
use super::duration::{format_duration, parse_duration};
use super::model::{
    App, Cardinality, Check, CheckKind, Cluster, Endpoint, FenceDevice, Fencing, HaMode, Hook,
    Host, Instance, Link, LinkFailover, LinkProbe, LinkProbeKind, RestartPolicy, Site, SiteRole,
    TlsCheck, Topology, Webhook, hook_signal,
};
use crate::model::EventKind;

/// A byte range in the topology text.
pub(crate) type Span = Range<usize>;
type Val<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Src {
    /// Not written: the default applies.
    Default,
    /// Written here, and valid.
    Explicit(Span),
    /// Written, but invalid (already reported).
    Invalid,
}

/// A setting's value (or its default) and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub value: T,
    pub src: Src,
}

impl<T: Copy> Setting<T> {
    /// The value, unless it was invalid.
    pub(crate) fn valid(&self) -> Option<T> {
        (self.src != Src::Invalid).then_some(self.value)
    }
}

/// A name or reference and where it was written.
pub(crate) type Named = (String, Span);

/// What the second pass needs to know about the file, with spans.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub cluster: ClusterFacts,
    pub sites: Vec<SiteFacts>,
    pub hosts: Vec<HostFacts>,
    pub apps: Vec<AppFacts>,
    pub links: Vec<LinkFacts>,
    pub endpoints: Vec<EndpointFacts>,
    /// The name of each webhook.
    pub webhooks: Vec<Named>,
}

/// Cluster timing and where each value came from.
#[derive(Debug)]
pub(crate) struct ClusterFacts {
    /// The `[cluster]` table, or the start of the file if there is none.
    pub table: Span,
    pub lease_ttl: Setting<Duration>,
    pub renew_interval: Setting<Duration>,
    pub fence_margin: Setting<Duration>,
    pub heartbeat_interval: Setting<Duration>,
    pub missed_heartbeats: Setting<u32>,
}

impl Default for ClusterFacts {
    fn default() -> Self {
        let c = Cluster::default();
        let default = |value| Setting {
            value,
            src: Src::Default,
        };
        ClusterFacts {
            table: 0..0,
            lease_ttl: default(c.lease_ttl),
            renew_interval: default(c.renew_interval),
            fence_margin: default(c.fence_margin),
            heartbeat_interval: default(c.heartbeat_interval),
            missed_heartbeats: Setting {
                value: c.missed_heartbeats,
                src: Src::Default,
            },
        }
    }
}

/// A site's name and fence device.
#[derive(Debug)]
pub(crate) struct SiteFacts {
    pub name: Option<Named>,
    pub fence: Option<FenceFacts>,
}

/// A host's name, site reference and fence device.
#[derive(Debug)]
pub(crate) struct HostFacts {
    pub name: Option<Named>,
    pub site: Option<Named>,
    pub fence: Option<FenceFacts>,
}

/// A fence device's command, for the placeholder and program checks.
#[derive(Debug)]
pub(crate) struct FenceFacts {
    /// Whose device it is, for messages: `host "h1"`, `site "dc1"`.
    pub owner: String,
    /// The strings of its command, the program first; empty unless the
    /// command is a valid array of strings.
    pub command: Vec<Template>,
}

/// An app, its instances and everything in it that refers to them.
#[derive(Debug)]
pub(crate) struct AppFacts {
    pub name: String,
    /// The app's table (its `[apps.NAME]` header, or its key).
    pub table: Span,
    pub ha: Option<(HaMode, Span)>,
    /// `fencing`, where given and valid.
    pub fencing: Option<(Fencing, Span)>,
    /// Every string that may hold placeholders.
    pub templates: Vec<Template>,
    /// The `port` of each check that has one.
    pub check_ports: Vec<Named>,
    pub hook: Option<HookFacts>,
    /// `replicas` and `min_healthy`, where given.
    pub replicas: Option<(u32, Span)>,
    pub min_healthy: Option<(u32, Span)>,
    /// `drain`, where given and valid.
    pub drain: Option<(Duration, Span)>,
    /// The first link failover setting written, if any.
    pub link_failover: Option<Named>,
    /// `admin_dir`, where given and not empty.
    pub admin_dir: Option<Named>,
    /// Where `pinned = true` is written.
    pub pinned: Option<Span>,
    /// None if `instances` was not an array of tables.
    pub instances: Option<Vec<InstanceFacts>>,
}

/// A string that may hold placeholders.
#[derive(Debug)]
pub(crate) struct Template {
    pub text: String,
    /// The TOML string's span, quotes included.
    pub span: Span,
    /// Where it is, for messages: e.g. `command`, `env LOG`, `check command`.
    pub what: String,
}

/// A hook's port reference and timeout.
#[derive(Debug)]
pub(crate) struct HookFacts {
    pub table: Span,
    pub port: Option<Named>,
    pub timeout: Setting<Duration>,
}

/// An instance's id, host and ports.
#[derive(Debug)]
pub(crate) struct InstanceFacts {
    pub id: Option<Named>,
    pub host: Option<Named>,
    /// Valid ports: name, number, span of the number.
    pub ports: Vec<(String, u16, Span)>,
    /// Every port name written, valid or not; None if `ports` was not a table.
    pub port_names: Option<Vec<String>>,
}

/// A link's ends, name and probed port.
#[derive(Debug)]
pub(crate) struct LinkFacts {
    pub table: Span,
    pub from: Option<Named>,
    pub to: Option<Named>,
    /// Its name as written (`None`: the default `FROM->TO`).
    pub name: Option<Named>,
    /// Its resolved name (written or default), if its ends are known.
    pub resolved: Option<String>,
    pub port: Option<Named>,
    /// Its exclusive group, where given and valid.
    pub exclusive: Option<Named>,
    /// Its hook's table, port and timeout, where it has one.
    pub hook: Option<HookFacts>,
    /// Its hook's strings that may hold placeholders (checked against the
    /// `from` app's instances).
    pub templates: Vec<Template>,
}

/// An endpoint's name and site.
#[derive(Debug)]
pub(crate) struct EndpointFacts {
    pub name: Option<Named>,
    pub site: Option<Named>,
}

/// The result of reading one key.
enum Got<T> {
    /// The key is not there.
    Absent,
    /// The key is there but its value is wrong (reported).
    Bad,
    /// The key's value, and the value's span.
    Ok(T, Span),
}

impl<T> Got<T> {
    fn ok(self) -> Option<(T, Span)> {
        match self {
            Got::Ok(v, s) => Some((v, s)),
            _ => None,
        }
    }

    fn or_default(self, default: T) -> Setting<T> {
        match self {
            Got::Absent => Setting {
                value: default,
                src: Src::Default,
            },
            Got::Bad => Setting {
                value: default,
                src: Src::Invalid,
            },
            Got::Ok(value, span) => Setting {
                value,
                src: Src::Explicit(span),
            },
        }
    }
}

/// What a TOML value is, for "found ..." in messages.
fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Whether `s` is a valid name of a site, host, app, instance or port:
/// `[a-z0-9][a-z0-9_-]{0,62}` (names end up in store keys and URLs).
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && ok(&b[0])
        && b[1..].iter().all(|c| ok(c) || *c == b'-' || *c == b'_')
}

/// The rule of [`is_valid_name`], for messages.
const NAME_RULE: &str =
    "use 1 to 63 characters from a-z, 0-9, \"-\" and \"_\", starting with a letter or digit";

/// Reports `name` if it is not a valid name of a `kind`.
fn check_name(sink: &mut Sink, kind: &str, name: &str, span: &Span) {
    if !is_valid_name(name) {
        sink.error(span, format!("invalid {kind} name \"{name}\": {NAME_RULE}"));
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// ` (did you mean "x"?)` if one of `candidates` is close to `word`.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| {
            let close = *d <= 2.max(c.len() / 3) && *d < c.len().max(word.len());
            let prefix = word.len() >= 3 && (c.starts_with(word) || word.starts_with(c));
            close || prefix
        })
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!(" (did you mean \"{c}\"?)"),
        None => String::new(),
    }
}

/// The entries of a table in file order (the tree keeps them sorted by key).
fn entries<'a, 'i>(t: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Val<'i>)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// A table being read, with what it is (for messages).
struct Tab<'a, 'i> {
    t: &'a DeTable<'i>,
    span: Span,
    what: String,
}

impl<'a, 'i> Tab<'a, 'i> {
    /// `v` as a table, or a report that it is not one.
    fn of(sink: &mut Sink, v: &'a Val<'i>, what: impl Into<String>) -> Option<Self> {
        let what = what.into();
        match v.get_ref() {
            DeValue::Table(t) => Some(Tab {
                t,
                span: v.span(),
                what,
            }),
            other => {
                sink.error(
                    &v.span(),
                    format!("expected a table for {what}, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.t.get(key)
    }

    /// Reports every key not in `allowed`.
    fn check_keys(&self, sink: &mut Sink, allowed: &[&str]) {
        for (k, _) in entries(self.t) {
            let key: &str = k.get_ref();
            if !allowed.contains(&key) {
                sink.error(
                    &k.span(),
                    format!(
                        "unknown key \"{key}\" in {} (expected one of: {}){}",
                        self.what,
                        allowed.join(", "),
                        did_you_mean(key, allowed.iter().copied())
                    ),
                );
            }
        }
    }

    fn missing(&self, sink: &mut Sink, key: &str) {
        sink.error(
            &self.span,
            format!("missing key \"{key}\" in {}", self.what),
        );
    }

    fn wrong_type(&self, sink: &mut Sink, key: &str, expected: &str, v: &Val<'i>) {
        sink.error(
            &v.span(),
            format!(
                "expected {expected} for \"{key}\" in {}, found {}",
                self.what,
                type_name(v.get_ref())
            ),
        );
    }

    /// Reports `key` (if present) as not applying here.
    fn not_here(&self, sink: &mut Sink, key: &str, why: &str) {
        if let Some((k, _)) = self.t.get_key_value(key) {
            sink.error(&k.span(), format!("key \"{key}\" does not apply to {why}"));
        }
    }

    fn string(&self, sink: &mut Sink, key: &str) -> Got<&'a str> {
        match self.get(key) {
            None => Got::Absent,
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Got::Ok(s.as_ref(), v.span()),
                _ => {
                    self.wrong_type(sink, key, "a string", v);
                    Got::Bad
                }
            },
        }
    }

    fn required_string(&self, sink: &mut Sink, key: &str) -> Option<(&'a str, Span)> {
        match self.string(sink, key) {
            Got::Absent => {
                self.missing(sink, key);
                None
            }
            g => g.ok(),
        }
    }

    /// A required name, checked against the name rule; kept even if it breaks it,
    /// so that references to it do not report again.
    fn name(&self, sink: &mut Sink, key: &str, kind: &str) -> Option<Named> {
        let (name, span) = self.required_string(sink, key)?;
        check_name(sink, kind, name, &span);
        Some((name.to_string(), span))
    }

    fn integer(&self, sink: &mut Sink, key: &str) -> Got<i64> {
        match self.get(key) {
            None => Got::Absent,
            Some(v) => match v.get_ref() {
                DeValue::Integer(int) => match i64::from_str_radix(int.as_str(), int.radix()) {
                    Ok(n) => Got::Ok(n, v.span()),
                    Err(_) => {
                        sink.error(
                            &v.span(),
                            format!(
                                "integer {int} for \"{key}\" in {} is out of range",
                                self.what
                            ),
                        );
                        Got::Bad
                    }
                },
                _ => {
                    self.wrong_type(sink, key, "an integer", v);
                    Got::Bad
                }
            },
        }
    }

    /// An integer of at least 1 that fits a `u32`.
    fn count(&self, sink: &mut Sink, key: &str) -> Got<u32> {
        match self.integer(sink, key) {
            Got::Ok(n, span) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Got::Ok(n, span),
                _ => {
                    sink.error(
                        &span,
                        format!("\"{key}\" in {} must be at least 1, found {n}", self.what),
                    );
                    Got::Bad
                }
            },
            Got::Absent => Got::Absent,
            Got::Bad => Got::Bad,
        }
    }

    fn boolean(&self, sink: &mut Sink, key: &str) -> Got<bool> {
        match self.get(key) {
            None => Got::Absent,
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Got::Ok(*b, v.span()),
                _ => {
                    self.wrong_type(sink, key, "a boolean", v);
                    Got::Bad
                }
            },
        }
    }

    fn duration(&self, sink: &mut Sink, key: &str) -> Got<Duration> {
        match self.get(key) {
            None => Got::Absent,
            Some(v) => match v.get_ref() {
                DeValue::String(s) => match parse_duration(s) {
                    Ok(d) => Got::Ok(d, v.span()),
                    Err(e) => {
                        sink.error(&v.span(), format!("{e} for \"{key}\" in {}", self.what));
                        Got::Bad
                    }
                },
                _ => {
                    self.wrong_type(
                        sink,
                        key,
                        "a duration string such as \"500ms\", \"2s\" or \"1m\"",
                        v,
                    );
                    Got::Bad
                }
            },
        }
    }

    /// A command: a non-empty array of strings whose first one (the program)
    /// is not empty. Each string is recorded as a template.
    fn command(
        &self,
        sink: &mut Sink,
        key: &str,
        what: &str,
        templates: &mut Vec<Template>,
    ) -> Got<Vec<String>> {
        let Some(v) = self.get(key) else {
            return Got::Absent;
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(
                sink,
                key,
                "an array of strings (e.g. [\"program\", \"arg\"])",
                v,
            );
            return Got::Bad;
        };
        if items.is_empty() {
            sink.error(
                &v.span(),
                format!(
                    "empty {what} in {}: give the program and its arguments",
                    self.what
                ),
            );
            return Got::Bad;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => {
                    if i == 0 && s.is_empty() {
                        sink.error(
                            &item.span(),
                            format!("empty program in {what} of {}", self.what),
                        );
                        ok = false;
                    }
                    templates.push(Template {
                        text: s.to_string(),
                        span: item.span(),
                        what: what.to_string(),
                    });
                    out.push(s.to_string());
                }
                other => {
                    sink.error(
                        &item.span(),
                        format!(
                            "expected a string in {what} of {}, found {}",
                            self.what,
                            type_name(other)
                        ),
                    );
                    ok = false;
                }
            }
        }
        if ok { Got::Ok(out, v.span()) } else { Got::Bad }
    }

    /// The tables of the array of tables `key`; each one is `what`.
    /// Empty if absent; None if `key` is not an array of tables.
    fn tables(
        &self,
        sink: &mut Sink,
        key: &str,
        what: &str,
        header: &str,
    ) -> Option<Vec<Tab<'a, 'i>>> {
        let Some(v) = self.get(key) else {
            return Some(Vec::new());
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(
                sink,
                key,
                &format!("an array of tables (write [[{header}]])"),
                v,
            );
            return None;
        };
        Some(
            items
                .iter()
                .filter_map(|item| Tab::of(sink, item, what))
                .collect(),
        )
    }

    /// The table `key`, if present and a table.
    fn table(&self, sink: &mut Sink, key: &str, what: impl Into<String>) -> Option<Tab<'a, 'i>> {
        self.get(key).and_then(|v| Tab::of(sink, v, what))
    }
}

/// Walks the whole document.
pub(crate) fn walk(file: &str, root: &DeTable<'_>, sink: &mut Sink) -> (Topology, Facts) {
    let root = Tab {
        t: root,
        span: 0..0,
        what: "the top level".to_string(),
    };
    root.check_keys(
        sink,
        &[
            "cluster",
            "sites",
            "hosts",
            "apps",
            "endpoints",
            "links",
            "webhooks",
        ],
    );
    let mut facts = Facts::default();

    let (name, cluster) = walk_cluster(&root, file, sink, &mut facts.cluster);

    let mut sites = Vec::new();
    for tab in root
        .tables(sink, "sites", "site", "sites")
        .unwrap_or_default()
    {
        tab.check_keys(sink, &["name", "role", "fence"]);
        let name = tab.name(sink, "name", "site");
        let (fence, fence_facts) = walk_fence_of(&tab, sink, "site", name.as_ref());
        let role = match tab.string(sink, "role") {
            Got::Ok(r, span) => match SiteRole::ALL.into_iter().find(|x| x.as_str() == r) {
                Some(role) => role,
                None => {
                    let names: Vec<&str> = SiteRole::ALL.iter().map(|x| x.as_str()).collect();
                    sink.error(
                        &span,
                        format!(
                            "unknown site role \"{r}\" in {} (expected one of: {}){}",
                            tab.what,
                            names.join(", "),
                            did_you_mean(r, names.clone())
                        ),
                    );
                    SiteRole::Active
                }
            },
            _ => SiteRole::Active,
        };
        sites.push(Site {
            name: name.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
            role,
            fence,
        });
        facts.sites.push(SiteFacts {
            name,
            fence: fence_facts,
        });
    }

    let mut hosts = Vec::new();
    for tab in root
        .tables(sink, "hosts", "host", "hosts")
        .unwrap_or_default()
    {
        let (host, f) = walk_host(&tab, sink);
        hosts.push(host);
        facts.hosts.push(f);
    }

    let mut apps = Vec::new();
    if let Some(apps_tab) = root.table(sink, "apps", "\"apps\" (one [apps.NAME] table per app)") {
        for (key, value) in entries(apps_tab.t) {
            let name: &str = key.get_ref();
            check_name(sink, "app", name, &key.span());
            let Some(tab) = Tab::of(sink, value, format!("app \"{name}\"")) else {
                continue;
            };
            let (app, f) = walk_app(name, &tab, sink);
            apps.push(app);
            facts.apps.push(f);
        }
    }

    let mut endpoints = Vec::new();
    for tab in root
        .tables(sink, "endpoints", "endpoint", "endpoints")
        .unwrap_or_default()
    {
        let (endpoint, f) = walk_endpoint(&tab, sink);
        endpoints.extend(endpoint);
        facts.endpoints.push(f);
    }

    let mut links = Vec::new();
    for tab in root
        .tables(sink, "links", "link", "links")
        .unwrap_or_default()
    {
        let (link, f) = walk_link(&tab, sink);
        links.extend(link);
        facts.links.push(f);
    }

    let mut webhooks = Vec::new();
    for tab in root
        .tables(sink, "webhooks", "webhook", "webhooks")
        .unwrap_or_default()
    {
        let (webhook, name) = walk_webhook(&tab, sink);
        webhooks.extend(webhook);
        facts.webhooks.extend(name);
    }

    (
        Topology {
            name,
            cluster,
            sites,
            hosts,
            apps,
            links,
            endpoints,
            webhooks,
        },
        facts,
    )
}

fn walk_cluster(
    root: &Tab<'_, '_>,
    file: &str,
    sink: &mut Sink,
    facts: &mut ClusterFacts,
) -> (String, Cluster) {
    let default_name = || {
        Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "tandem".to_string())
    };
    let Some(tab) = root.table(sink, "cluster", "\"cluster\"") else {
        return (default_name(), Cluster::default());
    };
    let tab = Tab {
        what: "[cluster]".to_string(),
        ..tab
    };
    tab.check_keys(
        sink,
        &[
            "name",
            "lease_ttl",
            "renew_interval",
            "fence_margin",
            "agent_port",
            "failsafe",
            "heartbeat_interval",
            "missed_heartbeats",
        ],
    );
    let name = match tab.string(sink, "name") {
        Got::Ok(name, span) => {
            check_name(sink, "cluster", name, &span);
            name.to_string()
        }
        _ => default_name(),
    };
    let d = Cluster::default();
    facts.table = tab.span.clone();
    facts.lease_ttl = tab.duration(sink, "lease_ttl").or_default(d.lease_ttl);
    facts.renew_interval = tab
        .duration(sink, "renew_interval")
        .or_default(d.renew_interval);
    facts.fence_margin = tab
        .duration(sink, "fence_margin")
        .or_default(d.fence_margin);
    facts.heartbeat_interval = tab
        .duration(sink, "heartbeat_interval")
        .or_default(d.heartbeat_interval);
    facts.missed_heartbeats = match tab.integer(sink, "missed_heartbeats") {
        Got::Ok(n, span) if n < MIN_MISSED_HEARTBEATS => {
            sink.error(
                &span,
                format!(
                    "\"missed_heartbeats\" in [cluster] must be at least {MIN_MISSED_HEARTBEATS}, found {n}: \
                     one lost heartbeat must never make a host suspected"
                ),
            );
            Got::Bad
        }
        Got::Ok(n, span) if n > MAX_MISSED_HEARTBEATS => {
            sink.error(
                &span,
                format!(
                    "\"missed_heartbeats\" in [cluster] must be at most {MAX_MISSED_HEARTBEATS}, found {n}"
                ),
            );
            Got::Bad
        }
        Got::Ok(n, span) => Got::Ok(n as u32, span),
        Got::Absent => Got::Absent,
        Got::Bad => Got::Bad,
    }
    .or_default(d.missed_heartbeats);
    let agent_port = match tab.integer(sink, "agent_port") {
        Got::Ok(n, span) => match u16::try_from(n).ok().filter(|n| *n != 0) {
            Some(n) => n,
            None => {
                sink.error(
                    &span,
                    format!("\"agent_port\" in [cluster] must be between 1 and 65535, found {n}"),
                );
                d.agent_port
            }
        },
        _ => d.agent_port,
    };
    let cluster = Cluster {
        lease_ttl: facts.lease_ttl.value,
        renew_interval: facts.renew_interval.value,
        fence_margin: facts.fence_margin.value,
        agent_port,
        failsafe: tab.boolean(sink, "failsafe").or_default(d.failsafe).value,
        heartbeat_interval: facts.heartbeat_interval.value,
        missed_heartbeats: facts.missed_heartbeats.value,
    };
    (name, cluster)
}

fn walk_host(tab: &Tab<'_, '_>, sink: &mut Sink) -> (Host, HostFacts) {
    tab.check_keys(sink, &["name", "site", "address", "fence"]);
    let name = tab.name(sink, "name", "host");
    let site = tab
        .required_string(sink, "site")
        .map(|(s, span)| (s.to_string(), span));
    let address = match tab.required_string(sink, "address") {
        Some((a, span)) => match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let host = name
                    .as_ref()
                    .map_or(String::new(), |n| format!(" of host \"{}\"", n.0));
                sink.error(
                    &span,
                    format!("invalid address \"{a}\"{host}: expected an IP address such as \"127.0.0.1\" or \"::1\""),
                );
                None
            }
        },
        None => None,
    };
    let (fence, fence_facts) = walk_fence_of(tab, sink, "host", name.as_ref());
    let host = Host {
        name: name.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
        site: site.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        address: address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        fence,
    };
    (
        host,
        HostFacts {
            name,
            site,
            fence: fence_facts,
        },
    )
}

/// The `fence` table of a host or site table (`kind` "host" or "site"), if any.
fn walk_fence_of(
    tab: &Tab<'_, '_>,
    sink: &mut Sink,
    kind: &str,
    name: Option<&Named>,
) -> (Option<FenceDevice>, Option<FenceFacts>) {
    let owner = match name {
        Some((n, _)) => format!("{kind} \"{n}\""),
        None => format!("a {kind} without a name"),
    };
    match tab.table(sink, "fence", format!("fence device of {owner}")) {
        Some(f) => {
            let (device, facts) = walk_fence(&f, sink, owner);
            (device, Some(facts))
        }
        None => (None, None),
    }
}

fn walk_fence(
    tab: &Tab<'_, '_>,
    sink: &mut Sink,
    owner: String,
) -> (Option<FenceDevice>, FenceFacts) {
    tab.check_keys(sink, &["command", "timeout"]);
    let mut templates = Vec::new();
    let command = match tab.command(sink, "command", "command", &mut templates) {
        Got::Absent => {
            tab.missing(sink, "command");
            None
        }
        g => g.ok().map(|(command, _)| command),
    };
    if command.is_none() {
        templates.clear();
    }
    let timeout = tab
        .duration(sink, "timeout")
        .or_default(FenceDevice::DEFAULT_TIMEOUT);
    let device = command.map(|command| FenceDevice {
        command,
        timeout: timeout.value,
    });
    (
        device,
        FenceFacts {
            owner,
            command: templates,
        },
    )
}

/// `drain`: a duration, or zero written as "0", "0ms" or "0s" (the
/// default); at most [`App::MAX_DRAIN`].
fn walk_drain(tab: &Tab<'_, '_>, sink: &mut Sink) -> Option<(Duration, Span)> {
    if let Some(v) = tab.get("drain")
        && let DeValue::String(s) = v.get_ref()
        && matches!(&**s, "0" | "0ms" | "0s")
    {
        return Some((Duration::ZERO, v.span()));
    }
    let Got::Ok(d, span) = tab.duration(sink, "drain") else {
        return None;
    };
    if d > App::MAX_DRAIN {
        sink.error(
            &span,
            format!(
                "drain = \"{}\" in {} is too long: at most {} (the old primary gets no new work meanwhile)",
                format_duration(d),
                tab.what,
                format_duration(App::MAX_DRAIN)
            ),
        );
        return None;
    }
    Some((d, span))
}

/// `link_failover`, `link_hold_down`, `link_switchover_interval`; with
/// the first of them written, if any (for the mode check).
fn walk_link_failover(tab: &Tab<'_, '_>, sink: &mut Sink) -> (LinkFailover, Option<Named>) {
    let d = LinkFailover::default();
    let written = [
        "link_failover",
        "link_hold_down",
        "link_switchover_interval",
    ]
    .into_iter()
    .find_map(|k| {
        tab.t
            .get_key_value(k)
            .map(|(key, _)| (k.to_string(), key.span()))
    });
    let enabled = tab
        .boolean(sink, "link_failover")
        .or_default(d.enabled)
        .value;
    let hold_down = tab
        .duration(sink, "link_hold_down")
        .or_default(d.hold_down)
        .value;
    let interval = tab
        .duration(sink, "link_switchover_interval")
        .or_default(d.interval)
        .value;
    (
        LinkFailover {
            enabled,
            hold_down,
            interval,
        },
        written,
    )
}

fn walk_app(name: &str, tab: &Tab<'_, '_>, sink: &mut Sink) -> (App, AppFacts) {
    const KEYS: &[&str] = &[
        "ha",
        "command",
        "env",
        "workdir",
        "stop_timeout",
        "drain",
        "link_failover",
        "link_hold_down",
        "link_switchover_interval",
        "admin_dir",
        "pinned",
        "restart",
        "checks",
        "hook",
        "fencing",
        "replicas",
        "min_healthy",
        "instances",
    ];
    tab.check_keys(sink, KEYS);
    let mut templates = Vec::new();

    let ha = match tab.string(sink, "ha") {
        Got::Absent => {
            sink.error(
                &tab.span,
                format!(
                    "missing key \"ha\" in {} (one of: {})",
                    tab.what,
                    ha_mode_list()
                ),
            );
            None
        }
        Got::Bad => None,
        Got::Ok(mode, span) => match HaMode::from_name(mode) {
            Some(m) => Some((m, span)),
            None => {
                sink.error(
                    &span,
                    format!(
                        "unknown ha mode \"{mode}\" in {} (expected one of: {}){}",
                        tab.what,
                        ha_mode_list(),
                        did_you_mean(mode, HaMode::ALL.iter().map(|m| m.as_str()))
                    ),
                );
                None
            }
        },
    };

    let fencing_names = || Fencing::ALL.iter().map(|f| f.as_str()).collect::<Vec<_>>();
    let fencing = match tab.string(sink, "fencing") {
        Got::Ok(f, span) => match Fencing::from_name(f) {
            Some(fencing) => Some((fencing, span)),
            None => {
                sink.error(
                    &span,
                    format!(
                        "unknown fencing \"{f}\" in {} (expected one of: {}){}",
                        tab.what,
                        fencing_names().join(", "),
                        did_you_mean(f, fencing_names())
                    ),
                );
                None
            }
        },
        _ => None,
    };

    let command = match tab.command(sink, "command", "command", &mut templates) {
        Got::Absent => {
            tab.missing(sink, "command");
            Vec::new()
        }
        g => g.ok().map(|c| c.0).unwrap_or_default(),
    };

    let mut env = BTreeMap::new();
    if let Some(env_tab) = tab.table(sink, "env", format!("\"env\" of {}", tab.what)) {
        for (k, v) in entries(env_tab.t) {
            let var: &str = k.get_ref();
            let valid_var = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_var {
                sink.error(
                    &k.span(),
                    format!("invalid environment variable name \"{var}\" in {}: use A-Z, a-z, 0-9 and \"_\", not starting with a digit", tab.what),
                );
            }
            match v.get_ref() {
                DeValue::String(s) => {
                    templates.push(Template {
                        text: s.to_string(),
                        span: v.span(),
                        what: format!("env {var}"),
                    });
                    env.insert(var.to_string(), s.to_string());
                }
                other => sink.error(
                    &v.span(),
                    format!(
                        "expected a string for env \"{var}\" in {}, found {}",
                        tab.what,
                        type_name(other)
                    ),
                ),
            }
        }
    }

    let admin_dir = match tab.string(sink, "admin_dir") {
        Got::Ok("", span) => {
            sink.error(
                &span,
                format!("empty admin_dir in {}: name a directory", tab.what),
            );
            None
        }
        Got::Ok(d, span) => {
            templates.push(Template {
                text: d.to_string(),
                span: span.clone(),
                what: "admin_dir".to_string(),
            });
            Some((d.to_string(), span))
        }
        _ => None,
    };
    let pinned = tab.boolean(sink, "pinned").ok();
    let workdir = match tab.string(sink, "workdir") {
        Got::Ok("", span) => {
            sink.error(
                &span,
                format!(
                    "empty workdir in {}: leave it out to use the agent's",
                    tab.what
                ),
            );
            None
        }
        g => g.ok().map(|(w, _)| w.to_string()),
    };

    let stop_timeout = tab
        .duration(sink, "stop_timeout")
        .or_default(App::DEFAULT_STOP_TIMEOUT)
        .value;
    let drain = walk_drain(tab, sink);
    let (link_failover, link_failover_keys) = walk_link_failover(tab, sink);
    let replicas = tab.count(sink, "replicas").ok();
    let min_healthy = tab.count(sink, "min_healthy").ok();

    let restart = match tab.table(sink, "restart", format!("restart policy of {}", tab.what)) {
        Some(r) => walk_restart(&r, sink),
        None => RestartPolicy::default(),
    };

    let mut checks = Vec::new();
    let mut check_ports = Vec::new();
    let header = format!("apps.{name}.checks");
    for c in tab
        .tables(sink, "checks", &format!("check of {}", tab.what), &header)
        .unwrap_or_default()
    {
        let (check, port) = walk_check(&c, sink, &mut templates);
        checks.extend(check);
        check_ports.extend(port);
    }

    let (hook, hook_facts) = match tab.table(sink, "hook", format!("hook of {}", tab.what)) {
        Some(h) => {
            let (hook, f) = walk_hook(&h, sink, &mut templates);
            (hook, Some(f))
        }
        None => (None, None),
    };

    let header = format!("apps.{name}.instances");
    let instance_tabs = tab.tables(
        sink,
        "instances",
        &format!("instance of {}", tab.what),
        &header,
    );
    let mut instances = Vec::new();
    let instance_facts = instance_tabs.map(|tabs| {
        tabs.iter()
            .map(|t| {
                let (instance, f) = walk_instance(t, sink);
                instances.push(instance);
                f
            })
            .collect()
    });

    let replicas_n = replicas
        .as_ref()
        .map_or(instances.len() as u32, |r| r.0)
        .max(1);
    let app = App {
        name: name.to_string(),
        ha: ha.as_ref().map_or(HaMode::None, |h| h.0),
        replicas: replicas_n,
        min_healthy: min_healthy.as_ref().map_or(replicas_n, |m| m.0),
        command,
        env,
        workdir,
        checks,
        hook,
        fencing: fencing.as_ref().map_or(Fencing::Lease, |f| f.0),
        restart,
        stop_timeout,
        drain: drain.as_ref().map_or(Duration::ZERO, |d| d.0),
        link_failover,
        admin_dir: admin_dir.as_ref().map(|d| d.0.clone()),
        pinned: pinned.as_ref().is_some_and(|p| p.0),
        instances,
    };
    let facts = AppFacts {
        name: name.to_string(),
        table: tab.span.clone(),
        ha,
        fencing,
        templates,
        check_ports,
        hook: hook_facts,
        replicas,
        min_healthy,
        drain,
        link_failover: link_failover_keys,
        admin_dir,
        pinned: pinned.filter(|p| p.0).map(|p| p.1),
        instances: instance_facts,
    };
    (app, facts)
}

/// The fewest missed heartbeats that make a host suspected: one lost
/// heartbeat must never be enough.
const MIN_MISSED_HEARTBEATS: i64 = 2;
/// The most missed heartbeats that can be asked for.
const MAX_MISSED_HEARTBEATS: i64 = 10_000;

/// The HA modes, for messages.
fn ha_mode_list() -> String {
    HaMode::ALL
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn walk_restart(tab: &Tab<'_, '_>, sink: &mut Sink) -> RestartPolicy {
    tab.check_keys(
        sink,
        &[
            "initial_backoff",
            "max_backoff",
            "stable_after",
            "crashloop_after",
        ],
    );
    let d = RestartPolicy::default();
    let initial = tab
        .duration(sink, "initial_backoff")
        .or_default(d.initial_backoff);
    let max = tab.duration(sink, "max_backoff").or_default(d.max_backoff);
    let stable_after = tab
        .duration(sink, "stable_after")
        .or_default(d.stable_after)
        .value;
    let crashloop_after = tab
        .count(sink, "crashloop_after")
        .or_default(d.crashloop_after)
        .value;
    match (initial.valid(), max.valid()) {
        (Some(i), Some(m)) if i > m => {
            let at = match (&initial.src, &max.src) {
                (_, Src::Explicit(s)) | (Src::Explicit(s), _) => s.clone(),
                _ => tab.span.clone(),
            };
            sink.error(
                &at,
                format!(
                    "initial_backoff ({}) must not exceed max_backoff ({}) in {}",
                    format_duration(i),
                    format_duration(m),
                    tab.what
                ),
            );
        }
        _ => {}
    }
    RestartPolicy {
        initial_backoff: initial.value,
        max_backoff: max.value,
        stable_after,
        crashloop_after,
    }
}

/// The keys each kind of check takes, besides `kind` and the timing keys.
const CHECK_KINDS: &[(&str, &[&str])] = &[
    ("tcp", &["port"]),
    ("http", &["port", "path"]),
    ("exec", &["command"]),
];

fn walk_check(
    tab: &Tab<'_, '_>,
    sink: &mut Sink,
    templates: &mut Vec<Template>,
) -> (Option<Check>, Option<Named>) {
    const KEYS: &[&str] = &[
        "kind",
        "port",
        "path",
        "command",
        "interval",
        "timeout",
        "failures_before_unhealthy",
        "successes_before_healthy",
    ];
    tab.check_keys(sink, KEYS);
    let kind_names = || CHECK_KINDS.iter().map(|k| k.0).collect::<Vec<_>>();
    let kind = match tab.required_string(sink, "kind") {
        Some((k, span)) => match CHECK_KINDS.iter().find(|c| c.0 == k) {
            Some(c) => Some(*c),
            None => {
                sink.error(
                    &span,
                    format!(
                        "unknown check kind \"{k}\" in {} (expected one of: {}){}",
                        tab.what,
                        kind_names().join(", "),
                        did_you_mean(k, kind_names())
                    ),
                );
                None
            }
        },
        None => None,
    };
    let mut port = None;
    let check_kind = kind.and_then(|(kind, keys)| {
        for other in ["port", "path", "command"] {
            if !keys.contains(&other) {
                tab.not_here(
                    sink,
                    other,
                    &format!("a {kind} check (its keys: {})", keys.join(", ")),
                );
            }
        }
        match kind {
            "tcp" | "http" => {
                port = tab
                    .required_string(sink, "port")
                    .map(|(p, s)| (p.to_string(), s));
                let path = match if kind == "http" {
                    tab.string(sink, "path")
                } else {
                    Got::Bad
                } {
                    Got::Absent => Some("/".to_string()),
                    Got::Bad => None,
                    Got::Ok(p, span) if !p.starts_with('/') => {
                        sink.error(
                            &span,
                            format!("path \"{p}\" in {} must start with \"/\"", tab.what),
                        );
                        None
                    }
                    Got::Ok(p, _) => Some(p.to_string()),
                };
                let port = port.clone()?.0;
                if kind == "tcp" {
                    Some(CheckKind::Tcp { port })
                } else {
                    Some(CheckKind::Http { port, path: path? })
                }
            }
            _ => match tab.command(sink, "command", "check command", templates) {
                Got::Absent => {
                    tab.missing(sink, "command");
                    None
                }
                g => g.ok().map(|(command, _)| CheckKind::Exec { command }),
            },
        }
    });

    let interval = tab
        .duration(sink, "interval")
        .or_default(Check::DEFAULT_INTERVAL);
    let timeout = tab
        .duration(sink, "timeout")
        .or_default(Check::DEFAULT_TIMEOUT);
    match (interval.valid(), timeout.valid()) {
        (Some(i), Some(t)) if t >= i => {
            let at = match (&timeout.src, &interval.src) {
                (Src::Explicit(s), _) | (_, Src::Explicit(s)) => s.clone(),
                _ => tab.span.clone(),
            };
            sink.error(
                &at,
                format!(
                    "check timeout ({}) must be less than its interval ({}) in {}",
                    format_duration(t),
                    format_duration(i),
                    tab.what
                ),
            );
        }
        _ => {}
    }
    let failures = tab
        .count(sink, "failures_before_unhealthy")
        .or_default(Check::DEFAULT_FAILURES_BEFORE_UNHEALTHY);
    let successes = tab
        .count(sink, "successes_before_healthy")
        .or_default(Check::DEFAULT_SUCCESSES_BEFORE_HEALTHY);
    let check = check_kind.map(|kind| Check {
        kind,
        interval: interval.value,
        timeout: timeout.value,
        failures_before_unhealthy: failures.value,
        successes_before_healthy: successes.value,
    });
    (check, port)
}

/// The keys each kind of hook takes, besides `kind` and `timeout`.
const HOOK_KINDS: &[(&str, &[&str])] = &[
    ("http", &["port", "path"]),
    ("command", &["command"]),
    ("signal", &["signal"]),
];

fn walk_hook(
    tab: &Tab<'_, '_>,
    sink: &mut Sink,
    templates: &mut Vec<Template>,
) -> (Option<Hook>, HookFacts) {
    tab.check_keys(
        sink,
        &["kind", "port", "path", "command", "signal", "timeout"],
    );
    let kind_names = || HOOK_KINDS.iter().map(|k| k.0).collect::<Vec<_>>();
    let kind = match tab.required_string(sink, "kind") {
        Some((k, span)) => match HOOK_KINDS.iter().find(|c| c.0 == k) {
            Some(c) => Some(*c),
            None => {
                sink.error(
                    &span,
                    format!(
                        "unknown hook kind \"{k}\" in {} (expected one of: {}){}",
                        tab.what,
                        kind_names().join(", "),
                        did_you_mean(k, kind_names())
                    ),
                );
                None
            }
        },
        None => None,
    };
    let timeout = tab
        .duration(sink, "timeout")
        .or_default(Hook::DEFAULT_TIMEOUT);
    let mut port = None;
    let hook = kind.and_then(|(kind, keys)| {
        for other in ["port", "path", "command", "signal"] {
            if !keys.contains(&other) {
                tab.not_here(sink, other, &format!("a {kind} hook (its keys: {})", keys.join(", ")));
            }
        }
        match kind {
            "http" => {
                port = tab.required_string(sink, "port").map(|(p, s)| (p.to_string(), s));
                let path = match tab.required_string(sink, "path") {
                    Some((p, span)) if !p.starts_with('/') => {
                        sink.error(&span, format!("path \"{p}\" in {} must start with \"/\"", tab.what));
                        None
                    }
                    other => other.map(|(p, _)| p.to_string()),
                };
                Some(Hook::Http { port: port.clone()?.0, path: path?, timeout: timeout.value })
            }
            "command" => match tab.command(sink, "command", "hook command", templates) {
                Got::Absent => {
                    tab.missing(sink, "command");
                    None
                }
                g => g.ok().map(|(command, _)| Hook::Command { command, timeout: timeout.value }),
            },
            _ => {
                let (name, span) = tab.required_string(sink, "signal")?;
                match hook_signal(name) {
                    Some((signal, number)) => {
                        Some(Hook::Signal { signal: signal.to_string(), number, timeout: timeout.value })
                    }
                    None => {
                        let names: Vec<&str> = super::model::HOOK_SIGNALS.iter().map(|s| s.0).collect();
                        sink.error(
                            &span,
                            format!(
                                "unknown signal \"{name}\" in {} (expected one of: {}, with or without the SIG prefix)",
                                tab.what,
                                names.join(", ")
                            ),
                        );
                        None
                    }
                }
            }
        }
    });
    (
        hook,
        HookFacts {
            table: tab.span.clone(),
            port,
            timeout,
        },
    )
}

fn walk_instance(tab: &Tab<'_, '_>, sink: &mut Sink) -> (Instance, InstanceFacts) {
    tab.check_keys(sink, &["id", "host", "priority", "ports"]);
    let id = tab.name(sink, "id", "instance");
    let host = tab
        .required_string(sink, "host")
        .map(|(h, s)| (h.to_string(), s));
    let priority = tab.integer(sink, "priority").or_default(0).value;
    let mut ports = BTreeMap::new();
    let mut port_facts = Vec::new();
    let port_names = match tab.get("ports") {
        None => Some(Vec::new()),
        Some(v) => {
            match v.get_ref() {
                DeValue::Table(t) => {
                    let mut names = Vec::new();
                    for (k, pv) in entries(t) {
                        let pname: &str = k.get_ref();
                        check_name(sink, "port", pname, &k.span());
                        names.push(pname.to_string());
                        let number = match pv.get_ref() {
                            DeValue::Integer(int) => {
                                i64::from_str_radix(int.as_str(), int.radix()).ok()
                            }
                            other => {
                                sink.error(
                                &pv.span(),
                                format!("expected a port number for port \"{pname}\" in {}, found {}", tab.what, type_name(other)),
                            );
                                continue;
                            }
                        };
                        match number
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n != 0)
                        {
                            Some(n) => {
                                ports.insert(pname.to_string(), n);
                                port_facts.push((pname.to_string(), n, pv.span()));
                            }
                            None => sink.error(
                                &pv.span(),
                                format!(
                                    "port \"{pname}\" in {} must be between 1 and 65535",
                                    tab.what
                                ),
                            ),
                        }
                    }
                    Some(names)
                }
                other => {
                    sink.error(
                    &v.span(),
                    format!(
                        "expected a table of named ports for \"ports\" in {} (e.g. ports = {{ http = 8080 }}), found {}",
                        tab.what,
                        type_name(other)
                    ),
                );
                    None
                }
            }
        }
    };
    let instance = Instance {
        id: id.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
        host: host.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
        priority,
        ports,
    };
    (
        instance,
        InstanceFacts {
            id,
            host,
            ports: port_facts,
            port_names,
        },
    )
}

fn walk_link(tab: &Tab<'_, '_>, sink: &mut Sink) -> (Option<Link>, LinkFacts) {
    tab.check_keys(
        sink,
        &[
            "from",
            "to",
            "cardinality",
            "tls",
            "name",
            "port",
            "probe",
            "path",
            "interval",
            "timeout",
            "failures_before_down",
            "successes_before_up",
            "tls_ca",
            "tls_server_name",
            "tls_expiry_warning",
            "exclusive",
            "hook",
        ],
    );
    let from = tab
        .required_string(sink, "from")
        .map(|(s, span)| (s.to_string(), span));
    let to = tab
        .required_string(sink, "to")
        .map(|(s, span)| (s.to_string(), span));
    let names = || {
        Cardinality::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
    };
    let cardinality = tab
        .required_string(sink, "cardinality")
        .and_then(|(c, span)| {
            let found = Cardinality::from_name(c);
            if found.is_none() {
                sink.error(
                    &span,
                    format!(
                        "unknown cardinality \"{c}\" in {} (expected one of: {}){}",
                        tab.what,
                        names().join(", "),
                        did_you_mean(c, names())
                    ),
                );
            }
            found
        });
    let tls = tab.boolean(sink, "tls").or_default(false).value;
    let tls_check = walk_tls_check(tab, sink, tls);
    let name = match tab.string(sink, "name") {
        Got::Ok(n, span) => {
            check_link_name(sink, n, &span);
            Some((n.to_string(), span))
        }
        _ => None,
    };
    let port = tab
        .string(sink, "port")
        .ok()
        .map(|(p, span)| (p.to_string(), span));
    let probe = walk_link_probe(tab, sink);
    let exclusive = match tab.string(sink, "exclusive") {
        Got::Ok(g, span) => {
            check_name(sink, "exclusive group", g, &span);
            Some((g.to_string(), span))
        }
        _ => None,
    };
    let mut templates = Vec::new();
    let (hook, hook_facts) = match tab.table(sink, "hook", format!("hook of {}", tab.what)) {
        Some(h) => {
            let (hook, f) = walk_hook(&h, sink, &mut templates);
            match hook {
                Some(Hook::Signal { .. }) => {
                    sink.error(
                        &h.span,
                        format!(
                            "a signal hook cannot enable or disable a link ({}): use a command or http hook, which confirms the action by succeeding",
                            h.what
                        ),
                    );
                    (None, Some(f))
                }
                other => (other, Some(f)),
            }
        }
        None => (None, None),
    };
    for t in &mut templates {
        t.what = format!("link hook {}", t.what);
    }
    let resolved = match (&name, &from, &to) {
        (Some(n), _, _) => Some(n.0.clone()),
        (None, Some(f), Some(t)) => Some(format!("{}->{}", f.0, t.0)),
        _ => None,
    };
    let link = match (&from, &to, cardinality, &resolved, probe, tls_check) {
        (Some(f), Some(t), Some(cardinality), Some(n), Some(probe), Ok(tls_check)) => Some(Link {
            name: n.clone(),
            from: f.0.clone(),
            to: t.0.clone(),
            cardinality,
            tls,
            tls_check,
            port: port.as_ref().map(|p| p.0.clone()),
            probe,
            exclusive: exclusive.as_ref().map(|e| e.0.clone()),
            hook,
        }),
        _ => None,
    };
    (
        link,
        LinkFacts {
            table: tab.span.clone(),
            from,
            to,
            name,
            resolved,
            port,
            exclusive,
            hook: hook_facts,
            templates,
        },
    )
}

/// A TLS link's `tls_ca`, `tls_server_name` and `tls_expiry_warning`:
/// `tls_ca` is required with `tls = true`, and none of them applies
/// without. `Err(())`: something was wrong (reported).
fn walk_tls_check(tab: &Tab<'_, '_>, sink: &mut Sink, tls: bool) -> Result<Option<TlsCheck>, ()> {
    if !tls {
        for key in ["tls_ca", "tls_server_name", "tls_expiry_warning"] {
            tab.not_here(sink, key, "a link without tls = true");
        }
        return Ok(None);
    }
    if let Some(v) = tab.get("probe")
        && let DeValue::String(p) = v.get_ref()
        && &**p != "tcp"
    {
        sink.error(
            &v.span(),
            format!(
                "probe = \"{p}\" in {}: a TLS link is probed by a TLS handshake (leave probe out)",
                tab.what
            ),
        );
        return Err(());
    }
    let ca = match tab.string(sink, "tls_ca") {
        Got::Ok(ca, _) if !ca.is_empty() => ca.to_string(),
        Got::Ok(_, span) => {
            sink.error(&span, format!("empty \"tls_ca\" in {}", tab.what));
            return Err(());
        }
        Got::Absent => {
            sink.error(
                &tab.span,
                format!(
                    "{} has tls = true but no tls_ca: name the CA file (PEM) its certificates are checked against",
                    tab.what
                ),
            );
            return Err(());
        }
        Got::Bad => return Err(()),
    };
    let server_name = match tab.string(sink, "tls_server_name") {
        Got::Ok(n, _) => Some(n.to_string()),
        Got::Absent => None,
        Got::Bad => return Err(()),
    };
    // Days ("14d", at most 365) or a duration of the usual form.
    let days = tab
        .get("tls_expiry_warning")
        .and_then(|v| match v.get_ref() {
            DeValue::String(w) => w
                .strip_suffix('d')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|n| (n.parse::<u64>().unwrap_or(u64::MAX), v.span())),
            _ => None,
        });
    let expiry_warning = match days {
        Some((n, _)) if (1..=365).contains(&n) => Duration::from_secs(n * 24 * 3600),
        Some((n, span)) => {
            sink.error(
                &span,
                format!(
                    "\"tls_expiry_warning\" in {} must be 1d to 365d, found {n}d",
                    tab.what
                ),
            );
            return Err(());
        }
        None => match tab.duration(sink, "tls_expiry_warning") {
            Got::Bad => return Err(()),
            w => w.or_default(TlsCheck::DEFAULT_EXPIRY_WARNING).value,
        },
    };
    Ok(Some(TlsCheck {
        ca,
        server_name,
        expiry_warning,
    }))
}

/// A link name: the name rule, plus `-` `>` (the default `FROM->TO`).
fn check_link_name(sink: &mut Sink, name: &str, span: &Span) {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.>".contains(c));
    if !ok {
        sink.error(
            span,
            format!(
                "invalid link name \"{name}\": use 1 to 128 letters, digits, '-', '_', '.' or '>', not starting with '.'"
            ),
        );
    }
}

/// The probe settings of a link table; `None` if one is wrong (reported).
fn walk_link_probe(tab: &Tab<'_, '_>, sink: &mut Sink) -> Option<LinkProbe> {
    let d = LinkProbe::default();
    let kind = match tab.string(sink, "probe") {
        Got::Absent | Got::Ok("tcp", _) => {
            tab.not_here(
                sink,
                "path",
                "a tcp link probe (only http probes have a path)",
            );
            Some(LinkProbeKind::Tcp)
        }
        Got::Ok("http", _) => match tab.string(sink, "path") {
            Got::Absent => Some(LinkProbeKind::Http { path: "/".into() }),
            Got::Ok(p, _) if p.starts_with('/') => Some(LinkProbeKind::Http {
                path: p.to_string(),
            }),
            Got::Ok(p, span) => {
                sink.error(
                    &span,
                    format!("path \"{p}\" in {} must start with \"/\"", tab.what),
                );
                None
            }
            Got::Bad => None,
        },
        Got::Ok("reported", _) => {
            tab.not_here(
                sink,
                "path",
                "a reported link (the instance writes its state, nothing is fetched)",
            );
            Some(LinkProbeKind::Reported)
        }
        Got::Ok(other, span) => {
            sink.error(
                &span,
                format!(
                    "unknown link probe \"{other}\" in {} (expected one of: tcp, http, reported){}",
                    tab.what,
                    did_you_mean(other, ["tcp", "http", "reported"])
                ),
            );
            None
        }
        Got::Bad => None,
    };
    let interval = tab.duration(sink, "interval").or_default(d.interval);
    let timeout = tab.duration(sink, "timeout").or_default(d.timeout);
    let mut ok = interval.src != Src::Invalid && timeout.src != Src::Invalid;
    if let (Some(i), Some(t)) = (interval.valid(), timeout.valid())
        && t >= i
    {
        let at = match (&timeout.src, &interval.src) {
            (Src::Explicit(s), _) | (_, Src::Explicit(s)) => s.clone(),
            _ => tab.span.clone(),
        };
        sink.error(
            &at,
            format!(
                "link probe timeout ({}) must be less than its interval ({}) in {}",
                format_duration(t),
                format_duration(i),
                tab.what
            ),
        );
        ok = false;
    }
    let failures = tab.count(sink, "failures_before_down");
    let successes = tab.count(sink, "successes_before_up");
    ok &= !matches!(failures, Got::Bad) && !matches!(successes, Got::Bad);
    let failures = failures.or_default(d.failures_before_down).value;
    let successes = successes.or_default(d.successes_before_up).value;
    let kind = kind?;
    ok.then_some(LinkProbe {
        kind,
        interval: interval.value,
        timeout: timeout.value,
        failures_before_down: failures,
        successes_before_up: successes,
    })
}

fn walk_endpoint(tab: &Tab<'_, '_>, sink: &mut Sink) -> (Option<Endpoint>, EndpointFacts) {
    tab.check_keys(sink, &["name", "address", "port", "site"]);
    let name = tab.name(sink, "name", "endpoint");
    let of = name
        .as_ref()
        .map_or(String::new(), |n| format!(" of endpoint \"{}\"", n.0));
    let address = match tab.required_string(sink, "address") {
        Some((a, span)) => match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                sink.error(
                    &span,
                    format!("invalid address \"{a}\"{of}: expected an IP address such as \"10.0.0.5\" or \"::1\""),
                );
                None
            }
        },
        None => None,
    };
    let port = match tab.integer(sink, "port") {
        Got::Ok(n, span) => match u16::try_from(n).ok().filter(|n| *n != 0) {
            Some(n) => Some(n),
            None => {
                sink.error(
                    &span,
                    format!("\"port\"{of} must be between 1 and 65535, found {n}"),
                );
                None
            }
        },
        Got::Absent => {
            tab.missing(sink, "port");
            None
        }
        Got::Bad => None,
    };
    let site = tab
        .string(sink, "site")
        .ok()
        .map(|(s, span)| (s.to_string(), span));
    let endpoint = match (&name, address, port) {
        (Some(n), Some(address), Some(port)) => Some(Endpoint {
            name: n.0.clone(),
            address,
            port,
            site: site.as_ref().map(|s| s.0.clone()),
        }),
        _ => None,
    };
    (endpoint, EndpointFacts { name, site })
}

/// The event kinds, for messages.
fn event_kind_list() -> Vec<&'static str> {
    EventKind::ALL
        .iter()
        .filter(|k| **k != EventKind::Webhook)
        .map(|k| k.as_str())
        .collect()
}

/// A "did you mean" for an unknown event kind: a close spelling, else the
/// one kind that ends with it ("failed" → "primary-failed").
fn kind_hint(k: &str) -> String {
    let close = did_you_mean(k, event_kind_list());
    if !close.is_empty() || k.is_empty() {
        return close;
    }
    let suffix = format!("-{k}");
    match event_kind_list()
        .into_iter()
        .filter(|c| c.ends_with(&suffix))
        .collect::<Vec<_>>()[..]
    {
        [one] => format!(" (did you mean \"{one}\"?)"),
        _ => String::new(),
    }
}

/// Checks a webhook's URL: absolute, `http` or `https`, with a host.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL \"{url}\": {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "URL \"{url}\" must use http or https, not \"{}\"",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL \"{url}\" has no host"));
    }
    if parsed.fragment().is_some() {
        return Err(format!(
            "URL \"{url}\" has a fragment (\"#...\"), which is never sent"
        ));
    }
    Ok(())
}

fn walk_webhook(tab: &Tab<'_, '_>, sink: &mut Sink) -> (Option<Webhook>, Option<Named>) {
    let name = tab.name(sink, "name", "webhook");
    let tab = Tab {
        t: tab.t,
        span: tab.span.clone(),
        what: match &name {
            Some((n, _)) => format!("webhook \"{n}\""),
            None => tab.what.clone(),
        },
    };
    tab.check_keys(
        sink,
        &["name", "url", "events", "secret_file", "timeout", "retries"],
    );
    let url = tab.required_string(sink, "url").and_then(|(url, span)| {
        check_webhook_url(url)
            .map_err(|e| sink.error(&span, format!("{e} in {}", tab.what)))
            .ok()
            .map(|()| url.to_string())
    });
    let events = match tab.get("events") {
        None => Some(Webhook::DEFAULT_EVENTS.to_vec()),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) if items.is_empty() => {
                sink.error(
                    &v.span(),
                    format!(
                        "empty \"events\" in {}: name at least one event kind, or leave the key out for the default ({})",
                        tab.what,
                        Webhook::DEFAULT_EVENTS.map(|k| k.as_str()).join(", ")
                    ),
                );
                None
            }
            DeValue::Array(items) => {
                let mut kinds = Vec::new();
                let mut ok = true;
                for item in items {
                    let DeValue::String(k) = item.get_ref() else {
                        sink.error(
                            &item.span(),
                            format!(
                                "expected an event kind (a string) in \"events\" of {}, found {}",
                                tab.what,
                                type_name(item.get_ref())
                            ),
                        );
                        ok = false;
                        continue;
                    };
                    match EventKind::from_name(k) {
                        Some(EventKind::Webhook) => {
                            sink.error(
                                &item.span(),
                                format!(
                                    "event kind \"webhook\" in {} cannot be delivered by a webhook (a failed delivery would report itself); watch tandem_webhook_deliveries_total instead",
                                    tab.what
                                ),
                            );
                            ok = false;
                        }
                        Some(kind) if kinds.contains(&kind) => {
                            sink.error(
                                &item.span(),
                                format!("event kind \"{k}\" is listed twice in {}", tab.what),
                            );
                            ok = false;
                        }
                        Some(kind) => kinds.push(kind),
                        None => {
                            sink.error(
                                &item.span(),
                                format!(
                                    "unknown event kind \"{k}\" in {} (expected one of: {}){}",
                                    tab.what,
                                    event_kind_list().join(", "),
                                    kind_hint(k)
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(kinds)
            }
            _ => {
                tab.wrong_type(
                    sink,
                    "events",
                    "an array of event kinds (e.g. [\"promoted\", \"fence\"])",
                    v,
                );
                None
            }
        },
    };
    let secret_file = match tab.string(sink, "secret_file") {
        Got::Ok(path, span) if !path.starts_with('/') => {
            sink.error(
                &span,
                format!(
                    "secret_file \"{path}\" in {} must be an absolute path",
                    tab.what
                ),
            );
            None
        }
        Got::Ok(path, _) => Some(Some(path.to_string())),
        Got::Absent => Some(None),
        Got::Bad => None,
    };
    let timeout = match tab.duration(sink, "timeout") {
        Got::Ok(t, span) if t > Webhook::MAX_TIMEOUT => {
            sink.error(
                &span,
                format!(
                    "timeout ({}) in {} must be at most {}",
                    format_duration(t),
                    tab.what,
                    format_duration(Webhook::MAX_TIMEOUT)
                ),
            );
            None
        }
        Got::Ok(t, _) => Some(t),
        Got::Absent => Some(Webhook::DEFAULT_TIMEOUT),
        Got::Bad => None,
    };
    let retries = match tab.integer(sink, "retries") {
        Got::Ok(n, span) => match u32::try_from(n) {
            Ok(n) if n <= Webhook::MAX_RETRIES => Some(n),
            _ => {
                sink.error(
                    &span,
                    format!(
                        "\"retries\" in {} must be from 0 to {}, found {n}",
                        tab.what,
                        Webhook::MAX_RETRIES
                    ),
                );
                None
            }
        },
        Got::Absent => Some(Webhook::DEFAULT_RETRIES),
        Got::Bad => None,
    };
    let webhook = match (&name, url, events, secret_file, timeout, retries) {
        (
            Some((name, _)),
            Some(url),
            Some(events),
            Some(secret_file),
            Some(timeout),
            Some(retries),
        ) => Some(Webhook {
            name: name.clone(),
            url,
            events,
            secret_file,
            timeout,
            retries,
        }),
        _ => None,
    };
    (webhook, name)
}
