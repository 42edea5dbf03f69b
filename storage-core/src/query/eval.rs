//! The reference evaluator.
//!
//! Everything that can be wrong with a query (a bad path, a bad regex, an operand
//! of the wrong type) is found by `compile`, so evaluation itself cannot fail.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use regex::{Regex, RegexBuilder};

use crate::error::{ErrorCode, Result, StorageError};
use crate::query::path::FieldPath;
use crate::query::text::{raw_words, word_eq, words};
use crate::query::value::{Num, compare_values, values_equal};
use crate::query::{Filter, Operator, Query, compare_total};
use crate::types::{Direction, Document};

/// Size limit of a compiled regular expression (and of its lazy DFA cache), so a
/// pattern like `a{100000}{100000}` is rejected at compile time instead of
/// exhausting memory or time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The deepest filter tree accepted; evaluation recurses once per level.
const MAX_FILTER_DEPTH: usize = 256;

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> StorageError {
    StorageError::new(ErrorCode::InvalidQuery, message)
}

/// A filter with its paths parsed and regular expressions compiled.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    root: Node,
    has_text: bool,
}

#[derive(Debug, Clone)]
enum Node {
    Cond { path: FieldPath, test: Test },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Nested { path: FieldPath, inner: Box<Node> },
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Document),
    Ne(Document),
    Cmp(Cmp, Document),
    In(InSet),
    Nin(InSet),
    Regex(Regex),
    Exists(bool),
    /// The distinct query words, lowercased.
    Text(Vec<String>),
    WithinBox {
        min: [Num; 2],
        max: [Num; 2],
    },
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn accepts(self, ord: Ordering) -> bool {
        match self {
            Self::Gt => ord == Ordering::Greater,
            Self::Gte => ord != Ordering::Less,
            Self::Lt => ord == Ordering::Less,
            Self::Lte => ord != Ordering::Greater,
        }
    }
}

/// The operand of `in`/`nin`, indexed so that long lists stay cheap: strings in a hash
/// set, numbers sorted by exact value for binary search, the rest in a list.
#[derive(Debug, Clone)]
struct InSet {
    strings: HashSet<String>,
    numbers: Vec<Num>,
    others: Vec<Document>,
    has_null: bool,
}

impl InSet {
    fn new(values: &[Document]) -> Self {
        let mut set = Self {
            strings: HashSet::new(),
            numbers: Vec::new(),
            others: Vec::new(),
            has_null: false,
        };
        for v in values {
            match v {
                Document::String(s) => {
                    set.strings.insert(s.clone());
                }
                Document::Number(n) => set.numbers.push(Num::of(n)),
                Document::Null => {
                    set.has_null = true;
                    set.others.push(Document::Null);
                }
                other => set.others.push(other.clone()),
            }
        }
        set.numbers.sort_unstable_by(|a, b| a.cmp_exact(*b));
        set
    }

    fn contains(&self, v: &Document) -> bool {
        match v {
            Document::String(s) => self.strings.contains(s),
            Document::Number(n) => {
                let n = Num::of(n);
                self.numbers.binary_search_by(|p| p.cmp_exact(n)).is_ok()
            }
            other => self.others.iter().any(|o| values_equal(other, o)),
        }
    }
}

fn compile_node(filter: &Filter, depth: usize, has_text: &mut bool) -> Result<Node> {
    if depth > MAX_FILTER_DEPTH {
        return Err(invalid("filter nested more than 256 levels deep"));
    }
    Ok(match filter {
        Filter::Condition { field, op, value } => {
            let path = FieldPath::parse(field)?;
            let test = compile_test(*op, value)
                .map_err(|e| e.with_context("field", field.escape_debug()))?;
            if matches!(test, Test::Text(_)) {
                *has_text = true;
            }
            Node::Cond { path, test }
        }
        Filter::And(items) => Node::And(
            items
                .iter()
                .map(|f| compile_node(f, depth + 1, has_text))
                .collect::<Result<_>>()?,
        ),
        Filter::Or(items) => Node::Or(
            items
                .iter()
                .map(|f| compile_node(f, depth + 1, has_text))
                .collect::<Result<_>>()?,
        ),
        Filter::Not(inner) => Node::Not(Box::new(compile_node(inner, depth + 1, has_text)?)),
        Filter::Nested { field, filter } => Node::Nested {
            path: FieldPath::parse(field)?,
            inner: Box::new(compile_node(filter, depth + 1, has_text)?),
        },
    })
}

fn compile_test(op: Operator, value: &Document) -> Result<Test> {
    Ok(match op {
        Operator::Eq => Test::Eq(value.clone()),
        Operator::Ne => Test::Ne(value.clone()),
        Operator::Gt => Test::Cmp(Cmp::Gt, value.clone()),
        Operator::Gte => Test::Cmp(Cmp::Gte, value.clone()),
        Operator::Lt => Test::Cmp(Cmp::Lt, value.clone()),
        Operator::Lte => Test::Cmp(Cmp::Lte, value.clone()),
        Operator::In | Operator::Nin => {
            let Document::Array(values) = value else {
                return Err(invalid("the operand of in and nin must be an array"));
            };
            let set = InSet::new(values);
            if op == Operator::In {
                Test::In(set)
            } else {
                Test::Nin(set)
            }
        }
        Operator::Regex => {
            let Document::String(pattern) = value else {
                return Err(invalid("the operand of regex must be a string"));
            };
            let regex = RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    // A syntax error's text spans several lines (pattern, caret, reason);
                    // the reason is on the last, and error messages are one line.
                    let detail = e.to_string();
                    let reason = detail.lines().last().unwrap_or("").trim().to_owned();
                    invalid(format!("invalid regex: {reason}")).with_source(e)
                })?;
            Test::Regex(regex)
        }
        Operator::Exists => {
            let Document::Bool(b) = value else {
                return Err(invalid("the operand of exists must be a boolean"));
            };
            Test::Exists(*b)
        }
        Operator::Text => {
            let Document::String(text) = value else {
                return Err(invalid("the operand of text must be a string"));
            };
            let mut distinct: Vec<String> = Vec::new();
            for w in words(text) {
                if !distinct.contains(&w) {
                    distinct.push(w);
                }
            }
            if distinct.is_empty() {
                return Err(invalid("the operand of text has no words"));
            }
            Test::Text(distinct)
        }
        Operator::WithinBox => compile_box(value)?,
    })
}

