//! Behaviour of the SQLite adapter, tier by tier.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use storage_core::query::field;
use storage_core::{
    BatchStorage, ErrorCode, IndexDefinition, IndexKind, IndexedStorage, IsolationLevel,
    ObservableStorage, Operation, Query, QueryableStorage, Result, Storage, StorageError,
    TransactionOptions, TransactionalExt, TransactionalStorage, WatchEvent, WatchPattern,
};
use storage_sqlite::{SqliteConfig, SqliteStorage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
}

fn user(name: &str, age: u32) -> User {
    User {
        name: name.to_owned(),
        age,
    }
}

async fn memory<T: storage_core::StorageValue>() -> Result<SqliteStorage<T>> {
    SqliteStorage::open(SqliteConfig::memory()).await
}

/// Basic get/set/delete/has/size/clear round trip.
#[tokio::test]
async fn set_get_delete_round_trip() -> Result<()> {
    let s = memory::<User>().await?;
    assert_eq!(s.get("a").await?, None);
    s.set("a", &user("Alice", 31)).await?;
    assert_eq!(s.get("a").await?, Some(user("Alice", 31)));
    s.set("a", &user("Alice", 32)).await?;
    assert_eq!(s.get("a").await?, Some(user("Alice", 32)));
    assert!(s.has("a").await?);
    assert_eq!(s.size().await?, 1);
    assert!(s.delete("a").await?);
    assert!(!s.delete("a").await?);
    assert!(!s.has("a").await?);
    s.set("b", &user("B", 1)).await?;
    s.clear().await?;
    assert_eq!(s.size().await?, 0);
    Ok(())
}

/// Keys stream in byte order, across pages.
#[tokio::test]
async fn keys_stream_in_byte_order_across_pages() -> Result<()> {
    let s = memory::<u32>().await?;
    let mut expected: Vec<String> = (0..1300u32).map(|i| format!("k{i}")).collect();
    expected.extend([
        "Z".to_owned(),
        "a".to_owned(),
        "é".to_owned(),
        "\u{7f}".to_owned(),
        "ab".to_owned(),
    ]);
    let entries: Vec<(String, u32)> = expected.iter().cloned().zip(0..).collect();
    s.set_many(entries).await?;
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let keys: Vec<String> = s.keys().try_collect().await?;
    assert_eq!(keys, expected);
    let entries: Vec<(String, u32)> = s.entries().try_collect().await?;
    assert_eq!(entries.len(), expected.len());
    assert_eq!(
        entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected
    );
    let values: Vec<u32> = s.values().try_collect().await?;
    assert_eq!(values.len(), expected.len());
    Ok(())
}

/// Iteration reads one page ahead: a table of exactly two pages ends after its last
/// entry, and a stream dropped while its next page is being read leaves the store
/// working.
#[tokio::test]
async fn iteration_reading_ahead_ends_at_page_boundaries_and_survives_drops() -> Result<()> {
    use futures::StreamExt;
    let s = memory::<u32>().await?;
    let entries: Vec<(String, u32)> = (0..1024u32).map(|i| (format!("k{i:04}"), i)).collect();
    s.set_many(entries.clone()).await?;
    let all: Vec<(String, u32)> = s.entries().try_collect().await?;
    assert_eq!(all, entries);
    for _ in 0..8 {
        let mut stream = s.entries();
        let first = stream.next().await.transpose()?;
        assert_eq!(first, entries.first().cloned());
        drop(stream);
    }
    s.set("k9999", &9999).await?;
    assert_eq!(s.keys().try_collect::<Vec<_>>().await?.len(), 1025);
    Ok(())
}

