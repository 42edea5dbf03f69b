//! The adapter against raw FalkorDB commands, on one server, in one run.
//!
//! Workloads (the same data both ways): single creates, one `UNWIND` batch of 10,000
//! rows, and point gets through the key index. "Raw" sends the plain Cypher a
//! hand-written client would (`CREATE`, `UNWIND … CREATE`, `MATCH … RETURN`) with the
//! redis crate; the adapter adds its encoding, promoted properties, the change stream
//! and the write version, all inside one `MULTI`/`EXEC` per write.
//!
//! Raw and adapter operations alternate (creates and gets one by one, batches round by
//! round), so a busy machine slows both alike.
//!
//! Run with `cargo bench -p storage-graph` (`BENCH_N` sets the number of single
//! operations, default 2,000). Prints one table of operations per second and ratios.

use std::time::{Duration, Instant};

use falkordb::to_cypher_param;
use serde::{Deserialize, Serialize};
use storage_core::{BatchStorage, Result, Storage, StorageError};
use storage_graph::{EmbeddedServer, GraphConfig, GraphStorage};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    email: String,
}

fn user(i: usize) -> User {
    User {
        name: format!("user {i}"),
        age: u32::try_from(i % 90).unwrap_or(0),
        email: format!("u{i}@example.com"),
    }
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(storage_core::ErrorCode::Backend, e.to_string())
}

async fn raw_query(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &str,
    graph: &str,
    q: &str,
) -> Result<()> {
    redis::cmd(cmd)
        .arg(graph)
        .arg(q)
        .query_async::<redis::Value>(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

fn rate(n: usize, spent: Duration) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / spent.as_secs_f64().max(1e-9)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let batch = 10_000;
    let server = EmbeddedServer::start()?;
    let client = redis::Client::open(server.url()).map_err(backend)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(backend)?;

    raw_query(
        &mut conn,
        "GRAPH.QUERY",
        "raw",
        "CREATE INDEX FOR (n:User) ON (n.key)",
    )
    .await?;
    let store = GraphStorage::<User>::open(GraphConfig {
        url: Some(server.url().to_owned()),
        database: "adapter".into(),
        label: "User".into(),
        ..GraphConfig::default()
    })
    .await?;

    // Raw and adapter operations alternate, so that whatever else the machine is
    // doing slows both sides alike and the ratio stays meaningful.
    let (mut raw_create, mut create) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let value = user(i);
        let started = Instant::now();
        // Both sides start from the typed value: the raw client serializes it too.
        let json = serde_json::to_string(&value).map_err(backend)?;
        let q = format!(
            "CYPHER k={} v={} CREATE (:User {{key: $k, v: $v}})",
            to_cypher_param(&format!("user:{i}")).map_err(backend)?,
            to_cypher_param(&json).map_err(backend)?
        );
        raw_query(&mut conn, "GRAPH.QUERY", "raw", &q).await?;
        raw_create += started.elapsed();
        let started = Instant::now();
        store.set(&format!("user:{i}"), &value).await?;
        create += started.elapsed();
    }

    let rounds = 3;
    let (mut raw_batch, mut batched) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let entries: Vec<(String, User)> = (0..batch)
            .map(|i| (format!("row:{round}:{i}"), user(i)))
            .collect();
        let started = Instant::now();
        // Both sides start from the typed values: the raw client serializes them too.
        let rows = entries
            .iter()
            .map(|(k, v)| {
                Ok(std::collections::HashMap::from([
                    ("key", k.clone()),
                    ("v", serde_json::to_string(v).map_err(backend)?),
                ]))
            })
            .collect::<Result<Vec<_>>>()?;
        let q = format!(
            "CYPHER rows={} UNWIND $rows AS r CREATE (:User {{key: r.key, v: r.v}})",
            to_cypher_param(&rows).map_err(backend)?
        );
        drop(rows);
        raw_query(&mut conn, "GRAPH.QUERY", "raw", &q).await?;
        drop(q);
        raw_batch += started.elapsed();
        let started = Instant::now();
        store.set_many(entries).await?;
        batched += started.elapsed();
    }

    let (mut raw_get, mut get) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let started = Instant::now();
        let q = format!(
            "CYPHER k={} MATCH (n:User {{key: $k}}) RETURN n.v",
            to_cypher_param(&format!("user:{i}")).map_err(backend)?
        );
        raw_query(&mut conn, "GRAPH.RO_QUERY", "raw", &q).await?;
        raw_get += started.elapsed();
        let started = Instant::now();
        let found = store.get(&format!("user:{i}")).await?;
        get += started.elapsed();
        assert!(found.is_some());
    }
    let (raw_create, create) = (rate(n, raw_create), rate(n, create));
    let (raw_batch, batched) = (
        rate(batch * rounds, raw_batch),
        rate(batch * rounds, batched),
    );
    let (raw_get, get) = (rate(n, raw_get), rate(n, get));

    println!("workload                      raw ops/s   adapter ops/s   ratio");
    for (name, raw, ours) in [
        ("single create", raw_create, create),
        ("UNWIND batch of 10,000 rows", raw_batch, batched),
        ("indexed point get", raw_get, get),
    ] {
        println!("{name:<28} {raw:>10.0} {ours:>15.0} {:>7.2}", ours / raw);
    }
    Ok(())
}
