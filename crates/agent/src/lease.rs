//! The host lease: granted, renewed every `renew_interval`, and reported to
//! the agent with the time each successful request was *sent*.
//!
//! # Self-fencing margin
//!
//! The store expires a lease no earlier than its TTL after it received the
//! last keep-alive, which is after the agent sent it. So the agent knows
//! the lease is valid until at least `sent + ttl` of the last successful
//! renewal, by its own clock. It steps down from every primary role at
//! `sent + ttl - fence_margin`: the margin covers the demotion hook (whose
//! timeout validation keeps below the margin), a kill if the hook fails,
//! and clock-rate drift between agent and store. No other instance can be
//! promoted before the lease has expired on the store, so the two primary
//! periods never overlap.

use std::sync::Arc;
use std::time::Duration;

use tandem_store::{LeaseId, Store, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What the keeper reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A new lease is held: a new session.
    Granted {
        /// The lease.
        lease: LeaseId,
        /// When the grant request was sent.
        sent_at: Instant,
        /// The TTL the store granted.
        ttl: Duration,
    },
    /// A keep-alive sent at `sent_at` succeeded.
    Renewed {
        /// The lease.
        lease: LeaseId,
        /// When the keep-alive was sent.
        sent_at: Instant,
    },
    /// A grant or keep-alive failed or timed out: the store may be
    /// unreachable (the lease, if any, is still held until it expires).
    Failed,
    /// The store says the lease is gone.
    Expired {
        /// The lease.
        lease: LeaseId,
    },
}

/// Keeps a lease alive until cancelled; grants a new one when it is lost.
pub async fn keep(
    store: Arc<dyn Store>,
    ttl: Duration,
    renew_interval: Duration,
    events: mpsc::Sender<LeaseEvent>,
    cancel: CancellationToken,
) {
    let mut lease: Option<LeaseId> = None;
    let mut failures: u32 = 0;
    loop {
        let wait = if lease.is_none() && failures == 0 {
            Duration::ZERO
        } else {
            renew_interval
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let sent_at = Instant::now();
        match lease {
            None => match tokio::time::timeout(renew_interval, store.grant_lease(ttl)).await {
                Ok(Ok(l)) => {
                    failures = 0;
                    lease = Some(l.id);
                    debug!(
                        lease = l.id,
                        ttl_ms = l.ttl.as_millis() as u64,
                        "lease granted"
                    );
                    let ev = LeaseEvent::Granted {
                        lease: l.id,
                        sent_at,
                        ttl: l.ttl,
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    failures += 1;
                    warn!(error = %e, "cannot obtain a lease");
                    if events.send(LeaseEvent::Failed).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    failures += 1;
                    warn!("lease grant timed out");
                    if events.send(LeaseEvent::Failed).await.is_err() {
                        return;
                    }
                }
            },
            Some(id) => match tokio::time::timeout(renew_interval, store.keep_alive(id)).await {
                Ok(Ok(_)) => {
                    failures = 0;
                    let ev = LeaseEvent::Renewed { lease: id, sent_at };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(Err(StoreError::LeaseNotFound(_))) => {
                    warn!(lease = id, "lease expired");
                    lease = None;
                    failures = 0;
                    if events
                        .send(LeaseEvent::Expired { lease: id })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    failures += 1;
                    warn!(lease = id, error = %e, "lease renewal failed");
                    if events.send(LeaseEvent::Failed).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    failures += 1;
                    warn!(lease = id, "lease renewal timed out");
                    if events.send(LeaseEvent::Failed).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
