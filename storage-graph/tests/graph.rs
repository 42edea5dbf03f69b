//! Behaviour of `GraphStorage` against a real FalkorDB server that this test
//! binary starts (on a private Unix socket) and stops when it exits.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use storage_core::{BatchStorage, ErrorCode, Operation, Result, Storage};
use storage_graph::{EmbeddedServer, GraphConfig, GraphStorage};

fn server() -> &'static EmbeddedServer {
    static SERVER: OnceLock<EmbeddedServer> = OnceLock::new();
    SERVER.get_or_init(|| match EmbeddedServer::start() {
        Ok(server) => server,
        Err(e) => panic!("the graph tests need a FalkorDB server: {e}"),
    })
}

/// A config for a fresh graph on the shared test server.
fn fresh_config() -> GraphConfig {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    GraphConfig {
        url: Some(server().url().to_owned()),
        database: format!("test_{}_{n}", std::process::id()),
        ..GraphConfig::default()
    }
}

async fn open<T: storage_core::StorageValue>() -> Result<GraphStorage<T>> {
    GraphStorage::open(fresh_config()).await
}

/// A plain Redis connection to the shared test server, for what only a test does:
/// rewriting nodes as earlier builds wrote them, reading or dropping the hint.
async fn raw_connection() -> Result<redis::aio::MultiplexedConnection> {
    let backend = |e: redis::RedisError| {
        storage_core::StorageError::new(ErrorCode::ConnectionFailed, e.to_string())
    };
    redis::Client::open(server().url())
        .map_err(backend)?
        .get_multiplexed_async_connection()
        .await
        .map_err(backend)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: i64,
    tags: Vec<String>,
}

#[tokio::test]
async fn set_get_delete_round_trip() -> Result<()> {
    let store = open::<User>().await?;
    assert_eq!(store.get("missing").await?, None);
    let alice = User {
        name: "Alice".into(),
        age: 31,
        tags: vec!["a".into()],
    };
    store.set("user:1", &alice).await?;
    assert_eq!(store.get("user:1").await?, Some(alice.clone()));
    assert!(store.has("user:1").await?);
    assert_eq!(store.size().await?, 1);
    let older = User { age: 32, ..alice };
    store.set("user:1", &older).await?;
    assert_eq!(store.get("user:1").await?, Some(older));
    assert_eq!(store.size().await?, 1);
    assert!(store.delete("user:1").await?);
    assert!(!store.delete("user:1").await?);
    assert!(!store.has("user:1").await?);
    Ok(())
}

#[tokio::test]
async fn integer_edges_and_nul_bytes_round_trip_exactly() -> Result<()> {
    let store = open::<serde_json::Value>().await?;
    let values = [
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!(i64::MAX),
        serde_json::json!({"n": u64::MAX, "m": i64::MIN, "s": "a\u{0}b"}),
        serde_json::json!("nul \u{0} inside"),
        serde_json::json!("quote ' backslash \\ backtick ` newline \n"),
        serde_json::json!(1.5e300),
    ];
    for (i, value) in values.iter().enumerate() {
        store.set(&format!("k{i}"), value).await?;
    }
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            store.get(&format!("k{i}")).await?.as_ref(),
            Some(value),
            "k{i}"
        );
    }
    let typed = open::<(u64, i64, String)>().await?;
    let edge = (u64::MAX, i64::MIN, "x\0y".to_owned());
    typed.set("edge", &edge).await?;
    assert_eq!(typed.get("edge").await?, Some(edge));
    Ok(())
}

#[tokio::test]
async fn injection_strings_are_data_not_cypher() -> Result<()> {
    let store = open::<String>().await?;
    store.set("bystander", &"still here".to_owned()).await?;
    let evil = [
        "'}) MATCH (n) DETACH DELETE n //",
        "\"}) MATCH (n) DETACH DELETE n //",
        "x` }) DETACH DELETE n //",
        "\\'; MATCH (n) DELETE n",
        "$p0",
        "CYPHER p0='x' MATCH (n) DELETE n",
    ];
    for key in evil {
        store.set(key, &key.to_owned()).await?;
        assert_eq!(store.get(key).await?.as_deref(), Some(key));
    }
    assert_eq!(store.size().await?, 1 + evil.len() as u64);
    for key in evil {
        assert!(store.delete(key).await?);
    }
    assert_eq!(store.get("bystander").await?.as_deref(), Some("still here"));
    assert_eq!(store.size().await?, 1);
    Ok(())
}

