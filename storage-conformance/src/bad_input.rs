//! Bad and hostile inputs: the classes every store is tried with, and the query-side checks.
//!
//! Key and value classes run in the storage suite ([`crate::values::bad_keys`],
//! [`crate::values::hostile_keys`], [`crate::values::edge_values`] and the unencodable
//! floats); the query classes below run in the queryable suite. Each must give a typed error or
//! the correct answer (the reference evaluator's), and leave the store's content unchanged.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use storage_core::query::{aggregate, evaluate, field};
use storage_core::{
    AggregateStage, Direction, ErrorCode, Filter, Operator, OrderBy, Query, QueryableStorage,
};

use crate::check::{CheckResult, Failure};
use crate::harness::QueryableHarness;
use crate::query::{differential_query, load};
use crate::support::snapshot;
use crate::values::{bad_keys, deeply_nested, edge_values, hostile_keys};

/// Documents whose field names and values look like SQL, Cypher and regex traps.
pub fn hostile_documents() -> BTreeMap<String, Value> {
    let rows = [
        (
            "d1",
            json!({"name": "'); DROP TABLE x;--", "x'); DROP TABLE t;--": 1, "`a`": "tick", "n": 1}),
        ),
        (
            "d2",
            json!({"name": "}) MATCH (n) DETACH DELETE n //", "$where": "1 == 1", "n": 2}),
        ),
        (
            "d3",
            json!({"name": "a".repeat(5000), "é": {"ü": true}, "n": 3, "tags": ["a\0b", "\"q\""]}),
        ),
        (
            "d4",
            json!({"name": "plain", "a`b": 4, "n": "4", "box": [1, 1]}),
        ),
        (
            "d5",
            json!({"name": "a\\b", "nested": deeply_nested(60), "n": null}),
        ),
    ];
    rows.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn cond(path: &str, op: Operator, value: Value) -> Query {
    Query::filter(Filter::Condition {
        field: path.to_owned(),
        op,
        value,
    })
}

/// The query classes, each named.
// One table row per class; splitting it would only scatter the list.
#[allow(clippy::too_many_lines)]
pub fn bad_queries() -> Vec<(&'static str, Query)> {
    vec![
        (
            "sql injection in a field path",
            cond("x'); DROP TABLE t;--", Operator::Eq, json!(1)),
        ),
        (
            "cypher injection in a field path",
            cond("n.name}) DETACH DELETE n //", Operator::Exists, json!(true)),
        ),
        (
            "backticks in a field path",
            cond("`a`", Operator::Eq, json!("tick")),
        ),
        (
            "a lone backtick in a field path",
            cond("a`b", Operator::Gte, json!(4)),
        ),
        (
            "a dollar field path",
            cond("$where", Operator::Exists, json!(true)),
        ),
        (
            "a unicode field path",
            cond("é.ü", Operator::Eq, json!(true)),
        ),
        (
            "an empty path segment",
            cond("a..b", Operator::Eq, json!(1)),
        ),
        ("a leading dot", cond(".a", Operator::Eq, json!(1))),
        ("a trailing dot", cond("a.", Operator::Eq, json!(1))),
        ("an empty field path", cond("", Operator::Eq, json!(1))),
        (
            "a nul in a field path",
            cond("na\0me", Operator::Eq, json!(1)),
        ),
        (
            "a field path over 1024 bytes",
            cond(&"p".repeat(1100), Operator::Exists, json!(false)),
        ),
        (
            "an array index past u64",
            cond(
                "tags.99999999999999999999999",
                Operator::Exists,
                json!(true),
            ),
        ),
        (
            "sql injection as an operand",
            Query::filter(field("name").eq("'); DROP TABLE x;--")),
        ),
        (
            "cypher injection as an operand",
            Query::filter(field("name").eq("}) MATCH (n) DETACH DELETE n //")),
        ),
        (
            "a nul inside an operand",
            Query::filter(field("tags").eq("a\0b")),
        ),
        (
            "a catastrophic-backtracking regex",
            Query::filter(field("name").regex("(a*)*b")),
        ),
        ("a malformed regex", Query::filter(field("name").regex("("))),
        (
            "an oversized regex",
            Query::filter(field("name").regex("a{10000}{10000}")),
        ),
        (
            "a regex with a number operand",
            cond("name", Operator::Regex, json!(5)),
        ),
        (
            "in with a non-array operand",
            cond("name", Operator::In, json!("plain")),
        ),
        (
            "nin with an object operand",
            cond("name", Operator::Nin, json!({"a": 1})),
        ),
        (
            "exists with a string operand",
            cond("name", Operator::Exists, json!("yes")),
        ),
        (
            "exists with null",
            cond("name", Operator::Exists, Value::Null),
        ),
        (
            "text with a number operand",
            cond("name", Operator::Text, json!(5)),
        ),
        (
            "within_box with a string operand",
            cond("box", Operator::WithinBox, json!("box")),
        ),
        (
            "within_box without max",
            cond("box", Operator::WithinBox, json!({"min": [0, 0]})),
        ),
        (
            "gt with an object operand",
            cond("n", Operator::Gt, json!({"a": 1})),
        ),
        (
            "lt with an array operand",
            cond("n", Operator::Lt, json!([5])),
        ),
        (
            "eq with a deeply nested operand",
            cond("nested", Operator::Eq, deeply_nested(60)),
        ),
        (
            "in with ten thousand operands",
            cond(
                "n",
                Operator::In,
                Value::Array((0..10_000).map(Value::from).collect()),
            ),
        ),
        (
            "a nested clause with a bad path",
            Query::filter(Filter::Nested {
                field: "a..b".into(),
                filter: Box::new(field("x").eq(1)),
            }),
        ),
        (
            "not of an invalid clause",
            Query::filter(Filter::Not(Box::new(field("name").regex("[")))),
        ),
        (
            "order_by with an empty segment",
            Query {
                order_by: vec![OrderBy {
                    field: "a..b".into(),
                    direction: Direction::Asc,
                }],
                ..Query::default()
            },
        ),
        (
            "order_by with an injection path",
            Query::default().order_by("x'); DROP TABLE t;--", Direction::Desc),
        ),
        ("select with an empty path", Query::default().select([""])),
        (
            "select with an injection path",
            Query::default().select(["}) RETURN n //", "`a`"]),
        ),
        (
            "limit u64::MAX",
            Query::default().order_asc("n").limit(u64::MAX),
        ),
        ("offset u64::MAX", Query::default().offset(u64::MAX)),
        (
            "offset i64::MAX + 1 with a limit",
            Query::default().offset(1 << 63).limit(1),
        ),
    ]
}

/// The aggregate classes, each named.
pub fn bad_pipelines() -> Vec<(&'static str, Vec<AggregateStage>)> {
    vec![
        (
            "group by an injection path",
            vec![AggregateStage::group_by("x'); DROP TABLE t;--").count("n")],
        ),
        (
            "group by an empty segment",
            vec![AggregateStage::group_by("a..b").count("n")],
        ),
        (
            "project an empty path",
            vec![AggregateStage::Project(vec![String::new()])],
        ),
        ("skip u64::MAX", vec![AggregateStage::Skip(u64::MAX)]),
        ("limit u64::MAX", vec![AggregateStage::Limit(u64::MAX)]),
        (
            "sum of strings",
            vec![AggregateStage::group_by("n").sum("s", "name")],
        ),
        (
            "match with a malformed regex",
            vec![AggregateStage::matching(field("name").regex("("))],
        ),
    ]
}

/// Every bad-input class the suites try, by name: keys, values and queries.
pub fn classes() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    out.extend(
        bad_keys()
            .into_iter()
            .map(|(n, _)| format!("invalid key: {n}")),
    );
    out.extend(
        hostile_keys()
            .into_iter()
            .map(|(n, _)| format!("hostile key: {n}")),
    );
    out.extend(
        edge_values()
            .into_iter()
            .map(|(n, _)| format!("edge value: {n}")),
    );
    out.extend(["NaN", "+infinity", "-infinity"].map(|n| format!("unencodable value: {n}")));
    out.push("corrupted stored bytes (where the harness can plant them)".into());
    out.extend(
        bad_queries()
            .into_iter()
            .map(|(n, _)| format!("query: {n}")),
    );
    out.extend(
        bad_pipelines()
            .into_iter()
            .map(|(n, _)| format!("aggregate: {n}")),
    );
    out
}

