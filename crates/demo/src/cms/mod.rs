//! The "CMS" demo deployment: a telephony switch (`tandem demo-switch`) and
//! a call-centre reporting server (`tandem demo-cms`).
//!
//! A CMS has two links to the switch, one to the *main* switch and one to
//! the *survivable* switch, and the two must **never** be active at once.
//! tandem chooses which link is active through the CMS's *link hook*
//! (`POST /tandem/link`): it disables the old link, waits for the
//! confirmation, then enables the other. The switches' journals are the
//! ground truth a test reads to check that two links of one CMS were never
//! open at the same time.
//!
//! Each CMS also reports whether it *could* use each of its links (for
//! tandem's `probe = "reported"` link probes): `up` while its session on the
//! link is open, else what a `PROBE` of the link's switch answers (the
//! `cms` module has the details). An operator can cut the link of just
//! one CMS on a switch (`POST /cut?who=app/instance` on the switch's
//! control API; the `switch` module has the details).
//!
//! # The line protocol (switch side, every line ends with `\n`)
//!
//! | client sends | switch answers |
//! | --- | --- |
//! | nothing, then closes | nothing (a bare TCP probe; nothing journaled) |
//! | `PROBE app/instance` | `OK`; or `REFUSED <why>` while the switch is down or the client is cut (`REFUSED cut`); then closes; nothing journaled |
//! | `LINK app/instance` | `OK` and keeps the session; or `REFUSED <reason>` and closes (`REFUSED cut` for a cut client) |
//! | `QUERY app/instance` | `CONNECTED` or `FREE`, then closes |
//! | anything else | `ERROR <why>`, then closes |
//!
//! A down switch has closed its listener: a probe or a link fails to
//! connect rather than being refused (a connection accepted just before is
//! refused `the switch is down`).
//!
//! During a session the switch sends `DATA <n>` every 100 ms; the client
//! sends `ALIVE` at least every `liveness / 3` ms and ends with `BYE`, which
//! the switch journals and then answers `BYE-OK`. A session silent for
//! `--liveness-ms` is closed by the switch, as is the session of a client
//! that gets cut (the switch just closes the connection).
//!
//! # Why a disable is safe
//!
//! A disable is confirmed (HTTP 200) only when the session is certainly
//! closed on the switch: the switch answered `BYE-OK` (it journals the
//! close first), closed the connection itself, or at least
//! `liveness + 100 ms` passed since the CMS last sent a line on it, so the
//! switch's own silence timer has closed it. The 100 ms margin assumes a
//! line reaches the switch within 100 ms of being sent.

#[allow(clippy::module_inception)] // `cms::cms`: the CMS of the CMS deployment.
mod cms;
mod line;
mod switch;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::Value;

pub use cms::{CmsArgs, LinkSpec, run_cms, serve_cms};
pub use switch::{SwitchArgs, run_switch, serve_switch};

/// Wall-clock nanoseconds since the Unix epoch, 0 if the clock is before it.
pub(crate) fn unix_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// An append-only JSON-lines file: each line is written in one `write` on
/// an `O_APPEND` file, so it reaches the kernel (and survives a SIGKILL)
/// before [`JsonLines::append`] returns.
pub(crate) struct JsonLines {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonLines {
    /// Opens (creating if needed) `path` for appending.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Appends `line` (a JSON object) and a newline.
    pub(crate) fn append(&self, line: &Value) -> std::io::Result<()> {
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(text.as_bytes()).and_then(|()| file.flush())
    }

    /// Like [`JsonLines::append`], but a failure is only logged.
    pub(crate) fn append_or_warn(&self, line: &Value) {
        if let Err(err) = self.append(line) {
            tracing::warn!(journal = %self.path.display(), %err, "cannot write journal line");
        }
    }

    /// The journal's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces `dir/name` with `contents` atomically: a temporary file in the
/// same directory, written (and fsynced when `durable`), then renamed over
/// the target. A reader sees the old contents or the new, never a mix.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    durable: bool,
) -> std::io::Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&temp, &target)?;
        if durable {
            // The rename itself is durable once the directory is synced.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}
