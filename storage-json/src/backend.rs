//! `JsonStorage`: the store, its commit pipeline and its tier implementations.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::TryLockError as FileLockError;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::channel::oneshot;
use serde::de::DeserializeOwned;
use storage_core::events::{AfterEvent, BeforeEvent};
use storage_core::index::IndexSet;
use storage_core::query::{CompiledQuery, aggregate};
use storage_core::{
    AggregateStage, BatchResult, BatchStorage, Capabilities, Change, ChangeBatch, ChangeKind,
    Document, ErrorCode, EventHub, ExecutionPlan, IndexDefinition, IndexInfo, IndexedStorage,
    IsolationLevel, Operation, Query, QueryResult, QueryableStorage, Result, ResultStream, Storage,
    StorageError, StorageValue, Tier, Transaction, TransactionOptions, TransactionalStorage,
    validate_key, validate_keys,
};
use tracing::Instrument;

use crate::config::{Durability, JsonConfig, LockMode, check};
use crate::error::JsonError;
use crate::journal::{
    self, Commit, FlushHook, GroupSync, IndexOp, JournalWriter, Paths, SyncWait, apply_index_ops,
    encode_ops, encode_ops_into, read_journal, read_main, truncate_file, write_main,
};
use storage_core::codec::to_document;

use crate::transaction::JsonTransaction;
use crate::value::Stored;

const BACKEND: &str = "json";

thread_local! {
    /// The buffer a thread encodes a commit's journal operations into, reused.
    static OPS_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest encoding buffer a thread keeps for its next commit.
const OPS_SCRATCH_KEPT: usize = 64 << 10;

/// Returns an encoding buffer to [`OPS_SCRATCH`] when dropped.
struct ScratchGuard(Vec<u8>);

impl std::ops::Deref for ScratchGuard {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if self.0.capacity() <= OPS_SCRATCH_KEPT {
            OPS_SCRATCH.set(std::mem::take(&mut self.0));
        }
    }
}

/// One operation of a commit, with its value already encoded.
#[derive(Debug, Clone)]
pub(crate) enum StagedOp {
    Set(String, Arc<Stored>),
    Delete(String),
    Clear,
}

/// What a commit did, operation by operation, for hooks and change events.
enum EventOp {
    Set {
        key: String,
        new: Arc<Stored>,
        old: Option<Arc<Stored>>,
    },
    Delete {
        key: String,
        old: Option<Arc<Stored>>,
    },
    Clear {
        removed: Vec<(String, Arc<Stored>)>,
    },
}

/// A commit's operations resolved against the current state.
struct Staged {
    commit: Commit,
    result: BatchResult,
    events: Vec<EventOp>,
}

/// The value of `key` once `commit` (so far) is applied over `entries`.
fn staged_value(
    entries: &BTreeMap<String, Arc<Stored>>,
    commit: &Commit,
    key: &str,
) -> Option<Arc<Stored>> {
    match commit.writes.get(key) {
        Some(v) => v.clone(),
        None if commit.cleared => None,
        None => entries.get(key).cloned(),
    }
}

fn stage(entries: &BTreeMap<String, Arc<Stored>>, ops: &[StagedOp], events: bool) -> Staged {
    let mut staged = Staged {
        commit: Commit::default(),
        result: BatchResult::default(),
        events: Vec::new(),
    };
    for op in ops {
        staged.result.operations += 1;
        match op {
            StagedOp::Set(key, doc) => {
                if events {
                    let old = staged_value(entries, &staged.commit, key);
                    staged.events.push(EventOp::Set {
                        key: key.clone(),
                        new: Arc::clone(doc),
                        old,
                    });
                }
                staged
                    .commit
                    .writes
                    .insert(key.clone(), Some(Arc::clone(doc)));
            }
            StagedOp::Delete(key) => {
                let old = staged_value(entries, &staged.commit, key);
                if old.is_some() {
                    staged.result.deleted += 1;
                }
                if events {
                    staged.events.push(EventOp::Delete {
                        key: key.clone(),
                        old,
                    });
                }
                staged.commit.writes.insert(key.clone(), None);
            }
            StagedOp::Clear => {
                let mut removed = Vec::new();
                let mut count = 0usize;
                if !staged.commit.cleared {
                    for (k, v) in entries {
                        if !staged.commit.writes.contains_key(k) {
                            count += 1;
                            if events {
                                removed.push((k.clone(), Arc::clone(v)));
                            }
                        }
                    }
                }
                for (k, v) in &staged.commit.writes {
                    if let Some(v) = v {
                        count += 1;
                        if events {
                            removed.push((k.clone(), Arc::clone(v)));
                        }
                    }
                }
                if events {
                    removed.sort_by(|a, b| a.0.cmp(&b.0));
                    staged.events.push(EventOp::Clear { removed });
                }
                staged.result.cleared += count;
                staged.commit.cleared = true;
                staged.commit.writes.clear();
            }
        }
    }
    staged
}

/// What a commit replaced in memory, to be freed once the store lock is released.
#[derive(Default)]
struct Retired {
    /// The first value replaced: a single set needs no `Vec`.
    value: Option<Arc<Stored>>,
    values: Vec<Arc<Stored>>,
    entries: Option<BTreeMap<String, Arc<Stored>>>,
}

impl Retired {
    /// Whether dropping this frees a document tree (of a value nobody else holds).
    fn frees_tree(&self) -> bool {
        self.value
            .iter()
            .chain(&self.values)
            .any(|v| v.is_tree() && Arc::strong_count(v) == 1)
    }

    fn push(&mut self, replaced: Option<Arc<Stored>>) {
        if self.value.is_none() {
            self.value = replaced;
        } else {
            self.values.extend(replaced);
        }
    }
}

/// What a commit replaced in memory and the commit itself, freed by its writer
/// outside the store lock (see [`Inner::wait_synced`]).
#[derive(Default)]
pub(crate) struct Garbage {
    retired: Retired,
    commit: Commit,
}

impl Drop for Garbage {
    /// Frees what the commit replaced; when that included a document tree replaced
    /// by text, makes the allocator tidy up the small chunks just freed, now.
    ///
    /// A value loaded from the files is a tree of small allocations (one per field
    /// name, string and array), and its first overwrite frees them all while the set
    /// allocates a few chunks of other sizes (its text). glibc's `malloc` keeps such
    /// chunks on its fast free lists and consolidates them all at once before the next
    /// allocation of 1 KiB or more, whoever makes it: after tens of thousands of
    /// overwrites that stalled one set for 30 to 40 ms (the "longest set while a
    /// background compaction ran" row at 100k entries; 4 to 8 ms before). One 2 KiB
    /// allocation right after freeing a tree consolidates only that tree's chunks.
    /// Values held as text need none of this: the next set reuses their chunks.
    fn drop(&mut self) {
        // A tree replaced by a tree (indexed stores build documents) leaves chunks
        // of the sizes the next set allocates again: nothing piles up.
        let freed_tree = self.retired.frees_tree()
            && self.commit.writes.values().flatten().any(|v| !v.is_tree());
        self.retired = Retired::default();
        self.commit = Commit::default();
        if freed_tree {
            // Above the 1032 bytes glibc's per-thread cache serves without looking
            // at its free lists.
            drop(std::hint::black_box(Vec::<u8>::with_capacity(2048)));
        }
    }
}

/// Before-images of one commit, kept while a transaction that started before it is open.
pub(crate) struct HistoryRecord {
    seq: u64,
    /// The whole state before a clear (or a reload), when the commit had one.
    cleared_before: Option<Arc<BTreeMap<String, Arc<Stored>>>>,
    /// The previous value of every key the commit wrote.
    before: HashMap<String, Option<Arc<Stored>>>,
}

/// What a read-write transaction read, checked against later commits at its commit.
pub(crate) struct ReadSet<'a> {
    pub(crate) start: u64,
    pub(crate) keys: &'a HashSet<String>,
    pub(crate) scanned: bool,
}

/// Everything behind the state lock.
pub(crate) struct State {
    entries: BTreeMap<String, Arc<Stored>>,
    indexes: IndexSet,
    /// `None` once closed, and always for a read-only handle.
    journal: Option<JournalWriter>,
    open: bool,
    read_only: bool,
    /// A background compaction is writing the main file.
    compacting: bool,
    lock_file: Option<File>,
    seq: u64,
    main_len: u64,
    /// Start sequence of every open transaction, with a count.
    active: BTreeMap<u64, usize>,
    history: VecDeque<HistoryRecord>,
    poisoned: Option<String>,
}