#[tokio::test]
async fn keys_iterate_in_byte_order_across_pages() -> Result<()> {
    let store = open::<u32>().await?;
    let mut expected: Vec<String> = ["b", "Z", "é", "z", "😀", "\u{ffff}", "a b", "A", "a"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for i in 0..2100u32 {
        expected.push(format!("n{i:05}"));
    }
    let entries: Vec<(String, u32)> = expected.iter().cloned().zip(0..).collect();
    store.set_many(entries.clone()).await?;
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let keys: Vec<String> = store.keys().try_collect().await?;
    assert_eq!(keys, expected);
    let got: BTreeMap<String, u32> = store.entries().try_collect().await?;
    assert_eq!(got, entries.into_iter().collect());
    Ok(())
}

#[tokio::test]
async fn clear_only_touches_its_own_label() -> Result<()> {
    let config = fresh_config();
    let users = GraphStorage::<u32>::open(GraphConfig {
        label: "User".into(),
        ..config.clone()
    })
    .await?;
    let orders = GraphStorage::<u32>::open(GraphConfig {
        label: "Order".into(),
        ..config
    })
    .await?;
    users.set("a", &1).await?;
    orders.set("a", &2).await?;
    users.clear().await?;
    assert_eq!(users.size().await?, 0);
    assert_eq!(orders.get("a").await?, Some(2));
    Ok(())
}

#[tokio::test]
async fn batch_is_atomic_and_counts() -> Result<()> {
    let store = open::<u32>().await?;
    store.set("old", &0).await?;
    let result = store
        .batch(vec![
            Operation::set("a", 1),
            Operation::set("b", 2),
            Operation::delete("a"),
            Operation::delete("nope"),
            Operation::delete("old"),
            Operation::set("c", 3),
        ])
        .await?;
    assert_eq!(result.operations, 6);
    assert_eq!(result.deleted, 2);
    let all: BTreeMap<String, u32> = store.entries().try_collect().await?;
    assert_eq!(all, BTreeMap::from([("b".into(), 2), ("c".into(), 3)]));

    let result = store
        .batch(vec![
            Operation::set("x", 9),
            Operation::Clear,
            Operation::set("y", 8),
        ])
        .await?;
    assert_eq!(result.cleared, 3);
    let all: BTreeMap<String, u32> = store.entries().try_collect().await?;
    assert_eq!(all, BTreeMap::from([("y".into(), 8)]));

    let err = store
        .batch(vec![Operation::set("ok", 1), Operation::set("", 2)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidKey);
    assert!(!store.has("ok").await?);
    assert_eq!(store.delete_many(&["y".into(), "zz".into()]).await?, 1);
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn invalid_keys_are_rejected() -> Result<()> {
    let store = open::<u32>().await?;
    for key in ["", "a\0b", &"k".repeat(1025)] {
        assert_eq!(
            store.set(key, &1).await.unwrap_err().code(),
            ErrorCode::InvalidKey
        );
        assert_eq!(
            store.get(key).await.unwrap_err().code(),
            ErrorCode::InvalidKey
        );
    }
    let longest = "k".repeat(1024);
    store.set(&longest, &1).await?;
    assert_eq!(store.get(&longest).await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn a_large_batch_is_one_query() -> Result<()> {
    let store = open::<serde_json::Value>().await?;
    let rows: Vec<(String, serde_json::Value)> = (0..10_000)
        .map(|i| {
            (
                format!("row:{i:05}"),
                serde_json::json!({"i": i, "name": format!("n{i}")}),
            )
        })
        .collect();
    store.set_many(rows).await?;
    assert_eq!(store.size().await?, 10_000);
    let got = store.get_many(&["row:00042".into(), "nope".into()]).await?;
    assert_eq!(got.len(), 1);
    Ok(())
}

/// Batches of 2,048 operations and more are encoded in two halves on two threads, and
/// their change entry framed beside the query: the result is the sequential one.
#[tokio::test]
async fn large_batches_encode_in_halves_as_one_batch() -> Result<()> {
    use storage_core::{ObservableStorage, WatchEvent, WatchPattern};
    let store = open::<serde_json::Value>().await?;
    let ops = |n: usize| -> Vec<Operation<serde_json::Value>> {
        (0..n)
            .map(|i| Operation::set(format!("k{i:05}"), serde_json::json!({"i": i, "s": "x"})))
            .collect()
    };
    // The first bad operation is reported, whichever half holds it; nothing is applied.
    for bad in [[3000, 3500], [1000, 3000]] {
        let mut batch = ops(4000);
        batch[bad[0]] = Operation::set("", serde_json::json!(0));
        batch[bad[1]] = Operation::set("a\0b", serde_json::json!(0));
        let err = store.batch(batch).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidKey);
        assert_eq!(
            err.context_value("index"),
            Some(bad[0].to_string().as_str())
        );
        assert_eq!(store.size().await?, 0);
    }
    let mut sub = store.watch(WatchPattern::All, 4)?;
    let mut batch = ops(4000);
    // The same key twice, once in each half: the later value wins.
    batch[3999] = Operation::set("k00007", serde_json::json!({"i": "last"}));
    store.batch(batch).await?;
    assert_eq!(store.size().await?, 3999);
    assert_eq!(
        store.get("k00007").await?,
        Some(serde_json::json!({"i": "last"}))
    );
    assert_eq!(
        store.get("k03998").await?,
        Some(serde_json::json!({"i": 3998, "s": "x"}))
    );
    let Ok(Some(WatchEvent::Changes(changes))) = next_event(&mut sub).await else {
        panic!("no change batch");
    };
    let keys: Vec<&str> = changes.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys.len(), 4000);
    assert_eq!(
        (keys[0], keys[3998], keys[3999]),
        ("k00000", "k03998", "k00007")
    );
    // The first batch found the label empty and only created; this one finds nodes and
    // upserts the keys it shares with them, creating the rest.
    let again: Vec<Operation<serde_json::Value>> = (2000..6000)
        .map(|i| {
            Operation::set(
                format!("k{i:05}"),
                serde_json::json!({"i": i, "again": true}),
            )
        })
        .collect();
    store.batch(again).await?;
    assert_eq!(store.size().await?, 6000);
    assert_eq!(
        store.get("k00007").await?,
        Some(serde_json::json!({"i": "last"}))
    );
    for i in [2000, 3999, 5999] {
        assert_eq!(
            store.get(&format!("k{i:05}")).await?,
            Some(serde_json::json!({"i": i, "again": true}))
        );
    }
    Ok(())
}

#[tokio::test]
async fn blank_and_padded_keys_are_distinct_entries() -> Result<()> {
    let store = open::<u32>().await?;
    let keys = ["a", " a", "a ", "   ", " ", "\t", "A"];
    for (i, key) in keys.iter().enumerate() {
        store.set(key, &u32::try_from(i).unwrap()).await?;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.get(key).await?,
            Some(u32::try_from(i).unwrap()),
            "{key:?}"
        );
    }
    assert_eq!(store.size().await?, keys.len() as u64);
    assert!(store.delete("   ").await?);
    assert_eq!(store.get(" ").await?, Some(4));
    Ok(())
}

#[tokio::test]
async fn hostile_field_paths_never_reach_the_query_body() -> Result<()> {
    use storage_core::query::field;
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage, Query, QueryableStorage};
    let store = open::<serde_json::Value>().await?;
    let evil = "a`}) MATCH (n) DETACH DELETE n //";
    store
        .set(
            "doc",
            &serde_json::json!({ evil: 1, "plain": "x", "b`c": {"d": 2} }),
        )
        .await?;
    store
        .set("other", &serde_json::json!({"plain": "y"}))
        .await?;
    for path in [evil, "b`c.d", "plain`) DETACH DELETE n //"] {
        let found = store.find_many(&Query::filter(field(path).gte(0))).await?;
        assert!(found.len() <= 1, "{path}");
        let plan = store.explain(&Query::filter(field(path).eq(1))).await?;
        assert!(
            !plan.pushed_down.iter().any(|p| p.contains("DETACH")),
            "{plan:?}"
        );
    }
    let found = store.find_many(&Query::filter(field(evil).eq(1))).await?;
    assert_eq!(found.len(), 1);
    let err = store
        .create_index(IndexDefinition::new("evil", evil, IndexKind::Btree))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert_eq!(store.size().await?, 2);
    Ok(())
}

#[tokio::test]
async fn queries_push_a_pre_filter_and_explain_says_so() -> Result<()> {
    use storage_core::query::field;
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage, Query, QueryableStorage};
    let store = open::<serde_json::Value>().await?;
    for i in 0..50 {
        store
            .set(
                &format!("u{i:02}"),
                &serde_json::json!({"age": i, "name": format!("n{i}"), "tags": ["t", i]}),
            )
            .await?;
    }
    let query = Query::filter(field("age").gte(40));
    assert_eq!(store.count(&query).await?, 10);
    let plan = store.explain(&query).await?;
    assert!(
        plan.pushed_down
            .iter()
            .any(|p| p.contains("exact in cypher")),
        "{plan:?}"
    );
    assert!(plan.full_scan);
    // Ordered and paged: Cypher orders and keeps the first `offset + limit`.
    let paged = Query::filter(field("age").gte(10))
        .order_by("age", storage_core::Direction::Desc)
        .offset(2)
        .limit(3);
    let plan = store.explain(&paged).await?;
    assert!(
        plan.pushed_down
            .iter()
            .any(|p| p.contains("order_by, offset and limit: the first 5")),
        "{plan:?}"
    );
    assert!(
        plan.backend_plan.iter().any(|l| l.contains("Sort")),
        "{plan:?}"
    );
    let keys: Vec<String> = store
        .find_many(&paged)
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["u47", "u46", "u45"]);
    store
        .create_index(IndexDefinition::new("by_name", "name", IndexKind::Hash))
        .await?;
    let by_name = Query::filter(field("name").eq("n7"));
    let plan = store.explain(&by_name).await?;
    assert_eq!(plan.index.as_deref(), Some("by_name"));
    assert!(
        plan.backend_plan.iter().any(|l| l.contains("Index")),
        "{plan:?}"
    );
    let found = store.find_many(&by_name).await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, "u07");
    // A numeric range on a btree index is answered from the index.
    store
        .create_index(IndexDefinition::new("by_age", "age", IndexKind::Btree))
        .await?;
    let window = Query::filter(field("age").gte(20).and(field("age").lt(30)))
        .order_by("age", storage_core::Direction::Asc)
        .limit(4);
    let plan = store.explain(&window).await?;
    assert_eq!(plan.index.as_deref(), Some("by_age"), "{plan:?}");
    assert!(!plan.full_scan);
    assert!(
        plan.backend_plan
            .iter()
            .filter(|l| l.contains("Node By Index Scan"))
            .count()
            >= 2,
        "both the range and the opaque nodes come from indexes: {plan:?}"
    );
    assert!(
        !plan.backend_plan.iter().any(|l| l.contains("Label Scan")),
        "{plan:?}"
    );
    let keys: Vec<String> = store
        .find_many(&window)
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["u20", "u21", "u22", "u23"]);
    assert_eq!(
        store
            .count(&Query::filter(
                field("age").gte(20).and(field("age").lt(30))
            ))
            .await?,
        10
    );
    // Array fields are opaque to Cypher and still match through the evaluator.
    assert_eq!(store.count(&Query::filter(field("tags").eq(3))).await?, 1);
    Ok(())
}