fn compile_box(value: &Document) -> Result<Test> {
    const SHAPE: &str =
        r#"the operand of within_box must be {"min": [x, y], "max": [x, y]} with numbers"#;
    let Document::Object(map) = value else {
        return Err(invalid(SHAPE));
    };
    if map.len() != 2 {
        return Err(invalid(SHAPE));
    }
    let corner = |name: &str| -> Result<[Num; 2]> {
        match map.get(name) {
            Some(Document::Array(xy)) => match xy.as_slice() {
                [Document::Number(x), Document::Number(y)] => Ok([Num::of(x), Num::of(y)]),
                _ => Err(invalid(SHAPE)),
            },
            _ => Err(invalid(SHAPE)),
        }
    };
    let min = corner("min")?;
    let max = corner("max")?;
    if min[0].cmp_exact(max[0]) == Ordering::Greater
        || min[1].cmp_exact(max[1]) == Ordering::Greater
    {
        return Err(invalid("within_box: min is greater than max on an axis"));
    }
    Ok(Test::WithinBox { min, max })
}

/// The point a value holds: `[x, y]` or `{"x": x, "y": y, …}` with numbers.
fn point_of(v: &Document) -> Option<[Num; 2]> {
    match v {
        Document::Array(xy) => match xy.as_slice() {
            [Document::Number(x), Document::Number(y)] => Some([Num::of(x), Num::of(y)]),
            _ => None,
        },
        Document::Object(map) => match (map.get("x"), map.get("y")) {
            (Some(Document::Number(x)), Some(Document::Number(y))) => {
                Some([Num::of(x), Num::of(y)])
            }
            _ => None,
        },
        _ => None,
    }
}

/// Visits the candidates of a clause: each value the path reaches, and the elements
/// of those that are arrays. Returns (some candidate passed, the path reached a value).
fn any_candidate(
    path: &FieldPath,
    doc: &Document,
    mut pred: impl FnMut(&Document) -> bool,
) -> (bool, bool) {
    let mut present = false;
    let hit = path.visit(doc, &mut |v| {
        present = true;
        pred(v) || matches!(v, Document::Array(items) if items.iter().any(&mut pred))
    });
    (hit, present)
}

/// Counts the occurrences of each query word among the words of every string the
/// clause sees; `Some(total)` when every word occurs.
fn text_score(path: &FieldPath, doc: &Document, query: &[String]) -> Option<f64> {
    let mut counts = vec![0.0_f64; query.len()];
    let mut count_in = |s: &str| {
        for raw in raw_words(s) {
            for (q, count) in query.iter().zip(counts.iter_mut()) {
                if word_eq(raw, q) {
                    *count += 1.0;
                }
            }
        }
    };
    path.visit(doc, &mut |v| {
        match v {
            Document::String(s) => count_in(s),
            Document::Array(items) => {
                for item in items {
                    if let Document::String(s) = item {
                        count_in(s);
                    }
                }
            }
            _ => {}
        }
        false
    });
    if counts.iter().all(|c| *c > 0.0) {
        Some(counts.iter().sum())
    } else {
        None
    }
}

/// Calls `f` on each sub-document a nested clause applies to; stops when `f` returns true.
fn visit_sub_documents(
    path: &FieldPath,
    doc: &Document,
    mut f: impl FnMut(&Document) -> bool,
) -> bool {
    path.visit(doc, &mut |v| match v {
        Document::Object(_) => f(v),
        Document::Array(items) => items
            .iter()
            .any(|item| matches!(item, Document::Object(_)) && f(item)),
        _ => false,
    })
}

impl Node {
    fn matches(&self, doc: &Document) -> bool {
        match self {
            Self::Cond { path, test } => test_matches(path, test, doc),
            Self::And(items) => items.iter().all(|n| n.matches(doc)),
            Self::Or(items) => items.iter().any(|n| n.matches(doc)),
            Self::Not(inner) => !inner.matches(doc),
            Self::Nested { path, inner } => {
                visit_sub_documents(path, doc, |sub| inner.matches(sub))
            }
        }
    }

    fn score(&self, doc: &Document) -> f64 {
        match self {
            Self::Cond {
                path,
                test: Test::Text(query),
            } => text_score(path, doc, query).unwrap_or(0.0),
            Self::Cond { .. } | Self::Not(_) => 0.0,
            Self::And(items) | Self::Or(items) => items.iter().map(|n| n.score(doc)).sum(),
            Self::Nested { path, inner } => {
                let mut total = 0.0;
                visit_sub_documents(path, doc, |sub| {
                    if inner.matches(sub) {
                        total += inner.score(sub);
                    }
                    false
                });
                total
            }
        }
    }
}

fn test_matches(path: &FieldPath, test: &Test, doc: &Document) -> bool {
    match test {
        Test::Eq(operand) => eq_matches(path, doc, operand),
        Test::Ne(operand) => !eq_matches(path, doc, operand),
        Test::In(set) => in_matches(path, doc, set),
        Test::Nin(set) => !in_matches(path, doc, set),
        Test::Cmp(cmp, operand) => {
            let (hit, present) = any_candidate(path, doc, |c| {
                compare_values(c, operand).is_some_and(|o| cmp.accepts(o))
            });
            // Missing equals null (as for `eq`), so `gte null` and `lte null` match it.
            hit || (!present && operand.is_null() && matches!(cmp, Cmp::Gte | Cmp::Lte))
        }
        Test::Regex(re) => {
            any_candidate(path, doc, |c| c.as_str().is_some_and(|s| re.is_match(s))).0
        }
        Test::Exists(wanted) => path.visit(doc, &mut |_| true) == *wanted,
        Test::Text(query) => text_score(path, doc, query).is_some(),
        Test::WithinBox { min, max } => {
            any_candidate(path, doc, |c| {
                point_of(c).is_some_and(|p| {
                    p.iter().zip(min).zip(max).all(|((v, lo), hi)| {
                        v.cmp_exact(*lo) != Ordering::Less && v.cmp_exact(*hi) != Ordering::Greater
                    })
                })
            })
            .0
        }
    }
}

fn eq_matches(path: &FieldPath, doc: &Document, operand: &Document) -> bool {
    let (hit, present) = any_candidate(path, doc, |c| values_equal(c, operand));
    hit || (!present && operand.is_null())
}

fn in_matches(path: &FieldPath, doc: &Document, set: &InSet) -> bool {
    let (hit, present) = any_candidate(path, doc, |c| set.contains(c));
    hit || (!present && set.has_null)
}

impl CompiledFilter {
    /// Compiles a filter.
    ///
    /// # Errors
    /// `InvalidQuery` for a bad path, a bad or oversized regex, or an operand of the wrong type.
    pub fn compile(filter: &Filter) -> Result<Self> {
        let mut has_text = false;
        let root = compile_node(filter, 0, &mut has_text)?;
        Ok(Self { root, has_text })
    }

    /// Whether the document matches.
    pub fn matches(&self, doc: &Document) -> bool {
        self.root.matches(doc)
    }

