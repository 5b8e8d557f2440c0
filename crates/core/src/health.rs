//! Health-check hysteresis: one slow answer must neither fail an instance
//! over nor bring a flapping one back.
//!
//! Each check has its own [`CheckTracker`]; an instance is healthy when all
//! of them are ([`combine`]).

use crate::model::Health;

/// Counts consecutive results of one check and turns them into a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTracker {
    failures_before_unhealthy: u32,
    successes_before_healthy: u32,
    state: Health,
    consecutive_ok: u32,
    consecutive_fail: u32,
    last_failure: Option<String>,
}

impl CheckTracker {
    /// A tracker that turns unhealthy after `failures` consecutive failures
    /// and healthy after `successes` consecutive successes (both at least 1).
    pub fn new(failures: u32, successes: u32) -> CheckTracker {
        CheckTracker {
            failures_before_unhealthy: failures.max(1),
            successes_before_healthy: successes.max(1),
            state: Health::Unknown,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_failure: None,
        }
    }

    /// Forgets every result: a new process starts unknown.
    pub fn reset(&mut self) {
        self.state = Health::Unknown;
        self.consecutive_ok = 0;
        self.consecutive_fail = 0;
        self.last_failure = None;
    }

    /// Records one result; returns true if the verdict changed.
    pub fn record(&mut self, result: Result<(), String>) -> bool {
        let before = self.state;
        match result {
            Ok(()) => {
                self.consecutive_fail = 0;
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                if self.consecutive_ok >= self.successes_before_healthy {
                    self.state = Health::Healthy;
                    self.last_failure = None;
                }
            }
            Err(why) => {
                self.consecutive_ok = 0;
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.last_failure = Some(why);
                if self.consecutive_fail >= self.failures_before_unhealthy {
                    self.state = Health::Unhealthy;
                }
            }
        }
        self.state != before
    }

    /// The current verdict.
    pub fn health(&self) -> Health {
        self.state
    }

    /// The reason of the last failure, while it counts.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }
}

/// Combines verdicts: unhealthy if any check is, healthy if all are (or
/// there are none), unknown otherwise.
pub fn combine<'a>(trackers: impl IntoIterator<Item = &'a CheckTracker>) -> Health {
    let mut all_healthy = true;
    for t in trackers {
        match t.health() {
            Health::Unhealthy => return Health::Unhealthy,
            Health::Unknown => all_healthy = false,
            Health::Healthy => {}
        }
    }
    if all_healthy {
        Health::Healthy
    } else {
        Health::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), String> {
        Err("timeout".into())
    }

    #[test]
    fn one_slow_answer_does_not_make_a_healthy_instance_unhealthy() {
        let mut t = CheckTracker::new(3, 2);
        t.record(Ok(()));
        t.record(Ok(()));
        assert_eq!(t.health(), Health::Healthy);
        assert!(!t.record(fail()));
        assert!(!t.record(fail()));
        assert_eq!(t.health(), Health::Healthy);
        t.record(Ok(()));
        assert!(!t.record(fail()));
        assert!(!t.record(fail()));
        assert_eq!(
            t.health(),
            Health::Healthy,
            "the count restarts after a success"
        );
        assert!(t.record(fail()));
        assert_eq!(t.health(), Health::Unhealthy);
        assert_eq!(t.last_failure(), Some("timeout"));
    }

    #[test]
    fn a_flapping_instance_does_not_come_back_on_one_success() {
        let mut t = CheckTracker::new(1, 3);
        t.record(fail());
        assert_eq!(t.health(), Health::Unhealthy);
        for _ in 0..5 {
            t.record(Ok(()));
            t.record(Ok(()));
            t.record(fail());
            assert_eq!(t.health(), Health::Unhealthy);
        }
        t.record(Ok(()));
        t.record(Ok(()));
        assert!(t.record(Ok(())));
        assert_eq!(t.health(), Health::Healthy);
    }

    #[test]
    fn combine_takes_the_worst() {
        let mut a = CheckTracker::new(1, 1);
        let mut b = CheckTracker::new(1, 1);
        assert_eq!(combine([&a, &b]), Health::Unknown);
        a.record(Ok(()));
        assert_eq!(combine([&a, &b]), Health::Unknown);
        b.record(Ok(()));
        assert_eq!(combine([&a, &b]), Health::Healthy);
        b.record(fail());
        assert_eq!(combine([&a, &b]), Health::Unhealthy);
        assert_eq!(combine([]), Health::Healthy);
    }

    #[test]
    fn reset_forgets() {
        let mut t = CheckTracker::new(1, 1);
        t.record(fail());
        t.reset();
        assert_eq!(t.health(), Health::Unknown);
        assert_eq!(t.last_failure(), None);
    }
}
