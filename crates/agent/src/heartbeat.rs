//! Heartbeats between agents: detects a lost host in tens of milliseconds,
//! where its store lease takes seconds to expire.
//!
//! Every process sends, for each of its hosts, a small UDP datagram every
//! `heartbeat_interval` to the agent port of every *other* host of the
//! topology (UDP port numbers are separate from TCP ones: the agent port's
//! number serves both), and listens for theirs on the same port. It also
//! holds one silent TCP connection to every other agent's port
//! (`GET /v1/liveness`, never answered while that agent runs, see
//! [`crate::peer`]): when that agent's process ends, its kernel closes the
//! connection at once. What is heard is fed to a
//! [`tandem_core::detector::Detector`], which decides who is suspected and
//! why; the suspected set is published on a [`watch`] channel for the
//! controller candidates (only when it changes).
//!
//! Threads, not tokio tasks, so that a busy runtime cannot delay a
//! heartbeat: one sends, one receives and runs the detector, and one per
//! peer holds its liveness connection. The receiving thread drains every
//! datagram already queued before it judges silence: a receiver that was
//! descheduled does not suspect a sender whose heartbeats wait in its
//! socket; it also notices when it woke later than it asked, or was
//! paused while it drained (its process or machine was paused), and tells
//! the detector, which does not count that time as the peers' silence. The sending thread asks for real-time
//! scheduling (`SCHED_RR` 1, as corosync does; it needs root or
//! `CAP_SYS_NICE`, and keeps the normal policy otherwise): on a busy
//! machine an ordinary thread can wait for a CPU longer than
//! `suspect_after`, and its peers would suspect it. Nothing is allocated
//! per datagram.
//!
//! When every host of the topology runs in this process (`tandem up`),
//! there is nobody to hear: nothing is sent and nobody is suspected.
//!
//! # The datagram
//!
//! Fixed binary, big-endian: `TDHB`, version `2` (untagged) or `3`
//! (tagged), the sender host name's length `n` (1..=255), the sender's
//! session (`u64`, one per run of this service: the wall-clock time in ns
//! at its start, so it grows from run to run), its sequence number
//! (`u64`, one per round), the hosts it suspects (`u64`, bit `i` for the
//! topology's `i`-th host; hosts beyond the 64th cannot be reported), the
//! name (`n` bytes of UTF-8), then, in version 3 only, a 16-byte tag
//! over every byte before it.
//!
//! # Authentication
//!
//! With a cluster secret ([`crate::sign::ClusterSecret`], the one that
//! signs failsafe messages), every datagram is version 3, tagged with a
//! truncated HMAC-SHA256 under a key derived from the secret for
//! heartbeats only, and a receiver drops (and counts) every datagram that
//! is untagged (`untagged`), whose tag does not match (`unauthenticated`),
//! or that is not newer, by (session, sequence number), than the last it
//! accepted from that sender (`replayed`): see [`auth`]. A forged or
//! replayed datagram can then neither hide a dead host nor corroborate a
//! suspicion. The sender tags once per round (one tag serves every peer);
//! the receiver checks one tag per datagram, after the cheap checks
//! (about a microsecond each, see the printed cost in the tests). An
//! agent without a secret (development) sends version 2 and, having no key
//! to check a tag with, hears both versions on the sender's address
//! alone. Mixing is fail-safe: an agent with the secret never hears one
//! without it (that one looks silent, and the lease decides), and an
//! agent without the secret still hears the ones with it (so agents can be
//! given the secret one at a time without being suspected).
//!
//! # Corroboration
//!
//! What is published is not every suspicion of this process but the
//! corroborated ones ([`tandem_core::detector::corroborated`]): another
//! observer this process still hears must report the same suspicion in
//! its heartbeats, unless there is no other observer. One slow receiver,
//! one bad link or a host healed from its own isolation then moves
//! nothing. A datagram is untrusted input: one that does not
//! parse (`malformed`), names a host that is not a peer (`unknown_host`),
//! comes from another address than that host's (`wrong_address`), fails
//! authentication (above), or is older than one heard of the same session
//! (`stale`), is dropped and counted
//! (`tandem_heartbeats_dropped_total{why}`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tandem_core::detector::{Detector, DetectorConfig, DetectorInput, DetectorStep, corroborated};
use tandem_core::topology::Topology;
use tandem_telemetry::host::{HostEvent, HostMetrics};
use tracing::warn;

use crate::sign::ClusterSecret;
use auth::{Guard, HeartbeatKey, Refused, TAG_LEN};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub mod auth;