#[tokio::test]
async fn transactions_are_serializable_and_conflicts_are_retryable() -> Result<()> {
    use storage_core::{IsolationLevel, TransactionOptions, TransactionalStorage};
    let store = open::<i64>().await?;
    store.set("x", &1).await?;
    let t1 = store.begin(TransactionOptions::new()).await?;
    assert_eq!(t1.isolation(), IsolationLevel::Serializable);
    assert_eq!(t1.get("x").await?, Some(1));
    t1.set("x", &2).await?;
    assert_eq!(
        t1.get("x").await?,
        Some(2),
        "a transaction sees its own writes"
    );
    assert_eq!(store.get("x").await?, Some(1), "others do not");
    t1.savepoint("sp").await?;
    t1.set("y", &3).await?;
    t1.rollback_to("sp").await?;
    assert_eq!(t1.get("y").await?, None);

    // A concurrent write makes the commit (or the next read) a retryable conflict.
    store.set("z", &9).await?;
    let err = t1.commit().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionConflict);
    assert!(err.is_retryable());
    assert_eq!(store.get("x").await?, Some(1));

    let t2 = store.begin(TransactionOptions::new()).await?;
    t2.set("x", &5).await?;
    assert!(t2.delete("z").await?);
    t2.commit().await?;
    assert_eq!(store.get("x").await?, Some(5));
    assert_eq!(store.get("z").await?, None);
    Ok(())
}

async fn next_event<T: storage_core::StorageValue>(
    sub: &mut storage_core::Subscription<T>,
) -> std::result::Result<Option<storage_core::WatchEvent<T>>, tokio::time::error::Elapsed> {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(5), sub.next()).await
}

#[tokio::test]
async fn watchers_on_other_handles_see_commits_and_resume_from_a_token() -> Result<()> {
    use storage_core::{ObservableStorage, WatchEvent, WatchPattern};
    let config = fresh_config();
    let writer = GraphStorage::<u32>::open(config.clone()).await?;
    let reader = GraphStorage::<u32>::open(config).await?;
    let mut sub = reader.watch(WatchPattern::All, 16)?;
    writer.set("a", &1).await?;
    writer
        .batch(vec![Operation::set("b", 2), Operation::delete("a")])
        .await?;
    let Ok(Some(WatchEvent::Changes(first))) = next_event(&mut sub).await else {
        panic!("no first batch");
    };
    assert_eq!(first.changes.len(), 1);
    assert_eq!(first.changes[0].new_value.as_deref(), Some(&1));
    let Ok(Some(WatchEvent::Changes(second))) = next_event(&mut sub).await else {
        panic!("no second batch");
    };
    assert_eq!(second.changes.len(), 2);
    assert!(second.sequence > first.sequence);

    // A watcher that stopped after the first batch resumes from its token.
    let token = first.resume_token.clone().unwrap();
    let mut resumed = reader.watch_from(WatchPattern::All, 16, &token)?;
    let Ok(Some(WatchEvent::Changes(again))) = next_event(&mut resumed).await else {
        panic!("no resumed batch");
    };
    assert_eq!(again.resume_token, second.resume_token);
    Ok(())
}

