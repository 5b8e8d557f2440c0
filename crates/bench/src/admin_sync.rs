//! `tandem bench admin-sync`: how long an edit of an app's admin data takes
//! to be readable on a backup, through the real mirror (`tandem-sync`).
//!
//! A [`tandem_sync::Receiver`] (backup instance `b`, served by
//! [`tandem_sync::router`] on 127.0.0.1) and a [`tandem_sync::Source`]
//! (primary instance `a`, epoch 1) mirror one temporary directory to
//! another, in this process, as the agents of two hosts would. Each trial
//! writes a file outside the primary's admin directory, syncs it, and
//! renames it in (an atomic edit, as an application makes it); the time
//! runs from just before the rename until the backup's directory holds the
//! same bytes, polled every 200 µs. Small edits (about 200 bytes) and
//! 10 MiB files are timed apart, and the source's own lag (change detected
//! → receiver acknowledged, `lag_samples_ms`) is reported beside them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tandem_sync::{Receiver, ReceiverSet, Source, SourceStatus, SyncConfig, SyncEvent, router};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::figures::stats;

/// Options of `tandem bench admin-sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSync {
    /// Small edits timed.
    pub trials: usize,
    /// 10 MiB files timed.
    pub big_trials: usize,
    /// Sign every request with a shared secret, as agents with a cluster
    /// secret do.
    pub signed: bool,
    /// Print the figures as JSON.
    pub json: bool,
}

/// The size of a small edit.
const SMALL_BYTES: usize = 200;
/// The size of a large file.
const BIG_BYTES: usize = 10 * 1024 * 1024;
/// How often the backup's directory is looked at.
const POLL: Duration = Duration::from_micros(200);
/// The longest one edit may take to reach the backup.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the first full resynchronisation may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The app, and the receiver's instance name.
const APP: &str = "bench";
const BACKUP: &str = "b";
/// How many of the mirror's last event messages an error shows.
const KEPT_EVENTS: usize = 10;

/// What each figure times.
const SMALL_VISIBLE: &str = "admin-sync small edit (200 B): rename into the primary's admin dir → identical content read back from the backup's dir";
const SMALL_LAG: &str =
    "admin-sync small edit: the source's lag_samples_ms (change detected → receiver acknowledged)";
const BIG_VISIBLE: &str = "admin-sync 10 MiB file: rename into the primary's admin dir → complete, identical file read back from the backup's dir";
const BIG_LAG: &str =
    "admin-sync 10 MiB file: the source's lag_samples_ms (change detected → receiver acknowledged)";

/// Admin-data mirroring lag: an atomic edit of the primary's admin
/// directory → the same bytes readable in the backup's, for small edits and
/// for 10 MiB files; and the source's own detection → acknowledgement lag.
pub async fn admin_sync(o: &AdminSync) -> anyhow::Result<()> {
    if o.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let secret = o
        .signed
        .then(|| pseudo_random(32, 0x5eed_0f5e_c2e7).to_vec());
    let cfg = |name: &str| SyncConfig {
        app: APP.into(),
        dir: dir.path().join(name),
        secret: secret.clone(),
    };
    let (events, recent) = drain_events();

    let receiver = Receiver::new(cfg("backup"), BACKUP.into(), events.clone())
        .context("cannot set up the backup's admin data receiver")?;
    receiver.set_primary(Some(("a".into(), 1)));
    let receivers = ReceiverSet::new();
    receivers.insert(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the receiver's port on 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("cannot read the receiver's port")?;
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, router(receivers))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    let source = match Source::start(cfg("primary"), "a".into(), 1, events).await {
        Ok(source) => source,
        Err(e) => {
            stop.cancel();
            let _ = server.await;
            return Err(e).context("cannot set up the primary's admin data source");
        }
    };
    source.set_receivers(vec![(BACKUP.into(), format!("http://{addr}"))]);

    let result = async {
        first_resync(&source, &recent).await?;
        let mirror = receiver.dir().to_path_buf();
        let primary = dir.path().join("primary");
        if !o.json {
            print_header(o);
        }
        let files = Files {
            staging: &staging,
            primary: &primary,
            mirror: &mirror,
        };
        let small = phase(
            &source,
            &files,
            "settings.conf",
            SMALL_BYTES,
            o.trials,
            false,
            &recent,
        )
        .await?;
        let big = phase(
            &source,
            &files,
            "big.bin",
            BIG_BYTES,
            o.big_trials,
            !o.json,
            &recent,
        )
        .await?;
        anyhow::Ok((small, big))
    }
    .await;
    source.stop().await;
    stop.cancel();
    let _ = server.await;
    let (small, big) = result?;

    let extra = |p: &Phase| {
        let poll_us = POLL.as_micros() as u64;
        json!({"signed": o.signed, "poll_us": poll_us, "bytes": p.bytes})
    };
    report_range(SMALL_VISIBLE, &small.visible_ms, o.json, extra(&small));
    report_range(SMALL_LAG, &small.source_lag_ms, o.json, extra(&small));
    if o.big_trials > 0 {
        report_range(BIG_VISIBLE, &big.visible_ms, o.json, extra(&big));
        report_range(BIG_LAG, &big.source_lag_ms, o.json, extra(&big));
    }
    Ok(())
}

