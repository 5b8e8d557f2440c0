//! The builder's state: the job it is building, the jobs it finished, and
//! the rules for accepting a new one. No I/O but the journal; the HTTP
//! layer starts the build timer.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::journal::Journal;
use crate::role::Role;

/// How many finished jobs a worker remembers (to answer duplicates).
pub(crate) const MAX_REMEMBERED_JOBS: usize = 4096;
/// The longest job id.
pub(crate) const MAX_JOB_ID_CHARS: usize = 128;

/// Checks a job id: `[A-Za-z0-9_.-]{1,128}`.
pub(crate) fn check_job_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("job id is empty".into());
    }
    if id.len() > MAX_JOB_ID_CHARS {
        return Err(format!(
            "job id is {} characters long; at most {MAX_JOB_ID_CHARS} are allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "job id {id:?} contains {bad:?}; only A-Z a-z 0-9 _ . - are allowed"
        ));
    }
    Ok(())
}

/// What a build of `payload` yields: the same on every worker, so a job
/// rebuilt elsewhere after a crash gives the same result.
pub(crate) fn build_result(payload: &str) -> String {
    // FNV-1a, 64 bits: small, stable, no dependency.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in payload.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("built {} bytes, fnv1a {hash:016x}", payload.len())
}

/// The answer to a submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Submit {
    /// The build started now.
    Started,
    /// This worker is already building this very job.
    AlreadyRunning,
    /// This worker already built this job: its result.
    AlreadyDone(String),
    /// This worker is building another job (its id).
    Busy(String),
    /// The worker is shutting down.
    Stopping,
}

/// Where a job stands on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Being built.
    Running,
    /// Built: the result.
    Done(String),
}

struct Running {
    id: String,
    result: String,
}

#[derive(Default)]
struct Inner {
    running: Option<Running>,
    done: HashMap<String, String>,
    /// Ids of `done`, oldest first, to forget the oldest beyond the bound.
    done_order: VecDeque<String>,
    stopping: bool,
}

/// Everything the HTTP handlers and the build timers share.
pub(crate) struct Builder {
    pub app: String,
    pub instance: String,
    pub build_ms: u64,
    inner: Mutex<Inner>,
    journal: Option<Journal>,
}

