//! The namespace harness against the real kernel: reachability, faults,
//! killing a host, and cleanup. Runs as root (the harness says so otherwise).
// Real processes and sockets: wall-clock time is what is measured.
#![allow(clippy::disallowed_methods)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tandem_testnet::{Host, Net, default_subnet};

/// Serializes the crashed-run test against every other `Net::new` of this
/// binary, so no concurrent `Net::new` cleans its fake leftovers up halfway
/// through their creation.
static NEW_NET: RwLock<()> = RwLock::new(());

fn new_net() -> anyhow::Result<Net> {
    let _guard = NEW_NET.read().unwrap_or_else(|e| e.into_inner());
    Net::new(&default_subnet())
}

const ECHO_PORT: u16 = 7000;
const UDP_PORT: u16 = 9000;
/// How long a connect may take before it counts as unreachable. A dropped SYN
/// is never answered, so a shorter bound only makes the test faster.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long to wait for a datagram that should arrive.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to listen for a datagram that must not arrive.
const SILENCE: Duration = Duration::from_millis(300);

/// Starts `tcp-echo 0.0.0.0:7000` in `host` and waits until it listens.
fn start_echo(net: &Net, host: &Host) -> anyhow::Result<Child> {
    let mut child = net.spawn(
        host,
        Command::new(env!("CARGO_BIN_EXE_tcp-echo"))
            .arg(format!("0.0.0.0:{ECHO_PORT}"))
            .stdout(Stdio::piped()),
    )?;
    let stdout = child.stdout.take().context("echo stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(
        line.starts_with("listening on"),
        "tcp-echo in {} did not start: {line:?}",
        host.name
    );
    Ok(child)
}

/// One echo round trip from inside `from` to `to:port`.
fn echo_from(net: &Net, from: &Host, to: IpAddr) -> anyhow::Result<io::Result<()>> {
    net.run_in(from, move || -> io::Result<()> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(to, ECHO_PORT), CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(RECV_TIMEOUT))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        if &buf != b"ping" {
            return Err(io::Error::other(format!("echoed {buf:?}")));
        }
        Ok(())
    })
}

fn assert_reaches(net: &Net, from: &Host, to: IpAddr) -> anyhow::Result<()> {
    match echo_from(net, from, to)? {
        Ok(()) => Ok(()),
        Err(e) => bail!("{} cannot reach {to}:{ECHO_PORT}: {e}", from.name),
    }
}

/// The connect must time out: the SYN (or its answer) is dropped, not refused.
fn assert_unreachable(net: &Net, from: &Host, to: IpAddr) -> anyhow::Result<()> {
    match echo_from(net, from, to)? {
        Ok(()) => bail!("{} still reaches {to}:{ECHO_PORT}", from.name),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(()),
        Err(e) => bail!(
            "{} -> {to}: expected a timeout (silent drop), got {e}",
            from.name
        ),
    }
}

/// A UDP socket bound inside `host` at `host.addr:9000`.
fn udp_in(net: &Net, host: &Host) -> anyhow::Result<UdpSocket> {
    let addr = SocketAddr::new(host.addr, UDP_PORT);
    Ok(net.run_in(host, move || UdpSocket::bind(addr))??)
}