/// The first bytes of every heartbeat.
const MAGIC: &[u8; 4] = b"TDHB";
/// The datagram format's version without a tag (no cluster secret).
const VERSION: u8 = 2;
/// The datagram format's version with a tag (see [`auth`]).
const VERSION_TAGGED: u8 = 3;
/// Magic, version, name length, session, sequence number, suspects.
const HEADER: usize = 4 + 1 + 1 + 8 + 8 + 8;
/// Where the sequence number is.
const SEQ_AT: usize = 14;
/// Where the sender's suspicions are.
const SUSPECTS_AT: usize = 22;
/// The most hosts a heartbeat can report as suspected.
const MAX_REPORTED: usize = 64;
/// The longest host name a heartbeat carries.
const MAX_NAME: usize = 255;
/// The longest datagram read (anything longer is malformed).
pub const MAX_DATAGRAM: usize = HEADER + MAX_NAME + TAG_LEN + 1;
/// The receiver wakes at least this often (to see a stop).
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How much later than asked the receiver may wake before it counts as a
/// stall of its own (see [`DetectorInput::Stalled`]).
const STALL_NOISE: Duration = Duration::from_millis(2);
/// The most datagrams read from one socket before judging (then the
/// next round reads on).
const MAX_DRAIN: usize = 4096;
/// A liveness connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// A liveness thread looks for a stop this often while it waits.
const LINK_POLL: Duration = Duration::from_millis(100);
/// Backoff between liveness connection attempts: from, up to.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// The liveness request (see [`crate::peer`]).
const LIVENESS_REQUEST: &[u8] =
    b"GET /v1/liveness HTTP/1.1\r\nhost: tandem\r\nconnection: close\r\n\r\n";

/// A heartbeat, parsed (borrowing the datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    /// The sending host.
    pub host: &'a str,
    /// The sending service's session.
    pub session: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The hosts it suspects: bit `i` for the topology's `i`-th host.
    pub suspects: u64,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than a header.
    #[error("shorter than a heartbeat")]
    Short,
    /// Not `TDHB` or another version.
    #[error("not a heartbeat of this version")]
    Magic,
    /// The name's length does not match the datagram's.
    #[error("the host name's length does not match")]
    Length,
    /// The name is not UTF-8.
    #[error("the host name is not UTF-8")]
    Utf8,
}

impl Heartbeat<'_> {
    /// Parses a datagram.
    pub fn parse(buf: &[u8]) -> Result<Heartbeat<'_>, Malformed> {
        if buf.len() < HEADER {
            return Err(Malformed::Short);
        }
        let tag_len = match buf[4] {
            VERSION => 0,
            VERSION_TAGGED => TAG_LEN,
            _ => return Err(Malformed::Magic),
        };
        if &buf[..4] != MAGIC {
            return Err(Malformed::Magic);
        }
        let n = usize::from(buf[5]);
        if n == 0 || buf.len() != HEADER + n + tag_len {
            return Err(Malformed::Length);
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let host = std::str::from_utf8(&buf[HEADER..HEADER + n]).map_err(|_| Malformed::Utf8)?;
        Ok(Heartbeat {
            host,
            session: word(6),
            seq: word(SEQ_AT),
            suspects: word(SUSPECTS_AT),
        })
    }

    /// Encodes it into `out`, tagged with `key` if given (version 3,
    /// else 2), returning the datagram's length; `None` if the host name
    /// is empty or longer than 255 bytes.
    pub fn encode(
        &self,
        out: &mut [u8; MAX_DATAGRAM],
        key: Option<&HeartbeatKey>,
    ) -> Option<usize> {
        let name = self.host.as_bytes();
        let n = u8::try_from(name.len()).ok().filter(|n| *n > 0)?;
        out[..4].copy_from_slice(MAGIC);
        out[4] = if key.is_some() {
            VERSION_TAGGED
        } else {
            VERSION
        };
        out[5] = n;
        out[6..14].copy_from_slice(&self.session.to_be_bytes());
        out[SEQ_AT..SUSPECTS_AT].copy_from_slice(&self.seq.to_be_bytes());
        out[SUSPECTS_AT..HEADER].copy_from_slice(&self.suspects.to_be_bytes());
        out[HEADER..HEADER + name.len()].copy_from_slice(name);
        let len = HEADER + name.len();
        match key {
            Some(key) => {
                retag(out, len + TAG_LEN, key);
                Some(len + TAG_LEN)
            }
            None => Some(len),
        }
    }
}

/// A parsed datagram's content and its tag (version 3), or the whole
/// datagram and no tag (version 2).
pub fn split_tag(datagram: &[u8]) -> (&[u8], Option<&[u8]>) {
    match datagram.get(4) {
        Some(&VERSION_TAGGED) if datagram.len() >= TAG_LEN => {
            let (content, tag) = datagram.split_at(datagram.len() - TAG_LEN);
            (content, Some(tag))
        }
        _ => (datagram, None),
    }
}

/// Writes the tag of the tagged datagram `buf[..len]` (over everything
/// before its last [`TAG_LEN`] bytes) into those bytes.
fn retag(buf: &mut [u8; MAX_DATAGRAM], len: usize, key: &HeartbeatKey) {
    let at = len - TAG_LEN;
    let tag = key.tag(&buf[..at]);
    buf[at..len].copy_from_slice(&tag);
}