impl State {
    fn ensure_open(&self) -> Result<(), JsonError> {
        if !self.open {
            return Err(JsonError::Closed);
        }
        Ok(())
    }

    fn ensure_writable(&self) -> Result<(), JsonError> {
        self.ensure_open()?;
        if self.read_only {
            return Err(JsonError::ReadOnly);
        }
        if let Some(why) = &self.poisoned {
            return Err(JsonError::Poisoned(why.clone()));
        }
        Ok(())
    }

    /// Index definitions change on a read-only handle too (its indexes are its own,
    /// in memory); a writable one must also be writable.
    fn ensure_can_change_indexes(&self) -> Result<(), JsonError> {
        if self.read_only {
            self.ensure_open()
        } else {
            self.ensure_writable()
        }
    }

    fn prune_history(&mut self) {
        let oldest = self.active.keys().next().copied();
        while self
            .history
            .front()
            .is_some_and(|h| oldest.is_none_or(|o| h.seq <= o))
        {
            self.history.pop_front();
        }
    }

    /// Applies a durable commit to memory, keeping before-images for open transactions.
    ///
    /// The values it replaces (and the commit's own keys) are handed back instead of
    /// freed here: freeing a document is a walk over cold memory, which the caller
    /// does after it released the store lock.
    fn apply(&mut self, seq: u64, commit: &mut Commit) -> Retired {
        let keep = !self.active.is_empty();
        let mut retired = Retired::default();
        let mut record = HistoryRecord {
            seq,
            cleared_before: None,
            before: HashMap::new(),
        };
        if commit.cleared {
            let old = std::mem::take(&mut self.entries);
            self.indexes.clear();
            if keep {
                record.cleared_before = Some(Arc::new(old));
            } else {
                retired.entries = Some(old);
            }
        }
        for (key, value) in &mut commit.writes {
            let prev = match &value {
                // An overwrite (the common case) keeps the map's key: no copy of it.
                Some(doc) => match self.entries.get_mut(key) {
                    Some(slot) => Some(std::mem::replace(slot, Arc::clone(doc))),
                    None => self.entries.insert(key.clone(), Arc::clone(doc)),
                },
                None => self.entries.remove(key),
            };
            if !self.indexes.is_empty() {
                self.indexes.update(
                    key,
                    prev.as_deref().map(Stored::doc),
                    value.as_deref().map(Stored::doc),
                );
            }
            if keep && !commit.cleared {
                record.before.insert(key.clone(), prev);
            } else {
                retired.push(prev);
            }
        }
        if keep {
            self.history.push_back(record);
        }
        retired
    }

    /// The value of `key` as of sequence `start`.
    pub(crate) fn snapshot_get(&self, start: u64, key: &str) -> Option<Arc<Stored>> {
        for record in self.history.iter().filter(|h| h.seq > start) {
            if let Some(old) = &record.cleared_before {
                return old.get(key).cloned();
            }
            if let Some(before) = record.before.get(key) {
                return before.clone();
            }
        }
        self.entries.get(key).cloned()
    }

    /// Every entry as of sequence `start`.
    pub(crate) fn snapshot_all(&self, start: u64) -> BTreeMap<String, Arc<Stored>> {
        let mut overlay: HashMap<&str, &Option<Arc<Stored>>> = HashMap::new();
        let mut base = &self.entries;
        for record in self.history.iter().filter(|h| h.seq > start) {
            if let Some(old) = &record.cleared_before {
                base = old;
                break;
            }
            for (k, v) in &record.before {
                overlay.entry(k.as_str()).or_insert(v);
            }
        }
        let mut view: BTreeMap<String, Arc<Stored>> = base
            .iter()
            .filter(|(k, _)| !overlay.contains_key(k.as_str()))
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (k, v) in overlay {
            if let Some(v) = v {
                view.insert(k.to_owned(), Arc::clone(v));
            }
        }
        view
    }

    /// Serializable validation: nothing the transaction read changed since it started.
    fn validate(&self, reads: &ReadSet<'_>) -> Result<()> {
        for record in self.history.iter().filter(|h| h.seq > reads.start) {
            let conflict = reads.scanned
                || (record.cleared_before.is_some() && !reads.keys.is_empty())
                || if record.before.len() < reads.keys.len() {
                    record.before.keys().any(|k| reads.keys.contains(k))
                } else {
                    reads.keys.iter().any(|k| record.before.contains_key(k))
                };
            if conflict {
                return Err(StorageError::new(
                    ErrorCode::VersionConflict,
                    "a concurrent commit changed data this transaction read",
                )
                .with_backend(BACKEND)
                .with_context("conflicting_commit", record.seq));
            }
        }
        Ok(())
    }
}

/// A change batch waiting to be handed to hooks and subscribers, in commit order.
struct Publication<T> {
    batch: ChangeBatch<T>,
    after: Vec<AfterOp<T>>,
}

enum AfterOp<T> {
    Set(String, Arc<T>),
    Delete(String, bool),
    Clear(u64),
}

/// The shared part of a store: every handle and transaction points here.
pub(crate) struct Inner<T> {
    config: JsonConfig,
    paths: Paths,
    state: Arc<RwLock<State>>,
    hub: EventHub<T>,
    group: Option<Arc<GroupSync>>,
    /// The compaction running in the background, if any.
    background: Mutex<Option<std::thread::JoinHandle<()>>>,
    outbox: Mutex<VecDeque<Publication<T>>>,
    /// The outbox's length, kept under its lock, read without it.
    queued: AtomicUsize,
    publishing: Mutex<()>,
    next_tx: AtomicU64,
    /// Whether the store has indexes, as of the last commit or index change: a hint,
    /// read without the lock, for how to encode values (see [`encode`]).
    indexed: AtomicBool,
}

/// A human-readable JSON-file store with an append-only journal.
///
/// See the [crate docs](crate) for the file layout, the crash guarantees and
/// what each configuration trades.
pub struct JsonStorage<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for JsonStorage<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::fmt::Debug for JsonStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonStorage")
            .field("file", &self.inner.paths.main)
            .finish_non_exhaustive()
    }
}

pub(crate) fn decode<T: DeserializeOwned>(stored: &Stored, key: &str) -> Result<T> {
    stored.decode().map_err(|e| {
        StorageError::new(
            ErrorCode::SerializationFailed,
            format!("stored value does not fit the handle's type: {e}"),
        )
        .with_backend(BACKEND)
        .with_context("key", key.escape_debug())
        .with_source(e)
    })
}

/// Encodes a value for a commit.
///
/// Without indexes, as its canonical text ([`Stored::encode`]): the journal line's
/// value and the stored form in one. With indexes every commit needs the document
/// too (the indexes read it, under the store lock), so the value is built as a
/// document ([`to_document`]) as it always was, rather than written as text and
/// parsed back. `indexed` is a hint: either form is correct whatever the indexes.
pub(crate) fn encode<T: StorageValue>(value: &T, key: &str, indexed: bool) -> Result<Arc<Stored>> {
    let stored = if indexed {
        to_document(value).map(Stored::from_doc)
    } else {
        Stored::encode(value)
    };
    stored.map(Arc::new).map_err(|e| {
        e.with_backend(BACKEND)
            .with_context("key", key.escape_debug())
    })
}

/// What loading the files from disk produced.
struct Loaded {
    entries: BTreeMap<String, Arc<Stored>>,
    /// The index definitions of the main file with the journal's changes applied.
    indexes: Vec<IndexDefinition>,
    seq: u64,
    main_len: u64,
    /// Journal records newer than the main file.
    records: u64,
    /// Where the journal's records end (zero-filled space or a torn tail may follow).
    journal_len: u64,
    /// Where the journal's valid part ends, when a torn tail follows it.
    torn_at: Option<u64>,
}

fn apply_to(entries: &mut BTreeMap<String, Arc<Stored>>, commit: Commit) {
    if commit.cleared {
        entries.clear();
    }
    for (k, v) in commit.writes {
        match v {
            Some(doc) => {
                entries.insert(k, doc);
            }
            None => {
                entries.remove(&k);
            }
        }
    }
}

