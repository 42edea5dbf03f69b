//! The key range hint: where a label's keys may lie, so that a large batch of new keys
//! can learn that none of them exists with one cheap read.
//!
//! A batch of sets must create the keys that do not exist and replace the ones that
//! do. Looking each of its keys up in the key index costs FalkorDB about a tenth of
//! a 10,000-row batch's server time in a label of 10,000 to 160,000 nodes, more as
//! the label grows. Batches of new entries usually hold keys that fall between or
//! beyond the stored ones
//! (sequence numbers, timestamps, a new prefix): one read of the range from the
//! batch's least to its greatest key then finds no node, and the batch only creates.
//! That read is what makes it exact, and it runs under the commit's `WATCH`, so a
//! write in between makes `EXEC` fail and the batch retries.
//!
//! FalkorDB reads every node of a key range before it answers, even under `LIMIT 1`
//! (about 150 ms for 100,000 keys), so the range is read only when this hint says it
//! holds no key. The hint lives beside the graph, in two Redis keys per label:
//!
//! - *runs*, a set of `"<least> <greatest>"` key index values, one per large batch
//!   that found its key range empty (at most [`RUNS_MAX`]): the ranges between which
//!   later batches may find gaps;
//! - *span*, a sorted set holding the least and greatest key of every other commit
//!   (a batch that overlapped stored keys would only add a run that overlaps them).
//!
//! Every key ever set lies within the span or a run, until a clear empties both. A
//! commit records its keys, in its own `MULTI`/`EXEC`, only when they lie outside
//! what its store already knows is recorded ([`KnownKeys`]), so most single sets add
//! no command. Deletes leave the hint as it is: it may cover too much, never too
//! little. Only time depends on it: a key it misses (written by another client, or
//! by a store that had not seen another client's clear) lies in the range read, the
//! batch then looks its keys up, and, unless the hint read again now covers it (a
//! commit recorded it meanwhile), the span is widened to the label's least and
//! greatest key ([`Inner::rebuild_span`]).

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use crate::backend::{Encoded, Inner, cell_int, cell_str};
use crate::cypher::{Cypher, KEY_INDEX_PROP, key_hex};
use storage_core::Result;

/// The most runs a label keeps; past it, commits widen the span instead.
pub(crate) const RUNS_MAX: usize = 1024;

/// What a store knows is recorded in its label's hint: a part of what is stored,
/// since the stored hint only grows between clears (unless another client cleared the
/// label since, which only makes this store record less often than it should).
#[derive(Debug, Clone, Default)]
pub(crate) enum KnownKeys {
    /// Not read (the read failed): every commit that sets keys records them.
    #[default]
    Unknown,
    /// The span's ends, when it has any, and the runs.
    Known {
        span: Option<(String, String)>,
        runs: Vec<(String, String)>,
    },
}

impl KnownKeys {
    fn empty() -> Self {
        Self::Known {
            span: None,
            runs: Vec::new(),
        }
    }

    /// Whether every key from `least` to `greatest` is known to be recorded.
    fn covers(&self, least: &str, greatest: &str) -> bool {
        self.any_range(false, |low, high| low <= least && greatest <= high)
    }

    /// Whether a recorded key may lie from `least` to `greatest`.
    fn overlaps(&self, least: &str, greatest: &str) -> bool {
        self.any_range(true, |low, high| low <= greatest && least <= high)
    }

    /// Whether `test` holds for the span or a run; `unknown` when nothing was read.
    fn any_range(&self, unknown: bool, test: impl Fn(&str, &str) -> bool) -> bool {
        match self {
            Self::Unknown => unknown,
            Self::Known { span, runs } => {
                span.iter().chain(runs).any(|(low, high)| test(low, high))
            }
        }
    }

    fn runs(&self) -> usize {
        match self {
            Self::Unknown => RUNS_MAX,
            Self::Known { runs, .. } => runs.len(),
        }
    }

    /// This knowledge after `record` applied.
    fn with(self, record: Recorded) -> Self {
        let known = if record.clear { Self::empty() } else { self };
        match (known, record.ends) {
            (Self::Known { span, mut runs }, Some(ends)) => {
                let span = if record.run {
                    runs.push(ends);
                    span
                } else {
                    Some(match span {
                        None => ends,
                        Some((low, high)) => (low.min(ends.0), high.max(ends.1)),
                    })
                };
                Self::Known { span, runs }
            }
            (known, _) => known,
        }
    }
}

