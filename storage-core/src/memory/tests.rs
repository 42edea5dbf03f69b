//! Behaviour tests of the memory store, one property per test.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::MemoryStorage;
use crate::capabilities::Tier;
use crate::error::{ErrorCode, Result, StorageError};
use crate::events::{AfterEvent, BeforeEvent, WatchPattern};
use crate::ext::TransactionalExt;
use crate::query::{AggregateStage, Query, field};
use crate::tiers::{
    BatchStorage, IndexedStorage, ObservableStorage, QueryableStorage, Storage,
    TransactionalStorage,
};
use crate::types::{
    ChangeKind, IndexDefinition, IndexField, IndexKind, IsolationLevel, Operation,
    TransactionOptions, TransactionState, WatchEvent,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    email: String,
    tags: Vec<String>,
    bio: String,
}

fn user(name: &str, age: u32) -> User {
    User {
        name: name.to_owned(),
        age,
        email: format!("{}@example.com", name.to_lowercase()),
        tags: vec![format!("age{}", age / 10 * 10)],
        bio: format!("{name} likes rust and storage"),
    }
}

fn fail(message: &str) -> StorageError {
    StorageError::new(ErrorCode::Backend, message.to_owned())
}

fn code<V: std::fmt::Debug>(result: Result<V>) -> ErrorCode {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

async fn keys_of<T: crate::StorageValue>(store: &dyn Storage<T>) -> Result<Vec<String>> {
    store.keys().try_collect().await
}

async fn users() -> Result<MemoryStorage<User>> {
    let store = MemoryStorage::new();
    for (i, (name, age)) in [
        ("Alice", 31),
        ("Bob", 27),
        ("Carol", 45),
        ("Dan", 27),
        ("Eve", 19),
    ]
    .into_iter()
    .enumerate()
    {
        store.set(&format!("user:{i}"), &user(name, age)).await?;
    }
    Ok(store)
}

// ---------------------------------------------------------------- Storage

#[tokio::test]
async fn get_of_missing_key_returns_none_and_set_overwrites() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    assert_eq!(store.get("k").await?, None);
    store.set("k", &1).await?;
    store.set("k", &2).await?;
    assert_eq!(store.get("k").await?, Some(2));
    assert!(store.has("k").await?);
    assert_eq!(store.size().await?, 1);
    Ok(())
}

#[tokio::test]
async fn delete_reports_whether_the_key_existed() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("k", &1).await?;
    assert!(store.delete("k").await?);
    assert!(!store.delete("k").await?);
    assert!(!store.has("k").await?);
    Ok(())
}

#[tokio::test]
async fn bad_keys_are_invalid_key_everywhere() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let long = "k".repeat(1025);
    for key in ["", "a\0b", long.as_str()] {
        assert_eq!(code(store.get(key).await), ErrorCode::InvalidKey);
        assert_eq!(code(store.set(key, &1).await), ErrorCode::InvalidKey);
        assert_eq!(code(store.delete(key).await), ErrorCode::InvalidKey);
        assert_eq!(code(store.has(key).await), ErrorCode::InvalidKey);
    }
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn iteration_is_in_ascending_byte_order() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    for (i, k) in ["b", "a", "é", "Z", "aa", "~"].iter().enumerate() {
        store
            .set(k, &i64::try_from(i).map_err(|_| fail("i"))?)
            .await?;
    }
    assert_eq!(keys_of(&store).await?, ["Z", "a", "aa", "b", "~", "é"]);
    let values: Vec<i64> = store.values().try_collect().await?;
    assert_eq!(values, [3, 1, 4, 0, 5, 2]);
    let entries: Vec<(String, i64)> = store.entries().try_collect().await?;
    assert_eq!(entries[0], ("Z".to_owned(), 3));
    Ok(())
}

#[tokio::test]
async fn iteration_reads_a_snapshot() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    store.set("b", &2).await?;
    let mut keys = store.keys();
    assert_eq!(keys.next().await.transpose()?, Some("a".to_owned()));
    store.delete("b").await?;
    store.set("c", &3).await?;
    assert_eq!(keys.next().await.transpose()?, Some("b".to_owned()));
    assert_eq!(keys.next().await.transpose()?, None);
    Ok(())
}

