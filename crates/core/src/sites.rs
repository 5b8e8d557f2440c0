//! Sites: each is `active` or `spare`, by the topology unless an operator
//! promoted another ([`SitesRecord::roles`]); a site is *lost* when every
//! one of its hosts' agents has lost its lease (a site without hosts is
//! never lost), and *failed* when an operator declared it so, until
//! restored. Pure: the controller, the API and the CLI judge sites the
//! same way.
//!
//! # What a site's state does
//!
//! - An app pinned to the active site (`pinned = true`) holds its primary
//!   only on a host of an active site that is neither lost nor failed
//!   ([`HostSite::barred`]); while no such host has an instance of it, it
//!   is read-only ([`read_only`]) and does not move by itself.
//! - Nothing is placed on a host of a failed site: its primaries step
//!   down, its n-plus-1 members are replaced elsewhere.
//!
//! # Operators' intents ([`resolve`])
//!
//! - `fail SITE`: refused while a host of the site holds a lease (its
//!   agents may still act), unless the operator forced it by naming the
//!   site again.
//! - `promote SITE`: a spare, up site becomes the active one; refused
//!   while an active site is up (neither lost nor failed) unless forced by
//!   naming that site, and while a pinned app has no instance there. Every
//!   active site becomes a spare, failed until restored: a returning site
//!   is never a second live one. The pinned apps' primaries start in
//!   `SITE` with a new epoch, once the old ones are known stopped (the
//!   decision's own rules).
//! - `restore SITE`: a failed site whose hosts hold leases again is taken
//!   back in its role (a site replaced by a promotion is a spare).

use std::collections::BTreeMap;

use crate::model::{
    EventDraft, EventKind, IntentState, ReadOnly, SiteAction, SiteFailure, SiteIntent, SitesRecord,
    asked_by,
};
use crate::topology::{App, Link, SiteRole, Topology};

/// One site as judged now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteState {
    /// The site's name.
    pub name: String,
    /// Its role now: the topology's, unless a promotion changed it.
    pub role: SiteRole,
    /// Its role in the topology.
    pub declared: SiteRole,
    /// Its hosts, in topology order.
    pub hosts: Vec<String>,
    /// Those whose agent holds a lease.
    pub hosts_up: Vec<String>,
    /// Every host's lease has ended (and it has hosts).
    pub lost: bool,
    /// Declared failed by an operator (or replaced by a promotion), until
    /// restored.
    pub failed: Option<SiteFailure>,
}

impl SiteState {
    /// Nothing may be placed there: lost or failed.
    pub fn out(&self) -> bool {
        self.lost || self.failed.is_some()
    }

    /// One word: `up`, `lost` or `failed`.
    pub fn condition(&self) -> &'static str {
        if self.failed.is_some() {
            "failed"
        } else if self.lost {
            "lost"
        } else {
            "up"
        }
    }

    /// Why it is out, for messages: `site dc1 is lost` (its leases ended,
    /// the likelier news when both hold) or `site dc1 was declared failed`.
    pub fn out_reason(&self) -> String {
        if self.lost {
            format!("site {} is lost", self.name)
        } else {
            format!("site {} was declared failed", self.name)
        }
    }
}

/// Judges every site of `topology` with what operators decided (`record`);
/// `up` tells whether a host's agent holds a lease.
pub fn site_states(
    topology: &Topology,
    record: &SitesRecord,
    up: impl Fn(&str) -> bool,
) -> Vec<SiteState> {
    topology
        .sites
        .iter()
        .map(|site| {
            let hosts: Vec<String> = topology
                .hosts
                .iter()
                .filter(|h| h.site == site.name)
                .map(|h| h.name.clone())
                .collect();
            let hosts_up: Vec<String> = hosts.iter().filter(|h| up(h)).cloned().collect();
            SiteState {
                name: site.name.clone(),
                role: record.roles.get(&site.name).copied().unwrap_or(site.role),
                declared: site.role,
                lost: !hosts.is_empty() && hosts_up.is_empty(),
                failed: record.failed.get(&site.name).cloned(),
                hosts,
                hosts_up,
            }
        })
        .collect()
}

/// Where a host stands, as the decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSite {
    /// Its site.
    pub site: String,
    /// Its site is active now.
    pub active: bool,
    /// Why its site is out (`site dc1 is lost`), if it is.
    pub out: Option<String>,
    /// Its site was declared failed.
    pub failed: bool,
}

