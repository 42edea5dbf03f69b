//! Peer libraries that do the embedded adapters' job, on the same workload: `redb`, an
//! embedded ACID key-value store of copy-on-write B-trees in one file, and `sled`, an
//! embedded log-structured key-value store; both pure Rust.
//!
//! Each peer stores what the SQLite adapter stores — every `Doc` as JSON bytes from
//! `serde_json` under its key — and decodes every value it returns into a `Doc`.
//! Writes are durable when they return, as the JSON-file adapter's are: redb commits
//! with its default `Durability::Immediate`, and sled `flush`es (fsyncs its log) after
//! each write. Each one-by-one insert is a write (transaction) of its own, the batch is
//! one write transaction (redb) or one atomic `Batch` (sled), each get is a read of its
//! own (for redb, its own read transaction, as an adapter's `get` is), and iteration
//! walks the store in key order. Neither peer has a query language or secondary
//! indexes, so the two queries are what their users write — a scan that decodes every
//! value and filters (and, for the window, sorts and keeps 100) — and the indexed
//! operations are left out rather than hand-built.
//!
//! Built only with the `peers` feature: the two add about a minute to a clean build.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use storage_core::{ErrorCode, Result, StorageError};

use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

/// What the report says about the peers: versions, durability, what a row measures.
pub const NOTE: &str = "Peers: `redb` 4.6 (copy-on-write B-trees, `Durability::Immediate`: each commit fsynced) and `sled` 0.34.7 (log-structured, `flush` after each write), both storing each `Doc` as `serde_json` bytes, the SQLite adapter's stored form, and decoding every value they return. The SQLite adapter runs its defaults (WAL, `synchronous = NORMAL`: commits are not fsynced one by one; no change log), the JSON-file adapter its defaults (`fdatasync` per write). The peers have no queries or secondary indexes: their query rows are scans of the whole store that decode and filter every value, and the indexed rows are left out. A ratio above 1× means the adapter is slower than the peer. Both peers tried build here; none was left out for failing to build.";

/// The table redb runs write: key to JSON bytes.
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");

fn redb_err(e: impl Into<redb::Error>) -> StorageError {
    let e: redb::Error = e.into();
    StorageError::new(ErrorCode::Backend, format!("redb call failed: {e}")).with_source(e)
}

fn sled_err(e: sled::Error) -> StorageError {
    StorageError::new(ErrorCode::Backend, format!("sled call failed: {e}")).with_source(e)
}

fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::new(ErrorCode::SerializationFailed, "peer: json failed").with_source(e)
}

fn decode(bytes: &[u8]) -> Result<Doc> {
    serde_json::from_slice(bytes).map_err(json_err)
}

fn encode(buf: &mut Vec<u8>, d: &Doc) -> Result<()> {
    buf.clear();
    serde_json::to_writer(&mut *buf, d).map_err(json_err)
}

/// What the workload asks of a peer.
trait Peer: Sized {
    fn open(path: &Path) -> Result<Self>;
    /// One durable write of one entry.
    fn insert_one(&self, k: &str, d: &Doc) -> Result<()>;
    /// Every entry in one durable, atomic write.
    fn insert_batch(&self, entries: &[(String, Doc)]) -> Result<()>;
    /// One read of one key.
    fn get(&self, k: &str) -> Result<Option<Doc>>;
    /// Every entry in key order, decoded, that `keep` keeps.
    fn scan(&self, keep: &mut dyn FnMut(&Doc) -> bool) -> Result<Vec<(String, Doc)>>;
}

/// redb: one file, typed tables, transactions.
struct Redb(Database);

impl Redb {
    fn write<'a>(&self, entries: impl IntoIterator<Item = (&'a str, &'a Doc)>) -> Result<()> {
        let txn = self.0.begin_write().map_err(redb_err)?;
        {
            let mut table = txn.open_table(DOCS).map_err(redb_err)?;
            let mut buf = Vec::with_capacity(512);
            for (k, d) in entries {
                encode(&mut buf, d)?;
                table.insert(k, buf.as_slice()).map_err(redb_err)?;
            }
        }
        txn.commit().map_err(redb_err)
    }
}

impl Peer for Redb {
    fn open(path: &Path) -> Result<Self> {
        Database::create(path.with_extension("redb"))
            .map(Self)
            .map_err(redb_err)
    }

    fn insert_one(&self, k: &str, d: &Doc) -> Result<()> {
        self.write([(k, d)])
    }

    fn insert_batch(&self, entries: &[(String, Doc)]) -> Result<()> {
        self.write(entries.iter().map(|(k, d)| (k.as_str(), d)))
    }