/// Sends a few datagrams from `from` to `to` and reports whether one arrived.
fn datagram_arrives(from: &UdpSocket, to: &UdpSocket, wait: Duration) -> anyhow::Result<bool> {
    let dest = to.local_addr()?;
    to.set_read_timeout(Some(wait))?;
    for _ in 0..3 {
        // A send dropped by OUTPUT fails with EPERM: that is the fault working.
        let _ = from.send_to(b"hello", dest);
        let mut buf = [0u8; 16];
        match to.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == b"hello" => return Ok(true),
            Ok(_) => bail!("unexpected datagram"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn netns_list() -> anyhow::Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(out.status.success(), "ip netns list: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn isolated_host_is_unreachable_until_healed_but_its_loopback_works() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let echo = start_echo(&net, &b)?;

    assert_reaches(&net, &a, b.addr)?;

    net.isolate(&b)?;
    assert_unreachable(&net, &a, b.addr)?;
    // Inside B, loopback still works.
    assert_reaches(&net, &b, IpAddr::V4(Ipv4Addr::LOCALHOST))?;

    net.heal(&b)?;
    ensure!(
        net.rules(&b)?.lines().all(|l| l.starts_with("-P")),
        "rules left after heal"
    );
    assert_reaches(&net, &a, b.addr)?;

    kill_and_reap(echo);
    net.close()
}

#[test]
fn cut_drops_one_direction_only() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let udp_a = udp_in(&net, &a)?;
    let udp_b = udp_in(&net, &b)?;
    let echo_b = start_echo(&net, &b)?;
    let echo_a = start_echo(&net, &a)?;
    ensure!(
        datagram_arrives(&udp_a, &udp_b, RECV_TIMEOUT)?,
        "A -> B before the cut"
    );
    assert_reaches(&net, &a, b.addr)?;

    net.cut(&a, &b)?;

    // Packets from A to B are dropped...
    ensure!(
        !datagram_arrives(&udp_a, &udp_b, SILENCE)?,
        "A -> B after cut(A, B)"
    );
    assert_unreachable(&net, &a, b.addr)?;
    // ...packets from B to A still arrive.
    ensure!(
        datagram_arrives(&udp_b, &udp_a, RECV_TIMEOUT)?,
        "B -> A after cut(A, B)"
    );
    // TCP needs A's answers too, so B's connects to A stall as well.
    assert_unreachable(&net, &b, a.addr)?;

    net.heal(&a)?;
    ensure!(
        datagram_arrives(&udp_a, &udp_b, RECV_TIMEOUT)?,
        "A -> B after heal"
    );
    assert_reaches(&net, &a, b.addr)?;
    assert_reaches(&net, &b, a.addr)?;

    kill_and_reap(echo_a);
    kill_and_reap(echo_b);
    net.close()
}

#[test]
fn cut_addr_drops_traffic_to_that_address_only() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let c = net.add_host("c")?;
    let echo_b = start_echo(&net, &b)?;
    let echo_c = start_echo(&net, &c)?;

    net.cut_addr(&a, c.addr)?;
    assert_unreachable(&net, &a, c.addr)?;
    assert_reaches(&net, &a, b.addr)?;
    assert_reaches(&net, &b, c.addr)?;

    kill_and_reap(echo_b);
    kill_and_reap(echo_c);
    net.close()
}

#[test]
fn kill_host_kills_every_process_in_the_namespace_and_only_there() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let mut in_b = vec![
        start_echo(&net, &b)?,
        net.spawn(&b, Command::new("sleep").arg("1000"))?,
        // A shell whose background grandchild the harness never saw spawned.
        net.spawn(
            &b,
            Command::new("sh").args(["-c", "sleep 1000 & sleep 1000"]),
        )?,
    ];
    let mut in_a = net.spawn(&a, Command::new("sleep").arg("1000"))?;
    // The grandchild is forked asynchronously: wait until it is in the namespace.
    let mut pids = net.pids(&b)?;
    for _ in 0..200 {
        if pids.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        pids = net.pids(&b)?;
    }
    ensure!(pids.len() >= 4, "expected 4 processes in B, found {pids:?}");

    net.kill_host(&b)?;

    let left = net.pids(&b)?;
    ensure!(left.is_empty(), "processes left in B: {left:?}");
    for child in &mut in_b {
        let status = child.wait()?;
        ensure!(status.signal() == Some(9), "{status} instead of SIGKILL");
    }
    ensure!(in_a.try_wait()?.is_none(), "the process in A died too");
    ensure!(net.pids(&a)? == vec![in_a.id()], "A's processes changed");

    // B's network outlives its processes: a new echo there is reachable.
    let echo = start_echo(&net, &b)?;
    assert_reaches(&net, &a, b.addr)?;

    kill_and_reap(echo);
    kill_and_reap(in_a);
    net.close()
}

#[test]
fn pause_stops_a_process_and_resume_continues_it() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let echo = start_echo(&net, &b)?;

    Net::pause(echo.id())?;
    // The kernel still completes the handshake, but nothing echoes.
    let paused = net.run_in(&a, {
        let to = SocketAddr::new(b.addr, ECHO_PORT);
        move || -> io::Result<io::Result<()>> {
            let mut s = TcpStream::connect_timeout(&to, RECV_TIMEOUT)?;
            s.set_read_timeout(Some(SILENCE))?;
            s.write_all(b"ping")?;
            Ok(s.read_exact(&mut [0u8; 4]))
        }
    })??;
    ensure!(paused.is_err(), "a paused echo server answered");

    Net::resume(echo.id())?;
    assert_reaches(&net, &a, b.addr)?;

    kill_and_reap(echo);
    net.close()
}

#[test]
fn drop_removes_every_namespace_even_with_processes_inside() -> anyhow::Result<()> {
    let (namespaces, mut sleeper) = {
        let mut net = new_net()?;
        let a = net.add_host("a")?;
        let b = net.add_host("b")?;
        let sleeper = net.spawn(&a, Command::new("sleep").arg("1000"))?;
        net.isolate(&b)?;
        let namespaces = vec![net.switch_ns().to_owned(), a.ns.clone(), b.ns.clone()];
        let listed = netns_list()?;
        for ns in &namespaces {
            ensure!(
                listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "{ns} missing while the net lives"
            );
        }
        (namespaces, sleeper)
        // `net` dropped here, without close().
    };

    let listed = netns_list()?;
    for ns in &namespaces {
        ensure!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left after drop:\n{listed}"
        );
        ensure!(
            !std::path::Path::new("/run/netns").join(ns).exists(),
            "{ns} still mounted"
        );
    }
    // The bridge lived in the switch namespace, never in the root namespace.
    let bridges = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()?;
    ensure!(
        bridges.status.success(),
        "ip link show type bridge: {}",
        bridges.status
    );
    let bridges = String::from_utf8_lossy(&bridges.stdout);
    ensure!(!bridges.contains(&namespaces[0]), "bridge left: {bridges}");
    ensure!(
        sleeper.wait()?.signal() == Some(9),
        "the process inside was not killed"
    );
    Ok(())
}

