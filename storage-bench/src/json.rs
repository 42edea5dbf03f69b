//! The JSON file: the adapter and a raw journal.
//!
//! The raw side is what a hand-written JSON-file store needs at the least: a typed
//! `BTreeMap<String, Doc>` in memory and an append-only journal of one JSON line per
//! write (`["key", {...}]`), `fdatasync`ed before the write returns — the adapter's
//! default durability. Like the adapter's journal, the one-by-one journal is
//! preallocated (zero-filled and fsync'd before the clock starts), so each append
//! overwrites existing space and its `fdatasync` is the disk's floor for a durable
//! append. The batch is one buffer of lines, one write, one `fdatasync`.
//! Queries scan the map (filter, sort, limit); the "indexes" are a map from author to
//! keys and an ordered set of `(created_at, key)`. Results are cloned out, as the
//! adapter's are handed out by value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use storage_core::config::JsonConfig;
use storage_core::{ErrorCode, Result, StorageError};
use storage_json::JsonStorage;

use crate::adapter;
use crate::measure::{Op, Sample, start};
use crate::workload::{Doc, WINDOW_LIMIT, Workload, key};

/// One run of the adapter (default configuration: fsync per write, pretty file).
pub async fn adapter_run(dir: &Path, w: &Workload) -> Result<Sample> {
    let single = JsonStorage::<Doc>::open(JsonConfig::new(dir.join("adapter-single.json"))).await?;
    let bulk = JsonStorage::<Doc>::open(JsonConfig::new(dir.join("adapter-bulk.json"))).await?;
    let sample = adapter::run(&single, &bulk, w).await?;
    single.close().await?;
    bulk.close().await?;
    Ok(sample)
}

struct RawJournal {
    file: File,
    map: BTreeMap<String, Doc>,
    by_author: HashMap<String, Vec<String>>,
    by_created: BTreeSet<(i64, String)>,
}

impl RawJournal {
    /// Opens a journal with `preallocate` bytes of zero-filled, fsync'd space.
    fn open(path: &Path, preallocate: usize) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        if preallocate > 0 {
            file.write_all(&vec![0u8; preallocate])?;
            file.sync_all()?;
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(Self {
            file,
            map: BTreeMap::new(),
            by_author: HashMap::new(),
            by_created: BTreeSet::new(),
        })
    }

    fn line(out: &mut Vec<u8>, k: &str, d: &Doc) -> Result<()> {
        serde_json::to_writer(&mut *out, &(k, d)).map_err(|e| {
            StorageError::new(
                ErrorCode::SerializationFailed,
                "raw journal: encoding failed",
            )
            .with_source(e)
        })?;
        out.push(b'\n');
        Ok(())
    }

    fn set(&mut self, k: &str, d: &Doc) -> Result<()> {
        let mut line = Vec::with_capacity(512);
        Self::line(&mut line, k, d)?;
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.map.insert(k.to_owned(), d.clone());
        Ok(())
    }

    fn set_many(&mut self, entries: Vec<(String, Doc)>) -> Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * 512);
        for (k, d) in &entries {
            Self::line(&mut buf, k, d)?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.map.extend(entries);
        Ok(())
    }

    fn author_scan(&self, a: &str) -> Vec<(String, Doc)> {
        self.map
            .iter()
            .filter(|(_, d)| d.author == a)
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect()
    }

    fn window_scan(&self, from: i64, to: i64) -> Vec<(String, Doc)> {
        let mut hits: Vec<(&String, &Doc)> = self
            .map
            .iter()
            .filter(|(_, d)| (from..to).contains(&d.created_at))
            .collect();
        hits.sort_by(|a, b| (a.1.created_at, a.0).cmp(&(b.1.created_at, b.0)));
        hits.into_iter()
            .take(usize::try_from(WINDOW_LIMIT).unwrap_or(usize::MAX))
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect()
    }

    fn create_indexes(&mut self) {
        for (k, d) in &self.map {
            self.by_author
                .entry(d.author.clone())
                .or_default()
                .push(k.clone());
            self.by_created.insert((d.created_at, k.clone()));
        }
    }

    fn author_indexed(&self, a: &str) -> Vec<(String, Doc)> {
        self.by_author
            .get(a)
            .into_iter()
            .flatten()
            .filter_map(|k| self.map.get(k).map(|d| (k.clone(), d.clone())))
            .collect()
    }

    fn window_indexed(&self, from: i64, to: i64) -> Vec<(String, Doc)> {
        self.by_created
            .range((from, String::new())..(to, String::new()))
            .take(usize::try_from(WINDOW_LIMIT).unwrap_or(usize::MAX))
            .filter_map(|(_, k)| self.map.get(k).map(|d| (k.clone(), d.clone())))
            .collect()
    }
}

/// One run of the raw journal.
pub fn raw_run(dir: &Path, w: &Workload) -> Result<Sample> {
    let mut s = Sample::default();
    let mut single = RawJournal::open(&dir.join("raw-single.journal"), w.single_inserts * 1024)?;
    let mut bulk = RawJournal::open(&dir.join("raw-bulk.journal"), 0)?;

    let t = start();
    for (k, d) in w.single() {
        single.set(k, d)?;
    }
    s.record(
        Op::InsertOne,
        t.elapsed(),
        w.single_inserts,
        w.single_inserts,
    );

    let entries = w.docs.clone();
    let t = start();
    bulk.set_many(entries)?;
    s.record(Op::InsertBatch, t.elapsed(), 1, w.docs.len());

    let t = start();
    let mut found = 0;
    for &i in &w.gets {
        found += usize::from(bulk.map.get(&key(i)).cloned().is_some());
    }
    s.record(Op::Get, t.elapsed(), w.gets.len(), found);

    queries(&bulk, w, &mut s, false);
    let t = start();
    bulk.create_indexes();
    s.record(Op::CreateIndexes, t.elapsed(), 1, 2);
    queries(&bulk, w, &mut s, true);

    let t = start();
    let mut seen = 0;
    for (k, d) in &bulk.map {
        let entry = (k.clone(), d.clone());
        seen += usize::from(!entry.0.is_empty());
    }
    s.record(Op::Iterate, t.elapsed(), 1, seen);
    Ok(s)
}

fn queries(j: &RawJournal, w: &Workload, s: &mut Sample, indexed: bool) {
    let t = start();
    let mut results = 0;
    for a in &w.authors {
        results += if indexed {
            j.author_indexed(a)
        } else {
            j.author_scan(a)
        }
        .len();
    }
    let op = if indexed {
        Op::AuthorIndexed
    } else {
        Op::AuthorScan
    };
    s.record(op, t.elapsed(), w.authors.len(), results);

    let t = start();
    let mut results = 0;
    for &(from, to) in &w.windows {
        results += if indexed {
            j.window_indexed(from, to)
        } else {
            j.window_scan(from, to)
        }
        .len();
    }
    let op = if indexed {
        Op::WindowIndexed
    } else {
        Op::WindowScan
    };
    s.record(op, t.elapsed(), w.windows.len(), results);
}