/// A peer host: its name and agent port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    name: String,
    addr: SocketAddr,
}

/// The peers of `local` in `topology`: every other host.
fn peers_of(topology: &Topology, local: &[String]) -> Vec<Peer> {
    topology
        .hosts
        .iter()
        .filter(|h| !local.contains(&h.name))
        .map(|h| Peer {
            name: h.name.clone(),
            addr: SocketAddr::new(h.address, topology.cluster.agent_port),
        })
        .collect()
}

/// What a liveness thread reports.
enum Link {
    Opened(usize),
    Closed(usize),
}

/// The heartbeat service of one process (see the module's docs). Stops
/// when its cancellation token fires, or with [`Heartbeats::stop`].
pub struct Heartbeats {
    local: Vec<String>,
    /// Tags sent datagrams and checks received ones (a cluster secret).
    key: Option<HeartbeatKey>,
    metrics: Vec<Arc<HostMetrics>>,
    cancel: CancellationToken,
    suspects: Arc<watch::Sender<BTreeSet<String>>>,
    running: Option<Running>,
}

/// The threads of one run.
struct Running {
    peers: Vec<Peer>,
    stop: Arc<AtomicBool>,
    wake: UnixDatagram,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(&[0]);
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.signal_stop();
        }
    }
}

impl Heartbeats {
    /// Starts heartbeats for the `local` hosts of `topology` (run by this
    /// process), each agent's events counted in its `metrics` (aligned
    /// with `local`; the first one also logs them). Returns the service
    /// and the suspected set. With `secret`, every datagram is tagged and
    /// only tagged ones are heard (see [`auth`]). Fails if a local host's
    /// UDP port cannot be bound.
    pub fn start(
        topology: &Topology,
        local: &[String],
        metrics: Vec<Arc<HostMetrics>>,
        secret: Option<&ClusterSecret>,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Heartbeats, watch::Receiver<BTreeSet<String>>)> {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let mut hb = Heartbeats {
            local: local.to_vec(),
            key: secret.map(HeartbeatKey::derive),
            metrics,
            cancel,
            suspects: Arc::new(tx),
            running: None,
        };
        hb.running = hb.run(topology)?;
        Ok((hb, rx))
    }

    /// Follows a new topology (same cluster settings and local hosts):
    /// if the other hosts changed, starts again with them (what was known
    /// of the others is forgotten: nobody is suspected until heard again).
    pub async fn update(&mut self, topology: &Topology) -> anyhow::Result<()> {
        let peers = peers_of(topology, &self.local);
        if self.running.as_ref().map(|r| &r.peers) == Some(&peers)
            || (self.running.is_none() && peers.is_empty())
        {
            return Ok(());
        }
        self.join().await;
        self.running = self.run(topology)?;
        Ok(())
    }

