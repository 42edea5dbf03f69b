//! Differential tests: random documents and random queries, against the reference
//! evaluator, with and without every kind of index.

use proptest::prelude::*;
use serde_json::{Value, json};
use storage_core::query::{and, field, not, or};
use storage_core::{
    AggregateStage, BatchStorage, Filter, IndexDefinition, IndexKind, IndexedStorage, Query,
    QueryableStorage, Result,
};
use storage_sqlite::{SqliteConfig, SqliteStorage};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..4).prop_map(Value::from),
        (-6i32..7).prop_map(|h| json!(f64::from(h) / 2.0)),
        prop::sample::select(vec!["a", "b", "Alice", "alice", "bob", "", "é", "a b"])
            .prop_map(Value::from),
    ]
}

fn words() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        prop::sample::select(vec!["red", "Green", "blue", "RED", "fox", "ünï", "x-ray"]),
        0..4,
    )
    .prop_map(|w| Value::from(w.join(" ")))
}

fn point() -> impl Strategy<Value = Value> {
    (-4i32..5, -4i32..5, any::<bool>()).prop_map(|(x, y, obj)| {
        if obj {
            json!({"x": x, "y": f64::from(y) / 2.0})
        } else {
            json!([x, y])
        }
    })
}

/// A document: mostly an object, sometimes an array of objects (searched element-wise
/// by the evaluator, which SQL must keep among the candidates).
fn doc() -> impl Strategy<Value = Value> {
    let object = object_doc();
    prop_oneof![
        6 => object.clone(),
        1 => prop::collection::vec(object, 0..3).prop_map(Value::from),
    ]
}

fn object_doc() -> impl Strategy<Value = Value> + Clone {
    (
        prop::option::of(prop_oneof![
            scalar(),
            prop::collection::vec(scalar(), 0..3).prop_map(Value::from)
        ]),
        prop::option::of(prop_oneof![
            scalar().prop_map(|c| json!({"c": c})),
            prop::collection::vec(scalar().prop_map(|c| json!({"c": c})), 0..3)
                .prop_map(Value::from),
            scalar(),
        ]),
        prop::option::of(prop_oneof![
            words(),
            prop::collection::vec(words(), 0..3).prop_map(Value::from)
        ]),
        prop::option::of(prop_oneof![
            point(),
            prop::collection::vec(point(), 0..3).prop_map(Value::from),
            scalar()
        ]),
    )
        .prop_map(|(a, b, t, p)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("a", a), ("b", b), ("t", t), ("p", p)] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

fn condition() -> impl Strategy<Value = Filter> {
    let path = prop::sample::select(vec!["a", "b", "b.c", "a.0", "b.0.c", "missing"]);
    prop_oneof![
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).eq(v)),
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).ne(v)),
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).gt(v)),
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).gte(v)),
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).lt(v)),
        (path.clone(), scalar()).prop_map(|(p, v)| field(p).lte(v)),
        (path.clone(), prop::collection::vec(scalar(), 0..3)).prop_map(|(p, v)| field(p).is_in(v)),
        (path.clone(), prop::collection::vec(scalar(), 0..3)).prop_map(|(p, v)| field(p).not_in(v)),
        (path.clone(), any::<bool>()).prop_map(|(p, v)| field(p).exists(v)),
        prop::sample::select(vec!["red", "fox red", "GREEN", "ray", "ünï", "x"])
            .prop_map(|w| field("t").text(w)),
        (-4i32..4, -4i32..4, 0i32..5, 0i32..5)
            .prop_map(|(x, y, w, h)| field("p").within_box([x, y], [x + w, y + h])),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    condition().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(and),
            prop::collection::vec(inner.clone(), 0..3).prop_map(or),
            inner.prop_map(not),
        ]
    })
}

fn query() -> impl Strategy<Value = Query> {
    (
        prop::option::of(filter()),
        prop::option::of(prop::sample::select(vec!["a", "b.c", "t"])),
        any::<bool>(),
        prop::option::of(0u64..4),
        prop::option::of(0u64..3),
    )
        .prop_map(|(f, order, desc, limit, offset)| {
            let mut q = Query::new();
            q.filter = f;
            if let Some(o) = order {
                q = if desc {
                    q.order_desc(o)
                } else {
                    q.order_asc(o)
                };
            }
            q.limit = limit;
            q.offset = offset;
            q
        })
}

async fn check(docs: Vec<Value>, queries: Vec<Query>, indexed: bool) -> Result<()> {
    let store = SqliteStorage::<Value>::open(SqliteConfig::memory().read_pool_size(1)).await?;
    if indexed {
        store
            .create_index(IndexDefinition::new("a", "a", IndexKind::Btree))
            .await?;
        store
            .create_index(IndexDefinition::new("bc", "b.c", IndexKind::Hash))
            .await?;
        store
            .create_index(IndexDefinition::new("b", "b", IndexKind::Btree))
            .await?;
        store
            .create_index(IndexDefinition::new("t", "t", IndexKind::Fulltext))
            .await?;
        store
            .create_index(IndexDefinition::new("p", "p", IndexKind::Spatial))
            .await?;
    }
    let entries: Vec<(String, Value)> = docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("k{i:02}"), d))
        .collect();
    store.set_many(entries.clone()).await?;
    for q in &queries {
        let expected =
            storage_core::query::evaluate(q, entries.iter().map(|(k, v)| (k.as_str(), v)))?;
        let got = store.find_many(q).await?;
        let got_keys: Vec<&str> = got.iter().map(|r| r.key.as_str()).collect();
        let exp_keys: Vec<&str> = expected.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(got_keys, exp_keys, "query {q:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.score, e.score, "score of {} for {q:?}", g.key);
            assert_eq!(g.projection, e.projection);
        }
        let mut unpaged = q.clone();
        unpaged.limit = None;
        unpaged.offset = None;
        let n = storage_core::query::count(q, entries.iter().map(|(k, v)| (k.as_str(), v)))?;
        assert_eq!(store.count(q).await?, n, "count {q:?}");
    }
    Ok(())
}

