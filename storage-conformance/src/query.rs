//! The queryable suite: the corpus, differential tests against the reference evaluator,
//! and the paging, counting and projection rules.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use storage_core::query::{Accumulator, aggregate, count, evaluate, field};
use storage_core::{
    AggregateStage, BatchStorage, Direction, ErrorCode, Filter, Operator, OrderBy, Query,
    QueryableStorage, Storage, Tier,
};

use crate::check::{CheckResult, Context, Failure};
use crate::corpus::{self, Expected, Outcome, Request, same_document, same_documents};
use crate::harness::{QueryableHarness, open};
use crate::prop::{Regressions, run_async};
use crate::support::{capabilities_agree, snapshot};

/// The declared capabilities and the accessors agree, queryable tier included.
pub async fn capabilities_agree_with_tier_accessors<H: QueryableHarness>(h: &H) -> CheckResult {
    let (_, store) = open::<Value, _>(h).await?;
    capabilities_agree(store, Tier::Queryable)
}

/// Loads `docs` into a fresh store.
pub(crate) async fn load<H: QueryableHarness>(
    h: &H,
    docs: &BTreeMap<String, Value>,
) -> Result<<H as crate::Harness<Value>>::Store, Failure> {
    let (_, store) = open::<Value, _>(h).await?;
    if !docs.is_empty() {
        store
            .set_many(docs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .await
            .ctx("loading the fixture")?;
    }
    Ok(store)
}

/// What the store answers for a query: keys, count and projections (or the first error).
async fn store_outcome<S: QueryableStorage<Value> + ?Sized>(
    store: &S,
    query: &Query,
) -> storage_core::Result<Outcome> {
    let results = store.find_many(query).await?;
    let count = store.count(query).await?;
    Ok(Outcome::Keys {
        keys: results.iter().map(|r| r.key.clone()).collect(),
        count,
        scores: results.iter().map(|r| r.score).collect(),
        projections: results
            .into_iter()
            .map(|r| r.projection.unwrap_or_default())
            .collect(),
    })
}

/// Every case of the hand-written corpus (`testdata/*.toml`) returns the expected keys, in order.
pub async fn corpus_cases_return_the_expected_keys<H: QueryableHarness>(h: &H) -> CheckResult {
    let mut failures = Vec::new();
    let mut total = 0;
    for fixture in corpus::fixtures()? {
        let store = load(h, &fixture.docs).await?;
        for case in &fixture.cases {
            total += 1;
            let outcome = match &case.request {
                Request::Query(q) => store_outcome(&store, q).await,
                Request::Aggregate(p) => store.aggregate(p).await.map(Outcome::Docs),
            };
            if let Err(why) = corpus::compare(&case.expected, outcome) {
                failures.push(format!("{}: {why}", case.name));
            }
            if let (Request::Query(q), Expected::Error(_)) = (&case.request, &case.expected) {
                // A refused query must be refused by count too, not answered.
                if let Ok(n) = store.count(q).await {
                    failures.push(format!(
                        "{}: count answered {n} for an invalid query",
                        case.name
                    ));
                }
            }
        }
        let after = snapshot(&store).await?;
        let expected: Vec<(String, Value)> = fixture.docs.clone().into_iter().collect();
        ensure!(
            after == expected,
            "running the {} cases changed the store",
            fixture.file
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{} of {total} corpus cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        )))
    }
}

// ---- random documents and queries -------------------------------------------------------

const PATHS: &[&str] = &[
    "a",
    "b",
    "n",
    "s",
    "tags",
    "tags.0",
    "tags.1",
    "obj",
    "obj.x",
    "obj.arr.0",
    "p",
    "missing",
];

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-2i64..4).prop_map(Value::from),
        prop::sample::select(vec![-0.0, 0.5, 1.0, 2.5, -1.5]).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "b",
            "ab",
            "B",
            "é",
            "a b",
            "quick brown",
            "Quick"
        ])
        .prop_map(Value::from),
    ]
    .boxed()
}

fn small_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => (scalar(), scalar()).prop_map(|(x, y)| json!({"x": x, "y": y})),
    ]
    .boxed()
}

