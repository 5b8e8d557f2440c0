//! Pool dispatch (the WFM Builder): send *IS ALIVE* to every worker of a
//! pool, send the job only to a worker that answered alive **and free**,
//! follow it to completion, and send it again (same id) to another free
//! worker when the first one dies mid-job.
//!
//! The workers speak the protocol of `tandem_demo::pool`:
//!
//! - `GET /alive`: 200 `{"free":true}` from a free worker; 503 from a busy
//!   one; no answer from a dead one.
//! - `POST /jobs` `{"id","payload"}`: 202 `{"state":"running"}` accepted (or
//!   already building this id); 200 `{"state":"done","result"}` this id was
//!   already built there; 409 busy with another job.
//! - `GET /jobs/{id}`: 200 `{"state":"running"|"done","result"}`; 404 the
//!   worker does not know the job (it restarted).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_client::pool::DispatchError> {
//! use tandem_client::pool::{DispatchOptions, Dispatcher, Job, Worker, WorkerSource};
//! let workers = vec![
//!     Worker::new("a", "http://127.0.0.1:7501"),
//!     Worker::new("b", "http://127.0.0.1:7502"),
//! ];
//! let dispatcher = Dispatcher::new(WorkerSource::Static(workers), DispatchOptions::default());
//! let done = dispatcher.run(Job::new("schedule-42", "week 12")).await?;
//! println!("{} built by {}: {}", done.id, done.worker, done.result);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees and limits
//!
//! A job is sent to one worker at a time, and only again elsewhere once
//! that worker is taken for dead (its job polls failed `lost_after` times
//! in a row, or it answered 404 for the job, i.e. it restarted). A worker
//! never builds an id twice (it answers a duplicate from memory). A worker
//! that was only slow, not dead (frozen longer than `lost_after` polls),
//! may still finish a job that was meanwhile sent elsewhere: without a
//! shared store, a dead worker and a frozen one look the same.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::StatusCode;
use serde::Deserialize;
use tandem_core::model::Role;

use crate::{ApiClient, ClientError, root_cause};

/// Bound on the number of workers asked in one IS ALIVE round.
pub const MAX_WORKERS: usize = 1024;
/// Bound on the size of one answer read from a worker.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest job id a worker accepts.
const MAX_JOB_ID_CHARS: usize = 128;
/// Worker answers longer than this are cut in messages.
const MAX_MESSAGE_CHARS: usize = 200;

/// One pool worker: its instance name and where its HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Worker {
    /// The instance name (e.g. `b`).
    pub instance: String,
    /// The base URL of its HTTP API, `http://addr:port`.
    pub base_url: String,
}

impl Worker {
    /// A worker named `instance` serving at `base_url` (`http://addr:port`;
    /// a trailing `/` is dropped).
    pub fn new(instance: impl Into<String>, base_url: impl Into<String>) -> Worker {
        let base_url: String = base_url.into();
        Worker {
            instance: instance.into(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.instance, self.base_url)
    }
}

/// Where the dispatcher finds the pool's workers.
#[derive(Debug, Clone)]
pub enum WorkerSource {
    /// A fixed list.
    Static(Vec<Worker>),
    /// The members of a `pool` app of tandem (`GET /v1/apps/{app}/members`,
    /// those whose role is `free` or `busy`), read again on every round.
    Tandem {
        /// The tandem API.
        api: ApiClient,
        /// The pool app.
        app: String,
    },
}

/// The workers of a members document: members whose role is `free` or
/// `busy` and that have a port, at `http://{address}:{port}`.
pub fn workers_of_members(members: &crate::MembersDoc) -> Vec<Worker> {
    members
        .members
        .iter()
        .filter(|m| matches!(m.role, Role::Free | Role::Busy))
        .filter_map(|m| {
            let port = m.port?;
            let host = if m.address.contains(':') && !m.address.starts_with('[') {
                format!("[{}]", m.address)
            } else {
                m.address.clone()
            };
            Some(Worker::new(
                m.instance.clone(),
                format!("http://{host}:{port}"),
            ))
        })
        .collect()
}

/// Bounds and pacing of a dispatch. Every wait is bounded.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// How long a worker may take to answer IS ALIVE before it counts as
    /// dead for that round.
    pub alive_timeout: Duration,
    /// Bound on one job request (`POST /jobs`) or one job poll.
    pub request_timeout: Duration,
    /// Time between two polls of a running job; also the first wait when
    /// no worker is free.
    pub poll_interval: Duration,
    /// The wait when no worker is free doubles from `poll_interval` up to
    /// this.
    pub max_backoff: Duration,
    /// Bound on one [`Dispatcher::run`], from the call to the result.
    pub timeout: Duration,
    /// Bound on the IS ALIVE rounds of one [`Dispatcher::run`].
    pub max_rounds: u32,
    /// Consecutive failed polls of a running job after which its worker
    /// counts as dead and the job is sent elsewhere (at least 1).
    pub lost_after: u32,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            alive_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            max_rounds: 10_000,
            lost_after: 3,
        }
    }
}

