//! The demo app's state: its role and epoch, the rules for changing them,
//! and self-fencing after a freeze.
//!
//! # Freeze detection
//!
//! A dedicated thread ([`crate::ticker`]) stores the monotonic time in
//! `last_tick_ms` every 10 ms. A gap longer than the freeze threshold means
//! the process (or at least that thread) did not run for that long: a
//! SIGSTOP, a long pause, a starved machine. A primary that was frozen may
//! have been replaced meanwhile, so it fences itself.
//!
//! Two places notice a freeze, and both fence *before* anything else is
//! answered:
//!
//! - the ticker, when it sees the gap between two of its ticks; it fences
//!   first and only then stores the new tick;
//! - every request, when it sees that the last tick is older than the
//!   threshold (the ticker has not run yet since the resume).
//!
//! Because the ticker fences (under the state lock) before it stores the
//! fresh tick, a request that loads the fresh tick also sees the fence; a
//! request that loads the old tick fences by itself. A request frozen while
//! it is being handled is caught by [`Shared::snapshot_checked`], which
//! compares the time before and after it reads the state.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::journal::Journal;
use crate::role::{Role, UnknownRole};

/// Milliseconds since the Unix epoch, 0 if the clock is before it.
pub(crate) fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What `GET /` answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    pub app: String,
    pub instance: String,
    /// The role to report: `fenced` while self-fenced.
    pub role: Role,
    pub epoch: u64,
    pub pid: u32,
    /// Unix ms of the last change of the reported role.
    pub since_ms: u64,
}

/// A role hook as it arrives over HTTP or in the role file. Unknown fields
/// are ignored; `app` and `instance` are optional, but when present they
/// must name this instance.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct HookBody {
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    pub role: String,
    pub epoch: u64,
}

/// Why a role hook was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("invalid role hook: {0}")]
    BadBody(String),
    #[error(transparent)]
    UnknownRole(#[from] UnknownRole),
    #[error("role hook for {hook_app}/{hook_instance} sent to {app}/{instance}")]
    WrongTarget {
        hook_app: String,
        hook_instance: String,
        app: String,
        instance: String,
    },
    #[error(
        "stale role hook: epoch {hook_epoch} is lower than the current epoch {current_epoch}; \
         an instance never goes back to an older epoch"
    )]
    Stale {
        hook_epoch: u64,
        current_epoch: u64,
        current: Box<Snapshot>,
    },
}

struct Inner {
    role: Role,
    epoch: u64,
    since_ms: u64,
    self_fenced: bool,
}

impl Inner {
    fn reported_role(&self) -> Role {
        if self.self_fenced {
            Role::Fenced
        } else {
            self.role
        }
    }
}

/// Everything the HTTP handlers, the signal loop and the ticker share.
pub(crate) struct Shared {
    pub app: String,
    pub instance: String,
    pid: u32,
    base: Instant,
    threshold_ms: u64,
    /// Monotonic ms (since `base`) of the ticker's last tick.
    last_tick_ms: AtomicU64,
    /// Set by `POST /hang`: every request hangs from then on.
    pub hung: AtomicBool,
    /// Set by `POST /unhealthy`, cleared by `POST /healthy`.
    pub unhealthy: AtomicBool,
    inner: Mutex<Inner>,
    journal: Option<Journal>,
}

