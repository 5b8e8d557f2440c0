//! The behaviour every fenced sink must have, written once and run against
//! each backend by `sink_suite!` (one `#[test]` per check).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tandem_sink::{FencedWriter, Record, Sink, SinkError, StoredRow, WriteOutcome};

/// What a backend's test file provides.
pub trait Harness: Sync {
    /// The sink under test.
    type S: Sink;
    /// A new connection to the sink `table` (each writer has its own, as
    /// separate processes would).
    fn open(&self, table: &str) -> Self::S;
    /// Writes `records` to `table` without any fence (to plant rows the
    /// fence does not know about).
    fn write_unfenced(&self, table: &str, epoch: u64, records: &[Record]);
    /// Property-test cases per run.
    fn cases(&self) -> u32;
}

/// Generates one `#[test]` per check of this suite for `$harness`.
#[macro_export]
macro_rules! sink_suite {
    ($harness:expr) => {
        $crate::sink_suite!(@tests $harness;
            claim_returns_the_last_committed_position,
            lower_epoch_is_fenced_on_claim_and_on_write_and_writes_nothing,
            equal_epoch_reclaim_resumes_where_the_writer_stopped,
            write_with_a_higher_epoch_raises_the_fence,
            out_of_order_batches_are_rejected_and_write_nothing,
            writer_skips_already_committed_positions,
            zombie_writer_never_writes_after_the_new_primary_claims,
            concurrent_takeovers_keep_every_position_exactly_once,
            crash_between_batches_then_takeover_loses_and_duplicates_nothing,
            rows_written_outside_the_fence_surface_as_errors,
            random_takeovers_write_every_position_exactly_once,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                suite::$name(&$harness);
            }
        )*
    };
}

/// The record at `position` of the input stream every test consumes.
pub fn record(position: u64) -> Record {
    Record {
        position,
        payload: format!("record-{position}").into_bytes(),
    }
}

/// Records `from..to` of the stream.
pub fn records(from: u64, to: u64) -> Vec<Record> {
    (from..to).map(record).collect()
}

/// Every committed row of a sink, in position order.
pub fn all_rows(sink: &mut impl Sink) -> Vec<StoredRow> {
    let mut rows = Vec::new();
    loop {
        let from = rows.last().map_or(0, |r: &StoredRow| r.position + 1);
        let page = sink.rows(from, 1_000).expect("read rows back");
        if page.is_empty() {
            return rows;
        }
        rows.extend(page);
    }
}

/// The sink holds positions `0..n` each exactly once with the stream's
/// payload, epochs never decrease along positions, and the fence says `n - 1`.
pub fn assert_exactly_once(sink: &mut impl Sink, n: u64) -> Vec<StoredRow> {
    let rows = all_rows(sink);
    let positions: Vec<u64> = rows.iter().map(|r| r.position).collect();
    assert_eq!(
        positions,
        (0..n).collect::<Vec<_>>(),
        "positions are not 0..{n}, each once"
    );
    for row in &rows {
        assert_eq!(
            row.payload,
            record(row.position).payload,
            "payload of position {}",
            row.position
        );
    }
    for pair in rows.windows(2) {
        assert!(
            pair[0].epoch <= pair[1].epoch,
            "epoch went down along positions: {} at {} then {} at {}",
            pair[0].epoch,
            pair[0].position,
            pair[1].epoch,
            pair[1].position
        );
    }
    assert_eq!(
        sink.last_position().expect("last position"),
        n.checked_sub(1),
        "the fence's last position"
    );
    rows
}

fn take_over<S: Sink>(sink: S, epoch: u64) -> (FencedWriter<S>, Option<u64>) {
    FencedWriter::take_over(sink, epoch)
        .unwrap_or_else(|e| panic!("take over with epoch {epoch}: {e}"))
}

fn write<S: Sink>(writer: &mut FencedWriter<S>, batch: &[Record]) -> WriteOutcome {
    writer
        .write(batch)
        .unwrap_or_else(|e| panic!("write of epoch {}: {e}", writer.epoch()))
}

pub fn claim_returns_the_last_committed_position(h: &impl Harness) {
    let table = "claim_returns";
    let mut sink = h.open(table);
    assert_eq!(sink.last_position().expect("last position"), None);
    assert_eq!(
        sink.claim(1).expect("first claim"),
        None,
        "nothing written yet"
    );
    sink.write(1, &records(0, 5)).expect("write 0..5");
    assert_eq!(sink.last_position().expect("last position"), Some(4));
    let mut other = h.open(table);
    assert_eq!(
        other.claim(2).expect("claim from another connection"),
        Some(4)
    );
    other.write(2, &records(5, 7)).expect("write 5..7");
    assert_eq!(h.open(table).claim(3).expect("third claim"), Some(6));
    assert_exactly_once(&mut sink, 7);
}