fn point() -> BoxedStrategy<Value> {
    prop_oneof![
        ((-1i64..4), (-1i64..4)).prop_map(|(x, y)| json!([x, y])),
        ((-1i64..4), (-1i64..4)).prop_map(|(x, y)| json!({"x": x, "y": y})),
        scalar(),
    ]
    .boxed()
}

/// A random document: a subset of a small field vocabulary holding mixed types.
pub fn document() -> BoxedStrategy<Value> {
    (
        prop::option::of(small_value()),
        prop::option::of(small_value()),
        prop::option::of(prop_oneof![
            (-3i64..4).prop_map(Value::from),
            prop::sample::select(vec![0.5, 1.0, -2.5]).prop_map(Value::from)
        ]),
        prop::option::of(scalar()),
        prop::option::of(prop_oneof![
            prop::collection::vec(small_value(), 0..4).prop_map(Value::Array),
            scalar()
        ]),
        prop::option::of((small_value(), prop::collection::vec(scalar(), 0..3))),
        prop::option::of(point()),
    )
        .prop_map(|(a, b, n, s, tags, obj, p)| {
            let mut m = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            };
            put("a", a);
            put("b", b);
            put("n", n);
            put("s", s);
            put("tags", tags);
            put("obj", obj.map(|(x, arr)| json!({"x": x, "arr": arr})));
            put("p", p);
            Value::Object(m)
        })
        .boxed()
}

/// Random documents under keys `d0`…`d9`.
pub fn documents() -> BoxedStrategy<BTreeMap<String, Value>> {
    prop::collection::btree_map((0u8..10).prop_map(|i| format!("d{i}")), document(), 0..9).boxed()
}

fn path() -> BoxedStrategy<String> {
    prop::sample::select(PATHS.to_vec())
        .prop_map(String::from)
        .boxed()
}

fn condition() -> BoxedStrategy<Filter> {
    let op = prop::sample::select(vec![
        Operator::Eq,
        Operator::Ne,
        Operator::Gt,
        Operator::Gte,
        Operator::Lt,
        Operator::Lte,
        Operator::In,
        Operator::Nin,
        Operator::Regex,
        Operator::Exists,
        Operator::Text,
        Operator::WithinBox,
    ]);
    (
        path(),
        op,
        any::<u8>(),
        small_value(),
        prop::collection::vec(scalar(), 0..4),
    )
        .prop_map(|(field, op, pick, value, list)| {
            // Mostly well-typed operands, sometimes not: a store must refuse those as the evaluator does.
            let odd = pick % 16 == 0;
            let value = match op {
                Operator::In | Operator::Nin if !odd => Value::Array(list),
                Operator::Regex if !odd => {
                    json!(["^a", "b$", "(?i)A", ".", "é", "^$"][usize::from(pick) % 6])
                }
                Operator::Exists if !odd => json!(pick % 2 == 0),
                Operator::Text if !odd => {
                    json!(["quick", "QUICK brown", "a", "b a"][usize::from(pick) % 4])
                }
                Operator::WithinBox if !odd => {
                    json!({"min": [0, 0], "max": [i64::from(pick % 4), 2]})
                }
                _ => value,
            };
            Filter::Condition { field, op, value }
        })
        .boxed()
}

/// A random filter: conditions under and/or/not/nested, up to three levels deep.
pub fn filter() -> BoxedStrategy<Filter> {
    condition()
        .prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
                prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::Or),
                inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
                (prop::sample::select(vec!["obj", "tags", "a"]), inner).prop_map(|(field, f)| {
                    Filter::Nested {
                        field: field.to_owned(),
                        filter: Box::new(f),
                    }
                }),
            ]
        })
        .boxed()
}

fn order_by() -> BoxedStrategy<Vec<OrderBy>> {
    prop::collection::vec(
        (path(), any::<bool>()).prop_map(|(field, desc)| OrderBy {
            field,
            direction: if desc {
                Direction::Desc
            } else {
                Direction::Asc
            },
        }),
        0..3,
    )
    .boxed()
}

/// A random query: filter, multi-key order, paging and projection.
pub fn query() -> BoxedStrategy<Query> {
    (
        prop::option::of(filter()),
        order_by(),
        prop::option::of(0u64..5),
        prop::option::of(0u64..5),
        prop::option::of(prop::collection::vec(path(), 0..3)),
    )
        .prop_map(|(filter, order_by, limit, offset, select)| Query {
            filter,
            order_by,
            limit,
            offset,
            select,
        })
        .boxed()
}

