//! The aggregate pipeline.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number};

use crate::error::{ErrorCode, Result, StorageError};
use crate::query::eval::{CompiledFilter, project};
use crate::query::path::FieldPath;
use crate::query::{Filter, OrderBy, compare_total};
use crate::types::{Direction, Document};

/// An accumulator of a group stage.
///
/// Serialized as `"count"`, `{"sum": "path"}`, `{"avg": "path"}`, `{"min": "path"}`,
/// `{"max": "path"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulator {
    /// Number of documents in the group.
    Count,
    /// Sum of the numeric values at the path.
    Sum(String),
    /// Mean of the numeric values at the path (`null` when there are none).
    Avg(String),
    /// Smallest present, non-null value at the path in the total order.
    Min(String),
    /// Largest present, non-null value at the path in the total order.
    Max(String),
}

/// One stage of an aggregate pipeline.
///
/// Serialized as `{"match": filter}`, `{"group": {"by": "path", "accumulators": {"name":
/// accumulator, …}}}`, `{"sort": [order_by, …]}`, `{"skip": n}`, `{"limit": n}`,
/// `{"project": ["path", …]}`.
///
/// # Example
/// ```
/// use storage_core::query::{aggregate, field};
/// use storage_core::AggregateStage;
/// use serde_json::json;
///
/// let docs = [
///     json!({"author": "ann", "score": 3}),
///     json!({"author": "bob", "score": 5}),
///     json!({"author": "ann", "score": 4}),
/// ];
/// let pipeline = [
///     AggregateStage::matching(field("score").gte(4)),
///     AggregateStage::group_by("author").count("n").sum("total", "score"),
/// ];
/// let out = aggregate(&pipeline, &docs)?;
/// assert_eq!(out, [
///     json!({"_id": "ann", "n": 1, "total": 4}),
///     json!({"_id": "bob", "n": 1, "total": 5}),
/// ]);
/// # Ok::<(), storage_core::StorageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregateStage {
    /// Keep documents matching the filter.
    Match(Filter),
    /// Group by the value at a path (all documents in one group with `None`), output
    /// `{"_id": key, name: accumulated, …}` ordered by `_id`.
    Group {
        /// Grouping path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// Output fields.
        #[serde(default, with = "crate::query::serde_impl::accumulators")]
        accumulators: Vec<(String, Accumulator)>,
    },
    /// Sort (ties keep their previous order).
    Sort(Vec<OrderBy>),
    /// Skip documents.
    Skip(u64),
    /// Keep at most this many documents.
    Limit(u64),
    /// Keep only these paths.
    Project(Vec<String>),
}

/// A stage with its paths parsed and its filter compiled.
enum Compiled {
    Match(CompiledFilter),
    Group {
        by: Option<FieldPath>,
        accumulators: Vec<(String, CompiledAcc)>,
    },
    Sort(Vec<(FieldPath, Direction)>),
    Skip(usize),
    Limit(usize),
    Project(Vec<FieldPath>),
}

enum CompiledAcc {
    Count,
    Sum(FieldPath),
    Avg(FieldPath),
    Min(FieldPath),
    Max(FieldPath),
}

fn invalid(message: impl Into<Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidQuery, message)
}