/// A job to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id, `[A-Za-z0-9_.-]{1,128}`: the same id on every attempt, so a
    /// worker that already built it answers from memory.
    pub id: String,
    /// What to build.
    pub payload: String,
}

impl Job {
    /// A job with this id and payload.
    pub fn new(id: impl Into<String>, payload: impl Into<String>) -> Job {
        Job {
            id: id.into(),
            payload: payload.into(),
        }
    }
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct Done {
    /// The job's id.
    pub id: String,
    /// What the worker answered as the result.
    pub result: String,
    /// The instance that built it.
    pub worker: String,
    /// Every attempt, in order; the last one built the job.
    pub attempts: Vec<Attempt>,
    /// IS ALIVE rounds used.
    pub rounds: u32,
    /// From the call to the moment the worker that built the job accepted
    /// it (waits for a free worker included).
    pub accepted_after: Duration,
    /// From the call to the result.
    pub elapsed: Duration,
}

impl Done {
    /// The dispatch latency of the attempt that built the job: its IS
    /// ALIVE round plus the job request's round trip.
    pub fn dispatch_latency(&self) -> Option<Duration> {
        self.attempts.last().and_then(Attempt::dispatch_latency)
    }
}

/// One try to have a job built by one worker.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The worker's instance name.
    pub worker: String,
    /// The worker's base URL.
    pub base_url: String,
    /// The IS ALIVE round (1-based) that found the worker free.
    pub round: u32,
    /// From the call to the start of this attempt's job request.
    pub started_after: Duration,
    /// How long that IS ALIVE round took.
    pub alive_round: Duration,
    /// The job request's round trip, when the worker took the job.
    pub accept: Option<Duration>,
    /// How long the job was followed after the request.
    pub follow: Duration,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

impl Attempt {
    /// IS ALIVE round plus job request, when the worker took the job.
    pub fn dispatch_latency(&self) -> Option<Duration> {
        self.accept.map(|accept| self.alive_round + accept)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The worker built the job.
    Built,
    /// The worker had built this id already and answered from memory.
    AlreadyBuilt,
    /// 409: another dispatch took the worker first (it names its job).
    Busy {
        /// The job the worker is busy with.
        job: String,
    },
    /// The worker refused the job for a passing reason (e.g. 503 shutting
    /// down); another worker may take it.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The worker's message.
        message: String,
    },
    /// The job request did not reach the worker.
    Unreachable {
        /// Why.
        reason: String,
    },
    /// The worker died or restarted while building the job.
    Lost {
        /// Why it counts as dead.
        reason: String,
    },
    /// The worker refused the job in a way every worker would (e.g. 400,
    /// 413): the dispatch stops.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The worker's message.
        message: String,
    },
    /// The dispatch's timeout passed while the worker was building.
    TimedOut,
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptOutcome::Built => f.write_str("built"),
            AttemptOutcome::AlreadyBuilt => f.write_str("already built there"),
            AttemptOutcome::Busy { job } => write!(f, "busy with {job}"),
            AttemptOutcome::Refused { status, message } => {
                write!(f, "refused with HTTP {status}: {message}")
            }
            AttemptOutcome::Unreachable { reason } => write!(f, "unreachable: {reason}"),
            AttemptOutcome::Lost { reason } => write!(f, "lost: {reason}"),
            AttemptOutcome::Rejected { status, message } => {
                write!(f, "rejected with HTTP {status}: {message}")
            }
            AttemptOutcome::TimedOut => f.write_str("still building when the timeout passed"),
        }
    }
}