/// Reads main file and journal without changing either.
fn load(paths: &Paths) -> Result<Loaded, JsonError> {
    let main = read_main(&paths.main)?;
    let replay = read_journal(&paths.journal)?;
    let main_exists = main.is_some();
    let main = main.unwrap_or_default();
    if !main_exists
        && let Some(first) = replay.records.first()
        && first.seq > 1
    {
        return Err(JsonError::corrupt(
            &paths.journal,
            0,
            format!(
                "the main file {} is missing but the journal starts at record {}",
                paths.main.display(),
                first.seq
            ),
        ));
    }
    let mut entries = main.entries;
    let mut indexes = main.indexes;
    let mut seq = main.seq;
    let mut records = 0u64;
    for record in replay.records {
        if record.seq <= main.seq {
            // Already in the main file: a crash came between compaction's rename and truncation.
            continue;
        }
        if record.seq != seq + 1 {
            // Every commit writes the next number, so a gap means records were lost (or,
            // for a reader without the lock, that a compaction ran between its two reads).
            return Err(JsonError::corrupt(
                &paths.journal,
                record.offset,
                format!(
                    "journal record {} follows record {seq}: records in between are missing",
                    record.seq
                ),
            ));
        }
        let mut commit = record.commit;
        apply_index_ops(&mut indexes, std::mem::take(&mut commit.index_ops));
        apply_to(&mut entries, commit);
        seq = record.seq;
        records += 1;
    }
    Ok(Loaded {
        entries,
        indexes,
        seq,
        main_len: main.len,
        records,
        journal_len: replay.valid_len,
        torn_at: replay.torn.then_some(replay.valid_len),
    })
}

/// Builds the indexes `definitions` name over `entries` (on open and reload).
///
/// # Errors
/// What [`IndexSet::create`] gives for a definition it refuses, say a unique index the
/// entries (edited by hand) break, with the main file named.
fn build_indexes(
    definitions: &[IndexDefinition],
    entries: &BTreeMap<String, Arc<Stored>>,
    file: &Path,
) -> Result<IndexSet> {
    let mut set = IndexSet::new();
    for definition in definitions {
        set.create(definition.clone(), entries.iter().map(pair))
            .map_err(|e| e.with_backend(BACKEND).with_context("file", file.display()))?;
    }
    Ok(set)
}

/// The index definitions of a set, in creation order, as the main file lists them.
fn definitions_of(indexes: &IndexSet) -> Vec<IndexDefinition> {
    indexes.list().into_iter().map(|i| i.definition).collect()
}

/// Where the store stood when a background compaction started: the last record
/// number and the journal's length and record count.
struct Snapshot {
    seq: u64,
    offset: u64,
    records: u64,
    /// The index definitions as of `seq`.
    indexes: Vec<IndexDefinition>,
}

/// The live entries, serialized a chunk at a time, each chunk read under a short
/// read lock.
///
/// The result is a *fuzzy* snapshot: each entry is as of some instant after record
/// `seq`. That is enough because journal records hold final values (a clear, then
/// the value or deletion of each key), so replaying every record after `seq` over it
/// gives exactly the current state; writers never wait for the whole file.
struct LiveEntries<'a> {
    state: &'a RwLock<State>,
}

const LIVE_CHUNK: usize = 1024;

impl serde::Serialize for LiveEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        use std::ops::Bound;
        let mut map = serializer.serialize_map(None)?;
        let mut after: Option<String> = None;
        loop {
            let chunk: Vec<(String, Arc<Stored>)> = {
                let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
                let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                st.entries
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take(LIVE_CHUNK)
                    .map(|(k, v)| (k.clone(), Arc::clone(v)))
                    .collect()
            };
            let Some((last, _)) = chunk.last() else { break };
            let last = last.clone();
            for (k, v) in &chunk {
                map.serialize_entry(k, &**v)?;
            }
            after = Some(last);
        }
        map.end()
    }
}

/// Clears the `compacting` flag if the compaction thread unwinds before doing so
/// itself, so waiters for an idle store never wait on a thread that is gone.
struct CompactionGuard<'a> {
    state: &'a RwLock<State>,
    armed: bool,
}

impl Drop for CompactionGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .compacting = false;
        }
    }
}

fn compact_in_background(
    job: &Snapshot,
    state: &RwLock<State>,
    paths: &Paths,
    pretty: bool,
    group: Option<&GroupSync>,
) {
    let mut guard = CompactionGuard { state, armed: true };
    let written =
        journal::write_main_from(paths, LiveEntries { state }, &job.indexes, job.seq, pretty);
    // Copy (and fsync) the journal's newer records that exist by now without the lock;
    // under it only what was appended in the meantime is left to copy.
    let prepared = written.and_then(|len| {
        let mut tail = TailCopy::start(paths, job.offset)?;
        let end = state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .journal
            .as_ref()
            .map_or(job.offset, JournalWriter::flushed_len);
        tail.copy_more(end)?;
        tail.sync()?;
        Ok((len, tail))
    });
    let mut st = state.write().unwrap_or_else(PoisonError::into_inner);
    st.compacting = false;
    guard.armed = false;
    let outcome = prepared.and_then(|(len, tail)| {
        st.main_len = len;
        carry_over_journal(&mut st, paths, tail, job.records, group)
    });
    if let Err(e) = outcome {
        // The old journal still holds every record (replay skips what the main file has).
        tracing::warn!(error = %e, "background compaction failed");
    }
}

/// Writes the journal's collected appends (group commit) to the file; a failure
/// poisons the store, since those records were applied in memory.
fn flush_journal(st: &mut State) -> Result<(), JsonError> {
    let State {
        journal, poisoned, ..
    } = st;
    let Some(journal) = journal.as_mut() else {
        return Ok(());
    };
    journal
        .flush()
        .inspect_err(|e| *poisoned = Some(e.to_string()))
}

/// The group-commit thread's flush: one `write` for every line appended since the
/// last, under the store lock (so nothing is appended meanwhile). A poisoned store
/// fails the group: its records may not be in the file.
fn flush_hook(state: &Arc<RwLock<State>>) -> FlushHook {
    let state = Arc::clone(state);
    Box::new(move || {
        let mut st = state.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &st.poisoned {
            return Err(why.clone());
        }
        flush_journal(&mut st).map_err(|e| e.to_string())
    })
}

/// The journal's bytes from a snapshot's offset on, copied into `<journal>.tmp`.
///
/// The journal only ever grows by appends while a compaction runs, so copying it in
/// two reads (most of it without the lock, the rest under it) yields exactly its
/// bytes from the offset to the end, even when the first read stopped mid-line.
struct TailCopy {
    source: File,
    target: File,
    offset: u64,
    copied: u64,
    pending_sync: bool,
    path: PathBuf,
}

impl TailCopy {
    fn start(paths: &Paths, offset: u64) -> Result<Self, JsonError> {
        let mut source =
            File::open(&paths.journal).map_err(|e| JsonError::io("open", &paths.journal, e))?;
        io::Seek::seek(&mut source, io::SeekFrom::Start(offset))
            .map_err(|e| JsonError::io("seek", &paths.journal, e))?;
        let target = File::create(&paths.journal_temp)
            .map_err(|e| JsonError::io("create", &paths.journal_temp, e))?;
        Ok(Self {
            source,
            target,
            offset,
            copied: 0,
            pending_sync: false,
            path: paths.journal_temp.clone(),
        })
    }

    /// Copies the journal's bytes beyond what was copied so far, up to `end` (its
    /// records end there; zero-filled space follows).
    fn copy_more(&mut self, end: u64) -> Result<(), JsonError> {
        let want = end.saturating_sub(self.offset + self.copied);
        let copied = io::copy(
            &mut io::Read::take(&mut self.source, want),
            &mut self.target,
        )
        .map_err(|e| JsonError::io("copy the journal into", &self.path, e))?;
        self.copied += copied;
        self.pending_sync |= copied > 0;
        Ok(())
    }