impl Shared {
    /// A fresh state whose last tick is now.
    pub(crate) fn new(
        app: String,
        instance: String,
        role: Role,
        epoch: u64,
        freeze_threshold_ms: u64,
        journal: Option<Journal>,
    ) -> Self {
        Self {
            app,
            instance,
            pid: std::process::id(),
            base: Instant::now(),
            threshold_ms: freeze_threshold_ms,
            last_tick_ms: AtomicU64::new(0),
            hung: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                role,
                epoch,
                since_ms: unix_ms(),
                self_fenced: false,
            }),
            journal,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, event: &str, role: Role, epoch: u64, extra: Map<String, Value>) {
        if let Some(journal) = &self.journal {
            journal.record(event, role, epoch, extra);
        }
    }

    /// Monotonic milliseconds since this state was created.
    pub(crate) fn mono_ms(&self) -> u64 {
        duration_ms(self.base.elapsed())
    }

    fn snapshot_of(&self, inner: &Inner) -> Snapshot {
        Snapshot {
            app: self.app.clone(),
            instance: self.instance.clone(),
            role: inner.reported_role(),
            epoch: inner.epoch,
            pid: self.pid,
            since_ms: inner.since_ms,
        }
    }

    /// The current state, without any freeze check.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.snapshot_of(&self.lock())
    }

    /// The state, guaranteed not to be a primary's state from before a
    /// freeze longer than the threshold: checks the tick first, and fences
    /// and reads again if handling took longer than the threshold (the
    /// process was frozen between the check and the read).
    pub(crate) fn snapshot_checked(&self) -> Snapshot {
        self.check_tick("request");
        let before_ms = self.mono_ms();
        let snapshot = self.snapshot();
        let after_ms = self.mono_ms();
        let handling_ms = after_ms.saturating_sub(before_ms);
        if handling_ms > self.threshold_ms {
            self.freeze_detected(handling_ms, "request");
            return self.snapshot();
        }
        snapshot
    }

    /// Called by every request before anything else: fences a primary if
    /// the ticker has not ticked for longer than the threshold.
    pub(crate) fn check_tick(&self, detected_by: &str) {
        let now_ms = self.mono_ms();
        let last_ms = self.last_tick_ms.load(Ordering::SeqCst);
        let gap_ms = now_ms.saturating_sub(last_ms);
        if gap_ms > self.threshold_ms {
            self.freeze_detected(gap_ms, detected_by);
        }
    }

    /// One tick of the ticker thread: fences if the gap since the previous
    /// tick exceeds the threshold, THEN publishes the new tick.
    pub(crate) fn tick(&self) {
        let now_ms = self.mono_ms();
        let last_ms = self.last_tick_ms.load(Ordering::SeqCst);
        let gap_ms = now_ms.saturating_sub(last_ms);
        if gap_ms > self.threshold_ms {
            self.freeze_detected(gap_ms, "ticker");
        }
        // Only after the fence: a request that sees this tick sees the fence.
        self.last_tick_ms.fetch_max(now_ms, Ordering::SeqCst);
    }

    /// The process did not run for `frozen_ms`: a primary fences itself.
    fn freeze_detected(&self, frozen_ms: u64, detected_by: &str) {
        let mut inner = self.lock();
        if inner.self_fenced || inner.role != Role::Primary {
            return;
        }
        inner.self_fenced = true;
        inner.since_ms = unix_ms();
        tracing::warn!(
            app = %self.app,
            instance = %self.instance,
            epoch = inner.epoch,
            frozen_ms,
            detected_by,
            "self-fenced: frozen for {frozen_ms} ms while primary (threshold {} ms); \
             no longer acting as primary until the next role hook",
            self.threshold_ms
        );
        let mut extra = Map::new();
        extra.insert("frozen_ms".into(), json!(frozen_ms));
        extra.insert("threshold_ms".into(), json!(self.threshold_ms));
        extra.insert("detected_by".into(), json!(detected_by));
        extra.insert("previous_role".into(), json!(inner.role));
        self.record("fenced", Role::Fenced, inner.epoch, extra);
    }

    /// Appends an `acting` journal line if this instance acts as primary
    /// now. Called by the ticker every 100 ms, after its freeze check.
    pub(crate) fn record_acting(&self) {
        // A freeze since the last tick must not yield an `acting` line.
        self.check_tick("ticker");
        let inner = self.lock();
        if inner.role == Role::Primary && !inner.self_fenced {
            self.record("acting", Role::Primary, inner.epoch, Map::new());
        }
    }

    /// Appends a `notification` journal line (number `seq`) if this
    /// instance acts as primary now: what a scheduler daemon sends.
    pub(crate) fn record_notification(&self, seq: u64) -> bool {
        self.check_tick("ticker");
        let inner = self.lock();
        if inner.role == Role::Primary && !inner.self_fenced {
            let mut extra = Map::new();
            extra.insert("seq".into(), Value::from(seq));
            self.record("notification", Role::Primary, inner.epoch, extra);
            true
        } else {
            false
        }
    }

    /// Appends a journal line `event` with the current role and epoch.
    pub(crate) fn record_event(&self, event: &str, extra: Map<String, Value>) {
        let inner = self.lock();
        self.record(event, inner.reported_role(), inner.epoch, extra);
    }

    /// Records the `start` line.
    pub(crate) fn record_start(&self) {
        let inner = self.lock();
        self.record("start", inner.reported_role(), inner.epoch, Map::new());
    }

    /// Records the `exit` line, with the reason (e.g. `SIGTERM`).
    pub(crate) fn record_exit(&self, reason: &str) {
        let inner = self.lock();
        let mut extra = Map::new();
        extra.insert("reason".into(), json!(reason));
        self.record("exit", inner.reported_role(), inner.epoch, extra);
    }

    /// Applies a role hook (HTTP or role file, named by `source`).
    ///
    /// A lower epoch than the current one is refused; the same epoch with
    /// another role (a demotion) is accepted. An accepted hook clears
    /// self-fencing.
    pub(crate) fn apply_hook(&self, hook: &HookBody, source: &str) -> Result<Snapshot, HookError> {
        let role: Role = hook.role.parse()?;
        let app_differs = hook.app.as_deref().is_some_and(|a| a != self.app);
        let instance_differs = hook.instance.as_deref().is_some_and(|i| i != self.instance);
        if app_differs || instance_differs {
            return Err(HookError::WrongTarget {
                hook_app: hook.app.clone().unwrap_or_else(|| self.app.clone()),
                hook_instance: hook
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.instance.clone()),
                app: self.app.clone(),
                instance: self.instance.clone(),
            });
        }
        let mut inner = self.lock();
        if hook.epoch < inner.epoch {
            return Err(HookError::Stale {
                hook_epoch: hook.epoch,
                current_epoch: inner.epoch,
                current: Box::new(self.snapshot_of(&inner)),
            });
        }
        let before = (inner.reported_role(), inner.epoch);
        inner.role = role;
        inner.epoch = hook.epoch;
        inner.self_fenced = false;
        if before != (role, hook.epoch) {
            inner.since_ms = unix_ms();
        }
        tracing::info!(
            app = %self.app,
            instance = %self.instance,
            source,
            "role {} (epoch {}) -> {role} (epoch {})",
            before.0,
            before.1,
            hook.epoch
        );
        let mut extra = Map::new();
        extra.insert("source".into(), json!(source));
        extra.insert("previous_role".into(), json!(before.0));
        extra.insert("previous_epoch".into(), json!(before.1));
        self.record("role", role, hook.epoch, extra);
        Ok(self.snapshot_of(&inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(role: Role, epoch: u64) -> Shared {
        Shared::new("web".into(), "a".into(), role, epoch, 500, None)
    }

    fn hook(role: &str, epoch: u64) -> HookBody {
        HookBody {
            app: None,
            instance: None,
            role: role.into(),
            epoch,
        }
    }

    #[test]
    fn higher_epoch_hook_promotes() {
        let s = shared(Role::Backup, 3);
        let snap = s.apply_hook(&hook("primary", 4), "test").unwrap();
        assert_eq!((snap.role, snap.epoch), (Role::Primary, 4));
    }

    #[test]
    fn same_epoch_demotion_is_accepted() {
        let s = shared(Role::Primary, 4);
        let snap = s.apply_hook(&hook("backup", 4), "test").unwrap();
        assert_eq!((snap.role, snap.epoch), (Role::Backup, 4));
    }

    #[test]
    fn lower_epoch_hook_is_stale_and_changes_nothing() {
        let s = shared(Role::Backup, 4);
        let err = s.apply_hook(&hook("primary", 3), "test").unwrap_err();
        assert!(matches!(
            err,
            HookError::Stale {
                hook_epoch: 3,
                current_epoch: 4,
                ..
            }
        ));
        assert_eq!(s.snapshot().role, Role::Backup);
    }

    #[test]
    fn unknown_role_is_refused() {
        let s = shared(Role::Backup, 4);
        let err = s.apply_hook(&hook("master", 5), "test").unwrap_err();
        assert!(matches!(err, HookError::UnknownRole(_)));
        assert_eq!(s.snapshot().epoch, 4);
    }

    #[test]
    fn hook_for_another_instance_is_refused() {
        let s = shared(Role::Backup, 4);
        let mut h = hook("primary", 5);
        h.instance = Some("b".into());
        let err = s.apply_hook(&h, "test").unwrap_err();
        assert!(err.to_string().contains("web/b sent to web/a"), "{err}");
    }

    #[test]
    fn freeze_fences_a_primary_until_the_next_hook() {
        let s = shared(Role::Primary, 4);
        s.freeze_detected(600, "test");
        assert_eq!(s.snapshot().role, Role::Fenced);
        assert_eq!(s.snapshot().epoch, 4);
        let snap = s.apply_hook(&hook("primary", 4), "test").unwrap();
        assert_eq!(snap.role, Role::Primary);
    }

    #[test]
    fn request_fences_when_the_ticker_has_not_ticked_within_the_threshold() {
        let s = Shared::new("web".into(), "a".into(), Role::Primary, 4, 50, None);
        s.tick();
        assert_eq!(s.snapshot_checked().role, Role::Primary);
        // No ticker thread here: the last tick ages past the threshold.
        std::thread::sleep(Duration::from_millis(80));
        let snap = s.snapshot_checked();
        assert_eq!((snap.role, snap.epoch), (Role::Fenced, 4));
    }

    #[test]
    fn ticker_fences_on_a_gap_before_publishing_the_new_tick() {
        let s = Shared::new("web".into(), "a".into(), Role::Primary, 4, 50, None);
        std::thread::sleep(Duration::from_millis(80));
        s.tick();
        // The fresh tick would pass the request check: the fence must be there.
        assert_eq!(s.snapshot_checked().role, Role::Fenced);
    }

    #[test]
    fn freeze_leaves_a_backup_alone() {
        let s = shared(Role::Backup, 4);
        s.freeze_detected(600, "test");
        assert_eq!(s.snapshot().role, Role::Backup);
    }
}
