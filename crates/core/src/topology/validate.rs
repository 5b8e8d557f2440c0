//! Second pass: checks what ties tables together (references, duplicates,
//! ports, placeholders, timing across the cluster), on the facts the first
//! pass gathered. Everything found is reported; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet};

use super::ProgramCheck;
use super::diagnostic::{Sink, line_column};
use super::duration::format_duration;
use super::model::{Fencing, HaMode, SUPPORTED_HA_MODES};
use super::placeholder::{FENCE_PLACEHOLDERS, PLACEHOLDERS, Placeholder, Token, tokens};
use super::walk::{
    AppFacts, ClusterFacts, Facts, FenceFacts, InstanceFacts, Named, Span, Src, Template,
    did_you_mean,
};

/// Runs every cross-table check.
pub(crate) fn validate(text: &str, facts: &Facts, sink: &mut Sink, programs: ProgramCheck<'_>) {
    let sites = first_definitions(
        text,
        sink,
        "site",
        "",
        facts.sites.iter().filter_map(|s| s.name.as_ref()),
    );
    let fences = facts
        .sites
        .iter()
        .filter_map(|s| s.fence.as_ref())
        .chain(facts.hosts.iter().filter_map(|h| h.fence.as_ref()));
    for fence in fences {
        check_fence(text, sink, fence, programs);
    }
    let hosts = first_definitions(
        text,
        sink,
        "host",
        "",
        facts.hosts.iter().filter_map(|h| h.name.as_ref()),
    );
    for host in &facts.hosts {
        let unknown = host
            .site
            .as_ref()
            .filter(|(site, _)| !sites.contains_key(site));
        if let Some((site, span)) = unknown {
            let of = host
                .name
                .as_ref()
                .map_or(String::new(), |n| format!(" of host \"{}\"", n.0));
            sink.error(
                span,
                format!(
                    "unknown site \"{site}\"{of} {}",
                    known("sites", site, sites.keys())
                ),
            );
        }
    }
    for app in &facts.apps {
        validate_app(text, sink, app, &hosts, &facts.cluster);
    }
    check_duplicate_ports(sink, facts, &hosts);
    check_cluster_timing(sink, &facts.cluster);
    check_heartbeats(sink, &facts.cluster);
    check_links(text, sink, facts, &sites);
    first_definitions(text, sink, "webhook", "", facts.webhooks.iter());
}

/// Rejects HA modes that parse but that tandem cannot run yet: the one place
/// to lift them, mode by mode, through [`SUPPORTED_HA_MODES`].
fn check_ha_mode_supported(sink: &mut Sink, app: &str, mode: HaMode, span: &Span) {
    if !mode.is_supported() {
        let supported: Vec<&str> = SUPPORTED_HA_MODES.iter().map(|m| m.as_str()).collect();
        sink.error(
            span,
            format!(
                "app \"{app}\": ha mode \"{mode}\" is not supported yet (supported: {})",
                supported.join(", ")
            ),
        );
    }
}

/// Reports every name defined twice; returns the first definition of each.
fn first_definitions<'a>(
    text: &str,
    sink: &mut Sink,
    kind: &str,
    context: &str,
    names: impl Iterator<Item = &'a Named>,
) -> BTreeMap<String, Span> {
    let mut seen: BTreeMap<String, Span> = BTreeMap::new();
    for (name, span) in names {
        match seen.get(name) {
            Some(first) => {
                let (line, column) = line_column(text, first.start);
                sink.error(span, format!("duplicate {kind} \"{name}\"{context} (first defined at line {line}, column {column})"));
            }
            None => {
                seen.insert(name.clone(), span.clone());
            }
        }
    }
    seen
}

/// `(known hosts: a, b)` plus a "did you mean" hint, for unknown references.
fn known<'a>(plural: &str, word: &str, names: impl Iterator<Item = &'a String>) -> String {
    const SHOWN: usize = 10;
    let all: Vec<&str> = names.map(String::as_str).collect();
    if all.is_empty() {
        return format!("(no {plural} are defined)");
    }
    let mut list = all
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > SHOWN {
        list.push_str(", ...");
    }
    format!(
        "(known {plural}: {list}){}",
        did_you_mean(word, all.iter().copied())
    )
}