    /// Copies exactly `len` bytes from the offset again, for when the journal did not
    /// only grow (an append that failed was cut back while the copy ran).
    fn recopy(&mut self, len: u64) -> Result<(), JsonError> {
        let redo = |this: &mut Self| -> io::Result<u64> {
            this.target.set_len(0)?;
            io::Seek::seek(&mut this.target, io::SeekFrom::Start(0))?;
            io::Seek::seek(&mut this.source, io::SeekFrom::Start(this.offset))?;
            io::copy(&mut io::Read::take(&mut this.source, len), &mut this.target)
        };
        self.copied =
            redo(self).map_err(|e| JsonError::io("copy the journal into", &self.path, e))?;
        self.pending_sync = true;
        if self.copied != len {
            return Err(JsonError::io(
                "copy the journal into",
                &self.path,
                io::Error::other("the journal is shorter than the records it was given"),
            ));
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), JsonError> {
        if self.pending_sync {
            self.target
                .sync_data()
                .map_err(|e| JsonError::io("fsync", &self.path, e))?;
            self.pending_sync = false;
        }
        Ok(())
    }
}

/// Replaces the journal by its records newer than a compaction's snapshot: the rest
/// of the copy is made, fsync'd, renamed over the journal, and the directory
/// fsync'd. A crash before the rename leaves the old journal, whose older records
/// replay skips.
fn carry_over_journal(
    st: &mut State,
    paths: &Paths,
    mut tail: TailCopy,
    records_then: u64,
    group: Option<&GroupSync>,
) -> Result<(), JsonError> {
    flush_journal(st)?;
    let Some(journal) = st.journal.as_mut() else {
        return Ok(());
    };
    tail.copy_more(journal.len())?;
    let expected = journal.len().saturating_sub(tail.offset);
    if tail.copied != expected {
        tail.recopy(expected)?;
    }
    tail.sync()?;
    drop(tail);
    fs::rename(&paths.journal_temp, &paths.journal)
        .map_err(|e| JsonError::io("rename", &paths.journal, e))?;
    journal::sync_dir(&paths.dir)?;
    let records = journal.records().saturating_sub(records_then);
    match JournalWriter::open_exact(&paths.journal, records, journal.preallocates()) {
        Ok(fresh) => {
            *journal = fresh.buffered(journal.is_buffered());
            if let Some(group) = group {
                group.set_file(journal.clone_file()?);
                // Every record is in the fsync'd main file or the fsync'd new journal.
                group.mark_synced(st.seq);
            }
            Ok(())
        }
        Err(e) => {
            // The handle points at the replaced file; appending there would lose writes.
            st.poisoned = Some(e.to_string());
            Err(e)
        }
    }
}

/// [`load`] for a handle without the lock: a writer may compact between the reads of
/// the main file and the journal, which shows as a gap; such a read is retried.
///
/// A compaction can also finish between the two reads with the journal just emptied:
/// then there is no gap to see, but the main file read first is the old one and the
/// records compacted into the new one would be missed. So the main file must be the
/// same file (same length and modification time) after the journal was read as
/// before the main file was; otherwise the read is retried.
fn load_settled(paths: &Paths) -> Result<Loaded, JsonError> {
    let mut attempt = 0;
    loop {
        let before = main_identity(&paths.main);
        let outcome = load(paths);
        let settled = before == main_identity(&paths.main);
        match outcome {
            Err(JsonError::Corrupt { .. }) if attempt < 20 => {}
            Ok(_) if !settled && attempt < 20 => {}
            other => return other,
        }
        attempt += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What tells one version of the main file from the next: a compaction renames a new
/// file over it, which changes its length or modification time.
fn main_identity(path: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

fn open_lock_file(path: &Path) -> Result<File, JsonError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| JsonError::io("open", path, e))
}

/// Takes the advisory lock, failing or waiting as configured.
async fn acquire_lock(paths: &Paths, mode: LockMode) -> Result<File, JsonError> {
    let file = open_lock_file(&paths.lock)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(FileLockError::WouldBlock) => {}
        Err(FileLockError::Error(e)) => return Err(JsonError::io("lock", &paths.lock, e)),
    }
    let LockMode::Wait { timeout_ms } = mode else {
        return Err(JsonError::Locked {
            file: paths.main.clone(),
        });
    };
    // Wait on a helper thread, so the async caller's executor keeps running.
    let (tx, rx) = oneshot::channel();
    let lock_path = paths.lock.clone();
    let main_path = paths.main.clone();
    std::thread::Builder::new()
        .name("storage-json-lock".to_owned())
        .spawn(move || {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let outcome = loop {
                match file.try_lock() {
                    Ok(()) => break Ok(file),
                    Err(FileLockError::WouldBlock) => {}
                    Err(FileLockError::Error(e)) => {
                        break Err(JsonError::io("lock", &lock_path, e));
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break Err(JsonError::LockTimeout {
                        file: main_path,
                        waited_ms: timeout_ms,
                    });
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
            };
            // The opener may have given up (its future dropped); the file then just closes.
            let _ = tx.send(outcome);
        })
        .map_err(|e| JsonError::io("spawn lock waiter for", &paths.lock, e))?;
    rx.await.map_err(|_| {
        JsonError::io(
            "lock",
            &paths.lock,
            io::Error::other("lock waiter thread stopped"),
        )
    })?
}

fn remove_if_exists(path: &Path) -> Result<(), JsonError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JsonError::io("remove", path, e)),
    }
}

impl<T: StorageValue> JsonStorage<T> {
    /// Opens (creating if needed) the store at `config.file_path`.
    ///
    /// # Behavior
    /// - takes an exclusive advisory lock on `<file>.lock`; another process (or
    ///   another handle in this one) gets `ConnectionFailed` "locked by another
    ///   process", or waits with [`LockMode::Wait`];
    /// - loads the main file and replays the journal; a torn last journal record
    ///   (a crash mid-append) is dropped and cut off;
    /// - removes a temp file a crashed compaction left;
    /// - a failed open changes no file.
    ///
    /// # Errors
    /// `InvalidConfig`; `Corrupted` naming file and byte position; `ConnectionFailed`
    /// (locked) or `Timeout` (waited too long); `Io`.
    pub async fn open(config: JsonConfig) -> Result<Self> {
        Self::open_inner(config)
            .await
            .map_err(|e| e.with_operation("open"))
    }

