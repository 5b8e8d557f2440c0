//! The local instances: built from the topology at the first session, and
//! changed per instance when a new topology arrives.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{HostAction, HostMachine, HostNote, HostStep, Local};
use crate::instance::{GroupSpec, Input, InstanceMachine, InstanceSpec, LinkSpec, assignment};
use crate::topology::{App, Instance, Topology};

impl HostMachine {
    /// Creates every local instance of the topology (not started: the
    /// first [`super::HostInput::Begin`] or assignment starts them).
    pub(super) fn build(&mut self, session: i64, step: &mut HostStep) {
        self.built = true;
        let topology = self.topology.clone();
        let host = self.host.clone();
        for (app, instance) in topology.instances_on(&host) {
            self.add_local(Arc::new(app.clone()), instance.clone(), session, step);
        }
    }

    /// Adds a local instance (not started).
    fn add_local(
        &mut self,
        app: Arc<App>,
        instance: Instance,
        session: i64,
        step: &mut HostStep,
    ) -> usize {
        let idx = self.locals.len();
        self.by_app.entry(app.name.clone()).or_default().push(idx);
        let mut machine = InstanceMachine::new(InstanceSpec {
            name: format!("{}/{}", app.name, instance.id),
            host: self.host.clone(),
            ha: app.ha,
            has_hook: app.hook.is_some(),
            restart: app.restart.clone(),
            checks: app
                .checks
                .iter()
                .map(|c| (c.failures_before_unhealthy, c.successes_before_healthy))
                .collect(),
            session,
        });
        machine.set_links(LinkSpec::of_app(&self.topology, &app.name));
        machine.set_groups(GroupSpec::of_app(&self.topology, &app.name));
        self.locals.push(Local {
            app,
            instance,
            machine,
            fenced: false,
            retired: false,
            replacement: None,
            gone: false,
        });
        step.actions.push(HostAction::Added(idx));
        step.touched.insert(idx);
        idx
    }

    /// Applies a new topology (same cluster settings and host record):
    /// only what changed is stopped, restarted or started.
    pub(super) fn on_topology(&mut self, new: Arc<Topology>, now: Duration, step: &mut HostStep) {
        let wanted: Vec<(App, Instance)> = new
            .instances_on(&self.host)
            .map(|(a, i)| (a.clone(), i.clone()))
            .collect();
        // An app's own settings, whatever its instances elsewhere.
        let spec = |a: &App| App {
            instances: Vec::new(),
            ..a.clone()
        };
        let mut kept = BTreeSet::new();
        for i in 0..self.locals.len() {
            if self.locals[i].retired {
                continue;
            }
            let (name, id) = (
                self.locals[i].app.name.clone(),
                self.locals[i].instance.id.clone(),
            );
            let found = wanted
                .iter()
                .find(|(a, inst)| a.name == name && inst.id == id);
            let instance = format!("{name}/{id}");
            match found {
                Some((app, inst))
                    if spec(app) == spec(&self.locals[i].app)
                        && *inst == self.locals[i].instance =>
                {
                    self.locals[i].app = Arc::new(app.clone());
                    kept.insert((name, id));
                }
                Some((app, inst)) => {
                    step.notes.push(HostNote::SettingsChanged { instance });
                    self.retire(i, Some((Arc::new(app.clone()), inst.clone())), now, step);
                    kept.insert((name, id));
                }
                None => {
                    step.notes.push(HostNote::LeftTopology { instance });
                    self.retire(i, None, now, step);
                }
            }
        }
        self.topology = new;
        // Links may change without the instances' own settings: each kept
        // instance tracks the new set (what it saw of unchanged links
        // stays), and publishes if that changed its status.
        for i in 0..self.locals.len() {
            let l = &mut self.locals[i];
            if l.retired {
                continue;
            }
            l.machine
                .set_groups(GroupSpec::of_app(&self.topology, &l.app.name));
            let specs = LinkSpec::of_app(&self.topology, &l.app.name);
            if l.machine.link_specs().ne(specs.iter()) {
                l.machine.set_links(specs);
                step.actions
                    .push(HostAction::Instance(i, crate::instance::Action::Publish));
                step.touched.insert(i);
            }
        }
        let session = self.session.unwrap_or_default();
        for (app, inst) in wanted {
            if kept.contains(&(app.name.clone(), inst.id.clone())) {
                continue;
            }
            step.notes.push(HostNote::JoinedTopology {
                instance: format!("{}/{}", app.name, inst.id),
            });
            let i = self.add_local(Arc::new(app), inst, session, step);
            self.start_local(i, now, step);
        }
        self.by_app.clear();
        for (i, l) in self.locals.iter().enumerate() {
            if !l.retired {
                self.by_app.entry(l.app.name.clone()).or_default().push(i);
            }
        }
    }

    /// Stops local `i` for good; `replacement` starts once it has stopped.
    fn retire(
        &mut self,
        i: usize,
        replacement: Option<(Arc<App>, Instance)>,
        now: Duration,
        step: &mut HostStep,
    ) {
        self.locals[i].retired = true;
        self.locals[i].replacement = replacement;
        self.retiring += 1;
        self.feed(i, Input::Stop, now, step);
    }

    /// Starts a just-added local instance: fenced if the host is, told its
    /// app's current assignment, then ticked.
    fn start_local(&mut self, i: usize, now: Duration, step: &mut HostStep) {
        if self.session_fenced || self.session.is_none() {
            self.locals[i].fenced = true;
            self.feed(i, Input::Fence, now, step);
        }
        let app = self.locals[i].app.name.clone();
        if let Some(roles) = self.roles.get(&app) {
            let l = &self.locals[i];
            let input = assignment(roles, l.app.ha, &l.instance.id);
            self.feed(i, input, now, step);
        }
        self.feed(i, Input::Tick, now, step);
    }

    /// Retired instances that have stopped: starts their replacements, and
    /// removes the status of those gone from the topology.
    pub(super) fn replace_stopped(&mut self, now: Duration, step: &mut HostStep) {
        if self.stopping || self.retiring == 0 {
            return;
        }
        for i in 0..self.locals.len() {
            let l = &mut self.locals[i];
            if !l.retired || l.gone || !l.machine.is_stopped() {
                continue;
            }
            l.gone = true;
            self.retiring -= 1;
            step.touched.insert(i);
            match l.replacement.take() {
                Some((app, inst)) => {
                    let session = self.session.unwrap_or_default();
                    let j = self.add_local(app, inst, session, step);
                    self.start_local(j, now, step);
                }
                None => step.actions.push(HostAction::Removed(i)),
            }
        }
    }
}
