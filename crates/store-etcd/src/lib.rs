//! The etcd backend of tandem's coordination store: [`EtcdStore`]
//! implements [`tandem_store::Store`] on a real etcd v3 cluster, for
//! deployments across several machines (`tandem agent --store
//! etcd://h1:2379,h2:2379,h3:2379`).
//!
//! Nothing above the store layer knows which backend runs; this crate only
//! maps the trait onto etcd's API and keeps requests going while members
//! fail. It passes [`tandem_store::testing::conformance`] against a real
//! 3-member cluster (see `tests/`).
//!
//! # Correctness
//!
//! How each guarantee of [`Store`] maps onto etcd's:
//!
//! - **Linearizable reads and writes.** `get`, `list` and read-only
//!   transactions are etcd ranges with the default (linearizable)
//!   consistency, served through the raft leader's read index; writes are
//!   raft proposals. Revisions are etcd's store revision (the header
//!   revision of each response): strictly increasing, shared by all writes
//!   of one transaction. `list` reads every page at the revision of its
//!   first page, so it is one snapshot, and returns that revision.
//! - **Atomic compare-and-swap.** [`Store::txn`] is one etcd `Txn`:
//!   `Compare::ModRevision(k, r)` is `mod_revision(k) == r` (an absent key
//!   has `mod_revision` 0 in etcd's compares, so `r = 0` is
//!   create-if-absent); `Compare::Value` is `value(k) == v` (etcd fails a
//!   value compare on an absent key, even against an empty value). etcd
//!   rejects a branch writing one key twice ("duplicate key given in txn
//!   request"): that is [`StoreError::InvalidArgument`]; a put bound to a
//!   missing lease fails the whole transaction with
//!   [`StoreError::LeaseNotFound`].
//! - **Leases.** TTLs are whole seconds in etcd: the requested TTL is
//!   rounded up (at least 1 s), and etcd may raise it to its minimum
//!   (1.5 × its election timeout, rounded up: 2 s with default settings);
//!   the granted TTL is what [`Lease::ttl`] returns. etcd expires a lease
//!   no earlier than its TTL after the last renewal the leader accepted (a
//!   new leader extends every lease rather than shortening it), and
//!   deletes its keys in one revision with delete events. `keep_alive` is
//!   one keep-alive request on a fresh stream: success means the leader
//!   renewed the lease to its full TTL while the call ran; etcd's TTL 0
//!   answer ("lease not found") is [`StoreError::LeaseNotFound`].
//! - **Ordered watches.** A watch is one etcd watch over the prefix's key
//!   range from `start` (etcd's `start_revision`; `0` means "after the
//!   current revision"). etcd delivers events in revision order, a
//!   transaction's events in op order; each etcd event becomes one
//!   [`WatchEvent`](tandem_store::WatchEvent) (a delete: the key, an empty
//!   value, the deleting revision, zero `create_revision` and `version`).
//!   Large answers come in fragments, delivered event by event.
//!   [`Store::watch`] returns once etcd confirmed the watch is created,
//!   so a write made after it returns is seen. A start revision that
//!   compaction removed fails with [`StoreError::Compacted`] (checked
//!   with a range read at that revision before the watch is created;
//!   `oldest` is etcd's compact revision). When the stream breaks (the
//!   member died, the connection dropped or stopped answering HTTP/2
//!   pings, the member lost its leader for three election timeouts, etcd
//!   cancelled the watch, or the member left another request of this
//!   store unanswered within its budget, so that a member cut off
//!   silently is left within a request's budget rather than after the
//!   pings' 15 s) it yields one [`StoreError::WatchLost`] and
//!   ends: it never re-subscribes by itself, so it cannot skip a change;
//!   the caller resumes from the last revision it saw + 1. The stream
//!   holds at most one etcd answer; a consumer that does not read slows
//!   etcd's sending (HTTP/2 flow control) rather than growing a buffer,
//!   and etcd keeps such a watcher rather than dropping it, so the
//!   embedded backend's slow-consumer check
//!   ([`tandem_store::testing::checks::watch_slow_consumer_is_dropped`])
//!   does not apply.
//! - **Unavailability is one variant.** Every request carries etcd's
//!   `require_leader` flag, so a member without a leader refuses at once
//!   ("no leader") instead of hanging. gRPC `Unavailable`,
//!   `DeadlineExceeded`, connection failures, "request timed out" and "no
//!   leader" are [`StoreError::Unavailable`], and every call is bounded by
//!   [`EtcdOptions::request_timeout`], retries included.
//!
//! # Failover between members
//!
//! The store keeps one client per member (etcd-client does not drop a dead
//! endpoint from its balancer by itself) and sends each request to a
//! preferred member. When a member cannot serve, the request moves on to
//! the next member, with a short backoff after each full round, until the
//! request timeout:
//!
//! - reads, lease grants, keep-alives and revokes are retried after any
//!   reachability failure (a silent member is abandoned after a share of
//!   the timeout);
//! - writes (put, delete, writing transactions) are retried only when the
//!   failed attempt surely was not applied: the connection could not be
//!   made, or the member refused it before proposing it ("no leader").
//!   Any other failure (a timeout, a connection lost mid-request) returns
//!   [`StoreError::Unavailable`] at once, meaning "unknown whether it was
//!   applied": retrying it could make a compare-and-swap fail because of
//!   its own first attempt.
//!
//! So with one member of three down, every call still succeeds (a write
//! sent while the cluster elects a new leader may still fail with
//! `Unavailable`, as etcd itself times such proposals out); with quorum
//! lost, every call fails with `Unavailable` within the request timeout.
//! Two etcd behaviours to know about:
//!
//! - A leader that just lost its quorum still renews leases on its own
//!   until it notices, within an election timeout or two; safe, because
//!   the next leader restarts every lease's full TTL (plus an election
//!   timeout) when it takes over.
//! - Run etcd 3.4 with `--pre-vote` (the default from 3.5 on): without it,
//!   a member that was cut off returns with a higher term and forces
//!   extra elections, during which calls fail with `Unavailable`.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // a store client keeps time: request timeouts