    async fn open_inner(config: JsonConfig) -> Result<Self> {
        check(&config)?;
        let paths = Paths::new(&config.file_path);
        if !paths.dir.exists() {
            fs::create_dir_all(&paths.dir)
                .map_err(|e| JsonError::io("create directory", &paths.dir, e))?;
        }
        let lock_file = acquire_lock(&paths, config.lock).await?;
        let loaded = load(&paths)?;
        let indexes = build_indexes(&loaded.indexes, &loaded.entries, &paths.main)?;
        // Everything is verified; only now repair what a crash left behind.
        if let Some(valid) = loaded.torn_at {
            tracing::warn!(
                file = %paths.journal.display(),
                position = valid,
                "dropping a torn journal tail left by a crash"
            );
            truncate_file(&paths.journal, valid)?;
        }
        remove_if_exists(&paths.temp)?;
        remove_if_exists(&paths.journal_temp)?;
        let grouped = config.atomic && matches!(config.durability, Durability::Group { .. });
        let journal = JournalWriter::open(
            &paths.journal,
            loaded.records,
            loaded.journal_len,
            config.atomic,
        )?
        .buffered(grouped);
        let sync_file = journal.clone_file()?;
        let has_indexes = !indexes.is_empty();
        let state = Arc::new(RwLock::new(State {
            entries: loaded.entries,
            indexes,
            journal: Some(journal),
            open: true,
            read_only: false,
            compacting: false,
            lock_file: Some(lock_file),
            seq: loaded.seq,
            main_len: loaded.main_len,
            active: BTreeMap::new(),
            history: VecDeque::new(),
            poisoned: None,
        }));
        let group = match (config.atomic, config.durability) {
            (
                true,
                Durability::Group {
                    max_writes,
                    max_delay_ms,
                },
            ) => Some(GroupSync::start(
                sync_file,
                usize::try_from(max_writes).unwrap_or(usize::MAX),
                Duration::from_millis(max_delay_ms),
                flush_hook(&state),
            )?),
            _ => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                paths,
                state,
                hub: EventHub::new(),
                group: group.map(Arc::new),
                background: Mutex::new(None),
                outbox: Mutex::new(VecDeque::new()),
                queued: AtomicUsize::new(0),
                publishing: Mutex::new(()),
                next_tx: AtomicU64::new(1),
                indexed: AtomicBool::new(has_indexes),
            }),
        })
    }

    /// Opens the file for reading only, without taking the lock, so it works while
    /// another process has the store open for writing.
    ///
    /// # Behavior
    /// - loads the main file and the verified part of the journal: a record the writer
    ///   is appending at that instant fails its checksum and is left out, never misread,
    ///   so the handle sees the state as of some acknowledged write;
    /// - a compaction racing the load is detected and the load retried (for up to
    ///   about 200 ms; a file still unreadable then is `Corrupted`);
    /// - changes no file, not even a torn journal tail or a leftover temp file;
    /// - sees later writes only through [`JsonStorage::reload`];
    /// - writes (`set`, `delete`, `clear`, batches, transaction commits with writes,
    ///   `compact`) fail with `Unsupported`; indexes and queries work in memory.
    ///
    /// # Errors
    /// `InvalidConfig`; `Corrupted` naming file and byte position; `Io`.
    pub async fn open_read_only(config: JsonConfig) -> Result<Self> {
        async {
            check(&config)?;
            let paths = Paths::new(&config.file_path);
            // Retries sleep, so the load runs on a helper thread rather than the executor's.
            let (tx, rx) = oneshot::channel();
            let load_paths = paths.clone();
            std::thread::Builder::new()
                .name("storage-json-load".to_owned())
                .spawn(move || {
                    // The opener may have given up; the result is then dropped.
                    let _ = tx.send(load_settled(&load_paths));
                })
                .map_err(|e| JsonError::io("spawn loader for", &paths.main, e))?;
            let loaded = rx.await.map_err(|_| {
                JsonError::io(
                    "read",
                    &paths.main,
                    io::Error::other("loader thread stopped"),
                )
            })??;
            let indexes = build_indexes(&loaded.indexes, &loaded.entries, &paths.main)?;
            let has_indexes = !indexes.is_empty();
            let state = State {
                entries: loaded.entries,
                indexes,
                journal: None,
                open: true,
                read_only: true,
                compacting: false,
                lock_file: None,
                seq: loaded.seq,
                main_len: loaded.main_len,
                active: BTreeMap::new(),
                history: VecDeque::new(),
                poisoned: None,
            };
            Ok(Self {
                inner: Arc::new(Inner {
                    config,
                    paths,
                    state: Arc::new(RwLock::new(state)),
                    hub: EventHub::new(),
                    group: None,
                    background: Mutex::new(None),
                    outbox: Mutex::new(VecDeque::new()),
                    queued: AtomicUsize::new(0),
                    publishing: Mutex::new(()),
                    next_tx: AtomicU64::new(1),
                    indexed: AtomicBool::new(has_indexes),
                }),
            })
        }
        .await
        .map_err(|e: StorageError| e.with_operation("open"))
    }

    /// The main file's path.
    pub fn path(&self) -> &Path {
        &self.inner.paths.main
    }

    /// The journal's path (`<file>.journal`).
    pub fn journal_path(&self) -> &Path {
        &self.inner.paths.journal
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &JsonConfig {
        &self.inner.config
    }

    /// Records in the journal not yet compacted into the main file.
    pub fn journal_records(&self) -> u64 {
        self.inner
            .read()
            .journal
            .as_ref()
            .map_or(0, JournalWriter::records)
    }

    /// Compacts the journal into the main file now.
    ///
    /// # Errors
    /// `ConnectionLost` when closed; `Io`.
    #[allow(clippy::unused_async)] // async so callers need not change if this moves off-thread
    pub async fn compact(&self) -> Result<()> {
        let mut st = self.inner.write_idle();
        st.ensure_writable()?;
        self.inner.compact(&mut st)?;
        Ok(())
    }

    /// Compacts the journal into the main file, releases the lock and closes the
    /// store: later calls on any handle fail with `ConnectionLost`. Closing twice is fine.
    ///
    /// # Errors
    /// `Io` when the final compaction fails (the journal then still holds every
    /// write, and the lock is released anyway).
    #[allow(clippy::unused_async)] // async so callers need not change if this moves off-thread
    pub async fn close(&self) -> Result<()> {
        self.inner
            .shutdown()
            .map_err(|e| StorageError::from(e).with_operation("close"))
    }

    /// Re-reads the files and announces what changed on disk since they were
    /// last read or written through this handle (a person editing the file, a
    /// restore from backup), as one change batch.
    ///
    /// # Behavior
    /// - returns the number of keys that changed; nothing is announced when none did;
    /// - a transaction open across the reload conflicts at commit if it read anything.
    ///
    /// # Errors
    /// `Corrupted` (memory keeps the previous state), `DuplicateKey` when the new
    /// contents break a unique index (likewise), `ConnectionLost` when closed, `Io`.
    #[allow(clippy::unused_async)] // async so callers need not change if this moves off-thread
    pub async fn reload(&self) -> Result<usize> {
        let changed = self.inner.reload()?;
        self.inner.drain_outbox();
        Ok(changed)
    }
}

impl<T> Inner<T> {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn compact(&self, st: &mut State) -> Result<(), JsonError> {
        let indexes = definitions_of(&st.indexes);
        let len = write_main(
            &self.paths,
            &st.entries,
            &indexes,
            st.seq,
            self.config.pretty,
        )?;
        st.main_len = len;
        if let Some(journal) = st.journal.as_mut() {
            journal.reset()?;
        }
        if let Some(group) = &self.group {
            // The main file is fsync'd and holds every applied record.
            group.mark_synced(st.seq);
        }
        Ok(())
    }

    /// Appends record `seq` (its encoded operations) to the journal and, with
    /// `fsync_each`, fsyncs it.
    fn journal_line(&self, st: &mut State, seq: u64, ops: &[u8]) -> Result<(), JsonError> {
        let sync_each = self.config.atomic && self.config.durability == Durability::FsyncEach;
        let State {
            journal, poisoned, ..
        } = st;
        let Some(journal) = journal.as_mut() else {
            return Err(JsonError::Closed);
        };
        let before = journal.len();
        if let Err((err, restored)) = journal.append_record(seq, ops) {
            if !restored {
                *poisoned = Some(err.to_string());
            }
            return Err(err);
        }
        if sync_each && let Err(err) = journal.sync() {
            // After a failed fsync the kernel's view of the file is unknown; refuse
            // further writes rather than risk acknowledging lost ones.
            journal.cut_back(before);
            *poisoned = Some(err.to_string());
            return Err(err);
        }
        Ok(())
    }

    /// The state lock, once no background compaction runs (so a compaction of its
    /// own cannot race one). Must not be called with the state lock held.
    fn write_idle(&self) -> RwLockWriteGuard<'_, State> {
        loop {
            let handle = self
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(handle) = handle {
                // A panic in the compaction thread left the files as they were.
                let _ = handle.join();
            }
            let st = self.write();
            if !st.compacting {
                return st;
            }
        }
    }

    /// Starts a background compaction once the journal is due: the state is
    /// snapshotted under the lock, written to the main file without it, and the
    /// journal's records newer than the snapshot are then carried over to a fresh journal.
    fn maybe_compact(&self, st: &mut State) {
        if st.compacting {
            return;
        }
        let Some(journal) = st.journal.as_ref() else {
            return;
        };
        if journal.records() < self.config.compact_after
            || journal.len().saturating_mul(2) < st.main_len
        {
            return;
        }
        // The compaction copies the journal's tail from the file.
        if flush_journal(st).is_err() {
            return;
        }
        let Some(journal) = st.journal.as_ref() else {
            return;
        };
        let job = Snapshot {
            seq: st.seq,
            offset: journal.len(),
            records: journal.records(),
            indexes: definitions_of(&st.indexes),
        };
        let state = Arc::clone(&self.state);
        let paths = self.paths.clone();
        let pretty = self.config.pretty;
        let group = self.group.clone();
        let spawned = std::thread::Builder::new()
            .name("storage-json-compact".to_owned())
            .spawn(move || compact_in_background(&job, &state, &paths, pretty, group.as_deref()));
        match spawned {
            Ok(handle) => {
                st.compacting = true;
                *self
                    .background
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(handle);
            }
            Err(e) => tracing::warn!(error = %e, "could not start a compaction thread"),
        }
    }

    /// Compacts, stops group commit and releases the lock.
    fn shutdown(&self) -> Result<(), JsonError> {
        let mut st = self.write_idle();
        if !st.open {
            return Ok(());
        }
        let Some(journal) = st.journal.as_ref() else {
            st.open = false;
            return Ok(());
        };
        let outcome = if journal.len() > 0 && st.poisoned.is_none() {
            self.compact(&mut st)
        } else {
            Ok(())
        };
        st.open = false;
        if let Some(group) = &self.group {
            // Its thread takes the store lock to flush a group; every record is in
            // the main file by now (or the store is poisoned and the group fails).
            drop(st);
            group.shutdown();
            st = self.write();
        }
        st.journal = None;
        st.lock_file = None;
        outcome
    }
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, file = %self.paths.main.display(), "compaction on close failed");
        }
    }
}

impl<T: StorageValue> Inner<T> {
    pub(crate) fn hub(&self) -> &EventHub<T> {
        &self.hub
    }

    /// Whether the store had indexes at the last commit or index change.
    pub(crate) fn indexed(&self) -> bool {
        self.indexed.load(Ordering::Relaxed)
    }

    /// Updates [`Inner::indexed`] from the state (under its lock).
    fn note_indexes(&self, st: &State) {
        let indexed = !st.indexes.is_empty();
        if self.indexed() != indexed {
            self.indexed.store(indexed, Ordering::Relaxed);
        }
    }

