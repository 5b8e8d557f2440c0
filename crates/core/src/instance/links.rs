//! Links: what this instance's host sees of each link of its app. The
//! runtime probes every target of every link while the process runs and
//! feeds each result ([`super::Input::LinkProbe`]); hysteresis turns them
//! into a [`Reach`] per target, published in
//! [`crate::model::InstanceStatus::links`]. A new process starts with
//! every target unknown.

use std::collections::BTreeMap;

use super::{Action, InstanceMachine, Note, Proc, Step};
use crate::health::CheckTracker;
use crate::model::{CertSeen, Health, LinkReach, Reach};
use crate::topology::{Link, Topology};

/// One link of the instance's app, as its machine tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The link's name.
    pub name: String,
    /// Its targets: instance ids of the app linked to, or the endpoint.
    pub targets: Vec<String>,
    /// Consecutive failures that make a target down.
    pub failures: u32,
    /// Consecutive successes that make a target up.
    pub successes: u32,
}

impl LinkSpec {
    /// The specs of every link from `app` in `topology`.
    pub fn of_app(topology: &Topology, app: &str) -> Vec<LinkSpec> {
        topology
            .links_from(app)
            .map(|l| LinkSpec::of(topology, l))
            .collect()
    }

    /// The spec of `link`.
    pub fn of(topology: &Topology, link: &Link) -> LinkSpec {
        LinkSpec {
            name: link.name.clone(),
            targets: topology
                .link_targets(link)
                .into_iter()
                .map(|t| t.name)
                .collect(),
            failures: link.probe.failures_before_down,
            successes: link.probe.successes_before_up,
        }
    }
}

/// The trackers of one link: one per target.
#[derive(Debug, Clone)]
pub(super) struct LinkTrackers {
    spec: LinkSpec,
    targets: BTreeMap<String, CheckTracker>,
    /// TLS links: the certificate each target's last handshake saw.
    certs: BTreeMap<String, CertSeen>,
}

impl LinkTrackers {
    fn new(spec: LinkSpec) -> LinkTrackers {
        let targets = spec
            .targets
            .iter()
            .map(|t| (t.clone(), CheckTracker::new(spec.failures, spec.successes)))
            .collect();
        LinkTrackers {
            spec,
            targets,
            certs: BTreeMap::new(),
        }
    }
}

fn reach(health: Health) -> Reach {
    match health {
        Health::Unknown => Reach::Unknown,
        Health::Healthy => Reach::Up,
        Health::Unhealthy => Reach::Down,
    }
}

impl InstanceMachine {
    /// Sets the links to track (at creation, and when the topology
    /// changes): a link whose spec is unchanged keeps what it has seen.
    pub fn set_links(&mut self, specs: Vec<LinkSpec>) {
        let mut old: BTreeMap<String, LinkTrackers> = std::mem::take(&mut self.links)
            .into_iter()
            .map(|l| (l.spec.name.clone(), l))
            .collect();
        self.links = specs
            .into_iter()
            .map(|spec| match old.remove(&spec.name) {
                Some(l) if l.spec == spec => l,
                _ => LinkTrackers::new(spec),
            })
            .collect();
    }

    /// The links tracked, with their targets.
    pub fn link_specs(&self) -> impl Iterator<Item = &LinkSpec> {
        self.links.iter().map(|l| &l.spec)
    }

    /// Forgets every link result: a new process starts unknown.
    pub(super) fn reset_links(&mut self) {
        for l in &mut self.links {
            for t in l.targets.values_mut() {
                t.reset();
            }
            l.certs.clear();
        }
    }

    /// What the host sees of each link, while the process runs (empty
    /// otherwise).
    pub(super) fn link_status(&self) -> BTreeMap<String, BTreeMap<String, LinkReach>> {
        if self.proc != Proc::Running {
            return BTreeMap::new();
        }
        self.links
            .iter()
            .map(|l| {
                let targets = l
                    .targets
                    .iter()
                    .map(|(name, t)| {
                        let state = reach(t.health());
                        let detail = match state {
                            Reach::Up => None,
                            _ => t.last_failure().map(str::to_string),
                        };
                        let cert = l.certs.get(name).cloned();
                        (
                            name.clone(),
                            LinkReach {
                                state,
                                detail,
                                cert,
                            },
                        )
                    })
                    .collect();
                (l.spec.name.clone(), targets)
            })
            .collect()
    }

    /// [`super::Input::LinkProbe`]: a probe of a link's target from the
    /// running incarnation answered.
    pub(super) fn link_probe(
        &mut self,
        link: &str,
        target: &str,
        incarnation: u64,
        result: Result<(), String>,
        cert: Option<CertSeen>,
        step: &mut Step,
    ) {
        if self.proc != Proc::Running || incarnation != self.incarnation {
            return;
        }
        let Some(l) = self.links.iter_mut().find(|l| l.spec.name == link) else {
            return;
        };
        let Some(t) = l.targets.get_mut(target) else {
            return;
        };
        if let Some(cert) = cert
            && l.certs.get(target) != Some(&cert)
        {
            l.certs.insert(target.to_string(), cert);
            step.act(Action::Publish);
        }
        let before = t.health();
        t.record(result);
        let after = t.health();
        if after != before {
            step.act(Action::Publish);
            step.notes.push(Note::LinkChanged {
                instance: self.name.clone(),
                link: link.to_string(),
                target: target.to_string(),
                state: reach(after),
                detail: t.last_failure().map(str::to_string),
            });
        }
    }
}
