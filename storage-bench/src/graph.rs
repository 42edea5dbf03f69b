//! FalkorDB: the adapter and raw Cypher sent with the `redis` crate, on one embedded
//! server started once for the whole benchmark.
//!
//! The raw side stores what a hand-written client would: one `(:Doc)` node per
//! document with `key`, the document as a JSON string `v` (read back with
//! `serde_json`), and the two queried fields `author` and `created_at` as properties;
//! an index on `key` exists from the start (the adapter creates its key index on open,
//! outside the timings too). Inserts are plain `CREATE`s (the raw client knows its keys
//! are new; the adapter upserts), the batch is one `UNWIND` query, reads use
//! `GRAPH.RO_QUERY`, and iteration is one `ORDER BY key` query (the adapter pages).
//! After creating indexes both sides wait until FalkorDB reports them operational.
//! Every key and value travels as a query parameter, encoded by the `falkordb` crate's
//! encoder, as in the adapter.

use std::collections::BTreeMap;

use falkordb::{FalkorValue, IntoFalkorParam, to_cypher_param};
use redis::Value;
use redis::aio::MultiplexedConnection;
use storage_core::config::GraphConfig;
use storage_core::{ErrorCode, Result, StorageError};
use storage_graph::{EmbeddedServer, GraphStorage};

use crate::adapter;
use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(ErrorCode::Backend, format!("raw falkordb: {e}"))
}

/// The server both sides use, and a raw connection to it.
pub struct Server {
    server: EmbeddedServer,
    conn: MultiplexedConnection,
}

impl Server {
    /// Starts an embedded FalkorDB server.
    pub async fn start() -> Result<Self> {
        let server = EmbeddedServer::start()?;
        let client = redis::Client::open(server.url()).map_err(backend)?;
        // No response time-out: the 100,000-row batch legitimately takes seconds.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(backend)?;
        Ok(Self { server, conn })
    }

