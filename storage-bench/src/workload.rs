//! The shared workload: documents, keys, and the operations' arguments, all drawn
//! from one deterministic generator so every backend sees exactly the same data.

use serde::{Deserialize, Serialize};

/// The value every backend stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// The document's number.
    pub id: u64,
    /// One of [`AUTHORS`] authors, `author-00` to `author-99`.
    pub author: String,
    /// About 40 characters.
    pub title: String,
    /// Milliseconds since the epoch, uniform over the workload's time span.
    pub created_at: i64,
    /// A score in `[0, 100]`.
    pub score: f64,
    /// Zero to four of [`TAGS`] tags.
    pub tags: Vec<String>,
    /// About 200 characters.
    pub body: String,
}

/// Number of distinct authors.
pub const AUTHORS: u64 = 100;
/// Number of distinct tags.
pub const TAGS: u64 = 20;
/// Queries per query operation.
pub const QUERIES: usize = 20;
/// Results asked for by the time-window query.
pub const WINDOW_LIMIT: u64 = 100;
/// The start of the time span.
const T0: i64 = 1_700_000_000_000;

const WORDS: [&str; 32] = [
    "storage", "adapter", "tier", "query", "index", "journal", "graph", "node", "commit",
    "snapshot", "replica", "batch", "stream", "codec", "header", "page", "cursor", "lock", "fsync",
    "table", "range", "order", "window", "author", "score", "tag", "value", "key", "field", "path",
    "filter", "limit",
];

/// A small deterministic generator (SplitMix64): the workload needs reproducible
/// numbers, not cryptographic ones, and no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A float in `[0, 1]`.
    pub fn unit(&mut self) -> f64 {
        let bits = u32::try_from(self.next_u64() >> 32).unwrap_or(u32::MAX);
        f64::from(bits) / f64::from(u32::MAX)
    }

    fn sentence(&mut self, min_len: usize) -> String {
        let mut out = String::new();
        while out.len() < min_len {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(WORDS[usize::try_from(self.below(32)).unwrap_or(0)]);
        }
        out
    }
}

/// The key of document `i`.
pub fn key(i: u64) -> String {
    format!("doc:{i:08}")
}

/// The name of author `a`.
pub fn author(a: u64) -> String {
    format!("author-{a:02}")
}

/// Everything one run needs: the documents and the arguments of each operation.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `(key, doc)` for every document, in key order.
    pub docs: Vec<(String, Doc)>,
    /// How many documents the one-by-one insert writes (the first ones).
    pub single_inserts: usize,
    /// Document numbers to get, in order.
    pub gets: Vec<u64>,
    /// Authors to look up.
    pub authors: Vec<String>,
    /// `[from, to)` windows of `created_at`, each about 1 % of the span.
    pub windows: Vec<(i64, i64)>,
}

impl Workload {
    /// The workload for `n` documents, `single_inserts` one-by-one inserts and
    /// `gets` random gets, from a fixed seed.
    pub fn new(n: u64, single_inserts: usize, gets: usize) -> Self {
        let mut rng = Rng::new(0x5EED_0008);
        let span = i64::try_from(n.max(1))
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000);
        let span_u = u64::try_from(span).unwrap_or(1);
        let docs = (0..n)
            .map(|i| {
                let created_at = T0 + i64::try_from(rng.below(span_u)).unwrap_or(0);
                let tag_count = rng.below(5);
                let mut tags: Vec<String> = (0..tag_count)
                    .map(|_| format!("tag-{:02}", rng.below(TAGS)))
                    .collect();
                tags.sort();
                tags.dedup();
                let doc = Doc {
                    id: i,
                    author: author(rng.below(AUTHORS)),
                    title: rng.sentence(40),
                    created_at,
                    score: (rng.unit() * 10_000.0).round() / 100.0,
                    tags,
                    body: rng.sentence(200),
                };
                (key(i), doc)
            })
            .collect();
        let gets = (0..gets).map(|_| rng.below(n)).collect();
        let authors = (0..QUERIES).map(|_| author(rng.below(AUTHORS))).collect();
        let width = (span / 100).max(1);
        let windows = (0..QUERIES)
            .map(|_| {
                let room = u64::try_from(span - width).unwrap_or(0);
                let from = T0 + i64::try_from(rng.below(room.max(1))).unwrap_or(0);
                (from, from + width)
            })
            .collect();
        Self {
            docs,
            single_inserts: single_inserts.min(usize::try_from(n).unwrap_or(usize::MAX)),
            gets,
            authors,
            windows,
        }
    }

    /// The documents written one by one.
    pub fn single(&self) -> &[(String, Doc)] {
        &self.docs[..self.single_inserts]
    }

    /// Size of the documents as compact JSON, in bytes (for the report).
    pub fn average_json_len(&self) -> usize {
        let total: usize = self
            .docs
            .iter()
            .map(|(_, d)| serde_json::to_vec(d).map_or(0, |v| v.len()))
            .sum();
        total / self.docs.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_deterministic_and_shaped_as_the_issue_says() {
        let a = Workload::new(1_000, 100, 500);
        let b = Workload::new(1_000, 100, 500);
        assert_eq!(a.docs, b.docs);
        assert_eq!(a.gets, b.gets);
        assert_eq!(a.docs[7].0, "doc:00000007");
        for (_, d) in &a.docs {
            assert!(d.tags.len() <= 4);
            assert!((40..60).contains(&d.title.len()), "{}", d.title);
            assert!((200..220).contains(&d.body.len()));
            assert!((0.0..=100.0).contains(&d.score));
        }
        let authors: std::collections::BTreeSet<_> =
            a.docs.iter().map(|(_, d)| &d.author).collect();
        assert!(authors.len() > 90);
        let (from, to) = a.windows[0];
        let inside = a
            .docs
            .iter()
            .filter(|(_, d)| (from..to).contains(&d.created_at))
            .count();
        assert!(
            (1..=40).contains(&inside),
            "{inside} documents in a 1 % window"
        );
    }
}
