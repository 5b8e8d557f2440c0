//! The heartbeat failure detector: table tests of its rules, and a property
//! test that random sequences of heartbeats and ticks never suspect a host
//! heard within `suspect_after` and always suspect one silent longer.

use std::time::Duration;

use proptest::prelude::*;
use tandem_core::detector::{
    Change, Detector, DetectorConfig, DetectorInput, DetectorStep, Ignored, Reason,
};
use tandem_core::topology::Cluster;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The default timing: 2 ms × 15 = 30 ms.
fn config() -> DetectorConfig {
    DetectorConfig::from_cluster(&Cluster::default())
}

fn detector() -> Detector {
    Detector::new(config(), ["h2", "h3"])
}

fn heard(d: &mut Detector, at: u64, host: &str, session: u64, seq: u64) -> DetectorStep {
    d.step(ms(at), DetectorInput::Heard { host, session, seq })
}

fn tick(d: &mut Detector, at: u64) -> DetectorStep {
    d.step(ms(at), DetectorInput::Tick)
}

fn suspected(host: &str, reason: Reason) -> Change {
    Change::Suspected {
        host: host.into(),
        reason,
    }
}

fn cleared(host: &str, for_ms: u64) -> Change {
    Change::Cleared {
        host: host.into(),
        reason: Reason::HeardAgain { for_ms },
    }
}

/// Heartbeats of `host` every 2 ms from `from` to `to` inclusive, seq
/// numbers from `seq`; returns every change and the next seq.
fn steady(
    d: &mut Detector,
    host: &str,
    session: u64,
    seq: u64,
    from: u64,
    to: u64,
) -> (Vec<Change>, u64) {
    let mut changes = Vec::new();
    let mut seq = seq;
    let mut t = from;
    while t <= to {
        changes.extend(heard(d, t, host, session, seq).changes);
        seq += 1;
        t += 2;
    }
    (changes, seq)
}

#[test]
fn the_default_timing_suspects_after_30_ms_and_needs_15_ms_gaps_at_most_to_clear() {
    assert_eq!(config().suspect_after, ms(30));
    assert_eq!(config().steady_gap(), ms(15));
}

#[test]
fn a_host_never_heard_is_never_suspected() {
    let mut d = detector();
    for at in [0, 29, 30, 31, 10_000] {
        assert_eq!(tick(&mut d, at).changes, vec![]);
    }
    let step = d.step(ms(10_001), DetectorInput::Closed { host: "h2" });
    assert_eq!(step.changes, vec![]);
    assert_eq!(step.next_deadline, None);
    assert_eq!(d.suspected().count(), 0);
}

#[test]
fn a_host_silent_for_suspect_after_is_suspected_at_the_deadline() {
    let mut d = detector();
    let step = heard(&mut d, 100, "h2", 1, 1);
    assert_eq!(step.changes, vec![]);
    assert_eq!(step.next_deadline, Some(ms(130)));
    assert_eq!(tick(&mut d, 129).changes, vec![]);
    assert_eq!(
        tick(&mut d, 130).changes,
        vec![suspected("h2", Reason::Silent { for_ms: 30 })]
    );
    assert_eq!(d.suspicion("h2"), Some(Reason::Silent { for_ms: 30 }));
    // Once: no deadline left, nothing more.
    assert_eq!(tick(&mut d, 500).changes, vec![]);
    assert_eq!(tick(&mut d, 500).next_deadline, None);
}

#[test]
fn a_late_tick_reports_how_long_the_host_was_silent() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    assert_eq!(
        tick(&mut d, 95).changes,
        vec![suspected("h2", Reason::Silent { for_ms: 95 })]
    );
}

#[test]
fn steady_heartbeats_keep_a_host_unsuspected_and_push_the_deadline() {
    let mut d = detector();
    let (changes, _) = steady(&mut d, "h2", 1, 1, 0, 1000);
    assert_eq!(changes, vec![]);
    assert_eq!(tick(&mut d, 1029).changes, vec![]);
    assert_eq!(tick(&mut d, 1029).next_deadline, Some(ms(1030)));
}

#[test]
fn the_next_deadline_is_the_earliest_of_the_unsuspected_hosts() {
    let mut d = detector();
    heard(&mut d, 10, "h2", 1, 1);
    let step = heard(&mut d, 20, "h3", 1, 1);
    assert_eq!(step.next_deadline, Some(ms(40)));
    tick(&mut d, 40);
    assert_eq!(tick(&mut d, 41).next_deadline, Some(ms(50)));
}

