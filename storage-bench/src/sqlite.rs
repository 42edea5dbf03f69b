//! SQLite: the adapter and raw `rusqlite` with the adapter's pragmas and stored form.
//!
//! The raw side opens one connection with the adapter's defaults (`journal_mode =
//! WAL`, `synchronous = NORMAL`, `busy_timeout = 5000`, `foreign_keys = OFF`), creates
//! the adapter's table (`id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, value TEXT
//! NOT NULL`, the value as JSON text), writes with the adapter's upsert statement, and
//! indexes `json_extract(value, '$.field')` as the adapter's btree indexes do. Every
//! value is serialized with `serde_json` on the way in and deserialized on the way out.
//!
//! Checkpoints are outside the timed writes on both sides: the adapter turns SQLite's
//! automatic checkpoint off on its writer connection and runs `PASSIVE` checkpoints on
//! its writer thread, off the caller's path, so the raw connection turns it off too
//! (`wal_autocheckpoint = 0`) and checkpoints after each timed write phase, untimed.
//! Timing the raw side's checkpoints (which sync the file) against the adapter's
//! would credit the adapter with work it only moved to another thread.

use std::path::Path;

use rusqlite::{Connection, params};
use storage_core::config::SqliteConfig;
use storage_core::{ErrorCode, Result, StorageError};
use storage_sqlite::SqliteStorage;

use crate::adapter;
use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

fn sql(e: rusqlite::Error) -> StorageError {
    StorageError::new(ErrorCode::Backend, "raw sqlite call failed").with_source(e)
}

fn json(e: serde_json::Error) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, "raw sqlite: json failed").with_source(e)
}

/// One run of the adapter, with or without its change log.
pub async fn adapter_run(dir: &Path, w: &Workload, change_log: bool) -> Result<Sample> {
    let open = |name: &str| {
        SqliteStorage::<Doc>::open(
            SqliteConfig::new(dir.join(name).to_string_lossy())
                .table_name("docs")
                .change_log(change_log),
        )
    };
    let single = open("adapter-single.db").await?;
    let bulk = open("adapter-bulk.db").await?;
    adapter::run(&single, &bulk, w).await
}

fn open_raw(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(sql)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(sql)?;
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql)?;
    conn.execute_batch(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, value TEXT NOT NULL)",
    )
    .map_err(sql)?;
    Ok(conn)
}

/// Copies the WAL into the database, untimed (see the module docs).
fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .map_err(sql)
}

const UPSERT: &str = "INSERT INTO docs (key, value) VALUES (?1, ?2) \
                      ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Runs a query returning `(key, value)` rows and decodes every value.
fn rows(conn: &Connection, query: &str, args: impl rusqlite::Params) -> Result<Vec<(String, Doc)>> {
    let mut stmt = conn.prepare_cached(query).map_err(sql)?;
    let mut rows = stmt.query(args).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let k: String = row.get(0).map_err(sql)?;
        let v: String = row.get(1).map_err(sql)?;
        out.push((k, serde_json::from_str(&v).map_err(json)?));
    }
    Ok(out)
}

/// One run of raw rusqlite.
pub fn raw_run(dir: &Path, w: &Workload) -> Result<Sample> {
    let mut s = Sample::default();
    let single = open_raw(&dir.join("raw-single.db"))?;
    let mut bulk = open_raw(&dir.join("raw-bulk.db"))?;

    let t = start();
    for (k, d) in w.single() {
        let v = serde_json::to_string(d).map_err(json)?;
        single
            .prepare_cached(UPSERT)
            .and_then(|mut st| st.execute(params![k, v]))
            .map_err(sql)?;
    }
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );
    checkpoint(&single)?;

    let t = start();
    let tx = bulk.transaction().map_err(sql)?;
    {
        let mut st = tx.prepare_cached(UPSERT).map_err(sql)?;
        for (k, d) in &w.docs {
            let v = serde_json::to_string(d).map_err(json)?;
            st.execute(params![k, v]).map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());
    checkpoint(&bulk)?;

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        let v: Option<String> = {
            let mut st = bulk
                .prepare_cached("SELECT value FROM docs WHERE key = ?1")
                .map_err(sql)?;
            let mut r = st.query(params![key(i)]).map_err(sql)?;
            match r.next().map_err(sql)? {
                Some(row) => Some(row.get(0).map_err(sql)?),
                None => None,
            }
        };
        if let Some(v) = v {
            let _doc: Doc = serde_json::from_str(&v).map_err(json)?;
            found += 1;
        }
    }
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    queries(&bulk, w, &mut s, Op::AuthorScan, Op::WindowScan)?;

    let t = start();
    bulk.execute_batch(
        "CREATE INDEX docs_author ON docs (json_extract(value, '$.author'));
         CREATE INDEX docs_created_at ON docs (json_extract(value, '$.created_at'));",
    )
    .map_err(sql)?;
    s.record(Op::CreateIndexes, t.elapsed(), 1, 2);
    checkpoint(&bulk)?;

    queries(&bulk, w, &mut s, Op::AuthorIndexed, Op::WindowIndexed)?;

    let t = start();
    let all = rows(&bulk, "SELECT key, value FROM docs ORDER BY key", [])?;
    s.record(Op::Iterate, t.elapsed(), 1, all.len());
    Ok(s)
}

fn queries(
    conn: &Connection,
    w: &Workload,
    s: &mut Sample,
    author_op: Op,
    window_op: Op,
) -> Result<()> {
    let t = start();
    let mut results = 0;
    for a in &w.authors {
        results += rows(
            conn,
            "SELECT key, value FROM docs WHERE json_extract(value, '$.author') = ?1 ORDER BY key",
            params![a],
        )?
        .len();
    }
    s.record(author_op, t.elapsed(), w.authors.len(), results);

    let limit = i64::try_from(WINDOW_LIMIT).unwrap_or(i64::MAX);
    let t = start();
    let mut results = 0;
    for &(from, to) in &w.windows {
        results += rows(
            conn,
            "SELECT key, value FROM docs \
             WHERE json_extract(value, '$.created_at') >= ?1 AND json_extract(value, '$.created_at') < ?2 \
             ORDER BY json_extract(value, '$.created_at'), key LIMIT ?3",
            params![from, to, limit],
        )?
        .len();
    }
    s.record(window_op, t.elapsed(), w.windows.len(), results);
    Ok(())
}