    /// The relevance score of the document's full-text clauses, if the filter has any.
    ///
    /// The score is the sum, over the `text` clauses that hold for the document, of the
    /// number of occurrences of their words; a `text` clause under `not` adds nothing.
    pub fn score(&self, doc: &Document) -> Option<f64> {
        self.has_text.then(|| self.root.score(doc))
    }

    /// Whether the filter has a full-text clause (and results therefore carry a score).
    pub fn has_text(&self) -> bool {
        self.has_text
    }
}

/// A query compiled for repeated evaluation.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    filter: Option<CompiledFilter>,
    order_by: Vec<(FieldPath, Direction)>,
    limit: Option<u64>,
    offset: u64,
    select: Option<Vec<FieldPath>>,
}

/// One entry that passed the filter, with what sorting needs.
struct Hit<'a> {
    key: &'a str,
    doc: &'a Document,
    /// Position in the input, the last tie-break, so equal keys still sort deterministically.
    seq: usize,
}

impl CompiledQuery {
    /// Compiles a query.
    ///
    /// # Errors
    /// `InvalidQuery`.
    pub fn compile(query: &Query) -> Result<Self> {
        let filter = query
            .filter
            .as_ref()
            .map(CompiledFilter::compile)
            .transpose()?;
        let order_by = query
            .order_by
            .iter()
            .map(|o| Ok((FieldPath::parse(&o.field)?, o.direction)))
            .collect::<Result<_>>()?;
        let select = query
            .select
            .as_ref()
            .map(|paths| {
                paths
                    .iter()
                    .map(|p| FieldPath::parse(p))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            filter,
            order_by,
            limit: query.limit,
            offset: query.offset.unwrap_or(0),
            select,
        })
    }

    /// Whether the document passes the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(doc))
    }

    /// The compiled filter, if the query has one.
    pub fn filter(&self) -> Option<&CompiledFilter> {
        self.filter.as_ref()
    }

    /// Filters, orders, pages and projects `entries`.
    pub fn run<'a, I>(&self, entries: I) -> Vec<Match>
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        let hits: Vec<Hit<'a>> = entries
            .into_iter()
            .enumerate()
            .filter(|(_, (_, doc))| self.matches(doc))
            .map(|(seq, (key, doc))| Hit { key, doc, seq })
            .collect();
        let width = self.order_by.len();
        // Sort keys resolved once per hit, flat, `width` per hit.
        let sort_keys: Vec<Option<&'a Document>> = hits
            .iter()
            .flat_map(|h| self.order_by.iter().map(|(p, _)| p.get(h.doc)))
            .collect();
        let compare = |a: &usize, b: &usize| -> Ordering {
            for (j, (_, direction)) in self.order_by.iter().enumerate() {
                let ord = compare_total(sort_keys[a * width + j], sort_keys[b * width + j]);
                let ord = match direction {
                    Direction::Asc => ord,
                    Direction::Desc => ord.reverse(),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            let (ha, hb) = (&hits[*a], &hits[*b]);
            ha.key
                .as_bytes()
                .cmp(hb.key.as_bytes())
                .then(ha.seq.cmp(&hb.seq))
        };

        let n = hits.len();
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX).min(n);
        let end = match self.limit {
            Some(limit) => start
                .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
                .min(n),
            None => n,
        };
        if start == end {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..n).collect();
        if end < n {
            // Only the first `end` in order are needed: partition, then sort that part.
            // The comparison is a strict total order, so this equals a full sort's prefix.
            order.select_nth_unstable_by(end - 1, compare);
            order.truncate(end);
        }
        order.sort_unstable_by(compare);

        order[start..end]
            .iter()
            .map(|&i| {
                let hit = &hits[i];
                Match {
                    key: hit.key.to_owned(),
                    score: self.filter.as_ref().and_then(|f| f.score(hit.doc)),
                    projection: self.select.as_ref().map(|paths| project(paths, hit.doc)),
                }
            })
            .collect()
    }

    /// Counts the entries passing the filter (no paging).
    pub fn count<'a, I>(&self, entries: I) -> u64
    where
        I: IntoIterator<Item = (&'a str, &'a Document)>,
    {
        let n = entries
            .into_iter()
            .filter(|(_, doc)| self.matches(doc))
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// The flat projection `{path as written: value}` of the paths present in `doc`.
pub(crate) fn project(paths: &[FieldPath], doc: &Document) -> BTreeMap<String, Document> {
    paths
        .iter()
        .filter_map(|p| p.get(doc).map(|v| (p.as_str().to_owned(), v.clone())))
        .collect()
}

/// One result of the evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The key.
    pub key: String,
    /// Relevance score (full-text queries).
    pub score: Option<f64>,
    /// With `select`: the selected paths present in the document.
    pub projection: Option<BTreeMap<String, Document>>,
}

/// Runs `query` over `entries` (in any order): the specification of every adapter's answer.
///
/// # Errors
/// `InvalidQuery`.
pub fn evaluate<'a, I>(query: &Query, entries: I) -> Result<Vec<Match>>
where
    I: IntoIterator<Item = (&'a str, &'a Document)>,
{
    Ok(CompiledQuery::compile(query)?.run(entries))
}