#[test]
fn duplicates_and_reordered_heartbeats_are_stale_and_do_not_count_as_heard() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 7, 10);
    let dup = heard(&mut d, 20, "h2", 7, 10);
    assert_eq!(dup.ignored, Some(Ignored::Stale));
    let older = heard(&mut d, 25, "h2", 7, 3);
    assert_eq!(older.ignored, Some(Ignored::Stale));
    // Still judged from the heartbeat at 0.
    assert_eq!(
        tick(&mut d, 30).changes,
        vec![suspected("h2", Reason::Silent { for_ms: 30 })]
    );
}

#[test]
fn a_new_session_starts_its_own_sequence() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 7, 1000);
    // The agent restarted: its sequence starts again, and counts.
    let step = heard(&mut d, 10, "h2", 8, 1);
    assert_eq!(step.ignored, None);
    assert_eq!(step.next_deadline, Some(ms(40)));
}

#[test]
fn an_unknown_host_is_ignored() {
    let mut d = detector();
    let step = heard(&mut d, 0, "mallory", 1, 1);
    assert_eq!(step.ignored, Some(Ignored::UnknownHost));
    assert_eq!(step.next_deadline, None);
    let step = d.step(ms(1), DetectorInput::Closed { host: "mallory" });
    assert_eq!(step.ignored, Some(Ignored::UnknownHost));
    assert_eq!(d.suspected().count(), 0);
}

#[test]
fn a_connection_closed_by_the_peer_suspects_at_once() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    d.step(ms(1), DetectorInput::Opened { host: "h2" });
    heard(&mut d, 2, "h2", 1, 2);
    let step = d.step(ms(3), DetectorInput::Closed { host: "h2" });
    assert_eq!(
        step.changes,
        vec![suspected("h2", Reason::ConnectionClosed)]
    );
    // Silence changes nothing more: it is suspected already.
    assert_eq!(tick(&mut d, 100).changes, vec![]);
    assert_eq!(d.suspicion("h2"), Some(Reason::ConnectionClosed));
}

#[test]
fn a_connection_closed_after_the_agent_restarted_suspects_nothing() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    d.step(ms(1), DetectorInput::Opened { host: "h2" });
    // The new agent's heartbeats are heard before the old connection's end.
    heard(&mut d, 5, "h2", 2, 1);
    let step = d.step(ms(6), DetectorInput::Closed { host: "h2" });
    assert_eq!(step.changes, vec![]);
    assert_eq!(d.suspected().count(), 0);
}

#[test]
fn a_closed_connection_then_steady_heartbeats_of_a_new_agent_clear_the_host() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    d.step(ms(0), DetectorInput::Opened { host: "h2" });
    let step = d.step(ms(1), DetectorInput::Closed { host: "h2" });
    assert_eq!(step.changes.len(), 1);
    // The restarted agent: new session, heard from 500 ms every 2 ms. The
    // first heartbeat at 500, cleared at the one 30 ms later.
    let (changes, _) = steady(&mut d, "h2", 2, 1, 500, 528);
    assert_eq!(changes, vec![]);
    let step = heard(&mut d, 530, "h2", 2, 16);
    assert_eq!(step.changes, vec![cleared("h2", 30)]);
    // Then judged by silence again.
    assert_eq!(step.next_deadline, Some(ms(560)));
}

#[test]
fn a_suspected_host_is_cleared_only_after_heartbeats_steady_for_suspect_after() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    assert_eq!(tick(&mut d, 30).changes.len(), 1);
    // Back at 100: every 2 ms up to 128 is not enough...
    let (changes, seq) = steady(&mut d, "h2", 1, 2, 100, 128);
    assert_eq!(changes, vec![]);
    assert!(d.suspicion("h2").is_some());
    // ... the one at 130 is.
    assert_eq!(
        heard(&mut d, 130, "h2", 1, seq).changes,
        vec![cleared("h2", 30)]
    );
    assert_eq!(d.suspected().count(), 0);
}

#[test]
fn a_burst_of_queued_heartbeats_clears_nothing() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    tick(&mut d, 30);
    // Fifty heartbeats drained at once (a receiver that was descheduled).
    for seq in 2..52 {
        assert_eq!(heard(&mut d, 200, "h2", 1, seq).changes, vec![]);
    }
    assert!(d.suspicion("h2").is_some());
}

#[test]
fn a_gap_longer_than_half_suspect_after_restarts_the_steady_count() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    tick(&mut d, 30);
    // Flapping: heard for 20 ms, 16 ms gap, heard for 20 ms, ...
    let mut seq = 2;
    let mut t = 100;
    for _ in 0..10 {
        let (changes, next) = steady(&mut d, "h2", 1, seq, t, t + 20);
        assert_eq!(changes, vec![], "cleared while flapping at {t} ms");
        seq = next;
        t += 20 + 16;
    }
    assert!(d.suspicion("h2").is_some());
    // A gap of exactly half still counts as steady.
    let (_, seq) = steady(&mut d, "h2", 1, seq, 1000, 1020);
    let (changes, _) = steady(&mut d, "h2", 1, seq, 1035, 1035);
    assert_eq!(changes, vec![cleared("h2", 35)]);
}