#[tokio::test]
async fn clear_empties_the_store() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    store.set("b", &2).await?;
    store.clear().await?;
    assert_eq!(store.size().await?, 0);
    assert!(keys_of(&store).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn unencodable_value_is_invalid_value_and_stores_nothing() -> Result<()> {
    let store = MemoryStorage::<f64>::new();
    assert_eq!(
        code(store.set("nan", &f64::NAN).await),
        ErrorCode::InvalidValue
    );
    assert_eq!(
        code(store.set("inf", &f64::INFINITY).await),
        ErrorCode::InvalidValue
    );
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn max_entries_refuses_new_keys_but_allows_overwrites() -> Result<()> {
    let store = MemoryStorage::<i64>::new().with_max_entries(Some(2));
    store.set("a", &1).await?;
    store.set("b", &2).await?;
    assert_eq!(code(store.set("c", &3).await), ErrorCode::QuotaExceeded);
    store.set("a", &10).await?;
    assert_eq!(
        code(
            store
                .set_many(vec![("a".into(), 0), ("x".into(), 0), ("y".into(), 0)])
                .await
        ),
        ErrorCode::QuotaExceeded
    );
    assert_eq!(keys_of(&store).await?, ["a", "b"]);
    assert_eq!(store.get("a").await?, Some(10));
    Ok(())
}

#[tokio::test]
async fn capabilities_agree_with_accessors() -> Result<()> {
    let store: Arc<dyn Storage<i64>> = Arc::new(MemoryStorage::<i64>::new());
    let caps = store.capabilities();
    assert_eq!(caps.backend, "memory");
    assert_eq!(caps.highest_tier(), Tier::Observable);
    assert_eq!(caps.supports(Tier::Batch), store.as_batch().is_some());
    assert_eq!(
        caps.supports(Tier::Queryable),
        store.as_queryable().is_some()
    );
    assert_eq!(caps.supports(Tier::Indexed), store.as_indexed().is_some());
    assert_eq!(
        caps.supports(Tier::Transactional),
        store.as_transactional().is_some()
    );
    assert_eq!(
        caps.supports(Tier::Observable),
        store.as_observable().is_some()
    );
    assert_eq!(
        caps.supports(Tier::Distributed),
        store.as_distributed().is_some()
    );
    assert!(caps.supports_isolation(IsolationLevel::Serializable));
    assert!(caps.supports_index(IndexKind::Fulltext));
    assert!(!caps.supports_index(IndexKind::Spatial));
    assert!(caps.unique_indexes && caps.savepoints && caps.atomic_batch);
    assert!(!caps.persistent && !caps.cross_process_watch);
    assert!(Arc::clone(&store).into_observable().is_some());
    assert!(store.into_distributed().is_none());
    Ok(())
}

#[tokio::test]
async fn from_config_applies_limit_and_debug() -> Result<()> {
    let config: crate::config::MemoryConfig =
        serde_json::from_value(json!({"max_entries": 1, "debug": true}))
            .map_err(|e| fail(&e.to_string()))?;
    let store = MemoryStorage::<i64>::from_config(&config)?;
    assert_eq!(store.max_entries(), Some(1));
    store.set("a", &1).await?;
    assert_eq!(code(store.set("b", &2).await), ErrorCode::QuotaExceeded);
    Ok(())
}

#[tokio::test]
async fn debug_tracing_does_not_change_behaviour() -> Result<()> {
    let store = MemoryStorage::<i64>::new().debug(true);
    store.set("k", &1).await?;
    assert_eq!(store.get("k").await?, Some(1));
    Ok(())
}

// ---------------------------------------------------------------- Batch

#[tokio::test]
async fn batch_applies_every_operation_and_counts() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("old", &0).await?;
    let result = store
        .batch(vec![
            Operation::set("a", 1),
            Operation::set("b", 2),
            Operation::delete("old"),
            Operation::delete("missing"),
        ])
        .await?;
    assert_eq!(result.operations, 4);
    assert_eq!(result.deleted, 1);
    assert_eq!(result.cleared, 0);
    assert_eq!(keys_of(&store).await?, ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn failed_batch_applies_nothing_and_names_the_operation() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("keep", &1).await?;
    let mut ops: Vec<Operation<i64>> = (0..5).map(|i| Operation::set(format!("k{i}"), i)).collect();
    ops.insert(2, Operation::Clear);
    ops.push(Operation::set("", 9));
    let err = store
        .batch(ops)
        .await
        .err()
        .ok_or_else(|| fail("no error"))?;
    assert_eq!(err.code(), ErrorCode::InvalidKey);
    assert_eq!(err.context_value("index"), Some("6"));
    assert_eq!(keys_of(&store).await?, ["keep"]);
    Ok(())
}

#[tokio::test]
async fn batch_with_unencodable_value_applies_nothing() -> Result<()> {
    let store = MemoryStorage::<f64>::new();
    let err = store
        .batch(vec![
            Operation::set("a", 1.0),
            Operation::set("b", f64::NAN),
        ])
        .await
        .err()
        .ok_or_else(|| fail("no error"))?;
    assert_eq!(err.code(), ErrorCode::InvalidValue);
    assert_eq!(err.context_value("index"), Some("1"));
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn clear_in_a_batch_removes_earlier_writes_of_the_batch() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("x", &0).await?;
    let result = store
        .batch(vec![
            Operation::set("a", 1),
            Operation::Clear,
            Operation::set("b", 2),
        ])
        .await?;
    assert_eq!(result.cleared, 2);
    assert_eq!(keys_of(&store).await?, ["b"]);
    Ok(())
}

#[tokio::test]
async fn get_many_skips_missing_keys_and_rejects_bad_ones() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("a".into(), 1), ("b".into(), 2)])
        .await?;
    let got = store
        .get_many(&["a".into(), "zz".into(), "b".into()])
        .await?;
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [("a".into(), 1), ("b".into(), 2)]
    );
    assert_eq!(
        code(store.get_many(&["a".into(), String::new()]).await),
        ErrorCode::InvalidKey
    );
    assert_eq!(store.delete_many(&["a".into(), "nope".into()]).await?, 1);
    assert_eq!(keys_of(&store).await?, ["b"]);
    Ok(())
}

// ---------------------------------------------------------------- Transactions

fn serializable() -> TransactionOptions {
    TransactionOptions::new().isolation(IsolationLevel::Serializable)
}

#[tokio::test]
async fn transaction_sees_own_writes_and_hides_them_until_commit() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let tx = store.begin(TransactionOptions::new()).await?;
    assert_eq!(tx.isolation(), IsolationLevel::Serializable);
    tx.set("a", &2).await?;
    tx.set("b", &3).await?;
    assert!(tx.delete("a").await?);
    assert_eq!(tx.get("a").await?, None);
    assert_eq!(tx.get("b").await?, Some(3));
    assert_eq!(keys_of(tx.as_ref()).await?, ["b"]);
    assert_eq!(store.get("a").await?, Some(1));
    assert_eq!(store.get("b").await?, None);
    tx.commit().await?;
    assert_eq!(tx.state(), TransactionState::Committed);
    assert_eq!(keys_of(&store).await?, ["b"]);
    Ok(())
}

