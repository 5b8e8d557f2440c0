//! The watchdog: a separate process that kills a frozen agent's primaries
//! before its lease can expire.
//!
//! An agent fences its primaries itself when its lease may be lost. But an
//! agent that is stopped (SIGSTOP, a debugger, a livelock) fences nothing,
//! while the processes it started keep running and acting; once its lease
//! expires on the store, another instance is promoted, and two primaries
//! would act at once. So the agent arms this watchdog (`tandem watchdog`, a
//! child in its own process group) with every process that may act as
//! primary and the deadline by which the agent itself would have fenced
//! it; it moves the deadline on with every renewal and disarms a process
//! once it has stepped down or exited. If the agent stops talking, the
//! watchdog kills each armed process group (SIGKILL) at its deadline; if
//! the agent's end of the pipe closes (the agent died), at once.
//!
//! Deadlines are absolute `CLOCK_MONOTONIC` nanoseconds: the clock both
//! processes share.
//!
//! Protocol, one line each on the watchdog's stdin: `arm PGID DEADLINE_NS`,
//! `disarm PGID`.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Kill process group `pgid` at `deadline_ns` unless moved or disarmed.
    Arm {
        /// The process group (the instance's pid: instances lead their group).
        pgid: u32,
        /// `CLOCK_MONOTONIC` deadline.
        deadline_ns: u64,
    },
    /// Forget process group `pgid`.
    Disarm {
        /// The process group.
        pgid: u32,
    },
}

impl Command {
    /// The line for this command (with its newline).
    pub fn line(&self) -> String {
        match self {
            Command::Arm { pgid, deadline_ns } => format!("arm {pgid} {deadline_ns}\n"),
            Command::Disarm { pgid } => format!("disarm {pgid}\n"),
        }
    }

    /// Parses a line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let pgid = |w: &str| -> Result<u32, String> {
            match w.parse::<u32>() {
                Ok(p) if p > 1 => Ok(p),
                _ => Err(format!("bad process group {w:?}")),
            }
        };
        match words.as_slice() {
            ["arm", p, d] => Ok(Command::Arm {
                pgid: pgid(p)?,
                deadline_ns: d.parse().map_err(|_| format!("bad deadline {d:?}"))?,
            }),
            ["disarm", p] => Ok(Command::Disarm { pgid: pgid(p)? }),
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

fn kill_group(pgid: u32, why: &str) {
    eprintln!("tandem watchdog: {why}: SIGKILL to process group {pgid}");
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Runs the watchdog on `input` until it closes; then kills whatever is
/// still armed and returns.
pub fn run(input: impl BufRead + Send + 'static) {
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in input.lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut armed: HashMap<u32, u64> = HashMap::new();
    loop {
        let now = monotonic_ns();
        let due: Vec<u32> = armed
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for pgid in due {
            armed.remove(&pgid);
            kill_group(pgid, "the agent did not fence in time");
        }
        let wait = armed
            .values()
            .min()
            .map(|d| Duration::from_nanos(d.saturating_sub(now)))
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(Some(line)) => match Command::parse(&line) {
                Ok(Command::Arm { pgid, deadline_ns }) => {
                    armed.insert(pgid, deadline_ns);
                }
                Ok(Command::Disarm { pgid }) => {
                    armed.remove(&pgid);
                }
                Err(e) => eprintln!("tandem watchdog: ignoring a line: {e}"),
            },
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                for pgid in armed.keys() {
                    kill_group(*pgid, "the agent is gone");
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_bad_lines_are_named() {
        for c in [
            Command::Arm {
                pgid: 42,
                deadline_ns: 7,
            },
            Command::Disarm { pgid: 9 },
        ] {
            assert_eq!(Command::parse(c.line().trim_end()), Ok(c));
        }
        assert!(
            Command::parse("arm 1 5")
                .unwrap_err()
                .contains("process group")
        );
        assert!(Command::parse("arm x 5").unwrap_err().contains("\"x\""));
        assert!(
            Command::parse("arm 5 soon")
                .unwrap_err()
                .contains("deadline")
        );
        assert!(Command::parse("kill 5").unwrap_err().contains("unknown"));
    }
}
