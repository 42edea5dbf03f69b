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

/// The operand of `in`/`nin`, with strings in a hash set so long lists stay cheap.
#[derive(Debug, Clone)]
struct InSet {
    strings: HashSet<String>,
    others: Vec<Document>,
    has_null: bool,
}

impl InSet {
    fn new(values: &[Document]) -> Self {
        let mut strings = HashSet::new();
        let mut others = Vec::new();
        let mut has_null = false;
        for v in values {
            match v {
                Document::String(s) => {
                    strings.insert(s.clone());
                }
                Document::Null => {
                    has_null = true;
                    others.push(Document::Null);
                }
                other => others.push(other.clone()),
            }
        }
        Self {
            strings,
            others,
            has_null,
        }
    }

    fn contains(&self, v: &Document) -> bool {
        match v {
            Document::String(s) => self.strings.contains(s),
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
                    let detail = e.to_string();
                    let first_line = detail.lines().last().unwrap_or("").trim().to_owned();
                    invalid(format!("invalid regex: {first_line}")).with_source(e)
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
            any_candidate(path, doc, |c| {
                compare_values(c, operand).is_some_and(|o| cmp.accepts(o))
            })
            .0
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