    /// Stops every thread and waits for them.
    pub async fn stop(mut self) {
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(r) = self.running.take() {
            r.signal_stop();
            let Running { threads, .. } = r;
            let _ = tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            })
            .await;
        }
    }

    /// Starts the threads; `None` when there is nobody to hear.
    fn run(&self, topology: &Topology) -> anyhow::Result<Option<Running>> {
        let peers = peers_of(topology, &self.local);
        self.suspects.send_if_modified(|s| {
            let was = !s.is_empty();
            s.clear();
            was
        });
        if peers.is_empty() || self.local.is_empty() {
            return Ok(None);
        }
        let cluster = &topology.cluster;
        let mut sockets = Vec::new();
        for name in &self.local {
            let host = topology
                .host(name)
                .with_context(|| format!("host {name:?} is not in the topology"))?;
            let addr = SocketAddr::new(host.address, cluster.agent_port);
            let socket = UdpSocket::bind(addr).with_context(|| {
                format!(
                    "cannot bind the heartbeat port {addr} (UDP; set [cluster] agent_port to a port free for TCP and UDP)"
                )
            })?;
            socket
                .set_nonblocking(true)
                .with_context(|| format!("cannot set up the heartbeat port {addr}"))?;
            sockets.push((name.clone(), socket));
        }
        let (wake, wake_rx) = UnixDatagram::pair().context("cannot create a socket pair")?;
        wake_rx
            .set_nonblocking(true)
            .context("cannot set up a socket pair")?;
        wake.set_nonblocking(true)
            .context("cannot set up a socket pair")?;
        let stop = Arc::new(AtomicBool::new(false));
        let session = session_id();
        let mut threads = Vec::new();

        // Sender.
        let mut outgoing = Vec::new();
        for (name, socket) in &sockets {
            let mut buf = [0u8; MAX_DATAGRAM];
            let len = Heartbeat {
                host: name,
                session,
                seq: 0,
                suspects: 0,
            }
            .encode(&mut buf, self.key.as_ref())
            .with_context(|| format!("host name {name:?} is too long for a heartbeat"))?;
            let socket = socket.try_clone().context("cannot share a UDP socket")?;
            outgoing.push((socket, buf, len));
        }
        let targets: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
        let interval = cluster.heartbeat_interval.max(Duration::from_micros(100));
        // What this process suspects, as the sender reports it.
        let reported = Arc::new(AtomicU64::new(0));
        threads.push(spawn("tandem-hb-send", {
            let stop = stop.clone();
            let reported = reported.clone();
            let key = self.key.clone();
            move || send_loop(outgoing, targets, interval, key.as_ref(), &reported, &stop)
        })?);

        // Liveness connections.
        let (link_tx, link_rx) = mpsc::channel();
        for (i, peer) in peers.iter().enumerate() {
            let (stop, link_tx) = (stop.clone(), link_tx.clone());
            let wake = wake.try_clone().context("cannot share a socket pair")?;
            let addr = peer.addr;
            threads.push(spawn("tandem-hb-link", move || {
                liveness_loop(i, addr, &link_tx, &wake, &stop)
            })?);
        }

        // Receiver and detector.
        let config = DetectorConfig::from_cluster(cluster);
        let mut poll_fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|(_, s)| s.as_raw_fd())
            .chain([wake_rx.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        poll_fds.shrink_to_fit();
        let receiver = Receiver {
            max_wait: interval.clamp(Duration::from_millis(1), MAX_WAIT),
            poll_fds,
            detector: Detector::new(config, peers.iter().map(|p| p.name.clone())),
            addresses: peers
                .iter()
                .map(|p| (p.name.clone(), p.addr.ip().to_canonical()))
                .collect(),
            names: peers.iter().map(|p| p.name.clone()).collect(),
            open: vec![false; peers.len()],
            sockets: sockets.into_iter().map(|(_, s)| s).collect(),
            wake: wake_rx,
            links: link_rx,
            metrics: self.metrics.clone(),
            suspects: self.suspects.clone(),
            origin: Instant::now(),
            bits: topology
                .hosts
                .iter()
                .take(MAX_REPORTED)
                .enumerate()
                .map(|(i, h)| (h.name.clone(), 1u64 << i))
                .collect(),
            reports: BTreeMap::new(),
            reported,
            guard: self.key.clone().map(Guard::new),
            warned: BTreeMap::new(),
        };
        threads.push(spawn("tandem-hb-recv", {
            let stop = stop.clone();
            move || receiver.run(&stop)
        })?);

        let running = Running {
            peers,
            stop: stop.clone(),
            wake: wake.try_clone().context("cannot share a socket pair")?,
            threads,
        };
        // The agent's cancellation stops the threads.
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.store(true, Ordering::SeqCst);
            let _ = wake.send(&[0]);
        });
        info!(
            peers = running.peers.len(),
            interval_ms = duration_ms(cluster.heartbeat_interval),
            suspect_after_ms = duration_ms(config.suspect_after),
            authenticated = self.key.is_some(),
            "heartbeats: sending to and hearing every other host"
        );
        Ok(Some(running))
    }
}

/// `d` rounded up to whole milliseconds (poll's unit).
fn round_up_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

/// Asks for real-time scheduling (`SCHED_RR`, the lowest priority) for the
/// calling thread, as corosync does for its heartbeats: a machine busy with
/// other work must not delay them past `suspect_after`. Needs root or
/// `CAP_SYS_NICE`; without it the thread keeps the normal policy.
fn raise_priority() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets the scheduling policy of the calling thread, with a
    // valid parameter; no memory is shared.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) == 0 }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A session id that grows from one run to the next (while the wall
