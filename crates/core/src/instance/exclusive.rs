//! Exclusive link groups: of the links of one group, at most one is active
//! on the running process at any moment. tandem chooses it — the group's
//! first link that its host sees up — and changes it through each link's
//! hook ([`Action::LinkHook`]): it always disables the active link and sees
//! that confirmed ([`super::Input::LinkHookDone`] succeeding) before it
//! enables another. A hook that succeeds confirms the action; a link whose
//! disabling is not confirmed, or a process that reports two links of one
//! group active ([`super::Input::ActiveLinks`]), is fenced by a kill: a
//! process that has ended has no link active.
//!
//! - While the active link is up, or while no other link is up, nothing
//!   moves. A link comes back into use once its host sees it up, with the
//!   link's probe hysteresis (`successes_before_up`).
//! - A link whose enabling failed is disabled again (it may be half
//!   enabled) and not tried for [`ENABLE_RETRY`], or until its host has
//!   seen it down and up again.
//! - A new process starts with no link active, and enables its first
//!   link once every link it prefers to that one has been judged.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Action, InstanceMachine, KillReason, Note, Proc, Step};
use crate::model::Reach;
use crate::topology::{LinkAction, Topology};

/// How long a link whose enabling failed is left alone.
pub const ENABLE_RETRY: Duration = Duration::from_secs(1);

/// One exclusive group of an instance's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// Its links, the preferred first.
    pub links: Vec<String>,
}

impl GroupSpec {
    /// The exclusive groups of `app` in `topology`.
    pub fn of_app(topology: &Topology, app: &str) -> Vec<GroupSpec> {
        topology
            .exclusive_groups(app)
            .into_iter()
            .map(|(name, links)| GroupSpec {
                name,
                links: links.into_iter().map(|l| l.name.clone()).collect(),
            })
            .collect()
    }
}

/// What a group is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Busy {
    Idle,
    /// The hook enabling this link is running.
    Enabling(String),
    /// The hook disabling this link is running.
    Disabling(String),
}

/// One group, as the machine drives it.
#[derive(Debug, Clone)]
pub(super) struct Group {
    spec: GroupSpec,
    /// The link enabled and confirmed on the running process.
    active: Option<String>,
    busy: Busy,
    /// Links whose enabling failed, and when they may be tried again.
    refused: BTreeMap<String, Duration>,
    /// Reports in a row from the process that do not list `active`.
    missing: u32,
}

impl Group {
    fn new(spec: GroupSpec) -> Group {
        Group {
            spec,
            active: None,
            busy: Busy::Idle,
            refused: BTreeMap::new(),
            missing: 0,
        }
    }
}

/// Reports in a row that must leave out the active link before it counts
/// as lost by the process (one may have been read just before the process
/// wrote it).
pub const MISSING_REPORTS: u32 = 2;

impl InstanceMachine {
    /// Sets the exclusive groups (at creation, and when the topology
    /// changes). A group whose active link is still one of its links keeps
    /// it; an action under way is kept too, so that its result counts.
    pub fn set_groups(&mut self, specs: Vec<GroupSpec>) {
        let mut old: BTreeMap<String, Group> = std::mem::take(&mut self.groups)
            .into_iter()
            .map(|g| (g.spec.name.clone(), g))
            .collect();
        self.groups = specs
            .into_iter()
            .map(|spec| match old.remove(&spec.name) {
                Some(mut g) => {
                    let has = |l: &String| spec.links.contains(l);
                    g.active = g.active.filter(has);
                    g.refused.retain(|l, _| has(l));
                    g.spec = spec;
                    g
                }
                None => Group::new(spec),
            })
            .collect();
    }

    /// A new process: nothing is active on it.
    pub(super) fn reset_groups(&mut self) {
        for g in &mut self.groups {
            *g = Group::new(g.spec.clone());
        }
    }

    /// The active link of each group, while the process runs.
    pub(super) fn active_links(&self) -> BTreeMap<String, String> {
        if self.proc != Proc::Running {
            return BTreeMap::new();
        }
        self.groups
            .iter()
            .filter_map(|g| Some((g.spec.name.clone(), g.active.clone()?)))
            .collect()
    }

    /// When a refused link may be tried again, the earliest.
    pub(super) fn groups_wakeup(&self) -> Option<Duration> {
        if self.proc != Proc::Running {
            return None;
        }
        self.groups
            .iter()
            .filter(|g| g.busy == Busy::Idle)
            .flat_map(|g| g.refused.values().copied())
            .min()
    }

    /// What the host sees of each link of a group: up if a target is,
    /// down if all are.
    fn group_reach(&self) -> BTreeMap<String, Reach> {
        if self.groups.is_empty() {
            return BTreeMap::new();
        }
        let status = self.link_status();
        let reach = |link: &str| {
            let Some(targets) = status.get(link) else {
                return Reach::Unknown;
            };
            if targets.values().any(|t| t.state == Reach::Up) {
                Reach::Up
            } else if !targets.is_empty() && targets.values().all(|t| t.state == Reach::Down) {
                Reach::Down
            } else {
                Reach::Unknown
            }
        };
        self.groups
            .iter()
            .flat_map(|g| g.spec.links.iter())
            .map(|l| (l.clone(), reach(l)))
            .collect()
    }

