//! The hand-written query corpus in `testdata/*.toml`, embedded at compile time.
//!
//! Each file holds a fixture (`docs`, a JSON object of key → document) and `[[case]]`s: a
//! query in its serde JSON form with the keys it must return in order (plus, optionally,
//! `count` and `projections`), an aggregate `pipeline` with the documents it must output
//! (`expect_docs`), or an `error` code. The cases are written from the query rules, not from
//! any evaluator's output; the reference evaluator passes them in this crate's own tests and
//! every adapter passes them through the queryable suite.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use storage_core::{AggregateStage, ErrorCode, Query};

use crate::check::Failure;

const FILES: &[(&str, &str)] = &[
    ("people.toml", include_str!("../testdata/people.toml")),
    (
        "arrays_of_documents.toml",
        include_str!("../testdata/arrays_of_documents.toml"),
    ),
    (
        "mixed_types.toml",
        include_str!("../testdata/mixed_types.toml"),
    ),
    (
        "text_and_space.toml",
        include_str!("../testdata/text_and_space.toml"),
    ),
    ("aggregate.toml", include_str!("../testdata/aggregate.toml")),
    (
        "query_md_paths.toml",
        include_str!("../testdata/query_md_paths.toml"),
    ),
    (
        "query_md_order.toml",
        include_str!("../testdata/query_md_order.toml"),
    ),
    (
        "query_md_fanout.toml",
        include_str!("../testdata/query_md_fanout.toml"),
    ),
    (
        "query_md_scores.toml",
        include_str!("../testdata/query_md_scores.toml"),
    ),
    (
        "query_md_aggregate.toml",
        include_str!("../testdata/query_md_aggregate.toml"),
    ),
    (
        "query_md_stable_sort.toml",
        include_str!("../testdata/query_md_stable_sort.toml"),
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    docs: String,
    case: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    query: Option<String>,
    pipeline: Option<String>,
    expect: Option<Vec<String>>,
    count: Option<u64>,
    scores: Option<Vec<f64>>,
    projections: Option<String>,
    expect_docs: Option<String>,
    error: Option<String>,
}

/// What a case must produce.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// These keys in this order; the count of the unpaged result and the projections when given.
    Keys {
        /// Keys in order.
        keys: Vec<String>,
        /// `count()` of the query, when given.
        count: Option<u64>,
        /// One projection per result, when given.
        projections: Option<Vec<BTreeMap<String, Value>>>,
        /// One relevance score per result, when given.
        scores: Option<Vec<f64>>,
    },
    /// These aggregate output documents, in order (numbers compared by value).
    Docs(Vec<Value>),
    /// An error with this code.
    Error(ErrorCode),
}

/// What a case runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A query.
    Query(Query),
    /// An aggregate pipeline.
    Aggregate(Vec<AggregateStage>),
}

/// One corpus case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `file.toml::case_name`.
    pub name: String,
    /// What to run.
    pub request: Request,
    /// What it must produce.
    pub expected: Expected,
}

/// A fixture and its cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The file's name.
    pub file: &'static str,
    /// The documents, by key.
    pub docs: BTreeMap<String, Value>,
    /// The cases.
    pub cases: Vec<Case>,
}

fn parse_code(name: &str) -> Result<ErrorCode, Failure> {
    Ok(match name {
        "INVALID_QUERY" => ErrorCode::InvalidQuery,
        "UNSUPPORTED" => ErrorCode::Unsupported,
        other => {
            return Err(Failure::new(format!(
                "unknown error code {other} in the corpus"
            )));
        }
    })
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::new(format!("{what}: {e}")))
}

fn parse_case(file: &str, raw: RawCase) -> Result<Case, Failure> {
    let name = format!("{file}::{}", raw.name);
    let request = match (&raw.query, &raw.pipeline) {
        (Some(q), None) => Request::Query(json(q, &name)?),
        (None, Some(p)) => Request::Aggregate(json(p, &name)?),
        _ => {
            return Err(Failure::new(format!(
                "{name}: give exactly one of query and pipeline"
            )));
        }
    };
    let expected = if let Some(code) = &raw.error {
        Expected::Error(parse_code(code)?)
    } else if let Some(docs) = &raw.expect_docs {
        Expected::Docs(json(docs, &name)?)
    } else if let Some(keys) = raw.expect {
        let projections = match &raw.projections {
            Some(p) => Some(json(p, &name)?),
            None => None,
        };
        Expected::Keys {
            keys,
            count: raw.count,
            projections,
            scores: raw.scores,
        }
    } else {
        return Err(Failure::new(format!("{name}: no expectation")));
    };
    Ok(Case {
        name,
        request,
        expected,
    })
}

/// Every fixture of the corpus.
///
/// # Errors
/// A [`Failure`] naming a malformed file or case.
pub fn fixtures() -> Result<Vec<Fixture>, Failure> {
    let mut out = Vec::new();
    for (file, text) in FILES {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| Failure::new(format!("{file}: {e}")))?;
        let docs: BTreeMap<String, Value> = json(&raw.docs, file)?;
        let cases = raw
            .case
            .into_iter()
            .map(|c| parse_case(file, c))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Fixture { file, docs, cases });
    }
    Ok(out)
}