mod convert;
mod error;
mod options;
mod pool;
pub mod testing;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, WatchOptions,
};
use futures::StreamExt;
use tandem_store::{
    KeyValue, Lease, LeaseId, Listing, OpResult, Result, Revision, Store, StoreError, Txn,
    TxnResponse, WatchStream,
};

pub use crate::options::{DEFAULT_CLIENT_PORT, EtcdOptions, EtcdTls, parse_store_url};

use crate::convert::{header_revision, kv, validate_key};
use crate::error::{Failure, classify, is_compacted, is_lease_not_found, is_too_large, malformed};
use crate::pool::{Pool, Retry};

/// Keys fetched per request by [`Store::list`]: it pages through larger
/// prefixes, every page at the revision of the first (fewer keys per page
/// if a page would exceed [`MAX_RESPONSE_BYTES`]). Each page is one
/// request, bounded by [`EtcdOptions::request_timeout`].
pub const LIST_PAGE_KEYS: usize = 1000;
/// Largest answer accepted from etcd for reads and transactions (etcd
/// caps each write at 1.5 MiB by default; watches ask etcd to split
/// larger answers).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Most keys [`Store::list`] returns; a larger prefix is an error rather
/// than an unbounded allocation.
pub const LIST_MAX_KEYS: usize = 1_000_000;
/// Most lease TTLs remembered (to answer `keep_alive` in one round trip);
/// beyond it the cache starts over and TTLs are read back from etcd.
const LEASE_CACHE_MAX: usize = 4096;
/// HTTP/2 keep-alive pings while a stream (a watch) is open, so a member
/// that vanished without closing the connection is noticed. etcd refuses
/// pings more often than every 5 s (`--grpc-keepalive-min-time`).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The coordination store on an etcd v3 cluster. Share it as
/// `Arc<EtcdStore>` or `Arc<dyn Store>`.
pub struct EtcdStore {
    pool: Pool,
    /// Granted TTL of leases this store granted or looked up, so
    /// `keep_alive` can report it without a second request.
    lease_ttls: Mutex<HashMap<LeaseId, Duration>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints())
            .field("preferred", &self.preferred_endpoint())
            .finish_non_exhaustive()
    }
}