    pub(crate) fn next_tx_id(&self) -> u64 {
        self.next_tx.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a transaction; returns its snapshot's sequence number.
    pub(crate) fn begin_tx(&self) -> Result<u64> {
        let mut st = self.write();
        st.ensure_open()?;
        let start = st.seq;
        *st.active.entry(start).or_default() += 1;
        Ok(start)
    }

    pub(crate) fn end_tx(&self, start: u64) {
        let mut st = self.write();
        if let Some(count) = st.active.get_mut(&start) {
            *count -= 1;
            if *count == 0 {
                st.active.remove(&start);
            }
        }
        st.prune_history();
    }

    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R> {
        let st = self.read();
        st.ensure_open()?;
        Ok(f(&st))
    }

    /// Validates (for a transaction), stages, journals and applies a commit;
    /// queues its events. Returns the group-commit wait, if any, and what the commit
    /// replaced in memory, for the caller to free outside the store lock.
    pub(crate) fn commit_now(
        &self,
        ops: &[StagedOp],
        reads: Option<&ReadSet<'_>>,
    ) -> Result<(BatchResult, Option<SyncWait>, Garbage)> {
        // The commit (the final value of each key written) and its journal line
        // depend on `ops` only, not on the state, so they are built before the store
        // lock is taken: concurrent writers serialize their values in parallel.
        let mut commit = stage(&BTreeMap::new(), ops, false).commit;
        let mut encoded = OPS_SCRATCH.take();
        encoded.clear();
        encode_ops_into(&commit, &mut encoded).map_err(|e| {
            StorageError::new(ErrorCode::SerializationFailed, e.to_string())
                .with_backend(BACKEND)
                .with_source(e)
        })?;
        // Handed back on every path out, so the thread reuses its memory.
        let encoded = ScratchGuard(encoded);
        if self.indexed() {
            // The indexes read the documents under the lock: parse any held as text here.
            for stored in commit.writes.values().flatten() {
                stored.doc();
            }
        }
        let mut st = self.write();
        self.note_indexes(&st);
        st.ensure_writable()?;
        if let Some(reads) = reads {
            st.validate(reads)?;
        }
        let events = self.hub.has_listeners();
        // What the state adds is the result's counts of deletions and the events;
        // a commit of sets that nobody observes needs neither.
        let (result, event_ops) = if !events && ops.iter().all(|op| matches!(op, StagedOp::Set(..)))
        {
            let result = BatchResult {
                operations: ops.len(),
                ..BatchResult::default()
            };
            (result, Vec::new())
        } else {
            let staged = stage(&st.entries, ops, events);
            (staged.result, staged.events)
        };
        let noop = !commit.cleared
            && commit
                .writes
                .iter()
                .all(|(k, v)| v.is_none() && !st.entries.contains_key(k));
        if noop {
            if events {
                self.queue(&st, 0, event_ops);
            }
            return Ok((result, None, Garbage::default()));
        }
        if !st.indexes.is_empty() {
            let docs: BTreeMap<String, Option<&Document>> = commit
                .writes
                .iter()
                .map(|(k, v)| (k.clone(), v.as_deref().map(Stored::doc)))
                .collect();
            st.indexes
                .check_unique(&docs, commit.cleared)
                .map_err(|e| e.with_backend(BACKEND))?;
        }
        let seq = st.seq + 1;
        self.journal_line(&mut st, seq, &encoded)?;
        st.seq = seq;
        let retired = st.apply(seq, &mut commit);
        let waiter = self.group.as_ref().map(|g| g.wait_for(seq));
        if events {
            self.queue(&st, seq, event_ops);
        }
        self.maybe_compact(&mut st);
        drop(st);
        Ok((result, waiter, Garbage { retired, commit }))
    }

    /// Journals an index definition change as a record of its own and drops the
    /// index from memory for a drop (a created index is built by the caller first);
    /// returns the group-commit wait.
    ///
    /// The in-memory set must match `seq` before a compaction may start: it lists
    /// the definitions in the main file it writes as of that record.
    fn commit_index_op(&self, st: &mut State, op: IndexOp) -> Result<Option<SyncWait>> {
        let seq = st.seq + 1;
        let dropped = match &op {
            IndexOp::Drop(name) => Some(name.clone()),
            IndexOp::Create(_) => None,
        };
        let commit = Commit {
            index_ops: vec![op],
            ..Commit::default()
        };
        let ops = encode_ops(&commit).map_err(|e| {
            StorageError::new(ErrorCode::SerializationFailed, e.to_string())
                .with_backend(BACKEND)
                .with_source(e)
        })?;
        self.journal_line(st, seq, &ops)?;
        st.seq = seq;
        if let Some(name) = dropped {
            st.indexes.drop_index(&name);
        }
        let waiter = self.group.as_ref().map(|g| g.wait_for(seq));
        self.maybe_compact(st);
        Ok(waiter)
    }

    /// Turns a commit's event list into a publication, in commit order (the
    /// state lock is held, so the outbox order is the commit order).
    fn queue(&self, _st: &State, seq: u64, events: Vec<EventOp>) {
        let now = SystemTime::now();
        let dec = |doc: &Arc<Stored>, key: &str| decode::<T>(doc, key).ok().map(Arc::new);
        let mut changes = Vec::new();
        let mut after = Vec::new();
        for event in events {
            match event {
                EventOp::Set { key, new, old } => {
                    let new_value = dec(&new, &key);
                    if let Some(v) = &new_value {
                        after.push(AfterOp::Set(key.clone(), Arc::clone(v)));
                    }
                    changes.push(Change {
                        kind: ChangeKind::Set,
                        old_value: old.as_ref().and_then(|o| dec(o, &key)),
                        new_value,
                        key,
                        timestamp: now,
                    });
                }
                EventOp::Delete { key, old } => {
                    after.push(AfterOp::Delete(key.clone(), old.is_some()));
                    if let Some(old) = old {
                        changes.push(Change {
                            kind: ChangeKind::Delete,
                            old_value: dec(&old, &key),
                            new_value: None,
                            key,
                            timestamp: now,
                        });
                    }
                }
                EventOp::Clear { removed } => {
                    after.push(AfterOp::Clear(journal::to_u64(removed.len())));
                    for (key, old) in removed {
                        changes.push(Change {
                            kind: ChangeKind::Delete,
                            old_value: dec(&old, &key),
                            new_value: None,
                            key,
                            timestamp: now,
                        });
                    }
                }
            }
        }
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.push_back(Publication {
            batch: ChangeBatch {
                sequence: seq,
                resume_token: None,
                changes,
            },
            after,
        });
        self.queued.store(outbox.len(), Ordering::Release);
    }

    /// Hands queued publications to hooks and subscribers, outside the state lock.
    ///
    /// Whoever holds `publishing` drains for everyone, so publications leave in
    /// commit order, and a hook that writes to the store only queues its own.
    pub(crate) fn drain_outbox(&self) {
        // Nothing queued (no listeners, the common case): no lock to take.
        if self.queued.load(Ordering::Acquire) == 0 {
            return;
        }
        loop {
            let guard = match self.publishing.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let next = {
                    let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    let next = outbox.pop_front();
                    self.queued.store(outbox.len(), Ordering::Release);
                    next
                };
                let Some(publication) = next else { break };
                for op in &publication.after {
                    match op {
                        AfterOp::Set(key, value) => self.hub.after(&AfterEvent::Set {
                            key,
                            value: value.as_ref(),
                        }),
                        AfterOp::Delete(key, existed) => self.hub.after(&AfterEvent::Delete {
                            key,
                            existed: *existed,
                        }),
                        AfterOp::Clear(removed) => {
                            self.hub.after(&AfterEvent::Clear { removed: *removed });
                        }
                    }
                }
                self.hub.publish(&publication.batch);
            }
            drop(guard);
            if self
                .outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
            {
                return;
            }
        }
    }

    /// Commits `ops`, publishes, and waits for group commit.
    pub(crate) async fn commit_ops(
        &self,
        ops: &[StagedOp],
        reads: Option<&ReadSet<'_>>,
    ) -> Result<BatchResult> {
        let (result, waiter, garbage) = self.commit_now(ops, reads)?;
        self.drain_outbox();
        match waiter {
            Some(rx) => self.wait_synced(rx, garbage).await?,
            None => drop(garbage),
        }
        Ok(result)
    }

