//! Watchdog deadlines: every process that may act as primary is armed with
//! the moment its role can end, so that a frozen agent cannot keep it
//! acting past that.

use std::time::Duration;

use super::{HostAction, HostMachine, HostStep};

impl HostMachine {
    /// Arms, moves or disarms the watchdog for the locals `step` touched,
    /// and for every armed one if the lease's end or an extension moved.
    /// The watchdog kills a quarter margin before the end: after the agent
    /// would have fenced, before anyone else can be promoted.
    pub(super) fn arm_watchdog(
        &mut self,
        now: Duration,
        deadlines_moved: bool,
        step: &mut HostStep,
    ) {
        if !self.watchdog {
            return;
        }
        let mut check: Vec<usize> = step.touched.iter().copied().collect();
        if deadlines_moved {
            check.extend(self.armed.keys().copied());
            check.sort_unstable();
            check.dedup();
        }
        let quarter = self.topology.cluster.fence_margin / 4;
        for i in check {
            let l = &self.locals[i];
            let st = l.machine.status();
            let want = match st.pid {
                Some(pid) if st.may_act_as_primary() => {
                    let end = self.valid_for(&l.app.name).unwrap_or(now);
                    Some((pid, end.checked_sub(quarter).unwrap_or(end)))
                }
                _ => None,
            };
            let had = self.armed.get(&i).copied();
            if want == had {
                continue;
            }
            if let Some((old, _)) = had
                && want.is_none_or(|(pid, _)| pid != old)
            {
                step.actions.push(HostAction::Disarm { pgid: old });
            }
            match want {
                Some((pgid, deadline)) => {
                    step.actions.push(HostAction::Arm { pgid, deadline });
                    self.armed.insert(i, (pgid, deadline));
                }
                None => {
                    self.armed.remove(&i);
                }
            }
        }
    }
}
