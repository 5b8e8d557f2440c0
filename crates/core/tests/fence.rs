//! The controller's fence-device rules ([`FenceBook`]): when a device runs,
//! what its exit means, when it runs again, and how an operator's request
//! is answered.

use std::time::Duration;

use tandem_core::controller::fence::{
    FenceAction, FenceBook, FenceInput, MANUAL_ATTEMPTS, RETRY_FIRST,
};
use tandem_core::model::IntentState;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn step(book: &mut FenceBook, input: FenceInput, now: Duration) -> Vec<FenceAction> {
    let mut out = Vec::new();
    book.handle(input, now, &mut out);
    out
}

/// A short form of each action: `run h1 #1`, `revoke h1`, the event's
/// reason, `done intent` / `refused intent`.
fn summary(actions: &[FenceAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            FenceAction::Run { host, attempt, .. } => format!("run {host} #{attempt}"),
            FenceAction::Revoke { host, lease } => format!("revoke {host} {lease}"),
            FenceAction::Event(e) => e.reason.unwrap_or("?").to_string(),
            FenceAction::Answer {
                intent, outcome, ..
            } => match outcome {
                IntentState::Done { .. } => format!("done {intent}"),
                IntentState::Refused { .. } => format!("refused {intent}"),
                _ => format!("? {intent}"),
            },
        })
        .collect()
}

fn suspected(host: &str, lease: Option<i64>, device: bool) -> FenceInput {
    FenceInput::Suspected {
        host: host.into(),
        lease,
        device,
    }
}

fn exited(host: &str, lease: i64, ok: bool) -> FenceInput {
    FenceInput::Exited {
        host: host.into(),
        lease,
        result: if ok {
            Ok(())
        } else {
            Err("exit status 1".into())
        },
    }
}

#[test]
fn a_suspected_host_with_a_device_is_fenced_and_its_lease_revoked_once_it_confirms() {
    let mut b = FenceBook::default();
    let out = step(&mut b, suspected("h1", Some(7), true), ms(0));
    assert_eq!(summary(&out), ["fence_started", "run h1 #1"]);
    // Suspected again while it runs: nothing more.
    assert!(step(&mut b, suspected("h1", Some(7), true), ms(1)).is_empty());
    assert!(
        b.fenced().is_empty(),
        "not fenced before the device confirms"
    );
    let out = step(&mut b, exited("h1", 7, true), ms(20));
    assert_eq!(summary(&out), ["fence_confirmed", "revoke h1 7"]);
    assert_eq!(b.fenced().get("h1"), Some(&7));
    // Its lease ends (revoked): the host is no longer listed.
    assert!(
        step(
            &mut b,
            FenceInput::LeaseEnded {
                host: "h1".into(),
                lease: 7
            },
            ms(30)
        )
        .is_empty()
    );
    assert!(b.fenced().is_empty());
}

#[test]
fn no_device_or_no_lease_means_nothing_is_run() {
    let mut b = FenceBook::default();
    assert!(step(&mut b, suspected("h1", Some(7), false), ms(0)).is_empty());
    assert!(step(&mut b, suspected("h2", None, true), ms(0)).is_empty());
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn a_failing_device_is_reported_retried_with_backoff_and_never_counts_as_fenced() {
    let mut b = FenceBook::default();
    step(&mut b, suspected("h1", Some(7), true), ms(0));
    let out = step(&mut b, exited("h1", 7, false), ms(10));
    assert_eq!(summary(&out), ["fence_failed"]);
    let FenceAction::Event(e) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(
        e.message.contains("exit status 1") && e.message.contains("lease"),
        "{}",
        e.message
    );
    assert!(b.fenced().is_empty());
    assert_eq!(b.next_deadline(), Some(ms(10) + RETRY_FIRST));
    assert!(step(&mut b, FenceInput::Tick, ms(10) + RETRY_FIRST - ms(1)).is_empty());
    let out = step(&mut b, FenceInput::Tick, ms(10) + RETRY_FIRST);
    assert_eq!(summary(&out), ["run h1 #2"]);
    step(&mut b, exited("h1", 7, false), ms(600));
    // The second pause is twice the first.
    assert_eq!(b.next_deadline(), Some(ms(600) + RETRY_FIRST * 2));
    // A run for an older session is ignored.
    assert!(step(&mut b, exited("h1", 6, true), ms(700)).is_empty());
    assert!(b.fenced().is_empty());
}

#[test]
fn a_cleared_suspicion_stops_the_retries_but_not_a_run_under_way() {
    let mut b = FenceBook::default();
    step(&mut b, suspected("h1", Some(7), true), ms(0));
    step(&mut b, exited("h1", 7, false), ms(10));
    let out = step(&mut b, FenceInput::Cleared { host: "h1".into() }, ms(20));
    assert_eq!(summary(&out), ["fence_abandoned"]);
    assert_eq!(b.next_deadline(), None);
    assert!(step(&mut b, FenceInput::Tick, ms(5_000)).is_empty());

    // Cleared while the device runs: its confirmation still counts.
    step(&mut b, suspected("h2", Some(9), true), ms(0));
    assert!(step(&mut b, FenceInput::Cleared { host: "h2".into() }, ms(5)).is_empty());
    let out = step(&mut b, exited("h2", 9, true), ms(30));
    assert_eq!(summary(&out), ["fence_confirmed", "revoke h2 9"]);
}

#[test]
fn an_operators_request_is_refused_without_device_and_answered_once_done() {
    let mut b = FenceBook::default();
    let ask = |lease, device| FenceInput::Asked {
        by: None,
        host: "h1".into(),
        lease,
        device,
        intent: "i1".into(),
    };
    assert_eq!(
        summary(&step(&mut b, ask(Some(7), false), ms(0))),
        ["refused i1"]
    );
    // No lease: its agent stepped down before it ended; nothing to fence.
    assert_eq!(summary(&step(&mut b, ask(None, true), ms(0))), ["done i1"]);
    assert_eq!(
        summary(&step(&mut b, ask(Some(7), true), ms(0))),
        ["fence_started", "run h1 #1"]
    );
    assert_eq!(
        summary(&step(&mut b, exited("h1", 7, true), ms(10))),
        ["fence_confirmed", "revoke h1 7", "done i1"]
    );
    // Asked again: already fenced.
    assert_eq!(
        summary(&step(&mut b, ask(Some(7), true), ms(20))),
        ["done i1"]
    );
}

#[test]
fn an_operators_request_is_refused_after_repeated_failures_and_then_not_retried() {
    let mut b = FenceBook::default();
    step(
        &mut b,
        FenceInput::Asked {
            by: None,
            host: "h1".into(),
            lease: Some(7),
            device: true,
            intent: "i1".into(),
        },
        ms(0),
    );
    let mut now = ms(0);
    for attempt in 1..=MANUAL_ATTEMPTS {
        now += ms(10);
        let out = step(&mut b, exited("h1", 7, false), now);
        if attempt < MANUAL_ATTEMPTS {
            assert_eq!(summary(&out), ["fence_failed"]);
            now = b.next_deadline().expect("a retry");
            assert_eq!(
                summary(&step(&mut b, FenceInput::Tick, now)),
                [format!("run h1 #{}", attempt + 1)]
            );
        } else {
            assert_eq!(summary(&out), ["refused i1", "fence_failed"]);
        }
    }
    // Nobody suspects h1: nothing runs again.
    assert_eq!(b.next_deadline(), None);
}