fn accumulator() -> BoxedStrategy<Accumulator> {
    prop_oneof![
        Just(Accumulator::Count),
        path().prop_map(Accumulator::Sum),
        path().prop_map(Accumulator::Avg),
        path().prop_map(Accumulator::Min),
        path().prop_map(Accumulator::Max),
    ]
    .boxed()
}

fn stage() -> BoxedStrategy<AggregateStage> {
    prop_oneof![
        filter().prop_map(AggregateStage::Match),
        (
            prop::option::of(path()),
            prop::collection::vec(accumulator(), 0..3)
        )
            .prop_map(|(by, accs)| {
                AggregateStage::Group {
                    by,
                    accumulators: accs
                        .into_iter()
                        .enumerate()
                        .map(|(i, a)| (format!("f{i}"), a))
                        .collect(),
                }
            }),
        order_by().prop_map(AggregateStage::Sort),
        (0u64..4).prop_map(AggregateStage::Skip),
        (0u64..5).prop_map(AggregateStage::Limit),
        prop::collection::vec(
            prop::sample::select(vec!["a", "n", "obj.x", "_id", "f0", "f1"]).prop_map(String::from),
            0..3
        )
        .prop_map(AggregateStage::Project),
    ]
    .boxed()
}

/// A random aggregate pipeline of up to four stages.
pub fn pipeline() -> BoxedStrategy<Vec<AggregateStage>> {
    prop::collection::vec(stage(), 0..5).boxed()
}

fn same_score(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// Compares the store with the reference evaluator on one query: find_many, count, find_one.
pub(crate) async fn differential_query<S: QueryableStorage<Value> + ?Sized>(
    store: &S,
    docs: &BTreeMap<String, Value>,
    q: &Query,
) -> CheckResult {
    let entries: Vec<(&str, &Value)> = docs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let reference = evaluate(q, entries.iter().copied());
    let got = store.find_many(q).await;
    match (reference, got) {
        (Err(e), Ok(r)) => Err(Failure::new(format!(
            "the evaluator refuses the query ({e}) but the store answered {:?}",
            r.iter().map(|x| &x.key).collect::<Vec<_>>()
        ))),
        (Err(_), Err(e)) => {
            ensure_eq!(
                e.code(),
                ErrorCode::InvalidQuery,
                "the store's error for an invalid query ({e})"
            );
            let c = store.count(q).await;
            ensure!(c.is_err(), "count answered {c:?} for an invalid query");
            Ok(())
        }
        (Ok(_), Err(e)) => Err(Failure::new(format!(
            "the store failed where the evaluator answered: {e}"
        ))),
        (Ok(expected), Ok(got)) => {
            let want: Vec<&str> = expected.iter().map(|m| m.key.as_str()).collect();
            let have: Vec<&str> = got.iter().map(|r| r.key.as_str()).collect();
            ensure_eq!(have, want, "keys in order");
            for (m, r) in expected.iter().zip(&got) {
                ensure!(
                    Some(&r.value) == docs.get(&r.key),
                    "the value returned for {} is not the stored one",
                    r.key
                );
                ensure!(
                    same_score(r.score, m.score),
                    "score of {}: {:?}, expected {:?}",
                    r.key,
                    r.score,
                    m.score
                );
                let same_projection = match (&r.projection, &m.projection) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        a.len() == b.len()
                            && a.iter()
                                .all(|(k, v)| b.get(k).is_some_and(|w| same_document(v, w)))
                    }
                    _ => false,
                };
                ensure!(
                    same_projection,
                    "projection of {}: {:?}, expected {:?}",
                    r.key,
                    r.projection,
                    m.projection
                );
            }
            let expected_count = count(q, entries.iter().copied()).ctx("reference count")?;
            ensure_eq!(store.count(q).await.ctx("count")?, expected_count, "count");
            let mut first = q.clone();
            first.limit = Some(1);
            let expected_first = evaluate(&first, entries.iter().copied()).ctx("reference")?;
            let got_first = store.find_one(q).await.ctx("find_one")?;
            ensure_eq!(
                got_first.map(|r| r.key),
                expected_first.first().map(|m| m.key.clone()),
                "find_one"
            );
            Ok(())
        }
    }
}

