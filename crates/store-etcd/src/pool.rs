//! One etcd client per member, and the retry loop every request runs
//! through: try the preferred member, move to the next one when a member
//! cannot serve, all within the request timeout.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tandem_store::StoreError;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::{Failure, classify};

/// The shortest time one attempt of an idempotent request gets before it
/// is tried on the next member.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// Pause after every member failed once, doubled each round up to
/// [`MAX_BACKOFF`] (a leader election takes 1–2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Whether a request may run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, lease grants, keep-alives, revokes: retried after any
    /// reachability failure.
    Always,
    /// Writes: retried only when the failed attempt surely was not applied,
    /// so a caller never sees a compare fail because of its own earlier,
    /// unacknowledged attempt.
    IfNotApplied,
}

/// What the request closure learns about earlier attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// An earlier attempt failed in a way that may have applied it.
    pub maybe_applied: bool,
}

/// One member: its endpoint and a client connected only to it (created on
/// first use: with authentication, creating it is a request).
pub(crate) struct Member {
    pub endpoint: String,
    client: OnceCell<Client>,
    /// Counts the requests this member left unanswered (timed out): a
    /// watch open on it breaks at the next count, rather than waiting for
    /// its HTTP/2 pings (up to 15 s) to find the member gone.
    silent: tokio::sync::watch::Sender<u64>,
}

impl Member {
    pub fn new(endpoint: String) -> Member {
        Member {
            endpoint,
            client: OnceCell::new(),
            silent: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A request to it went unanswered within its budget.
    pub fn found_silent(&self) {
        self.silent.send_modify(|n| *n += 1);
    }

    /// Follows [`Member::found_silent`] from now on.
    pub fn silence(&self) -> tokio::sync::watch::Receiver<u64> {
        self.silent.subscribe()
    }

    /// This member's client (cheap to clone: it shares one connection).
    pub async fn client(&self, options: &ConnectOptions) -> Result<Client, Failure> {
        let client = self
            .client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], Some(options.clone())))
            .await
            .map_err(|e| classify(&e))?;
        Ok(client.clone())
    }
}

/// The members of the cluster and which one requests go to first.
pub(crate) struct Pool {
    pub members: Vec<Member>,
    preferred: AtomicUsize,
    pub options: ConnectOptions,
    pub request_timeout: Duration,
}

impl Pool {
    pub fn new(endpoints: &[String], options: ConnectOptions, request_timeout: Duration) -> Pool {
        Pool {
            members: endpoints.iter().cloned().map(Member::new).collect(),
            preferred: AtomicUsize::new(0),
            options,
            request_timeout,
        }
    }

    /// The member requests go to first.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.members.len()
    }

    pub fn set_preferred(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// Moves the preference off `failed` (unless another request already
    /// did).
    fn demote(&self, failed: usize) {
        let next = (failed + 1) % self.members.len();
        if self
            .preferred
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::debug!(
                from = %self.members[failed].endpoint,
                to = %self.members[next].endpoint,
                "etcd store: switching to another member"
            );
        }
    }

    /// Runs `request` against the preferred member, moving on to the next
    /// member after a reachability failure (as far as `retry` allows),
    /// until it succeeds, fails for good, or the request timeout passes
    /// (then [`StoreError::Unavailable`]). Returns the value and the index
    /// of the member that answered.
    pub async fn call<T, F, Fut>(
        &self,
        what: &str,
        retry: Retry,
        mut request: F,
    ) -> Result<(T, usize), StoreError>
    where
        F: FnMut(Client, Attempt) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let n = self.members.len();
        let deadline = Instant::now() + self.request_timeout;
        let mut index = self.preferred();
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0usize;
        let mut attempt = Attempt {
            maybe_applied: false,
        };
        let mut last_error = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "{what}: etcd did not answer within {:?} ({failures} failed attempts; last: \
                     {last_error})",
                    self.request_timeout
                )));
            }
            let remaining = deadline - now;
            // An idempotent request moves on from a member that does not
            // answer; a write waits for its answer (retrying it after a
            // silent attempt could apply it twice).
            let budget = match retry {
                Retry::Always if n > 1 => {
                    remaining.min((self.request_timeout / n as u32).max(MIN_ATTEMPT))
                }
                _ => remaining,
            };
            let member = &self.members[index];
            let started = Instant::now();
            // Connecting (and authenticating) sends nothing of the request
            // itself: any failure there is "not applied".
            let outcome = match tokio::time::timeout(budget, member.client(&self.options)).await {
                Err(_) => {
                    member.found_silent();
                    Err(Failure::NotApplied(format!(
                        "no connection within {budget:?}"
                    )))
                }
                Ok(Err(Failure::Ambiguous(m))) => Err(Failure::NotApplied(m)),
                Ok(Err(f)) => Err(f),
                Ok(Ok(client)) => {
                    let left = budget.saturating_sub(started.elapsed());
                    tokio::time::timeout(left, request(client, attempt))
                        .await
                        .unwrap_or_else(|_| {
                            member.found_silent();
                            Err(Failure::Ambiguous(format!("no answer within {budget:?}")))
                        })
                }
            };
            let ambiguous = match outcome {
                Ok(value) => {
                    if index != self.preferred() {
                        self.set_preferred(index);
                    }
                    return Ok((value, index));
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::NotApplied(m)) => {
                    last_error = format!("{}: {m}", member.endpoint);
                    false
                }
                Err(Failure::Ambiguous(m)) => {
                    last_error = format!("{}: {m}", member.endpoint);
                    true
                }
            };
            tracing::debug!(%what, error = %last_error, "etcd store: attempt failed");
            self.demote(index);
            failures += 1;
            if ambiguous {
                if retry == Retry::IfNotApplied {
                    return Err(StoreError::Unavailable(format!(
                        "{what}: outcome unknown, etcd may or may not have applied it \
                         ({last_error})"
                    )));
                }
                attempt.maybe_applied = true;
            }
            if failures.is_multiple_of(n) {
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            index = (index + 1) % n;
        }
    }
}
