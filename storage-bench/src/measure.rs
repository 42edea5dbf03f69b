//! Operations, samples and medians.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The operations of the shared workload, in the order a run performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// The first `single_inserts` documents, one `set` at a time (time per insert).
    InsertOne,
    /// Every document in one atomic batch (total time).
    InsertBatch,
    /// Random gets of existing keys (time per get).
    Get,
    /// `author == X` without an index (time per query).
    AuthorScan,
    /// A 1 % `created_at` window, ordered, limit 100, without an index (time per query).
    WindowScan,
    /// Creating btree indexes on `author` and `created_at` (total time).
    CreateIndexes,
    /// `author == X` through the index (time per query).
    AuthorIndexed,
    /// The window query through the index (time per query).
    WindowIndexed,
    /// Every entry in key order (total time).
    Iterate,
}

impl Op {
    /// Every operation, in run order.
    pub const ALL: [Op; 9] = [
        Op::InsertOne,
        Op::InsertBatch,
        Op::Get,
        Op::AuthorScan,
        Op::WindowScan,
        Op::CreateIndexes,
        Op::AuthorIndexed,
        Op::WindowIndexed,
        Op::Iterate,
    ];

    /// A short label for tables and the chart.
    pub fn label(self) -> &'static str {
        match self {
            Op::InsertOne => "insert one by one (per insert)",
            Op::InsertBatch => "insert in one batch (all)",
            Op::Get => "random get (per get)",
            Op::AuthorScan => "author == X, no index (per query)",
            Op::WindowScan => "1 % window, limit 100, no index (per query)",
            Op::CreateIndexes => "create 2 indexes (both)",
            Op::AuthorIndexed => "author == X, indexed (per query)",
            Op::WindowIndexed => "1 % window, limit 100, indexed (per query)",
            Op::Iterate => "iterate all entries (all)",
        }
    }

    /// A label short enough for the chart.
    pub fn short(self) -> &'static str {
        match self {
            Op::InsertOne => "insert one",
            Op::InsertBatch => "insert batch",
            Op::Get => "get",
            Op::AuthorScan => "author, scan",
            Op::WindowScan => "window, scan",
            Op::CreateIndexes => "create indexes",
            Op::AuthorIndexed => "author, index",
            Op::WindowIndexed => "window, index",
            Op::Iterate => "iterate",
        }
    }
}

/// One run of one subject: a time per operation (per unit, as [`Op`] says) and the
/// number of results it saw, so adapter and raw runs can be checked against each other.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Time per operation.
    pub times: BTreeMap<Op, Duration>,
    /// Results seen per operation (entries found, query results, entries iterated).
    pub results: BTreeMap<Op, u64>,
}

impl Sample {
    /// Records `elapsed` for `units` repetitions of `op`, which saw `results` results.
    pub fn record(&mut self, op: Op, elapsed: Duration, units: usize, results: usize) {
        let units = u32::try_from(units.max(1)).unwrap_or(u32::MAX);
        self.times.insert(op, elapsed / units);
        self.results
            .insert(op, u64::try_from(results).unwrap_or(u64::MAX));
    }
}

/// A stopwatch started now.
pub fn start() -> Instant {
    Instant::now()
}

/// The median of the runs' times per operation (the lower middle for an even count),
/// and the first run's result counts.
pub fn median(samples: &[Sample]) -> Sample {
    let mut out = Sample::default();
    for op in Op::ALL {
        let mut times: Vec<Duration> = samples
            .iter()
            .filter_map(|s| s.times.get(&op).copied())
            .collect();
        if times.is_empty() {
            continue;
        }
        times.sort();
        out.times.insert(op, times[(times.len() - 1) / 2]);
        if let Some(r) = samples.iter().find_map(|s| s.results.get(&op).copied()) {
            out.results.insert(op, r);
        }
    }
    out
}

/// Formats a duration with a unit that keeps three or so significant digits.
pub fn human(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `a / b` as a ratio of durations (`None` when `b` is zero).
pub fn ratio(a: Duration, b: Duration) -> Option<f64> {
    let b = b.as_secs_f64();
    (b > 0.0).then(|| a.as_secs_f64() / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_run_per_operation() {
        let runs: Vec<Sample> = [3, 1, 2]
            .iter()
            .map(|&ms| {
                let mut s = Sample::default();
                s.record(Op::Get, Duration::from_millis(ms * 10), 10, 10);
                s
            })
            .collect();
        let m = median(&runs);
        assert_eq!(m.times[&Op::Get], Duration::from_millis(2));
        assert_eq!(m.results[&Op::Get], 10);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_nanos(512)), "512 ns");
        assert_eq!(human(Duration::from_micros(1500)), "1.5 ms");
        assert_eq!(
            ratio(Duration::from_secs(3), Duration::from_secs(2)),
            Some(1.5)
        );
        assert_eq!(ratio(Duration::from_secs(3), Duration::ZERO), None);
    }
}