pub fn lower_epoch_is_fenced_on_claim_and_on_write_and_writes_nothing(h: &impl Harness) {
    let table = "lower_epoch_fenced";
    let (mut primary, _) = take_over(h.open(table), 2);
    write(&mut primary, &records(0, 3));

    let mut old = h.open(table);
    assert_eq!(
        old.claim(1),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 2
        })
    );
    assert_eq!(
        old.write(1, &records(3, 5)),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 2
        })
    );
    // The fence is checked before the position: a stale batch is fenced too.
    assert_eq!(
        old.write(1, &records(0, 2)),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 2
        })
    );
    assert_eq!(
        old.write(1, &[]),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 2
        })
    );
    assert!(matches!(
        FencedWriter::take_over(h.open(table), 1),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 2
        })
    ));
    assert_exactly_once(&mut old, 3);

    // The fence is not lowered by a refused claim: the primary goes on.
    write(&mut primary, &records(3, 6));
    assert_exactly_once(&mut old, 6);
    assert!(all_rows(&mut old).iter().all(|row| row.epoch == 2));
}

pub fn equal_epoch_reclaim_resumes_where_the_writer_stopped(h: &impl Harness) {
    let table = "equal_epoch_reclaim";
    let (mut writer, resume) = take_over(h.open(table), 3);
    assert_eq!(resume, None);
    write(&mut writer, &records(0, 10));
    drop(writer); // the primary restarts, keeping its role and epoch

    let (mut again, resume) = take_over(h.open(table), 3);
    assert_eq!(resume, Some(9));
    let outcome = write(&mut again, &records(0, 20));
    assert_eq!(
        outcome,
        WriteOutcome {
            written: 10,
            skipped: 10,
            last_committed: Some(19)
        }
    );
    assert_exactly_once(again.sink_mut(), 20);
}

pub fn write_with_a_higher_epoch_raises_the_fence(h: &impl Harness) {
    let table = "write_raises_fence";
    let (mut first, _) = take_over(h.open(table), 1);
    write(&mut first, &records(0, 2));
    let mut sink = h.open(table);
    sink.write(5, &records(2, 4))
        .expect("a write with a higher epoch is an implicit claim");
    assert_eq!(
        sink.claim(4),
        Err(SinkError::Fenced {
            epoch: 4,
            current: 5
        })
    );
    assert_eq!(
        first.write(&records(4, 5)),
        Err(SinkError::Fenced {
            epoch: 1,
            current: 5
        })
    );
    assert_exactly_once(&mut sink, 4);
}

pub fn out_of_order_batches_are_rejected_and_write_nothing(h: &impl Harness) {
    let table = "out_of_order";
    let mut sink = h.open(table);
    sink.claim(1).expect("claim");
    assert_eq!(
        sink.write(1, &records(1, 3)),
        Err(SinkError::OutOfOrder {
            expected: 0,
            got: 1
        })
    );
    sink.write(1, &records(0, 5)).expect("write 0..5");
    assert_eq!(
        sink.write(1, &records(7, 9)),
        Err(SinkError::OutOfOrder {
            expected: 5,
            got: 7
        }),
        "a gap"
    );
    assert_eq!(
        sink.write(1, &records(3, 8)),
        Err(SinkError::OutOfOrder {
            expected: 5,
            got: 3
        }),
        "an overlap"
    );
    assert_eq!(
        sink.write(1, &records(4, 5)),
        Err(SinkError::OutOfOrder {
            expected: 5,
            got: 4
        }),
        "a repeat"
    );
    let mut holed = records(5, 9);
    holed.remove(2);
    assert_eq!(
        sink.write(1, &holed),
        Err(SinkError::OutOfOrder {
            expected: 7,
            got: 8
        }),
        "a gap inside"
    );
    let mut backwards = records(5, 8);
    backwards.reverse();
    assert!(
        matches!(sink.write(1, &backwards), Err(SinkError::OutOfOrder { .. })),
        "backwards"
    );
    assert_exactly_once(&mut sink, 5);

    let (mut writer, _) = take_over(h.open(table), 1);
    assert_eq!(
        writer.write(&records(6, 8)),
        Err(SinkError::OutOfOrder {
            expected: 5,
            got: 6
        })
    );
    assert_eq!(writer.last_committed(), Some(4));
    write(&mut writer, &records(5, 8));
    assert_exactly_once(&mut sink, 8);
}