#[test]
fn a_closed_connection_restarts_the_steady_count_of_a_suspected_host() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    tick(&mut d, 30);
    let (_, seq) = steady(&mut d, "h2", 1, 2, 100, 120);
    d.step(ms(121), DetectorInput::Closed { host: "h2" });
    // 130 would have cleared it had the connection not closed.
    let (changes, _) = steady(&mut d, "h2", 1, seq, 122, 150);
    assert_eq!(changes, vec![]);
    assert_eq!(
        heard(&mut d, 152, "h2", 1, 99).changes,
        vec![cleared("h2", 30)]
    );
}

#[test]
fn a_stall_of_the_detector_itself_is_not_a_peers_silence() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    heard(&mut d, 20, "h3", 1, 1);
    // The runtime asked to wake at 25 and woke at 75: nobody is suspected
    // for the 50 ms it could not run...
    let step = d.step(ms(75), DetectorInput::Stalled { for_time: ms(50) });
    assert_eq!(step.changes, vec![]);
    assert_eq!(step.next_deadline, Some(ms(80)));
    // ... but silence before and after it counts.
    assert_eq!(
        tick(&mut d, 80).changes,
        vec![suspected("h2", Reason::Silent { for_ms: 30 })]
    );
    assert_eq!(
        tick(&mut d, 100).changes,
        vec![suspected("h3", Reason::Silent { for_ms: 30 })]
    );
}

#[test]
fn silence_is_judged_on_ticks_only_so_a_drain_of_queued_heartbeats_suspects_nobody() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    heard(&mut d, 0, "h3", 1, 1);
    // The receiver ran again at 500: h3's queued heartbeat is drained
    // before h2's, and h2 is not judged in between.
    assert_eq!(heard(&mut d, 500, "h3", 1, 2).changes, vec![]);
    assert_eq!(heard(&mut d, 500, "h2", 1, 2).changes, vec![]);
    assert_eq!(tick(&mut d, 500).changes, vec![]);
}

#[test]
fn hosts_are_judged_independently() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    steady(&mut d, "h3", 1, 1, 0, 40);
    let step = tick(&mut d, 41);
    assert_eq!(
        step.changes,
        vec![suspected("h2", Reason::Silent { for_ms: 41 })]
    );
    assert_eq!(d.suspected().collect::<Vec<_>>(), vec!["h2"]);
}

#[test]
fn a_host_that_left_the_peers_is_no_longer_suspected_and_a_new_one_starts_unheard() {
    let mut d = detector();
    heard(&mut d, 0, "h2", 1, 1);
    heard(&mut d, 0, "h3", 1, 1);
    tick(&mut d, 30);
    assert_eq!(d.suspected().count(), 2);
    d.set_peers(["h3", "h4"]);
    assert_eq!(d.suspected().collect::<Vec<_>>(), vec!["h3"]);
    assert_eq!(d.peers().collect::<Vec<_>>(), vec!["h3", "h4"]);
    assert_eq!(tick(&mut d, 10_000).changes, vec![]);
}

#[test]
fn reasons_read_well_in_the_log() {
    assert_eq!(
        suspected("h2", Reason::Silent { for_ms: 31 }).to_string(),
        "host h2 suspected lost: no heartbeat heard for 31 ms"
    );
    assert_eq!(
        cleared("h2", 30).to_string(),
        "host h2 no longer suspected: its heartbeats came again steadily for 30 ms"
    );
    assert_eq!(Reason::ConnectionClosed.name(), "connection_closed");
    assert!(
        Reason::ConnectionClosed
            .to_string()
            .contains("closed the liveness connection")
    );
}

/// One input of a random run (ticks and heartbeats only: closed
/// connections suspect on purpose).
#[derive(Debug, Clone)]
enum Op {
    /// Time passes by this many µs, then a tick.
    Wait(u64),
    /// Host `.0` (0..3) is heard with a seq offset `.1` (may be stale).
    Heard(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..40_000).prop_map(Op::Wait),
        (0usize..3, 0u64..4).prop_map(|(h, s)| Op::Heard(h, s)),
    ]
}

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