/// Counts the entries matching `query`'s filter.
///
/// # Errors
/// `InvalidQuery`.
pub fn count<'a, I>(query: &Query, entries: I) -> Result<u64>
where
    I: IntoIterator<Item = (&'a str, &'a Document)>,
{
    Ok(CompiledQuery::compile(query)?.count(entries))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::*;
    use crate::query::{and, field, not, or};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn matches(filter: &Filter, doc: &Value) -> Result<bool> {
        Ok(CompiledFilter::compile(filter)?.matches(doc))
    }

    /// Asserts that `filter` matches `yes` and does not match `no`.
    fn rule(filter: &Filter, yes: &Value, no: &Value) -> Result<()> {
        assert!(matches(filter, yes)?, "{filter:?} should match {yes}");
        assert!(!matches(filter, no)?, "{filter:?} should not match {no}");
        Ok(())
    }

    fn code_of<T>(r: Result<T>) -> Option<ErrorCode> {
        r.err().map(|e| e.code())
    }

    fn keys_of(query: &Query, docs: &[(&str, Value)]) -> Result<Vec<String>> {
        Ok(evaluate(query, docs.iter().map(|(k, v)| (*k, v)))?
            .into_iter()
            .map(|m| m.key)
            .collect())
    }

    #[test]
    fn dotted_paths_reach_into_objects() -> Result<()> {
        rule(
            &field("address.city").eq("Oslo"),
            &json!({"address": {"city": "Oslo"}}),
            &json!({"city": "Oslo"}),
        )
    }

    #[test]
    fn numeric_segments_index_arrays() -> Result<()> {
        rule(
            &field("tags.0").eq("a"),
            &json!({"tags": ["a", "b"]}),
            &json!({"tags": ["b", "a"]}),
        )
    }

    #[test]
    fn non_numeric_segments_fan_out_over_arrays() -> Result<()> {
        rule(
            &field("items.name").eq("b"),
            &json!({"items": [{"name": "a"}, {"name": "b"}]}),
            &json!({"items": [{"name": "a"}, {"title": "b"}]}),
        )?;
        rule(
            &field("items.name").is_in(["x", "b"]),
            &json!({"items": [{"name": "a"}, {"name": "b"}]}),
            &json!({"items": [{"name": "a"}]}),
        )?;
        // Only one level of arrays is expanded by a key segment.
        assert!(!matches(&field("a.b").eq(1), &json!({"a": [[{"b": 1}]]}))?);
        Ok(())
    }

    #[test]
    fn bad_paths_are_invalid_query_everywhere() {
        for bad in ["", "a..b", "a.", "a\0b"] {
            assert_eq!(
                code_of(CompiledFilter::compile(&field(bad).eq(1))),
                Some(ErrorCode::InvalidQuery)
            );
            assert_eq!(
                code_of(CompiledQuery::compile(&Query::new().order_asc(bad))),
                Some(ErrorCode::InvalidQuery)
            );
            assert_eq!(
                code_of(CompiledQuery::compile(&Query::new().select([bad]))),
                Some(ErrorCode::InvalidQuery)
            );
            assert_eq!(
                code_of(CompiledFilter::compile(
                    &field(bad).nested(field("a").eq(1))
                )),
                Some(ErrorCode::InvalidQuery)
            );
        }
        assert_eq!(
            code_of(CompiledFilter::compile(&field("a".repeat(1025)).eq(1))),
            Some(ErrorCode::InvalidQuery)
        );
    }

    #[test]
    fn integers_equal_floats_of_the_same_value() -> Result<()> {
        rule(&field("n").eq(1), &json!({"n": 1.0}), &json!({"n": 1.5}))?;
        rule(&field("n").eq(1.0), &json!({"n": 1}), &json!({"n": 2}))?;
        rule(&field("n").gte(1), &json!({"n": 1.0}), &json!({"n": 0.5}))?;
        assert!(!matches(&field("n").gt(1), &json!({"n": 1.0}))?);
        Ok(())
    }

    #[test]
    fn u64_max_compares_exactly_with_floats() -> Result<()> {
        // 2^64 as a float; a lossy comparison would call it equal to u64::MAX.
        let two_pow_64 = 18_446_744_073_709_551_616.0_f64;
        rule(
            &field("n").lt(two_pow_64),
            &json!({"n": u64::MAX}),
            &json!({"n": two_pow_64}),
        )?;
        assert!(!matches(
            &field("n").eq(two_pow_64),
            &json!({"n": u64::MAX})
        )?);
        assert!(matches(&field("n").eq(u64::MAX), &json!({"n": u64::MAX}))?);
        rule(
            &field("n").gt(i64::MAX),
            &json!({"n": u64::MAX}),
            &json!({"n": i64::MAX}),
        )
    }

    #[test]
    fn strings_compare_by_bytes() -> Result<()> {
        // 'a' (0x61) sorts after 'Z' (0x5a) by bytes, unlike a case-insensitive collation.
        rule(&field("s").gt("Z"), &json!({"s": "a"}), &json!({"s": "A"}))?;
        rule(&field("s").lt("b"), &json!({"s": "B"}), &json!({"s": "é"}))
    }

    #[test]
    fn eq_matches_any_element_or_the_whole_array() -> Result<()> {
        rule(
            &field("tags").eq("x"),
            &json!({"tags": ["w", "x"]}),
            &json!({"tags": ["w", "y"]}),
        )?;
        rule(
            &field("tags").eq(json!(["w", "x"])),
            &json!({"tags": ["w", "x"]}),
            &json!({"tags": ["x", "w"]}),
        )?;
        // An element that is itself the operand array.
        assert!(matches(
            &field("tags").eq(json!([1, 2])),
            &json!({"tags": [[1, 2], 3]})
        )?);
        Ok(())
    }

    #[test]
    fn ne_is_the_negation_of_eq_and_matches_missing() -> Result<()> {
        rule(&field("a").ne("x"), &json!({}), &json!({"a": "x"}))?;
        rule(
            &field("a").ne("x"),
            &json!({"a": "y"}),
            &json!({"a": ["y", "x"]}),
        )?;
        rule(&field("a").ne(1), &json!({"a": "1"}), &json!({"a": 1.0}))
    }

    #[test]
    fn in_matches_numbers_by_exact_value_in_long_lists() -> Result<()> {
        let mut operand: Vec<Value> = (0..1000).map(|i| json!(i * 3)).collect();
        operand.extend([json!(1.5), json!(u64::MAX), json!(-7), json!(i64::MIN)]);
        let f = field("a").is_in(operand);
        for yes in [
            json!(2997),
            json!(2997.0),
            json!(1.5),
            json!(u64::MAX),
            json!(-7.0),
            json!(i64::MIN),
        ] {
            assert!(matches(&f, &json!({ "a": yes }))?, "{yes}");
        }
        for no in [
            json!(1),
            json!(3000),
            json!(1.25),
            json!(18_446_744_073_709_551_616.0_f64),
            json!("3"),
        ] {
            assert!(!matches(&f, &json!({ "a": no }))?, "{no}");
        }
        Ok(())
    }

    #[test]
    fn in_matches_any_operand_value() -> Result<()> {
        rule(
            &field("a").is_in(json!([1, "z"]).as_array().cloned().unwrap_or_default()),
            &json!({"a": 1.0}),
            &json!({"a": 2}),
        )?;
        rule(
            &field("a").is_in(["z"]),
            &json!({"a": ["y", "z"]}),
            &json!({"a": ["y"]}),
        )?;
        rule(
            &field("a").is_in([json!([1, 2])]),
            &json!({"a": [1, 2]}),
            &json!({"a": [2, 1]}),
        )?;
        rule(
            &field("a").is_in([Value::Null]),
            &json!({}),
            &json!({"a": 0}),
        )?;
        assert!(!matches(
            &field("a").is_in(Vec::<Value>::new()),
            &json!({"a": 1})
        )?);
        Ok(())
    }

    #[test]
    fn nin_is_the_negation_of_in_and_matches_missing() -> Result<()> {
        rule(&field("a").not_in(["x"]), &json!({}), &json!({"a": "x"}))?;
        rule(
            &field("a").not_in(["x", "y"]),
            &json!({"a": "z"}),
            &json!({"a": ["z", "y"]}),
        )?;
        assert!(matches(
            &field("a").not_in(Vec::<Value>::new()),
            &json!({"a": 1})
        )?);
        Ok(())
    }

    #[test]
    fn in_and_nin_need_an_array_operand() {
        for op in [Operator::In, Operator::Nin] {
            let f = Filter::Condition {
                field: "a".into(),
                op,
                value: json!("x"),
            };
            assert_eq!(
                code_of(CompiledFilter::compile(&f)),
                Some(ErrorCode::InvalidQuery)
            );
        }
    }

    #[test]
    fn eq_null_matches_null_and_missing() -> Result<()> {
        rule(
            &field("a").eq(Value::Null),
            &json!({"a": null}),
            &json!({"a": 0}),
        )?;
        rule(
            &field("a").eq(Value::Null),
            &json!({}),
            &json!({"a": false}),
        )?;
        rule(
            &field("a").eq(Value::Null),
            &json!({"a": [1, null]}),
            &json!({"a": [1]}),
        )?;
        rule(&field("a").ne(Value::Null), &json!({"a": 0}), &json!({}))
    }

    #[test]
    fn exists_tests_presence_not_value() -> Result<()> {
        rule(
            &field("a").exists(true),
            &json!({"a": null}),
            &json!({"b": 1}),
        )?;
        rule(
            &field("a").exists(false),
            &json!({"b": 1}),
            &json!({"a": false}),
        )?;
        rule(
            &field("items.name").exists(true),
            &json!({"items": [{"x": 1}, {"name": null}]}),
            &json!({"items": [{"x": 1}]}),
        )?;
        let f = Filter::Condition {
            field: "a".into(),
            op: Operator::Exists,
            value: json!(1),
        };
        assert_eq!(
            code_of(CompiledFilter::compile(&f)),
            Some(ErrorCode::InvalidQuery)
        );
        Ok(())
    }

    #[test]
    fn range_operators_never_cross_type_brackets() -> Result<()> {
        rule(&field("a").gt(5), &json!({"a": 6}), &json!({"a": "10"}))?;
        rule(&field("a").lt("z"), &json!({"a": "a"}), &json!({"a": 5}))?;
        rule(&field("a").gte(0), &json!({"a": 0.0}), &json!({"a": true}))?;
        rule(&field("a").lt(1), &json!({"a": -1}), &json!({"a": null}))?;
        rule(&field("a").gte(0), &json!({"a": 1}), &json!({}))?;
        Ok(())
    }

    #[test]
    fn gte_and_lte_null_match_null_and_missing_like_eq_null() -> Result<()> {
        rule(&field("a").lte(Value::Null), &json!({}), &json!({"a": 0}))?;
        rule(
            &field("a").gte(Value::Null),
            &json!({"a": null}),
            &json!({"a": false}),
        )?;
        assert!(!matches(&field("a").gt(Value::Null), &json!({}))?);
        assert!(!matches(&field("a").lt(Value::Null), &json!({"a": null}))?);
        Ok(())
    }

    #[test]
    fn range_operators_on_arrays_match_any_element() -> Result<()> {
        rule(
            &field("a").gt(5),
            &json!({"a": [1, 9]}),
            &json!({"a": [1, 2]}),
        )?;
        rule(
            &field("a").lt(0),
            &json!({"a": ["x", -1]}),
            &json!({"a": ["x", 1]}),
        )
    }

    #[test]
    fn range_operators_order_bools_objects_and_arrays_within_their_bracket() -> Result<()> {
        rule(
            &field("a").gt(false),
            &json!({"a": true}),
            &json!({"a": false}),
        )?;
        rule(
            &field("a").gt(json!([1])),
            &json!({"a": [2]}),
            &json!({"a": [0, 5]}),
        )?;
        rule(
            &field("a").gt(json!({"k": 1})),
            &json!({"a": {"k": 2}}),
            &json!({"a": {"k": 0}}),
        )
    }

    #[test]
    fn regex_searches_string_fields_only() -> Result<()> {
        rule(
            &field("s").regex("b+c"),
            &json!({"s": "abbcd"}),
            &json!({"s": "acd"}),
        )?;
        rule(
            &field("s").regex("^1"),
            &json!({"s": "123"}),
            &json!({"s": 123}),
        )?;
        rule(
            &field("s").regex("x$"),
            &json!({"s": ["a", "ax"]}),
            &json!({"s": ["xa"]}),
        )?;
        rule(
            &field("s").regex("(?i)^hello"),
            &json!({"s": "HeLLo"}),
            &json!({}),
        )?;
        assert!(!matches(&field("s").regex("true"), &json!({"s": true}))?);
        Ok(())
    }

    #[test]
    fn regex_operand_must_be_a_valid_string_pattern() {
        let f = Filter::Condition {
            field: "s".into(),
            op: Operator::Regex,
            value: json!(1),
        };
        assert_eq!(
            code_of(CompiledFilter::compile(&f)),
            Some(ErrorCode::InvalidQuery)
        );
        assert_eq!(
            code_of(CompiledFilter::compile(&field("s").regex("a("))),
            Some(ErrorCode::InvalidQuery)
        );
    }

    #[test]
    fn errors_are_one_line_and_name_the_field() -> TestResult {
        let err = CompiledFilter::compile(&field("name").regex("a("))
            .err()
            .ok_or("accepted a bad regex")?;
        let text = err.to_string();
        assert!(text.starts_with("invalid query: invalid regex: "), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(err.context_value("field"), Some("name"));
        Ok(())
    }

    #[test]
    fn pathological_regexes_are_rejected_fast() {
        for pattern in ["(a*)*{1000}{1000}", "a{100000}{100000}", "\\w{50000}"] {
            let started = Instant::now();
            let result = CompiledFilter::compile(&field("s").regex(pattern));
            assert_eq!(code_of(result), Some(ErrorCode::InvalidQuery), "{pattern}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{pattern} took too long"
            );
        }
    }

    #[test]
    fn and_or_not_compose() -> Result<()> {
        let f = and(vec![
            field("a").gt(1),
            or(vec![field("b").eq("x"), not(field("c").exists(true))]),
        ]);
        rule(
            &f,
            &json!({"a": 2, "b": "x", "c": 1}),
            &json!({"a": 2, "b": "y", "c": 1}),
        )?;
        rule(&f, &json!({"a": 2}), &json!({"a": 1}))?;
        rule(&!field("a").eq(1), &json!({"a": 2}), &json!({"a": 1}))
    }

    #[test]
    fn empty_and_matches_all_and_empty_or_matches_none() -> Result<()> {
        assert!(matches(&and(vec![]), &json!({}))?);
        assert!(!matches(&or(vec![]), &json!({"a": 1}))?);
        Ok(())
    }

    #[test]
    fn nested_applies_to_a_sub_document() -> Result<()> {
        let f = field("address").nested(field("city").eq("Oslo").and(field("zip").gt(100)));
        rule(
            &f,
            &json!({"address": {"city": "Oslo", "zip": 150}}),
            &json!({"address": {"city": "Oslo", "zip": 50}}),
        )?;
        rule(
            &f,
            &json!({"address": {"city": "Oslo", "zip": 101}}),
            &json!({}),
        )
    }

    #[test]
    fn nested_on_an_array_needs_one_element_to_match_the_whole_clause() -> Result<()> {
        let f = field("items").nested(field("sku").eq("a").and(field("qty").gte(2)));
        // Element-wise: sku "a" and qty ≥ 2 must hold in the same element.
        rule(
            &f,
            &json!({"items": [{"sku": "b", "qty": 1}, {"sku": "a", "qty": 3}]}),
            &json!({"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}]}),
        )?;
        // Scalar elements never count.
        rule(
            &field("items").nested(field("x").exists(false)),
            &json!({"items": [1, {}]}),
            &json!({"items": [1, 2]}),
        )?;
        // Without `nested`, the two conditions may be met by different elements.
        let flat = field("items.sku").eq("a").and(field("items.qty").gte(2));
        assert!(matches(
            &flat,
            &json!({"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}]})
        )?);
        Ok(())
    }

    #[test]
    fn nested_on_a_missing_or_scalar_field_never_matches() -> Result<()> {
        let f = field("a").nested(field("x").ne(1));
        rule(&f, &json!({"a": {}}), &json!({}))?;
        assert!(!matches(&f, &json!({"a": 5}))?);
        Ok(())
    }

    fn people() -> Vec<(&'static str, Value)> {
        vec![
            ("k5", json!({"age": "old"})),
            ("k1", json!({"age": 30})),
            ("k4", json!({"name": "no age"})),
            ("k2", json!({"age": 25.5})),
            ("k3", json!({"age": null})),
            ("k6", json!({"age": true})),
            ("k7", json!({"age": [1]})),
            ("k8", json!({"age": {"y": 1}})),
            ("k0", json!({"age": 30.0})),
        ]
    }

    #[test]
    fn without_order_by_results_are_in_key_order() -> Result<()> {
        let keys = keys_of(&Query::new(), &people())?;
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"]);
        Ok(())
    }

    #[test]
    fn order_by_uses_the_total_order_with_missing_as_null_and_ties_by_key() -> Result<()> {
        let asc = keys_of(&Query::new().order_asc("age"), &people())?;
        // null/missing (k3, k4 by key) < numbers (25.5, then 30 = 30.0 by key) < strings
        // < objects < arrays < booleans.
        assert_eq!(asc, ["k3", "k4", "k2", "k0", "k1", "k5", "k8", "k7", "k6"]);
        let desc = keys_of(&Query::new().order_desc("age"), &people())?;
        // Ties still break by key ascending.
        assert_eq!(desc, ["k6", "k7", "k8", "k5", "k0", "k1", "k2", "k3", "k4"]);
        Ok(())
    }

    #[test]
    fn order_by_keys_apply_most_significant_first() -> Result<()> {
        let docs = vec![
            ("a", json!({"g": 1, "n": 1})),
            ("b", json!({"g": 0, "n": 2})),
            ("c", json!({"g": 1, "n": 3})),
        ];
        let keys = keys_of(&Query::new().order_asc("g").order_desc("n"), &docs)?;
        assert_eq!(keys, ["b", "c", "a"]);
        Ok(())
    }

    #[test]
    fn offset_and_limit_apply_after_ordering() -> Result<()> {
        let docs: Vec<(String, Value)> = (0..10)
            .map(|i| (format!("k{i}"), json!({"n": 9 - i})))
            .collect();
        let refs: Vec<(&str, Value)> = docs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let q = Query::new().order_asc("n").offset(2).limit(3);
        assert_eq!(keys_of(&q, &refs)?, ["k7", "k6", "k5"]);
        assert_eq!(
            keys_of(&Query::new().offset(20), &refs)?,
            Vec::<String>::new()
        );
        assert_eq!(
            keys_of(&Query::new().limit(0), &refs)?,
            Vec::<String>::new()
        );
        assert_eq!(
            keys_of(&Query::new().offset(8).limit(5), &refs)?,
            ["k8", "k9"]
        );
        Ok(())
    }

    #[test]
    fn count_ignores_limit_and_offset() -> Result<()> {
        let docs = people();
        let q = Query::filter(field("age").exists(true)).limit(2).offset(1);
        assert_eq!(count(&q, docs.iter().map(|(k, v)| (*k, v)))?, 8);
        assert_eq!(keys_of(&q, &docs)?.len(), 2);
        Ok(())
    }

    #[test]
    fn partial_sort_equals_a_full_sort_prefix() -> TestResult {
        let docs: Vec<(String, Value)> = (0..300)
            .map(|i| {
                (
                    format!("k{:03}", (i * 7919) % 300),
                    json!({"n": (i * 31) % 17}),
                )
            })
            .collect();
        let refs: Vec<(&str, Value)> = docs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let full = keys_of(&Query::new().order_desc("n"), &refs)?;
        for (offset, limit) in [(0, 1), (0, 10), (5, 20), (250, 100), (299, 1)] {
            let page = keys_of(
                &Query::new().order_desc("n").offset(offset).limit(limit),
                &refs,
            )?;
            let start = usize::try_from(offset)?;
            let end = (start + usize::try_from(limit)?).min(full.len());
            assert_eq!(page, full[start..end], "offset {offset} limit {limit}");
        }
        Ok(())
    }

    #[test]
    fn select_projects_present_paths_flat() -> TestResult {
        let docs = [(
            "k",
            json!({"name": "ann", "address": {"city": "Oslo"}, "tags": ["a"]}),
        )];
        let q = Query::new().select(["name", "address.city", "tags.0", "missing"]);
        let out = evaluate(&q, docs.iter().map(|(k, v)| (*k, v)))?;
        let projection = out[0].projection.clone().ok_or("no projection")?;
        let expected: BTreeMap<String, Value> = [
            ("name".to_owned(), json!("ann")),
            ("address.city".to_owned(), json!("Oslo")),
            ("tags.0".to_owned(), json!("a")),
        ]
        .into_iter()
        .collect();
        assert_eq!(projection, expected);
        let plain = evaluate(&Query::new(), docs.iter().map(|(k, v)| (*k, v)))?;
        assert_eq!(plain[0].projection, None);
        assert_eq!(plain[0].score, None);
        Ok(())
    }

    #[test]
    fn text_needs_every_word_case_insensitively() -> Result<()> {
        let f = field("body").text("Quick FOX");
        rule(
            &f,
            &json!({"body": "The quick brown fox"}),
            &json!({"body": "the quick dog"}),
        )?;
        // Whole words only: "foxes" is not "fox".
        rule(
            &f,
            &json!({"body": "fox, QUICK!"}),
            &json!({"body": "quick foxes"}),
        )?;
        // The words of an array's strings are taken together.
        rule(
            &f,
            &json!({"body": ["quick", 7, "fox"]}),
            &json!({"body": ["quick"]}),
        )?;
        assert!(!matches(&f, &json!({"body": 5}))?);
        Ok(())
    }

    #[test]
    fn text_score_counts_occurrences_of_query_words() -> TestResult {
        let f = CompiledFilter::compile(&field("body").text("fox quick fox"))?;
        assert_eq!(
            f.score(&json!({"body": "fox fox quick dog FOX"})),
            Some(4.0)
        );
        assert_eq!(f.score(&json!({"body": "dog"})), Some(0.0));
        let two = CompiledFilter::compile(&field("a").text("x").and(field("b").text("y")))?;
        assert_eq!(two.score(&json!({"a": "x x", "b": "y"})), Some(3.0));
        let negated = CompiledFilter::compile(&!field("a").text("x"))?;
        assert_eq!(negated.score(&json!({"a": "y"})), Some(0.0));
        let plain = CompiledFilter::compile(&field("a").eq(1))?;
        assert_eq!(plain.score(&json!({"a": 1})), None);
        let nested = CompiledFilter::compile(&field("c").nested(field("t").text("x")))?;
        assert_eq!(
            nested.score(&json!({"c": [{"t": "x"}, {"t": "x x"}, {"t": "y"}]})),
            Some(3.0)
        );
        Ok(())
    }

    #[test]
    fn text_results_carry_scores_but_keep_their_order() -> Result<()> {
        let docs = [
            ("a", json!({"t": "fox"})),
            ("b", json!({"t": "fox fox"})),
            ("c", json!({"t": "cat"})),
        ];
        let out = evaluate(
            &Query::filter(field("t").text("fox")),
            docs.iter().map(|(k, v)| (*k, v)),
        )?;
        let got: Vec<(&str, Option<f64>)> = out.iter().map(|m| (m.key.as_str(), m.score)).collect();
        assert_eq!(got, [("a", Some(1.0)), ("b", Some(2.0))]);
        Ok(())
    }

    #[test]
    fn text_operand_must_be_a_string_with_words() {
        for bad in [json!(""), json!(" ,;"), json!(3)] {
            let f = Filter::Condition {
                field: "t".into(),
                op: Operator::Text,
                value: bad,
            };
            assert_eq!(
                code_of(CompiledFilter::compile(&f)),
                Some(ErrorCode::InvalidQuery)
            );
        }
    }

    #[test]
    fn within_box_accepts_both_point_forms_bounds_included() -> Result<()> {
        let f = field("p").within_box([0, 0], [10.0, 5.0]);
        rule(&f, &json!({"p": [10, 5]}), &json!({"p": [10.5, 5]}))?;
        rule(
            &f,
            &json!({"p": {"x": 0, "y": 2.5}}),
            &json!({"p": {"x": 1, "y": -1}}),
        )?;
        rule(
            &f,
            &json!({"p": [[20, 20], [1, 1]]}),
            &json!({"p": [1, 2, 3]}),
        )?;
        rule(
            &f,
            &json!({"p": {"x": 1, "y": 1, "label": "a"}}),
            &json!({"p": {"x": 1}}),
        )?;
        assert!(!matches(&f, &json!({"p": ["1", "1"]}))?);
        Ok(())
    }

    #[test]
    fn within_box_operand_is_validated() {
        let bad_operands = [
            json!({"min": [0, 0]}),
            json!({"min": [0, 0], "max": [1]}),
            json!({"min": [0, "0"], "max": [1, 1]}),
            json!({"min": [2, 0], "max": [1, 1]}),
            json!({"min": [0, 0], "max": [1, 1], "extra": 1}),
            json!([[0, 0], [1, 1]]),
        ];
        for value in bad_operands {
            let f = Filter::Condition {
                field: "p".into(),
                op: Operator::WithinBox,
                value,
            };
            assert_eq!(
                code_of(CompiledFilter::compile(&f)),
                Some(ErrorCode::InvalidQuery)
            );
        }
    }

    #[test]
    fn absurdly_deep_filters_are_rejected() {
        let mut f = field("a").eq(1);
        for _ in 0..300 {
            f = !f;
        }
        assert_eq!(
            code_of(CompiledFilter::compile(&f)),
            Some(ErrorCode::InvalidQuery)
        );
    }

    /// The specification in `docs/QUERY.md`, whose example lines are executable.
    const QUERY_DOC: &str = include_str!("../../../docs/QUERY.md");

    #[test]
    #[allow(clippy::too_many_lines)]
    fn docs_examples_hold() -> TestResult {
        let mut filter: Option<CompiledFilter> = None;
        let mut entries: Vec<(String, Value)> = Vec::new();
        let mut query: Option<Query> = None;
        let mut pipeline: Option<Vec<crate::AggregateStage>> = None;
        let mut input: Vec<Value> = Vec::new();
        let mut checked = 0;
        for (index, line) in QUERY_DOC.lines().enumerate() {
            let at = format!("docs/QUERY.md:{}", index + 1);
            let Some((label, rest)) = line.split_once(": ") else {
                continue;
            };
            let run_query =
                |q: &Option<Query>, entries: &[(String, Value)]| -> Result<Vec<Match>> {
                    let q = q.clone().unwrap_or_default();
                    evaluate(&q, entries.iter().map(|(k, v)| (k.as_str(), v)))
                };
            match label {
                "Filter" => {
                    let f: Filter = serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?;
                    filter = Some(CompiledFilter::compile(&f).map_err(|e| format!("{at}: {e}"))?);
                }
                "Matches" | "No match" => {
                    let doc: Value =
                        serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?;
                    let f = filter.as_ref().ok_or_else(|| format!("{at}: no filter"))?;
                    assert_eq!(f.matches(&doc), label == "Matches", "{at}: {line}");
                }
                "Invalid" => {
                    let f: Filter = serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?;
                    assert_eq!(
                        code_of(CompiledFilter::compile(&f)),
                        Some(ErrorCode::InvalidQuery),
                        "{at}: {line}"
                    );
                }
                "Entries" => {
                    let map: serde_json::Map<String, Value> =
                        serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?;
                    entries = map.into_iter().collect();
                }
                "Query" => {
                    query = Some(serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?);
                }
                "Keys" => {
                    let expected: Vec<String> = serde_json::from_str(rest)?;
                    let got: Vec<String> = run_query(&query, &entries)?
                        .into_iter()
                        .map(|m| m.key)
                        .collect();
                    assert_eq!(got, expected, "{at}");
                }
                "Count" => {
                    let expected: u64 = rest.trim().parse()?;
                    let q = query.clone().unwrap_or_default();
                    let got = count(&q, entries.iter().map(|(k, v)| (k.as_str(), v)))?;
                    assert_eq!(got, expected, "{at}");
                }
                "Scores" => {
                    let expected: Vec<f64> = serde_json::from_str(rest)?;
                    let got: Vec<Option<f64>> = run_query(&query, &entries)?
                        .into_iter()
                        .map(|m| m.score)
                        .collect();
                    let expected: Vec<Option<f64>> = expected.into_iter().map(Some).collect();
                    assert_eq!(got, expected, "{at}");
                }
                "Projections" => {
                    let expected: Vec<Value> = serde_json::from_str(rest)?;
                    let got: Vec<Value> = run_query(&query, &entries)?
                        .into_iter()
                        .map(|m| {
                            Value::Object(m.projection.unwrap_or_default().into_iter().collect())
                        })
                        .collect();
                    assert_eq!(got, expected, "{at}");
                }
                "Pipeline" => {
                    pipeline = Some(serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?);
                }
                "Input" => input = serde_json::from_str(rest)?,
                "Output" => {
                    let expected: Vec<Value> = serde_json::from_str(rest)?;
                    let stages = pipeline
                        .as_deref()
                        .ok_or_else(|| format!("{at}: no pipeline"))?;
                    let got = crate::query::aggregate(stages, &input)?;
                    assert_eq!(got, expected, "{at}");
                    // Integer and float results must keep their kind, which Value's
                    // equality already checks (1 != 1.0); spot-check it stays so.
                    assert_eq!(
                        serde_json::to_string(&got)?,
                        serde_json::to_string(&expected)?,
                        "{at}"
                    );
                }
                "Invalid pipeline" => {
                    let stages: Vec<crate::AggregateStage> =
                        serde_json::from_str(rest).map_err(|e| format!("{at}: {e}"))?;
                    let code = crate::query::aggregate(&stages, &input)
                        .err()
                        .map(|e| e.code());
                    assert_eq!(code, Some(ErrorCode::InvalidQuery), "{at}");
                }
                _ => continue,
            }
            checked += 1;
        }
        assert!(checked > 150, "only {checked} example lines found");
        Ok(())
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::query::field;
    use crate::query::value::properties::value;
    use crate::query::{TypeBracket, type_bracket};

    fn holds(f: &Filter, doc: &Value) -> bool {
        CompiledFilter::compile(f).is_ok_and(|c| c.matches(doc))
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let path = prop::sample::select(vec!["a", "b", "a.b", "a.0", "b.a"]);
        let leaf = (path, 0..8_u8, value()).prop_map(|(p, op, v)| match op {
            0 => field(p).eq(v),
            1 => field(p).ne(v),
            2 => field(p).gt(v),
            3 => field(p).lte(v),
            4 => field(p).is_in([v, json!(1)]),
            5 => field(p).not_in([v]),
            6 => field(p).exists(v.is_null()),
            _ => field(p).regex("a"),
        });
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
                prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::Or),
                inner.clone().prop_map(|f| !f),
                inner.prop_map(|f| field("a").nested(f)),
            ]
        })
    }

    fn doc() -> impl Strategy<Value = Value> {
        (value(), value()).prop_map(|(a, b)| json!({"a": a, "b": b}))
    }

    proptest! {
        #[test]
        fn a_value_equals_itself_at_its_path(v in value()) {
            let d = json!({ "a": v.clone() });
            prop_assert!(holds(&field("a").eq(v.clone()), &d), "eq");
            prop_assert!(holds(&field("a").is_in([v.clone()]), &d), "in");
            prop_assert!(holds(&field("a").gte(v.clone()), &d), "gte");
            prop_assert!(!holds(&field("a").ne(v), &d), "ne");
        }

        #[test]
        fn negations_are_exact(d in doc(), v in value()) {
            prop_assert_eq!(holds(&field("a").ne(v.clone()), &d), !holds(&field("a").eq(v.clone()), &d));
            prop_assert_eq!(holds(&field("a").not_in([v.clone()]), &d), !holds(&field("a").is_in([v.clone()]), &d));
            prop_assert_eq!(holds(&field("a").is_in([v.clone()]), &d), holds(&field("a").eq(v), &d));
        }

        #[test]
        fn not_negates_any_filter(d in doc(), f in filter()) {
            prop_assert_eq!(holds(&!f.clone(), &d), !holds(&f, &d));
        }

        #[test]
        fn scalars_in_one_bracket_are_lt_eq_or_gt(a in value(), b in value()) {
            prop_assume!(!a.is_array() && !b.is_array() && !b.is_null());
            let d = json!({"a": a});
            let lt = holds(&field("a").lt(b.clone()), &d);
            let eq = holds(&field("a").eq(b.clone()), &d);
            let gt = holds(&field("a").gt(b.clone()), &d);
            let hits = usize::from(lt) + usize::from(eq) + usize::from(gt);
            if type_bracket(&a) == type_bracket(&b) {
                prop_assert_eq!(hits, 1);
            } else {
                prop_assert_eq!(hits, 0);
                prop_assert_ne!(type_bracket(&b), TypeBracket::Null);
            }
        }

        #[test]
        fn filters_round_trip_through_json(f in filter()) {
            let text = serde_json::to_string(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Filter = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, f);
        }

        #[test]
        fn results_are_ordered_and_pages_are_slices(
            docs in prop::collection::vec((0..40_u32, value()), 0..40),
            desc in any::<bool>(),
            offset in 0..45_u64,
            limit in 0..45_u64,
        ) {
            let entries: Vec<(String, Value)> = docs
                .into_iter()
                .map(|(k, v)| (format!("k{k:02}"), json!({"a": v})))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let base = if desc { Query::new().order_desc("a") } else { Query::new().order_asc("a") };
            let run = |q: &Query| -> std::result::Result<Vec<String>, TestCaseError> {
                Ok(evaluate(q, entries.iter().map(|(k, v)| (k.as_str(), v)))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .into_iter()
                    .map(|m| m.key)
                    .collect())
            };
            let all = run(&base)?;
            prop_assert_eq!(all.len(), entries.len());
            let by_key: BTreeMap<&str, &Value> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
            for pair in all.windows(2) {
                let (x, y) = (&pair[0], &pair[1]);
                let mut ord = compare_total(by_key[x.as_str()].get("a"), by_key[y.as_str()].get("a"));
                if desc {
                    ord = ord.reverse();
                }
                prop_assert!(ord == Ordering::Less || (ord == Ordering::Equal && x < y));
            }
            let page = run(&base.clone().offset(offset).limit(limit))?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
            let end = start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(all.len());
            prop_assert_eq!(&page[..], &all[start..end]);
        }
    }
}