/// clock does not go back): the wall clock's nanoseconds at start. An
/// authenticating receiver accepts no session older than one it heard
/// (see [`auth`]).
fn session_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Sends one heartbeat per local host to every peer every `interval`, on
/// an absolute schedule (a late round does not shift the next ones; a
/// round more than one interval late starts the schedule again).
fn send_loop(
    mut outgoing: Vec<(UdpSocket, [u8; MAX_DATAGRAM], usize)>,
    targets: Vec<SocketAddr>,
    interval: Duration,
    key: Option<&HeartbeatKey>,
    reported: &AtomicU64,
    stop: &AtomicBool,
) {
    if raise_priority() {
        debug!("heartbeat sender runs at real-time priority (SCHED_RR 1)");
    } else {
        info!(
            "heartbeat sender runs at normal priority (no CAP_SYS_NICE): a busy machine may delay heartbeats past suspect_after"
        );
    }
    let mut seq: u64 = 0;
    let mut next = Instant::now();
    let mut failures: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq = seq.wrapping_add(1);
        for (socket, buf, len) in &mut outgoing {
            buf[SEQ_AT..SUSPECTS_AT].copy_from_slice(&seq.to_be_bytes());
            buf[SUSPECTS_AT..HEADER]
                .copy_from_slice(&reported.load(Ordering::Relaxed).to_be_bytes());
            // One tag per round, whatever the number of peers.
            if let Some(key) = key {
                retag(buf, *len, key);
            }
            for target in &targets {
                if let Err(e) = socket.send_to(&buf[..*len], target) {
                    failures += 1;
                    // Once, then every 1000th (a peer network down).
                    if failures % 1000 == 1 {
                        debug!(%target, error = %e, failures, "cannot send a heartbeat");
                    }
                }
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval {
            next = now;
        }
    }
}

/// Holds the liveness connection to peer `i` at `addr`, reporting when it
/// opens and when the peer closes it; connects again with a backoff.
fn liveness_loop(
    i: usize,
    addr: SocketAddr,
    links: &mpsc::Sender<Link>,
    wake: &UnixDatagram,
    stop: &AtomicBool,
) {
    let report = |link: Link| {
        let _ = links.send(link);
        let _ = wake.send(&[0]);
    };
    let mut backoff = MIN_BACKOFF;
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).and_then(|mut s| {
            s.set_nodelay(true)?;
            s.write_all(LIVENESS_REQUEST)?;
            s.set_read_timeout(Some(LINK_POLL))?;
            Ok(s)
        });
        let mut stream = match stream {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        report(Link::Opened(i));
        backoff = MIN_BACKOFF;
        let closed = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            match stream.read(&mut buf) {
                Ok(0) => break true,
                // An answer: that agent is stopping; wait for the close.
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // Reset: closed as well.
                Err(_) => break true,
            }
        };
        if closed {
            report(Link::Closed(i));
            std::thread::sleep(MIN_BACKOFF);
        }
    }
}

/// The receiving thread: hears heartbeats, runs the detector, publishes.
struct Receiver {
    /// The longest wait: one heartbeat interval (at least 1 ms).
    max_wait: Duration,
    /// The sockets' and the wake-up's descriptors, for poll(2) (they live
    /// as long as the sockets below).
    poll_fds: Vec<libc::pollfd>,
    detector: Detector,
    /// Each peer's address (a heartbeat of it must come from there).
    addresses: BTreeMap<String, IpAddr>,
    /// Peer names by liveness thread index.
    names: Vec<String>,
    /// Whether each peer's liveness connection is open.
    open: Vec<bool>,
    sockets: Vec<UdpSocket>,
    wake: UnixDatagram,
    links: mpsc::Receiver<Link>,
    metrics: Vec<Arc<HostMetrics>>,
    suspects: Arc<watch::Sender<BTreeSet<String>>>,
    origin: Instant,
    /// Each host's bit in a heartbeat's suspects (the first 64 hosts).
    bits: BTreeMap<String, u64>,
    /// What each peer said it suspects, in its latest heartbeat.
    reports: BTreeMap<String, u64>,
    /// What this process suspects, for the sender to report.
    reported: Arc<AtomicU64>,
    /// With a cluster secret: checks tags and replays.
    guard: Option<Guard>,
    /// The last older session of each peer warned about (logged once).
    warned: BTreeMap<String, u64>,
}

impl Receiver {
    fn run(mut self, stop: &AtomicBool) {
        let mut deadline: Option<Duration> = None;
        let mut links = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        while !stop.load(Ordering::Relaxed) {
            let now = self.origin.elapsed();
            // At most one interval: a pause of this thread is then
            // measured (as lateness) within an interval.
            let wait = deadline
                .map(|d| d.saturating_sub(now))
                .unwrap_or(MAX_WAIT)
                .min(self.max_wait);
            let asked = now + round_up_ms(wait);
            self.wait(wait);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // Woke later than asked: this process (or machine) was paused.
            let late = self.origin.elapsed().saturating_sub(asked);
            // Links first, then every queued datagram, then the links'
            // news: a heartbeat queued before a close is not taken for one
            // after it.
            while self.wake.recv(&mut buf).is_ok() {}
            links.extend(self.links.try_iter());
            let now = self.origin.elapsed();
            let mut changed = false;
            if late > STALL_NOISE {
                debug!(late_ms = duration_ms(late), "heartbeat receiver woke late");
                let step = self
                    .detector
                    .step(now, DetectorInput::Stalled { for_time: late });
                changed |= self.apply(&step);
            }
            changed |= self.drain(now, &mut buf);
            for link in links.drain(..) {
                let (i, opened) = match link {
                    Link::Opened(i) => (i, true),
                    Link::Closed(i) => (i, false),
                };
                let Some(host) = self.names.get(i) else {
                    continue;
                };
                if let Some(o) = self.open.get_mut(i) {
                    *o = opened;
                }
                let n = self.open.iter().filter(|o| **o).count();
                for m in &self.metrics {
                    m.set_liveness_connections(n);
                }
                let input = if opened {
                    DetectorInput::Opened { host }
                } else {
                    debug!(
                        peer = host.as_str(),
                        "liveness connection closed by the peer"
                    );
                    DetectorInput::Closed { host }
                };
                let step = self.detector.step(now, input);
                changed |= self.apply(&step);
            }
            // Paused while it drained (after it read the clock): what was
            // queued meanwhile was heard "at" `now`, so the next round
            // would find the peers silent for the whole pause. That pause
            // is a stall of its own too.
            let after = self.origin.elapsed();
            let paused = after.saturating_sub(now);
            if paused > STALL_NOISE {
                debug!(
                    late_ms = duration_ms(paused),
                    "heartbeat receiver paused while it drained"
                );
                let step = self
                    .detector
                    .step(after, DetectorInput::Stalled { for_time: paused });
                changed |= self.apply(&step);
            }
            // Judged at the time of the drain: a thread descheduled since
            // must not take its own pause for the peers' silence.
            let step = self.detector.step(now, DetectorInput::Tick);
            changed |= self.apply(&step);
            deadline = step.next_deadline;
            if changed {
                self.publish();
            }
        }
    }