#[tokio::test]
async fn rollback_and_drop_apply_nothing() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("a", &1).await?;
    tx.rollback().await?;
    assert_eq!(tx.state(), TransactionState::Aborted);
    assert_eq!(code(tx.get("a").await), ErrorCode::TransactionAborted);
    assert_eq!(code(tx.commit().await), ErrorCode::TransactionAborted);
    {
        let tx = store.begin(TransactionOptions::new()).await?;
        tx.set("b", &1).await?;
    }
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn calls_after_commit_are_transaction_aborted() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("a", &1).await?;
    tx.commit().await?;
    assert_eq!(code(tx.set("a", &2).await), ErrorCode::TransactionAborted);
    assert_eq!(code(tx.commit().await), ErrorCode::TransactionAborted);
    assert_eq!(code(tx.rollback().await), ErrorCode::TransactionAborted);
    let first = tx.keys().next().await.ok_or_else(|| fail("empty stream"))?;
    assert_eq!(code(first), ErrorCode::TransactionAborted);
    assert_eq!(store.get("a").await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn lost_update_is_prevented() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("counter", &0).await?;
    let t1 = store.begin(serializable()).await?;
    let t2 = store.begin(serializable()).await?;
    let v1 = t1.get("counter").await?.unwrap_or(0);
    let v2 = t2.get("counter").await?.unwrap_or(0);
    t1.set("counter", &(v1 + 1)).await?;
    t2.set("counter", &(v2 + 1)).await?;
    t1.commit().await?;
    let err = t2.commit().await.err().ok_or_else(|| fail("no conflict"))?;
    assert_eq!(err.code(), ErrorCode::VersionConflict);
    assert!(err.is_retryable());
    assert_eq!(t2.state(), TransactionState::Aborted);
    assert_eq!(store.get("counter").await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn write_skew_is_prevented() -> Result<()> {
    // G2-item: both doctors read both rows, each takes one off call.
    let store = MemoryStorage::<bool>::new();
    store.set("alice", &true).await?;
    store.set("bob", &true).await?;
    let t1 = store.begin(serializable()).await?;
    let t2 = store.begin(serializable()).await?;
    for tx in [&t1, &t2] {
        assert_eq!(tx.get("alice").await?, Some(true));
        assert_eq!(tx.get("bob").await?, Some(true));
    }
    t1.set("alice", &false).await?;
    t2.set("bob", &false).await?;
    t1.commit().await?;
    assert_eq!(code(t2.commit().await), ErrorCode::VersionConflict);
    assert_eq!(store.get("bob").await?, Some(true));
    Ok(())
}

#[tokio::test]
async fn read_skew_is_prevented_by_the_snapshot() -> Result<()> {
    // G-single: T1 reads x, T2 updates x and y, T1 reads y and must see the old y.
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("x".into(), 50), ("y".into(), 50)])
        .await?;
    let t1 = store.begin(serializable()).await?;
    assert_eq!(t1.get("x").await?, Some(50));
    let t2 = store.begin(serializable()).await?;
    t2.set("x", &25).await?;
    t2.set("y", &75).await?;
    t2.commit().await?;
    assert_eq!(t1.get("y").await?, Some(50));
    t1.commit().await?;
    Ok(())
}

#[tokio::test]
async fn predicate_read_conflicts_with_a_concurrent_insert() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let t1 = store.begin(serializable()).await?;
    let total: i64 = t1.values().try_collect::<Vec<i64>>().await?.iter().sum();
    store.set("b", &1).await?;
    t1.set("total", &total).await?;
    assert_eq!(code(t1.commit().await), ErrorCode::VersionConflict);
    assert_eq!(store.get("total").await?, None);
    Ok(())
}

#[tokio::test]
async fn disjoint_transactions_both_commit() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let t1 = store.begin(serializable()).await?;
    let t2 = store.begin(serializable()).await?;
    t1.set("a", &1).await?;
    t2.set("b", &2).await?;
    t1.commit().await?;
    t2.commit().await?;
    assert_eq!(keys_of(&store).await?, ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn read_only_transaction_rejects_writes_and_still_reads() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let tx = store.begin(TransactionOptions::new().read_only()).await?;
    assert_eq!(code(tx.set("a", &2).await), ErrorCode::Unsupported);
    assert_eq!(code(tx.delete("a").await), ErrorCode::Unsupported);
    assert_eq!(code(tx.clear().await), ErrorCode::Unsupported);
    assert_eq!(tx.get("a").await?, Some(1));
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn timed_out_transaction_aborts_and_applies_nothing() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let tx = store
        .begin(TransactionOptions::new().timeout(Duration::from_millis(20)))
        .await?;
    tx.set("a", &1).await?;
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(code(tx.get("a").await), ErrorCode::TransactionAborted);
    assert_eq!(code(tx.commit().await), ErrorCode::TransactionAborted);
    assert_eq!(tx.state(), TransactionState::Aborted);
    assert_eq!(store.size().await?, 0);
    Ok(())
}

#[tokio::test]
async fn savepoints_nest_and_rollback_to_undoes_later_writes() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("a", &1).await?;
    tx.savepoint("one").await?;
    tx.set("b", &2).await?;
    tx.savepoint("two").await?;
    tx.set("c", &3).await?;
    tx.rollback_to("two").await?;
    assert_eq!(keys_of(tx.as_ref()).await?, ["a", "b"]);
    tx.rollback_to("one").await?;
    assert_eq!(keys_of(tx.as_ref()).await?, ["a"]);
    // "two" came after "one" and is gone; "one" stays.
    assert_eq!(code(tx.rollback_to("two").await), ErrorCode::KeyNotFound);
    tx.set("d", &4).await?;
    tx.rollback_to("one").await?;
    tx.commit().await?;
    assert_eq!(keys_of(&store).await?, ["a"]);
    Ok(())
}

