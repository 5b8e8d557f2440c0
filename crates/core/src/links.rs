//! What a link's state is for one instance, from what its host sees of
//! each target ([`InstanceStatus::links`]) and where the target app's
//! primary is. Pure: the API, the CLI and the controller all judge links
//! the same way.
//!
//! - `one` (X) holds when the one target that counts is reachable: the
//!   target app's primary (for an app with a primary), else any of its
//!   instances, or the endpoint.
//! - `one-or-more` (X+) holds when at least one target is reachable.
//! - `optional` ((X)) is judged like `one-or-more`, but never degrades
//!   the instance ([`LinkJudgement::required`] is false).
//!
//! A link of an instance that does not run, or whose targets have not been
//! probed enough yet, is `unknown`; so is a `one` link to an app that has
//! no primary right now (nobody could have it).

use std::collections::BTreeMap;

use crate::model::{AppRoles, InstanceStatus, LinkReach, ProcessState, Reach};
use crate::topology::{Cardinality, HaMode, Link, Topology};

/// A link's state for one instance of its `from` app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkJudgement {
    /// Up, down or unknown.
    pub state: Reach,
    /// Whether a down state degrades the instance (not for `optional`).
    pub required: bool,
    /// Why, in a few words ("server/a (the primary) is reachable").
    pub detail: String,
}

/// Whether `ha` gives one instance the primary role.
pub fn has_primary(ha: HaMode) -> bool {
    matches!(
        ha,
        HaMode::WarmStandby | HaMode::HotStandby | HaMode::ColdStandby | HaMode::Singleton
    )
}

/// Judges `link` for the instance whose status is `from` (`None`: it has
/// none, its host is gone or its agent has not reported). `target_roles`
/// is the role assignment of the app the link goes to, if it goes to one.
pub fn judge(
    topology: &Topology,
    link: &Link,
    from: Option<&InstanceStatus>,
    target_roles: Option<&AppRoles>,
) -> LinkJudgement {
    let required = link.cardinality.is_required();
    let verdict = |state: Reach, detail: String| LinkJudgement {
        state,
        required,
        detail,
    };
    let Some(status) = from.filter(|s| s.process == ProcessState::Running) else {
        return verdict(Reach::Unknown, "the instance is not running".into());
    };
    let empty = BTreeMap::new();
    let seen = status.links.get(&link.name).unwrap_or(&empty);
    let one_primary = link.cardinality == Cardinality::One
        && topology.app(&link.to).is_some_and(|a| has_primary(a.ha));
    if one_primary {
        let Some(grant) = target_roles.and_then(|r| r.primary.as_ref()) else {
            return verdict(
                Reach::Unknown,
                format!("{} has no primary right now", link.to),
            );
        };
        let who = format!("{}/{} (the primary)", link.to, grant.instance);
        return match seen.get(&grant.instance) {
            Some(LinkReach {
                state: Reach::Up, ..
            }) => verdict(Reach::Up, format!("{who} is reachable")),
            Some(LinkReach {
                state: Reach::Down,
                detail,
                ..
            }) => verdict(
                Reach::Down,
                format!("{who} is unreachable{}", because(detail.as_deref())),
            ),
            _ => verdict(Reach::Unknown, format!("{who} is not probed yet")),
        };
    }
    any_of(
        &link.to,
        seen,
        topology.endpoint(&link.to).is_some(),
        verdict,
    )
}

/// Up if any target is, down if all are, else unknown.
fn any_of(
    to: &str,
    seen: &BTreeMap<String, LinkReach>,
    endpoint: bool,
    verdict: impl Fn(Reach, String) -> LinkJudgement,
) -> LinkJudgement {
    let name = |t: &str| {
        if endpoint {
            to.to_string()
        } else {
            format!("{to}/{t}")
        }
    };
    if let Some((t, _)) = seen.iter().find(|(_, r)| r.state == Reach::Up) {
        return verdict(Reach::Up, format!("{} is reachable", name(t)));
    }
    if !seen.is_empty() && seen.values().all(|r| r.state == Reach::Down) {
        let each = seen
            .iter()
            .map(|(t, r)| (name(t), because(r.detail.as_deref())))
            .collect::<Vec<_>>();
        let detail = match each.as_slice() {
            [(who, why)] => format!("{who} is unreachable{why}"),
            all => format!(
                "no target is reachable ({})",
                all.iter()
                    .map(|(who, why)| format!("{who}{why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        return verdict(Reach::Down, detail);
    }
    if seen.is_empty() {
        return verdict(Reach::Unknown, format!("{to} has no target to probe"));
    }
    verdict(Reach::Unknown, "not probed enough yet".into())
}

fn because(detail: Option<&str>) -> String {
    detail.map(|d| format!(": {d}")).unwrap_or_default()
}

/// The required links of `app` for the instance whose status is `from`,
/// judged as link failover counts them: each required link by its name,
/// except that the links of an exclusive group count as one, named
/// `group NAME`: up when any of its links is (the instance can use that
/// one), down when all are. A group is required when any of its links is.
pub fn judge_required<'r>(
    topology: &Topology,
    app: &str,
    from: Option<&InstanceStatus>,
    roles_of: impl Fn(&str) -> Option<&'r AppRoles>,
) -> Vec<(String, LinkJudgement)> {
    let mut out: Vec<(String, LinkJudgement)> = topology
        .links_from(app)
        .filter(|l| l.exclusive.is_none() && l.cardinality.is_required())
        .map(|l| (l.name.clone(), judge(topology, l, from, roles_of(&l.to))))
        .collect();
    for (group, links) in topology.exclusive_groups(app) {
        if !links.iter().any(|l| l.cardinality.is_required()) {
            continue;
        }
        let each: Vec<(&str, LinkJudgement)> = links
            .iter()
            .map(|l| (l.name.as_str(), judge(topology, l, from, roles_of(&l.to))))
            .collect();
        let merged = if let Some((name, j)) = each.iter().find(|(_, j)| j.state == Reach::Up) {
            LinkJudgement {
                state: Reach::Up,
                required: true,
                detail: format!("through {name}: {}", j.detail),
            }
        } else if each.iter().all(|(_, j)| j.state == Reach::Down) {
            LinkJudgement {
                state: Reach::Down,
                required: true,
                detail: each
                    .iter()
                    .map(|(name, j)| format!("{name}: {}", j.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        } else {
            LinkJudgement {
                state: Reach::Unknown,
                required: true,
                detail: "not judged yet".into(),
            }
        };
        out.push((format!("group {group}"), merged));
    }
    out
}