/// Unindexed ranges and number equality read each path once per row and test for
/// arrays on the stored text: documents that are arrays, arrays at or on the way to the
/// path, and strings that look like arrays all get the evaluator's answer.
#[tokio::test]
async fn unindexed_ranges_find_arrays_anywhere_on_the_path() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    let docs: Vec<(String, serde_json::Value)> = vec![
        ("a".into(), json!({"n": 5, "o": {"m": 5}})),
        ("b".into(), json!([{"n": 5}, {"n": 50}])),
        ("c".into(), json!({"n": [1, 5], "o": [{"m": 5}, {"m": 60}]})),
        ("d".into(), json!({"n": "[5]", "o": {"m": "[5]"}})),
        ("e".into(), json!({"n": 50, "o": {"m": [50, 5.5]}})),
        ("f".into(), json!([[{"n": 5}]])),
        ("g".into(), json!({"n": null, "o": null})),
        ("h".into(), json!({"n": true, "o": {"m": false}})),
    ];
    s.set_many(docs.clone()).await?;
    let queries = [
        Query::filter(field("n").gte(4).and(field("n").lt(6))),
        Query::filter(field("o.m").gte(4).and(field("o.m").lte(6))),
        Query::filter(field("n").eq(5)),
        Query::filter(field("o.m").is_in(vec![json!(5), json!(5.5)])),
        Query::filter(field("n").gt(0)).order_desc("n").limit(3),
    ];
    for q in queries {
        let expected: Vec<String> =
            storage_core::query::evaluate(&q, docs.iter().map(|(k, v)| (k.as_str(), v)))?
                .into_iter()
                .map(|m| m.key)
                .collect();
        assert!(!expected.is_empty(), "{q:?}");
        let got: Vec<String> = s.find_many(&q).await?.into_iter().map(|r| r.key).collect();
        assert_eq!(got, expected, "{q:?}");
    }
    Ok(())
}

/// Bad keys and unrepresentable values are typed errors.
#[tokio::test]
async fn bad_inputs_are_typed_errors() -> Result<()> {
    let s = memory::<f64>().await?;
    assert_eq!(
        s.set("", &1.0).await.expect_err("must fail").code(),
        ErrorCode::InvalidKey
    );
    assert_eq!(
        s.get("a\0b").await.expect_err("must fail").code(),
        ErrorCode::InvalidKey
    );
    assert_eq!(
        s.set(&"k".repeat(1025), &1.0)
            .await
            .expect_err("must fail")
            .code(),
        ErrorCode::InvalidKey
    );
    assert_eq!(
        s.set("nan", &f64::NAN).await.expect_err("must fail").code(),
        ErrorCode::InvalidValue
    );
    assert_eq!(s.size().await?, 0);
    Ok(())
}

/// SQL injection strings are data, never SQL.
#[tokio::test]
async fn injection_strings_are_plain_data() -> Result<()> {
    let evil = [
        "'; DROP TABLE storage; --",
        "\" OR 1=1 --",
        "key') ON CONFLICT DO NOTHING; --",
        "$.a') = 1 OR ('",
        "x\"; DELETE FROM _storage_indexes; --",
    ];
    let s = memory::<serde_json::Value>().await?;
    for (i, e) in evil.iter().enumerate() {
        s.set(e, &json!({ *e: e, "n": i })).await?;
    }
    assert_eq!(s.size().await?, evil.len() as u64);
    for (i, e) in evil.iter().copied().enumerate() {
        assert_eq!(s.get(e).await?, Some(json!({ e: e, "n": i })));
        let found = s.find_many(&Query::filter(field(e).eq(e))).await;
        match found {
            Ok(rows) => assert!(rows.len() <= 1),
            Err(err) => assert_eq!(err.code(), ErrorCode::InvalidQuery),
        }
        // Index names and paths are data too.
        let def = IndexDefinition::new(e, "n", IndexKind::Btree);
        s.create_index(def).await?;
        let bad_path = s
            .create_index(IndexDefinition::new("p", e, IndexKind::Btree))
            .await;
        if let Err(err) = bad_path {
            assert!(matches!(
                err.code(),
                ErrorCode::InvalidQuery | ErrorCode::Unsupported
            ));
        } else {
            assert!(s.drop_index("p").await?);
        }
    }
    assert_eq!(s.list_indexes().await?.len(), evil.len());
    assert_eq!(s.size().await?, evil.len() as u64);
    for bad_table in evil {
        let err = SqliteStorage::<u32>::open(SqliteConfig::memory().table_name(bad_table))
            .await
            .expect_err("must fail");
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert_eq!(
            s.table::<u32>(bad_table)
                .await
                .expect_err("must fail")
                .code(),
            ErrorCode::InvalidConfig
        );
    }
    Ok(())
}