/// The answers of one IS ALIVE round.
#[derive(Debug, Clone)]
pub struct AliveRound {
    /// Workers that answered alive and free, in answer order.
    pub free: Vec<Worker>,
    /// Workers that answered busy.
    pub busy: Vec<Worker>,
    /// Workers that did not answer in time or answered nonsense, with why.
    pub dead: Vec<(Worker, String)>,
    /// How long the round took (until the last answer or the timeout).
    pub elapsed: Duration,
}

impl AliveRound {
    /// How many workers were asked.
    pub fn asked(&self) -> usize {
        self.free.len() + self.busy.len() + self.dead.len()
    }
}

/// Why a dispatch failed. `Display` is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The job id is not `[A-Za-z0-9_.-]{1,128}`; nothing was sent.
    #[error("invalid job id {id:?}: {reason}")]
    InvalidJob {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No worker was free until the timeout (or the round limit).
    #[error(
        "no free worker for job {job} after {waited_ms} ms ({rounds} IS ALIVE rounds): {}",
        pool_summary(*asked, *busy, *dead)
    )]
    NoFreeWorker {
        /// The job.
        job: String,
        /// Workers asked in the last round.
        asked: usize,
        /// Of those, how many answered busy (or were taken by another job
        /// of this dispatcher).
        busy: usize,
        /// Of those, how many did not answer.
        dead: usize,
        /// How long the dispatch waited.
        waited_ms: u64,
        /// IS ALIVE rounds done.
        rounds: u32,
    },
    /// The job was not done within the timeout (or the round limit) though
    /// workers were free at times; it may still finish on its last worker.
    #[error(
        "job {job} not done after {waited_ms} ms ({rounds} IS ALIVE rounds, {attempts} attempts); last: {last}"
    )]
    Timeout {
        /// The job.
        job: String,
        /// How long the dispatch waited.
        waited_ms: u64,
        /// IS ALIVE rounds done.
        rounds: u32,
        /// Attempts made.
        attempts: usize,
        /// What happened last.
        last: String,
    },
    /// A worker refused the job as every worker would (bad id or payload).
    #[error("worker {worker} rejected job {job} with HTTP {status}: {message}")]
    Rejected {
        /// The job.
        job: String,
        /// The worker's instance.
        worker: String,
        /// The HTTP status.
        status: u16,
        /// The worker's message.
        message: String,
    },
    /// The worker list could not be read from tandem.
    #[error("cannot list the workers of pool app {app}: {source}")]
    Source {
        /// The pool app.
        app: String,
        /// The API's error.
        #[source]
        source: ClientError,
    },
}

fn pool_summary(asked: usize, busy: usize, dead: usize) -> String {
    if asked == 0 {
        return "the pool has no workers".to_owned();
    }
    format!("asked {asked} workers, {busy} busy, {dead} did not answer")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks a job id: `[A-Za-z0-9_.-]{1,128}`.
fn check_job_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id.len() > MAX_JOB_ID_CHARS {
        return Err(format!(
            "it is {} characters long; at most {MAX_JOB_ID_CHARS} are allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "it contains {bad:?}; only A-Z a-z 0-9 _ . - are allowed"
        ));
    }
    Ok(())
}

/// Sends jobs to the free workers of a pool. Cheap to clone; clones share
/// connections and the record of which worker each running dispatch
/// holds, so concurrent dispatches from one dispatcher do not pick the
/// same worker (and a race with another dispatcher, which the worker
/// answers with 409, makes the loser pick another one).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: WorkerSource,
    options: DispatchOptions,
    http: reqwest::Client,
    /// Worker base URL → the job this dispatcher sent there and follows.
    claims: Arc<Mutex<HashMap<String, String>>>,
}