fn validate_app(
    text: &str,
    sink: &mut Sink,
    app: &AppFacts,
    hosts: &BTreeMap<String, Span>,
    cluster: &ClusterFacts,
) {
    let name = &app.name;
    if let Some((mode, span)) = &app.ha {
        check_ha_mode_supported(sink, name, *mode, span);
        // Modes whose running instances are promoted and demoted in place
        // can only be told through the hook.
        if matches!(mode, HaMode::WarmStandby | HaMode::HotStandby) && app.hook.is_none() {
            sink.error(
                span,
                format!(
                    "app \"{name}\": a {mode} app needs a role hook ([apps.{name}.hook]) so that its running instances learn when they are promoted or demoted"
                ),
            );
        }
    }

    if let (Some((Fencing::Token, span)), Some((mode, _))) = (&app.fencing, &app.ha)
        && !Fencing::TOKEN_MODES.contains(mode)
    {
        let modes: Vec<&str> = Fencing::TOKEN_MODES.iter().map(|m| m.as_str()).collect();
        let (last, rest) = modes.split_last().expect("TOKEN_MODES is not empty");
        let why = match mode {
            HaMode::Singleton => {
                "a singleton promises never to run two instances at once, and token fencing \
                 replaces a primary that may still be running"
            }
            _ => "it has no primary and no epoch for downstream services to check",
        };
        sink.error(
            span,
            format!(
                "app \"{name}\": fencing = \"token\" needs ha mode {} or {last}, not \"{mode}\": {why}",
                rest.join(", ")
            ),
        );
    }

    if let (Some((_, span)), Some((mode, _))) = (&app.drain, &app.ha)
        && !matches!(
            crate::mode::style(*mode),
            crate::mode::Style::Hooked | crate::mode::Style::OnGrant
        )
    {
        sink.error(
            span,
            format!(
                "app \"{name}\": \"drain\" applies to the modes with a primary (hot-standby, warm-standby, cold-standby, singleton), not \"{mode}\": it has no planned switchover"
            ),
        );
    }

    if let (Some((key, span)), Some((mode, _))) = (&app.link_failover, &app.ha)
        && !matches!(mode, HaMode::WarmStandby | HaMode::HotStandby)
    {
        sink.error(
            span,
            format!(
                "app \"{name}\": \"{key}\" applies to warm-standby and hot-standby, not \"{mode}\": only their backups run, ready to take over a primary that lost a link"
            ),
        );
    }

    if let (Some((_, span)), Some((mode, _))) = (&app.admin_dir, &app.ha)
        && !matches!(mode, HaMode::WarmStandby | HaMode::HotStandby)
    {
        sink.error(
            span,
            format!(
                "app \"{name}\": \"admin_dir\" applies to warm-standby and hot-standby, not \"{mode}\": admin data is mirrored from the primary to backups that run"
            ),
        );
    }

    let n_plus_1 = matches!(app.ha, Some((HaMode::NPlus1, _)));
    for (key, given) in [
        ("replicas", &app.replicas),
        ("min_healthy", &app.min_healthy),
    ] {
        if let (Some((_, span)), false) = (given, n_plus_1) {
            sink.error(
                span,
                format!("app \"{name}\": \"{key}\" applies to ha mode \"n-plus-1\" only"),
            );
        }
    }
    let Some(instances) = &app.instances else {
        return check_templates(text, sink, &app.name, &app.templates, &[]);
    };
    if n_plus_1 {
        let replicas = app
            .replicas
            .as_ref()
            .map_or(instances.len() as u32, |r| r.0);
        if let Some((r, span)) = &app.replicas
            && *r as usize > instances.len()
        {
            sink.error(
                span,
                format!(
                    "app \"{name}\": replicas = {r} but only {} instance(s) are declared: declare at least as many instances as replicas",
                    instances.len()
                ),
            );
        }
        if let Some((m, span)) = &app.min_healthy
            && *m > replicas
        {
            sink.error(
                span,
                format!("app \"{name}\": min_healthy = {m} is more than replicas = {replicas}"),
            );
        }
    }
    match (instances.len(), &app.ha) {
        (0, _) => sink.error(
            &app.table,
            format!("app \"{name}\" has no instances: add at least one [[apps.{name}.instances]]"),
        ),
        (n, Some((HaMode::WarmStandby, span))) if n < 2 => sink.error(
            span,
            format!(
                "app \"{name}\": ha mode \"warm-standby\" needs at least two instances, found {n}"
            ),
        ),
        _ => {}
    }

    first_definitions(
        text,
        sink,
        "instance id",
        &format!(" in app \"{name}\""),
        instances.iter().filter_map(|i| i.id.as_ref()),
    );
    for instance in instances {
        let unknown = instance
            .host
            .as_ref()
            .filter(|(host, _)| !hosts.contains_key(host));
        if let Some((host, span)) = unknown {
            let of = instance
                .id
                .as_ref()
                .map_or(String::new(), |i| format!(" for instance \"{}\"", i.0));
            sink.error(
                span,
                format!(
                    "unknown host \"{host}\"{of} of app \"{name}\" {}",
                    known("hosts", host, hosts.keys())
                ),
            );
        }
    }

    for (port, span) in &app.check_ports {
        check_port_everywhere(sink, name, "check", port, span, instances);
    }
    if let Some(hook) = &app.hook {
        if let Some((port, span)) = &hook.port {
            check_port_everywhere(sink, name, "hook", port, span, instances);
        }
        match (hook.timeout.valid(), cluster.fence_margin.valid()) {
            (Some(timeout), Some(fence)) if timeout >= fence => {
                let at = match &hook.timeout.src {
                    Src::Explicit(s) => s.clone(),
                    _ => hook.table.clone(),
                };
                let default = if hook.timeout.src == Src::Default {
                    "default "
                } else {
                    ""
                };
                sink.error(
                    &at,
                    format!(
                        "hook timeout ({default}{}) of app \"{name}\" must be less than the cluster's fence_margin ({}): \
                         self-fencing, this hook included, must finish before the lease can expire",
                        format_duration(timeout),
                        format_duration(fence)
                    ),
                );
            }
            _ => {}
        }
    }
    check_templates(text, sink, &app.name, &app.templates, instances);
}