/// A failing batch applies nothing.
#[tokio::test]
async fn failed_batch_applies_nothing() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    s.set("keep", &json!({"email": "a@x"})).await?;
    s.create_index(IndexDefinition::new("email", "email", IndexKind::Hash).unique())
        .await?;
    let ops = vec![
        Operation::set("n1", json!({"email": "b@x"})),
        Operation::delete("keep"),
        Operation::set("n2", json!({"email": "b@x"})),
    ];
    let err = s.batch(ops).await.expect_err("must fail");
    assert_eq!(err.code(), ErrorCode::DuplicateKey);
    assert_eq!(s.size().await?, 1);
    assert!(s.has("keep").await?);
    let ops = vec![Operation::set("n1", json!(1)), Operation::set("", json!(2))];
    assert_eq!(
        s.batch(ops).await.expect_err("must fail").code(),
        ErrorCode::InvalidKey
    );
    assert!(!s.has("n1").await?);
    let r = s
        .batch(vec![
            Operation::set("x", json!(1)),
            Operation::delete("x"),
            Operation::delete("x"),
            Operation::set("y", json!(2)),
            Operation::Clear,
            Operation::set("z", json!(3)),
        ])
        .await?;
    assert_eq!((r.operations, r.deleted, r.cleared), (6, 1, 2));
    assert_eq!(
        s.keys().try_collect::<Vec<_>>().await?,
        vec!["z".to_owned()]
    );
    assert_eq!(s.delete_many(&["z".into(), "nope".into()]).await?, 1);
    Ok(())
}

/// Big batches run in one transaction and get_many reads them back.
#[tokio::test]
async fn big_batches_and_get_many() -> Result<()> {
    let s = memory::<u64>().await?;
    let entries: Vec<(String, u64)> = (0..40_000u64).map(|i| (format!("k{i:05}"), i)).collect();
    s.set_many(entries).await?;
    assert_eq!(s.size().await?, 40_000);
    let keys: Vec<String> = (0..40_001u64)
        .step_by(1000)
        .map(|i| format!("k{i:05}"))
        .collect();
    let got = s.get_many(&keys).await?;
    assert_eq!(got.len(), 40);
    assert_eq!(got.get("k01000"), Some(&1000));
    Ok(())
}

/// Tables of one database are separate namespaces with their own value types.
#[tokio::test]
async fn tables_share_a_file_but_not_entries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.sqlite");
    let users =
        SqliteStorage::<User>::open(SqliteConfig::new(path.to_string_lossy()).table_name("users"))
            .await?;
    let counts = users.table::<u64>("counts").await?;
    let other = SqliteStorage::<String>::open(
        SqliteConfig::new(path.to_string_lossy()).table_name("names"),
    )
    .await?;
    users.set("a", &user("A", 1)).await?;
    counts.set("a", &7).await?;
    other.set("a", &"x".to_owned()).await?;
    counts.clear().await?;
    assert_eq!(users.get("a").await?, Some(user("A", 1)));
    assert_eq!(other.get("a").await?, Some("x".to_owned()));
    assert_eq!(counts.size().await?, 0);
    drop((users, counts, other));
    let reopened =
        SqliteStorage::<User>::open(SqliteConfig::new(path.to_string_lossy()).table_name("users"))
            .await?;
    assert_eq!(reopened.get("a").await?, Some(user("A", 1)));
    reopened.integrity_check().await?;
    Ok(())
}

/// A file that is not a database is reported as corrupted and left alone.
#[tokio::test]
async fn garbage_file_is_corrupted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("junk.sqlite");
    std::fs::write(&path, vec![0x42u8; 8192])?;
    let err = SqliteStorage::<u32>::open(SqliteConfig::new(path.to_string_lossy()))
        .await
        .expect_err("must fail");
    assert_eq!(err.code(), ErrorCode::Corrupted, "{err}");
    assert_eq!(std::fs::read(&path)?, vec![0x42u8; 8192]);
    Ok(())
}