    /// Waits for the group commit covering a record, and frees `garbage` once the
    /// wait is registered.
    ///
    /// Freeing what a commit replaced is work a writer need not do before its group
    /// can close: a group's fsync starts when its writers have registered, and
    /// every one of them then waits for it. Done after registering, the freeing runs
    /// while the fsync does, on cores that would otherwise wait.
    async fn wait_synced(&self, wait: SyncWait, garbage: Garbage) -> Result<()> {
        let mut wait = wait;
        let mut garbage = Some(garbage);
        let outcome = std::future::poll_fn(|cx| {
            let poll = std::pin::Pin::new(&mut wait).poll(cx);
            drop(garbage.take());
            poll
        })
        .await;
        if let Err(why) = outcome {
            self.write().poisoned = Some(why.clone());
            return Err(JsonError::io("fsync", &self.paths.journal, io::Error::other(why)).into());
        }
        Ok(())
    }

    fn reload(&self) -> Result<usize> {
        let mut st = self.write_idle();
        st.ensure_open()?;
        let loaded = if st.read_only {
            load_settled(&self.paths)?
        } else {
            st.ensure_writable()?;
            // Collected appends must be in the file that is about to be re-read.
            flush_journal(&mut st)?;
            let loaded = load(&self.paths)?;
            if let Some(valid) = loaded.torn_at {
                truncate_file(&self.paths.journal, valid)?;
            }
            let journal = JournalWriter::open(
                &self.paths.journal,
                loaded.records,
                loaded.journal_len,
                self.config.atomic,
            )?
            .buffered(self.group.is_some());
            if let Some(group) = &self.group {
                group.set_file(journal.clone_file()?);
            }
            st.journal = Some(journal);
            st.main_len = loaded.main_len;
            loaded
        };
        let mut definitions = loaded.indexes.clone();
        if st.read_only {
            // A reader's own indexes live in its memory only; keep them beside the file's.
            for local in definitions_of(&st.indexes) {
                if !definitions.iter().any(|d| d.name == local.name) {
                    definitions.push(local);
                }
            }
        }
        let indexes = build_indexes(&definitions, &loaded.entries, &self.paths.main)?;
        let mut changed = Vec::new();
        {
            let old = &st.entries;
            let new = &loaded.entries;
            for (k, v) in old {
                match new.get(k) {
                    None => changed.push(EventOp::Delete {
                        key: k.clone(),
                        old: Some(Arc::clone(v)),
                    }),
                    Some(n) if n != v => changed.push(EventOp::Set {
                        key: k.clone(),
                        new: Arc::clone(n),
                        old: Some(Arc::clone(v)),
                    }),
                    Some(_) => {}
                }
            }
            for (k, n) in new {
                if !old.contains_key(k) {
                    changed.push(EventOp::Set {
                        key: k.clone(),
                        new: Arc::clone(n),
                        old: None,
                    });
                }
            }
        }
        changed.sort_by(|a, b| event_key(a).cmp(event_key(b)));
        let count = changed.len();
        if count == 0 && loaded.seq == st.seq {
            return Ok(0);
        }
        // A reload is a commit of its own in this handle's order.
        let seq = st.seq.max(loaded.seq) + 1;
        let old = std::mem::replace(&mut st.entries, loaded.entries);
        if !st.active.is_empty() {
            st.history.push_back(HistoryRecord {
                seq,
                cleared_before: Some(Arc::new(old)),
                before: HashMap::new(),
            });
        }
        st.indexes = indexes;
        self.note_indexes(&st);
        st.seq = seq;
        if !st.read_only {
            // The files' numbering no longer matches this handle's (a restored backup may
            // even count lower): rewrite them so the next record follows on disk too.
            self.compact(&mut st)?;
        }
        if count > 0 && self.hub.has_listeners() {
            self.queue(&st, seq, changed);
        }
        Ok(count)
    }
}

fn event_key(e: &EventOp) -> &str {
    match e {
        EventOp::Set { key, .. } | EventOp::Delete { key, .. } => key,
        EventOp::Clear { .. } => "",
    }
}

/// Runs a write operation's future inside its debug span, when the config's `debug`
/// is on. When it is off the future runs bare: entering and leaving even a disabled
/// span on every poll measured about 3 % of a group-committed set's CPU time.
///
/// A plain `Either` rather than an `async fn`: an `async fn` wrapper would hold the
/// wrapped future twice in its state, and the boxed `set` future is better kept
/// under 1 KiB (see `commit_ops`).
trait Traced: Future + Sized {
    fn traced<T: StorageValue>(
        self,
        store: &JsonStorage<T>,
        operation: &'static str,
    ) -> futures::future::Either<tracing::instrument::Instrumented<Self>, Self> {
        if store.inner.config.common.debug {
            futures::future::Either::Left(self.instrument(store.span(operation)))
        } else {
            futures::future::Either::Right(self)
        }
    }
}

impl<F: Future> Traced for F {}

impl<T: StorageValue> JsonStorage<T> {
    /// A debug span around one operation when the config's `debug` is on.
    fn span(&self, operation: &'static str) -> tracing::Span {
        storage_core::trace::op_span(self.inner.config.common.debug, BACKEND, operation)
    }

    fn run_before(&self, event: &BeforeEvent<'_, T>) -> Result<()> {
        if self.inner.hub.has_before_hooks() {
            self.inner.hub.before(event)?;
        }
        Ok(())
    }

    fn snapshot<R>(&self, f: impl FnOnce(&BTreeMap<String, Arc<Stored>>) -> R) -> Result<R> {
        self.inner.with_state(|st| f(&st.entries))
    }

    fn run_query(&self, query: &Query) -> Result<Vec<QueryResult<T>>> {
        let span = self.span("query");
        let _entered = span.enter();
        let compiled = CompiledQuery::compile(query)?;
        let found = self.inner.with_state(|st| {
            let entries = st.indexes.scan(query.filter.as_ref(), &st.entries);
            let matches = compiled.run(entries.map(pair));
            matches
                .into_iter()
                .filter_map(|m| st.entries.get(&m.key).cloned().map(|d| (m, d)))
                .collect::<Vec<_>>()
        })?;
        found
            .into_iter()
            .map(|(m, doc)| {
                Ok(QueryResult {
                    value: decode(&doc, &m.key)?,
                    key: m.key,
                    score: m.score,
                    projection: m.projection,
                })
            })
            .collect()
    }

    /// Encodes and vets a batch: keys, values and before-hooks, before anything is applied.
    fn prepare(&self, operations: &[Operation<T>]) -> Result<Vec<StagedOp>> {
        validate_keys(operations.iter().filter_map(Operation::key))?;
        let hooks = self.inner.hub.has_before_hooks();
        let indexed = self.inner.indexed();
        let mut ops = Vec::with_capacity(operations.len());
        for (i, op) in operations.iter().enumerate() {
            match op {
                Operation::Set { key, value } => {
                    let doc =
                        encode(value, key, indexed).map_err(|e| e.with_context("index", i))?;
                    if hooks {
                        self.inner.hub.before(&BeforeEvent::Set { key, value })?;
                    }
                    ops.push(StagedOp::Set(key.clone(), doc));
                }
                Operation::Delete { key } => {
                    if hooks {
                        self.inner.hub.before(&BeforeEvent::Delete { key })?;
                    }
                    ops.push(StagedOp::Delete(key.clone()));
                }
                Operation::Clear => {
                    if hooks {
                        self.inner.hub.before(&BeforeEvent::Clear)?;
                    }
                    ops.push(StagedOp::Clear);
                }
            }
        }
        Ok(ops)
    }
}

pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(BACKEND, Tier::Observable)
        .with_isolation_levels([IsolationLevel::Serializable])
        .with_index_kinds(IndexSet::KINDS)
        .with_unique_indexes(true)
        .with_savepoints(true)
        .with_cross_process_watch(false)
        .with_persistent(true)
}

fn stream_of<'a, I: Send + 'a>(items: Result<Vec<Result<I>>>) -> ResultStream<'a, I> {
    match items {
        Ok(v) => Box::pin(futures::stream::iter(v)),
        Err(e) => Box::pin(futures::stream::iter(vec![Err(e)])),
    }
}

#[async_trait]
impl<T: StorageValue> Storage<T> for JsonStorage<T> {
    storage_core::tier_accessors!(T; batch, queryable, indexed, transactional, observable);

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<T>> {
        let run = || -> Result<Option<T>> {
            validate_key(key)?;
            self.run_before(&BeforeEvent::Get { key })?;
            let doc = self.snapshot(|e| e.get(key).cloned())?;
            if self.inner.hub.has_after_hooks() {
                self.inner.hub.after(&AfterEvent::Get {
                    key,
                    found: doc.is_some(),
                });
            }
            doc.map(|d| decode(&d, key)).transpose()
        };
        let span = self.span("get");
        let _entered = span.enter();
        run().map_err(|e| e.with_operation("get"))
    }