/// Random queries (every operator, nesting, multi-key order, paging, projection) on random
/// documents return exactly what the reference evaluator returns: same keys, order, projections,
/// scores and counts, and the same refusals.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_queries_match_the_reference_evaluator<H: QueryableHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = (documents(), prop::collection::vec(query(), 1..8));
    run_async(&strategy, regressions, |(docs, queries)| async move {
        let store = load(h, &docs).await?;
        for (i, q) in queries.iter().enumerate() {
            let text = serde_json::to_string(q).unwrap_or_default();
            differential_query(&store, &docs, q)
                .await
                .ctx(format_args!("query {i} {text}"))?;
        }
        Ok(())
    })
}

/// Random aggregate pipelines on random documents output what the reference pipeline outputs.
// Async like every other check, so macros and self-tests call all checks alike.
#[allow(clippy::unused_async)]
pub async fn random_aggregates_match_the_reference_evaluator<H: QueryableHarness>(
    h: &H,
    regressions: Regressions,
) -> CheckResult {
    let strategy = (documents(), prop::collection::vec(pipeline(), 1..5));
    run_async(&strategy, regressions, |(docs, pipelines)| async move {
        let store = load(h, &docs).await?;
        for (i, p) in pipelines.iter().enumerate() {
            let text = serde_json::to_string(p).unwrap_or_default();
            let reference = aggregate(p, docs.values());
            let got = store.aggregate(p).await;
            match (reference, got) {
                (Ok(want), Ok(have)) => ensure!(
                    same_documents(&have, &want),
                    "pipeline {i} {text}: got {have:?}, expected {want:?}"
                ),
                (Err(_), Err(e)) => ensure_eq!(
                    e.code(),
                    ErrorCode::InvalidQuery,
                    "pipeline {i} {text}: error code"
                ),
                (Ok(want), Err(e)) => {
                    return Err(Failure::new(format!(
                        "pipeline {i} {text}: store failed with {e}, expected {want:?}"
                    )));
                }
                (Err(e), Ok(have)) => {
                    return Err(Failure::new(format!(
                        "pipeline {i} {text}: evaluator refuses ({e}), store answered {have:?}"
                    )));
                }
            }
        }
        Ok(())
    })
}

fn paging_docs() -> BTreeMap<String, Value> {
    (0..10)
        .map(|i| {
            (
                format!("k{i}"),
                json!({"rank": i % 4, "i": i, "name": format!("n{}", 9 - i)}),
            )
        })
        .collect()
}

/// `limit` and `offset` page the ordered results: the pages put together are the whole result.
pub async fn limit_and_offset_page_the_ordered_results<H: QueryableHarness>(h: &H) -> CheckResult {
    let docs = paging_docs();
    let store = load(h, &docs).await?;
    let base = Query::default().order_desc("rank").order_asc("name");
    let all: Vec<String> = store
        .find_many(&base)
        .await
        .ctx("query")?
        .into_iter()
        .map(|r| r.key)
        .collect();
    ensure_eq!(all.len(), 10, "unpaged results");
    let mut paged = Vec::new();
    for page in 0..4u64 {
        let q = base.clone().offset(page * 3).limit(3);
        let keys: Vec<String> = store
            .find_many(&q)
            .await
            .ctx("page")?
            .into_iter()
            .map(|r| r.key)
            .collect();
        ensure!(
            keys.len() <= 3,
            "page {page} holds {} results with limit 3",
            keys.len()
        );
        paged.extend(keys);
    }
    ensure_eq!(paged, all, "pages 0..4 of 3 put together");
    let q = base.clone().offset(9);
    let keys: Vec<String> = store
        .find_many(&q)
        .await
        .ctx("last page")?
        .into_iter()
        .map(|r| r.key)
        .collect();
    ensure_eq!(keys, all[9..].to_vec(), "offset 9");
    let q = base.clone().offset(100).limit(5);
    ensure!(
        store.find_many(&q).await.ctx("past the end")?.is_empty(),
        "an offset past the end returns nothing"
    );
    Ok(())
}