    /// Moves each idle group towards its first usable link.
    pub(super) fn decide_groups(&mut self, now: Duration, step: &mut Step) {
        if self.proc != Proc::Running || self.ending.is_some() {
            return;
        }
        let reach = self.group_reach();
        let incarnation = self.incarnation;
        for g in &mut self.groups {
            if g.busy != Busy::Idle {
                continue;
            }
            // A refused link seen down since is tried again as soon as it
            // is seen up: whatever refused it has changed.
            g.refused
                .retain(|l, until| *until > now && reach.get(l) != Some(&Reach::Down));
            let usable =
                |l: &String| reach.get(l) == Some(&Reach::Up) && !g.refused.contains_key(l);
            let want = g.spec.links.iter().find(|l| usable(l)).cloned();
            // With nothing active yet, a link preferred to the one found
            // but not judged yet is waited for: a new process does not
            // start on its second choice to move a moment later.
            let undecided = |w: &String| {
                g.spec
                    .links
                    .iter()
                    .take_while(|l| *l != w)
                    .any(|l| reach.get(l).is_none_or(|r| *r == Reach::Unknown))
            };
            if g.active.is_none() && want.as_ref().is_some_and(undecided) {
                continue;
            }
            let (link, action) = match (&g.active, want) {
                (Some(a), Some(w)) if *a == w => continue,
                (Some(a), Some(w)) => {
                    step.notes.push(Note::LinkSwitching {
                        instance: self.name.clone(),
                        group: g.spec.name.clone(),
                        from: a.clone(),
                        to: w.clone(),
                        from_down: reach.get(a) == Some(&Reach::Down),
                    });
                    (a.clone(), LinkAction::Disable)
                }
                (None, Some(w)) => (w, LinkAction::Enable),
                (_, None) => continue,
            };
            g.busy = match action {
                LinkAction::Enable => Busy::Enabling(link.clone()),
                LinkAction::Disable => Busy::Disabling(link.clone()),
            };
            step.act(Action::LinkHook {
                link,
                action,
                incarnation,
            });
        }
    }

    /// [`super::Input::LinkHookDone`].
    pub(super) fn link_hook_done(
        &mut self,
        link: &str,
        action: LinkAction,
        incarnation: u64,
        result: Result<(), String>,
        now: Duration,
        step: &mut Step,
    ) {
        if self.proc != Proc::Running || incarnation != self.incarnation {
            return;
        }
        let name = self.name.clone();
        let Some(g) = self.groups.iter_mut().find(|g| match (&g.busy, action) {
            (Busy::Enabling(l), LinkAction::Enable) | (Busy::Disabling(l), LinkAction::Disable) => {
                l == link
            }
            _ => false,
        }) else {
            return;
        };
        let group = g.spec.name.clone();
        match (action, result) {
            (LinkAction::Enable, Ok(())) => {
                g.busy = Busy::Idle;
                g.active = Some(link.to_string());
                g.refused.remove(link);
                step.act(Action::Publish);
                step.notes.push(Note::LinkEnabled {
                    instance: name,
                    group,
                    link: link.to_string(),
                });
            }
            (LinkAction::Enable, Err(error)) => {
                // It may be half enabled: disable it before anything else.
                g.refused.insert(link.to_string(), now + ENABLE_RETRY);
                g.busy = Busy::Disabling(link.to_string());
                step.notes.push(Note::LinkEnableFailed {
                    instance: name,
                    group,
                    link: link.to_string(),
                    error,
                    retry_in: ENABLE_RETRY,
                });
                step.act(Action::LinkHook {
                    link: link.to_string(),
                    action: LinkAction::Disable,
                    incarnation,
                });
                return;
            }
            (LinkAction::Disable, Ok(())) => {
                g.busy = Busy::Idle;
                if g.active.as_deref() == Some(link) {
                    g.active = None;
                    step.act(Action::Publish);
                    step.notes.push(Note::LinkDisabled {
                        instance: name,
                        group,
                        link: link.to_string(),
                    });
                }
            }
            (LinkAction::Disable, Err(error)) => {
                // Not confirmed: it may still be active. Nothing else is
                // enabled (the group stays busy) until the process is gone.
                self.kill(
                    KillReason::LinkNotDisabled {
                        instance: name,
                        link: link.to_string(),
                        error,
                    },
                    step,
                );
                return;
            }
        }
        self.decide_groups(now, step);
    }

    /// [`super::Input::ActiveLinks`]: the process says which links it has
    /// active. Two of one group get it killed; an active link that it
    /// leaves out of [`MISSING_REPORTS`] reports in a row, while nothing is
    /// under way, is one it lost by itself (its connection dropped): no
    /// longer active, and the group chooses again.
    pub(super) fn active_report(
        &mut self,
        incarnation: u64,
        links: &[String],
        now: Duration,
        step: &mut Step,
    ) {
        if self.proc != Proc::Running
            || incarnation != self.incarnation
            || matches!(self.ending, Some(super::EndReason::Killed(_)))
        {
            return;
        }
        let name = self.name.clone();
        let mut lost = false;
        for g in &mut self.groups {
            let Some(active) = g.active.clone().filter(|_| g.busy == Busy::Idle) else {
                g.missing = 0;
                continue;
            };
            if links.contains(&active) {
                g.missing = 0;
                continue;
            }
            g.missing += 1;
            if g.missing >= MISSING_REPORTS {
                g.missing = 0;
                g.active = None;
                lost = true;
                step.act(Action::Publish);
                step.notes.push(Note::LinkLostByProcess {
                    instance: name.clone(),
                    group: g.spec.name.clone(),
                    link: active,
                });
            }
        }
        let both = self.groups.iter().find_map(|g| {
            let on: Vec<String> = g
                .spec
                .links
                .iter()
                .filter(|l| links.contains(l))
                .cloned()
                .collect();
            (on.len() > 1).then(|| (g.spec.name.clone(), on))
        });
        if let Some((group, links)) = both {
            self.kill(
                KillReason::TwoLinksActive {
                    instance: self.name.clone(),
                    group,
                    links,
                },
                step,
            );
            return;
        }
        if lost {
            self.decide_groups(now, step);
        }
    }
}
