//! Durations as written in the topology file (`500ms`, `2s`, `1m`) and as
//! stored in JSON (integer milliseconds).

use std::time::Duration;

/// The longest duration the topology accepts (one day): every timer has a limit.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// What a duration must look like, for error messages.
pub const DURATION_FORM: &str =
    "a positive whole number followed by ms, s or m (e.g. \"500ms\", \"2s\", \"1m\")";

/// Parses a topology duration: a positive whole number followed by `ms`, `s`
/// or `m`, at most [`MAX_DURATION`]. The error says what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration \"{s}\": expected {DURATION_FORM}");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    if number.is_empty() {
        return Err(bad());
    }
    let too_long = || {
        format!(
            "bad duration \"{s}\": at most {}",
            format_duration(MAX_DURATION)
        )
    };
    let n: u64 = number.parse().map_err(|_| too_long())?;
    if n == 0 {
        return Err(bad());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
    let d = Duration::from_millis(ms);
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// Formats a duration the way the topology file writes it (`1m`, `2s`,
/// `500ms`), for messages. Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match (ms / 60_000, ms % 60_000, ms / 1_000, ms % 1_000) {
        (0, _, 0, _) => format!("{ms}ms"),
        (minutes, 0, _, _) => format!("{minutes}m"),
        (_, _, seconds, 0) => format!("{seconds}s"),
        _ => format!("{ms}ms"),
    }
}

/// Serde helpers that store a [`Duration`] as integer milliseconds:
/// `#[serde(with = "duration_ms")]`.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `d` as whole milliseconds (saturating at `u64::MAX`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserializes whole milliseconds into a [`Duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