impl HostSite {
    /// Why an instance of `app` on this host may not be placed (hold a
    /// primary, be an active member), if it may not: its site was declared
    /// failed, or `app` is pinned and its site is not an active one that
    /// is up.
    pub fn barred(&self, app: &App) -> Option<String> {
        if self.failed {
            Some(format!("its site {} was declared failed", self.site))
        } else if app.pinned && !self.active {
            Some(format!(
                "its site {} is a spare and {} is pinned to the active site",
                self.site, app.name
            ))
        } else if app.pinned {
            self.out
                .as_ref()
                .map(|why| format!("{why} and {} is pinned to it", app.name))
        } else {
            None
        }
    }
}

/// Each host's [`HostSite`].
pub fn host_sites(states: &[SiteState]) -> BTreeMap<String, HostSite> {
    states
        .iter()
        .flat_map(|s| {
            s.hosts.iter().map(move |h| {
                (
                    h.clone(),
                    HostSite {
                        site: s.name.clone(),
                        active: s.role == SiteRole::Active,
                        out: s.out().then(|| s.out_reason()),
                        failed: s.failed.is_some(),
                    },
                )
            })
        })
        .collect()
}

/// Whether pinned `app` is read-only: it is when no host of an active site
/// that is up has an instance of it. `None` for an app that is not pinned,
/// or when `sites` says nothing of its hosts.
pub fn read_only(app: &App, sites: &BTreeMap<String, HostSite>) -> Option<ReadOnly> {
    if !app.pinned {
        return None;
    }
    let placed: Vec<&HostSite> = app
        .instances
        .iter()
        .filter_map(|i| sites.get(&i.host))
        .collect();
    if placed.is_empty() || placed.iter().any(|h| h.active && h.out.is_none()) {
        return None;
    }
    let lost = placed.iter().find(|h| h.active && h.out.is_some());
    Some(match lost {
        Some(h) => ReadOnly {
            site: h.site.clone(),
            reason: h.out.clone().unwrap_or_default(),
        },
        None => ReadOnly {
            site: placed[0].site.clone(),
            reason: "no active site has an instance of it".to_string(),
        },
    })
}

/// The links of `app` with a hook to an app pinned to the active site:
/// their instances are told when that app is read-only.
pub fn follower_links<'t>(topology: &'t Topology, app: &'t str) -> impl Iterator<Item = &'t Link> {
    topology.links_from(app).filter(move |l| {
        l.hook.is_some() && l.exclusive.is_none() && topology.app(&l.to).is_some_and(|t| t.pinned)
    })
}

/// What an instance of `app` (running as incarnation `incarnation`) must
/// be told now: for each of its [`follower_links`], whether the app it
/// goes to is read-only, where that differs from what it was last told in
/// this incarnation (`told`; a new process has been told nothing, which
/// is "writable").
pub fn follower_notices(
    topology: &Topology,
    app: &str,
    incarnation: u64,
    read_only: impl Fn(&str) -> bool,
    told: impl Fn(&str) -> Option<(u64, bool)>,
) -> Vec<(String, bool)> {
    follower_links(topology, app)
        .filter_map(|l| {
            let want = read_only(&l.to);
            let last = told(&l.name)
                .filter(|(inc, _)| *inc == incarnation)
                .is_some_and(|(_, ro)| ro);
            (want != last).then(|| (l.name.clone(), want))
        })
        .collect()
}

/// The events of sites lost, or up (again), between two judgements
/// (reasons `site_lost`, `site_up`).
pub fn site_events(before: &[SiteState], after: &[SiteState]) -> Vec<EventDraft> {
    let was: BTreeMap<&str, bool> = before.iter().map(|s| (s.name.as_str(), s.lost)).collect();
    after
        .iter()
        .filter_map(|s| {
            let lost_before = *was.get(s.name.as_str())?;
            let (reason, message) = match (lost_before, s.lost) {
                (false, true) => (
                    "site_lost",
                    format!(
                        "site {} ({}) lost: the lease of every one of its hosts ended ({})",
                        s.name,
                        s.role,
                        s.hosts.join(", ")
                    ),
                ),
                (true, false) => {
                    let mut m = format!(
                        "site {} ({}) is up: {} holds a lease",
                        s.name,
                        s.role,
                        s.hosts_up.join(", ")
                    );
                    if s.failed.is_some() {
                        m.push_str(&format!(
                            "; it stays failed, and nothing is placed there, until `tandem site restore {}`",
                            s.name
                        ));
                    }
                    ("site_up", m)
                }
                _ => return None,
            };
            Some(site_event(message, reason))
        })
        .collect()
}