    async fn set(&self, key: &str, value: &T) -> Result<()> {
        async {
            validate_key(key)?;
            let doc = encode(value, key, self.inner.indexed())?;
            self.run_before(&BeforeEvent::Set { key, value })?;
            self.inner
                .commit_ops(&[StagedOp::Set(key.to_owned(), doc)], None)
                .await
                .map(|_| ())
        }
        .traced(self, "set")
        .await
        .map_err(|e| e.with_operation("set"))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        async {
            validate_key(key)?;
            self.run_before(&BeforeEvent::Delete { key })?;
            let result = self
                .inner
                .commit_ops(&[StagedOp::Delete(key.to_owned())], None)
                .await?;
            Ok::<_, StorageError>(result.deleted > 0)
        }
        .traced(self, "delete")
        .await
        .map_err(|e| e.with_operation("delete"))
    }

    async fn has(&self, key: &str) -> Result<bool> {
        validate_key(key).map_err(|e| e.with_operation("has"))?;
        self.snapshot(|e| e.contains_key(key))
            .map_err(|e| e.with_operation("has"))
    }

    async fn clear(&self) -> Result<()> {
        async {
            self.run_before(&BeforeEvent::Clear)?;
            self.inner
                .commit_ops(&[StagedOp::Clear], None)
                .await
                .map(|_| ())
        }
        .traced(self, "clear")
        .await
        .map_err(|e| e.with_operation("clear"))
    }

    async fn size(&self) -> Result<u64> {
        self.snapshot(|e| journal::to_u64(e.len()))
            .map_err(|e| e.with_operation("size"))
    }

    fn keys(&self) -> ResultStream<'_, String> {
        stream_of(self.snapshot(|e| e.keys().cloned().map(Ok).collect()))
    }

    fn values(&self) -> ResultStream<'_, T> {
        stream_of(self.snapshot(|e| e.iter().map(|(k, v)| decode(v, k)).collect()))
    }

    fn entries(&self) -> ResultStream<'_, (String, T)> {
        stream_of(self.snapshot(|e| {
            e.iter()
                .map(|(k, v)| decode(v, k).map(|t| (k.clone(), t)))
                .collect()
        }))
    }
}

#[async_trait]
impl<T: StorageValue> BatchStorage<T> for JsonStorage<T> {
    async fn get_many(&self, keys: &[String]) -> Result<BTreeMap<String, T>> {
        validate_keys(keys.iter().map(String::as_str)).map_err(|e| e.with_operation("get_many"))?;
        let docs = self.snapshot(|e| {
            keys.iter()
                .filter_map(|k| e.get(k).map(|d| (k.clone(), Arc::clone(d))))
                .collect::<Vec<_>>()
        })?;
        docs.into_iter()
            .map(|(k, d)| decode(&d, &k).map(|v| (k, v)))
            .collect()
    }

    async fn batch(&self, operations: Vec<Operation<T>>) -> Result<BatchResult> {
        async {
            let ops = self.prepare(&operations)?;
            if ops.is_empty() {
                return Ok(BatchResult::default());
            }
            self.inner.commit_ops(&ops, None).await
        }
        .traced(self, "batch")
        .await
        .map_err(|e| e.with_operation("batch"))
    }
}

#[async_trait]
impl<T: StorageValue> QueryableStorage<T> for JsonStorage<T> {
    fn query(&self, query: &Query) -> ResultStream<'_, QueryResult<T>> {
        stream_of(
            self.run_query(query)
                .map(|v| v.into_iter().map(Ok).collect())
                .map_err(|e| e.with_operation("query")),
        )
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        let compiled = CompiledQuery::compile(query).map_err(|e| e.with_operation("count"))?;
        self.inner.with_state(|st| {
            let entries = st.indexes.scan(query.filter.as_ref(), &st.entries);
            compiled.count(entries.map(pair))
        })
    }

    async fn aggregate(&self, pipeline: &[AggregateStage]) -> Result<Vec<Document>> {
        self.inner
            .with_state(|st| aggregate(pipeline, st.entries.values().map(|d| d.doc())))?
            .map_err(|e| e.with_operation("aggregate").with_backend(BACKEND))
    }
}

#[async_trait]
impl<T: StorageValue> IndexedStorage<T> for JsonStorage<T> {
    async fn create_index(&self, definition: IndexDefinition) -> Result<()> {
        let run = async {
            let waiter = {
                let mut st = self.inner.write();
                st.ensure_can_change_indexes()?;
                let name = definition.name.clone();
                let State {
                    indexes, entries, ..
                } = &mut *st;
                let created = indexes
                    .create(definition.clone(), entries.iter().map(pair))
                    .map_err(|e| e.with_backend(BACKEND))?;
                self.inner.note_indexes(&st);
                if !created || st.read_only {
                    // A read-only handle's index lives in its memory only.
                    return Ok(());
                }
                match self
                    .inner
                    .commit_index_op(&mut st, IndexOp::Create(definition))
                {
                    Ok(waiter) => waiter,
                    Err(e) => {
                        st.indexes.drop_index(&name);
                        self.inner.note_indexes(&st);
                        return Err(e);
                    }
                }
            };
            if let Some(rx) = waiter {
                self.inner.wait_synced(rx, Garbage::default()).await?;
            }
            Ok(())
        };
        run.await
            .map_err(|e: StorageError| e.with_operation("create_index"))
    }

    async fn drop_index(&self, name: &str) -> Result<bool> {
        let run = async {
            let waiter = {
                let mut st = self.inner.write();
                st.ensure_can_change_indexes()?;
                if st.indexes.definition(name).is_none() {
                    return Ok(false);
                }
                let waiter = if st.read_only {
                    st.indexes.drop_index(name);
                    None
                } else {
                    self.inner
                        .commit_index_op(&mut st, IndexOp::Drop(name.to_owned()))?
                };
                self.inner.note_indexes(&st);
                waiter
            };
            if let Some(rx) = waiter {
                self.inner.wait_synced(rx, Garbage::default()).await?;
            }
            Ok(true)
        };
        run.await
            .map_err(|e: StorageError| e.with_operation("drop_index"))
    }

    async fn list_indexes(&self) -> Result<Vec<IndexInfo>> {
        self.inner.with_state(|st| st.indexes.list())
    }

    async fn explain(&self, query: &Query) -> Result<ExecutionPlan> {
        CompiledQuery::compile(query).map_err(|e| e.with_operation("explain"))?;
        let choice = self.inner.with_state(|st| {
            st.indexes
                .choose(query.filter.as_ref())
                .map(|c| (c.index_name().to_owned(), c.describe()))
        })?;
        let mut plan = ExecutionPlan::default();
        if let Some((index, clause)) = choice {
            plan.backend_plan.push(format!(
                "in-memory index {index} narrows candidates by {clause}"
            ));
            plan.in_process
                .push("filter: reference evaluator over the index's candidates".to_owned());
            plan.index = Some(index);
        } else {
            plan.full_scan = true;
            plan.in_process
                .push("filter: reference evaluator over every entry".to_owned());
        }
        if !query.order_by.is_empty() {
            plan.in_process.push("order_by".to_owned());
        }
        if query.offset.is_some() || query.limit.is_some() {
            plan.in_process.push("offset/limit".to_owned());
        }
        if query.select.is_some() {
            plan.in_process.push("select".to_owned());
        }
        Ok(plan)
    }
}

#[async_trait]
impl<T: StorageValue> TransactionalStorage<T> for JsonStorage<T> {
    async fn begin(&self, options: TransactionOptions) -> Result<Box<dyn Transaction<T>>> {
        let tx = JsonTransaction::begin(Arc::clone(&self.inner), options)
            .map_err(|e| e.with_operation("begin"))?;
        Ok(Box::new(tx))
    }
}

storage_core::observable_via_hub!(JsonStorage, BACKEND, |store| &store.inner.hub);

/// An entry as the evaluator and the index set take it.
fn pair<'a>((key, doc): (&'a String, &'a Arc<Stored>)) -> (&'a str, &'a Document) {
    (key.as_str(), doc.doc())
}

/// The paths a store at `file` uses: main file, journal, lock file, temp file.
///
/// # Example
/// ```
/// let files = storage_json::files_of("data/users.json");
/// assert_eq!(files[1], std::path::PathBuf::from("data/users.json.journal"));
/// ```
pub fn files_of(file: impl AsRef<Path>) -> [PathBuf; 4] {
    let p = Paths::new(file.as_ref());
    [p.main, p.journal, p.lock, p.temp]
}
