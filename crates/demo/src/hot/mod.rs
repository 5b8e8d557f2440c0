//! Hot standby, as the WFM Data Aggregator does it: a statistics source
//! emits a numbered stream; every aggregator instance consumes it; only the
//! primary writes, through the fenced writer (`tandem-sink`), so that at a
//! takeover the new primary resumes exactly after the last committed record
//! and a deposed primary can never write again.
//!
//! - `tandem demo-stats`: the source. Record `n` is `stat-n`; the stream
//!   grows at `--rate` records per second up to `--count`, and can be read
//!   from any position (`GET /records?from=N&max=M`).
//! - `tandem demo-aggregator`: the consumer and (when primary) writer.

pub mod aggregator;
pub mod source;