/// Checks a fence device's placeholders, and that its program can run here
/// (unless the program's name holds a placeholder).
fn check_fence(text: &str, sink: &mut Sink, fence: &FenceFacts, programs: ProgramCheck<'_>) {
    let owner = &fence.owner;
    for template in &fence.command {
        let at =
            |start: usize, end: usize| inner_span(text, &template.span, &template.text, start, end);
        for token in tokens(&template.text) {
            match token {
                Token::Text(_) => {}
                Token::Unclosed { start, .. } => sink.error(
                    &at(start, start + 1),
                    format!(
                        "unclosed \"{{\" in the fence command of {owner}: close the placeholder, or write \"{{{{\" for a literal brace"
                    ),
                ),
                Token::Placeholder { name, start, end } => {
                    if !matches!(name, "host" | "address" | "site") {
                        sink.error(
                            &at(start, end),
                            format!(
                                "unknown placeholder \"{{{name}}}\" in the fence command of {owner} (expected one of: {FENCE_PLACEHOLDERS}; write \"{{{{\" for a literal brace)"
                            ),
                        );
                    }
                }
            }
        }
    }
    let Some(program) = fence.command.first() else {
        return;
    };
    let mut literal = String::new();
    for token in tokens(&program.text) {
        match token {
            Token::Text(t) => literal.push_str(t),
            _ => return,
        }
    }
    if let Err(why) = programs(&literal) {
        sink.error(
            &program.span,
            format!("fence program \"{literal}\" of {owner}: {why}"),
        );
    }
}

/// Reports each instance that lacks the port a check or hook names.
fn check_port_everywhere(
    sink: &mut Sink,
    app: &str,
    what: &str,
    port: &str,
    span: &Span,
    instances: &[InstanceFacts],
) {
    for instance in instances {
        let (Some((id, _)), Some(names)) = (&instance.id, &instance.port_names) else {
            continue;
        };
        if !names.iter().any(|n| n == port) {
            let has = if names.is_empty() {
                "it has no ports".to_string()
            } else {
                format!("its ports: {}", names.join(", "))
            };
            sink.error(span, format!("app \"{app}\": {what} port \"{port}\" is not a port of instance \"{id}\" ({has})"));
        }
    }
}