#[tokio::test]
async fn clear_in_a_transaction_hides_everything_until_rollback_to() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.savepoint("before").await?;
    tx.clear().await?;
    assert_eq!(tx.size().await?, 0);
    assert_eq!(tx.get("a").await?, None);
    tx.rollback_to("before").await?;
    assert_eq!(tx.get("a").await?, Some(1));
    tx.clear().await?;
    tx.set("b", &2).await?;
    tx.commit().await?;
    assert_eq!(keys_of(&store).await?, ["b"]);
    Ok(())
}

#[tokio::test]
async fn transaction_helper_retries_conflicts_until_every_increment_lands() -> Result<()> {
    let store = Arc::new(MemoryStorage::<i64>::new());
    store.set("n", &0).await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .transaction(TransactionOptions::new().retries(1000), |tx| async move {
                    let n = tx.get("n").await?.unwrap_or(0);
                    tokio::task::yield_now().await;
                    tx.set("n", &(n + 1)).await
                })
                .await
        }));
    }
    for task in tasks {
        task.await.map_err(|e| fail(&e.to_string()))??;
    }
    assert_eq!(store.get("n").await?, Some(8));
    Ok(())
}

// ---------------------------------------------------------------- Indexes and queries

async fn indexed_users() -> Result<MemoryStorage<User>> {
    let store = users().await?;
    store
        .create_index(IndexDefinition::new("by_age", "age", IndexKind::Btree))
        .await?;
    store
        .create_index(IndexDefinition::new("by_email", "email", IndexKind::Hash).unique())
        .await?;
    store
        .create_index(IndexDefinition::new("by_bio", "bio", IndexKind::Fulltext))
        .await?;
    store
        .create_index(IndexDefinition::new("by_tag", "tags", IndexKind::Hash))
        .await?;
    Ok(store)
}

async fn result_keys(store: &MemoryStorage<User>, query: &Query) -> Result<Vec<String>> {
    Ok(store
        .find_many(query)
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect())
}

#[tokio::test]
async fn indexed_queries_return_what_a_full_scan_returns() -> Result<()> {
    let plain = users().await?;
    let indexed = indexed_users().await?;
    let queries = [
        (Query::filter(field("age").eq(27)), Some("by_age")),
        (Query::filter(field("age").eq(27.0)), Some("by_age")),
        (
            Query::filter(field("age").gt(27)).order_desc("age"),
            Some("by_age"),
        ),
        (Query::filter(field("age").gte(27)), Some("by_age")),
        (Query::filter(field("age").lt(31)), Some("by_age")),
        (Query::filter(field("age").lte(31)).limit(2), Some("by_age")),
        (Query::filter(field("age").is_in([19, 45])), Some("by_age")),
        (
            Query::filter(field("email").eq("bob@example.com")),
            Some("by_email"),
        ),
        (Query::filter(field("tags").eq("age20")), Some("by_tag")),
        (
            Query::filter(field("bio").text("RUST likes")),
            Some("by_bio"),
        ),
        (
            Query::filter(field("age").gt(20).and(field("name").ne("Bob"))),
            Some("by_age"),
        ),
        (Query::filter(field("age").ne(27)), None),
        (
            Query::filter(field("age").eq(serde_json::Value::Null)),
            None,
        ),
        (Query::filter(field("age").gt("a")), Some("by_age")),
        (Query::new().order_asc("name"), None),
    ];
    for (query, index) in queries {
        let expected = result_keys(&plain, &query).await?;
        assert_eq!(result_keys(&indexed, &query).await?, expected, "{query:?}");
        assert_eq!(
            indexed.count(&query).await?,
            plain
                .count(&Query {
                    limit: None,
                    offset: None,
                    ..query.clone()
                })
                .await?
        );
        let explained = indexed.explain(&query).await?;
        assert_eq!(explained.index.as_deref(), index, "{query:?}");
        assert_eq!(explained.full_scan, index.is_none());
    }
    Ok(())
}

#[tokio::test]
async fn text_query_carries_a_score_through_the_index() -> Result<()> {
    let store = indexed_users().await?;
    let results = store
        .find_many(&Query::filter(field("bio").text("rust")))
        .await?;
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| r.score.is_some_and(|s| s > 0.0)));
    Ok(())
}

#[tokio::test]
async fn query_projects_selected_fields() -> Result<()> {
    let store = users().await?;
    let results = store
        .find_many(&Query::filter(field("name").eq("Alice")).select(["age"]))
        .await?;
    let projection = results[0]
        .projection
        .clone()
        .ok_or_else(|| fail("no projection"))?;
    assert_eq!(projection.get("age"), Some(&json!(31)));
    assert_eq!(results[0].value, user("Alice", 31));
    Ok(())
}

#[tokio::test]
async fn invalid_query_is_the_streams_first_item() -> Result<()> {
    let store = users().await?;
    let bad = Query::filter(field("name").regex("("));
    let first = store
        .query(&bad)
        .next()
        .await
        .ok_or_else(|| fail("empty"))?;
    assert_eq!(code(first), ErrorCode::InvalidQuery);
    assert_eq!(code(store.count(&bad).await), ErrorCode::InvalidQuery);
    assert_eq!(code(store.explain(&bad).await), ErrorCode::InvalidQuery);
    Ok(())
}

#[tokio::test]
async fn aggregate_groups_in_key_order() -> Result<()> {
    let store = users().await?;
    let out = store
        .aggregate(&[
            AggregateStage::matching(field("age").lt(40)),
            AggregateStage::group_by("age").count("n"),
        ])
        .await?;
    assert_eq!(
        out,
        [
            json!({"_id": 19, "n": 1}),
            json!({"_id": 27, "n": 2}),
            json!({"_id": 31, "n": 1})
        ]
    );
    Ok(())
}

