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
//! a thread and connection of their own, off the caller's path (past 4000 WAL pages one
//! on its writer thread, timed here as any write), so the raw connection turns it off too
//! (`wal_autocheckpoint = 0`) and checkpoints after each timed write phase, untimed.
//! Timing the raw side's checkpoints (which sync the file) against the adapter's
//! would credit the adapter with work it only moved to another thread.
//!
//! The read rows (gets, the four queries, iteration) are measured again in
//! [`interleaved_reads`]: raw, adapter and logged adapter are loaded side by side and
//! take turns pass by pass (the order rotating each pass), and each row is the median of
//! the passes. A run's reads take a few milliseconds, so a burst of other load on the
//! machine during one side's run would otherwise decide the ratio; in turns, both sides
//! see the same load. Each pass does exactly the work a run does for that row. The two
//! insert rows are measured in turns the same way ([`interleaved_writes`]), each pass
//! on fresh stores; index creation keeps the runs' median.

use std::path::Path;

use rusqlite::{Connection, params};
use storage_core::config::SqliteConfig;
use storage_core::{ErrorCode, Result, StorageError};
use storage_sqlite::SqliteStorage;

use futures::StreamExt;
use storage_core::{BatchStorage, IndexDefinition, IndexKind, IndexedStorage, Storage};

use crate::adapter;
use crate::measure::{Op, Sample, median, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

fn sql(e: rusqlite::Error) -> StorageError {
    StorageError::new(ErrorCode::Backend, "raw sqlite call failed").with_source(e)
}

fn poisoned() -> StorageError {
    StorageError::new(
        ErrorCode::Backend,
        "raw sqlite: the connection's lock is poisoned",
    )
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
    raw_insert_one(&single, w)?;
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );
    checkpoint(&single)?;

    let t = start();
    raw_insert_batch(&mut bulk, w)?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());
    checkpoint(&bulk)?;

    let t = start();
    let found = raw_gets(&bulk, w)?;
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    queries(&bulk, w, &mut s, Op::AuthorScan, Op::WindowScan)?;

    let t = start();
    raw_indexes(&bulk)?;
    s.record(Op::CreateIndexes, t.elapsed(), 1, 2);
    checkpoint(&bulk)?;

    queries(&bulk, w, &mut s, Op::AuthorIndexed, Op::WindowIndexed)?;

    let t = start();
    let all = raw_iterate(&bulk)?;
    s.record(Op::Iterate, t.elapsed(), 1, all);
    Ok(s)
}

/// The first `single_inserts` documents, one autocommit upsert each.
fn raw_insert_one(conn: &Connection, w: &Workload) -> Result<()> {
    for (k, d) in w.single() {
        let v = serde_json::to_string(d).map_err(json)?;
        conn.prepare_cached(UPSERT)
            .and_then(|mut st| st.execute(params![k, v]))
            .map_err(sql)?;
    }
    Ok(())
}

