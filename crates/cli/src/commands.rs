//! The client commands: status, events, switchover, and validate.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tandem_api::types::{Event, LinksDoc, StatusDoc};
use tandem_client::SwitchoverOutcome;

use crate::ApiArg;
use crate::table::render;

/// `tandem status`.
pub async fn status(api: &ApiArg, as_json: bool) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let doc = client.status().await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", status_table(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem links`.
pub async fn links(api: &ApiArg, app: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let mut doc = client.links().await?;
    if let Some(app) = app {
        let known = doc.links.iter().any(|l| l.from == app || l.to == app);
        if !known {
            anyhow::bail!("no link goes from or to \"{app}\"");
        }
        doc.links.retain(|l| l.from == app || l.to == app);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", links_table(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem sites`.
pub async fn sites(api: &ApiArg, as_json: bool) -> anyhow::Result<ExitCode> {
    let doc = api.client()?.status().await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc.sites)?);
    } else if doc.sites.is_empty() {
        println!("the topology declares no sites");
    } else {
        println!("{}", sites_table(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem site ACTION SITE`: asks the controller and prints what it did.
pub async fn site(
    api: &ApiArg,
    action: &str,
    site: &str,
    request: &tandem_client::types::SiteRequest,
    timeout: Duration,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let outcome = client.site_action(site, action, request, timeout).await?;
    Ok(report(
        &format!("site {site}"),
        &format!("site {action}"),
        outcome,
        timeout,
        as_json,
    ))
}

/// One row per site: role, state and which hosts are up.
pub fn sites_table(doc: &StatusDoc) -> String {
    let rows: Vec<Vec<String>> = doc
        .sites
        .iter()
        .map(|s| {
            let role = if s.declared_role.is_empty() || s.declared_role == s.role {
                s.role.clone()
            } else {
                format!("{} (declared {})", s.role, s.declared_role)
            };
            let state = match &s.failed {
                Some(why) => format!("{} ({why})", s.state.to_uppercase()),
                None => s.state.to_uppercase(),
            };
            vec![
                s.name.clone(),
                role,
                state,
                format!(
                    "{}/{} ({})",
                    s.hosts_up.len(),
                    s.hosts.len(),
                    s.hosts.join(", ")
                ),
            ]
        })
        .collect();
    render(&["SITE", "ROLE", "STATE", "HOSTS UP"], &rows)
}

/// The human form of the links document: one row per link and instance.
pub fn links_table(doc: &LinksDoc) -> String {
    if doc.links.is_empty() {
        return "the topology declares no links".to_string();
    }
    let mut rows = Vec::new();
    for l in &doc.links {
        let mut card = if l.required {
            l.cardinality.clone()
        } else {
            format!("{} (never degrades)", l.cardinality)
        };
        if let Some(group) = &l.exclusive {
            card.push_str(&format!(", exclusive {group}"));
        }
        for i in &l.instances {
            let targets = i
                .targets
                .iter()
                .map(|t| {
                    let cert = if t.cert_expiring {
                        " (certificate expires soon)"
                    } else {
                        ""
                    };
                    format!("{}:{}{cert}", t.target, t.state)
                })
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![
                l.name.clone(),
                format!("{}/{}", l.from, i.instance),
                l.to.clone(),
                card.clone(),
                match i.active {
                    Some(true) => format!("{} (active)", i.state.to_uppercase()),
                    Some(false) => format!("{} (inactive)", i.state.to_uppercase()),
                    None => i.state.to_uppercase(),
                },
                if targets.is_empty() {
                    "-".into()
                } else {
                    targets
                },
                i.detail.clone(),
            ]);
        }
    }
    render(
        &[
            "LINK",
            "FROM",
            "TO",
            "CARDINALITY",
            "STATE",
            "TARGETS",
            "WHY",
        ],
        &rows,
    )
}

/// The human form of the status document.
pub fn status_table(doc: &StatusDoc) -> String {
    let mut rows = Vec::new();
    for app in &doc.apps {
        for i in &app.instances {
            rows.push(vec![
                app.name.clone(),
                app.ha.to_string(),
                i.id.clone(),
                i.host.clone(),
                if i.promoting {
                    format!("{} (promoting)", i.role)
                } else {
                    i.role.to_string()
                },
                i.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
                i.health.to_string(),
                i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                i.restarts
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                i.last_exit.clone().unwrap_or_default(),
            ]);
        }
    }
    let mut out = format!("topology {} (store: {})\n", doc.topology, doc.store);
    if doc.stale {
        out.push_str(&format!(
            "STALE: {}\n",
            doc.stale_reason
                .as_deref()
                .unwrap_or("the store cannot be read")
        ));
    }
    out.push_str(&render(
        &[
            "APP",
            "HA",
            "INSTANCE",
            "HOST",
            "ROLE",
            "EPOCH",
            "HEALTH",
            "PID",
            "RESTARTS",
            "LAST EXIT",
        ],
        &rows,
    ));
    if !doc.hosts.is_empty() {
        let rows: Vec<Vec<String>> = doc
            .hosts
            .iter()
            .map(|h| {
                let lease = match h.lease_ttl_ms {
                    Some(ms) if ms > h.asked_lease_ttl_ms => format!(
                        "{ms} ms (lease_ttl asks {} ms: the store grants no shorter; see the README's Timings)",
                        h.asked_lease_ttl_ms
                    ),
                    Some(ms) => format!("{ms} ms"),
                    None => "-".into(),
                };
                vec![
                    h.name.clone(),
                    h.site.clone(),
                    h.address.clone(),
                    if h.up { "up" } else { "down" }.into(),
                    lease,
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&render(
            &["HOST", "SITE", "ADDRESS", "AGENT", "LEASE"],
            &rows,
        ));
    }
    if !doc.sites.is_empty() {
        out.push('\n');
        out.push_str(&sites_table(doc));
    }
    for app in &doc.apps {
        if let Some(ro) = &app.read_only {
            out.push_str(&format!(
                "\nREAD-ONLY: {} ({}): its primary runs only in an active site; writes wait until the site returns or `tandem site promote` moves it\n",
                app.name, ro.reason
            ));
        }
    }
    let admin = admin_rows(doc);
    if !admin.is_empty() {
        out.push('\n');
        out.push_str(&render(
            &[
                "ADMIN DATA",
                "FROM",
                "TO",
                "STATE",
                "ACKED",
                "LAG (LAST / P50 / P99)",
            ],
            &admin,
        ));
    }
    out
}

/// One row per backup of each primary that mirrors admin data.
fn admin_rows(doc: &StatusDoc) -> Vec<Vec<String>> {
    let ms =
        |us: Option<u64>| us.map_or("-".to_string(), |u| format!("{:.1} ms", u as f64 / 1000.0));
    let mut rows = Vec::new();
    for app in &doc.apps {
        for i in &app.instances {
            let Some(admin) = &i.admin else { continue };
            if let Some(err) = &admin.error {
                rows.push(vec![
                    app.name.clone(),
                    i.id.clone(),
                    "-".into(),
                    format!("cannot mirror: {err}"),
                    "-".into(),
                    "-".into(),
                ]);
            }
            let Some(src) = &admin.source else { continue };
            for (to, b) in &src.backups {
                let state = match (&b.last_error, b.in_sync) {
                    (Some(e), _) => format!("failing: {e}"),
                    (None, true) => "in sync".to_string(),
                    (None, false) => format!("catching up ({} pending)", b.pending),
                };
                rows.push(vec![
                    app.name.clone(),
                    i.id.clone(),
                    to.clone(),
                    state,
                    format!("{}/{} (epoch {})", b.acked_seq, src.seq, src.epoch),
                    format!(
                        "{} / {} / {}",
                        ms(b.lag_us),
                        ms(b.lag_p50_us),
                        ms(b.lag_p99_us)
                    ),
                ]);
            }
        }
    }
    rows
}

/// A wall-clock time in milliseconds as `HH:MM:SS.mmm` (UTC).
pub fn clock(t_ms: u64) -> String {
    let secs = t_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        t_ms % 1000
    )
}

/// One event as a line.
pub fn event_line(e: &Event) -> String {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{}  #{:<5} {:<16} {}",
        clock(e.t_ms),
        e.seq,
        kind,
        e.message
    )
}

/// `tandem events`.
pub async fn events(
    api: &ApiArg,
    follow: bool,
    since: Option<u64>,
    limit: u64,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let print = |e: &Event| {
        if as_json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", event_line(e));
        }
    };
    if !follow {
        for e in client.events(since, Some(limit)).await? {
            print(&e);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let since = match since {
        Some(s) => Some(s),
        None => {
            let backlog = client.events(None, Some(limit)).await?;
            for e in &backlog {
                print(e);
            }
            Some(backlog.last().map_or(0, |e| e.seq))
        }
    };
    let stream = client.follow_events(since);
    tokio::pin!(stream);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            item = stream.next() => match item {
                Some(Ok(e)) => print(&e),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// `tandem switchover`.
pub async fn switchover(
    api: &ApiArg,
    app: &str,
    to: Option<&str>,
    timeout: Duration,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let outcome = client.switchover(app, to, timeout).await?;
    Ok(report(app, "switchover", outcome, timeout, as_json))
}

/// `tandem maintenance`.
pub async fn maintenance(
    api: &ApiArg,
    app: &str,
    on: bool,
    timeout: Duration,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let outcome = client.maintenance(app, on, timeout).await?;
    Ok(report(app, "maintenance", outcome, timeout, as_json))
}

/// `tandem fence HOST`: asks for confirmation on a terminal (unless
/// `--yes`), then asks the controller to run the host's fence device.
pub async fn fence(
    api: &ApiArg,
    host: &str,
    yes: bool,
    timeout: Duration,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "tandem fence runs host {host}'s fence device (it powers the host off or cuts it off): confirm with --yes"
            );
        }
        eprint!(
            "Fence host {host}? Its fence device runs (it powers the host off or cuts it off), its lease is revoked and its primaries move elsewhere. Type the host's name to confirm: "
        );
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != host {
            eprintln!("not confirmed: nothing done");
            return Ok(ExitCode::FAILURE);
        }
    }
    let client = api.client()?;
    let outcome = client.fence(host, timeout).await?;
    Ok(report(
        &format!("host {host}"),
        "fence",
        outcome,
        timeout,
        as_json,
    ))
}

/// Prints the outcome of an operator request; 0 done, 1 refused, 2 still
/// under way.
fn report(
    app: &str,
    what: &str,
    outcome: SwitchoverOutcome,
    timeout: Duration,
    as_json: bool,
) -> ExitCode {
    match outcome {
        SwitchoverOutcome::Done { intent, message } => {
            if as_json {
                println!(
                    "{}",
                    json!({"app": app, "intent": intent, "outcome": "done", "message": message})
                );
            } else {
                println!("{app}: {what} done: {message}");
            }
            ExitCode::SUCCESS
        }
        SwitchoverOutcome::Refused { intent, reason } => {
            if as_json {
                println!(
                    "{}",
                    json!({"app": app, "intent": intent, "outcome": "refused", "error": reason})
                );
            } else {
                eprintln!("error: {what} of {app} refused: {reason}");
            }
            ExitCode::FAILURE
        }
        SwitchoverOutcome::InProgress { intent, progress } => {
            let progress = serde_json::to_value(progress).unwrap_or_default();
            if as_json {
                println!(
                    "{}",
                    json!({"app": app, "intent": intent, "outcome": progress})
                );
            } else {
                eprintln!(
                    "{app}: {what} (intent {intent}) still {} after {} ms; follow it with `tandem events -f`",
                    progress.as_str().unwrap_or("pending"),
                    timeout.as_millis()
                );
            }
            ExitCode::from(2)
        }
    }
}

/// `tandem validate`.
pub fn validate(file: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    match tandem_core::topology::parse_checked(&name, &text, crate::program::LOCAL_CHECKS) {
        Ok(t) => {
            let instances: usize = t.apps.iter().map(|a| a.instances.len()).sum();
            if as_json {
                println!("{}", json!({"valid": true, "problems": []}));
            } else {
                println!(
                    "{name}: valid ({} apps, {instances} instances, {} hosts)",
                    t.apps.len(),
                    t.hosts.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            if as_json {
                let problems: Vec<_> = diags
                    .0
                    .iter()
                    .map(|d| json!({"file": d.file, "line": d.line, "column": d.column, "message": d.message}))
                    .collect();
                println!("{}", json!({"valid": false, "problems": problems}));
            } else {
                for d in &diags.0 {
                    println!("{d}");
                }
                eprintln!("{name}: {} problem(s)", diags.0.len());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `tandem proxy`.
pub async fn proxy(
    listen: std::net::SocketAddr,
    app: &str,
    api: &ApiArg,
) -> anyhow::Result<ExitCode> {
    crate::init_logging(crate::LogFormat::Text, "info");
    let client = api.client()?;
    // Fail early, with the API's own words, on an unknown app.
    client.app(app).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "tandem proxy: {listen} → the primary of {app} (following {})",
        api.api
    );
    let target = tandem_client::proxy::follow_primary(client, app);
    // Ctrl-C or SIGTERM (how tandem stops it when it runs as an instance):
    // a clean stop.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    tandem_client::proxy::serve(
        listener,
        target,
        tandem_client::proxy::ProxyOptions::default(),
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
        },
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