/// The first line of the text output: what runs.
fn print_header(o: &AdminSync) {
    let signed = if o.signed { "signed" } else { "unsigned" };
    println!(
        "bench admin-sync: tandem-sync source (a, epoch 1) → HTTP on 127.0.0.1 ({signed}) → receiver (b), temporary directories, {} small edits of {SMALL_BYTES} bytes, {} files of 10 MiB",
        o.trials, o.big_trials
    );
}

/// Where a trial's file is written, renamed in and looked for.
struct Files<'a> {
    /// Outside the admin directory, on the same file system.
    staging: &'a Path,
    /// The primary's admin directory.
    primary: &'a Path,
    /// The backup's admin directory.
    mirror: &'a Path,
}

/// The samples of one kind of edit.
struct Phase {
    bytes: usize,
    visible_ms: Vec<f64>,
    source_lag_ms: Vec<f64>,
}

/// Times `trials` edits of `name`, each `bytes` of fresh content.
async fn phase(
    source: &Source,
    files: &Files<'_>,
    name: &str,
    bytes: usize,
    trials: usize,
    verbose: bool,
    recent: &Recent,
) -> anyhow::Result<Phase> {
    let mut out = Phase {
        bytes,
        visible_ms: Vec::with_capacity(trials),
        source_lag_ms: Vec::with_capacity(trials),
    };
    for trial in 0..trials {
        let before = receiver_status(source)?;
        let seed = (trial as u64) << 32 ^ u64::from(std::process::id()) ^ bytes as u64;
        let content = if bytes <= 4096 {
            let mut c = format!("# edit {trial} of {name}\n").into_bytes();
            c.extend(
                pseudo_random(bytes.saturating_sub(c.len() + 1), seed)
                    .iter()
                    .map(|b| b'a' + b % 26),
            );
            c.push(b'\n');
            c
        } else {
            pseudo_random(bytes, seed)
        };
        let staged = files.staging.join(name);
        let target = files.primary.join(name);
        let mirrored = files.mirror.join(name);
        let timed = tokio::task::spawn_blocking(move || {
            edit_and_wait(&staged, &target, &mirrored, &content)
        })
        .await
        .context("the edit's thread failed")?;
        let visible = match timed {
            Ok(d) => d,
            Err(e) => bail!(
                "{name}, trial {}: {e:#}{}",
                trial + 1,
                trouble(source, recent)
            ),
        };
        let ms = visible.as_secs_f64() * 1000.0;
        out.visible_ms.push(ms);
        // The source's acknowledgement follows the write on the backup.
        let seq = source.seq();
        match tokio::time::timeout(TRIAL_TIMEOUT, source.wait_acked(BACKUP, seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(
                "{name}, trial {}: {e}{}",
                trial + 1,
                trouble(source, recent)
            ),
            Err(_) => bail!(
                "{name}, trial {}: the backup's acknowledgement of change {seq} did not come within {} s{}",
                trial + 1,
                TRIAL_TIMEOUT.as_secs(),
                trouble(source, recent)
            ),
        }
        let after = receiver_status(source)?;
        let lags = new_lags(&before, &after);
        if verbose {
            let lag = lags
                .iter()
                .map(|l| format!("{l:.2}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  trial {:>3}: {name} visible on the backup after {ms:.2} ms (source lag {lag} ms)",
                trial + 1
            );
        }
        out.source_lag_ms.extend(lags);
    }
    Ok(out)
}

/// The lag samples `after` has that `before` had not: one per push of
/// live changes acknowledged in between (none if a resynchronisation
/// covered them).
fn new_lags(before: &tandem_sync::ReceiverStatus, after: &tandem_sync::ReceiverStatus) -> Vec<f64> {
    if after.resyncs != before.resyncs {
        return Vec::new();
    }
    let pushed = after.pushes.saturating_sub(before.pushes) as usize;
    let n = pushed.min(after.lag_samples_ms.len());
    after.lag_samples_ms[after.lag_samples_ms.len() - n..].to_vec()
}

/// Writes `content` to `staged`, syncs it, renames it to `target` and waits
/// until `mirrored` holds the same bytes: the time from just before the
/// rename.
fn edit_and_wait(
    staged: &Path,
    target: &Path,
    mirrored: &Path,
    content: &[u8],
) -> anyhow::Result<Duration> {
    let mut file =
        File::create(staged).with_context(|| format!("cannot create {}", staged.display()))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staged.display()))?;
    drop(file);
    let t0 = Instant::now();
    std::fs::rename(staged, target)
        .with_context(|| format!("cannot rename {} to {}", staged.display(), target.display()))?;
    // The receiver replaces a file by renaming a new one over it: a file
    // not read yet has another inode or change time.
    let mut looked_at = None;
    loop {
        if let Ok(m) = std::fs::metadata(mirrored) {
            let key = (m.ino(), m.len(), m.ctime(), m.ctime_nsec());
            if looked_at != Some(key) && m.len() == content.len() as u64 {
                if std::fs::read(mirrored).is_ok_and(|read| read == content) {
                    return Ok(t0.elapsed());
                }
                looked_at = Some(key);
            }
        }
        if t0.elapsed() > TRIAL_TIMEOUT {
            bail!(
                "{} did not hold the new {} bytes within {} s",
                mirrored.display(),
                content.len(),
                TRIAL_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for the source's first full resynchronisation to the receiver.
async fn first_resync(source: &Source, recent: &Recent) -> anyhow::Result<()> {
    let mut rx = source.watch();
    let done = rx.wait_for(|s| {
        s.receivers
            .get(BACKUP)
            .is_some_and(|r| r.resyncs > 0 && r.in_sync)
    });
    match tokio::time::timeout(SETUP_TIMEOUT, done).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => bail!("the admin data source stopped{}", trouble(source, recent)),
        Err(_) => bail!(
            "the source did not synchronise with the receiver within {} s{}",
            SETUP_TIMEOUT.as_secs(),
            trouble(source, recent)
        ),
    }
}

/// The source's view of the receiver.
fn receiver_status(source: &Source) -> anyhow::Result<tandem_sync::ReceiverStatus> {
    let status: SourceStatus = source.status();
    status
        .receivers
        .get(BACKUP)
        .cloned()
        .context("the admin data source has no receiver b")
}

/// What the source says is wrong, and the mirror's last events, for an
/// error message.
fn trouble(source: &Source, recent: &Recent) -> String {
    let mut out = String::new();
    if let Some(r) = source.status().receivers.get(BACKUP) {
        out.push_str(&format!(
            "; source: acked_seq {}, pending {}, last error {}",
            r.acked_seq,
            r.pending,
            r.last_error.as_deref().unwrap_or("none")
        ));
    }
    let events = recent.lock().unwrap_or_else(|e| e.into_inner());
    if !events.is_empty() {
        out.push_str("; last events: ");
        out.push_str(&events.iter().cloned().collect::<Vec<_>>().join(" | "));
    }
    out
}

/// The mirror's last event messages.
type Recent = Arc<Mutex<VecDeque<String>>>;

/// An event channel for the source and the receiver, drained into the last
/// [`KEPT_EVENTS`] messages.
fn drain_events() -> (mpsc::Sender<SyncEvent>, Recent) {
    let (tx, mut rx) = mpsc::channel::<SyncEvent>(1024);
    let recent: Recent = Arc::default();
    let kept = recent.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if matches!(e, SyncEvent::Applied { .. }) {
                continue;
            }
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() == KEPT_EVENTS {
                kept.pop_front();
            }
            kept.push_back(e.message());
        }
    });
    (tx, recent)
}