/// Queries agree with the reference evaluator, including arrays and mixed types.
#[tokio::test]
async fn queries_match_the_reference_evaluator() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    let docs = [
        (
            "a",
            json!({"name": "Alice", "age": 31, "tags": ["x", "y"], "addr": {"city": "Paris"}}),
        ),
        (
            "b",
            json!({"name": "Bob", "age": 27.0, "tags": "x", "addr": [{"city": "Rome"}, {"city": "Paris"}]}),
        ),
        (
            "c",
            json!({"name": "Carol", "age": "31", "tags": [], "addr": null}),
        ),
        ("d", json!([{"name": "Alice"}])),
        ("e", json!({"name": ["Alice", "Eve"], "age": [20, 40]})),
        ("f", json!({"age": true, "name": "alice"})),
    ];
    s.set_many(
        docs.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
    .await?;
    let queries = vec![
        Query::filter(field("name").eq("Alice")),
        Query::filter(field("age").eq(31)),
        Query::filter(field("age").gt(25)),
        Query::filter(field("age").lte(31.0)),
        Query::filter(field("age").gte("30")),
        Query::filter(field("tags").eq("x")),
        Query::filter(field("addr.city").eq("Paris")),
        Query::filter(field("age").exists(true)),
        Query::filter(field("age").eq(true)),
        Query::filter(field("name").ne("Alice")),
        Query::filter(field("name").is_in(vec![json!("Bob"), json!("Eve")])),
    ];
    for index in [false, true] {
        if index {
            s.create_index(IndexDefinition::new("name", "name", IndexKind::Btree))
                .await?;
            s.create_index(IndexDefinition::new("age", "age", IndexKind::Btree))
                .await?;
            s.create_index(IndexDefinition::new("city", "addr.city", IndexKind::Hash))
                .await?;
        }
        for q in &queries {
            let got: Vec<String> = s.find_many(q).await?.into_iter().map(|r| r.key).collect();
            let expected: Vec<String> =
                storage_core::query::evaluate(q, docs.iter().map(|(k, v)| (*k, v)))?
                    .into_iter()
                    .map(|m| m.key)
                    .collect();
            assert_eq!(got, expected, "query {q:?} index {index}");
            assert_eq!(s.count(q).await?, expected.len() as u64);
        }
    }
    let plan = s.explain(&Query::filter(field("name").eq("Alice"))).await?;
    assert_eq!(plan.index.as_deref(), Some("name"), "{plan:?}");
    assert!(
        plan.pushed_down[0].starts_with("exact string equality"),
        "{plan:?}"
    );
    // An operand that could be an object's JSON text goes through the evaluator.
    let plan = s
        .explain(&Query::filter(field("name").eq("{\"a\":1}")))
        .await?;
    assert!(
        plan.pushed_down[0].starts_with("candidate filter"),
        "{plan:?}"
    );
    Ok(())
}

/// Transactions see their own writes, commit atomically and roll back on drop.
#[tokio::test]
async fn transactions_commit_and_roll_back() -> Result<()> {
    let s = memory::<i64>().await?;
    s.set("a", &1).await?;
    let tx = s.begin(TransactionOptions::new()).await?;
    assert_eq!(tx.isolation(), IsolationLevel::Serializable);
    tx.set("a", &2).await?;
    tx.set("b", &3).await?;
    assert_eq!(tx.get("a").await?, Some(2));
    assert_eq!(s.get("a").await?, Some(1));
    tx.savepoint("sp").await?;
    tx.delete("b").await?;
    tx.rollback_to("sp").await?;
    assert_eq!(tx.get("b").await?, Some(3));
    assert_eq!(
        tx.rollback_to("nope").await.expect_err("must fail").code(),
        ErrorCode::KeyNotFound
    );
    tx.commit().await?;
    assert_eq!(s.get("a").await?, Some(2));
    assert_eq!(s.get("b").await?, Some(3));
    assert_eq!(
        tx.commit().await.expect_err("must fail").code(),
        ErrorCode::TransactionAborted
    );

    {
        let tx = s.begin(TransactionOptions::new()).await?;
        tx.set("a", &100).await?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.get("a").await?, Some(2));
    // The dropped transaction released the write lock.
    s.set("c", &1).await?;

    let ro = s.begin(TransactionOptions::new().read_only()).await?;
    assert_eq!(
        ro.set("a", &5).await.expect_err("must fail").code(),
        ErrorCode::Unsupported
    );
    assert_eq!(ro.get("a").await?, Some(2));
    ro.commit().await?;

    // An abandoned transaction releases the write lock at its time-out, not at drop.
    let abandoned = s
        .begin(TransactionOptions::new().timeout(Duration::from_millis(50)))
        .await?;
    abandoned.set("a", &77).await?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.set("after_abandoned", &1).await?;
    assert_eq!(
        abandoned.get("a").await.expect_err("timed out").code(),
        ErrorCode::TransactionAborted
    );
    assert_eq!(s.get("a").await?, Some(2));
    drop(abandoned);

    let slow = s
        .begin(TransactionOptions::new().timeout(Duration::from_millis(20)))
        .await?;
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(
        slow.set("a", &9).await.expect_err("must fail").code(),
        ErrorCode::TransactionAborted
    );
    assert_eq!(s.get("a").await?, Some(2));
    Ok(())
}