    fn get(&self, k: &str) -> Result<Option<Doc>> {
        let txn = self.0.begin_read().map_err(redb_err)?;
        let table = txn.open_table(DOCS).map_err(redb_err)?;
        table
            .get(k)
            .map_err(redb_err)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn scan(&self, keep: &mut dyn FnMut(&Doc) -> bool) -> Result<Vec<(String, Doc)>> {
        let txn = self.0.begin_read().map_err(redb_err)?;
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
}

/// sled: a log-structured tree in a directory.
struct Sled(sled::Db);

impl Peer for Sled {
    fn open(path: &Path) -> Result<Self> {
        sled::Config::new()
            .path(path.with_extension("sled"))
            .open()
            .map(Self)
            .map_err(sled_err)
    }

    fn insert_one(&self, k: &str, d: &Doc) -> Result<()> {
        let mut buf = Vec::with_capacity(512);
        encode(&mut buf, d)?;
        self.0.insert(k, buf).map_err(sled_err)?;
        self.0.flush().map_err(sled_err)?;
        Ok(())
    }

    fn insert_batch(&self, entries: &[(String, Doc)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut buf = Vec::with_capacity(512);
        for (k, d) in entries {
            encode(&mut buf, d)?;
            batch.insert(k.as_str(), buf.as_slice());
        }
        self.0.apply_batch(batch).map_err(sled_err)?;
        self.0.flush().map_err(sled_err)?;
        Ok(())
    }

    fn get(&self, k: &str) -> Result<Option<Doc>> {
        self.0
            .get(k)
            .map_err(sled_err)?
            .map(|v| decode(&v))
            .transpose()
    }

    fn scan(&self, keep: &mut dyn FnMut(&Doc) -> bool) -> Result<Vec<(String, Doc)>> {
        let mut out = Vec::new();
        for entry in self.0.iter() {
            let (k, v) = entry.map_err(sled_err)?;
            let doc = decode(&v)?;
            if keep(&doc) {
                let k = String::from_utf8(k.to_vec()).map_err(|e| {
                    StorageError::new(ErrorCode::Backend, "sled returned a key that is not utf-8")
                        .with_source(e)
                })?;
                out.push((k, doc));
            }
        }
        Ok(out)
    }
}

/// One run of a peer: one-by-one inserts into one fresh store, everything else on
/// another, as the adapter runs do.
fn run<P: Peer>(dir: &Path, w: &Workload) -> Result<Sample> {
    let mut s = Sample::default();
    let single = P::open(&dir.join("peer-single"))?;
    let bulk = P::open(&dir.join("peer-bulk"))?;

    let t = start();
    for (k, d) in w.single() {
        single.insert_one(k, d)?;
    }
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );

    let t = start();
    bulk.insert_batch(&w.docs)?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        found += usize::from(bulk.get(&key(i))?.is_some_and(|d| d.id == i));
    }
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    let t = start();
    let mut results = 0;
    for a in &w.authors {
        results += bulk.scan(&mut |d| d.author == *a)?.len();
    }
    s.record(Op::AuthorScan, t.elapsed(), w.authors.len(), results);

    let t = start();
    let mut results = 0;
    let limit = usize::try_from(WINDOW_LIMIT).unwrap_or(usize::MAX);
    for &(from, to) in &w.windows {
        let mut hits = bulk.scan(&mut |d| (from..to).contains(&d.created_at))?;
        hits.sort_by(|a, b| (a.1.created_at, &a.0).cmp(&(b.1.created_at, &b.0)));
        hits.truncate(limit);
        results += hits.len();
    }
    s.record(Op::WindowScan, t.elapsed(), w.windows.len(), results);

    let t = start();
    let seen = bulk.scan(&mut |_| true)?.len();
    s.record(Op::Iterate, t.elapsed(), 1, seen);
    Ok(s)
}

/// One run of redb.
pub fn redb_run(dir: &Path, w: &Workload) -> Result<Sample> {
    run::<Redb>(dir, w)
}

/// One run of sled.
pub fn sled_run(dir: &Path, w: &Workload) -> Result<Sample> {
    run::<Sled>(dir, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_sees_what_the_workload_holds() -> Result<()> {
        let w = Workload::new(300, 20, 100);
        let by_author: usize = w
            .authors
            .iter()
            .map(|a| w.docs.iter().filter(|(_, d)| d.author == *a).count())
            .sum();
        for (name, s) in [
            ("redb", redb_run(tempfile::tempdir()?.path(), &w)?),
            ("sled", sled_run(tempfile::tempdir()?.path(), &w)?),
        ] {
            assert_eq!(s.results[&Op::InsertOne], 20, "{name}");
            assert_eq!(s.results[&Op::Get], 100, "{name}");
            assert_eq!(s.results[&Op::Iterate], 300, "{name}");
            assert_eq!(
                s.results[&Op::AuthorScan],
                u64::try_from(by_author).unwrap_or(u64::MAX),
                "{name}"
            );
            assert!(!s.times.contains_key(&Op::AuthorIndexed), "{name}");
        }
        Ok(())
    }
}