/// `len` bytes that no compression or deduplication shortens (splitmix64
/// from `seed`).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Prints the figures of `samples` (ms) with their minimum: one line, or
/// one JSON object with `extra`'s fields added.
pub(crate) fn report_range(what: &str, samples: &[f64], as_json: bool, extra: serde_json::Value) {
    let (p50, p99, max, mean) = stats(samples);
    let min = samples.iter().copied().reduce(f64::min).unwrap_or(f64::NAN);
    if as_json {
        let mut doc = json!({"bench": what, "trials": samples.len(), "p50_ms": p50, "p99_ms": p99,
                             "min_ms": min, "max_ms": max, "mean_ms": mean, "samples_ms": samples});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        println!("{doc}");
    } else {
        println!(
            "{what}: p50 {p50:.2} ms, p99 {p99:.2} ms, min {min:.2} ms, max {max:.2} ms, mean {mean:.2} ms ({} samples)",
            samples.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_bytes_differ_by_seed_and_have_the_length_asked() {
        assert_eq!(pseudo_random(13, 1).len(), 13);
        assert_ne!(pseudo_random(64, 1), pseudo_random(64, 2));
        assert_eq!(pseudo_random(64, 1), pseudo_random(64, 1));
    }

    #[test]
    fn new_lags_are_the_samples_of_the_pushes_in_between() {
        let before = tandem_sync::ReceiverStatus {
            pushes: 3,
            lag_samples_ms: vec![1.0, 2.0],
            ..Default::default()
        };
        let after = tandem_sync::ReceiverStatus {
            pushes: 4,
            lag_samples_ms: vec![1.0, 2.0, 7.0],
            ..before.clone()
        };
        assert_eq!(new_lags(&before, &after), [7.0]);
        let resynced = tandem_sync::ReceiverStatus {
            resyncs: 1,
            ..after.clone()
        };
        assert!(new_lags(&before, &resynced).is_empty());
    }
}