fn compile_stage(stage: &AggregateStage) -> Result<Compiled> {
    Ok(match stage {
        AggregateStage::Match(filter) => Compiled::Match(CompiledFilter::compile(filter)?),
        AggregateStage::Group { by, accumulators } => {
            let by = by.as_deref().map(FieldPath::parse).transpose()?;
            let mut seen = HashSet::new();
            let mut compiled = Vec::with_capacity(accumulators.len());
            for (name, acc) in accumulators {
                if name.is_empty() {
                    return Err(invalid("an accumulator name is empty"));
                }
                if name == "_id" {
                    return Err(invalid("an accumulator may not be named _id"));
                }
                if !seen.insert(name.as_str()) {
                    return Err(invalid("duplicate accumulator name")
                        .with_context("name", name.escape_debug()));
                }
                let acc = match acc {
                    Accumulator::Count => CompiledAcc::Count,
                    Accumulator::Sum(p) => CompiledAcc::Sum(FieldPath::parse(p)?),
                    Accumulator::Avg(p) => CompiledAcc::Avg(FieldPath::parse(p)?),
                    Accumulator::Min(p) => CompiledAcc::Min(FieldPath::parse(p)?),
                    Accumulator::Max(p) => CompiledAcc::Max(FieldPath::parse(p)?),
                };
                compiled.push((name.clone(), acc));
            }
            Compiled::Group {
                by,
                accumulators: compiled,
            }
        }
        AggregateStage::Sort(keys) => Compiled::Sort(
            keys.iter()
                .map(|o| Ok((FieldPath::parse(&o.field)?, o.direction)))
                .collect::<Result<_>>()?,
        ),
        AggregateStage::Skip(n) => Compiled::Skip(usize::try_from(*n).unwrap_or(usize::MAX)),
        AggregateStage::Limit(n) => Compiled::Limit(usize::try_from(*n).unwrap_or(usize::MAX)),
        AggregateStage::Project(paths) => Compiled::Project(
            paths
                .iter()
                .map(|p| FieldPath::parse(p))
                .collect::<Result<_>>()?,
        ),
    })
}

/// Runs a pipeline over documents given in key order.
///
/// The whole pipeline is validated before any document is read.
///
/// # Errors
/// `InvalidQuery`.
pub fn aggregate<'a, I>(pipeline: &[AggregateStage], docs: I) -> Result<Vec<Document>>
where
    I: IntoIterator<Item = &'a Document>,
{
    let stages = pipeline
        .iter()
        .map(compile_stage)
        .collect::<Result<Vec<_>>>()?;
    // Documents stay borrowed until a stage builds new ones.
    let mut docs: Vec<Cow<'a, Document>> = docs.into_iter().map(Cow::Borrowed).collect();
    for stage in &stages {
        docs = match stage {
            Compiled::Match(filter) => {
                docs.retain(|d| filter.matches(d));
                docs
            }
            Compiled::Group { by, accumulators } => group(&docs, by.as_ref(), accumulators)
                .into_iter()
                .map(Cow::Owned)
                .collect(),
            Compiled::Sort(keys) => {
                docs.sort_by(|a, b| {
                    for (path, direction) in keys {
                        let ord = compare_total(path.get(a), path.get(b));
                        let ord = match direction {
                            Direction::Asc => ord,
                            Direction::Desc => ord.reverse(),
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                    }
                    Ordering::Equal
                });
                docs
            }
            Compiled::Skip(n) => docs.into_iter().skip(*n).collect(),
            Compiled::Limit(n) => {
                docs.truncate(*n);
                docs
            }
            Compiled::Project(paths) => docs
                .iter()
                .map(|d| Cow::Owned(Document::Object(project(paths, d).into_iter().collect())))
                .collect(),
        };
    }
    Ok(docs.into_iter().map(Cow::into_owned).collect())
}

fn group(
    docs: &[Cow<'_, Document>],
    by: Option<&FieldPath>,
    accumulators: &[(String, CompiledAcc)],
) -> Vec<Document> {
    let keyed: Vec<(Option<&Document>, &Document)> = docs
        .iter()
        .map(|d| {
            let doc: &Document = d;
            (by.and_then(|p| p.get(doc)), doc)
        })
        .collect();
    let mut order: Vec<usize> = (0..keyed.len()).collect();
    // Stable, so each group's first member is its first document in input order.
    order.sort_by(|a, b| compare_total(keyed[*a].0, keyed[*b].0));

    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let key = keyed[order[start]].0;
        let mut end = start + 1;
        while end < order.len() && compare_total(keyed[order[end]].0, key) == Ordering::Equal {
            end += 1;
        }
        // Accumulators see the group's documents in input order.
        let mut members: Vec<usize> = order[start..end].to_vec();
        members.sort_unstable();
        let members: Vec<&Document> = members.iter().map(|i| keyed[*i].1).collect();

        let mut row = Map::new();
        row.insert("_id".to_owned(), key.cloned().unwrap_or(Document::Null));
        for (name, acc) in accumulators {
            row.insert(name.clone(), accumulate(acc, &members));
        }
        out.push(Document::Object(row));
        start = end;
    }
    out
}

fn accumulate(acc: &CompiledAcc, members: &[&Document]) -> Document {
    match acc {
        CompiledAcc::Count => Document::from(u64::try_from(members.len()).unwrap_or(u64::MAX)),
        CompiledAcc::Sum(path) => {
            let numbers = numbers_at(path, members);
            match exact_int_sum(&numbers) {
                Some(sum) => match i64::try_from(sum) {
                    Ok(small) => Document::from(small),
                    Err(_) => float_value(float_sum(&numbers)),
                },
                None => float_value(float_sum(&numbers)),
            }
        }
        CompiledAcc::Avg(path) => {
            let numbers = numbers_at(path, members);
            if numbers.is_empty() {
                return Document::Null;
            }
            let count = approx_f64(i128::try_from(numbers.len()).unwrap_or(i128::MAX));
            let total = match exact_int_sum(&numbers) {
                // Summing exactly first keeps the mean of large integers accurate.
                Some(sum) => approx_f64(sum),
                None => float_sum(&numbers),
            };
            float_value(total / count)
        }
        CompiledAcc::Min(path) => extreme(path, members, Ordering::Less),
        CompiledAcc::Max(path) => extreme(path, members, Ordering::Greater),
    }
}

fn numbers_at<'d>(path: &FieldPath, members: &[&'d Document]) -> Vec<&'d Number> {
    members
        .iter()
        .filter_map(|d| match path.get(d) {
            Some(Document::Number(n)) => Some(n),
            _ => None,
        })
        .collect()
}