/// Reads a PEM file named in the TLS options.
fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        StoreError::InvalidArgument(format!(
            "cannot read the etcd TLS {what} {}: {e}",
            path.display()
        ))
    })
}

/// Checks the endpoints and options; builds etcd-client's options.
fn connect_options(endpoints: &[String], options: &EtcdOptions) -> Result<ConnectOptions> {
    let invalid = |m: String| Err(StoreError::InvalidArgument(m));
    if endpoints.is_empty() {
        return invalid("no etcd endpoint given".to_owned());
    }
    if options.connect_timeout.is_zero() || options.request_timeout.is_zero() {
        return invalid(format!(
            "etcd timeouts must be positive (connect {:?}, request {:?})",
            options.connect_timeout, options.request_timeout
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let tls = if e.starts_with("https://") {
            true
        } else if e.starts_with("http://") {
            false
        } else {
            return invalid(format!(
                "etcd endpoint {e:?} must start with http:// or https://"
            ));
        };
        if tls != options.tls.is_some() {
            return invalid(if tls {
                format!("etcd endpoint {e:?} is https:// but no TLS options were given")
            } else {
                format!("etcd endpoint {e:?} is http:// but TLS options were given: use https://")
            });
        }
        if endpoints[..i].contains(e) {
            return invalid(format!("etcd endpoint {e:?} is listed twice"));
        }
    }
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
        .with_keep_alive_while_idle(false)
        .with_require_leader(true);
    if let Some((name, password)) = &options.user {
        connect = connect
            .with_user(name.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &options.tls {
        let mut config =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem("CA", &tls.ca)?));
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read_pem("certificate", cert)?,
                    read_pem("key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return invalid(
                    "etcd TLS needs both a client certificate and its key, or neither".to_owned(),
                );
            }
        }
        connect = connect.with_tls(config);
    }
    Ok(connect)
}