pub fn writer_skips_already_committed_positions(h: &impl Harness) {
    let table = "writer_skips";
    let (mut old, _) = take_over(h.open(table), 1);
    write(&mut old, &records(0, 10));
    let (mut new, resume) = take_over(h.open(table), 2);
    assert_eq!(resume, Some(9));
    // A backup's buffer that overlaps what the old primary committed.
    assert_eq!(
        write(&mut new, &records(5, 15)),
        WriteOutcome {
            written: 5,
            skipped: 5,
            last_committed: Some(14)
        }
    );
    assert_eq!(
        write(&mut new, &records(0, 8)),
        WriteOutcome {
            written: 0,
            skipped: 8,
            last_committed: Some(14)
        }
    );
    assert_eq!(
        write(&mut new, &records(14, 16)),
        WriteOutcome {
            written: 1,
            skipped: 1,
            last_committed: Some(15)
        }
    );
    assert_eq!(
        write(&mut new, &[]),
        WriteOutcome {
            written: 0,
            skipped: 0,
            last_committed: Some(15)
        }
    );
    let rows = assert_exactly_once(new.sink_mut(), 16);
    assert!(
        rows.iter()
            .all(|row| (row.epoch == 1) == (row.position <= 9))
    );
}

/// Sets the flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How long the zombie test's writer A may go on at most.
const ZOMBIE_TEST_LIMIT: Duration = Duration::from_secs(120);

/// Writer A (epoch 1) writes from one thread while B (epoch 2) takes over on
/// another connection and writes on; A goes on trying its next batch the
/// whole time B writes, first while that batch still follows on exactly
/// (between B's claim and B's first write), then between B's batches.
pub fn zombie_writer_never_writes_after_the_new_primary_claims(h: &impl Harness) {
    const BATCH: u64 = 5;
    const A_WRITES_BEFORE_CLAIM: u64 = 100;
    const B_WRITES: u64 = 300;
    const ROUNDS: usize = 3;
    const A_TRIES_BEFORE_B_WRITES: usize = 3;
    for round in 0..ROUNDS {
        let table = format!("zombie_{round}");
        let (mut a, resume) = take_over(h.open(&table), 1);
        assert_eq!(resume, None);
        let a_progress = AtomicU64::new(0);
        let b_claimed = AtomicBool::new(false);
        let b_done = AtomicBool::new(false);
        let a_fenced = AtomicUsize::new(0);
        let a_written_after_claim = AtomicUsize::new(0);
        let a_attempts_after_claim = AtomicUsize::new(0);
        let claimed = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut next = 0;
                let deadline = Instant::now() + ZOMBIE_TEST_LIMIT;
                while !b_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let claimed_before = b_claimed.load(Ordering::SeqCst);
                    if claimed_before {
                        a_attempts_after_claim.fetch_add(1, Ordering::SeqCst);
                    }
                    match a.write(&records(next, next + BATCH)) {
                        Ok(_) => {
                            next += BATCH;
                            a_progress.store(next, Ordering::SeqCst);
                            if claimed_before {
                                a_written_after_claim.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(SinkError::Fenced {
                            epoch: 1,
                            current: 2,
                        }) => {
                            a_fenced.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => panic!("zombie A: unexpected {e}"),
                    }
                }
            });
            let b = scope.spawn(|| {
                // Stops A however B ends (a failed assertion included).
                let _stop_a = SetOnDrop(&b_done);
                while a_progress.load(Ordering::SeqCst) < A_WRITES_BEFORE_CLAIM {
                    std::thread::sleep(Duration::from_micros(100));
                }
                let (mut b, resume) = take_over(h.open(&table), 2);
                b_claimed.store(true, Ordering::SeqCst);
                // The zombie's next batch follows on exactly until B writes:
                // let it try a few times in that window first.
                let deadline = Instant::now() + ZOMBIE_TEST_LIMIT;
                while a_attempts_after_claim.load(Ordering::SeqCst) < A_TRIES_BEFORE_B_WRITES
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(100));
                }
                let start = resume.map_or(0, |p| p + 1);
                let mut next = start;
                while next < start + B_WRITES {
                    let batch = records(next, next + BATCH);
                    write(&mut b, &batch);
                    next += BATCH;
                    // Give the zombie room to try between B's batches.
                    std::thread::yield_now();
                }
                (resume, next)
            });
            b.join().expect("writer B")
        });
        let (claimed_at, end) = claimed;
        let claimed_at = claimed_at.expect("A wrote before B claimed");
        assert!(
            a_fenced.load(Ordering::SeqCst) >= A_TRIES_BEFORE_B_WRITES,
            "A was not fenced on each try after B's claim"
        );
        assert_eq!(
            a_written_after_claim.load(Ordering::SeqCst),
            0,
            "A wrote after B's claim"
        );
        let mut check = h.open(&table);
        let rows = assert_exactly_once(&mut check, end);
        for row in rows {
            let expected_epoch = if row.position <= claimed_at { 1 } else { 2 };
            assert_eq!(
                row.epoch, expected_epoch,
                "position {} (B claimed after {claimed_at})",
                row.position
            );
        }
    }
}