/// `count` counts the unpaged result: `limit` and `offset` do not change it.
pub async fn count_ignores_limit_and_offset<H: QueryableHarness>(h: &H) -> CheckResult {
    let store = load(h, &paging_docs()).await?;
    let q = Query::filter(field("rank").gte(1));
    let n = store.count(&q).await.ctx("count")?;
    ensure_eq!(n, 7, "count of rank >= 1");
    ensure_eq!(
        store
            .count(&q.clone().limit(2).offset(1))
            .await
            .ctx("count")?,
        7,
        "count with paging"
    );
    ensure_eq!(
        store.count(&Query::default()).await.ctx("count")?,
        10,
        "count of everything"
    );
    Ok(())
}

/// `find_one` returns the first result in order (after `offset`), or `None`.
pub async fn find_one_returns_the_first_ordered_result<H: QueryableHarness>(h: &H) -> CheckResult {
    let store = load(h, &paging_docs()).await?;
    let first = store
        .find_one(&Query::default().order_desc("i"))
        .await
        .ctx("find_one")?;
    ensure_eq!(
        first.map(|r| r.key),
        Some("k9".to_owned()),
        "find_one by i desc"
    );
    let second = store
        .find_one(&Query::default().order_desc("i").offset(1))
        .await
        .ctx("find_one")?;
    ensure_eq!(
        second.map(|r| r.key),
        Some("k8".to_owned()),
        "find_one with offset 1"
    );
    let none = store
        .find_one(&Query::filter(field("rank").gt(10)))
        .await
        .ctx("find_one")?;
    ensure!(none.is_none(), "find_one with no match");
    Ok(())
}

/// Results carry the full stored value, and `select` projects the present paths only.
pub async fn results_carry_values_and_projections<H: QueryableHarness>(h: &H) -> CheckResult {
    let docs: BTreeMap<String, Value> = [
        (
            "a".to_owned(),
            json!({"name": "x", "deep": {"v": [1, {"w": 2}]}, "n": null}),
        ),
        ("b".to_owned(), json!({"name": "y"})),
    ]
    .into_iter()
    .collect();
    let store = load(h, &docs).await?;
    let results = store
        .find_many(&Query::default().select(["name", "deep.v.1.w", "n", "nope"]))
        .await
        .ctx("query")?;
    ensure_eq!(results.len(), 2, "results");
    ensure_eq!(results[0].value, docs["a"], "value of a");
    let pa = results[0].projection.clone().unwrap_or_default();
    let expected: BTreeMap<String, Value> = [
        ("name".to_owned(), json!("x")),
        ("deep.v.1.w".to_owned(), json!(2)),
        ("n".to_owned(), Value::Null),
    ]
    .into_iter()
    .collect();
    ensure_eq!(pa, expected, "projection of a");
    let pb = results[1].projection.clone().unwrap_or_default();
    ensure_eq!(
        pb,
        [("name".to_owned(), json!("y"))]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        "projection of b"
    );
    let plain = store.find_many(&Query::default()).await.ctx("query")?;
    ensure!(
        plain.iter().all(|r| r.projection.is_none()),
        "no projection without select"
    );
    Ok(())
}

/// Queries see writes at once: a set, an overwrite and a delete change the next answer.
pub async fn queries_see_writes_immediately<H: QueryableHarness>(h: &H) -> CheckResult {
    let store = load(h, &paging_docs()).await?;
    let q = Query::filter(field("rank").eq(3)).order_asc("i");
    let keys =
        |r: Vec<storage_core::QueryResult<Value>>| r.into_iter().map(|r| r.key).collect::<Vec<_>>();
    ensure_eq!(
        keys(store.find_many(&q).await.ctx("query")?),
        vec!["k3", "k7"],
        "before writes"
    );
    store
        .set("k0", &json!({"rank": 3, "i": 100}))
        .await
        .ctx("set")?;
    store
        .set("k3", &json!({"rank": 0, "i": 3}))
        .await
        .ctx("overwrite")?;
    store.delete("k7").await.ctx("delete")?;
    ensure_eq!(
        keys(store.find_many(&q).await.ctx("query")?),
        vec!["k0"],
        "after writes"
    );
    store.clear().await.ctx("clear")?;
    ensure!(
        store.find_many(&q).await.ctx("query")?.is_empty(),
        "after clear"
    );
    ensure_eq!(
        store.count(&Query::default()).await.ctx("count")?,
        0,
        "count after clear"
    );
    Ok(())
}