    /// Waits up to `wait` for a datagram or a wake-up.
    fn wait(&mut self, wait: Duration) {
        // Round up to whole ms: never spin on a sub-ms wait.
        let ms = i32::try_from(round_up_ms(wait).as_millis()).unwrap_or(i32::MAX);
        let n = libc::nfds_t::try_from(self.poll_fds.len()).unwrap_or(0);
        // SAFETY: `poll_fds` is a valid array of `n` pollfd whose
        // descriptors are owned by `self.sockets` and `self.wake`, open
        // for as long as `self` lives. (A prebuilt array: no allocation
        // per wake-up, as nix's borrowed `PollFd`s would need.)
        // EINTR or another error: judge now, wait again next round.
        let _ = unsafe { libc::poll(self.poll_fds.as_mut_ptr(), n, ms) };
    }

    /// Reads every queued datagram; true if a suspicion changed.
    fn drain(&mut self, now: Duration, buf: &mut [u8; MAX_DATAGRAM]) -> bool {
        let mut changed = false;
        let mut received = 0u64;
        for s in 0..self.sockets.len() {
            for _ in 0..MAX_DRAIN {
                let (n, from) = match self.sockets[s].recv_from(buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // E.g. an ICMP error reported on the socket.
                    Err(e) => {
                        debug!(error = %e, "heartbeat socket");
                        continue;
                    }
                };
                received += 1;
                changed |= self.heard(now, &buf[..n], from.ip().to_canonical());
            }
        }
        if received > 0 {
            for m in &self.metrics {
                m.heartbeats_received(received);
            }
        }
        changed
    }

    /// One datagram; true if a suspicion changed.
    fn heard(&mut self, now: Duration, datagram: &[u8], from: IpAddr) -> bool {
        let hb = match Heartbeat::parse(datagram) {
            Ok(hb) => hb,
            Err(_) => {
                self.dropped("malformed");
                return false;
            }
        };
        match self.addresses.get(hb.host) {
            None => {
                self.dropped("unknown_host");
                return false;
            }
            Some(addr) if !addr.is_unspecified() && *addr != from => {
                self.dropped("wrong_address");
                return false;
            }
            Some(_) => {}
        }
        if let Some(guard) = &mut self.guard {
            let (content, tag) = split_tag(datagram);
            if let Err(why) = guard.check(hb.host, hb.session, hb.seq, content, tag) {
                self.refused(&hb, why);
                return false;
            }
        }
        let step = self.detector.step(
            now,
            DetectorInput::Heard {
                host: hb.host,
                session: hb.session,
                seq: hb.seq,
            },
        );
        let mut changed = false;
        if let Some(ignored) = step.ignored {
            self.dropped(ignored.name());
        } else if self.reports.get(hb.host) != Some(&hb.suspects) {
            // What it suspects changed: corroboration may have.
            self.reports.insert(hb.host.to_string(), hb.suspects);
            changed = true;
        }
        self.apply(&step) | changed
    }

    /// Counts a datagram the guard refused; warns once per session of a
    /// peer that an older one than heard before is heard (a replay, or
    /// that agent restarted with its clock set back).
    fn refused(&mut self, hb: &Heartbeat<'_>, why: Refused) {
        self.dropped(why.name());
        if why
            == (Refused::Replayed {
                older_session: true,
            })
            && self.warned.get(hb.host) != Some(&hb.session)
        {
            self.warned.insert(hb.host.to_string(), hb.session);
            warn!(
                peer = hb.host,
                session = hb.session,
                "heartbeats of an older session of this peer than one already heard are ignored: replayed, or its agent restarted with its clock set back (then it is heard again once this agent restarts)"
            );
        }
    }

    fn dropped(&self, why: &'static str) {
        for (i, m) in self.metrics.iter().enumerate() {
            let ev = HostEvent::HeartbeatDropped { why };
            if i == 0 { m.emit(ev) } else { m.count(ev) }
        }
    }