fn range_query() -> impl Strategy<Value = Query> {
    (
        -4i32..4,
        0i32..6,
        any::<(bool, bool)>(),
        0u8..3,
        prop::option::of(0u64..5),
        prop::option::of(0u64..3),
        any::<bool>(),
    )
        .prop_map(
            |(lo, width, (lo_incl, hi_incl), order, limit, offset, select)| {
                let lo_v = json!(f64::from(lo) / 2.0);
                let hi_v = json!(lo + width);
                let lower = if lo_incl {
                    field("a").gte(lo_v)
                } else {
                    field("a").gt(lo_v)
                };
                let upper = if hi_incl {
                    field("a").lte(hi_v)
                } else {
                    field("a").lt(hi_v)
                };
                let mut q = Query::filter(and(vec![lower, upper]));
                q = match order {
                    0 => q,
                    1 => q.order_asc("a"),
                    _ => q.order_desc("a"),
                };
                q.limit = limit;
                q.offset = offset;
                if select {
                    q = q.select(["a", "b.c"]);
                }
                q
            },
        )
}

/// A value at `a` or `b.c` for the string-equality plan: strings (some that look like
/// JSON), numbers, booleans, objects and arrays holding them.
fn eq_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["x", "y", "{\"c\":1}", "[1]", "1", "true", ""])
            .prop_map(Value::from),
        Just(json!(1)),
        Just(json!(true)),
        Just(Value::Null),
        Just(json!({"c": 1})),
    ];
    prop_oneof![
        leaf.clone(),
        prop::collection::vec(leaf, 0..3).prop_map(Value::from),
    ]
}

fn eq_query() -> impl Strategy<Value = Query> {
    let operand = prop::sample::select(vec!["x", "y", "{\"c\":1}", "[1]", "1", "", "z"]);
    (
        prop::sample::select(vec!["a", "b.c"]),
        prop::collection::vec(operand, 1..3),
        any::<bool>(),
        prop::option::of(0u64..4),
        prop::option::of(0u64..3),
    )
        .prop_map(|(path, operands, single, limit, offset)| {
            let mut q = if single {
                Query::filter(field(path).eq(operands[0]))
            } else {
                Query::filter(field(path).is_in(operands))
            };
            q.limit = limit;
            q.offset = offset;
            q
        })
}

/// Counting groups, pushed to SQL when exact, agrees with the evaluator's pipeline.
async fn check_groups(docs: Vec<Value>, path: &str, then_limit: Option<u64>) -> Result<()> {
    let store = SqliteStorage::<Value>::open(SqliteConfig::memory().read_pool_size(1)).await?;
    let entries: Vec<(String, Value)> = docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("k{i:02}"), d))
        .collect();
    store.set_many(entries.clone()).await?;
    let mut pipeline = vec![AggregateStage::group_by(path).count("n").count("m")];
    if let Some(l) = then_limit {
        pipeline.push(AggregateStage::Limit(l));
    }
    let expected = storage_core::query::aggregate(&pipeline, entries.iter().map(|(_, v)| v))?;
    let got = store.aggregate(&pipeline).await?;
    assert_eq!(got, expected, "pipeline {pipeline:?}");
    Ok(())
}

/// Runs one differential case on a fresh runtime, a failure failing the proptest case.
fn run(
    case: impl std::future::Future<Output = Result<()>>,
) -> std::result::Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(case)
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48)))]

    /// Whatever runs in SQL, results equal the reference evaluator's.
    #[test]
    fn queries_agree_with_the_evaluator(
        docs in prop::collection::vec(doc(), 0..24),
        queries in prop::collection::vec(query(), 1..8),
        indexed in any::<bool>(),
    ) {
        run(check(docs, queries, indexed))?;
    }

    /// Indexed numeric ranges, run exactly in SQL when no entry has an array on the
    /// path, equal the evaluator's answers.
    #[test]
    fn indexed_ranges_agree_with_the_evaluator(
        docs in prop::collection::vec(
            prop_oneof![
                scalar().prop_map(|a| json!({"a": a, "b": {"c": 1}})),
                Just(json!({"b": 2})),
                doc(),
            ],
            0..24,
        ),
        queries in prop::collection::vec(range_query(), 1..8),
    ) {
        run(check(docs, queries, true))?;
    }

    /// String equality on an indexed path, answered by the index with entries holding
    /// arrays checked in process, equals the evaluator's answers.
    #[test]
    fn indexed_string_equality_agrees_with_the_evaluator(
        docs in prop::collection::vec(
            (eq_value(), prop_oneof![
                eq_value().prop_map(|c| json!({"c": c})),
                prop::collection::vec(eq_value().prop_map(|c| json!({"c": c})), 0..3)
                    .prop_map(Value::from),
            ])
                .prop_map(|(a, b)| json!({"a": a, "b": b})),
            0..24,
        ),
        queries in prop::collection::vec(eq_query(), 1..8),
    ) {
        run(check(docs, queries, true))?;
    }

    /// Group counts equal the evaluator's, whether SQL or the evaluator computed them.
    #[test]
    fn group_counts_agree_with_the_evaluator(
        docs in prop::collection::vec(prop_oneof![doc(), scalar().prop_map(|a| json!({"a": a}))], 0..24),
        path in prop::sample::select(vec!["a", "b.c", "a.0", "missing", "b"]),
        then_limit in prop::option::of(0u64..3),
    ) {
        run(check_groups(docs, path, then_limit))?;
    }
}