    /// Drops every graph and stream, so each run starts from an empty server.
    pub async fn flush(&mut self) -> Result<()> {
        redis::cmd("FLUSHALL")
            .query_async::<Value>(&mut self.conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// One run of the adapter.
pub async fn adapter_run(server: &mut Server, w: &Workload) -> Result<Sample> {
    let open = |database: &str| {
        GraphStorage::<Doc>::open(GraphConfig {
            url: Some(server.server.url().to_owned()),
            database: database.to_owned(),
            label: "Doc".to_owned(),
            ..GraphConfig::default()
        })
    };
    let single = open("adapter_single").await?;
    let bulk = open("adapter_bulk").await?;
    let sample = adapter::run(&single, &bulk, w).await;
    drop((single, bulk));
    server.flush().await?;
    sample
}

/// The issue's batch: the workload's first [`TURN_ROWS`] documents in one batch, each
/// side into a fresh graph, the two sides taking turns pass by pass (the first
/// alternating). Returns the raw and the adapter time of each pass.
pub async fn batch_turns(
    server: &mut Server,
    w: &Workload,
    passes: usize,
) -> Result<Vec<(std::time::Duration, std::time::Duration)>> {
    let docs = &w.docs[..w.docs.len().min(TURN_ROWS)];
    let mut out = Vec::with_capacity(passes);
    for pass in 0..passes {
        let (mut raw, mut ours) = (None, None);
        for adapter_turn in [pass % 2 == 1, pass % 2 == 0] {
            if adapter_turn {
                let store = GraphStorage::<Doc>::open(GraphConfig {
                    url: Some(server.server.url().to_owned()),
                    database: format!("turn_adapter_{pass}"),
                    label: "Doc".to_owned(),
                    ..GraphConfig::default()
                })
                .await?;
                let entries = docs.to_vec();
                let t = start();
                storage_core::BatchStorage::set_many(&store, entries).await?;
                ours = Some(t.elapsed());
            } else {
                let graph = format!("turn_raw_{pass}");
                send(
                    &mut server.conn,
                    "GRAPH.QUERY",
                    &graph,
                    "CREATE INDEX FOR (n:Doc) ON (n.key)",
                )
                .await?;
                let t = start();
                raw_batch(&mut server.conn, &graph, docs).await?;
                raw = Some(t.elapsed());
            }
        }
        server.flush().await?;
        if let (Some(raw), Some(ours)) = (raw, ours) {
            out.push((raw, ours));
        }
    }
    Ok(out)
}

/// Single creates: the workload's one-by-one documents in `passes` passes of equal
/// size, the two sides taking turns pass by pass (the first alternating), each writing
/// into one graph of its own. Returns the raw and the adapter time of each pass. The
/// runs' single creates are one block per side, minutes apart, and their ratio swung
/// 0.95–1.4× between runs of the same build.
pub async fn single_turns(
    server: &mut Server,
    w: &Workload,
    passes: usize,
) -> Result<Vec<(std::time::Duration, std::time::Duration)>> {
    let docs = w.single();
    let per_pass = docs.len().div_ceil(passes.max(1)).max(1);
    let graph = "single_turn_raw";
    send(
        &mut server.conn,
        "GRAPH.QUERY",
        graph,
        "CREATE INDEX FOR (n:Doc) ON (n.key)",
    )
    .await?;
    let store = GraphStorage::<Doc>::open(GraphConfig {
        url: Some(server.server.url().to_owned()),
        database: "single_turn_adapter".to_owned(),
        label: "Doc".to_owned(),
        ..GraphConfig::default()
    })
    .await?;
    let mut out = Vec::with_capacity(passes);
    for (pass, chunk) in docs.chunks(per_pass).enumerate() {
        let (mut raw, mut ours) = (None, None);
        for adapter_turn in [pass % 2 == 1, pass % 2 == 0] {
            let t = start();
            if adapter_turn {
                for (k, d) in chunk {
                    storage_core::Storage::set(&store, k, d).await?;
                }
                ours = Some(t.elapsed());
            } else {
                for (k, d) in chunk {
                    raw_create(&mut server.conn, graph, k, d).await?;
                }
                raw = Some(t.elapsed());
            }
        }
        if let (Some(raw), Some(ours)) = (raw, ours) {
            out.push((raw, ours));
        }
    }
    drop(store);
    server.flush().await?;
    Ok(out)
}

/// One `CREATE` of a document, from the typed value: what a hand-written client sends
/// for a single create.
async fn raw_create(conn: &mut MultiplexedConnection, graph: &str, k: &str, d: &Doc) -> Result<()> {
    let query = Q::new()
        .p("r", &row(k, d)?)?
        .body("CREATE (:Doc {key: $r.key, v: $r.v, author: $r.author, created_at: $r.created_at})");
    send(conn, "GRAPH.QUERY", graph, &query).await?;
    Ok(())
}

/// Rows in the issue's batch (see [`batch_turns`]).
pub const TURN_ROWS: usize = 10_000;

/// One `UNWIND … CREATE` of `docs`, from the typed values: what a hand-written client
/// sends for a batch.
async fn raw_batch(
    conn: &mut MultiplexedConnection,
    graph: &str,
    docs: &[(String, Doc)],
) -> Result<()> {
    let rows = docs
        .iter()
        .map(|(k, d)| row(k, d))
        .collect::<Result<Vec<_>>>()?;
    let query = Q::new().p("rows", &rows)?.body(
        "UNWIND $rows AS r CREATE (:Doc {key: r.key, v: r.v, author: r.author, created_at: r.created_at})",
    );
    drop(rows);
    send(conn, "GRAPH.QUERY", graph, &query).await?;
    Ok(())
}

/// A Cypher query with its parameters in the `CYPHER name=value` header.
struct Q(String);

impl Q {
    fn new() -> Self {
        Self("CYPHER".to_owned())
    }

    fn p<V: IntoFalkorParam + ?Sized>(mut self, name: &str, value: &V) -> Result<Self> {
        let literal = to_cypher_param(value).map_err(backend)?;
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push('=');
        self.0.push_str(&literal);
        Ok(self)
    }

    fn body(mut self, body: &str) -> String {
        self.0.push(' ');
        self.0.push_str(body);
        self.0
    }
}

async fn send(conn: &mut MultiplexedConnection, cmd: &str, graph: &str, q: &str) -> Result<Value> {
    redis::cmd(cmd)
        .arg(graph)
        .arg(q)
        .query_async::<Value>(conn)
        .await
        .map_err(backend)
}

fn cell(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// `(key, doc)` from the rows of a `RETURN n.key, n.v` reply.
fn docs_of(reply: Value) -> Result<Vec<(String, Doc)>> {
    let Value::Array(mut parts) = reply else {
        return Err(backend("reply is not an array"));
    };
    if parts.len() < 3 {
        return Ok(Vec::new());
    }
    let Value::Array(rows) = parts.swap_remove(1) else {
        return Err(backend("rows are not an array"));
    };
    rows.iter()
        .map(|row| {
            let Value::Array(cells) = row else {
                return Err(backend("row is not an array"));
            };
            let (Some(k), Some(v)) = (cells.first().and_then(cell), cells.get(1).and_then(cell))
            else {
                return Err(backend("row without key and value"));
            };
            let k = String::from_utf8(k.to_vec()).map_err(backend)?;
            Ok((k, serde_json::from_slice(v).map_err(backend)?))
        })
        .collect()
}

fn row(k: &str, d: &Doc) -> Result<BTreeMap<&'static str, FalkorValue>> {
    Ok(BTreeMap::from([
        ("key", FalkorValue::String(k.to_owned())),
        (
            "v",
            FalkorValue::String(serde_json::to_string(d).map_err(backend)?),
        ),
        ("author", FalkorValue::String(d.author.clone())),
        ("created_at", FalkorValue::I64(d.created_at)),
    ]))
}

/// One run of raw Cypher.
pub async fn raw_run(server: &mut Server, w: &Workload) -> Result<Sample> {
    let sample = raw_inner(&mut server.conn, w).await;
    server.flush().await?;
    sample
}

async fn raw_inner(conn: &mut MultiplexedConnection, w: &Workload) -> Result<Sample> {
    let mut sample = Sample::default();
    let (single, bulk) = ("raw_single", "raw_bulk");
    for g in [single, bulk] {
        send(
            conn,
            "GRAPH.QUERY",
            g,
            "CREATE INDEX FOR (n:Doc) ON (n.key)",
        )
        .await?;
    }

    let t = start();
    for (k, d) in w.single() {
        raw_create(conn, single, k, d).await?;
    }
    sample.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );

    let t = start();
    raw_batch(conn, bulk, &w.docs).await?;
    sample.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        let query = Q::new()
            .p("k", &key(i))?
            .body("MATCH (n:Doc {key: $k}) RETURN n.key, n.v");
        found += docs_of(send(conn, "GRAPH.RO_QUERY", bulk, &query).await?)?.len();
    }
    sample.record(Op::Get, t.elapsed(), w.gets.len(), found);

    queries(conn, bulk, w, &mut sample, Op::AuthorScan, Op::WindowScan).await?;

    let t = start();
    send(
        conn,
        "GRAPH.QUERY",
        bulk,
        "CREATE INDEX FOR (n:Doc) ON (n.author)",
    )
    .await?;
    send(
        conn,
        "GRAPH.QUERY",
        bulk,
        "CREATE INDEX FOR (n:Doc) ON (n.created_at)",
    )
    .await?;
    wait_for_indexes(conn, bulk).await?;
    sample.record(Op::CreateIndexes, t.elapsed(), 1, 2);

    queries(
        conn,
        bulk,
        w,
        &mut sample,
        Op::AuthorIndexed,
        Op::WindowIndexed,
    )
    .await?;

    // One query for everything: the fastest a hand-written client can iterate (the
    // adapter pages, 5,000 entries a query, to bound its memory).
    let t = start();
    let all = docs_of(
        send(
            conn,
            "GRAPH.RO_QUERY",
            bulk,
            "MATCH (n:Doc) RETURN n.key, n.v ORDER BY n.key",
        )
        .await?,
    )?;
    let seen = all.len();
    drop(all);
    sample.record(Op::Iterate, t.elapsed(), 1, seen);
    Ok(sample)
}

/// FalkorDB fills a new index in the background; like the adapter, wait until every
/// index of the label is operational, so the indexed queries really use them.
async fn wait_for_indexes(conn: &mut MultiplexedConnection, graph: &str) -> Result<()> {
    let q = "CALL db.indexes() YIELD label, status WHERE label = 'Doc' RETURN status";
    loop {
        let reply = send(conn, "GRAPH.RO_QUERY", graph, q).await?;
        let Value::Array(parts) = reply else {
            return Err(backend("reply is not an array"));
        };
        let building = match parts.get(1) {
            Some(Value::Array(rows)) => rows.iter().any(|row| match row {
                Value::Array(cells) => {
                    cells.first().and_then(cell) != Some(b"OPERATIONAL".as_slice())
                }
                _ => true,
            }),
            _ => false,
        };
        if !building {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn queries(
    conn: &mut MultiplexedConnection,
    graph: &str,
    w: &Workload,
    s: &mut Sample,
    author_op: Op,
    window_op: Op,
) -> Result<()> {
    let t = start();
    let mut results = 0;
    for a in &w.authors {
        let q = Q::new()
            .p("a", a)?
            .body("MATCH (n:Doc) WHERE n.author = $a RETURN n.key, n.v ORDER BY n.key");
        results += docs_of(send(conn, "GRAPH.RO_QUERY", graph, &q).await?)?.len();
    }
    s.record(author_op, t.elapsed(), w.authors.len(), results);

    let t = start();
    let mut results = 0;
    for &(from, to) in &w.windows {
        let q = Q::new()
            .p("f", &from)?
            .p("t", &to)?
            .p("l", &i64::try_from(WINDOW_LIMIT).unwrap_or(i64::MAX))?
            .body(
                "MATCH (n:Doc) WHERE n.created_at >= $f AND n.created_at < $t \
                 RETURN n.key, n.v ORDER BY n.created_at, n.key LIMIT $l",
            );
        results += docs_of(send(conn, "GRAPH.RO_QUERY", graph, &q).await?)?.len();
    }
    s.record(window_op, t.elapsed(), w.windows.len(), results);
    Ok(())
}