/// The exact sum when every number is an integer (`None` if any is a float).
fn exact_int_sum(numbers: &[&Number]) -> Option<i128> {
    let mut sum: i128 = 0;
    for n in numbers {
        let v = if let Some(i) = n.as_i64() {
            i128::from(i)
        } else {
            i128::from(n.as_u64()?)
        };
        // At most 2^64 per term: overflowing i128 would need 2^63 documents.
        sum = sum.saturating_add(v);
    }
    Some(sum)
}

fn float_sum(numbers: &[&Number]) -> f64 {
    numbers.iter().filter_map(|n| n.as_f64()).sum()
}

/// A float as a JSON value; a sum that overflowed to infinity becomes `null`
/// (JSON has no infinity).
fn float_value(f: f64) -> Document {
    serde_json::Number::from_f64(f).map_or(Document::Null, Document::Number)
}

/// Nearest float to an integer; sums and means of numbers are floats by nature,
/// so rounding here is the documented behaviour, not a loss of stored data.
#[allow(clippy::cast_precision_loss)]
fn approx_f64(v: i128) -> f64 {
    v as f64
}

/// The first present, non-null value that no other beats in `wanted` direction.
fn extreme(path: &FieldPath, members: &[&Document], wanted: Ordering) -> Document {
    let mut best: Option<&Document> = None;
    for d in members {
        let Some(v) = path.get(d) else { continue };
        if v.is_null() {
            continue;
        }
        if best.is_none_or(|b| compare_total(Some(v), Some(b)) == wanted) {
            best = Some(v);
        }
    }
    best.cloned().unwrap_or(Document::Null)
}

impl AggregateStage {
    /// A match stage: keeps the documents the filter matches.
    pub fn matching(filter: Filter) -> Self {
        Self::Match(filter)
    }

