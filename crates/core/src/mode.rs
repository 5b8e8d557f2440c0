//! What each HA mode means, in one place.
//!
//! The controller ([`crate::controller`]) and the agent's per-instance
//! machine ([`crate::instance`]) ask here how a mode runs its instances,
//! which role an instance has when it is not primary, which role a process
//! starts in, when it may run, and which reported status counts as fit for
//! the primary role. Everything here is a pure function of the mode (and of
//! the status or assignment it is asked about).
//!
//! | mode | [`Style`] | not primary | starts as |
//! | --- | --- | --- | --- |
//! | `warm-standby`, `hot-standby` | [`Style::Hooked`] | `backup` | `backup` |
//! | `cold-standby`, `singleton` | [`Style::OnGrant`] | `standby` | `primary` |
//! | `n-plus-1` | [`Style::OnAssign`] | `standby` | `active` |
//! | `none` | [`Style::Always`] | `active` | `active` |
//! | `pool` | [`Style::Always`] | `free` | `free` |

use crate::model::{InstanceStatus, Role};
use crate::topology::HaMode;

/// How a mode runs its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// All run; the primary role is given and taken through the hook.
    Hooked,
    /// An instance runs only while it holds the primary grant.
    OnGrant,
    /// An instance runs while it is assigned `active`.
    OnAssign,
    /// All run, always in the mode's one role.
    Always,
}

/// How `ha` runs its instances.
pub fn style(ha: HaMode) -> Style {
    match ha {
        HaMode::WarmStandby | HaMode::HotStandby => Style::Hooked,
        HaMode::ColdStandby | HaMode::Singleton => Style::OnGrant,
        HaMode::NPlus1 => Style::OnAssign,
        HaMode::None | HaMode::Pool => Style::Always,
    }
}

/// The role an instance of an app in `ha` mode has when it is not primary.
pub fn default_role(ha: HaMode) -> Role {
    match ha {
        HaMode::WarmStandby | HaMode::HotStandby => Role::Backup,
        HaMode::ColdStandby | HaMode::Singleton | HaMode::NPlus1 => Role::Standby,
        HaMode::None => Role::Active,
        HaMode::Pool => Role::Free,
    }
}

/// The role a process of an app in `ha` mode is started in (its
/// `TANDEM_ROLE`): on-grant modes start only a primary, `n-plus-1` only an
/// active member, the others start in their non-primary role.
pub fn spawn_role(ha: HaMode) -> Role {
    match style(ha) {
        Style::OnGrant => Role::Primary,
        Style::OnAssign => Role::Active,
        Style::Hooked | Style::Always => default_role(ha),
    }
}

/// True if the instances of `ha` report whether they are busy (pool
/// workers: `free` or `busy`).
pub fn reports_load(ha: HaMode) -> bool {
    ha == HaMode::Pool
}

impl Style {
    /// Whether a process assigned `role` may run (start, or go on running).
    /// `granted` matters to on-grant modes only: the assignment's grant
    /// names this process (its incarnation and its agent's session) and its
    /// agent is not fencing.
    pub fn runs(self, role: Role, granted: bool) -> bool {
        match self {
            Style::Hooked | Style::Always => true,
            Style::OnGrant => role == Role::Primary && granted,
            Style::OnAssign => role == Role::Active,
        }
    }

    /// Whether an instance reporting `s` could take the primary role now:
    /// on-grant modes, its process is not live (a grant starts it; a
    /// crash-looping one is accepted, its agent paces the start with its
    /// backoff); hooked modes, it runs, healthy and not crash-looping.
    pub fn fit(self, s: &InstanceStatus) -> bool {
        match self {
            Style::OnGrant => !s.process.is_live(),
            _ => s.eligible(),
        }
    }

    /// True if an instance reporting `s` may be acting as primary, with or
    /// without a grant: on-grant modes, its process is live; hooked modes,
    /// it runs and reports the primary role.
    pub fn may_act(self, s: &InstanceStatus) -> bool {
        match self {
            Style::OnGrant => s.process.is_live(),
            _ => s.may_act_as_primary(),
        }
    }

    /// The incarnation a grant to an instance reporting `s` names: the one
    /// its agent starts next (on-grant modes), else the running one.
    pub fn granted_incarnation(self, s: &InstanceStatus) -> u64 {
        match self {
            Style::OnGrant => s.incarnation + 1,
            _ => s.incarnation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_the_style_and_roles_of_the_table() {
        use HaMode::*;
        use Role::*;
        let table = [
            (WarmStandby, Style::Hooked, Backup, Backup),
            (HotStandby, Style::Hooked, Backup, Backup),
            (ColdStandby, Style::OnGrant, Standby, Primary),
            (Singleton, Style::OnGrant, Standby, Primary),
            (NPlus1, Style::OnAssign, Standby, Active),
            (None, Style::Always, Active, Active),
            (Pool, Style::Always, Free, Free),
        ];
        assert_eq!(table.len(), HaMode::ALL.len());
        for (ha, s, not_primary, starts_as) in table {
            assert_eq!(
                (style(ha), default_role(ha), spawn_role(ha)),
                (s, not_primary, starts_as),
                "{ha}"
            );
            assert_eq!(reports_load(ha), ha == Pool, "{ha}");
        }
    }

    #[test]
    fn only_on_grant_and_on_assign_modes_wait_for_their_role_to_run() {
        for role in Role::ALL {
            for granted in [false, true] {
                assert!(Style::Hooked.runs(role, granted));
                assert!(Style::Always.runs(role, granted));
                assert_eq!(
                    Style::OnGrant.runs(role, granted),
                    role == Role::Primary && granted
                );
                assert_eq!(Style::OnAssign.runs(role, granted), role == Role::Active);
            }
        }
    }
}