/// Writers with epochs 1..=K start together and race: each takes over when
/// it gets there and writes until fenced or the stream's end.
pub fn concurrent_takeovers_keep_every_position_exactly_once(h: &impl Harness) {
    const WRITERS: u64 = 6;
    const N: u64 = 600;
    const BATCH: u64 = 3;
    let table = "concurrent_takeovers";
    drop(h.open(table)); // create the tables before the race
    let start = Barrier::new(WRITERS as usize);
    let claims = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for epoch in 1..=WRITERS {
            let (start, claims) = (&start, &claims);
            scope.spawn(move || {
                let sink = h.open(table);
                start.wait();
                // Mostly in epoch order, with epoch 3 late (fenced at its claim).
                const START_MS: [u64; WRITERS as usize] = [0, 3, 9, 6, 12, 15];
                std::thread::sleep(Duration::from_millis(START_MS[epoch as usize - 1]));
                let (mut writer, resume) = match FencedWriter::take_over(sink, epoch) {
                    Ok(taken) => taken,
                    Err(SinkError::Fenced { current, .. }) => {
                        assert!(current > epoch);
                        return;
                    }
                    Err(e) => panic!("writer {epoch}: {e}"),
                };
                claims.lock().expect("claims").insert(epoch, resume);
                let mut next = resume.map_or(0, |p| p + 1);
                while next < N {
                    match writer.write(&records(next, (next + BATCH).min(N))) {
                        Ok(_) => next = (next + BATCH).min(N),
                        Err(SinkError::Fenced { current, .. }) => {
                            assert!(current > epoch);
                            return;
                        }
                        Err(e) => panic!("writer {epoch}: {e}"),
                    }
                }
            });
        }
    });
    let mut check = h.open(table);
    let rows = assert_exactly_once(&mut check, N);
    let claims = claims.into_inner().expect("claims");
    assert!(
        claims.contains_key(&WRITERS),
        "the highest epoch must always get through"
    );
    for row in rows {
        let claimed_at = claims
            .get(&row.epoch)
            .expect("a row's epoch claimed the sink");
        assert!(
            claimed_at.is_none_or(|p| row.position > p),
            "epoch {} wrote {} at or before its claim",
            row.epoch,
            row.position
        );
        for (later, later_claim) in claims.range(row.epoch + 1..) {
            assert!(
                later_claim.is_some_and(|p| row.position <= p),
                "epoch {} wrote {} after epoch {later}'s claim",
                row.epoch,
                row.position
            );
        }
    }
}

pub fn crash_between_batches_then_takeover_loses_and_duplicates_nothing(h: &impl Harness) {
    let table = "crash_between_batches";
    let (mut first, _) = take_over(h.open(table), 1);
    for start in (0..40).step_by(8) {
        write(&mut first, &records(start, start + 8));
    }
    drop(first); // the primary dies between two batches; its connection goes away
    // The backup had buffered from position 30 on.
    let (mut second, resume) = take_over(h.open(table), 2);
    assert_eq!(resume, Some(39));
    let outcome = write(&mut second, &records(30, 50));
    assert_eq!(
        outcome,
        WriteOutcome {
            written: 10,
            skipped: 10,
            last_committed: Some(49)
        }
    );
    drop(second);
    // Its buffer starts after the resume point: it must replay from the source.
    let (mut third, resume) = take_over(h.open(table), 3);
    assert_eq!(resume, Some(49));
    assert_eq!(
        third.write(&records(55, 60)),
        Err(SinkError::OutOfOrder {
            expected: 50,
            got: 55
        })
    );
    write(&mut third, &records(50, 60));
    assert_exactly_once(third.sink_mut(), 60);
}

pub fn rows_written_outside_the_fence_surface_as_errors(h: &impl Harness) {
    let table = "outside_the_fence";
    let (mut writer, _) = take_over(h.open(table), 1);
    write(&mut writer, &records(0, 3));
    h.write_unfenced(table, 9, &records(3, 4)); // a row the fence does not know about
    assert!(
        matches!(writer.write(&records(3, 5)), Err(SinkError::Duplicate(_))),
        "a duplicate position"
    );
    assert_eq!(writer.last_committed(), Some(2));
    assert!(
        matches!(h.open(table).claim(2), Err(SinkError::Duplicate(_))),
        "a row beyond the fence"
    );
    let rows = all_rows(writer.sink_mut());
    assert_eq!(rows.len(), 4, "the refused write wrote nothing");
}