#[tokio::test]
async fn create_index_is_idempotent_and_names_are_unique() -> Result<()> {
    let store = users().await?;
    let def = IndexDefinition::new("by_age", "age", IndexKind::Btree);
    store.create_index(def.clone()).await?;
    store.create_index(def).await?;
    assert_eq!(
        code(
            store
                .create_index(IndexDefinition::new("by_age", "age", IndexKind::Hash))
                .await
        ),
        ErrorCode::DuplicateKey
    );
    assert_eq!(store.list_indexes().await?.len(), 1);
    assert!(store.drop_index("by_age").await?);
    assert!(!store.drop_index("by_age").await?);
    Ok(())
}

#[tokio::test]
async fn unsupported_and_invalid_index_definitions_are_refused() -> Result<()> {
    let store = users().await?;
    assert_eq!(
        code(
            store
                .create_index(IndexDefinition::new("geo", "loc", IndexKind::Spatial))
                .await
        ),
        ErrorCode::Unsupported
    );
    let mut two = IndexDefinition::new("two", "name", IndexKind::Btree);
    two.fields.push(IndexField::new("age", IndexKind::Btree));
    assert_eq!(code(store.create_index(two).await), ErrorCode::Unsupported);
    assert_eq!(
        code(
            store
                .create_index(IndexDefinition::new("bad", "a..b", IndexKind::Btree))
                .await
        ),
        ErrorCode::InvalidQuery
    );
    assert!(store.list_indexes().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn unique_index_over_conflicting_data_is_not_created() -> Result<()> {
    let store = users().await?;
    let err = store
        .create_index(IndexDefinition::new("u_age", "age", IndexKind::Btree).unique())
        .await
        .err()
        .ok_or_else(|| fail("created"))?;
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    assert!(store.list_indexes().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn unique_index_rejects_conflicting_writes_and_changes_nothing() -> Result<()> {
    let store = indexed_users().await?;
    let mut clash = user("Mallory", 50);
    clash.email = "bob@example.com".into();
    assert_eq!(
        code(store.set("user:9", &clash).await),
        ErrorCode::DuplicateKey
    );
    // Re-setting the holder itself is fine.
    store.set("user:1", &user("Bob", 28)).await?;
    assert_eq!(
        code(
            store
                .batch(vec![
                    Operation::set("user:7", user("Zed", 1)),
                    Operation::set("user:8", clash.clone()),
                ])
                .await
        ),
        ErrorCode::DuplicateKey
    );
    // Two new entries of one batch clash with each other.
    let mut twin = user("Zed", 2);
    twin.email = "zed@example.com".into();
    assert_eq!(
        code(
            store
                .set_many(vec![("z1".into(), user("Zed", 1)), ("z2".into(), twin)])
                .await
        ),
        ErrorCode::DuplicateKey
    );
    // Freeing the value in the same batch makes room for it.
    store
        .batch(vec![
            Operation::delete("user:1"),
            Operation::set("user:9", clash),
        ])
        .await?;
    assert_eq!(store.size().await?, 5);
    assert!(!store.has("user:7").await?);
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("user:10", &user("Alice", 3)).await?;
    assert_eq!(code(tx.commit().await), ErrorCode::DuplicateKey);
    assert!(!store.has("user:10").await?);
    Ok(())
}

#[tokio::test]
async fn unique_indexes_treat_integer_and_float_as_equal() -> Result<()> {
    for kind in [IndexKind::Hash, IndexKind::Btree] {
        let store = MemoryStorage::<serde_json::Value>::new();
        store
            .create_index(IndexDefinition::new("u", "n", kind).unique())
            .await?;
        store.set("a", &json!({"n": 1})).await?;
        assert_eq!(
            code(store.set("b", &json!({"n": 1.0})).await),
            ErrorCode::DuplicateKey,
            "{kind}"
        );
        // Missing fields are not indexed, so they never conflict.
        store.set("c", &json!({})).await?;
        store.set("d", &json!({})).await?;
    }
    Ok(())
}

#[tokio::test]
async fn array_fields_index_each_element() -> Result<()> {
    let store = MemoryStorage::<serde_json::Value>::new();
    store
        .create_index(IndexDefinition::new("tags", "tags", IndexKind::Hash).unique())
        .await?;
    store.set("a", &json!({"tags": ["x", "y"]})).await?;
    assert_eq!(
        code(store.set("b", &json!({"tags": ["y", "z"]})).await),
        ErrorCode::DuplicateKey
    );
    // Repeated elements within one document are not a conflict.
    store.set("c", &json!({"tags": ["q", "q"]})).await?;
    let found = store
        .find_many(&Query::filter(field("tags").eq("y")))
        .await?;
    assert_eq!(found.len(), 1);
    let found = store
        .find_many(&Query::filter(field("tags").eq(json!(["x", "y"]))))
        .await?;
    assert_eq!(found.len(), 1);
    Ok(())
}

#[tokio::test]
async fn index_stats_count_entries_hits_and_misses() -> Result<()> {
    let store = indexed_users().await?;
    store.find_many(&Query::filter(field("age").eq(27))).await?;
    store.find_many(&Query::filter(field("age").eq(99))).await?;
    store.find_many(&Query::filter(field("age").eq(99))).await?;
    store.delete("user:0").await?;
    let info = store
        .list_indexes()
        .await?
        .into_iter()
        .find(|i| i.definition.name == "by_age")
        .ok_or_else(|| fail("no index"))?;
    assert_eq!(info.stats.entries, 4);
    assert_eq!(info.stats.hits, 1);
    assert_eq!(info.stats.misses, 2);
    Ok(())
}

#[tokio::test]
async fn index_follows_updates_deletes_and_clears() -> Result<()> {
    let store = indexed_users().await?;
    store.set("user:1", &user("Bob", 60)).await?;
    let q = Query::filter(field("age").eq(27));
    assert_eq!(result_keys(&store, &q).await?, ["user:3"]);
    store.clear().await?;
    assert!(result_keys(&store, &q).await?.is_empty());
    store.set("n", &user("New", 27)).await?;
    assert_eq!(result_keys(&store, &q).await?, ["n"]);
    Ok(())
}

// ---------------------------------------------------------------- Observable

#[tokio::test]
async fn before_hook_veto_stops_the_write() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.on_before(Arc::new(|event| match event {
        BeforeEvent::Set { value, .. } if **value < 0 => {
            Err(StorageError::new(ErrorCode::InvalidValue, "negative"))
        }
        _ => Ok(()),
    }));
    assert_eq!(code(store.set("a", &-1).await), ErrorCode::InvalidValue);
    assert_eq!(
        code(
            store
                .batch(vec![Operation::set("b", 1), Operation::set("c", -1)])
                .await
        ),
        ErrorCode::InvalidValue
    );
    let tx = store.begin(TransactionOptions::new()).await?;
    assert_eq!(code(tx.set("d", &-1).await), ErrorCode::InvalidValue);
    tx.set("e", &1).await?;
    tx.commit().await?;
    assert_eq!(keys_of(&store).await?, ["e"]);
    Ok(())
}

#[tokio::test]
async fn before_hooks_see_gets_deletes_and_clears() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let id = store.on_before(Arc::new(|event| match event {
        BeforeEvent::Set { .. } => Ok(()),
        _ => Err(StorageError::new(ErrorCode::Unsupported, "read-only hours")),
    }));
    assert_eq!(code(store.get("a").await), ErrorCode::Unsupported);
    assert_eq!(code(store.delete("a").await), ErrorCode::Unsupported);
    assert_eq!(code(store.clear().await), ErrorCode::Unsupported);
    assert!(store.off(id));
    assert_eq!(store.get("a").await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn after_hooks_see_committed_writes_in_order() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let log = Arc::new(StdMutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    store.on_after(Arc::new(move |event| {
        let line = match event {
            AfterEvent::Get { key, found } => format!("get {key} {found}"),
            AfterEvent::Set { key, value } => format!("set {key} {value}"),
            AfterEvent::Delete { key, existed } => format!("delete {key} {existed}"),
            AfterEvent::Clear { removed } => format!("clear {removed}"),
        };
        if let Ok(mut log) = sink.lock() {
            log.push(line);
        }
    }));
    store.set("a", &1).await?;
    store.get("a").await?;
    store.delete("zz").await?;
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("b", &2).await?;
    tx.set("c", &3).await?;
    assert!(log.lock().map_err(|_| fail("poison"))?.len() == 3);
    tx.commit().await?;
    store.clear().await?;
    let log = log.lock().map_err(|_| fail("poison"))?.clone();
    assert_eq!(
        log,
        [
            "set a 1",
            "get a true",
            "delete zz false",
            "set b 2",
            "set c 3",
            "clear 3"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn after_hook_may_write_to_the_store_without_deadlock() -> Result<()> {
    let store = Arc::new(MemoryStorage::<i64>::new());
    let weak = Arc::downgrade(&store);
    store.on_after(Arc::new(move |event| {
        if let (AfterEvent::Set { key, value }, Some(store)) = (event, weak.upgrade())
            && *key == "a"
        {
            let value = **value;
            // A hook is synchronous; drive the (synchronous) memory future to completion.
            let _ = futures::executor::block_on(store.set("audit", &value));
        }
    }));
    store.set("a", &7).await?;
    assert_eq!(store.get("audit").await?, Some(7));
    Ok(())
}

#[tokio::test]
async fn watch_receives_one_batch_per_commit_with_old_and_new_values() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &1).await?;
    let mut sub = store.watch(WatchPattern::All, 16)?;
    let tx = store.begin(TransactionOptions::new()).await?;
    tx.set("a", &2).await?;
    tx.set("b", &3).await?;
    tx.commit().await?;
    store.delete("missing").await?;
    store.delete("b").await?;
    let Some(WatchEvent::Changes(batch)) = sub.next().await else {
        return Err(fail("expected a change batch"));
    };
    assert_eq!(batch.changes.len(), 2);
    assert_eq!(batch.changes[0].kind, ChangeKind::Set);
    assert_eq!(batch.changes[0].old_value.as_deref(), Some(&1));
    assert_eq!(batch.changes[0].new_value.as_deref(), Some(&2));
    assert_eq!(batch.changes[1].old_value, None);
    let Some(WatchEvent::Changes(next)) = sub.next().await else {
        return Err(fail("expected a second batch"));
    };
    assert!(next.sequence > batch.sequence);
    assert_eq!(next.changes.len(), 1);
    assert_eq!(next.changes[0].kind, ChangeKind::Delete);
    assert_eq!(next.changes[0].old_value.as_deref(), Some(&3));
    assert_eq!(sub.pending(), 0);
    Ok(())
}

#[tokio::test]
async fn clear_announces_a_delete_per_removed_key() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("a".into(), 1), ("b".into(), 2)])
        .await?;
    let mut sub = store.watch(WatchPattern::glob("*"), 4)?;
    store.clear().await?;
    store.clear().await?;
    let Some(WatchEvent::Changes(batch)) = sub.next().await else {
        return Err(fail("expected a change batch"));
    };
    let deleted: Vec<_> = batch
        .changes
        .iter()
        .map(|c| (c.kind, c.key.as_str()))
        .collect();
    assert_eq!(
        deleted,
        [(ChangeKind::Delete, "a"), (ChangeKind::Delete, "b")]
    );
    assert_eq!(sub.pending(), 0);
    Ok(())
}

#[tokio::test]
async fn watch_filters_by_pattern_and_stops_when_dropped() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let mut users = store.watch(WatchPattern::regex("user:[0-9]+"), 8)?;
    let others = store.watch(WatchPattern::glob("order:*"), 8)?;
    store
        .set_many(vec![
            ("user:1".into(), 1),
            ("order:1".into(), 2),
            ("user:x".into(), 3),
        ])
        .await?;
    let Some(WatchEvent::Changes(batch)) = users.next().await else {
        return Err(fail("expected a change batch"));
    };
    assert_eq!(batch.changes.len(), 1);
    assert_eq!(batch.changes[0].key, "user:1");
    assert_eq!(others.pending(), 1);
    drop(others);
    store.set("order:2", &1).await?;
    assert_eq!(users.pending(), 0);
    assert_eq!(
        code(store.watch(WatchPattern::regex("("), 8)),
        ErrorCode::InvalidQuery
    );
    Ok(())
}

#[tokio::test]
async fn slow_watcher_never_blocks_writers_and_is_told_it_lagged() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    let mut sub = store.watch(WatchPattern::All, 2)?;
    for i in 0..10 {
        store.set("k", &i).await?;
    }
    assert_eq!(sub.lagged(), 8);
    assert!(matches!(
        sub.next().await,
        Some(WatchEvent::Lagged { missed: 8 })
    ));
    let Some(WatchEvent::Changes(batch)) = sub.next().await else {
        return Err(fail("expected a change batch"));
    };
    assert_eq!(batch.changes[0].new_value.as_deref(), Some(&8));
    Ok(())
}