/// Checks the placeholders of `templates`, strings of app `name`.
fn check_templates(
    text: &str,
    sink: &mut Sink,
    name: &str,
    templates: &[Template],
    instances: &[InstanceFacts],
) {
    for template in templates {
        let at =
            |start: usize, end: usize| inner_span(text, &template.span, &template.text, start, end);
        for token in tokens(&template.text) {
            match token {
                Token::Text(_) => {}
                Token::Unclosed { start, .. } => sink.error(
                    &at(start, start + 1),
                    format!(
                        "unclosed \"{{\" in {} of app \"{name}\": close the placeholder, or write \"{{{{\" for a literal brace",
                        template.what
                    ),
                ),
                Token::Placeholder { name: inner, start, end } => match Placeholder::of(inner) {
                    Placeholder::Unknown => sink.error(
                        &at(start, end),
                        format!(
                            "unknown placeholder \"{{{inner}}}\" in {} of app \"{name}\" (expected one of: {PLACEHOLDERS}; write \"{{{{\" for a literal brace)",
                            template.what
                        ),
                    ),
                    Placeholder::Port(port) => {
                        for instance in instances {
                            let (Some((id, _)), Some(names)) = (&instance.id, &instance.port_names) else { continue };
                            if !names.iter().any(|n| n == port) {
                                sink.error(
                                    &at(start, end),
                                    format!(
                                        "placeholder \"{{{inner}}}\" in {} of app \"{name}\": instance \"{id}\" has no port \"{port}\"",
                                        template.what
                                    ),
                                );
                            }
                        }
                    }
                    _ => {}
                },
            }
        }
    }
}

/// The span of bytes `start..end` of a string value whose TOML form spans
/// `span`, when the source writes it without escapes; else the whole value.
fn inner_span(text: &str, span: &Span, value: &str, start: usize, end: usize) -> Span {
    let Some(raw) = text.get(span.clone()) else {
        return span.clone();
    };
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        let q = quote.len();
        if raw.len() == value.len() + 2 * q
            && raw.starts_with(quote)
            && raw.ends_with(quote)
            && raw.get(q..raw.len() - q) == Some(value)
        {
            return span.start + q + start..span.start + q + end;
        }
    }
    span.clone()
}

/// Reports a port number used twice on one host, naming both owners.
fn check_duplicate_ports(sink: &mut Sink, facts: &Facts, hosts: &BTreeMap<String, Span>) {
    let mut owners: BTreeMap<(&str, u16), String> = BTreeMap::new();
    let mut uses = Vec::new();
    for app in &facts.apps {
        for instance in app.instances.iter().flatten() {
            let (Some((id, _)), Some((host, _))) = (&instance.id, &instance.host) else {
                continue;
            };
            if !hosts.contains_key(host) {
                continue;
            }
            for (port, number, span) in &instance.ports {
                let owner = format!(
                    "instance \"{id}\" of app \"{}\" (port \"{port}\")",
                    app.name
                );
                uses.push((span.clone(), host.as_str(), *number, owner));
            }
        }
    }
    uses.sort_by_key(|u| u.0.start);
    for (span, host, number, owner) in uses {
        match owners.get(&(host, number)) {
            Some(first) => sink.error(
                &span,
                format!(
                    "duplicate port {number} on host \"{host}\": {first} and {owner} both use it"
                ),
            ),
            None => {
                owners.insert((host, number), owner);
            }
        }
    }
}

/// The first explicit span among `settings`, else the `[cluster]` table.
fn cluster_place(cluster: &ClusterFacts, settings: &[&Src]) -> Span {
    settings
        .iter()
        .find_map(|s| match s {
            Src::Explicit(span) => Some(span.clone()),
            _ => None,
        })
        .unwrap_or_else(|| cluster.table.clone())
}

/// A silent host must be suspected before its lease can expire:
/// `heartbeat_interval × missed_heartbeats < lease_ttl − renew_interval`
/// (its last renewal was at most `renew_interval` before it fell silent).
fn check_heartbeats(sink: &mut Sink, c: &ClusterFacts) {
    let (Some(interval), Some(missed), Some(ttl), Some(renew)) = (
        c.heartbeat_interval.valid(),
        c.missed_heartbeats.valid(),
        c.lease_ttl.valid(),
        c.renew_interval.valid(),
    ) else {
        return;
    };
    // renew_interval >= lease_ttl is reported by check_cluster_timing.
    let Some(bound) = ttl.checked_sub(renew).filter(|b| !b.is_zero()) else {
        return;
    };
    let suspect_after = interval.saturating_mul(missed);
    if suspect_after >= bound {
        let f = format_duration;
        let at = cluster_place(
            c,
            &[
                &c.heartbeat_interval.src,
                &c.missed_heartbeats.src,
                &c.lease_ttl.src,
                &c.renew_interval.src,
            ],
        );
        sink.error(
            &at,
            format!(
                "heartbeat_interval ({}) × missed_heartbeats ({missed}) = {} must be less than \
                 lease_ttl ({}) − renew_interval ({}) = {} in [cluster]: a silent host must be \
                 suspected before its lease can expire",
                f(interval),
                f(suspect_after),
                f(ttl),
                f(renew),
                f(bound)
            ),
        );
    }
}

