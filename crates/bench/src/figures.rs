//! The figures every bench prints: percentiles of its samples, in text or
//! as one JSON object.

use serde_json::json;

/// Percentile `p` (0–100) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (p50, p99, max, mean) of `samples`, in any order.
pub fn stats(samples: &[f64]) -> (f64, f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    (
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
        mean,
    )
}

/// Prints the figures of `samples` (ms): one line, or one JSON object with
/// `extra`'s fields added.
pub(crate) fn report(what: &str, samples: &[f64], as_json: bool, extra: serde_json::Value) {
    let (p50, p99, max, mean) = stats(samples);
    if as_json {
        let mut doc = json!({"bench": what, "trials": samples.len(), "p50_ms": p50, "p99_ms": p99,
                             "max_ms": max, "mean_ms": mean, "samples_ms": samples});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        println!("{doc}");
    } else {
        println!(
            "{what}: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, mean {mean:.2} ms ({} trials)",
            samples.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn stats_sort_their_samples() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 3.0, 3.0, 2.0));
    }
}