/// Every document, in one transaction.
fn raw_insert_batch(conn: &mut Connection, w: &Workload) -> Result<()> {
    let tx = conn.transaction().map_err(sql)?;
    {
        let mut st = tx.prepare_cached(UPSERT).map_err(sql)?;
        for (k, d) in &w.docs {
            let v = serde_json::to_string(d).map_err(json)?;
            st.execute(params![k, v]).map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)
}

/// The write rows measured by [`interleaved_writes`].
pub const WRITE_OPS: [Op; 2] = [Op::InsertOne, Op::InsertBatch];

/// The samples of the three subjects measured in turns (raw, the adapter, the adapter
/// with its change log), one per pass and operation.
#[derive(Default)]
struct Turns([Vec<Sample>; 3]);

impl Turns {
    /// Records one pass of `op` by subject `subject` (0 raw, 1 adapter, 2 change log).
    fn record(
        &mut self,
        subject: usize,
        op: Op,
        elapsed: std::time::Duration,
        units: usize,
        results: usize,
    ) {
        let mut sample = Sample::default();
        sample.record(op, elapsed, units, results);
        if let Some(s) = self.0.get_mut(subject) {
            s.push(sample);
        }
    }

    /// Each subject's median over its passes.
    fn medians(self) -> [Sample; 3] {
        let [r, a, l] = self.0;
        [median(&r), median(&a), median(&l)]
    }
}

/// The insert rows of raw rusqlite, the adapter and the adapter with its change log,
/// measured in turns as [`interleaved_reads`] measures the read rows: `passes` times per
/// row, each subject writes into a fresh, empty store of its own, the first subject
/// rotating from pass to pass. What follows the timed writes is untimed, as in a run:
/// raw's checkpoint, and closing the adapter, which first finishes the checkpoint the
/// writes started (so it never runs during another subject's turn).
pub async fn interleaved_writes(w: &Workload, passes: usize) -> Result<[Sample; 3]> {
    let mut turns = Turns::default();
    for op in WRITE_OPS {
        let units = if op == Op::InsertOne {
            w.single_inserts
        } else {
            1
        };
        let results = if op == Op::InsertOne {
            w.single_inserts
        } else {
            w.docs.len()
        };
        for pass in 0..passes {
            for i in crate::rotation(pass, &[0usize, 1, 2]) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("writes.db");
                let elapsed = if i == 0 {
                    let mut conn = open_raw(&path)?;
                    let t = start();
                    if op == Op::InsertOne {
                        raw_insert_one(&conn, w)?;
                    } else {
                        raw_insert_batch(&mut conn, w)?;
                    }
                    let elapsed = t.elapsed();
                    checkpoint(&conn)?;
                    elapsed
                } else {
                    let store = SqliteStorage::<Doc>::open(
                        SqliteConfig::new(path.to_string_lossy())
                            .table_name("docs")
                            .change_log(i == 2),
                    )
                    .await?;
                    let entries = w.docs.clone();
                    let t = start();
                    if op == Op::InsertOne {
                        for (k, d) in w.single() {
                            store.set(k, d).await?;
                        }
                    } else {
                        store.set_many(entries).await?;
                    }
                    let elapsed = t.elapsed();
                    drop(store);
                    elapsed
                };
                turns.record(i, op, elapsed, units, results);
            }
        }
    }
    Ok(turns.medians())
}