    /// Logs and counts a step's changes; true if there were any.
    fn apply(&self, step: &DetectorStep) -> bool {
        for change in &step.changes {
            for (i, m) in self.metrics.iter().enumerate() {
                let ev = HostEvent::Suspicion(change);
                if i == 0 { m.emit(ev) } else { m.count(ev) }
            }
        }
        !step.changes.is_empty()
    }

    fn publish(&self) {
        let raw: BTreeSet<&str> = self.detector.suspected().collect();
        let bits = raw
            .iter()
            .filter_map(|h| self.bits.get(*h))
            .fold(0u64, |acc, b| acc | b);
        self.reported.store(bits, Ordering::Relaxed);
        let reports = |o: &str, x: &str| {
            let bit = self.bits.get(x)?;
            Some(self.reports.get(o)? & bit != 0)
        };
        let now: BTreeSet<String> = corroborated(&self.names, &raw, reports)
            .into_iter()
            .map(str::to_string)
            .collect();
        for m in &self.metrics {
            m.set_hosts_suspected(now.len());
        }
        self.suspects.send_if_modified(|s| {
            if *s == now {
                false
            } else {
                *s = now;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_round_trips() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let hb = Heartbeat {
            host: "h1",
            session: 0x0102_0304_0506_0708,
            seq: 42,
            suspects: 0b101,
        };
        let len = hb.encode(&mut buf, None).expect("encodes");
        assert_eq!(len, HEADER + 2);
        assert_eq!(Heartbeat::parse(&buf[..len]), Ok(hb));
    }

    #[test]
    fn malformed_datagrams_are_refused_without_panicking() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let len = Heartbeat {
            host: "h1",
            session: 1,
            seq: 1,
            suspects: 0,
        }
        .encode(&mut buf, None)
        .expect("encodes");
        let good = &buf[..len];
        assert_eq!(Heartbeat::parse(&[]), Err(Malformed::Short));
        assert_eq!(Heartbeat::parse(&good[..HEADER - 1]), Err(Malformed::Short));
        assert_eq!(Heartbeat::parse(&good[..len - 1]), Err(Malformed::Length));
        let mut long = good.to_vec();
        long.push(b'x');
        assert_eq!(Heartbeat::parse(&long), Err(Malformed::Length));
        let mut magic = good.to_vec();
        magic[0] = b'X';
        assert_eq!(Heartbeat::parse(&magic), Err(Malformed::Magic));
        let mut version = good.to_vec();
        version[4] = 1;
        assert_eq!(Heartbeat::parse(&version), Err(Malformed::Magic));
        let mut utf8 = good.to_vec();
        utf8[HEADER] = 0xff;
        assert_eq!(Heartbeat::parse(&utf8), Err(Malformed::Utf8));
        let mut empty = good[..HEADER].to_vec();
        empty[5] = 0;
        assert_eq!(Heartbeat::parse(&empty), Err(Malformed::Length));
        // Every prefix and every single-byte corruption parses or fails.
        for cut in 0..=len {
            let _ = Heartbeat::parse(&good[..cut]);
        }
        for at in 0..len {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut c = good.to_vec();
                c[at] = b;
                let _ = Heartbeat::parse(&c);
            }
        }
    }

    #[test]
    fn a_name_too_long_does_not_encode() {
        let mut buf = [0u8; MAX_DATAGRAM];
        let name = "h".repeat(256);
        let hb = Heartbeat {
            host: &name,
            session: 1,
            seq: 1,
            suspects: 0,
        };
        assert_eq!(hb.encode(&mut buf, None), None);
        assert_eq!(
            Heartbeat {
                host: "",
                session: 1,
                seq: 1,
                suspects: 0,
            }
            .encode(&mut buf, None),
            None
        );
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    fn key(b: u8) -> HeartbeatKey {
        HeartbeatKey::derive(&ClusterSecret::from_bytes(&[b; 32]).expect("secret"))
    }

    fn datagram(seq: u64, key: Option<&HeartbeatKey>) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let len = Heartbeat {
            host: "h1",
            session: 7,
            seq,
            suspects: 0b100,
        }
        .encode(&mut buf, key)
        .expect("encodes");
        buf[..len].to_vec()
    }

    /// What the receiver does with a datagram before the detector (the
    /// address checks aside): parse, then the guard.
    fn admit<'a>(guard: &mut Guard, datagram: &'a [u8]) -> Result<Heartbeat<'a>, &'static str> {
        let hb = Heartbeat::parse(datagram).map_err(|_| "malformed")?;
        let (content, tag) = split_tag(datagram);
        guard
            .check(hb.host, hb.session, hb.seq, content, tag)
            .map_err(|r| r.name())?;
        Ok(hb)
    }

    #[test]
    fn a_tagged_heartbeat_round_trips_and_is_admitted() {
        let k = key(1);
        let d = datagram(1, Some(&k));
        assert_eq!(d.len(), HEADER + 2 + TAG_LEN);
        assert_eq!(d[4], VERSION_TAGGED);
        let hb = admit(&mut Guard::new(k), &d).expect("admitted");
        assert_eq!(
            hb,
            Heartbeat {
                host: "h1",
                session: 7,
                seq: 1,
                suspects: 0b100,
            }
        );
    }