/// Whether two documents are the same answer: numbers by value (`30 == 30.0`, within a
/// relative 1e-9 so that sums added in another order agree), the rest structurally.
pub fn same_document(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(l), Value::Number(r)) => {
            if let (Some(li), Some(ri)) = (l.as_i64(), r.as_i64()) {
                return li == ri;
            }
            if let (Some(lu), Some(ru)) = (l.as_u64(), r.as_u64()) {
                return lu == ru;
            }
            match (l.as_f64(), r.as_f64()) {
                (Some(lf), Some(rf)) => (lf - rf).abs() <= 1e-9 * lf.abs().max(rf.abs()),
                _ => false,
            }
        }
        (Value::Array(l), Value::Array(r)) => {
            l.len() == r.len() && l.iter().zip(r).all(|(a, b)| same_document(a, b))
        }
        (Value::Object(l), Value::Object(r)) => {
            l.len() == r.len()
                && l.iter()
                    .all(|(k, v)| r.get(k).is_some_and(|w| same_document(v, w)))
        }
        _ => left == right,
    }
}

/// Whether two lists of documents are the same answer, element by element.
pub fn same_documents(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_document(x, y))
}

/// Runs every case against the reference evaluator, returning the failures.
pub fn run_against_reference() -> Result<Vec<String>, Failure> {
    let mut failures = Vec::new();
    for fixture in fixtures()? {
        let entries: Vec<(&str, &Value)> =
            fixture.docs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for case in &fixture.cases {
            let outcome = match &case.request {
                Request::Query(q) => storage_core::query::evaluate(q, entries.iter().copied())
                    .and_then(|m| {
                        let count = storage_core::query::count(q, entries.iter().copied())?;
                        Ok(Outcome::Keys {
                            keys: m.iter().map(|x| x.key.clone()).collect(),
                            count,
                            scores: m.iter().map(|x| x.score).collect(),
                            projections: m
                                .into_iter()
                                .map(|x| x.projection.unwrap_or_default())
                                .collect(),
                        })
                    }),
                Request::Aggregate(p) => {
                    storage_core::query::aggregate(p, fixture.docs.values()).map(Outcome::Docs)
                }
            };
            if let Err(why) = compare(&case.expected, outcome) {
                failures.push(format!("{}: {why}", case.name));
            }
        }
    }
    Ok(failures)
}

/// What a store or the evaluator answered for a case.
#[derive(Debug)]
pub enum Outcome {
    /// Keys in order, the count, one projection per result (empty without `select`).
    Keys {
        /// Keys.
        keys: Vec<String>,
        /// `count()`.
        count: u64,
        /// Projections.
        projections: Vec<BTreeMap<String, Value>>,
        /// Scores.
        scores: Vec<Option<f64>>,
    },
    /// Aggregate output.
    Docs(Vec<Value>),
}

/// Compares an answer with a case's expectation.
///
/// # Errors
/// A description of the difference.
pub fn compare(expected: &Expected, outcome: storage_core::Result<Outcome>) -> Result<(), String> {
    match (expected, outcome) {
        (Expected::Error(code), Err(e)) if e.code() == *code => Ok(()),
        (Expected::Error(code), Err(e)) => Err(format!("expected {code}, got {e}")),
        (Expected::Error(code), Ok(o)) => Err(format!("expected {code}, got {o:?}")),
        (_, Err(e)) => Err(format!("unexpected error {e}")),
        (
            Expected::Keys {
                keys,
                count,
                projections,
                scores,
            },
            Ok(Outcome::Keys {
                keys: got,
                count: got_count,
                projections: got_proj,
                scores: got_scores,
            }),
        ) => {
            if *keys != got {
                return Err(format!("keys {got:?}, expected {keys:?}"));
            }
            if let Some(c) = count
                && *c != got_count
            {
                return Err(format!("count {got_count}, expected {c}"));
            }
            if let Some(p) = projections {
                let same = p.len() == got_proj.len()
                    && p.iter().zip(&got_proj).all(|(a, b)| {
                        a.len() == b.len()
                            && a.iter()
                                .all(|(k, v)| b.get(k).is_some_and(|w| same_document(v, w)))
                    });
                if !same {
                    return Err(format!("projections {got_proj:?}, expected {p:?}"));
                }
            }
            if let Some(want) = scores {
                let same = want.len() == got_scores.len()
                    && want
                        .iter()
                        .zip(&got_scores)
                        .all(|(w, g)| g.is_some_and(|g| (g - w).abs() <= 1e-9 * w.abs().max(1.0)));
                if !same {
                    return Err(format!("scores {got_scores:?}, expected {want:?}"));
                }
            }
            Ok(())
        }
        (Expected::Docs(docs), Ok(Outcome::Docs(got))) => {
            if same_documents(docs, &got) {
                Ok(())
            } else {
                Err(format!("documents {got:?}, expected {docs:?}"))
            }
        }
        (e, Ok(o)) => Err(format!("answer {o:?} does not fit the expectation {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_parses_and_holds_at_least_sixty_cases() -> Result<(), Failure> {
        let n: usize = fixtures()?.iter().map(|f| f.cases.len()).sum();
        assert!(n >= 60, "{n} cases");
        Ok(())
    }

    #[test]
    fn the_reference_evaluator_passes_the_corpus() -> Result<(), Failure> {
        let failures = run_against_reference()?;
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Ok(())
    }

    #[test]
    fn numbers_compare_by_value_in_documents() {
        assert!(same_document(
            &serde_json::json!({"a": [30]}),
            &serde_json::json!({"a": [30.0]})
        ));
        assert!(!same_document(
            &serde_json::json!({"a": 1}),
            &serde_json::json!({"a": "1"})
        ));
        assert!(!same_document(
            &serde_json::json!({"a": 1}),
            &serde_json::json!({"a": 1, "b": 2})
        ));
    }
}
