//! Followers of apps pinned to the active site: the local instances of an
//! app with a hooked link to a pinned app are told, through that link's
//! hook, when the pinned app becomes read-only (`read-only`: its active
//! site is lost) and writable again (`read-write`). What to tell is
//! decided by [`tandem_core::sites::follower_notices`]; this keeps what
//! was told to which incarnation, runs the hooks one at a time per link,
//! and retries a failed one on the next tick.

use std::collections::{BTreeMap, BTreeSet};

/// What the agent knows and told.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    /// Which pinned apps are read-only now (from their role assignments).
    read_only: BTreeMap<String, bool>,
    /// Per (local, link): the incarnation told and what it was told.
    told: BTreeMap<(usize, String), (u64, bool)>,
    /// Hooks under way.
    running: BTreeSet<(usize, String)>,
    /// Failures already warned about, per (local, link): (incarnation,
    /// read-only), so a retried failure is warned about once.
    warned: BTreeMap<(usize, String), (u64, bool)>,
}

impl Followers {
    /// Takes `app`'s read-only state from its new role assignment; true if
    /// it changed.
    pub(crate) fn set(&mut self, app: &str, read_only: bool) -> bool {
        self.read_only.insert(app.to_string(), read_only) != Some(read_only)
    }

    /// Whether `app` is read-only now.
    pub(crate) fn is_read_only(&self, app: &str) -> bool {
        self.read_only.get(app).copied().unwrap_or(false)
    }

    /// What local `i` (of `app`, running as `incarnation`) must be told
    /// now, without the links whose hook is under way.
    pub(crate) fn due(
        &self,
        topology: &tandem_core::topology::Topology,
        i: usize,
        app: &str,
        incarnation: u64,
    ) -> Vec<(String, bool)> {
        tandem_core::sites::follower_notices(
            topology,
            app,
            incarnation,
            |to| self.is_read_only(to),
            |link| self.told.get(&(i, link.to_string())).copied(),
        )
        .into_iter()
        .filter(|(link, _)| !self.running.contains(&(i, link.clone())))
        .collect()
    }

    /// A hook of local `i` on `link` started.
    pub(crate) fn started(&mut self, i: usize, link: &str) {
        self.running.insert((i, link.to_string()));
    }

    /// A hook ended: on success, what was told is kept; true if a failure
    /// is worth a warning (the first for this incarnation and state).
    pub(crate) fn done(
        &mut self,
        i: usize,
        link: &str,
        incarnation: u64,
        read_only: bool,
        ok: bool,
    ) -> bool {
        let key = (i, link.to_string());
        self.running.remove(&key);
        if ok {
            self.told.insert(key.clone(), (incarnation, read_only));
            self.warned.remove(&key);
            false
        } else {
            self.warned.insert(key, (incarnation, read_only)) != Some((incarnation, read_only))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_warned_about_once_per_state_and_a_success_is_kept() {
        let mut f = Followers::default();
        assert!(f.set("conf", true));
        assert!(!f.set("conf", true));
        f.started(0, "l");
        assert!(f.done(0, "l", 1, true, false), "first failure warned");
        f.started(0, "l");
        assert!(
            !f.done(0, "l", 1, true, false),
            "the same failure again: quiet"
        );
        assert!(f.done(0, "l", 2, true, false), "a new incarnation: warned");
        assert!(!f.done(0, "l", 2, true, true));
        assert_eq!(f.told.get(&(0, "l".to_string())), Some(&(2, true)));
        assert!(f.running.is_empty());
    }
}