impl Builder {
    /// A free worker that has built nothing yet.
    pub(crate) fn new(
        app: String,
        instance: String,
        build_ms: u64,
        journal: Option<Journal>,
    ) -> Self {
        Self {
            app,
            instance,
            build_ms,
            inner: Mutex::new(Inner::default()),
            journal,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, event: &str, busy: bool, job: Option<&str>, mut extra: Map<String, Value>) {
        if let Some(journal) = &self.journal {
            extra.insert("job".into(), json!(job));
            let role = if busy { Role::Busy } else { Role::Free };
            journal.record(event, role, 0, extra);
        }
    }

    /// The job being built, if any.
    pub(crate) fn current_job(&self) -> Option<String> {
        self.lock().running.as_ref().map(|r| r.id.clone())
    }

    /// How many finished jobs this worker remembers.
    pub(crate) fn done_count(&self) -> usize {
        self.lock().done.len()
    }

    /// Takes job `id` if this worker is free and has not built it already.
    /// On [`Submit::Started`] the caller must call [`Builder::finish`]
    /// after the build time.
    pub(crate) fn submit(&self, id: &str, payload: &str) -> Submit {
        let mut inner = self.lock();
        if let Some(result) = inner.done.get(id) {
            return Submit::AlreadyDone(result.clone());
        }
        if let Some(running) = &inner.running {
            return if running.id == id {
                Submit::AlreadyRunning
            } else {
                Submit::Busy(running.id.clone())
            };
        }
        if inner.stopping {
            return Submit::Stopping;
        }
        inner.running = Some(Running {
            id: id.to_owned(),
            result: build_result(payload),
        });
        let mut extra = Map::new();
        extra.insert("payload_bytes".into(), json!(payload.len()));
        self.record("build-started", true, Some(id), extra);
        tracing::info!(instance = %self.instance, job = id, "build started");
        Submit::Started
    }

    /// The build of `id` is over: journals `build-done`, then remembers the
    /// result and frees the worker. Does nothing if `id` is not the job
    /// being built or the worker is stopping (the build was abandoned).
    pub(crate) fn finish(&self, id: &str) {
        let mut inner = self.lock();
        if inner.stopping || inner.running.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        let Some(running) = inner.running.take() else {
            return;
        };
        // Journal first: whoever sees `done` can count the line.
        self.record("build-done", false, Some(id), Map::new());
        tracing::info!(instance = %self.instance, job = id, "build done");
        if inner.done_order.len() >= MAX_REMEMBERED_JOBS
            && let Some(oldest) = inner.done_order.pop_front()
        {
            inner.done.remove(&oldest);
        }
        inner.done_order.push_back(running.id.clone());
        inner.done.insert(running.id, running.result);
    }

    /// Where job `id` stands here, `None` if this worker does not know it.
    pub(crate) fn job(&self, id: &str) -> Option<JobState> {
        let inner = self.lock();
        if let Some(result) = inner.done.get(id) {
            return Some(JobState::Done(result.clone()));
        }
        match &inner.running {
            Some(running) if running.id == id => Some(JobState::Running),
            _ => None,
        }
    }

    /// Records the `start` line.
    pub(crate) fn record_start(&self) {
        let mut extra = Map::new();
        extra.insert("build_ms".into(), json!(self.build_ms));
        self.record("start", false, None, extra);
    }

    /// Stops taking and finishing jobs, and records the `exit` line with
    /// the reason and the job abandoned, if any.
    pub(crate) fn stop(&self, reason: &str) {
        let mut inner = self.lock();
        inner.stopping = true;
        let abandoned = inner.running.take().map(|r| r.id);
        if let Some(job) = &abandoned {
            tracing::warn!(instance = %self.instance, job, "stopping: build abandoned");
        }
        let mut extra = Map::new();
        extra.insert("reason".into(), json!(reason));
        self.record("exit", abandoned.is_some(), abandoned.as_deref(), extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> Builder {
        Builder::new("builder".into(), "a".into(), 10, None)
    }

    #[test]
    fn job_ids_follow_the_pattern() {
        for ok in ["j1", "A.b-c_9", &"x".repeat(128)] {
            assert_eq!(check_job_id(ok), Ok(()), "{ok}");
        }
        assert!(check_job_id("").is_err());
        assert!(check_job_id(&"x".repeat(129)).is_err());
        let err = check_job_id("a/b").unwrap_err();
        assert!(err.contains("'/'"), "{err}");
        assert!(check_job_id("é").is_err());
    }

    #[test]
    fn free_worker_starts_then_is_busy_for_others() {
        let b = builder();
        assert_eq!(b.submit("j1", "p"), Submit::Started);
        assert_eq!(b.current_job().as_deref(), Some("j1"));
        assert_eq!(b.submit("j1", "p"), Submit::AlreadyRunning);
        assert_eq!(b.submit("j2", "p"), Submit::Busy("j1".into()));
        assert_eq!(b.job("j1"), Some(JobState::Running));
        assert_eq!(b.job("j2"), None);
    }

    #[test]
    fn finished_job_is_answered_from_memory_and_frees_the_worker() {
        let b = builder();
        assert_eq!(b.submit("j1", "p"), Submit::Started);
        b.finish("j1");
        let result = build_result("p");
        assert_eq!(b.job("j1"), Some(JobState::Done(result.clone())));
        assert_eq!(b.submit("j1", "other"), Submit::AlreadyDone(result));
        assert_eq!(b.current_job(), None);
        assert_eq!(b.submit("j2", "q"), Submit::Started);
    }

    #[test]
    fn finish_of_another_job_changes_nothing() {
        let b = builder();
        assert_eq!(b.submit("j1", "p"), Submit::Started);
        b.finish("j0");
        assert_eq!(b.job("j1"), Some(JobState::Running));
    }

    #[test]
    fn stopping_abandons_the_build_and_refuses_new_jobs() {
        let b = builder();
        assert_eq!(b.submit("j1", "p"), Submit::Started);
        b.stop("test");
        b.finish("j1");
        assert_eq!(b.job("j1"), None);
        assert_eq!(b.submit("j2", "p"), Submit::Stopping);
    }

    #[test]
    fn memory_of_finished_jobs_is_bounded() {
        let b = builder();
        for n in 0..=MAX_REMEMBERED_JOBS {
            let id = format!("j{n}");
            assert_eq!(b.submit(&id, ""), Submit::Started);
            b.finish(&id);
        }
        assert_eq!(b.done_count(), MAX_REMEMBERED_JOBS);
        assert_eq!(b.job("j0"), None);
        assert!(b.job("j1").is_some());
    }

    #[test]
    fn result_depends_on_the_payload_only() {
        assert_eq!(build_result("abc"), build_result("abc"));
        assert_ne!(build_result("abc"), build_result("abd"));
    }
}