/// The events of the sites a controller finds lost as it takes the lead
/// (their loss may have happened while no controller led: nobody said it).
pub fn sites_found_lost(states: &[SiteState]) -> Vec<EventDraft> {
    states
        .iter()
        .filter(|s| s.lost)
        .map(|s| {
            site_event(
                format!(
                    "site {} ({}) is lost: none of its hosts ({}) holds a lease (found so by this controller as it took the lead)",
                    s.name,
                    s.role,
                    s.hosts.join(", ")
                ),
                "site_lost",
            )
        })
        .collect()
}

fn site_event(message: String, reason: &'static str) -> EventDraft {
    EventDraft {
        kind: EventKind::Site,
        app: None,
        instance: None,
        epoch: None,
        message,
        reason: Some(reason),
    }
}

/// What resolving a site intent comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The intent's outcome (done or refused).
    pub outcome: IntentState,
    /// The record to write, if it changes.
    pub record: Option<SitesRecord>,
    /// What to log.
    pub event: EventDraft,
}

/// Resolves an operator's site intent against the sites as judged now
/// (`states`, from `record`), at `now_ms`. A refusal changes nothing.
pub fn resolve(
    intent: &SiteIntent,
    topology: &Topology,
    states: &[SiteState],
    record: &SitesRecord,
    now_ms: u64,
) -> Resolution {
    let by = asked_by(intent.by.as_deref());
    let action = intent.action;
    let site = intent.site.as_str();
    let result = match states.iter().find(|s| s.name == site) {
        None => Err(format!(
            "no site named {site:?} in the topology (sites: {})",
            names(states.iter().map(|s| s.name.as_str()))
        )),
        Some(target) => match action {
            SiteAction::Fail => fail(intent, target, record, now_ms),
            SiteAction::Promote => promote(intent, topology, target, states, record, now_ms),
            SiteAction::Restore => restore(target, record),
        },
    };
    match result {
        Ok((message, next)) => {
            let record = next.map(|mut r| {
                r.generation = record.generation + 1;
                r
            });
            Resolution {
                outcome: IntentState::Done {
                    message: message.clone(),
                },
                record,
                event: site_event(format!("{message}{by}"), action_reason(action)),
            }
        }
        Err(why) => Resolution {
            outcome: IntentState::Refused {
                reason: why.clone(),
            },
            record: None,
            event: site_event(
                format!("site {action} {site} refused{by}: {why}"),
                "site_intent_refused",
            ),
        },
    }
}

type Outcome = Result<(String, Option<SitesRecord>), String>;

fn action_reason(action: SiteAction) -> &'static str {
    match action {
        SiteAction::Fail => "site_failed",
        SiteAction::Promote => "site_promoted",
        SiteAction::Restore => "site_restored",
    }
}