/// A transaction whose snapshot is overtaken gets a retryable conflict, and the retry helper succeeds.
#[tokio::test]
async fn lost_update_is_prevented_and_retried() -> Result<()> {
    let s = memory::<i64>().await?;
    s.set("x", &0).await?;
    let t1 = s.begin(TransactionOptions::new()).await?;
    let t2 = s.begin(TransactionOptions::new()).await?;
    let v1 = t1.get("x").await?.unwrap_or(0);
    let v2 = t2.get("x").await?.unwrap_or(0);
    t1.set("x", &(v1 + 1)).await?;
    t1.commit().await?;
    let err = t2.set("x", &(v2 + 1)).await.expect_err("must fail");
    assert_eq!(err.code(), ErrorCode::VersionConflict, "{err}");
    assert!(err.is_retryable());
    drop(t2);
    assert_eq!(s.get("x").await?, Some(1));

    let store = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .transaction(TransactionOptions::new().retries(50), |tx| async move {
                    let v = tx.get("x").await?.unwrap_or(0);
                    tx.set("x", &(v + 1)).await?;
                    Ok(())
                })
                .await
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))??;
    }
    assert_eq!(store.get("x").await?, Some(9));
    Ok(())
}

/// Subscribers see committed batches in order; a transaction is one batch.
#[tokio::test]
async fn watchers_see_committed_batches() -> Result<()> {
    let s = memory::<i64>().await?;
    let mut sub = s.watch(WatchPattern::All, 16)?;
    s.set("a", &1).await?;
    let tx = s.begin(TransactionOptions::new()).await?;
    tx.set("b", &2).await?;
    tx.set("c", &3).await?;
    tx.commit().await?;
    let first = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    let Ok(Some(WatchEvent::Changes(b1))) = first else {
        panic!("no first batch")
    };
    assert_eq!(b1.changes.len(), 1);
    let Ok(Some(WatchEvent::Changes(b2))) =
        tokio::time::timeout(Duration::from_secs(2), sub.next()).await
    else {
        panic!("no second batch")
    };
    assert_eq!(
        b2.changes
            .iter()
            .map(|c| c.key.as_str())
            .collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert!(b2.sequence > b1.sequence);
    Ok(())
}

/// Without the change log (the default), handles opened separately on one file and table
/// in this process see each other's commits, in commit order; other tables' do not mix in.
#[tokio::test]
async fn without_the_change_log_handles_in_one_process_see_each_other() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.sqlite").to_string_lossy().into_owned();
    let a = SqliteStorage::<i64>::open(SqliteConfig::new(&path)).await?;
    // The same file through another spelling of its path.
    let other_spelling = dir
        .path()
        .join(".")
        .join("db.sqlite")
        .to_string_lossy()
        .into_owned();
    let b = SqliteStorage::<i64>::open(SqliteConfig::new(&other_spelling)).await?;
    let elsewhere = b.table::<i64>("elsewhere").await?;
    assert!(!a.capabilities().cross_process_watch);
    let mut sub = a.watch(WatchPattern::All, 16)?;
    b.set("k1", &1).await?;
    elsewhere.set("not-here", &0).await?;
    let tx = b.begin(TransactionOptions::new()).await?;
    tx.set("k2", &2).await?;
    tx.delete("k1").await?;
    tx.commit().await?;
    a.set("k3", &3).await?;
    let mut seen = Vec::new();
    let mut last = 0;
    for _ in 0..3 {
        let Ok(Some(WatchEvent::Changes(batch))) =
            tokio::time::timeout(Duration::from_secs(2), sub.next()).await
        else {
            panic!("a batch is missing after {seen:?}")
        };
        assert!(batch.sequence > last, "sequences increase");
        last = batch.sequence;
        seen.push(
            batch
                .changes
                .iter()
                .map(|c| format!("{:?} {}", c.kind, c.key))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        seen,
        [vec!["Set k1"], vec!["Set k2", "Delete k1"], vec!["Set k3"]]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err(),
        "nothing else arrives"
    );
    // Resuming needs the log.
    assert_eq!(
        a.watch_from(WatchPattern::All, 16, 0)
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err(ErrorCode::Unsupported)
    );
    Ok(())
}

/// With the change log, another handle on the same file sees the changes, and a watch resumes.
#[tokio::test]
async fn change_log_crosses_handles_and_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.sqlite").to_string_lossy().into_owned();
    let a = SqliteStorage::<i64>::open(SqliteConfig::new(&path).change_log(true)).await?;
    let b = SqliteStorage::<i64>::open(SqliteConfig::new(&path).change_log(true)).await?;
    let mut sub = b.watch(WatchPattern::glob("k*"), 16)?;
    a.set("k1", &1).await?;
    a.set("other", &1).await?;
    a.set("k2", &2).await?;
    let Ok(Some(WatchEvent::Changes(b1))) =
        tokio::time::timeout(Duration::from_secs(2), sub.next()).await
    else {
        panic!("no batch")
    };
    assert_eq!(b1.changes[0].key, "k1");
    let Ok(Some(WatchEvent::Changes(b2))) =
        tokio::time::timeout(Duration::from_secs(2), sub.next()).await
    else {
        panic!("no batch")
    };
    assert_eq!(b2.changes[0].key, "k2");
    let mut resumed = a.watch_from(WatchPattern::All, 16, b1.sequence).await?;
    let Ok(Some(WatchEvent::Changes(r1))) =
        tokio::time::timeout(Duration::from_secs(2), resumed.next()).await
    else {
        panic!("no replay")
    };
    assert_eq!(r1.changes[0].key, "other");
    // Trimmed history: a resumed watch is told to resync, then goes on.
    assert!(a.trim_change_log(b2.sequence).await? >= 3);
    let mut late = a.watch_from(WatchPattern::All, 16, b1.sequence).await?;
    let Ok(Some(WatchEvent::Resync { .. })) =
        tokio::time::timeout(Duration::from_secs(2), late.next()).await
    else {
        panic!("no resync")
    };
    a.set("k3", &3).await?;
    let Ok(Some(WatchEvent::Changes(after))) =
        tokio::time::timeout(Duration::from_secs(2), late.next()).await
    else {
        panic!("no batch after the resync")
    };
    assert_eq!(after.changes[0].key, "k3");
    assert!(after.sequence > b2.sequence);
    Ok(())
}