impl EtcdStore {
    /// Connects to the cluster through `endpoints` (`http://host:port` or,
    /// with [`EtcdOptions::tls`], `https://host:port`; see
    /// [`parse_store_url`]). Succeeds once any member answers; fails with
    /// [`StoreError::Unavailable`] naming every endpoint's error if none
    /// does within [`EtcdOptions::connect_timeout`], and with
    /// [`StoreError::InvalidArgument`] for malformed endpoints or options.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Arc<EtcdStore>> {
        let connect = connect_options(endpoints, &options)?;
        let store = EtcdStore {
            pool: Pool::new(endpoints, connect, options.request_timeout),
            lease_ttls: Mutex::new(HashMap::new()),
        };
        // Ask every member for its status at once; the first to answer
        // becomes the preferred one.
        let timeout = options.connect_timeout;
        let mut probes: futures::stream::FuturesUnordered<_> = store
            .pool
            .members
            .iter()
            .enumerate()
            .map(|(i, member)| {
                let connect = &store.pool.options;
                async move {
                    let result = tokio::time::timeout(timeout, async {
                        let client = member.client(connect).await?;
                        let mut maintenance = client.maintenance_client();
                        maintenance.status().await.map_err(|e| classify(&e))
                    })
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::Ambiguous(format!("no answer within {timeout:?}")))
                    });
                    (i, result)
                }
            })
            .collect();
        let mut errors = Vec::new();
        let mut leaderless = None;
        let mut fatal = None;
        let mut answered = None;
        while let Some((i, result)) = probes.next().await {
            let endpoint = &store.pool.members[i].endpoint;
            match result {
                Ok(_) => {
                    answered = Some(i);
                    break;
                }
                // It answered, but has no leader right now: reachable.
                Err(Failure::NotApplied(m)) if m.contains("no leader") => {
                    leaderless.get_or_insert(i);
                    errors.push(format!("{endpoint}: {m}"));
                }
                Err(Failure::Final(e)) => {
                    errors.push(format!("{endpoint}: {e}"));
                    fatal.get_or_insert(e);
                }
                Err(Failure::NotApplied(m) | Failure::Ambiguous(m)) => {
                    errors.push(format!("{endpoint}: {m}"))
                }
            }
        }
        drop(probes);
        if let Some(i) = answered {
            store.pool.set_preferred(i);
            tracing::info!(endpoint = %store.pool.members[i].endpoint, "connected to etcd");
            return Ok(Arc::new(store));
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        if let Some(i) = leaderless {
            store.pool.set_preferred(i);
            tracing::warn!(
                errors = %errors.join("; "),
                "connected to etcd, but no member has a leader (no quorum) right now"
            );
            return Ok(Arc::new(store));
        }
        Err(StoreError::Unavailable(format!(
            "cannot connect to etcd: no member answered within {timeout:?} ({})",
            errors.join("; ")
        )))
    }

    /// The client endpoints, as given to [`EtcdStore::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        self.pool
            .members
            .iter()
            .map(|m| m.endpoint.clone())
            .collect()
    }

    /// The endpoint requests (and new watches) go to first: the member
    /// that last answered.
    pub fn preferred_endpoint(&self) -> &str {
        &self.pool.members[self.pool.preferred()].endpoint
    }

    fn remember_ttl(&self, lease: LeaseId, ttl: Duration) {
        if let Ok(mut ttls) = self.lease_ttls.lock() {
            if ttls.len() >= LEASE_CACHE_MAX {
                ttls.clear();
            }
            ttls.insert(lease, ttl);
        }
    }

    fn forget_ttl(&self, lease: LeaseId) {
        if let Ok(mut ttls) = self.lease_ttls.lock() {
            ttls.remove(&lease);
        }
    }

    fn known_ttl(&self, lease: LeaseId) -> Option<Duration> {
        self.lease_ttls.lock().ok()?.get(&lease).copied()
    }

    /// Which of `leases` no longer exists (for a transaction etcd refused
    /// with "lease not found"); the first one if none can be told apart.
    async fn missing_lease(&self, leases: &[LeaseId]) -> LeaseId {
        if let [only] = leases {
            return *only;
        }
        for &lease in leases {
            let ttl = self
                .pool
                .call(
                    "lease time-to-live",
                    Retry::Always,
                    |client, _| async move {
                        let mut leases = client.lease_client();
                        leases
                            .time_to_live(lease, None)
                            .await
                            .map(|r| r.0.ttl)
                            .map_err(|e| classify(&e))
                    },
                )
                .await;
            if let Ok((ttl, _)) = ttl
                && ttl <= 0
            {
                return lease;
            }
        }
        leases.first().copied().unwrap_or_default()
    }

    /// One page of a listing: at most `limit` keys in `[from, end)` at
    /// revision `at` (0: now).
    async fn list_page(&self, from: &[u8], end: &[u8], at: i64, limit: usize) -> Result<Page> {
        let (page, _) = self
            .pool
            .call("list", Retry::Always, |client, _| async move {
                let mut options = GetOptions::new()
                    .with_range(end)
                    .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
                if at > 0 {
                    options = options.with_revision(at);
                }
                match kv_client(&client).get(from, Some(options)).await {
                    Ok(r) => {
                        let r = r.0;
                        let revision = header_revision(r.header.as_ref())?;
                        let last = r.kvs.last().map(|kv| kv.key.clone());
                        let kvs = r.kvs.into_iter().map(kv).collect::<Result<Vec<_>, _>>()?;
                        Ok(Page::Keys {
                            kvs,
                            more: r.more,
                            last,
                            revision,
                        })
                    }
                    Err(e) if is_compacted(&e) => Ok(Page::Compacted),
                    Err(e) if is_too_large(&e) => Ok(Page::TooLarge),
                    Err(e) => Err(classify(&e)),
                }
            })
            .await?;
        Ok(page)
    }
}