/// `host h1 still holds a lease` / `hosts h1, h2 still hold leases`.
fn holding(hosts: &[String], still: bool) -> String {
    let still = if still { "still " } else { "" };
    match hosts {
        [one] => format!("host {one} {still}holds a lease"),
        many => format!("hosts {} {still}hold leases", many.join(", ")),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// The operator confirmed that `site` may be treated as gone.
fn forced_for(intent: &SiteIntent, site: &str) -> bool {
    intent.forced.as_deref() == Some(site)
}

fn fail(intent: &SiteIntent, target: &SiteState, record: &SitesRecord, now_ms: u64) -> Outcome {
    let site = &target.name;
    if target.failed.is_some() {
        return Ok((format!("site {site} was already declared failed"), None));
    }
    if !target.hosts_up.is_empty() && !forced_for(intent, site) {
        return Err(format!(
            "its {}: its agents may still act there; if site {site} is really lost, force it (--force --confirm {site})",
            holding(&target.hosts_up, true)
        ));
    }
    let mut next = record.clone();
    next.failed.insert(
        site.clone(),
        SiteFailure {
            at_ms: now_ms,
            why: "declared failed by an operator".to_string(),
        },
    );
    let mut message = format!("site {site} ({}) declared failed", target.role);
    if !target.hosts_up.is_empty() {
        message.push_str(&format!(
            " although its {} (forced): nothing is placed there, and what runs there steps down",
            holding(&target.hosts_up, true)
        ));
    }
    message.push_str(&format!(
        "; `tandem site restore {site}` takes it back once it returns"
    ));
    Ok((message, Some(next)))
}

fn promote(
    intent: &SiteIntent,
    topology: &Topology,
    target: &SiteState,
    states: &[SiteState],
    record: &SitesRecord,
    now_ms: u64,
) -> Outcome {
    let site = &target.name;
    if target.role == SiteRole::Active {
        return Err(format!(
            "site {site} is already active: promote a spare site ({})",
            names(
                states
                    .iter()
                    .filter(|s| s.role == SiteRole::Spare)
                    .map(|s| s.name.as_str())
            )
        ));
    }
    if target.lost {
        return Err(format!(
            "site {site} is lost: none of its hosts ({}) holds a lease; promote a site that is up",
            target.hosts.join(", ")
        ));
    }
    if let Some(f) = &target.failed {
        return Err(format!(
            "site {site} is failed ({}): take it back first with `tandem site restore {site}`",
            f.why
        ));
    }
    let actives: Vec<&SiteState> = states
        .iter()
        .filter(|s| s.role == SiteRole::Active)
        .collect();
    if let Some(up) = actives
        .iter()
        .find(|s| !s.out() && !forced_for(intent, &s.name))
    {
        return Err(format!(
            "the active site {} is up (its {}) and may still act: a second live site would serve beside it; if it is really lost, force it (--force --confirm {})",
            up.name,
            holding(&up.hosts_up, false),
            up.name
        ));
    }
    let host_site = |h: &str| topology.host(h).map(|h| h.site.as_str());
    let homeless: Vec<&str> = topology
        .apps
        .iter()
        .filter(|a| a.pinned)
        .filter(|a| {
            !a.instances
                .iter()
                .any(|i| host_site(&i.host) == Some(site.as_str()))
        })
        .map(|a| a.name.as_str())
        .collect();
    if !homeless.is_empty() {
        return Err(format!(
            "pinned app(s) {} have no instance in site {site}: they would have nowhere to run",
            homeless.join(", ")
        ));
    }
    let mut next = record.clone();
    next.roles.insert(site.clone(), SiteRole::Active);
    next.failed.remove(site);
    let mut replaced = Vec::new();
    for old in &actives {
        next.roles.insert(old.name.clone(), SiteRole::Spare);
        next.failed
            .entry(old.name.clone())
            .or_insert_with(|| SiteFailure {
                at_ms: now_ms,
                why: format!("replaced by site {site}"),
            });
        replaced.push(old.name.as_str());
    }
    let pinned: Vec<&str> = topology
        .apps
        .iter()
        .filter(|a| a.pinned)
        .map(|a| a.name.as_str())
        .collect();
    let mut message = format!("site {site} promoted to active");
    if !replaced.is_empty() {
        message.push_str(&format!(
            "; {} is a spare now, failed until `tandem site restore`",
            replaced.join(", ")
        ));
    }
    if !pinned.is_empty() {
        message.push_str(&format!(
            "; pinned app(s) {} start there with a new epoch once their old primary is known stopped",
            pinned.join(", ")
        ));
    }
    Ok((message, Some(next)))
}

fn restore(target: &SiteState, record: &SitesRecord) -> Outcome {
    let site = &target.name;
    if target.failed.is_none() {
        return Err(format!(
            "site {site} is not failed ({}): nothing to restore",
            target.condition()
        ));
    }
    if target.lost {
        return Err(format!(
            "site {site} has not returned: none of its hosts ({}) holds a lease",
            target.hosts.join(", ")
        ));
    }
    let mut next = record.clone();
    next.failed.remove(site);
    // Its role stays: a site replaced by a promotion is a spare already,
    // never a second live one.
    let message = match target.role {
        SiteRole::Spare => format!("site {site} restored as a spare"),
        SiteRole::Active => format!("site {site} restored as active"),
    };
    Ok((message, Some(next)))
}