/// Indexed equality and ranges are answered from indexes, without a full scan.
#[tokio::test]
async fn indexed_queries_avoid_full_scans() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    s.create_index(IndexDefinition::new("name", "name", IndexKind::Btree))
        .await?;
    s.create_index(IndexDefinition::new("city", "addr.city", IndexKind::Btree))
        .await?;
    for (q, index) in [
        (Query::filter(field("name").eq("Alice")), "name"),
        (Query::filter(field("addr.city").gt("P")), "city"),
        (Query::filter(field("name").eq(3)), "name"),
    ] {
        let plan = s.explain(&q).await?;
        assert_eq!(plan.index.as_deref(), Some(index), "{plan:#?}");
        assert!(!plan.full_scan, "{plan:#?}");
        assert!(!plan.backend_plan.is_empty());
    }
    s.create_index(IndexDefinition::new(
        "body",
        "doc.body",
        IndexKind::Fulltext,
    ))
    .await?;
    s.create_index(IndexDefinition::new("at", "at", IndexKind::Spatial))
        .await?;
    s.set(
        "t1",
        &json!({"doc": {"body": "The quick brown fox"}, "at": [1, 2]}),
    )
    .await?;
    s.set(
        "t2",
        &json!({"doc": [{"body": "a lazy dog"}], "at": {"x": 5, "y": 5}}),
    )
    .await?;
    s.set(
        "t3",
        &json!({"doc": {"body": ["lazy", "fox"]}, "at": [[9, 9], [0, 0]]}),
    )
    .await?;
    for (q, index, keys) in [
        (
            Query::filter(field("doc.body").text("FOX")),
            "body",
            vec!["t1", "t3"],
        ),
        (
            Query::filter(field("doc.body").text("lazy")),
            "body",
            vec!["t2", "t3"],
        ),
        (
            Query::filter(field("at").within_box([0, 0], [2, 2])),
            "at",
            vec!["t1", "t3"],
        ),
        (
            Query::filter(field("at").within_box([4, 4], [6, 6])),
            "at",
            vec!["t2"],
        ),
    ] {
        let plan = s.explain(&q).await?;
        assert_eq!(plan.index.as_deref(), Some(index), "{plan:#?}");
        assert!(!plan.full_scan, "{plan:#?}");
        let got: Vec<String> = s.find_many(&q).await?.into_iter().map(|r| r.key).collect();
        assert_eq!(got, keys);
    }
    let infos = s.list_indexes().await?;
    let body = infos
        .iter()
        .find(|i| i.definition.name == "body")
        .map(|i| i.stats);
    assert!(
        body.is_some_and(|st| st.entries == 3 && st.hits >= 2),
        "{infos:#?}"
    );
    assert!(s.drop_index("body").await?);
    assert!(!s.drop_index("body").await?);
    assert_eq!(
        s.find_many(&Query::filter(field("doc.body").text("fox")))
            .await?
            .len(),
        2
    );
    let plan = s.explain(&Query::filter(field("other").ne(1))).await?;
    assert!(plan.full_scan && plan.index.is_none(), "{plan:#?}");
    Ok(())
}