proptest! {
    #[test]
    fn never_suspects_a_host_heard_within_suspect_after_and_always_one_silent_longer(
        ops in proptest::collection::vec(op(), 1..300),
        interval_ms in 1u64..5,
        missed in 1u32..20,
    ) {
        let config = DetectorConfig {
            suspect_after: Duration::from_millis(interval_ms) * missed,
        };
        let mut d = Detector::new(config, HOSTS);
        let mut now = Duration::ZERO;
        // What the test knows: when each host was last heard (a heartbeat
        // that was not stale), and the highest seq sent.
        let mut last: [Option<Duration>; 3] = [None; 3];
        let mut seq = [0u64; 3];
        for op in ops {
            let step = match op.clone() {
                Op::Wait(us) => {
                    now += Duration::from_micros(us);
                    d.step(now, DetectorInput::Tick)
                }
                Op::Heard(h, back) => {
                    // `back` > 0: a duplicate or reordered one.
                    let s = if back == 0 { seq[h] + 1 } else { seq[h].saturating_sub(back - 1) };
                    let step = d.step(now, DetectorInput::Heard { host: HOSTS[h], session: 1, seq: s });
                    // The first of a session counts, whatever its number.
                    if last[h].is_none() || s > seq[h] {
                        seq[h] = s;
                        last[h] = Some(now);
                    }
                    step
                }
            };
            for change in &step.changes {
                if let Change::Suspected { host, reason } = change {
                    let h = HOSTS.iter().position(|x| x == host).expect("a peer");
                    let heard = last[h].expect("suspected before ever heard");
                    prop_assert!(
                        now - heard >= config.suspect_after,
                        "{host} suspected at {now:?}, heard at {heard:?}"
                    );
                    prop_assert!(matches!(reason, Reason::Silent { .. }), "{reason:?}");
                }
            }
            // Silence is judged on ticks.
            let ticked = matches!(op, Op::Wait(_));
            for (h, host) in HOSTS.iter().enumerate() {
                match last[h] {
                    None => prop_assert!(d.suspicion(host).is_none()),
                    Some(heard) if ticked && now - heard >= config.suspect_after => prop_assert!(
                        d.suspicion(host).is_some(),
                        "{host} silent since {heard:?} not suspected at {now:?}"
                    ),
                    Some(_) => {}
                }
            }
            if let Some(deadline) = step.next_deadline.filter(|_| ticked) {
                prop_assert!(deadline > now, "deadline {deadline:?} not after {now:?}");
            }
        }
    }
}

mod corroboration {
    use std::collections::BTreeSet;

    use tandem_core::detector::corroborated;

    fn peers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `reports` as (observer, suspected) pairs.
    fn check<'a>(
        peers: &'a [String],
        suspected: &[&str],
        reports: &[(&str, &str)],
    ) -> BTreeSet<&'a str> {
        let suspected: BTreeSet<&str> = suspected.iter().copied().collect();
        corroborated(peers, &suspected, |o, x| {
            Some(reports.iter().any(|(ro, rx)| *ro == o && *rx == x))
        })
    }

    #[test]
    fn a_suspicion_counts_once_another_observer_agrees() {
        let p = peers(&["h1", "h2"]);
        // This process (h3) suspects h1; h2 does not (yet).
        assert!(check(&p, &["h1"], &[]).is_empty());
        assert_eq!(check(&p, &["h1"], &[("h2", "h1")]), BTreeSet::from(["h1"]));
    }

    #[test]
    fn with_no_other_observer_the_own_suspicion_counts() {
        let p = peers(&["h1"]);
        assert_eq!(check(&p, &["h1"], &[]), BTreeSet::from(["h1"]));
    }

    #[test]
    fn one_that_suspects_every_other_observer_corroborates_nothing() {
        // Cut off (or just healed): it suspects h1 and h2, and what they
        // said before is no agreement.
        let p = peers(&["h1", "h2"]);
        assert!(check(&p, &["h1", "h2"], &[("h2", "h1"), ("h1", "h2")]).is_empty());
        let p = peers(&["h1", "h2", "h4"]);
        assert!(check(&p, &["h1", "h2", "h4"], &[("h2", "h1")]).is_empty());
        // Two of three suspected, the third agrees on both.
        assert_eq!(
            check(&p, &["h1", "h2"], &[("h4", "h1"), ("h4", "h2")]),
            BTreeSet::from(["h1", "h2"])
        );
    }

    #[test]
    fn a_peer_never_heard_is_no_observer() {
        let p = peers(&["h1", "h2"]);
        let suspected = BTreeSet::from(["h1"]);
        // h2's agent never ran: h1's suspicion stands on this process's own.
        assert_eq!(
            corroborated(&p, &suspected, |_, _| None),
            BTreeSet::from(["h1"])
        );
        // h2 is heard and does not agree (yet).
        assert!(corroborated(&p, &suspected, |o, _| (o == "h2").then_some(false)).is_empty());
    }
}
