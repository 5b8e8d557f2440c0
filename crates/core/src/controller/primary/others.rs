//! Step 4: every instance but the primary has the mode's non-primary role.

use super::Pass;
use crate::controller::{assign_roles, default_role};
use crate::model::Role;

impl Pass<'_, '_> {
    /// Assigns `primary` to the grant's holder and the mode's default role
    /// to every other instance of the topology.
    pub(super) fn assign_others(&mut self) {
        let app = self.input.app;
        let primary = self.next.primary.as_ref().map(|g| g.instance.as_str());
        let other = default_role(app.ha);
        let role_of = |id: &str| {
            if Some(id) == primary {
                Role::Primary
            } else {
                other
            }
        };
        assign_roles(&mut self.next.roles, app, role_of);
    }
}
