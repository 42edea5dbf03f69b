//! Peer libraries that do the adapters' job, on the same workload: `redb`, an embedded
//! ACID key-value store in pure Rust (copy-on-write B-trees in one file).
//!
//! The peer stores what the SQLite adapter stores — each `Doc` as JSON bytes from
//! `serde_json` under its key — with redb's default durability (`Immediate`: every
//! commit is on disk when `commit` returns). Each one-by-one insert is a write
//! transaction of its own, the batch is one write transaction, each get is a read
//! transaction of its own (as an adapter's `get` is), and iteration is one read
//! transaction over the table in key order. redb has no query language or secondary
//! indexes, so the two queries are what a redb user writes: a scan of the table that
//! decodes every value and filters (and, for the window, sorts and cuts at 100); the
//! indexed operations are left out rather than hand-built.
//!
//! Built only with the `peers` feature: redb adds about half a minute to a clean build.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use storage_core::{ErrorCode, Result, StorageError};

use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

/// The peers measured, with the version the lock file pins, for the report.
pub const PEERS: &[&str] = &["redb 4.6"];

/// The table every run writes: key to JSON bytes.
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");

fn redb_err(e: impl Into<redb::Error>) -> StorageError {
    let e: redb::Error = e.into();
    StorageError::new(ErrorCode::Backend, format!("redb call failed: {e}")).with_source(e)
}

fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, "redb peer: json failed").with_source(e)
}

fn decode(bytes: &[u8]) -> Result<Doc> {
    serde_json::from_slice(bytes).map_err(json_err)
}

fn insert_all<'a>(
    db: &Database,
    entries: impl IntoIterator<Item = &'a (String, Doc)>,
) -> Result<()> {
    let txn = db.begin_write().map_err(redb_err)?;
    {
        let mut table = txn.open_table(DOCS).map_err(redb_err)?;
        let mut buf = Vec::with_capacity(512);
        for (k, d) in entries {
            buf.clear();
            serde_json::to_writer(&mut buf, d).map_err(json_err)?;
            table.insert(k.as_str(), buf.as_slice()).map_err(redb_err)?;
        }
    }
    txn.commit().map_err(redb_err)
}

/// Every entry, decoded, in key order, from one read transaction.
fn scan(db: &Database, mut keep: impl FnMut(&Doc) -> bool) -> Result<Vec<(String, Doc)>> {
    let txn = db.begin_read().map_err(redb_err)?;
    let table = txn.open_table(DOCS).map_err(redb_err)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(redb_err)? {
        let (k, v) = entry.map_err(redb_err)?;
        let doc = decode(v.value())?;
        if keep(&doc) {
            out.push((k.value().to_owned(), doc));
        }
    }
    Ok(out)
}

/// One run of redb: one-by-one inserts into one fresh database, everything else on
/// another, as the adapter runs do.
pub fn redb_run(dir: &Path, w: &Workload) -> Result<Sample> {
    let mut s = Sample::default();
    let single = Database::create(dir.join("redb-single.redb")).map_err(redb_err)?;
    let bulk = Database::create(dir.join("redb-bulk.redb")).map_err(redb_err)?;

    let t = start();
    for entry in w.single() {
        insert_all(&single, [entry])?;
    }
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );

    let t = start();
    insert_all(&bulk, &w.docs)?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        let txn = bulk.begin_read().map_err(redb_err)?;
        let table = txn.open_table(DOCS).map_err(redb_err)?;
        if let Some(v) = table.get(key(i).as_str()).map_err(redb_err)? {
            let doc = decode(v.value())?;
            found += usize::from(doc.id == i);
        }
    }
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    let t = start();
    let mut results = 0;
    for a in &w.authors {
        results += scan(&bulk, |d| d.author == *a)?.len();
    }
    s.record(Op::AuthorScan, t.elapsed(), w.authors.len(), results);

    let t = start();
    let mut results = 0;
    let limit = usize::try_from(WINDOW_LIMIT).unwrap_or(usize::MAX);
    for &(from, to) in &w.windows {
        let mut hits = scan(&bulk, |d| (from..to).contains(&d.created_at))?;
        hits.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        hits.truncate(limit);
        results += hits.len();
    }
    s.record(Op::WindowScan, t.elapsed(), w.windows.len(), results);

    let t = start();
    let seen = scan(&bulk, |_| true)?.len();
    s.record(Op::Iterate, t.elapsed(), 1, seen);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_sees_what_the_workload_holds() -> Result<()> {
        let w = Workload::new(300, 20, 100);
        let dir = tempfile::tempdir()?;
        let s = redb_run(dir.path(), &w)?;
        assert_eq!(s.results[&Op::InsertOne], 20);
        assert_eq!(s.results[&Op::Get], 100);
        assert_eq!(s.results[&Op::Iterate], 300);
        let by_author: usize = w
            .authors
            .iter()
            .map(|a| w.docs.iter().filter(|(_, d)| d.author == *a).count())
            .sum();
        assert_eq!(
            s.results[&Op::AuthorScan],
            u64::try_from(by_author).unwrap_or(u64::MAX)
        );
        assert!(!s.times.contains_key(&Op::AuthorIndexed));
        Ok(())
    }
}