#[tokio::test]
async fn failed_commit_publishes_nothing() -> Result<()> {
    let store = MemoryStorage::<i64>::new();
    store.set("a", &0).await?;
    let t1 = store.begin(serializable()).await?;
    t1.get("a").await?;
    t1.set("a", &1).await?;
    store.set("a", &5).await?;
    let sub = store.watch(WatchPattern::All, 8)?;
    assert_eq!(code(t1.commit().await), ErrorCode::VersionConflict);
    assert_eq!(sub.pending(), 0);
    Ok(())
}

// ---------------------------------------------------------------- More isolation anomalies

#[tokio::test]
async fn aborted_and_intermediate_writes_are_never_read() -> Result<()> {
    // G1a and G1b: others never see a rolled-back write or a value later overwritten.
    let store = MemoryStorage::<i64>::new();
    store.set("x", &0).await?;
    let t1 = store.begin(serializable()).await?;
    t1.set("x", &1).await?;
    t1.set("x", &2).await?;
    let t2 = store.begin(serializable()).await?;
    assert_eq!(t2.get("x").await?, Some(0));
    assert_eq!(store.get("x").await?, Some(0));
    t1.rollback().await?;
    assert_eq!(t2.get("x").await?, Some(0));
    t2.commit().await?;
    assert_eq!(store.get("x").await?, Some(0));
    Ok(())
}

