//! The optional journal: one JSON object per line, written and flushed as
//! each event happens, so a test can reconstruct when each process acted as
//! primary even if it was killed with SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::role::Role;
use crate::state::unix_ms;

/// An append-only JSON-lines file.
pub(crate) struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    pid: u32,
    app: String,
    instance: String,
}

impl Journal {
    /// Opens (creating if needed) `path` for appending.
    pub(crate) fn open(path: &Path, app: &str, instance: &str) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            pid: std::process::id(),
            app: app.to_owned(),
            instance: instance.to_owned(),
        })
    }

    /// Appends one line `{"t_ms","pid","app","instance","event","role","epoch",..extra}`.
    ///
    /// The line goes out in one `write` on an `O_APPEND` file, so it reaches
    /// the kernel before this returns. A failure is logged, not fatal: the
    /// demo keeps serving.
    pub(crate) fn record(&self, event: &str, role: Role, epoch: u64, extra: Map<String, Value>) {
        let mut line = json!({
            "t_ms": unix_ms(),
            "pid": self.pid,
            "app": self.app,
            "instance": self.instance,
            "event": event,
            "role": role,
            "epoch": epoch,
        });
        if let Value::Object(fields) = &mut line {
            fields.extend(extra);
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
            tracing::warn!(journal = %self.path.display(), %err, "cannot write journal line");
        }
    }
}