/// A worker held by one dispatch; released when dropped (also when the
/// dispatch future is dropped).
struct Claim {
    claims: Arc<Mutex<HashMap<String, String>>>,
    url: String,
    job: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.get(&self.url) == Some(&self.job) {
            claims.remove(&self.url);
        }
    }
}

/// What the last round of a dispatch ran into, for the final error.
enum Last {
    Nothing,
    NoFree {
        asked: usize,
        busy: usize,
        dead: usize,
    },
    Source(ClientError),
    Attempt(String),
}

/// An exchange with a worker that got no HTTP answer.
struct NoAnswer {
    /// The request certainly did not reach the worker (connection refused).
    not_sent: bool,
    reason: String,
}

/// The JSON of a job answer.
#[derive(Debug, Deserialize)]
struct JobAnswer {
    id: String,
    state: String,
    #[serde(default)]
    result: Option<String>,
}

/// Where a followed job ended.
enum FollowEnd {
    Done(String),
    NotFound,
    Lost(String),
    TimedOut,
}

impl Dispatcher {
    /// A dispatcher over the workers of `source`. `lost_after` below 1
    /// counts as 1.
    pub fn new(source: WorkerSource, options: DispatchOptions) -> Dispatcher {
        // Without TLS features, building the client cannot fail but for a
        // broken system resolver; the default client is the fallback.
        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("tandem-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Dispatcher {
            inner: Arc::new(Inner {
                source,
                options,
                http,
                claims: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &DispatchOptions {
        &self.inner.options
    }

    /// The pool's workers now (the static list, or tandem's members),
    /// at most [`MAX_WORKERS`].
    pub async fn workers(&self) -> Result<Vec<Worker>, DispatchError> {
        let mut workers = match &self.inner.source {
            WorkerSource::Static(workers) => workers.clone(),
            WorkerSource::Tandem { api, app } => {
                let members = api
                    .members(app)
                    .await
                    .map_err(|source| DispatchError::Source {
                        app: app.clone(),
                        source,
                    })?;
                workers_of_members(&members)
            }
        };
        if workers.len() > MAX_WORKERS {
            tracing::warn!(
                workers = workers.len(),
                "pool has more than {MAX_WORKERS} workers; asking the first {MAX_WORKERS}"
            );
            workers.truncate(MAX_WORKERS);
        }
        Ok(workers)
    }

    /// Just the IS ALIVE round: the free workers, in answer order.
    pub async fn free_workers(&self) -> Result<Vec<Worker>, DispatchError> {
        Ok(self.alive_round().await?.free)
    }

    /// One IS ALIVE round with every answer: sends `GET /alive` to every
    /// worker at once and waits up to `alive_timeout` for the answers.
    pub async fn alive_round(&self) -> Result<AliveRound, DispatchError> {
        let workers = self.workers().await?;
        Ok(self.ask_alive(workers).await)
    }

    async fn ask_alive(&self, workers: Vec<Worker>) -> AliveRound {
        let start = Instant::now();
        let timeout = self.inner.options.alive_timeout;
        let mut asking: FuturesUnordered<_> = workers
            .into_iter()
            .map(|worker| async move {
                let answer = self
                    .exchange(self.inner.http.get(worker.url("/alive")), timeout)
                    .await;
                (worker, answer)
            })
            .collect();
        let mut round = AliveRound {
            free: Vec::new(),
            busy: Vec::new(),
            dead: Vec::new(),
            elapsed: Duration::ZERO,
        };
        while let Some((worker, answer)) = asking.next().await {
            match answer {
                Ok((status, body)) => {
                    let free = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("free").and_then(serde_json::Value::as_bool));
                    match (status, free) {
                        (StatusCode::OK, Some(true)) => round.free.push(worker),
                        (StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE, Some(false))
                        | (StatusCode::SERVICE_UNAVAILABLE, None) => round.busy.push(worker),
                        _ => {
                            let reason = format!(
                                "unexpected IS ALIVE answer: HTTP {}: {}",
                                status.as_u16(),
                                snippet(&body)
                            );
                            round.dead.push((worker, reason));
                        }
                    }
                }
                Err(no_answer) => round.dead.push((worker, no_answer.reason)),
            }
        }
        round.elapsed = start.elapsed();
        tracing::debug!(
            free = round.free.len(),
            busy = round.busy.len(),
            dead = round.dead.len(),
            elapsed_us = u64::try_from(round.elapsed.as_micros()).unwrap_or(u64::MAX),
            "IS ALIVE round"
        );
        round
    }

    /// Has `job` built by a free worker and returns its result. See the
    /// module's documentation for the rules; every wait is bounded by
    /// [`DispatchOptions::timeout`] and [`DispatchOptions::max_rounds`].
    pub async fn run(&self, job: Job) -> Result<Done, DispatchError> {
        check_job_id(&job.id).map_err(|reason| DispatchError::InvalidJob {
            id: job.id.clone(),
            reason,
        })?;
        let options = &self.inner.options;
        let start = Instant::now();
        // A timeout too large for the clock: a year is as good as forever.
        let deadline = start
            .checked_add(options.timeout)
            .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(start);
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut rounds: u32 = 0;
        let mut backoff = options.poll_interval;
        let mut last = Last::Nothing;

        loop {
            if rounds >= options.max_rounds || Instant::now() >= deadline {
                return Err(self.give_up(&job, last, start, rounds, attempts.len()));
            }
            rounds += 1;
            let round = match self.bounded_round(deadline).await {
                Ok(round) => round,
                Err(err) => {
                    tracing::debug!(job = %job.id, %err, "cannot list the pool's workers");
                    last = Last::Source(err);
                    sleep_until_at_most(backoff, deadline).await;
                    backoff = backoff.saturating_mul(2).min(options.max_backoff);
                    continue;
                }
            };

            // Free workers that no other job of this dispatcher holds.
            let claimed: Vec<String> = {
                let claims = self.inner.claims.lock().unwrap_or_else(|e| e.into_inner());
                round
                    .free
                    .iter()
                    .filter(|w| claims.get(&w.base_url).is_some_and(|j| *j != job.id))
                    .map(|w| w.base_url.clone())
                    .collect()
            };
            let candidates: Vec<&Worker> = round
                .free
                .iter()
                .filter(|w| !claimed.contains(&w.base_url))
                .collect();
            if candidates.is_empty() {
                last = Last::NoFree {
                    asked: round.asked(),
                    busy: round.busy.len() + claimed.len(),
                    dead: round.dead.len(),
                };
                sleep_until_at_most(backoff, deadline).await;
                backoff = backoff.saturating_mul(2).min(options.max_backoff);
                continue;
            }
            backoff = options.poll_interval;

            let mut lost = false;
            for worker in candidates {
                if Instant::now() >= deadline {
                    break;
                }
                let Some(_claim) = self.claim(worker, &job.id) else {
                    continue; // taken by another job of ours meanwhile
                };
                let started_after = start.elapsed();
                let (outcome, accept, follow, result) = self.attempt(worker, &job, deadline).await;
                tracing::debug!(job = %job.id, worker = %worker.instance, %outcome, "attempt ended");
                attempts.push(Attempt {
                    worker: worker.instance.clone(),
                    base_url: worker.base_url.clone(),
                    round: rounds,
                    started_after,
                    alive_round: round.elapsed,
                    accept,
                    follow,
                    outcome: outcome.clone(),
                });
                match outcome {
                    AttemptOutcome::Built | AttemptOutcome::AlreadyBuilt => {
                        let accepted_after = started_after + accept.unwrap_or_default();
                        return Ok(Done {
                            id: job.id,
                            result: result.unwrap_or_default(),
                            worker: worker.instance.clone(),
                            attempts,
                            rounds,
                            accepted_after,
                            elapsed: start.elapsed(),
                        });
                    }
                    AttemptOutcome::Rejected { status, message } => {
                        return Err(DispatchError::Rejected {
                            job: job.id,
                            worker: worker.instance.clone(),
                            status,
                            message,
                        });
                    }
                    AttemptOutcome::TimedOut => {
                        last = Last::Attempt(format!("worker {worker}: {outcome}"));
                        return Err(self.give_up(&job, last, start, rounds, attempts.len()));
                    }
                    AttemptOutcome::Lost { ref reason } => {
                        tracing::warn!(
                            job = %job.id,
                            worker = %worker.instance,
                            "worker lost while building job {}: {reason}; sending it to another free worker",
                            job.id
                        );
                        last = Last::Attempt(format!("worker {worker}: {outcome}"));
                        lost = true;
                        break;
                    }
                    AttemptOutcome::Busy { .. }
                    | AttemptOutcome::Refused { .. }
                    | AttemptOutcome::Unreachable { .. } => {
                        last = Last::Attempt(format!("worker {worker}: {outcome}"));
                    }
                }
            }
            if !lost {
                // Every free worker was taken meanwhile: they are busy now.
                sleep_until_at_most(options.poll_interval, deadline).await;
            }
        }
    }

    /// An IS ALIVE round whose worker listing is bounded by `deadline`.
    async fn bounded_round(&self, deadline: Instant) -> Result<AliveRound, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let listing = tokio::time::timeout(left, self.workers()).await;
        let workers = match listing {
            Ok(Ok(workers)) => workers,
            Ok(Err(DispatchError::Source { source, .. })) => return Err(source),
            Ok(Err(other)) => return Err(ClientError::Protocol(other.to_string())),
            Err(_) => {
                let addr = match &self.inner.source {
                    WorkerSource::Tandem { api, .. } => api.base_url().to_owned(),
                    WorkerSource::Static(_) => "the static worker list".to_owned(),
                };
                return Err(ClientError::Timeout {
                    addr,
                    timeout_ms: ms(left),
                });
            }
        };
        Ok(self.ask_alive(workers).await)
    }

    fn claim(&self, worker: &Worker, job: &str) -> Option<Claim> {
        let mut claims = self.inner.claims.lock().unwrap_or_else(|e| e.into_inner());
        match claims.get(&worker.base_url) {
            Some(holder) if holder != job => None,
            _ => {
                claims.insert(worker.base_url.clone(), job.to_owned());
                Some(Claim {
                    claims: Arc::clone(&self.inner.claims),
                    url: worker.base_url.clone(),
                    job: job.to_owned(),
                })
            }
        }
    }

    fn give_up(
        &self,
        job: &Job,
        last: Last,
        start: Instant,
        rounds: u32,
        attempts: usize,
    ) -> DispatchError {
        let waited_ms = ms(start.elapsed());
        match last {
            Last::NoFree { asked, busy, dead } => DispatchError::NoFreeWorker {
                job: job.id.clone(),
                asked,
                busy,
                dead,
                waited_ms,
                rounds,
            },
            Last::Source(source) => DispatchError::Source {
                app: match &self.inner.source {
                    WorkerSource::Tandem { app, .. } => app.clone(),
                    WorkerSource::Static(_) => "(static list)".to_owned(),
                },
                source,
            },
            Last::Attempt(last) => DispatchError::Timeout {
                job: job.id.clone(),
                waited_ms,
                rounds,
                attempts,
                last,
            },
            Last::Nothing => DispatchError::Timeout {
                job: job.id.clone(),
                waited_ms,
                rounds,
                attempts,
                last: "no IS ALIVE round could be done in time".to_owned(),
            },
        }
    }

    /// Sends `job` to `worker` and follows it: (outcome, accept round trip,
    /// follow time, result).
    async fn attempt(
        &self,
        worker: &Worker,
        job: &Job,
        deadline: Instant,
    ) -> (AttemptOutcome, Option<Duration>, Duration, Option<String>) {
        let options = &self.inner.options;
        let sent = Instant::now();
        let timeout = options
            .request_timeout
            .min(deadline.saturating_duration_since(sent));
        let body = serde_json::json!({ "id": job.id, "payload": job.payload });
        let request = self.inner.http.post(worker.url("/jobs")).json(&body);
        let answer = self.exchange(request, timeout).await;
        let accept = sent.elapsed();
        // Was the request possibly taken by the worker without an answer?
        let uncertain = match answer {
            Ok((status, body)) => {
                let decoded = serde_json::from_slice::<JobAnswer>(&body)
                    .ok()
                    .filter(|a| a.id == job.id);
                match status {
                    StatusCode::OK | StatusCode::ACCEPTED => match decoded {
                        Some(JobAnswer {
                            state,
                            result: Some(result),
                            ..
                        }) if state == "done" => {
                            return (
                                AttemptOutcome::AlreadyBuilt,
                                Some(accept),
                                Duration::ZERO,
                                Some(result),
                            );
                        }
                        Some(JobAnswer { state, .. }) if state == "running" => None,
                        // Taken, maybe: follow it to find out.
                        _ => Some(format!(
                            "unexpected answer to the job request: HTTP {}: {}",
                            status.as_u16(),
                            snippet(&body)
                        )),
                    },
                    StatusCode::CONFLICT => {
                        let other = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("job").and_then(|j| j.as_str().map(str::to_owned)))
                            .unwrap_or_else(|| "another job".to_owned());
                        return (
                            AttemptOutcome::Busy { job: other },
                            None,
                            Duration::ZERO,
                            None,
                        );
                    }
                    StatusCode::BAD_REQUEST
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNPROCESSABLE_ENTITY => {
                        return (
                            AttemptOutcome::Rejected {
                                status: status.as_u16(),
                                message: error_message(&body),
                            },
                            None,
                            Duration::ZERO,
                            None,
                        );
                    }
                    _ => {
                        return (
                            AttemptOutcome::Refused {
                                status: status.as_u16(),
                                message: error_message(&body),
                            },
                            None,
                            Duration::ZERO,
                            None,
                        );
                    }
                }
            }
            Err(NoAnswer {
                not_sent: true,
                reason,
            }) => {
                return (
                    AttemptOutcome::Unreachable { reason },
                    None,
                    Duration::ZERO,
                    None,
                );
            }
            Err(NoAnswer { reason, .. }) => Some(reason),
        };

        let followed = Instant::now();
        let end = self.follow(worker, &job.id, deadline).await;
        let follow = followed.elapsed();
        let accept = if uncertain.is_none() {
            Some(accept)
        } else {
            None
        };
        match (end, uncertain) {
            (FollowEnd::Done(result), None) => {
                (AttemptOutcome::Built, accept, follow, Some(result))
            }
            // The job request got no clear answer but the worker built it.
            (FollowEnd::Done(result), Some(_)) => (
                AttemptOutcome::Built,
                Some(followed.duration_since(sent)),
                follow,
                Some(result),
            ),
            (FollowEnd::NotFound, None) => (
                AttemptOutcome::Lost {
                    reason: "the worker no longer knows the job (it restarted)".to_owned(),
                },
                accept,
                follow,
                None,
            ),
            (FollowEnd::NotFound, Some(reason)) => {
                (AttemptOutcome::Unreachable { reason }, None, follow, None)
            }
            (FollowEnd::Lost(reason), _) => (AttemptOutcome::Lost { reason }, accept, follow, None),
            (FollowEnd::TimedOut, _) => (AttemptOutcome::TimedOut, accept, follow, None),
        }
    }

    /// Polls `GET /jobs/{id}` on `worker` until done, unknown, lost or the
    /// deadline.
    async fn follow(&self, worker: &Worker, id: &str, deadline: Instant) -> FollowEnd {
        let options = &self.inner.options;
        let lost_after = options.lost_after.max(1);
        let url = worker.url(&format!("/jobs/{id}"));
        let mut failures: u32 = 0;
        loop {
            sleep_until_at_most(options.poll_interval, deadline).await;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return FollowEnd::TimedOut;
            }
            let timeout = options.request_timeout.min(left);
            let failure = match self.exchange(self.inner.http.get(&url), timeout).await {
                Ok((StatusCode::OK, body)) => match serde_json::from_slice::<JobAnswer>(&body) {
                    Ok(answer) if answer.id == id && answer.state == "done" => {
                        match answer.result {
                            Some(result) => return FollowEnd::Done(result),
                            None => "a done job without a result".to_owned(),
                        }
                    }
                    Ok(answer) if answer.id == id && answer.state == "running" => {
                        failures = 0;
                        continue;
                    }
                    _ => format!("unexpected job answer: {}", snippet(&body)),
                },
                Ok((StatusCode::NOT_FOUND, _)) => return FollowEnd::NotFound,
                Ok((status, body)) => {
                    format!("HTTP {}: {}", status.as_u16(), error_message(&body))
                }
                Err(no_answer) => no_answer.reason,
            };
            failures += 1;
            tracing::debug!(job = id, worker = %worker.instance, failures, %failure, "job poll failed");
            if failures >= lost_after {
                return FollowEnd::Lost(format!(
                    "{failures} job polls failed in a row; last: {failure}"
                ));
            }
        }
    }