/// Without WAL (rollback journal) the store still works, transactions included.
#[tokio::test]
async fn rollback_journal_mode_works() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nowal.sqlite");
    let s = SqliteStorage::<i64>::open(
        SqliteConfig::new(path.to_string_lossy())
            .wal(false)
            .synchronous(storage_sqlite::SynchronousLevel::Full)
            .busy_timeout_ms(200),
    )
    .await?;
    s.set_many(vec![("a".into(), 1), ("b".into(), 2)]).await?;
    assert_eq!(s.get("a").await?, Some(1));
    let tx = s.begin(TransactionOptions::new()).await?;
    tx.set("a", &10).await?;
    tx.commit().await?;
    assert_eq!(s.get("a").await?, Some(10));
    assert_eq!(s.keys().try_collect::<Vec<_>>().await?, ["a", "b"]);
    assert!(!path.with_extension("sqlite-wal").exists());
    Ok(())
}

/// Group counts over plain values run in SQL and equal the evaluator's.
#[tokio::test]
async fn group_counts_match_the_evaluator() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    let docs = [
        ("a", json!({"author": "Ann", "n": 1})),
        ("b", json!({"author": "Bob", "n": 1.0})),
        ("c", json!({"author": "Ann"})),
        ("d", json!({"n": 2})),
        ("e", json!({"author": null, "n": -0.5})),
    ];
    s.set_many(
        docs.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
    .await?;
    for path in ["author", "n", "missing"] {
        let pipeline = vec![
            storage_core::AggregateStage::group_by(path).count("count"),
            storage_core::AggregateStage::Limit(5),
        ];
        let expected = storage_core::query::aggregate(&pipeline, docs.iter().map(|(_, v)| v))?;
        assert_eq!(s.aggregate(&pipeline).await?, expected, "{path}");
    }
    let bad = vec![storage_core::AggregateStage::group_by("a").count("_id")];
    assert_eq!(
        s.aggregate(&bad).await.expect_err("_id is reserved").code(),
        ErrorCode::InvalidQuery
    );
    Ok(())
}