/// What a commit recorded in the hint (see [`Inner::record_keys`]).
pub(crate) struct Recorded {
    /// It emptied the hint first (a clear).
    clear: bool,
    /// The least and greatest key index values it recorded.
    ends: Option<(String, String)>,
    /// It recorded them as a run rather than in the span.
    run: bool,
}

impl Inner {
    fn known(&self) -> std::sync::MutexGuard<'_, KnownKeys> {
        self.known_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the stored hint and remembers it; `Unknown` when it cannot be read.
    pub(crate) async fn load_known_keys(&self, conn: &mut MultiplexedConnection) -> KnownKeys {
        let read: redis::RedisResult<(Vec<String>, Vec<String>)> = redis::pipe()
            .cmd("ZRANGE")
            .arg(&self.key_span_key)
            .arg(0)
            .arg(-1)
            .cmd("SMEMBERS")
            .arg(&self.key_runs_key)
            .query_async(conn)
            .await;
        let known = match read {
            Ok((ends, runs)) => {
                let runs: Option<Vec<(String, String)>> = runs
                    .iter()
                    .map(|run| {
                        let (low, high) = run.split_once(' ')?;
                        Some((low.to_owned(), high.to_owned()))
                    })
                    .collect();
                match runs {
                    Some(runs) => KnownKeys::Known {
                        span: ends.first().cloned().zip(ends.last().cloned()),
                        runs,
                    },
                    None => KnownKeys::Unknown,
                }
            }
            Err(_) => KnownKeys::Unknown,
        };
        *self.known() = known.clone();
        known
    }

    /// Whether no node of the label has a key index value from `least` to
    /// `greatest`, read on `conn` under the commit's `WATCH`. The range is read only
    /// when the stored hint says it holds no key; otherwise the answer is `false` and
    /// the batch looks its keys up, which is always exact.
    pub(crate) async fn keys_are_new(
        &self,
        conn: &mut MultiplexedConnection,
        least: &str,
        greatest: &str,
    ) -> Result<bool> {
        if self.load_known_keys(conn).await.overlaps(least, greatest) {
            return Ok(false);
        }
        let mut q = Cypher::new();
        let low = q.param(least)?;
        let high = q.param(greatest)?;
        q.push(&format!(
            "MATCH (n:{}) WHERE n.{KEY_INDEX_PROP} >= {low} AND n.{KEY_INDEX_PROP} <= {high} \
             RETURN count(n)",
            self.label
        ));
        let rows = self.read(conn, &q, "commit").await?;
        // A graph that does not exist yet reads as no rows; a count that does not parse
        // counts as nodes (the batch then looks its keys up, which is always exact).
        let new = match rows.first() {
            None => true,
            Some(row) => row.first().and_then(cell_int) == Some(0),
        };
        // The hint missed a node, unless another client recorded it since the read.
        if !new && !self.load_known_keys(conn).await.overlaps(least, greatest) {
            self.rebuild_span(conn).await?;
        }
        Ok(new)
    }

    /// Widens the span to the label's least and greatest key, after a read found a
    /// node the hint missed: one read of every key, so that later batches read only
    /// ranges that hold no key.
    async fn rebuild_span(&self, conn: &mut MultiplexedConnection) -> Result<()> {
        let mut q = Cypher::new();
        q.push(&format!(
            "MATCH (n:{}) RETURN min(n.{KEY_INDEX_PROP}), max(n.{KEY_INDEX_PROP})",
            self.label
        ));
        let rows = self.read(conn, &q, "commit").await?;
        let ends = rows.first().and_then(|row| {
            let least = row.first().and_then(cell_str)?;
            let greatest = row.get(1).and_then(cell_str)?;
            Some((least, greatest))
        });
        let Some(ends) = ends else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        self.widen_span(&mut pipe, &ends);
        // Only a hint: when it cannot be recorded, batches look their keys up.
        if pipe.query_async::<()>(conn).await.is_ok() {
            let mut known = self.known();
            let record = Recorded {
                clear: false,
                ends: Some(ends),
                run: false,
            };
            *known = std::mem::take(&mut *known).with(record);
        }
        Ok(())
    }