#[tokio::test]
async fn circular_information_flow_is_prevented() -> Result<()> {
    // G1c: each transaction writes one key and reads the other's key.
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("x".into(), 0), ("y".into(), 0)])
        .await?;
    let t1 = store.begin(serializable()).await?;
    let t2 = store.begin(serializable()).await?;
    t1.set("x", &1).await?;
    t2.set("y", &2).await?;
    assert_eq!(t1.get("y").await?, Some(0));
    assert_eq!(t2.get("x").await?, Some(0));
    t1.commit().await?;
    assert_eq!(code(t2.commit().await), ErrorCode::VersionConflict);
    Ok(())
}

#[tokio::test]
async fn predicate_reads_are_stable_and_conflict_on_write() -> Result<()> {
    // PMP: a count is repeatable inside the transaction; acting on it after a
    // concurrent insert aborts.
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("a".into(), 1), ("b".into(), 2)])
        .await?;
    let t1 = store.begin(serializable()).await?;
    assert_eq!(t1.size().await?, 2);
    let t2 = store.begin(serializable()).await?;
    t2.set("c", &3).await?;
    t2.commit().await?;
    assert_eq!(t1.size().await?, 2);
    assert_eq!(keys_of(t1.as_ref()).await?, ["a", "b"]);
    t1.delete("a").await?;
    assert_eq!(code(t1.commit().await), ErrorCode::VersionConflict);
    assert_eq!(keys_of(&store).await?, ["a", "b", "c"]);
    Ok(())
}

#[tokio::test]
async fn observed_transaction_never_vanishes() -> Result<()> {
    // OTV: once T2 saw T1's committed writes, a later read in T2 never loses them.
    let store = MemoryStorage::<i64>::new();
    store
        .set_many(vec![("x".into(), 0), ("y".into(), 0)])
        .await?;
    let t1 = store.begin(serializable()).await?;
    t1.set("x", &1).await?;
    t1.set("y", &1).await?;
    t1.commit().await?;
    let t2 = store.begin(serializable()).await?;
    assert_eq!(t2.get("x").await?, Some(1));
    let t3 = store.begin(serializable()).await?;
    t3.set("x", &2).await?;
    t3.set("y", &2).await?;
    t3.commit().await?;
    assert_eq!(t2.get("y").await?, Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_total() -> Result<()> {
    let store = Arc::new(MemoryStorage::<i64>::new());
    let accounts: Vec<String> = (0..4).map(|i| format!("acct:{i}")).collect();
    store
        .set_many(accounts.iter().map(|a| (a.clone(), 100)).collect())
        .await?;
    let mut tasks = Vec::new();
    for t in 0..16_usize {
        let store = Arc::clone(&store);
        let from = accounts[t % 4].clone();
        let to = accounts[(t + 1) % 4].clone();
        tasks.push(tokio::spawn(async move {
            store
                .transaction(TransactionOptions::new().retries(10_000), move |tx| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let a = tx.get(&from).await?.unwrap_or(0);
                        let b = tx.get(&to).await?.unwrap_or(0);
                        tokio::task::yield_now().await;
                        tx.set(&from, &(a - 7)).await?;
                        tx.set(&to, &(b + 7)).await
                    }
                })
                .await
        }));
    }
    for task in tasks {
        task.await.map_err(|e| fail(&e.to_string()))??;
    }
    let total: i64 = store.values().try_collect::<Vec<i64>>().await?.iter().sum();
    assert_eq!(total, 400);
    Ok(())
}