#[test]
fn new_removes_namespaces_left_by_a_crashed_run() -> anyhow::Result<()> {
    let _exclusive = NEW_NET.write().unwrap_or_else(|e| e.into_inner());
    // A pid that no longer runs stands for the crashed test process.
    let mut gone = Command::new("true").spawn()?;
    gone.wait()?;
    let stale_switch = format!("tt-{}-0", gone.id());
    let stale_host = format!("{stale_switch}-x");
    for ns in [&stale_switch, &stale_host] {
        let out = Command::new("ip").args(["netns", "add", ns]).output()?;
        ensure!(
            out.status.success(),
            "ip netns add {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A process left running inside the crashed run's host.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &stale_host, "sleep", "1000"])
        .spawn()?;
    for _ in 0..200 {
        let out = Command::new("ip")
            .args(["netns", "pids", &stale_host])
            .output()?;
        if !out.stdout.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let net = Net::new(&default_subnet())?;

    let listed = netns_list()?;
    for ns in [&stale_switch, &stale_host] {
        ensure!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "stale {ns} survived Net::new:\n{listed}"
        );
    }
    ensure!(
        orphan.wait()?.signal() == Some(9),
        "the stale process was not killed"
    );
    net.close()
}

#[test]
fn a_live_net_is_not_mistaken_for_a_stale_one() -> anyhow::Result<()> {
    let mut first = new_net()?;
    let a = first.add_host("a")?;
    let second = new_net()?;
    ensure!(
        netns_list()?.contains(&a.ns),
        "Net::new removed a live net's namespace"
    );
    second.close()?;
    first.close()
}

#[test]
fn bad_arguments_are_refused_clearly() -> anyhow::Result<()> {
    let err = Net::new("8.8.8")
        .err()
        .context("a public subnet was accepted")?;
    ensure!(err.to_string().contains("private"), "{err}");
    let mut net = new_net()?;
    ensure!(net.add_host("Bad_Name").is_err());
    net.add_host("a")?;
    ensure!(net.add_host("a").is_err(), "duplicate host accepted");
    let other = Host {
        name: "z".into(),
        ns: "not-ours".into(),
        addr: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 9)),
    };
    ensure!(net.isolate(&other).is_err(), "a foreign host was accepted");
    net.close()
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() -> anyhow::Result<()> {
    let mut namespaces = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut net = new_net().expect("net");
        let a = net.add_host("a").expect("host");
        namespaces.push(net.switch_ns().to_owned());
        namespaces.push(a.ns.clone());
        panic!("the test failed");
    }));
    ensure!(outcome.is_err());
    let listed = netns_list()?;
    for ns in &namespaces {
        ensure!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left after a panic:\n{listed}"
        );
    }
    Ok(())
}

#[test]
fn full_loss_drops_everything_a_host_sends() -> anyhow::Result<()> {
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let udp_a = udp_in(&net, &a)?;
    let udp_b = udp_in(&net, &b)?;
    ensure!(net.loss(&a, 1.5).is_err(), "probability 1.5 accepted");

    net.loss(&a, 1.0)?;
    ensure!(
        !datagram_arrives(&udp_a, &udp_b, SILENCE)?,
        "A -> B with 100% loss"
    );
    ensure!(
        datagram_arrives(&udp_b, &udp_a, RECV_TIMEOUT)?,
        "B -> A is not affected"
    );

    net.heal(&a)?;
    ensure!(
        datagram_arrives(&udp_a, &udp_b, RECV_TIMEOUT)?,
        "A -> B after heal"
    );
    net.close()
}

#[test]
fn delay_proxy_in_a_host_delays_traffic_from_other_hosts() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut net = new_net()?;
    let a = net.add_host("a")?;
    let b = net.add_host("b")?;
    let echo = start_echo(&net, &b)?;
    let delay = Duration::from_millis(100);
    let listen = SocketAddr::new(b.addr, ECHO_PORT + 1);
    let target = SocketAddr::from(([127, 0, 0, 1], ECHO_PORT));
    let proxy = runtime.block_on(net.delay_proxy(&b, listen, target, delay))?;
    ensure!(proxy.local_addr() == listen);

    // The proxy's tasks run on the runtime's workers while this thread blocks.
    let rtt = net.run_in(&a, move || -> io::Result<Duration> {
        let mut s = TcpStream::connect_timeout(&listen, RECV_TIMEOUT)?;
        s.set_read_timeout(Some(RECV_TIMEOUT))?;
        let start = std::time::Instant::now();
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(start.elapsed())
    })??;
    ensure!(rtt >= 2 * delay, "round trip {rtt:?} < 2 x {delay:?}");

    drop(proxy);
    kill_and_reap(echo);
    net.close()
}
