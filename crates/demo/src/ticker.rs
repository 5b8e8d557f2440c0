//! The ticker: a plain OS thread (not a tokio task, so a blocked runtime
//! cannot hide a freeze) that publishes a tick every 10 ms, detects gaps
//! between its ticks, and journals `acting` every `--acting-every-ms`
//! (default 100) while primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::state::Shared;

/// Time between two ticks.
const TICK: Duration = Duration::from_millis(10);
/// The running ticker thread; stopped and joined when dropped.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the ticker thread for `shared`.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        acting_every_ms: u64,
        notify_every_ms: Option<u64>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("demo-ticker".into())
            .spawn(move || {
                // The first acting line comes at once for a primary.
                let mut last_acting_ms: Option<u64> = None;
                let mut last_notified_ms: Option<u64> = None;
                let mut notifications: u64 = 0;
                while !thread_stop.load(Ordering::SeqCst) {
                    shared.tick();
                    let now_ms = shared.mono_ms();
                    if last_acting_ms.is_none_or(|t| now_ms.saturating_sub(t) >= acting_every_ms) {
                        shared.record_acting();
                        last_acting_ms = Some(now_ms);
                    }
                    if let Some(every) = notify_every_ms
                        && last_notified_ms.is_none_or(|t| now_ms.saturating_sub(t) >= every)
                    {
                        if shared.record_notification(notifications + 1) {
                            notifications += 1;
                        }
                        last_notified_ms = Some(now_ms);
                    }
                    std::thread::sleep(TICK.min(Duration::from_millis(acting_every_ms)));
                }
            })
            .context("cannot start the freeze-detection thread")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            // A panic in the ticker was already reported by the panic hook.
            let _ = handle.join();
        }
    }
}
