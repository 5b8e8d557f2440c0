//! Step 4: every instance but the primary has the mode's non-primary role.

use super::Pass;
use crate::controller::default_role;
use crate::model::Role;

impl Pass<'_, '_> {
    /// Assigns `primary` to the grant's holder and the mode's default role
    /// to every other instance of the topology.
    pub(super) fn assign_others(&mut self) {
        let app = self.input.app;
        let primary = self.next.primary.as_ref().map(|g| g.instance.clone());
        let other = default_role(app.ha);
        self.next.roles = app
            .instances
            .iter()
            .map(|i| {
                let role = if Some(&i.id) == primary.as_ref() {
                    Role::Primary
                } else {
                    other
                };
                (i.id.clone(), role)
            })
            .collect();
    }
}