/// Gets every key of the workload's gets and decodes each value found.
fn raw_gets(conn: &Connection, w: &Workload) -> Result<usize> {
    let mut found = 0;
    for &i in &w.gets {
        let v: Option<String> = {
            let mut st = conn
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
    Ok(found)
}

/// The expression indexes the adapter's btree indexes are.
fn raw_indexes(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE INDEX docs_author ON docs (json_extract(value, '$.author'));
         CREATE INDEX docs_created_at ON docs (json_extract(value, '$.created_at'));",
    )
    .map_err(sql)
}

/// Every entry in key order, each decoded and then dropped, as the adapter's caller
/// takes and drops each entry of its stream (collecting them all would time 100,000
/// live values on this side only); the number seen.
fn raw_iterate(conn: &Connection) -> Result<usize> {
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM docs ORDER BY key")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut seen = 0;
    while let Some(row) = rows.next().map_err(sql)? {
        let k: String = row.get(0).map_err(sql)?;
        let v: String = row.get(1).map_err(sql)?;
        let entry: (String, Doc) = (k, serde_json::from_str(&v).map_err(json)?);
        std::hint::black_box(&entry);
        seen += 1;
    }
    Ok(seen)
}

fn queries(
    conn: &Connection,
    w: &Workload,
    s: &mut Sample,
    author_op: Op,
    window_op: Op,
) -> Result<()> {
    let t = start();
    let results = raw_authors(conn, w)?;
    s.record(author_op, t.elapsed(), w.authors.len(), results);

    let t = start();
    let results = raw_windows(conn, w)?;
    s.record(window_op, t.elapsed(), w.windows.len(), results);
    Ok(())
}

/// The `author == X` queries; the number of results.
fn raw_authors(conn: &Connection, w: &Workload) -> Result<usize> {
    let mut results = 0;
    for a in &w.authors {
        results += rows(
            conn,
            "SELECT key, value FROM docs WHERE json_extract(value, '$.author') = ?1 ORDER BY key",
            params![a],
        )?
        .len();
    }
    Ok(results)
}

/// The window queries; the number of results.
fn raw_windows(conn: &Connection, w: &Workload) -> Result<usize> {
    let limit = i64::try_from(WINDOW_LIMIT).unwrap_or(i64::MAX);
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
    Ok(results)
}

/// The read rows measured by [`interleaved_reads`], in the order they run.
pub const READ_OPS: [Op; 6] = [
    Op::Get,
    Op::AuthorScan,
    Op::WindowScan,
    Op::AuthorIndexed,
    Op::WindowIndexed,
    Op::Iterate,
];

/// Runs read row `op` once on raw rusqlite, as a run does; the number of results and
/// the units timed.
fn raw_pass(conn: &Connection, op: Op, w: &Workload) -> Result<(usize, usize)> {
    match op {
        Op::Get => Ok((raw_gets(conn, w)?, w.gets.len())),
        Op::AuthorScan | Op::AuthorIndexed => Ok((raw_authors(conn, w)?, w.authors.len())),
        Op::WindowScan | Op::WindowIndexed => Ok((raw_windows(conn, w)?, w.windows.len())),
        _ => Ok((raw_iterate(conn)?, 1)),
    }
}

/// Runs read row `op` once on an adapter, as the generic run does; the number of
/// results and the units timed.
async fn adapter_pass(
    store: &dyn IndexedStorage<Doc>,
    op: Op,
    w: &Workload,
) -> Result<(usize, usize)> {
    match op {
        Op::Get => {
            let mut found = 0;
            for &i in &w.gets {
                found += usize::from(store.get(&key(i)).await?.is_some());
            }
            Ok((found, w.gets.len()))
        }
        Op::AuthorScan | Op::AuthorIndexed => {
            let mut results = 0;
            for a in &w.authors {
                results += store.find_many(&adapter::author_query(a)).await?.len();
            }
            Ok((results, w.authors.len()))
        }
        Op::WindowScan | Op::WindowIndexed => {
            let mut results = 0;
            for &(from, to) in &w.windows {
                results += store
                    .find_many(&adapter::window_query(from, to))
                    .await?
                    .len();
            }
            Ok((results, w.windows.len()))
        }
        _ => {
            let mut seen = 0;
            let mut entries = store.entries();
            while let Some(entry) = entries.next().await {
                entry?;
                seen += 1;
            }
            Ok((seen, 1))
        }
    }
}

/// The read rows of raw rusqlite, the adapter and the adapter with its change log,
/// measured in turns: each loads every document (untimed), then for each read row,
/// `passes` times, each subject runs the row once, the first subject rotating from pass
/// to pass; the indexes are created (untimed) between the unindexed and the indexed
/// rows. Returns, per subject, the median of its passes.
pub async fn interleaved_reads(dir: &Path, w: &Workload, passes: usize) -> Result<[Sample; 3]> {
    let raw = open_raw(&dir.join("raw-reads.db"))?;
    {
        let tx = raw.unchecked_transaction().map_err(sql)?;
        {
            let mut st = tx.prepare_cached(UPSERT).map_err(sql)?;
            for (k, d) in &w.docs {
                let v = serde_json::to_string(d).map_err(json)?;
                st.execute(params![k, v]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
    }
    checkpoint(&raw)?;
    let open = |name: &str, change_log: bool| {
        SqliteStorage::<Doc>::open(
            SqliteConfig::new(dir.join(name).to_string_lossy())
                .table_name("docs")
                .change_log(change_log),
        )
    };
    let plain = open("adapter-reads.db", false).await?;
    let logged = open("adapter-logged-reads.db", true).await?;
    for store in [&plain, &logged] {
        store.set_many(w.docs.clone()).await?;
    }
    // A connection is not `Sync`: the task holds it behind a lock, taken before the
    // clock starts.
    let raw = std::sync::Mutex::new(raw);
    let adapters: [&dyn IndexedStorage<Doc>; 2] = [&plain, &logged];
    let mut turns = Turns::default();
    for op in READ_OPS {
        if op == Op::AuthorIndexed {
            {
                let conn = raw.lock().map_err(|_| poisoned())?;
                raw_indexes(&conn)?;
                checkpoint(&conn)?;
            }
            for store in adapters {
                for (name, path) in [("by_author", "author"), ("by_created_at", "created_at")] {
                    store
                        .create_index(IndexDefinition::new(name, path, IndexKind::Btree))
                        .await?;
                }
            }
        }
        for pass in 0..passes {
            for i in crate::rotation(pass, &[0usize, 1, 2]) {
                let ((results, units), elapsed) =
                    if let Some(store) = i.checked_sub(1).and_then(|a| adapters.get(a)) {
                        let t = start();
                        let out = adapter_pass(*store, op, w).await?;
                        (out, t.elapsed())
                    } else {
                        let conn = raw.lock().map_err(|_| poisoned())?;
                        let t = start();
                        let out = raw_pass(&conn, op, w)?;
                        (out, t.elapsed())
                    };
                turns.record(i, op, elapsed, units, results);
            }
        }
    }
    Ok(turns.medians())
}