/// One run of the property: a stream `0..n` in batches, takeovers at the
/// given steps; at each, the old writer either goes on trying (a zombie) or
/// dies, and the new one replays from a buffer reaching `back` records
/// before its resume point.
#[derive(Debug, Clone)]
pub struct TakeoverRun {
    n: u64,
    batches: Vec<u64>,
    takeovers: Vec<(usize, bool, u64)>,
}

fn takeover_runs() -> impl Strategy<Value = TakeoverRun> {
    (
        100u64..300,
        proptest::collection::vec(1u64..8, 64),
        proptest::collection::btree_set(0usize..60, 20..30),
        proptest::collection::vec((any::<bool>(), 0u64..10), 30),
    )
        .prop_map(|(n, batches, steps, kinds)| TakeoverRun {
            n,
            batches,
            takeovers: steps
                .into_iter()
                .zip(kinds)
                .map(|(step, (zombie, back))| (step, zombie, back))
                .collect(),
        })
}

/// Zombies kept trying at once (each holds a connection).
const MAX_ZOMBIES: usize = 3;

fn run_takeovers(h: &impl Harness, table: &str, run: &TakeoverRun) {
    let mut epoch = 1;
    let (mut writer, resume) = take_over(h.open(table), epoch);
    assert_eq!(resume, None);
    let mut claims = vec![(epoch, resume)];
    let mut zombies = Vec::new();
    let last_step = run.takeovers.iter().map(|t| t.0).max().unwrap_or(0);
    let mut takeovers = run.takeovers.iter().peekable();
    let mut step = 0;
    while step <= last_step || writer.last_committed() != run.n.checked_sub(1) {
        if let Some(&(_, zombie, back)) = takeovers.next_if(|t| t.0 == step) {
            epoch += 1;
            let (mut next, resume) = take_over(h.open(table), epoch);
            assert_eq!(
                resume,
                writer.last_committed(),
                "takeover {epoch} resumes where the last primary stopped"
            );
            claims.push((epoch, resume));
            if zombie {
                zombies.push(writer);
                if zombies.len() > MAX_ZOMBIES {
                    zombies.remove(0);
                }
            } else {
                drop(writer); // crashed
            }
            // Replay the backup's buffer, which reaches `back` records behind.
            let from = resume.map_or(0, |p| (p + 1).saturating_sub(back));
            let to = (resume.map_or(0, |p| p + 1) + 2).min(run.n).max(from);
            let outcome = write(&mut next, &records(from, to));
            assert_eq!(
                outcome.skipped as u64,
                resume.map_or(0, |p| (p + 1).min(to) - from)
            );
            writer = next;
        }
        let from = writer.last_committed().map_or(0, |p| p + 1);
        let to = (from + run.batches[step % run.batches.len()]).min(run.n);
        write(&mut writer, &records(from, to));
        for zombie in &mut zombies {
            let from = zombie.last_committed().map_or(0, |p| p + 1);
            match zombie.write(&records(from, from + 2)) {
                Err(SinkError::Fenced {
                    epoch: old,
                    current,
                }) => {
                    assert_eq!(old, zombie.epoch());
                    assert!(current > old);
                }
                other => panic!(
                    "zombie of epoch {} was not fenced: {other:?}",
                    zombie.epoch()
                ),
            }
        }
        step += 1;
    }
    assert!(claims.len() > 20, "only {} takeovers", claims.len() - 1);
    let rows = assert_exactly_once(writer.sink_mut(), run.n);
    // Each epoch wrote exactly the positions between its claim and the next.
    for row in rows {
        let index = usize::try_from(row.epoch - 1).expect("epoch index");
        let (_, claimed_at) = claims[index];
        assert!(claimed_at.is_none_or(|p| row.position > p));
        if let Some((_, next_claim)) = claims.get(index + 1) {
            assert!(
                next_claim.is_some_and(|p| row.position <= p),
                "epoch {} wrote {} after the next claim",
                row.epoch,
                row.position
            );
        }
    }
}

pub fn random_takeovers_write_every_position_exactly_once(h: &impl Harness) {
    let mut runner = TestRunner::new(Config {
        cases: h.cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let case = AtomicUsize::new(0);
    let result = runner.run(&takeover_runs(), |run| {
        let table = format!("takeovers_{}", case.fetch_add(1, Ordering::SeqCst));
        run_takeovers(h, &table, &run);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