    /// One request, bounded by `timeout` as a whole (body included): the
    /// status and at most [`MAX_ANSWER_BYTES`] of body.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), NoAnswer> {
        let exchange = async {
            let mut response = request.send().await.map_err(|e| NoAnswer {
                not_sent: e.is_connect(),
                reason: root_cause(&e),
            })?;
            let status = response.status();
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                            return Err(NoAnswer {
                                not_sent: false,
                                reason: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                            });
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => return Ok((status, body)),
                    Err(e) => {
                        return Err(NoAnswer {
                            not_sent: false,
                            reason: root_cause(&e),
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(NoAnswer {
                not_sent: false,
                reason: format!("no answer within {} ms", ms(timeout)),
            }),
        }
    }
}

/// Sleeps `wait`, but not past `deadline`.
async fn sleep_until_at_most(wait: Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(wait.min(left)).await;
}

/// A worker's `{"error": ...}` message, or the start of its body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str().map(str::to_owned)))
        .unwrap_or_else(|| snippet(body))
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{MemberDoc, MembersDoc};

    fn member(instance: &str, address: &str, port: Option<u16>, role: Role) -> MemberDoc {
        MemberDoc {
            instance: instance.into(),
            host: "h1".into(),
            address: address.into(),
            port,
            ports: BTreeMap::new(),
            role,
            epoch: None,
        }
    }

    #[test]
    fn members_free_or_busy_with_a_port_are_workers() {
        let doc = MembersDoc {
            app: "builder".into(),
            healthy: 4,
            min_healthy: 1,
            members: vec![
                member("a", "10.0.0.1", Some(7501), Role::Free),
                member("b", "::1", Some(7502), Role::Busy),
                member("c", "10.0.0.3", None, Role::Free),
                member("d", "10.0.0.4", Some(7504), Role::Active),
            ],
        };
        assert_eq!(
            workers_of_members(&doc),
            vec![
                Worker::new("a", "http://10.0.0.1:7501"),
                Worker::new("b", "http://[::1]:7502"),
            ]
        );
    }

    #[test]
    fn job_ids_are_checked_before_anything_is_sent() {
        assert!(check_job_id("j-1.a_B").is_ok());
        assert!(check_job_id("").is_err());
        assert!(check_job_id("a b").is_err());
        assert!(check_job_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn no_free_worker_says_what_the_pool_answered() {
        let e = DispatchError::NoFreeWorker {
            job: "j1".into(),
            asked: 3,
            busy: 2,
            dead: 1,
            waited_ms: 2000,
            rounds: 7,
        };
        assert_eq!(
            e.to_string(),
            "no free worker for job j1 after 2000 ms (7 IS ALIVE rounds): \
             asked 3 workers, 2 busy, 1 did not answer"
        );
        let e = DispatchError::NoFreeWorker {
            job: "j1".into(),
            asked: 0,
            busy: 0,
            dead: 0,
            waited_ms: 300,
            rounds: 3,
        };
        assert!(e.to_string().ends_with("the pool has no workers"), "{e}");
    }

    #[test]
    fn worker_urls_drop_a_trailing_slash() {
        let w = Worker::new("a", "http://127.0.0.1:1/");
        assert_eq!(w.url("/alive"), "http://127.0.0.1:1/alive");
        assert_eq!(w.to_string(), "a (http://127.0.0.1:1)");
    }

    #[tokio::test]
    async fn invalid_job_id_fails_at_once() {
        let d = Dispatcher::new(WorkerSource::Static(vec![]), DispatchOptions::default());
        let err = d.run(Job::new("a/b", "")).await.err();
        assert!(
            matches!(err, Some(DispatchError::InvalidJob { .. })),
            "{err:?}"
        );
    }
}