    fn widen_span(&self, pipe: &mut redis::Pipeline, (least, greatest): &(String, String)) {
        pipe.cmd("ZADD").arg(&self.key_span_key).arg(0).arg(least);
        if greatest != least {
            pipe.arg(0).arg(greatest);
        }
        pipe.ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(&self.key_span_key)
            .arg(1)
            .arg(-2)
            .ignore();
    }

    /// Adds to a commit's `MULTI` what keeps the hint covering every key: a clear
    /// empties it; keys set outside what this store knows is recorded join it, as a
    /// run for a batch that found its key range empty (`absent`, see
    /// [`Inner::keys_are_new`]), in the span otherwise. What it returns goes to
    /// [`Inner::recorded`] once the commit applied.
    pub(crate) fn record_keys(
        &self,
        pipe: &mut redis::Pipeline,
        clear: bool,
        absent: bool,
        sets: &BTreeMap<&str, &Encoded>,
    ) -> Option<Recorded> {
        let ends = sets
            .keys()
            .next()
            .zip(sets.keys().next_back())
            .map(|(least, greatest)| (key_hex(least), key_hex(greatest)));
        if clear {
            pipe.cmd("DEL")
                .arg(&self.key_span_key)
                .arg(&self.key_runs_key)
                .ignore();
        }
        let known = self.known();
        if !clear
            && ends
                .as_ref()
                .is_none_or(|(least, greatest)| known.covers(least, greatest))
        {
            return None;
        }
        let run = absent && known.runs() < RUNS_MAX;
        drop(known);
        match &ends {
            Some((least, greatest)) if run => {
                pipe.cmd("SADD")
                    .arg(&self.key_runs_key)
                    .arg(format!("{least} {greatest}"))
                    .ignore();
            }
            Some(ends) => self.widen_span(pipe, ends),
            None => {}
        }
        Some(Recorded { clear, ends, run })
    }

    /// Remembers what a commit that applied recorded.
    pub(crate) fn recorded(&self, record: Recorded) {
        let mut known = self.known();
        *known = std::mem::take(&mut *known).with(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(low: &str, high: &str) -> (String, String) {
        (low.to_owned(), high.to_owned())
    }

    fn record(clear: bool, range: Option<(&str, &str)>, run: bool) -> Recorded {
        Recorded {
            clear,
            ends: range.map(|(low, high)| ends(low, high)),
            run,
        }
    }

    #[test]
    fn ranges_cover_and_overlap_with_their_ends_included() {
        let known = KnownKeys::Known {
            span: Some(ends("10", "20")),
            runs: vec![ends("40", "50")],
        };
        assert!(known.covers("10", "20"));
        assert!(known.covers("41", "50"));
        assert!(!known.covers("19", "21"));
        assert!(!known.covers("20", "40"));
        assert!(known.overlaps("20", "30"));
        assert!(known.overlaps("30", "40"));
        assert!(!known.overlaps("21", "39"));
        assert!(!known.overlaps("51", "60"));
        assert!(!known.overlaps("00", "0f"));
        assert!(!KnownKeys::empty().overlaps("00", "ff"));
        assert!(!KnownKeys::empty().covers("10", "10"));
        assert!(KnownKeys::Unknown.overlaps("00", "01"));
        assert!(!KnownKeys::Unknown.covers("10", "10"));
    }

    #[test]
    fn what_a_commit_recorded_widens_the_span_adds_a_run_or_starts_over() {
        let known = KnownKeys::empty()
            .with(record(false, Some(("30", "31")), false))
            .with(record(false, Some(("10", "12")), false))
            .with(record(false, Some(("60", "70")), true));
        let KnownKeys::Known { span, runs } = &known else {
            panic!("{known:?}");
        };
        assert_eq!(span.as_ref(), Some(&ends("10", "31")));
        assert_eq!(runs, &[ends("60", "70")]);
        assert!(known.covers("11", "31") && !known.covers("31", "60"));
        let cleared = known.with(record(true, Some(("80", "81")), true));
        let KnownKeys::Known { span, runs } = &cleared else {
            panic!("{cleared:?}");
        };
        assert_eq!((span, runs.as_slice()), (&None, &[ends("80", "81")][..]));
        // What was never read stays unknown, until a clear says what is stored.
        let unknown = KnownKeys::Unknown.with(record(false, Some(("10", "20")), false));
        assert!(matches!(unknown, KnownKeys::Unknown));
        let known = KnownKeys::Unknown.with(record(true, None, false));
        assert!(!known.overlaps("00", "ff"));
    }
}