/// A numeric range on an indexed path, ordered and paged, runs exactly in SQL while no
/// entry holds an array there, and falls back to the evaluator when one does.
#[tokio::test]
async fn indexed_ranges_run_in_sql_while_exact() -> Result<()> {
    let s = memory::<serde_json::Value>().await?;
    s.create_index(IndexDefinition::new("year", "year", IndexKind::Btree))
        .await?;
    let mut docs: Vec<(String, serde_json::Value)> = (0..300u32)
        .map(|i| {
            (
                format!("d{i:03}"),
                json!({"year": 1900 + (i * 7) % 120, "title": format!("t{i}")}),
            )
        })
        .collect();
    docs.push(("s".into(), json!({"year": "1950"})));
    docs.push(("f".into(), json!({"year": 1950.5})));
    s.set_many(docs.clone()).await?;
    let q = Query::filter(storage_core::query::and(vec![
        field("year").gte(1950),
        field("year").lt(1960.5),
    ]))
    .order_desc("year")
    .offset(2)
    .limit(7)
    .select(["title"]);
    for round in 0..2 {
        let plan = s.explain(&q).await?;
        let exact = plan
            .pushed_down
            .iter()
            .any(|p| p.starts_with("exact range"));
        assert_eq!(exact, round == 0, "{plan:#?}");
        assert_eq!(plan.index.as_deref(), Some("year"), "{plan:#?}");
        let expected =
            storage_core::query::evaluate(&q, docs.iter().map(|(k, v)| (k.as_str(), v)))?;
        let got = s.find_many(&q).await?;
        assert_eq!(
            got.iter()
                .map(|r| (r.key.clone(), r.projection.clone()))
                .collect::<Vec<_>>(),
            expected
                .into_iter()
                .map(|m| (m.key, m.projection))
                .collect::<Vec<_>>()
        );
        // An array on the path makes the plan inexact: the evaluator decides again.
        let arr = (
            "z".to_owned(),
            json!({"year": [1955, 3000], "title": "arr"}),
        );
        s.set(&arr.0, &arr.1).await?;
        docs.push(arr);
    }
    Ok(())
}

/// Writes that may run on the calling thread keep the WAL bounded: automatic
/// checkpoints are off on the writer connection, and the checkpoints run in their
/// place (on a connection of their own, and on the writer's once the log passes 4000
/// pages, so that it restarts) stop the log from growing with every commit.
#[tokio::test]
async fn one_by_one_writes_keep_the_wal_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.sqlite");
    let s = SqliteStorage::<String>::open(SqliteConfig::new(path.to_string_lossy())).await?;
    let value = "x".repeat(2000);
    // Each commit appends at least one 4 KiB page: 10000 commits would leave a log of
    // 40 MB or more without checkpoints (about 80 MB here: two pages a commit).
    for i in 0..10_000u32 {
        s.set(&format!("k{i:05}"), &value).await?;
    }
    let wal = std::fs::metadata(dir.path().join("db.sqlite-wal"))?.len();
    assert!(
        wal < 24 * 1024 * 1024,
        "the WAL grew to {wal} bytes: checkpoints did not run"
    );
    assert_eq!(s.size().await?, 10_000);
    s.integrity_check().await?;
    Ok(())
}

/// A write that finds SQLite's write lock held by another connection waits for it (on
/// the writer thread, as configured) rather than failing on the calling thread.
#[tokio::test]
async fn a_write_waits_for_another_connection_holding_the_write_lock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.sqlite");
    let s = SqliteStorage::<u32>::open(SqliteConfig::new(path.to_string_lossy())).await?;
    s.set("before", &1).await?;
    let other = rusqlite::Connection::open(&path)
        .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))?;
    other
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))?;
    let writer = {
        let s = s.clone();
        tokio::spawn(async move { s.set("during", &2).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "the write waits for the lock");
    other
        .execute_batch("COMMIT")
        .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))?;
    writer
        .await
        .map_err(|e| StorageError::new(ErrorCode::Backend, e.to_string()))??;
    assert_eq!(s.get("during").await?, Some(2));
    Ok(())
}

/// A large `set_many` is encoded while the writer applies it: all of it lands, and a
/// value that fails to encode late in the batch rolls back what was already written.
#[tokio::test]
async fn a_large_set_many_is_all_or_nothing() -> Result<()> {
    let s = memory::<f64>().await?;
    let good: Vec<(String, f64)> = (0..5000u32)
        .map(|i| (format!("k{i:05}"), f64::from(i)))
        .collect();
    s.set_many(good).await?;
    assert_eq!(s.size().await?, 5000);
    assert_eq!(s.get("k04999").await?, Some(4999.0));

    let mut bad: Vec<(String, f64)> = (0..5000u32)
        .map(|i| (format!("n{i:05}"), f64::from(i)))
        .collect();
    bad[4500].1 = f64::NAN;
    let err = s
        .set_many(bad)
        .await
        .err()
        .ok_or_else(|| StorageError::new(ErrorCode::Backend, "a NaN was stored"))?;
    assert_eq!(err.context_value("index"), Some("4500"));
    assert_eq!(
        s.size().await?,
        5000,
        "nothing of the failed batch is applied"
    );
    assert!(!s.has("n00000").await?);
    s.set("after", &1.0).await?;
    assert_eq!(s.size().await?, 5001);
    Ok(())
}