/// Every bad or hostile query gives `InvalidQuery` exactly where the reference evaluator
/// refuses it, and otherwise the evaluator's answer; none changes the store.
pub async fn bad_queries_give_invalid_query_or_the_reference_answer<H: QueryableHarness>(
    h: &H,
) -> CheckResult {
    let docs = hostile_documents();
    let store = load(h, &docs).await?;
    let mut failures = Vec::new();
    for (class, q) in bad_queries() {
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            differential_query(&store, &docs, &q),
        )
        .await;
        match outcome {
            Err(_) => failures.push(format!("{class}: no answer within 30 s")),
            Ok(Err(f)) => failures.push(format!("{class}: {f}")),
            Ok(Ok(())) => {}
        }
    }
    let after: BTreeMap<String, Value> = snapshot(&store).await?.into_iter().collect();
    ensure!(after == docs, "the bad queries changed the store");
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(failures.join("\n")))
    }
}

/// Every bad or hostile pipeline gives `InvalidQuery` exactly where the reference refuses it,
/// and otherwise the reference output; none changes the store.
pub async fn bad_pipelines_give_invalid_query_or_the_reference_answer<H: QueryableHarness>(
    h: &H,
) -> CheckResult {
    let docs = hostile_documents();
    let store = load(h, &docs).await?;
    let mut failures = Vec::new();
    for (class, p) in bad_pipelines() {
        let reference = aggregate(&p, docs.values());
        let got = store.aggregate(&p).await;
        match (reference, got) {
            (Ok(want), Ok(have)) if crate::corpus::same_documents(&have, &want) => {}
            (Err(_), Err(e)) if e.code() == ErrorCode::InvalidQuery => {}
            (want, have) => failures.push(format!("{class}: store {have:?}, reference {want:?}")),
        }
    }
    let after: BTreeMap<String, Value> = snapshot(&store).await?.into_iter().collect();
    ensure!(after == docs, "the bad pipelines changed the store");
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(failures.join("\n")))
    }
}

/// The reference evaluator answers (rather than refuses) the hostile-but-valid queries, so the
/// classes test answers and not only refusals.
pub fn reference_answers(q: &Query) -> bool {
    let docs = hostile_documents();
    evaluate(q, docs.iter().map(|(k, v)| (k.as_str(), v))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_at_least_forty_classes() {
        let classes = classes();
        assert!(classes.len() >= 40, "{}", classes.len());
        let queries = bad_queries().len() + bad_pipelines().len();
        assert!(queries >= 40, "{queries} query classes");
    }

    #[test]
    fn injection_in_paths_is_answered_and_broken_paths_are_refused() {
        let answered = bad_queries()
            .into_iter()
            .filter(|(_, q)| reference_answers(q))
            .count();
        let refused = bad_queries().len() - answered;
        assert!(
            answered >= 10 && refused >= 10,
            "{answered} answered, {refused} refused"
        );
        let q = cond("x'); DROP TABLE t;--", Operator::Eq, json!(1));
        let docs = hostile_documents();
        let found = evaluate(&q, docs.iter().map(|(k, v)| (k.as_str(), v))).unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "a field literally named like an injection is found"
        );
    }
}