    #[test]
    fn a_heartbeat_without_the_right_tag_is_refused_with_its_reason() {
        let k = key(1);
        // Another secret.
        let other = datagram(1, Some(&key(2)));
        assert_eq!(
            admit(&mut Guard::new(k.clone()), &other),
            Err("unauthenticated")
        );
        // No tag (a sender without a secret).
        let plain = datagram(1, None);
        assert_eq!(admit(&mut Guard::new(k.clone()), &plain), Err("untagged"));
        // Tagged as version 2 (the tag taken for part of the name), or
        // untagged as version 3: malformed or refused, never admitted.
        let mut down = datagram(1, Some(&k));
        down[4] = VERSION;
        assert!(admit(&mut Guard::new(k.clone()), &down).is_err());
        let mut up = plain.clone();
        up[4] = VERSION_TAGGED;
        assert!(admit(&mut Guard::new(k.clone()), &up).is_err());
        // Any byte altered, any bit flipped: never admitted.
        let good = datagram(1, Some(&k));
        for at in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = good.clone();
                d[at] ^= flip;
                let why = admit(&mut Guard::new(k.clone()), &d).expect_err("altered");
                assert!(
                    why == "unauthenticated" || why == "malformed",
                    "byte {at} ^ {flip:#x}: {why}"
                );
                // Altering a number or the tag is an authentication
                // failure (a name may become invalid UTF-8 first).
                if (6..HEADER).contains(&at) || at >= good.len() - TAG_LEN {
                    assert_eq!(why, "unauthenticated", "byte {at}");
                }
            }
        }
        // Truncated anywhere, or lengthened.
        for cut in 0..good.len() {
            assert!(
                admit(&mut Guard::new(k.clone()), &good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(admit(&mut Guard::new(k.clone()), &long).is_err());
    }

    #[test]
    fn a_replayed_or_older_heartbeat_is_refused() {
        let k = key(1);
        let mut g = Guard::new(k.clone());
        let (d5, d6, d4) = (
            datagram(5, Some(&k)),
            datagram(6, Some(&k)),
            datagram(4, Some(&k)),
        );
        assert!(admit(&mut g, &d5).is_ok());
        assert_eq!(admit(&mut g, &d5), Err("replayed"));
        assert_eq!(admit(&mut g, &d4), Err("replayed"));
        assert!(admit(&mut g, &d6).is_ok());
        assert_eq!(admit(&mut g, &d5), Err("replayed"));
        // A forged datagram does not move the guard's newest.
        let forged = {
            let mut d = datagram(1000, Some(&k));
            let at = d.len() - 1;
            d[at] ^= 1;
            d
        };
        assert_eq!(admit(&mut g, &forged), Err("unauthenticated"));
        assert!(admit(&mut g, &datagram(7, Some(&k))).is_ok());
    }

    /// The cost of authentication on the hot path, printed (run with
    /// `--nocapture`); never asserted.
    #[test]
    fn the_cost_of_tagging_and_checking_is_printed() {
        let k = key(1);
        let mut buf = [0u8; MAX_DATAGRAM];
        let hb = Heartbeat {
            host: "host-with-a-longer-name-01",
            session: 7,
            seq: 1,
            suspects: 0,
        };
        let len = hb.encode(&mut buf, Some(&k)).expect("encodes");
        let rounds = 100_000u64;
        let start = Instant::now();
        for seq in 0..rounds {
            buf[SEQ_AT..SUSPECTS_AT].copy_from_slice(&seq.to_be_bytes());
            retag(&mut buf, len, &k);
        }
        let tag_ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        let mut datagrams = Vec::new();
        for seq in 1..=1000u64 {
            buf[SEQ_AT..SUSPECTS_AT].copy_from_slice(&seq.to_be_bytes());
            retag(&mut buf, len, &k);
            datagrams.push(buf[..len].to_vec());
        }
        let start = Instant::now();
        let mut admitted = 0;
        for _ in 0..rounds / 1000 {
            let mut g = Guard::new(k.clone());
            for d in &datagrams {
                admitted += usize::from(admit(&mut g, std::hint::black_box(d)).is_ok());
            }
        }
        let check_ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        let start = Instant::now();
        let mut plain = 0;
        for d in &datagrams {
            for _ in 0..rounds / 1000 {
                plain += usize::from(Heartbeat::parse(std::hint::black_box(d)).is_ok());
            }
        }
        let parse_ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(admitted, rounds as usize);
        assert_eq!(plain, rounds as usize);
        println!(
            "heartbeat of {len} bytes: tag {tag_ns:.0} ns per round (sender), parse alone {parse_ns:.0} ns, parse + verify + replay check {check_ns:.0} ns per datagram (receiver)"
        );
    }
}