    /// A group stage grouping by the value at `path`; add accumulators with
    /// [`AggregateStage::count`], [`AggregateStage::sum`] and the like.
    pub fn group_by(path: impl Into<String>) -> Self {
        Self::Group {
            by: Some(path.into()),
            accumulators: Vec::new(),
        }
    }

    /// A group stage putting every document in one group (`_id` null).
    pub fn group_all() -> Self {
        Self::Group {
            by: None,
            accumulators: Vec::new(),
        }
    }

    /// Adds an accumulator to a group stage; other stages are returned unchanged.
    #[must_use]
    pub fn accumulate(mut self, name: impl Into<String>, accumulator: Accumulator) -> Self {
        if let Self::Group { accumulators, .. } = &mut self {
            accumulators.push((name.into(), accumulator));
        }
        self
    }

    /// Adds `name: count` to a group stage.
    #[must_use]
    pub fn count(self, name: impl Into<String>) -> Self {
        self.accumulate(name, Accumulator::Count)
    }

    /// Adds `name: sum of path` to a group stage.
    #[must_use]
    pub fn sum(self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.accumulate(name, Accumulator::Sum(path.into()))
    }

    /// Adds `name: mean of path` to a group stage.
    #[must_use]
    pub fn avg(self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.accumulate(name, Accumulator::Avg(path.into()))
    }

    /// Adds `name: smallest value at path` to a group stage.
    #[must_use]
    pub fn min(self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.accumulate(name, Accumulator::Min(path.into()))
    }

    /// Adds `name: largest value at path` to a group stage.
    #[must_use]
    pub fn max(self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.accumulate(name, Accumulator::Max(path.into()))
    }

    /// A sort stage ascending on `path`; chain [`AggregateStage::then_asc`] /
    /// [`AggregateStage::then_desc`] for more keys.
    pub fn sort_asc(path: impl Into<String>) -> Self {
        Self::Sort(vec![OrderBy {
            field: path.into(),
            direction: Direction::Asc,
        }])
    }

    /// A sort stage descending on `path`.
    pub fn sort_desc(path: impl Into<String>) -> Self {
        Self::Sort(vec![OrderBy {
            field: path.into(),
            direction: Direction::Desc,
        }])
    }

    /// Adds an ascending key to a sort stage; other stages are returned unchanged.
    #[must_use]
    pub fn then_asc(mut self, path: impl Into<String>) -> Self {
        if let Self::Sort(keys) = &mut self {
            keys.push(OrderBy {
                field: path.into(),
                direction: Direction::Asc,
            });
        }
        self
    }

    /// Adds a descending key to a sort stage; other stages are returned unchanged.
    #[must_use]
    pub fn then_desc(mut self, path: impl Into<String>) -> Self {
        if let Self::Sort(keys) = &mut self {
            keys.push(OrderBy {
                field: path.into(),
                direction: Direction::Desc,
            });
        }
        self
    }

    /// A skip stage.
    pub fn skip(n: u64) -> Self {
        Self::Skip(n)
    }

    /// A limit stage.
    pub fn limit(n: u64) -> Self {
        Self::Limit(n)
    }