/// etcd refused a transaction because a lease it binds keys to is gone.
struct MissingLease;

/// What one page of a listing returned.
enum Page {
    Keys {
        kvs: Vec<KeyValue>,
        /// More keys follow in the range.
        more: bool,
        /// The raw last key (where the next page starts).
        last: Option<Vec<u8>>,
        revision: Revision,
    },
    /// The listing's revision was compacted between pages.
    Compacted,
    /// The page exceeded [`MAX_RESPONSE_BYTES`].
    TooLarge,
}

/// A KV client that accepts answers up to [`MAX_RESPONSE_BYTES`].
fn kv_client(client: &etcd_client::Client) -> etcd_client::KvClient {
    client
        .kv_client()
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// The end of the key range of everything starting with `prefix` (etcd's
/// "prefix end": the prefix with its last byte below 0xff incremented;
/// `\0` for "no end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key of the range of `prefix` (etcd reads an empty key as
/// "no key", so the empty prefix starts at `\0`).
fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

/// Rounds a TTL up to whole seconds, at least one.
fn ttl_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        validate_key(key)?;
        let (found, _) = self
            .pool
            .call("get", Retry::Always, |client, _| async move {
                let r = kv_client(&client)
                    .get(key, None)
                    .await
                    .map_err(|e| classify(&e))?
                    .0;
                match r.kvs.into_iter().next() {
                    Some(found) => Ok(Some(kv(found)?)),
                    None => Ok(None),
                }
            })
            .await?;
        Ok(found)
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        const ATTEMPTS: usize = 3;
        let end = prefix_end(prefix.as_bytes());
        let mut limit = LIST_PAGE_KEYS;
        'listing: for _ in 0..ATTEMPTS {
            let mut kvs = Vec::new();
            let mut from = range_start(prefix);
            // The first page fixes the revision of the whole listing.
            let mut at: Option<Revision> = None;
            loop {
                let rev = match at {
                    Some(r) => i64::try_from(r).map_err(|_| {
                        StoreError::Internal(format!("etcd revision {r} out of range"))
                    })?,
                    None => 0,
                };
                let (page, more, last, revision) =
                    match self.list_page(&from, &end, rev, limit).await? {
                        Page::Keys {
                            kvs,
                            more,
                            last,
                            revision,
                        } => (kvs, more, last, revision),
                        Page::Compacted => continue 'listing,
                        Page::TooLarge if limit > 1 => {
                            limit = (limit / 4).max(1);
                            continue;
                        }
                        Page::TooLarge => {
                            return Err(StoreError::Internal(format!(
                                "a key under {prefix:?} is larger than {MAX_RESPONSE_BYTES} bytes"
                            )));
                        }
                    };
                at.get_or_insert(revision);
                kvs.extend(page);
                if kvs.len() > LIST_MAX_KEYS {
                    return Err(StoreError::Internal(format!(
                        "more than {LIST_MAX_KEYS} keys under {prefix:?}"
                    )));
                }
                match (more, last) {
                    (true, Some(mut last)) => {
                        last.push(0);
                        from = last;
                    }
                    _ => break,
                }
            }
            return Ok(Listing {
                kvs,
                revision: at.unwrap_or_default(),
            });
        }
        Err(StoreError::Unavailable(format!(
            "list of {prefix:?}: the listing's revision was compacted {ATTEMPTS} times in a row"
        )))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        validate_key(key)?;
        let (rev, _) = self
            .pool
            .call("put", Retry::IfNotApplied, |client, _| {
                let value = value.clone();
                async move {
                    let options = lease.map(|l| PutOptions::new().with_lease(l));
                    match kv_client(&client).put(key, value, options).await {
                        Ok(r) => header_revision(r.0.header.as_ref()),
                        Err(e) if is_lease_not_found(&e) => Err(Failure::Final(
                            StoreError::LeaseNotFound(lease.unwrap_or_default()),
                        )),
                        Err(e) => Err(classify(&e)),
                    }
                }
            })
            .await?;
        Ok(rev)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let (existed, _) = self
            .pool
            .call("delete", Retry::IfNotApplied, |client, _| async move {
                let r = client
                    .kv_client()
                    .delete(key, None)
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(r.0.deleted > 0)
            })
            .await?;
        Ok(existed)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        convert::validate_txn(&txn)?;
        let request = convert::etcd_txn(&txn)?;
        let retry = if convert::is_read_only(&txn) {
            Retry::Always
        } else {
            Retry::IfNotApplied
        };
        let result = self
            .pool
            .call("txn", retry, |client, _| {
                let (request, txn) = (request.clone(), &txn);
                async move {
                    let r = match kv_client(&client).txn(request).await {
                        Ok(r) => r.0,
                        // Which of its leases is gone is found out below.
                        Err(e) if is_lease_not_found(&e) => return Ok(Err(MissingLease)),
                        Err(e) => return Err(classify(&e)),
                    };
                    let revision = header_revision(r.header.as_ref())?;
                    let ops = if r.succeeded {
                        &txn.success
                    } else {
                        &txn.failure
                    };
                    let results: Vec<OpResult> = convert::op_results(ops, r.responses)?;
                    Ok(Ok(TxnResponse {
                        succeeded: r.succeeded,
                        revision,
                        results,
                    }))
                }
            })
            .await?;
        match result.0 {
            Ok(response) => Ok(response),
            Err(MissingLease) => Err(StoreError::LeaseNotFound(
                self.missing_lease(&convert::txn_leases(&txn)).await,
            )),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("lease TTL of zero".to_owned()));
        }
        let secs = i64::try_from(ttl_seconds(ttl)).map_err(|_| {
            StoreError::InvalidArgument(format!("lease TTL {ttl:?} is too long for etcd"))
        })?;
        let (lease, _) = self
            .pool
            .call("grant lease", Retry::Always, |client, _| async move {
                let r = client
                    .lease_client()
                    .grant(secs, None)
                    .await
                    .map_err(|e| classify(&e))?
                    .0;
                if !r.error.is_empty() {
                    return Err(Failure::Final(StoreError::Internal(format!(
                        "etcd refused a lease: {}",
                        r.error
                    ))));
                }
                let granted = u64::try_from(r.ttl)
                    .ok()
                    .filter(|&t| t > 0)
                    .ok_or_else(|| malformed(format_args!("a lease granted with TTL {}", r.ttl)))?;
                Ok(Lease {
                    id: r.id,
                    ttl: Duration::from_secs(granted),
                })
            })
            .await?;
        self.remember_ttl(lease.id, lease.ttl);
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let renewed = self
            .pool
            .call("keep-alive", Retry::Always, |client, _| async move {
                match client.lease_client().keep_alive(lease).await {
                    // The first answer (read by etcd-client) renewed it.
                    Ok(_) => Ok(()),
                    Err(e) if is_lease_not_found(&e) => {
                        Err(Failure::Final(StoreError::LeaseNotFound(lease)))
                    }
                    Err(e) => Err(classify(&e)),
                }
            })
            .await;
        if let Err(e) = renewed {
            if matches!(e, StoreError::LeaseNotFound(_)) {
                self.forget_ttl(lease);
            }
            return Err(e);
        }
        if let Some(ttl) = self.known_ttl(lease) {
            return Ok(ttl);
        }
        // A lease granted elsewhere: read its TTL once.
        let (granted, _) = self
            .pool
            .call(
                "lease time-to-live",
                Retry::Always,
                |client, _| async move {
                    let r = client
                        .lease_client()
                        .time_to_live(lease, None)
                        .await
                        .map_err(|e| classify(&e))?
                        .0;
                    if r.ttl <= 0 || r.granted_ttl <= 0 {
                        return Err(Failure::Final(StoreError::LeaseNotFound(lease)));
                    }
                    Ok(Duration::from_secs(r.granted_ttl.unsigned_abs()))
                },
            )
            .await?;
        self.remember_ttl(lease, granted);
        Ok(granted)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let result = self
            .pool
            .call(
                "revoke lease",
                Retry::Always,
                |client, attempt| async move {
                    match client.lease_client().revoke(lease).await {
                        Ok(_) => Ok(()),
                        // An earlier attempt that got no answer revoked it.
                        Err(e) if is_lease_not_found(&e) && attempt.maybe_applied => Ok(()),
                        Err(e) if is_lease_not_found(&e) => {
                            Err(Failure::Final(StoreError::LeaseNotFound(lease)))
                        }
                        Err(e) => Err(classify(&e)),
                    }
                },
            )
            .await;
        if matches!(result, Ok(_) | Err(StoreError::LeaseNotFound(_))) {
            self.forget_ttl(lease);
        }
        result.map(|_| ())
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let start_i64 = i64::try_from(start).map_err(|_| {
            StoreError::InvalidArgument(format!(
                "watch start revision {start} is out of etcd's range"
            ))
        })?;
        let from = range_start(prefix);
        let end = prefix_end(prefix.as_bytes());
        let (stream, index) = self
            .pool
            .call("watch", Retry::Always, |client, _| {
                let (from, end) = (from.clone(), end.clone());
                async move {
                    // A start revision that compaction removed: etcd would
                    // only cancel the watch later, so ask first.
                    let mut compacted = false;
                    if start > 0 {
                        let probe = GetOptions::new().with_revision(start_i64).with_count_only();
                        match kv_client(&client).get(from.clone(), Some(probe)).await {
                            Ok(_) => {}
                            Err(e) if is_compacted(&e) => compacted = true,
                            // A future revision: etcd waits for it.
                            Err(e)
                                if matches!(&e, etcd_client::Error::GRpcStatus(s)
                                if s.code() == tonic::Code::OutOfRange) => {}
                            Err(e) => return Err(classify(&e)),
                        }
                    }
                    let options = WatchOptions::new()
                        .with_range(end)
                        .with_start_revision(start_i64)
                        .with_fragment();
                    let mut stream = client
                        .watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .watch(from, Some(options))
                        .await
                        .map_err(|e| classify(&e))?;
                    // Established only once etcd says "created".
                    loop {
                        let response = match stream.message().await {
                            Ok(Some(r)) => r.0,
                            Ok(None) => {
                                return Err(Failure::Ambiguous(
                                    "the watch stream ended before it was created".to_owned(),
                                ));
                            }
                            Err(e) => return Err(classify(&e)),
                        };
                        if response.canceled {
                            if response.compact_revision > 0 {
                                return Err(Failure::Final(StoreError::Compacted {
                                    requested: start,
                                    oldest: convert::revision(response.compact_revision)
                                        .unwrap_or_default(),
                                }));
                            }
                            return Err(Failure::Final(StoreError::Internal(format!(
                                "etcd refused the watch: {}",
                                response.cancel_reason
                            ))));
                        }
                        if response.created && !compacted {
                            return Ok(stream);
                        }
                        // Compacted: etcd cancels the watch shortly, with
                        // the oldest revision it kept; wait for it.
                    }
                }
            })
            .await?;
        Ok(watch::stream(
            stream,
            start,
            self.pool.members[index].endpoint.clone(),
            prefix.to_owned(),
            self.pool.members[index].silence(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        // The empty prefix: every key, from "\0" with no end ("\0").
        assert_eq!((range_start(""), prefix_end(b"")), (vec![0], vec![0]));
        assert_eq!(range_start("/a/"), b"/a/".to_vec());
    }

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(ttl_seconds(ms(1)), 1);
        assert_eq!(ttl_seconds(ms(1000)), 1);
        assert_eq!(ttl_seconds(ms(1001)), 2);
        assert_eq!(ttl_seconds(ms(2000)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(15)), 15);
    }
}