#[tokio::test]
async fn relationships_carry_exact_properties_and_reject_hostile_types() -> Result<()> {
    use storage_graph::{EdgeDirection, GraphExt};
    let store = open::<u32>().await?;
    store.set("a", &1).await?;
    store.set("b b", &2).await?;
    let props = serde_json::json!({"big": u64::MAX, "nul": "x\u{0}y"});
    store.link("a", "KNOWS", "b b", props.clone()).await?;
    let out = store
        .neighbours("a", Some("KNOWS"), EdgeDirection::Outgoing)
        .await?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].properties, props);
    assert!(out[0].outgoing);
    let back = store
        .neighbours("b b", None, EdgeDirection::Incoming)
        .await?;
    assert_eq!(back[0].key, "a");
    let err = store
        .link(
            "a",
            "X]->() MATCH (n) DETACH DELETE n //",
            "b b",
            serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidQuery);
    let err = store
        .link("a", "KNOWS", "missing", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::KeyNotFound);
    assert!(store.unlink("a", "KNOWS", "b b").await?);
    assert!(!store.unlink("a", "KNOWS", "b b").await?);
    assert_eq!(store.size().await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_store_without_url_starts_and_stops_its_own_server() -> Result<()> {
    let store = GraphStorage::<u32>::open(GraphConfig::default()).await?;
    store.set("k", &7).await?;
    assert_eq!(store.get("k").await?, Some(7));
    assert!(store.url().starts_with("unix://"));
    assert!(!storage_core::Storage::capabilities(&store).persistent);
    Ok(())
}

#[tokio::test]
async fn counts_in_cypher_agree_with_the_evaluator_on_mixed_shapes() -> Result<()> {
    use storage_core::query::{and, field, not, or};
    use storage_core::{Query, QueryableStorage};
    let store = open::<serde_json::Value>().await?;
    let docs = [
        serde_json::json!({"a": 1, "s": "x"}),
        serde_json::json!({"a": 1.0, "s": " x"}),
        serde_json::json!({"a": [1, 2], "s": "y"}),
        serde_json::json!({"a": null}),
        serde_json::json!({"a": u64::MAX, "s": "x\u{0}"}),
        serde_json::json!({"a": {"b": 1}, "s": true}),
        serde_json::json!({"s": 5}),
        serde_json::json!([1, 2]),
        serde_json::json!("scalar"),
        serde_json::json!({"a": "1", "s": "z"}),
    ];
    for (i, doc) in docs.iter().enumerate() {
        store.set(&format!("d{i}"), doc).await?;
    }
    let filters = [
        field("a").eq(1),
        field("a").ne(1),
        field("a").gt(0),
        field("s").lte("x"),
        field("s").is_in([serde_json::json!("x"), serde_json::json!(5)]),
        field("s").not_in([serde_json::json!("x")]),
        not(field("a").eq(1)),
        or(vec![field("a").eq(2), not(field("s").eq("y"))]),
        and(vec![field("a").gte(1), not(field("s").gt("x"))]),
        field("a.b").eq(1),
    ];
    for filter in filters {
        let query = Query::filter(filter.clone());
        let counted = store.count(&query).await?;
        let found = store.find_many(&query).await?.len() as u64;
        let all: Vec<(String, serde_json::Value)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("d{i}"), d.clone()))
            .collect();
        let reference =
            storage_core::query::count(&query, all.iter().map(|(k, d)| (k.as_str(), d)))?;
        assert_eq!(counted, reference, "count {filter:?}");
        assert_eq!(found, reference, "find {filter:?}");
    }
    Ok(())
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn tls_without_the_feature_is_refused_not_downgraded() {
    let config = GraphConfig {
        url: Some("rediss://127.0.0.1:1".into()),
        ..GraphConfig::default()
    };
    let err = GraphStorage::<u32>::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert!(err.message().contains("tls"));
}