    /// A project stage keeping the given paths.
    pub fn project<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        Self::Project(paths.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::query::field;

    fn run(pipeline: &[AggregateStage], docs: &[Value]) -> Result<Vec<Value>> {
        aggregate(pipeline, docs)
    }

    fn posts() -> Vec<Value> {
        vec![
            json!({"author": "bob", "score": 5, "tags": ["a"]}),
            json!({"author": "ann", "score": 3.5}),
            json!({"author": "bob", "score": 2}),
            json!({"author": "ann", "score": "n/a"}),
            json!({"score": 10}),
            json!({"author": null, "score": 1}),
            json!({"author": 1, "score": 1}),
            json!({"author": 1.0, "score": 2}),
        ]
    }

    #[test]
    fn group_ids_follow_the_total_order_and_merge_equal_values() -> Result<()> {
        let out = run(&[AggregateStage::group_by("author").count("n")], &posts())?;
        assert_eq!(
            out,
            [
                // Missing and null are one group; 1 and 1.0 are one group (first seen wins).
                json!({"_id": null, "n": 2}),
                json!({"_id": 1, "n": 2}),
                json!({"_id": "ann", "n": 2}),
                json!({"_id": "bob", "n": 2}),
            ]
        );
        Ok(())
    }

    #[test]
    fn count_is_an_integer() -> Result<()> {
        let out = run(&[AggregateStage::group_all().count("n")], &posts())?;
        assert_eq!(out, [json!({"_id": null, "n": 8})]);
        assert!(out[0]["n"].is_u64());
        Ok(())
    }

    #[test]
    fn grouping_nothing_outputs_nothing() -> Result<()> {
        assert_eq!(
            run(&[AggregateStage::group_all().count("n")], &[])?,
            Vec::<Value>::new()
        );
        Ok(())
    }

    #[test]
    fn sum_adds_numbers_and_ignores_the_rest() -> Result<()> {
        let out = run(
            &[AggregateStage::group_by("author").sum("total", "score")],
            &posts(),
        )?;
        let totals: Vec<&Value> = out.iter().map(|d| &d["total"]).collect();
        // null group: 10 + 1; 1 group: 1 + 2; ann: 3.5 (the string is ignored); bob: 5 + 2.
        assert_eq!(totals, [&json!(11), &json!(3), &json!(3.5), &json!(7)]);
        assert!(out[0]["total"].is_i64());
        assert!(out[2]["total"].is_f64());
        Ok(())
    }

    #[test]
    fn sum_of_nothing_is_integer_zero() -> Result<()> {
        let out = run(&[AggregateStage::group_all().sum("s", "missing")], &posts())?;
        assert_eq!(out, [json!({"_id": null, "s": 0})]);
        assert!(out[0]["s"].is_i64());
        Ok(())
    }

    #[test]
    fn sum_beyond_i64_becomes_a_float() -> Result<()> {
        let docs = [json!({"v": i64::MAX}), json!({"v": 1})];
        let out = run(&[AggregateStage::group_all().sum("s", "v")], &docs)?;
        assert!(out[0]["s"].is_f64());
        assert_eq!(out[0]["s"].as_f64(), Some(9.223_372_036_854_776e18));
        let docs = [json!({"v": u64::MAX}), json!({"v": -2})];
        let out = run(&[AggregateStage::group_all().sum("s", "v")], &docs)?;
        // u64::MAX - 2 does not fit i64, so the sum is the nearest float.
        assert_eq!(out[0]["s"].as_f64(), Some(1.844_674_407_370_955_2e19));
        assert!(out[0]["s"].is_f64());
        Ok(())
    }

    #[test]
    fn avg_is_a_float_mean_or_null() -> Result<()> {
        let out = run(
            &[AggregateStage::group_by("author").avg("mean", "score")],
            &posts(),
        )?;
        let means: Vec<&Value> = out.iter().map(|d| &d["mean"]).collect();
        assert_eq!(means, [&json!(5.5), &json!(1.5), &json!(3.5), &json!(3.5)]);
        assert!(out[0]["mean"].is_f64());
        let none = run(&[AggregateStage::group_all().avg("m", "nope")], &posts())?;
        assert_eq!(none, [json!({"_id": null, "m": null})]);
        Ok(())
    }

    #[test]
    fn min_and_max_use_the_total_order_and_skip_null() -> Result<()> {
        let docs = [
            json!({"v": "b"}),
            json!({"v": null}),
            json!({"v": 7}),
            json!({"v": true}),
            json!({}),
            json!({"v": [1]}),
        ];
        let out = run(
            &[AggregateStage::group_all().min("lo", "v").max("hi", "v")],
            &docs,
        )?;
        assert_eq!(out, [json!({"_id": null, "lo": 7, "hi": true})]);
        let none = run(
            &[AggregateStage::group_all().min("lo", "v").max("hi", "v")],
            &[json!({"v": null})],
        )?;
        assert_eq!(none, [json!({"_id": null, "lo": null, "hi": null})]);
        Ok(())
    }

    #[test]
    fn min_keeps_the_first_of_equal_values() -> Result<()> {
        let out = run(
            &[AggregateStage::group_all().min("lo", "v")],
            &[json!({"v": 1.0}), json!({"v": 1})],
        )?;
        assert!(out[0]["lo"].is_f64());
        Ok(())
    }

    #[test]
    fn accumulator_names_are_validated() {
        let bad = [
            AggregateStage::group_all().count(""),
            AggregateStage::group_all().count("_id"),
            AggregateStage::group_all().count("n").sum("n", "v"),
            AggregateStage::group_all().sum("s", "a..b"),
            AggregateStage::group_by("").count("n"),
        ];
        for stage in bad {
            let code = run(&[stage], &posts()).err().map(|e| e.code());
            assert_eq!(code, Some(ErrorCode::InvalidQuery));
        }
    }

    #[test]
    fn the_whole_pipeline_is_validated_before_running() {
        let pipeline = [
            AggregateStage::limit(0),
            AggregateStage::matching(field("s").regex("(")),
        ];
        let code = run(&pipeline, &posts()).err().map(|e| e.code());
        assert_eq!(code, Some(ErrorCode::InvalidQuery));
    }

    #[test]
    fn match_sort_skip_limit_project_compose() -> Result<()> {
        let pipeline = [
            AggregateStage::matching(field("score").gte(2)),
            AggregateStage::sort_desc("score"),
            AggregateStage::skip(1),
            AggregateStage::limit(2),
            AggregateStage::project(["author", "tags.0"]),
        ];
        let out = run(&pipeline, &posts())?;
        // score ≥ 2: bob 5, ann 3.5, bob 2, none 10, 1.0 2 → desc: 10, 5, 3.5, 2, 2.
        assert_eq!(
            out,
            [
                json!({"author": "bob", "tags.0": "a"}),
                json!({"author": "ann"})
            ]
        );
        Ok(())
    }

    #[test]
    fn sort_is_stable_and_uses_the_total_order() -> Result<()> {
        let docs = [
            json!({"k": 1, "i": 0}),
            json!({"k": "x", "i": 1}),
            json!({"i": 2}),
            json!({"k": 1.0, "i": 3}),
            json!({"k": null, "i": 4}),
        ];
        let out = run(
            &[
                AggregateStage::sort_asc("k"),
                AggregateStage::project(["i"]),
            ],
            &docs,
        )?;
        let order: Vec<&Value> = out.iter().map(|d| &d["i"]).collect();
        assert_eq!(
            order,
            [&json!(2), &json!(4), &json!(0), &json!(3), &json!(1)]
        );
        let out = run(
            &[
                AggregateStage::sort_desc("k").then_asc("i"),
                AggregateStage::project(["i"]),
            ],
            &docs,
        )?;
        let order: Vec<&Value> = out.iter().map(|d| &d["i"]).collect();
        assert_eq!(
            order,
            [&json!(1), &json!(0), &json!(3), &json!(2), &json!(4)]
        );
        Ok(())
    }

    #[test]
    fn group_then_sort_by_an_accumulator() -> Result<()> {
        let pipeline = [
            AggregateStage::matching(field("author").exists(true)),
            AggregateStage::group_by("author").sum("total", "score"),
            AggregateStage::sort_desc("total"),
            AggregateStage::limit(1),
        ];
        assert_eq!(
            run(&pipeline, &posts())?,
            [json!({"_id": "bob", "total": 7})]
        );
        Ok(())
    }
}