/// `renew_interval + fence_margin < lease_ttl`, and each alone too.
fn check_cluster_timing(sink: &mut Sink, c: &ClusterFacts) {
    let (Some(ttl), Some(renew), Some(fence)) = (
        c.lease_ttl.valid(),
        c.renew_interval.valid(),
        c.fence_margin.valid(),
    ) else {
        return;
    };
    let f = format_duration;
    let mut ok = true;
    if renew >= ttl {
        ok = false;
        sink.error(
            &cluster_place(c, &[&c.renew_interval.src, &c.lease_ttl.src]),
            format!(
                "renew_interval ({}) must be less than lease_ttl ({}) in [cluster]",
                f(renew),
                f(ttl)
            ),
        );
    }
    if fence >= ttl {
        ok = false;
        sink.error(
            &cluster_place(c, &[&c.fence_margin.src, &c.lease_ttl.src]),
            format!(
                "fence_margin ({}) must be less than lease_ttl ({}) in [cluster]: a primary that cannot renew its lease \
                 must demote itself before the lease can expire",
                f(fence),
                f(ttl)
            ),
        );
    }
    if ok && renew + fence >= ttl {
        sink.error(
            &cluster_place(
                c,
                &[&c.fence_margin.src, &c.renew_interval.src, &c.lease_ttl.src],
            ),
            format!(
                "renew_interval ({}) + fence_margin ({}) must be less than lease_ttl ({}) in [cluster]: \
                 the agent must get at least one renew attempt before it fences itself",
                f(renew),
                f(fence),
                f(ttl)
            ),
        );
    }
}

fn check_links(text: &str, sink: &mut Sink, facts: &Facts, sites: &BTreeMap<String, Span>) {
    let apps: BTreeSet<String> = facts.apps.iter().map(|a| a.name.clone()).collect();
    let endpoints = first_definitions(
        text,
        sink,
        "endpoint",
        "",
        facts.endpoints.iter().filter_map(|e| e.name.as_ref()),
    );
    for e in &facts.endpoints {
        if let Some((name, span)) = e.name.as_ref().filter(|(n, _)| apps.contains(n)) {
            sink.error(
                span,
                format!(
                    "endpoint \"{name}\" has the name of an app: links could not tell them apart"
                ),
            );
        }
        if let Some((site, span)) = e.site.as_ref().filter(|(s, _)| !sites.contains_key(s)) {
            sink.error(
                span,
                format!(
                    "unknown site \"{site}\" of endpoint {} {}",
                    e.name.as_ref().map_or("", |n| n.0.as_str()),
                    known("sites", site, sites.keys())
                ),
            );
        }
    }
    let targets: BTreeSet<String> = apps.iter().chain(endpoints.keys()).cloned().collect();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for link in &facts.links {
        if let Some((app, span)) = link.from.as_ref().filter(|(app, _)| !apps.contains(app)) {
            let what = if endpoints.contains_key(app) {
                format!(
                    "link from endpoint \"{app}\": a link goes from an app (tandem probes it from that app's hosts)"
                )
            } else {
                format!(
                    "link from unknown app \"{app}\" {}",
                    known("apps", app, apps.iter())
                )
            };
            sink.error(span, what);
        }
        if let Some((to, span)) = link.to.as_ref().filter(|(to, _)| !targets.contains(to)) {
            sink.error(
                span,
                format!(
                    "link to unknown app or endpoint \"{to}\" {}",
                    known("apps and endpoints", to, targets.iter())
                ),
            );
        }
        if let (Some((from, from_span)), Some((to, _))) = (&link.from, &link.to)
            && from == to
        {
            sink.error(from_span, format!("link from app \"{from}\" to itself"));
        }
        check_link_port(sink, facts, link, &endpoints);
        check_link_hook(text, sink, facts, link);
        let Some(name) = &link.resolved else {
            continue;
        };
        match seen.get(name.as_str()) {
            Some(first) => {
                let (line, column) = line_column(text, *first);
                let what = match (&link.name, &link.from, &link.to) {
                    (None, Some((from, _)), Some((to, _))) => format!(
                        "duplicate link from \"{from}\" to \"{to}\" (first declared at line {line}, column {column}); give each a distinct \"name\""
                    ),
                    _ => format!(
                        "duplicate link name \"{name}\" (first declared at line {line}, column {column})"
                    ),
                };
                let at = link.name.as_ref().map_or(&link.table, |n| &n.1);
                sink.error(at, what);
            }
            None => {
                seen.insert(name, link.table.start);
            }
        }
    }
    check_exclusive_groups(text, sink, facts);
}