#[tokio::test]
async fn a_dropped_connection_fails_one_call_then_recovers() -> Result<()> {
    // Its own server: killing connections on the shared one would hit other tests.
    let own = EmbeddedServer::start()?;
    let store = GraphStorage::<u32>::open(GraphConfig {
        url: Some(own.url().to_owned()),
        ..GraphConfig::default()
    })
    .await?;
    store.set("k", &1).await?;
    let client = redis::Client::open(own.url())
        .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
    // Kills every other client's connection, this store's among them.
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await
        .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
    let mut answered = None;
    for _ in 0..3 {
        match store.get("k").await {
            Ok(v) => {
                answered = v;
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert_eq!(answered, Some(1));
    Ok(())
}

#[tokio::test]
async fn a_unique_index_made_through_one_handle_binds_the_others() -> Result<()> {
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage};
    let config = fresh_config();
    let a = GraphStorage::<serde_json::Value>::open(config.clone()).await?;
    let b = GraphStorage::<serde_json::Value>::open(config).await?;
    b.set("x", &serde_json::json!({"email": "e@x"})).await?;
    a.create_index(IndexDefinition::new("by_email", "email", IndexKind::Hash).unique())
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = b
        .set("y", &serde_json::json!({"email": "e@x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    assert!(!b.has("y").await?);
    Ok(())
}

/// Set in the child process of `a_watcher_receives_commits_made_by_another_process`.
const CHILD_URL: &str = "STORAGE_GRAPH_TEST_CHILD_URL";
const CHILD_GRAPH: &str = "STORAGE_GRAPH_TEST_CHILD_GRAPH";

#[tokio::test]
async fn a_watcher_receives_commits_made_by_another_process() -> Result<()> {
    use storage_core::{ObservableStorage, WatchEvent, WatchPattern};
    if let (Ok(url), Ok(graph)) = (std::env::var(CHILD_URL), std::env::var(CHILD_GRAPH)) {
        // The child: another process writing through its own handle.
        let store = GraphStorage::<u32>::open(GraphConfig {
            url: Some(url),
            database: graph,
            ..GraphConfig::default()
        })
        .await?;
        store.set("from-child", &42).await?;
        store
            .batch(vec![Operation::set("a", 1), Operation::set("b", 2)])
            .await?;
        return Ok(());
    }
    let config = fresh_config();
    let watcher = GraphStorage::<u32>::open(config.clone()).await?;
    let mut sub = watcher.watch(WatchPattern::All, 16)?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "a_watcher_receives_commits_made_by_another_process",
            "--quiet",
        ])
        .env(CHILD_URL, server().url())
        .env(CHILD_GRAPH, &config.database)
        .stdout(std::process::Stdio::null())
        .status()?;
    assert!(status.success(), "the writer process failed");
    let Ok(Some(WatchEvent::Changes(first))) = next_event(&mut sub).await else {
        panic!("no batch from the other process");
    };
    assert_eq!(first.changes[0].key, "from-child");
    assert_eq!(first.changes[0].new_value.as_deref(), Some(&42));
    let Ok(Some(WatchEvent::Changes(second))) = next_event(&mut sub).await else {
        panic!("no second batch from the other process");
    };
    let keys: Vec<&str> = second.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn unique_checks_read_only_candidates_and_still_see_unstamped_nodes() -> Result<()> {
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage};
    let config = fresh_config();
    let a = GraphStorage::<serde_json::Value>::open(config.clone()).await?;
    let stale = GraphStorage::<serde_json::Value>::open(config).await?;
    for i in 0..50 {
        a.set(
            &format!("u{i}"),
            &serde_json::json!({"email": format!("e{i}"), "tags": [i, "t"]}),
        )
        .await?;
    }
    a.create_index(IndexDefinition::new("by_email", "email", IndexKind::Hash).unique())
        .await?;
    a.create_index(IndexDefinition::new("by_tag", "tags", IndexKind::Hash).unique())
        .await
        .unwrap_err();
    // `stale` has not looked at the indexes since before they existed: its next write
    // (within the refresh second) is stamped with the old epoch and no terms...
    stale
        .set("late", &serde_json::json!({"email": "late@x"}))
        .await?;
    // ...which a checked write still finds by reading that node's document.
    let err = a
        .set("again", &serde_json::json!({"email": "late@x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    let err = a
        .set("dup", &serde_json::json!({"email": "e7"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    // Overwriting an entry with its own value, moving a value, and freeing one all work.
    a.set("u7", &serde_json::json!({"email": "e7", "n": 1}))
        .await?;
    a.set("u8", &serde_json::json!({"email": "moved"})).await?;
    a.set("dup", &serde_json::json!({"email": "e8"})).await?;
    assert!(a.drop_index("by_email").await?);
    a.set("free", &serde_json::json!({"email": "e7"})).await?;
    Ok(())
}

/// Batches of sets take one of three shapes (all keys new: plain creates; some exist:
/// a per-row upsert; rows too different for columns: map rows); each must write
/// exactly the documents given, keep one node per key and keep relationships.
#[tokio::test]
async fn batches_create_or_upsert_exactly_in_every_shape() -> Result<()> {
    use serde_json::json;
    use storage_core::query::field;
    use storage_core::{Query, QueryableStorage};
    use storage_graph::{EdgeDirection, GraphExt};
    let store = open::<serde_json::Value>().await?;
    // All new, column form, with opaque values, missing fields and nested objects.
    let first: Vec<(String, serde_json::Value)> = (0..40)
        .map(|i| {
            let doc = match i % 4 {
                0 => json!({"n": i, "s": format!("s{i}"), "o": {"x": i}}),
                1 => json!({"n": i, "tags": [i, "t"], "big": u64::MAX}),
                2 => json!({"n": i, "s": null, "nul": "a\u{0}b"}),
                _ => json!({"s": format!("s{i}"), "f": 0.5}),
            };
            (format!("k{i:02}"), doc)
        })
        .collect();
    store.set_many(first.clone()).await?;
    store.link("k00", "NEXT", "k01", json!({"w": 1})).await?;
    assert_eq!(store.size().await?, 40);
    for (k, v) in &first {
        assert_eq!(store.get(k).await?.as_ref(), Some(v), "{k}");
    }
    assert_eq!(store.count(&Query::filter(field("o.x").eq(8))).await?, 1);
    assert_eq!(store.count(&Query::filter(field("n").gte(30))).await?, 7);

    // Half existing (changed shape: stale promoted fields must go), half new.
    let second: Vec<(String, serde_json::Value)> = (20..60)
        .map(|i| (format!("k{i:02}"), json!({"m": i, "s": format!("t{i}")})))
        .collect();
    store.set_many(second.clone()).await?;
    assert_eq!(store.size().await?, 60);
    for (k, v) in &second {
        assert_eq!(store.get(k).await?.as_ref(), Some(v), "{k}");
    }
    assert_eq!(store.count(&Query::filter(field("n").gte(20))).await?, 0);
    assert_eq!(store.count(&Query::filter(field("m").gte(20))).await?, 40);

    // Every row with its own field names: map rows instead of columns.
    let third: Vec<(String, serde_json::Value)> = (0..30)
        .map(|i| {
            let mut doc = serde_json::Map::new();
            doc.insert(format!("f{i}"), json!(i));
            (format!("k{i:02}"), serde_json::Value::Object(doc))
        })
        .chain((100..110).map(|i| (format!("k{i}"), json!({format!("g{i}"): i}))))
        .collect();
    store.set_many(third.clone()).await?;
    assert_eq!(store.size().await?, 70);
    for (k, v) in &third {
        assert_eq!(store.get(k).await?.as_ref(), Some(v), "{k}");
    }
    assert_eq!(store.count(&Query::filter(field("f7").eq(7))).await?, 1);
    assert_eq!(
        store.count(&Query::filter(field("s").exists(true))).await?,
        30
    );

    // All new and all different: map rows on the create branch.
    let fourth: Vec<(String, serde_json::Value)> = (200..230)
        .map(|i| (format!("k{i}"), json!({format!("h{i}"): i, "o": {}})))
        .collect();
    store.set_many(fourth.clone()).await?;
    assert_eq!(store.size().await?, 100);
    for (k, v) in &fourth {
        assert_eq!(store.get(k).await?.as_ref(), Some(v), "{k}");
    }
    assert_eq!(store.count(&Query::filter(field("h207").eq(207))).await?, 1);
    // Objects sort after strings: a page ordered in Cypher must not take `{}` for a
    // missing value (nodes with an object on the order path are fetched apart).
    let page = store
        .find_many(
            &Query::default()
                .order_by("o", storage_core::Direction::Desc)
                .limit(2),
        )
        .await?;
    assert_eq!(
        page.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k200", "k201"]
    );

    // Overwriting in a batch keeps the node, so its relationships survive.
    let next = store
        .neighbours("k00", Some("NEXT"), EdgeDirection::Outgoing)
        .await?;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].key, "k01");
    Ok(())
}

/// A batch goes column-wise, one list parameter per promoted property: rows sharing
/// 250 field names make a query of more than 250 parameters, which must still write
/// and upsert exactly.
#[tokio::test]
async fn wide_batches_write_one_parameter_per_column() -> Result<()> {
    use storage_core::query::field;
    use storage_core::{Query, QueryableStorage};
    let store = open::<serde_json::Value>().await?;
    let doc = |i: usize, round: usize| {
        serde_json::Value::Object(
            (0..250)
                .map(|f| (format!("f{f:03}"), serde_json::json!(i * 1000 + f + round)))
                .collect(),
        )
    };
    for round in 0..2 {
        let batch: Vec<(String, serde_json::Value)> =
            (0..5).map(|i| (format!("w{i}"), doc(i, round))).collect();
        store.set_many(batch.clone()).await?;
        assert_eq!(store.size().await?, 5);
        for (k, v) in &batch {
            assert_eq!(store.get(k).await?.as_ref(), Some(v), "{k}");
        }
        let q = Query::filter(field("f249").eq(3249 + round));
        assert_eq!(store.count(&q).await?, 1);
    }
    Ok(())
}

/// A lone set upserts in one query (create when no node matched, then `SET n = {…}`,
/// which does nothing on a new key): a new key gets one node, an existing key keeps
/// its node (and relationships) and loses the promoted fields its new value lacks.
#[tokio::test]
async fn a_lone_set_creates_once_and_replaces_in_place() -> Result<()> {
    use serde_json::json;
    use storage_core::query::field;
    use storage_core::{Query, QueryableStorage};
    use storage_graph::{EdgeDirection, GraphExt};
    let store = open::<serde_json::Value>().await?;
    store.set("a", &json!({"n": 1, "s": "one"})).await?;
    store.set("b", &json!({"n": 2})).await?;
    assert_eq!(store.size().await?, 2);
    store.link("a", "NEXT", "b", json!({})).await?;

    store.set("a", &json!({"m": 3})).await?;
    assert_eq!(store.size().await?, 2);
    assert_eq!(store.get("a").await?, Some(json!({"m": 3})));
    assert_eq!(store.count(&Query::filter(field("n").eq(1))).await?, 0);
    assert_eq!(
        store.count(&Query::filter(field("s").exists(true))).await?,
        0
    );
    assert_eq!(store.count(&Query::filter(field("m").eq(3))).await?, 1);
    let next = store
        .neighbours("a", Some("NEXT"), EdgeDirection::Outgoing)
        .await?;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].key, "b");
    Ok(())
}

/// When FalkorDB is still building an index as the wait runs out, `create_index`
/// says so with a retryable `Timeout` (never a silent success), and a retry finishes.
#[tokio::test]
async fn an_index_still_building_at_the_deadline_is_a_retryable_timeout() -> Result<()> {
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage};
    let store = open::<serde_json::Value>().await?;
    let rows: Vec<(String, serde_json::Value)> = (0..30_000)
        .map(|i| {
            let doc = serde_json::json!({"a": i, "b": format!("b{i}"), "c": i % 7, "d": -i, "e": format!("{i}e")});
            (format!("k{i}"), doc)
        })
        .collect();
    store.set_many(rows).await?;
    store.set_index_build_timeout(std::time::Duration::ZERO);
    assert_eq!(store.index_build_timeout(), std::time::Duration::ZERO);
    // A build can finish before the first look; one of five over 30,000 nodes will not.
    let mut timed_out = None;
    for field in ["a", "b", "c", "d", "e"] {
        let def = IndexDefinition::new(format!("by_{field}"), field, IndexKind::Btree);
        if let Err(e) = store.create_index(def.clone()).await {
            assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
            assert!(e.is_retryable(), "{e}");
            timed_out = Some(def);
            break;
        }
    }
    let Some(def) = timed_out else {
        panic!("every index was built before the first look");
    };
    assert!(
        !store
            .list_indexes()
            .await?
            .iter()
            .any(|i| i.definition.name == def.name),
        "a timed-out index must not be registered"
    );
    store.set_index_build_timeout(std::time::Duration::from_secs(30));
    store.create_index(def.clone()).await?;
    assert!(
        store
            .list_indexes()
            .await?
            .iter()
            .any(|i| i.definition.name == def.name)
    );
    Ok(())
}

/// A delete's change carries the value it removed (read under the commit's watch, or
/// set earlier in the same batch); a set's carries none (see the crate docs).
#[tokio::test]
async fn deletes_report_the_value_they_removed() -> Result<()> {
    use storage_core::{ChangeKind, ObservableStorage, WatchEvent, WatchPattern};
    let config = fresh_config();
    let writer = GraphStorage::<u32>::open(config.clone()).await?;
    let reader = GraphStorage::<u32>::open(config).await?;
    let mut sub = reader.watch(WatchPattern::All, 16)?;
    writer.set("a", &1).await?;
    writer.set("b", &2).await?;
    assert!(writer.delete("a").await?);
    writer
        .batch(vec![
            Operation::set("b", 3),
            Operation::delete("b"),
            Operation::delete("missing"),
        ])
        .await?;
    writer.set("c", &4).await?;
    writer.clear().await?;
    let mut batches = Vec::new();
    for _ in 0..6 {
        let Ok(Some(WatchEvent::Changes(batch))) = next_event(&mut sub).await else {
            panic!("missing batch after {}", batches.len());
        };
        batches.push(batch);
    }
    let olds = |i: usize| -> Vec<(ChangeKind, String, Option<u32>)> {
        batches[i]
            .changes
            .iter()
            .map(|c| (c.kind, c.key.clone(), c.old_value.as_deref().copied()))
            .collect()
    };
    assert_eq!(olds(0), [(ChangeKind::Set, "a".to_owned(), None)]);
    assert_eq!(olds(2), [(ChangeKind::Delete, "a".to_owned(), Some(1))]);
    assert_eq!(
        olds(3),
        [
            (ChangeKind::Set, "b".to_owned(), None),
            (ChangeKind::Delete, "b".to_owned(), Some(3)),
        ]
    );
    // A clear lists the keys it removed without their values.
    assert_eq!(olds(5), [(ChangeKind::Delete, "c".to_owned(), None)]);
    Ok(())
}

/// Strings too long to be promoted (see the crate docs) are still found, compared and
/// ordered exactly: equality, ranges and ordered pages over long, short and mixed
/// Asserts that `store`, holding exactly `rows`, answers `q` with the keys the
/// reference evaluator returns, in its order.
async fn assert_answers_as_evaluator(
    store: &GraphStorage<serde_json::Value>,
    rows: &[(String, serde_json::Value)],
    q: &storage_core::Query,
    round: usize,
) -> Result<()> {
    use storage_core::QueryableStorage;
    let expected: Vec<String> =
        storage_core::query::evaluate(q, rows.iter().map(|(k, v)| (k.as_str(), v)))?
            .into_iter()
            .map(|m| m.key)
            .collect();
    let got: Vec<String> = store
        .find_many(q)
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(got, expected, "{q:?} (round {round})");
    Ok(())
}

/// values agree with the reference evaluator, without an index and through one.
#[tokio::test]
async fn long_strings_are_queried_exactly() -> Result<()> {
    use storage_core::query::field;
    use storage_core::{
        Direction, IndexDefinition, IndexKind, IndexedStorage, Query, QueryableStorage,
    };
    let store = open::<serde_json::Value>().await?;
    let long = |c: char, n: usize| c.to_string().repeat(n);
    let texts = [
        long('b', 127),
        long('b', 128),
        long('b', 129),
        long('b', 300),
        format!("{}a", long('b', 200)),
        "b".to_owned(),
        "c".to_owned(),
        format!("{} tail", long('a', 140)),
    ];
    let rows: Vec<(String, serde_json::Value)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("k{i}"), serde_json::json!({"t": t, "n": i})))
        .collect();
    store.set_many(rows.clone()).await?;
    let probe = long('b', 129);
    let queries = [
        Query::filter(field("t").eq(probe.as_str())),
        Query::filter(field("t").ne(probe.as_str())),
        Query::filter(field("t").gt(long('b', 128).as_str())),
        Query::filter(field("t").lte(probe.as_str())),
        Query::filter(field("t").is_in([probe.as_str(), "c"])),
        Query::filter(field("t").gte("b"))
            .order_by("t", Direction::Desc)
            .limit(3),
        Query::filter(field("n").gte(0))
            .order_by("t", Direction::Asc)
            .limit(4),
    ];
    for round in 0..2 {
        for q in &queries {
            assert_answers_as_evaluator(&store, &rows, q, round).await?;
            let count = storage_core::query::count(q, rows.iter().map(|(k, v)| (k.as_str(), v)))?;
            assert_eq!(store.count(q).await?, count, "{q:?}");
        }
        store
            .create_index(IndexDefinition::new("by_t", "t", IndexKind::Btree))
            .await?;
    }
    Ok(())
}

/// Opaque values are listed in two slots and then a list (see the crate docs): nodes
/// with none, one, two, three and four of them (in batches and lone sets, overwritten
/// both ways) answer every query on those paths as the reference evaluator does.
#[tokio::test]
async fn opaque_values_are_found_in_every_slot() -> Result<()> {
    use serde_json::json;
    use storage_core::query::field;
    use storage_core::{IndexDefinition, IndexKind, IndexedStorage, Query};
    let store = open::<serde_json::Value>().await?;
    let doc = |n: usize, x: i64| {
        let mut d = json!({"a": 1, "b": 2, "c": 3, "d": 4, "x": x});
        for field in ["a", "b", "c", "d"].iter().take(n) {
            d[*field] = json!([1, 2]);
        }
        d
    };
    let mut rows: Vec<(String, serde_json::Value)> =
        (0..5).map(|n| (format!("k{n}"), doc(n, 0))).collect();
    store.set_many(rows.clone()).await?;
    // Overwrite: fewer opaque values in a batch, more in a lone set.
    rows[4] = ("k4".into(), doc(1, 1));
    rows[1] = ("k1".into(), doc(4, 1));
    store.set_many(vec![rows[4].clone()]).await?;
    store.set(&rows[1].0, &rows[1].1).await?;
    store
        .set_many(vec![
            ("k2".into(), doc(3, 2)),
            ("k3".into(), doc(2, 2)),
            ("k5".into(), doc(0, 2)),
        ])
        .await?;
    rows[2] = ("k2".into(), doc(3, 2));
    rows[3] = ("k3".into(), doc(2, 2));
    rows.push(("k5".into(), doc(0, 2)));
    let mut queries = Vec::new();
    for f in ["a", "b", "c", "d"] {
        queries.push(Query::filter(field(f).eq(2)));
        queries.push(Query::filter(field(f).ne(2)));
        queries.push(Query::filter(field(f).gte(1).and(field("x").lt(2))));
    }
    for round in 0..2 {
        for q in &queries {
            assert_answers_as_evaluator(&store, &rows, q, round).await?;
        }
        for f in ["a", "d", "x"] {
            store
                .create_index(IndexDefinition::new(format!("by_{f}"), f, IndexKind::Btree))
                .await?;
        }
    }
    Ok(())
}

/// Nodes as earlier builds wrote them still read, iterate and answer queries: the
/// first form (the key also in `key`, an `ix` stamp of 0, every opaque path in the
/// list `_o`, long strings promoted) and the next (opaque paths in the slots `_o1` and
/// `_o2` as `h` + hex strings, where this build stores numbers).
#[tokio::test]
async fn nodes_written_by_earlier_builds_still_read() -> Result<()> {
    use serde_json::json;
    use storage_core::query::field;
    use storage_core::{Query, QueryableStorage};
    let config = fresh_config();
    let store = GraphStorage::<serde_json::Value>::open(config.clone()).await?;
    let long = "w".repeat(200);
    let old = json!({"n": 1, "tags": ["x"], "body": long});
    let new = json!({"n": 2, "tags": ["y"], "body": "short"});
    let mid = json!({"n": 3, "tags": ["z"], "body": "v".repeat(200)});
    store.set(" old ", &old).await?;
    store.set("new", &new).await?;
    store.set("mid", &mid).await?;
    // Rewrite the first node in the earlier form.
    let mut conn = raw_connection().await?;
    // `h` + the hex of "tags" and of "body".
    for rewrite in [
        format!(
            "MATCH (n:Entry {{kh: '206f6c6420'}}) SET n.key = ' old ', n.ix = 0, \
             n._o = ['h74616773'], n._o1 = null, n._o2 = null, n.`.body` = '{long}'"
        ),
        "MATCH (n:Entry {kh: '6d6964'}) SET n._o1 = 'h626f6479', n._o2 = 'h74616773'".to_owned(),
    ] {
        let reply: redis::Value = redis::cmd("GRAPH.QUERY")
            .arg(&config.database)
            .arg(&rewrite)
            .query_async(&mut conn)
            .await
            .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
        assert!(format!("{reply:?}").contains("Properties set"), "{reply:?}");
    }
    assert_eq!(store.get(" old ").await?, Some(old.clone()));
    let keys: Vec<String> = store.keys().try_collect().await?;
    assert_eq!(keys, [" old ", "mid", "new"]);
    for (q, expected) in [
        (Query::filter(field("tags").eq("x")), vec![" old "]),
        (
            Query::filter(field("body").eq(long.as_str())),
            vec![" old "],
        ),
        (Query::filter(field("n").lt(2)), vec![" old "]),
        (Query::filter(field("tags").ne("x")), vec!["mid", "new"]),
        (Query::filter(field("tags").eq("z")), vec!["mid"]),
        (Query::filter(field("body").lt("w")), vec!["mid", "new"]),
    ] {
        let got: Vec<String> = store
            .find_many(&q)
            .await?
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(got, expected, "{q:?}");
        assert_eq!(
            store.count(&q).await?,
            u64::try_from(expected.len()).unwrap_or(0),
            "{q:?}"
        );
    }
    // Overwriting it writes the current form.
    store.set(" old ", &old).await?;
    assert_eq!(store.get(" old ").await?, Some(old));
    assert!(store.delete(" old ").await?);
    assert_eq!(store.size().await?, 2);
    Ok(())
}

/// Large batches of new keys skip looking each key up when the label's key range hint
/// says none of them may exist, and read the batch's key range instead. Whatever the
/// hint says, every batch creates exactly the keys that did not exist and replaces the
/// ones that did: below, between and beyond stored keys, over stored keys, after the
/// hint was dropped (a label written before it existed), and after another handle's
/// clear left this one knowing a hint that is no longer stored.
#[tokio::test]
async fn large_batches_create_new_keys_and_replace_stored_ones_whatever_the_hint_says() -> Result<()>
{
    let config = fresh_config();
    let store = GraphStorage::<u32>::open(config.clone()).await?;
    let other = GraphStorage::<u32>::open(config.clone()).await?;
    let mut conn = raw_connection().await?;
    let span_key = format!("{}::Entry::keys::span", config.database);
    let runs_key = format!("{}::Entry::keys::runs", config.database);
    let hex = |key: &str| {
        key.bytes().fold(String::new(), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        })
    };
    let hint = |conn: &mut redis::aio::MultiplexedConnection| {
        let (span_key, runs_key) = (span_key.clone(), runs_key.clone());
        let mut conn = conn.clone();
        async move {
            let read: (Vec<String>, Vec<String>) = redis::pipe()
                .cmd("ZRANGE")
                .arg(&span_key)
                .arg(0)
                .arg(-1)
                .cmd("SMEMBERS")
                .arg(&runs_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
            Ok::<_, storage_core::StorageError>(read)
        }
    };
    let batch = |prefix: &str, from: u32, n: u32, value: u32| -> Vec<(String, u32)> {
        (from..from + n)
            .map(|i| (format!("{prefix}{i:05}"), value + i))
            .collect()
    };
    let check = |rows: &[(String, u32)]| {
        let store = store.clone();
        let rows = rows.to_vec();
        async move {
            let keys: Vec<String> = rows.iter().map(|(k, _)| k.clone()).collect();
            let got = store.get_many(&keys).await?;
            for (k, v) in &rows {
                assert_eq!(got.get(k), Some(v), "{k}");
            }
            Ok::<_, storage_core::StorageError>(())
        }
    };

    // Single sets widen the span; a large batch that finds its key range empty
    // records a run of its own.
    store.set("m:00010", &1).await?;
    store.set("m:00020", &2).await?;
    assert_eq!(hint(&mut conn).await?.0, [hex("m:00010"), hex("m:00020")]);
    let (above, below, between) = (
        batch("z:", 0, 2500, 0),
        batch("a:", 0, 2500, 0),
        batch("m:", 21, 2500, 0),
    );
    for rows in [&above, &below, &between] {
        store.set_many(rows.clone()).await?;
        check(rows).await?;
    }
    assert_eq!(store.size().await?, 2 + 3 * 2500);
    let (span, mut runs) = hint(&mut conn).await?;
    runs.sort();
    assert_eq!(span, [hex("m:00010"), hex("m:00020")]);
    assert_eq!(
        runs,
        [
            format!("{} {}", hex("a:00000"), hex("a:02499")),
            format!("{} {}", hex("m:00021"), hex("m:02520")),
            format!("{} {}", hex("z:00000"), hex("z:02499")),
        ]
    );

    // Over stored keys (and one new at each end): the stored ones are replaced.
    let over = batch("m:", 0, 2600, 100_000);
    store.set_many(over.clone()).await?;
    check(&over).await?;
    assert_eq!(store.size().await?, 2 * 2500 + 2600);
    // It overlapped stored keys, so it widens the span rather than adding a run.
    let (span, runs) = hint(&mut conn).await?;
    assert_eq!(
        (span, runs.len()),
        (vec![hex("m:00000"), hex("m:02599")], 3)
    );

    // With the hint dropped, the range read finds the stored keys (nothing is
    // created twice) and the span is rebuilt from the label, then widened by the
    // batch, which overlapped stored keys.
    let _: () = redis::cmd("DEL")
        .arg(&span_key)
        .arg(&runs_key)
        .query_async(&mut conn)
        .await
        .map_err(|e| storage_core::StorageError::new(ErrorCode::Backend, e.to_string()))?;
    let again = batch("z:", 2000, 2500, 200_000);
    store.set_many(again.clone()).await?;
    check(&again).await?;
    assert_eq!(store.size().await?, 2 * 2500 + 2600 + 2000);
    assert_eq!(hint(&mut conn).await?.0, [hex("a:00000"), hex("z:04499")]);

    // Another handle clears: this one still knows the old hint, so its single set
    // inside it records nothing. A later batch over that key still replaces it.
    other.clear().await?;
    store.set("m:00500", &7).await?;
    assert_eq!(hint(&mut conn).await?, (Vec::new(), Vec::new()));
    let fresh = batch("m:", 0, 2500, 300_000);
    other.set_many(fresh.clone()).await?;
    check(&fresh).await?;
    assert_eq!(store.size().await?, 2500);
    Ok(())
}
