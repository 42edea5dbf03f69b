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