/// A link's hook: for a link of an exclusive group, which must have one,
/// or a link to a pinned app (told when that app is read-only); its port
/// and placeholders are the `from` app's instances'.
fn check_link_hook(text: &str, sink: &mut Sink, facts: &Facts, link: &super::walk::LinkFacts) {
    let name = link.resolved.as_deref().unwrap_or("?");
    let to_pinned = link.to.as_ref().is_some_and(|(to, _)| {
        facts
            .apps
            .iter()
            .any(|a| &a.name == to && a.pinned.is_some())
    });
    match (&link.exclusive, &link.hook) {
        (None, Some(_)) if to_pinned => {}
        (Some((group, span)), None) => sink.error(
            span,
            format!(
                "link \"{name}\" is in exclusive group \"{group}\" but has no hook: tandem enables and disables a group's links through it (a [links.hook] table, kind = \"command\" or \"http\")"
            ),
        ),
        (None, Some(hook)) => sink.error(
            &hook.table,
            format!(
                "link \"{name}\" has a hook but no exclusive group: a link hook enables and disables the links of an exclusive group (add exclusive = \"GROUP\"), or tells the instances of a link to a pinned app when that app is read-only"
            ),
        ),
        _ => {}
    }
    let Some((from, _)) = &link.from else {
        return;
    };
    let Some(app) = facts.apps.iter().find(|a| &a.name == from) else {
        return;
    };
    let instances = app.instances.as_deref().unwrap_or(&[]);
    if let Some((port, span)) = link.hook.as_ref().and_then(|h| h.port.as_ref()) {
        check_port_everywhere(sink, from, "link hook", port, span, instances);
    }
    check_templates(text, sink, from, &link.templates, instances);
}

/// Exclusive groups: each within one app, of two links or more.
fn check_exclusive_groups(text: &str, sink: &mut Sink, facts: &Facts) {
    // group -> (its app, where first declared, how many links)
    let mut groups: BTreeMap<&str, (Option<&str>, usize, Vec<&Span>)> = BTreeMap::new();
    for link in &facts.links {
        let Some((group, span)) = &link.exclusive else {
            continue;
        };
        let from = link.from.as_ref().map(|f| f.0.as_str());
        match groups.get_mut(group.as_str()) {
            Some((first_from, first, spans)) => {
                spans.push(span);
                if let (Some(a), Some(b)) = (*first_from, from)
                    && a != b
                {
                    let (line, column) = line_column(text, *first);
                    sink.error(
                        span,
                        format!(
                            "exclusive group \"{group}\" spans apps \"{a}\" and \"{b}\" (first declared at line {line}, column {column}): a group's links all go from one app, whose instances each keep one of them active"
                        ),
                    );
                }
            }
            None => {
                groups.insert(group, (from, span.start, vec![span]));
            }
        }
    }
    for (group, (_, _, spans)) in groups {
        if let [only] = spans.as_slice() {
            sink.error(
                only,
                format!(
                    "exclusive group \"{group}\" has a single link: a group needs two or more (its links are never active together)"
                ),
            );
        }
    }
}

/// A link's `port`: only for links to apps, and every instance of the
/// target app must have a port of that name.
fn check_link_port(
    sink: &mut Sink,
    facts: &Facts,
    link: &super::walk::LinkFacts,
    endpoints: &BTreeMap<String, Span>,
) {
    let (Some((port, span)), Some((to, _))) = (&link.port, &link.to) else {
        return;
    };
    if endpoints.contains_key(to) {
        sink.error(
            span,
            format!(
                "\"port\" does not apply to a link to endpoint \"{to}\" (the endpoint has one port)"
            ),
        );
        return;
    }
    let Some(app) = facts.apps.iter().find(|a| &a.name == to) else {
        return;
    };
    for inst in app.instances.iter().flatten() {
        let Some(names) = &inst.port_names else {
            continue;
        };
        if !names.contains(port) {
            let id = inst.id.as_ref().map_or("?", |i| i.0.as_str());
            sink.error(
                span,
                format!(
                    "link port \"{port}\": instance {to}/{id} has no port of that name {}",
                    known("ports", port, names.iter())
                ),
            );
            return;
        }
    }
}