// ---------------------------------------------------------------- Differential: indexes never change answers

/// A small deterministic generator (no dev-dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, V>(&mut self, items: &'a [V]) -> &'a V {
        let i = usize::try_from(self.below(u64::try_from(items.len()).unwrap_or(1))).unwrap_or(0);
        &items[i]
    }
}

fn random_value(rng: &mut Lcg) -> serde_json::Value {
    match rng.below(9) {
        0 => json!(null),
        1 => json!(rng.below(5)),
        2 => json!(f64::from(u32::try_from(rng.below(10)).unwrap_or(0)) / 2.0),
        3 => json!(rng.pick(&["a", "b", "B", "c", ""])),
        4 => json!([rng.below(5), rng.below(5)]),
        5 => json!([rng.pick(&["a", "b"]), rng.below(3)]),
        6 => json!(rng.below(2) == 0),
        7 => json!({"x": rng.below(3)}),
        _ => json!(-1),
    }
}

fn random_doc(rng: &mut Lcg) -> serde_json::Value {
    let words = [
        "red fox",
        "Quick brown",
        "lazy dog",
        "fox-trot",
        "RED",
        "dog days",
    ];
    let mut doc = serde_json::Map::new();
    if rng.below(5) > 0 {
        doc.insert("n".into(), random_value(rng));
    }
    if rng.below(5) > 0 {
        doc.insert("s".into(), random_value(rng));
    }
    if rng.below(4) > 0 {
        doc.insert(
            "text".into(),
            if rng.below(4) == 0 {
                json!([rng.pick(&words), rng.pick(&words)])
            } else {
                json!(format!("{} {}", rng.pick(&words), rng.pick(&words)))
            },
        );
    }
    if rng.below(3) > 0 {
        let items: Vec<_> = (0..rng.below(3))
            .map(|_| json!({"name": random_value(rng)}))
            .collect();
        doc.insert("items".into(), json!(items));
    }
    serde_json::Value::Object(doc)
}

fn random_filter(rng: &mut Lcg) -> crate::Filter {
    use crate::{Filter, Operator};
    let field = (*rng.pick(&["n", "s", "items.name", "text"])).to_owned();
    let op = *rng.pick(&[
        Operator::Eq,
        Operator::In,
        Operator::Gt,
        Operator::Gte,
        Operator::Lt,
        Operator::Lte,
        Operator::Text,
        Operator::Ne,
    ]);
    let value = match op {
        Operator::In => json!([random_value(rng), random_value(rng)]),
        Operator::Text => json!(rng.pick(&["fox", "red dog", "QUICK", "trot fox", "cat"])),
        _ => random_value(rng),
    };
    let clause = Filter::Condition { field, op, value };
    if rng.below(3) == 0 {
        Filter::And(vec![clause, random_filter(rng)])
    } else {
        clause
    }
}

async fn answer(
    store: &MemoryStorage<serde_json::Value>,
    query: &Query,
) -> Result<Vec<(String, Option<f64>)>> {
    Ok(store
        .find_many(query)
        .await?
        .into_iter()
        .map(|r| (r.key, r.score))
        .collect())
}

#[tokio::test]
async fn random_queries_agree_with_and_without_indexes() -> Result<()> {
    let plain = MemoryStorage::<serde_json::Value>::new();
    let btree = MemoryStorage::<serde_json::Value>::new();
    let hash = MemoryStorage::<serde_json::Value>::new();
    for (path, name) in [("n", "n"), ("s", "s"), ("items.name", "items")] {
        btree
            .create_index(IndexDefinition::new(name, path, IndexKind::Btree))
            .await?;
        hash.create_index(IndexDefinition::new(name, path, IndexKind::Hash))
            .await?;
    }
    for store in [&btree, &hash] {
        store
            .create_index(IndexDefinition::new("text", "text", IndexKind::Fulltext))
            .await?;
    }
    let mut rng = Lcg(7);
    let (mut used_index, mut nonempty) = (0, 0);
    for round in 0..300 {
        let key = format!("k{}", rng.below(40));
        let op = if rng.below(5) == 0 {
            Operation::delete(key)
        } else {
            Operation::set(key, random_doc(&mut rng))
        };
        for store in [&plain, &btree, &hash] {
            store.batch(vec![op.clone()]).await?;
        }
        if round % 3 != 0 {
            continue;
        }
        let query = Query::filter(random_filter(&mut rng));
        let expected = answer(&plain, &query).await;
        for store in [&btree, &hash] {
            match &expected {
                Ok(expected) => {
                    nonempty += usize::from(!expected.is_empty());
                    assert_eq!(&answer(store, &query).await?, expected, "{query:?}");
                    assert_eq!(store.count(&query).await?, plain.count(&query).await?);
                    used_index += usize::from(store.explain(&query).await?.uses_index());
                }
                Err(e) => assert_eq!(code(answer(store, &query).await), e.code()),
            }
        }
    }
    assert!(used_index > 50, "indexes were used only {used_index} times");
    assert!(nonempty > 50, "only {nonempty} queries matched anything");
    Ok(())
}
