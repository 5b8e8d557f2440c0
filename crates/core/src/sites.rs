//! Sites: each is `active` or `spare` by the topology, and *lost* when
//! every one of its hosts' agents has lost its lease (a site without hosts
//! is never lost). Pure: the controller, the API and the CLI judge sites
//! the same way.

use std::collections::BTreeMap;

use crate::model::{EventDraft, EventKind};
use crate::topology::{SiteRole, Topology};

/// One site as judged now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteState {
    /// The site's name.
    pub name: String,
    /// Its role in the topology.
    pub role: SiteRole,
    /// Its hosts, in topology order.
    pub hosts: Vec<String>,
    /// Those whose agent holds a lease.
    pub hosts_up: Vec<String>,
    /// Every host's lease has ended (and it has hosts).
    pub lost: bool,
}

/// Judges every site of `topology`; `up` tells whether a host's agent
/// holds a lease.
pub fn site_states(topology: &Topology, up: impl Fn(&str) -> bool) -> Vec<SiteState> {
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
                role: site.role,
                lost: !hosts.is_empty() && hosts_up.is_empty(),
                hosts,
                hosts_up,
            }
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
                (true, false) => (
                    "site_up",
                    format!(
                        "site {} ({}) is up: {} holds a lease",
                        s.name,
                        s.role,
                        s.hosts_up.join(", ")
                    ),
                ),
                _ => return None,
            };
            Some(EventDraft {
                kind: EventKind::Site,
                app: None,
                instance: None,
                epoch: None,
                message,
                reason: Some(reason),
            })
        })
        .collect()
}
