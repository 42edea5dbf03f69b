//! The adapter against raw FalkorDB commands, on one server, in one run.
//!
//! Workloads (the same data both ways): single creates, one `UNWIND` batch of 10,000
//! rows, and point gets through the key index. "Raw" sends the plain Cypher a
//! hand-written client would (`CREATE`, `UNWIND … CREATE`, `MATCH … RETURN`) with the
//! redis crate; the adapter adds its encoding, promoted properties, the change stream
//! and the write version, all inside one `MULTI`/`EXEC` per write.
//!
//! Raw and adapter operations alternate (creates and gets one by one, batches round by
//! round), and which side goes first swaps every time, so a busy machine slows both
//! alike and neither always runs just after the other. A batch round is a few tens of
//! milliseconds, so one stall can swing it (single rounds range from about 0.55 to 1.5
//! on a 2-core machine): the batch row also reports the median and range of the
//! per-round ratios, and 25 rounds are run, over which the total moved by about ±0.02
//! between runs of one build, where 9 moved by ±0.04.
//!
//! Run with `cargo bench -p storage-graph` (`BENCH_N` sets the number of single
//! operations, default 2,000; `BENCH_ROUNDS` the number of batch rounds, default 25).
//! Prints one table of operations per second and ratios.

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

/// How long `op` takes.
async fn timed(op: impl std::future::Future<Output = Result<()>>) -> Result<Duration> {
    let started = Instant::now();
    op.await?;
    Ok(started.elapsed())
}

/// Times `raw` and `ours` one after the other, raw first when `raw_first`.
async fn pair(
    raw_first: bool,
    raw: impl std::future::Future<Output = Result<()>>,
    ours: impl std::future::Future<Output = Result<()>>,
) -> Result<(Duration, Duration)> {
    if raw_first {
        let raw = timed(raw).await?;
        Ok((raw, timed(ours).await?))
    } else {
        let ours = timed(ours).await?;
        Ok((timed(raw).await?, ours))
    }
}

/// Raw single create: the value serialized by the client, as a hand-written one would.
async fn raw_create(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    value: &User,
) -> Result<()> {
    let json = serde_json::to_string(value).map_err(backend)?;
    let q = format!(
        "CYPHER k={} v={} CREATE (:User {{key: $k, v: $v}})",
        to_cypher_param(key).map_err(backend)?,
        to_cypher_param(&json).map_err(backend)?
    );
    raw_query(conn, "GRAPH.QUERY", "raw", &q).await
}

/// Raw batch: one `UNWIND … CREATE` of every entry, serialized by the client.
async fn raw_batch(
    conn: &mut redis::aio::MultiplexedConnection,
    entries: &[(String, User)],
) -> Result<()> {
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
    raw_query(conn, "GRAPH.QUERY", "raw", &q).await
}

/// Raw point get through the key index.
async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Result<()> {
    let q = format!(
        "CYPHER k={} MATCH (n:User {{key: $k}}) RETURN n.v",
        to_cypher_param(key).map_err(backend)?
    );
    raw_query(conn, "GRAPH.RO_QUERY", "raw", &q).await
}

fn rate(n: usize, spent: Duration) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / spent.as_secs_f64().max(1e-9)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let n = env_count("BENCH_N", 2000);
    let rounds = env_count("BENCH_ROUNDS", 25);
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

    // Both sides start from the typed value: the raw client serializes it too.
    let (mut raw_creates, mut creates) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let (key, value) = (format!("user:{i}"), user(i));
        let (raw, ours) = pair(
            i % 2 == 0,
            raw_create(&mut conn, &key, &value),
            store.set(&key, &value),
        )
        .await?;
        raw_creates += raw;
        creates += ours;
    }

    // The batches go into labels that already hold the single creates, so every
    // adapter batch is an upsert (it checks which of its keys exist); raw creates.
    let (mut raw_batches, mut batches) = (Duration::ZERO, Duration::ZERO);
    let mut round_ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let entries: Vec<(String, User)> = (0..batch)
            .map(|i| (format!("row:{round}:{i}"), user(i)))
            .collect();
        let ours_entries = entries.clone();
        let (raw, ours) = pair(round % 2 == 0, raw_batch(&mut conn, &entries), async {
            store.set_many(ours_entries).await.map(drop)
        })
        .await?;
        raw_batches += raw;
        batches += ours;
        round_ratios.push(raw.as_secs_f64() / ours.as_secs_f64().max(1e-9));
    }

    let (mut raw_gets, mut gets) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let key = format!("user:{i}");
        let found = std::cell::Cell::new(false);
        let (raw, ours) = pair(i % 2 == 1, raw_get(&mut conn, &key), async {
            found.set(store.get(&key).await?.is_some());
            Ok(())
        })
        .await?;
        assert!(found.get(), "{key} was written by the adapter");
        raw_gets += raw;
        gets += ours;
    }

    println!("workload                      raw ops/s   adapter ops/s   ratio");
    for (name, raw, ours) in [
        ("single create", rate(n, raw_creates), rate(n, creates)),
        (
            "UNWIND batch of 10,000 rows",
            rate(batch * rounds, raw_batches),
            rate(batch * rounds, batches),
        ),
        ("indexed point get", rate(n, raw_gets), rate(n, gets)),
    ] {
        println!("{name:<28} {raw:>10.0} {ours:>15.0} {:>7.2}", ours / raw);
    }
    round_ratios.sort_by(f64::total_cmp);
    if let (Some(low), Some(high)) = (round_ratios.first(), round_ratios.last()) {
        println!(
            "batch, per round ({rounds} rounds): median {:.2}, range {low:.2}-{high:.2}",
            round_ratios[round_ratios.len() / 2]
        );
    }
    Ok(())
}
