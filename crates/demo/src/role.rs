//! The roles tandem hands to an instance, as the demo app understands them.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// What an instance is doing now, as told by tandem's agent (`TANDEM_ROLE`
/// or a role hook). Spelled in lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Acting as the one primary of its app.
    Primary,
    /// Running, not serving; takes over when the primary fails.
    Backup,
    /// Stopped, cold spare.
    Standby,
    /// Serving as one member of an N+1 group.
    Active,
    /// Pool worker waiting for work.
    Free,
    /// Pool worker busy with work.
    Busy,
    /// Stopped on purpose.
    Stopped,
    /// Stopped by a failure.
    Failed,
    /// Must not act: told so by tandem, or self-fenced after a freeze.
    Fenced,
}

impl Role {
    /// Every role, in the order of [`Role::as_str`]'s documentation.
    pub const ALL: [Role; 9] = [
        Role::Primary,
        Role::Backup,
        Role::Standby,
        Role::Active,
        Role::Free,
        Role::Busy,
        Role::Stopped,
        Role::Failed,
        Role::Fenced,
    ];

    /// The wire spelling: `primary`, `backup`, `standby`, `active`, `free`,
    /// `busy`, `stopped`, `failed` or `fenced`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Standby => "standby",
            Role::Active => "active",
            Role::Free => "free",
            Role::Busy => "busy",
            Role::Stopped => "stopped",
            Role::Failed => "failed",
            Role::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}: expected one of primary, backup, standby, active, free, busy, stopped, failed, fenced"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_wire_spelling() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
    }

    #[test]
    fn unknown_role_names_the_valid_ones() {
        let err = "master".parse::<Role>().unwrap_err();
        assert_eq!(err, UnknownRole("master".into()));
        assert!(err.to_string().contains("expected one of primary, backup"));
    }

    #[test]
    fn roles_are_case_sensitive() {
        assert!("Primary".parse::<Role>().is_err());
    }
}
